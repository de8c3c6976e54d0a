"""How :class:`~pymc_ext.step_methods.warmstart.WarmStartNUTS` uses a warm start.

- :func:`plan_warmstart_nuts`: the metric (``metric="auto"`` asks
  :func:`~pymc_ext.blocks.metric_choice.choose_metric`), the adaptation length
  and the weight of the warm start's covariance, with the reason; a warm start
  that is not trusted (high Pareto k, failed paths, a covariance that is not
  finite) falls back to a diagonal metric and a longer adaptation
  (:data:`FALLBACK_WARMUP`).
- :func:`starting_points` and :func:`initial_covariance`: the chains' starts
  and the first mass matrix, on the step's ordering.
- :func:`~pymc_ext.blocks.metric_choice.metric_mismatch` and
  :func:`~pymc_ext.blocks.metric_choice.mismatch_threshold`: whether the
  chain's own draws disagree with the metric they were drawn with by more than
  the noise of the estimate (the short warmup has not settled); the step then
  extends its adaptation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pymc_ext.blocks.metric_choice import MetricChoice, choose_metric, relative_importance_ess
from pymc_ext.step_methods.warmstart_init import (
    AUTO_DENSE_MAX_DIM,
    DEFAULT_WARMUP,
    TRUSTED_PARETO_K,
)

__all__ = [
    "FALLBACK_WARMUP",
    "KEEP_PRIOR_WEIGHT",
    "MAX_WARMUP_EXTENSIONS",
    "UNSETTLED_FACTOR",
    "WarmStartPlanNUTS",
    "plan_warmstart_nuts",
    "starting_points",
    "initial_covariance",
]

#: Weight (in draws) that keeps a trusted warm start's covariance as the metric.
KEEP_PRIOR_WEIGHT = math.inf

#: Adaptation iterations when the warm start is not trusted (and ``warmup`` is not given).
FALLBACK_WARMUP = 300

#: How many times a chain may extend its adaptation (by ``warmup`` iterations
#: each) when it has not settled; ``pm.sample``'s default tune leaves room for them.
MAX_WARMUP_EXTENSIONS = 2

#: Smallest factor between the chain's own variances and its metric that counts
#: as "not settled" (see :func:`~pymc_ext.blocks.metric_choice.mismatch_threshold`).
UNSETTLED_FACTOR = 2.0


@dataclass(frozen=True)
class WarmStartPlanNUTS:
    """What :class:`WarmStartNUTS` does with a warm start, and why.

    Attributes
    ----------
    metric : {"diag", "dense", "lowrank"}
    rank : int
        Rank of the low-rank part.
    warmup : int
        Adaptation iterations.
    prior_weight : float
        Weight of the warm start's covariance in the re-estimates, in draws.
    reason : str
        Why this metric (and, on a fallback, why the fallback).
    fallback : bool
        Whether the warm start was not trusted (diagonal metric, longer adaptation).
    choice : MetricChoice
        The metric choice, with the statistics it used.

    Examples
    --------
    >>> from pymc_ext.step_methods.warmstart_metric import WarmStartPlanNUTS
    >>> "fallback" in WarmStartPlanNUTS.__dataclass_fields__
    True
    """

    metric: str
    rank: int
    warmup: int
    prior_weight: float
    reason: str
    fallback: bool
    choice: MetricChoice


def default_prior_weight(pareto_k: float) -> float:
    """Weight (in draws) of the warm-start covariance against the chain's draws.

    A trusted warm start (k at most :data:`TRUSTED_PARETO_K`) keeps its
    covariance as the metric (:data:`KEEP_PRIOR_WEIGHT`, infinite: the chain's
    draws are not blended in), as the CmdStan warm start keeps its
    ``dense_e`` matrix: a metric re-estimated from 75 autocorrelated warmup
    draws loses the narrow directions Pathfinder found, and even 1% of such an
    estimate blended in swamps a direction 1e4 times narrower than the widest
    (gradients to ESS 400 with PyMC's NUTS, kept against weight 20:
    earnings-logearn_interaction 5.1k against 47k, kidiq 4.4k against 7.4k,
    arK 4.9k against 16k; with weight 1e4, 8.4k, 6.8k and 6.7k). A
    chain whose draws disagree with the kept metric still extends its warmup,
    and the warm start's weight then drops to 5 draws
    (:meth:`~pymc_ext.step_methods.warmstart_potential.WarmStartPotential.distrust_prior`).
    Above the threshold the covariance gets 5 draws' worth.

    Examples
    --------
    >>> from pymc_ext.step_methods.warmstart_metric import default_prior_weight
    >>> default_prior_weight(0.3), default_prior_weight(0.6), default_prior_weight(1.2)
    (inf, inf, 5.0)
    """
    if math.isinf(pareto_k) and pareto_k < 0:  # exact approximation
        return KEEP_PRIOR_WEIGHT
    if pareto_k <= TRUSTED_PARETO_K:
        return KEEP_PRIOR_WEIGHT
    return 5.0


def _paths(ws: Any) -> tuple[int | None, int | None]:
    paths = getattr(ws, "paths", None)
    if not paths:
        return None, None
    return len(paths), sum(bool(getattr(p, "ok", True)) for p in paths)


def plan_warmstart_nuts(
    ws: Any,
    covariance: np.ndarray,
    *,
    metric: str = "auto",
    rank: int = 8,
    warmup: int | None = None,
    prior_weight: float | None = None,
) -> WarmStartPlanNUTS:
    """Metric, adaptation length and prior weight for a warm start.

    Parameters
    ----------
    ws : WarmStart
        The warm start (its ``pareto_k``, and ``ess`` and ``paths`` where it has them).
    covariance : ndarray
        Its covariance on the step's ordering.
    metric : {"auto", "diag", "dense", "lowrank"}
        ``auto``: :func:`~pymc_ext.blocks.metric_choice.choose_metric` decides.
    rank : int
        Rank for ``metric="lowrank"`` (``auto`` sets its own).
    warmup : int, optional
        Adaptation iterations; by default :data:`DEFAULT_WARMUP`, or
        :data:`FALLBACK_WARMUP` when the warm start is not trusted.
    prior_weight : float, optional
        By default from the Pareto k (:func:`default_prior_weight`).

    Returns
    -------
    WarmStartPlanNUTS

    Examples
    --------
    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> from pymc_ext.step_methods.warmstart_metric import plan_warmstart_nuts
    >>> cov = np.array([[1.0, 0.9], [0.9, 1.0]])
    >>> plan_warmstart_nuts(SimpleNamespace(pareto_k=0.4), cov).metric
    'dense'
    >>> plan = plan_warmstart_nuts(SimpleNamespace(pareto_k=3.0), cov)
    >>> plan.metric, plan.fallback, plan.warmup
    ('diag', True, 300)
    """
    pareto_k = float(ws.pareto_k)
    num_paths, num_ok = _paths(ws)
    choice = choose_metric(
        covariance,
        pareto_k,
        max_dense_dim=AUTO_DENSE_MAX_DIM,
        num_paths=num_paths,
        num_paths_ok=num_ok,
        relative_ess=relative_importance_ess(ws),
    )
    fallback = not choice.trusted
    if metric == "auto":
        metric = choice.kind
        rank = max(1, choice.rank) if choice.kind == "lowrank" else rank
        reason = choice.reason
    else:
        reason = f"metric={metric!r} given ({choice.reason})"
    if warmup is None:
        warmup = FALLBACK_WARMUP if fallback else DEFAULT_WARMUP
    if fallback:
        reason += f"; fallback: {int(warmup)}-iteration adaptation"
    if prior_weight is None:
        prior_weight = default_prior_weight(pareto_k)
    return WarmStartPlanNUTS(
        metric=metric,
        rank=int(rank),
        warmup=int(warmup),
        prior_weight=float(prior_weight),
        reason=reason,
        fallback=fallback,
        choice=choice,
    )


def starting_points(
    ws: Any,
    perm: np.ndarray,
    random_seed: Any,
    initial_point: np.ndarray | None = None,
    is_finite: Callable[[np.ndarray], bool] | None = None,
) -> np.ndarray:
    """The warm start's distinct finite draws (step ordering), shuffled reproducibly.

    Without a finite draw, the model's initial point jittered by uniform(-1, 1)
    (PyMC's ``jitter+adapt_diag`` start), 16 of them; with ``is_finite`` (a
    check of the log density at a point), only jittered points where it is
    finite, over up to 10 tries, else the initial point itself, as PyMC does.

    Examples
    --------
    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> from pymc_ext.step_methods.warmstart_metric import starting_points
    >>> ws = SimpleNamespace(draws=np.full((5, 2), np.nan))
    >>> starting_points(ws, np.arange(2), 0, np.zeros(2)).shape
    (16, 2)
    >>> pts = starting_points(ws, np.arange(2), 0, np.zeros(2), lambda x: bool(x[0] > 0))
    >>> bool((pts[:, 0] > 0).all())
    True
    """
    draws = np.asarray(ws.draws, dtype=float)[:, perm]
    draws = draws[np.all(np.isfinite(draws), axis=1)]
    rng = np.random.default_rng(random_seed)
    if draws.shape[0] == 0:
        if initial_point is None:
            raise ValueError("The warm start gave no finite draws to start chains from.")
        x0 = np.asarray(initial_point, dtype=float)
        for _ in range(10 if is_finite is not None else 1):
            points = x0 + rng.uniform(-1.0, 1.0, size=(16, x0.size))
            if is_finite is None:
                return points
            points = points[[bool(is_finite(p)) for p in points]]
            if points.shape[0]:
                return points
        return x0[None, :].copy()
    uniq = np.unique(draws, axis=0)
    return uniq[rng.permutation(uniq.shape[0])]


def initial_covariance(ws: Any, perm: np.ndarray, metric: str) -> np.ndarray:
    """The warm start's covariance on the step's ordering (its diagonal for ``diag``).

    Examples
    --------
    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> from pymc_ext.step_methods.warmstart_metric import initial_covariance
    >>> ws = SimpleNamespace(covariance=np.array([[2.0, 1.0], [1.0, 3.0]]),
    ...                      inverse_metric_diag=np.array([2.0, 3.0]))
    >>> initial_covariance(ws, np.array([1, 0]), "diag").tolist()
    [[3.0, 0.0], [0.0, 2.0]]
    """
    cov = np.asarray(ws.covariance, dtype=float)[np.ix_(perm, perm)]
    if metric == "diag":
        diag = np.asarray(ws.inverse_metric_diag, dtype=float)[perm]
        cov = np.diag(np.where(np.isfinite(diag) & (diag > 0), diag, np.diag(cov)))
    return cov
