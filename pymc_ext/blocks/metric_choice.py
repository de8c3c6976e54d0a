"""Choosing a mass matrix from a warm start's covariance: diagonal, low-rank or dense.

:func:`choose_metric` is the one home of the rule that ``metric="auto"``
applies for every sampler (PyMC's NUTS in
:class:`~pymc_ext.step_methods.warmstart.WarmStartNUTS`, CmdStan in
:class:`stan_bridge.CmdStanModel`, nutpie). It looks at the correlation
structure of the covariance, not at its scales (every metric gets the scales
right): how far the correlation matrix is from the identity (its condition
number and largest correlation), how many eigen-directions stand out, and
whether that is more than the noise of an estimate from the draws behind it.
The Pareto k (and, when given, the share of paths that succeeded) says
whether the covariance can be used at all (``trusted``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "MetricChoice",
    "choose_metric",
    "DEFAULT_MAX_DENSE_DIM",
    "DEFAULT_MAX_PARETO_K",
    "DEFAULT_MIN_CONDITION",
    "DEFAULT_MAX_RANK",
    "FLAT_WEIGHTS_RELATIVE_ESS",
    "relative_importance_ess",
    "metric_mismatch",
    "mismatch_threshold",
]

#: Dense metric up to this many parameters; the low-rank one above.
DEFAULT_MAX_DENSE_DIM = 50

#: Above this Pareto k the covariance is not trusted (diagonal, and the sampler
#: falls back to a longer adaptive warmup). Pathfinder's k is often above 0.7 on
#: posteriors whose covariance it gets right (gp_pois_regr 1.0-1.15, earnings up
#: to 1.34 with a warm start's 250 draws per path; see docs/warmstart.md).
DEFAULT_MAX_PARETO_K = 1.5

#: A correlation matrix better conditioned than this gives a diagonal metric: a
#: dense one would save at most ``sqrt(condition)`` in leapfrogs and costs a
#: noisier estimate.
DEFAULT_MIN_CONDITION = 3.0

#: Relative importance ESS from which the weights count as flat (Pareto k ignored).
FLAT_WEIGHTS_RELATIVE_ESS = 0.9

#: Largest rank of the low-rank part.
DEFAULT_MAX_RANK = 16

#: An eigenvalue of the correlation matrix "stands out" when it is this far
#: (as a factor) from 1, and outside the noise band.
_OUTLYING_FACTOR = 3.0


@dataclass(frozen=True)
class MetricChoice:
    """The mass-matrix structure chosen from a warm start, and why.

    Attributes
    ----------
    kind : {"diag", "dense", "lowrank"}
        The structure to use.
    rank : int
        Rank of the low-rank part for ``kind="lowrank"`` (the number of
        eigen-directions that stand out, at least 1); 0 otherwise.
    reason : str
        One sentence, e.g. ``"max |corr| 0.98, condition number 3e+04: dense"``.
    trusted : bool
        Whether the covariance is good enough to use at all. When False the
        kind is ``"diag"`` and a sampler should adapt as if it had no warm
        metric (a longer warmup).
    dim : int
        Number of parameters.
    pareto_k : float
        The warm start's Pareto k.
    max_abs_corr : float
        Largest absolute off-diagonal correlation (0 in one dimension).
    condition : float
        Condition number of the correlation matrix (``inf`` when singular).
    noise_condition : float
        Condition number a correlation matrix estimated from ``ess``
        independent draws of an uncorrelated posterior would show by chance
        (Marchenko-Pastur); 1 when ``ess`` is not known.
    num_outlying : int
        Eigenvalues of the correlation matrix at least 3x away from their
        median and outside the noise band.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.blocks.metric_choice import choose_metric
    >>> c = choose_metric(np.array([[1.0, 0.99], [0.99, 1.0]]), 0.3)
    >>> c.kind, c.trusted
    ('dense', True)
    >>> c.reason
    'max |corr| 0.99, condition number 2e+02, k 0.30: dense'
    """

    kind: str
    rank: int
    reason: str
    trusted: bool
    dim: int
    pareto_k: float
    max_abs_corr: float
    condition: float
    noise_condition: float
    num_outlying: int

    def as_dict(self) -> dict[str, float | int | str | bool]:
        """The choice and its statistics as plain Python values (for attributes, JSON).

        Examples
        --------
        >>> import numpy as np
        >>> from pymc_ext.blocks.metric_choice import choose_metric
        >>> choose_metric(np.eye(3), 0.2).as_dict()["kind"]
        'diag'
        """
        return {
            "kind": self.kind,
            "rank": int(self.rank),
            "reason": self.reason,
            "trusted": bool(self.trusted),
            "dim": int(self.dim),
            "pareto_k": float(self.pareto_k),
            "max_abs_corr": float(self.max_abs_corr),
            "condition": float(self.condition),
            "noise_condition": float(self.noise_condition),
            "num_outlying": int(self.num_outlying),
        }


def _noise_condition(dim: int, ess: float | None) -> float:
    """Condition number of a correlation matrix of ``ess`` iid draws of N(0, I_dim)."""
    if ess is None or not np.isfinite(ess) or ess <= 1 or dim < 2:
        return 1.0
    q = math.sqrt(dim / ess)
    if q >= 1.0:
        return math.inf
    return ((1.0 + q) / (1.0 - q)) ** 2


def _correlation_stats(cov: np.ndarray) -> tuple[float, float, np.ndarray] | None:
    """``(max |corr|, condition, eigenvalues)`` of the correlation matrix; None if not usable."""
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1] or not np.all(np.isfinite(cov)):
        return None
    sd2 = np.diag(cov)
    if np.any(sd2 <= 0):
        return None
    sd = np.sqrt(sd2)
    corr = cov / np.outer(sd, sd)
    corr = 0.5 * (corr + corr.T)
    vals = np.linalg.eigvalsh(corr)
    if vals[0] <= 0:
        return None
    off = np.abs(corr - np.diag(np.diag(corr)))
    max_corr = float(off.max()) if corr.shape[0] > 1 else 0.0
    return min(max_corr, 1.0), float(vals[-1] / vals[0]), vals


def _fmt_k(pareto_k: float) -> str:
    return "-inf" if pareto_k == -math.inf else f"{pareto_k:.2f}"


def _untrusted(dim: int, pareto_k: float, why: str) -> MetricChoice:
    return MetricChoice(
        kind="diag",
        rank=0,
        reason=f"{why}: not trusted, diag",
        trusted=False,
        dim=dim,
        pareto_k=pareto_k,
        max_abs_corr=math.nan,
        condition=math.nan,
        noise_condition=math.nan,
        num_outlying=0,
    )


def _trust_problem(
    pareto_k: float,
    max_pareto_k: float,
    num_paths: int | None,
    num_paths_ok: int | None,
    relative_ess: float | None,
) -> str | None:
    """Why the warm start is not to be trusted, or None."""
    flat = relative_ess is not None and relative_ess >= FLAT_WEIGHTS_RELATIVE_ESS
    if math.isnan(pareto_k) and not flat:
        return "Pareto k unknown (too few finite draws)"
    if pareto_k > max_pareto_k and not flat:
        return f"Pareto k {_fmt_k(pareto_k)} > {max_pareto_k:g}"
    if num_paths and num_paths_ok is not None and 2 * num_paths_ok < num_paths:
        return f"only {num_paths_ok}/{num_paths} Pathfinder paths succeeded"
    return None


def relative_importance_ess(result: Any) -> float | None:
    """A multi-path result's importance ESS over the number of draws it was computed on.

    ``result.ess`` over the draws of the paths that succeeded (``result.paths``,
    each with ``ok`` and ``draws``); None where the result does not say.

    Examples
    --------
    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> from pymc_ext.blocks.metric_choice import relative_importance_ess
    >>> path = SimpleNamespace(ok=True, draws=np.zeros((250, 2)))
    >>> relative_importance_ess(SimpleNamespace(ess=900.0, paths=[path] * 4))
    0.9
    """
    ess, paths = getattr(result, "ess", None), getattr(result, "paths", None)
    if ess is None or not paths or not np.isfinite(ess):
        return None
    n = sum(len(p.draws) for p in paths if getattr(p, "ok", False) and p.draws is not None)
    return float(ess) / n if n else None


def choose_metric(
    covariance: np.ndarray,
    pareto_k: float,
    *,
    max_dense_dim: int = DEFAULT_MAX_DENSE_DIM,
    max_pareto_k: float = DEFAULT_MAX_PARETO_K,
    min_condition: float = DEFAULT_MIN_CONDITION,
    max_rank: int = DEFAULT_MAX_RANK,
    ess: float | None = None,
    num_paths: int | None = None,
    num_paths_ok: int | None = None,
    relative_ess: float | None = None,
    max_dense_pareto_k: float = math.inf,
) -> MetricChoice:
    """Choose diagonal, low-rank or dense from a warm start's covariance and Pareto k.

    The rule:

    1. Not trusted (``kind="diag"``) when the covariance is not finite and
       positive definite, the Pareto k is NaN or above ``max_pareto_k`` (unless
       the importance weights are nearly equal, ``relative_ess``), or fewer
       than half the paths succeeded.
    2. ``diag`` when the correlation matrix is well conditioned (condition
       number below ``min_condition``) or no better conditioned than the
       noise of an estimate from ``ess`` draws (twice the Marchenko-Pastur
       figure).
    3. ``diag`` when the Pareto k is above ``max_dense_pareto_k`` (no limit
       by default).
    4. Otherwise ``dense`` up to ``max_dense_dim`` parameters; above it
       ``lowrank``, with one direction per eigenvalue of the correlation
       matrix that stands out (at least 3x from their median and outside the
       noise band), at most ``max_rank``.

    Parameters
    ----------
    covariance : ndarray, shape (dim, dim)
        The warm start's covariance on the unconstrained space.
    pareto_k : float
        Its Pareto k (``-inf`` for an exact approximation).
    max_dense_dim : int
        Largest dimension for a dense metric.
    max_pareto_k : float
        Largest Pareto k at which the covariance is trusted.
    min_condition : float
        Smallest condition number of the correlation matrix for a dense or
        low-rank metric.
    max_rank : int
        Largest rank of the low-rank part.
    ess : float, optional
        Effective sample size of the draws behind the covariance, where it is
        a plain estimate from draws (a flow's, a chain's); it sets the noise
        band. Leave it out for Pathfinder's covariance: with few effective
        draws that is blended with the exact moments of the paths' normal
        approximations, so its importance ESS overstates the noise.
    num_paths, num_paths_ok : int, optional
        Paths run and paths that succeeded (Pathfinder).
    max_dense_pareto_k : float
        Largest Pareto k for a dense or low-rank metric; above it, ``diag``. A
        sampler that re-estimates a dense metric from few draws (CmdStan's
        single short window) sets it: past a k of about 1 the posterior is far
        from normal, and one global dense metric can fit it worse than a
        diagonal one.
    relative_ess : float, optional
        Importance ESS over the number of importance draws
        (:func:`relative_importance_ess`). At or above
        :data:`FLAT_WEIGHTS_RELATIVE_ESS` the weights are nearly equal (the
        approximation is nearly exact) and the Pareto k, fitted to the tail of
        nearly constant ratios, is noise: it is not held against the covariance.

    Returns
    -------
    MetricChoice

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.blocks.metric_choice import choose_metric
    >>> choose_metric(np.diag([1.0, 100.0, 0.01]), 0.4).kind     # scales only
    'diag'
    >>> rho = 0.95 ** np.abs(np.subtract.outer(np.arange(80), np.arange(80)))
    >>> c = choose_metric(rho, 0.5)                              # 80 correlated parameters
    >>> c.kind, c.rank
    ('lowrank', 16)
    >>> choose_metric(rho[:2, :2], 1.7).reason
    'Pareto k 1.70 > 1.5: not trusted, diag'
    """
    cov = np.asarray(covariance, dtype=float)
    cov = np.atleast_2d(cov)
    dim = int(cov.shape[0])
    pareto_k = float(pareto_k)
    problem = _trust_problem(pareto_k, max_pareto_k, num_paths, num_paths_ok, relative_ess)
    if problem is not None:
        return _untrusted(dim, pareto_k, problem)
    stats = _correlation_stats(cov)
    if stats is None:
        return _untrusted(dim, pareto_k, "covariance not finite and positive definite")
    max_corr, condition, vals = stats
    noise = _noise_condition(dim, ess)
    band = noise**0.5  # eigenvalues of pure noise lie within [1/band, band], roughly
    factor = max(_OUTLYING_FACTOR, band)
    bulk = float(np.median(vals))  # strong directions push the rest below 1
    num_outlying = int(np.sum((vals > factor * bulk) | (vals < bulk / factor)))
    head = f"max |corr| {max_corr:.2f}, condition number {condition:.2g}, k {_fmt_k(pareto_k)}"
    if condition < min_condition:
        kind, rank, why = "diag", 0, f"condition < {min_condition:g}"
    elif condition < 2.0 * noise:
        kind, rank, why = "diag", 0, f"within the noise of {ess:.0f} draws"
    elif pareto_k > max_dense_pareto_k:
        kind, rank, why = "diag", 0, f"k > {max_dense_pareto_k:g}: far from normal"
    elif dim <= max_dense_dim:
        kind, rank, why = "dense", 0, ""
    else:
        rank = int(min(max(num_outlying, 1), max_rank, dim))
        kind, why = "lowrank", f"{num_outlying} outlying directions, dim {dim} > {max_dense_dim}"
    reason = f"{head}: {kind}" + (f" ({why})" if why else "")
    return MetricChoice(
        kind=kind,
        rank=rank,
        reason=reason,
        trusted=True,
        dim=dim,
        pareto_k=pareto_k,
        max_abs_corr=max_corr,
        condition=condition,
        noise_condition=noise,
        num_outlying=num_outlying,
    )


def metric_mismatch(metric_var: np.ndarray, draws_var: np.ndarray) -> float:
    """How far the chain's own variances are from the metric it ran with: the largest factor.

    ``exp(max_i |log(draws_var_i / metric_var_i)|)``: 1 when they agree. A
    metric that fits the posterior gives only the noise of the estimate (see
    :func:`mismatch_threshold`).

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.blocks.metric_choice import metric_mismatch
    >>> round(metric_mismatch(np.array([1.0, 4.0]), np.array([1.0, 1.0])), 6)
    4.0
    """
    ratio = np.asarray(draws_var, dtype=float) / np.asarray(metric_var, dtype=float)
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    if ratio.size == 0:
        return math.nan
    return float(np.exp(np.max(np.abs(np.log(ratio)))))


def mismatch_threshold(num_draws: float, floor: float = 2.0) -> float:
    """The :func:`metric_mismatch` above which a metric does not fit, for ``num_draws`` draws.

    Four standard deviations of the log of a variance estimated from
    ``num_draws`` effective draws (``exp(4 sqrt(2 / n))``), and at least ``floor``.

    Examples
    --------
    >>> from pymc_ext.blocks.metric_choice import mismatch_threshold
    >>> round(mismatch_threshold(19), 2), mismatch_threshold(10_000)
    (3.66, 2.0)
    """
    n = max(float(num_draws), 2.0)
    return float(max(floor, math.exp(4.0 * math.sqrt(2.0 / n))))
