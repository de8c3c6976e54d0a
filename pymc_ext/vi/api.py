"""The user-facing Pathfinder functions: on a PyMC model, or on any LogDensity (ArviZ output)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pymc_ext.density import LogDensity
from pymc_ext.vi.datatree import pathfinder_to_datatree
from pymc_ext.vi.multipath import multipath_pathfinder

if TYPE_CHECKING:  # pragma: no cover
    import pymc as pm
    import xarray as xr

__all__ = ["density_pathfinder", "pathfinder"]


def density_pathfinder(
    density: LogDensity,
    num_paths: int | None = None,
    num_draws: int | None = None,
    random_seed: int | np.random.Generator | None = None,
    *,
    progressbar: bool = True,
    **kwargs: Any,
) -> xr.DataTree:
    """Multi-path Pathfinder on any :class:`~pymc_ext.density.LogDensity`, as ArviZ data.

    :func:`~pymc_ext.vi.multipath.multipath_pathfinder` followed by
    :func:`~pymc_ext.vi.datatree.pathfinder_to_datatree`; :func:`pathfinder`
    (PyMC) and ``stan_bridge.pathfinder`` (Stan) call it.

    Parameters
    ----------
    density : LogDensity
        The target (``logp_and_grad``, ``logp_batch``; ``constrain_batch`` if
        it has one, for the model's own names and shapes).
    num_paths, num_draws, random_seed, progressbar, **kwargs
        As in :func:`~pymc_ext.vi.multipath.multipath_pathfinder` (``init``,
        ``config`` and the fields of :class:`~pymc_ext.vi.config.PathfinderConfig`).

    Returns
    -------
    xarray.DataTree
        As :func:`~pymc_ext.vi.datatree.pathfinder_to_datatree` makes it.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.vi.api import density_pathfinder
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
    num_paths: int | None = None,
    num_draws: int | None = None,
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
        As in :func:`~pymc_ext.vi.multipath.multipath_pathfinder`.
    progressbar : bool
        Show a progress bar over paths.
    **kwargs
        Passed to :func:`~pymc_ext.vi.multipath.multipath_pathfinder` (``init``,
        ``config``, or fields of :class:`~pymc_ext.vi.config.PathfinderConfig`:
        ``jitter``, ``num_elbo_draws``, ``history_size``, ``maxiter``, ``ftol``,
        ``gtol``, ``importance_sampling``, ``replace``, ``num_draws_per_path``).

    Returns
    -------
    xarray.DataTree
        ``posterior`` (draws with the model's names, dims and coords,
        Deterministics included), ``sample_stats`` (``lp``, ``logq``; attributes
        ``pareto_k``, ``grad_evals``) and ``pathfinder_paths`` (per path).

    Examples
    --------
    >>> import pymc as pm
    >>> from pymc_ext.vi.api import pathfinder
    >>> with pm.Model() as model:
    ...     mu = pm.Normal("mu", 0, 1)
    ...     sigma = pm.HalfNormal("sigma", 1)
    ...     y = pm.Normal("y", mu, sigma, observed=[0.1, -0.3, 0.5, 0.2])
    >>> dt = pathfinder(model, num_draws=200, random_seed=1, progressbar=False)
    >>> dt.posterior["sigma"].shape
    (1, 200)
    """
    from pymc_ext.pymc_adapter.logdensity import log_density

    return density_pathfinder(
        log_density(model),
        num_paths=num_paths,
        num_draws=num_draws,
        random_seed=random_seed,
        progressbar=progressbar,
        **kwargs,
    )
