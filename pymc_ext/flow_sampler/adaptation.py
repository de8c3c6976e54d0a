"""Flow MCMC's adaptation: seed the walkers, find the modes, run the rounds, choose the fit.

:func:`flow_mcmc_adapt` seeds walkers from overdispersed multi-path
Pathfinder (so every mode a path finds starts with walkers in it), searches
for modes the paths missed (:mod:`pymc_ext.flow_sampler.mode_search`), and runs
the adaptation rounds (:mod:`pymc_ext.flow_sampler.rounds`); with
``fit="auto"`` it runs them again with reverse KL when :func:`reverse_kl_reason`
says the forward-KL flow missed part of a single-mode posterior.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import replace
from typing import Any

import numpy as np

from pymc_ext.blocks.random import child_rng
from pymc_ext.density import LogDensity
from pymc_ext.flow_sampler.census import ModeCensus, flow_shares, laplace_masses
from pymc_ext.flow_sampler.config import Explore, FitMethod, FlowMCMCConfig, make_config
from pymc_ext.flow_sampler.disagreement import census_warnings, settle_shortfall
from pymc_ext.flow_sampler.exploration import MixtureFlow, TemperingResult, explore
from pymc_ext.flow_sampler.kernels import LocalState
from pymc_ext.flow_sampler.mode_search import (
    ModeSearch,
    add_modes_to_seed,
    nearest_in_sds,
    search_modes,
)
from pymc_ext.flow_sampler.modes import distinct_modes
from pymc_ext.flow_sampler.result import FlowMCMCAdaptation, FlowMCMCWarning
from pymc_ext.flow_sampler.rounds import adapt_rounds
from pymc_ext.flows import SeedResult, pathfinder_seed

__all__ = [
    "AUTO_MAX_PARETO_K",
    "AUTO_MAX_STARVED_FRACTION",
    "AUTO_MIN_GLOBAL_ACCEPTANCE",
    "check_density",
    "default_num_draws",
    "default_num_rounds",
    "default_num_walkers",
    "flow_mcmc_adapt",
    "reverse_kl_reason",
]


def default_num_walkers(dim: int, n_modes: int = 1) -> int:
    """Walkers: the power of two at or above ``4 * dim`` and ``32 * n_modes``, within 64-256.

    ``n_modes`` is the number of modes found when the walkers are seeded:
    the flow is fitted to the walkers, so each mode needs enough of them (on
    a 10-D mixture with three modes of scales 1, 1 and 1.5, 64 walkers gave
    a global acceptance of 0.22 and R-hat 1.022, 128 gave 0.46 and 1.007).

    Examples
    --------
    >>> from pymc_ext.flow_sampler import default_num_walkers
    >>> default_num_walkers(10), default_num_walkers(50), default_num_walkers(1000)
    (64, 256, 256)
    >>> default_num_walkers(10, n_modes=2), default_num_walkers(10, n_modes=3)
    (64, 128)
    """
    want = max(4 * int(dim), 32 * int(n_modes), 1)
    return int(np.clip(2 ** math.ceil(math.log2(want)), 64, 256))


def default_num_rounds(dim: int, n_modes: int = 1) -> int:
    """Adaptation rounds: 6 up to 20 dimensions with at most two modes found, 10 otherwise.

    On the 50-dimensional two-mode mixture the global acceptance was still
    climbing after 6 rounds (0.11 at round 6, 0.24 at round 10), and the
    walkers' R-hat with 6 rounds and 500 draws was 1.025. On a 10-D mixture
    with three modes (scales 1, 1 and 1.5; 128 walkers, seed 2) the flow
    after 6 rounds still had a Pareto k of 0.92 and R-hat was 1.062; after
    10 rounds, 0.42 and 1.010.

    Examples
    --------
    >>> from pymc_ext.flow_sampler import default_num_rounds
    >>> default_num_rounds(10), default_num_rounds(50), default_num_rounds(10, n_modes=3)
    (6, 10, 10)
    """
    return 6 if int(dim) <= 20 and int(n_modes) <= 2 else 10


def default_num_draws(dim: int) -> int:
    """Production draws per walker from the dimension: 500 up to 20 dimensions, 1000 above.

    Above 20 dimensions the flow proposals are accepted less often (0.2 on
    the 50-dimensional two-mode mixture, 0.5 to 0.9 at 10), so each walker
    needs more draws to forget where it started (R-hat over the walkers).

    Examples
    --------
    >>> from pymc_ext.flow_sampler import default_num_draws
    >>> default_num_draws(10), default_num_draws(50)
    (500, 1000)
    """
    return 500 if int(dim) <= 20 else 1000


# fit="auto" replaces the forward-KL flow by a reverse-KL one when a single mode was found and
# the forward fit shows it missed part of the posterior (funnel-like geometry: the walkers'
# local moves cannot reach a neck, so a flow fitted on them cannot either). Calibrated on the
# benchmark targets, seeds 1-3: funnel_d10 k 0.74-1.04 / acceptance 0.28-0.43, gp_pois_regr
# k 0.78-1.01 / 0.03-0.14; every other target k <= 0.53 and acceptance >= 0.43.
AUTO_MAX_PARETO_K = 0.7
AUTO_MIN_GLOBAL_ACCEPTANCE = 0.3
AUTO_MAX_STARVED_FRACTION = 0.05


def reverse_kl_reason(adaptation: FlowMCMCAdaptation) -> str:
    """Why ``fit="auto"`` replaces a forward-KL flow by a reverse-KL one ("" to keep it).

    Only with a single mode found (reverse KL is mode-seeking, so it would
    drop a mode of a multimodal posterior), and when any of: the Pareto k of
    the flow's importance weights is above 0.7 (its tails are too light for
    the posterior), the last round's global acceptance is below 0.3, or more
    than 5% of the walkers sit where the flow has 10,000 times too little
    mass.

    Parameters
    ----------
    adaptation : FlowMCMCAdaptation
        A forward-KL adaptation.

    Returns
    -------
    str
        The reasons, joined by "; ", or "" when the forward fit is kept.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler import flow_mcmc_adapt, reverse_kl_reason
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x,
    ...                        logp_batch_fn=lambda X: -0.5 * (X * X).sum(1),
    ...                        grad_batch_fn=lambda X: -X)
    >>> ad = flow_mcmc_adapt(d, chains=32, n_rounds=2, first_train_steps=50, train_steps=20,
    ...                      num_paths=2, random_seed=0, progressbar=False, fit="forward",
    ...                      flow_kwargs={"transforms": 2, "hidden_features": (16, 16)})
    >>> reverse_kl_reason(ad)
    ''
    """
    if adaptation.modes.shape[0] > 1:
        return ""
    k = float(adaptation.coverage["pareto_k"])
    acc = float(adaptation.history["global_acceptance"][-1])
    starved = float(adaptation.coverage["starved_walker_fraction"])
    reasons = []
    if k > AUTO_MAX_PARETO_K:
        reasons.append(f"Pareto k of the flow's importance weights {k:.2f} > {AUTO_MAX_PARETO_K}")
    if acc < AUTO_MIN_GLOBAL_ACCEPTANCE:
        reasons.append(
            f"last round's global acceptance {acc:.2f} < {AUTO_MIN_GLOBAL_ACCEPTANCE}"
        )
    if starved > AUTO_MAX_STARVED_FRACTION:
        reasons.append(f"{starved:.0%} of the walkers where the flow has 10,000x too little mass")
    return "; ".join(reasons)


def check_density(density: Any) -> LogDensity:
    """``density`` if it implements :class:`~pymc_ext.density.LogDensity`, else a ``TypeError``.

    Examples
    --------
    >>> from pymc_ext.flow_sampler.adaptation import check_density
    >>> check_density(object())
    Traceback (most recent call last):
    ...
    TypeError: flow_mcmc needs a PyMC model or a LogDensity (dim, logp_and_grad_batch, ...
    """
    if not isinstance(density, LogDensity):
        raise TypeError(
            "flow_mcmc needs a PyMC model or a LogDensity (dim, logp_and_grad_batch, logp_batch, "
            f"...); got {type(density).__name__}."
        )
    return density


def _dimension_warning(dim: int) -> list[str]:
    """Warn (now, before the work) when the dimension is beyond what a flow handles well."""
    if dim <= 300:
        return []
    message = (
        f"The dimension is {dim}: beyond a few hundred dimensions a flow fitted on a few "
        "hundred walkers rarely gives useful global proposals, so expect low global "
        "acceptance and slow adaptation. What to try: plain NUTS (pm.sample), a "
        "reparameterisation, or marginalising parameters to shrink the dimension."
    )
    warnings.warn(message, FlowMCMCWarning, stacklevel=3)
    return [message]


def _seed_and_modes(
    density: LogDensity,
    cfg: FlowMCMCConfig,
    seed: SeedResult | None,
    rng: np.random.Generator,
) -> tuple[SeedResult, np.ndarray, ModeSearch | None]:
    """The Pathfinder seeding (unless given), its distinct modes, and the multi-start search."""
    if seed is None:
        n_walkers = int(cfg.chains) if cfg.chains else default_num_walkers(int(density.dim))
        seed = pathfinder_seed(
            density,
            num_paths=cfg.num_paths,
            num_draws=max(8 * n_walkers, 1024),
            random_seed=rng,
            init_scale=cfg.init_scale,
        )
    # The seed's distinct modes, worked out once for every adaptation that runs on it.
    modes = distinct_modes(density, seed.centers)
    found = None
    if cfg.search_climbs:
        # A child generator: the walkers' random stream is the same with or without a search.
        search_rng = child_rng(rng)
        found = search_modes(density, seed, modes, num_climbs=cfg.search_climbs,
                             rng=search_rng, init_scale=cfg.init_scale)
        if found.tops.shape[0]:
            seed = add_modes_to_seed(seed, found, search_rng)
            modes = distinct_modes(density, seed.centers)
    return seed, modes, found


def flow_mcmc_adapt(
    density: LogDensity,
    config: FlowMCMCConfig | None = None,
    *,
    seed: SeedResult | None = None,
    random_seed: int | np.random.Generator | None = None,
    **overrides: Any,
) -> FlowMCMCAdaptation:
    """Adapt the local + global sampler: seed walkers, alternate local moves, flow fits, flow moves.

    Parameters
    ----------
    density : LogDensity
    config : FlowMCMCConfig, optional
        The options (see there); default all defaults. The production options
        (``draws``, ``thin``, ``min_global_acceptance``) are not used here.
    seed : SeedResult, optional
        A seeding to start from (default: multi-path Pathfinder,
        :func:`pymc_ext.flows.pathfinder_seed`, with ``num_paths`` paths). A
        given seed is used as it is, with ``explore="tempering"`` too.
    random_seed : int or Generator, optional
    **overrides
        Any :class:`FlowMCMCConfig` field, e.g. ``n_rounds=8, fit="forward"``.

    Returns
    -------
    FlowMCMCAdaptation
        With ``explore="tempering"``: one member adaptation per exploration
        (``members``), the mode ``census`` and the explorations
        (``tempering``); its own ``kernel`` proposes from the members' mixture.

    Warns
    -----
    FlowMCMCWarning
        A dimension beyond a few hundred, or a flow with no mass where walkers
        are; with ``explore="tempering"`` also explorations that disagree on
        the modes, or one that ran out of temperatures.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler import flow_mcmc_adapt
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x,
    ...                        logp_batch_fn=lambda X: -0.5 * (X * X).sum(1),
    ...                        grad_batch_fn=lambda X: -X)
    >>> ad = flow_mcmc_adapt(d, chains=32, n_rounds=2, first_train_steps=50, train_steps=20,
    ...                      num_paths=2, random_seed=0, progressbar=False,
    ...                      flow_kwargs={"transforms": 2, "hidden_features": (16, 16)})
    >>> ad.state.position.shape, len(ad.history["global_acceptance"])
    ((32, 2), 2)
    """
    check_density(density)
    cfg = make_config(config, overrides)
    t_start = time.perf_counter()
    rng = np.random.default_rng(random_seed)
    early = _dimension_warning(int(density.dim))
    grad_before = int(density.grad_evals)
    if cfg.explore == Explore.TEMPERING and seed is None:
        result = _tempering_adapt(density, cfg, rng, grad_before)
    else:
        seed, modes, found = _seed_and_modes(density, cfg, seed, rng)
        result = _adapt_fit(density, cfg, _run(density, cfg, seed, modes, rng, grad_before))
        result = replace(result, mode_search=found)
    for message in result.warnings:
        warnings.warn(message, FlowMCMCWarning, stacklevel=2)
    return replace(
        result,
        warnings=early + result.warnings,
        grad_evals=int(density.grad_evals) - grad_before,
        seconds=time.perf_counter() - t_start,
    )


def _run(
    density: LogDensity,
    cfg: FlowMCMCConfig,
    seed: SeedResult,
    modes: np.ndarray,
    rng: np.random.Generator,
    grad_before: int,
    n_walkers: int | None = None,
) -> dict[str, Any]:
    """The keyword arguments of :func:`adapt_rounds` for one seeding."""
    dim, n_modes = int(density.dim), int(modes.shape[0])
    if n_walkers is None:
        n_walkers = int(cfg.chains) if cfg.chains else default_num_walkers(dim, n_modes)
    return {
        "seed": seed,
        "modes": modes,
        "rng": rng,
        "n_walkers": n_walkers,
        "n_rounds": cfg.n_rounds if cfg.n_rounds is not None else default_num_rounds(dim, n_modes),
        "grad_before": grad_before,
    }


def _adapt_fit(density: LogDensity, cfg: FlowMCMCConfig, run: dict[str, Any]) -> FlowMCMCAdaptation:
    """The rounds with ``cfg.fit``; with ``"auto"``, again with reverse KL when it says so."""
    if cfg.fit != FitMethod.AUTO:
        return adapt_rounds(density, cfg.resolved(cfg.fit), **run)
    result = adapt_rounds(density, cfg.resolved(FitMethod.FORWARD), **run)
    reason = reverse_kl_reason(result)
    if reason:
        first_fits = result.fit_infos
        result = adapt_rounds(density, cfg.resolved(FitMethod.REVERSE), **run)
        result = replace(result, fit_reason=reason, fit_infos=first_fits + result.fit_infos)
    return result


def _member_walkers(cfg: FlowMCMCConfig, dim: int, n_modes: int) -> list[int]:
    """Walkers of each exploration's flow: ``chains`` split evenly, or the default halved."""
    e = cfg.explorations
    if cfg.chains:
        per = [cfg.chains // e + (1 if i < cfg.chains % e else 0) for i in range(e)]
        if min(per) < 4:
            raise ValueError(
                f"chains={cfg.chains} split between {e} explorations leaves fewer than 4 "
                "walkers per flow: pass more chains or fewer explorations."
            )
        return per
    return [max(32, default_num_walkers(dim, n_modes) // e)] * e


def _tempering_adapt(
    density: LogDensity, cfg: FlowMCMCConfig, rng: np.random.Generator, grad_before: int
) -> FlowMCMCAdaptation:
    """``explore="tempering"``: explorations, one flow adapted per exploration, the census."""
    dim = int(density.dim)
    walkers = _member_walkers(cfg, dim, 1)
    found = explore(density, cfg, rng, num_draws=max(8 * max(walkers), 1024))
    census = found.census
    laplace = laplace_masses(density, census)
    if census.n_modes == 1 and all(fm.tops.shape[0] == 1 for fm in found.modes):
        return _single_mode_adapt(density, cfg, rng, grad_before, found, laplace)
    walkers = walkers if cfg.chains else _member_walkers(cfg, dim, census.n_modes)
    members = []
    for e, seed in enumerate(found.seeds):
        run = _run(density, cfg, seed, found.modes[e].tops, child_rng(rng), grad_before,
                   n_walkers=walkers[e])
        members.append(_adapt_fit(density, cfg, {**run, "per_mode_steps": True}))
    flow = members[0].kernel.flow if len(members) == 1 else MixtureFlow(
        [m.kernel.flow for m in members])
    flow_shares(census, flow.sample(4096, rng)[0])
    messages, notes = settle_shortfall(census, census_warnings(census, cfg.tempering_max_steps),
                                       [m.coverage for m in members])
    for m in members:
        messages += [msg for msg in m.warnings if msg not in messages]
    states = [m.state for m in members]
    first = members[0]
    return replace(
        first,
        kernel=replace(first.kernel, flow=flow),
        state=LocalState(*(np.concatenate([getattr(s, f) for s in states]) for f in
                           LocalState._fields)),
        modes=census.tops,
        history=first.history,
        warnings=messages,
        fit_infos=[f for m in members for f in m.fit_infos],
        restarted_walkers=sum(m.restarted_walkers for m in members),
        census=census,
        members=members,
        tempering=found,
        notes=notes + [n for m in members for n in m.notes if n not in notes],
    )


def _single_mode_adapt(
    density: LogDensity,
    cfg: FlowMCMCConfig,
    rng: np.random.Generator,
    grad_before: int,
    found: TemperingResult,
    laplace: list[tuple[np.ndarray | None, np.ndarray | None]],
) -> FlowMCMCAdaptation:
    """Every exploration found one mode: adapt one flow from the climbs' seeding.

    With a single mode, finding modes is not the question, its shape is. The
    tempering's MALA moves never enter a funnel's neck (on Neal's funnel in 10-D
    its walkers had v sd 1.2-1.4 instead of 3), while Pathfinder's paths run
    down it and ``fit="auto"`` then switches to reverse KL (see
    :func:`reverse_kl_reason`). So the flow is adapted as with
    ``explore="climbs"``; the census is kept, and the climbs' search finding
    more modes than the explorations is a warning.
    """
    census = found.census
    seed, modes, search = _seed_and_modes(density, cfg, None, rng)
    climbed = modes.shape[0]
    seed, extra = _with_census_tops(density, census, laplace, seed, modes, child_rng(rng))
    # Not distinct_modes: the barrier test can merge a missed mode into a known one (see there).
    modes = np.concatenate([modes, extra])
    result = _adapt_fit(density, cfg, _run(density, cfg, seed, modes, rng, grad_before))
    flow_shares(census, result.kernel.flow.sample(4096, rng)[0])
    messages, notes = settle_shortfall(census, census_warnings(census, cfg.tempering_max_steps),
                                       [result.coverage])
    if climbed > 1:
        messages.append(
            f"The tempering explorations found one mode, but Pathfinder's paths and the mode "
            f"search found {climbed}: the explorations missed modes. What to try: more "
            "tempering walkers (tempering_walkers), smaller temperature steps (tempering_ess "
            "closer to 1), or another reference_scale."
        )
    return replace(result, mode_search=search, census=census, tempering=found,
                   warnings=messages + result.warnings, notes=notes + list(result.notes))


#: a census top joins the climbs' modes only with a Laplace mass of at least this share of
#: the evidence (the mode search's ``min_mass``)
MIN_CENSUS_TOP_MASS = 1e-3


def _with_census_tops(
    density: LogDensity,
    census: ModeCensus,
    laplace: list[tuple[np.ndarray | None, np.ndarray | None]],
    seed: SeedResult,
    modes: np.ndarray,
    rng: np.random.Generator,
) -> tuple[SeedResult, np.ndarray]:
    """The census tops the climbs' seeding missed, and the seeding with walkers in them.

    Where the explorations found a single mode, the flow is seeded from the
    climbs (:func:`_single_mode_adapt`), which can miss the mode the
    explorations did find. On a 20-D mixture of a wide component (weight
    0.14, sd 1.28) and a narrow one (0.86, sd 0.65) 5.7 apart, the tempering
    population sat in the narrow one while Pathfinder's paths and the search
    all ended in the wide one, and production gave the narrow one 0.03. (The
    barrier between them on the straight segment is under a nat, so the
    barrier test calls them one mode; in 20 dimensions MALA still never
    crosses.) A census top that is a proper maximum more than 3 of its
    Laplace sds (Mahalanobis) from every known mode is returned, and the
    seeding gets draws from its Laplace normal as a found mode does. It
    joins the modes as it is, so the proposal mixes in its normal
    (:func:`~pymc_ext.flow_sampler.mode_proposal.with_mode_components`).
    As in the mode search, a top needs a Laplace mass of at least
    ``MIN_CENSUS_TOP_MASS`` of the census's evidence: the top of Neal's
    funnel lies deep in its neck (v = -18 in 5-D) with a vanishing mass, and
    as a second mode it would keep ``fit="auto"`` from its reverse-KL refit.
    """
    floor = census.log_evidence + math.log(MIN_CENSUS_TOP_MASS)
    tops, covs, masses = [], [], []
    for mode, (top, cov) in zip(census.modes, laplace, strict=True):
        if top is None or cov is None or not mode.laplace_log_mass >= floor:
            continue
        known = np.concatenate([modes, np.asarray(tops).reshape(-1, modes.shape[1])])
        if nearest_in_sds(top, np.linalg.cholesky(cov), known) < 3.0:
            continue
        tops.append(top)
        covs.append(cov)
        masses.append(mode.laplace_log_mass)
    if not tops:
        return seed, np.zeros((0, modes.shape[1]))
    found = ModeSearch(np.stack(tops), np.stack(covs), np.asarray(masses), float(max(masses)),
                       0, np.zeros(len(tops), dtype=np.int64), 0, 0)
    return add_modes_to_seed(seed, found, rng), np.stack(tops)
