"""What Pathfinder returns: :class:`PathResult` per path, :class:`PathfinderResult` pooled.

A path's status is a :class:`PathStatus` (a ``str``, so ``status == "converged"``
still holds); :class:`PathfinderError` is raised when every path failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from pymc_ext.vi.approximation import NormalApproximation

__all__ = ["PathStatus", "PathResult", "PathfinderResult", "PathfinderError"]


class PathStatus(StrEnum):
    """How a Pathfinder path ended (a ``str``: ``status == "converged"`` works).

    ``CONVERGED``: L-BFGS met a tolerance; ``MAXITER``: it ran out of
    iterations (the path is still used); ``FAILED``: non-finite density at the
    start, a line search that could not make progress, or no finite ELBO (the
    path is dropped); ``RETURNED_START``: L-BFGS could not take a single step, so
    there is no curvature information (the path is dropped).

    Examples
    --------
    >>> from pymc_ext.vi.result import PathStatus
    >>> PathStatus("maxiter") == "maxiter", [str(s) for s in PathStatus]
    (True, ['converged', 'maxiter', 'failed', 'returned-start'])
    """

    CONVERGED = "converged"
    MAXITER = "maxiter"
    FAILED = "failed"
    RETURNED_START = "returned-start"


class PathfinderError(RuntimeError):
    """Raised when every Pathfinder path failed; the message says why for each.

    Examples
    --------
    >>> from pymc_ext.vi.result import PathfinderError
    >>> issubclass(PathfinderError, RuntimeError)
    True
    """


@dataclass
class PathResult:
    """What one Pathfinder path found.

    Attributes
    ----------
    status : PathStatus
        One of ``converged``, ``maxiter``, ``failed``, ``returned-start``.
    message : str
        Why the path ended (and why it failed, when it did).
    start : ndarray
        Starting point (unconstrained).
    elbo : ndarray
        ELBO estimate at each L-BFGS iterate after the start (``-inf`` where
        the approximation had no finite draws).
    grad_evals : int
        Gradient evaluations this path spent (L-BFGS and line searches).
    logp_evals : int
        Log-density-only evaluations (ELBO and final draws).
    num_iterations : int
        Accepted L-BFGS iterations.
    best_iteration : int
        Index (1-based L-BFGS iteration) of the best-ELBO approximation; 0 if none.
    best_point : ndarray or None
        The L-BFGS iterate where the best approximation was built.
    approximation : NormalApproximation or None
        The best normal approximation.
    pareto_k : float
        PSIS Pareto k of this path's own draws against its approximation.
    draws, lp, logq : ndarray or None
        This path's draws from its best approximation, and their log densities.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.vi.result import PathResult, PathStatus
    >>> path = PathResult(PathStatus.FAILED, "no step", np.zeros(2), np.zeros(0), grad_evals=1)
    >>> path.ok, path.best_elbo
    (False, -inf)
    """

    status: PathStatus
    message: str
    start: np.ndarray
    elbo: np.ndarray
    grad_evals: int
    logp_evals: int = 0
    num_iterations: int = 0
    best_iteration: int = 0
    best_point: np.ndarray | None = None
    approximation: NormalApproximation | None = None
    pareto_k: float = np.nan
    draws: np.ndarray | None = None
    lp: np.ndarray | None = None
    logq: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        """Whether the path is used in the pooled result."""
        return (
            self.status in (PathStatus.CONVERGED, PathStatus.MAXITER)
            and self.approximation is not None
        )

    @property
    def best_elbo(self) -> float:
        """The ELBO of the best approximation (``-inf`` when there is none)."""
        return float(self.elbo[self.best_iteration - 1]) if self.best_iteration > 0 else -np.inf


@dataclass
class PathfinderResult:
    """Pooled, PSIS-resampled Pathfinder result on the unconstrained space.

    Attributes
    ----------
    draws : ndarray
        ``(num_draws, dim)`` unconstrained draws, importance-resampled across paths.
    lp, logq : ndarray
        ``(num_draws,)`` log density and log approximating density of each draw.
    pareto_k : float
        PSIS Pareto k of the pooled importance weights (below 0.7 is good).
    grad_evals : int
        Total gradient evaluations over all paths.
    logp_evals : int
        Total log-density-only evaluations (ELBO and importance weights).
    paths : list of PathResult
        Every path, failed ones included.
    mean, covariance : ndarray
        Importance-weighted mean ``(dim,)`` and covariance ``(dim, dim)`` of
        the pooled draws; when the importance weights have a small effective
        sample size they are blended with the moments of the mixture of the
        paths' normal approximations (weight ``ess / (ess + 2 dim)`` on the
        weighted moments), so the covariance always has full rank.
    inverse_metric_diag : ndarray
        ``diag(covariance)``: an initial inverse mass matrix for HMC/NUTS.
    ess : float
        Effective sample size of the pooled importance weights.
    wall_time : float
        Seconds spent.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.vi.multipath import multipath_pathfinder
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, lambda x: -x,
    ...                        lambda X: -0.5 * (X * X).sum(1))
    >>> res = multipath_pathfinder(d, num_paths=2, num_draws=50, random_seed=0)
    >>> res.num_paths_ok, res.summary().splitlines()[0].startswith("Pathfinder: 2/2")
    (2, True)
    """

    draws: np.ndarray
    lp: np.ndarray
    logq: np.ndarray
    pareto_k: float
    grad_evals: int
    paths: list[PathResult]
    mean: np.ndarray
    covariance: np.ndarray
    inverse_metric_diag: np.ndarray
    logp_evals: int = 0
    ess: float = np.nan
    wall_time: float = np.nan

    @property
    def num_paths_ok(self) -> int:
        """Paths used in the pooled result."""
        return sum(p.ok for p in self.paths)

    def summary(self) -> str:
        """One line per path plus the pooled diagnostics."""
        lines = [
            f"Pathfinder: {self.num_paths_ok}/{len(self.paths)} paths used, "
            f"pareto_k={self.pareto_k:.2f}, grad_evals={self.grad_evals}, "
            f"ESS={self.ess:.0f}"
        ]
        for i, p in enumerate(self.paths):
            lines.append(
                f"  path {i}: {p.status} after {p.num_iterations} iterations, "
                f"best ELBO {p.best_elbo:.3g} at {p.best_iteration}, "
                f"pareto_k={p.pareto_k:.2f}, grad_evals={p.grad_evals} ({p.message})"
            )
        return "\n".join(lines)
