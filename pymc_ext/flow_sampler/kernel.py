"""The production kernel of flow MCMC: local moves, then one global move, through a frozen flow.

After adaptation the flow, step size and metric are fixed, so the composition
of the local moves (MALA or HMC) and the flow's independence proposal is a
valid MCMC kernel for every walker.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from pymc_ext.density import LogDensity
from pymc_ext.flow_sampler.global_move import flow_independence_step
from pymc_ext.flow_sampler.kernels import LocalInfo, LocalState, Metric, local_init, local_move
from pymc_ext.flows import StandardizedFlow

__all__ = [
    "FlowMCMCInfo",
    "FlowMCMCKernel",
    "FlowMCMCState",
    "flow_mcmc_init",
    "flow_mcmc_step",
]


@dataclass(frozen=True)
class FlowMCMCKernel:
    """Frozen parameters of the production kernel.

    Attributes
    ----------
    flow : StandardizedFlow
        Frozen flow (float64, no gradients).
    step_size : float
    inverse_metric : ndarray, shape (dim,) or (dim, dim)
        Diagonal or dense ``M^{-1}`` of the local moves.
    local_kernel : {"mala", "hmc"}
    local_steps : int
        Local steps before each flow proposal.
    num_integration_steps : int
        Leapfrog steps per HMC step.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flows import build_flow
    >>> from pymc_ext.flow_sampler import FlowMCMCKernel
    >>> kernel = FlowMCMCKernel(build_flow(2, random_seed=0).frozen(), 0.5, np.ones(2))
    >>> kernel.local_kernel, kernel.local_steps
    ('mala', 1)
    """

    flow: StandardizedFlow
    step_size: float
    inverse_metric: np.ndarray
    local_kernel: str = "mala"
    local_steps: int = 1
    num_integration_steps: int = 8

    @functools.cached_property
    def _metric(self) -> Metric:
        return Metric(self.inverse_metric)  # factorised once, not at every step

    def local(
        self, rng: np.random.Generator, state: LocalState, density: LogDensity
    ) -> tuple[LocalState, LocalInfo]:
        """One local step with the frozen step size and metric."""
        return local_move(
            self.local_kernel, rng, state, density, self.step_size, self._metric,
            self.num_integration_steps,
        )


class FlowMCMCState(NamedTuple):
    """Walkers and ``log q`` of their positions under the frozen flow.

    Attributes
    ----------
    local : LocalState
    logq : ndarray, shape (n,)

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flow_sampler import FlowMCMCState, LocalState
    >>> s = FlowMCMCState(LocalState(np.zeros((2, 1)), np.zeros(2), np.zeros((2, 1))), np.zeros(2))
    >>> s.logq.shape
    (2,)
    """

    local: LocalState
    logq: np.ndarray


class FlowMCMCInfo(NamedTuple):
    """One production iteration, per walker.

    Attributes
    ----------
    local_acceptance : ndarray, shape (n,)
        Mean acceptance rate of the local steps.
    local_divergent : ndarray of bool
        Any local step had an energy error above 1000.
    flow_acceptance : ndarray, shape (n,)
        Acceptance rate of the flow proposal.
    flow_accepted : ndarray of bool

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flow_sampler import FlowMCMCInfo
    >>> FlowMCMCInfo(np.ones(2), np.zeros(2, bool), np.ones(2), np.ones(2, bool)).flow_accepted
    array([ True,  True])
    """

    local_acceptance: np.ndarray
    local_divergent: np.ndarray
    flow_acceptance: np.ndarray
    flow_accepted: np.ndarray


def flow_mcmc_init(
    density: LogDensity, position: np.ndarray, kernel: FlowMCMCKernel
) -> FlowMCMCState:
    """Production state at ``position`` (density, gradient and ``log q`` evaluated).

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flows import build_flow
    >>> from pymc_ext.flow_sampler import FlowMCMCKernel, flow_mcmc_init
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x)
    >>> kernel = FlowMCMCKernel(build_flow(2, random_seed=0).frozen(), 0.5, np.ones(2))
    >>> flow_mcmc_init(d, np.zeros((3, 2)), kernel).logq.shape
    (3,)
    """
    local = local_init(density, position)
    return FlowMCMCState(local, kernel.flow.log_prob_numpy(local.position))


def flow_mcmc_step(
    rng: np.random.Generator,
    state: FlowMCMCState,
    density: LogDensity,
    kernel: FlowMCMCKernel,
) -> tuple[FlowMCMCState, FlowMCMCInfo]:
    """One production iteration: ``kernel.local_steps`` local moves, then a flow proposal.

    Both moves leave the posterior invariant and their parameters are fixed,
    so the composition is a valid MCMC kernel for every walker.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flows import build_flow
    >>> from pymc_ext.flow_sampler import FlowMCMCKernel, flow_mcmc_init, flow_mcmc_step
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x)
    >>> kernel = FlowMCMCKernel(build_flow(2, random_seed=0).frozen(), 0.5, np.ones(2))
    >>> rng = np.random.default_rng(0)
    >>> state = flow_mcmc_init(d, rng.normal(size=(3, 2)), kernel)
    >>> state, info = flow_mcmc_step(rng, state, d, kernel)
    >>> info.flow_accepted.dtype
    dtype('bool')
    """
    local = state.local
    n = local.position.shape[0]
    acc = np.zeros(n)
    div = np.zeros(n, dtype=bool)
    steps = max(int(kernel.local_steps), 0)
    for _ in range(steps):
        local, info = kernel.local(rng, local, density)
        acc += info.acceptance_rate
        div |= info.is_divergent
    logq = kernel.flow.log_prob_numpy(local.position) if steps else state.logq
    local, logq, ginfo = flow_independence_step(rng, local, logq, density, kernel.flow)
    return FlowMCMCState(local, logq), FlowMCMCInfo(
        acc / max(steps, 1), div, ginfo.acceptance_rate, ginfo.is_accepted
    )
