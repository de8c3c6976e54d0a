"""The flow sampler's global move: an independence Metropolis-Hastings proposal from the flow."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from pymc_ext.density import LogDensity
from pymc_ext.flow_sampler.kernels import LocalState
from pymc_ext.flows import StandardizedFlow

__all__ = ["GlobalInfo", "flow_independence_step"]


class GlobalInfo(NamedTuple):
    """What one flow independence step did, per walker.

    Attributes
    ----------
    acceptance_rate : ndarray, shape (n,)
        ``min(1, p(x') q(x) / (p(x) q(x')))``.
    is_accepted : ndarray of bool, shape (n,)

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flow_sampler.global_move import GlobalInfo
    >>> GlobalInfo(np.array([0.5]), np.array([True])).acceptance_rate.tolist()
    [0.5]
    """

    acceptance_rate: np.ndarray
    is_accepted: np.ndarray


def flow_independence_step(
    rng: np.random.Generator,
    state: LocalState,
    logq: np.ndarray,
    density: LogDensity,
    flow: StandardizedFlow,
) -> tuple[LocalState, np.ndarray, GlobalInfo]:
    """Propose ``x' ~ q`` (the flow) for every walker and accept with the exact MH ratio.

    The ratio ``[p(x') / q(x')] / [p(x) / q(x)]`` makes this a valid
    independence Metropolis-Hastings kernel for any fixed ``q`` that is
    positive where ``p`` is.

    Parameters
    ----------
    rng : numpy Generator
    state : LocalState
    logq : ndarray, shape (n,)
        ``log q`` at the current positions under this same ``flow``.
    density : LogDensity
    flow : StandardizedFlow

    Returns
    -------
    state : LocalState
    logq : ndarray
        ``log q`` at the new positions.
    info : GlobalInfo

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flows import build_flow
    >>> from pymc_ext.flow_sampler import local_init, flow_independence_step
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x)
    >>> flow = build_flow(2, random_seed=0).frozen()
    >>> rng = np.random.default_rng(0)
    >>> state = local_init(d, rng.normal(size=(4, 2)))
    >>> state, logq, info = flow_independence_step(
    ...     rng, state, flow.log_prob_numpy(state.position), d, flow)
    >>> info.is_accepted.shape
    (4,)
    """
    n = state.position.shape[0]
    proposal, logq_prop = flow.sample(n, rng)
    lp_prop = density.logp_batch(proposal)
    log_ratio = (lp_prop - logq_prop) - (state.logp - logq)
    log_ratio = np.where(np.isfinite(lp_prop) & np.isfinite(logq_prop), log_ratio, -np.inf)
    log_ratio = np.where(np.isnan(log_ratio), -np.inf, log_ratio)
    accepted = np.log(rng.uniform(size=n)) < log_ratio
    position, lp, grad = state.position.copy(), state.logp.copy(), state.grad.copy()
    logq_new = np.array(logq, dtype=float, copy=True)
    if accepted.any():
        lp_acc, grad_acc = density.logp_and_grad_batch(proposal[accepted])
        position[accepted] = proposal[accepted]
        lp[accepted] = lp_acc
        grad[accepted] = np.where(np.isfinite(grad_acc), grad_acc, 0.0)
        logq_new[accepted] = logq_prop[accepted]
    rate = np.exp(np.minimum(0.0, log_ratio))
    return LocalState(position, lp, grad), logq_new, GlobalInfo(rate, accepted)
