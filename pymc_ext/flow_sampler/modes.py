"""Modes: whether two points share one, which mode a point is near, and whether the flow covers it.

A mode is told apart from another by a log-density barrier on the segment
between them (:func:`same_mode`), with an L-BFGS climb
(:func:`pymc_ext.blocks.lbfgs.lbfgs_maximize`) to the top where the segment
alone would split a curved mode. The within-mode spread of the walkers gives
the local moves' metric (:func:`within_mode_covariance`,
:func:`within_mode_variance`), and :func:`coverage_check` says whether the flow
puts mass where the walkers are.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import logsumexp

from pymc_ext.blocks.importance import psis_log_weights
from pymc_ext.blocks.lbfgs import CLIMB_FTOL, CLIMB_GTOL, LBFGSStatus, lbfgs, lbfgs_maximize
from pymc_ext.density import LogDensity
from pymc_ext.flows import StandardizedFlow

__all__ = [
    "coverage_check",
    "discover_modes",
    "distinct_modes",
    "mode_groups",
    "nearest_mode",
    "same_mode",
    "within_mode_covariance",
    "within_mode_variance",
]


def same_mode(density: LogDensity, a: np.ndarray, b: np.ndarray, tol: float = 2.0) -> bool:
    """No log-density barrier deeper than ``tol`` nats on the segment from ``a`` to ``b``.

    Parameters
    ----------
    density : LogDensity
    a, b : ndarray, shape (dim,)
    tol : float
        Deepest dip (nats) below the lower end that still counts as one mode.

    Returns
    -------
    bool

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler.modes import same_mode
    >>> lp = lambda X: np.logaddexp(-0.5 * ((X + 4) ** 2).sum(-1), -0.5 * ((X - 4) ** 2).sum(-1))
    >>> d = FunctionLogDensity(1, lambda x: lp(x[None])[0], logp_batch_fn=lp)
    >>> same_mode(d, np.array([-4.0]), np.array([-3.0])), same_mode(d, np.array([-4.0]),
    ...                                                               np.array([4.0]))
    (True, False)
    """
    t = np.linspace(0.0, 1.0, 7)[1:-1, None]
    seg = a[None] * (1 - t) + b[None] * t
    lp_ends = density.logp_batch(np.stack([a, b]))
    lp_seg = density.logp_batch(seg)
    if not np.all(np.isfinite(lp_ends)):
        return False
    return bool(np.all(np.isfinite(lp_seg)) and lp_seg.min() >= lp_ends.min() - tol)


def _climb(density: LogDensity, x0: np.ndarray) -> np.ndarray | None:
    """The top of ``x0``'s mode by L-BFGS, or None when the climb does not converge."""
    return lbfgs_maximize(density, x0, maxiter=200)[0]


def _climb_end(density: LogDensity, x0: np.ndarray) -> np.ndarray | None:
    """Where an L-BFGS climb from ``x0`` ends: its top, or its last iterate when it was still
    climbing after 200 iterations (down a funnel's neck, where there is no top); None when
    it failed. For merging centres only: two climbs that end together share a mode."""
    trace, info = lbfgs(density, np.asarray(x0, dtype=float), 10, 200, CLIMB_FTOL, CLIMB_GTOL)
    ended = info.status in (LBFGSStatus.CONVERGED, LBFGSStatus.MAXITER)
    return trace[-1].x if trace and ended else None


