"""The public sampler: :func:`flow_mcmc` adapts (or reuses an adaptation), then runs production.

Production draws come from the fixed kernel of
:mod:`pymc_ext.flow_sampler.kernel` (local moves, then one flow independence
proposal), which leaves the posterior invariant: each walker is an exact
MCMC chain, reported as one ArviZ chain.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from pymc_ext.blocks.progress import ProgressBar
from pymc_ext.density import LogDensity
from pymc_ext.flow_sampler.adaptation import default_num_draws, flow_mcmc_adapt
from pymc_ext.flow_sampler.census import flow_shares, production_shares
from pymc_ext.flow_sampler.config import FitMethod, FlowMCMCConfig, LocalSpace, make_config
from pymc_ext.flow_sampler.disagreement import (
    census_warnings,
    missed_mode_warnings,
    population_warnings,
)
from pymc_ext.flow_sampler.kernel import (
    FlowMCMCInfo,
    FlowMCMCState,
    flow_mcmc_init,
    flow_mcmc_step,
)
from pymc_ext.flow_sampler.neutra import neutra_space
from pymc_ext.flow_sampler.result import FlowMCMCAdaptation, FlowMCMCWarning
from pymc_ext.flow_sampler.rounds import HISTORY_KEYS
from pymc_ext.flows import StandardizedFlow
from pymc_ext.pymc_adapter.datatree import to_datatree

__all__ = ["flow_mcmc", "resolve_density"]

Callback = Callable[[int, FlowMCMCState, FlowMCMCInfo], None]


def resolve_density(model_or_density: Any) -> LogDensity:
    """The :class:`~pymc_ext.density.LogDensity` to sample: given, or of a PyMC model.

    Parameters
    ----------
    model_or_density : pm.Model, LogDensity or None
        None: the model in context.

    Returns
    -------
    LogDensity

    Examples
    --------
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler.driver import resolve_density
    >>> d = FunctionLogDensity(1, lambda x: -0.5 * x @ x)
    >>> resolve_density(d) is d
    True
    """
    if model_or_density is None or type(model_or_density).__name__ == "Model":
        import pymc as pm

        from pymc_ext.pymc_adapter.logdensity import log_density

        return log_density(pm.modelcontext(model_or_density))
    if isinstance(model_or_density, LogDensity):
        return model_or_density
    raise TypeError(
        "flow_mcmc needs a PyMC model or a LogDensity (or to be called inside `with model:`); "
        f"got {type(model_or_density).__name__}."
    )


@dataclass
class _Tally:
    """Running totals over the production iterations."""

    hops: int = 0
    hops_flow: int = 0
    global_sum: float = 0.0
    local_sum: float = 0.0
    n_iter: int = 0
    seconds: float = 0.0
    local_space: str = "position"
    flow_space_step_sizes: list[float] = field(default_factory=list)

    @property
    def global_acceptance(self) -> float:
        return self.global_sum / max(1, self.n_iter)

    @property
    def local_acceptance(self) -> float:
        return self.local_sum / max(1, self.n_iter)


def _empty_stats(n_walkers: int, n_keep: int) -> dict[str, np.ndarray]:
    return {
        "lp": np.empty((n_walkers, n_keep)),
        "flow_accepted": np.zeros((n_walkers, n_keep), dtype=bool),
        "flow_acceptance": np.empty((n_walkers, n_keep)),
        "local_acceptance": np.empty((n_walkers, n_keep)),
        "diverging": np.zeros((n_walkers, n_keep), dtype=bool),
        "mode": np.empty((n_walkers, n_keep), dtype=np.int64),
        "flow_log_weight": np.empty((n_walkers, n_keep)),
    }


def _production(
    density: LogDensity,
    adaptation: FlowMCMCAdaptation,
    cfg: FlowMCMCConfig,
    draws: int,
    rng: np.random.Generator,
    callback: Callback | None,
) -> tuple[np.ndarray, dict[str, np.ndarray], _Tally]:
    """Run the frozen kernel: ``draws`` kept iterations per walker, every ``thin``-th."""
    thin = cfg.thin
    if in_flow_space(cfg, adaptation):
        space = neutra_space(
            density, adaptation.kernel.flow, adaptation.state.position, rng,
            num_integration_steps=cfg.num_integration_steps,
        )
        run_density, kernel, state = space.density, space.kernel, space.state
        positions = space.positions
    else:
        run_density, kernel = density, adaptation.kernel
        state = flow_mcmc_init(density, adaptation.state.position, kernel)

        def positions(s: FlowMCMCState) -> tuple[np.ndarray, np.ndarray]:
            return s.local.position, s.local.logp

    n_walkers, dim = state.local.position.shape
    out = np.empty((n_walkers, draws, dim))
    stats = _empty_stats(n_walkers, draws)
    tally = _Tally()
    if run_density is not density:
        tally.local_space = "flow"
        tally.flow_space_step_sizes.append(float(kernel.step_size))
    x, lp = positions(state)
    labels = adaptation.labels(x)
    t_sample = time.perf_counter()
    with ProgressBar(draws * thin, "flow MCMC sampling", show=cfg.progressbar) as bar:
        for k in range(draws):
            acc_flow = np.zeros(n_walkers, dtype=bool)
            facc, lacc = np.zeros(n_walkers), np.zeros(n_walkers)
            div = np.zeros(n_walkers, dtype=bool)
            for _ in range(thin):
                state, info = flow_mcmc_step(rng, state, run_density, kernel)
                x, lp = positions(state)
                new_labels = adaptation.labels(x)
                changed = new_labels != labels
                tally.hops += int(changed.sum())
                tally.hops_flow += int((changed & info.flow_accepted).sum())
                labels = new_labels
                acc_flow |= info.flow_accepted
                facc += info.flow_acceptance / thin
                lacc += info.local_acceptance / thin
                div |= info.local_divergent
                tally.global_sum += float(info.flow_acceptance.mean())
                tally.local_sum += float(info.local_acceptance.mean())
                tally.n_iter += 1
                if callback is not None:
                    callback(tally.n_iter, state, info)
                bar.update()
            out[:, k] = x
            for name, value in (
                ("lp", lp), ("flow_accepted", acc_flow), ("flow_acceptance", facc),
                ("local_acceptance", lacc), ("diverging", div), ("mode", labels),
                # log p - log q (as log pi(z) - log base(z) on the base space)
                ("flow_log_weight", state.local.logp - state.logq),
            ):
                stats[name][:, k] = value
            if (k + 1) % 20 == 0:
                bar.update(0, global_acc=f"{tally.global_acceptance:.2f}", hops=tally.hops)
    tally.seconds = time.perf_counter() - t_sample
    return out, stats, tally


def in_flow_space(cfg: FlowMCMCConfig, adaptation: FlowMCMCAdaptation) -> bool:
    """Whether production's local moves run on the flow's base space (``cfg.local_space``).

    ``"auto"`` says yes for a reverse-KL flow that is one bijection (not mixed
    with Laplace normals at the modes).

    Examples
    --------
    >>> from pymc_ext.flow_sampler.config import FlowMCMCConfig
    >>> from pymc_ext.flow_sampler.driver import in_flow_space
    >>> in_flow_space(FlowMCMCConfig(local_space="position"), None)
    False
    """
    space = LocalSpace(cfg.local_space)
    if space == LocalSpace.POSITION:
        return False
    bijection = isinstance(adaptation.kernel.flow, StandardizedFlow)
    if space == LocalSpace.FLOW:
        if not bijection:
            raise ValueError(
                "local_space='flow' needs the production flow to be one bijection, but it "
                "is mixed with Laplace normals at the modes; pass mode_proposals=0 or "
                "local_space='position'."
            )
        return True
    return bijection and adaptation.fit == FitMethod.REVERSE


def _all_production(
    density: LogDensity,
    adaptation: FlowMCMCAdaptation,
    cfg: FlowMCMCConfig,
    draws: int,
    rng: np.random.Generator,
    callback: Callback | None,
) -> tuple[np.ndarray, dict[str, np.ndarray], _Tally, np.ndarray]:
    """Production with each exploration's own flow (chains split between them), or the one.

    Returns the draws, the statistics, the tally and, per chain, the index of
    the exploration whose flow it used."""
    if not adaptation.members:
        out, stats, tally = _production(density, adaptation, cfg, draws, rng, callback)
        return out, stats, tally, np.zeros(out.shape[0], dtype=np.int64)
    outs, stats_list, tally = [], [], _Tally()
    for member in adaptation.members:
        out, stats, t = _production(density, member, cfg, draws, rng, callback)
        outs.append(out)
        stats_list.append(stats)
        tally.hops += t.hops
        tally.hops_flow += t.hops_flow
        w = out.shape[0]
        tally.global_sum += t.global_acceptance * w
        tally.local_sum += t.local_acceptance * w
        tally.n_iter += w
        tally.seconds += t.seconds
        tally.local_space = t.local_space
        tally.flow_space_step_sizes += t.flow_space_step_sizes
    groups = np.concatenate([np.full(o.shape[0], e) for e, o in enumerate(outs)])
    stats = {k: np.concatenate([s[k] for s in stats_list]) for k in stats_list[0]}
    return np.concatenate(outs), stats, tally, groups


def _census_warnings(
    adaptation: FlowMCMCAdaptation, out: np.ndarray, groups: np.ndarray
) -> tuple[list[str], list[str]]:
    """Production weights per mode and per exploration; what disagrees (issued now).

    Returns ``(warnings, notes)``. Walkers that do not look like the production
    draws (:func:`population_warnings`) put the explorations' weights and log
    evidence in doubt; with one mode its weight is 1 whatever the walkers, and the
    production draws are exact MCMC, so there they are a note on the log evidence
    (``sample_stats.attrs["census_notes"]``), not a warning: on the funnel and
    gp_pois_regr they fired on right answers.
    """
    census = adaptation.census
    if census is None:
        return [], []
    production_shares(census, out, groups)
    flow_shares(census)
    messages = census_warnings(census, stage="production")
    population = population_warnings(census, adaptation.tempering.explorations,
                                     out.reshape(-1, out.shape[-1]))
    if census.n_modes < 2:
        notes = population
    else:
        notes, messages = [], messages + population
    for message in messages:
        warnings.warn(message, FlowMCMCWarning, stacklevel=3)
    return messages, notes


def _census_attrs(adaptation: FlowMCMCAdaptation, groups: np.ndarray) -> dict[str, Any]:
    census = adaptation.census
    return {
        "explore": "tempering",
        "mode_census": census.to_json(),
        "log_evidence": float(census.log_evidence),
        "log_evidence_se": float(census.log_evidence_se),
        "chain_exploration": [int(g) for g in groups],
        "tempering_temperatures": [int(t) for t in census.temperatures],
        "n_modes": int(census.n_modes),
    }


def _missed_mode_warning(
    density: LogDensity, adaptation: FlowMCMCAdaptation, out: np.ndarray, lp: np.ndarray
) -> tuple[list[str], np.ndarray]:
    """Production draws above every known mode's top (issued now); and the missed top."""
    census = adaptation.census
    tops = census.tops if census is not None and census.n_modes else adaptation.modes
    scale = np.broadcast_to(np.asarray(adaptation.mode_scale, dtype=float), (out.shape[-1],))
    messages, top = missed_mode_warnings(density, np.atleast_2d(tops), out, lp, scale)
    for message in messages:
        warnings.warn(message, FlowMCMCWarning, stacklevel=3)
    return messages, top


