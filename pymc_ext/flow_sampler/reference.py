"""The tempering path's two ends: the broad reference ``q0`` and ``pi_beta`` between them.

:class:`GaussianReference` is ``q0``, a mixture of Gaussians with diagonal
covariances (:func:`default_reference` builds the broad one), and
:class:`TemperedDensity` is ``log pi_beta = (1 - beta) log q0 + beta log p``
as a :class:`~pymc_ext.density.LogDensity`, so the flow sampler's MALA kernel
runs on it unchanged.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp

from pymc_ext.density import BaseLogDensity, LogDensity

__all__ = ["GaussianReference", "TemperedDensity", "default_reference", "tempered_logp"]


class GaussianReference:
    """A mixture of Gaussians with diagonal covariances: the tempering's reference ``q0``.

    Parameters
    ----------
    means : ndarray, shape (k, dim)
    scales : ndarray, shape (k, dim)
        Standard deviations per component and coordinate.
    weights : ndarray, shape (k,), optional
        Mixture weights (default equal).

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flow_sampler.reference import GaussianReference
    >>> q0 = GaussianReference(np.zeros((1, 2)), np.full((1, 2), 2.0))
    >>> X = q0.sample(20000, np.random.default_rng(0))
    >>> round(float(X.std()), 1)
    2.0
    >>> lp, grad = q0.logp_and_grad(np.array([[2.0, 0.0]]))
    >>> grad.tolist()
    [[-0.5, -0.0]]
    """

    def __init__(
        self, means: np.ndarray, scales: np.ndarray, weights: np.ndarray | None = None
    ) -> None:
        self.means = np.atleast_2d(np.asarray(means, dtype=float))
        self.scales = np.broadcast_to(np.asarray(scales, dtype=float), self.means.shape).copy()
        k = self.means.shape[0]
        w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=float)
        if w.shape != (k,) or np.any(w < 0) or not w.sum() > 0:
            raise ValueError("weights must be k non-negative numbers, not all zero.")
        if np.any(~np.isfinite(self.scales)) or np.any(self.scales <= 0):
            raise ValueError("The reference's scales must be positive and finite.")
        self.log_weights = np.log(w / w.sum())
        self.dim = self.means.shape[1]

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` draws, shape ``(n, dim)``."""
        comp = rng.choice(self.means.shape[0], size=int(n), p=np.exp(self.log_weights))
        return self.means[comp] + self.scales[comp] * rng.standard_normal((int(n), self.dim))

    def _component_logp(self, X: np.ndarray) -> np.ndarray:
        z = (X[:, None, :] - self.means[None]) / self.scales[None]
        norm = np.log(self.scales).sum(-1) + 0.5 * self.dim * math.log(2 * math.pi)
        return self.log_weights[None] - 0.5 * (z * z).sum(-1) - norm[None]

    def logp(self, X: np.ndarray) -> np.ndarray:
        """Log density at each row of ``X``."""
        return logsumexp(self._component_logp(np.atleast_2d(X)), axis=1)

    def logp_and_grad(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Log density and gradient at each row of ``X``."""
        X = np.atleast_2d(X)
        comp = self._component_logp(X)
        lp = logsumexp(comp, axis=1)
        resp = np.exp(comp - lp[:, None])  # (n, k)
        grad = -np.einsum("nk,nkd->nd", resp,
                          (X[:, None, :] - self.means[None]) / self.scales[None] ** 2)
        return lp, grad


def default_reference(
    density: LogDensity,
    scale: float,
    centers: np.ndarray | None = None,
    center_scales: np.ndarray | None = None,
    inflate: float = 3.0,
) -> GaussianReference:
    """The broad reference: N(initial point, scale^2 I), plus inflated Gaussians at path centres.

    With ``centers`` (Pathfinder's distinct modes) the reference puts half its
    mass on N(initial point, scale^2 I) and half, split evenly, on
    N(centre, (inflate * centre scale)^2) per centre, so a posterior far
    from the initial point, or much narrower than ``scale``, is covered too.

    Parameters
    ----------
    density : LogDensity
    scale : float
        Standard deviation of the broad component, per coordinate.
    centers : ndarray, shape (k, dim), optional
    center_scales : ndarray, shape (k, dim) or (dim,), optional
        Standard deviations at the centres (default ``scale / inflate``).
    inflate : float
        Factor on ``center_scales``.

    Returns
    -------
    GaussianReference

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler.reference import default_reference
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x)
    >>> q0 = default_reference(d, 5.0, centers=np.array([[10.0, 10.0]]))
    >>> q0.means.tolist(), np.exp(q0.log_weights).round(2).tolist()
    ([[0.0, 0.0], [10.0, 10.0]], [0.5, 0.5])
    """
    if not scale > 0:
        raise ValueError(f"reference_scale must be positive, got {scale!r}.")
    dim = int(density.dim)
    x0 = np.asarray(density.initial_point(), dtype=float).reshape(dim)
    means, scales, weights = [x0], [np.full(dim, float(scale))], [1.0]
    if centers is not None and len(centers):
        centers = np.atleast_2d(np.asarray(centers, dtype=float))
        k = centers.shape[0]
        cs = (np.full((k, dim), scale / inflate) if center_scales is None
              else np.broadcast_to(np.asarray(center_scales, dtype=float), (k, dim)))
        for c, s in zip(centers, cs, strict=True):
            if np.all(np.isfinite(c)) and np.all(np.isfinite(s)):
                means.append(c)
                scales.append(np.clip(inflate * s, 1e-6, None))
                weights.append(1.0 / k)
    return GaussianReference(np.asarray(means), np.asarray(scales), np.asarray(weights))


def tempered_logp(logq: np.ndarray, logp: np.ndarray, beta: float) -> np.ndarray:
    """``(1 - beta) log q0 + beta log p``, with ``0 * -inf = 0`` at ``beta = 0``.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flow_sampler.reference import tempered_logp
    >>> tempered_logp(np.array([-1.0]), np.array([-np.inf]), 0.0).tolist()
    [-1.0]
    """
    part = np.where(np.isfinite(logp), beta * logp, -np.inf) if beta > 0 else 0.0
    return (1.0 - beta) * logq + part


class TemperedDensity(BaseLogDensity):
    """``log pi_beta = (1 - beta) log q0 + beta log p``, with the parts of the last batch kept.

    The MALA kernel sees a plain :class:`~pymc_ext.density.LogDensity`; the
    sampler reads ``last_logp`` / ``last_logq`` (the two parts at the rows of
    the last batched call) to keep each walker's ``log p`` and ``log q0``.
    Gradient evaluations are counted on ``density`` as usual.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler.reference import GaussianReference, TemperedDensity
    >>> d = FunctionLogDensity(1, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x)
    >>> t = TemperedDensity(d, GaussianReference(np.zeros((1, 1)), np.ones((1, 1))), 0.5)
    >>> lp, g = t.logp_and_grad_batch(np.array([[1.0]]))
    >>> bool(np.isclose(lp[0], 0.5 * -0.5 + 0.5 * t.last_logq[0]))
    True
    """

    def __init__(self, density: LogDensity, reference: GaussianReference, beta: float) -> None:
        super().__init__(int(density.dim))
        self.density, self.reference, self.beta = density, reference, float(beta)
        self.last_logp = self.last_logq = np.zeros(0)
        self.last_gp = self.last_gq = np.zeros((0, self.dim))

    def _logp_and_grad_batch(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lp, gp = self.density.logp_and_grad_batch(X)
        lq, gq = self.reference.logp_and_grad(X)
        ok = np.isfinite(lp) & np.all(np.isfinite(gp), axis=1)
        lp = np.where(ok, lp, -np.inf)
        gp = np.where(ok[:, None], gp, 0.0)
        self.last_logp, self.last_logq, self.last_gp, self.last_gq = lp, lq, gp, gq
        b = self.beta
        return tempered_logp(lq, lp, b), (1.0 - b) * gq + b * gp

    def _logp_batch(self, X: np.ndarray) -> np.ndarray:
        lp = self.density.logp_batch(X)
        lp = np.where(np.isfinite(lp), lp, -np.inf)
        return tempered_logp(self.reference.logp(X), lp, self.beta)

    def _logp(self, x: np.ndarray) -> float:
        return float(self._logp_batch(np.asarray(x, dtype=float)[None])[0])

    def _logp_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        lp, g = self._logp_and_grad_batch(np.asarray(x, dtype=float)[None])
        return float(lp[0]), g[0]
