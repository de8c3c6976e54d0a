"""Per-dataset trust checks for amortized posteriors: PSIS Pareto k and out-of-distribution data.

For one dataset ``y`` the amortized posterior ``q(theta | y)`` is an
importance-sampling proposal for the true posterior, with log weights
``log p(theta, y) - log q(theta | y)`` from the model's true joint density.
Pareto-smoothed importance sampling (PSIS; Vehtari et al., 2024) fits a
generalised Pareto tail to the weights. Its shape ``k`` says how far the
draws can be trusted:

- ``k < 0.5``: ``q`` is close; raw draws are fine.
- ``0.5 <= k < 0.7``: usable; importance resampling (``correct="psis"``)
  removes the remaining bias.
- ``k >= 0.7``: ``q`` misses mass of the true posterior; neither the raw nor
  the resampled draws can be trusted. Use :class:`pymc_ext.AmortizedMH` (exact
  MCMC with ``q`` as the proposal) or ``pm.sample``.

The smoothing is ArviZ's own (``arviz_stats``), not a copy.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = [
    "PARETO_K_THRESHOLD",
    "AmortizedDataWarning",
    "psis_log_weights",
    "importance_resample",
    "importance_ess",
]

PARETO_K_THRESHOLD = 0.7


class AmortizedDataWarning(UserWarning):
    """A dataset looks unlike the training simulations, or its Pareto k is high."""


def psis_log_weights(log_ratios: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pareto-smoothed, normalised log importance weights and the Pareto k (ArviZ's PSIS).

    Parameters
    ----------
    log_ratios : ndarray, shape (..., draws)
        ``log p(theta, y) - log q(theta | y)`` per draw; leading axes are
        separate datasets.

    Returns
    -------
    log_weights : ndarray, shape (..., draws)
        Smoothed log weights, normalised to sum to one along the last axis.
    pareto_k : ndarray, shape (...)
        The fitted tail shape.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.amortized_diagnostics import psis_log_weights
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=4000)                       # draws from q = N(0, 1)
    >>> log_p = -0.5 * ((x - 0.5) / 1.2) ** 2           # target N(0.5, 1.2^2), unnormalised
    >>> lw, k = psis_log_weights(log_p + 0.5 * x**2)
    >>> round(float(np.exp(lw) @ x), 1), bool(k < 0.7)
    (0.5, True)
    """
    lr = np.asarray(log_ratios, dtype=float)
    finite = np.isfinite(lr)
    if not finite.all():
        # -inf (outside the support / failed evaluation) gets a negligible weight
        low = np.where(finite, lr, np.inf).min(axis=-1, keepdims=True)
        lr = np.where(finite, lr, np.where(np.isfinite(low), low - 50.0, -50.0))
    lr = lr - lr.max(axis=-1, keepdims=True)
    shape = lr.shape
    flat = lr.reshape(-1, shape[-1])
    log_weights = flat - _logsumexp(flat)
    k = np.full(flat.shape[0], -np.inf)  # constant weights: q matches p exactly
    varying = np.flatnonzero(np.ptp(flat, axis=-1) > 1e-10)
    if len(varying):
        try:
            lw, kk = _psislw(flat[varying])
            log_weights[varying], k[varying] = lw, kk
        except ValueError:  # a degenerate tail in some row: smooth row by row
            for i in varying:
                try:
                    lw, kk = _psislw(flat[i : i + 1])
                    log_weights[i], k[i] = lw[0], kk[0]
                except ValueError:
                    k[i] = np.nan
    return log_weights.reshape(shape), k.reshape(shape[:-1])


def _psislw(lr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from arviz_stats.base import array_stats

    # arviz_stats' psislw smooths the weights exp(-x) (its LOO convention: x = log-lik)
    log_weights, k = array_stats.psislw(-lr, r_eff=1.0, axis=-1)
    log_weights = np.asarray(log_weights, dtype=float)
    return log_weights - _logsumexp(log_weights), np.atleast_1d(np.asarray(k, dtype=float))


def _logsumexp(a: np.ndarray) -> np.ndarray:
    m = np.max(a, axis=-1, keepdims=True)
    return m + np.log(np.sum(np.exp(a - m), axis=-1, keepdims=True))


def importance_ess(log_weights: np.ndarray) -> np.ndarray:
    """Effective sample size ``1 / sum(w^2)`` of normalised log weights (last axis).

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.amortized_diagnostics import importance_ess
    >>> round(float(importance_ess(np.log(np.full(100, 0.01)))), 6)
    100.0
    """
    w = np.exp(np.asarray(log_weights, dtype=float))
    return 1.0 / np.sum(w**2, axis=-1)


def importance_resample(
    log_weights: np.ndarray, size: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices drawn with replacement in proportion to normalised weights.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.amortized_diagnostics import importance_resample
    >>> idx = importance_resample(np.log([0.0, 1.0, 0.0]), 5, np.random.default_rng(0))
    >>> idx.tolist()
    [1, 1, 1, 1, 1]
    """
    p = np.exp(np.asarray(log_weights, dtype=float))
    p = p / p.sum()
    return rng.choice(p.shape[0], size=int(size), replace=True, p=p)


def warn_high_pareto_k(
    k: float, corrected: bool, where: str = "this dataset", stacklevel: int = 3
) -> None:
    """Warn (with what to do) when ``k`` exceeds :data:`PARETO_K_THRESHOLD`."""
    if not np.isfinite(k) or k <= PARETO_K_THRESHOLD:
        return
    what = (
        "the importance-resampled draws are unreliable too"
        if corrected
        else "the raw amortized draws do not match the true posterior"
    )
    warnings.warn(
        f"Pareto k = {k:.2f} > {PARETO_K_THRESHOLD} for {where}: {what}. Sample it with "
        "pm.sample (NUTS), or with pm.sample(step=pymc_ext.AmortizedMH(amortizer)), which is "
        "exact but mixes slowly when k is this high (check its acceptance rate); if many "
        "datasets are affected, retrain with more simulations / epochs or a prior that covers "
        "such data.",
        AmortizedDataWarning,
        stacklevel=stacklevel,
    )
