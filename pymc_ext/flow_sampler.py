"""Flow MCMC: a vectorised local + global sampler for posteriors NUTS cannot mix across.

Many walkers run at once on the batched density (``logp_and_grad_batch``).
During adaptation, each round

(a) moves every walker locally (MALA or HMC, step size adapted by dual
    averaging, dense metric from the within-mode covariance),
(b) fits or refines a normalizing flow (zuko, :mod:`pymc_ext.flows`) on the
    pooled walker states,
(c) proposes globally from the flow, an independence Metropolis-Hastings
    move accepted with the exact ratio ``p(x') q(x) / (p(x) q(x'))``,

and repeats (Gabrié, Rotskoff & Vanden-Eijnden, PNAS 2022; flowMC). The
walkers are seeded from overdispersed multi-path Pathfinder, so every mode a
path finds starts with walkers in it, wherever the user's initial point is.

After adaptation the flow, step size and metric are frozen, and the
production draws come from a fixed kernel (local moves, then one flow
independence proposal) that leaves the posterior invariant: each walker is
an exact MCMC chain. Walkers are reported as ArviZ chains.

The kernels are small and pure, BlackJAX style: ``State`` / ``Info`` named
tuples and ``init`` / ``step`` functions that take an explicit numpy
``Generator``.
"""

from __future__ import annotations

import functools
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from pymc_ext.arviz_io import to_datatree
from pymc_ext.density import LogDensity
from pymc_ext.flows import (
    FitInfo,
    SeedResult,
    StandardizedFlow,
    build_flow,
    fit_forward_kl,
    fit_reverse_kl,
    pathfinder_seed,
)
from pymc_ext.mode_search import ModeSearch, _ascend, _same_mode, add_modes_to_seed, search_modes
from pymc_ext.pathfinder_core import psis_log_weights

__all__ = [
    "FlowMCMCWarning",
    "LocalState",
    "LocalInfo",
    "local_init",
    "mala_step",
    "hmc_step",
    "GlobalInfo",
    "flow_independence_step",
    "DualAveragingState",
    "dual_averaging_init",
    "dual_averaging_update",
    "FlowMCMCState",
    "FlowMCMCInfo",
    "FlowMCMCKernel",
    "flow_mcmc_init",
    "flow_mcmc_step",
    "FlowMCMCAdaptation",
    "flow_mcmc_adapt",
    "flow_mcmc",
    "default_num_walkers",
    "default_num_rounds",
    "default_num_draws",
    "coverage_check",
    "discover_modes",
    "reverse_kl_reason",
]

DIVERGENCE_THRESHOLD = 1000.0


class FlowMCMCWarning(UserWarning):
    """A flow-MCMC diagnostic says the flow is not to be trusted (the message says what to try)."""


# ===================================================================================
# Local kernels (MALA and HMC), vectorised over walkers
# ===================================================================================


class LocalState(NamedTuple):
    """Positions of all walkers with their log density and gradient.

    Attributes
    ----------
    position : ndarray, shape (n, dim)
    logp : ndarray, shape (n,)
    grad : ndarray, shape (n, dim)
    """

    position: np.ndarray
    logp: np.ndarray
    grad: np.ndarray


class LocalInfo(NamedTuple):
    """What one local step did, per walker.

    Attributes
    ----------
    acceptance_rate : ndarray, shape (n,)
        ``min(1, exp(log ratio))`` of the proposal.
    is_accepted : ndarray of bool, shape (n,)
    is_divergent : ndarray of bool, shape (n,)
        Energy error (minus log ratio) above 1000, as NUTS counts divergences.
    """

    acceptance_rate: np.ndarray
    is_accepted: np.ndarray
    is_divergent: np.ndarray


def local_init(density: LogDensity, position: np.ndarray) -> LocalState:
    """Evaluate the density and gradient at every walker's position.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler import local_init
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x)
    >>> local_init(d, np.ones((3, 2))).logp.tolist()
    [-1.0, -1.0, -1.0]
    """
    position = np.array(position, dtype=float, ndmin=2)
    lp, grad = density.logp_and_grad_batch(position)
    return LocalState(position, np.asarray(lp, dtype=float), np.asarray(grad, dtype=float))


def _finite_rows(lp: np.ndarray, grad: np.ndarray) -> np.ndarray:
    return np.isfinite(lp) & np.all(np.isfinite(grad), axis=1)


def _accept(
    rng: np.random.Generator, state: LocalState, new: LocalState, log_ratio: np.ndarray
) -> tuple[LocalState, LocalInfo]:
    log_ratio = np.where(np.isnan(log_ratio), -np.inf, log_ratio)
    accepted = np.log(rng.uniform(size=log_ratio.shape)) < log_ratio
    divergent = -log_ratio > DIVERGENCE_THRESHOLD
    sel = accepted[:, None]
    out = LocalState(
        np.where(sel, new.position, state.position),
        np.where(accepted, new.logp, state.logp),
        np.where(sel, new.grad, state.grad),
    )
    rate = np.exp(np.minimum(0.0, log_ratio))
    return out, LocalInfo(rate, accepted, divergent)


class _Metric:
    """A diagonal (shape ``(dim,)``) or dense (``(dim, dim)``) inverse metric ``M^{-1}``."""

    def __init__(self, inverse_metric: np.ndarray) -> None:
        m = np.asarray(inverse_metric, dtype=float)
        self.m = m
        if m.ndim == 2:
            self.chol = np.linalg.cholesky(m)  # M^{-1} = L L^T
            self.chol_inv = np.linalg.inv(self.chol)  # L^{-1}: plain matmuls per step
        elif m.ndim != 1:
            raise ValueError(f"inverse_metric must be 1-D or 2-D, got shape {m.shape}.")

    @classmethod
    def of(cls, inverse_metric: np.ndarray | _Metric) -> _Metric:
        """``inverse_metric`` as a metric; one already built is returned as it is."""
        return inverse_metric if isinstance(inverse_metric, cls) else cls(inverse_metric)

    def apply(self, v: np.ndarray) -> np.ndarray:
        """Rows of ``v`` times ``M^{-1}``."""
        return v @ self.m if self.m.ndim == 2 else v * self.m

    def sqrt_apply(self, v: np.ndarray) -> np.ndarray:
        """Rows of ``v`` mapped by ``L`` (``L L^T = M^{-1}``): N(0, I) rows become N(0, M^{-1})."""
        return v @ self.chol.T if self.m.ndim == 2 else v * np.sqrt(self.m)

    def inv_quad(self, v: np.ndarray) -> np.ndarray:
        """``v^T M v`` for each row of ``v``."""
        if self.m.ndim == 2:
            w = v @ self.chol_inv.T  # rows of L^{-1} v
            return np.sum(w * w, axis=1)
        return np.sum(v * v / self.m, axis=1)

    def momentum(self, noise: np.ndarray) -> np.ndarray:
        """N(0, I) rows to momenta ``p ~ N(0, M)``."""
        if self.m.ndim == 2:
            return noise @ self.chol_inv  # rows of L^{-T} noise
        return noise / np.sqrt(self.m)

    def quad(self, p: np.ndarray) -> np.ndarray:
        """``p^T M^{-1} p`` for each row of ``p``."""
        return np.sum(self.apply(p) * p, axis=1)


