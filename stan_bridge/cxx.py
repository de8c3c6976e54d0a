"""The C++ side of a build: compiler flags, the per-toolchain objects, compiler errors.

:mod:`stan_bridge.builder` runs stanc and manages the cache; this module
runs the C++ compiler. Three things are built once per toolchain and set of
flags, each under a lock so that concurrent builds make it once:

- the precompiled Stan headers (``stan_bridge_pch.hpp.gch``), which cut a
  program's compile by about half;
- the shim's object (``stan_bridge_shim.o``): it uses only Stan's
  ``model_base`` interface, so it serves every program;
- CmdStan's threaded main object, where CmdStan has not built it.

Every compiler command's output goes to the build's log file, never to the
terminal; a failure raises :class:`StanBuildError` with the lines that say why
(the missing symbol or library of a failed link), the log's path and its last
lines.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from stan_bridge.toolchain import SHIM_DIR, Toolchain

__all__ = [
    "StanBuildError",
    "cmdstan_main_object",
    "compile_flags",
    "compiler_complaint",
    "file_lock",
    "include_pch",
    "log_tail",
    "precompiled_header",
    "run_compiler",
    "shim_object",
]

#: Flags of every model object: position-independent (it goes into the shim's shared
#: library as well as into CmdStan's executable) and hidden symbols (two libraries loaded
#: in one process never share Stan's template instances or its autodiff tape).
_OBJECT_FLAGS = ("-fPIC", "-fvisibility=hidden")

#: Without CmdStan's recipe (the httpstan toolchain): the optimisation and threading.
_DEFAULT_FLAGS = ("-O3", "-pthread")

#: Warnings that Stan's headers and stanc's code raise by the thousand.
_QUIET_FLAGS = (
    "-Wno-sign-compare",
    "-Wno-ignored-attributes",
    "-Wno-deprecated-declarations",
    "-Wno-unused-but-set-variable",
    "-Wno-unused-variable",
    "-Wno-unused-function",
    "-Wno-unused-local-typedefs",
)


class StanBuildError(RuntimeError):
    """The C++ compiler failed on stanc's output (not a problem in the Stan code)."""


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock held for the ``with`` block (blocks until free).

    Parameters
    ----------
    path : Path
        The lock file (created if missing).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from stan_bridge.cxx import file_lock
    >>> with file_lock(Path(tempfile.mkdtemp()) / "build.lock"):
    ...     pass
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def compile_flags(toolchain: Toolchain, extra: Sequence[str]) -> list[str]:
    """The C++ flags of every build: the toolchain's, ours, then ``extra``.

    With CmdStan, the toolchain's flags are CmdStan's own for a program
    (:attr:`~stan_bridge.toolchain.Toolchain.compile_flags`, with its
    optimisation level); ours only add ``-fPIC``, hidden symbols and fewer
    warnings. The precompiled header, the shim's object and every program's
    object are compiled with exactly these flags.

    Examples
    --------
    >>> from stan_bridge.cxx import compile_flags
    >>> from stan_bridge.toolchain import find_toolchain
    >>> "-fPIC" in compile_flags(find_toolchain(), ["-march=native"])
    True
    """
    base = () if toolchain.cmdstan_recipe is not None else _DEFAULT_FLAGS
    return [*toolchain.compile_flags, *base, *_OBJECT_FLAGS, *_QUIET_FLAGS, *extra]


#: What a compiler or linker line says when it is the reason for a failure. ``collect2: error:
#: ld returned 1 exit status`` alone says nothing: the linker's own lines before it
#: (``undefined reference to ...``, ``cannot find -l...``, ``relocation ... recompile with
#: -fPIC``) name the symbol or library.
_COMPLAINTS = (
    "error",
    "undefined reference",
    "cannot find",
    "relocation",
    "recompile with",
    "multiple definition",
    "/ld:",
    "ld: ",
)


def compiler_complaint(stderr: str, max_lines: int = 30) -> str:
    r"""The lines of a compiler's or linker's output that say why it failed.

    Parameters
    ----------
    stderr : str
        Its standard error.
    max_lines : int
        Most lines kept (the first ones: later errors often follow from them).

    Returns
    -------
    str
        Those lines, or the end of ``stderr`` when none matches.

    Examples
    --------
    >>> from stan_bridge.cxx import compiler_complaint
    >>> print(compiler_complaint(
    ...     "/usr/bin/ld: model.o: in function `f':\n"
    ...     "model.cpp:(.text+0x5): undefined reference to `CVodeCreate'\n"
    ...     "collect2: error: ld returned 1 exit status"))
    /usr/bin/ld: model.o: in function `f':
    model.cpp:(.text+0x5): undefined reference to `CVodeCreate'
    collect2: error: ld returned 1 exit status
    """
    lines = [ln for ln in stderr.splitlines() if any(c in ln.lower() for c in _COMPLAINTS)]
    return "\n".join(lines[:max_lines]) or stderr[-4000:]


