"""Per-dataset trust checks for amortized posteriors: PSIS Pareto k and out-of-distribution data.

For one dataset ``y`` the amortized posterior ``q(theta | y)`` is an
importance-sampling proposal for the true posterior, with log weights
``log p(theta, y) - log q(theta | y)`` from the model's true joint density.
Pareto-smoothed importance sampling (PSIS; Vehtari et al., 2024) fits a
generalised Pareto tail to the weights. Its shape ``k`` says how far the
draws can be trusted:

- ``k < 0.5``: no heavy tail in the weights. That alone does not make the
  raw draws right: a ``q`` that is too wide has bounded weights (small ``k``)
  and still the wrong spread. So raw draws also need an importance
  efficiency (ESS / draws) of at least :data:`RAW_MIN_EFFICIENCY`; below it
  the raw draws get a warning, and ``correct="psis"`` fixes them. Bounded
  weights can still shift the raw draws' mean or sd: the weighted moments
  against the raw ones (:func:`raw_draw_shift`) estimate that error, and raw
  draws whose estimate exceeds :data:`RAW_MAX_SHIFT` (plus its Monte Carlo
  allowance) get the same warning.
- ``0.5 <= k < 0.7``: usable; importance resampling (``correct="psis"``)
  removes the remaining bias.
- ``k >= 0.7``: ``q`` misses mass of the true posterior; neither the raw nor
  the resampled draws can be trusted. Use :class:`pymc_ext.AmortizedMH` (exact
  MCMC with ``q`` as the proposal) or ``pm.sample``.

The smoothing is ArviZ's own (``arviz_stats``), through the package's one PSIS,
:func:`pymc_ext.blocks.importance.psis_log_weights`, re-exported here with
:func:`~pymc_ext.blocks.importance.importance_ess` and
:func:`~pymc_ext.blocks.importance.importance_resample`.
"""

from __future__ import annotations

import warnings

import numpy as np

from pymc_ext.blocks.importance import importance_ess, importance_resample, psis_log_weights

__all__ = [
    "PARETO_K_THRESHOLD",
    "RAW_MIN_EFFICIENCY",
    "RAW_MAX_SHIFT",
    "raw_draw_shift",
    "raw_shift_allowance",
    "AmortizedDataWarning",
    "importance_ess",
    "importance_resample",
    "psis_log_weights",
    "warn_high_pareto_k",
]

PARETO_K_THRESHOLD = 0.7

#: Least importance efficiency (ESS / draws) at which raw amortized draws pass
#: without a warning. Two cases measured here had k < 0.5 with raw draws far
#: off: eight schools with sd twice the truth (k 0.41), a negative-binomial
#: regression with a 0.57 sd error in a mean (k -0.19). In both the weights
#: are bounded, which k cannot see, but few draws carry them.
RAW_MIN_EFFICIENCY = 0.1

#: Largest estimated error of raw amortized draws, in posterior sds (of a
#: mean, or of an sd as a fraction), that passes without a warning: the 0.1 sd
#: accuracy users of an amortized posterior need. The estimate's own Monte
#: Carlo error is allowed for on top (:func:`raw_shift_allowance`).
RAW_MAX_SHIFT = 0.1


def raw_draw_shift(theta: np.ndarray, log_weights: np.ndarray) -> np.ndarray:
    """Estimated error of raw draws: importance-weighted moments against the raw ones.

    For each dataset, the largest over coordinates of ``|E_w[theta] -
    mean(theta)| / sd_w(theta)`` and ``|sd(theta) / sd_w(theta) - 1|``, where
    ``E_w`` and ``sd_w`` use the normalised importance weights: the raw draws'
    error in mean and sd, in units of the (estimated) posterior sd. Where the
    weights are usable (Pareto k at most 0.7) the weighted moments are
    consistent for the true posterior's, so this estimates how far the raw
    draws are off in mean and sd, which ``k`` alone cannot see.

    Parameters
    ----------
    theta : ndarray, shape (datasets, draws, dim) or (draws, dim)
        The raw draws (in the space the weights were computed for).
    log_weights : ndarray, shape (datasets, draws) or (draws,)
        Normalised log importance weights (e.g. from :func:`psis_log_weights`).

    Returns
    -------
    ndarray, shape (datasets,)
        The estimated error in posterior sds; NaN where the weights are not finite.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.amortized.diagnostics import psis_log_weights, raw_draw_shift
    >>> rng = np.random.default_rng(0)
    >>> q = rng.normal(0.5, 1.0, size=(4000, 1))        # draws off by 0.5 sd
    >>> log_w, k = psis_log_weights(-0.5 * q[:, 0] ** 2 + 0.5 * (q[:, 0] - 0.5) ** 2)
    >>> float(np.round(raw_draw_shift(q, log_w)[0], 1))
    0.5
    """
    theta = np.asarray(theta, dtype=float)
    log_w = np.asarray(log_weights, dtype=float)
    if theta.ndim == 2:
        theta, log_w = theta[None], log_w[None]
    theta = theta.reshape(theta.shape[0], theta.shape[1], -1)
    w = np.exp(log_w - np.max(log_w, axis=-1, keepdims=True))
    w = w / w.sum(axis=-1, keepdims=True)
    mean, sd = theta.mean(axis=1), theta.std(axis=1)
    mean_w = np.einsum("bn,bnd->bd", w, theta)
    sd_w = np.sqrt(np.einsum("bn,bnd->bd", w, (theta - mean_w[:, None]) ** 2)) + 1e-12
    shift = np.maximum(np.abs(mean_w - mean) / sd_w, np.abs(sd / sd_w - 1.0)).max(axis=-1)
    return np.where(np.isfinite(w).all(axis=-1), shift, np.nan)