def distinct_modes(density: LogDensity, centers: np.ndarray) -> np.ndarray:
    """Greedily merge path centres that share a mode.

    Two centres share a mode when there is no barrier on the segment between
    them, or, failing that, when L-BFGS climbs from both ends to the same top
    (no barrier between the tops). The climb matters on curved posteriors:
    a Pathfinder centre is not a maximum, and the straight segment between
    two centres in one curved mode can dip by more than the barrier
    tolerance (gp_pois_regr: a centre 11 nats below the top, gradient norm 60,
    climbs to the same top as the best centre). A climb still rising after 200
    iterations (down a funnel's neck, which has no top) counts by where it
    ended, so two centres whose climbs both run down the neck are one mode.
    Climbs only ever merge; a centre whose climb fails or ends elsewhere is
    kept as it is.

    Parameters
    ----------
    density : LogDensity
    centers : ndarray, shape (k, dim)

    Returns
    -------
    ndarray, shape (m, dim)
        One centre per mode (the best first); the mean of ``centers`` when none is finite.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler import distinct_modes
    >>> lp = lambda X: np.logaddexp(-0.5 * ((X + 4) ** 2).sum(-1), -0.5 * ((X - 4) ** 2).sum(-1))
    >>> d = FunctionLogDensity(1, lambda x: lp(x[None])[0], logp_batch_fn=lp)
    >>> distinct_modes(d, np.array([[-4.0], [-3.5], [4.0]])).tolist()
    [[-4.0], [4.0]]
    """
    _, reps = mode_groups(density, centers)
    if reps.size == 0:
        return np.asarray([centers.mean(0)])
    return centers[reps]


