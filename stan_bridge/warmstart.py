"""Pathfinder warm starts for CmdStan: inits and metric files from our Pathfinder.

:func:`warmstart_from_pathfinder` runs our multi-path Pathfinder
(:func:`pymc_ext.vi.multipath.multipath_pathfinder`) on a
:class:`~stan_bridge.StanModel` and writes one inits file per chain
(distinct Pathfinder draws, constrained) and a metric file (the
importance-weighted covariance: its diagonal, or the full matrix for
``dense_e``). :class:`stan_bridge.CmdStanModel` uses it in
``sample(..., warmstart="pathfinder")`` and reports what it cost as a
:class:`WarmStartInfo`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stan_bridge.model import StanModel

__all__ = ["WARMSTART_WARMUP", "WarmStartInfo", "warmstart_from_pathfinder"]

#: Warmup schedule used after a warm start unless the caller sets it.
WARMSTART_WARMUP = {
    "iter_warmup": 200,
    "adapt_init_phase": 50,
    "adapt_metric_window": 100,
    "adapt_step_size": 50,
}


@dataclass
class WarmStartInfo:
    """What the warm start did and cost.

    Attributes
    ----------
    method : str
        ``"pathfinder"``.
    grad_evals : int
        Gradient evaluations Pathfinder spent (L-BFGS over all paths).
    logp_evals : int
        Log-density-only evaluations Pathfinder spent (ELBO, importance
        weights).
    pareto_k : float
        PSIS Pareto k of Pathfinder's pooled importance weights (above 0.7:
        the approximation is poor; the chains still start there, and
        warmup corrects the metric).
    num_paths, num_paths_ok : int
        Paths run, and paths that succeeded.
    metric : str
        ``"diag_e"`` or ``"dense_e"``.
    iter_warmup : int
        Warmup iterations CmdStan ran.
    inits_files : list of str
        Per-chain inits written.
    metric_file : str or None
        The metric file written (None where the caller gave ``inv_metric``).
    seconds : float
        Wall time of the warm start (Pathfinder and files), not counting a
        first compile of the shared library.
    result : PathfinderResult
        The full Pathfinder result.

    Examples
    --------
    >>> from stan_bridge import CmdStanModel
    >>> from stan_bridge.programs import reference_data, write_program
    >>> m = CmdStanModel(stan_file=write_program("eight_schools"))  # doctest: +SKIP
    >>> data = reference_data("eight_schools")
    >>> fit = m.sample(data=data, warmstart="pathfinder")  # doctest: +SKIP
    >>> fit.warmstart.grad_evals, fit.warmstart.pareto_k  # doctest: +SKIP
    (104, 0.79)
    """

    method: str
    grad_evals: int
    logp_evals: int
    pareto_k: float
    num_paths: int
    num_paths_ok: int
    metric: str
    iter_warmup: int
    inits_files: list[str]
    metric_file: str | None
    seconds: float
    result: Any = field(repr=False, default=None)

    @classmethod
    def from_result(
        cls,
        result: Any,
        *,
        metric: str,
        iter_warmup: int,
        inits_files: list[str],
        metric_file: str | None,
        seconds: float,
    ) -> WarmStartInfo:
        """The record of a Pathfinder warm start, from its ``PathfinderResult``.

        Examples
        --------
        >>> import tempfile
        >>> from stan_bridge import StanModel
        >>> from stan_bridge.programs import PROGRAMS, reference_data
        >>> from stan_bridge.warmstart import WarmStartInfo, warmstart_from_pathfinder
        >>> sm = StanModel(PROGRAMS["arK"], reference_data("arK"), progressbar=False)
        >>> inits, metric_file, res = warmstart_from_pathfinder(
        ...     sm, 2, tempfile.mkdtemp(), random_seed=1, progressbar=False)
        >>> info = WarmStartInfo.from_result(res, metric="diag_e", iter_warmup=200,
        ...                                  inits_files=inits, metric_file=metric_file,
        ...                                  seconds=0.0)
        >>> info.num_paths, info.grad_evals == res.grad_evals
        (4, True)
        """
        return cls(
            method="pathfinder",
            grad_evals=int(result.grad_evals),
            logp_evals=int(result.logp_evals),
            pareto_k=float(result.pareto_k),
            num_paths=len(result.paths),
            num_paths_ok=int(result.num_paths_ok),
            metric=metric,
            iter_warmup=int(iter_warmup),
            inits_files=inits_files,
            metric_file=metric_file,
            seconds=seconds,
            result=result,
        )


def _jsonable(value: Any) -> Any:
    arr = np.asarray(value, dtype=float)
    return arr.tolist() if arr.ndim else float(arr)


def warmstart_from_pathfinder(
    stan_model: StanModel,
    chains: int,
    directory: str | os.PathLike,
    *,
    num_paths: int = 4,
    num_draws: int = 1000,
    random_seed: int | None = None,
    metric: str = "diag_e",
    progressbar: bool = True,
    **pathfinder_kwargs: Any,
) -> tuple[list[str], str, Any]:
    """Run Pathfinder and write CmdStan inits (one file per chain) and a metric file.

    Parameters
    ----------
    stan_model : StanModel
        The program with its data.
    chains : int
        Number of chains (one inits file each, from distinct draws).
    directory : path
        Where the files go.
    num_paths, num_draws, random_seed
        Passed to :func:`pymc_ext.vi.multipath.multipath_pathfinder`.
    metric : {"diag_e", "dense_e"}
        Write the diagonal of Pathfinder's covariance, or all of it.
    progressbar : bool
        Progress bar over Pathfinder's paths.
    **pathfinder_kwargs
        More keywords for ``multipath_pathfinder``.

    Returns
    -------
    inits_files : list of str
    metric_file : str
    result : PathfinderResult

    Examples
    --------
    >>> import tempfile
    >>> from stan_bridge import StanModel
    >>> from stan_bridge.programs import PROGRAMS, reference_data
    >>> from stan_bridge.warmstart import warmstart_from_pathfinder
    >>> sm = StanModel(PROGRAMS["arK"], reference_data("arK"), progressbar=False)
    >>> inits, metric_file, res = warmstart_from_pathfinder(
    ...     sm, 2, tempfile.mkdtemp(), random_seed=1, progressbar=False)
    >>> len(inits), res.draws.shape[1]
    (2, 7)
    """
    from pymc_ext.vi.multipath import multipath_pathfinder

    if metric not in ("diag_e", "dense_e"):
        raise ValueError(f"metric must be 'diag_e' or 'dense_e' for a warm start; got {metric!r}.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    result = multipath_pathfinder(
        stan_model,
        num_paths=num_paths,
        num_draws=num_draws,
        random_seed=random_seed,
        progressbar=progressbar,
        **pathfinder_kwargs,
    )
    points = _pick_inits(result.draws, chains, np.random.default_rng(random_seed))
    inits_files = _write_inits(stan_model, points, directory)
    inv_metric = result.inverse_metric_diag if metric == "diag_e" else result.covariance
    return inits_files, _write_metric(inv_metric, metric, directory), result


def _pick_inits(draws: np.ndarray, chains: int, rng: np.random.Generator) -> np.ndarray:
    """One unconstrained draw per chain: distinct draws where there are enough of them."""
    uniq = np.unique(draws, axis=0)
    pool = uniq if uniq.shape[0] >= chains else draws
    picks = rng.choice(pool.shape[0], size=chains, replace=pool.shape[0] < chains)
    return pool[picks]


def _write_inits(stan_model: StanModel, points: np.ndarray, directory: Path) -> list[str]:
    """One CmdStan inits JSON file per row of ``points`` (constrained parameters)."""
    inits_files = []
    for c, x in enumerate(points):
        point = stan_model.constrain(x)
        init = {name: _jsonable(point[name]) for name in stan_model.param_names_list}
        path = directory / f"warmstart_inits_{c + 1}.json"
        path.write_text(json.dumps(init))
        inits_files.append(str(path))
    return inits_files


def _write_metric(inv_metric: np.ndarray, metric: str, directory: Path) -> str:
    """CmdStan's metric file for an inverse metric (a diagonal or a dense matrix)."""
    if not np.all(np.isfinite(inv_metric)) or np.any(np.diag(np.atleast_2d(inv_metric)) <= 0):
        raise FloatingPointError("Pathfinder's covariance estimate is not positive and finite.")
    metric_file = directory / f"warmstart_metric_{metric}.json"
    metric_file.write_text(json.dumps({"inv_metric": np.asarray(inv_metric).tolist()}))
    return str(metric_file)
