"""The ``"psis"`` route of :func:`pymc_ext.amortized.many.fit_many`: resampled amortized draws.

A dataset whose amortized draws have Pareto k below ``mcmc_k`` and an
importance ESS of at least ``min_psis_ess`` gets its draws PSIS-resampled.
Where k passes but the ESS falls short, the dataset is drawn again with more
draws first (:func:`top_up`): amortized draws cost milliseconds, MCMC seconds.
The rest become MCMC jobs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pymc_ext.amortized.many_types import FitManySettings, Route, table_row
from pymc_ext.blocks.importance import importance_ess, importance_resample, psis_log_weights

__all__ = ["psis_posteriors", "top_up"]

#: An MCMC job: (dataset number, its data, its seed, its Pareto k).
Job = tuple[int, Mapping[str, Any], int, float]


def top_up(
    amortizer: Any,
    checked: list[dict],
    jobs: list[Job],
    done: dict[int, tuple[Any, dict[str, Any]]],
    diag: dict[str, np.ndarray],
    seeds: list[int],
    settings: FitManySettings,
    cluster: Any,
) -> list[Job]:
    """Datasets whose k passed but whose ESS fell short: drawn again with more draws.

    Each gets the factor its own first-pass efficiency asks for (with a 25%
    margin, rounded up to a power of two, at most ``max_psis_factor``); those
    with the same factor share batched calls. Those that pass now join ``done``; the others stay
    MCMC jobs. Returns the remaining jobs.

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> from pymc_ext.amortized.many_psis import psis_posteriors, top_up
    >>> from pymc_ext.amortized.many_types import FitManySettings
    >>> from pymc_ext.amortized.sampling import posterior_draws
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> a = pymc_ext.Amortizer(model).fit(300, epochs=2, random_seed=0, progressbar=False)
    >>> settings = FitManySettings(draws=100)                # 100 draws: an ESS of 400 needs more
    >>> checked, theta, stats, diag = posterior_draws(a, [{"y": np.ones(3)}], 100, 1, None, True)
    >>> done, jobs = psis_posteriors(a, checked, theta, stats, diag["pareto_k"], [7], settings)
    >>> len(done), len(jobs)
    (0, 1)
    >>> jobs = top_up(a, checked, jobs, done, diag, [7], settings, None)
    >>> len(done) + len(jobs)
    1
    """
    ess = diag["importance_ess"]
    reach = settings.min_psis_ess / settings.max_psis_factor
    short = [
        job
        for job in jobs
        if np.isfinite(job[3]) and job[3] < settings.mcmc_k and ess[job[0]] >= reach / 1.25
    ]
    if settings.max_psis_factor == 1 or not short:
        return jobs
    # each dataset gets the factor its own first-pass efficiency asks for (25% margin),
    # rounded up to a power of two so that datasets share a few batched calls
    groups: dict[int, list[Job]] = {}
    for job in short:
        need = 1.25 * settings.min_psis_ess / max(float(ess[job[0]]), 1.0)
        factor = min(settings.max_psis_factor, 2 ** int(np.ceil(np.log2(max(need, 2.0)))))
        groups.setdefault(int(factor), []).append(job)
    still: list[Job] = []
    for factor, group in sorted(groups.items()):
        still += _draw_again(amortizer, checked, group, done, seeds, settings, cluster, factor)
    retried = {i for i, _, _, _ in short}
    return [job for job in jobs if job[0] not in retried] + still


def psis_posteriors(
    amortizer: Any,
    checked: list[dict],
    theta: np.ndarray,
    stats: dict[str, np.ndarray],
    ks: np.ndarray,
    seeds: list[int],
    settings: FitManySettings,
    index: list[int] | None = None,
    note: str = "",
) -> tuple[dict[int, tuple[Any, dict[str, Any]]], list[Job]]:
    """PSIS-resampled posteriors for the datasets with a good k; the MCMC jobs for the rest.

    ``index`` maps the rows of ``checked`` (a subset) to the datasets' numbers;
    ``note`` is added to each PSIS row's reason.

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> from pymc_ext.amortized.many_psis import psis_posteriors
    >>> from pymc_ext.amortized.many_types import FitManySettings
    >>> from pymc_ext.amortized.sampling import posterior_draws
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> a = pymc_ext.Amortizer(model, frame="prior")   # one frame: far data get a high k
    >>> a = a.fit(300, epochs=2, random_seed=0, progressbar=False)
    >>> data = [{"y": np.ones(3)}, {"y": np.full(3, 40.0)}]      # the second is far outside
    >>> checked, theta, stats, diag = posterior_draws(a, data, 2000, 1, None, True)
    >>> done, jobs = psis_posteriors(a, checked, theta, stats, diag["pareto_k"], [7, 8],
    ...                              FitManySettings(draws=500))
    >>> sorted(done), [job[0] for job in jobs]
    ([0], [1])
    """
    from pymc_ext.amortized.deterministics import datatree_at

    done, jobs = {}, []
    for j, k in enumerate(ks):
        i = j if index is None else index[j]
        lw, _ = psis_log_weights(stats["log_weight"][j])
        psis_ess = float(importance_ess(lw)) if np.isfinite(k) else 0.0
        if not (np.isfinite(k) and k < settings.mcmc_k and psis_ess >= settings.min_psis_ess):
            jobs.append((i, checked[j], seeds[j], float(k)))
            continue
        idx = importance_resample(lw, settings.draws, np.random.default_rng(seeds[j]), "systematic")
        draws = theta[j][idx]
        row_stats = {key: v[j][idx] for key, v in stats.items()}
        row = table_row(
            Route.PSIS,
            f"k = {k:.2f} < {settings.mcmc_k}, ESS {psis_ess:.0f}{note}",
            float(k),
            ess=psis_ess,
        )
        idata = datatree_at(
            amortizer,
            draws[None],
            checked[j],
            stacklevel=5,  # the caller of Amortizer.fit_many
            observed_data=checked[j],
            sample_stats={key: v[None] for key, v in row_stats.items()},
            attrs={
                "inference_library": "pymc_ext.fit_many",
                "route": str(row["route"]),
                "pareto_k": float(k),
            },
        )
        done[i] = (idata, row)
    return done, jobs


def _draw_again(
    amortizer: Any,
    checked: list[dict],
    group: list[Job],
    done: dict[int, tuple[Any, dict[str, Any]]],
    seeds: list[int],
    settings: FitManySettings,
    cluster: Any,
    factor: int,
) -> list[Job]:
    """``group``'s datasets drawn again with ``factor`` times the draws; the jobs still left."""
    import warnings

    from pymc_ext.amortized.diagnostics import AmortizedDataWarning
    from pymc_ext.amortized.sampling import posterior_draws

    draws = settings.draws * factor
    # chunks of at most ~2e7 numbers of draws (160 MB), whatever the number of datasets
    per_chunk = max(1, int(2e7 // (draws * max(int(amortizer.dim), 1))))
    still: list[Job] = []
    for start in range(0, len(group), per_chunk):
        index = [i for i, _, _, _ in group[start : start + per_chunk]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AmortizedDataWarning)
            sub, theta, stats, sub_diag = posterior_draws(
                amortizer,
                [checked[i] for i in index],
                draws,
                seeds[index[0]] + factor,
                None,
                True,
                cores=None,
                stacklevel=4,
                cluster=cluster,
            )
        more, rest = psis_posteriors(
            amortizer,
            sub,
            theta,
            stats,
            sub_diag["pareto_k"],
            [seeds[i] for i in index],
            settings,
            index=index,
            note=f", {factor}x the draws",
        )
        done.update(more)
        still += rest
    return still
