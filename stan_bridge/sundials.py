"""SUNDIALS libraries that can go into a shared library, for Stan's ODE, DAE and algebra solvers.

Stan's stiff ODE solvers (``ode_bdf``, ``ode_adams``, ``ode_adjoint_tol_ctl``,
``integrate_ode_bdf``), its DAE solver and the Newton algebra solver call
SUNDIALS (CVODES, IDAS, KINSOL). CmdStan builds those as static archives
without ``-fPIC``: fine for CmdStan's executables, but the linker refuses
them in our shared library (``relocation R_X86_64_PC32 ... recompile with
-fPIC``). So the first time a program needs them, :func:`pic_sundials_ldflags`
compiles the same SUNDIALS sources, with the same file lists and defines as
Stan Math's ``make/libraries`` but position-independent, into the stan_bridge
cache (once per toolchain, under a lock), and later builds link against those.
The httpstan wheel's archives are position-independent already and are used
as they are.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from stan_bridge.cxx import StanBuildError, file_lock, run_compiler
from stan_bridge.toolchain import Toolchain

__all__ = [
    "needs_pic_sundials",
    "pic_sundials_built",
    "pic_sundials_ldflags",
    "sundials_sources",
]

#: Source folders of each archive, as in Stan Math's ``make/libraries`` (``[^f]*``: the
#: ``f*`` files there are Fortran interfaces, left out).
_SHARED_PARTS = (
    ("sundials", "*.c"),
    ("sunmatrix/band", "[!f]*.c"),
    ("sunmatrix/dense", "[!f]*.c"),
    ("sunlinsol/band", "[!f]*.c"),
    ("sunlinsol/dense", "[!f]*.c"),
    ("sunnonlinsol/newton", "[!f]*.c"),
    ("sunnonlinsol/fixedpoint", "[!f]*.c"),
)
_ARCHIVES = ("cvodes", "idas", "kinsol", "nvecserial")


def needs_pic_sundials(message: str) -> bool:
    """Whether a failed link was the linker refusing non-PIC SUNDIALS archives.

    Parameters
    ----------
    message : str
        The :class:`~stan_bridge.cxx.StanBuildError` message.

    Returns
    -------
    bool

    Examples
    --------
    >>> from stan_bridge.sundials import needs_pic_sundials
    >>> needs_pic_sundials("/usr/bin/ld: libsundials_cvodes.a(cvodes.o): relocation "
    ...                    "R_X86_64_PC32 ... recompile with -fPIC")
    True
    """
    return "sundials" in message and "-fPIC" in message


def sundials_sources(sundials_dir: Path, archive: str) -> list[Path]:
    """The C sources of one SUNDIALS archive (``cvodes``, ``idas``, ``kinsol``, ``nvecserial``).

    Parameters
    ----------
    sundials_dir : Path
        The SUNDIALS tree (with ``src/`` and ``include/``).
    archive : str

    Returns
    -------
    list of Path

    Examples
    --------
    >>> from pathlib import Path
    >>> from stan_bridge.sundials import sundials_sources
    >>> sundials_sources(Path("/nonexistent"), "nvecserial")
    []
    """
    src = sundials_dir / "src"
    if archive == "nvecserial":
        files = [src / "nvector/serial/nvector_serial.c", src / "sundials/sundials_math.c"]
        return [f for f in files if f.exists()]
    parts = ((archive, "*.c"), *_SHARED_PARTS)
    return sorted(p for folder, pattern in parts for p in (src / folder).glob(pattern))


def _archives_in(toolchain: Toolchain) -> dict[str, Path]:
    """``archive name -> path`` of the SUNDIALS archives in the toolchain's link flags."""
    out = {}
    for flag in toolchain.ldflags:
        name = Path(flag).name
        for archive in _ARCHIVES:
            if name == f"libsundials_{archive}.a":
                out[archive] = Path(flag)
    return out


