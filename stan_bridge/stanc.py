"""stanc: a Stan program to C++, and what stanc says about its variables.

Stanc's errors reach the user as they are, with line and column, under the
user's file name. A program is compiled under the user's file name where it is
a plain one (Stan's run-time messages name it, in the shim's library and in
CmdStan's executable alike), and its C++ class is named as CmdStan names it
(``<file stem>_model``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from stan_bridge.toolchain import Toolchain

__all__ = [
    "PROGRAM_FILE",
    "StanCompileError",
    "class_name",
    "included_sources",
    "run_stanc_info",
    "stan_file_name",
    "translate",
    "user_message",
]

#: File name a program is compiled under when its own name is not a plain file
#: name. Messages show the user's name instead (:func:`user_message`).
PROGRAM_FILE = "stan_bridge_program.stan"


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


_INCLUDE_RE = re.compile(r'^\s*#include\s+[<"]?([^>"\s]+)[>"]?', re.MULTILINE)


def included_sources(code: str, include_paths: Sequence[Path]) -> list[str]:
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


def stan_file_name(display_name: str) -> str:
    """The name stanc compiles the program under: the user's file name where it is a plain one.

    Stan's messages at run time (a rejection, a failed check) name this file,
    in the library and in CmdStan's executable alike.

    Examples
    --------
    >>> from stan_bridge.builder import stan_file_name
    >>> stan_file_name("eight.stan"), stan_file_name("../x y.stan")
    ('eight.stan', 'stan_bridge_program.stan')
    """
    if re.fullmatch(r"[A-Za-z0-9_.+-]+\.stan", display_name) and not display_name.startswith("."):
        return display_name
    return PROGRAM_FILE


def class_name(display_name: str) -> str:
    """The C++ class stanc generates, as CmdStan names it (``<file stem>_model``).

    Examples
    --------
    >>> from stan_bridge.builder import class_name
    >>> class_name("eight-schools.stan"), class_name("8s.stan")
    ('eight_schools_model', 'm_8s_model')
    """
    stem = re.sub(r"\W", "_", Path(display_name).stem) or "program"
    return ("m_" if stem[0].isdigit() else "") + stem + "_model"


def translate(
    code: str,
    toolchain: Toolchain,
    folder: Path,
    display_name: str,
    include_paths: Sequence[Path],
    stanc_options: Sequence[str],
) -> dict:
    """stanc: ``model.hpp`` and ``info.json`` in ``folder``; returns the ``--info`` dict.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from stan_bridge.stanc import translate
    >>> from stan_bridge.toolchain import find_toolchain
    >>> tmp = Path(tempfile.mkdtemp())
    >>> info = translate("parameters { real x; } model { x ~ normal(0, 1); }",
    ...                  find_toolchain(), tmp, "x.stan", [], [])
    >>> "class x_model" in (tmp / "model.hpp").read_text(), list(info["parameters"])
    (True, ['x'])
    """
    stan_file = folder / stan_file_name(display_name)
    stan_file.write_text(code)
    paths = list(include_paths)
    inc = ["--include-paths=" + ",".join(str(p) for p in paths)] if paths else []
    name = f"--name={class_name(display_name)}"
    out = f"--o={folder / 'model.hpp'}"
    _run_stanc(toolchain, [name, out, *inc, *stanc_options], stan_file, display_name)
    undefined = [o for o in stanc_options if o in ("--allow-undefined", "--allow_undefined")]
    info_out = _run_stanc(toolchain, ["--info", *inc, *undefined], stan_file, display_name)
    info = json.loads(info_out.stdout[info_out.stdout.find("{") :])
    (folder / "info.json").write_text(json.dumps(info, indent=1))
    return info
