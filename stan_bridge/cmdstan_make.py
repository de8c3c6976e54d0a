"""CmdStan's own recipe for a program: its compile flags, main object and link line.

CmdStan builds an executable in two commands (``make/program``)::

    $(COMPILE.cpp) $(CXXFLAGS_PROGRAM) -x c++ -o model.o model.hpp
    $(LINK.cpp) model.o $(CMDSTAN_MAIN_O) $(LDLIBS) $(LIBSUNDIALS) $(MPI_TARGETS) \
        $(TBB_TARGETS) -o model

:func:`cmdstan_recipe` reads those variables from CmdStan's makefiles with its
``print-VAR`` target (so ``make/local``, ``$CXX`` and CmdStan's version are
taken into account exactly as CmdStan's own build would), always with
``STAN_THREADS=true``: the shim's library needs the thread-local autodiff tape
(Python threads call it), and the object file is shared by the library and the
executable, so the executable is the one CmdStan builds with
``cpp_options={"STAN_THREADS": True}``. Its main object
(``src/cmdstan/main_threads.o``) is CmdStan's if CmdStan has built it, else
built once per toolchain into the stan_bridge cache with CmdStan's own command
(:func:`stan_bridge.cxx.cmdstan_main_object`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CmdStanRecipe", "MAKE_VARIABLES", "cmdstan_recipe", "read_make_variables"]

#: The variables of ``make/program`` that make up CmdStan's compile and link commands.
MAKE_VARIABLES = (
    "CXX",
    "COMPILE.cpp",
    "CXXFLAGS_PROGRAM",
    "LINK.cpp",
    "LDLIBS",
    "LIBSUNDIALS",
    "MPI_TARGETS",
    "TBB_TARGETS",
    "CMDSTAN_MAIN",
    "CMDSTAN_MAIN_O",
)

@dataclass(frozen=True)
class CmdStanRecipe:
    """How CmdStan compiles and links a program (``STAN_THREADS=true``), with absolute paths.

    Attributes
    ----------
    root : Path
        The CmdStan directory.
    cxx : str
        The compiler CmdStan uses (``$(CXX)``).
    compile_flags : tuple of str
        ``$(COMPILE.cpp) $(CXXFLAGS_PROGRAM)`` less the compiler, ``-c`` and
        CmdStan's own precompiled header (``-include-pch``, clang only).
    link : tuple of str
        ``$(LINK.cpp)``: the compiler and its link flags.
    libraries : tuple of str
        ``$(LDLIBS) $(LIBSUNDIALS) $(MPI_TARGETS) $(TBB_TARGETS)``.
    main_source : Path
        ``src/cmdstan/main.cpp``.
    main_object : Path
        ``$(CMDSTAN_MAIN_O)`` in the CmdStan tree (it may not be built).

    Examples
    --------
    >>> from stan_bridge.toolchain import find_toolchain
    >>> recipe = find_toolchain().cmdstan_recipe
    >>> "-DSTAN_THREADS" in recipe.compile_flags, recipe.main_object.name
    (True, 'main_threads.o')
    """

    root: Path
    cxx: str
    compile_flags: tuple[str, ...]
    link: tuple[str, ...]
    libraries: tuple[str, ...]
    main_source: Path
    main_object: Path

    def executable_command(self, model_object: Path, main: Path, out: Path) -> list[str]:
        """CmdStan's link line for ``model_object`` (run it in :attr:`root`)."""
        return [*self.link, str(model_object), str(main), *self.libraries, "-o", str(out)]

    def main_command(self, out: Path) -> list[str]:
        """CmdStan's command for its main object, writing to ``out``."""
        return [self.cxx, *self.compile_flags, "-c", "-o", str(out), str(self.main_source)]

    @property
    def digest(self) -> str:
        """A hash of the recipe (what a build made from it depends on)."""
        parts = (self.cxx, *self.compile_flags, "|", *self.link, "|", *self.libraries)
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


