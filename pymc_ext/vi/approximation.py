"""The normal approximation Pathfinder builds from the L-BFGS history (paper, Algorithms 3-5).

At every L-BFGS iterate the ``(s, y)`` pairs give the BFGS inverse Hessian in
its low-rank-plus-diagonal form ``diag(alpha) + beta gamma beta^T``; the
approximation is centred one quasi-Newton step from the iterate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.linalg import solve_triangular

from pymc_ext.blocks.lbfgs import LBFGSState

__all__ = [
    "NormalApproximation",
    "bfgs_approximation",
    "path_approximations",
    "update_diagonal",
]

_LOG_2PI = math.log(2.0 * math.pi)


def update_diagonal(alpha: np.ndarray, s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inverse-Hessian diagonal update (paper Alg. 3; Gilbert & Lemaréchal 1989).

    Returns ``alpha`` unchanged when the update is not finite and positive.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.vi.approximation import update_diagonal
    >>> update_diagonal(np.ones(2), np.array([1.0, 0.0]), np.array([2.0, 0.0]))
    array([0.5, 0.5])
    """
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
    >>> from pymc_ext.vi.approximation import NormalApproximation
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
        """Dimension of the space."""
        return int(self.mean.shape[0])

    @property
    def logdet(self) -> float:
        """Log-determinant of the covariance (factorises on first use)."""
        self.prepare()
        return self._logdet

    def covariance(self) -> np.ndarray:
        """Dense covariance matrix ``diag(alpha) + beta gamma beta^T``."""
        return np.diag(self.alpha) + self.beta @ self.gamma @ self.beta.T

    def prepare(self) -> None:
        """Factorise the covariance once (raises ``LinAlgError`` when it is not PD)."""
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
        self.prepare()
        kind, fac = self._factor  # type: ignore[misc]
        if kind == "lowrank":
            sqrt_a, q, chol = fac
            qtu = u @ q
            z = u + (qtu @ (chol - np.eye(chol.shape[0])).T) @ q.T
            return self.mean + z * sqrt_a
        return self.mean + u @ fac.T

    def logq_from_u(self, u: np.ndarray) -> np.ndarray:
        """``log q`` of ``transform(u)``, from the standard-normal ``u``."""
        self.prepare()
        return -0.5 * (self._logdet + (u * u).sum(axis=-1) + self.dim * _LOG_2PI)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` draws and their ``log q``."""
        u = rng.standard_normal((n, self.dim))
        return self.transform(u), self.logq_from_u(u)


def bfgs_approximation(
    x: np.ndarray, grad: np.ndarray, alpha: np.ndarray, S: np.ndarray, Z: np.ndarray
) -> NormalApproximation:
    """Paper Alg. 4 (BFGS-Mat): inverse Hessian from ``(alpha, S, Z)`` and the mean.

    ``S`` and ``Z`` are ``(dim, J)``; ``Z`` holds ``y = grad f(x_{k+1}) - grad f(x_k)``
    with ``f = -log p``; ``grad`` is the gradient of ``log p`` at ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.vi.approximation import bfgs_approximation
    >>> S, Z = np.array([[1.0], [0.0]]), np.array([[2.0], [0.0]])
    >>> q = bfgs_approximation(np.ones(2), -np.ones(2), np.ones(2), S, Z)
    >>> np.round(np.diag(q.covariance()), 6).tolist()
    [0.5, 1.0]
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


def _finite_approximation(
    cur: LBFGSState, alpha: np.ndarray, S: np.ndarray, Z: np.ndarray
) -> NormalApproximation | None:
    """The factorised approximation at ``cur``, or None when it is not finite."""
    try:
        with np.errstate(all="ignore"):
            q = bfgs_approximation(cur.x, cur.grad, alpha, S, Z)
            q.prepare()
        if not (np.all(np.isfinite(q.mean)) and np.isfinite(q.logdet)):
            return None
    except (np.linalg.LinAlgError, ValueError):
        return None
    return q


def path_approximations(
    trace: Sequence[LBFGSState], history_size: int
) -> list[NormalApproximation | None]:
    """The approximation at every L-BFGS iterate after the start (None where it broke down).

    Uses the running diagonal update and the last ``history_size`` curvature pairs.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.blocks.lbfgs import lbfgs
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.vi.approximation import path_approximations
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, lambda x: -x)
    >>> trace, _ = lbfgs(d, np.array([1.0, -2.0]), 6, 100, 1e-8, 1e-8)
    >>> qs = path_approximations(trace, 6)
    >>> len(qs) == len(trace) - 1, np.round(qs[-1].mean, 6).tolist()
    (True, [0.0, 0.0])
    """
    dim = trace[0].x.shape[0]
    alpha = np.ones(dim)
    S_hist: list[np.ndarray] = []
    Z_hist: list[np.ndarray] = []
    approxs: list[NormalApproximation | None] = []
    for prev, cur in zip(trace[:-1], trace[1:], strict=True):
        s = cur.x - prev.x
        z = prev.grad - cur.grad  # = grad f(x_{k+1}) - grad f(x_k), f = -log p
        if float(s @ z) > 1e-12 * float(z @ z):
            alpha = update_diagonal(alpha, s, z)
            S_hist.append(s)
            Z_hist.append(z)
            if len(S_hist) > history_size:
                S_hist.pop(0)
                Z_hist.pop(0)
        S = np.stack(S_hist, axis=1) if S_hist else np.zeros((dim, 0))
        Z = np.stack(Z_hist, axis=1) if Z_hist else np.zeros((dim, 0))
        approxs.append(_finite_approximation(cur, alpha, S, Z))
    return approxs
