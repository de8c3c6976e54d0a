"""Covariance regularisation: a pooled covariance with a ridge, and a Cholesky that never fails."""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["pooled_covariance", "safe_cholesky"]


def pooled_covariance(draws: np.ndarray) -> np.ndarray:
    """Covariance of draws (rows), with a tiny ridge so that it always has full rank.

    The ridge is ``1e-8`` times the mean variance; one draw gives the identity.

    Parameters
    ----------
    draws : ndarray, shape (n, dim)

    Returns
    -------
    ndarray, shape (dim, dim)

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.blocks.covariance import pooled_covariance
    >>> c = pooled_covariance(np.random.default_rng(0).normal(size=(4000, 2)))
    >>> np.round(np.diag(c), 1).tolist()
    [1.0, 1.0]
    """
    dim = draws.shape[1]
    covariance = np.cov(draws.T).reshape(dim, dim) if draws.shape[0] > 1 else np.eye(dim)
    return covariance + 1e-8 * max(1e-12, float(np.mean(np.diag(covariance)))) * np.eye(dim)


def safe_cholesky(covariance: np.ndarray, dim: int) -> np.ndarray:
    """Lower Cholesky factor of a covariance (or of ``diag(variances)``), repaired if needed.

    A matrix that is not positive definite has its eigenvalues floored at
    ``max(1e-8, 1e-8 * largest)``, with a warning that says so.

    Parameters
    ----------
    covariance : ndarray, shape (dim, dim) or (dim,)
        A covariance matrix, or the variances of a diagonal one.
    dim : int
        The dimension it must have.

    Returns
    -------
    ndarray, shape (dim, dim)

    Raises
    ------
    ValueError
        On a wrong shape or non-finite entries.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.blocks.covariance import safe_cholesky
    >>> safe_cholesky(np.array([4.0, 9.0]), 2).diagonal().tolist()
    [2.0, 3.0]
    """
    cov = np.asarray(covariance, dtype=float)
    if cov.ndim == 1:
        cov = np.diag(cov)
    if cov.shape != (dim, dim):
        raise ValueError(f"covariance must be ({dim}, {dim}) or ({dim},), got {cov.shape}.")
    if not np.all(np.isfinite(cov)):
        raise ValueError("covariance has non-finite entries; pass a finite covariance or None.")
    cov = 0.5 * (cov + cov.T)
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        vals, vecs = np.linalg.eigh(cov)
        floor = max(1e-8, 1e-8 * float(np.max(np.abs(vals))))
        warnings.warn(
            f"The covariance is not positive definite; eigenvalues were floored at {floor:.2g}.",
            stacklevel=3,
        )
        cov = (vecs * np.maximum(vals, floor)) @ vecs.T
        return np.linalg.cholesky(0.5 * (cov + cov.T))
