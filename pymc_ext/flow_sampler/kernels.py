"""Local kernels of the flow sampler: MALA and HMC, vectorised over walkers.

The kernels are small and pure, BlackJAX style: a :class:`LocalState` /
:class:`LocalInfo` pair of named tuples and ``init`` / ``step`` functions that
take an explicit numpy ``Generator``. The inverse metric ``M^{-1}`` of both is a
:class:`Metric` (diagonal or dense).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from pymc_ext.density import LogDensity

__all__ = [
    "DIVERGENCE_THRESHOLD",
    "LocalInfo",
    "LocalState",
    "Metric",
    "finite_rows",
    "hmc_step",
    "local_init",
    "local_move",
    "mala_step",
]

#: An energy error (minus the log acceptance ratio) above this counts as a divergence, as in NUTS.
DIVERGENCE_THRESHOLD = 1000.0


class LocalState(NamedTuple):
    """Positions of all walkers with their log density and gradient.

    Attributes
    ----------
    position : ndarray, shape (n, dim)
    logp : ndarray, shape (n,)
    grad : ndarray, shape (n, dim)

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flow_sampler.kernels import LocalState
    >>> LocalState(np.zeros((2, 1)), np.zeros(2), np.zeros((2, 1))).position.shape
    (2, 1)
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

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flow_sampler.kernels import LocalInfo
    >>> LocalInfo(np.ones(2), np.ones(2, bool), np.zeros(2, bool)).is_accepted.all()
    np.True_
    """

    acceptance_rate: np.ndarray
    is_accepted: np.ndarray
    is_divergent: np.ndarray


def local_init(density: LogDensity, position: np.ndarray) -> LocalState:
    """Evaluate the density and gradient at every walker's position.

    Parameters
    ----------
    density : LogDensity
    position : ndarray, shape (n, dim)

    Returns
    -------
    LocalState

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


