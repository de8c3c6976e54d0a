"""The adaptation rounds of flow MCMC with one way of fitting the flow.

Each round (a) moves every walker locally (MALA or HMC, step size adapted by
dual averaging, metric from the within-mode covariance), (b) fits or refines
the flow on the pooled walker states (and, with ``fit="both"`` or
``"reverse"``, from the density), and (c) proposes globally from the flow.
At the end the flow, step size and metric are frozen into a
:class:`~pymc_ext.flow_sampler.kernel.FlowMCMCKernel`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pymc_ext.blocks.dual_averaging import (
    DualAveragingState,
    dual_averaging_init,
    dual_averaging_update,
)
from pymc_ext.blocks.importance import importance_ess
from pymc_ext.blocks.progress import ProgressBar
from pymc_ext.blocks.torch_settings import torch_dtype
from pymc_ext.density import LogDensity
from pymc_ext.flow_sampler.config import (
    FitMethod,
    FlowMCMCConfig,
    LocalKernel,
    LocalSpace,
    MetricKind,
)
from pymc_ext.flow_sampler.global_move import flow_independence_step
from pymc_ext.flow_sampler.kernel import FlowMCMCKernel
from pymc_ext.flow_sampler.kernels import (
    LocalInfo,
    LocalState,
    Metric,
    finite_rows,
    local_init,
    local_move,
)
from pymc_ext.flow_sampler.mode_proposal import with_mode_components
from pymc_ext.flow_sampler.modes import (
    coverage_check,
    discover_modes,
    nearest_mode,
    within_mode_covariance,
    within_mode_variance,
)
from pymc_ext.flow_sampler.result import FlowMCMCAdaptation
from pymc_ext.flows import (
    FitInfo,
    SeedResult,
    StandardizedFlow,
    build_flow,
    fit_forward_kl,
    fit_reverse_kl,
)

__all__ = ["HISTORY_KEYS", "adapt_rounds", "mode_step_factors", "restart_stuck_walkers"]

#: the per-round records of :attr:`FlowMCMCAdaptation.history`
HISTORY_KEYS = (
    "global_acceptance", "local_acceptance", "step_size", "flow_loss", "mode_hops",
    "grad_evals", "seconds", "n_modes",
)
#: L-BFGS climbs that found nothing new, allowed over the whole adaptation
MODE_CLIMBS = 8


@dataclass
class _Walkers:
    """What the rounds carry from one to the next."""

    state: LocalState
    da: DualAveragingState
    inverse_metric: np.ndarray
    modes: np.ndarray
    metric: Metric = field(init=False)
    buffer: list[np.ndarray] = field(default_factory=list)
    climbs_left: int = MODE_CLIMBS
    #: per-mode step factors (None: one step size for every walker)
    mode_factor: np.ndarray | None = None
    mode_scale: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.metric = Metric(self.inverse_metric)

    @property
    def step_size(self) -> float:
        return math.exp(self.da.log_step)

    def steps(self) -> float | np.ndarray:
        """The step size, per walker when the modes have their own factors."""
        if self.mode_factor is None:
            return self.step_size
        labels = nearest_mode(self.state.position, self.modes, self.mode_scale)
        factor = np.ones(self.modes.shape[0])
        factor[: self.mode_factor.size] = self.mode_factor[: factor.size]
        return self.step_size * factor[labels]

    def move(
        self, density: LogDensity, cfg: FlowMCMCConfig, rng: np.random.Generator
    ) -> LocalInfo:
        """One local move of every walker with the current step size and metric."""
        self.state, info = local_move(
            cfg.local_kernel, rng, self.state, density, self.steps(), self.metric,
            cfg.num_integration_steps,
        )
        return info


def mode_step_factors(
    X: np.ndarray, labels: np.ndarray, inverse_metric: np.ndarray, n_modes: int
) -> np.ndarray:
    """Per-mode step factors ``sqrt(median(var_k / diag M^-1))`` (1 for modes with < 5 states).

    During adaptation with ``explore="tempering"`` a walker in a mode 3 times
    narrower than the pooled metric takes steps 3 times smaller (the
    adaptation's draws only train the flow; production keeps one step size,
    so its kernel stays exact). Without it, on a 10-D mixture of scales
    0.5 / 1 / 1.5 the narrow mode's walkers hardly moved, the flow fitted
    their few distinct states as spikes, and the walkers left the mode.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flow_sampler.rounds import mode_step_factors
    >>> rng = np.random.default_rng(0)
    >>> X = np.r_[rng.normal(0, 1, (500, 2)), rng.normal(9, 0.3, (500, 2))]
    >>> labels = np.r_[np.zeros(500, int), np.ones(500, int)]
    >>> np.round(mode_step_factors(X, labels, np.ones(2), 2), 1).tolist()
    [1.0, 0.3]
    """
    diag = np.diag(inverse_metric) if inverse_metric.ndim == 2 else inverse_metric
    factor = np.ones(n_modes)
    for k in range(n_modes):
        sel = X[labels == k]
        if sel.shape[0] >= 5:
            ratio = sel.var(0) / np.maximum(diag, 1e-300)
            ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
            if ratio.size:
                factor[k] = float(np.clip(math.sqrt(float(np.median(ratio))), 0.05, 20.0))
    return factor


def _initial_state(
    density: LogDensity, seed: SeedResult, n_walkers: int, rng: np.random.Generator
) -> LocalState:
    """Walkers at seed draws; those where the density is not finite moved to ones where it is."""
    pick = rng.choice(seed.draws.shape[0], size=n_walkers, replace=seed.draws.shape[0] < n_walkers)
    state = local_init(density, seed.draws[pick])
    bad = ~finite_rows(state.logp, state.grad)
    if bad.all():
        raise ValueError(
            "The log density is not finite at any of the Pathfinder seed draws; check the model "
            "(or pass init_scale smaller so the paths start nearer the bulk)."
        )
    if bad.any():  # replace unusable seeds by usable ones
        repl = rng.choice(np.flatnonzero(~bad), size=int(bad.sum()))
        state = LocalState(
            np.where(bad[:, None], state.position[repl], state.position),
            np.where(bad, state.logp[repl], state.logp),
            np.where(bad[:, None], state.grad[repl], state.grad),
        )
    return state


def _local_phase(
    density: LogDensity, cfg: FlowMCMCConfig, w: _Walkers, rng: np.random.Generator
) -> float:
    """(a) Local moves with step-size adaptation; keeps snapshots in the buffer.

    Returns the mean acceptance rate."""
    thin = max(1, cfg.adapt_local_steps // cfg.snapshots_per_round)
    snaps, acc_sum = [], 0.0
    for i in range(cfg.adapt_local_steps):
        acc = float(np.mean(w.move(density, cfg, rng).acceptance_rate))
        acc_sum += acc
        w.da = dual_averaging_update(w.da, acc, cfg.target_accept)
        if (i + 1) % thin == 0:
            snaps.append(w.state.position.copy())
    if not snaps:
        snaps.append(w.state.position.copy())
    w.buffer.append(np.concatenate(snaps))
    w.buffer = w.buffer[-cfg.buffer_rounds:]
    return acc_sum / max(1, cfg.adapt_local_steps)


def _modes_and_metric(
    density: LogDensity, cfg: FlowMCMCConfig, w: _Walkers, mode_scale: np.ndarray
) -> np.ndarray:
    """Look for modes the walkers found, and re-estimate the metric; returns the pooled states."""
    if w.climbs_left > 0:
        n_before = w.modes.shape[0]
        w.modes = discover_modes(
            density, w.state.position, w.state.logp, w.modes, mode_scale,
            max_checks=min(2, w.climbs_left),
        )
        w.climbs_left -= 2 if w.modes.shape[0] == n_before else 0
    pooled = np.concatenate(w.buffer)
    labels = nearest_mode(pooled, w.modes, mode_scale)
    if cfg.metric == MetricKind.DENSE:
        w.inverse_metric = within_mode_covariance(pooled, labels, w.inverse_metric)
    else:
        w.inverse_metric = np.clip(
            within_mode_variance(pooled, labels, w.inverse_metric), 1e-10, 1e10
        )
    w.metric = Metric(w.inverse_metric)
    if w.mode_factor is not None:
        w.mode_factor = mode_step_factors(pooled, labels, w.inverse_metric, w.modes.shape[0])
    return pooled


def _fit_phase(
    flow: StandardizedFlow,
    density: LogDensity,
    cfg: FlowMCMCConfig,
    pooled: np.ndarray,
    r: int,
    rng: np.random.Generator,
    fit_infos: list[FitInfo],
) -> float:
    """(b) Fit / refine the flow; returns the loss of the fit that defines it.

    On the pooled walker states (with fit="reverse": only a first fit, after
    which the flow learns from the density alone, so it can reach places the
    walkers never went, such as a funnel's neck).
    """
    loss = float("nan")
    if cfg.fit != FitMethod.REVERSE or r == 0:
        info_fit = fit_forward_kl(
            flow, pooled, max_steps=cfg.first_train_steps if r == 0 else cfg.train_steps,
            learning_rate=cfg.learning_rate, patience=5 if r == 0 else 3, random_seed=rng,
            progressbar=False,
        )
        fit_infos.append(info_fit)
        loss = info_fit.best
    if cfg.fit != FitMethod.FORWARD:
        if cfg.fit == FitMethod.REVERSE:  # the density is the only teacher after the first round
            steps = cfg.reverse_steps if r == 0 else max(1, cfg.reverse_steps // 4)
            rkw = {"learning_rate": cfg.learning_rate, "patience": 10,
                   "schedule": cfg.reverse_schedule}
        else:  # "both": a short, gentler refinement after each forward fit
            steps, rkw = cfg.reverse_steps, {"learning_rate": 0.3 * cfg.learning_rate}
        rinfo = fit_reverse_kl(
            flow, density, max_steps=steps, random_seed=rng, progressbar=False, **rkw
        )
        fit_infos.append(rinfo)
        if cfg.fit == FitMethod.REVERSE:
            loss = rinfo.best
    return loss


def _global_phase(
    density: LogDensity,
    cfg: FlowMCMCConfig,
    w: _Walkers,
    flow: StandardizedFlow,
    mode_scale: np.ndarray,
    rng: np.random.Generator,
) -> tuple[float, int]:
    """(c) Global moves through the current flow, each followed by local steps.

    Returns the mean global acceptance and the number of mode hops."""
    g_acc, hops = [], 0
    for _ in range(cfg.global_steps):
        logq = flow.log_prob_numpy(w.state.position)
        before = nearest_mode(w.state.position, w.modes, mode_scale)
        w.state, _, ginfo = flow_independence_step(rng, w.state, logq, density, flow)
        hops += int(np.sum(before != nearest_mode(w.state.position, w.modes, mode_scale)))
        g_acc.append(float(np.mean(ginfo.acceptance_rate)))
        for _ in range(cfg.local_steps):
            w.move(density, cfg, rng)
    return (float(np.mean(g_acc)) if g_acc else float("nan")), hops


def adapt_rounds(
    density: LogDensity,
    cfg: FlowMCMCConfig,
    *,
    seed: SeedResult,
    modes: np.ndarray,
    rng: np.random.Generator,
    n_walkers: int,
    n_rounds: int,
    grad_before: int,
    per_mode_steps: bool = False,
) -> FlowMCMCAdaptation:
    """The adaptation rounds of :func:`~pymc_ext.flow_sampler.flow_mcmc_adapt`, one fit.

    ``cfg`` is resolved for one way of fitting (:meth:`FlowMCMCConfig.resolved`).
    ``modes`` are the seed's distinct modes. Warnings are collected in the
    result, not issued (the caller issues those of the adaptation it keeps).
    Gradient evaluations are counted from ``grad_before`` (the start of the
    whole adaptation, Pathfinder included). ``per_mode_steps``: local moves
    during adaptation scale the step size by each mode's spread
    (:func:`mode_step_factors`; ``explore="tempering"`` uses it).

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flows import pathfinder_seed
    >>> from pymc_ext.flow_sampler.config import FlowMCMCConfig
    >>> from pymc_ext.flow_sampler.rounds import adapt_rounds
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x)
    >>> seed = pathfinder_seed(d, num_paths=2, num_draws=100, random_seed=0)
    >>> cfg = FlowMCMCConfig(first_train_steps=20, adapt_local_steps=4, progressbar=False,
    ...                      flow_kwargs={"transforms": 1, "hidden_features": (8, 8)})
    >>> ad = adapt_rounds(d, cfg.resolved("forward"), seed=seed, modes=seed.centers[:1],
    ...                   rng=np.random.default_rng(0), n_walkers=8, n_rounds=1, grad_before=0)
    >>> ad.state.position.shape
    (8, 2)
    """
    t_start = time.perf_counter()
    dim = int(density.dim)
    state = _initial_state(density, seed, n_walkers, rng)
    inverse_metric = np.clip(seed.within_variance, 1e-10, 1e10)
    mode_scale = np.sqrt(inverse_metric)
    step_size = float(np.clip(1.0 / dim**0.25, 0.05, 1.0))
    if cfg.local_kernel == LocalKernel.HMC:
        step_size /= math.sqrt(cfg.num_integration_steps)
    w = _Walkers(state, dual_averaging_init(step_size), inverse_metric, modes)
    if per_mode_steps:
        w.mode_scale = mode_scale
        labels = nearest_mode(seed.draws, modes, mode_scale)
        w.mode_factor = mode_step_factors(seed.draws, labels, inverse_metric, modes.shape[0])
    flow = build_flow(
        dim, mean=seed.mean, covariance=seed.covariance, random_seed=rng, **(cfg.flow_kwargs or {})
    )
    history: dict[str, list[float]] = {k: [] for k in HISTORY_KEYS}
    fit_infos: list[FitInfo] = []
    desc = "flow MCMC adaptation" + (" (reverse KL)" if cfg.fit == FitMethod.REVERSE else "")
    with ProgressBar(n_rounds, desc, show=cfg.progressbar) as bar:
        for r in range(n_rounds):
            t_round = time.perf_counter()
            local_acc = _local_phase(density, cfg, w, rng)
            pooled = _modes_and_metric(density, cfg, w, mode_scale)
            loss = _fit_phase(flow, density, cfg, pooled, r, rng, fit_infos)
            global_acc, hops = _global_phase(density, cfg, w, flow, mode_scale, rng)
            for key, value in (
                ("global_acceptance", global_acc), ("local_acceptance", local_acc),
                ("step_size", w.step_size), ("flow_loss", float(loss)), ("mode_hops", hops),
                ("grad_evals", int(density.grad_evals) - grad_before),
                ("seconds", time.perf_counter() - t_round), ("n_modes", int(w.modes.shape[0])),
            ):
                history[key].append(value)
            bar.update(global_acc=f"{global_acc:.2f}", local_acc=f"{local_acc:.2f}",
                       step=f"{w.step_size:.3g}", hops=hops)
    return _freeze(density, cfg, w, flow, mode_scale, rng, seed=seed, history=history,
                   fit_infos=fit_infos, grad_before=grad_before, t_start=t_start)


def _freeze(
    density: LogDensity,
    cfg: FlowMCMCConfig,
    w: _Walkers,
    flow: StandardizedFlow,
    mode_scale: np.ndarray,
    rng: np.random.Generator,
    **record: Any,
) -> FlowMCMCAdaptation:
    """Freeze the kernel, check the flow's coverage, restart stuck walkers."""
    frozen = flow.frozen(dtype=torch_dtype(cfg.flow_dtype))
    kernel = FlowMCMCKernel(
        flow=with_mode_components(frozen, density, w.modes, cfg.mode_proposals),
        step_size=float(math.exp(w.da.log_step_avg)),
        inverse_metric=w.inverse_metric,
        local_kernel=str(cfg.local_kernel),
        local_steps=int(cfg.local_steps),
        num_integration_steps=int(cfg.num_integration_steps),
    )
    pos, lp = w.state.position, w.state.logp
    coverage = coverage_check(density, kernel.flow, pos, lp, w.modes, mode_scale, rng)
    coverage_messages = _coverage_messages(coverage, cfg)
    state, n_restarted = restart_stuck_walkers(
        density, w.state, coverage, rng, cfg.restart_threshold
    )
    return FlowMCMCAdaptation(
        kernel=kernel,
        state=state,
        modes=w.modes,
        mode_scale=mode_scale,
        history={k: np.asarray(v) for k, v in record["history"].items()},
        coverage=coverage,
        seed=record["seed"],
        grad_evals=int(density.grad_evals) - record["grad_before"],
        seconds=time.perf_counter() - record["t_start"],
        warnings=coverage_messages[0],
        notes=coverage_messages[1],
        fit_infos=record["fit_infos"],
        restarted_walkers=n_restarted,
        fit=cfg.fit,
    )


