"""Multi-path Pathfinder (Zhang, Carpenter, Gelman & Vehtari, 2022), engine-agnostic.

Pathfinder runs L-BFGS on ``-log p`` from a few starting points. At every
iterate it turns the L-BFGS ``(s, y)`` history into a normal approximation
whose covariance is the BFGS inverse Hessian in its low-rank-plus-diagonal
form (the paper's Algorithms 3-5), scores that approximation by a Monte Carlo
ELBO computed with the batched log density, and keeps the best one. Several
paths are pooled and importance-resampled with Pareto-smoothed importance
sampling (PSIS, the implementation that ArviZ ships in ``arviz_stats``).

Everything here works on a :class:`~pymc_ext.density.LogDensity` and never
sees PyMC or Stan; :func:`pathfinder` is the thin PyMC-facing wrapper and
``stan_bridge`` calls :func:`multipath_pathfinder` on its own densities.

The small pieces follow a BlackJAX-like shape: :class:`LBFGSState` /
:class:`LBFGSInfo` for the optimiser, :class:`NormalApproximation` for the
per-iterate Gaussian, :class:`PathResult` per path and
:class:`PathfinderResult` for the pooled answer.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from scipy.linalg import solve_triangular
from threadpoolctl import threadpool_limits

from pymc_ext.density import LogDensity

if TYPE_CHECKING:  # pragma: no cover
    import pymc as pm
    import xarray as xr

__all__ = [
    "NormalApproximation",
    "PathResult",
    "PathfinderResult",
    "PathfinderError",
    "single_path_pathfinder",
    "multipath_pathfinder",
    "pathfinder_to_datatree",
    "density_pathfinder",
    "pathfinder",
    "psis_log_weights",
]

_LOG_2PI = math.log(2.0 * math.pi)

#: Path statuses. ``converged``: L-BFGS met a tolerance; ``maxiter``: it ran out
#: of iterations (the path is still used); ``failed``: non-finite density at the
#: start, a line search that could not make progress, or no finite ELBO (the
#: path is dropped); ``returned-start``: L-BFGS could not take a single step, so
#: there is no curvature information (the path is dropped).
PATH_STATUSES = ("converged", "maxiter", "failed", "returned-start")


class PathfinderError(RuntimeError):
    """Raised when every Pathfinder path failed; the message says why for each."""


# ---------------------------------------------------------------------------
# PSIS (ArviZ's implementation)
# ---------------------------------------------------------------------------
def psis_log_weights(log_ratios: np.ndarray) -> tuple[np.ndarray, float]:
    """Pareto-smoothed, normalised log importance weights, with ArviZ's PSIS.

    Parameters
    ----------
    log_ratios : ndarray
        ``log p(x) - log q(x)`` for draws ``x ~ q``; non-finite entries get
        weight zero and are left out of the Pareto fit.

    Returns
    -------
    log_weights : ndarray
        Same shape, normalised so that ``exp(log_weights).sum() == 1``.
    pareto_k : float
        The Pareto k diagnostic (``-inf`` when every ratio is equal, i.e. the
        approximation is exact up to a constant).

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.pathfinder_core import psis_log_weights
    >>> lw, k = psis_log_weights(np.random.default_rng(0).normal(size=1000))
    >>> bool(np.isclose(np.exp(lw).sum(), 1.0)), k < 0.7
    (True, True)
    """
    from arviz_stats.base import array_stats

    log_ratios = np.asarray(log_ratios, dtype=float)
    out = np.full(log_ratios.shape, -np.inf)
    finite = np.isfinite(log_ratios)
    n = int(finite.sum())
    if n == 0:
        raise PathfinderError(
            "Every importance ratio log p - log q is non-finite: the log density is not "
            "finite at any Pathfinder draw. Check the model for values outside a "
            "distribution's support, or try other initial points."
        )
    lr = log_ratios[finite]
    if n < 10 or np.ptp(lr) <= 1e-12 * max(1.0, float(np.abs(lr).max())):
        # Too few draws for a Pareto fit, or an exact approximation (constant ratio).
        out[finite] = lr - _logsumexp(lr)
        return out, (-np.inf if n >= 10 else np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            lw, k = array_stats.psislw(-lr)
        except ValueError:  # "All tail values are the same": no tail to smooth
            lw, k = lr - _logsumexp(lr), -np.inf
    out[finite] = np.asarray(lw, dtype=float)
    return out, float(k)


def _logsumexp(a: np.ndarray) -> float:
    m = float(np.max(a))
    if not np.isfinite(m):
        return m
    return m + math.log(float(np.exp(a - m).sum()))


# ---------------------------------------------------------------------------
# Normal approximation from the L-BFGS history (paper, Algorithms 3-5)
# ---------------------------------------------------------------------------
def _update_diagonal(alpha: np.ndarray, s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inverse-Hessian diagonal update (paper Alg. 3; Gilbert & Lemaréchal 1989)."""
    a = float(y @ (alpha * y))
    b = float(y @ s)
    c = float(s @ (s / alpha))
    new = 1.0 / (a / (b * alpha) + y * y / b - a * s * s / (b * c * alpha * alpha))
    if not np.all(np.isfinite(new)) or np.any(new <= 0):
        return alpha
    return new