def _absolute(tokens: list[str], root: Path) -> list[str]:
    """Paths relative to the CmdStan directory made absolute (our builds run elsewhere)."""
    out = []
    for tok in tokens:
        for prefix in ("-I", "-L", "-isystem"):
            if tok.startswith(prefix) and len(tok) > len(prefix) and tok[len(prefix)] != "/":
                cand = root / tok[len(prefix) :]
                if cand.exists():
                    tok = prefix + str(cand)
                break
        else:
            if not tok.startswith("-") and not os.path.isabs(tok) and (root / tok).exists():
                tok = str(root / tok)
        out.append(tok)
    return out


def _without(tokens: list[str], flag: str, with_value: bool) -> list[str]:
    out, skip = [], False
    for tok in tokens:
        if skip:
            skip = False
        elif tok == flag:
            skip = with_value
        else:
            out.append(tok)
    return out


def read_make_variables(root: Path, names: tuple[str, ...] = MAKE_VARIABLES) -> dict[str, str]:
    """Values of CmdStan's make variables (``make print-VAR``), with ``STAN_THREADS=true``.

    Parameters
    ----------
    root : Path
        The CmdStan directory.
    names : tuple of str
        The variables.

    Returns
    -------
    dict
        ``name -> value``.

    Raises
    ------
    RuntimeError
        When make is missing or fails.

    Examples
    --------
    >>> from stan_bridge.cmdstan_make import read_make_variables
    >>> from stan_bridge.toolchain import find_toolchain
    >>> read_make_variables(find_toolchain().root, ("CMDSTAN_MAIN",))
    {'CMDSTAN_MAIN': 'src/cmdstan/main.cpp'}
    """
    make = os.environ.get("MAKE") or shutil.which("make")
    if make is None:
        raise RuntimeError("make is not installed")
    cmd = [make, "--no-print-directory", "STAN_THREADS=true", *(f"print-{n}" for n in names)]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {root}: {proc.stderr.strip()[-2000:]}")
    values = {}
    for line in proc.stdout.splitlines():
        name, sep, value = line.partition(" =")
        if sep and name in names:
            values[name] = value.strip()
    missing = [n for n in names if n not in values]
    if missing:
        raise RuntimeError(f"CmdStan's makefiles in {root} do not define {missing}")
    return values


@functools.cache
def cmdstan_recipe(root: Path) -> CmdStanRecipe:
    """CmdStan's compile and link recipe for programs, read from its makefiles (cached).

    Parameters
    ----------
    root : Path
        The CmdStan directory.

    Returns
    -------
    CmdStanRecipe

    Raises
    ------
    RuntimeError
        When make is missing or CmdStan's makefiles cannot be read.

    Examples
    --------
    >>> from stan_bridge.cmdstan_make import cmdstan_recipe
    >>> from stan_bridge.toolchain import find_toolchain
    >>> recipe = cmdstan_recipe(find_toolchain().root)
    >>> recipe.link[0] == recipe.cxx
    True
    """
    root = Path(root)
    v = read_make_variables(root)
    compile_cpp = shlex.split(v["COMPILE.cpp"])
    program = _without(shlex.split(v["CXXFLAGS_PROGRAM"]), "-include-pch", True)
    flags = [t for t in compile_cpp[1:] if t != "-c"] + program
    libraries = " ".join(v[n] for n in ("LDLIBS", "LIBSUNDIALS", "MPI_TARGETS", "TBB_TARGETS"))
    return CmdStanRecipe(
        root=root,
        cxx=compile_cpp[0] if compile_cpp else v["CXX"],
        compile_flags=tuple(_absolute(flags, root)),
        link=tuple(_absolute(shlex.split(v["LINK.cpp"]), root)),
        libraries=tuple(_absolute(shlex.split(libraries), root)),
        main_source=root / v["CMDSTAN_MAIN"],
        main_object=root / v["CMDSTAN_MAIN_O"],
    )