def log_tail(log: Path, lines: int = 15, width: int = 300) -> str:
    """The last ``lines`` lines of a build log, each cut to ``width`` characters.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from stan_bridge.cxx import log_tail
    >>> log = Path(tempfile.mkdtemp()) / "build.log"
    >>> _ = log.write_text("".join(f"line {i}\\n" for i in range(100)))
    >>> log_tail(log, 2)
    'line 98\\nline 99'
    """
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    tail = text.rstrip().splitlines()[-lines:]
    return "\n".join(ln if len(ln) <= width else ln[:width] + " ..." for ln in tail)


def run_compiler(cmd: list[str], cwd: Path, what: str, log: Path | None = None) -> None:
    """Run one compiler command; on failure raise :class:`StanBuildError` with its errors.

    Parameters
    ----------
    cmd : list of str
        The command.
    cwd : Path
        Where it runs.
    what : str
        What is being compiled, for the message.
    log : Path, optional
        The build log: the command and everything it printed are appended
        there (the terminal shows none of it). A failure's message names the
        log and shows its last lines.

    Examples
    --------
    >>> from pathlib import Path
    >>> from stan_bridge.cxx import StanBuildError, run_compiler
    >>> try:
    ...     run_compiler(["false"], Path("."), "nothing")
    ... except StanBuildError as err:
    ...     print(str(err).splitlines()[0])
    The C++ compiler failed on nothing. This is a problem of the toolchain or of stan_bridge, ...
    """
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as fh:
            fh.write(f"$ (cd {cwd} && {shlex.join(cmd)})\n{proc.stdout}{proc.stderr}")
            fh.write(f"[exit status {proc.returncode}]\n\n")
    if proc.returncode != 0:
        detail = compiler_complaint(proc.stderr or proc.stdout)
        where = ""
        if log is not None:
            where = f"\nFull output: {log}\nLast lines of the log:\n{log_tail(log)}"
        raise StanBuildError(
            f"The C++ compiler failed on {what}. This is a problem of the toolchain or of "
            f"stan_bridge, not of the Stan program.\nCommand: {shlex.join(cmd)}\n{detail}{where}"
        )


def _key(toolchain: Toolchain, flags: Sequence[str]) -> str:
    return hashlib.sha256("\0".join([toolchain.fingerprint, *flags]).encode()).hexdigest()[:20]


def _build_once(
    root: Path, name: str, build: Callable[[Path], None], keep_failure: bool = False
) -> Path | None:
    """``root/name``, made once by ``build(tmp)`` in a private folder renamed into place.

    A lock keeps concurrent processes from building it twice. With
    ``keep_failure`` a failed build is recorded (a ``failed`` file, so later
    builds do not retry it) and None is returned; otherwise the error is raised.
    """
    final = root / name
    if (final / "ok").exists():
        return final
    if (final / "failed").exists():
        return None
    with file_lock(root / f"{name}.lock"):
        if (final / "ok").exists():
            return final
        if (final / "failed").exists():
            return None
        tmp = Path(tempfile.mkdtemp(prefix=f"tmp-{name}-", dir=root))
        try:
            try:
                build(tmp)
                (tmp / "ok").write_text("")
            except StanBuildError as err:
                if not keep_failure:
                    raise
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


def precompiled_header(
    toolchain: Toolchain, extra: Sequence[str], root: Path, log: Path | None = None
) -> Path | None:
    """Folder holding ``stan_bridge_pch.hpp.gch`` for these flags, built once.

    Parameters
    ----------
    toolchain : Toolchain
    extra : sequence of str
        Extra C++ flags (the header must be built with the model's flags).
    root : Path
        The build cache directory.
    log : Path, optional
        Where the compiler's output goes.

    Returns
    -------
    Path or None
        None where precompiled headers are switched off
        (``STAN_BRIDGE_PCH=0``) or failed to build (then models still
        build, only slower).

    Examples
    --------
    >>> from stan_bridge.builder import cache_dir
    >>> from stan_bridge.cxx import precompiled_header
    >>> from stan_bridge.toolchain import find_toolchain
    >>> pch = precompiled_header(find_toolchain(), [], cache_dir())  # built once, then cached
    >>> pch is None or (pch / "stan_bridge_pch.hpp.gch").exists()
    True
    """
    if os.environ.get("STAN_BRIDGE_PCH", "1").lower() in ("0", "false", "no", "off"):
        return None
    flags = compile_flags(toolchain, extra)

    def build(tmp: Path) -> None:
        shutil.copy(SHIM_DIR / "stan_bridge_pch.hpp", tmp / "stan_bridge_pch.hpp")
        gch = tmp / "stan_bridge_pch.hpp.gch"
        cmd = [toolchain.compiler, *flags, "-x", "c++-header", "-o", str(gch), str(gch)[:-4]]
        run_compiler(cmd, tmp, "the precompiled Stan headers", log)

    return _build_once(root, f"pch-{_key(toolchain, flags)}", build, keep_failure=True)


