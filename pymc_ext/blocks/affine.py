"""An affine map ``x = mean + L z``, with ``L`` diagonal, dense, or low-rank plus diagonal.

A warm start's covariance ``Sigma`` gives the map whose ``L L^T`` is
``Sigma`` (or its diagonal, or its leading low-rank part): in ``z`` a posterior
that the warm start describes well is close to a standard normal. Used to
hand nutpie the warm start's metric as a reparametrisation
(:mod:`pymc_ext.pymc_adapter.reparam`).

:class:`AffineReparam` holds the map in one of three forms, all ``O(dim)`` or
``O(dim * rank)`` to apply except the dense one:

- ``diag``: ``L = diag(s)``;
- ``dense``: ``L`` the Cholesky factor of ``Sigma``;
- ``lowrank``: ``Sigma = S (I + U diag(lam - 1) U^T) S`` with ``S`` the
  marginal standard deviations and ``U`` the ``rank`` eigenvectors of the
  correlation matrix whose eigenvalues ``lam`` are farthest from 1;
  ``L = S (I + U diag(sqrt(lam) - 1) U^T)``, the symmetric square root.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg

from pymc_ext.blocks.covariance import safe_cholesky

__all__ = ["AffineReparam", "affine_reparam", "REPARAM_KINDS"]

#: The forms an :class:`AffineReparam` can take.
REPARAM_KINDS = ("diag", "dense", "lowrank")


@dataclass(frozen=True)
class AffineReparam:
    """The affine map ``x = mean + L z`` (diagonal, dense or low-rank-plus-diagonal ``L``).

    Build it with :func:`affine_reparam`. Arrays broadcast over leading axes:
    ``forward`` and ``inverse`` take ``(..., dim)``.

    Attributes
    ----------
    kind : {"diag", "dense", "lowrank"}
    mean : ndarray, shape (dim,)
    scale : ndarray, shape (dim,)
        ``diag`` and ``lowrank``: the marginal standard deviations ``s``.
    chol : ndarray, shape (dim, dim) or None
        ``dense``: the lower Cholesky factor.
    vecs : ndarray, shape (dim, rank) or None
        ``lowrank``: orthonormal directions ``U``.
    vals : ndarray, shape (rank,) or None
        ``lowrank``: the correlation matrix's eigenvalues along ``vecs``.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.blocks.affine import affine_reparam
    >>> r = affine_reparam(np.zeros(2), np.array([[4.0, 1.0], [1.0, 1.0]]), "dense")
    >>> r.forward(np.array([1.0, 0.0])).tolist()
    [2.0, 0.5]
    >>> bool(np.allclose(r.inverse(r.forward(np.array([0.3, -1.2]))), [0.3, -1.2]))
    True
    """

    kind: str
    mean: np.ndarray
    scale: np.ndarray
    chol: np.ndarray | None = None
    vecs: np.ndarray | None = None
    vals: np.ndarray | None = None

    @property
    def dim(self) -> int:
        """Number of parameters."""
        return int(self.mean.shape[0])

    @property
    def rank(self) -> int:
        """Rank of the low-rank part (0 unless ``kind="lowrank"``)."""
        return 0 if self.vals is None else int(self.vals.shape[0])

    def forward(self, z: np.ndarray) -> np.ndarray:
        """``x = mean + L z``."""
        z = np.asarray(z, dtype=float)
        if self.kind == "dense":
            return self.mean + z @ self.chol.T
        if self.kind == "lowrank":
            z = z + ((z @ self.vecs) * (np.sqrt(self.vals) - 1.0)) @ self.vecs.T
        return self.mean + self.scale * z

    def inverse(self, x: np.ndarray) -> np.ndarray:
        """``z = L^{-1} (x - mean)``."""
        w = np.asarray(x, dtype=float) - self.mean
        if self.kind == "dense":
            flat = w.reshape(-1, self.dim).T
            return linalg.solve_triangular(self.chol, flat, lower=True).T.reshape(w.shape)
        w = w / self.scale
        if self.kind == "lowrank":
            w = w + ((w @ self.vecs) * (self.vals**-0.5 - 1.0)) @ self.vecs.T
        return w

    def gradient_to_x(self, grad_z: np.ndarray) -> np.ndarray:
        """The gradient in ``x`` from the gradient in ``z``: ``L^{-T} grad_z``."""
        g = np.asarray(grad_z, dtype=float)
        if self.kind == "dense":
            flat = g.reshape(-1, self.dim).T
            return linalg.solve_triangular(self.chol.T, flat, lower=False).T.reshape(g.shape)
        if self.kind == "lowrank":
            g = g + ((g @ self.vecs) * (self.vals**-0.5 - 1.0)) @ self.vecs.T
        return g / self.scale

    def log_det(self) -> float:
        """``log |det L|``: the constant the reparametrised density leaves out."""
        if self.kind == "dense":
            return float(np.sum(np.log(np.diag(self.chol))))
        out = float(np.sum(np.log(self.scale)))
        if self.kind == "lowrank":
            out += 0.5 * float(np.sum(np.log(self.vals)))
        return out

    def matrix(self) -> np.ndarray:
        """``L`` as a dense ``(dim, dim)`` matrix (column ``i`` is ``forward(e_i) - mean``)."""
        return (self.forward(np.eye(self.dim)) - self.mean).T


def affine_reparam(
    mean: np.ndarray,
    covariance: np.ndarray,
    kind: str = "dense",
    rank: int | None = None,
    variances: np.ndarray | None = None,
) -> AffineReparam:
    """The affine map whose ``L L^T`` is ``covariance`` (or its diagonal, or a low-rank part).

    Parameters
    ----------
    mean : ndarray, shape (dim,)
        Where ``z = 0`` lands (the warm start's mean).
    covariance : ndarray, shape (dim, dim)
        The warm start's covariance. A matrix that is not positive definite
        has its eigenvalues floored (with a warning).
    kind : {"diag", "dense", "lowrank"}
        The form of ``L``.
    rank : int, optional
        Directions kept by ``lowrank`` (default ``min(dim, 8)``).
    variances : ndarray, shape (dim,), optional
        Marginal variances to use for ``diag`` instead of the covariance's
        diagonal (e.g. Pathfinder's ``inverse_metric_diag``); entries that are
        not finite and positive fall back to the diagonal.

    Returns
    -------
    AffineReparam

    Raises
    ------
    ValueError
        For an unknown ``kind``, mismatched shapes, or non-finite entries.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.blocks.affine import affine_reparam
    >>> cov = np.array([[1.0, 0.9], [0.9, 1.0]])
    >>> r = affine_reparam(np.zeros(2), cov, "lowrank", rank=2)
    >>> bool(np.allclose(r.matrix() @ r.matrix().T, cov))
    True
    >>> affine_reparam(np.zeros(2), cov, "diag").matrix().tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    if kind not in REPARAM_KINDS:
        raise ValueError(f"kind must be one of {REPARAM_KINDS}; got {kind!r}.")
    mean = np.asarray(mean, dtype=float).ravel()
    dim = mean.shape[0]
    cov = np.asarray(covariance, dtype=float)
    if cov.shape != (dim, dim):
        raise ValueError(f"covariance must be ({dim}, {dim}) to match the mean; got {cov.shape}.")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(cov))):
        raise ValueError("mean and covariance must be finite; the warm start gave NaN or inf.")
    cov = 0.5 * (cov + cov.T)
    chol = safe_cholesky(cov, dim)  # floors a bad spectrum (with a warning)
    cov = chol @ chol.T
    if kind == "dense":
        return AffineReparam("dense", mean, np.ones(dim), chol=chol)
    var = np.diag(cov).copy()
    if kind == "diag":
        if variances is not None:
            v = np.asarray(variances, dtype=float).ravel()
            if v.shape == (dim,):
                var = np.where(np.isfinite(v) & (v > 0), v, var)
        return AffineReparam("diag", mean, np.sqrt(var))
    scale = np.sqrt(var)
    corr = cov / np.outer(scale, scale)
    vals, vecs = np.linalg.eigh(0.5 * (corr + corr.T))
    vals = np.clip(vals, 1e-12, None)
    r = int(max(1, min(dim, 8 if rank is None else rank)))
    order = np.argsort(-np.abs(np.log(vals)))[:r]
    return AffineReparam(
        "lowrank", mean, scale, vecs=np.ascontiguousarray(vecs[:, order]), vals=vals[order]
    )