def _low_acceptance_warning(global_acc: float, threshold: float) -> list[str]:
    if global_acc >= threshold:
        return []
    msg = (
        f"The flow's global acceptance in production was {global_acc:.3f} "
        f"(< {threshold}): the flow is a poor proposal, so walkers rarely move "
        "between modes and mode weights may be off, though each move is still exact. What "
        "to try: more adaptation rounds (n_rounds), more training (train_steps), more "
        "walkers (chains), a larger flow (flow_kwargs={'transforms': ..., "
        "'hidden_features': ...}), or fit='both'; for a funnel or a curved hierarchical "
        "posterior with a single mode, fit='reverse'."
    )
    warnings.warn(msg, FlowMCMCWarning, stacklevel=3)
    return [msg]


def _rhat_warning(out: np.ndarray, threshold: float | None) -> list[str]:
    """A warning when the production chains have not mixed (largest R-hat above ``threshold``)."""
    if threshold is None or out.shape[0] < 2 or out.shape[1] < 4:
        return []
    from arviz_stats.base import array_stats

    rhat = np.asarray(
        array_stats.rhat(np.moveaxis(out, -1, 0), method="rank", chain_axis=-2, draw_axis=-1),
        dtype=float,
    )
    worst = float(np.nanmax(rhat)) if np.isfinite(rhat).any() else float("nan")
    if not worst > threshold:
        return []
    msg = (
        f"The production chains have not mixed: the largest R-hat is {worst:.3f} "
        f"(> {threshold}). The mode weights may be off, and a mode the explorations never "
        "found would not show anywhere else. What to try: more draws, more adaptation rounds "
        "(n_rounds), more tempering walkers (tempering_walkers) or explorations; compare the "
        "mode census (sample_stats.attrs['mode_census']) between runs with other seeds."
    )
    warnings.warn(msg, FlowMCMCWarning, stacklevel=3)
    return [msg]