def include_pch(pch: Path | None) -> list[str]:
    """Flags that put ``stan_bridge_pch.hpp`` (precompiled where ``pch`` is given) first.

    ``-include`` looks in the working directory first, then in ``-I``
    folders in order: run the compile elsewhere than :data:`SHIM_DIR`.

    Examples
    --------
    >>> from stan_bridge.cxx import include_pch
    >>> include_pch(None)[-2:]
    ['-include', 'stan_bridge_pch.hpp']
    """
    return [*([f"-I{pch}"] if pch is not None else []), f"-I{SHIM_DIR}"] + [
        "-include",
        "stan_bridge_pch.hpp",
    ]


def shim_object(
    toolchain: Toolchain, extra: Sequence[str], root: Path, pch: Path | None, log: Path | None
) -> Path:
    """The shim's object file (``stan_bridge_shim.o``), the same for every program: built once.

    It uses only ``stan::model::model_base`` and the factory ``new_model``
    that every program's object defines, so one object per toolchain and
    flags serves every program.

    Parameters
    ----------
    toolchain : Toolchain
    extra : sequence of str
        Extra C++ flags (as the programs').
    root : Path
        The build cache directory.
    pch : Path or None
        From :func:`precompiled_header`.
    log : Path or None
        Where the compiler's output goes.

    Returns
    -------
    Path

    Examples
    --------
    >>> from stan_bridge.builder import cache_dir
    >>> from stan_bridge.cxx import precompiled_header, shim_object
    >>> from stan_bridge.toolchain import find_toolchain
    >>> tc, root = find_toolchain(), cache_dir()
    >>> shim_object(tc, [], root, precompiled_header(tc, [], root), None).name
    'stan_bridge_shim.o'
    """
    flags = compile_flags(toolchain, extra)
    source = SHIM_DIR / "stan_bridge_shim.cpp"

    def build(tmp: Path) -> None:
        out = tmp / "stan_bridge_shim.o"
        cmd = [toolchain.compiler, *flags, *include_pch(pch), "-c", "-o", str(out), str(source)]
        run_compiler(cmd, tmp, "the stan_bridge shim", log)

    folder = _build_once(root, f"shim-{_key(toolchain, flags)}", build)
    assert folder is not None
    return folder / "stan_bridge_shim.o"


def cmdstan_main_object(toolchain: Toolchain, root: Path, log: Path | None = None) -> Path:
    """CmdStan's threaded main object: CmdStan's own where built, else built once into the cache.

    Built with CmdStan's own command (``$(COMPILE.cpp)`` with
    ``STAN_THREADS=true``), as ``make`` in CmdStan would; about a minute, once
    per toolchain.

    Parameters
    ----------
    toolchain : Toolchain
        A CmdStan toolchain whose recipe could be read.
    root : Path
        The build cache directory.
    log : Path, optional
        Where the compiler's output goes.

    Returns
    -------
    Path

    Raises
    ------
    StanBuildError
        Without CmdStan's recipe, or when the compile fails.

    Examples
    --------
    >>> from stan_bridge.builder import cache_dir
    >>> from stan_bridge.cxx import cmdstan_main_object
    >>> from stan_bridge.toolchain import find_toolchain
    >>> cmdstan_main_object(find_toolchain(), cache_dir()).name  # doctest: +SKIP
    'main_threads.o'
    """
    recipe = toolchain.cmdstan_recipe
    if recipe is None:
        raise StanBuildError(f"No CmdStan executable can be linked: {toolchain.recipe_error}.")
    own = recipe.main_object
    if own.exists() and own.stat().st_mtime >= recipe.main_source.stat().st_mtime:
        return own

    def build(tmp: Path) -> None:
        run_compiler(recipe.main_command(tmp / own.name), recipe.root, "CmdStan's main()", log)

    folder = _build_once(root, f"cmdstan-main-{recipe.digest}", build)
    assert folder is not None
    return folder / own.name