def mode_groups(density: LogDensity, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label each point by the mode it belongs to (see :func:`distinct_modes` for the rule).

    Parameters
    ----------
    density : LogDensity
    points : ndarray, shape (k, dim)

    Returns
    -------
    labels : ndarray of int, shape (k,)
        Group of each point, numbered from the best point's group (0) down in
        log density; -1 where the log density is not finite.
    reps : ndarray of int, shape (groups,)
        Index of each group's representative, its best point.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler.modes import mode_groups
    >>> lp = lambda X: np.logaddexp(-0.5 * ((X + 4) ** 2).sum(-1), -0.5 * ((X - 4) ** 2).sum(-1))
    >>> d = FunctionLogDensity(1, lambda x: lp(x[None])[0], logp_batch_fn=lp)
    >>> labels, reps = mode_groups(d, np.array([[3.0], [-4.0], [4.0], [-3.5]]))
    >>> labels.tolist(), reps.tolist()
    ([1, 0, 1, 0], [1, 2])
    """
    lp = density.logp_batch(points)
    order = np.argsort(-np.where(np.isfinite(lp), lp, -np.inf))
    labels = np.full(points.shape[0], -1, dtype=np.int64)
    reps: list[int] = []
    tops: list[np.ndarray | None] = []
    climbed: list[bool] = []
    for i in order:
        c = points[i]
        if not np.isfinite(lp[i]):
            continue
        hit = next((k for k, r in enumerate(reps) if same_mode(density, c, points[r])), None)
        if hit is None and reps:
            top = _climb_end(density, c)
            if top is not None:
                for k, r in enumerate(reps):
                    if not climbed[k]:
                        tops[k], climbed[k] = _climb_end(density, points[r]), True
                hit = next((k for k, t in enumerate(tops)
                            if t is not None and same_mode(density, top, t)), None)
        if hit is None:
            reps.append(int(i))
            tops.append(None)
            climbed.append(False)
            hit = len(reps) - 1
        labels[i] = hit
    return labels, np.asarray(reps, dtype=np.int64)


def _rms_distance(x: np.ndarray, modes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Root-mean-square distance (in ``scale`` units) of the rows of ``x`` to each mode."""
    x = np.atleast_2d(x)
    return np.sqrt((((x[:, None, :] - modes[None]) / scale) ** 2).sum(-1) / x.shape[1])


def discover_modes(
    density: LogDensity,
    walkers: np.ndarray,
    walker_logp: np.ndarray,
    modes: np.ndarray,
    scale: np.ndarray,
    max_checks: int = 4,
    distance: float = 2.0,
) -> np.ndarray:
    """Add modes the walkers reached that the Pathfinder paths did not find.

    A walker farther than ``distance`` (root-mean-square, in within-mode
    standard deviations) from every known mode, with a log-density barrier
    between it and each of them, is climbed to the top of its own mode
    (L-BFGS); that top is added if it is separated from every known mode too.
    At most ``max_checks`` climbs per call, best walkers first.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler import discover_modes
    >>> def lp(X):
    ...     return np.logaddexp(-0.5 * ((X + 4) ** 2).sum(-1), -0.5 * ((X - 4) ** 2).sum(-1))
    >>> def gr(X):
    ...     a, b = -0.5 * ((X + 4) ** 2).sum(-1), -0.5 * ((X - 4) ** 2).sum(-1)
    ...     r = np.exp(a - np.logaddexp(a, b))[:, None]
    ...     return r * -(X + 4) + (1 - r) * -(X - 4)
    >>> d = FunctionLogDensity(2, lambda x: lp(x[None])[0], lambda x: gr(x[None])[0], lp, gr)
    >>> walkers = np.array([[-4.0, -4.2], [3.8, 4.1]])
    >>> modes = discover_modes(d, walkers, lp(walkers), np.array([[-4.0, -4.0]]), np.ones(2))
    >>> np.round(modes, 2).tolist()
    [[-4.0, -4.0], [4.0, 4.0]]
    """
    modes = np.atleast_2d(np.asarray(modes, dtype=float))
    rms = np.min(_rms_distance(walkers, modes, scale), axis=1)
    order = np.argsort(-np.where(np.isfinite(walker_logp), walker_logp, -np.inf))
    checks = 0
    for i in order:
        if checks >= max_checks:
            break
        x = walkers[i]
        if rms[i] <= distance or not np.isfinite(walker_logp[i]):
            continue
        if np.any(_rms_distance(x, modes, scale) <= distance):
            continue
        if any(same_mode(density, x, m) for m in modes):
            continue
        checks += 1
        top = _climb(density, x)
        # A mode that walkers found has its top near them; a climb that ran far away (down a
        # funnel's neck, say) found no mode the walkers are in.
        if top is None or _rms_distance(top, x[None], scale)[0, 0] > 2 * distance:
            continue
        if not any(same_mode(density, top, m) for m in modes):
            modes = np.vstack([modes, top])
    return modes


def nearest_mode(X: np.ndarray, modes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Index of the nearest mode (scaled Euclidean distance) for each row of ``X``.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flow_sampler.modes import nearest_mode
    >>> nearest_mode(np.array([[-1.0], [2.0]]), np.array([[-3.0], [3.0]]), np.ones(1)).tolist()
    [0, 1]
    """
    if modes.shape[0] == 1:
        return np.zeros(X.shape[0], dtype=np.int64)
    d = ((X[:, None, :] - modes[None, :, :]) / scale) ** 2
    return np.argmin(d.sum(-1), axis=1).astype(np.int64)


def within_mode_variance(
    X: np.ndarray, labels: np.ndarray, fallback: np.ndarray
) -> np.ndarray:
    """Pooled within-mode variance of walker states (each mode's own spread).

    Modes with fewer than 5 states are left out; ``fallback`` is returned when
    fewer than 10 degrees of freedom are left, and fills non-positive entries.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flow_sampler.modes import within_mode_variance
    >>> X = np.concatenate([np.random.default_rng(0).normal(-5, 1, (2000, 1)),
    ...                     np.random.default_rng(1).normal(5, 1, (2000, 1))])
    >>> labels = (X[:, 0] > 0).astype(int)
    >>> np.round(within_mode_variance(X, labels, np.ones(1)), 1).tolist()
    [1.0]
    """
    num, den = np.zeros(X.shape[1]), 0.0
    for k in np.unique(labels):
        sel = X[labels == k]
        if sel.shape[0] >= 5:
            num += sel.var(0) * (sel.shape[0] - 1)
            den += sel.shape[0] - 1
    if den < 10:
        return fallback
    var = num / den
    return np.where(np.isfinite(var) & (var > 0), var, fallback)


def within_mode_covariance(
    X: np.ndarray, labels: np.ndarray, fallback: np.ndarray
) -> np.ndarray:
    """Pooled within-mode covariance of walker states, shrunk a little towards its diagonal.

    Falls back to ``fallback`` (a diagonal or dense metric) when there are too
    few states or the estimate is not positive definite.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flow_sampler.modes import within_mode_covariance
    >>> X = np.random.default_rng(0).multivariate_normal([0, 0], [[1, .5], [.5, 1]], 4000)
    >>> np.round(within_mode_covariance(X, np.zeros(4000, int), np.ones(2)), 1).tolist()
    [[1.0, 0.5], [0.5, 1.0]]
    """
    dim = X.shape[1]
    num, den = np.zeros((dim, dim)), 0.0
    for k in np.unique(labels):
        sel = X[labels == k]
        if sel.shape[0] >= 5:
            c = sel - sel.mean(0)
            num += c.T @ c
            den += sel.shape[0] - 1
    if den < max(10, 2 * dim):
        return fallback
    cov = num / den
    n = den
    # Stan-style regularisation, relative to the scale of each coordinate
    cov = (n / (n + 5.0)) * cov + (5.0 / (n + 5.0)) * 1e-3 * np.diag(np.diag(cov))
    cov = 0.5 * (cov + cov.T)
    if not np.all(np.isfinite(cov)) or np.any(np.diag(cov) <= 0):
        return fallback
    try:
        np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        return fallback
    return cov


def _mode_shares(
    walkers: np.ndarray, draws: np.ndarray, modes: np.ndarray, scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Share of walkers and of flow draws nearest each mode, and the starved modes."""
    k = modes.shape[0]
    n_w = max(1, walkers.shape[0])
    walker_share = np.bincount(nearest_mode(walkers, modes, scale), minlength=k) / n_w
    flow_share = np.bincount(nearest_mode(draws, modes, scale), minlength=k) / max(
        1, draws.shape[0]
    )
    starved = [
        int(i)
        for i in range(k)
        if walker_share[i] >= 2.0 / n_w and flow_share[i] < 0.1 * walker_share[i]
    ]
    return walker_share, flow_share, starved


def coverage_check(
    density: LogDensity,
    flow: StandardizedFlow,
    walkers: np.ndarray,
    walker_logp: np.ndarray,
    modes: np.ndarray,
    scale: np.ndarray,
    rng: np.random.Generator,
    num_flow_draws: int = 4096,
    ratio_threshold: float = 1e-4,
) -> dict[str, Any]:
    """Does the flow put mass where the walkers are?

    Two checks, which a healthy-looking acceptance rate cannot replace:

    - per mode: the share of flow draws nearest each mode against the share
      of walkers there;
    - per walker: ``q(x) / p(x)`` relative to its average over flow draws
      (an estimate of ``1 / Z``); a walker where this is below
      ``ratio_threshold`` sits where the flow has at least 10,000 times too
      little mass.

    Returns
    -------
    dict
        ``walker_share``, ``flow_share`` (per mode), ``starved_modes``
        (indices of modes with walkers but less than a tenth of their share
        of flow mass), ``starved_walker_fraction``, ``log_z``,
        ``walker_log_ratio`` (``log p(x) - log q(x) - log Z`` per walker),
        the flow draws used with their log importance weights
        (``flow_draws``, ``flow_log_weights``), and the Pareto k of those
        weights (``pareto_k``; above 0.7 the flow's tails are too light for
        the posterior).

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flows import build_flow
    >>> from pymc_ext.flow_sampler import coverage_check
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x,
    ...                        logp_batch_fn=lambda X: -0.5 * (X * X).sum(1))
    >>> flow = build_flow(2, random_seed=0).frozen()
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(64, 2))
    >>> out = coverage_check(d, flow, X, d.logp_batch(X), np.zeros((1, 2)), np.ones(2), rng)
    >>> out["starved_modes"]
    []
    """
    xq, logq_q = flow.sample(num_flow_draws, rng)
    lp_q = density.logp_batch(xq)
    logw = np.where(np.isfinite(lp_q), lp_q - logq_q, -np.inf)
    finite = np.isfinite(logw)
    log_z = float(logsumexp(logw[finite]) - math.log(num_flow_draws)) if finite.any() else -np.inf
    walker_share, flow_share, starved = _mode_shares(walkers, xq, modes, scale)
    rel = flow.log_prob_numpy(walkers) - (walker_logp - log_z)
    starved_frac = float(np.mean(rel < math.log(ratio_threshold))) if np.isfinite(log_z) else 1.0
    pareto_k = psis_log_weights(logw)[1] if finite.sum() >= 10 else float("inf")
    return {
        "walker_share": walker_share,
        "flow_share": flow_share,
        "starved_modes": starved,
        "starved_walker_fraction": starved_frac,
        "log_z": log_z,
        "walker_log_ratio": -rel,
        "flow_draws": xq,
        "flow_log_weights": logw,
        "pareto_k": float(pareto_k),
    }
