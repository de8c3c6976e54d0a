"""Pathfinder results as ArviZ data, with the model's own names (via the adapter's DataTree)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pymc_ext.density import LogDensity
from pymc_ext.vi.result import PathfinderResult

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr

__all__ = ["pathfinder_to_datatree"]


def pathfinder_to_datatree(density: LogDensity, result: PathfinderResult) -> xr.DataTree:
    """Turn a :class:`~pymc_ext.vi.result.PathfinderResult` into ArviZ data with the model's names.

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
        From :func:`~pymc_ext.vi.multipath.multipath_pathfinder`.

    Returns
    -------
    xarray.DataTree

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.vi.datatree import pathfinder_to_datatree
    >>> from pymc_ext.vi.multipath import multipath_pathfinder
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, lambda x: -x,
    ...                        lambda X: -0.5 * (X * X).sum(1))
    >>> dt = pathfinder_to_datatree(d, multipath_pathfinder(d, num_draws=100, random_seed=0))
    >>> dt.posterior["x"].shape, str(dt.pathfinder_paths["status"].values[0])
    ((1, 100, 2), 'converged')
    """
    from pymc_ext.pymc_adapter.datatree import to_datatree

    n_paths = len(result.paths)
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
        extra_groups={"pathfinder_paths": _paths_group(density, result)},
    )


def _paths_group(density: LogDensity, result: PathfinderResult) -> dict[str, Any]:
    """Per-path arrays (``path`` dimension) for the ``pathfinder_paths`` group."""
    import xarray as xr

    paths = result.paths
    n_paths = len(paths)
    max_it = max([p.elbo.size for p in paths] + [1])
    elbo = np.full((n_paths, max_it), np.nan)
    best_point = np.full((n_paths, density.dim), np.nan)
    for i, p in enumerate(paths):
        elbo[i, : p.elbo.size] = p.elbo
        if p.best_point is not None:
            best_point[i] = p.best_point

    def per_path(values: list, dtype: Any = None) -> xr.DataArray:
        return xr.DataArray(np.array(values, dtype=dtype), dims=("path",))

    return {
        "status": per_path([str(p.status) for p in paths]),
        "message": per_path([p.message for p in paths]),
        "pareto_k": per_path([p.pareto_k for p in paths]),
        "grad_evals": per_path([p.grad_evals for p in paths], int),
        "num_iterations": per_path([p.num_iterations for p in paths], int),
        "best_iteration": per_path([p.best_iteration for p in paths], int),
        "best_elbo": per_path([p.best_elbo for p in paths]),
        "elbo": xr.DataArray(elbo, dims=("path", "iteration")),
        "start": xr.DataArray(
            np.stack([p.start for p in paths]), dims=("path", "unconstrained_dim")
        ),
        "best_point": xr.DataArray(best_point, dims=("path", "unconstrained_dim")),
    }