#: Share of production transitions with a divergent local move above which flow_mcmc may warn.
MAX_DIVERGENT_SHARE = 0.005
#: ... when at least this share of them sat where the flow is thin (see ``THIN_FLOW_NATS``).
MIN_THIN_DIVERGENT_SHARE = 0.05
#: "Thin": ``log p - log q`` more than this above its median over the draws (100 times).
THIN_FLOW_NATS = float(np.log(100.0))


def _divergence_warning(
    diverging: np.ndarray, log_weight: np.ndarray, local_space: str
) -> list[str]:
    """A warning when the local moves diverge where the flow cannot take the chains either.

    A divergent move is rejected, so the chains stay exact, but it marks a
    region the local moves cannot enter. Where the flow covers that region its
    proposals move the chains in and out, and nothing is lost (non-centred
    eight schools: 1.5% divergent, all where the flow's weights are typical).
    Where the flow is thin there too (``log p - log q`` more than
    ``THIN_FLOW_NATS`` above its median), nothing reaches it and the draws miss
    it (a new user's close mixture: 5.6% divergent, a fifth of them where the
    flow had 100 times too little mass or less; ``mu[0]``'s sd 13-23% short).
    Warns when more than :data:`MAX_DIVERGENT_SHARE` of the transitions
    diverged and at least :data:`MIN_THIN_DIVERGENT_SHARE` of those sat where
    the flow is thin.
    """
    share = float(np.mean(diverging)) if diverging.size else 0.0
    if not share > MAX_DIVERGENT_SHARE:
        return []
    w = np.asarray(log_weight, dtype=float)
    finite = np.isfinite(w)
    if not finite.any():
        return []
    thin = w > float(np.median(w[finite])) + THIN_FLOW_NATS
    thin_share = float(np.mean(thin[diverging]))
    if not thin_share >= MIN_THIN_DIVERGENT_SHARE:
        return []
    where = "on the flow's base space" if local_space == "flow" else "on x"
    msg = (
        f"{int(diverging.sum())} of the {diverging.size} production transitions "
        f"({share:.1%}) had a divergent local move ({where}), {thin_share:.0%} of them where "
        "the flow has 100 times too little mass or less: a region of the posterior (a "
        "funnel's neck, a weakly identified tail) that neither the local moves nor the "
        "flow reach, so the draws may miss part of it (sds too small). What to try: "
        "fit='reverse' (the flow then learns from the density, and production moves on its "
        "base space), a larger flow (flow_kwargs), more adaptation rounds (n_rounds), or a "
        "reparameterised model; compare with a run of another seed."
    )
    warnings.warn(msg, FlowMCMCWarning, stacklevel=3)
    return [msg]


