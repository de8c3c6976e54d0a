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
    RAW_MAX_SHIFT,
    RAW_MIN_EFFICIENCY,
    AmortizedDataWarning,
    importance_ess,
    importance_resample,
    psis_log_weights,
    raw_draw_shift,
    raw_shift_allowance,
    warn_high_pareto_k,
)
from pymc_ext.amortized.frames import prior_sd, with_frames
from pymc_ext.amortized.networks import TorchSeed, contexts_no_grad
from pymc_ext.amortized.results import Correction
from pymc_ext.amortized.simulation import join_blocks, simulate_blocks, simulation_chunks
from pymc_ext.amortized.standardize import warn_out_of_distribution
from pymc_ext.blocks.progress import ProgressBar
from pymc_ext.blocks.random import seed_int

__all__ = [
    "SBC_CHUNK",
    "batch_datasets",
    "calibrate",
    "draw",
    "draws_and_checks",
    "many_to_datatree",
    "posterior_draws",
    "prepare",
    "psis_correct",
    "sbc_chunk",
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
    if len(datasets) == 0:
        raise ValueError("datasets is empty: give at least one dataset (a dict name -> array).")
    check_values = getattr(amortizer.target, "check_values", None)
    checked = []
    for i, d in enumerate(datasets):
        where = f"datasets[{i}]" if len(datasets) > 1 else "data"
        checked.append(amortizer.layout.check(d, where=where))
        if check_values is not None:
            check_values(d, where=where)
    values, lengths = amortizer.layout.raw(checked)
    ctx = contexts_no_grad(
        amortizer.summary_net, amortizer.layout, values, lengths, amortizer.device,
        amortizer.flow.context_dim,
    )
    warn_out_of_distribution(
        ctx, lengths, amortizer.layout, amortizer.summary_range, stacklevel=stacklevel + 1
    )
    return checked, with_frames(amortizer, ctx, checked)


def draw(
    amortizer: Any,
    ctx: torch.Tensor,
    draws: int,
    seed: int,
    max_rows: int | None = None,
    cores: int | None = 1,
    first_batch: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``draws`` per context: theta ``(B, draws, dim)`` float64 and log q ``(B, draws)``.

    Contexts go in batches of about ``max_rows`` draws (:func:`batch_datasets`
    contexts each): 16 384 on a CPU, 65 536 on a GPU. Each batch has its own
    generator, seeded from ``(seed, first_batch + batch)``, so a slice of the
    contexts that starts on a batch boundary gets the draws it gets in the
    whole (a cluster task's share), and the draws do not depend on
    ``cores``: on the CPU the batches are spread over ``cores`` threads
    (torch releases the GIL in its kernels; ``None``: every CPU core). Eight
    schools, 1000 datasets x 1000 draws on a quiet 2-core machine: one
    thread 7.9 s, two threads 4.1 s with 16 384-row batches and 4.9 s with
    4096-row ones (fewer, larger operations leave the threads less time
    waiting for the GIL).

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
    per = batch_datasets(amortizer, draws, max_rows)
    starts = list(range(0, B, per))

    def batch(j: int) -> tuple[np.ndarray, np.ndarray]:
        # the drawing path takes a seeded generator; zuko's path the (forked) global one
        state = np.random.SeedSequence([int(seed), int(first_batch) + j]).generate_state(1)[0]
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


def batch_datasets(amortizer: Any, draws: int, max_rows: int | None = None) -> int:
    """Contexts per batch of :func:`draw`: about ``max_rows`` draws (by device) per batch.

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> from pymc_ext.amortized.sampling import batch_datasets
    >>> batch_datasets(pymc_ext.Amortizer(model, device="cpu"), 1000)
    16
    """
    if max_rows is None:
        max_rows = CPU_BATCH_ROWS if amortizer.device.type == "cpu" else GPU_BATCH_ROWS
    return max(1, int(max_rows) // max(int(draws), 1))


def warn_many_high_k(
    pareto_k: np.ndarray,
    stacklevel: int,
    efficiency: np.ndarray | None = None,
    shifted: np.ndarray | None = None,
) -> None:
    """One warning for all datasets of ``sample_many`` with Pareto k above the threshold.

    With ``efficiency`` (importance ESS / draws per dataset, given for raw
    draws only), a second warning names the datasets whose ``k`` passed but
    whose efficiency is below :data:`~pymc_ext.amortized.diagnostics.RAW_MIN_EFFICIENCY`,
    or (``shifted``, a boolean per dataset) whose estimated raw error exceeds
    :data:`~pymc_ext.amortized.diagnostics.RAW_MAX_SHIFT` and its allowance.

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
    if efficiency is None:
        return
    off = efficiency < RAW_MIN_EFFICIENCY
    if shifted is not None:
        off = off | np.asarray(shifted, dtype=bool)
    low = np.flatnonzero(~(pareto_k > PARETO_K_THRESHOLD) & off)
    if len(low):
        warnings.warn(
            f"{len(low)} of {len(pareto_k)} datasets have raw amortized draws that are off "
            f"although their Pareto k passed (e.g. datasets {low[:5].tolist()}): under "
            f"{100 * RAW_MIN_EFFICIENCY:.0f}% of their draws carry the importance weight, or "
            f"their importance-weighted mean or sd differs from the raw one by more than "
            f"{RAW_MAX_SHIFT} posterior sd (diagnostic 'raw_shift'). Use correct='psis' for "
            "those.",
            AmortizedDataWarning,
            stacklevel=stacklevel + 1,
        )


def psis_correct(
    theta: np.ndarray,
    stats: dict[str, np.ndarray],
    log_w: np.ndarray,
    draws: int,
    seed: int,
    first: int = 0,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Importance-resample ``draws`` per dataset with the smoothed weights ``log_w``.

    Dataset ``i`` is resampled with its own generator, seeded from ``(seed,
    first + i)``: a share of the datasets (a cluster task's) is resampled as
    in the whole. A dataset without any finite importance ratio (NaN
    weights, ``k = inf``, already warned about) is resampled uniformly: its
    draws stay the raw amortized ones.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.amortized.sampling import psis_correct
    >>> theta = np.arange(3.0).reshape(1, 3, 1)
    >>> lw = np.array([[-np.inf, 0.0, -np.inf]])
    >>> out, _ = psis_correct(theta, {}, lw, 2, seed=0)
    >>> out[0, :, 0].tolist()
    [1.0, 1.0]
    """
    rows = []
    for i, lw in enumerate(log_w):
        if np.isnan(lw).any():
            lw = np.full(lw.shape, -np.log(lw.shape[0]))
        rng = np.random.default_rng([int(seed), int(first) + i])
        rows.append(importance_resample(lw, int(draws), rng, "systematic"))
    idx = np.stack(rows)
    theta = np.take_along_axis(theta, idx[..., None], axis=1)
    stats = {key: np.take_along_axis(v, idx, axis=1) for key, v in stats.items()}
    return theta, stats


def draws_and_checks(
    amortizer: Any,
    checked: Sequence[Mapping[str, Any]],
    ctx: torch.Tensor,
    draws: int,
    seeds: tuple[int, int],
    correct: str | None,
    diagnostics: bool,
    first: int = 0,
    cores: int | None = 1,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Draws, per-draw stats and Pareto k / ESS for datasets ``first, first + 1, ...``.

    The work of :func:`posterior_draws` after the datasets are checked, and
    what one cluster task runs on its share (``first`` on a batch boundary,
    see :func:`draw`); no warnings here. ``seeds``: the draws' and the PSIS
    resampling's.

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> a = pymc_ext.Amortizer(model).fit(300, epochs=2, random_seed=0, progressbar=False)
    >>> from pymc_ext.amortized.sampling import draws_and_checks, prepare
    >>> checked, ctx = prepare(a, [{"y": np.ones(3)}] * 3)
    >>> theta, stats, diag = draws_and_checks(a, checked, ctx, 20, (1, 2), "psis", True)
    >>> theta.shape, diag["pareto_k"].shape
    ((3, 20, 1), (3,))
    """
    correction = Correction.parse(correct)
    per = batch_datasets(amortizer, draws)
    if first % per:
        raise ValueError(f"first={first} is not on a batch boundary (batches of {per}).")
    theta, log_q = draw(amortizer, ctx, int(draws), seeds[0], cores=cores, first_batch=first // per)
    stats: dict[str, np.ndarray] = {"log_q": log_q}
    diag: dict[str, np.ndarray] = {}
    if not (diagnostics or correction is Correction.PSIS):
        return theta, stats, diag
    log_p = amortizer.target.joint_logp_many(theta, checked)
    log_w, k = psis_log_weights(log_p - log_q)
    diag["pareto_k"] = np.atleast_1d(k)
    diag["importance_ess"] = np.atleast_1d(importance_ess(log_w))
    diag["raw_shift"] = np.atleast_1d(raw_draw_shift(theta, log_w))
    stats.update(log_p=log_p, log_weight=log_p - log_q)
    if correction is Correction.PSIS:
        theta, stats = psis_correct(theta, stats, log_w, int(draws), seeds[1], first)
    return theta, stats, diag


def posterior_draws(
    amortizer: Any,
    datasets: list[Mapping[str, Any]],
    draws: int,
    random_seed: int | np.random.Generator | None,
    correct: str | None,
    diagnostics: bool,
    cores: int | None = 1,
    stacklevel: int = 2,
    cluster: Any = None,
) -> tuple[list[dict], np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Draws ``(B, draws, dim)``, per-draw stats and per-dataset Pareto k / ESS.

    The shared body of :meth:`Amortizer.sample` (``B = 1``) and
    :meth:`Amortizer.sample_many`; warnings point ``stacklevel`` frames up from
    the caller of this function. With ``cluster`` (a
    :class:`~pymc_ext.amortized.cluster.ClusterRun`) the datasets are drawn
    in tasks on its dask cluster, with the same draws.

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> a = pymc_ext.Amortizer(model).fit(300, epochs=2, random_seed=0, progressbar=False)
    >>> from pymc_ext.amortized.sampling import posterior_draws
    >>> _, theta, stats, diag = posterior_draws(a, [{"y": np.ones(3)}], 50, 1, None, True)
    >>> theta.shape, sorted(stats), sorted(diag)
    ((1, 50, 1), ['log_p', 'log_q', 'log_weight'], ['importance_ess', 'pareto_k', 'raw_shift'])
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
    seeds = (seed_int(rng), seed_int(rng))
    if cluster is None:
        theta, stats, diag = draws_and_checks(
            amortizer, checked, ctx, int(draws), seeds, correct, diagnostics, cores=cores
        )
    else:
        theta, stats, diag = cluster.draws(checked, ctx, int(draws), seeds, correct, diagnostics)
    if "pareto_k" not in diag:
        return checked, theta, stats, diag
    if len(checked) == 1:
        warn_high_pareto_k(
            float(diag["pareto_k"][0]),
            corrected=correction is Correction.PSIS,
            stacklevel=stacklevel + 2,  # warn_high_pareto_k's own frame, then this one
            efficiency=float(diag["importance_ess"][0]) / max(int(draws), 1),
            shift=float(diag["raw_shift"][0]) if "raw_shift" in diag else None,
            allowance=float(raw_shift_allowance(diag["importance_ess"][0], int(draws))),
        )
    else:
        raw = correction is not Correction.PSIS
        efficiency = diag["importance_ess"] / max(int(draws), 1) if raw else None
        shifted = None
        if raw and "raw_shift" in diag:
            shifted = diag["raw_shift"] > RAW_MAX_SHIFT + raw_shift_allowance(
                diag["importance_ess"], int(draws)
            )
        warn_many_high_k(
            diag["pareto_k"], stacklevel=stacklevel + 1, efficiency=efficiency, shifted=shifted
        )
    return checked, theta, stats, diag


def many_to_datatree(
    amortizer: Any,
    theta: np.ndarray,
    stats: dict[str, np.ndarray],
    diag: dict[str, np.ndarray],
    correct: str | None,
    values: Mapping[str, np.ndarray] | None = None,
) -> Any:
    """``sample_many``'s DataTree: dims ``(dataset, draw, ...)``, diagnostics per dataset.

    ``values``: the posterior's variables ``name -> (dataset, draw, ...)``,
    Deterministics computed at each dataset's data
    (:func:`~pymc_ext.amortized.deterministics.posterior_values`); by default
    the free variables and Deterministics constrained with the model's own data.

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

    from pymc_ext.amortized.deterministics import datatree_at

    if values is None:
        flat = amortizer.density.constrain_batch(theta.reshape(-1, theta.shape[-1]))
        values = {
            k: np.asarray(v).reshape(*theta.shape[:2], *np.shape(v)[1:]) for k, v in flat.items()
        }
    dt = datatree_at(
        amortizer,
        theta,
        None,
        values=values,
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


#: Datasets per chunk of :func:`calibrate` (its unit of work, locally and on a cluster).
SBC_CHUNK = 250


def sbc_chunk(
    amortizer: Any, n: int, seed: int, draws: int, cores: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """One chunk of SBC from ``seed``: true parameters ``(n', dim)``, draws ``(n', draws, dim)``
    and the number of non-finite simulations dropped (``n' = n - dropped``).

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> a = pymc_ext.Amortizer(model).fit(300, epochs=2, random_seed=0, progressbar=False)
    >>> from pymc_ext.amortized.sampling import sbc_chunk
    >>> theta, post, dropped = sbc_chunk(a, 5, seed=1, draws=10)
    >>> theta.shape, post.shape, dropped
    ((5, 1), (5, 10, 1), 0)
    """
    sims = join_blocks(
        simulate_blocks(amortizer.target, amortizer.layout, int(n), int(seed)), amortizer.layout
    )
    ctx = contexts_no_grad(
        amortizer.summary_net, amortizer.layout, sims.values, sims.lengths, amortizer.device,
        amortizer.flow.context_dim,
    )
    if amortizer.frames is not None:
        ctx = with_frames(amortizer, ctx, amortizer.layout.datasets(sims.values, sims.lengths))
    draw_seed = int(np.random.SeedSequence([int(seed), 1]).generate_state(1)[0])
    post, _ = draw(amortizer, ctx, int(draws), draw_seed, cores=cores)
    return sims.theta, post, sims.dropped


def calibrate(
    amortizer: Any,
    num_datasets: int,
    draws: int,
    random_seed: int | np.random.Generator | None,
    alpha: float,
    progressbar: bool,
    cluster: Any = None,
) -> CalibrationResult:
    """The body of :meth:`Amortizer.check_calibration`: SBC on fresh simulations.

    The datasets come in chunks of :data:`SBC_CHUNK`, each simulated and
    drawn from its own seed (:func:`sbc_chunk`); ``cluster`` (a
    :class:`~pymc_ext.amortized.cluster.ClusterRun`) runs the chunks as tasks
    on its dask cluster, with the same ranks.

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
    chunks = simulation_chunks(int(num_datasets), SBC_CHUNK, rng)
    with ProgressBar(int(num_datasets), "SBC simulations", show=progressbar) as bar:
        if cluster is not None:
            parts = cluster.sbc(chunks, int(draws), bar)
        else:
            parts = []
            for k, seed in chunks:
                parts.append(sbc_chunk(amortizer, k, seed, int(draws)))
                bar.update(k)
    theta = np.concatenate([p[0] for p in parts])
    post = np.concatenate([p[1] for p in parts])
    prior_var = prior_sd(amortizer) ** 2
    result = simulation_based_calibration(
        theta, post, prior_var=prior_var, param_names=amortizer.target.param_names,
        alpha=alpha, random_seed=rng,
    )
    result.info.update(
        seconds=time.perf_counter() - t0, num_dropped=int(sum(p[2] for p in parts))
    )
    return result
