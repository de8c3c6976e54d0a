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
  the raw draws get a warning, and ``correct="psis"`` fixes them.
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
) -> None:
    """Warn (with what to do) when ``k`` exceeds :data:`PARETO_K_THRESHOLD`.

    ``k = inf`` (no finite importance ratio at all) warns too; ``k = nan``
    (too few finite ratios for a tail fit) does not. Raw draws (``corrected``
    false) with an acceptable ``k`` also warn when ``efficiency`` (importance
    ESS / draws) is below :data:`RAW_MIN_EFFICIENCY`.

    Parameters
    ----------
    k : float
        The Pareto k of one dataset.
    corrected : bool
        Whether the draws were importance-resampled (changes the message).
    efficiency : float, optional
        Importance ESS divided by the number of draws.
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
    >>> len(caught)
    2
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
