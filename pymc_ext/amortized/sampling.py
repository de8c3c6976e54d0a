"""Drawing from a trained amortizer: batched, seeded draws, Pareto k and PSIS correction.

Every amortized posterior is checked against the model's true joint density:
the log weights ``log p(theta, y) - log q(theta | y)`` go through the
package's one PSIS (:func:`pymc_ext.blocks.importance.psis_log_weights`),
whose Pareto k is reported per dataset and warns above
:data:`~pymc_ext.amortized.diagnostics.PARETO_K_THRESHOLD`.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from pymc_ext.amortized.calibration import CalibrationResult, simulation_based_calibration
from pymc_ext.amortized.diagnostics import (
    PARETO_K_THRESHOLD,
    AmortizedDataWarning,
    importance_ess,
    importance_resample,
    psis_log_weights,
    warn_high_pareto_k,
)
from pymc_ext.amortized.networks import TorchSeed, contexts_no_grad
from pymc_ext.amortized.results import Correction
from pymc_ext.amortized.simulation import simulate
from pymc_ext.amortized.standardize import warn_out_of_distribution
from pymc_ext.blocks.random import seed_int

__all__ = [
    "calibrate",
    "draw",
    "many_to_datatree",
    "posterior_draws",
    "prepare",
    "psis_correct",
    "exact_draws",
    "warn_many_high_k",
]

CPU_BATCH_ROWS = 16_384
GPU_BATCH_ROWS = 65_536


def prepare(
    amortizer: Any, datasets: Sequence[Mapping[str, Any]], stacklevel: int = 2
) -> tuple[list[dict], torch.Tensor]:
    """Check datasets against the layout and compute their contexts (warns when unusual).

    ``stacklevel`` counts from the caller of this function, as in :func:`warnings.warn`.

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> a = pymc_ext.Amortizer(model).fit(300, epochs=2, random_seed=0, progressbar=False)
    >>> from pymc_ext.amortized.sampling import prepare
    >>> checked, ctx = prepare(a, [{"y": np.ones(3)}, {"y": np.zeros(3)}])
    >>> len(checked), ctx.shape[0]
    (2, 2)
    """
    checked = [
        amortizer.layout.check(d, where=f"datasets[{i}]" if len(datasets) > 1 else "data")
        for i, d in enumerate(datasets)
    ]
    values, lengths = amortizer.layout.raw(checked)
    ctx = contexts_no_grad(
        amortizer.summary_net, amortizer.layout, values, lengths, amortizer.device,
        amortizer.flow.context_dim,
    )
    warn_out_of_distribution(
        ctx, lengths, amortizer.layout, amortizer.summary_range, stacklevel=stacklevel + 1
    )
    return checked, ctx


def draw(
    amortizer: Any,
    ctx: torch.Tensor,
    draws: int,
    seed: int,
    max_rows: int | None = None,
    cores: int | None = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """``draws`` per context: theta ``(B, draws, dim)`` float64 and log q ``(B, draws)``.

    Contexts go in batches of about ``max_rows`` draws: 16 384 on a CPU,
    65 536 on a GPU. Each batch has its own generator, seeded from ``(seed,
    batch)``, so the draws do not depend on ``cores``: on the CPU the
    batches are spread over ``cores`` threads (torch releases the GIL in its
    kernels; ``None``: every CPU core). Eight schools, 1000 datasets x 1000
    draws on a quiet 2-core machine: one thread 7.9 s, two threads 4.1 s
    with 16 384-row batches and 4.9 s with 4096-row ones (fewer, larger
    operations leave the threads less time waiting for the GIL).

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> a = pymc_ext.Amortizer(model).fit(300, epochs=2, random_seed=0, progressbar=False)
    >>> from pymc_ext.amortized.sampling import draw, prepare
    >>> _, ctx = prepare(a, [{"y": np.ones(3)}])
    >>> theta, log_q = draw(a, ctx, 10, seed=1)
    >>> theta.shape, log_q.shape
    ((1, 10, 1), (1, 10))
    """
    flow, device = amortizer.flow, amortizer.device
    B = ctx.shape[0]
    fast = flow.fast_sampling and not flow.training
    if max_rows is None:
        max_rows = CPU_BATCH_ROWS if device.type == "cpu" else GPU_BATCH_ROWS
    per = max(1, max_rows // max(int(draws), 1))
    starts = list(range(0, B, per))

    def batch(j: int) -> tuple[np.ndarray, np.ndarray]:
        # the drawing path takes a seeded generator; zuko's path the (forked) global one
        state = np.random.SeedSequence([int(seed), j]).generate_state(1)[0]
        generator = torch.Generator(device=device).manual_seed(int(state))
        seeded = contextlib.nullcontext() if fast else TorchSeed(int(state), device)
        # inference mode, not just no_grad: no version counters or view tracking,
        # about 12% less time per draw on these small tensors
        with torch.inference_mode(), seeded:
            i = starts[j]
            theta, log_q = flow.sample(int(draws), ctx[i : i + per], generator)
            return theta.double().cpu().numpy(), log_q.double().cpu().numpy()

    # threads only on the CPU drawing path (zuko's path seeds torch's global generator)
    workers = 1
    if fast and device.type == "cpu":
        workers = min((os.cpu_count() or 1) if cores is None else int(cores), len(starts))
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            out = list(pool.map(batch, range(len(starts))))
    else:
        out = [batch(j) for j in range(len(starts))]
    return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])


def warn_many_high_k(pareto_k: np.ndarray, stacklevel: int) -> None:
    """One warning for all datasets of ``sample_many`` with Pareto k above the threshold.

    Examples
    --------
    >>> import numpy as np, warnings
    >>> from pymc_ext.amortized.sampling import warn_many_high_k
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_many_high_k(np.array([0.2, 0.9, np.inf]), stacklevel=1)
    >>> str(caught[0].message)[:40]
    '2 of 3 datasets have Pareto k > 0.7 (e.g'
    """
    bad = np.flatnonzero(pareto_k > PARETO_K_THRESHOLD)
    if len(bad):
        warnings.warn(
            f"{len(bad)} of {len(pareto_k)} datasets have Pareto k > "
            f"{PARETO_K_THRESHOLD} (e.g. datasets {bad[:5].tolist()}): their amortized "
            "posteriors do not match the true ones. Sample those with "
            "pymc_ext.AmortizedMH or pm.sample; if many, retrain with more simulations.",
            AmortizedDataWarning,
            stacklevel=stacklevel + 1,
        )


def psis_correct(
    theta: np.ndarray,
    stats: dict[str, np.ndarray],
    log_w: np.ndarray,
    draws: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Importance-resample ``draws`` per dataset with the smoothed weights ``log_w``.

    A dataset without any finite importance ratio (NaN weights, ``k = inf``,
    already warned about) is resampled uniformly: its draws stay the raw
    amortized ones.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.amortized.sampling import psis_correct
    >>> theta = np.arange(3.0).reshape(1, 3, 1)
    >>> lw = np.array([[-np.inf, 0.0, -np.inf]])
    >>> out, _ = psis_correct(theta, {}, lw, 2, np.random.default_rng(0))
    >>> out[0, :, 0].tolist()
    [1.0, 1.0]
    """
    rows = []
    for lw in log_w:
        if np.isnan(lw).any():
            lw = np.full(lw.shape, -np.log(lw.shape[0]))
        rows.append(importance_resample(lw, int(draws), rng))
    idx = np.stack(rows)
    theta = np.take_along_axis(theta, idx[..., None], axis=1)
    stats = {key: np.take_along_axis(v, idx, axis=1) for key, v in stats.items()}
    return theta, stats