def mala_step(
    rng: np.random.Generator,
    state: LocalState,
    density: LogDensity,
    step_size: float | np.ndarray,
    inverse_metric: np.ndarray,
) -> tuple[LocalState, LocalInfo]:
    """One preconditioned MALA step for every walker.

    Proposal ``x' = x + (h^2 / 2) M^{-1} grad log p(x) + h M^{-1/2} xi`` with a
    diagonal or dense inverse metric ``M^{-1}``, accepted with the exact
    Metropolis-Hastings ratio (so the step leaves ``p`` invariant).

    Parameters
    ----------
    rng : numpy Generator
    state : LocalState
    density : LogDensity
    step_size : float or ndarray of shape (n,)
        ``h``.
    inverse_metric : ndarray, shape (dim,) or (dim, dim)
        Diagonal of ``M^{-1}`` (variances), or the dense ``M^{-1}`` (a
        covariance).

    Returns
    -------
    (LocalState, LocalInfo)

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler import local_init, mala_step
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x,
    ...                        logp_batch_fn=lambda X: -0.5 * (X * X).sum(1),
    ...                        grad_batch_fn=lambda X: -X)
    >>> rng = np.random.default_rng(0)
    >>> state = local_init(d, rng.normal(size=(500, 2)))
    >>> for _ in range(200):
    ...     state, info = mala_step(rng, state, d, 0.9, np.ones(2))
    >>> bool(abs(state.position.var() - 1.0) < 0.15)
    True
    """
    x, lp, g = state
    h = np.asarray(step_size, dtype=float).reshape(-1, 1) if np.ndim(step_size) else step_size
    metric = _Metric.of(inverse_metric)
    h2 = h * h

    def drift(pos: np.ndarray, grad: np.ndarray) -> np.ndarray:
        return pos + 0.5 * h2 * metric.apply(grad)

    noise = rng.standard_normal(x.shape)
    x_new = drift(x, g) + h * metric.sqrt_apply(noise)
    lp_new, g_new = density.logp_and_grad_batch(x_new)
    ok = _finite_rows(lp_new, g_new)
    lp_new = np.where(ok, lp_new, -np.inf)
    g_new = np.where(ok[:, None], g_new, 0.0)
    # log q(x | x') - log q(x' | x), with q(a | b) = N(a; drift(b), h^2 M^{-1})
    fwd = x_new - drift(x, g)
    bwd = x - drift(x_new, g_new)
    hh = h2 if np.ndim(h2) == 0 else h2.reshape(-1)
    log_q_ratio = -0.5 * (metric.inv_quad(bwd) - metric.inv_quad(fwd)) / hh
    log_ratio = lp_new - lp + log_q_ratio
    return _accept(rng, state, LocalState(x_new, lp_new, g_new), log_ratio)


def hmc_step(
    rng: np.random.Generator,
    state: LocalState,
    density: LogDensity,
    step_size: float | np.ndarray,
    inverse_metric: np.ndarray,
    num_integration_steps: int = 8,
) -> tuple[LocalState, LocalInfo]:
    """One HMC step (leapfrog, fixed number of steps) for every walker.

    Momentum ``p ~ N(0, M)`` with ``M`` the inverse of ``inverse_metric``
    (a diagonal of variances, shape ``(dim,)``, or a covariance, ``(dim, dim)``); the
    trajectory of ``num_integration_steps`` leapfrog steps is accepted with the
    exact energy difference. Costs ``num_integration_steps`` batched
    gradient evaluations.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler import local_init, hmc_step
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x,
    ...                        logp_batch_fn=lambda X: -0.5 * (X * X).sum(1),
    ...                        grad_batch_fn=lambda X: -X)
    >>> rng = np.random.default_rng(0)
    >>> state = local_init(d, rng.normal(size=(500, 2)))
    >>> for _ in range(50):
    ...     state, info = hmc_step(rng, state, d, 0.3, np.ones(2), 5)
    >>> bool(abs(state.position.var() - 1.0) < 0.15)
    True
    """
    x, lp, g = state
    h = np.asarray(step_size, dtype=float).reshape(-1, 1) if np.ndim(step_size) else step_size
    metric = _Metric.of(inverse_metric)
    p = metric.momentum(rng.standard_normal(x.shape))
    kinetic0 = 0.5 * metric.quad(p)
    q = x.copy()
    grad = g.copy()
    lp_q = lp
    alive = np.ones(x.shape[0], dtype=bool)
    n_steps = max(1, int(num_integration_steps))
    p = p + 0.5 * h * grad
    for i in range(n_steps):
        q = q + h * metric.apply(p)
        lp_q, grad = density.logp_and_grad_batch(q)
        ok = _finite_rows(lp_q, grad)
        alive &= ok
        grad = np.where(ok[:, None], grad, 0.0)
        p = p + (0.5 if i == n_steps - 1 else 1.0) * h * grad
    lp_q = np.where(alive, lp_q, -np.inf)
    kinetic1 = 0.5 * metric.quad(p)
    log_ratio = (lp_q - kinetic1) - (lp - kinetic0)
    return _accept(rng, state, LocalState(q, lp_q, grad), log_ratio)


# ===================================================================================
# Step-size adaptation (dual averaging, Nesterov / Hoffman & Gelman)
# ===================================================================================


class DualAveragingState(NamedTuple):
    """Dual-averaging state for one step size (log scale)."""

    log_step: float
    log_step_avg: float
    h_avg: float
    count: int
    mu: float


def dual_averaging_init(step_size: float) -> DualAveragingState:
    """Start dual averaging at ``step_size`` (shrinkage target ``log(10 * step_size)``).

    Examples
    --------
    >>> from pymc_ext.flow_sampler import dual_averaging_init
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

    Examples
    --------
    >>> from pymc_ext.flow_sampler import dual_averaging_init, dual_averaging_update
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


# ===================================================================================
# Global kernel: independence Metropolis-Hastings with the flow
# ===================================================================================


class GlobalInfo(NamedTuple):
    """What one flow independence step did, per walker.

    Attributes
    ----------
    acceptance_rate : ndarray, shape (n,)
        ``min(1, p(x') q(x) / (p(x) q(x')))``.
    is_accepted : ndarray of bool, shape (n,)
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


def _local_move(
    local_kernel: str,
    rng: np.random.Generator,
    state: LocalState,
    density: LogDensity,
    step_size: float,
    metric: np.ndarray | _Metric,
    num_integration_steps: int,
) -> tuple[LocalState, LocalInfo]:
    """One MALA or HMC step, by name."""
    if local_kernel == "hmc":
        return hmc_step(rng, state, density, step_size, metric, num_integration_steps)
    return mala_step(rng, state, density, step_size, metric)


