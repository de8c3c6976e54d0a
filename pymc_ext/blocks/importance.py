"""Importance sampling: Pareto-smoothed log weights (ArviZ's PSIS), importance ESS, resampling.

One policy for non-finite ratios holds everywhere (Pathfinder, flows, the
flow sampler and amortized fitting):

- a non-finite ratio ``log p - log q`` (a draw outside the support, a failed
  evaluation) gets weight zero and is left out of the Pareto fit;
- a row with no finite ratio at all gets ``pareto_k = inf`` and NaN log
  weights: nothing in it can be trusted, and every ``k > 0.7`` check says so;
- fewer than ``min_draws`` finite ratios: normalised weights, ``k = nan``
  (too few for a tail fit);
- ratios that are all equal (an exact proposal): normalised weights,
  ``k = -inf``.

Use :func:`scipy.special.logsumexp` for log-sum-exp; it is not written again here.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.special import logsumexp

__all__ = ["importance_ess", "importance_resample", "psis_log_weights"]


def _psis_row(lr: np.ndarray, min_draws: int) -> tuple[np.ndarray, float]:
    """PSIS on one row of ratios (non-finite entries allowed)."""
    from arviz_stats.base import array_stats

    out = np.full(lr.shape, -np.inf)
    finite = np.isfinite(lr)
    n = int(finite.sum())
    if n == 0:
        return np.full(lr.shape, np.nan), np.inf
    kept = lr[finite] - np.max(lr[finite])
    if n < min_draws or np.ptp(kept) <= 1e-12 * max(1.0, float(np.abs(lr[finite]).max())):
        out[finite] = kept - logsumexp(kept)
        return out, (-np.inf if n >= min_draws else np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            # arviz_stats smooths exp(-x) (its LOO convention: x is a log-likelihood)
            lw, k = array_stats.psislw(-kept, r_eff=1.0)
        except ValueError:  # "All tail values are the same": no tail to smooth
            lw, k = kept - logsumexp(kept), -np.inf
    lw = np.asarray(lw, dtype=float)
    out[finite] = lw - logsumexp(lw)
    return out, float(k)


def psis_log_weights(
    log_ratios: np.ndarray, min_draws: int = 10
) -> tuple[np.ndarray, float | np.ndarray]:
    """Pareto-smoothed, normalised log importance weights and the Pareto k (ArviZ's PSIS).

    Parameters
    ----------
    log_ratios : ndarray, shape (..., draws)
        ``log p(x) - log q(x)`` for draws ``x ~ q``; leading axes are separate
        problems (datasets). Non-finite entries follow the module's policy.
    min_draws : int
        Fewest finite ratios for a Pareto fit.

    Returns
    -------
    log_weights : ndarray, shape (..., draws)
        Normalised along the last axis (``exp(log_weights).sum(-1) == 1``).
    pareto_k : float or ndarray, shape (...)
        The fitted tail shape: a float for 1-D input.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.blocks.importance import psis_log_weights
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=4000)                       # draws from q = N(0, 1)
    >>> log_p = -0.5 * ((x - 0.5) / 1.2) ** 2           # target N(0.5, 1.2^2), unnormalised
    >>> lw, k = psis_log_weights(log_p + 0.5 * x**2)
    >>> round(float(np.exp(lw) @ x), 1), bool(k < 0.7)
    (0.5, True)
    >>> psis_log_weights(np.array([np.nan, np.inf]))[1]  # nothing finite: k = inf
    inf
    """
    lr = np.asarray(log_ratios, dtype=float)
    if lr.ndim == 0:
        raise ValueError("log_ratios must have at least one axis (the draws).")
    flat = lr.reshape(-1, lr.shape[-1])
    log_weights = np.empty_like(flat)
    k = np.empty(flat.shape[0])
    for i, row in enumerate(flat):
        log_weights[i], k[i] = _psis_row(row, min_draws)
    log_weights = log_weights.reshape(lr.shape)
    if lr.ndim == 1:
        return log_weights, float(k[0])
    return log_weights, k.reshape(lr.shape[:-1])


def importance_ess(log_weights: np.ndarray) -> np.ndarray | float:
    """Effective sample size ``1 / sum(w^2)`` of normalised log weights (last axis).

    Parameters
    ----------
    log_weights : ndarray, shape (..., draws)
        Normalised log weights.

    Returns
    -------
    float or ndarray, shape (...)

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.blocks.importance import importance_ess
    >>> round(float(importance_ess(np.log(np.full(100, 0.01)))), 6)
    100.0
    """
    w = np.exp(np.asarray(log_weights, dtype=float))
    return 1.0 / np.sum(w**2, axis=-1)


def importance_resample(
    log_weights: np.ndarray,
    size: int,
    rng: np.random.Generator,
    method: str = "multinomial",
) -> np.ndarray:
    """Indices drawn with replacement in proportion to normalised weights.

    Parameters
    ----------
    log_weights : ndarray, shape (draws,)
    size : int
    rng : numpy.random.Generator
    method : {"multinomial", "systematic"}
        ``"multinomial"``: independent draws. ``"systematic"``: one uniform
        offset and ``size`` evenly spaced points on the cumulative weights
        (Kitagawa 1996), in random order. Both are unbiased; systematic
        resampling adds far less Monte Carlo noise to the resampled moments
        (each draw is kept ``floor(size w)`` or ``ceil(size w)`` times), so
        the resampled draws are nearly as good as the weighted ones.

    Returns
    -------
    ndarray of int, shape (size,)

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.blocks.importance import importance_resample
    >>> idx = importance_resample(np.log([0.0, 1.0, 0.0]), 5, np.random.default_rng(0))
    >>> idx.tolist()
    [1, 1, 1, 1, 1]
    >>> idx = importance_resample(np.log([0.25, 0.75]), 4, np.random.default_rng(0), "systematic")
    >>> sorted(idx.tolist())                        # exactly 1 and 3 copies
    [0, 1, 1, 1]
    """
    p = np.exp(np.asarray(log_weights, dtype=float))
    p = p / p.sum()
    if method == "multinomial":
        return rng.choice(p.shape[0], size=int(size), replace=True, p=p)
    if method != "systematic":
        raise ValueError(f"method must be 'multinomial' or 'systematic', got {method!r}.")
    points = (rng.random() + np.arange(int(size))) / int(size)
    idx = np.minimum(np.searchsorted(np.cumsum(p), points, side="right"), p.shape[0] - 1)
    return rng.permutation(idx)
