"""Turn unconstrained draws from any :class:`~pymc_ext.density.LogDensity` into ArviZ data.

Every algorithm returns its result through :func:`to_datatree`, so every
result carries the model's own names, dims and coords, Deterministics
included, and ``az.summary`` / ``az.plot_trace`` / ``az.ess`` work unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import arviz_base as az  # from_dict only; the full arviz (plots) is slow to import
import numpy as np
import xarray as xr

from pymc_ext.density import LogDensity

__all__ = ["to_datatree", "posterior_dict"]


def _as_chains(draws: np.ndarray, dim: int) -> np.ndarray:
    draws = np.asarray(draws, dtype=float)
    if draws.ndim == 2:
        draws = draws[None]
    if draws.ndim != 3 or draws.shape[-1] != dim:
        raise ValueError(
            f"draws must have shape (chains, draws, {dim}) or (draws, {dim}); got {draws.shape}."
        )
    return draws


def posterior_dict(density: LogDensity, draws: np.ndarray) -> dict[str, np.ndarray]:
    """Constrain unconstrained draws to ``name -> (chain, draw, *shape)`` arrays.

    Parameters
    ----------
    density : LogDensity
        The density the draws live on.
    draws : ndarray
        Shape ``(chains, draws, dim)`` or ``(draws, dim)``.

    Returns
    -------
    dict
        One array per variable of ``density.names``.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.pymc_adapter.datatree import posterior_dict
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x)
    >>> posterior_dict(d, np.zeros((3, 5, 2)))["x"].shape
    (3, 5, 2)
    """
    draws = _as_chains(draws, density.dim)
    n_chains, n_draws, dim = draws.shape
    flat = density.constrain_batch(draws.reshape(-1, dim))
    return {
        name: np.asarray(value).reshape(n_chains, n_draws, *np.shape(value)[1:])
        for name, value in flat.items()
    }


def _stats_dict(stats: Mapping[str, Any] | None, n_chains: int) -> dict[str, np.ndarray]:
    out = {}
    for key, value in (stats or {}).items():
        arr = np.asarray(value)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.shape[0] != n_chains:
            raise ValueError(
                f"sample statistic {key!r} has shape {arr.shape}; its first axis must be "
                f"the {n_chains} chains."
            )
        out[key] = arr
    return out


def to_datatree(
    density: LogDensity,
    draws: np.ndarray,
    *,
    sample_stats: Mapping[str, Any] | None = None,
    observed_data: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
    sample_stats_attrs: Mapping[str, Any] | None = None,
    warmup_draws: np.ndarray | None = None,
    warmup_sample_stats: Mapping[str, Any] | None = None,
    extra_groups: Mapping[str, Mapping[str, Any]] | None = None,
    include_unconstrained: bool = False,
) -> xr.DataTree:
    """Build an ArviZ ``DataTree`` from draws in the unconstrained space.

    Parameters
    ----------
    density : LogDensity
        Supplies ``constrain_batch``, names, dims and coords (and
        ``observed_data`` when it has that attribute).
    draws : ndarray
        Unconstrained draws, ``(chains, draws, dim)`` or ``(draws, dim)``.
    sample_stats : dict, optional
        Per-draw statistics, each ``(chains, draws, ...)``.
    observed_data : dict, optional
        ``name -> array``; defaults to ``density.observed_data`` if present.
    attrs : dict, optional
        Attributes of the ``posterior`` group.
    sample_stats_attrs : dict, optional
        Attributes of the ``sample_stats`` group (for example
        ``warmstart_grad_evals``).
    warmup_draws, warmup_sample_stats : optional
        Kept as ``warmup_posterior`` / ``warmup_sample_stats`` groups.
    extra_groups : dict, optional
        More groups, ``group -> {name: array}``, stored without sample dims
        (for example per-path Pathfinder results).
    include_unconstrained : bool
        Also store the raw draws as ``unconstrained_posterior``.

    Returns
    -------
    xarray.DataTree
        With ``posterior``, ``sample_stats`` (if given) and ``observed_data``.

    Examples
    --------
    >>> import numpy as np, arviz as az
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.pymc_adapter.datatree import to_datatree
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x)
    >>> draws = np.random.default_rng(0).normal(size=(2, 100, 2))
    >>> dt = to_datatree(d, draws, sample_stats={"lp": np.zeros((2, 100))})
    >>> sorted(dt.children)
    ['posterior', 'sample_stats']
    >>> dt.posterior["x"].shape
    (2, 100, 2)
    """
    draws = _as_chains(draws, density.dim)
    coords = {k: np.asarray(v) for k, v in (getattr(density, "coords", None) or {}).items()}
    dims = {k: list(v) for k, v in (getattr(density, "dims", None) or {}).items() if v}
    if observed_data is None:
        observed_data = getattr(density, "observed_data", None)
    data = _collect_groups(
        density, draws, sample_stats, observed_data, warmup_draws, warmup_sample_stats
    )
    if include_unconstrained:
        data["unconstrained_posterior"] = {"unconstrained": draws}
        dims["unconstrained"] = ["unconstrained_dim"]

    # Observed data of another length than the model's coords (a new dataset with another N)
    # keep default dims; only pass dims/coords that the data can use.
    for name, value in data.get("observed_data", {}).items():
        if name in dims and not _dims_fit(dims[name], np.shape(value), coords):
            dims.pop(name)
    used_dims = {d for group in data.values() for k in group for d in dims.get(k, [])}
    dt = az.from_dict(
        data,
        coords={k: v for k, v in coords.items() if k in used_dims},
        dims={k: v for k, v in dims.items() if any(k in g for g in data.values())},
        save_warmup=warmup_draws is not None,
    )
    _add_attrs_and_groups(dt, attrs, sample_stats_attrs, extra_groups)
    return dt


def _dims_fit(named: list[str], shape: tuple[int, ...], coords: Mapping[str, Any]) -> bool:
    """Whether an array of ``shape`` fits the dims ``named`` with the lengths of ``coords``."""
    if len(named) != len(shape):
        return False
    return all(d not in coords or len(coords[d]) == n for d, n in zip(named, shape, strict=True))


def _collect_groups(
    density: LogDensity,
    draws: np.ndarray,
    sample_stats: Mapping[str, Any] | None,
    observed_data: Mapping[str, Any] | None,
    warmup_draws: np.ndarray | None,
    warmup_sample_stats: Mapping[str, Any] | None,
) -> dict[str, dict[str, Any]]:
    """The ``group -> {name: array}`` dict that ``az.from_dict`` turns into a DataTree."""
    n_chains = draws.shape[0]
    data: dict[str, dict[str, Any]] = {"posterior": posterior_dict(density, draws)}
    stats = _stats_dict(sample_stats, n_chains)
    if stats:
        data["sample_stats"] = stats
    if warmup_draws is not None:
        data["warmup_posterior"] = posterior_dict(density, warmup_draws)
        if warmup_sample_stats:
            data["warmup_sample_stats"] = _stats_dict(warmup_sample_stats, n_chains)
    if observed_data:
        data["observed_data"] = {k: np.asarray(v) for k, v in observed_data.items()}
    return data


def _add_attrs_and_groups(
    dt: xr.DataTree,
    attrs: Mapping[str, Any] | None,
    sample_stats_attrs: Mapping[str, Any] | None,
    extra_groups: Mapping[str, Mapping[str, Any]] | None,
) -> None:
    """Group attributes and the groups stored without sample dims, in place."""
    if attrs:
        dt["posterior"].attrs.update(dict(attrs))
    if sample_stats_attrs:
        if "sample_stats" not in dt.children:
            dt["sample_stats"] = xr.DataTree(xr.Dataset())
        dt["sample_stats"].attrs.update(dict(sample_stats_attrs))
    for group, values in (extra_groups or {}).items():
        dt[group] = xr.DataTree(
            xr.Dataset(
                {
                    k: ((f"{k}_dim_{i}" for i in range(np.ndim(v))), np.asarray(v))
                    if not isinstance(v, xr.DataArray)
                    else v
                    for k, v in values.items()
                }
            )
        )
