"""Step-size adaptation by dual averaging (Nesterov 2009; Hoffman & Gelman 2014, Alg. 5).

One state, two pure functions, as in BlackJAX: :func:`dual_averaging_init`
and :func:`dual_averaging_update`. The flow sampler's MALA/HMC moves and
``stan_bridge``'s NUTS both adapt their step size with these.
"""

from __future__ import annotations

import math
from typing import NamedTuple

__all__ = ["DualAveragingState", "dual_averaging_init", "dual_averaging_update"]


class DualAveragingState(NamedTuple):
    """Dual-averaging state for one step size (log scale).

    Attributes
    ----------
    log_step : float
        The step size to use next (log).
    log_step_avg : float
        The iterate average (log), the step size to keep after adaptation.
    h_avg : float
        Running average of ``target - acceptance``.
    count : int
        Number of updates so far.
    mu : float
        Shrinkage target, ``log(10 * initial step size)``.
    """

    log_step: float
    log_step_avg: float
    h_avg: float
    count: int
    mu: float


def dual_averaging_init(step_size: float) -> DualAveragingState:
    """Start dual averaging at ``step_size`` (shrinkage target ``log(10 * step_size)``).

    Parameters
    ----------
    step_size : float
        The initial step size (positive).

    Returns
    -------
    DualAveragingState

    Examples
    --------
    >>> from pymc_ext.blocks.dual_averaging import dual_averaging_init
    >>> dual_averaging_init(0.5).count
    0
    """
    log_step = math.log(step_size)
    return DualAveragingState(log_step, log_step, 0.0, 0, math.log(10 * step_size))


def dual_averaging_update(
    state: DualAveragingState,
    acceptance: float,
    target: float,
    gamma: float = 0.05,
    t0: float = 10.0,
    kappa: float = 0.75,
) -> DualAveragingState:
    """One dual-averaging update from a mean acceptance rate.

    Parameters
    ----------
    state : DualAveragingState
        The state before the update.
    acceptance : float
        The mean acceptance probability of the last transition(s).
    target : float
        The acceptance rate to reach.
    gamma, t0, kappa : float
        Stan's constants (0.05, 10, 0.75).

    Returns
    -------
    DualAveragingState

    Examples
    --------
    >>> from pymc_ext.blocks.dual_averaging import dual_averaging_init, dual_averaging_update
    >>> s = dual_averaging_init(1.0)
    >>> for _ in range(50):
    ...     s = dual_averaging_update(s, 0.1, 0.57)  # accepting too rarely: shrink
    >>> s.log_step_avg < 0.0
    True
    """
    count = state.count + 1
    eta = 1.0 / (count + t0)
    h_avg = (1 - eta) * state.h_avg + eta * (target - acceptance)
    log_step = state.mu - math.sqrt(count) / gamma * h_avg
    weight = count ** (-kappa)
    log_step_avg = weight * log_step + (1 - weight) * state.log_step_avg
    return DualAveragingState(log_step, log_step_avg, h_avg, count, state.mu)