# ===================================================================================
# The production kernel: local moves, then one global move, through a frozen flow
# ===================================================================================


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
    """

    flow: StandardizedFlow
    step_size: float
    inverse_metric: np.ndarray
    local_kernel: str = "mala"
    local_steps: int = 1
    num_integration_steps: int = 8

    @functools.cached_property
    def _metric(self) -> _Metric:
        return _Metric(self.inverse_metric)  # factorised once, not at every step

    def local(
        self, rng: np.random.Generator, state: LocalState, density: LogDensity
    ) -> tuple[LocalState, LocalInfo]:
        """One local step with the frozen step size and metric."""
        return _local_move(
            self.local_kernel, rng, state, density, self.step_size, self._metric,
            self.num_integration_steps,
        )


class FlowMCMCState(NamedTuple):
    """Walkers and ``log q`` of their positions under the frozen flow."""

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


# ===================================================================================
# Modes: which mode a point is near, and whether the flow covers it
# ===================================================================================


def _distinct_modes(density: LogDensity, centers: np.ndarray) -> np.ndarray:
    """Greedily merge path centres that share a mode.

    Two centres share a mode when there is no barrier on the segment between
    them, or, failing that, when L-BFGS climbs from both end at the same top
    (no barrier between the tops). The climb matters on curved posteriors:
    a Pathfinder centre is not a maximum, and the straight segment between
    two centres in one curved mode can dip by more than the barrier
    tolerance (gp_pois_regr: a centre 11 nats below the top, gradient norm 60,
    climbs to the same top as the best centre). Climbs only ever merge; a
    centre whose climb fails or ends elsewhere is kept as it is.
    """
    lp = density.logp_batch(centers)
    order = np.argsort(-np.where(np.isfinite(lp), lp, -np.inf))
    modes: list[np.ndarray] = []
    tops: list[np.ndarray | None] = []
    climbed: list[bool] = []
    for i in order:
        c = centers[i]
        if not np.isfinite(lp[i]):
            continue
        if any(_same_mode(density, c, m) for m in modes):
            continue
        if modes:
            top = _ascend(density, c)
            if top is not None:
                for k, m in enumerate(modes):
                    if not climbed[k]:
                        tops[k], climbed[k] = _ascend(density, m), True
                if any(t is not None and _same_mode(density, top, t) for t in tops):
                    continue
        modes.append(c)
        tops.append(None)
        climbed.append(False)
    if not modes:
        modes = [centers.mean(0)]
    return np.asarray(modes)


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
    dim = walkers.shape[1]
    rms = np.sqrt(
        np.min((((walkers[:, None, :] - modes[None]) / scale) ** 2).sum(-1), axis=1) / dim
    )
    order = np.argsort(-np.where(np.isfinite(walker_logp), walker_logp, -np.inf))
    checks = 0
    for i in order:
        if checks >= max_checks:
            break
        x = walkers[i]
        if rms[i] <= distance or not np.isfinite(walker_logp[i]):
            continue
        near = np.sqrt((((x - modes) / scale) ** 2).sum(-1) / dim)
        if np.any(near <= distance):
            continue
        if any(_same_mode(density, x, m) for m in modes):
            continue
        checks += 1
        top = _ascend(density, x)
        if top is None:
            continue
        # A mode that walkers found has its top near them; a climb that ran far away (down a
        # funnel's neck, say) found no mode the walkers are in.
        if np.sqrt((((top - x) / scale) ** 2).sum() / dim) > 2 * distance:
            continue
        if not any(_same_mode(density, top, m) for m in modes):
            modes = np.vstack([modes, top])
    return modes


def _nearest_mode(X: np.ndarray, modes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    if modes.shape[0] == 1:
        return np.zeros(X.shape[0], dtype=np.int64)
    d = ((X[:, None, :] - modes[None, :, :]) / scale) ** 2
    return np.argmin(d.sum(-1), axis=1).astype(np.int64)


def _within_mode_variance(
    X: np.ndarray, labels: np.ndarray, fallback: np.ndarray
) -> np.ndarray:
    """Pooled within-mode variance of walker states (each mode's own spread)."""
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


def _within_mode_covariance(
    X: np.ndarray, labels: np.ndarray, fallback: np.ndarray
) -> np.ndarray:
    """Pooled within-mode covariance of walker states, shrunk a little towards its diagonal.

    Falls back to ``fallback`` (a diagonal or dense metric) when there are too
    few states or the estimate is not positive definite.
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
    log_z = float(_logsumexp(logw[finite]) - math.log(num_flow_draws)) if finite.any() else -np.inf
    w_labels = _nearest_mode(walkers, modes, scale)
    q_labels = _nearest_mode(xq, modes, scale)
    k = modes.shape[0]
    walker_share = np.bincount(w_labels, minlength=k) / max(1, walkers.shape[0])
    flow_share = np.bincount(q_labels, minlength=k) / max(1, num_flow_draws)
    starved = [
        int(i)
        for i in range(k)
        if walker_share[i] >= 2.0 / max(1, walkers.shape[0])
        and flow_share[i] < 0.1 * walker_share[i]
    ]
    logq_w = flow.log_prob_numpy(walkers)
    rel = logq_w - (walker_logp - log_z)
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


def _logsumexp(a: np.ndarray) -> float:
    a = np.asarray(a, dtype=float)
    if a.size == 0:
        return -np.inf
    m = float(np.max(a))
    if not np.isfinite(m):
        return m
    return m + math.log(float(np.sum(np.exp(a - m))))


# ===================================================================================
# Adaptation
# ===================================================================================


def default_num_walkers(dim: int, n_modes: int = 1) -> int:
    """Walkers: the power of two at or above ``4 * dim`` and ``32 * n_modes``, within 64-256.

    ``n_modes`` is the number of modes found when the walkers are seeded:
    the flow is fitted to the walkers, so each mode needs enough of them (on
    a 10-D mixture with three modes of scales 1, 1 and 1.5, 64 walkers gave
    a global acceptance of 0.22 and R-hat 1.022, 128 gave 0.46 and 1.007).

    Examples
    --------
    >>> from pymc_ext.flow_sampler import default_num_walkers
    >>> default_num_walkers(10), default_num_walkers(50), default_num_walkers(1000)
    (64, 256, 256)
    >>> default_num_walkers(10, n_modes=2), default_num_walkers(10, n_modes=3)
    (64, 128)
    """
    want = max(4 * int(dim), 32 * int(n_modes), 1)
    return int(np.clip(2 ** math.ceil(math.log2(want)), 64, 256))


def default_num_rounds(dim: int, n_modes: int = 1) -> int:
    """Adaptation rounds: 6 up to 20 dimensions with at most two modes found, 10 otherwise.

    On the 50-dimensional two-mode mixture the global acceptance was still
    climbing after 6 rounds (0.11 at round 6, 0.24 at round 10), and the
    walkers' R-hat with 6 rounds and 500 draws was 1.025. On a 10-D mixture
    with three modes (scales 1, 1 and 1.5; 128 walkers, seed 2) the flow
    after 6 rounds still had a Pareto k of 0.92 and R-hat was 1.062; after
    10 rounds, 0.42 and 1.010.

    Examples
    --------
    >>> from pymc_ext.flow_sampler import default_num_rounds
    >>> default_num_rounds(10), default_num_rounds(50), default_num_rounds(10, n_modes=3)
    (6, 10, 10)
    """
    return 6 if int(dim) <= 20 and int(n_modes) <= 2 else 10


def default_num_draws(dim: int) -> int:
    """Production draws per walker from the dimension: 500 up to 20 dimensions, 1000 above.

    Above 20 dimensions the flow proposals are accepted less often (0.2 on
    the 50-dimensional two-mode mixture, 0.5 to 0.9 at 10), so each walker
    needs more draws to forget where it started (R-hat over the walkers).

    Examples
    --------
    >>> from pymc_ext.flow_sampler import default_num_draws
    >>> default_num_draws(10), default_num_draws(50)
    (500, 1000)
    """
    return 500 if int(dim) <= 20 else 1000


@dataclass
class FlowMCMCAdaptation:
    """Result of the adaptation: the frozen kernel, the walkers, and what happened.

    Attributes
    ----------
    kernel : FlowMCMCKernel
        Frozen flow, step size and metric.
    state : LocalState
        Walker states at the end of adaptation.
    modes : ndarray, shape (k, dim)
        Distinct modes found by the Pathfinder paths (used to count hops).
    mode_scale : ndarray, shape (dim,)
        Within-mode standard deviations (for nearest-mode labels).
    history : dict
        Per-round arrays: ``global_acceptance``, ``local_acceptance``,
        ``step_size``, ``flow_loss``, ``mode_hops``, ``grad_evals``.
    coverage : dict
        :func:`coverage_check` of the final flow.
    seed : SeedResult
        The Pathfinder seeding.
    grad_evals : int
        Density gradient evaluations spent adapting (Pathfinder included).
    seconds : float
    warnings : list of str
        Warnings raised (also issued as :class:`FlowMCMCWarning`).
    fit_infos : list of FitInfo
        Every flow fit, in order.
    restarted_walkers : int
        Walkers moved at the end of adaptation from where the frozen flow
        could never move them (``restart_threshold``) to resampled flow draws.
    fit : str
        How the frozen flow was fitted: ``"forward"``, ``"both"`` or
        ``"reverse"`` (with ``fit="auto"``, the one it chose).
    fit_reason : str
        With ``fit="auto"``: why it switched to reverse KL (empty when it
        kept the forward fit).
    mode_search : ModeSearch or None
        What the multi-start climbs (``search_climbs``) found beyond the
        Pathfinder paths (None when none ran).
    """

    kernel: FlowMCMCKernel
    state: LocalState
    modes: np.ndarray
    mode_scale: np.ndarray
    history: dict[str, np.ndarray]
    coverage: dict[str, Any]
    seed: SeedResult
    grad_evals: int
    seconds: float
    warnings: list[str] = field(default_factory=list)
    fit_infos: list[FitInfo] = field(default_factory=list)
    restarted_walkers: int = 0
    fit: str = "forward"
    fit_reason: str = ""
    mode_search: ModeSearch | None = None

    def labels(self, X: np.ndarray) -> np.ndarray:
        """Index of the nearest mode for each row of ``X``."""
        return _nearest_mode(np.atleast_2d(X), self.modes, self.mode_scale)


def _torch_dtype(name: str) -> torch.dtype:
    if name not in ("float32", "float64"):
        raise ValueError(f"flow_dtype must be 'float32' or 'float64', got {name!r}.")
    return getattr(torch, name)


# fit="auto" replaces the forward-KL flow by a reverse-KL one when a single mode was found and
# the forward fit shows it missed part of the posterior (funnel-like geometry: the walkers'
# local moves cannot reach a neck, so a flow fitted on them cannot either). Calibrated on the
# benchmark targets, seeds 1-3: funnel_d10 k 0.74-1.04 / acceptance 0.28-0.43, gp_pois_regr
# k 0.78-1.01 / 0.03-0.14; every other target k <= 0.53 and acceptance >= 0.43.
AUTO_MAX_PARETO_K = 0.7
AUTO_MIN_GLOBAL_ACCEPTANCE = 0.3
AUTO_MAX_STARVED_FRACTION = 0.05


def reverse_kl_reason(adaptation: FlowMCMCAdaptation) -> str:
    """Why ``fit="auto"`` replaces a forward-KL flow by a reverse-KL one ("" to keep it).

    Only with a single mode found (reverse KL is mode-seeking, so it would
    drop a mode of a multimodal posterior), and when any of: the Pareto k of
    the flow's importance weights is above 0.7 (its tails are too light for
    the posterior), the last round's global acceptance is below 0.3, or more
    than 5% of the walkers sit where the flow has 10,000 times too little
    mass.

    Parameters
    ----------
    adaptation : FlowMCMCAdaptation
        A forward-KL adaptation.

    Returns
    -------
    str
        The reasons, joined by "; ", or "" when the forward fit is kept.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler import flow_mcmc_adapt, reverse_kl_reason
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x,
    ...                        logp_batch_fn=lambda X: -0.5 * (X * X).sum(1),
    ...                        grad_batch_fn=lambda X: -X)
    >>> ad = flow_mcmc_adapt(d, chains=32, n_rounds=2, first_train_steps=50, train_steps=20,
    ...                      num_paths=2, random_seed=0, progressbar=False, fit="forward",
    ...                      flow_kwargs={"transforms": 2, "hidden_features": (16, 16)})
    >>> reverse_kl_reason(ad)
    ''
    """
    if adaptation.modes.shape[0] > 1:
        return ""
    k = float(adaptation.coverage["pareto_k"])
    acc = float(adaptation.history["global_acceptance"][-1])
    starved = float(adaptation.coverage["starved_walker_fraction"])
    reasons = []
    if k > AUTO_MAX_PARETO_K:
        reasons.append(f"Pareto k of the flow's importance weights {k:.2f} > {AUTO_MAX_PARETO_K}")
    if acc < AUTO_MIN_GLOBAL_ACCEPTANCE:
        reasons.append(
            f"last round's global acceptance {acc:.2f} < {AUTO_MIN_GLOBAL_ACCEPTANCE}"
        )
    if starved > AUTO_MAX_STARVED_FRACTION:
        reasons.append(f"{starved:.0%} of the walkers where the flow has 10,000x too little mass")
    return "; ".join(reasons)


def _fit_options(
    fit: str,
    local_steps: int | None,
    learning_rate: float | None,
    reverse_steps: int | None,
    flow_kwargs: dict[str, Any] | None,
) -> dict[str, Any]:
    """The defaults that depend on the fit, filled in where the user left them out.

    With ``fit="reverse"`` the flow is the whole sampler: a fully autoregressive
    MAF, 2000 reverse-KL steps at a learning rate of 3e-3, and no local moves in
    production (MALA diverges in a funnel's neck, where the flow goes).
    """
    reverse = fit == "reverse"
    if reverse_steps is None:
        reverse_steps = 2000 if reverse else 50
    if not isinstance(reverse_steps, int | np.integer) or reverse_steps < 1:
        raise ValueError(f"reverse_steps must be a positive integer, got {reverse_steps!r}.")
    if learning_rate is None:
        learning_rate = 3e-3 if reverse else 1e-3
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate!r}.")
    kwargs = dict(flow_kwargs or {})
    if reverse and "kind" not in kwargs:
        kwargs = {"kind": "maf", "passes": None, **kwargs}
    return {
        "local_steps": (0 if reverse else 1) if local_steps is None else int(local_steps),
        "learning_rate": float(learning_rate),
        "reverse_steps": int(reverse_steps),
        "flow_kwargs": kwargs,
    }


def _child_rng(rng: np.random.Generator) -> np.random.Generator:
    """An independent generator from ``rng`` that leaves ``rng``'s own stream as it is."""
    try:
        return rng.spawn(1)[0]
    except (TypeError, ValueError, AttributeError):  # a bit generator without a seed sequence
        return np.random.default_rng(rng.bit_generator.random_raw())


def _check_inputs(density: Any, **ints: Any) -> None:
    if not isinstance(density, LogDensity):
        raise TypeError(
            "flow_mcmc needs a PyMC model or a LogDensity (dim, logp_and_grad_batch, logp_batch, "
            f"...); got {type(density).__name__}."
        )
    for name, value in ints.items():
        if value is not None and (not isinstance(value, int | np.integer) or value < 0):
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}.")


