"""Strata of a tempering population: which walkers share a mode of ``pi_beta``, and resampling
that keeps every mode populated.

Along the geometric path ``q0^(1 - beta) p^beta`` a narrow mode's share of
``pi_beta`` dips far below its final weight: its tempered volume shrinks
faster than a wide mode's. On a 10-D mixture of scales 0.5, 1 and 1.5 the
narrow mode (weight 0.2) holds about 2e-4 of ``pi_beta`` for beta between
0.03 and 0.3, so plain resampling of a thousand walkers loses it for good.

:func:`cluster_walkers` groups walkers by the mode of ``pi_beta`` they climb
to (a batched gradient ascent, then a barrier test between climb ends), and
:func:`stratified_resample` resamples within each group, giving every group
at least ``min_per_stratum`` walkers while keeping its total weight. Any
partition of the walkers is a valid stratification (resampling within
strata is unbiased whatever the strata are), so a wrong split or merge only
costs efficiency, never correctness.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp

from pymc_ext.blocks.importance import importance_resample
from pymc_ext.density import LogDensity

__all__ = [
    "ascend_batch",
    "cluster_walkers",
    "stratified_resample",
    "within_strata_variance",
]


def ascend_batch(
    target: LogDensity, X: np.ndarray, scale: np.ndarray, iters: int = 25
) -> tuple[np.ndarray, np.ndarray]:
    """Climb every row of ``X`` on ``target`` at once (preconditioned gradient ascent).

    Each walker takes steps ``x + eta * scale^2 * grad``; a step that raises
    the log density is kept and ``eta`` grows by 1.5 (at most 1), one that
    does not is refused and ``eta`` shrinks by 3. The ends need not be
    converged: they only have to lie in the basin of the mode they climb to.

    Parameters
    ----------
    target : LogDensity
    X : ndarray, shape (n, dim)
    scale : ndarray, shape (dim,)
        Per-coordinate scale (the preconditioner is ``scale^2``).
    iters : int

    Returns
    -------
    ends : ndarray, shape (n, dim)
    logp : ndarray, shape (n,)

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler.strata import ascend_batch
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x,
    ...                        logp_batch_fn=lambda X: -0.5 * (X * X).sum(1),
    ...                        grad_batch_fn=lambda X: -X)
    >>> ends, lp = ascend_batch(d, np.array([[3.0, -2.0]]), np.ones(2))
    >>> np.abs(ends).max() < 1e-6
    np.True_
    """
    x = np.array(X, dtype=float)
    lp, g = target.logp_and_grad_batch(x)
    lp = np.where(np.isfinite(lp), lp, -np.inf)
    g = np.where(np.isfinite(g), g, 0.0)
    eta = np.full(x.shape[0], 1.0)
    m = np.asarray(scale, dtype=float) ** 2
    for _ in range(int(iters)):
        prop = x + eta[:, None] * m * g
        lp_new, g_new = target.logp_and_grad_batch(prop)
        up = np.isfinite(lp_new) & np.all(np.isfinite(g_new), axis=1) & (lp_new > lp)
        x = np.where(up[:, None], prop, x)
        lp = np.where(up, lp_new, lp)
        g = np.where(up[:, None], g_new, g)
        eta = np.where(up, np.minimum(1.5 * eta, 1.0), eta / 3.0)
    return x, lp


def _barrier_free(
    target: LogDensity, A: np.ndarray, lp_a: np.ndarray, b: np.ndarray, lp_b: float, tol: float
) -> np.ndarray:
    """For each row of ``A``: no dip deeper than ``tol`` below the lower end on the segment to b."""
    t = np.linspace(0.0, 1.0, 7)[1:-1]
    seg = A[:, None, :] * (1 - t)[None, :, None] + b[None, None, :] * t[None, :, None]
    lp_seg = target.logp_batch(seg.reshape(-1, A.shape[1])).reshape(A.shape[0], t.size)
    lp_seg = np.where(np.isfinite(lp_seg), lp_seg, -np.inf)
    return lp_seg.min(axis=1) >= np.minimum(lp_a, lp_b) - tol


def cluster_walkers(
    target: LogDensity,
    X: np.ndarray,
    scale: np.ndarray,
    *,
    tol: float = 0.5,
    iters: int = 25,
    max_clusters: int = 32,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group walkers by the mode of ``target`` they climb to.

    Every walker climbs (:func:`ascend_batch`). The best climb end becomes
    the first cluster's representative, and every end with no barrier deeper
    than ``tol`` nats on the segment to it joins it; the best end left
    starts the next cluster, and so on. Past ``max_clusters`` the ends left
    join the nearest representative (scaled distance).

    Parameters
    ----------
    target : LogDensity
    X : ndarray, shape (n, dim)
    scale : ndarray, shape (dim,)
    tol : float
        Barrier depth (nats) that separates two modes.
    iters : int
        Ascent iterations.
    max_clusters : int

    Returns
    -------
    labels : ndarray of int, shape (n,)
        Cluster of each walker (0 holds the best representative).
    reps : ndarray, shape (k, dim)
        Each cluster's best climb end (a mode of ``target`` when the climbs
        converged).
    rep_logp : ndarray, shape (k,)

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler.strata import cluster_walkers
    >>> def lp(X):
    ...     return np.logaddexp(-0.5 * ((X + 4) ** 2).sum(-1), -0.5 * ((X - 4) ** 2).sum(-1))
    >>> def gr(X):
    ...     a, b = -0.5 * ((X + 4) ** 2).sum(-1), -0.5 * ((X - 4) ** 2).sum(-1)
    ...     r = np.exp(a - np.logaddexp(a, b))[:, None]
    ...     return r * -(X + 4) + (1 - r) * -(X - 4)
    >>> d = FunctionLogDensity(2, lambda x: lp(x[None])[0], lambda x: gr(x[None])[0], lp, gr)
    >>> X = np.random.default_rng(0).normal(size=(40, 2)) + np.repeat([[-4.0], [4.0]], 20, 0)
    >>> labels, reps, _ = cluster_walkers(d, X, np.ones(2))
    >>> np.unique(labels).size, np.round(np.abs(reps), 3).tolist()
    (2, [[4.0, 4.0], [4.0, 4.0]])
    """
    ends, lp = ascend_batch(target, X, scale, iters)
    n = X.shape[0]
    labels = np.full(n, -1, dtype=np.int64)
    reps, rep_lp = [], []
    order = np.argsort(-lp)
    finite = np.isfinite(lp)
    while len(reps) < max_clusters:
        left = order[(labels[order] < 0) & finite[order]]
        if left.size == 0:
            break
        r = left[0]
        joined = _barrier_free(target, ends[left], lp[left], ends[r], lp[r], tol)
        joined[0] = True
        labels[left[joined]] = len(reps)
        reps.append(ends[r])
        rep_lp.append(lp[r])
    if not reps:
        return np.zeros(n, dtype=np.int64), X[:1].copy(), np.array([-np.inf])
    reps_a = np.asarray(reps)
    rest = labels < 0
    if rest.any():
        d2 = (((ends[rest][:, None, :] - reps_a[None]) / scale) ** 2).sum(-1)
        labels[rest] = np.argmin(d2, axis=1)
    return labels, reps_a, np.asarray(rep_lp)


