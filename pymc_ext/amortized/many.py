"""The amortized workflow on many datasets: amortized draws, a check, and the cheapest exact path.

For each dataset (Li, Schmitt et al., "Amortized Bayesian Workflow", 2024):

1. amortized draws and their Pareto k against the true density (one batched
   call for all datasets);
2. ``k < 0.7`` and an importance ESS of at least ``min_psis_ess`` (400): the
   draws importance-resampled with their PSIS weights (route ``"psis"``).
   Where k passes but the ESS falls short, the dataset is drawn again with
   up to ``max_psis_factor`` (16) times the draws, enough for the ESS by the
   first pass's efficiency, before MCMC is considered: amortized draws cost
   milliseconds, MCMC seconds. An ESS of 400 keeps the resampled moments'
   Monte Carlo error near 0.05 posterior sd.
   Not the raw draws: a small k says that no draw of ``p`` is missing from
   ``q``, not that ``q`` has no stray draws where ``p`` has none; such draws
   get weight ~0 and go (measured: raw draws at k < 0.5 were up to 5.7
   posterior sd off in sd, their resampled draws were not);
3. otherwise: exact independence Metropolis-Hastings with the adapted
   amortized proposal (``"mh"``, :mod:`pymc_ext.amortized.mh`); when its
   acceptance rate is below ``min_acceptance``, or its chains have not mixed
   (R-hat above 1.01 or a bulk ESS under ``min_ess``), NUTS on the model at
   that dataset instead (``"nuts"``). A dataset whose MCMC raised is
   reported as ``"failed"`` with the error, by name; NUTS chains that fail
   the same check are kept, and a warning names their datasets. MH is tried
   on the first ``mh_pilot`` (8) MCMC datasets; where it passes on fewer than
   half of them, the others go straight to NUTS (on eight schools' funnel it
   failed on 78 of 84, each attempt costing more than the NUTS run after it).

Step 3 is the expensive part and the part that scales out: given a
``dask.distributed`` ``Client``, step 1 runs in tasks of whole batches and
each MCMC dataset is one task (:mod:`pymc_ext.amortized.cluster`). A worker
gets what it can rebuild, never live PyTensor or torch objects: the saved
amortizer (bytes of :meth:`Amortizer.save`'s file) and the model function
``model_builder(data)`` (for a Stan program, its code, data and build
options: the compiled library comes from the build cache). Dask reruns the
task of a worker that dies; a task that fails anyway is reported by name.
Seeds are per dataset, so a cluster run gives the same draws as a local one
in the same floating-point environment (torch and BLAS threads; see
docs/many_datasets.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from pymc_ext.amortized.many_psis import psis_posteriors, top_up
from pymc_ext.amortized.many_types import FitManyResult, FitManySettings, Route, table_row
from pymc_ext.amortized.nuts_route import compiled_nuts, nutpie_available
from pymc_ext.blocks.progress import ProgressBar

__all__ = [
    "FitManyResult",
    "FitManySettings",
    "ManyDatasetsMixin",
    "Route",
    "fit_many",
    "mcmc_one",
]


#: ``nuts_kwargs`` the compiled-once nutpie route takes; any other sends the
#: NUTS route to ``pm.sample`` on the conditioned model.
NUTPIE_OPTIONS = frozenset({"tune", "target_accept", "maxdepth"})


def _convergence(idata: Any) -> tuple[float, float]:
    """The largest R-hat and the smallest bulk ESS over the posterior's scalars.

    On the stacked arrays with ``arviz_stats``' array functions: the same
    rank-normalised R-hat and bulk ESS as ``az.rhat`` / ``az.ess`` on the
    DataTree, for a few milliseconds instead of a few hundred (it runs once or
    twice for every dataset that needs MCMC).
    """
    from arviz_stats.base import array_stats

    posterior = idata["posterior"]
    cols = []
    for name in posterior.data_vars:
        arr = np.asarray(posterior[name].values, dtype=float)
        cols.append(arr.reshape(arr.shape[0], arr.shape[1], -1))
    x = np.moveaxis(np.concatenate(cols, axis=2), 2, 0)  # (scalar, chain, draw)
    rhat = np.asarray(array_stats.rhat(x, method="rank", chain_axis=-2, draw_axis=-1))
    ess = np.asarray(array_stats.ess(x, method="bulk", chain_axis=-2, draw_axis=-1))
    return float(np.nanmax(rhat)), float(np.nanmin(ess))


def _nuts(amortizer: Any, data: Mapping[str, Any], seed: int, settings: FitManySettings) -> Any:
    """NUTS on the model at ``data``: PyMC's ``pm.sample``, or stan_bridge's NUTS on a density."""
    from pymc_ext.amortized.targets import PyMCTarget

    target = amortizer.target
    if isinstance(target, PyMCTarget):
        import pymc as pm

        from pymc_ext.pymc_adapter.conditioning import condition_on

        options = dict(settings.nuts_kwargs or {})
        sampler = options.pop("nuts_sampler", "nutpie" if nutpie_available() else "pymc")
        if sampler == "nutpie" and set(options) <= NUTPIE_OPTIONS:
            tune = int(options.pop("tune", 1000))
            return compiled_nuts(target.model).sample(
                data, draws=settings.draws, tune=tune, chains=settings.chains, seed=seed,
                **options,
            )
        logger = logging.getLogger("pymc")
        level = logger.level
        logger.setLevel(logging.WARNING)  # no "NUTS[...]" line per dataset
        try:
            with condition_on(target.model, data):
                # pm.sample on the conditioned model: where nutpie is missing, or for
                # pm.sample keywords the compiled route does not take
                kwargs = {"progressbar": False, "compute_convergence_checks": False,
                          "cores": 1, "nuts_sampler": sampler}
                kwargs.update(options)
                return pm.sample(draws=settings.draws, chains=settings.chains, random_seed=seed,
                                 **kwargs)
        finally:
            logger.setLevel(level)
    from pymc_ext.pymc_adapter.datatree import to_datatree
    from stan_bridge.nuts import sample_nuts  # the NUTS of Stan-side densities

    density = target.conditioned(data)
    draws, stats = sample_nuts(density, settings.draws, chains=settings.chains,
                               random_seed=seed, progressbar=False)
    per_draw = {k: v for k, v in stats.items() if np.shape(v)[:2] == draws.shape[:2]}
    return to_datatree(density, draws, sample_stats=per_draw, observed_data=dict(data))


def _mh_failures(rate: float, rhat: float, ess: float, settings: FitManySettings) -> list[str]:
    """Why MH chains are not good enough (empty when they are)."""
    failed = []
    if rate < settings.min_acceptance:
        failed.append(f"MH acceptance {rate:.3f} < {settings.min_acceptance}")
    if not rhat <= settings.max_rhat:
        failed.append(f"MH R-hat {rhat:.3f} > {settings.max_rhat}")
    if not ess >= settings.min_ess:
        failed.append(f"MH bulk ESS {ess:.0f} < {settings.min_ess:.0f}")
    return failed


def mcmc_one(
    amortizer: Any, data: Mapping[str, Any], seed: int, k: float, settings: FitManySettings,
    skip_mh: str = "",
) -> tuple[Any, dict[str, Any]]:
    """The exact path for one dataset: MH with the amortized proposal, else NUTS.

    ``skip_mh``: why MH is not tried (straight to NUTS); empty to try it.

    Returns
    -------
    (DataTree, dict)
        The posterior and its row of the table.
    """
    import warnings

    from pymc_ext.amortized.mh import exact_draws

    start = time.perf_counter()
    reason = f"k = {k:.2f}" + (f" >= {settings.mcmc_k}" if k >= settings.mcmc_k else
                                ", importance ESS too small")
    rate = np.nan
    if skip_mh:
        failed = [skip_mh]
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the low acceptance is handled here, by NUTS
            idata = exact_draws(amortizer, data, settings.draws, settings.chains, seed)
        rate = float(idata.posterior.attrs["acceptance_rate"])
        rhat, ess = _convergence(idata)
        failed = _mh_failures(rate, rhat, ess, settings)
    if not failed:
        row = table_row(Route.MH, reason, k, acceptance=rate, rhat=rhat, ess=ess)
    else:
        idata = _nuts(amortizer, data, seed, settings)
        rhat, ess = _convergence(idata)
        stats = idata["sample_stats"] if "sample_stats" in idata.children else None
        divergences = (
            int(stats["diverging"].values.sum())
            if stats is not None and "diverging" in stats.data_vars
            else 0
        )
        row = table_row(Route.NUTS, "; ".join([reason, *failed]), k, acceptance=rate, rhat=rhat,
                   ess=ess, divergences=divergences)
    row["seconds"] = time.perf_counter() - start
    return idata, row


def mcmc_task(
    token: str, recipe: Any, payload: bytes, data: Mapping[str, Any], seed: int, k: float,
    settings: FitManySettings, skip_mh: str = "",
) -> tuple[Any, dict[str, Any]]:
    """A worker's task: :func:`mcmc_one`, the amortizer and model rebuilt from what was sent."""
    from pymc_ext.amortized.cluster import worker_amortizer

    amortizer = worker_amortizer(token, recipe, payload)
    # arrays unpickled from the scheduler can be unaligned views, which PyTensor refuses
    data = {name: np.array(value, copy=True) for name, value in data.items()}
    return mcmc_one(amortizer, data, seed, k, settings, skip_mh)


