"""Turn a Stan program into a shared library with our C++ shim, and cache it.

The steps: ``stanc`` translates the program to C++ (its errors reach the user
as they are, with line and column), ``stanc --info`` describes its variables,
and the C++ compiler builds ``model.so`` from the generated code and
``shim/stan_bridge_shim.cpp``. The Stan headers are precompiled once per
toolchain, which cuts a model build from about 30 s to about 14 s here.

Build products live under the cache directory (``$STAN_BRIDGE_CACHE``, else
``~/.cache/stan_bridge``) in a folder named by a hash of the program, the
options and the toolchain. A build happens in a private temporary folder
that is renamed into place when complete, under a lock file, so two
processes building the same program at once build it once and neither sees
a half-written library.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from stan_bridge.toolchain import SHIM_DIR, Toolchain

__all__ = [
    "StanCompileError",
    "StanBuildError",
    "ModelBuild",
    "build_model",
    "cache_dir",
    "run_stanc_info",
]

_BUILD_FORMAT = 2  # bump when the layout of a build folder changes

#: File and C++ class names every program is compiled under, so that a build
#: depends only on the code, the options and the toolchain (not on where the
#: file lives). Messages show the user's file name instead (:func:`user_message`).
PROGRAM_FILE = "stan_bridge_program.stan"
PROGRAM_CLASS = "stan_bridge_program_model"


def user_message(msg: str, display_name: str) -> str:
    """Put the user's file name into a message from stanc or from the compiled model.

    Examples
    --------
    >>> from stan_bridge.builder import user_message
    >>> user_message("Error in 'stan_bridge_program.stan', line 3", "eight.stan")
    "Error in 'eight.stan', line 3"
    """
    return msg.replace(PROGRAM_FILE, display_name)


_COMMON_FLAGS = (
    "-O3",
    "-fPIC",
    "-pthread",
    "-fvisibility=hidden",
    "-Wno-sign-compare",
    "-Wno-ignored-attributes",
    "-Wno-deprecated-declarations",
    "-Wno-unused-but-set-variable",
    "-Wno-unused-variable",
    "-Wno-unused-function",
    "-Wno-unused-local-typedefs",
)


class StanCompileError(ValueError):
    """stanc rejected the program; the message is stanc's own."""


class StanBuildError(RuntimeError):
    """The C++ compiler failed on stanc's output (not a problem in the Stan code)."""


@dataclass(frozen=True)
class ModelBuild:
    """A finished build: where the library is and what stanc said about the program.

    Attributes
    ----------
    directory : Path
        The cache folder of this build.
    library : Path
        ``model.so``.
    info : dict
        ``stanc --info`` output: inputs, parameters, transformed parameters,
        generated quantities (each ``name -> {"type", "dimensions"}``).
    key : str
        The cache key (hash).
    seconds : float
        Time this call spent (near zero when the build was cached).
    cached : bool
        True when nothing had to be built.
    """

    directory: Path
    library: Path
    info: dict
    key: str
    seconds: float
    cached: bool


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The build cache directory.

    Parameters
    ----------
    path : path, optional
        Use this directory. Default: ``$STAN_BRIDGE_CACHE``, else
        ``$XDG_CACHE_HOME/stan_bridge``, else ``~/.cache/stan_bridge``.

    Returns
    -------
    Path
        The directory (created if missing).

    Examples
    --------
    >>> from stan_bridge.builder import cache_dir
    >>> cache_dir().is_dir()
    True
    """
    if path is None:
        path = os.environ.get("STAN_BRIDGE_CACHE")
    if path is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "stan_bridge")
    out = Path(path).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock held for the ``with`` block (blocks until free)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


_INCLUDE_RE = re.compile(r'^\s*#include\s+[<"]?([^>"\s]+)[>"]?', re.MULTILINE)


def _included_sources(code: str, include_paths: Sequence[Path]) -> list[str]:
    """Contents of files the program ``#include``s (so edits to them change the key)."""
    out = []
    for rel in _INCLUDE_RE.findall(code):
        for base in include_paths:
            cand = Path(base) / rel
            if cand.is_file():
                out.append(rel + "\0" + cand.read_text())
                break
    return out


def _run_stanc(
    toolchain: Toolchain, args: Sequence[str], stan_file: Path, display_name: str
) -> subprocess.CompletedProcess:
    # Run in the file's folder on its bare name, so every message (syntax errors too,
    # which older stanc reports with the path it was given) shows the user's file name.
    cmd = [str(toolchain.stanc), *args, stan_file.name]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=stan_file.parent)
    except subprocess.TimeoutExpired as err:
        raise StanCompileError(f"stanc timed out on {display_name}") from err
    if out.returncode != 0:
        msg = user_message((out.stderr or out.stdout).strip(), display_name)
        raise StanCompileError(
            f"stanc ({toolchain.stanc_version}) could not compile {display_name}:\n{msg}"
        )
    return out


