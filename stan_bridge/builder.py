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
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from pymc_ext.blocks.progress import ProgressBar
from stan_bridge.cxx import StanBuildError, file_lock, precompiled_header, shim_object
from stan_bridge.linking import compile_model_object, link_executable, link_library
from stan_bridge.stanc import (
    PROGRAM_FILE,
    StanCompileError,
    class_name,
    included_sources,
    run_stanc_info,
    stan_file_name,
    translate,
    user_message,
)
from stan_bridge.toolchain import Toolchain

__all__ = [  # the stanc names are re-exported: they were defined here before
    "PROGRAM_FILE",
    "PRODUCT_FILES",
    "StanCompileError",
    "StanBuildError",
    "ModelBuild",
    "build_model",
    "cache_dir",
    "class_name",
    "run_stanc_info",
    "stan_file_name",
    "user_message",
]

_BUILD_FORMAT = 3  # bump when the layout of a build folder changes



@dataclass(frozen=True)
class ModelBuild:
    """A finished build: where its products are and what stanc said about the program.

    Attributes
    ----------
    directory : Path
        The cache folder of this build (``model.o`` and the products).
    library : Path
        The shim's library, ``model.so`` (present when it was asked for, by
        this call or an earlier one).
    info : dict
        ``stanc --info`` output: inputs, parameters, transformed parameters,
        generated quantities (each ``name -> {"type", "dimensions"}``).
    key : str
        The cache key (hash).
    seconds : float
        Time this call spent (near zero when the build was cached).
    cached : bool
        True when the program's C++ was not compiled by this call (at most a
        product was linked from the cached object).
    executable : Path or None
        CmdStan's executable for the program, where it was asked for.

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
    executable: Path | None = None

    @property
    def record(self) -> dict:
        """The build record (``build.json``): each command that built this, and its time."""
        path = self.directory / "build.json"
        return json.loads(path.read_text()) if path.exists() else {}


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
    display_name: str,
) -> str:
    """Hash of everything a build depends on: the file's name (stanc writes it into the
    C++ for Stan's messages) but not its place."""
    h = hashlib.sha256()
    for part in (
        str(_BUILD_FORMAT),
        code,
        display_name,
        toolchain.fingerprint,
        *stanc_options,
        "|",
        *cxxflags,
        "|",
        *included_sources(code, include_paths),
    ):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def _translate(job: _BuildJob, tmp: Path) -> dict:
    """stanc: ``model.hpp`` and ``info.json`` in ``tmp``; returns the ``--info`` dict."""
    return translate(
        job.code, job.toolchain, tmp, job.display_name, job.include_paths, job.stanc_options
    )


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

    @property
    def log(self) -> Path:
        return self.root / "logs" / f"{self.key}.log"

    def missing(self, products: Sequence[str]) -> list[str]:
        """The products (``"library"``, ``"executable"``) not in the finished build yet."""
        return [p for p in products if not (self.final / PRODUCT_FILES[p]).exists()]

    def result(self, info: dict, cached: bool) -> ModelBuild:
        final = self.final
        exe = final / PRODUCT_FILES["executable"]
        seconds = time.perf_counter() - self.t0
        return ModelBuild(
            final, final / PRODUCT_FILES["library"], info, self.key, seconds, cached,
            exe if exe.exists() else None,
        )

    def cached(self) -> ModelBuild | None:
        """The finished build of this key (its object compiled), if there is one."""
        if not (self.final / "ok").exists():
            return None
        return self.result(json.loads((self.final / "info.json").read_text()), True)


#: File names of what can be made from a build's ``model.o``.
PRODUCT_FILES = {"library": "model.so", "executable": "model"}


def _update_record(folder: Path, **steps: dict) -> None:
    """Add steps to the build record ``build.json`` (written whole, then renamed)."""
    path = folder / "build.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    record.update(steps)
    tmp = folder / "build.json.tmp"
    tmp.write_text(json.dumps(record, indent=1, default=str))
    os.replace(tmp, path)


