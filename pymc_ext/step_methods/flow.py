"""``FlowMC``: a ``pm.sample`` step method that adds exact flow proposals to NUTS.

Before the chains start, :class:`FlowMC` runs the flow-MCMC adaptation of
:func:`~pymc_ext.flow_sampler.adaptation.flow_mcmc_adapt` once (with a progress bar):
walkers seeded from multi-path Pathfinder, local moves, a zuko flow fitted
on the walker states, global moves. The flow is then frozen.

Each chain of ``pm.sample`` then alternates

1. a local move: a NUTS transition (PyMC's own NUTS, with a mass matrix from
   the adaptation's within-mode covariance, dense by default; its step size
   is tuned during ``tune``), or a MALA move with the adapted step size;
2. an independence Metropolis-Hastings proposal from the frozen flow,
   accepted with the exact ratio ``p(x') q(x) / (p(x) q(x'))``.

Both moves leave the posterior invariant, so the chains are exact; the flow
move lets a chain jump between modes that NUTS alone never leaves. The
statistics ``flow_accept_prob``, ``flow_accepted`` and ``move`` (0: the draw
came from the local move, 1: from the flow) go into ``sample_stats`` next to
NUTS's own.
"""

from __future__ import annotations

import time
from dataclasses import field
from typing import Any

import numpy as np
import torch
from pymc.blocking import PointType, StatsType
from pymc.model import modelcontext
from pymc.step_methods.compound import BlockedStep, Competence, StepMethodState
from pymc.step_methods.hmc.nuts import NUTS
from pymc.step_methods.state import DataClassState, dataclass_state
from pymc.util import RandomGenerator, get_random_generator, get_value_vars_from_user_vars

from pymc_ext.blocks.dual_averaging import dual_averaging_init, dual_averaging_update
from pymc_ext.flow_sampler.adaptation import flow_mcmc_adapt
from pymc_ext.flow_sampler.config import FitMethod
from pymc_ext.flow_sampler.kernels import Metric, hmc_step, local_init, mala_step
from pymc_ext.flow_sampler.neutra import (
    NEUTRA_JITTER,
    NEUTRA_TARGET_ACCEPT,
    FlowPullback,
)
from pymc_ext.flow_sampler.result import FlowMCMCAdaptation
from pymc_ext.flows import StandardizedFlow

__all__ = ["FlowMC", "FlowMCState"]

_FLOW_STATS: dict[str, tuple[Any, list[int] | None]] = {
    "flow_accept_prob": (np.float64, []),
    "flow_accepted": (bool, []),
    "move": (np.int64, []),
    "flow_proposed": (bool, []),
}
_MALA_STATS: dict[str, tuple[Any, list[int] | None]] = {
    "local_accept_prob": (np.float64, []),
    "local_accepted": (bool, []),
    "step_size": (np.float64, []),
    "diverging": (bool, []),
    "model_logp": (np.float64, []),
    "perf_counter_diff": (np.float64, []),
}


def _adaptation_for(
    density: Any,
    adaptation: FlowMCMCAdaptation | None,
    walkers: int | None,
    random_seed: Any,
    progressbar: bool,
    adapt_kwargs: dict[str, Any],
) -> FlowMCMCAdaptation:
    """The given adaptation (checked against the density), or a fresh one."""
    if adaptation is None:
        adapt_kwargs.setdefault("local_kernel", "mala")
        return flow_mcmc_adapt(
            density,
            chains=walkers,
            random_seed=random_seed,
            progressbar=progressbar,
            **adapt_kwargs,
        )
    if adaptation.kernel.flow.dim != density.dim:
        raise ValueError(
            f"The adaptation's flow has dim {adaptation.kernel.flow.dim}, the model has "
            f"{density.dim}: pass an adaptation made on this model."
        )
    return adaptation


