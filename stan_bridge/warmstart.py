"""Pathfinder warm starts for CmdStan: the plan, and the inits and metric files.

:func:`warmstart_from_pathfinder` runs our multi-path Pathfinder
(:func:`pymc_ext.vi.multipath.multipath_pathfinder`) on a
:class:`~stan_bridge.StanModel` and writes one inits file per chain
(distinct Pathfinder draws, constrained) and a metric file.
:func:`plan_warmstart` decides, from Pathfinder's covariance and Pareto k
(:func:`pymc_ext.blocks.metric_choice.choose_metric`), which metric CmdStan
gets (``diag_e`` or ``dense_e``) and which warmup follows:

- ``"keep"``: the covariance is good (trusted, Pareto k at most
  :data:`KEEP_METRIC_PARETO_K`, or nearly equal importance weights): fewer
  than 20 warmup iterations, so that
  CmdStan adapts the step size only and keeps Pathfinder's metric (a short
  CmdStan window would replace it with a noisier estimate);
- ``"adapt"``: usable but rough: a 200-iteration warmup whose window
  re-estimates the metric (:data:`WARMSTART_WARMUP`);
- ``"fallback"``: not trusted (high Pareto k, failed paths, a covariance that
  is not finite): CmdStan's own full warmup, from Pathfinder's starting points
  where they are finite.

:class:`stan_bridge.CmdStanModel` uses them in ``sample(..., warmstart="pathfinder")``
and reports what was chosen, why, and what it cost as a :class:`WarmStartInfo`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pymc_ext.blocks.metric_choice import (
    FLAT_WEIGHTS_RELATIVE_ESS,
    MetricChoice,
    choose_metric,
    relative_importance_ess,
)
from stan_bridge.model import StanModel

__all__ = [
    "WARMSTART_WARMUP",
    "KEEP_METRIC_WARMUP",
    "KEEP_METRIC_PARETO_K",
    "STAN_DENSE_MAX_DIM",
    "STAN_DENSE_MAX_PARETO_K",
    "write_inits",
    "write_metric",
    "WarmStartPlan",
    "WarmStartInfo",
    "plan_warmstart",
    "warmstart_from_pathfinder",
    "write_warmstart_files",
]

#: Warmup after a usable but rough warm start (``"adapt"``), unless the caller sets it:
#: 50 iterations for the step size, one 100-iteration window that re-estimates the
#: metric, 50 to settle the step size.
WARMSTART_WARMUP = {
    "iter_warmup": 200,
    "adapt_init_phase": 50,
    "adapt_metric_window": 100,
    "adapt_step_size": 50,
}

#: Warmup after a good warm start (``"keep"``): CmdStan estimates no metric for fewer
#: than 20 warmup iterations, so these adapt the step size only and Pathfinder's
#: metric is kept.
KEEP_METRIC_WARMUP = {"iter_warmup": 19}

#: Largest Pareto k at which Pathfinder's metric is kept as it is (``"keep"``).
KEEP_METRIC_PARETO_K = 0.7

#: ``dense_e`` only up to this Pareto k: above it CmdStan re-estimates the metric in
#: one 100-draw window, and a dense estimate there did worse than a diagonal one
#: (gp_pois_regr, k 1.06-1.36: min ESS 174-414 and 94-409 divergences with
#: ``dense_e``, against 2338-2804 and 76-77 with ``diag_e``; docs/warmstart.md).
STAN_DENSE_MAX_PARETO_K = 1.0

#: ``dense_e`` up to this many parameters (a low-rank choice above it becomes
#: ``diag_e``: CmdStan has no low-rank metric).
STAN_DENSE_MAX_DIM = 200

_WARMUP_MODES = ("keep", "adapt", "fallback")


@dataclass(frozen=True)
class WarmStartPlan:
    """What a warm start hands CmdStan: the metric, its matrix, and the warmup.

    Attributes
    ----------
    metric : {"diag_e", "dense_e"}
    warmup : {"keep", "adapt", "fallback"}
        ``keep``: step size only (:data:`KEEP_METRIC_WARMUP`); ``adapt``: a
        short warmup that re-estimates the metric (:data:`WARMSTART_WARMUP`);
        ``fallback``: CmdStan's default warmup.
    reason : str
        Why this metric and this warmup, in one line.
    choice : MetricChoice
        The metric choice and the statistics it used.
    inv_metric : ndarray or None
        The inverse metric for the metric file; None for CmdStan's own start
        (the unit metric).
    warmup_arguments : dict
        cmdstanpy arguments for the warmup (empty for ``fallback``).

    Examples
    --------
    >>> from stan_bridge.warmstart import WarmStartPlan
    >>> "warmup" in WarmStartPlan.__dataclass_fields__
    True
    """

    metric: str
    warmup: str
    reason: str
    choice: MetricChoice
    inv_metric: np.ndarray | None = field(repr=False, default=None)
    warmup_arguments: dict[str, int] = field(default_factory=dict)

    @property
    def fallback(self) -> bool:
        """Whether the warm start fell back to CmdStan's own warmup."""
        return self.warmup == "fallback"


