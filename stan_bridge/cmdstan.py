"""A drop-in ``cmdstanpy.CmdStanModel`` whose NUTS can start from Pathfinder.

``CmdStanModel(stan_file=...).sample(data=..., warmstart="pathfinder")``:

1. builds the :class:`~stan_bridge.StanModel` for the same program and data
   (our shared library, cached);
2. runs our multi-path Pathfinder on it
   (:func:`pymc_ext.vi.multipath.multipath_pathfinder`);
3. chooses the metric and the warmup from Pathfinder's covariance and Pareto k
   (:func:`stan_bridge.warmstart.plan_warmstart`: ``dense_e`` or ``diag_e``;
   keep Pathfinder's metric with a step-size-only warmup, re-estimate it in a
   200-iteration warmup, or fall back to CmdStan's own warmup) and writes one
   inits file per chain (distinct Pathfinder draws, constrained) and a metric
   file, see :mod:`stan_bridge.warmstart`;
4. calls CmdStan's own NUTS through cmdstanpy, and
5. after a run that kept Pathfinder's metric, checks that it fits the chains
   (:mod:`stan_bridge.warmstart_check`) and redoes the run with CmdStan's full
   warmup if it does not.

It returns cmdstanpy's ``CmdStanMCMC`` (so ``az.from_cmdstanpy`` works) with
a ``warmstart`` attribute (:class:`WarmStartInfo`: ``grad_evals``,
``pareto_k``, ...). ``warmstart=None`` is cmdstanpy's ``sample``, unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cmdstanpy
import numpy as np

from pymc_ext.blocks.metric_choice import DEFAULT_MAX_PARETO_K
from stan_bridge.cmdstan_build import BuiltOnce
from stan_bridge.cmdstan_methods import FlowAndAmortizedMethods
from stan_bridge.model import StanModel
from stan_bridge.warmstart import (
    WARMSTART_WARMUP,
    WarmStartInfo,
    WarmStartPlan,
    warmstart_from_pathfinder,
)
from stan_bridge.warmstart_check import (
    keep_mismatch_threshold,
    kept_metric_mismatch,
    rerun_arguments,
)

__all__ = ["CmdStanModel", "WarmStartInfo", "pathfinder", "warmstart_from_pathfinder"]

_log = logging.getLogger("stan_bridge")


def _data_key(data: Any) -> str:
    if data is None:
        return "none"
    if isinstance(data, (str, os.PathLike)):
        p = Path(data)
        return f"file:{p.resolve()}:{p.stat().st_mtime_ns}" if p.exists() else f"file:{p}"
    h = hashlib.sha256()
    for k in sorted(data):
        h.update(k.encode())
        arr = np.asarray(data[k])
        h.update(str(arr.dtype).encode() + str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _seed_int(seed: Any) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, (list, tuple)):
        return int(seed[0])
    return int(seed)


def _check_warmstart_call(warmstart: str, args: tuple, kwargs: Mapping[str, Any]) -> str:
    """Check a warm-started ``sample`` call; return its metric: auto, diag_e or dense_e."""
    if warmstart not in ("pathfinder", "flow"):
        raise ValueError(f"warmstart must be None, 'pathfinder' or 'flow'; got {warmstart!r}.")
    if args:
        raise TypeError("With a warm start, pass sample's arguments by keyword.")
    params = inspect.signature(cmdstanpy.CmdStanModel.sample).parameters
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise TypeError(f"sample() got unexpected keyword arguments {unknown}.")
    if kwargs.get("fixed_param"):
        raise ValueError("A warm start needs parameters to sample; fixed_param=True has none.")
    metric = kwargs.get("metric") or "auto"
    if metric in ("diag", "dense"):
        metric = metric + "_e"
    if metric not in ("auto", "diag_e", "dense_e"):
        raise ValueError(
            f"With a warm start, metric must be 'auto', 'diag_e' or 'dense_e'; got {metric!r}."
        )
    return metric


def _warm_arguments(
    kwargs: Mapping[str, Any],
    metric: str,
    inits_files: list[str],
    metric_file: str | None,
    warmup: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """cmdstanpy's ``sample`` arguments with the warm start's inits, metric and warmup.

    ``warmup`` is the plan's warmup (:data:`~stan_bridge.warmstart.WARMSTART_WARMUP`
    when not given; empty for CmdStan's own). What the caller gave (``inits``,
    ``inv_metric``, ``iter_warmup``, the ``adapt_*`` windows) is kept.
    """
    call = dict(kwargs)
    call["metric"] = metric
    if call.get("inits") is None and inits_files:
        call["inits"] = inits_files
    if call.get("inv_metric") is None and metric_file:
        call["inv_metric"] = metric_file
    if call.get("iter_warmup") is None:
        for key, value in (WARMSTART_WARMUP if warmup is None else warmup).items():
            if call.get(key) is None:
                call[key] = value
    return call


def _report_plan(plan: WarmStartPlan) -> None:
    """Log the plan; warn where the user should act (failed paths, a broken covariance).

    A high Pareto k alone gets no warning: it is usual for skewed or funnel-shaped
    posteriors, and CmdStan's full warmup (the fallback) is the right answer to it.
    """
    _log.info("Pathfinder warm start: %s.", plan.reason)
    k = plan.choice.pareto_k
    if not plan.fallback or (np.isfinite(k) and k > DEFAULT_MAX_PARETO_K):
        return
    warnings.warn(
        f"Pathfinder's warm start is not usable ({plan.choice.reason}), so CmdStan runs its "
        "full warmup. Check the model at its initial values and the failed paths "
        "(CmdStanModel.pathfinder_ext(...)['pathfinder_paths']), or pass "
        "warmstart_options={'num_paths': 8}.",
        RuntimeWarning,
        stacklevel=4,
    )


class CmdStanModel(FlowAndAmortizedMethods, BuiltOnce, cmdstanpy.CmdStanModel):
    """cmdstanpy's ``CmdStanModel``, plus Pathfinder warm starts for ``sample``.

    Everything cmdstanpy's class does works unchanged. Two additions:

    - ``sample(..., warmstart="pathfinder")``: start CmdStan's NUTS from our
      Pathfinder (inits and metric), with a shorter warmup.
    - :meth:`pathfinder_ext`: our Pathfinder on this program (CmdStan older
      than 2.33 has no ``pathfinder`` method), as ArviZ data.
    - ``sample(..., warmstart="flow")``: start CmdStan's NUTS from a flow
      fitted to the posterior; :meth:`flow_sample`: flow MCMC with a
      cmdstanpy-like result; :meth:`amortize`: amortized fitting
      (:mod:`stan_bridge.cmdstan_methods`).

    The constructor takes cmdstanpy's arguments. It compiles the program's
    C++ once (:class:`~stan_bridge.cmdstan_build.BuiltOnce`): the executable
    and, when a warm start needs it, the shim's library are linked from one
    object file, and ``build`` says where. Where stan_bridge cannot build what was
    asked (``cpp_options`` other than ``STAN_THREADS``, a ``user_header``,
    ...), cmdstanpy compiles as usual.

    Examples
    --------
    >>> from stan_bridge import CmdStanModel
    >>> from stan_bridge.programs import reference_data, write_program
    >>> model = CmdStanModel(stan_file=write_program("eight_schools"))
    >>> fit = model.sample(data=reference_data("eight_schools"), warmstart="pathfinder",
    ...                    chains=2, seed=1, show_progress=False)
    >>> fit.warmstart.grad_evals > 0, fit.draws().shape[0]
    (True, 1000)
    """

    _stan_models: dict

    def stan_model(self, data: Mapping[str, Any] | str | os.PathLike | None = None, **kwargs: Any):
        """The :class:`~stan_bridge.StanModel` for this program and ``data`` (cached).

        Parameters
        ----------
        data : dict or path, optional
            As for ``sample``.
        **kwargs
            Passed to :class:`~stan_bridge.StanModel` (``seed``,
            ``toolchain``, ...). By default the toolchain is the CmdStan
            cmdstanpy uses.

        Returns
        -------
        StanModel

        Examples
        --------
        >>> from stan_bridge import CmdStanModel
        >>> from stan_bridge.programs import reference_data, write_program
        >>> m = CmdStanModel(stan_file=write_program("arK"))
        >>> m.stan_model(reference_data("arK")).dim
        7
        """
        if self.stan_file is None:
            raise ValueError(
                "A warm start needs the Stan program: create the model with "
                "CmdStanModel(stan_file=...), not from an executable alone."
            )
        cache = self.__dict__.setdefault("_stan_models", {})
        key = (_data_key(data), tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
        if key not in cache:
            if "toolchain" not in kwargs:
                try:
                    kwargs["toolchain"] = cmdstanpy.cmdstan_path()
                except ValueError:
                    pass
            cache.clear()  # keep one: a model holds its data
            cache[key] = StanModel(self.stan_file, data, **kwargs)
        return cache[key]

    def sample(
        self,
        data: Mapping[str, Any] | str | os.PathLike | None = None,
        *args: Any,
        warmstart: str | None = None,
        warmstart_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> cmdstanpy.CmdStanMCMC:
        """cmdstanpy's ``sample``, optionally warm-started by Pathfinder.

        Parameters
        ----------
        data, *args, **kwargs
            Exactly as ``cmdstanpy.CmdStanModel.sample``.
        warmstart : {None, "pathfinder", "flow"}
            ``None``: cmdstanpy's ``sample`` unchanged. ``"pathfinder"``:
            run our Pathfinder on the same program and data, start each
            chain at its own Pathfinder draw with Pathfinder's covariance as
            the metric (``metric="auto"``, the default: ``dense_e`` with the
            full matrix on a correlated posterior, ``diag_e`` otherwise), and
            shorten warmup: to 19 iterations (step size only) when
            Pathfinder is good, 200 when it is rough, CmdStan's own when it
            is not to be trusted (:func:`stan_bridge.warmstart.plan_warmstart`;
            ``fit.warmstart`` says which, and why). Arguments you give
            (``inits``, ``inv_metric``, ``iter_warmup``, the
            ``adapt_*`` windows) are kept. ``"flow"``: the same with a
            normalizing flow fitted to the posterior
            (:func:`pymc_ext.flows.flow_init`) in place of Pathfinder: inits
            from flow draws, metric from their importance-weighted
            covariance, chosen as for Pathfinder.
        warmstart_options : dict, optional
            ``num_paths`` (4), ``num_draws`` (1000), ``random_seed`` (the
            ``seed`` of the call), ``output_dir`` for the inits and metric
            files, and other keywords of ``multipath_pathfinder``. With
            ``"flow"``: ``output_dir`` and the keywords of ``flow_init``
            (``num_draws``, ``num_paths``, ``method``, ``flow_kwargs``, ...).

        Returns
        -------
        cmdstanpy.CmdStanMCMC
            With a ``warmstart`` attribute (:class:`WarmStartInfo`) when
            warm-started.

        Examples
        --------
        >>> from stan_bridge import CmdStanModel
        >>> from stan_bridge.programs import reference_data, write_program
        >>> model = CmdStanModel(stan_file=write_program("arK"))
        >>> fit = model.sample(data=reference_data("arK"), warmstart="pathfinder",
        ...                    chains=2, seed=2, show_progress=False)
        >>> bool(abs(fit.stan_variable("sigma").mean() - 0.15) < 0.01)  # reference: 0.1506
        True
        """
        if warmstart is None:
            if warmstart_options:
                raise ValueError("warmstart_options needs warmstart='pathfinder' or 'flow'.")
            return super().sample(data, *args, **kwargs)
        if warmstart == "flow":
            return self._sample_flow_warm(data, args, kwargs, warmstart_options)
        metric = _check_warmstart_call(warmstart, args, kwargs)
        from stan_bridge.wrapper_methods import cmdstan_iter_warmup

        inits_files, metric_file, result, t0 = self._run_pathfinder(
            data, kwargs, dict(warmstart_options or {}), metric
        )
        plan = result.warmstart_plan
        call = _warm_arguments(kwargs, plan.metric, inits_files, metric_file, plan.warmup_arguments)
        if kwargs.get("inv_metric") is not None:
            metric_file = None
        seconds = time.perf_counter() - t0
        fit = super().sample(data, **call)
        fit, mismatch, discarded, plan = self._redo_if_unfit(data, kwargs, call, fit, plan)
        fit.warmstart = WarmStartInfo.from_result(
            result,
            metric=plan.metric,
            iter_warmup=cmdstan_iter_warmup(fit),  # CmdStan's, not the thinned draws
            inits_files=inits_files,
            metric_file=metric_file,
            seconds=seconds,
            plan=plan,
            warmup_given=kwargs.get("iter_warmup") is not None,
        )
        fit.warmstart.metric_mismatch = mismatch
        fit.warmstart.discarded_leapfrogs = discarded
        return fit

    def _redo_if_unfit(
        self,
        data: Any,
        kwargs: Mapping[str, Any],
        call: dict[str, Any],
        fit: cmdstanpy.CmdStanMCMC,
        plan: WarmStartPlan,
    ) -> tuple[cmdstanpy.CmdStanMCMC, float, int, WarmStartPlan]:
        """After a ``"keep"`` run: redo it with CmdStan's full warmup if the metric did not fit.

        The check compares each chain's variances with the kept metric
        (:func:`~stan_bridge.warmstart_check.kept_metric_mismatch`). The redo starts
        from the chains' last draws, with their covariance as the first metric.
        Returns the fit to keep, the mismatch, the leapfrogs thrown away, the plan.
        """
        given = any(kwargs.get(k) is not None for k in ("iter_warmup", "inv_metric", "inits"))
        if plan.warmup != "keep" or given or fit.inv_metric is None:
            return fit, float("nan"), 0, plan
        sm = self.stan_model(data, seed=_seed_int(kwargs.get("seed")) or 0)
        mismatch = kept_metric_mismatch(sm, fit)
        if not mismatch > keep_mismatch_threshold(fit.num_draws_sampling):
            return fit, mismatch, 0, plan
        directory = Path(call["inits"][0]).parent if call.get("inits") else tempfile.mkdtemp()
        inits, metric_file = rerun_arguments(sm, fit, plan.metric, directory)
        redo = {k: v for k, v in call.items() if k not in WARMSTART_WARMUP}
        redo.update(inits=inits, inv_metric=metric_file)
        discarded = int(fit.method_variables()["n_leapfrog__"].sum())
        _log.info("The kept metric did not fit the chains (%.3g); redoing the run.", mismatch)
        plan = dataclasses.replace(
            plan,
            warmup="fallback",
            reason=f"{plan.reason}; the kept metric did not fit the chains (variances off by "
            f"{mismatch:.3g}x): redone with CmdStan's full warmup",
        )
        return super().sample(data, **redo), mismatch, discarded, plan

    def _sample_flow_warm(
        self, data: Any, args: tuple, kwargs: dict[str, Any], options: Mapping[str, Any] | None
    ) -> cmdstanpy.CmdStanMCMC:
        """``sample(warmstart="flow")``: the flow's inits, metric and plan, then CmdStan's NUTS."""
        from stan_bridge.wrapper_methods import (
            check_flow_warmstart_options,
            flow_warmstart,
            flow_warmstart_record,
        )

        metric = _check_warmstart_call("flow", args, kwargs)
        opts = check_flow_warmstart_options(options)  # before any compiling
        seed = _seed_int(kwargs.get("seed"))
        sm = self.stan_model(data, seed=seed or 0)
        t0 = time.perf_counter()
        out_dir = opts.pop("output_dir", None) or kwargs.get("output_dir")
        inits_files, metric_file, info = flow_warmstart(
            sm, int(kwargs.get("chains") or 4),
            out_dir or tempfile.mkdtemp(prefix="stan_bridge_warmstart_"), metric=metric,
            random_seed=opts.pop("random_seed", seed),
            progressbar=opts.pop("progressbar", bool(kwargs.get("show_progress", True))), **opts,
        )
        plan = info.plan
        call = _warm_arguments(kwargs, plan.metric, inits_files, metric_file, plan.warmup_arguments)
        seconds = time.perf_counter() - t0
        fit = super().sample(data, **call)
        fit, mismatch, discarded, plan = self._redo_if_unfit(data, kwargs, call, fit, plan)
        fit.warmstart = flow_warmstart_record(
            info, plan, fit, kwargs, seconds=seconds, mismatch=mismatch, discarded=discarded
        )
        return fit

    def _run_pathfinder(
        self, data: Any, kwargs: Mapping[str, Any], opts: dict[str, Any], metric: str
    ) -> tuple[list[str], str | None, Any, float]:
        """Pathfinder, its plan, the inits / metric files, and when it started (after any build)."""
        sm = self.stan_model(data, seed=_seed_int(kwargs.get("seed")) or 0)
        t0 = time.perf_counter()
        out_dir = opts.pop("output_dir", None) or kwargs.get("output_dir")
        if out_dir is None:
            out_dir = tempfile.mkdtemp(prefix="stan_bridge_warmstart_")
        random_seed = opts.pop("random_seed", _seed_int(kwargs.get("seed")))
        inits_files, metric_file, result = warmstart_from_pathfinder(
            sm,
            int(kwargs.get("chains") or 4),
            out_dir,
            num_paths=int(opts.pop("num_paths", 4)),
            num_draws=int(opts.pop("num_draws", 1000)),
            random_seed=random_seed,
            metric=metric,
            progressbar=opts.pop("progressbar", bool(kwargs.get("show_progress", True))),
            **opts,
        )
        _report_plan(result.warmstart_plan)
        return inits_files, metric_file, result, t0

    def pathfinder_ext(
        self,
        data: Mapping[str, Any] | str | os.PathLike | None = None,
        num_paths: int = 4,
        num_draws: int = 1000,
        seed: int | None = None,
        *,
        progressbar: bool = True,
        **kwargs: Any,
    ):
        """Our multi-path Pathfinder on this program (works with any CmdStan version).

        Parameters
        ----------
        data : dict or path, optional
            As for ``sample``.
        num_paths, num_draws : int
            Paths, and draws returned after importance resampling.
        seed : int, optional
            Random seed.
        progressbar : bool
            Progress bar over paths.
        **kwargs
            Keywords of :func:`pymc_ext.vi.multipath.multipath_pathfinder`.

        Returns
        -------
        xarray.DataTree
            As :func:`stan_bridge.pathfinder`.

        Examples
        --------
        >>> from stan_bridge import CmdStanModel
        >>> from stan_bridge.programs import reference_data, write_program
        >>> m = CmdStanModel(stan_file=write_program("arK"))
        >>> dt = m.pathfinder_ext(reference_data("arK"), seed=1, progressbar=False)
        >>> dt.posterior["beta"].shape
        (1, 1000, 5)
        """
        return pathfinder(
            self.stan_model(data),
            num_paths=num_paths,
            num_draws=num_draws,
            random_seed=seed,
            progressbar=progressbar,
            **kwargs,
        )


def pathfinder(
    stan_model: StanModel,
    num_paths: int = 4,
    num_draws: int = 1000,
    random_seed: int | None = None,
    *,
    progressbar: bool = True,
    **kwargs: Any,
):
    """Multi-path Pathfinder on a :class:`~stan_bridge.StanModel`; returns ArviZ data.

    Parameters
    ----------
    stan_model : StanModel
        The program with its data.
    num_paths : int
        Independent L-BFGS paths.
    num_draws : int
        Draws returned after Pareto-smoothed importance resampling.
    random_seed : int, optional
        Seed.
    progressbar : bool
        Progress bar over paths.
    **kwargs
        Keywords of :func:`pymc_ext.vi.multipath.multipath_pathfinder`
        (``init``, ``jitter``, ``history_size``, ``maxiter``, ...).

    Returns
    -------
    xarray.DataTree
        ``posterior`` (parameters and transformed parameters, in the
        program's shapes), ``sample_stats`` (``lp``, ``logq``; attributes
        ``pareto_k``, ``grad_evals``) and ``pathfinder_paths``.

    Examples
    --------
    >>> import stan_bridge
    >>> from stan_bridge.programs import PROGRAMS, reference_data
    >>> sm = stan_bridge.StanModel(PROGRAMS["eight_schools"], reference_data("eight_schools"),
    ...                            progressbar=False)
    >>> dt = stan_bridge.pathfinder(sm, random_seed=1, progressbar=False)
    >>> dt.posterior["theta"].shape
    (1, 1000, 8)
    """
    from pymc_ext.vi.api import density_pathfinder

    return density_pathfinder(
        stan_model,
        num_paths=num_paths,
        num_draws=num_draws,
        random_seed=random_seed,
        progressbar=progressbar,
        **kwargs,
    )
