"""Seeding flows and walkers: overdispersed multi-path Pathfinder draws (:func:`pathfinder_seed`).

When Pathfinder fails on every path, the fallback is the one L-BFGS of the
package (:func:`pymc_ext.blocks.lbfgs.lbfgs`) from the same starts, with a
normal from its inverse Hessian (:func:`lbfgs_laplace_paths`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from pymc_ext.blocks.covariance import pooled_covariance
from pymc_ext.blocks.lbfgs import CLIMB_FTOL, CLIMB_GTOL, dense_inverse_hessian, lbfgs
from pymc_ext.density import LogDensity
from pymc_ext.flows.fit_info import FlowFitError
from pymc_ext.vi.multipath import multipath_pathfinder
from pymc_ext.vi.result import PathfinderError, PathfinderResult

__all__ = [
    "SeedMethod",
    "SeedResult",
    "lbfgs_laplace_paths",
    "overdispersed_inits",
    "path_draws_from_result",
    "pathfinder_seed",
]

#: scipy's L-BFGS-B defaults, which the fallback used before it moved onto the one L-BFGS.
LAPLACE_MAXITER = 500
LAPLACE_HISTORY = 10


class SeedMethod(StrEnum):
    """How a :class:`SeedResult` was made (a StrEnum: compares equal to its string).

    Examples
    --------
    >>> from pymc_ext.flows.seeding import SeedMethod
    >>> SeedMethod.LBFGS_LAPLACE == "lbfgs_laplace"
    True
    """

    MULTIPATH_PATHFINDER = "multipath_pathfinder"
    LBFGS_LAPLACE = "lbfgs_laplace"
    TEMPERING = "tempering"


@dataclass
class SeedResult:
    """Starting draws for flows and walkers, from multi-path Pathfinder (or its fallback).

    Attributes
    ----------
    draws : ndarray, shape (n, dim)
        Draws pooled over the paths, the same number from each path (not
        importance-resampled, so every mode a path found keeps its share).
    path_index : ndarray, shape (n,)
        Which path each draw came from.
    centers : ndarray, shape (n_paths, dim)
        Each path's centre (the mean of its normal approximation).
    path_scales : ndarray, shape (n_paths, dim)
        Each path's standard deviations (within-mode scales).
    mean, covariance : ndarray
        Mean and covariance of ``draws`` (the standardisation for flows).
    within_variance : ndarray, shape (dim,)
        Average of the per-path variances: a within-mode inverse metric.
    grad_evals : int
        Gradient evaluations spent.
    method : str
        A :class:`SeedMethod`: ``"multipath_pathfinder"``, ``"lbfgs_laplace"``
        (the fallback) or ``"tempering"`` (a tempering exploration's walkers,
        :mod:`pymc_ext.flow_sampler.exploration`; then ``centers`` are its modes
        and ``path_index`` says which mode each draw is in).
    pathfinder : object
        The PathfinderResult, when Pathfinder ran.
    pareto_k : float
        Pathfinder's Pareto k (nan for the fallback).
    path_ok : ndarray of bool, shape (n_paths,)
        Whether each kept path's optimisation ended well.
    census : ModeCensus or None
        For a tempering seed (:func:`~pymc_ext.flow_sampler.tempering_seed`):
        the modes the explorations found, with their weights.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flows import SeedResult
    >>> s = SeedResult(np.zeros((4, 2)), np.zeros(4, int), np.zeros((1, 2)), np.ones((1, 2)),
    ...                np.zeros(2), np.eye(2), np.ones(2), grad_evals=0, method="lbfgs_laplace")
    >>> s.draws.shape
    (4, 2)
    """

    draws: np.ndarray
    path_index: np.ndarray
    centers: np.ndarray
    path_scales: np.ndarray
    mean: np.ndarray
    covariance: np.ndarray
    within_variance: np.ndarray
    grad_evals: int
    method: str
    pathfinder: Any = None
    pareto_k: float = float("nan")
    path_ok: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    census: Any = None


def overdispersed_inits(
    density: LogDensity, num_paths: int, rng: np.random.Generator, init_scale: float
) -> np.ndarray:
    """Overdispersed starting points around the density's initial point.

    Path ``i`` starts at ``initial_point + U(-s_i, s_i)`` per coordinate, where
    ``s_i`` cycles through ``init_scale``, ``2 * init_scale`` and
    ``4 * init_scale``: a mode whose basin does not reach the middle is still
    found by the wider starts.

    Parameters
    ----------
    density : LogDensity
    num_paths : int
    rng : numpy.random.Generator
    init_scale : float

    Returns
    -------
    ndarray, shape (num_paths, dim)

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flows.seeding import overdispersed_inits
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x)
    >>> inits = overdispersed_inits(d, 3, np.random.default_rng(0), 1.0)
    >>> inits.shape, bool(np.all(np.abs(inits[0]) <= 1.0))
    ((3, 2), True)
    """
    center = np.asarray(density.initial_point(), dtype=float).reshape(density.dim)
    widths = init_scale * 2.0 ** (np.arange(num_paths) % 3)
    return center + widths[:, None] * rng.uniform(-1.0, 1.0, size=(num_paths, density.dim))


def lbfgs_laplace_paths(
    density: LogDensity,
    num_paths: int,
    num_draws_per_path: int,
    rng: np.random.Generator,
    init_scale: float,
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[bool]]:
    """Fallback seeding: L-BFGS from overdispersed starts, then a Laplace-style normal.

    Each path climbs with :func:`pymc_ext.blocks.lbfgs.lbfgs` (scipy's
    L-BFGS-B default tolerances, at most 500 iterations) and draws from a
    normal at the top whose covariance is the L-BFGS inverse Hessian
    (:func:`~pymc_ext.blocks.lbfgs.dense_inverse_hessian`).

    Parameters
    ----------
    density : LogDensity
    num_paths : int
    num_draws_per_path : int
    rng : numpy.random.Generator
    init_scale : float
        As in :func:`overdispersed_inits`.

    Returns
    -------
    draws, centers, scales : list of ndarray
        Per path: ``(num_draws_per_path, dim)`` draws, the top, the standard deviations.
    ok : list of bool
        Whether the climb ended at a finite log density.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flows.seeding import lbfgs_laplace_paths
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * ((x - 1) ** 2).sum(), grad_fn=lambda x: 1 - x)
    >>> draws, centers, scales, ok = lbfgs_laplace_paths(d, 2, 50, np.random.default_rng(0), 1.0)
    >>> np.round(centers[0], 3).tolist(), ok
    ([1.0, 1.0], [True, True])
    """
    inits = overdispersed_inits(density, num_paths, rng, init_scale)
    draws, centers, scales, ok = [], [], [], []
    dim = density.dim
    for x0 in inits:
        trace, info = lbfgs(
            density, x0, LAPLACE_HISTORY, LAPLACE_MAXITER, CLIMB_FTOL, CLIMB_GTOL
        )
        x_opt = np.asarray(trace[-1].x if trace else x0, dtype=float)
        cov = dense_inverse_hessian(info.s_history, info.y_history, dim)
        try:
            chol = np.linalg.cholesky(cov + 1e-10 * np.eye(dim))
        except np.linalg.LinAlgError:
            chol, cov = np.eye(dim), np.eye(dim)
        # Keep the normal sane when the L-BFGS memory says little about some directions.
        sd = np.sqrt(np.clip(np.diag(cov), 1e-12, None))
        draws.append(x_opt + rng.standard_normal((num_draws_per_path, dim)) @ chol.T)
        centers.append(x_opt)
        scales.append(sd)
        ok.append(bool(trace) and bool(np.isfinite(trace[-1].logp)))
    return draws, centers, scales, ok


def path_draws_from_result(result: PathfinderResult) -> list[np.ndarray] | None:
    """Per-path (not resampled) draws of the usable paths of a Pathfinder result.

    Draws with a non-finite coordinate or log density are dropped; paths with
    fewer than 2 draws left are left out. ``None`` when no path is left.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.vi.multipath import multipath_pathfinder
    >>> from pymc_ext.flows.seeding import path_draws_from_result
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x)
    >>> res = multipath_pathfinder(d, num_paths=2, num_draws=40, random_seed=0)
    >>> [p.shape[1] for p in path_draws_from_result(res)]
    [2, 2]
    """
    out = []
    for p in result.paths:
        if not p.ok or p.draws is None:
            continue
        d = np.asarray(p.draws, dtype=float)
        good = np.all(np.isfinite(d), axis=1)
        if p.lp is not None:
            good &= np.isfinite(np.asarray(p.lp, dtype=float))
        if d.ndim == 2 and good.sum() >= 2:
            out.append(d[good])
    return out or None


def _pathfinder_paths(
    density: LogDensity,
    inits: np.ndarray,
    rng: np.random.Generator,
    kwargs: dict[str, Any],
) -> tuple[list[np.ndarray], PathfinderResult, float] | None:
    """Multi-path Pathfinder's per-path draws, result and Pareto k; None when every path failed."""
    try:
        result = multipath_pathfinder(density, random_seed=rng, init=inits, **kwargs)
    except PathfinderError as err:
        warnings.warn(
            f"multi-path Pathfinder failed ({type(err).__name__}: {err}); seeding from "
            "L-BFGS + Laplace approximations instead.",
            stacklevel=3,
        )
        return None
    path_draws = path_draws_from_result(result)
    if path_draws is None:
        path_draws = [np.asarray(result.draws, dtype=float).reshape(-1, density.dim)]
    pareto_k = float(np.max(np.atleast_1d(result.pareto_k)))
    return path_draws, result, pareto_k