def _run_mcmc(
    amortizer: Any, jobs: list[tuple[int, Mapping[str, Any], int, float]],
    settings: FitManySettings, cluster: Any, progressbar: bool,
) -> dict[int, tuple[Any, dict[str, Any]]]:
    """Every MCMC job, locally or as one dask task each; failures become rows, by name.

    MH is tried on the first ``mh_pilot`` jobs; where it passes on fewer than
    ``min_mh_pass`` of them, the others go straight to NUTS. The pilot is the
    first jobs by dataset number, so a cluster run routes as a local one."""
    jobs = sorted(jobs, key=lambda job: job[0])
    pilot = len(jobs) if settings.mh_pilot == 0 else min(settings.mh_pilot, len(jobs))
    with ProgressBar(len(jobs), "exact MCMC on the datasets that need it",
                     show=progressbar and bool(jobs)) as bar:
        out = _mcmc_batch(amortizer, jobs[:pilot], settings, cluster, bar, "")
        if pilot < len(jobs):
            passed = sum(out[i][1]["route"] == Route.MH for i, _, _, _ in jobs[:pilot])
            skip = ""
            if passed < settings.min_mh_pass * pilot:
                skip = (f"MH not tried: it passed on {passed} of the {pilot} first MCMC "
                        "datasets")
            out.update(_mcmc_batch(amortizer, jobs[pilot:], settings, cluster, bar, skip))
    return out


