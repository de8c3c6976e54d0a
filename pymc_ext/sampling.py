"""``pymc_ext.sample``: ``pm.sample`` with a warm start, for PyMC's NUTS or nutpie.

``sample(..., warmstart="pathfinder")`` runs Pathfinder once, starts every
chain from its own Pathfinder draw, and tunes for a short warmup instead of
1000 iterations. With ``nuts_sampler="pymc"`` it uses
:class:`~pymc_ext.step_methods.warmstart.WarmStartNUTS` (start points *and* the
Pathfinder mass matrix). With ``nuts_sampler="nutpie"``
(:mod:`pymc_ext.sampling_nutpie`) nutpie, which takes no mass matrix, samples
the model through the affine map ``x = mu + L z`` built from Pathfinder's
covariance, and the result is mapped back to the model's variables.

Either way the result carries ``sample_stats.attrs["warmstart_grad_evals"]``
and ``sample_stats.attrs["warmstart_pareto_k"]``. PyMC gives a step method no
hook for attributes of the result, so ``WarmStartNUTS`` reports them as
per-draw statistics and :func:`lift_warmstart_attrs` (which :func:`sample`
calls) turns them into attributes; nothing in PyMC is patched.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from xarray import DataTree

from pymc_ext.sampling_nutpie import DEFAULT_NUTPIE_TUNE, sample_nutpie
from pymc_ext.step_methods.warmstart_init import DEFAULT_WARMUP

__all__ = [
    "sample",
    "lift_warmstart_attrs",
    "install_warmstart_attrs_hook",
    "WARMSTART_STATS",
    "DEFAULT_NUTPIE_TUNE",
    "NUTS_KWARGS",
    "DEFAULT_TUNE",
]

#: The per-draw statistics of ``WarmStartNUTS`` that :func:`lift_warmstart_attrs` lifts.
WARMSTART_STATS = ("warmstart_grad_evals", "warmstart_pareto_k")

#: Keywords of ``pm.sample`` that go to the NUTS step when a warm start is used.
NUTS_KWARGS = (
    "target_accept",
    "max_treedepth",
    "early_max_treedepth",
    "step_scale",
    "Emax",
    "gamma",
    "k",
    "t0",
    "adapt_step_size",
)


def sample(
    draws: int = 1000,
    *,
    tune: int | None = None,
    chains: int | None = None,
    cores: int | None = None,
    random_seed: int | np.random.Generator | None = None,
    warmstart: str | Any | None = "pathfinder",
    nuts_sampler: str = "pymc",
    warmstart_kwargs: Mapping[str, Any] | None = None,
    metric: str = "auto",
    model: Any = None,
    **kwargs: Any,
) -> Any:
    """Drop-in ``pm.sample`` with a Pathfinder (or flow) warm start.

    Parameters
    ----------
    draws, tune, chains, cores, random_seed
        As in ``pm.sample``. ``tune=None`` means a short warmup after the
        warm start: :data:`~pymc_ext.step_methods.warmstart_init.DEFAULT_WARMUP` for PyMC's
        NUTS, :data:`DEFAULT_NUTPIE_TUNE` for nutpie (without a warm start,
        ``pm.sample``'s own default). A ``tune`` given with a warm start is
        the length of the warm-started adaptation.
    warmstart : {"pathfinder", "flow", None} or a warm-start result
        ``None`` is exactly ``pm.sample``. A finished result (for example a
        :class:`~pymc_ext.vi.result.PathfinderResult`) is reused.
    nuts_sampler : {"pymc", "nutpie"}
        Which NUTS runs after the warm start.
    warmstart_kwargs : dict, optional
        Passed to the warm start (for Pathfinder: ``num_paths``,
        ``num_draws``, ``maxiter``, ...).
    metric : {"auto", "diag", "dense", "lowrank"}
        Mass-matrix structure: for ``nuts_sampler="pymc"`` see
        :class:`~pymc_ext.step_methods.warmstart.WarmStartNUTS`; for
        ``"nutpie"`` the form of the reparametrisation ``x = mu + L z``
        (:func:`~pymc_ext.sampling_nutpie.nutpie_metric_choice`).
    model : pm.Model, optional
        The model in context by default.
    **kwargs
        Any other ``pm.sample`` keyword (``discard_tuned_samples``,
        ``progressbar``, ``idata_kwargs``, ``target_accept``, ...).

    Returns
    -------
    xarray.DataTree
        As ``pm.sample``, with ``sample_stats.attrs["warmstart_grad_evals"]``
        (int) and ``["warmstart_pareto_k"]`` (float) when a warm start ran;
        with PyMC's NUTS also ``["warmstart_metric"]``,
        ``["warmstart_metric_reason"]``, ``["warmstart_fallback"]`` and
        ``["warmstart_warmup"]`` (``WarmStartNUTS.warmstart_attrs``).

    Examples
    --------
    >>> import pymc as pm, pymc_ext
    >>> with pm.Model() as model:
    ...     mu = pm.Normal("mu", 0, 1)
    ...     y = pm.Normal("y", mu, 1, observed=[0.3, -0.1, 0.4])
    ...     idata = pymc_ext.sample(draws=200, chains=2, cores=1, random_seed=1,
    ...                             progressbar=False, compute_convergence_checks=False)
    >>> sorted(k for k in idata.sample_stats.attrs if k.startswith("warmstart"))
    ['warmstart_fallback', 'warmstart_grad_evals', 'warmstart_metric',
     'warmstart_metric_reason', 'warmstart_pareto_k', 'warmstart_warmup']
    >>> idata.sample_stats.attrs["warmstart_metric"]  # one parameter: nothing to correlate
    'diag'
    """
    import pymc as pm

    _check_sample_arguments(nuts_sampler, kwargs, warm=warmstart is not None)
    model = pm.modelcontext(model)
    sizes = {"draws": draws, "tune": tune, "chains": chains, "cores": cores}
    if warmstart is None:
        return pm.sample(
            **sizes, random_seed=random_seed, nuts_sampler=nuts_sampler, model=model, **kwargs
        )
    seed_ws, seed_sample = _split_seed(random_seed)
    run = _sample_pymc if nuts_sampler == "pymc" else sample_nutpie
    return run(
        model,
        **sizes,
        seed_ws=seed_ws,
        seed_sample=seed_sample,
        warmstart=warmstart,
        warmstart_kwargs=warmstart_kwargs,
        metric=metric,
        **kwargs,
    )


def _check_sample_arguments(nuts_sampler: str, kwargs: Mapping[str, Any], warm: bool) -> None:
    if nuts_sampler not in ("pymc", "nutpie"):
        raise ValueError(
            f"nuts_sampler must be 'pymc' or 'nutpie'; got {nuts_sampler!r}. (numpyro and "
            "blackjax work with warmstart=None through pm.sample.)"
        )
    if "step" in kwargs:
        raise ValueError(
            "pymc_ext.sample builds its own step; for a custom step call pm.sample(step=...) "
            "directly (pymc_ext.WarmStartNUTS is a step method)."
        )
    if not warm:  # pm.sample itself checks (it takes other step methods' keywords too)
        return
    # A typo would otherwise reach pm.sample only after Pathfinder has run.
    import inspect

    import pymc as pm

    known = set(inspect.signature(pm.sample).parameters) | set(NUTS_KWARGS) | {"nuts"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(
            f"pymc_ext.sample got unexpected keyword(s) {unknown}. It takes pm.sample's "
            "keywords, NUTS's (target_accept, max_treedepth, ...), and warmstart, "
            "warmstart_kwargs, metric; for example warmstart='pathfinder'."
        )


def _sample_pymc(
    model: Any,
    *,
    draws: int,
    tune: int | None,
    chains: int | None,
    cores: int | None,
    seed_ws: int | None,
    seed_sample: int | None,
    warmstart: Any,
    warmstart_kwargs: Mapping[str, Any] | None,
    metric: str,
    **kwargs: Any,
) -> Any:
    """PyMC's NUTS as :class:`WarmStartNUTS`, with the figures lifted into the attributes."""
    import pymc as pm

    from pymc_ext.step_methods.warmstart import WarmStartNUTS

    nuts_kwargs = {k: kwargs.pop(k) for k in NUTS_KWARGS if k in kwargs}
    nuts_kwargs.update(kwargs.pop("nuts", {}) or {})
    with model:
        step = WarmStartNUTS(
            init=warmstart,
            metric=metric,
            warmup=tune,
            random_seed=seed_ws,
            init_kwargs=warmstart_kwargs,
            model=model,
            progressbar=bool(kwargs.get("progressbar", True)),
            **nuts_kwargs,
        )
        idata = pm.sample(
            draws=draws,
            tune=tune,
            chains=chains,
            cores=cores,
            random_seed=seed_sample,
            step=step,
            nuts_sampler="pymc",
            model=model,
            **kwargs,
        )
    if isinstance(idata, DataTree):  # not with return_inferencedata=False
        idata = lift_warmstart_attrs(idata)
        _set_attrs(idata, step.warmstart_grad_evals, step.warmstart_pareto_k)
        for group in ("sample_stats", "warmup_sample_stats"):
            if group in idata.children:  # the metric chosen, and why
                idata[group].attrs.update(step.warmstart_attrs())
    return idata


def _split_seed(random_seed: Any) -> tuple[int | None, int | None]:
    if random_seed is None:
        return None, None
    rng = np.random.default_rng(random_seed)
    a, b = rng.integers(2**31 - 1, size=2)
    return int(a), int(b)


def _set_attrs(idata: Any, grad_evals: int, pareto_k: float) -> None:
    for group in ("sample_stats", "warmup_sample_stats"):
        if group in idata.children:
            idata[group].attrs["warmstart_grad_evals"] = int(grad_evals)
            idata[group].attrs["warmstart_pareto_k"] = float(pareto_k)


# For tests and the benchmark: the default tune each sampler gets after a warm start.
DEFAULT_TUNE = {"pymc": DEFAULT_WARMUP, "nutpie": DEFAULT_NUTPIE_TUNE}


def lift_warmstart_attrs(idata: Any) -> Any:
    """Move the ``warmstart_*`` per-draw stats into ``sample_stats.attrs``.

    ``warmstart_grad_evals`` (int) and ``warmstart_pareto_k`` (float) are the
    same at every draw; this stores them once as attributes of
    ``sample_stats`` (and ``warmup_sample_stats``) and drops the variables.
    A result without them is returned unchanged.

    Parameters
    ----------
    idata : xarray.DataTree

    Returns
    -------
    xarray.DataTree
        The same object, changed in place.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> from pymc_ext.sampling import lift_warmstart_attrs
    >>> ss = xr.Dataset({"warmstart_grad_evals": (("chain", "draw"), np.full((1, 3), 42))})
    >>> dt = lift_warmstart_attrs(xr.DataTree.from_dict({"sample_stats": ss}))
    >>> dt.sample_stats.attrs["warmstart_grad_evals"]
    42
    """
    if not isinstance(idata, DataTree):  # a MultiTrace (return_inferencedata=False)
        return idata
    children = idata.children
    values: dict[str, Any] = {}
    for group in ("sample_stats", "warmup_sample_stats"):
        if group not in children:
            continue
        ds = idata[group].to_dataset()
        present = [k for k in WARMSTART_STATS if k in ds.data_vars]
        for k in present:
            arr = np.asarray(ds[k].values)
            if arr.size:
                values[k] = int(arr.max()) if k.endswith("grad_evals") else float(arr.flat[0])
        if present:
            idata[group] = idata[group].to_dataset().drop_vars(present)
    for group in ("sample_stats", "warmup_sample_stats"):
        if group in children and values:
            idata[group].attrs.update(values)
    return idata


def install_warmstart_attrs_hook() -> None:
    """Deprecated: does nothing (it used to replace ``pymc.to_inference_data``).

    Building a :class:`WarmStartNUTS` no longer changes PyMC process-wide.
    :func:`pymc_ext.sample` puts the warm-start figures into
    ``sample_stats.attrs``; after ``pm.sample(step=WarmStartNUTS())`` call
    :func:`lift_warmstart_attrs` on the result, or read the per-draw
    ``sample_stats["warmstart_grad_evals"]``.

    Examples
    --------
    >>> import warnings
    >>> import pymc as pm
    >>> from pymc_ext.sampling import install_warmstart_attrs_hook
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore", DeprecationWarning)
    ...     install_warmstart_attrs_hook()
    >>> hasattr(pm.to_inference_data, "_pymc_ext_warmstart_hook")
    False
    """
    warnings.warn(
        "install_warmstart_attrs_hook() is deprecated and does nothing: pymc_ext no longer "
        "replaces pymc.to_inference_data. Use pymc_ext.sample, or lift_warmstart_attrs(idata).",
        DeprecationWarning,
        stacklevel=2,
    )
