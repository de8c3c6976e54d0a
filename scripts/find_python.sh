#!/usr/bin/env bash
# Print the path of a Python >= 3.12 interpreter, or explain how to get one.
set -u
check() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }
for cand in "${PYTHON:-}" python3.12 python3.13 python3; do
    [ -n "$cand" ] || continue
    p=$(command -v "$cand" 2>/dev/null) || continue
    if check "$p"; then echo "$p"; exit 0; fi
done
# pyenv installs (the default python3 on these machines is 3.11)
for root in "${PYENV_ROOT:-$HOME/.pyenv}" /root/.pyenv; do
    for p in "$root"/versions/3.12*/bin/python3.12 "$root"/versions/3.13*/bin/python3.13; do
        if [ -x "$p" ] && check "$p"; then echo "$p"; exit 0; fi
    done
done
echo "error: Python >= 3.12 is required (PyMC 6 needs it) and none was found." >&2
echo "Install one (for example 'pyenv install 3.12' or 'apt-get install python3.12')," >&2
echo "or point PYTHON at it: make PYTHON=/path/to/python3.12 test" >&2
exit 1