@dataclass
class NormalApproximation:
    """Gaussian ``N(mean, diag(alpha) + beta gamma beta^T)`` from one L-BFGS iterate.

    Parameters
    ----------
    mean : ndarray
        ``x + H grad log p(x)``, one quasi-Newton step from the iterate.
    alpha : ndarray
        Diagonal part of the inverse Hessian (positive).
    beta : ndarray
        ``(dim, 2J)`` low-rank factor; ``gamma`` is ``(2J, 2J)``.
    gamma : ndarray
        Middle matrix of the low-rank update.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.pathfinder_core import NormalApproximation
    >>> q = NormalApproximation(np.zeros(2), np.ones(2), np.zeros((2, 0)), np.zeros((0, 0)))
    >>> x, logq = q.sample(np.random.default_rng(0), 3)
    >>> x.shape, logq.shape
    ((3, 2), (3,))
    """

    mean: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    gamma: np.ndarray
    _factor: tuple[str, Any] | None = field(default=None, repr=False)
    _logdet: float = field(default=np.nan, repr=False)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def covariance(self) -> np.ndarray:
        """Dense covariance matrix ``diag(alpha) + beta gamma beta^T``."""
        return np.diag(self.alpha) + self.beta @ self.gamma @ self.beta.T

    def _prepare(self) -> None:
        if self._factor is not None:
            return
        dim, rank = self.beta.shape
        if rank < dim:
            sqrt_a = np.sqrt(self.alpha)
            q, r = np.linalg.qr(self.beta / sqrt_a[:, None])
            mid = np.eye(rank) + r @ self.gamma @ r.T
            chol = np.linalg.cholesky(0.5 * (mid + mid.T))
            self._factor = ("lowrank", (sqrt_a, q, chol))
            self._logdet = float(np.log(self.alpha).sum() + 2 * np.log(np.diag(chol)).sum())
        else:
            cov = self.covariance()
            chol = np.linalg.cholesky(0.5 * (cov + cov.T))
            self._factor = ("dense", chol)
            self._logdet = float(2 * np.log(np.diag(chol)).sum())

    def transform(self, u: np.ndarray) -> np.ndarray:
        """Map standard-normal ``u`` (shape ``(n, dim)``) to draws of this normal."""
        self._prepare()
        kind, fac = self._factor  # type: ignore[misc]
        if kind == "lowrank":
            sqrt_a, q, chol = fac
            qtu = u @ q
            z = u + (qtu @ (chol - np.eye(chol.shape[0])).T) @ q.T
            return self.mean + z * sqrt_a
        return self.mean + u @ fac.T

    def logq_from_u(self, u: np.ndarray) -> np.ndarray:
        """``log q`` of ``transform(u)``, from the standard-normal ``u``."""
        self._prepare()
        return -0.5 * (self._logdet + (u * u).sum(axis=-1) + self.dim * _LOG_2PI)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` draws and their ``log q``."""
        u = rng.standard_normal((n, self.dim))
        return self.transform(u), self.logq_from_u(u)


def _bfgs_approximation(
    x: np.ndarray, grad: np.ndarray, alpha: np.ndarray, S: np.ndarray, Z: np.ndarray
) -> NormalApproximation:
    """Paper Alg. 4 (BFGS-Mat): inverse Hessian from ``(alpha, S, Z)`` and the mean.

    ``S`` and ``Z`` are ``(dim, J)``; ``Z`` holds ``y = grad f(x_{k+1}) - grad f(x_k)``
    with ``f = -log p``.
    """
    J = S.shape[1]
    if J == 0:
        return NormalApproximation(
            x + alpha * grad, alpha.copy(), np.zeros((x.size, 0)), np.zeros((0, 0))
        )
    StZ = S.T @ Z
    R = np.triu(StZ)
    eta = np.diag(StZ)
    Rinv = solve_triangular(R, np.eye(J), lower=False)
    alphaZ = alpha[:, None] * Z
    beta = np.concatenate([alphaZ, S], axis=1)
    lower_right = Rinv.T @ (np.diag(eta) + Z.T @ alphaZ) @ Rinv
    gamma = np.block([[np.zeros((J, J)), -Rinv], [-Rinv.T, lower_right]])
    # mean = x + H grad, with H = diag(alpha) + beta gamma beta^T
    mean = x + alpha * grad + beta @ (gamma @ (beta.T @ grad))
    return NormalApproximation(mean, alpha.copy(), beta, gamma)


# ---------------------------------------------------------------------------
# L-BFGS with a strong-Wolfe line search that backs off from non-finite values
# ---------------------------------------------------------------------------
class LBFGSState(NamedTuple):
    """One accepted L-BFGS iterate: position, ``log p`` and its gradient."""

    x: np.ndarray
    logp: float
    grad: np.ndarray


class LBFGSInfo(NamedTuple):
    """How an L-BFGS run ended."""

    status: str
    message: str
    grad_evals: int


class _Objective:
    """``f = -log p`` with gradient, counting evaluations and tolerating non-finite values."""

    def __init__(self, density: LogDensity) -> None:
        self.density = density
        self.n = 0

    def __call__(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        self.n += 1
        try:
            with np.errstate(all="ignore"):
                lp, g = self.density.logp_and_grad(x)
        except (FloatingPointError, ValueError, ArithmeticError):
            return np.inf, np.full(x.shape, np.nan)
        lp = float(lp)
        g = np.asarray(g, dtype=float)
        if not np.isfinite(lp) or not np.all(np.isfinite(g)):
            return np.inf, g
        return -lp, -g


def _cubic_min(a, fa, ga, b, fb, gb):
    """Minimiser of the cubic interpolating (a, fa, ga) and (b, fb, gb), or None."""
    d1 = ga + gb - 3 * (fa - fb) / (a - b)
    disc = d1 * d1 - ga * gb
    if disc < 0:
        return None
    d2 = math.copysign(math.sqrt(disc), b - a)
    denom = gb - ga + 2 * d2
    if denom == 0:
        return None
    t = b - (b - a) * (gb + d2 - d1) / denom
    return t if np.isfinite(t) else None


def _line_search(obj, x, f0, g0, d, step0, c1=1e-4, c2=0.9, max_evals=25):
    """Strong-Wolfe line search (Nocedal & Wright Alg. 3.5/3.6).

    Returns ``(step, x_new, f_new, g_new)`` or ``None`` when no acceptable step
    was found. A non-finite value at a trial step shrinks the step.
    """
    dphi0 = float(g0 @ d)
    a_prev, f_prev, dp_prev = 0.0, f0, dphi0
    a = step0
    evals = 0

    def zoom(lo, flo, dlo, hi, fhi, dhi):
        nonlocal evals
        for _ in range(max_evals):
            if evals >= max_evals:
                return None
            width = abs(hi - lo)
            t = _cubic_min(lo, flo, dlo, hi, fhi, dhi) if np.isfinite(fhi) else None
            left, right = min(lo, hi), max(lo, hi)
            if t is None or not (left + 0.1 * width <= t <= right - 0.1 * width):
                t = 0.5 * (lo + hi)
            ft, gt = obj(x + t * d)
            evals += 1
            if not np.isfinite(ft):
                hi, fhi, dhi = t, np.inf, np.nan
                continue
            dt = float(gt @ d)
            if ft > f0 + c1 * t * dphi0 or ft >= flo:
                hi, fhi, dhi = t, ft, dt
            else:
                if abs(dt) <= -c2 * dphi0:
                    return t, ft, gt
                if dt * (hi - lo) >= 0:
                    hi, fhi, dhi = lo, flo, dlo
                lo, flo, dlo = t, ft, dt
            if abs(hi - lo) < 1e-16 * max(1.0, abs(lo)):
                break
        # Accept the best sufficient-decrease point found, if any.
        if lo > 0 and flo <= f0 + c1 * lo * dphi0:
            return lo, flo, None
        return None

    first = True
    while evals < max_evals:
        fa, ga = obj(x + a * d)
        evals += 1
        if not np.isfinite(fa):
            # Overshot into a region where the density is not finite: back off.
            a = a_prev + 0.1 * (a - a_prev) if a_prev > 0 else 0.1 * a
            continue
        da = float(ga @ d)
        if fa > f0 + c1 * a * dphi0 or (not first and fa >= f_prev):
            res = zoom(a_prev, f_prev, dp_prev, a, fa, da)
            break
        if abs(da) <= -c2 * dphi0:
            res = (a, fa, ga)
            break
        if da >= 0:
            res = zoom(a, fa, da, a_prev, f_prev, dp_prev)
            break
        a_prev, f_prev, dp_prev = a, fa, da
        a = 2.0 * a
        first = False
    else:
        res = None
    if res is None:
        return None
    step, fs, gs = res
    xs = x + step * d
    if gs is None:
        fs, gs = obj(xs)
        if not np.isfinite(fs):
            return None
    return step, xs, fs, gs


def _two_loop(g: np.ndarray, S: list, Y: list) -> np.ndarray:
    """L-BFGS two-loop recursion: ``H g`` with the stored pairs."""
    q = g.copy()
    rhos = [1.0 / float(y @ s) for s, y in zip(S, Y, strict=True)]
    alphas = []
    for s, y, rho in zip(reversed(S), reversed(Y), reversed(rhos), strict=True):
        a = rho * float(s @ q)
        alphas.append(a)
        q -= a * y
    if S:
        s, y = S[-1], Y[-1]
        q *= float(s @ y) / float(y @ y)
    for (s, y, rho), a in zip(zip(S, Y, rhos, strict=True), reversed(alphas), strict=True):
        b = rho * float(y @ q)
        q += (a - b) * s
    return q


def _lbfgs(
    density: LogDensity,
    x0: np.ndarray,
    history_size: int,
    maxiter: int,
    ftol: float,
    gtol: float,
) -> tuple[list[LBFGSState], LBFGSInfo]:
    """Maximise ``log p`` with L-BFGS; returns every accepted iterate (start included)."""
    obj = _Objective(density)
    f, g = obj(x0)
    if not np.isfinite(f):
        return [], LBFGSInfo(
            "failed",
            "The log density or its gradient is not finite at the starting point.",
            obj.n,
        )
    x = np.asarray(x0, dtype=float).copy()
    trace = [LBFGSState(x.copy(), -f, -g)]
    S: list[np.ndarray] = []
    Y: list[np.ndarray] = []
    status, message = "maxiter", f"L-BFGS reached maxiter={maxiter}."
    for _ in range(maxiter):
        if np.max(np.abs(g)) <= gtol:
            status, message = "converged", "gradient below gtol"
            break
        d = -_two_loop(g, S, Y)
        if not float(d @ g) < 0:
            S, Y = [], []
            d = -g
        step0 = 1.0 if S else min(1.0, 1.0 / max(float(np.linalg.norm(g)), 1e-300))
        res = _line_search(obj, x, f, g, d, step0)
        if res is None:
            if len(trace) == 1:
                status, message = (
                    "returned-start",
                    "The first line search found no step that increases the log density; "
                    "L-BFGS stayed at the starting point.",
                )
            elif len(trace) >= 3:
                # No more progress possible at numerical precision: a standard end.
                status, message = "converged", "line search could not improve further"
            else:
                status, message = "failed", "line search failed"
            break
        _, x_new, f_new, g_new = res
        s, y = x_new - x, g_new - g
        if float(s @ y) > 1e-12 * float(y @ y):
            S.append(s)
            Y.append(y)
            if len(S) > history_size:
                S.pop(0)
                Y.pop(0)
        rel = (f - f_new) / max(abs(f), abs(f_new), 1.0)
        x, f, g = x_new, f_new, g_new
        trace.append(LBFGSState(x.copy(), -f, -g))
        if rel <= ftol:
            status, message = "converged", "relative change in log density below ftol"
            break
    return trace, LBFGSInfo(status, message, obj.n)


# ---------------------------------------------------------------------------
# One path
# ---------------------------------------------------------------------------
@dataclass
class PathResult:
    """What one Pathfinder path found.

    Attributes
    ----------
    status : str
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
    """

    status: str
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
        return self.status in ("converged", "maxiter") and self.approximation is not None

    @property
    def best_elbo(self) -> float:
        return float(self.elbo[self.best_iteration - 1]) if self.best_iteration > 0 else -np.inf


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
    >>> from pymc_ext.pathfinder_core import single_path_pathfinder
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, lambda x: -x,
    ...                        lambda X: -0.5 * (X * X).sum(1))
    >>> path = single_path_pathfinder(d, np.array([1.5, -1.0]), random_seed=1)
    >>> path.status, path.draws.shape
    ('converged', (1000, 2))
    """
    rng = np.random.default_rng(random_seed)
    x0 = np.asarray(x0, dtype=float).reshape(density.dim)
    g0 = int(getattr(density, "grad_evals", 0))
    l0 = int(getattr(density, "logp_evals", 0))
    trace, info = _lbfgs(density, x0, history_size, maxiter, ftol, gtol)
    grad_evals = (
        int(getattr(density, "grad_evals", 0)) - g0
        if hasattr(density, "grad_evals")
        else info.grad_evals
    )
    path = PathResult(
        status=info.status,
        message=info.message,
        start=x0,
        elbo=np.full(max(len(trace) - 1, 0), -np.inf),
        grad_evals=grad_evals,
        num_iterations=max(len(trace) - 1, 0),
    )
    if info.status in ("failed", "returned-start") or len(trace) < 2:
        if path.status not in ("failed", "returned-start"):
            path.status, path.message = "returned-start", "L-BFGS took no step."
        return path

    # Approximations at iterates 1..L with the running diagonal and the last J pairs.
    dim = density.dim
    alpha = np.ones(dim)
    S_hist: list[np.ndarray] = []
    Z_hist: list[np.ndarray] = []
    approxs: list[NormalApproximation | None] = []
    for prev, cur in zip(trace[:-1], trace[1:], strict=True):
        s = cur.x - prev.x
        z = prev.grad - cur.grad  # = grad f(x_{k+1}) - grad f(x_k), f = -log p
        if float(s @ z) > 1e-12 * float(z @ z):
            alpha = _update_diagonal(alpha, s, z)
            S_hist.append(s)
            Z_hist.append(z)
            if len(S_hist) > history_size:
                S_hist.pop(0)
                Z_hist.pop(0)
        S = np.stack(S_hist, axis=1) if S_hist else np.zeros((dim, 0))
        Z = np.stack(Z_hist, axis=1) if Z_hist else np.zeros((dim, 0))
        try:
            with np.errstate(all="ignore"):
                q = _bfgs_approximation(cur.x, cur.grad, alpha, S, Z)
                q._prepare()
            if not (np.all(np.isfinite(q.mean)) and np.isfinite(q._logdet)):
                q = None
        except (np.linalg.LinAlgError, ValueError):
            q = None
        approxs.append(q)

    # ELBO at every iterate from one batched log-density call (common random numbers).
    u = rng.standard_normal((num_elbo_draws, dim))
    valid = [i for i, q in enumerate(approxs) if q is not None]
    if valid:
        X = np.concatenate([approxs[i].transform(u) for i in valid], axis=0)
        logq = np.concatenate([approxs[i].logq_from_u(u) for i in valid])
        with np.errstate(all="ignore"):
            lp = _safe_logp_batch(density, X)
        ratio = (lp - logq).reshape(len(valid), num_elbo_draws)
        with np.errstate(invalid="ignore"):
            elbo_valid = np.where(np.all(np.isfinite(ratio), axis=1), ratio.mean(axis=1), -np.inf)
        path.elbo[valid] = elbo_valid
    if not np.any(np.isfinite(path.elbo)):
        path.status = "failed"
        path.message = (
            "No approximation along the path had a finite ELBO: the log density is not "
            "finite at its draws (or the BFGS factorisation broke down)."
        )
        path.logp_evals = int(getattr(density, "logp_evals", 0)) - l0
        return path
    best = int(np.argmax(path.elbo))
    path.best_iteration = best + 1
    path.best_point = trace[best + 1].x.copy()
    path.approximation = approxs[best]

    draws, logq = path.approximation.sample(rng, num_draws)
    with np.errstate(all="ignore"):
        lp = _safe_logp_batch(density, draws)
    path.draws, path.lp, path.logq = draws, lp, logq
    try:
        _, path.pareto_k = psis_log_weights(lp - logq)
    except PathfinderError:
        path.pareto_k = np.inf
    path.logp_evals = int(getattr(density, "logp_evals", 0)) - l0
    return path


def _safe_logp_batch(density: LogDensity, X: np.ndarray) -> np.ndarray:
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


# ---------------------------------------------------------------------------
# Multi-path
# ---------------------------------------------------------------------------
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


def _initial_points(
    density: LogDensity,
    num_paths: int,
    init: np.ndarray | None,
    jitter: float | None,
    rng: np.random.Generator,
) -> np.ndarray:
    dim = density.dim
    if init is None:
        radius = 2.0 if jitter is None else float(jitter)
        return rng.uniform(-radius, radius, size=(num_paths, dim))
    init = np.asarray(init, dtype=float)
    if init.ndim == 1:
        if init.shape[0] != dim:
            raise ValueError(f"init has {init.shape[0]} entries; the density has dim={dim}.")
        init = np.broadcast_to(init, (num_paths, dim)).copy()
    elif init.shape != (num_paths, dim):
        raise ValueError(
            f"init must have shape (dim,)=({dim},) or (num_paths, dim)=({num_paths}, {dim}); "
            f"got {init.shape}."
        )
    if not np.all(np.isfinite(init)):
        raise ValueError("init has non-finite entries; pass finite unconstrained starting points.")
    scale = 0.0 if jitter is None else float(jitter)
    if scale > 0:
        init = init + rng.uniform(-scale, scale, size=init.shape)
    return init


def _weighted_moments(draws: np.ndarray, log_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = np.exp(log_w - _logsumexp(log_w))
    mean = w @ draws
    centred = draws - mean
    cov = (centred * w[:, None]).T @ centred
    return mean, 0.5 * (cov + cov.T)


def _mixture_moments(
    paths: list[PathResult], path_weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the mixture of the paths' normal approximations."""
    means = np.stack([p.approximation.mean for p in paths])
    covs = np.stack([p.approximation.covariance() for p in paths])
    w = path_weights / path_weights.sum()
    mean = w @ means
    spread = means - mean
    cov = np.einsum("p,pij->ij", w, covs) + (spread * w[:, None]).T @ spread
    return mean, 0.5 * (cov + cov.T)


def _pooled_moments(
    paths: list[PathResult], draws: np.ndarray, log_w: np.ndarray, path_index: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Importance-weighted moments, leaning on the path approximations when the ESS is low.

    With few effective draws the weighted covariance is rank-deficient (it
    cannot have full rank with fewer than ``dim`` distinct draws). It is then
    blended with the covariance of the mixture of the paths' own normal
    approximations (weighted by each path's share of the importance
    weights), which is always positive definite:
    ``lam * weighted + (1 - lam) * mixture`` with ``lam = ess / (ess + 2 dim)``.
    """
    dim = draws.shape[1]
    w = np.exp(log_w - _logsumexp(log_w))
    ess = 1.0 / float((w * w).sum())
    mean_w, cov_w = _weighted_moments(draws, log_w)
    share = np.array([w[path_index == i].sum() for i in range(len(paths))]) + 1e-3
    mean_m, cov_m = _mixture_moments(paths, share)
    lam = ess / (ess + 2.0 * dim)
    mean = lam * mean_w + (1 - lam) * mean_m
    cov = lam * cov_w + (1 - lam) * cov_m
    return mean, 0.5 * (cov + cov.T)


def multipath_pathfinder(
    density: LogDensity,
    num_paths: int = 4,
    num_draws: int = 1000,
    random_seed: int | np.random.Generator | None = None,
    *,
    init: np.ndarray | None = None,
    jitter: float | None = None,
    num_draws_per_path: int | None = None,
    num_elbo_draws: int = 25,
    history_size: int = 6,
    maxiter: int = 1000,
    ftol: float = 1e-8,
    gtol: float = 1e-8,
    importance_sampling: str = "psis",
    replace: bool = True,
    progressbar: bool = False,
) -> PathfinderResult:
    """Multi-path Pathfinder on any :class:`~pymc_ext.density.LogDensity`.

    Parameters
    ----------
    density : LogDensity
        Target on the unconstrained space (``logp_and_grad`` and ``logp_batch``).
    num_paths : int
        Number of independent L-BFGS paths.
    num_draws : int
        Number of draws returned after importance resampling.
    random_seed : int or Generator, optional
        Makes starting points, ELBO draws and resampling reproducible.
    init : ndarray, optional
        Starting points: ``(num_paths, dim)`` or ``(dim,)`` (shared), in the
        unconstrained space. Default: uniform on ``(-jitter, jitter)``, like Stan.
    jitter : float, optional
        Without ``init``: the half-width of the uniform random starts
        (default 2, like Stan). With ``init``: uniform noise of this
        half-width added to each start (default 0, no noise).
    num_draws_per_path : int, optional
        Draws from each path's best approximation before resampling
        (default ``num_draws``).
    num_elbo_draws : int
        Monte Carlo draws for the ELBO at every iterate.
    history_size : int
        L-BFGS history ``J``.
    maxiter : int
        Maximum L-BFGS iterations per path.
    ftol, gtol : float
        Convergence tolerances (relative change of ``log p``; max-abs gradient).
        The default ``ftol=1e-8`` is tighter than pymc-extras' 1e-5: with a
        large ``|log p|`` (many observations) 1e-5 stops L-BFGS early in long,
        narrow valleys (kidiq: mean error 4.1 sd at 1e-5, 0.04 at 1e-8, for
        twice the gradient evaluations).
    importance_sampling : {"psis", "none"}
        ``"psis"`` resamples the pooled draws by Pareto-smoothed importance
        weights; ``"none"`` pools them with equal weight per path.
    replace : bool
        Resample with replacement (standard importance resampling).
    progressbar : bool
        Show a progress bar over paths.

    Returns
    -------
    PathfinderResult

    Raises
    ------
    PathfinderError
        When every path failed; the message lists each path's reason.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.pathfinder_core import multipath_pathfinder
    >>> P = np.array([[2.0, 0.9], [0.9, 1.0]])  # precision matrix
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ P @ x, lambda x: -P @ x,
    ...                        lambda X: -0.5 * np.einsum("ni,ij,nj->n", X, P, X))
    >>> res = multipath_pathfinder(d, num_paths=2, num_draws=500, random_seed=0)
    >>> res.draws.shape, res.paths[0].status
    ((500, 2), 'converged')
    >>> bool(np.allclose(res.covariance, np.linalg.inv(P), atol=0.2))
    True
    """
    if int(num_paths) < 1:
        raise ValueError(f"num_paths must be at least 1; got {num_paths}.")
    if int(num_draws) < 1:
        raise ValueError(f"num_draws must be at least 1; got {num_draws}.")
    if importance_sampling not in ("psis", "none"):
        raise ValueError(
            f"importance_sampling must be 'psis' or 'none'; got {importance_sampling!r}."
        )
    if int(getattr(density, "dim", 0)) < 1:
        raise ValueError("The density has no parameters (dim=0); there is nothing to fit.")
    num_paths, num_draws = int(num_paths), int(num_draws)
    num_draws_per_path = int(num_draws_per_path or num_draws)
    t0 = time.perf_counter()
    rng = np.random.default_rng(random_seed)
    starts = _initial_points(density, num_paths, init, jitter, rng)
    path_seeds = rng.spawn(num_paths)
    g0 = int(getattr(density, "grad_evals", 0))
    l0 = int(getattr(density, "logp_evals", 0))

    iterator = range(num_paths)
    if progressbar:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="Pathfinder paths", total=num_paths)
    # The linear algebra here is on tiny matrices (dim x 2J, 2J x 2J): BLAS threads
    # only add overhead, and on a busy machine a lot of it.
    with threadpool_limits(limits=1, user_api="blas"):
        paths = [
            single_path_pathfinder(
                density,
                starts[i],
                num_draws=num_draws_per_path,
                num_elbo_draws=num_elbo_draws,
                history_size=history_size,
                maxiter=maxiter,
                ftol=ftol,
                gtol=gtol,
                random_seed=path_seeds[i],
            )
            for i in iterator
        ]
    ok = [p for p in paths if p.ok]
    if not ok:
        reasons = "; ".join(f"path {i}: {p.status} ({p.message})" for i, p in enumerate(paths))
        raise PathfinderError(
            f"All {num_paths} Pathfinder paths failed: {reasons}. Try other starting points "
            "(init=..., jitter=...), a reparameterised model, or check that the log density "
            "is finite around its mode."
        )
    pooled = np.concatenate([p.draws for p in ok], axis=0)
    pooled_lp = np.concatenate([p.lp for p in ok])
    pooled_logq = np.concatenate([p.logq for p in ok])
    log_ratio = pooled_lp - pooled_logq
    finite = np.isfinite(log_ratio)
    if importance_sampling == "psis":
        log_w, pareto_k = psis_log_weights(log_ratio)
    else:
        log_w = np.where(finite, 0.0, -np.inf)
        log_w = log_w - _logsumexp(log_w[finite])
        try:
            _, pareto_k = psis_log_weights(log_ratio)
        except PathfinderError:
            pareto_k = np.inf
    w = np.exp(log_w)
    w = w / w.sum()
    n_finite = int(finite.sum())
    use_replace = replace or n_finite < num_draws
    idx = rng.choice(pooled.shape[0], size=num_draws, replace=use_replace, p=w)
    path_index = np.concatenate([np.full(p.draws.shape[0], i) for i, p in enumerate(ok)])
    mean, cov = _pooled_moments(ok, pooled[finite], log_w[finite], path_index[finite])
    return PathfinderResult(
        draws=pooled[idx],
        lp=pooled_lp[idx],
        logq=pooled_logq[idx],
        pareto_k=float(pareto_k),
        grad_evals=int(getattr(density, "grad_evals", 0)) - g0,
        logp_evals=int(getattr(density, "logp_evals", 0)) - l0,
        paths=paths,
        mean=mean,
        covariance=cov,
        inverse_metric_diag=np.diag(cov).copy(),
        ess=float(1.0 / (w * w).sum()),
        wall_time=time.perf_counter() - t0,
    )


# ---------------------------------------------------------------------------
# ArviZ output and the PyMC-facing function
# ---------------------------------------------------------------------------
def pathfinder_to_datatree(density: LogDensity, result: PathfinderResult) -> xr.DataTree:
    """Turn a :class:`PathfinderResult` into ArviZ data with the model's names.

    The ``posterior`` group holds the resampled draws (one chain);
    ``sample_stats`` holds per-draw ``lp`` and ``logq`` and, as attributes,
    ``pareto_k``, ``grad_evals``, ``logp_evals`` and ``num_paths``; the
    ``pathfinder_paths`` group holds per-path ``status``, ``message``,
    ``pareto_k``, ``grad_evals``, ``num_iterations``, ``best_iteration``,
    ``best_elbo``, the ``elbo`` trace (NaN-padded) and ``best_point``.

    Parameters
    ----------
    density : LogDensity
        The density the draws live on.
    result : PathfinderResult
        From :func:`multipath_pathfinder`.

    Returns
    -------
    xarray.DataTree

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.pathfinder_core import multipath_pathfinder, pathfinder_to_datatree
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, lambda x: -x,
    ...                        lambda X: -0.5 * (X * X).sum(1))
    >>> dt = pathfinder_to_datatree(d, multipath_pathfinder(d, num_draws=100, random_seed=0))
    >>> dt.posterior["x"].shape, str(dt.pathfinder_paths["status"].values[0])
    ((1, 100, 2), 'converged')
    """
    import xarray as xr

    from pymc_ext.arviz_io import to_datatree

    n_paths = len(result.paths)
    max_it = max([p.elbo.size for p in result.paths] + [1])
    elbo = np.full((n_paths, max_it), np.nan)
    for i, p in enumerate(result.paths):
        elbo[i, : p.elbo.size] = p.elbo
    best_point = np.full((n_paths, density.dim), np.nan)
    for i, p in enumerate(result.paths):
        if p.best_point is not None:
            best_point[i] = p.best_point
    path_dim = ("path",)
    groups = {
        "pathfinder_paths": {
            "status": xr.DataArray(np.array([p.status for p in result.paths]), dims=path_dim),
            "message": xr.DataArray(np.array([p.message for p in result.paths]), dims=path_dim),
            "pareto_k": xr.DataArray(np.array([p.pareto_k for p in result.paths]), dims=path_dim),
            "grad_evals": xr.DataArray(
                np.array([p.grad_evals for p in result.paths], dtype=int), dims=path_dim
            ),
            "num_iterations": xr.DataArray(
                np.array([p.num_iterations for p in result.paths], dtype=int), dims=path_dim
            ),
            "best_iteration": xr.DataArray(
                np.array([p.best_iteration for p in result.paths], dtype=int), dims=path_dim
            ),
            "best_elbo": xr.DataArray(np.array([p.best_elbo for p in result.paths]), dims=path_dim),
            "elbo": xr.DataArray(elbo, dims=("path", "iteration")),
            "start": xr.DataArray(
                np.stack([p.start for p in result.paths]), dims=("path", "unconstrained_dim")
            ),
            "best_point": xr.DataArray(best_point, dims=("path", "unconstrained_dim")),
        }
    }
    attrs = {
        "inference_library": "pymc_ext",
        "method": "pathfinder",
        "num_paths": n_paths,
        "pareto_k": float(result.pareto_k),
        "grad_evals": int(result.grad_evals),
    }
    return to_datatree(
        density,
        result.draws[None],
        sample_stats={"lp": result.lp[None], "logq": result.logq[None]},
        sample_stats_attrs={
            "pareto_k": float(result.pareto_k),
            "grad_evals": int(result.grad_evals),
            "logp_evals": int(result.logp_evals),
            "num_paths": n_paths,
            "num_paths_ok": int(result.num_paths_ok),
            "importance_ess": float(result.ess),
            "wall_time": float(result.wall_time),
        },
        attrs=attrs,
        extra_groups=groups,
    )


def density_pathfinder(
    density: LogDensity,
    num_paths: int = 4,
    num_draws: int = 1000,
    random_seed: int | np.random.Generator | None = None,
    *,
    progressbar: bool = True,
    **kwargs: Any,
) -> xr.DataTree:
    """Multi-path Pathfinder on any :class:`~pymc_ext.density.LogDensity`, as ArviZ data.

    :func:`multipath_pathfinder` followed by :func:`pathfinder_to_datatree`;
    :func:`pathfinder` (PyMC) and ``stan_bridge.pathfinder`` (Stan) call it.

    Parameters
    ----------
    density : LogDensity
        The target (``logp_and_grad``, ``logp_batch``; ``constrain_batch`` if
        it has one, for the model's own names and shapes).
    num_paths, num_draws, random_seed, progressbar, **kwargs
        As in :func:`multipath_pathfinder`.

    Returns
    -------
    xarray.DataTree
        As :func:`pathfinder_to_datatree` makes it.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.pathfinder_core import density_pathfinder
    >>> d = FunctionLogDensity(2, logp_fn=lambda x: -0.5 * x @ x, grad_fn=lambda x: -x)
    >>> dt = density_pathfinder(d, num_draws=100, random_seed=1, progressbar=False)
    >>> dt.posterior["x"].shape
    (1, 100, 2)
    """
    result = multipath_pathfinder(
        density,
        num_paths=num_paths,
        num_draws=num_draws,
        random_seed=random_seed,
        progressbar=progressbar,
        **kwargs,
    )
    return pathfinder_to_datatree(density, result)


def pathfinder(
    model: pm.Model | None = None,
    num_paths: int = 4,
    num_draws: int = 1000,
    random_seed: int | np.random.Generator | None = None,
    *,
    progressbar: bool = True,
    **kwargs: Any,
) -> xr.DataTree:
    """Multi-path Pathfinder on a PyMC model; returns ArviZ data.

    Parameters
    ----------
    model : pm.Model, optional
        Defaults to the model on the context stack.
    num_paths, num_draws, random_seed
        As in :func:`multipath_pathfinder`.
    progressbar : bool
        Show a progress bar over paths.
    **kwargs
        Passed to :func:`multipath_pathfinder` (``init``, ``jitter``,
        ``num_elbo_draws``, ``history_size``, ``maxiter``, ``ftol``, ``gtol``,
        ``importance_sampling``, ``replace``, ``num_draws_per_path``).

    Returns
    -------
    xarray.DataTree
        ``posterior`` (draws with the model's names, dims and coords,
        Deterministics included), ``sample_stats`` (``lp``, ``logq``; attributes
        ``pareto_k``, ``grad_evals``) and ``pathfinder_paths`` (per path).

    Examples
    --------
    >>> import pymc as pm
    >>> from pymc_ext.pathfinder_core import pathfinder
    >>> with pm.Model() as model:
    ...     mu = pm.Normal("mu", 0, 1)
    ...     sigma = pm.HalfNormal("sigma", 1)
    ...     y = pm.Normal("y", mu, sigma, observed=[0.1, -0.3, 0.5, 0.2])
    >>> dt = pathfinder(model, num_draws=200, random_seed=1, progressbar=False)
    >>> dt.posterior["sigma"].shape
    (1, 200)
    """
    from pymc_ext.pymc_model import log_density

    return density_pathfinder(
        log_density(model),
        num_paths=num_paths,
        num_draws=num_draws,
        random_seed=random_seed,
        progressbar=progressbar,
        **kwargs,
    )
