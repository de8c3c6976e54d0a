"""A drop-in ``cmdstanpy.CmdStanModel`` whose NUTS can start from Pathfinder.

``CmdStanModel(stan_file=...).sample(data=..., warmstart="pathfinder")``:

1. builds the :class:`~stan_bridge.StanModel` for the same program and data
   (our shared library, cached);
2. runs our multi-path Pathfinder on it
   (:func:`pymc_ext.vi.multipath.multipath_pathfinder`);
3. writes one inits file per chain (distinct Pathfinder draws, constrained)
   and a metric file (the importance-weighted covariance: its diagonal, or
   the full matrix with ``metric="dense_e"``), see :mod:`stan_bridge.warmstart`;
4. shortens warmup (200 iterations by default: 50 for the step size, one
   100-iteration metric window, 50 to settle the step size), and
5. calls CmdStan's own NUTS through cmdstanpy.

It returns cmdstanpy's ``CmdStanMCMC`` (so ``az.from_cmdstanpy`` works) with
a ``warmstart`` attribute (:class:`WarmStartInfo`: ``grad_evals``,
``pareto_k``, ...). ``warmstart=None`` is cmdstanpy's ``sample``, unchanged.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cmdstanpy
import numpy as np

from stan_bridge.model import StanModel
from stan_bridge.warmstart import WARMSTART_WARMUP, WarmStartInfo, warmstart_from_pathfinder

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
    """Check a warm-started ``sample`` call; return its metric (``diag_e`` or ``dense_e``)."""
    if warmstart != "pathfinder":
        raise ValueError(f"warmstart must be None or 'pathfinder'; got {warmstart!r}.")
    if args:
        raise TypeError("With a warm start, pass sample's arguments by keyword.")
    params = inspect.signature(cmdstanpy.CmdStanModel.sample).parameters
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise TypeError(f"sample() got unexpected keyword arguments {unknown}.")
    if kwargs.get("fixed_param"):
        raise ValueError("A warm start needs parameters to sample; fixed_param=True has none.")
    metric = kwargs.get("metric") or "diag_e"
    if metric in ("diag", "dense"):
        metric = metric + "_e"
    if metric not in ("diag_e", "dense_e"):
        raise ValueError(
            f"With a warm start, metric must be 'diag_e' or 'dense_e'; got {metric!r}."
        )
    return metric


def _warm_arguments(
    kwargs: Mapping[str, Any], metric: str, inits_files: list[str], metric_file: str
) -> dict[str, Any]:
    """cmdstanpy's ``sample`` arguments with the warm start's inits, metric and warmup.

    What the caller gave (``inits``, ``inv_metric``, ``iter_warmup``, the
    ``adapt_*`` windows) is kept.
    """
    call = dict(kwargs)
    call["metric"] = metric
    if call.get("inits") is None:
        call["inits"] = inits_files
    if call.get("inv_metric") is None:
        call["inv_metric"] = metric_file
    if call.get("iter_warmup") is None:
        for key, value in WARMSTART_WARMUP.items():
            if call.get(key) is None:
                call[key] = value
    return call


class CmdStanModel(cmdstanpy.CmdStanModel):
    """cmdstanpy's ``CmdStanModel``, plus Pathfinder warm starts for ``sample``.

    Everything cmdstanpy's class does works unchanged. Two additions:

    - ``sample(..., warmstart="pathfinder")``: start CmdStan's NUTS from our
      Pathfinder (inits and metric), with a shorter warmup.
    - :meth:`pathfinder_ext`: our Pathfinder on this program (CmdStan older
      than 2.33 has no ``pathfinder`` method), as ArviZ data.

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
        warmstart : {None, "pathfinder"}
            ``None``: cmdstanpy's ``sample`` unchanged. ``"pathfinder"``:
            run our Pathfinder on the same program and data, start each
            chain at its own Pathfinder draw with Pathfinder's covariance as
            the initial metric (``metric="dense_e"`` for the full matrix),
            and shorten warmup to 200 iterations. Arguments you give
            (``inits``, ``inv_metric``, ``iter_warmup``, the
            ``adapt_*`` windows) are kept.
        warmstart_options : dict, optional
            ``num_paths`` (4), ``num_draws`` (1000), ``random_seed`` (the
            ``seed`` of the call), ``output_dir`` for the inits and metric
            files, and other keywords of ``multipath_pathfinder``.

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
                raise ValueError("warmstart_options needs warmstart='pathfinder'.")
            return super().sample(data, *args, **kwargs)
        metric = _check_warmstart_call(warmstart, args, kwargs)
        inits_files, metric_file, result, t0 = self._run_pathfinder(
            data, kwargs, dict(warmstart_options or {}), metric
        )
        call = _warm_arguments(kwargs, metric, inits_files, metric_file)
        if kwargs.get("inv_metric") is not None:
            metric_file = None
        seconds = time.perf_counter() - t0
        fit = super().sample(data, **call)
        fit.warmstart = WarmStartInfo.from_result(
            result,
            metric=metric,
            iter_warmup=int(call["iter_warmup"]),
            inits_files=inits_files,
            metric_file=metric_file,
            seconds=seconds,
        )
        return fit

    def _run_pathfinder(
        self, data: Any, kwargs: Mapping[str, Any], opts: dict[str, Any], metric: str
    ) -> tuple[list[str], str, Any, float]:
        """Pathfinder and the inits / metric files; also when it started (after any build)."""
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
        if result.pareto_k > 0.7:
            _log.info(
                "Pathfinder's Pareto k is %.2f (> 0.7): a rough approximation, as usual for "
                "skewed or funnel-shaped posteriors. The chains start from it anyway and warmup "
                "adapts the metric; check R-hat and ESS as always.",
                result.pareto_k,
            )
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