def posterior_draws(
    amortizer: Any,
    datasets: list[Mapping[str, Any]],
    draws: int,
    random_seed: int | np.random.Generator | None,
    correct: str | None,
    diagnostics: bool,
    cores: int | None = 1,
    stacklevel: int = 2,
) -> tuple[list[dict], np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Draws ``(B, draws, dim)``, per-draw stats and per-dataset Pareto k / ESS.

    The shared body of :meth:`Amortizer.sample` (``B = 1``) and
    :meth:`Amortizer.sample_many`; warnings point ``stacklevel`` frames up from
    the caller of this function.

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> a = pymc_ext.Amortizer(model).fit(300, epochs=2, random_seed=0, progressbar=False)
    >>> from pymc_ext.amortized.sampling import posterior_draws
    >>> _, theta, stats, diag = posterior_draws(a, [{"y": np.ones(3)}], 50, 1, None, True)
    >>> theta.shape, sorted(stats), sorted(diag)
    ((1, 50, 1), ['log_p', 'log_q', 'log_weight'], ['importance_ess', 'pareto_k'])
    """
    amortizer.check_fitted()
    correction = Correction.parse(correct)
    if correction is Correction.MH:
        raise ValueError(
            "correct='mh' runs Metropolis-Hastings chains for one dataset: use "
            "Amortizer.sample(data, correct='mh')."
        )
    rng = np.random.default_rng(random_seed)
    checked, ctx = prepare(amortizer, datasets, stacklevel=stacklevel + 1)
    theta, log_q = draw(amortizer, ctx, int(draws), seed_int(rng), cores=cores)
    stats: dict[str, np.ndarray] = {"log_q": log_q}
    diag: dict[str, np.ndarray] = {}
    if not (diagnostics or correction is Correction.PSIS):
        return checked, theta, stats, diag
    log_p = amortizer.target.joint_logp_many(theta, checked)
    log_w, k = psis_log_weights(log_p - log_q)
    diag["pareto_k"] = np.atleast_1d(k)
    diag["importance_ess"] = np.atleast_1d(importance_ess(log_w))
    stats.update(log_p=log_p, log_weight=log_p - log_q)
    if len(checked) == 1:
        warn_high_pareto_k(
            float(diag["pareto_k"][0]),
            corrected=correction is Correction.PSIS,
            stacklevel=stacklevel + 2,  # warn_high_pareto_k's own frame, then this one
        )
    else:
        warn_many_high_k(diag["pareto_k"], stacklevel=stacklevel + 1)
    if correction is Correction.PSIS:
        theta, stats = psis_correct(theta, stats, log_w, int(draws), rng)
    return checked, theta, stats, diag


def many_to_datatree(
    amortizer: Any,
    theta: np.ndarray,
    stats: dict[str, np.ndarray],
    diag: dict[str, np.ndarray],
    correct: str | None,
) -> Any:
    """``sample_many``'s DataTree: dims ``(dataset, draw, ...)``, diagnostics per dataset.

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> a = pymc_ext.Amortizer(model).fit(300, epochs=2, random_seed=0, progressbar=False)
    >>> from pymc_ext.amortized.sampling import many_to_datatree, posterior_draws
    >>> _, theta, stats, diag = posterior_draws(a, [{"y": np.ones(3)}] * 2, 20, 1, None, True)
    >>> dict(many_to_datatree(a, theta, stats, diag, None).posterior.sizes)
    {'dataset': 2, 'draw': 20}
    """
    import xarray as xr

    from pymc_ext.pymc_adapter.datatree import to_datatree

    dt = to_datatree(
        amortizer.density,
        theta,
        sample_stats=stats,
        observed_data={},
        attrs={"inference_library": "pymc_ext.Amortizer", "correct": str(correct)},
    )
    for group in ("posterior", "sample_stats"):
        ds = dt[group].to_dataset().rename({"chain": "dataset"})
        dt[group] = xr.DataTree(ds)
    if diag:
        dt["amortized_diagnostics"] = xr.DataTree(
            xr.Dataset({k: ("dataset", np.asarray(v)) for k, v in diag.items()})
        )
    return dt


def calibrate(
    amortizer: Any,
    num_datasets: int,
    draws: int,
    random_seed: int | np.random.Generator | None,
    alpha: float,
    progressbar: bool,
) -> CalibrationResult:
    """The body of :meth:`Amortizer.check_calibration`: SBC on fresh simulations.

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> a = pymc_ext.Amortizer(model).fit(300, epochs=2, random_seed=0, progressbar=False)
    >>> from pymc_ext.amortized.sampling import calibrate
    >>> calibrate(a, 20, 10, random_seed=1, alpha=0.01, progressbar=False).num_datasets
    20
    """
    amortizer.check_fitted()
    rng = np.random.default_rng(random_seed)
    t0 = time.perf_counter()
    sims = simulate(
        amortizer.target, amortizer.layout, int(num_datasets), rng, progressbar,
        description="SBC simulations",
    )
    ctx = contexts_no_grad(
        amortizer.summary_net, amortizer.layout, sims.values, sims.lengths, amortizer.device,
        amortizer.flow.context_dim,
    )
    post, _ = draw(amortizer, ctx, int(draws), seed_int(rng), cores=None)
    prior_var = (amortizer.flow.theta_std.double().cpu().numpy()) ** 2
    result = simulation_based_calibration(
        sims.theta, post, prior_var=prior_var, param_names=amortizer.target.param_names,
        alpha=alpha, random_seed=rng,
    )
    result.info.update(seconds=time.perf_counter() - t0, num_dropped=sims.dropped)
    return result


#: Below this acceptance rate the exact chains mix too slowly to be worth having.
LOW_MH_ACCEPTANCE = 0.05


def exact_draws(
    amortizer: Any,
    data: Mapping[str, Any],
    draws: int,
    chains: int,
    random_seed: int | np.random.Generator | None,
    stacklevel: int = 2,
    **mh_options: Any,
) -> Any:
    """Exact posterior draws for one dataset: independence MH with the adapted amortized proposal.

    The body of ``Amortizer.sample(data, correct="mh")``; ``mh_options`` go to
    :class:`~pymc_ext.amortized.mh.AmortizedProposal`. Works for any target
    (PyMC model or Stan program): the true density comes from the target's
    joint log density at ``data``.

    Returns
    -------
    xarray.DataTree
        ``posterior`` (``chains`` x ``draws``) with the model's names, dims and
        coords; ``sample_stats`` with ``accept``, ``accepted``, ``log_weight``;
        ``posterior.attrs["acceptance_rate"]``.

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> a = pymc_ext.Amortizer(model).fit(300, epochs=2, random_seed=0, progressbar=False)
    >>> from pymc_ext.amortized.sampling import exact_draws
    >>> idata = exact_draws(a, {"y": np.ones(3)}, draws=100, chains=2, random_seed=1)
    >>> idata.posterior["mu"].shape
    (2, 100)
    """
    import warnings

    from pymc_ext.amortized.mh import AmortizedProposal, independence_mh
    from pymc_ext.flows.conditional import torch_threads
    from pymc_ext.pymc_adapter.datatree import to_datatree

    amortizer.check_fitted()
    # every torch operation under the amortizer's thread count: the draws then do not depend
    # on the caller's torch setting (a dask worker's differs from the client's)
    with torch_threads(amortizer.num_threads):
        checked, ctx = prepare(amortizer, [data], stacklevel=stacklevel + 1)

        def log_p_batch(theta: np.ndarray) -> np.ndarray:
            return amortizer.target.joint_logp_many(theta[None], checked)[0]

        proposal = AmortizedProposal(
            amortizer.flow, ctx[0], log_p_batch, amortizer.dim, amortizer.num_threads,
            **mh_options,
        )
        rng = np.random.default_rng(random_seed)
        if proposal.mode:
            proposal.adapt(rng)
        out = independence_mh(proposal, rng, int(chains), int(draws))
    rate = float(out.accepted.mean())
    if rate < LOW_MH_ACCEPTANCE:
        warnings.warn(
            f"The exact amortized chains accepted {rate:.1%} of their proposals: the amortized "
            "posterior is far from this dataset's, so the chains mix slowly (check the ESS). "
            "Sample this dataset with NUTS (pm.sample) instead.",
            UserWarning,
            stacklevel=stacklevel + 1,
        )
    attrs = {
        "inference_library": "pymc_ext.Amortizer",
        "correct": "mh",
        "acceptance_rate": rate,
    }
    return to_datatree(
        amortizer.density,
        out.theta,
        sample_stats={"accept": out.accept, "accepted": out.accepted, "log_weight": out.log_weight},
        observed_data=checked[0],
        attrs=attrs,
    )
