"""Write draws that did not come from CmdStan as Stan CSV files that CmdStan's readers accept.

:meth:`stan_bridge.CmdStanModel.flow_sample` (flow MCMC) writes its draws
with :func:`write_stan_csv`, one file per chain, so that
``cmdstanpy.from_csv(output_dir)``, ``az.from_cmdstanpy`` and CmdStan's
``stansummary`` and ``diagnose`` read them like the output of
``CmdStanModel.sample``.

The files say in their config block ``algorithm = fixed_param``: that is the
only layout of a sampling CSV that CmdStan's readers take without a NUTS
adaptation block (step size, metric) and without NUTS's columns
(``treedepth__``, ``n_leapfrog__``, ``energy__``), which flow MCMC does not
have. A comment block right above the header says so, and where the draws
come from. The draws themselves are MCMC draws (one walker per file), not a
fixed parameter: treat them like any other chain.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["csv_column_name", "write_stan_csv"]

_INDEX = re.compile(r"^(?P<name>[^\[]+)\[(?P<idx>[0-9, ]+)\]$")


def csv_column_name(name: str) -> str:
    """CmdStan's CSV spelling of a name: ``theta[1]`` -> ``theta.1``, ``L[2,1]`` -> ``L.2.1``.

    Examples
    --------
    >>> from stan_bridge.stan_csv import csv_column_name
    >>> csv_column_name("L[2,1]"), csv_column_name("lp__")
    ('L.2.1', 'lp__')
    """
    match = _INDEX.match(name)
    if match is None:
        return name
    idx = [part.strip() for part in match["idx"].split(",")]
    return ".".join([match["name"], *idx])


def _config_block(
    model_name: str,
    chain_id: int,
    num_samples: int,
    num_warmup: int,
    seed: int | None,
    stan_version: Sequence[int],
    path: Path,
) -> list[str]:
    major, minor, patch = (list(stan_version) + [0, 0, 0])[:3]
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [
        f"stan_version_major = {major}",
        f"stan_version_minor = {minor}",
        f"stan_version_patch = {patch}",
        f"model = {model_name}",
        f"start_datetime = {now}",
        "method = sample (Default)",
        "  sample",
        f"    num_samples = {num_samples}",
        f"    num_warmup = {num_warmup}",
        "    save_warmup = 0",
        "    thin = 1",
        "    algorithm = fixed_param",
        f"id = {chain_id}",
        "random",
        f"  seed = {seed if seed is not None else -1}",
        "output",
        f"  file = {path}",
    ]
    return ["# " + line for line in lines]


def _comment_lines(text: Sequence[str]) -> list[str]:
    # no " = " in our own comments: cmdstanpy reads every "key = value" line as config
    return ["# " + line.replace(" = ", ": ") for line in text]


def write_stan_csv(
    path: str | os.PathLike,
    columns: Sequence[str],
    draws: np.ndarray,
    *,
    model_name: str,
    chain_id: int = 1,
    num_warmup: int = 1,
    seed: int | None = None,
    stan_version: Sequence[int] = (2, 27, 0),
    comments: Sequence[str] = (),
    seconds: Mapping[str, float] | None = None,
) -> str:
    """Write one chain of draws as a Stan CSV file (``algorithm = fixed_param`` layout).

    Parameters
    ----------
    path : path
        The file to write (its folder is created).
    columns : sequence of str
        Column names as cmdstanpy shows them (``lp__``, ``theta[1]``); written
        in CmdStan's spelling (``theta.1``). The first must be ``lp__``.
    draws : ndarray, shape (num_draws, len(columns))
        One row per draw.
    model_name : str
        CmdStan's model name (``<program>_model``).
    chain_id : int
        The chain's id.
    num_warmup : int
        Recorded as ``num_warmup`` (at least 1: cmdstanpy refuses 0 with
        adaptation on); no warmup draws are written.
    seed : int, optional
        The run's seed, for the record.
    stan_version : sequence of int
        Stan's version, for the record.
    comments : sequence of str
        Lines for the comment block above the header (where the draws come from).
    seconds : dict, optional
        ``{"Warm-up": ..., "Sampling": ...}`` for the timing block.

    Returns
    -------
    str
        The path written.

    Examples
    --------
    >>> import tempfile, numpy as np, cmdstanpy
    >>> from stan_bridge.stan_csv import write_stan_csv
    >>> folder = tempfile.mkdtemp()
    >>> rows = np.column_stack([np.zeros(5), np.ones(5), np.arange(5.0), np.arange(5.0) * 2])
    >>> for chain in (1, 2):
    ...     _ = write_stan_csv(f"{folder}/demo-{chain}.csv", ["lp__", "accept_stat__",
    ...                        "theta[1]", "theta[2]"], rows, model_name="demo_model",
    ...                        chain_id=chain)
    >>> fit = cmdstanpy.from_csv(folder)
    >>> fit.draws().shape, fit.stan_variable("theta").shape
    ((5, 2, 4), (10, 2))
    """
    draws = np.asarray(draws, dtype=float)
    columns = list(columns)
    if not columns or columns[0] != "lp__":
        raise ValueError("The first column of a Stan CSV file must be lp__.")
    if draws.ndim != 2 or draws.shape[1] != len(columns):
        raise ValueError(
            f"draws must have shape (num_draws, {len(columns)}); got {draws.shape}."
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    secs = {"Warm-up": 0.0, "Sampling": 0.0, **dict(seconds or {})}
    total = secs["Warm-up"] + secs["Sampling"]
    head = _config_block(
        model_name, chain_id, draws.shape[0], max(1, int(num_warmup)), seed, stan_version, path
    )
    head += _comment_lines(["", *comments, ""])
    tail = [
        "# ",
        f"#  Elapsed Time: {secs['Warm-up']:.3f} seconds (Warm-up)",
        f"#                {secs['Sampling']:.3f} seconds (Sampling)",
        f"#                {total:.3f} seconds (Total)",
        "# ",
    ]
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write("\n".join(head) + "\n")
        fh.write(",".join(csv_column_name(c) for c in columns) + "\n")
        np.savetxt(fh, draws, fmt="%.17g", delimiter=",")
        fh.write("\n".join(tail) + "\n")
    os.replace(tmp, path)
    return str(path)