def _compile_archive(toolchain: Toolchain, sundials_dir: Path, archive: str, out: Path) -> None:
    """Compile one archive's sources with ``-fPIC`` and pack them with ``ar``."""
    objects_dir = out / f"obj-{archive}"
    objects_dir.mkdir()
    override = sundials_dir / "include" / "stan_sundials_printf_override.hpp"
    flags = [
        "-O2",
        "-fPIC",
        "-w",
        "-DNO_FPRINTF_OUTPUT",
        f"-I{sundials_dir / 'include'}",
        f"-I{sundials_dir / 'src' / 'sundials'}",
        *(["-include", str(override)] if override.exists() else []),
    ]
    objects = []
    for i, source in enumerate(sundials_sources(sundials_dir, archive)):
        obj = objects_dir / f"{i:03d}_{source.stem}.o"
        run_compiler(
            [toolchain.cxx, *flags, "-x", "c", "-c", str(source), "-o", str(obj)],
            objects_dir,
            f"SUNDIALS ({source.name}, position-independent)",
        )
        objects.append(str(obj))
    ar = shutil.which("ar") or "ar"
    run_compiler(
        [ar, "rcs", str(out / f"libsundials_{archive}.a"), *objects], out, f"{archive} archive"
    )
    shutil.rmtree(objects_dir, ignore_errors=True)


def _pic_dir(toolchain: Toolchain, cache_root: Path) -> tuple[Path, dict[str, Path], str]:
    """Where the position-independent copies go, the toolchain's archives, and their key."""
    archives = _archives_in(toolchain)
    sundials_dir = next(iter(archives.values())).parent.parent if archives else Path()
    key = hashlib.sha256(f"{sundials_dir}\0{toolchain.cxx}".encode()).hexdigest()[:16]
    return cache_root / f"sundials-pic-{key}", archives, key


def pic_sundials_built(toolchain: Toolchain, cache_root: Path) -> bool:
    """Whether position-independent SUNDIALS archives were built for this toolchain already.

    Parameters
    ----------
    toolchain : Toolchain
    cache_root : Path
        The stan_bridge cache directory.

    Returns
    -------
    bool

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from stan_bridge.sundials import pic_sundials_built
    >>> from stan_bridge.toolchain import find_toolchain
    >>> pic_sundials_built(find_toolchain(), Path(tempfile.mkdtemp()))
    False
    """
    final, archives, _ = _pic_dir(toolchain, cache_root)
    return bool(archives) and (final / "ok").exists()


def pic_sundials_ldflags(toolchain: Toolchain, cache_root: Path) -> tuple[str, ...]:
    """The toolchain's link flags with position-independent SUNDIALS archives.

    Built once per toolchain under ``cache_root`` (a lock keeps concurrent
    builds from doing it twice); the flags are returned unchanged when the
    toolchain has no SUNDIALS archives.

    Parameters
    ----------
    toolchain : Toolchain
    cache_root : Path
        The stan_bridge cache directory.

    Returns
    -------
    tuple of str

    Raises
    ------
    StanBuildError
        When the SUNDIALS sources are not in the toolchain, or do not compile.

    Examples
    --------
    >>> from stan_bridge.builder import cache_dir
    >>> from stan_bridge.sundials import pic_sundials_ldflags
    >>> from stan_bridge.toolchain import find_toolchain
    >>> flags = pic_sundials_ldflags(find_toolchain(), cache_dir())  # doctest: +SKIP
    """
    final, archives, key = _pic_dir(toolchain, cache_root)
    if not archives:
        return toolchain.ldflags
    sundials_dir = next(iter(archives.values())).parent.parent
    if not (sundials_dir / "src").is_dir():
        raise StanBuildError(
            f"The SUNDIALS archives in {sundials_dir} are not position-independent and its "
            "sources are not there to rebuild them. Use the httpstan toolchain "
            "(toolchain='httpstan'), whose archives are."
        )
    with file_lock(cache_root / f"sundials-pic-{key}.lock"):
        if not (final / "ok").exists():
            tmp = Path(tempfile.mkdtemp(prefix=f"tmp-sundials-{key}-", dir=cache_root))
            try:
                workers = max(1, min(len(archives), os.cpu_count() or 1))
                with ThreadPoolExecutor(workers) as pool:
                    list(
                        pool.map(
                            lambda a: _compile_archive(toolchain, sundials_dir, a, tmp), archives
                        )
                    )
                (tmp / "ok").write_text(str(sundials_dir))
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    replaced = {str(path): str(final / path.name) for path in archives.values()}
    return tuple(replaced.get(flag, flag) for flag in toolchain.ldflags)
