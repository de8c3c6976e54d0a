"""Multi-path Pathfinder: several single paths, pooled and importance-resampled with PSIS.

Works on any :class:`~pymc_ext.density.LogDensity` and never sees PyMC or
Stan. The weights come from :func:`pymc_ext.blocks.importance.psis_log_weights`
(ArviZ's PSIS).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import numpy as np
from scipy.special import logsumexp
from threadpoolctl import threadpool_limits

from pymc_ext.blocks.importance import psis_log_weights
from pymc_ext.blocks.progress import track
from pymc_ext.density import LogDensity
from pymc_ext.vi.config import PathfinderConfig
from pymc_ext.vi.result import PathfinderError, PathfinderResult, PathResult
from pymc_ext.vi.single_path import single_path_pathfinder

__all__ = ["multipath_pathfinder", "initial_points", "pooled_moments"]


def multipath_pathfinder(
    density: LogDensity,
    num_paths: int | None = None,
    num_draws: int | None = None,
    random_seed: int | np.random.Generator | None = None,
    *,
    init: np.ndarray | Mapping[str, Any] | None = None,
    config: PathfinderConfig | None = None,
    progressbar: bool = False,
    **overrides: Any,
) -> PathfinderResult:
    """Multi-path Pathfinder on any :class:`~pymc_ext.density.LogDensity`.

    Parameters
    ----------
    density : LogDensity
        Target on the unconstrained space (``logp_and_grad`` and ``logp_batch``).
    num_paths : int, optional
        Number of independent L-BFGS paths (default 4, or ``config``'s).
    num_draws : int, optional
        Number of draws returned after importance resampling (default 1000).
    random_seed : int or Generator, optional
        Makes starting points, ELBO draws and resampling reproducible.
    init : ndarray or dict, optional
        Starting points: ``(num_paths, dim)`` or ``(dim,)`` (shared), in the
        unconstrained space, or a dict ``name -> value`` of every free variable
        in the model's own space (transformed for you). Default: uniform on
        ``(-jitter, jitter)``, like Stan.
    config : PathfinderConfig, optional
        The options; :class:`~pymc_ext.vi.config.PathfinderConfig` documents each.
    progressbar : bool
        Show a progress bar over paths.
    **overrides
        Fields of :class:`~pymc_ext.vi.config.PathfinderConfig` that replace
        ``config``'s: ``jitter``, ``num_draws_per_path``, ``num_elbo_draws``,
        ``history_size``, ``maxiter``, ``ftol``, ``gtol``, ``importance_sampling``
        (``"psis"`` or ``"none"``), ``replace``.

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
    >>> from pymc_ext.vi.multipath import multipath_pathfinder
    >>> P = np.array([[2.0, 0.9], [0.9, 1.0]])  # precision matrix
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ P @ x, lambda x: -P @ x,
    ...                        lambda X: -0.5 * np.einsum("ni,ij,nj->n", X, P, X))
    >>> res = multipath_pathfinder(d, num_paths=2, num_draws=500, random_seed=0)
    >>> res.draws.shape, str(res.paths[0].status)
    ((500, 2), 'converged')
    >>> bool(np.allclose(res.covariance, np.linalg.inv(P), atol=0.2))
    True
    """
    cfg = _resolve_config(density, config, num_paths, num_draws, overrides)
    t0 = time.perf_counter()
    rng = np.random.default_rng(random_seed)
    starts = initial_points(density, cfg.num_paths, init, cfg.jitter, rng)
    path_seeds = rng.spawn(cfg.num_paths)
    g0, l0 = density.grad_evals, density.logp_evals
    paths = _run_paths(
        density,
        starts,
        path_seeds,
        progressbar,
        num_draws=cfg.draws_per_path,
        num_elbo_draws=cfg.num_elbo_draws,
        history_size=cfg.history_size,
        maxiter=cfg.maxiter,
        ftol=cfg.ftol,
        gtol=cfg.gtol,
    )
    result = _pool_paths(paths, cfg.num_draws, cfg.importance_sampling, cfg.replace, rng)
    result.grad_evals = density.grad_evals - g0
    result.logp_evals = density.logp_evals - l0
    result.wall_time = time.perf_counter() - t0
    return result


def _resolve_config(
    density: LogDensity,
    config: PathfinderConfig | None,
    num_paths: int | None,
    num_draws: int | None,
    overrides: dict[str, Any],
) -> PathfinderConfig:
    """``config`` with the explicit arguments and ``overrides`` applied (validated once)."""
    if num_paths is not None:
        overrides["num_paths"] = num_paths
    if num_draws is not None:
        overrides["num_draws"] = num_draws
    base = config if config is not None else PathfinderConfig()
    unknown = sorted(set(overrides) - {f.name for f in fields(PathfinderConfig)})
    if unknown:
        raise TypeError(
            f"multipath_pathfinder got unexpected keyword arguments {unknown}; the options "
            f"are {[f.name for f in fields(PathfinderConfig)]}, init and progressbar."
        )
    cfg = dataclasses.replace(base, **overrides) if overrides else base
    if int(density.dim) < 1:
        raise ValueError("The density has no parameters (dim=0); there is nothing to fit.")
    return cfg


def _run_paths(
    density: LogDensity,
    starts: np.ndarray,
    path_seeds: list[np.random.Generator],
    progressbar: bool,
    **path_kwargs: Any,
) -> list[PathResult]:
    """One :func:`single_path_pathfinder` per start, with its own generator."""
    num_paths = starts.shape[0]
    # The linear algebra here is on tiny matrices (dim x 2J, 2J x 2J): BLAS threads
    # only add overhead, and on a busy machine a lot of it.
    with threadpool_limits(limits=1, user_api="blas"):
        return [
            single_path_pathfinder(density, starts[i], random_seed=path_seeds[i], **path_kwargs)
            for i in track(range(num_paths), num_paths, "Pathfinder paths", show=progressbar)
        ]


def _pooled_log_weights(
    log_ratio: np.ndarray, importance_sampling: str
) -> tuple[np.ndarray, float]:
    """Normalised log weights of the pooled draws and their Pareto k."""
    finite = np.isfinite(log_ratio)
    if not finite.any():
        raise PathfinderError(
            "Every importance ratio log p - log q is non-finite: the log density is not "
            "finite at any Pathfinder draw. Check the model for values outside a "
            "distribution's support, or try other initial points."
        )
    lw_psis, pareto_k = psis_log_weights(log_ratio)
    if importance_sampling == "psis":
        return lw_psis, float(pareto_k)
    log_w = np.where(finite, 0.0, -np.inf)
    return log_w - logsumexp(log_w[finite]), float(pareto_k)


def _pool_paths(
    paths: list[PathResult],
    num_draws: int,
    importance_sampling: str,
    replace: bool,
    rng: np.random.Generator,
) -> PathfinderResult:
    """Pool the usable paths' draws and importance-resample ``num_draws`` of them."""
    ok = [p for p in paths if p.ok]
    if not ok:
        reasons = "; ".join(f"path {i}: {p.status} ({p.message})" for i, p in enumerate(paths))
        raise PathfinderError(
            f"All {len(paths)} Pathfinder paths failed: {reasons}. Try other starting points "
            "(init=..., jitter=...), a reparameterised model, or check that the log density "
            "is finite around its mode."
        )
    pooled = np.concatenate([p.draws for p in ok], axis=0)
    pooled_lp = np.concatenate([p.lp for p in ok])
    pooled_logq = np.concatenate([p.logq for p in ok])
    log_ratio = pooled_lp - pooled_logq
    finite = np.isfinite(log_ratio)
    log_w, pareto_k = _pooled_log_weights(log_ratio, importance_sampling)
    w = np.exp(log_w)
    w = w / w.sum()
    use_replace = replace or int(finite.sum()) < num_draws
    idx = rng.choice(pooled.shape[0], size=num_draws, replace=use_replace, p=w)
    path_index = np.concatenate([np.full(p.draws.shape[0], i) for i, p in enumerate(ok)])
    mean, cov = pooled_moments(ok, pooled[finite], log_w[finite], path_index[finite])
    return PathfinderResult(
        draws=pooled[idx],
        lp=pooled_lp[idx],
        logq=pooled_logq[idx],
        pareto_k=pareto_k,
        grad_evals=0,
        paths=paths,
        mean=mean,
        covariance=cov,
        inverse_metric_diag=np.diag(cov).copy(),
        ess=float(1.0 / (w * w).sum()),
    )