def stratified_resample(
    log_weights: np.ndarray,
    labels: np.ndarray,
    min_per_stratum: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample within strata: each stratum keeps its weight and gets at least a few walkers.

    A stratum of total weight ``W_k > 0`` gets ``n_k = m + (n - K m) W_k``
    walkers (rounded by largest remainders; ``m = min_per_stratum``, reduced
    when ``K m`` would pass half the walkers), drawn in proportion to the
    weights within it, each with weight ``W_k / n_k``.

    Parameters
    ----------
    log_weights : ndarray, shape (n,)
        Normalised log weights.
    labels : ndarray of int, shape (n,)
    min_per_stratum : int
    rng : numpy Generator

    Returns
    -------
    index : ndarray of int, shape (n,)
        The walkers kept (with repeats).
    log_weights : ndarray, shape (n,)
        Their new normalised log weights.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flow_sampler.strata import stratified_resample
    >>> logw = np.log(np.r_[np.full(99, 0.999 / 99), 0.001])
    >>> labels = np.r_[np.zeros(99, int), 1]
    >>> idx, lw = stratified_resample(logw, labels, 10, np.random.default_rng(0))
    >>> int((idx == 99).sum()), round(float(np.exp(lw[idx == 99]).sum()), 6)
    (10, 0.001)
    """
    n = log_weights.shape[0]
    strata = np.unique(labels)
    log_w_k = np.array([logsumexp(log_weights[labels == k]) for k in strata])
    alive = np.isfinite(log_w_k)
    strata, log_w_k = strata[alive], log_w_k[alive]
    w_k = np.exp(log_w_k - logsumexp(log_w_k))
    m = int(min(min_per_stratum, n // (2 * max(1, strata.size))))
    raw = m + (n - m * strata.size) * w_k
    counts = np.floor(raw).astype(int)
    short = n - counts.sum()
    if short > 0:
        counts[np.argsort(-(raw - counts))[:short]] += 1
    index, new_lw = [], []
    for k, lwk, nk in zip(strata, log_w_k, counts, strict=True):
        if nk == 0:
            continue
        members = np.flatnonzero(labels == k)
        within = log_weights[members] - lwk
        index.append(members[importance_resample(within, nk, rng)])
        new_lw.append(np.full(nk, lwk - math.log(nk)))
    idx = np.concatenate(index)
    lw = np.concatenate(new_lw)
    return idx, lw - logsumexp(lw)


def within_strata_variance(
    X: np.ndarray, log_weights: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled within-stratum variance (the metric) and each stratum's step factor.

    The factor of stratum ``k`` is ``sqrt(median(v_k / v))``: walkers in a
    narrow mode take proportionally smaller MALA steps.

    Returns
    -------
    variance : ndarray, shape (dim,)
    factor : ndarray, shape (n,)
        Per walker.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flow_sampler.strata import within_strata_variance
    >>> rng = np.random.default_rng(0)
    >>> X = np.r_[rng.normal(0, 1, (500, 2)), rng.normal(9, 0.1, (500, 2))]
    >>> labels = np.r_[np.zeros(500, int), np.ones(500, int)]
    >>> v, f = within_strata_variance(X, np.full(1000, -np.log(1000)), labels)
    >>> round(float(f[0] / f[-1]), 0)
    10.0
    """
    dim = X.shape[1]
    per_k: dict[int, np.ndarray] = {}
    num, den = np.zeros(dim), 0.0
    for k in np.unique(labels):
        sel = labels == k
        w = np.exp(log_weights[sel] - logsumexp(log_weights[sel]))
        if sel.sum() < 3 or not np.all(np.isfinite(w)):
            continue
        mean = w @ X[sel]
        v = w @ (X[sel] - mean) ** 2
        per_k[int(k)] = v
        num += sel.sum() * v
        den += sel.sum()
    if den == 0:
        w = np.exp(log_weights - logsumexp(log_weights))
        var = w @ (X - w @ X) ** 2
    else:
        var = num / den
    pos = var[var > 0]
    ref = float(np.median(pos)) if pos.size else 1.0
    var = np.clip(np.where(var > 0, var, ref), 1e-8 * ref, 1e8 * ref)
    factor = np.ones(X.shape[0])
    for k, v in per_k.items():
        ratio = v / var
        f = math.sqrt(float(np.median(ratio[ratio > 0]))) if np.any(ratio > 0) else 1.0
        factor[labels == k] = float(np.clip(f, 0.02, 50.0))
    return var, factor