def _sample_stats_attrs(
    adaptation: FlowMCMCAdaptation,
    tally: _Tally,
    stats: dict[str, np.ndarray],
    evals: dict[str, int],
    warn_list: list[str],
) -> dict[str, Any]:
    """The run's figures for ``sample_stats.attrs``.

    ``evals``: gradient evaluations ``total`` and ``adaptation`` (counted on the
    density during this call) and ``logp``."""
    kernel, history, coverage = adaptation.kernel, adaptation.history, adaptation.coverage
    search = adaptation.mode_search
    grad_total, grad_adapt = evals["total"], evals["adaptation"]
    return {
        "sampler": "pymc_ext.flow_mcmc",
        "global_acceptance": float(tally.global_acceptance),
        "local_acceptance": float(tally.local_acceptance),
        "mode_hops": int(tally.hops),
        "mode_hops_flow": int(tally.hops_flow),
        "n_modes": int(adaptation.modes.shape[0]),
        "restarted_walkers": int(adaptation.restarted_walkers),
        "modes_from_search": int(search.tops.shape[0] if search is not None else 0),
        "divergences": int(stats["diverging"].sum()),
        "grad_evals": grad_total + (adaptation.grad_evals if grad_adapt == 0 else 0),
        "grad_evals_production": grad_total - grad_adapt,
        "grad_evals_adaptation": int(adaptation.grad_evals),
        "logp_evals": evals["logp"],
        "global_acceptance_per_round": [float(v) for v in history["global_acceptance"]],
        "local_acceptance_per_round": [float(v) for v in history["local_acceptance"]],
        "mode_hops_per_round": [int(v) for v in history["mode_hops"]],
        "step_size": float(kernel.step_size),
        "local_kernel": "hmc" if tally.local_space == "flow" else str(kernel.local_kernel),
        "local_space": tally.local_space,
        "flow_space_step_sizes": [float(v) for v in tally.flow_space_step_sizes],
        "adaptation_seconds": float(adaptation.seconds),
        "sampling_seconds": float(tally.seconds),
        "seed_method": str(adaptation.seed.method),
        "fit": str(adaptation.fit),
        "fit_reason": adaptation.fit_reason,
        "flow_pareto_k": float(coverage["pareto_k"]),
        "flow_config": json.dumps(
            kernel.flow.config.to_dict() if kernel.flow.config is not None else {}
        ),
        "flow_share_per_mode": [float(v) for v in coverage["flow_share"]],
        "walker_share_per_mode": [float(v) for v in coverage["walker_share"]],
        "warnings": json.dumps(warn_list),
    }