def _coverage_messages(coverage: dict[str, Any], cfg: FlowMCMCConfig) -> tuple[list, list]:
    """The coverage check's ``(warnings, notes)``.

    With a reverse-KL flow whose production moves on its base space
    (``local_space`` not ``"position"``), walkers where the flow has too little
    mass are a note: the base-space HMC reaches that region (a funnel's neck),
    which an independence sampler alone could not, and what can still go wrong
    there shows in production (divergent moves, R-hat), which warns.
    """
    messages = _coverage_warnings(coverage, cfg.fit)
    in_flow_space = cfg.fit == FitMethod.REVERSE and cfg.local_space != LocalSpace.POSITION
    if messages and in_flow_space and not coverage["starved_modes"]:
        note = (
            f"{coverage['starved_walker_fraction']:.0%} of the walkers sat where the reverse-KL "
            "flow has at least 10,000x too little mass; production's moves on the flow's base "
            "space reach that region (local_space='flow')."
        )
        return [], [note]
    return messages, []


def _coverage_warnings(coverage: dict[str, Any], fit: FitMethod) -> list[str]:
    """What the coverage check says is wrong with the flow, with what to try."""
    if coverage["starved_modes"]:
        locs = ", ".join(
            f"mode {i} (walkers {coverage['walker_share'][i]:.0%}, "
            f"flow {coverage['flow_share'][i]:.1%})"
            for i in coverage["starved_modes"]
        )
        return [
            f"The flow put almost no mass near {locs}, where walkers are: global moves can "
            "neither reach nor leave it, so that mode's weight may be wrong even if the global "
            "acceptance looks healthy. What to try: more adaptation rounds (n_rounds), more "
            "training (train_steps), more walkers (chains), or a larger flow (flow_kwargs)."
        ]
    if coverage["starved_walker_fraction"] > 0.05:
        return [
            f"{coverage['starved_walker_fraction']:.0%} of the walkers sit where the flow has "
            "at least 10,000x too little mass relative to the posterior: the flow has likely "
            "missed part of the posterior, which the acceptance rate cannot show. What to try: "
            "more adaptation rounds (n_rounds), more training (train_steps), more walkers "
            "(chains), a larger flow (flow_kwargs)"
            + (", or, with a single mode, fit='reverse'." if fit != FitMethod.REVERSE else ".")
        ]
    return []


