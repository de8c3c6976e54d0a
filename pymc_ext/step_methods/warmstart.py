"""``WarmStartNUTS``: PyMC's NUTS, started from Pathfinder (or a flow) with its mass matrix.

What it does, per chain:

1. Before sampling (in the constructor, once for all chains) it runs
   multi-path Pathfinder on the model (:func:`~pymc_ext.vi.multipath.multipath_pathfinder`),
   or another warm start (``init="flow"``, or any object with ``draws``,
   ``mean``, ``covariance``, ``inverse_metric_diag``, ``grad_evals`` and
   ``pareto_k``; see :mod:`pymc_ext.step_methods.warmstart_init`).
2. Each chain starts from its own Pathfinder draw, and the inverse mass
   matrix starts from the Pathfinder covariance: diagonal, dense or low-rank
   as :func:`~pymc_ext.blocks.metric_choice.choose_metric` decides
   (``metric="auto"``), or as asked; a warm start that is not trusted falls
   back to a diagonal metric and a longer adaptation
   (:mod:`pymc_ext.step_methods.warmstart_metric`).
3. A short adaptation (``warmup`` iterations, default
   :data:`DEFAULT_WARMUP`) refines step size and mass matrix: the metric is
   re-estimated from the chain's draws at a couple of points, blended with
   the Pathfinder estimate, and dual averaging restarts after each update.
   A chain whose adaptation has not settled extends it
   (:mod:`pymc_ext.step_methods.warmstart_schedule`).
4. When ``pm.sample``'s ``tune`` is longer than the adaptation, the remaining
   tuning iterations do nothing at all: they return the current point, cost no
   gradient evaluation and are marked ``warmup_idle`` in the stats. Tuning
   draws are discarded, so this changes nothing but the cost. When the user
   leaves ``tune`` unset, ``pm.sample`` asks the step (``default_tune_steps``:
   ``warmup`` plus room for the extensions, idle unless needed).

The warm-start cost travels with the result: every draw carries the
per-draw stats ``warmstart_grad_evals`` and ``warmstart_pareto_k`` (the channel
PyMC gives step methods, which works across processes). PyMC has no hook for a
step method to set attributes of the result, so :func:`pymc_ext.sample` lifts
them into ``sample_stats.attrs`` (:func:`~pymc_ext.sampling.lift_warmstart_attrs`); after a plain
``pm.sample(step=WarmStartNUTS())`` they stay per-draw variables of
``sample_stats``. The PyMC internals the step needs are all reached through
:mod:`pymc_ext.step_methods.pymc_internals`.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from pymc.blocking import RaveledVars
from pymc.model import modelcontext
from pymc.step_methods.hmc.nuts import NUTS, NUTSState
from pymc.step_methods.state import dataclass_state

from pymc_ext.pymc_adapter.logdensity import PyMCLogDensity, check_initial_logp
from pymc_ext.step_methods.pymc_internals import NUTSInternals, check_pymc_version
from pymc_ext.step_methods.warmstart_init import (
    WARMSTART_PATHFINDER_DEFAULTS,
    StepLogDensity,
    WarmStart,
    check_covers_model,
    check_step_arguments,
    run_warmstart,
    value_var_slices,
)
from pymc_ext.step_methods.warmstart_metric import (
    MAX_WARMUP_EXTENSIONS,
    initial_covariance,
    plan_warmstart_nuts,
    starting_points,
)
from pymc_ext.step_methods.warmstart_potential import WarmStartPotential
from pymc_ext.step_methods.warmstart_schedule import MIN_EXTENSION, AdaptationSchedule

__all__ = [
    "WarmStartNUTS",
    "WarmStartNUTSState",
    "WARMSTART_STATS",
]

#: The per-draw statistics that carry the warm start's figures (constant over draws).
WARMSTART_STATS = ("warmstart_grad_evals", "warmstart_pareto_k")

_log = logging.getLogger("pymc_ext")


def _warn_lift_attrs() -> None:
    warnings.warn(
        "WarmStartNUTS(lift_attrs=...) is deprecated and ignored: building a step no "
        "longer changes pymc.to_inference_data. Use pymc_ext.sample, or "
        "pymc_ext.sampling.lift_warmstart_attrs(idata) after pm.sample.",
        DeprecationWarning,
        stacklevel=3,
    )


# ---------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------
@dataclass_state
class WarmStartNUTSState(NUTSState):
    """Sampling state of :class:`WarmStartNUTS` (PyMC's state protocol)."""

    warmup: int
    _chain_tune: int
    _chain_iter: int
    _warm_iter: int
    _start_pending: bool
    _chain_start: np.ndarray | None
    _last_logp: float
    _window_ends: list
    _restart_ends: list
    _chain_adapt: int
    _extensions: int
    _settle_factor: float
    _pending_warning: Any


class WarmStartNUTS(AdaptationSchedule, NUTS):
    """NUTS started from Pathfinder draws, with the Pathfinder covariance as mass matrix.

    Use it as ``pm.sample(step=WarmStartNUTS())`` inside a model context.
    Pathfinder runs once, when the step is built; every chain then starts
    from its own Pathfinder draw.

    Parameters
    ----------
    vars : list, optional
        Must be all of the model's (continuous) free variables; the default.
    init : {"pathfinder", "flow"}, WarmStart or callable
        The warm start. ``"flow"`` uses ``pymc_ext.flows.flow_init``; a
        finished result (anything with ``draws``, ``mean``, ``covariance``,
        ``inverse_metric_diag``, ``grad_evals``, ``pareto_k`` on the model's
        unconstrained space, for example a
        :class:`~pymc_ext.vi.result.PathfinderResult`) is used as is.
    metric : {"auto", "diag", "dense", "lowrank"}
        Mass-matrix structure. ``auto`` (default): chosen from the warm
        start's covariance and Pareto k by
        :func:`~pymc_ext.blocks.metric_choice.choose_metric` (diagonal for a
        well-conditioned correlation matrix, dense up to 50 parameters, low
        rank above; diagonal, with a longer adaptation, when the warm start
        is not trusted). ``diag`` is the cheapest and what PyMC uses;
        ``dense`` pays off on correlated posteriors (regressions, time
        series); ``lowrank`` keeps the ``rank`` directions whose variance
        differs most from the diagonal.
    warmup : int, optional
        Adaptation iterations after the warm start (default
        :data:`DEFAULT_WARMUP`, or ``FALLBACK_WARMUP`` when the warm start
        is not trusted). Tuning iterations beyond the adaptation are free
        no-ops.
    metric_windows : sequence of float
        Fractions of ``warmup`` at which the metric is re-estimated from the
        chain's draws, each followed by a dual-averaging restart. The draws
        before the first are dropped; later estimates use all draws since.
        The rest of the warmup adapts the step size only.
    prior_weight : float, optional
        Weight of the warm-start covariance in the re-estimates, in draws:
        50 for Pareto k <= 0.5, 20 up to 0.7, 5 above (by default).
    use_grads : bool
        Estimate a diagonal metric from draws and gradients (nutpie's rule).
    rank : int
        Rank for ``metric="lowrank"``.
    random_seed : int or Generator, optional
        Seed for the warm start (PyMC's ``random_seed`` seeds the chains).
    init_kwargs : dict, optional
        Passed to the warm start (e.g. ``{"num_paths": 8}``). For
        ``init="flow"`` the keywords of
        :func:`~pymc_ext.flow_sampler.explored_init.explored_flow_init`:
        by default the flow is fitted to the walkers of tempering
        explorations, so the chains start in every mode they found (and a
        warning says when there are several: NUTS cannot weigh them);
        ``{"explore": "pathfinder"}`` fits it to Pathfinder's draws instead.
    density : LogDensity, optional
        The density the warm start runs on. By default Pathfinder reuses the
        logp-and-gradient function this NUTS compiles anyway (no second
        compilation; ``logp_batch`` loops over it), and ``init="flow"`` uses
        :func:`pymc_ext.log_density`. A finished warm-start result passed as
        ``init`` must be on :func:`pymc_ext.log_density`'s ordering.
    initial_point : dict, optional
        The model's initial point (only its shapes are used); computed once
        if not given.
    step_scale : float
        Initial step size times ``dim**0.25`` (adapted from there).
    lift_attrs : bool, optional
        Deprecated and ignored: building a step no longer changes
        ``pymc.to_inference_data``. The figures are per-draw statistics;
        :func:`pymc_ext.sample` (or :func:`~pymc_ext.sampling.lift_warmstart_attrs`) moves them
        into ``sample_stats.attrs``.
    progressbar : bool
        Progress bar for the warm start.
    model : pm.Model, optional
    **nuts_kwargs
        PyMC NUTS keywords (``target_accept``, ``max_treedepth``, ...).

    Attributes
    ----------
    warmstart : WarmStart
        The warm-start result (Pathfinder's, with per-path diagnostics).
    warmstart_grad_evals : int
    warmstart_pareto_k : float
    metric : str
        The metric used: ``"diag"``, ``"dense"`` or ``"lowrank"``.
    metric_reason : str
        Why (the rule's sentence; on a fallback, also the fallback).
    metric_choice : MetricChoice
        The choice with the statistics it used.
    warmstart_fallback : bool
        Whether the warm start was not trusted.

    Notes
    -----
    ``sample_stats`` gets the usual NUTS statistics (``n_steps`` included),
    ``warmup_idle`` (tuning iterations that cost nothing), and the per-draw
    statistics ``warmstart_grad_evals`` and ``warmstart_pareto_k`` (the same
    at every draw: the channel PyMC gives step methods). :func:`pymc_ext.sample`
    and :func:`~pymc_ext.sampling.lift_warmstart_attrs` turn them into attributes of
    ``sample_stats``. Total gradient evaluations are
    ``warmstart_grad_evals + n_steps.sum()`` over warmup and draws (keep the
    warmup with ``discard_tuned_samples=False``).

    Examples
    --------
    >>> import pymc as pm
    >>> from pymc_ext.sampling import lift_warmstart_attrs
    >>> from pymc_ext.step_methods.warmstart import WarmStartNUTS
    >>> with pm.Model() as model:
    ...     mu = pm.Normal("mu", 0, 1)
    ...     sigma = pm.HalfNormal("sigma", 1)
    ...     y = pm.Normal("y", mu, sigma, observed=[0.1, -0.3, 0.5, 0.2])
    ...     step = WarmStartNUTS(random_seed=1)
    ...     idata = pm.sample(draws=200, step=step, chains=2, cores=1, random_seed=2,
    ...                       progressbar=False, compute_convergence_checks=False)
    >>> int(idata.sample_stats["warmstart_grad_evals"].max()) == step.warmstart_grad_evals > 0
    True
    >>> idata = lift_warmstart_attrs(idata)  # what pymc_ext.sample does
    >>> idata.sample_stats.attrs["warmstart_grad_evals"] == step.warmstart_grad_evals
    True
    >>> int(idata.posterior.attrs["tuning_steps"]) == step.default_tune_steps  # room to extend
    True
    >>> step.metric, int(idata.sample_stats["warmup_extensions"].max())
    ('diag', 0)
    """

    name = "warmstart_nuts"
    _state_class = WarmStartNUTSState

    stats_dtypes_shapes = {
        **NUTS.stats_dtypes_shapes,
        "warmup_idle": (bool, []),
        "warmup_extensions": (np.int64, []),
        "warmup_settle_factor": (np.float64, []),
        "warmstart_grad_evals": (np.int64, []),
        "warmstart_pareto_k": (np.float64, []),
    }

    def __init__(
        self,
        vars: Any = None,
        *,
        init: str | WarmStart | Callable[..., WarmStart] = "pathfinder",
        metric: str = "auto",
        warmup: int | None = None,
        metric_windows: tuple[float, ...] = (0.25, 0.5, 0.75),
        prior_weight: float | None = None,
        use_grads: bool = False,
        rank: int = 8,
        random_seed: int | np.random.Generator | None = None,
        init_kwargs: Mapping[str, Any] | None = None,
        density: Any = None,
        model: Any = None,
        initial_point: Mapping[str, Any] | None = None,
        step_scale: float = 0.8,
        lift_attrs: bool | None = None,
        progressbar: bool = False,
        **nuts_kwargs: Any,
    ) -> None:
        check_step_arguments(metric, warmup, metric_windows, nuts_kwargs)
        check_pymc_version()  # before compiling anything: the internals used below
        if lift_attrs is not None:
            _warn_lift_attrs()
        model = modelcontext(model)
        value_vars = list(model.continuous_value_vars if vars is None else vars)
        names = [v.name for v in value_vars]
        if initial_point is None:
            initial_point = model.initial_point()  # computed once, also given to NUTS
        model_slices = value_var_slices(model, initial_point)
        check_covers_model(names, model_slices)
        n = sum(s.stop - s.start for s in model_slices.values())

        # NUTS first, with a placeholder metric: this compiles the model's logp and
        # gradient once, and the warm start reuses that compiled function.
        placeholder = WarmStartPotential(np.eye(n), kind="diag", rng=0)
        super().__init__(
            value_vars,
            potential=placeholder,
            model=model,
            step_scale=step_scale,
            initial_point=initial_point,
            **nuts_kwargs,
        )
        # Each chain starts its step-size adaptation here (the windows' restarts move it).
        self._initial_step_size = self._pymc.initial_step_size()

        t0 = time.perf_counter()
        density, slices = self._warmstart_density(init, density, model_slices, initial_point)
        if isinstance(density, StepLogDensity):  # log_density checks its own at construction
            check_initial_logp(self._pymc.model, density.logp(density.initial_point()))
        perm = np.concatenate([np.arange(slices[k].start, slices[k].stop) for k in names])
        init_kwargs = dict(init_kwargs or {})
        if isinstance(init, str) and init == "pathfinder":
            for key, value in WARMSTART_PATHFINDER_DEFAULTS.items():
                init_kwargs.setdefault(key, value)
        if isinstance(init, str):
            init_kwargs.setdefault("progressbar", progressbar)
        ws = run_warmstart(density, init, random_seed=random_seed, **init_kwargs)
        self._record_warmstart(ws, time.perf_counter() - t0)

        plan = plan_warmstart_nuts(
            ws,
            initial_covariance(ws, perm, "dense"),
            metric=metric,
            rank=rank,
            warmup=warmup,
            prior_weight=prior_weight,
        )
        self._record_plan(plan)
        x0 = np.concatenate(
            [np.asarray(initial_point[k], dtype=float).ravel() for k in names] or [np.zeros(0)]
        )
        inverse = np.argsort(perm)  # step ordering -> the density's

        def is_finite(point: np.ndarray) -> bool:
            return bool(np.isfinite(density.logp(point[inverse])))

        self._init_points = starting_points(ws, perm, random_seed, x0, is_finite)
        potential = WarmStartPotential(
            initial_covariance(ws, perm, plan.metric),
            kind=plan.metric,
            prior_weight=plan.prior_weight,
            rank=plan.rank,
            use_grads=use_grads,
            rng=self.rng.spawn(1)[0],
        )
        self._pymc.replace_potential(potential)
        self.metric_windows = tuple(float(f) for f in metric_windows)
        #: Adaptation iterations a chain adds when its warmup has not settled.
        self.extension = max(self.warmup, MIN_EXTENSION)
        self.default_tune_steps = self.warmup + MAX_WARMUP_EXTENSIONS * self.extension
        self._reset_chain(self.warmup)
        self._chain_start = None
        self._last_logp = np.nan

    def _record_plan(self, plan: Any) -> None:
        self.warmstart_plan = plan
        self.metric = plan.metric
        self.metric_reason = plan.reason
        self.metric_choice = plan.choice
        self.warmstart_fallback = plan.fallback
        self.warmstart_trusted = plan.choice.trusted
        self.prior_weight = plan.prior_weight
        self.warmup = plan.warmup
        if plan.fallback:
            _log.info("WarmStartNUTS: %s.", plan.reason)
            k = plan.choice.pareto_k
            if not (np.isfinite(k) and k > 0.7):  # failed paths / a broken covariance
                warnings.warn(
                    f"The warm start is not usable ({plan.choice.reason}); NUTS adapts a "
                    f"diagonal metric over {plan.warmup} iterations instead. Check the model "
                    "at its initial point (model.debug()), look at step.warmstart.summary(), "
                    "or pass init_kwargs={'num_paths': 8}.",
                    RuntimeWarning,
                    stacklevel=3,
                )

    def warmstart_attrs(self) -> dict[str, Any]:
        """The warm start's figures and choices, for ``sample_stats.attrs``.

        Returns
        -------
        dict
            ``warmstart_grad_evals``, ``warmstart_pareto_k``, ``warmstart_metric``,
            ``warmstart_metric_reason``, ``warmstart_fallback`` and
            ``warmstart_warmup``.

        Examples
        --------
        >>> import pymc as pm
        >>> from pymc_ext.step_methods.warmstart import WarmStartNUTS
        >>> with pm.Model():
        ...     x = pm.Normal("x", 0, 1)
        ...     step = WarmStartNUTS(random_seed=1)
        >>> step.warmstart_attrs()["warmstart_metric"]
        'diag'
        """
        return {
            "warmstart_grad_evals": int(self.warmstart_grad_evals),
            "warmstart_pareto_k": float(self.warmstart_pareto_k),
            "warmstart_metric": str(self.metric),
            "warmstart_metric_reason": str(self.metric_reason),
            "warmstart_fallback": int(self.warmstart_fallback),
            "warmstart_warmup": int(self.warmup),
        }

    @property
    def _pymc(self) -> NUTSInternals:
        """The PyMC internals of this step (version checked in the constructor)."""
        return NUTSInternals(self)

    def _warmstart_density(
        self,
        init: Any,
        density: Any,
        model_slices: dict[str, slice],
        initial_point: Mapping[str, Any],
    ) -> tuple[Any, dict[str, slice]]:
        """The density the warm start runs on, and the ordering of its results."""
        is_flow = isinstance(init, str) and init == "flow"
        if density is None and not is_flow:
            density = StepLogDensity(self, initial_point)
            # A finished result is on log_density's ordering; a fresh one on the step's.
            precomputed = not isinstance(init, str) and isinstance(init, WarmStart)
            return density, (model_slices if precomputed else density.slices)
        if density is None:
            from pymc_ext.pymc_adapter.logdensity import log_density

            density = log_density(self._pymc.model)
        if isinstance(density, PyMCLogDensity | StepLogDensity):
            return density, density.slices
        return density, model_slices  # any other density: log_density's ordering

    def _record_warmstart(self, ws: WarmStart, seconds: float) -> None:
        self.warmstart = ws
        self.warmstart_seconds = seconds
        self.warmstart_grad_evals = int(ws.grad_evals)
        self.warmstart_pareto_k = float(ws.pareto_k)

    # -- chain set-up ---------------------------------------------------------------
    def setup_chain(self, rng: Any, tune: int, draws: int) -> None:
        """Per-chain set-up: counters, metric schedule and this chain's starting draw."""
        super().setup_chain(rng, tune, draws)
        # Nothing carries over from an earlier chain or pm.sample call with this step.
        self._pymc.reset_step_size_adaptation(self._initial_step_size)
        self.potential.reset()
        self._reset_chain(tune)
        self._chain_start = self._init_points[self._chain_index(self.rng)]

    def _chain_index(self, rng: np.random.Generator) -> int:
        """Index of this chain's starting draw.

        ``pm.sample`` gives chain ``i`` a generator spawned as the ``i``-th child
        of one seed sequence (also across processes), so its ``spawn_key`` tells
        the chain apart: chains get distinct draws. Without one, the chain's own
        generator picks a draw.
        """
        n = self._init_points.shape[0]
        seed_seq = rng.bit_generator.seed_seq
        key = seed_seq.spawn_key if isinstance(seed_seq, np.random.SeedSequence) else ()
        if key:
            return int(key[-1]) % n
        return int(rng.integers(n))

    def reset_tuning(self, start: Any = None) -> None:
        """PyMC's reset: the step size and the mass matrix start again."""
        super().reset_tuning(start)
        self.potential.reset()

    # -- one iteration ---------------------------------------------------------------
    def astep(self, q0: RaveledVars) -> tuple[RaveledVars, list[dict[str, Any]]]:
        """One NUTS transition (with metric updates in the warmup), or an idle tuning step."""
        if self._start_pending:
            self._start_pending = False
            if self._chain_start is not None:
                q0 = RaveledVars(
                    np.asarray(self._chain_start, dtype=q0.data.dtype).copy(), q0.point_map_info
                )
        in_tuning = self.tune and self._chain_iter < self._chain_tune
        self._chain_iter += 1
        if in_tuning and self._warm_iter >= self._chain_adapt:
            return q0, [self._idle_stats()]
        q, stats = super().astep(q0)
        st = stats[0]
        self._last_logp = float(st.get("model_logp", np.nan))
        if in_tuning:
            self.potential.collect(q.data, self._last_grad(q))
            if self._warm_iter in self._window_ends and self.potential.refresh(
                restart=self._warm_iter in self._restart_ends
            ):
                self._pymc.restart_step_size_adaptation()
            self._warm_iter += 1
            if self._warm_iter == self._chain_adapt:
                self._end_of_adaptation()
        if self._pending_warning is not None and st.get("warning") is None:
            st["warning"], self._pending_warning = self._pending_warning, None
        st.update(self._warmstart_stats(idle=False))
        return q, stats

    def _warmstart_stats(self, idle: bool) -> dict[str, Any]:
        return {
            "warmup_idle": idle,
            "warmup_extensions": self._extensions,
            "warmup_settle_factor": self._settle_factor,
            "warmstart_grad_evals": self.warmstart_grad_evals,
            "warmstart_pareto_k": self.warmstart_pareto_k,
        }

    def _last_grad(self, q: RaveledVars) -> np.ndarray:
        if not self.potential.use_grads:
            return np.zeros_like(q.data)
        _, grad = self._pymc.logp_dlogp(q)
        return np.asarray(grad)

    def _idle_stats(self) -> dict[str, Any]:
        t = time.perf_counter()
        step_size = self._pymc.averaged_step_size()
        st: dict[str, Any] = {
            "depth": 0,
            "step_size": step_size,
            "mean_tree_accept": np.nan,
            "step_size_bar": step_size,
            "tree_size": 0.0,
            "diverging": False,
            "divergences": self.divergences,
            "energy_error": np.nan,
            "energy": np.nan,
            "max_energy_error": np.nan,
            "model_logp": self._last_logp,
            "process_time_diff": 0.0,
            "perf_counter_diff": time.perf_counter() - t,
            "perf_counter_start": t,
            "largest_eigval": np.nan,
            "smallest_eigval": np.nan,
            "index_in_trajectory": 0,
            "reached_max_treedepth": False,
            "warning": None,
            **self._warmstart_stats(idle=True),
        }
        return st