def raw_shift_allowance(ess: np.ndarray | float, draws: int) -> np.ndarray:
    """Monte Carlo allowance of :func:`raw_draw_shift` on ``draws`` draws with importance ``ess``.

    The weighted minus the raw mean of the same draws has a standard error of
    about ``sqrt(1 / ESS - 1 / draws)`` posterior sds; three of them are
    allowed on top of :data:`RAW_MAX_SHIFT`.

    Examples
    --------
    >>> from pymc_ext.amortized.diagnostics import raw_shift_allowance
    >>> round(float(raw_shift_allowance(500.0, 1000)), 3)
    0.095
    """
    ess = np.maximum(np.asarray(ess, dtype=float), 1.0)
    return 3.0 * np.sqrt(np.maximum(1.0 / ess - 1.0 / max(int(draws), 1), 0.0))


class AmortizedDataWarning(UserWarning):
    """A dataset looks unlike the training simulations, or its Pareto k is high.

    Examples
    --------
    >>> import warnings
    >>> from pymc_ext.amortized.diagnostics import AmortizedDataWarning
    >>> issubclass(AmortizedDataWarning, UserWarning)
    True
    """


def warn_high_pareto_k(
    k: float,
    corrected: bool,
    where: str = "this dataset",
    stacklevel: int = 3,
    efficiency: float | None = None,
    shift: float | None = None,
    allowance: float = 0.0,
) -> None:
    """Warn (with what to do) when ``k`` exceeds :data:`PARETO_K_THRESHOLD`.

    ``k = inf`` (no finite importance ratio at all) warns too; ``k = nan``
    (too few finite ratios for a tail fit) does not. Raw draws (``corrected``
    false) with an acceptable ``k`` also warn when ``efficiency`` (importance
    ESS / draws) is below :data:`RAW_MIN_EFFICIENCY`, or when ``shift`` (the
    estimated error of :func:`raw_draw_shift`) exceeds :data:`RAW_MAX_SHIFT`
    plus ``allowance``.

    Parameters
    ----------
    k : float
        The Pareto k of one dataset.
    corrected : bool
        Whether the draws were importance-resampled (changes the message).
    efficiency : float, optional
        Importance ESS divided by the number of draws.
    shift : float, optional
        The estimated error of the raw draws, in posterior sds.
    allowance : float
        Its Monte Carlo allowance (:func:`raw_shift_allowance`).
    where : str
        What the dataset is called in the message.
    stacklevel : int
        Passed to :func:`warnings.warn`.

    Examples
    --------
    >>> import warnings
    >>> from pymc_ext.amortized.diagnostics import warn_high_pareto_k
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_high_pareto_k(0.9, corrected=False)
    ...     warn_high_pareto_k(0.3, corrected=False)
    ...     warn_high_pareto_k(0.3, corrected=False, efficiency=0.02)
    ...     warn_high_pareto_k(0.3, corrected=False, efficiency=0.5, shift=0.4)
    >>> len(caught)
    3
    """
    if np.isnan(k) or k <= PARETO_K_THRESHOLD:
        if not corrected and efficiency is not None and efficiency < RAW_MIN_EFFICIENCY:
            k_text = "no Pareto k could be fitted" if np.isnan(k) else f"Pareto k = {k:.2f}"
            warnings.warn(
                f"The raw amortized draws for {where} are off ({k_text}): "
                f"only {100 * efficiency:.1f}% of them carry the importance weight (the "
                "amortized posterior is too wide or shifted). Use correct='psis' (cheap, "
                "exact up to the importance-sampling error) or correct='mh'.",
                AmortizedDataWarning,
                stacklevel=stacklevel,
            )
        elif not corrected and shift is not None and shift > RAW_MAX_SHIFT + allowance:
            k_text = "no Pareto k could be fitted" if np.isnan(k) else f"Pareto k = {k:.2f}"
            warnings.warn(
                f"The raw amortized draws for {where} are off by about {shift:.2f} posterior "
                f"sd ({k_text}; the importance-weighted mean or sd differs from the raw one, "
                f"more than {RAW_MAX_SHIFT} sd plus {allowance:.2f} for Monte Carlo error). "
                "Use correct='psis' (cheap, exact up to the importance-sampling error) or "
                "correct='mh'.",
                AmortizedDataWarning,
                stacklevel=stacklevel,
            )
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