def flow_mcmc(
    model_or_density: Any = None,
    config: FlowMCMCConfig | None = None,
    *,
    random_seed: int | np.random.Generator | None = None,
    adaptation: FlowMCMCAdaptation | None = None,
    callback: Callback | None = None,
    **overrides: Any,
) -> xr.DataTree:
    """Sample a posterior with flow MCMC: many walkers, local moves plus exact flow proposals.

    For posteriors NUTS cannot mix across (separated modes, a funnel); on easy
    unimodal ones it works but costs more (the flow has to be fitted).

    Parameters
    ----------
    model_or_density : pm.Model or LogDensity, optional
        The target; the model in context by default.
    config : FlowMCMCConfig, optional
        Every option (draws, chains, n_rounds, local_kernel, metric, fit,
        flow_kwargs, ...; see :class:`~pymc_ext.flow_sampler.config.FlowMCMCConfig`).
    random_seed : int or Generator, optional
        Makes the whole run reproducible (walkers, flow weights, proposals).
    adaptation : FlowMCMCAdaptation, optional
        Reuse an earlier adaptation (skips straight to production).
    callback : callable, optional
        ``callback(iteration, state, info)`` after every production iteration.
    **overrides
        Any ``FlowMCMCConfig`` field (``draws=1000, fit="reverse"``), over ``config``.

    Returns
    -------
    xarray.DataTree
        ``posterior`` (walkers as chains); ``sample_stats`` with per-draw ``lp``,
        ``flow_accepted``, ``flow_acceptance``, ``local_acceptance``,
        ``diverging``, ``mode`` and ``flow_log_weight`` (``log p - log q`` of the
        production flow at the draw: high where the flow is thin), and the run's
        figures as attributes
        (``global_acceptance``, ``mode_hops``, ``grad_evals``, ``n_modes``,
        ``fit``, ``fit_reason``, warnings, ...); ``flow_adaptation``: the rounds.
        With ``explore="tempering"`` also ``mode_census`` (JSON of a
        :class:`~pymc_ext.flow_sampler.census.ModeCensus`: each mode's
        location, weight with its Monte Carlo error, weight per exploration,
        the ``beta`` at which it was first seen, the flow's share and whether
        the flow covers it), ``log_evidence`` and ``log_evidence_se``, and
        ``chain_exploration`` (which exploration's flow each chain used).

    Notes
    -----
    By default (``explore="tempering"``) the modes are found by tempering:
    ``explorations`` (default 2) independent populations are tempered from a
    broad Gaussian to the posterior (adaptive SMC, every mode of ``pi_beta``
    kept populated), each trains its own flow, and the production chains are
    split between the flows, so R-hat sees it when they disagree.
    ``explore="climbs"`` finds them by L-BFGS climbs from overdispersed starts
    only: faster, but a mode whose basin no climb reaches is missed silently.

    Warns
    -----
    FlowMCMCWarning
        Low global acceptance, a dimension beyond a few hundred, a flow with
        no mass near a mode the walkers found, production chains that have not
        mixed (R-hat above ``max_rhat``), divergent local moves where the flow is
        thin too (more than 0.5% of the transitions), or production draws above the top of
        every mode the adaptation found (a missed mode: its top, found by a
        climb, is in ``sample_stats.attrs["missed_modes"]``). With ``explore="tempering"``
        also: the explorations disagree on the modes or on a mode's weight,
        an exploration ran out of temperatures, or the flow puts much less
        mass on a mode than its weight. Each says what to try.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler import flow_mcmc
    >>> def logp(X):  # two separated modes, weights 0.3 and 0.7
    ...     a = -0.5 * ((X + 3) ** 2).sum(-1) + np.log(0.3)
    ...     b = -0.5 * ((X - 3) ** 2).sum(-1) + np.log(0.7)
    ...     return np.logaddexp(a, b)
    >>> def grad(X):
    ...     a = -0.5 * ((X + 3) ** 2).sum(-1) + np.log(0.3)
    ...     b = -0.5 * ((X - 3) ** 2).sum(-1) + np.log(0.7)
    ...     wa = np.exp(a - np.logaddexp(a, b))[:, None]
    ...     return wa * -(X + 3) + (1 - wa) * -(X - 3)
    >>> d = FunctionLogDensity(2, lambda x: logp(x[None])[0], lambda x: grad(x[None])[0],
    ...                        logp, grad)
    >>> idata = flow_mcmc(d, draws=100, chains=64, n_rounds=4, random_seed=1,
    ...                   progressbar=False, flow_kwargs={"hidden_features": (32, 32)})
    >>> x = idata.posterior["x"].values
    >>> bool(abs((x.mean(-1) > 0).mean() - 0.7) < 0.1)
    True
    """
    density = resolve_density(model_or_density)
    cfg = make_config(config, overrides)
    draws = int(cfg.draws) if cfg.draws is not None else default_num_draws(int(density.dim))
    rng = np.random.default_rng(random_seed)
    grad_before, logp_before = int(density.grad_evals), int(density.logp_evals)
    if adaptation is None:
        adaptation = flow_mcmc_adapt(density, cfg, random_seed=rng)
    grad_adapt = int(density.grad_evals) - grad_before
    out, stats, tally, groups = _all_production(density, adaptation, cfg, draws, rng, callback)
    warn_list = list(adaptation.warnings)
    warn_list += _low_acceptance_warning(tally.global_acceptance, cfg.min_global_acceptance)
    census_messages, census_notes = _census_warnings(adaptation, out, groups)
    warn_list += census_messages
    missed, missed_top = _missed_mode_warning(density, adaptation, out, stats["lp"])
    warn_list += missed
    warn_list += _rhat_warning(out, cfg.max_rhat)
    warn_list += _divergence_warning(
        stats["diverging"], stats["flow_log_weight"], tally.local_space
    )
    evals = {
        "total": int(density.grad_evals) - grad_before,
        "adaptation": grad_adapt,
        "logp": int(density.logp_evals) - logp_before,
    }
    history = adaptation.history
    attrs = _sample_stats_attrs(adaptation, tally, stats, evals, warn_list)
    if adaptation.census is not None:
        attrs.update(_census_attrs(adaptation, groups))
        attrs["census_notes"] = json.dumps(list(adaptation.notes) + census_notes)
    attrs["missed_modes"] = json.dumps(missed_top.tolist())
    return to_datatree(
        density,
        out,
        sample_stats=stats,
        sample_stats_attrs=attrs,
        attrs={"sampler": "pymc_ext.flow_mcmc"},
        extra_groups={"flow_adaptation": {k: history[k] for k in HISTORY_KEYS}},
    )