def initial_points(
    density: LogDensity,
    num_paths: int,
    init: np.ndarray | Mapping[str, Any] | None,
    jitter: float | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """Starting points ``(num_paths, dim)``: ``init`` (jittered) or uniform on ``(-2, 2)``.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.vi.multipath import initial_points
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x)
    >>> initial_points(d, 3, np.ones(2), None, np.random.default_rng(0)).tolist()
    [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]
    >>> initial_points(d, 1, {"x": np.array([0.5, 2.0])}, None, np.random.default_rng(0)).tolist()
    [[0.5, 2.0]]
    """
    dim = density.dim
    if init is None:
        radius = 2.0 if jitter is None else float(jitter)
        return rng.uniform(-radius, radius, size=(num_paths, dim))
    if isinstance(init, Mapping):  # a point in the model's own space, as pm.sample's initvals
        missing = [n for n in getattr(density, "names", []) if n not in init]
        if missing:
            raise ValueError(
                f"init as a dict is a point in the model's space and needs every free "
                f"variable; it lacks {missing}. Or pass a flat array on the unconstrained "
                "space (dim entries)."
            )
        init = density.unconstrain(init)
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
    w = np.exp(log_w - logsumexp(log_w))
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


def pooled_moments(
    paths: list[PathResult], draws: np.ndarray, log_w: np.ndarray, path_index: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Importance-weighted moments, leaning on the path approximations when the ESS is low.

    With few effective draws the weighted covariance is rank-deficient (it
    cannot have full rank with fewer than ``dim`` distinct draws). It is then
    blended with the covariance of the mixture of the paths' own normal
    approximations (weighted by each path's share of the importance
    weights), which is always positive definite:
    ``lam * weighted + (1 - lam) * mixture`` with ``lam = ess / (ess + 2 dim)``.

    Parameters
    ----------
    paths : list of PathResult
        The usable paths (each with an approximation).
    draws : ndarray, shape (n, dim)
        Their pooled draws with a finite importance ratio.
    log_w : ndarray, shape (n,)
        Log importance weights of ``draws``.
    path_index : ndarray of int, shape (n,)
        Which path each draw came from.

    Returns
    -------
    mean : ndarray, shape (dim,)
    covariance : ndarray, shape (dim, dim)

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.vi.multipath import multipath_pathfinder, pooled_moments
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, lambda x: -x,
    ...                        lambda X: -0.5 * (X * X).sum(1))
    >>> res = multipath_pathfinder(d, num_paths=1, num_draws=50, random_seed=0)
    >>> p = res.paths[0]
    >>> mean, cov = pooled_moments([p], p.draws, np.zeros(len(p.draws)), np.zeros(50, int))
    >>> cov.shape
    (2, 2)
    """
    dim = draws.shape[1]
    w = np.exp(log_w - logsumexp(log_w))
    ess = 1.0 / float((w * w).sum())
    mean_w, cov_w = _weighted_moments(draws, log_w)
    share = np.array([w[path_index == i].sum() for i in range(len(paths))]) + 1e-3
    mean_m, cov_m = _mixture_moments(paths, share)
    lam = ess / (ess + 2.0 * dim)
    mean = lam * mean_w + (1 - lam) * mean_m
    cov = lam * cov_w + (1 - lam) * cov_m
    return mean, 0.5 * (cov + cov.T)
