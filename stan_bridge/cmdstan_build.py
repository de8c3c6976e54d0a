"""The executable of :class:`stan_bridge.CmdStanModel`, from stan_bridge's build of the program.

cmdstanpy compiles a program into CmdStan's executable, and the shim's library
for warm starts needs the same C++ compiled again. Instead,
``stan_bridge.CmdStanModel(stan_file=...)`` has :func:`shared_executable`
build the program once with :func:`stan_bridge.builder.build_model`: its
``model.o`` (CmdStan's own flags with ``STAN_THREADS``, plus ``-fPIC``) is
linked into CmdStan's executable now and into the shim's library when a warm
start first needs it, without compiling again.

The executable is copied beside the ``.stan`` file, where cmdstanpy puts its
own, and cmdstanpy is given it as ``exe_file``. Where stan_bridge cannot build
what the user asked cmdstanpy for (``cpp_options`` other than
``STAN_THREADS``, a ``user_header``, stanc options other than include paths,
``force_compile``, a deprecated ``model_name``), or where cmdstanpy would not
compile at all (an ``exe_file`` given, an executable beside the file newer
than the file), cmdstanpy does as it always does.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stan_bridge.builder import ModelBuild, StanBuildError, build_model
from stan_bridge.toolchain import Toolchain, ToolchainNotFoundError, find_toolchain

__all__ = ["BuiltOnce", "SharedExecutable", "shared_executable", "why_cmdstanpy_compiles"]

_log = logging.getLogger("stan_bridge")


@dataclass(frozen=True)
class SharedExecutable:
    """CmdStan's executable for a program, and the stan_bridge build it was linked from.

    Attributes
    ----------
    exe_file : Path
        The executable cmdstanpy runs (beside the ``.stan`` file where that
        folder is writable, else in the build's folder).
    build : ModelBuild
        The build (``build.directory``, ``build.record``, ...).

    Examples
    --------
    >>> from stan_bridge.cmdstan_build import SharedExecutable  # see shared_executable
    """

    exe_file: Path
    build: ModelBuild


def _truthy(value: Any) -> bool:
    return str(value).lower() in ("1", "true", "yes", "on")


def why_cmdstanpy_compiles(
    stan_file: str | os.PathLike | None,
    *,
    model_name: str | None = None,
    exe_file: str | os.PathLike | None = None,
    force_compile: bool = False,
    stanc_options: Mapping[str, Any] | None = None,
    cpp_options: Mapping[str, Any] | None = None,
    user_header: str | os.PathLike | None = None,
    compile: bool | str | None = None,
) -> str:
    """Why cmdstanpy, not stan_bridge, makes the executable ("" when stan_bridge does).

    The arguments are ``cmdstanpy.CmdStanModel``'s.

    Examples
    --------
    >>> from stan_bridge.cmdstan_build import why_cmdstanpy_compiles
    >>> why_cmdstanpy_compiles(None, exe_file="bernoulli")
    'no Stan file, or an executable was given'
    >>> why_cmdstanpy_compiles("m.stan", cpp_options={"STAN_OPENCL": True})
    "cpp_options {'STAN_OPENCL': True} (stan_bridge builds only with STAN_THREADS)"
    """
    if stan_file is None or exe_file is not None:
        return "no Stan file, or an executable was given"
    if compile is False or force_compile or str(compile).lower() == "force":
        return "compile=False or a forced compile"
    if model_name is not None:
        return "model_name was given"
    if user_header is not None:
        return "a user_header was given"
    cpp = dict(cpp_options or {})
    if any(k != "STAN_THREADS" or not _truthy(v) for k, v in cpp.items()):
        return f"cpp_options {cpp} (stan_bridge builds only with STAN_THREADS)"
    other = [k for k in (stanc_options or {}) if k != "include-paths"]
    if other:
        return f"stanc options {other} (stan_bridge passes on only include-paths)"
    target = Path(stan_file).with_suffix("")
    stan_path = Path(stan_file)
    if target.exists() and stan_path.exists():
        if target.stat().st_mtime >= stan_path.stat().st_mtime:
            return "an executable newer than the Stan file is beside it"
    return ""


def _place_beside(exe: Path, target: Path) -> Path:
    """Copy ``exe`` to ``target`` (written whole, then renamed); return ``target``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(exe, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _place(build: ModelBuild, stan_file: Path) -> Path:
    """Where cmdstanpy looks (beside the ``.stan`` file), else a named copy in the build."""
    assert build.executable is not None
    target = stan_file.with_suffix("")
    try:
        return _place_beside(build.executable, target)
    except OSError as err:
        _log.info("Cannot write %s (%s); the executable stays in %s", target, err, build.directory)
    named = build.directory / "bin" / target.name
    if not named.exists():
        named.parent.mkdir(exist_ok=True)
        _place_beside(build.executable, named)
    return named


def _cmdstan_toolchain() -> Toolchain | None:
    import cmdstanpy

    try:
        toolchain = find_toolchain(cmdstanpy.cmdstan_path())
    except (ValueError, ToolchainNotFoundError):
        return None
    return toolchain if toolchain.cmdstan_recipe is not None else None


def shared_executable(
    stan_file: str | os.PathLike | None, progressbar: bool = True, **cmdstanpy_args: Any
) -> SharedExecutable | None:
    """Build a program's CmdStan executable with stan_bridge, or None where cmdstanpy should.

    Parameters
    ----------
    stan_file : path or None
        The program.
    progressbar : bool
        Show the build's progress line (with its log's path).
    **cmdstanpy_args
        The other arguments of ``cmdstanpy.CmdStanModel``
        (:func:`why_cmdstanpy_compiles`).

    Returns
    -------
    SharedExecutable or None
        None where cmdstanpy compiles as it always does (the reason is
        logged), or where stan_bridge's build failed (a warning says why,
        with the build log's path; cmdstanpy then compiles).

    Raises
    ------
    StanCompileError
        stanc rejected the program (a ``ValueError``, as cmdstanpy raises).

    Examples
    --------
    >>> import shutil, tempfile
    >>> from pathlib import Path
    >>> from stan_bridge.cmdstan_build import shared_executable
    >>> from stan_bridge.programs import write_program
    >>> stan_file = Path(tempfile.mkdtemp()) / "arK.stan"
    >>> _ = shutil.copy(write_program("arK"), stan_file)
    >>> shared = shared_executable(stan_file, progressbar=False)  # cached: links only
    >>> shared.exe_file == stan_file.with_suffix(""), shared.build.executable.exists()
    (True, True)
    """
    reason = why_cmdstanpy_compiles(stan_file, **cmdstanpy_args)
    toolchain = None if reason else _cmdstan_toolchain()
    if toolchain is None:
        _log.debug("cmdstanpy compiles %s: %s", stan_file, reason or "no CmdStan recipe")
        return None
    path = Path(os.path.realpath(os.path.expanduser(os.fspath(stan_file))))
    if not path.is_file():
        return None  # cmdstanpy says so
    try:
        build = build_model(
            path.read_text(),
            toolchain,
            display_name=path.name,
            include_paths=[path.parent],
            products=("executable",),
            progressbar=progressbar,
        )
    except StanBuildError as err:
        warnings.warn(
            f"stan_bridge could not build {path.name} once for both CmdStan and the warm "
            f"start, so cmdstanpy compiles it (and a warm start compiles it again):\n{err}",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return SharedExecutable(_place(build, path), build)


class BuiltOnce:
    """The constructor of :class:`stan_bridge.CmdStanModel`: cmdstanpy's, building the C++ once.

    It takes ``cmdstanpy.CmdStanModel``'s arguments, has
    :func:`shared_executable` build the program, and hands cmdstanpy the
    executable as ``exe_file`` (cmdstanpy's own compile where
    :func:`shared_executable` returns None).

    Examples
    --------
    >>> import shutil, tempfile
    >>> from pathlib import Path
    >>> from stan_bridge import CmdStanModel
    >>> from stan_bridge.programs import write_program
    >>> stan_file = Path(tempfile.mkdtemp()) / "arK.stan"
    >>> _ = shutil.copy(write_program("arK"), stan_file)
    >>> model = CmdStanModel(stan_file=stan_file)  # cached: links only
    >>> model.exe_file == str(stan_file.with_suffix("")), model.build.executable.exists()
    (True, True)
    """

    def __init__(
        self,
        model_name: str | None = None,
        stan_file: str | os.PathLike | None = None,
        exe_file: str | os.PathLike | None = None,
        force_compile: bool = False,
        stanc_options: Mapping[str, Any] | None = None,
        cpp_options: Mapping[str, Any] | None = None,
        user_header: str | os.PathLike | None = None,
        *,
        compile: bool | str | None = None,
    ) -> None:
        args = dict(stanc_options=stanc_options, cpp_options=cpp_options, user_header=user_header)
        shared = shared_executable(
            stan_file, model_name=model_name, exe_file=exe_file, force_compile=force_compile,
            compile=compile, **args,
        )
        self._build = shared.build if shared is not None else None
        if shared is not None:
            exe_file = shared.exe_file
        super().__init__(  # cmdstanpy.CmdStanModel's
            model_name, stan_file, exe_file, force_compile, compile=compile, **args
        )

    @property
    def build(self) -> ModelBuild | None:
        """stan_bridge's build the executable was linked from (None where cmdstanpy compiled).

        ``build.directory`` holds the program's object file, the executable
        and (after a warm start) the shim's library; ``build.record`` lists
        each command and its time.
        """
        return self.__dict__.get("_build")