def flow_mcmc_adapt(
    density: LogDensity,
    *,
    chains: int | None = None,
    n_rounds: int | None = None,
    local_kernel: str = "mala",
    metric: str = "dense",
    adapt_local_steps: int = 20,
    local_steps: int | None = None,
    global_steps: int = 4,
    first_train_steps: int = 500,
    train_steps: int = 150,
    buffer_rounds: int = 3,
    fit: str = "auto",
    reverse_steps: int | None = None,
    target_accept: float | None = None,
    num_integration_steps: int = 8,
    num_paths: int = 16,
    search_climbs: int = 128,
    init_scale: float = 2.0,
    flow_kwargs: dict[str, Any] | None = None,
    learning_rate: float | None = None,
    snapshots_per_round: int = 10,
    flow_dtype: str = "float32",
    restart_threshold: float | None = 6.0,
    seed: SeedResult | None = None,
    random_seed: int | np.random.Generator | None = None,
    progressbar: bool = True,
) -> FlowMCMCAdaptation:
    """Adapt the local + global sampler: seed walkers, alternate local moves, flow fits, flow moves.

    Parameters are those of :func:`flow_mcmc` (which calls this); see there.

    Returns
    -------
    FlowMCMCAdaptation

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler import flow_mcmc_adapt
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x,
    ...                        logp_batch_fn=lambda X: -0.5 * (X * X).sum(1),
    ...                        grad_batch_fn=lambda X: -X)
    >>> ad = flow_mcmc_adapt(d, chains=32, n_rounds=2, first_train_steps=50, train_steps=20,
    ...                      num_paths=2, random_seed=0, progressbar=False,
    ...                      flow_kwargs={"transforms": 2, "hidden_features": (16, 16)})
    >>> ad.state.position.shape, len(ad.history["global_acceptance"])
    ((32, 2), 2)
    """
    _check_inputs(
        density,
        n_rounds=n_rounds,
        adapt_local_steps=adapt_local_steps,
        local_steps=local_steps,
        global_steps=global_steps,
        first_train_steps=first_train_steps,
        train_steps=train_steps,
        buffer_rounds=buffer_rounds,
        num_paths=num_paths,
        chains=chains,
    )
    if search_climbs < 0:
        raise ValueError(f"search_climbs must be >= 0 (0: no search), got {search_climbs}.")
    if local_kernel not in ("mala", "hmc"):
        raise ValueError(f"local_kernel must be 'mala' or 'hmc', got {local_kernel!r}.")
    if metric not in ("dense", "diag"):
        raise ValueError(
            f"metric must be 'dense' (within-mode covariance of the walkers) or 'diag' (its "
            f"diagonal), got {metric!r}."
        )
    if fit not in ("auto", "forward", "both", "reverse"):
        raise ValueError(
            f"fit must be 'auto' (forward, switching to reverse when the forward flow misses "
            f"part of a single-mode posterior), 'forward' (maximum likelihood on walker "
            f"states), 'both' (plus a short reverse-KL refinement from the density each round) "
            f"or 'reverse' (a forward-KL start on the walker states, then reverse KL from the "
            f"density only), got {fit!r}."
        )
    # the options of each fit that may run, resolved (and checked) before any long computation
    options = {
        name: _fit_options(name, local_steps, learning_rate, reverse_steps, flow_kwargs)
        for name in (("forward", "reverse") if fit == "auto" else (fit,))
    }
    if n_rounds is not None and n_rounds < 1:
        raise ValueError("n_rounds must be at least 1 (the flow is fitted during the rounds).")
    _torch_dtype(flow_dtype)
    if restart_threshold is not None and not restart_threshold > 0:
        raise ValueError(
            f"restart_threshold must be positive (nats) or None, got {restart_threshold!r}."
        )
    if snapshots_per_round < 1:
        raise ValueError(f"snapshots_per_round must be >= 1, got {snapshots_per_round}.")
    t_start = time.perf_counter()
    dim = int(density.dim)
    rng = np.random.default_rng(random_seed)
    early: list[str] = []
    if dim > 300:
        early.append(
            f"The dimension is {dim}: beyond a few hundred dimensions a flow fitted on a few "
            "hundred walkers rarely gives useful global proposals, so expect low global "
            "acceptance and slow adaptation. What to try: plain NUTS (pm.sample), a "
            "reparameterisation, or marginalising parameters to shrink the dimension."
        )
        warnings.warn(early[-1], FlowMCMCWarning, stacklevel=2)
    n_walkers = int(chains) if chains else default_num_walkers(dim)
    if n_walkers < 4:
        raise ValueError(f"chains (walkers) must be at least 4, got {n_walkers}.")
    if target_accept is None:
        target_accept = 0.574 if local_kernel == "mala" else 0.75
    grad_before = int(getattr(density, "grad_evals", 0))

    if seed is None:
        seed = pathfinder_seed(
            density,
            num_paths=num_paths,
            num_draws=max(8 * n_walkers, 1024),
            random_seed=rng,
            init_scale=init_scale,
        )
    # The seed's distinct modes, worked out once for every adaptation that runs on it.
    modes = _distinct_modes(density, seed.centers)
    found = None
    if search_climbs:
        # A child generator: the walkers' random stream is the same with or without a search.
        search_rng = _child_rng(rng)
        found = search_modes(density, seed, modes, num_climbs=search_climbs,
                             rng=search_rng, init_scale=init_scale)
        if found.tops.shape[0]:
            seed = add_modes_to_seed(seed, found, search_rng)
            modes = _distinct_modes(density, seed.centers)
    if not chains:
        n_walkers = default_num_walkers(dim, modes.shape[0])
    if n_rounds is None:
        n_rounds = default_num_rounds(dim, modes.shape[0])
    run = functools.partial(
        _adapt_rounds,
        density,
        seed=seed,
        modes=modes,
        rng=rng,
        n_walkers=n_walkers,
        n_rounds=n_rounds,
        local_kernel=local_kernel,
        metric=metric,
        adapt_local_steps=adapt_local_steps,
        global_steps=global_steps,
        first_train_steps=first_train_steps,
        train_steps=train_steps,
        buffer_rounds=buffer_rounds,
        target_accept=target_accept,
        num_integration_steps=num_integration_steps,
        snapshots_per_round=snapshots_per_round,
        flow_dtype=flow_dtype,
        restart_threshold=restart_threshold,
        progressbar=progressbar,
        grad_before=grad_before,
    )
    if fit == "auto":
        result = run(fit="forward", **options["forward"])
        reason = reverse_kl_reason(result)
        if reason:
            first_fits = result.fit_infos
            result = run(fit="reverse", **options["reverse"])
            result = replace(result, fit_reason=reason, fit_infos=first_fits + result.fit_infos)
    else:
        result = run(fit=fit, **options[fit])
    for message in result.warnings:
        warnings.warn(message, FlowMCMCWarning, stacklevel=2)
    return replace(
        result,
        mode_search=found,
        warnings=early + result.warnings,
        grad_evals=int(getattr(density, "grad_evals", 0)) - grad_before,
        seconds=time.perf_counter() - t_start,
    )


