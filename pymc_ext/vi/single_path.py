"""One Pathfinder path (paper, Algorithm 1): L-BFGS, an approximation per iterate, best ELBO.

The optimiser is THE L-BFGS of :mod:`pymc_ext.blocks.lbfgs`; the approximations
come from :mod:`pymc_ext.vi.approximation`; the path's own Pareto k from
:func:`pymc_ext.blocks.importance.psis_log_weights`.
"""

from __future__ import annotations

import numpy as np

from pymc_ext.blocks.importance import psis_log_weights
from pymc_ext.blocks.lbfgs import LBFGSState, lbfgs
from pymc_ext.density import LogDensity
from pymc_ext.vi.approximation import NormalApproximation, path_approximations
from pymc_ext.vi.result import PathResult, PathStatus

__all__ = ["single_path_pathfinder", "safe_logp_batch"]


def single_path_pathfinder(
    density: LogDensity,
    x0: np.ndarray,
    *,
    num_draws: int = 1000,
    num_elbo_draws: int = 25,
    history_size: int = 6,
    maxiter: int = 1000,
    ftol: float = 1e-8,
    gtol: float = 1e-8,
    random_seed: int | np.random.Generator | None = None,
) -> PathResult:
    """Run one Pathfinder path from ``x0`` (paper Alg. 1).

    Parameters
    ----------
    density : LogDensity
        Target on the unconstrained space.
    x0 : ndarray
        Starting point, shape ``(dim,)``.
    num_draws : int
        Draws taken from the best approximation.
    num_elbo_draws : int
        Monte Carlo draws per iterate for the ELBO.
    history_size : int
        L-BFGS history length ``J`` (rank of the update is ``2J``).
    maxiter : int
        Maximum L-BFGS iterations.
    ftol, gtol : float
        Relative log-density change and max-abs-gradient tolerances.
    random_seed : int or Generator, optional
        Seed for the ELBO and final draws.

    Returns
    -------
    PathResult
        Never raises for a failing path: look at ``status`` and ``message``.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.vi.single_path import single_path_pathfinder
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, lambda x: -x,
    ...                        lambda X: -0.5 * (X * X).sum(1))
    >>> path = single_path_pathfinder(d, np.array([1.5, -1.0]), random_seed=1)
    >>> str(path.status), path.draws.shape
    ('converged', (1000, 2))
    """
    rng = np.random.default_rng(random_seed)
    x0 = np.asarray(x0, dtype=float).reshape(density.dim)
    l0 = density.logp_evals
    path, trace = _run_lbfgs(density, x0, history_size, maxiter, ftol, gtol)
    if path.status in (PathStatus.FAILED, PathStatus.RETURNED_START):
        return path
    approxs = path_approximations(trace, history_size)
    path.elbo = _elbo_trace(density, approxs, rng, num_elbo_draws, len(trace) - 1)
    if not np.any(np.isfinite(path.elbo)):
        path.status = PathStatus.FAILED
        path.message = (
            "No approximation along the path had a finite ELBO: the log density is not "
            "finite at its draws (or the BFGS factorisation broke down)."
        )
        path.logp_evals = density.logp_evals - l0
        return path
    best = int(np.argmax(path.elbo))
    path.best_iteration = best + 1
    path.best_point = trace[best + 1].x.copy()
    path.approximation = approxs[best]
    _draw_from_best(density, path, rng, num_draws)
    path.logp_evals = density.logp_evals - l0
    return path


def _run_lbfgs(
    density: LogDensity,
    x0: np.ndarray,
    history_size: int,
    maxiter: int,
    ftol: float,
    gtol: float,
) -> tuple[PathResult, list[LBFGSState]]:
    """L-BFGS from ``x0`` and the path record it starts (status ``returned-start`` if no step)."""
    g0 = density.grad_evals
    trace, info = lbfgs(density, x0, history_size, maxiter, ftol, gtol)
    path = PathResult(
        status=PathStatus(info.status),
        message=info.message,
        start=x0,
        elbo=np.full(max(len(trace) - 1, 0), -np.inf),
        grad_evals=density.grad_evals - g0,
        num_iterations=max(len(trace) - 1, 0),
    )
    failed = (PathStatus.FAILED, PathStatus.RETURNED_START)
    if path.status not in failed and len(trace) < 2:
        path.status, path.message = PathStatus.RETURNED_START, "L-BFGS took no step."
    return path, trace


def _elbo_trace(
    density: LogDensity,
    approxs: list[NormalApproximation | None],
    rng: np.random.Generator,
    num_elbo_draws: int,
    num_iterations: int,
) -> np.ndarray:
    """ELBO at every iterate from one batched log-density call (common random numbers)."""
    elbo = np.full(num_iterations, -np.inf)
    u = rng.standard_normal((num_elbo_draws, density.dim))
    valid = [i for i, q in enumerate(approxs) if q is not None]
    if not valid:
        return elbo
    X = np.concatenate([approxs[i].transform(u) for i in valid], axis=0)
    logq = np.concatenate([approxs[i].logq_from_u(u) for i in valid])
    with np.errstate(all="ignore"):
        lp = safe_logp_batch(density, X)
    ratio = (lp - logq).reshape(len(valid), num_elbo_draws)
    with np.errstate(invalid="ignore"):
        elbo[valid] = np.where(np.all(np.isfinite(ratio), axis=1), ratio.mean(axis=1), -np.inf)
    return elbo


def _draw_from_best(
    density: LogDensity, path: PathResult, rng: np.random.Generator, num_draws: int
) -> None:
    """``num_draws`` draws from the path's best approximation, their log densities and k."""
    draws, logq = path.approximation.sample(rng, num_draws)
    with np.errstate(all="ignore"):
        lp = safe_logp_batch(density, draws)
    path.draws, path.lp, path.logq = draws, lp, logq
    _, path.pareto_k = psis_log_weights(lp - logq)


def safe_logp_batch(density: LogDensity, X: np.ndarray) -> np.ndarray:
    """``density.logp_batch(X)`` with NaN and evaluation errors turned into ``-inf``.

    Falls back to one ``logp`` call per row when the batched call raises.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.vi.single_path import safe_logp_batch
    >>> d = FunctionLogDensity(1, lambda x: np.nan if x[0] > 0 else 0.0)
    >>> safe_logp_batch(d, np.array([[-1.0], [1.0]])).tolist()
    [0.0, -inf]
    """
    try:
        lp = np.asarray(density.logp_batch(X), dtype=float).reshape(X.shape[0])
    except (FloatingPointError, ValueError, ArithmeticError):
        lp = np.array([_safe_logp(density, x) for x in X])
    return np.where(np.isnan(lp), -np.inf, lp)


def _safe_logp(density: LogDensity, x: np.ndarray) -> float:
    try:
        return float(density.logp(x))
    except (FloatingPointError, ValueError, ArithmeticError):
        return -np.inf