def run_stanc_info(
    code: str,
    toolchain: Toolchain,
    display_name: str = "model.stan",
    include_paths: Sequence[str | os.PathLike] = (),
) -> dict:
    """Run ``stanc --info`` on a program and return the parsed JSON.

    Parameters
    ----------
    code : str
        The Stan program.
    toolchain : Toolchain
        Where stanc is.
    display_name : str
        File name used in stanc's messages.
    include_paths : sequence of path
        Where ``#include`` files are looked up.

    Returns
    -------
    dict
        ``inputs``, ``parameters``, ``transformed parameters``,
        ``generated quantities``, ...

    Raises
    ------
    StanCompileError
        With stanc's message when the program does not compile.

    Examples
    --------
    >>> from stan_bridge.builder import run_stanc_info
    >>> from stan_bridge.toolchain import find_toolchain
    >>> info = run_stanc_info("parameters { real x; } model { x ~ normal(0, 1); }",
    ...                       find_toolchain())
    >>> list(info["parameters"])
    ['x']
    """
    with tempfile.TemporaryDirectory(prefix="stan_bridge_info_") as tmp:
        path = Path(tmp) / PROGRAM_FILE
        path.write_text(code)
        args = ["--info"]
        if include_paths:
            args.append("--include-paths=" + ",".join(str(p) for p in include_paths))
        out = _run_stanc(toolchain, args, path, display_name)
    text = out.stdout
    start = text.find("{")
    return json.loads(text[start:])


def _compile_flags(toolchain: Toolchain, extra: Sequence[str]) -> list[str]:
    return [*toolchain.cxxflags, *_COMMON_FLAGS, *extra]


