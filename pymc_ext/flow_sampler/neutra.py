"""Local moves in the flow's base space (NeuTra; Hoffman et al. 2019), for production.

Where the flow was fitted by reverse KL (funnels, curved hierarchical
posteriors), production used to be the flow's independence proposal alone: a
region where the flow has too little mass (a funnel's neck) is then visited
too rarely, and a chain that gets there stays. Here every walker also moves by
HMC on the *pulled-back* density

    pi(z) = p(T(z)) |det dT/dz|,   x = T(z),

on the flow's base space, where the geometry the flow learned is close to a
standard normal and a fixed step size fits everywhere. The independence
proposal is the base distribution itself (the same ratio as proposing from the
flow in ``x``), so each iteration is HMC then an independence move, both exact
for ``pi``, and ``x = T(z)`` is an exact chain for ``p``.

The pieces, BlackJAX style: :class:`FlowPullback` (a
:class:`~pymc_ext.density.LogDensity` on ``z``), :class:`BaseProposal` (the
base distribution as a proposal) and :func:`neutra_space` (step-size warmup,
then the kernel and state that :func:`~pymc_ext.flow_sampler.kernel.flow_mcmc_step`
runs unchanged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from pymc_ext.blocks.dual_averaging import dual_averaging_init, dual_averaging_update
from pymc_ext.density import BaseLogDensity, LogDensity
from pymc_ext.flow_sampler.kernel import FlowMCMCKernel, FlowMCMCState, flow_mcmc_step
from pymc_ext.flow_sampler.kernels import LocalInfo, LocalState, hmc_step, local_init
from pymc_ext.flows import StandardizedFlow, density_logp_torch

__all__ = ["BaseProposal", "FlowPullback", "JitteredHMCKernel", "NeutraSpace", "neutra_space"]

#: Target acceptance of the base-space HMC moves.
NEUTRA_TARGET_ACCEPT = 0.9
#: Step-size warmup iterations before production (not kept).
NEUTRA_WARMUP = 100
#: Each walker's step size is the adapted one times ``U(1 - j, 1 + j)`` at every move.
NEUTRA_JITTER = 0.5


class FlowPullback(BaseLogDensity):
    """``log p(T(z)) + log |det dT/dz|``: the density on the flow's base space.

    ``T`` is ``flow``'s map from base noise to ``x``. Its gradient comes from
    the density's own gradient and torch's through the flow. Every call
    evaluates ``density`` once per row (counted there).

    Parameters
    ----------
    density : LogDensity
        The target ``p`` on ``x``.
    flow : StandardizedFlow
        A frozen flow (no parameter gradients).

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flows import build_flow
    >>> from pymc_ext.flow_sampler.neutra import FlowPullback
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x)
    >>> flow = build_flow(2, mean=np.ones(2), covariance=4 * np.eye(2), random_seed=0).frozen()
    >>> pull = FlowPullback(d, flow)
    >>> lp, grad = pull.logp_and_grad_batch(np.zeros((3, 2)))
    >>> grad.shape, bool(np.allclose(pull.logp_batch(np.zeros((3, 2))), lp))
    ((3, 2), True)
    """

    def __init__(self, density: LogDensity, flow: StandardizedFlow) -> None:
        super().__init__(flow.dim)
        self.density = density
        self.flow = flow

    def _tensor(self, Z: np.ndarray, grad: bool = False) -> torch.Tensor:
        z = torch.as_tensor(np.asarray(Z, dtype=np.float64), dtype=self.flow.dtype)
        return z.to(self.flow.device).requires_grad_(grad)

    def _parts(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x = T(z)`` and ``log |det dT/dz|`` (= ``log base(z) - log q(x)``)."""
        x, logq = self.flow.rsample_and_log_prob(noise=z)
        return x, self.flow.flow().base.log_prob(z) - logq

    def _logp_batch(self, X: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x, logdet = self._parts(self._tensor(X))
        lp = self.density.logp_batch(x.double().cpu().numpy())
        return lp + logdet.double().cpu().numpy()

    def _logp_and_grad_batch(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = self._tensor(X, grad=True)
        with torch.enable_grad():
            x, logdet = self._parts(z)
            # log p in float64 whatever the flow's dtype: ``positions`` gives it back exactly
            total = density_logp_torch(self.density, x.double()) + logdet.double()
            (grad,) = torch.autograd.grad(total.sum(), z)
        lp = total.detach().cpu().numpy()
        return lp, grad.double().cpu().numpy()

    def _logp(self, x: np.ndarray) -> float:
        return float(self._logp_batch(np.atleast_2d(x))[0])

    def _logp_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        lp, grad = self._logp_and_grad_batch(np.atleast_2d(x))
        return float(lp[0]), grad[0]

    @torch.no_grad()
    def positions(self, Z: np.ndarray, logp_z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``x = T(z)`` and ``log p(x)`` from the pulled-back ``log pi(z)`` (no density call)."""
        x, logdet = self._parts(self._tensor(Z))
        return x.double().cpu().numpy(), np.asarray(logp_z) - logdet.double().cpu().numpy()

    @torch.no_grad()
    def noise(self, X: np.ndarray) -> np.ndarray:
        """``z = T^{-1}(x)``: the base noise that the flow maps to each row of ``X``."""
        x = torch.as_tensor(np.asarray(X, dtype=np.float64), dtype=self.flow.dtype)
        z = self.flow.flow().transform(self.flow.standardize(x.to(self.flow.device)))
        return z.double().cpu().numpy()


@dataclass(frozen=True)
class BaseProposal:
    """The flow's base distribution as an independence proposal on ``z``.

    Has the two methods that :func:`~pymc_ext.flow_sampler.flow_independence_step`
    asks of a flow: ``sample(n, rng)`` and ``log_prob_numpy(Z)``.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flows import build_flow
    >>> from pymc_ext.flow_sampler.neutra import BaseProposal
    >>> base = BaseProposal(build_flow(2, random_seed=0).frozen())
    >>> z, logq = base.sample(4, np.random.default_rng(0))
    >>> bool(np.allclose(base.log_prob_numpy(z), logq))
    True
    """

    flow: StandardizedFlow

    @property
    def config(self) -> Any:
        return self.flow.config

    @torch.no_grad()
    def log_prob_numpy(self, Z: np.ndarray) -> np.ndarray:
        z = torch.as_tensor(np.asarray(Z, dtype=np.float64), dtype=self.flow.dtype)
        return self.flow.flow().base.log_prob(z.to(self.flow.device)).double().cpu().numpy()

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        z = self.flow.base_noise(int(n), rng).double().cpu().numpy()
        return z, self.log_prob_numpy(z)


@dataclass(frozen=True)
class JitteredHMCKernel(FlowMCMCKernel):
    """:class:`FlowMCMCKernel` whose HMC step size is jittered per walker and move.

    In the base space the target is close to a standard normal, where a fixed
    trajectory length near a half period would return every walker to the
    same radius; a step size drawn from ``step_size * U(1 - jitter, 1 + jitter)``
    avoids that.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flows import build_flow
    >>> from pymc_ext.flow_sampler.neutra import BaseProposal, JitteredHMCKernel
    >>> k = JitteredHMCKernel(BaseProposal(build_flow(2, random_seed=0).frozen()), 0.4,
    ...                       np.ones(2), "hmc", 1, 8)
    >>> k.jitter
    0.5
    """

    jitter: float = NEUTRA_JITTER

    def local(
        self, rng: np.random.Generator, state: LocalState, density: LogDensity
    ) -> tuple[LocalState, LocalInfo]:
        n = state.position.shape[0]
        steps = self.step_size * rng.uniform(1.0 - self.jitter, 1.0 + self.jitter, size=n)
        return hmc_step(rng, state, density, steps, self._metric, self.num_integration_steps)


@dataclass(frozen=True)
class NeutraSpace:
    """Production in the flow's base space: what :func:`neutra_space` returns.

    Attributes
    ----------
    density : FlowPullback
        The pulled-back density the kernel runs on.
    kernel : JitteredHMCKernel
        Base-space HMC, then an independence proposal from the base.
    state : FlowMCMCState
        The walkers after the step-size warmup (in ``z``).
    warmup_acceptance : float
        Mean HMC acceptance over the last half of the warmup.
    """

    density: FlowPullback
    kernel: JitteredHMCKernel
    state: FlowMCMCState
    warmup_acceptance: float

    def positions(self, state: FlowMCMCState) -> tuple[np.ndarray, np.ndarray]:
        """``x`` and ``log p(x)`` of every walker."""
        return self.density.positions(state.local.position, state.local.logp)


def neutra_space(
    density: LogDensity,
    flow: StandardizedFlow,
    position: np.ndarray,
    rng: np.random.Generator,
    *,
    num_integration_steps: int = 8,
    warmup: int = NEUTRA_WARMUP,
    target_accept: float = NEUTRA_TARGET_ACCEPT,
) -> NeutraSpace:
    """Move the walkers at ``position`` to the flow's base space and adapt the HMC step size.

    The step size is tuned by dual averaging over ``warmup`` HMC moves of all
    walkers (each followed by an independence move), which are not kept.

    Parameters
    ----------
    density : LogDensity
    flow : StandardizedFlow
        The frozen production flow.
    position : ndarray, shape (n, dim)
        The walkers, in ``x``.
    rng : numpy Generator
    num_integration_steps : int
        Leapfrog steps per HMC move.
    warmup : int
    target_accept : float

    Returns
    -------
    NeutraSpace

    Examples
    --------
    >>> import numpy as np, torch
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flows import build_flow
    >>> from pymc_ext.flow_sampler import flow_mcmc_step
    >>> from pymc_ext.flow_sampler.neutra import neutra_space
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x,
    ...                        logp_batch_fn=lambda X: -0.5 * (X * X).sum(1),
    ...                        grad_batch_fn=lambda X: -X)
    >>> flow = build_flow(2, covariance=2 * np.eye(2), random_seed=0).frozen(torch.float64)
    >>> rng = np.random.default_rng(0)
    >>> space = neutra_space(d, flow, rng.normal(size=(200, 2)), rng, warmup=50)
    >>> state, xs = space.state, []
    >>> for _ in range(100):
    ...     state, info = flow_mcmc_step(rng, state, space.density, space.kernel)
    ...     xs.append(space.positions(state)[0])
    >>> bool(abs(np.var(xs) - 1.0) < 0.1)
    True
    """
    pull = FlowPullback(density, flow)
    z = pull.noise(position)
    local = local_init(pull, z)
    base = BaseProposal(flow)
    dim = int(z.shape[1])
    kernel = JitteredHMCKernel(
        flow=base,
        step_size=1.0 / dim**0.25,
        inverse_metric=np.ones(dim),
        local_kernel="hmc",
        local_steps=1,
        num_integration_steps=int(num_integration_steps),
    )
    state = FlowMCMCState(local, base.log_prob_numpy(local.position))
    da = dual_averaging_init(kernel.step_size)
    accepts: list[float] = []
    for _ in range(int(warmup)):
        kernel = replace(kernel, step_size=math.exp(da.log_step))
        state, info = flow_mcmc_step(rng, state, pull, kernel)
        rate = float(np.nan_to_num(info.local_acceptance).mean())
        accepts.append(rate)
        da = dual_averaging_update(da, rate, target_accept)
    if warmup:
        kernel = replace(kernel, step_size=math.exp(da.log_step_avg))
    tail = accepts[len(accepts) // 2 :]
    return NeutraSpace(pull, kernel, state, float(np.mean(tail)) if tail else float("nan"))