def _pool(
    path_draws: list[np.ndarray], num_draws: int, rng: np.random.Generator
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """The usable paths, and ``num_draws`` draws with the same number from each (shuffled)."""
    keep = [i for i, d in enumerate(path_draws) if d.shape[0] >= 2 and np.all(np.isfinite(d))]
    if not keep:
        raise FlowFitError(
            "No Pathfinder path produced finite draws. Check that the log density is finite "
            "somewhere near the initial point (pass init_scale smaller, or fix the model)."
        )
    per = max(2, int(math.ceil(num_draws / len(keep))))
    chunks, index = [], []
    for i in keep:
        d = path_draws[i]
        sel = rng.choice(d.shape[0], size=per, replace=d.shape[0] < per)
        chunks.append(d[sel])
        index.append(np.full(per, i))
    draws = np.concatenate(chunks)
    path_index = np.concatenate(index)
    pick = rng.permutation(draws.shape[0])[:num_draws]
    return keep, draws[pick], path_index[pick]


def pathfinder_seed(
    density: LogDensity,
    *,
    num_paths: int = 16,
    num_draws: int = 1024,
    random_seed: int | np.random.Generator | None = None,
    init_scale: float = 2.0,
    pathfinder_kwargs: dict[str, Any] | None = None,
) -> SeedResult:
    """Overdispersed multi-path Pathfinder draws, pooled over paths, to seed flows and walkers.

    Each path starts from an overdispersed point: the density's initial point
    (when it has one) plus ``U(-s, s)`` per coordinate, where ``s`` cycles
    through ``init_scale``, ``2 * init_scale`` and ``4 * init_scale`` over the
    paths, so separate modes tend to get separate paths even when one wide
    mode's basin covers the middle. The draws are pooled with the
    same number from every path: unlike Pathfinder's importance resampling,
    this keeps every mode that any path found (the MCMC corrects the weights).

    Uses :func:`pymc_ext.vi.multipath.multipath_pathfinder`; when every
    path fails (:class:`~pymc_ext.vi.result.PathfinderError`), L-BFGS
    from the same starts with a normal from the L-BFGS inverse Hessian
    (``method="lbfgs_laplace"``, with a warning).

    Parameters
    ----------
    density : LogDensity
    num_paths : int
        Number of paths (starts).
    num_draws : int
        Total draws returned (split evenly over the paths).
    random_seed : int or Generator, optional
    init_scale : float
        Smallest half-width of the uniform jitter of the starts.
    pathfinder_kwargs : dict, optional
        Passed on to ``multipath_pathfinder`` (default ``maxiter=100`` per path).

    Returns
    -------
    SeedResult

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flows import pathfinder_seed
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x)
    >>> seed = pathfinder_seed(d, num_paths=2, num_draws=100, random_seed=0)
    >>> seed.draws.shape
    (100, 2)
    """
    if num_paths < 1:
        raise ValueError(f"num_paths must be >= 1, got {num_paths}.")
    rng = np.random.default_rng(random_seed)
    grad_before = density.grad_evals
    per_path = max(2, int(math.ceil(num_draws / num_paths)))
    inits = overdispersed_inits(density, num_paths, rng, init_scale)
    # maxiter: the best-ELBO iterate comes early; on funnels L-BFGS otherwise runs down
    # the neck for its whole budget, at a full ELBO evaluation per iteration.
    kwargs = {"num_draws_per_path": per_path, "maxiter": 100, **(pathfinder_kwargs or {})}
    found = _pathfinder_paths(density, inits, rng, {"num_paths": num_paths,
                                                    "num_draws": num_draws, **kwargs})
    if found is None:
        method, result, pareto_k = SeedMethod.LBFGS_LAPLACE, None, float("nan")
        path_draws, centers, scales, ok = lbfgs_laplace_paths(
            density, num_paths, per_path, rng, init_scale
        )
    else:
        method = SeedMethod.MULTIPATH_PATHFINDER
        path_draws, result, pareto_k = found
        centers = [d.mean(0) for d in path_draws]
        scales = [d.std(0) + 1e-12 for d in path_draws]
        ok = [True] * len(path_draws)
    keep, draws, path_index = _pool(path_draws, num_draws, rng)
    return _seed_result(draws, path_index, keep, centers, scales, ok,
                        grad_evals=density.grad_evals - grad_before, method=method,
                        pathfinder=result, pareto_k=pareto_k)


def _seed_result(
    draws: np.ndarray,
    path_index: np.ndarray,
    keep: list[int],
    centers: list[np.ndarray],
    scales: list[np.ndarray],
    ok: list[bool],
    **fields: Any,
) -> SeedResult:
    scales_a = np.asarray([scales[i] for i in keep])
    return SeedResult(
        draws=draws,
        path_index=path_index,
        centers=np.asarray([centers[i] for i in keep]),
        path_scales=scales_a,
        mean=draws.mean(0),
        covariance=pooled_covariance(draws),
        within_variance=np.mean(scales_a**2, axis=0),
        path_ok=np.asarray([ok[i] for i in keep], dtype=bool),
        **fields,
    )