def _make_products(job: _BuildJob, products: Sequence[str], bar: ProgressBar) -> None:
    """Link the missing products from the finished build's ``model.o`` (under the build's lock)."""
    final = job.final
    for product in job.missing(products):
        out = final / f".{PRODUCT_FILES[product]}.tmp"
        if product == "library":
            bar.update(0, step="linking the library (the shim's object is built once)")
            pch = precompiled_header(job.toolchain, job.cxxflags, job.root, job.log)
            shim = shim_object(job.toolchain, job.cxxflags, job.root, pch, job.log)
            step = link_library(job.toolchain, final / "model.o", shim, out, job.root, job.log)
        elif product == "executable":
            bar.update(0, step="linking the CmdStan executable")
            step = link_executable(job.toolchain, final / "model.o", out, job.root, job.log)
        else:
            raise ValueError(f"Unknown build product {product!r}")
        os.replace(out, final / PRODUCT_FILES[product])
        _update_record(final, **{product: step})
        bar.update()


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
    products: Sequence[str] = ("library",),
) -> ModelBuild:
    """Build (or find in the cache) a Stan program: its object, and its library or executable.

    The program's C++ is compiled once, into ``model.o``; the shim's library
    (``model.so``) and CmdStan's executable (``model``) are linked from that
    object when asked for, now or by a later call.

    Parameters
    ----------
    code : str
        The Stan program.
    toolchain : Toolchain
        From :func:`~stan_bridge.toolchain.find_toolchain`.
    display_name : str
        The program's file name, which messages show. The build does not
        depend on the file's folder: the same program in two folders is
        built once.
    include_paths : sequence of path
        Where stanc looks up ``#include`` files.
    stanc_options, cxxflags : sequence of str
        Extra stanc flags (``["--O"]``) and C++ flags (``["-march=native"]``).
    cache : path, optional
        The cache directory (see :func:`cache_dir`).
    progressbar : bool
        Show the build steps (one line, with the build log's path).
    validate : callable, optional
        Called with the ``stanc --info`` dict before the (long) C++ compile,
        and also when the build is cached; raise there to stop early.
    products : sequence of str
        What to link from the object: ``"library"`` (the default) and/or
        ``"executable"`` (for a CmdStan toolchain).

    Returns
    -------
    ModelBuild

    Raises
    ------
    StanCompileError
        stanc rejected the program (its message, with line and column).
    StanBuildError
        The compiler or linker failed (why, the log's path and its tail).

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
    if not set(products) <= set(PRODUCT_FILES):
        raise ValueError(f"Unknown build products {products}; choose from {list(PRODUCT_FILES)}")
    key = _cache_key(code, toolchain, stanc_options, cxxflags, include_paths, display_name)
    job = _BuildJob(
        code, toolchain, display_name, include_paths, stanc_options, cxxflags, root, key, t0
    )
    found = job.cached()
    if found is not None:
        if validate is not None:
            validate(found.info)
        if not job.missing(products):
            return found
    else:
        (root / "models").mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(root / "models")
    return _build_fresh(job, validate, progressbar, products)


def _build_fresh(
    job: _BuildJob,
    validate: Callable[[dict], None] | None,
    progressbar: bool,
    products: Sequence[str],
) -> ModelBuild:
    """Build in a private temporary folder, then rename it into place under the lock."""
    models = job.root / "models"
    found = job.cached()
    total = len(job.missing(products)) + (0 if found is not None else 3)
    if found is None and progressbar:  # the compiler's output goes to the log, not here
        print(
            f"Building Stan model {job.display_name}; compiler output in {job.log}",
            file=sys.stderr,
            flush=True,
        )
    title = f"{'Linking' if found else 'Building'} {job.display_name}"
    with ProgressBar(total, title, show=progressbar) as bar, file_lock(models / f"{job.key}.lock"):
        if found is None:
            found = job.cached()  # another process may have built it meanwhile
        if found is None:
            info = _compile_object(job, validate, bar)
            found = job.result(info, False)
        _make_products(job, products, bar)
        bar.update(0, step="done")
    return job.result(found.info, found.cached)


def _compile_object(
    job: _BuildJob, validate: Callable[[dict], None] | None, bar: ProgressBar
) -> dict:
    """stanc, then the program's ``model.o``, in a private folder renamed into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f"tmp-{job.key}-", dir=job.root / "models"))
    try:
        bar.update(0, step="stanc")
        info = _translate(job, tmp)
        if validate is not None:
            validate(info)
        job.log.parent.mkdir(parents=True, exist_ok=True)
        job.log.write_text(f"stan_bridge build of {job.display_name} ({job.key})\n\n")
        bar.update(step="precompiled headers (once per toolchain)")
        pch = precompiled_header(job.toolchain, job.cxxflags, job.root, job.log)
        bar.update(step="C++ compile of the program (tens of seconds; cached afterwards)")
        step = compile_model_object(
            job.toolchain, job.cxxflags, pch, tmp, job.display_name, job.log
        )
        _update_record(tmp, toolchain=job.toolchain.describe(), model_object=step)
        (tmp / "ok").write_text("")
        _publish(tmp, job.final)
        bar.update()
        return info
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
