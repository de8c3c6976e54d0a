"""A drop-in ``cmdstanpy.CmdStanModel`` whose NUTS can start from Pathfinder.

``CmdStanModel(stan_file=...).sample(data=..., warmstart="pathfinder")``:

1. builds the :class:`~stan_bridge.StanModel` for the same program and data
   (our shared library, cached);
2. runs our multi-path Pathfinder on it
   (:func:`pymc_ext.pathfinder_core.multipath_pathfinder`);
3. writes one inits file per chain (distinct Pathfinder draws, constrained)
   and a metric file (the importance-weighted covariance: its diagonal, or
   the full matrix with ``metric="dense_e"``);
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
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cmdstanpy
import numpy as np

from stan_bridge.model import StanModel

__all__ = ["CmdStanModel", "WarmStartInfo", "pathfinder", "warmstart_from_pathfinder"]

_log = logging.getLogger("stan_bridge")

#: Warmup schedule used after a warm start unless the caller sets it.
WARMSTART_WARMUP = {
    "iter_warmup": 200,
    "adapt_init_phase": 50,
    "adapt_metric_window": 100,
    "adapt_step_size": 50,
}


@dataclass
class WarmStartInfo:
    """What the warm start did and cost.

    Attributes
    ----------
    method : str
        ``"pathfinder"``.
    grad_evals : int
        Gradient evaluations Pathfinder spent (L-BFGS over all paths).
    logp_evals : int
        Log-density-only evaluations Pathfinder spent (ELBO, importance
        weights).
    pareto_k : float
        PSIS Pareto k of Pathfinder's pooled importance weights (above 0.7:
        the approximation is poor; the chains still start there, and
        warmup corrects the metric).
    num_paths, num_paths_ok : int
        Paths run, and paths that succeeded.
    metric : str
        ``"diag_e"`` or ``"dense_e"``.
    iter_warmup : int
        Warmup iterations CmdStan ran.
    inits_files : list of str
        Per-chain inits written.
    metric_file : str or None
        The metric file written (None where the caller gave ``inv_metric``).
    seconds : float
        Wall time of the warm start (Pathfinder and files), not counting a
        first compile of the shared library.
    result : PathfinderResult
        The full Pathfinder result.

    Examples
    --------
    >>> from stan_bridge import CmdStanModel
    >>> from stan_bridge.programs import reference_data, write_program
    >>> m = CmdStanModel(stan_file=write_program("eight_schools"))  # doctest: +SKIP
    >>> data = reference_data("eight_schools")
    >>> fit = m.sample(data=data, warmstart="pathfinder")  # doctest: +SKIP
    >>> fit.warmstart.grad_evals, fit.warmstart.pareto_k  # doctest: +SKIP
    (104, 0.79)
    """

    method: str
    grad_evals: int
    logp_evals: int
    pareto_k: float
    num_paths: int
    num_paths_ok: int
    metric: str
    iter_warmup: int
    inits_files: list[str]
    metric_file: str | None
    seconds: float
    result: Any = field(repr=False, default=None)


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


def _jsonable(value: Any) -> Any:
    arr = np.asarray(value, dtype=float)
    return arr.tolist() if arr.ndim else float(arr)


def warmstart_from_pathfinder(
    stan_model: StanModel,
    chains: int,
    directory: str | os.PathLike,
    *,
    num_paths: int = 4,
    num_draws: int = 1000,
    random_seed: int | None = None,
    metric: str = "diag_e",
    progressbar: bool = True,
    **pathfinder_kwargs: Any,
) -> tuple[list[str], str, Any]:
    """Run Pathfinder and write CmdStan inits (one file per chain) and a metric file.

    Parameters
    ----------
    stan_model : StanModel
        The program with its data.
    chains : int
        Number of chains (one inits file each, from distinct draws).
    directory : path
        Where the files go.
    num_paths, num_draws, random_seed
        Passed to :func:`pymc_ext.pathfinder_core.multipath_pathfinder`.
    metric : {"diag_e", "dense_e"}
        Write the diagonal of Pathfinder's covariance, or all of it.
    progressbar : bool
        Progress bar over Pathfinder's paths.
    **pathfinder_kwargs
        More keywords for ``multipath_pathfinder``.

    Returns
    -------
    inits_files : list of str
    metric_file : str
    result : PathfinderResult

    Examples
    --------
    >>> import tempfile
    >>> from stan_bridge import StanModel
    >>> from stan_bridge.programs import PROGRAMS, reference_data
    >>> from stan_bridge.cmdstan import warmstart_from_pathfinder
    >>> sm = StanModel(PROGRAMS["arK"], reference_data("arK"), progressbar=False)
    >>> inits, metric_file, res = warmstart_from_pathfinder(
    ...     sm, 2, tempfile.mkdtemp(), random_seed=1, progressbar=False)
    >>> len(inits), res.draws.shape[1]
    (2, 7)
    """
    from pymc_ext.pathfinder_core import multipath_pathfinder

    if metric not in ("diag_e", "dense_e"):
        raise ValueError(f"metric must be 'diag_e' or 'dense_e' for a warm start; got {metric!r}.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    result = multipath_pathfinder(
        stan_model,
        num_paths=num_paths,
        num_draws=num_draws,
        random_seed=random_seed,
        progressbar=progressbar,
        **pathfinder_kwargs,
    )
    rng = np.random.default_rng(random_seed)
    # distinct draws where there are enough distinct ones
    uniq = np.unique(result.draws, axis=0)
    pool = uniq if uniq.shape[0] >= chains else result.draws
    picks = rng.choice(pool.shape[0], size=chains, replace=pool.shape[0] < chains)
    inits_files = []
    for c, i in enumerate(picks):
        point = stan_model.constrain(pool[i])
        init = {name: _jsonable(point[name]) for name in stan_model.param_names_list}
        path = directory / f"warmstart_inits_{c + 1}.json"
        path.write_text(json.dumps(init))
        inits_files.append(str(path))
    if metric == "diag_e":
        inv_metric = result.inverse_metric_diag
    else:
        inv_metric = result.covariance
    if not np.all(np.isfinite(inv_metric)) or np.any(np.diag(np.atleast_2d(inv_metric)) <= 0):
        raise FloatingPointError("Pathfinder's covariance estimate is not positive and finite.")
    metric_file = directory / f"warmstart_metric_{metric}.json"
    metric_file.write_text(json.dumps({"inv_metric": np.asarray(inv_metric).tolist()}))
    return inits_files, str(metric_file), result


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
        opts = dict(warmstart_options or {})
        sm = self.stan_model(data, seed=_seed_int(kwargs.get("seed")) or 0)
        t0 = time.perf_counter()
        chains = int(kwargs.get("chains") or 4)
        metric = kwargs.get("metric") or "diag_e"
        if metric in ("diag", "dense"):
            metric = metric + "_e"
        if metric not in ("diag_e", "dense_e"):
            raise ValueError(
                f"With a warm start, metric must be 'diag_e' or 'dense_e'; got {metric!r}."
            )
        out_dir = opts.pop("output_dir", None) or kwargs.get("output_dir")
        if out_dir is None:
            out_dir = tempfile.mkdtemp(prefix="stan_bridge_warmstart_")
        random_seed = opts.pop("random_seed", _seed_int(kwargs.get("seed")))
        show = bool(kwargs.get("show_progress", True))
        inits_files, metric_file, result = warmstart_from_pathfinder(
            sm,
            chains,
            out_dir,
            num_paths=int(opts.pop("num_paths", 4)),
            num_draws=int(opts.pop("num_draws", 1000)),
            random_seed=random_seed,
            metric=metric,
            progressbar=opts.pop("progressbar", show),
            **opts,
        )
        if result.pareto_k > 0.7:
            _log.info(
                "Pathfinder's Pareto k is %.2f (> 0.7): a rough approximation, as usual for "
                "skewed or funnel-shaped posteriors. The chains start from it anyway and warmup "
                "adapts the metric; check R-hat and ESS as always.",
                result.pareto_k,
            )
        call = dict(kwargs)
        call["metric"] = metric
        if call.get("inits") is None:
            call["inits"] = inits_files
        if call.get("inv_metric") is None:
            call["inv_metric"] = metric_file
        else:
            metric_file = None
        if call.get("iter_warmup") is None:
            for key, value in WARMSTART_WARMUP.items():
                if call.get(key) is None:
                    call[key] = value
        seconds = time.perf_counter() - t0
        fit = super().sample(data, **call)
        fit.warmstart = WarmStartInfo(
            method="pathfinder",
            grad_evals=int(result.grad_evals),
            logp_evals=int(result.logp_evals),
            pareto_k=float(result.pareto_k),
            num_paths=len(result.paths),
            num_paths_ok=int(result.num_paths_ok),
            metric=metric,
            iter_warmup=int(call["iter_warmup"]),
            inits_files=inits_files,
            metric_file=metric_file,
            seconds=seconds,
            result=result,
        )
        return fit

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
            Keywords of :func:`pymc_ext.pathfinder_core.multipath_pathfinder`.

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
        Keywords of :func:`pymc_ext.pathfinder_core.multipath_pathfinder`
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
    from pymc_ext.pathfinder_core import density_pathfinder

    return density_pathfinder(
        stan_model,
        num_paths=num_paths,
        num_draws=num_draws,
        random_seed=random_seed,
        progressbar=progressbar,
        **kwargs,
    )
