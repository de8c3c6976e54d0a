"""The one L-BFGS: maximise a log density, keeping every iterate and the curvature pairs.

A strong-Wolfe line search (Nocedal & Wright, Alg. 3.5/3.6) that backs off
from non-finite values, and the two-loop recursion. Pathfinder builds its
normal approximations from the iterates (:class:`LBFGSState`); the flow
sampler's mode search and seeding use :func:`lbfgs_maximize` to climb to a
mode. The status of every run is an :class:`LBFGSStatus`.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import NamedTuple

import numpy as np

from pymc_ext.density import LogDensity

__all__ = [
    "CLIMB_FTOL",
    "CLIMB_GTOL",
    "LBFGSInfo",
    "LBFGSState",
    "LBFGSStatus",
    "dense_inverse_hessian",
    "lbfgs",
    "lbfgs_maximize",
]


#: Tolerances for a climb to a mode: scipy's L-BFGS-B defaults (relative change in ``log p``
#: ``2.2e-9``, largest gradient entry ``1e-5``), which the mode search and the Laplace
#: seeding used before they moved onto this L-BFGS.
CLIMB_FTOL = 2.220446049250313e-09
CLIMB_GTOL = 1e-5


class LBFGSStatus(StrEnum):
    """How an L-BFGS run ended (a ``str``, so ``status == "converged"`` works).

    ``CONVERGED``: a tolerance was met, or no further progress is possible at
    numerical precision; ``MAXITER``: out of iterations (the iterates are still
    usable); ``FAILED``: non-finite density at the start, or a line search that
    failed early; ``RETURNED_START``: not a single step was taken.
    """

    CONVERGED = "converged"
    MAXITER = "maxiter"
    FAILED = "failed"
    RETURNED_START = "returned-start"


class LBFGSState(NamedTuple):
    """One accepted L-BFGS iterate: position, ``log p`` and its gradient."""

    x: np.ndarray
    logp: float
    grad: np.ndarray


class LBFGSInfo(NamedTuple):
    """How an L-BFGS run ended, with the curvature pairs it held at the end.

    Attributes
    ----------
    status : LBFGSStatus
    message : str
    grad_evals : int
        Calls of ``logp_and_grad``.
    s_history, y_history : tuple of ndarray
        The last ``history_size`` position and gradient differences (of ``-log p``).
    """

    status: LBFGSStatus
    message: str
    grad_evals: int
    s_history: tuple = ()
    y_history: tuple = ()


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
    a_prev, f_prev, dp_prev, g_prev = 0.0, f0, dphi0, g0
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
        a_prev, f_prev, dp_prev, g_prev = a, fa, da, ga
        a = 2.0 * a
        first = False
    else:
        # Out of evaluations while the objective still fell (it falls all the way to a
        # cliff, past which it is not finite: a mode on the support's edge). The last
        # sufficient-decrease point is progress; keep it rather than report none.
        res = (a_prev, f_prev, g_prev) if a_prev > 0 else None
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


def lbfgs(
    density: LogDensity,
    x0: np.ndarray,
    history_size: int,
    maxiter: int,
    ftol: float,
    gtol: float,
) -> tuple[list[LBFGSState], LBFGSInfo]:
    """Maximise ``log p`` with L-BFGS; returns every accepted iterate (start included).

    Parameters
    ----------
    density : LogDensity
    x0 : ndarray, shape (dim,)
        The starting point.
    history_size : int
        Curvature pairs kept.
    maxiter : int
        Most iterations.
    ftol : float
        Stop when the relative change in ``log p`` is at most this.
    gtol : float
        Stop when the largest gradient entry is at most this.

    Returns
    -------
    trace : list of LBFGSState
        Every accepted iterate (empty when the start is not finite).
    info : LBFGSInfo

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.blocks.lbfgs import lbfgs
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * ((x - 1.0) ** 2).sum())
    >>> trace, info = lbfgs(d, np.zeros(2), 6, 100, 1e-10, 1e-8)
    >>> info.status, np.round(trace[-1].x, 6).tolist()
    (<LBFGSStatus.CONVERGED: 'converged'>, [1.0, 1.0])
    """
    obj = _Objective(density)
    f, g = obj(x0)
    if not np.isfinite(f):
        return [], LBFGSInfo(
            LBFGSStatus.FAILED,
            "The log density or its gradient is not finite at the starting point.",
            obj.n,
        )
    x = np.asarray(x0, dtype=float).copy()
    trace = [LBFGSState(x.copy(), -f, -g)]
    S: list[np.ndarray] = []
    Y: list[np.ndarray] = []
    status, message = LBFGSStatus.MAXITER, f"L-BFGS reached maxiter={maxiter}."
    for _ in range(maxiter):
        if np.max(np.abs(g)) <= gtol:
            status, message = LBFGSStatus.CONVERGED, "gradient below gtol"
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
                    LBFGSStatus.RETURNED_START,
                    "The first line search found no step that increases the log density; "
                    "L-BFGS stayed at the starting point.",
                )
            elif len(trace) >= 3:
                # No more progress possible at numerical precision: a standard end.
                status, message = LBFGSStatus.CONVERGED, "line search could not improve further"
            else:
                status, message = LBFGSStatus.FAILED, "line search failed"
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
            status, message = LBFGSStatus.CONVERGED, "relative change in log density below ftol"
            break
    return trace, LBFGSInfo(status, message, obj.n, tuple(S), tuple(Y))


def dense_inverse_hessian(s_history: tuple, y_history: tuple, dim: int) -> np.ndarray:
    """The L-BFGS inverse Hessian of ``-log p`` as a dense matrix (the two-loop on each axis).

    Parameters
    ----------
    s_history, y_history : tuple of ndarray
        Curvature pairs, as in :class:`LBFGSInfo`.
    dim : int

    Returns
    -------
    ndarray, shape (dim, dim)
        Symmetric; the identity when there are no pairs.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.blocks.lbfgs import dense_inverse_hessian
    >>> dense_inverse_hessian((), (), 2).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    H = np.stack([_two_loop(e, list(s_history), list(y_history)) for e in np.eye(dim)], axis=1)
    return 0.5 * (H + H.T)


def lbfgs_maximize(
    density: LogDensity, x0: np.ndarray, maxiter: int = 200, history_size: int = 10
) -> tuple[np.ndarray | None, LBFGSInfo]:
    """Climb from ``x0`` to the top of its mode; ``None`` when no converged top was reached.

    The tolerances are scipy's L-BFGS-B defaults (relative change ``2.2e-9``,
    gradient ``1e-5``, 10 pairs).

    Parameters
    ----------
    density : LogDensity
    x0 : ndarray, shape (dim,)
    maxiter : int
    history_size : int

    Returns
    -------
    top : ndarray or None
        The mode, or ``None`` (a funnel's neck, an unbounded density, out of iterations).
    info : LBFGSInfo

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.blocks.lbfgs import lbfgs_maximize
    >>> d = FunctionLogDensity(1, lambda x: -0.5 * ((x - 3.0) ** 2).sum())
    >>> top, info = lbfgs_maximize(d, np.zeros(1))
    >>> round(float(top[0]), 4)
    3.0
    """
    trace, info = lbfgs(
        density, np.asarray(x0, dtype=float), history_size, maxiter, CLIMB_FTOL, CLIMB_GTOL
    )
    if info.status != LBFGSStatus.CONVERGED or not trace:
        return None, info
    return trace[-1].x, info