def _mcmc_batch(
    amortizer: Any, jobs: list[tuple[int, Mapping[str, Any], int, float]],
    settings: FitManySettings, cluster: Any, bar: ProgressBar, skip_mh: str,
) -> dict[int, tuple[Any, dict[str, Any]]]:
    """:func:`mcmc_one` on each job, locally or as dask tasks."""
    out: dict[int, tuple[Any, dict[str, Any]]] = {}
    if not jobs:
        return out
    if cluster is None:
        for i, data, seed, k in jobs:
            try:
                out[i] = mcmc_one(amortizer, data, seed, k, settings, skip_mh)
            except (ValueError, FloatingPointError, RuntimeError) as err:
                out[i] = (None, table_row(Route.FAILED, f"k = {k:.2f}", k, error=repr(err)))
            bar.update()
        return out
    results = cluster.run(
        mcmc_task,
        [(cluster.token, cluster.recipe, cluster.remote_payload, data, seed, k, settings, skip_mh)
         for _, data, seed, k in jobs],
        [f"dataset {i}" for i, _, _, _ in jobs],
        "fit_many",
        bar,
    )
    for (i, _, _, k), result in zip(jobs, results, strict=True):
        if isinstance(result, BaseException):
            result = (None, table_row(Route.FAILED, f"k = {k:.2f}", k, error=repr(result)))
        out[i] = result
    return out