def _compile(cmd: list[str], cwd: Path, what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
        detail = "\n".join(lines[:20]) or proc.stderr[-4000:]
        raise StanBuildError(
            f"The C++ compiler failed on {what}. This is a problem of the toolchain or of "
            f"stan_bridge, not of the Stan program.\nCommand: {' '.join(cmd)}\n{detail}"
        )


def _precompiled_header(toolchain: Toolchain, extra: Sequence[str], root: Path) -> Path | None:
    """Folder holding ``stan_bridge_pch.hpp.gch`` for these flags, built once.

    Returns None where precompiled headers are switched off
    (``STAN_BRIDGE_PCH=0``) or failed to build (then models still build,
    only slower).
    """
    if os.environ.get("STAN_BRIDGE_PCH", "1").lower() in ("0", "false", "no", "off"):
        return None
    flags = _compile_flags(toolchain, extra)
    key = hashlib.sha256(("\0".join([toolchain.fingerprint, *flags])).encode()).hexdigest()[:20]
    final = root / f"pch-{key}"
    if (final / "ok").exists():
        return final
    if (final / "failed").exists():
        return None
    with _file_lock(root / f"pch-{key}.lock"):
        if (final / "ok").exists():
            return final
        if (final / "failed").exists():
            return None
        tmp = Path(tempfile.mkdtemp(prefix=f"tmp-pch-{key}-", dir=root))
        try:
            shutil.copy(SHIM_DIR / "stan_bridge_pch.hpp", tmp / "stan_bridge_pch.hpp")
            cmd = [
                toolchain.cxx,
                *flags,
                "-x",
                "c++-header",
                "-o",
                str(tmp / "stan_bridge_pch.hpp.gch"),
                str(tmp / "stan_bridge_pch.hpp"),
            ]
            try:
                _compile(cmd, tmp, "the precompiled Stan headers")
                (tmp / "ok").write_text(toolchain.describe())
            except StanBuildError as err:
                # keep the failure so later builds do not retry it each time
                for child in tmp.iterdir():
                    if child.is_file():
                        child.unlink()
                (tmp / "failed").write_text(str(err))
            if final.exists():
                shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final if (final / "ok").exists() else None


def _remove_stale_temporaries(folder: Path, max_age_s: float = 86400.0) -> None:
    """Remove build folders left by processes killed mid-build (older than a day)."""
    now = time.time()
    for tmp in folder.glob("tmp-*"):
        try:
            if tmp.is_dir() and now - tmp.stat().st_mtime > max_age_s:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def _progress(enabled: bool, desc: str):
    if not enabled:
        return contextlib.nullcontext(None)
    from tqdm.auto import tqdm

    return tqdm(total=3, desc=desc, bar_format="{desc}: {n}/{total} steps [{elapsed}]{postfix}")


def build_model(
    code: str,
    toolchain: Toolchain,
    *,
    display_name: str = "model.stan",
    include_paths: Sequence[str | os.PathLike] = (),
    stanc_options: Sequence[str] = (),
    cxxflags: Sequence[str] = (),
    cache: str | os.PathLike | None = None,
    progressbar: bool = True,
    validate: Callable[[dict], None] | None = None,
) -> ModelBuild:
    """Build (or find in the cache) the shared library for a Stan program.

    Parameters
    ----------
    code : str
        The Stan program.
    toolchain : Toolchain
        From :func:`~stan_bridge.toolchain.find_toolchain`.
    display_name : str
        File name that messages show (the build itself does not depend on
        it: the same program from two files is built once).
    include_paths : sequence of path
        Where stanc looks up ``#include`` files.
    stanc_options : sequence of str
        Extra stanc flags, for example ``["--O"]``.
    cxxflags : sequence of str
        Extra C++ compiler flags, for example ``["-march=native"]``.
    cache : path, optional
        The cache directory (see :func:`cache_dir`).
    progressbar : bool
        Show the build steps while building.
    validate : callable, optional
        Called with the ``stanc --info`` dict before the (long) C++ compile,
        and also when the build is cached; raise there to stop early (bad
        data, no parameters).

    Returns
    -------
    ModelBuild

    Raises
    ------
    StanCompileError
        stanc rejected the program (stanc's message, with line and column).
    StanBuildError
        The C++ compiler failed.

    Examples
    --------
    >>> from stan_bridge.builder import build_model
    >>> from stan_bridge.programs import EXAMPLE_CODE
    >>> from stan_bridge.toolchain import find_toolchain
    >>> b = build_model(EXAMPLE_CODE, find_toolchain(), progressbar=False)
    >>> b.library.name, sorted(b.info["parameters"])
    ('model.so', ['mu', 'sigma'])
    """
    t0 = time.perf_counter()
    root = cache_dir(cache)
    include_paths = [Path(p).resolve() for p in include_paths]
    h = hashlib.sha256()
    for part in (
        str(_BUILD_FORMAT),
        code,
        toolchain.fingerprint,
        *stanc_options,
        "|",
        *cxxflags,
        "|",
        *_included_sources(code, include_paths),
    ):
        h.update(part.encode())
        h.update(b"\0")
    key = h.hexdigest()[:24]
    final = root / "models" / key

    def result(info: dict, cached: bool) -> ModelBuild:
        return ModelBuild(final, final / "model.so", info, key, time.perf_counter() - t0, cached)

    def done() -> ModelBuild | None:
        if (final / "ok").exists():
            return result(json.loads((final / "info.json").read_text()), True)
        return None

    found = done()
    if found is not None:
        if validate is not None:
            validate(found.info)
        return found
    (root / "models").mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(root / "models")
    with _progress(progressbar, f"Building Stan model {display_name}") as bar:
        tmp = Path(tempfile.mkdtemp(prefix=f"tmp-{key}-", dir=root / "models"))
        try:
            stan_file = tmp / PROGRAM_FILE
            stan_file.write_text(code)
            inc = (
                ["--include-paths=" + ",".join(str(p) for p in include_paths)]
                if include_paths
                else []
            )
            if bar is not None:
                bar.set_postfix_str("stanc")
            # stanc first, outside the lock: syntax errors come back at once.
            _run_stanc(
                toolchain,
                [f"--name={PROGRAM_CLASS}", f"--o={tmp / 'model.hpp'}", *inc, *stanc_options],
                stan_file,
                display_name,
            )
            info_out = _run_stanc(toolchain, ["--info", *inc], stan_file, display_name)
            info = json.loads(info_out.stdout[info_out.stdout.find("{") :])
            (tmp / "info.json").write_text(json.dumps(info, indent=1))
            if validate is not None:
                validate(info)
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str("precompiled headers (once per toolchain)")
            with _file_lock(root / "models" / f"{key}.lock"):
                found = done()
                if found is not None:
                    return found
                pch = _precompiled_header(toolchain, cxxflags, root)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str("C++ compile (tens of seconds; cached afterwards)")
                (tmp / "build.cpp").write_text(
                    '#include "stan_bridge_pch.hpp"\n'
                    '#include "model.hpp"\n'
                    '#include "stan_bridge_shim.cpp"\n'
                )
                cmd = [
                    toolchain.cxx,
                    *_compile_flags(toolchain, cxxflags),
                    *([f"-I{pch}"] if pch is not None else []),
                    f"-I{tmp}",
                    f"-I{SHIM_DIR}",
                    "-shared",
                    "-o",
                    str(tmp / "model.so"),
                    str(tmp / "build.cpp"),
                    *toolchain.ldflags,
                ]
                _compile(cmd, tmp, f"the C++ code stanc generated for {display_name}")
                (tmp / "build.json").write_text(
                    json.dumps(
                        {
                            "toolchain": toolchain.describe(),
                            "command": cmd,
                            "precompiled_header": str(pch) if pch else None,
                            "seconds": time.perf_counter() - t0,
                        },
                        indent=1,
                    )
                )
                (tmp / "ok").write_text("")
                if final.exists():  # an unfinished folder from a crashed build
                    shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str("done")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return result(info, False)