@dataclass_state
class FlowMCState(StepMethodState):
    """Sampling state of :class:`FlowMC` (the frozen flow is not state: it never changes)."""

    local_step: DataClassState | None = None
    iter_count: int = 0
    flow_accepts: int = 0
    tune: bool = True
    proposals: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    proposals_logq: np.ndarray = field(default_factory=lambda: np.zeros(0))
    proposals_logp: np.ndarray = field(default_factory=lambda: np.zeros(0))
    neutra_step_size: float = 0.0
    neutra_da: Any = None
    flow_every: int = field(default=1, metadata={"frozen": True})
    local: str = field(default="nuts", metadata={"frozen": True})


def _bijection(adaptation: FlowMCMCAdaptation) -> StandardizedFlow | None:
    """A single flow (a bijection) of the adaptation: its own, or its first exploration's."""
    for member in adaptation.members or [adaptation]:
        if isinstance(member.kernel.flow, StandardizedFlow):
            return member.kernel.flow
    return None


class FlowMC(BlockedStep):
    """Flow-augmented MCMC step: NUTS (or MALA) moves plus exact flow independence proposals.

    Use inside a model context and pass to ``pm.sample(step=...)``. The flow
    is adapted once, when the step is built, on the model's joint log density
    (:func:`pymc_ext.log_density`); every chain then uses the same frozen flow.

    Parameters
    ----------
    vars : list, optional
        Value variables; FlowMC samples all continuous free variables of the
        model jointly, so leave this out (or pass all of them).
    local : {"auto", "nuts", "mala", "neutra"}
        The local move before each flow proposal. ``"neutra"``: HMC on the
        flow's base space, on the density pulled back through the flow (as
        ``flow_mcmc``'s ``local_space="flow"``; 8 leapfrog steps, the step size
        tuned during ``tune`` to acceptance 0.9 and jittered by ±50%), for
        funnels, where NUTS on ``x`` diverges in the neck. ``"auto"``
        (default): ``"neutra"`` when the adaptation switched to a reverse-KL
        flow, else ``"nuts"``.
    flow_every : int
        Propose from the flow after every ``flow_every``-th local move.
    random_seed : int or Generator, optional
        Seeds the adaptation (walkers, flow weights). ``pm.sample``'s own
        ``random_seed`` seeds the chains; pass both for a fully reproducible
        run.
    progressbar : bool
        Progress bar for the adaptation.
    adaptation : FlowMCMCAdaptation, optional
        Reuse an earlier adaptation (from :func:`~pymc_ext.flow_sampler.adaptation.flow_mcmc_adapt`
        or an earlier FlowMC's ``.adaptation``) instead of adapting again.
    walkers : int, optional
        Walkers used during the adaptation (default from the dimension).
    nuts_kwargs : dict, optional
        Passed to :class:`pymc.NUTS` (for example ``target_accept``,
        ``max_treedepth``).
    model : pm.Model, optional
    **adapt_kwargs
        Passed to :func:`~pymc_ext.flow_sampler.adaptation.flow_mcmc_adapt` (``n_rounds``,
        ``train_steps``, ``flow_kwargs``, ``num_paths``, ...). The default
        ``explore="tempering"`` finds the modes by tempering (see
        :func:`pymc_ext.flow_mcmc`; ``explore="climbs"`` is the faster search by
        L-BFGS climbs alone, which can miss a narrow mode): each of the
        ``explorations`` trains its own flow, and the flow proposal is then their equal
        mixture (:class:`~pymc_ext.flow_sampler.exploration.MixtureFlow`; a ``pm.sample``
        chain cannot know its index, so it cannot keep to one flow). The mode census is
        ``step.adaptation.census``; its warnings are issued when the step is built.

    Attributes
    ----------
    adaptation : FlowMCMCAdaptation
        The frozen flow, the walkers and the adaptation history (global
        acceptance per round, mode hops, gradient evaluations).

    Examples
    --------
    >>> import pymc as pm
    >>> from pymc_ext.step_methods.flow import FlowMC  # also pymc_ext.FlowMC
    >>> with pm.Model() as model:
    ...     x = pm.Normal("x", 0, 1, shape=2)
    ...     step = FlowMC(random_seed=0, progressbar=False, n_rounds=2,
    ...                   first_train_steps=50, train_steps=20, walkers=32,
    ...                   flow_kwargs={"hidden_features": (16, 16)})
    ...     idata = pm.sample(draws=50, tune=50, chains=2, cores=1, step=step,
    ...                       random_seed=1, progressbar=False, compute_convergence_checks=False)
    >>> "flow_accepted" in idata.sample_stats
    True
    """

    name = "flow_mc"
    default_blocked = True
    _state_class = FlowMCState
    stats_dtypes_shapes = {**NUTS.stats_dtypes_shapes, **_FLOW_STATS}

    def __init__(
        self,
        vars: list | None = None,
        *,
        local: str = "auto",
        flow_every: int = 1,
        random_seed: int | np.random.Generator | None = None,
        progressbar: bool = True,
        adaptation: FlowMCMCAdaptation | None = None,
        walkers: int | None = None,
        nuts_kwargs: dict[str, Any] | None = None,
        model: Any = None,
        blocked: bool = True,
        rng: RandomGenerator = None,
        **adapt_kwargs: Any,
    ) -> None:
        from pymc_ext.pymc_adapter.logdensity import log_density

        model = modelcontext(model)
        if local not in ("auto", "nuts", "mala", "neutra"):
            raise ValueError(f"local must be 'auto', 'nuts', 'mala' or 'neutra', got {local!r}.")
        if int(flow_every) < 1:
            raise ValueError(f"flow_every must be >= 1, got {flow_every}.")
        density = log_density(model)
        all_names = [v.name for v in density.value_vars]
        given = [v.name for v in get_value_vars_from_user_vars(vars or density.value_vars, model)]
        if sorted(given) != sorted(all_names):
            raise ValueError(
                "FlowMC samples all continuous free variables of the model jointly (the flow "
                f"lives on the joint space {all_names}); got vars={given}. Leave `vars` out, "
                "and use pm.sample's step list for other step methods only if the model has "
                "no other free variables."
            )
        self.vars = list(density.value_vars)
        self.model = model
        self.density = density
        self.flow_every = int(flow_every)
        self.rng = get_random_generator(rng)
        adaptation = _adaptation_for(
            density, adaptation, walkers, random_seed, progressbar, adapt_kwargs
        )
        self.adaptation = adaptation
        # The frozen flow proposes in small blocks, which the CPU does as fast as a GPU,
        # and pm.sample's forked chain processes cannot use a CUDA context made here.
        self.flow = adaptation.kernel.flow.to("cpu")
        self.inverse_metric = np.asarray(adaptation.kernel.inverse_metric, dtype=float)
        self._metric = Metric(self.inverse_metric)  # diagonal or dense
        self.mala_step_size = float(adaptation.kernel.step_size)
        bijection = _bijection(adaptation)
        if local == "auto":
            reverse = adaptation.fit == FitMethod.REVERSE
            local = "neutra" if reverse and bijection is not None else "nuts"
        if local == "neutra" and bijection is None:
            raise ValueError(
                "local='neutra' needs a flow that is one bijection; this adaptation's is "
                "mixed with Laplace normals at the modes: use local='nuts'."
            )
        self.local = local
        self.pullback = (
            FlowPullback(density, bijection.to("cpu").frozen(torch.float64))
            if local == "neutra" else None
        )
        self.neutra_step_size = 1.0 / density.dim**0.25
        self.neutra_da = dual_averaging_init(self.neutra_step_size)
        if local == "nuts":
            kwargs = {"scaling": self.inverse_metric, "is_cov": True, **(nuts_kwargs or {})}
            self.local_step = NUTS(self.vars, model=model, **kwargs)
            stats = {**NUTS.stats_dtypes_shapes, **_FLOW_STATS}
        else:
            self.local_step = None
            stats = {**_MALA_STATS, **_FLOW_STATS}
        self.stats_dtypes_shapes = stats
        self.stats_dtypes = [{k: dtype for k, (dtype, _) in stats.items()}]
        self.iter_count = 0
        self.flow_accepts = 0
        self.tune = True
        self.proposal_block = 64
        self._clear_proposals()

    def _clear_proposals(self) -> None:
        self.proposals = np.zeros((0, self.density.dim))
        self.proposals_logq = np.zeros(0)
        self.proposals_logp = np.zeros(0)

    # -- point <-> flat vector in the density's layout ------------------------------------
    def _to_x(self, point: PointType) -> np.ndarray:
        return np.concatenate(
            [np.asarray(point[v.name], dtype=float).ravel() for v in self.density.value_vars]
        )

    def _to_point(self, x: np.ndarray, point: PointType) -> PointType:
        return {**point, **self.density.point_from_x(x)}

    # -- moves ---------------------------------------------------------------------------
    def _mala(self, point: PointType) -> tuple[PointType, dict[str, Any]]:
        """One MALA step of this chain: the walkers' kernel on a single walker."""
        t0 = time.perf_counter()
        state = local_init(self.density, self._to_x(point)[None])
        new, info = mala_step(self.rng, state, self.density, self.mala_step_size, self._metric)
        accepted = bool(info.is_accepted[0])
        stats = {
            "local_accept_prob": float(info.acceptance_rate[0]),
            "local_accepted": accepted,
            "step_size": self.mala_step_size,
            "diverging": bool(info.is_divergent[0]),
            "model_logp": float(new.logp[0]),
            "perf_counter_diff": time.perf_counter() - t0,
        }
        return (self._to_point(new.position[0], point) if accepted else point), stats

    def _neutra(self, point: PointType) -> tuple[PointType, dict[str, Any]]:
        """One HMC move on the flow's base space (tuned while ``tune``)."""
        t0 = time.perf_counter()
        pull = self.pullback
        state = local_init(pull, pull.noise(self._to_x(point)[None]))
        jitter = self.rng.uniform(1.0 - NEUTRA_JITTER, 1.0 + NEUTRA_JITTER)
        h = self.neutra_step_size * jitter
        new, info = hmc_step(self.rng, state, pull, h, np.ones(pull.dim), 8)
        rate = float(np.nan_to_num(info.acceptance_rate[0]))
        if self.tune:
            self.neutra_da = dual_averaging_update(self.neutra_da, rate, NEUTRA_TARGET_ACCEPT)
            self.neutra_step_size = float(np.exp(self.neutra_da.log_step))
        accepted = bool(info.is_accepted[0])
        x_new, lp_new = pull.positions(new.position, new.logp)
        stats = {
            "local_accept_prob": rate,
            "local_accepted": accepted,
            "step_size": float(h),
            "diverging": bool(info.is_divergent[0]),
            "model_logp": float(lp_new[0]) if accepted else np.nan,
            "perf_counter_diff": time.perf_counter() - t0,
        }
        return (self._to_point(x_new[0], point) if accepted else point), stats

    def _next_proposal(self) -> tuple[np.ndarray, float, float]:
        """The next i.i.d. flow draw with its log q and log p (drawn in blocks: one flow pass
        costs about the same for 1 or 64 draws, and independence proposals do not depend on
        the chain's state, so drawing them ahead changes nothing)."""
        if self.proposals.shape[0] == 0:
            block, logq = self.flow.sample(self.proposal_block, self.rng)
            self.proposals = block
            self.proposals_logq = logq
            self.proposals_logp = self.density.logp_batch(block)
        x, logq, lp = self.proposals[0], self.proposals_logq[0], self.proposals_logp[0]
        self.proposals = self.proposals[1:]
        self.proposals_logq = self.proposals_logq[1:]
        self.proposals_logp = self.proposals_logp[1:]
        return x, float(logq), float(lp)

    def _flow_move(self, point: PointType, logp: float | None) -> tuple[PointType, dict[str, Any]]:
        x = self._to_x(point)
        if logp is None or not np.isfinite(logp):
            logp = self.density.logp(x)
        logq = float(self.flow.log_prob_numpy(x[None])[0])
        proposal, logq_prop, lp_prop = self._next_proposal()
        proposal = proposal[None]
        log_ratio = (lp_prop - logq_prop) - (logp - logq)
        if not np.isfinite(log_ratio):
            log_ratio = -np.inf if np.isnan(log_ratio) or log_ratio < 0 else log_ratio
        accepted = bool(np.log(self.rng.uniform()) < log_ratio)
        stats = {
            "flow_accept_prob": float(np.exp(min(0.0, log_ratio))),
            "flow_accepted": accepted,
            "move": int(accepted),
            "flow_proposed": True,
        }
        if accepted:
            self.flow_accepts += 1
            stats["model_logp"] = float(lp_prop)
            return self._to_point(proposal[0], point), stats
        return point, stats

    def step(self, point: PointType) -> tuple[PointType, StatsType]:
        """One local move, then (every ``flow_every`` steps) one flow proposal."""
        if self.local_step is not None:
            point, local_stats = self.local_step.step(point)
            stats = dict(local_stats[0])
        elif self.local == "neutra":
            point, stats = self._neutra(point)
        else:
            point, stats = self._mala(point)
        self.iter_count += 1
        if self.iter_count % self.flow_every == 0:
            point, flow_stats = self._flow_move(point, stats.get("model_logp"))
            stats.update(flow_stats)
        else:
            stats.update(
                {
                    "flow_accept_prob": np.nan,
                    "flow_accepted": False,
                    "move": 0,
                    "flow_proposed": False,
                }
            )
        return point, [stats]

    # -- PyMC plumbing -------------------------------------------------------------------
    @staticmethod
    def competence(var: Any, has_grad: bool) -> Competence:
        """Never chosen automatically: ask for it with ``step=pymc_ext.FlowMC()``."""
        return Competence.INCOMPATIBLE

    def stop_tuning(self) -> None:
        self.tune = False
        if self.local == "neutra" and self.neutra_da.count:
            self.neutra_step_size = float(np.exp(self.neutra_da.log_step_avg))
        if self.local_step is not None:
            self.local_step.stop_tuning()

    def reset_tuning(self) -> None:
        self.tune = True
        if self.local_step is not None:
            self.local_step.reset_tuning()

    def setup_chain(self, rng: RandomGenerator, tune: int, draws: int) -> None:
        """Per-chain set-up: fresh counters and independent generators for both moves."""
        super().setup_chain(rng, tune, draws)
        self.iter_count = 0
        self.flow_accepts = 0
        self.tune = tune > 0
        self._clear_proposals()
        self.neutra_step_size = 1.0 / self.density.dim**0.25
        self.neutra_da = dual_averaging_init(self.neutra_step_size)
        if self.local_step is not None:
            child = self.rng.spawn(1)[0]
            self.local_step.setup_chain(child, tune, draws)

    # PyMC's progress-bar protocol for step methods (pymc.progress_bar, PyMC 6.3.x; see
    # pymc_ext.step_methods.pymc_internals.SUPPORTED_PYMC): PyMC calls these two by name.
    @staticmethod
    def _progressbar_config(n_chains: int = 1) -> tuple[list, dict]:
        from rich.progress import TextColumn
        from rich.table import Column

        columns = [
            TextColumn("{task.fields[flow_acc]:0.2f}", table_column=Column("Flow accept", ratio=1)),
            TextColumn("{task.fields[divergences]}", table_column=Column("Divergences", ratio=1)),
        ]
        stats = {"flow_acc": [0.0] * n_chains, "divergences": [0] * n_chains}
        return columns, stats

    @staticmethod
    def _make_progressbar_update_functions() -> tuple:
        def update_stats(stats):
            div = stats.get("divergences", int(bool(stats.get("diverging", False))))
            return {
                "flow_acc": float(np.nan_to_num(stats.get("flow_accept_prob", 0.0))),
                "divergences": div,
                "failing": bool(div),
            }

        return (update_stats,)