def finite_rows(lp: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """Rows where both the log density and every gradient entry are finite.

    Parameters
    ----------
    lp : ndarray, shape (n,)
    grad : ndarray, shape (n, dim)

    Returns
    -------
    ndarray of bool, shape (n,)

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flow_sampler.kernels import finite_rows
    >>> finite_rows(np.array([0.0, np.inf]), np.zeros((2, 3))).tolist()
    [True, False]
    """
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


class Metric:
    """A diagonal (shape ``(dim,)``) or dense (``(dim, dim)``) inverse metric ``M^{-1}``.

    A dense one is factorised once (``M^{-1} = L L^T``), so each step costs
    plain matrix products.

    Parameters
    ----------
    inverse_metric : ndarray, shape (dim,) or (dim, dim)
        Variances (diagonal) or a covariance (dense).

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flow_sampler.kernels import Metric
    >>> m = Metric(np.array([[4.0, 0.0], [0.0, 1.0]]))
    >>> m.apply(np.ones((1, 2))).tolist(), m.quad(np.ones((1, 2))).tolist()
    ([[4.0, 1.0]], [5.0])
    >>> Metric.of(m) is m
    True
    """

    def __init__(self, inverse_metric: np.ndarray) -> None:
        m = np.asarray(inverse_metric, dtype=float)
        self.m = m
        if m.ndim == 2:
            self.chol = np.linalg.cholesky(m)  # M^{-1} = L L^T
            self.chol_inv = np.linalg.inv(self.chol)  # L^{-1}: plain matmuls per step
        elif m.ndim != 1:
            raise ValueError(f"inverse_metric must be 1-D or 2-D, got shape {m.shape}.")

    @classmethod
    def of(cls, inverse_metric: np.ndarray | Metric) -> Metric:
        """``inverse_metric`` as a metric; one already built is returned as it is."""
        return inverse_metric if isinstance(inverse_metric, cls) else cls(inverse_metric)

    def apply(self, v: np.ndarray) -> np.ndarray:
        """Rows of ``v`` times ``M^{-1}``."""
        return v @ self.m if self.m.ndim == 2 else v * self.m

    def sqrt_apply(self, v: np.ndarray) -> np.ndarray:
        """Rows of ``v`` mapped by ``L`` (``L L^T = M^{-1}``): N(0, I) rows become N(0, M^{-1})."""
        return v @ self.chol.T if self.m.ndim == 2 else v * np.sqrt(self.m)

    def inv_quad(self, v: np.ndarray) -> np.ndarray:
        """``v^T M v`` for each row of ``v`` (``inf`` for a row far out: a rejected proposal)."""
        with np.errstate(over="ignore", invalid="ignore"):
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
        with np.errstate(over="ignore", invalid="ignore"):
            return np.sum(self.apply(p) * p, axis=1)


def mala_step(
    rng: np.random.Generator,
    state: LocalState,
    density: LogDensity,
    step_size: float | np.ndarray,
    inverse_metric: np.ndarray | Metric,
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
    inverse_metric : ndarray, shape (dim,) or (dim, dim), or Metric
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
    metric = Metric.of(inverse_metric)
    h2 = h * h

    def drift(pos: np.ndarray, grad: np.ndarray) -> np.ndarray:
        return pos + 0.5 * h2 * metric.apply(grad)

    noise = rng.standard_normal(x.shape)
    x_new = drift(x, g) + h * metric.sqrt_apply(noise)
    lp_new, g_new = density.logp_and_grad_batch(x_new)
    ok = finite_rows(lp_new, g_new)
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
    inverse_metric: np.ndarray | Metric,
    num_integration_steps: int = 8,
) -> tuple[LocalState, LocalInfo]:
    """One HMC step (leapfrog, fixed number of steps) for every walker.

    Momentum ``p ~ N(0, M)`` with ``M`` the inverse of ``inverse_metric``
    (a diagonal of variances, shape ``(dim,)``, or a covariance, ``(dim, dim)``); the
    trajectory of ``num_integration_steps`` leapfrog steps is accepted with the
    exact energy difference. Costs ``num_integration_steps`` batched
    gradient evaluations.

    Parameters
    ----------
    rng : numpy Generator
    state : LocalState
    density : LogDensity
    step_size : float or ndarray of shape (n,)
    inverse_metric : ndarray, shape (dim,) or (dim, dim), or Metric
    num_integration_steps : int

    Returns
    -------
    (LocalState, LocalInfo)

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
    metric = Metric.of(inverse_metric)
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
        ok = finite_rows(lp_q, grad)
        alive &= ok
        grad = np.where(ok[:, None], grad, 0.0)
        p = p + (0.5 if i == n_steps - 1 else 1.0) * h * grad
    lp_q = np.where(alive, lp_q, -np.inf)
    kinetic1 = 0.5 * metric.quad(p)
    log_ratio = (lp_q - kinetic1) - (lp - kinetic0)
    return _accept(rng, state, LocalState(q, lp_q, grad), log_ratio)


def local_move(
    local_kernel: str,
    rng: np.random.Generator,
    state: LocalState,
    density: LogDensity,
    step_size: float,
    metric: np.ndarray | Metric,
    num_integration_steps: int,
) -> tuple[LocalState, LocalInfo]:
    """One MALA or HMC step, by name (``"mala"`` or ``"hmc"``).

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler.kernels import local_init, local_move
    >>> d = FunctionLogDensity(1, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x)
    >>> rng = np.random.default_rng(0)
    >>> state, info = local_move("hmc", rng, local_init(d, np.zeros((2, 1))), d, 0.5,
    ...                          np.ones(1), 4)
    >>> info.acceptance_rate.shape
    (2,)
    """
    if local_kernel == "hmc":
        return hmc_step(rng, state, density, step_size, metric, num_integration_steps)
    return mala_step(rng, state, density, step_size, metric)
