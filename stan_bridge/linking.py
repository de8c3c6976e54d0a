"""A program's object file, and the two things linked from it: the shim's library and
CmdStan's executable.

The program's C++ (stanc's ``model.hpp``) is compiled once, into ``model.o``,
with CmdStan's own flags plus ``-fPIC`` (:func:`stan_bridge.cxx.compile_flags`).
Then, on demand:

- ``model.so`` = ``model.o`` + the shim's object + the toolchain's libraries
  (TBB; SUNDIALS, position-independent where the linker refuses CmdStan's
  archives, see :mod:`stan_bridge.sundials`);
- the CmdStan executable = ``model.o`` + CmdStan's threaded main object + its
  libraries, with CmdStan's own link line (:mod:`stan_bridge.cmdstan_make`).

Each step returns what it ran, for the build record (``build.json``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from stan_bridge.cxx import (
    StanBuildError,
    cmdstan_main_object,
    compile_flags,
    include_pch,
    run_compiler,
)
from stan_bridge.sundials import needs_pic_sundials, pic_sundials_built, pic_sundials_ldflags
from stan_bridge.toolchain import Toolchain

__all__ = ["compile_model_object", "link_executable", "link_library"]


def _step(cmd: list[str], seconds: float, **more) -> dict:
    return {"command": cmd, "seconds": round(seconds, 3), **more}


def compile_model_object(
    toolchain: Toolchain,
    cxxflags: Sequence[str],
    pch: Path | None,
    folder: Path,
    display_name: str,
    log: Path | None,
) -> dict:
    """Compile ``folder/model.hpp`` into ``folder/model.o`` (the long step of every build).

    Parameters
    ----------
    toolchain : Toolchain
    cxxflags : sequence of str
        Extra C++ flags.
    pch : Path or None
        The precompiled headers' folder (:func:`stan_bridge.cxx.precompiled_header`).
    folder : Path
        Holds stanc's ``model.hpp``; receives ``model.o``.
    display_name : str
        The program's file name, for messages.
    log : Path or None
        The build log.

    Returns
    -------
    dict
        The command, its flags and the seconds it took.

    Examples
    --------
    What it ran for a program, from the build record (the object is compiled
    once per program, then cached):

    >>> from stan_bridge.programs import example_model
    >>> step = example_model().build.record["model_object"]
    >>> step["command"][-1].endswith("model.hpp"), "-fPIC" in step["flags"]
    (True, True)
    """
    flags = compile_flags(toolchain, cxxflags)
    out = folder / "model.o"
    cmd = [
        toolchain.compiler,
        *flags,
        *include_pch(pch),
        "-c",
        "-x",
        "c++",
        "-o",
        str(out),
        str(folder / "model.hpp"),
    ]
    t0 = time.perf_counter()
    run_compiler(cmd, folder, f"the C++ code stanc generated for {display_name}", log)
    return _step(cmd, time.perf_counter() - t0, flags=flags, precompiled_header=str(pch or ""))


def _library_command(model_o: Path, shim_o: Path, out: Path, ldflags: Sequence[str], tc) -> list:
    # --no-undefined: a missing symbol fails here, named, not later when Python loads it
    strict = ["-Wl,--no-undefined"] if sys.platform.startswith("linux") else []
    return [tc.compiler, "-shared", "-pthread", *strict, "-o", str(out), str(model_o),
            str(shim_o), *ldflags]


def link_library(
    toolchain: Toolchain,
    model_o: Path,
    shim_o: Path,
    out: Path,
    cache_root: Path,
    log: Path | None,
) -> dict:
    """Link ``model.o`` and the shim's object into the shared library ``out``.

    Where the linker refuses the toolchain's SUNDIALS archives (not
    position-independent: CmdStan's), position-independent ones are built
    once into the cache and the link is run again; later links use them
    directly.

    Parameters
    ----------
    toolchain : Toolchain
    model_o, shim_o : Path
        The program's object and the shim's.
    out : Path
        The library to write.
    cache_root : Path
        The build cache directory.
    log : Path or None
        The build log.

    Returns
    -------
    dict
        The command and the seconds it took.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from stan_bridge.builder import cache_dir
    >>> from stan_bridge.cxx import precompiled_header, shim_object
    >>> from stan_bridge.linking import link_library
    >>> from stan_bridge.programs import example_model
    >>> from stan_bridge.toolchain import find_toolchain
    >>> tc, root, build = find_toolchain(), cache_dir(), example_model().build
    >>> shim = shim_object(tc, [], root, precompiled_header(tc, [], root), None)
    >>> out = Path(tempfile.mkdtemp()) / "model.so"
    >>> step = link_library(tc, build.directory / "model.o", shim, out, root, None)
    >>> out.exists(), str(build.directory / "model.o") in step["command"]
    (True, True)
    """
    t0 = time.perf_counter()
    what = "the shim's library (linking)"
    if pic_sundials_built(toolchain, cache_root):
        ldflags = pic_sundials_ldflags(toolchain, cache_root)
    else:
        ldflags = toolchain.ldflags
    cmd = _library_command(model_o, shim_o, out, ldflags, toolchain)
    try:
        run_compiler(cmd, out.parent, what, log)
    except StanBuildError as err:
        if not needs_pic_sundials(str(err)) or ldflags != toolchain.ldflags:
            raise
        ldflags = pic_sundials_ldflags(toolchain, cache_root)
        cmd = _library_command(model_o, shim_o, out, ldflags, toolchain)
        run_compiler(cmd, out.parent, what, log)
    return _step(cmd, time.perf_counter() - t0)


def link_executable(
    toolchain: Toolchain, model_o: Path, out: Path, cache_root: Path, log: Path | None
) -> dict:
    """Link ``model.o`` into a CmdStan executable ``out``, with CmdStan's own link line.

    Parameters
    ----------
    toolchain : Toolchain
        A CmdStan toolchain.
    model_o : Path
        The program's object.
    out : Path
        The executable to write.
    cache_root : Path
        The build cache directory (CmdStan's threaded main object is built
        there once, where CmdStan has not built it).
    log : Path or None
        The build log.

    Returns
    -------
    dict
        The command, the main object and the seconds it took (the main
        object's compile included when it was built now).

    Raises
    ------
    StanBuildError
        Without a CmdStan toolchain whose makefiles can be read, or when the
        link fails.

    Examples
    --------
    >>> import subprocess, tempfile
    >>> from pathlib import Path
    >>> from stan_bridge.builder import cache_dir
    >>> from stan_bridge.linking import link_executable
    >>> from stan_bridge.programs import example_model
    >>> from stan_bridge.toolchain import find_toolchain
    >>> build = example_model().build
    >>> out = Path(tempfile.mkdtemp()) / "example"
    >>> _ = link_executable(find_toolchain(), build.directory / "model.o", out, cache_dir(), None)
    >>> "STAN_THREADS=true" in subprocess.run([out, "info"], capture_output=True, text=True).stdout
    True
    """
    t0 = time.perf_counter()
    main = cmdstan_main_object(toolchain, cache_root, log)
    recipe = toolchain.cmdstan_recipe
    assert recipe is not None  # cmdstan_main_object raised otherwise
    cmd = recipe.executable_command(model_o, main, out)
    run_compiler(cmd, recipe.root, "the CmdStan executable (linking)", log)
    os.chmod(out, 0o755)
    return _step(cmd, time.perf_counter() - t0, main_object=str(main))