def _adapt_rounds(
    density: LogDensity,
    *,
    seed: SeedResult,
    modes: np.ndarray,
    rng: np.random.Generator,
    n_walkers: int,
    n_rounds: int,
    fit: str,
    local_kernel: str,
    metric: str,
    adapt_local_steps: int,
    local_steps: int,
    global_steps: int,
    first_train_steps: int,
    train_steps: int,
    buffer_rounds: int,
    reverse_steps: int,
    target_accept: float,
    num_integration_steps: int,
    flow_kwargs: dict[str, Any],
    learning_rate: float,
    snapshots_per_round: int,
    flow_dtype: str,
    restart_threshold: float | None,
    progressbar: bool,
    grad_before: int,
) -> FlowMCMCAdaptation:
    """The adaptation rounds of :func:`flow_mcmc_adapt` with one way of fitting the flow.

    ``modes`` are the seed's distinct modes (``_distinct_modes`` of its
    centres). Warnings are collected in the result, not issued (the caller
    issues those of the adaptation it keeps). Gradient evaluations are counted from
    ``grad_before`` (the start of the whole adaptation, Pathfinder included).
    """
    t_start = time.perf_counter()
    dim = int(density.dim)
    collected: list[str] = []
    pick = rng.choice(seed.draws.shape[0], size=n_walkers, replace=seed.draws.shape[0] < n_walkers)
    state = local_init(density, seed.draws[pick])
    bad = ~_finite_rows(state.logp, state.grad)
    if bad.all():
        raise ValueError(
            "The log density is not finite at any of the Pathfinder seed draws; check the model "
            "(or pass init_scale smaller so the paths start nearer the bulk)."
        )
    if bad.any():  # replace unusable seeds by usable ones
        good_idx = np.flatnonzero(~bad)
        repl = rng.choice(good_idx, size=int(bad.sum()))
        state = LocalState(
            np.where(bad[:, None], state.position[repl], state.position),
            np.where(bad, state.logp[repl], state.logp),
            np.where(bad[:, None], state.grad[repl], state.grad),
        )

    inverse_metric = np.clip(seed.within_variance, 1e-10, 1e10)
    local_metric = _Metric(inverse_metric)
    mode_scale = np.sqrt(inverse_metric)
    step_size = float(np.clip(1.0 / dim**0.25, 0.05, 1.0))
    if local_kernel == "hmc":
        step_size /= math.sqrt(num_integration_steps)
    da = dual_averaging_init(step_size)

    flow = build_flow(
        dim, mean=seed.mean, covariance=seed.covariance, random_seed=rng, **(flow_kwargs or {})
    )
    history: dict[str, list[float]] = {
        k: []
        for k in (
            "global_acceptance",
            "local_acceptance",
            "step_size",
            "flow_loss",
            "mode_hops",
            "grad_evals",
            "seconds",
            "n_modes",
        )
    }
    fit_infos: list[FitInfo] = []
    buffer: list[np.ndarray] = []
    climbs_left = 8  # L-BFGS climbs that found nothing new, over the whole adaptation
    thin = max(1, adapt_local_steps // snapshots_per_round)
    desc = "flow MCMC adaptation" + (" (reverse KL)" if fit == "reverse" else "")
    bar = tqdm(range(n_rounds), desc=desc, disable=not progressbar)
    for r in bar:
        t_round = time.perf_counter()
        # (a) local moves with step-size adaptation
        snaps, acc_sum = [], 0.0
        for i in range(adapt_local_steps):
            state, info = _local_move(
                local_kernel, rng, state, density, math.exp(da.log_step), local_metric,
                num_integration_steps,
            )
            acc = float(np.mean(info.acceptance_rate))
            acc_sum += acc
            da = dual_averaging_update(da, acc, target_accept)
            if (i + 1) % thin == 0:
                snaps.append(state.position.copy())
        if not snaps:
            snaps.append(state.position.copy())
        buffer.append(np.concatenate(snaps))
        buffer = buffer[-buffer_rounds:]
        if climbs_left > 0:
            n_before = modes.shape[0]
            modes = discover_modes(
                density, state.position, state.logp, modes, mode_scale,
                max_checks=min(2, climbs_left),
            )
            climbs_left -= 2 if modes.shape[0] == n_before else 0
        pooled = np.concatenate(buffer)
        labels = _nearest_mode(pooled, modes, mode_scale)
        if metric == "dense":
            inverse_metric = _within_mode_covariance(pooled, labels, inverse_metric)
        else:
            inverse_metric = np.clip(
                _within_mode_variance(pooled, labels, inverse_metric), 1e-10, 1e10
            )
        local_metric = _Metric(inverse_metric)
        # (b) fit / refine the flow on the pooled walker states (with fit="reverse": only a
        # first fit, after which the flow learns from the density alone, so it can reach
        # places the walkers never went, such as a funnel's neck)
        if fit != "reverse" or r == 0:
            info_fit = fit_forward_kl(
                flow,
                pooled,
                max_steps=first_train_steps if r == 0 else train_steps,
                learning_rate=learning_rate,
                patience=5 if r == 0 else 3,
                random_seed=rng,
                progressbar=False,
            )
            fit_infos.append(info_fit)
            loss = info_fit.best
        if fit != "forward":
            if fit == "reverse":  # the density is the only teacher after the first round
                steps = reverse_steps if r == 0 else max(1, reverse_steps // 4)
                rkw = {"learning_rate": learning_rate, "patience": 10}
            else:  # "both": a short, gentler refinement after each forward fit
                steps, rkw = reverse_steps, {"learning_rate": 0.3 * learning_rate}
            rinfo = fit_reverse_kl(
                flow, density, max_steps=steps, random_seed=rng, progressbar=False, **rkw
            )
            fit_infos.append(rinfo)
            if fit == "reverse":
                loss = rinfo.best
        # (c) global moves through the current flow (interleaved with a local step)
        g_acc, hops = [], 0
        for _ in range(global_steps):
            logq = flow.log_prob_numpy(state.position)
            before = _nearest_mode(state.position, modes, mode_scale)
            state, _, ginfo = flow_independence_step(rng, state, logq, density, flow)
            after = _nearest_mode(state.position, modes, mode_scale)
            hops += int(np.sum(before != after))
            g_acc.append(float(np.mean(ginfo.acceptance_rate)))
            for _ in range(local_steps):
                state, _ = _local_move(
                    local_kernel, rng, state, density, math.exp(da.log_step), local_metric,
                    num_integration_steps,
                )
        history["global_acceptance"].append(float(np.mean(g_acc)) if g_acc else float("nan"))
        history["local_acceptance"].append(acc_sum / max(1, adapt_local_steps))
        history["step_size"].append(math.exp(da.log_step))
        history["flow_loss"].append(float(loss))
        history["mode_hops"].append(hops)
        history["grad_evals"].append(int(getattr(density, "grad_evals", 0)) - grad_before)
        history["seconds"].append(time.perf_counter() - t_round)
        history["n_modes"].append(int(modes.shape[0]))
        bar.set_postfix(
            global_acc=f"{history['global_acceptance'][-1]:.2f}",
            local_acc=f"{history['local_acceptance'][-1]:.2f}",
            step=f"{history['step_size'][-1]:.3g}",
            hops=hops,
        )
    bar.close()

    frozen = flow.frozen(dtype=_torch_dtype(flow_dtype))
    kernel = FlowMCMCKernel(
        flow=frozen,
        step_size=float(math.exp(da.log_step_avg)),
        inverse_metric=inverse_metric,
        local_kernel=local_kernel,
        local_steps=int(local_steps),
        num_integration_steps=int(num_integration_steps),
    )
    coverage = coverage_check(density, frozen, state.position, state.logp, modes, mode_scale, rng)
    if coverage["starved_modes"]:
        locs = ", ".join(
            f"mode {i} (walkers {coverage['walker_share'][i]:.0%}, "
            f"flow {coverage['flow_share'][i]:.1%})"
            for i in coverage["starved_modes"]
        )
        collected.append(
            f"The flow put almost no mass near {locs}, where walkers are: global moves can "
            "neither reach nor leave it, so that mode's weight may be wrong even if the global "
            "acceptance looks healthy. What to try: more adaptation rounds (n_rounds), more "
            "training (train_steps), more walkers (chains), or a larger flow (flow_kwargs)."
        )
    elif coverage["starved_walker_fraction"] > 0.05:
        collected.append(
            f"{coverage['starved_walker_fraction']:.0%} of the walkers sit where the flow has "
            "at least 10,000x too little mass relative to the posterior: the flow has likely "
            "missed part of the posterior, which the acceptance rate cannot show. What to try: "
            "more adaptation rounds (n_rounds), more training (train_steps), more walkers "
            "(chains), a larger flow (flow_kwargs)"
            + (", or, with a single mode, fit='reverse'." if fit != "reverse" else ".")
        )
    state, n_restarted = _restart_stuck_walkers(
        density, state, coverage, rng, restart_threshold
    )
    return FlowMCMCAdaptation(
        kernel=kernel,
        state=state,
        modes=modes,
        mode_scale=mode_scale,
        history={k: np.asarray(v) for k, v in history.items()},
        coverage=coverage,
        seed=seed,
        grad_evals=int(getattr(density, "grad_evals", 0)) - grad_before,
        seconds=time.perf_counter() - t_start,
        warnings=collected,
        fit_infos=fit_infos,
        restarted_walkers=n_restarted,
        fit=fit,
    )


def _restart_stuck_walkers(
    density: LogDensity,
    state: LocalState,
    coverage: dict[str, Any],
    rng: np.random.Generator,
    threshold: float | None,
    min_ess_fraction: float = 0.1,
) -> tuple[LocalState, int]:
    """Move walkers the frozen flow could never move to importance-resampled flow draws.

    A walker where ``log p - log q - log Z`` is ``t`` nats above zero accepts a
    flow proposal with probability about ``exp(-t)``: above ``threshold`` it
    is stuck for the whole run (unless local moves free it), a relic of the
    adaptation's path (on a funnel, MALA drags walkers deep into the neck,
    where they sat 70 to 160 nats above). Such walkers restart at flow draws
    resampled by their importance weights ``p / q``, provided those weights
    have an effective sample size of at least ``min_ess_fraction`` of the flow
    draws (a flow that poor, gp_pois_regr's say, is no better a start). This
    only changes where the production chains start; the production kernel and
    its exactness are unchanged.
    """
    if threshold is None or not np.isfinite(coverage["log_z"]):
        return state, 0
    stuck = np.flatnonzero(coverage["walker_log_ratio"] > threshold)
    logw = coverage["flow_log_weights"]
    finite = np.flatnonzero(np.isfinite(logw))
    if stuck.size == 0 or finite.size < 2 * stuck.size:
        return state, 0
    w = np.exp(logw[finite] - logw[finite].max())
    if w.sum() ** 2 / np.sum(w * w) < min_ess_fraction * logw.size:
        return state, 0  # the flow's own draws are no better a start than where walkers are
    pick = finite[rng.choice(finite.size, size=stuck.size, replace=False, p=w / w.sum())]
    fresh = local_init(density, coverage["flow_draws"][pick])
    ok = _finite_rows(fresh.logp, fresh.grad)
    stuck, fresh_idx = stuck[ok], np.flatnonzero(ok)
    position, logp, grad = state.position.copy(), state.logp.copy(), state.grad.copy()
    position[stuck] = fresh.position[fresh_idx]
    logp[stuck] = fresh.logp[fresh_idx]
    grad[stuck] = fresh.grad[fresh_idx]
    return LocalState(position, logp, grad), int(stuck.size)


# ===================================================================================
# The public sampler
# ===================================================================================


def _resolve_density(model_or_density: Any) -> LogDensity:
    if model_or_density is None or type(model_or_density).__name__ == "Model":
        import pymc as pm

        from pymc_ext.pymc_model import log_density

        model = pm.modelcontext(model_or_density)
        return log_density(model)
    if isinstance(model_or_density, LogDensity):
        return model_or_density
    raise TypeError(
        "flow_mcmc needs a PyMC model or a LogDensity (or to be called inside `with model:`); "
        f"got {type(model_or_density).__name__}."
    )


def flow_mcmc(
    model_or_density: Any = None,
    *,
    draws: int | None = None,
    chains: int | None = None,
    n_rounds: int | None = None,
    local_kernel: str = "mala",
    metric: str = "dense",
    local_steps: int | None = None,
    adapt_local_steps: int = 20,
    global_steps: int = 4,
    first_train_steps: int = 500,
    train_steps: int = 150,
    buffer_rounds: int = 3,
    fit: str = "auto",
    reverse_steps: int | None = None,
    target_accept: float | None = None,
    num_integration_steps: int = 8,
    num_paths: int = 16,
    search_climbs: int = 128,
    init_scale: float = 2.0,
    flow_kwargs: dict[str, Any] | None = None,
    learning_rate: float | None = None,
    snapshots_per_round: int = 10,
    flow_dtype: str = "float32",
    restart_threshold: float | None = 6.0,
    thin: int = 1,
    min_global_acceptance: float = 0.05,
    random_seed: int | np.random.Generator | None = None,
    progressbar: bool = True,
    adaptation: FlowMCMCAdaptation | None = None,
    callback: Callable[[int, FlowMCMCState, FlowMCMCInfo], None] | None = None,
) -> xr.DataTree:
    """Sample a posterior with flow MCMC: many walkers, local moves plus exact flow proposals.

    Use it for posteriors that NUTS cannot mix across: several separated
    modes, or a funnel. On easy unimodal posteriors it works but costs more
    than NUTS (the flow has to be fitted).

    Parameters
    ----------
    model_or_density : pm.Model or LogDensity, optional
        The target; the model in context by default.
    draws : int, optional
        Production draws per walker (after adaptation). Default 500 up to 20
        dimensions, 1000 above (:func:`default_num_draws`).
    chains : int, optional
        Number of walkers, run vectorised; each is reported as one ArviZ
        chain. Default from the dimension and the number of modes found
        at seeding (64 to 256, at least 32 per mode; see
        :func:`default_num_walkers`).
    n_rounds : int, optional
        Adaptation rounds of (local moves, flow fit, flow moves). Default 6 up
        to 20 dimensions with at most two modes found at seeding, 10
        otherwise (:func:`default_num_rounds`).
    local_kernel : {"mala", "hmc"}
        Local move.
    metric : {"dense", "diag"}
        Inverse metric of the local moves, re-estimated each adaptation round
        from the walker states (pooled within each mode): the dense covariance
        (default), or only its diagonal. Dense lets MALA take much larger steps
        on correlated posteriors (on gp_pois_regr, whose correlation matrix has
        condition number about 500, the diagonal metric held the step near 0.1
        and the walkers never reached the posterior's spread).
    local_steps : int, optional
        Local steps before each flow proposal (production; also between the
        flow proposals of a round). Default 1, or 0 with a reverse-KL flow
        (``fit="reverse"``, or ``"auto"`` when it switches): that flow covers
        the posterior by itself, and MALA diverges where it goes (a funnel's
        neck).
    adapt_local_steps : int
        Local steps per adaptation round (the walker states fed to the flow
        are taken ``snapshots_per_round`` times per round).
    global_steps : int
        Flow proposals per adaptation round.
    first_train_steps, train_steps : int
        Optimiser steps for the first flow fit and for each refinement.
    buffer_rounds : int
        How many recent rounds of walker states the flow is fitted on.
    fit : {"auto", "forward", "both", "reverse"}
        ``"forward"``: maximum likelihood on the walker states (flowMC's
        choice). ``"both"``: plus a short reverse-KL refinement from the
        density each round (costs gradients). ``"reverse"``: a forward-KL
        start on the walker states in the first round, then reverse KL (the
        ELBO) from the density alone: the flow learns regions the walkers
        never reach, such as a funnel's neck. Its defaults differ: a fully
        autoregressive MAF (``flow_kwargs={"kind": "maf", "passes": None}``
        unless ``flow_kwargs`` names a ``kind``), ``learning_rate=3e-3``,
        ``reverse_steps=2000`` and ``local_steps=0``. Reverse KL is
        mode-seeking, so do not use it for separated modes; it also costs
        10-20 times the gradients. ``"auto"`` (default): adapt with
        ``"forward"``; when a single mode was found and the forward flow
        shows it missed part of the posterior (:func:`reverse_kl_reason`:
        Pareto k of its importance weights above 0.7, last-round global
        acceptance below 0.3, or walkers where it has almost no mass), adapt
        again with ``"reverse"`` from the same Pathfinder seeding. Which one
        was kept, and why, is in ``sample_stats.attrs["fit"]`` and
        ``["fit_reason"]``.
    reverse_steps : int, optional
        Most reverse-KL optimiser steps per round (early stopping applies):
        default 50 for ``fit="both"``; for ``fit="reverse"`` 2000 in the first
        round and a quarter of that in each later one.
    target_accept : float, optional
        Local acceptance target (default 0.574 for MALA, 0.75 for HMC).
    num_integration_steps : int
        Leapfrog steps per HMC move.
    num_paths : int
        Pathfinder paths seeding the walkers (overdispersed starts).
    search_climbs : int
        L-BFGS climbs from more starts of the same kind, searching for modes
        the paths missed (:func:`pymc_ext.mode_search.search_modes`): a mode
        narrower than another has a small basin, which few of 16 paths
        reach. A climb's end is added as a mode, with walkers seeded from
        its Laplace normal, when it is a proper maximum holding at least
        1/1000 of the mass (so never a funnel's neck). 0 turns the search
        off. Its cost is in ``sample_stats.attrs["grad_evals"]``.
    init_scale : float
        Half-width of the uniform jitter of the Pathfinder starts.
    flow_kwargs : dict, optional
        Passed to :func:`pymc_ext.flows.build_flow` (``kind``, ``transforms``,
        ``hidden_features``, ``bins``).
    learning_rate : float, optional
        Adam's learning rate for the flow: default 1e-3, or 3e-3 for a
        reverse-KL fit.
    snapshots_per_round : int
        Walker states kept per walker per round for fitting the flow.
    flow_dtype : {"float32", "float64"}
        Precision of the frozen flow in production. float32 is 3-4 times
        faster on a CPU; its ``log q`` is consistent between sampling and
        evaluation to about 3e-5 nats (measured), far below Monte Carlo error.
        float64 makes that about 1e-13.
    restart_threshold : float or None
        At the end of adaptation, walkers where ``log p - log q - log Z`` is
        above this many nats (a flow proposal would be accepted with
        probability about ``exp(-threshold)``: they would never move by the
        flow) restart at flow draws resampled by ``p / q``, when those
        importance weights have an effective sample size of at least a tenth
        of the draws (else the flow is no better a start). This changes only
        where the production chains start, not the kernel. Their number is in
        ``sample_stats.attrs["restarted_walkers"]``. ``None`` turns it off.
        On Neal's funnel, MALA had dragged 6 of 64 walkers deep into the neck
        during adaptation, 70 to 160 nats above the flow; left there, they
        never moved and gave a v sd of 4.4 instead of 3.
    thin : int
        Keep every ``thin``-th production iteration.
    min_global_acceptance : float
        Warn when the production global acceptance is below this.
    random_seed : int or Generator, optional
        Makes the whole run reproducible (walkers, flow weights, proposals).
    progressbar : bool
        Progress bars for adaptation and sampling.
    adaptation : FlowMCMCAdaptation, optional
        Reuse an earlier adaptation (skips straight to production).
    callback : callable, optional
        ``callback(iteration, state, info)`` after every production iteration.

    Returns
    -------
    xarray.DataTree
        ``posterior`` (walkers as chains, the model's names, dims and coords);
        ``sample_stats`` with per-draw ``lp``, ``flow_accepted``,
        ``flow_acceptance``, ``local_acceptance``, ``diverging`` and ``mode``
        (nearest mode found), and as attributes ``global_acceptance``,
        ``local_acceptance``, ``mode_hops``, ``mode_hops_flow``,
        ``grad_evals`` (total), ``grad_evals_adaptation``,
        ``global_acceptance_per_round``, ``n_modes`` and the warnings;
        ``flow_adaptation`` with the per-round history.

    Warns
    -----
    FlowMCMCWarning
        Low global acceptance, a dimension beyond a few hundred, or a flow
        with no mass near a mode the walkers found. Each says what to try.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler import flow_mcmc
    >>> def logp(X):  # two separated modes, weights 0.3 and 0.7
    ...     a = -0.5 * ((X + 3) ** 2).sum(-1) + np.log(0.3)
    ...     b = -0.5 * ((X - 3) ** 2).sum(-1) + np.log(0.7)
    ...     return np.logaddexp(a, b)
    >>> def grad(X):
    ...     a = -0.5 * ((X + 3) ** 2).sum(-1) + np.log(0.3)
    ...     b = -0.5 * ((X - 3) ** 2).sum(-1) + np.log(0.7)
    ...     wa = np.exp(a - np.logaddexp(a, b))[:, None]
    ...     return wa * -(X + 3) + (1 - wa) * -(X - 3)
    >>> d = FunctionLogDensity(2, lambda x: logp(x[None])[0], lambda x: grad(x[None])[0],
    ...                        logp, grad)
    >>> idata = flow_mcmc(d, draws=100, chains=64, n_rounds=4, random_seed=1,
    ...                   progressbar=False, flow_kwargs={"hidden_features": (32, 32)})
    >>> x = idata.posterior["x"].values
    >>> bool(abs((x.mean(-1) > 0).mean() - 0.7) < 0.1)
    True
    """
    density = _resolve_density(model_or_density)
    _check_inputs(density, draws=draws, thin=thin)
    if draws is None:
        draws = default_num_draws(int(density.dim))
    if draws < 1:
        raise ValueError("draws must be at least 1.")
    if thin < 1:
        raise ValueError("thin must be at least 1.")
    rng = np.random.default_rng(random_seed)
    grad_before = int(getattr(density, "grad_evals", 0))
    logp_before = int(getattr(density, "logp_evals", 0))
    if adaptation is None:
        adaptation = flow_mcmc_adapt(
            density,
            chains=chains,
            n_rounds=n_rounds,
            local_kernel=local_kernel,
            metric=metric,
            adapt_local_steps=adapt_local_steps,
            local_steps=local_steps,
            global_steps=global_steps,
            first_train_steps=first_train_steps,
            train_steps=train_steps,
            buffer_rounds=buffer_rounds,
            fit=fit,
            reverse_steps=reverse_steps,
            target_accept=target_accept,
            num_integration_steps=num_integration_steps,
            num_paths=num_paths,
            search_climbs=search_climbs,
            init_scale=init_scale,
            flow_kwargs=flow_kwargs,
            learning_rate=learning_rate,
            snapshots_per_round=snapshots_per_round,
            flow_dtype=flow_dtype,
            restart_threshold=restart_threshold,
            random_seed=rng,
            progressbar=progressbar,
        )
    grad_adapt = int(getattr(density, "grad_evals", 0)) - grad_before
    kernel = adaptation.kernel
    warn_list = list(adaptation.warnings)

    state = flow_mcmc_init(density, adaptation.state.position, kernel)
    n_walkers, dim = state.local.position.shape
    n_keep = int(draws)
    out = np.empty((n_walkers, n_keep, dim))
    stats = {
        "lp": np.empty((n_walkers, n_keep)),
        "flow_accepted": np.zeros((n_walkers, n_keep), dtype=bool),
        "flow_acceptance": np.empty((n_walkers, n_keep)),
        "local_acceptance": np.empty((n_walkers, n_keep)),
        "diverging": np.zeros((n_walkers, n_keep), dtype=bool),
        "mode": np.empty((n_walkers, n_keep), dtype=np.int64),
    }
    hops = hops_flow = 0
    labels = adaptation.labels(state.local.position)
    g_acc_sum = l_acc_sum = 0.0
    n_iter = 0
    t_sample = time.perf_counter()
    bar = tqdm(total=n_keep * thin, desc="flow MCMC sampling", disable=not progressbar)
    for k in range(n_keep):
        acc_flow = np.zeros(n_walkers, dtype=bool)
        facc = np.zeros(n_walkers)
        lacc = np.zeros(n_walkers)
        div = np.zeros(n_walkers, dtype=bool)
        for _ in range(thin):
            state, info = flow_mcmc_step(rng, state, density, kernel)
            new_labels = adaptation.labels(state.local.position)
            changed = new_labels != labels
            hops += int(changed.sum())
            hops_flow += int((changed & info.flow_accepted).sum())
            labels = new_labels
            acc_flow |= info.flow_accepted
            facc += info.flow_acceptance / thin
            lacc += info.local_acceptance / thin
            div |= info.local_divergent
            g_acc_sum += float(info.flow_acceptance.mean())
            l_acc_sum += float(info.local_acceptance.mean())
            n_iter += 1
            if callback is not None:
                callback(n_iter, state, info)
            bar.update(1)
        out[:, k] = state.local.position
        stats["lp"][:, k] = state.local.logp
        stats["flow_accepted"][:, k] = acc_flow
        stats["flow_acceptance"][:, k] = facc
        stats["local_acceptance"][:, k] = lacc
        stats["diverging"][:, k] = div
        stats["mode"][:, k] = labels
        if (k + 1) % 20 == 0:
            bar.set_postfix(global_acc=f"{g_acc_sum / n_iter:.2f}", hops=hops)
    bar.close()
    t_sample = time.perf_counter() - t_sample
    global_acc = g_acc_sum / max(1, n_iter)
    local_acc = l_acc_sum / max(1, n_iter)
    if global_acc < min_global_acceptance:
        msg = (
            f"The flow's global acceptance in production was {global_acc:.3f} "
            f"(< {min_global_acceptance}): the flow is a poor proposal, so walkers rarely move "
            "between modes and mode weights may be off, though each move is still exact. What "
            "to try: more adaptation rounds (n_rounds), more training (train_steps), more "
            "walkers (chains), a larger flow (flow_kwargs={'transforms': ..., "
            "'hidden_features': ...}), or fit='both'; for a funnel or a curved hierarchical "
            "posterior with a single mode, fit='reverse'."
        )
        warn_list.append(msg)
        warnings.warn(msg, FlowMCMCWarning, stacklevel=2)
    n_div = int(stats["diverging"].sum())
    grad_total = int(getattr(density, "grad_evals", 0)) - grad_before
    history = adaptation.history
    attrs = {
        "sampler": "pymc_ext.flow_mcmc",
        "global_acceptance": float(global_acc),
        "local_acceptance": float(local_acc),
        "mode_hops": int(hops),
        "mode_hops_flow": int(hops_flow),
        "n_modes": int(adaptation.modes.shape[0]),
        "restarted_walkers": int(adaptation.restarted_walkers),
        "modes_from_search": int(
            adaptation.mode_search.tops.shape[0] if adaptation.mode_search is not None else 0
        ),
        "divergences": n_div,
        "grad_evals": grad_total + (adaptation.grad_evals if grad_adapt == 0 else 0),
        "grad_evals_production": grad_total - grad_adapt,
        "grad_evals_adaptation": int(adaptation.grad_evals),
        "logp_evals": int(getattr(density, "logp_evals", 0)) - logp_before,
        "global_acceptance_per_round": [float(v) for v in history["global_acceptance"]],
        "local_acceptance_per_round": [float(v) for v in history["local_acceptance"]],
        "mode_hops_per_round": [int(v) for v in history["mode_hops"]],
        "step_size": float(kernel.step_size),
        "local_kernel": kernel.local_kernel,
        "adaptation_seconds": float(adaptation.seconds),
        "sampling_seconds": float(t_sample),
        "seed_method": adaptation.seed.method,
        "fit": adaptation.fit,
        "fit_reason": adaptation.fit_reason,
        "flow_pareto_k": float(adaptation.coverage["pareto_k"]),
        "flow_config": json.dumps(
            kernel.flow.config.to_dict() if kernel.flow.config is not None else {}
        ),
        "flow_share_per_mode": [float(v) for v in adaptation.coverage["flow_share"]],
        "walker_share_per_mode": [float(v) for v in adaptation.coverage["walker_share"]],
        "warnings": json.dumps(warn_list),
    }
    extra = {
        "flow_adaptation": {
            "global_acceptance": history["global_acceptance"],
            "local_acceptance": history["local_acceptance"],
            "step_size": history["step_size"],
            "flow_loss": history["flow_loss"],
            "mode_hops": history["mode_hops"],
            "grad_evals": history["grad_evals"],
            "seconds": history["seconds"],
            "n_modes": history["n_modes"],
        },
    }
    dt = to_datatree(
        density,
        out,
        sample_stats=stats,
        sample_stats_attrs=attrs,
        attrs={"sampler": "pymc_ext.flow_mcmc"},
        extra_groups=extra,
    )
    return dt