def _warn_unconverged(table: Any, settings: FitManySettings) -> None:
    """A warning naming the datasets whose final MCMC did not pass the convergence check."""
    import warnings

    nuts = table[table["route"] == Route.NUTS]
    bad = nuts[
        (nuts["rhat"] > settings.max_rhat)
        | (nuts["ess"] < settings.min_ess)
        | (nuts["divergences"] > 0)
    ]
    failed = table[table["route"] == Route.FAILED]
    if len(bad):
        warnings.warn(
            f"fit_many: NUTS did not converge on datasets {bad.index.tolist()} (R-hat above "
            f"{settings.max_rhat}, bulk ESS under {settings.min_ess:.0f}, or divergences; see "
            "the table's rhat, ess and divergences): their posteriors cannot be trusted as "
            "they are. Sample them with a higher target_accept (nuts_kwargs), more draws, or "
            "reparametrise the model.",
            UserWarning,
            stacklevel=5,  # the caller of Amortizer.fit_many
        )
    if len(failed):
        warnings.warn(
            f"fit_many: the MCMC of datasets {failed.index.tolist()} failed; the table's "
            "'error' column says why.",
            UserWarning,
            stacklevel=5,  # the caller of Amortizer.fit_many
        )


def fit_many(
    amortizer: Any,
    datasets: Sequence[Mapping[str, Any]],
    settings: FitManySettings | None = None,
    *,
    random_seed: int | None = None,
    client: Any = None,
    model_builder: Callable[[Mapping[str, Any]], Any] | None = None,
    progressbar: bool = True,
    **overrides: Any,
) -> FitManyResult:
    """The body of :meth:`Amortizer.fit_many <pymc_ext.Amortizer.fit_many>` (see there)."""
    from pymc_ext.amortized.cluster import cluster_run
    from pymc_ext.flows.conditional import torch_threads

    settings = settings or FitManySettings()
    if overrides:
        settings = FitManySettings(**{**settings.__dict__, **overrides})
    if isinstance(datasets, Mapping) or len(datasets) == 0:
        raise ValueError(
            "fit_many needs a non-empty list of datasets (dicts name -> array, one per dataset)."
        )
    amortizer.check_fitted()
    cluster = cluster_run(client, amortizer, model_builder)  # checked before any work
    with torch_threads(amortizer.num_threads):  # the same draws whatever the caller's setting
        return _fit_many(amortizer, datasets, settings, random_seed, cluster, progressbar)


def _fit_many(
    amortizer: Any, datasets: Sequence[Mapping[str, Any]], settings: FitManySettings,
    random_seed: int | None, cluster: Any, progressbar: bool,
) -> FitManyResult:
    import warnings

    import pandas as pd

    from pymc_ext.amortized.diagnostics import AmortizedDataWarning
    from pymc_ext.amortized.sampling import posterior_draws

    seeds = [int(s.generate_state(1)[0])
             for s in np.random.SeedSequence(random_seed).spawn(len(datasets))]
    start = time.perf_counter()
    with warnings.catch_warnings():
        # a high k is what routes a dataset to MCMC here: the table says so, not a warning
        warnings.simplefilter("ignore", AmortizedDataWarning)
        checked, theta, stats, diag = posterior_draws(
            amortizer, list(datasets), settings.draws, seeds[0] if seeds else None, None, True,
            cores=None, stacklevel=3, cluster=cluster,
        )
    done, jobs = psis_posteriors(
        amortizer, checked, theta, stats, diag["pareto_k"], seeds, settings
    )
    jobs = top_up(amortizer, checked, jobs, done, diag, seeds, settings, cluster)
    amortized_seconds = (time.perf_counter() - start) / max(len(datasets), 1)
    for _, row in done.values():
        row["seconds"] = amortized_seconds
    done.update(_run_mcmc(amortizer, jobs, settings, cluster, progressbar))
    rows = [done[i][1] for i in range(len(datasets))]
    table = pd.DataFrame(rows, index=pd.RangeIndex(len(datasets), name="dataset"))
    _warn_unconverged(table, settings)
    return FitManyResult([done[i][0] for i in range(len(datasets))], table)


