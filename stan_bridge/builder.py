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

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from pymc_ext.blocks.progress import ProgressBar
from stan_bridge.cxx import (
    StanBuildError,
    compile_flags,
    file_lock,
    precompiled_header,
    run_compiler,
)
from stan_bridge.sundials import needs_pic_sundials, pic_sundials_built, pic_sundials_ldflags
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


class StanCompileError(ValueError):
    """stanc rejected the program; the message is stanc's own."""


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

    Examples
    --------
    >>> from stan_bridge.builder import build_model
    >>> from stan_bridge.programs import EXAMPLE_CODE
    >>> from stan_bridge.toolchain import find_toolchain
    >>> build = build_model(EXAMPLE_CODE, find_toolchain(), progressbar=False)
    >>> build.library.exists(), len(build.key)
    (True, 24)
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


def _remove_stale_temporaries(folder: Path, max_age_s: float = 86400.0) -> None:
    """Remove build folders left by processes killed mid-build (older than a day)."""
    now = time.time()
    for tmp in folder.glob("tmp-*"):
        try:
            if tmp.is_dir() and now - tmp.stat().st_mtime > max_age_s:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def _cache_key(
    code: str,
    toolchain: Toolchain,
    stanc_options: Sequence[str],
    cxxflags: Sequence[str],
    include_paths: Sequence[Path],
) -> str:
    """Hash of everything a build depends on (not the file's name or place)."""
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
    return h.hexdigest()[:24]


def _translate(
    code: str,
    toolchain: Toolchain,
    tmp: Path,
    display_name: str,
    include_paths: Sequence[Path],
    stanc_options: Sequence[str],
) -> dict:
    """stanc: ``model.hpp`` and ``info.json`` in ``tmp``; returns the ``--info`` dict."""
    stan_file = tmp / PROGRAM_FILE
    stan_file.write_text(code)
    inc = ["--include-paths=" + ",".join(str(p) for p in include_paths)] if include_paths else []
    _run_stanc(
        toolchain,
        [f"--name={PROGRAM_CLASS}", f"--o={tmp / 'model.hpp'}", *inc, *stanc_options],
        stan_file,
        display_name,
    )
    info_out = _run_stanc(toolchain, ["--info", *inc], stan_file, display_name)
    info = json.loads(info_out.stdout[info_out.stdout.find("{") :])
    (tmp / "info.json").write_text(json.dumps(info, indent=1))
    return info


def _compile_library(
    toolchain: Toolchain,
    cxxflags: Sequence[str],
    pch: Path | None,
    tmp: Path,
    display_name: str,
    t0: float,
    ldflags: Sequence[str] | None = None,
) -> None:
    """The C++ compile of stanc's output and the shim into ``tmp/model.so``."""
    (tmp / "build.cpp").write_text(
        '#include "stan_bridge_pch.hpp"\n#include "model.hpp"\n#include "stan_bridge_shim.cpp"\n'
    )
    cmd = [
        toolchain.cxx,
        *compile_flags(toolchain, cxxflags),
        *([f"-I{pch}"] if pch is not None else []),
        f"-I{tmp}",
        f"-I{SHIM_DIR}",
        "-shared",
        "-o",
        str(tmp / "model.so"),
        str(tmp / "build.cpp"),
        *(toolchain.ldflags if ldflags is None else ldflags),
    ]
    run_compiler(cmd, tmp, f"the C++ code stanc generated for {display_name}")
    record = {
        "toolchain": toolchain.describe(),
        "command": cmd,
        "precompiled_header": str(pch) if pch else None,
        "seconds": time.perf_counter() - t0,
    }
    (tmp / "build.json").write_text(json.dumps(record, indent=1))
    (tmp / "ok").write_text("")


def _compile_linking_sundials(job: _BuildJob, pch: Path | None, tmp: Path) -> None:
    """:func:`_compile_library`, again with position-independent SUNDIALS where the linker
    refused the toolchain's archives (CmdStan's, for programs with ODE/DAE/algebra solvers).

    Once those are built, every later build links against them directly.
    """
    args = (job.cxxflags, pch, tmp, job.display_name, job.t0)
    if pic_sundials_built(job.toolchain, job.root):
        ldflags = pic_sundials_ldflags(job.toolchain, job.root)
        return _compile_library(job.toolchain, *args, ldflags=ldflags)
    try:
        _compile_library(job.toolchain, *args)
    except StanBuildError as err:
        if not needs_pic_sundials(str(err)):
            raise
        ldflags = pic_sundials_ldflags(job.toolchain, job.root)
        _compile_library(job.toolchain, *args, ldflags=ldflags)


def _publish(tmp: Path, final: Path) -> None:
    """Rename a finished build folder into place."""
    if final.exists():  # an unfinished folder from a crashed build
        shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)


class _BuildJob(NamedTuple):
    code: str
    toolchain: Toolchain
    display_name: str
    include_paths: Sequence[Path]
    stanc_options: Sequence[str]
    cxxflags: Sequence[str]
    root: Path
    key: str
    t0: float

    @property
    def final(self) -> Path:
        return self.root / "models" / self.key

    def cached(self) -> ModelBuild | None:
        """The finished build of this key, if there is one."""
        final = self.final
        if not (final / "ok").exists():
            return None
        info = json.loads((final / "info.json").read_text())
        seconds = time.perf_counter() - self.t0
        return ModelBuild(final, final / "model.so", info, self.key, seconds, True)


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
    key = _cache_key(code, toolchain, stanc_options, cxxflags, include_paths)
    job = _BuildJob(
        code, toolchain, display_name, include_paths, stanc_options, cxxflags, root, key, t0
    )
    found = job.cached()
    if found is not None:
        if validate is not None:
            validate(found.info)
        return found
    (root / "models").mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(root / "models")
    return _build_fresh(job, validate, progressbar)


def _build_fresh(
    job: _BuildJob,
    validate: Callable[[dict], None] | None,
    progressbar: bool,
) -> ModelBuild:
    """Build in a private temporary folder, then rename it into place under the lock."""
    models = job.root / "models"
    final = job.final
    with ProgressBar(3, f"Building Stan model {job.display_name}", show=progressbar) as bar:
        tmp = Path(tempfile.mkdtemp(prefix=f"tmp-{job.key}-", dir=models))
        try:
            bar.update(0, step="stanc")
            # stanc first, outside the lock: syntax errors come back at once.
            info = _translate(
                job.code, job.toolchain, tmp, job.display_name, job.include_paths, job.stanc_options
            )
            if validate is not None:
                validate(info)
            bar.update(step="precompiled headers (once per toolchain)")
            with file_lock(models / f"{job.key}.lock"):
                found = job.cached()
                if found is not None:
                    return found
                pch = precompiled_header(job.toolchain, job.cxxflags, job.root)
                bar.update(step="C++ compile (tens of seconds; cached afterwards)")
                _compile_linking_sundials(job, pch, tmp)
                _publish(tmp, final)
                bar.update(step="done")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - job.t0
    return ModelBuild(final, final / "model.so", info, job.key, seconds, False)