def restart_stuck_walkers(
    density: LogDensity,
    state: LocalState,
    coverage: dict[str, Any],
    rng: np.random.Generator,
    threshold: float | None,
    min_ess_fraction: float = 0.1,
) -> tuple[LocalState, int]:
    """Move walkers the frozen flow could never move to importance-resampled flow draws.

    A walker where ``log p - log q - log Z`` is ``t`` nats above zero accepts a
    flow proposal with probability about ``exp(-t)``: above ``threshold`` it
    is stuck for the whole run (unless local moves free it), a relic of the
    adaptation's path (on a funnel, MALA drags walkers deep into the neck,
    where they sat 70 to 160 nats above). Such walkers restart at flow draws
    resampled by their importance weights ``p / q``, provided those weights
    have an effective sample size of at least ``min_ess_fraction`` of the flow
    draws (a flow that poor, gp_pois_regr's say, is no better a start). This
    only changes where the production chains start; the production kernel and
    its exactness are unchanged.

    Parameters
    ----------
    density : LogDensity
    state : LocalState
    coverage : dict
        :func:`~pymc_ext.flow_sampler.coverage_check` of the frozen flow.
    rng : numpy Generator
    threshold : float or None
        Nats; None turns restarts off.
    min_ess_fraction : float

    Returns
    -------
    state : LocalState
    restarted : int

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flow_sampler import LocalState, restart_stuck_walkers
    >>> state = LocalState(np.zeros((2, 1)), np.zeros(2), np.zeros((2, 1)))
    >>> restart_stuck_walkers(None, state, {"log_z": 0.0}, np.random.default_rng(0), None)[1]
    0
    """
    if threshold is None or not np.isfinite(coverage["log_z"]):
        return state, 0
    stuck = np.flatnonzero(coverage["walker_log_ratio"] > threshold)
    logw = coverage["flow_log_weights"]
    finite = np.flatnonzero(np.isfinite(logw))
    if stuck.size == 0 or finite.size < 2 * stuck.size:
        return state, 0
    w = np.exp(logw[finite] - logw[finite].max())
    p = w / w.sum()
    with np.errstate(divide="ignore"):  # weights that underflow to 0 have log weight -inf
        ess = importance_ess(np.log(p))
    if ess < min_ess_fraction * logw.size:
        return state, 0  # the flow's own draws are no better a start than where walkers are
    pick = finite[rng.choice(finite.size, size=stuck.size, replace=False, p=p)]
    fresh = local_init(density, coverage["flow_draws"][pick])
    ok = finite_rows(fresh.logp, fresh.grad)
    stuck, fresh_idx = stuck[ok], np.flatnonzero(ok)
    position, logp, grad = state.position.copy(), state.logp.copy(), state.grad.copy()
    position[stuck] = fresh.position[fresh_idx]
    logp[stuck] = fresh.logp[fresh_idx]
    grad[stuck] = fresh.grad[fresh_idx]
    return LocalState(position, logp, grad), int(stuck.size)