class ManyDatasetsMixin:
    """:meth:`fit_many` for :class:`~pymc_ext.amortized.core.Amortizer`."""

    def fit_many(
        self,
        datasets: Sequence[Mapping[str, Any]],
        draws: int = 1000,
        *,
        random_seed: int | None = None,
        client: Any = None,
        model_builder: Callable[[Mapping[str, Any]], Any] | None = None,
        progressbar: bool = True,
        **options: Any,
    ) -> FitManyResult:
        """Posteriors for many datasets, each by the cheapest path that can be trusted.

        Amortized draws and their Pareto k for every dataset, in one batched
        call; PSIS resampling where ``k < mcmc_k`` (0.7), and exact MCMC for
        the rest: independence MH with the amortized proposal, or NUTS where
        MH accepts less than ``min_acceptance`` (0.1) or has not mixed (R-hat
        above 1.01, bulk ESS under 400). See :mod:`pymc_ext.amortized.many`.

        Parameters
        ----------
        datasets : sequence of dict
            ``name -> array`` per dataset, as for :meth:`sample`.
        draws : int
            Draws per dataset (per chain for MH and NUTS, ``chains=4``).
        random_seed : int, optional
            Seeds every dataset (the same results with or without a client).
        client : dask.distributed.Client, optional
            Run the amortized draws and the MCMC datasets as tasks on this
            cluster; locally when None.
        model_builder : callable, optional
            ``data -> model`` for one dataset (the function that built the
            training model). Needed with a ``client`` for a PyMC model (a
            ``StanModel`` is rebuilt from its program): workers rebuild the
            model from it and the amortizer from its saved file.
        progressbar : bool
            A progress bar over the MCMC datasets.
        **options
            ``chains``, ``mcmc_k``, ``min_psis_ess``, ``max_psis_factor``,
            ``min_acceptance``, ``max_rhat``, ``min_ess``, ``mh_pilot``,
            ``min_mh_pass``, ``nuts_kwargs``: see :class:`FitManySettings`.

        Returns
        -------
        FitManyResult
            ``posteriors`` (one DataTree per dataset) and ``table`` (the route
            each dataset took, and why).

        Examples
        --------
        >>> import numpy as np, pymc as pm, pymc_ext
        >>> with pm.Model() as model:
        ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
        >>> a = pymc_ext.Amortizer(model, frame="prior")  # one frame: far data get a high k
        >>> a = a.fit(500, epochs=3, random_seed=0, progressbar=False)
        >>> out = a.fit_many([{"y": np.ones(3)}, {"y": np.full(3, 40.0)}], draws=200,
        ...                  random_seed=1, progressbar=False)
        >>> out.table["route"].tolist()[1] in ("mh", "nuts")   # far outside the training data
        True
        >>> mu = out.posteriors[1].posterior["mu"]            # exact: N(30, 0.5^2)
        >>> len(out.posteriors), abs(mu.mean().item() - 30) < 0.2
        (2, True)
        """
        return fit_many(
            self, datasets, FitManySettings(draws=int(draws), **options),
            random_seed=random_seed, client=client, model_builder=model_builder,
            progressbar=progressbar,
        )