def plan_warmstart(result: Any, metric: str = "auto") -> WarmStartPlan:
    """Choose CmdStan's metric and warmup from a Pathfinder result.

    Parameters
    ----------
    result : PathfinderResult
        Pathfinder's result (``covariance``, ``pareto_k``, ``ess``, ``paths``).
    metric : {"auto", "diag_e", "dense_e"}
        ``auto``: :func:`~pymc_ext.blocks.metric_choice.choose_metric` decides
        (``dense`` and, up to :data:`STAN_DENSE_MAX_DIM` parameters, ``lowrank``
        give ``dense_e``; ``diag`` gives ``diag_e``; never dense above a
        Pareto k of :data:`STAN_DENSE_MAX_PARETO_K`). Otherwise that metric.

    Returns
    -------
    WarmStartPlan

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.vi.multipath import multipath_pathfinder
    >>> from stan_bridge.warmstart import plan_warmstart
    >>> P = np.linalg.inv(np.array([[1.0, 0.95], [0.95, 1.0]]))
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ P @ x, lambda x: -P @ x,
    ...                        lambda X: -0.5 * np.einsum("ni,ij,nj->n", X, P, X))
    >>> plan = plan_warmstart(multipath_pathfinder(d, num_draws=500, random_seed=2))
    >>> plan.metric, plan.warmup
    ('dense_e', 'keep')
    """
    if metric not in ("auto", "diag_e", "dense_e"):
        raise ValueError(f"metric must be 'auto', 'diag_e' or 'dense_e'; got {metric!r}.")
    paths = getattr(result, "paths", None) or []
    relative_ess = relative_importance_ess(result)
    choice = choose_metric(
        np.asarray(result.covariance, dtype=float),
        float(result.pareto_k),
        max_dense_dim=STAN_DENSE_MAX_DIM,
        max_dense_pareto_k=STAN_DENSE_MAX_PARETO_K,
        num_paths=len(paths) or None,
        num_paths_ok=sum(bool(p.ok) for p in paths) if paths else None,
        relative_ess=relative_ess,
    )
    if metric == "auto":
        metric = "dense_e" if choice.kind in ("dense", "lowrank") else "diag_e"
        why = choice.reason
    else:
        why = f"metric={metric!r} given ({choice.reason})"
    if not choice.trusted:
        return WarmStartPlan(
            metric=metric,
            warmup="fallback",
            reason=f"{why}; CmdStan's full warmup from Pathfinder's starting points",
            choice=choice,
        )
    cov = np.asarray(result.covariance, dtype=float)
    inv_metric = cov if metric == "dense_e" else np.diag(cov).copy()
    k = float(result.pareto_k)
    flat = relative_ess is not None and relative_ess >= FLAT_WEIGHTS_RELATIVE_ESS
    if k <= KEEP_METRIC_PARETO_K or flat:
        mode, args, what = "keep", KEEP_METRIC_WARMUP, "metric kept, step size adapted"
    else:
        mode, args = "adapt", WARMSTART_WARMUP
        what = f"k > {KEEP_METRIC_PARETO_K:g}: metric re-estimated in a short warmup"
    return WarmStartPlan(
        metric=metric,
        warmup=mode,
        reason=f"{why}; {what}",
        choice=choice,
        inv_metric=inv_metric,
        warmup_arguments=dict(args),
    )


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
        the approximation is rough; see ``warmup``).
    num_paths, num_paths_ok : int
        Paths run, and paths that succeeded.
    metric : str
        ``"diag_e"`` or ``"dense_e"``.
    iter_warmup : int
        Warmup iterations CmdStan ran.
    inits_files : list of str
        Per-chain inits written.
    metric_file : str or None
        The metric file written (None where the caller gave ``inv_metric``,
        or on a fallback to CmdStan's own metric).
    seconds : float
        Wall time of the warm start (Pathfinder and files), not counting a
        first compile of the shared library.
    result : PathfinderResult
        The full Pathfinder result.
    metric_reason : str
        Why this metric and warmup (``plan.reason``).
    warmup : str
        ``"keep"``, ``"adapt"`` or ``"fallback"`` (see :class:`WarmStartPlan`),
        or ``"given"`` where the caller set ``iter_warmup``.
    fallback : bool
        Whether the warm start fell back to CmdStan's own warmup.
    plan : WarmStartPlan
        The full plan, with the metric choice's statistics.
    metric_mismatch : float
        After a ``"keep"`` run: the largest factor between a chain's variances
        and the kept metric (:func:`kept_metric_mismatch`); NaN otherwise.
    discarded_leapfrogs : int
        Leapfrog steps of a ``"keep"`` run that was redone because its metric
        did not fit (then ``warmup`` is ``"fallback"``); count them in the cost.

    Examples
    --------
    >>> from stan_bridge import CmdStanModel
    >>> from stan_bridge.programs import reference_data, write_program
    >>> m = CmdStanModel(stan_file=write_program("eight_schools"))  # doctest: +SKIP
    >>> data = reference_data("eight_schools")
    >>> fit = m.sample(data=data, warmstart="pathfinder")  # doctest: +SKIP
    >>> fit.warmstart.metric, fit.warmstart.warmup  # doctest: +SKIP
    ('diag_e', 'adapt')
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
    metric_reason: str = ""
    warmup: str = "adapt"
    fallback: bool = False
    plan: WarmStartPlan | None = field(repr=False, default=None)
    metric_mismatch: float = float("nan")
    discarded_leapfrogs: int = 0

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
        plan: WarmStartPlan | None = None,
        warmup_given: bool = False,
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
            metric_reason=(plan.reason if plan is not None else "")
            + ("; iter_warmup given by the caller" if warmup_given else ""),
            warmup="given" if warmup_given else (plan.warmup if plan is not None else "adapt"),
            fallback=bool(plan is not None and plan.fallback),
            plan=plan,
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
    metric: str = "auto",
    progressbar: bool = True,
    num_draws_per_path: int = 500,
    num_elbo_draws: int = 10,
    **pathfinder_kwargs: Any,
) -> tuple[list[str], str | None, Any]:
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
    metric : {"auto", "diag_e", "dense_e"}
        As :func:`plan_warmstart`; the plan is ``result.warmstart_plan``.
    progressbar : bool
        Progress bar over Pathfinder's paths.
    num_draws_per_path, num_elbo_draws : int
        Pathfinder's draws per path (pooled, then importance-resampled to
        ``num_draws``) and ELBO draws per L-BFGS iterate. Lighter than
        Pathfinder's own defaults (``num_draws`` per path, 25): a warm start
        needs a few inits and a metric, and these log-density evaluations
        were most of its cost. On kidiq-kidscore_momiq (3 parameters) they
        cut Pathfinder from 147 gradients + 7,350 log densities to 147 +
        2,340, and the run's total from 0.11x plain CmdStan's leapfrogs to
        0.079x (mesquite-logmesquite_logvas 0.10x to 0.081x,
        mesquite-logmesquite_logva 0.14x to 0.12x), with errors at most 0.06
        sd (``benchmarks/stan_warmstart.py``, seed 1).
    **pathfinder_kwargs
        More keywords for ``multipath_pathfinder``.

    Returns
    -------
    inits_files : list of str
        Empty when Pathfinder gave no finite draw (CmdStan's own inits).
    metric_file : str or None
        None on a fallback to CmdStan's own metric.
    result : PathfinderResult
        With the :class:`WarmStartPlan` as ``result.warmstart_plan``.

    Examples
    --------
    >>> import tempfile
    >>> from stan_bridge import StanModel
    >>> from stan_bridge.programs import PROGRAMS, reference_data
    >>> from stan_bridge.warmstart import warmstart_from_pathfinder
    >>> sm = StanModel(PROGRAMS["arK"], reference_data("arK"), progressbar=False)
    >>> inits, metric_file, res = warmstart_from_pathfinder(
    ...     sm, 2, tempfile.mkdtemp(), random_seed=1, progressbar=False)
    >>> len(inits), res.draws.shape[1], res.warmstart_plan.metric
    (2, 7, 'dense_e')
    """
    from pymc_ext.step_methods.warmstart_init import pathfinder_or_failed

    if metric not in ("auto", "diag_e", "dense_e"):
        raise ValueError(
            f"metric must be 'auto', 'diag_e' or 'dense_e' for a warm start; got {metric!r}."
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    result = pathfinder_or_failed(  # CmdStan's own inits and warmup when every path fails
        stan_model,
        "CmdStan samples with its own inits and full warmup instead, as a plain "
        "CmdStanModel.sample would.",
        stacklevel=3,
        num_paths=num_paths,
        num_draws=num_draws,
        random_seed=random_seed,
        progressbar=progressbar,
        num_draws_per_path=num_draws_per_path,
        num_elbo_draws=num_elbo_draws,
        **pathfinder_kwargs,
    )
    inits_files, metric_file, plan = write_warmstart_files(
        stan_model, result, chains, directory, metric=metric, random_seed=random_seed
    )
    result.warmstart_plan = plan
    return inits_files, metric_file, result


def _pick_inits(draws: np.ndarray, chains: int, rng: np.random.Generator) -> np.ndarray:
    """One unconstrained draw per chain: distinct draws where there are enough of them."""
    uniq = np.unique(draws, axis=0)
    pool = uniq if uniq.shape[0] >= chains else draws
    picks = rng.choice(pool.shape[0], size=chains, replace=pool.shape[0] < chains)
    return pool[picks]


def write_inits(stan_model: StanModel, points: np.ndarray, directory: Path) -> list[str]:
    """One CmdStan inits JSON file per row of ``points`` (unconstrained), constrained.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from stan_bridge.programs import example_model
    >>> from stan_bridge.warmstart import write_inits
    >>> files = write_inits(example_model(), np.zeros((2, 2)), pathlib.Path(tempfile.mkdtemp()))
    >>> len(files)
    2
    """
    directory.mkdir(parents=True, exist_ok=True)
    inits_files = []
    for c, x in enumerate(points):
        point = stan_model.constrain(x)
        init = {name: _jsonable(point[name]) for name in stan_model.param_names_list}
        path = directory / f"warmstart_inits_{c + 1}.json"
        path.write_text(json.dumps(init))
        inits_files.append(str(path))
    return inits_files


def write_metric(inv_metric: np.ndarray, metric: str, directory: Path) -> str:
    """CmdStan's metric file for an inverse metric (a diagonal or a dense matrix).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from stan_bridge.warmstart import write_metric
    >>> write_metric(np.ones(3), "diag_e", pathlib.Path(tempfile.mkdtemp())).endswith(".json")
    True
    """
    inv_metric = np.asarray(inv_metric, dtype=float)
    diag = inv_metric if inv_metric.ndim == 1 else np.diag(inv_metric)
    if not np.all(np.isfinite(inv_metric)) or np.any(diag <= 0):
        raise FloatingPointError("The warm start's covariance estimate is not positive and finite.")
    directory.mkdir(parents=True, exist_ok=True)
    metric_file = directory / f"warmstart_metric_{metric}.json"
    metric_file.write_text(json.dumps({"inv_metric": np.asarray(inv_metric).tolist()}))
    return str(metric_file)


def write_warmstart_files(
    stan_model: StanModel,
    result: Any,
    chains: int,
    directory: str | os.PathLike,
    *,
    metric: str = "auto",
    random_seed: int | None = None,
) -> tuple[list[str], str | None, WarmStartPlan]:
    """The plan, inits files and metric file of any warm start (Pathfinder's or a flow's).

    Parameters
    ----------
    stan_model : StanModel
        The program with its data.
    result : object
        With ``draws`` (unconstrained, ``(n, dim)``), ``covariance`` and
        ``pareto_k`` (and optionally ``ess``, ``paths``): a
        ``PathfinderResult`` or a :class:`~pymc_ext.flows.FlowInitResult`.
    chains : int
        One inits file per chain, from distinct finite draws.
    directory : path
        Where the files go.
    metric : {"auto", "diag_e", "dense_e"}
        As :func:`plan_warmstart`.
    random_seed : int, optional
        Seeds the choice of inits.

    Returns
    -------
    inits_files : list of str
        Empty when no draw is finite (CmdStan's own inits).
    metric_file : str or None
        None on a fallback to CmdStan's own metric.
    plan : WarmStartPlan

    Examples
    --------
    >>> import tempfile
    >>> from stan_bridge import StanModel
    >>> from stan_bridge.programs import PROGRAMS, reference_data
    >>> from stan_bridge.warmstart import write_warmstart_files
    >>> from pymc_ext.vi.multipath import multipath_pathfinder
    >>> sm = StanModel(PROGRAMS["arK"], reference_data("arK"), progressbar=False)
    >>> res = multipath_pathfinder(sm, random_seed=1, progressbar=False)
    >>> inits, metric_file, plan = write_warmstart_files(sm, res, 2, tempfile.mkdtemp())
    >>> len(inits), plan.metric
    (2, 'dense_e')
    """
    plan = plan_warmstart(result, metric)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    draws = np.asarray(result.draws, dtype=float)
    draws = draws[np.all(np.isfinite(draws), axis=1)]
    inits_files: list[str] = []
    if draws.shape[0]:
        points = _pick_inits(draws, chains, np.random.default_rng(random_seed))
        inits_files = write_inits(stan_model, points, directory)
    metric_file = None
    if plan.inv_metric is not None:
        metric_file = write_metric(plan.inv_metric, plan.metric, directory)
    return inits_files, metric_file, plan
