"""``pymc_ext.sample(nuts_sampler="nutpie")``: nutpie with the warm start's metric.

nutpie 0.16's ``nutpie.sample`` takes no mass matrix (its settings expose
``use_grad_based_estimate`` and ``store_mass_matrix`` only), but it samples any
model it can compile. So the warm start's covariance goes in as a change of
variables (:mod:`pymc_ext.pymc_adapter.reparam`): nutpie samples ``z`` where
``x = mu + L z``, ``x`` the model's flat unconstrained vector and ``L L^T``
Pathfinder's covariance (dense Cholesky, low-rank plus diagonal, or diagonal,
as :func:`~pymc_ext.blocks.metric_choice.choose_metric` decides for
``metric="auto"``). In ``z`` a good warm start leaves a near-standard normal,
so nutpie's own adaptation (diagonal by default, starting from the identity)
starts where it should be; it keeps adapting during the (shorter) tune, so a
poor covariance costs efficiency, never correctness.

Each chain starts from its own Pathfinder draw (mapped to ``z``). The result
is mapped back: the posterior has the model's names, dims, coords and
Deterministics exactly as ``pm.sample(nuts_sampler="nutpie")`` gives them, and
``z`` does not appear (``unconstrained_draw`` and ``gradient``, when asked for,
are mapped back to ``x``). Where the warm start is not trusted (Pareto k too
high, too few paths succeeded, a covariance that is not positive definite)
nutpie runs on the model itself from the Pathfinder start points, with
nutpie's full default tune, and ``sample_stats.attrs`` says why.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from pymc_ext.blocks.affine import affine_reparam
from pymc_ext.blocks.metric_choice import MetricChoice, choose_metric, relative_importance_ess
from pymc_ext.pymc_adapter.reparam import ReparametrizedModel, reparametrized_model
from pymc_ext.step_methods.warmstart_init import WARMSTART_INITS, run_warmstart

__all__ = [
    "sample_nutpie",
    "nutpie_metric_choice",
    "DEFAULT_NUTPIE_TUNE",
    "NUTPIE_FALLBACK_TUNE",
    "NUTPIE_METRICS",
]

#: Tuning iterations for nutpie after a warm start when ``tune`` is not given
#: (nutpie's own default is 400). Chosen from ``benchmarks/nutpie_reparam.py``.
DEFAULT_NUTPIE_TUNE = 200

#: Tuning iterations when the warm start is not trusted (nutpie's own default).
NUTPIE_FALLBACK_TUNE = 400

#: The ``metric=`` values nutpie takes here.
NUTPIE_METRICS = ("auto", "diag", "dense", "lowrank")


def nutpie_metric_choice(ws: Any, metric: str = "auto") -> MetricChoice:
    """What :func:`sample_nutpie` does with a warm start: the metric and whether to trust it.

    ``metric="auto"`` is :func:`~pymc_ext.blocks.metric_choice.choose_metric`
    on the warm start's covariance, Pareto k, relative importance ESS and path
    statuses. An explicit ``"diag"``, ``"dense"`` or ``"lowrank"`` overrides
    the kind (the rank of ``lowrank`` is the rule's, at least 1), but an
    untrusted warm start stays untrusted.

    Parameters
    ----------
    ws : WarmStart
        A finished warm start (e.g. a :class:`~pymc_ext.vi.result.PathfinderResult`).
    metric : {"auto", "diag", "dense", "lowrank"}

    Returns
    -------
    MetricChoice

    Examples
    --------
    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> from pymc_ext.sampling_nutpie import nutpie_metric_choice
    >>> ws = SimpleNamespace(covariance=np.array([[1.0, 0.99], [0.99, 1.0]]), pareto_k=0.2)
    >>> nutpie_metric_choice(ws).kind, nutpie_metric_choice(ws, "diag").kind
    ('dense', 'diag')
    """
    if metric not in NUTPIE_METRICS:
        raise ValueError(f"metric must be one of {NUTPIE_METRICS}; got {metric!r}.")
    paths = getattr(ws, "paths", None) or []
    choice = choose_metric(  # called as WarmStartNUTS and CmdStanModel call it: one rule
        np.asarray(ws.covariance, dtype=float),
        float(ws.pareto_k),
        num_paths=len(paths) or None,
        num_paths_ok=sum(bool(getattr(p, "ok", True)) for p in paths) if paths else None,
        relative_ess=relative_importance_ess(ws),
    )
    if metric == "auto" or not choice.trusted or metric == choice.kind:
        return choice
    rank = max(1, choice.rank) if metric == "lowrank" else 0
    return dataclasses.replace(
        choice, kind=metric, rank=rank, reason=f"metric={metric!r} asked for ({choice.reason})"
    )


def sample_nutpie(
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
    """nutpie after a warm start, with the warm start's metric as a reparametrisation.

    The engine of ``pymc_ext.sample(nuts_sampler="nutpie")``; call that
    instead (it takes ``pm.sample``'s keywords and splits the seed).

    Parameters
    ----------
    model : pm.Model
    draws, tune, chains, cores
        As ``pm.sample``. ``tune=None``: :data:`DEFAULT_NUTPIE_TUNE`, or
        :data:`NUTPIE_FALLBACK_TUNE` when the warm start is not trusted.
    seed_ws, seed_sample : int, optional
        Seeds of the warm start and of nutpie.
    warmstart, warmstart_kwargs
        As :func:`~pymc_ext.step_methods.warmstart_init.run_warmstart`.
    metric : {"auto", "diag", "dense", "lowrank"}
        See :func:`nutpie_metric_choice`.
    **kwargs
        ``pm.sample`` keywords nutpie understands: ``progressbar``,
        ``discard_tuned_samples``, ``target_accept``, ``max_treedepth``,
        ``var_names``, ``compile_kwargs``, ``idata_kwargs``
        (``include_transformed``), and ``nuts`` (passed to ``nutpie.sample``,
        e.g. ``adaptation="low_rank"`` or ``store_gradient=True``).

    Returns
    -------
    xarray.DataTree
        As ``pm.sample(nuts_sampler="nutpie")``; ``sample_stats.attrs`` adds
        ``warmstart_grad_evals``, ``warmstart_pareto_k``,
        ``warmstart_seconds``, ``warmstart_metric`` (``"diag"`` on a
        fallback, where nutpie adapts its own diagonal), ``warmstart_metric_rank``,
        ``warmstart_metric_reason``, ``warmstart_fallback`` (1 when the warm
        start's metric was not used), ``warmstart_warmup`` (the tune) and
        ``warmstart_reparametrization`` (the map, or ``"none: ..."``).

    Examples
    --------
    >>> import pymc as pm, pymc_ext
    >>> with pm.Model() as model:
    ...     mu = pm.Normal("mu", 0, 1)
    ...     y = pm.Normal("y", mu, 1, observed=[0.3, -0.1, 0.4])
    ...     idata = pymc_ext.sample(draws=100, chains=2, cores=1, random_seed=1,
    ...                             nuts_sampler="nutpie", progressbar=False)
    >>> idata.sample_stats.attrs["warmstart_metric"] in ("diag", "dense")
    True
    """
    import nutpie
    import pymc as pm
    from pymc.backends.arviz import patch_nutpie_idata
    from pymc.progress_bar import NutpieProgressBarManager

    from pymc_ext.pymc_adapter.logdensity import log_density

    options = _NutpieOptions.from_kwargs(kwargs, metric)
    if isinstance(warmstart, str) and warmstart not in WARMSTART_INITS:
        raise ValueError(
            f"Unknown warm start init={warmstart!r}; use one of {sorted(WARMSTART_INITS)}, a "
            "finished warm-start result, or a callable (density, random_seed) -> result."
        )
    density = log_density(model)
    t0 = time.perf_counter()
    ws = run_warmstart(density, warmstart, random_seed=seed_ws, **dict(warmstart_kwargs or {}))
    t_ws = time.perf_counter() - t0
    choice = nutpie_metric_choice(ws, metric)
    _warn_if_fallback(choice, metric)
    if tune is None:
        tune = DEFAULT_NUTPIE_TUNE if choice.trusted else NUTPIE_FALLBACK_TUNE
    tune = max(1, int(tune))  # nuts-rs needs at least one tuning step
    chains = 4 if chains is None else int(chains)
    compiled, rm = _compile(nutpie, model, density, ws, choice, options, seed_ws)
    pb_manager = NutpieProgressBarManager(
        chains=chains, draws=draws, progressbar=options.progressbar
    )
    t1 = time.perf_counter()
    with pb_manager:
        idata = nutpie.sample(
            compiled,
            draws=draws,
            tune=tune,
            chains=chains,
            cores=cores,
            seed=seed_sample,
            save_warmup=not options.discard_tuned_samples,
            store_unconstrained=options.include_transformed,
            progress_bar=False,
            progress_callback=pb_manager.update,
            **options.nuts_kwargs,
        )
    t_sample = time.perf_counter() - t1
    if rm is not None:
        map_back(idata, rm)
    patch_nutpie_idata(idata, model, sampling_time=t_sample)
    if options.log_likelihood:
        idata = pm.compute_log_likelihood(idata, model=model, progressbar=False)
    _set_attrs(idata, ws, choice, rm, t_ws, tune)
    return idata


def _warn_if_fallback(choice: MetricChoice, metric: str) -> None:
    """Warn when the warm start is not used and the user asked for a metric, or it broke."""
    if choice.trusted:
        return
    k = choice.pareto_k
    broken = not (np.isfinite(k) and k > 0.7)  # failed paths or a broken covariance
    if metric == "auto" and not broken:
        return  # a high Pareto k: the fallback is the plan, and the attributes say so
    warnings.warn(
        f"The warm start's metric is not used ({choice.reason}): nutpie adapts its own from "
        "the Pathfinder start points, over its full tune. Check the model at its initial "
        "point (model.debug()), or pass warmstart_kwargs={'num_paths': 8}.",
        UserWarning,
        stacklevel=4,
    )


@dataclasses.dataclass
class _NutpieOptions:
    progressbar: bool
    discard_tuned_samples: bool
    include_transformed: bool
    log_likelihood: bool
    nuts_kwargs: dict
    compile_kwargs: dict
    var_names: Any

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any], metric: str) -> _NutpieOptions:
        """Sort ``pm.sample`` keywords into nutpie's; raise on the ones nutpie cannot take."""
        if metric not in NUTPIE_METRICS:
            raise ValueError(f"metric must be one of {NUTPIE_METRICS}; got {metric!r}.")
        kwargs = dict(kwargs)
        nuts_kwargs = dict(kwargs.pop("nuts", {}) or {})
        for key in ("target_accept", "max_treedepth"):
            if key in kwargs:
                nuts_kwargs[key] = kwargs.pop(key)
        if "max_treedepth" in nuts_kwargs:
            nuts_kwargs["maxdepth"] = nuts_kwargs.pop("max_treedepth")
        idata_kwargs = dict(kwargs.pop("idata_kwargs", {}) or {})
        include_transformed = bool(idata_kwargs.pop("include_transformed", False))
        log_likelihood = bool(idata_kwargs.pop("log_likelihood", False))
        if idata_kwargs:
            raise TypeError(
                f"pymc_ext.sample(nuts_sampler='nutpie') takes only 'include_transformed' and "
                f"'log_likelihood' in idata_kwargs, not {sorted(idata_kwargs)}; use "
                "nuts_sampler='pymc' for the others."
            )
        if kwargs.get("return_inferencedata", True) is False:
            raise ValueError(
                "return_inferencedata=False is not supported with nuts_sampler='nutpie' (nutpie "
                "returns ArviZ data, as in pm.sample); use nuts_sampler='pymc' for a MultiTrace."
            )
        compile_kwargs = dict(kwargs.pop("compile_kwargs", {}) or {})
        compile_kwargs.setdefault("backend", "numba")
        out = cls(
            progressbar=bool(kwargs.pop("progressbar", True)),
            discard_tuned_samples=bool(kwargs.pop("discard_tuned_samples", True)),
            include_transformed=include_transformed,
            log_likelihood=log_likelihood,
            nuts_kwargs=nuts_kwargs,
            compile_kwargs=compile_kwargs,
            var_names=kwargs.pop("var_names", None),
        )
        for ignored in ("compute_convergence_checks", "quiet", "return_inferencedata"):
            kwargs.pop(ignored, None)
        if kwargs:
            raise TypeError(
                f"pymc_ext.sample(nuts_sampler='nutpie') does not support {sorted(kwargs)}; "
                "use nuts_sampler='pymc' or pm.sample(nuts_sampler='nutpie') without a warm start."
            )
        return out


def _compile(
    nutpie: Any,
    model: Any,
    density: Any,
    ws: Any,
    choice: MetricChoice,
    options: _NutpieOptions,
    seed: int | None,
) -> tuple[Any, ReparametrizedModel | None]:
    """nutpie's compiled model: the reparametrised one, or the model itself when not trusted.

    Without a finite warm-start draw (every Pathfinder path failed) nutpie
    starts as it would without a warm start."""
    finite = np.all(np.isfinite(np.asarray(ws.draws, dtype=float)), axis=1)
    if not choice.trusted:
        compiled = nutpie.compile_pymc_model(
            model, var_names=options.var_names, **options.compile_kwargs
        )
        if not finite.any():
            return compiled, None
        draws = _start_points(ws, seed)
        return dataclasses.replace(compiled, initial_point_func=_InitialPoints(draws)), None
    draws = _start_points(ws, seed)
    reparam = affine_reparam(
        ws.mean,
        ws.covariance,
        choice.kind,
        rank=choice.rank or None,
        variances=getattr(ws, "inverse_metric_diag", None),
    )
    rm = reparametrized_model(model, reparam, slices=density.slices, var_names=options.var_names)
    compiled = nutpie.compile_pymc_model(rm.model, **options.compile_kwargs)
    compiled = dataclasses.replace(
        compiled,
        initial_point_func=_InitialPoints(reparam.inverse(draws)),
        reparameterized_names=rm.hidden_names,
    )
    return compiled, rm


def _start_points(ws: Any, seed: int | None) -> np.ndarray:
    """The warm start's distinct finite draws (the density's ordering), shuffled."""
    draws = np.asarray(ws.draws, dtype=float)
    draws = np.unique(draws[np.all(np.isfinite(draws), axis=1)], axis=0)
    if draws.shape[0] == 0:
        raise ValueError("The warm start gave no finite draws to start nutpie's chains from.")
    return draws[np.random.default_rng(seed).permutation(draws.shape[0])]


class _InitialPoints:
    """Gives nutpie's chains distinct warm-start draws, in nutpie's flat ordering.

    nutpie calls ``initial_point_func(seed)`` once per chain (and again if a
    start is not finite), with a different seed per chain; the seed picks a
    draw, and a draw already handed out is skipped, so chains start apart.
    """

    def __init__(self, points: np.ndarray) -> None:
        self.points = points
        self.used: set[int] = set()
        self.lock = threading.Lock()

    def __call__(self, seed: Any = None) -> np.ndarray:
        n = self.points.shape[0]
        rng = np.random.default_rng(None if seed is None else abs(hash(seed)) % (2**63))
        i = int(rng.integers(n))
        with self.lock:
            for j in range(n):
                k = (i + j) % n
                if k not in self.used:
                    self.used.add(k)
                    i = k
                    break
        return np.ascontiguousarray(self.points[i], dtype="float64")


def map_back(idata: Any, rm: ReparametrizedModel) -> Any:
    """Remove the latent ``z`` from a trace of ``rm.model``; map ``z``-space statistics to ``x``.

    The posterior groups already hold the user's variables (Deterministics of
    ``rm.model``); nutpie moved ``z`` and the transformed values out of them.
    This drops ``z`` from the ``unconstrained_posterior`` groups, and maps
    ``unconstrained_draw`` (``x = mu + L z``) and ``gradient`` (``L^{-T} g``)
    in the sample statistics back to ``x``, with the model's parameter labels.
    ``mass_matrix_inv`` (``store_mass_matrix=True``) stays in ``z``.

    Parameters
    ----------
    idata : xarray.DataTree
        nutpie's result for ``rm.model``; changed in place.
    rm : ReparametrizedModel

    Returns
    -------
    xarray.DataTree
        ``idata``.

    Examples
    --------
    >>> import numpy as np, xarray as xr, pymc as pm
    >>> from pymc_ext.blocks.affine import affine_reparam
    >>> from pymc_ext.pymc_adapter.reparam import reparametrized_model
    >>> from pymc_ext.sampling_nutpie import map_back
    >>> with pm.Model() as model:
    ...     a = pm.Normal("a", shape=2)
    >>> r = affine_reparam(np.ones(2), 4 * np.eye(2), "diag")
    >>> rm = reparametrized_model(model, r)
    >>> ss = xr.Dataset({"unconstrained_draw": (("chain", "draw", "unconstrained_parameter"),
    ...                                         np.zeros((1, 1, 2)))})
    >>> dt = map_back(xr.DataTree.from_dict({"sample_stats": ss}), rm)
    >>> dt.sample_stats["unconstrained_draw"].values.ravel().tolist()
    [1.0, 1.0]
    >>> dt.sample_stats.coords["unconstrained_parameter"].values.tolist()
    ['a_0', 'a_1']
    """
    from xarray import DataTree

    children = idata.children
    for group in ("unconstrained_posterior", "warmup_unconstrained_posterior"):
        ds = idata[group].to_dataset() if group in children else None
        if ds is not None and rm.latent in ds.data_vars:
            own_dims = [d for d in ds[rm.latent].dims if d not in ("chain", "draw")]
            ds = ds.drop_vars(rm.latent)
            used = {d for v in ds.data_vars.values() for d in v.dims}
            ds = ds.drop_vars([d for d in own_dims if d in ds.coords and d not in used])
            idata[group] = DataTree(ds)
    for group in ("sample_stats", "warmup_sample_stats"):
        if group not in children:
            continue
        ds = idata[group].to_dataset()
        changed = False
        for name, fn in (
            ("unconstrained_draw", rm.reparam.forward),
            ("gradient", rm.reparam.gradient_to_x),
        ):
            if name in ds.data_vars:
                ds[name] = ds[name].copy(data=fn(ds[name].values))
                changed = True
        if "unconstrained_parameter" in ds.dims:
            ds = ds.assign_coords(unconstrained_parameter=list(rm.unconstrained_labels))
            changed = True
        if changed:
            attrs = dict(idata[group].attrs)
            idata[group] = DataTree(ds)
            idata[group].attrs.update(attrs)
    return idata


def _set_attrs(
    idata: Any,
    ws: Any,
    choice: MetricChoice,
    rm: ReparametrizedModel | None,
    seconds: float,
    tune: int,
) -> None:
    if rm is None:
        what = f"none: plain nutpie from the warm start's points ({choice.reason})"
    else:
        form = {
            "dense": "dense Cholesky",
            "lowrank": f"low-rank ({rm.reparam.rank}) plus diagonal",
            "diag": "diagonal",
        }[rm.reparam.kind]
        what = f"x = mu + L z, L {form}"
    values = {
        "warmstart_grad_evals": int(ws.grad_evals),
        "warmstart_pareto_k": float(ws.pareto_k),
        "warmstart_metric": choice.kind,
        "warmstart_metric_rank": int(rm.reparam.rank if rm is not None else 0),
        "warmstart_metric_reason": choice.reason,
        "warmstart_fallback": int(rm is None),
        "warmstart_warmup": int(tune),
        "warmstart_reparametrization": what,
    }
    for group in ("sample_stats", "warmup_sample_stats"):
        if group in idata.children:
            idata[group].attrs.update(values)
    idata.sample_stats.attrs["warmstart_seconds"] = float(seconds)
