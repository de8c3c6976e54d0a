"""Warm starts for :class:`~pymc_ext.step_methods.warmstart.WarmStartNUTS`.

What a warm start has to provide (:class:`WarmStart`), the named ones
(:data:`WARMSTART_INITS`: Pathfinder and the flow), :func:`run_warmstart`, and
:class:`StepLogDensity`, the density Pathfinder runs on by default: the
logp-and-gradient function NUTS compiles anyway.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from pymc_ext.blocks.metric_choice import DEFAULT_MAX_DENSE_DIM
from pymc_ext.density import BaseLogDensity
from pymc_ext.step_methods.pymc_internals import nuts_internals

__all__ = [
    "DEFAULT_WARMUP",
    "TRUSTED_PARETO_K",
    "AUTO_DENSE_MAX_DIM",
    "WARMSTART_PATHFINDER_DEFAULTS",
    "WarmStart",
    "FailedWarmStart",
    "pathfinder_or_failed",
    "WARMSTART_INITS",
    "run_warmstart",
    "StepLogDensity",
    "check_step_arguments",
    "value_var_slices",
    "check_covers_model",
]

#: Default number of adaptation iterations after a warm start (chosen from
#: ``benchmarks/warmstart.py``; see docs/warmstart.md).
DEFAULT_WARMUP = 75

#: Pareto k up to which the warm start's covariance gets a large weight in
#: the mass-matrix estimates (above it: 5 draws' worth).
TRUSTED_PARETO_K = 0.7

#: ``metric="auto"`` uses a dense mass matrix up to this many parameters, and
#: the low-rank-plus-diagonal one above (where the posterior is correlated:
#: :func:`~pymc_ext.blocks.metric_choice.choose_metric`).
AUTO_DENSE_MAX_DIM = DEFAULT_MAX_DENSE_DIM

#: Pathfinder settings for a warm start: those of a stand-alone fit
#: (:class:`~pymc_ext.vi.config.PathfinderConfig`), as the nutpie and CmdStan
#: warm starts use. The metric comes from Pathfinder's covariance, so L-BFGS
#: must reach the narrow directions: the looser ``ftol=1e-5`` with 250 draws
#: used before gave a condition number of 39 where the posterior's is 1.3e4
#: (earnings-logearn_interaction) and twice the gradients to ESS 400 on kidiq
#: and arK (``benchmarks/pymc_corpus.py``). ``ftol=1e-12`` (the stand-alone
#: default is 1e-8): in a long valley even a 1e-8 relative change stops L-BFGS
#: early. On kidiq-kidscore_interaction (condition number 5e3) Pathfinder's
#: mean error went from 0.16 to 0.02 sd for 330 gradients instead of 209, and
#: the warm start's gradients to ESS 400 from 30k to 14k; on gp_pois_regr from
#: 165k to 118k. Over the 31 PyMC posteriors the gradients' geometric mean
#: moved by 2% and none is above nutpie's ``low_rank`` any more (two were).
WARMSTART_PATHFINDER_DEFAULTS: dict[str, Any] = {"num_paths": 4, "ftol": 1e-12}


# ---------------------------------------------------------------------------
# Warm starts: what an init has to provide, and the registry of named inits
# ---------------------------------------------------------------------------
@runtime_checkable
class WarmStart(Protocol):
    """What a warm start provides (Pathfinder's and the flow's results both do).

    All arrays live on the density's unconstrained space.
    """

    draws: np.ndarray  # (n, dim)
    mean: np.ndarray  # (dim,)
    covariance: np.ndarray  # (dim, dim)
    inverse_metric_diag: np.ndarray  # (dim,)
    grad_evals: int
    pareto_k: float


@dataclass
class FailedWarmStart:
    """A warm start that found nothing usable: every Pathfinder path failed.

    It satisfies :class:`WarmStart` with no finite draw, a unit covariance and
    an infinite Pareto k, so the step falls back to NUTS's own adaptation from
    the model's initial point (jittered), as a plain ``pm.sample`` would start.

    Attributes
    ----------
    draws, mean, covariance, inverse_metric_diag : ndarray
    grad_evals : int
        What the failed paths cost.
    pareto_k : float
        ``inf``.
    message : str
        Why the paths failed.
    logp_evals : int
        Log-density evaluations (without gradient) the failed paths made.
    paths, num_paths_ok : list, int
        No usable path: ``[]`` and 0.

    Examples
    --------
    >>> from pymc_ext.step_methods.warmstart_init import FailedWarmStart
    >>> ws = FailedWarmStart.of(2, 10, "every path failed")
    >>> ws.draws.shape, ws.pareto_k
    ((1, 2), inf)
    """

    draws: np.ndarray
    mean: np.ndarray
    covariance: np.ndarray
    inverse_metric_diag: np.ndarray
    grad_evals: int
    pareto_k: float
    message: str
    logp_evals: int = 0
    paths: list = field(default_factory=list)
    num_paths_ok: int = 0

    def summary(self) -> str:
        """Why the warm start failed (the message of the paths' failure)."""
        return f"Warm start failed after {self.grad_evals} gradient evaluations: {self.message}"

    @classmethod
    def of(
        cls, dim: int, grad_evals: int, message: str, logp_evals: int = 0
    ) -> FailedWarmStart:
        """The failed warm start of a ``dim``-dimensional density."""
        return cls(
            draws=np.full((1, dim), np.nan), mean=np.zeros(dim), covariance=np.eye(dim),
            inverse_metric_diag=np.ones(dim), grad_evals=int(grad_evals),
            pareto_k=float("inf"), message=message, logp_evals=int(logp_evals),
        )


def pathfinder_or_failed(
    density: Any, fallback: str, stacklevel: int = 2, **kwargs: Any
) -> WarmStart:
    """Multi-path Pathfinder for a warm start, or a :class:`FailedWarmStart` when every path fails.

    Never worse than not warm-starting: a failure warns (``RuntimeWarning``,
    ending with ``fallback``, what the sampler does instead) and returns the
    failed warm start with what the paths cost, so the sampler starts as it
    would without one.

    Parameters
    ----------
    density : LogDensity
    fallback : str
        The warning's last sentence.
    stacklevel : int
        Of the warning, counted from this function's caller.
    **kwargs
        For :func:`~pymc_ext.vi.multipath.multipath_pathfinder`.

    Examples
    --------
    >>> import numpy as np, warnings
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.step_methods.warmstart_init import pathfinder_or_failed
    >>> d = FunctionLogDensity(1, lambda x: -np.inf, lambda x: np.zeros(1))
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     ws = pathfinder_or_failed(d, "NUTS adapts.", num_paths=2, progressbar=False)
    >>> type(ws).__name__, ws.pareto_k
    ('FailedWarmStart', inf)
    """
    from pymc_ext.vi.multipath import multipath_pathfinder
    from pymc_ext.vi.result import PathfinderError

    before = (int(density.grad_evals), int(density.logp_evals))
    try:
        return multipath_pathfinder(density, **kwargs)
    except PathfinderError as err:
        warnings.warn(
            f"The Pathfinder warm start failed: {err} {fallback}",
            RuntimeWarning,
            stacklevel=stacklevel + 1,
        )
        return FailedWarmStart.of(
            density.dim, int(density.grad_evals) - before[0], str(err),
            logp_evals=int(density.logp_evals) - before[1],
        )


def _pathfinder_init(density: Any, random_seed: Any = None, **kwargs: Any) -> WarmStart:
    return pathfinder_or_failed(
        density,
        "NUTS starts from the model's initial point (jittered) and adapts its own diagonal "
        "metric instead, as pm.sample would.",
        stacklevel=4,
        random_seed=random_seed,
        **kwargs,
    )


def _flow_init(density: Any, random_seed: Any = None, **kwargs: Any) -> WarmStart:
    """A flow fitted to tempering walkers (``explore="pathfinder"``: to Pathfinder's draws)."""
    try:
        from pymc_ext.flow_sampler.explored_init import explored_flow_init
    except ImportError as err:  # pragma: no cover - depends on the flows module
        raise ImportError(
            "init='flow' needs pymc_ext.flows.flow_init (and torch, zuko); it is not "
            f"available here: {err}. Use init='pathfinder' instead."
        ) from err
    return explored_flow_init(density, random_seed=random_seed, **kwargs)


#: Named warm starts: ``name -> callable(density, random_seed=..., **init_kwargs)``.
WARMSTART_INITS: dict[str, Callable[..., WarmStart]] = {
    "pathfinder": _pathfinder_init,
    "flow": _flow_init,
}


def run_warmstart(
    density: Any,
    init: str | WarmStart | Callable[..., WarmStart] = "pathfinder",
    /,
    random_seed: int | np.random.Generator | None = None,
    **init_kwargs: Any,
) -> WarmStart:
    """Run (or check) a warm start on a density.

    Parameters
    ----------
    density : LogDensity
        The target.
    init : str, WarmStart or callable
        Positional. ``"pathfinder"`` or ``"flow"`` (see :data:`WARMSTART_INITS`), a
        finished warm start (returned as is after checks), or a callable
        ``(density, random_seed=..., **init_kwargs) -> WarmStart``.
    random_seed : int or Generator, optional
        Seed for the warm start.
    **init_kwargs
        Passed to the warm start (for Pathfinder: ``num_paths``,
        ``num_draws``, its own ``init`` start points, ...). When every
        Pathfinder path fails, a :class:`FailedWarmStart` (with a
        ``RuntimeWarning``) instead of an error.

    Returns
    -------
    WarmStart

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.step_methods.warmstart_init import run_warmstart
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, lambda x: -x,
    ...                        lambda X: -0.5 * (X * X).sum(1))
    >>> ws = run_warmstart(d, "pathfinder", random_seed=0, num_draws=100)
    >>> ws.draws.shape
    (100, 2)
    """
    if isinstance(init, str):
        if init not in WARMSTART_INITS:
            raise ValueError(
                f"Unknown warm start init={init!r}; use one of {sorted(WARMSTART_INITS)}, a "
                "finished warm-start result, or a callable (density, random_seed) -> result."
            )
        result = WARMSTART_INITS[init](density, random_seed=random_seed, **init_kwargs)
    elif callable(init) and not isinstance(init, WarmStart):
        result = init(density, random_seed=random_seed, **init_kwargs)
    else:
        result = init
    _check_warmstart(result, density.dim)
    return result


def _check_warmstart(result: Any, dim: int) -> None:
    missing = [
        a
        for a in ("draws", "mean", "covariance", "inverse_metric_diag", "grad_evals", "pareto_k")
        if not hasattr(result, a)
    ]
    if missing:
        raise TypeError(
            f"The warm start {type(result).__name__} lacks {missing}; it needs draws, mean, "
            "covariance, inverse_metric_diag, grad_evals and pareto_k."
        )
    draws = np.asarray(result.draws)
    if draws.ndim != 2 or draws.shape[1] != dim or draws.shape[0] < 1:
        raise ValueError(f"Warm-start draws must have shape (n, {dim}); got {draws.shape}.")
    if np.asarray(result.covariance).shape != (dim, dim):
        raise ValueError(
            f"Warm-start covariance must be ({dim}, {dim}); got {np.shape(result.covariance)}."
        )


# ---------------------------------------------------------------------------
# The density the warm start runs on: NUTS's own compiled function
# ---------------------------------------------------------------------------
class StepLogDensity(BaseLogDensity):
    """A :class:`~pymc_ext.density.LogDensity` over a PyMC NUTS step's compiled function.

    Reuses the logp-and-gradient function the step compiled (on the step's
    own flat ordering of the value variables), so a warm start costs no
    extra compilation. ``logp_batch`` loops over it.

    Parameters
    ----------
    step : pm.step_methods.hmc.base_hmc.BaseHMC
        A blocked HMC/NUTS step over all of the model's value variables.

    Examples
    --------
    >>> import numpy as np, pymc as pm
    >>> from pymc_ext.step_methods.warmstart_init import StepLogDensity
    >>> with pm.Model():
    ...     x = pm.Normal("x", 0, 1, shape=2)
    ...     step = pm.NUTS()
    >>> d = StepLogDensity(step)
    >>> d.logp_and_grad(np.zeros(2))[1].tolist()
    [-0.0, -0.0]
    """

    def __init__(self, step: Any, initial_point: Mapping[str, Any] | None = None) -> None:
        internals = nuts_internals(step)
        self._fn, self._dtype = internals.compiled_logp_dlogp()
        names = [v.name for v in step.vars]
        ip = internals.model.initial_point() if initial_point is None else initial_point
        shapes = {k: tuple(np.shape(ip[k])) for k in names}
        sizes = [int(np.prod(shapes[k], dtype=int)) for k in names]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        #: ``name -> slice`` of the flat vector (the step's ordering)
        self.slices = {k: slice(int(offsets[i]), int(offsets[i + 1])) for i, k in enumerate(names)}
        self._x0 = np.concatenate(
            [np.asarray(ip[k], dtype=float).ravel() for k in names] or [np.zeros(0)]
        )
        super().__init__(int(offsets[-1]), names=names, shapes=shapes)

    def initial_point(self) -> np.ndarray:
        """The model's initial point, flat, in the step's ordering."""
        return self._x0.copy()

    def _logp_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        lp, grad = self._fn(np.ascontiguousarray(x, dtype=self._dtype))
        return float(lp), np.array(grad, dtype=float, copy=True)

    def _logp(self, x: np.ndarray) -> float:
        return self._logp_and_grad(x)[0]

    def constrain(self, x: np.ndarray) -> dict[str, np.ndarray]:
        out, start = {}, 0
        for k in self.names:
            size = int(np.prod(self.shapes[k], dtype=int))
            out[k] = np.asarray(x[start : start + size]).reshape(self.shapes[k])
            start += size
        return out


# ---------------------------------------------------------------------------
# Checks of the step's arguments
# ---------------------------------------------------------------------------
@functools.cache
def _nuts_keywords() -> frozenset[str]:
    """The keywords ``pm.NUTS`` (and the HMC base it passes them to) accepts."""
    import inspect

    from pymc.step_methods.hmc.nuts import NUTS

    names = set()
    for cls in NUTS.__mro__:  # NUTS passes **kwargs on to its bases
        if "__init__" in vars(cls) and cls is not object:
            params = inspect.signature(cls.__init__).parameters.values()
            names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return frozenset(names - {"self"})


def check_step_arguments(
    metric: str, warmup: int | None, metric_windows: tuple[float, ...], nuts_kwargs: Mapping
) -> None:
    """Check :class:`WarmStartNUTS`'s arguments before anything is compiled or run.

    Examples
    --------
    >>> from pymc_ext.step_methods.warmstart_init import check_step_arguments
    >>> check_step_arguments("auto", 75, (0.25, 0.5), {})
    """
    if "potential" in nuts_kwargs or "scaling" in nuts_kwargs:
        raise ValueError(
            "WarmStartNUTS sets the mass matrix from the warm start; do not pass "
            "`potential` or `scaling` (use pm.NUTS for that)."
        )
    if metric not in ("auto", "diag", "dense", "lowrank"):
        raise ValueError(f"metric must be 'auto', 'diag', 'dense' or 'lowrank'; got {metric!r}.")
    unknown = sorted(set(nuts_kwargs) - _nuts_keywords())
    if unknown:
        raise TypeError(
            f"WarmStartNUTS got unexpected keyword(s) {unknown}: it takes init, metric, warmup, "
            "metric_windows, prior_weight, use_grads, rank, random_seed, init_kwargs, "
            "density, progressbar and pm.NUTS's keywords (target_accept, max_treedepth, ...)."
        )
    if warmup is not None and int(warmup) < 0:
        raise ValueError(f"warmup must be >= 0; got {warmup}.")
    if any(not 0 < f < 1 for f in metric_windows):
        raise ValueError(f"metric_windows must be fractions in (0, 1); got {metric_windows}.")


def value_var_slices(model: Any, ip: Mapping[str, Any]) -> dict[str, slice]:
    """``value variable name -> slice`` in model.value_vars order (log_density's ordering).

    Examples
    --------
    >>> import pymc as pm
    >>> from pymc_ext.step_methods.warmstart_init import value_var_slices
    >>> with pm.Model() as m:
    ...     a = pm.Normal("a", shape=2)
    ...     b = pm.HalfNormal("b")
    >>> value_var_slices(m, m.initial_point())
    {'a': slice(0, 2, None), 'b_log__': slice(2, 3, None)}
    """
    out, start = {}, 0
    for v in model.value_vars:
        size = int(np.prod(np.shape(ip[v.name]), dtype=int))
        out[v.name] = slice(start, start + size)
        start += size
    return out


def check_covers_model(names: list[str], model_slices: Mapping[str, slice]) -> None:
    """The step must cover the whole (continuous) model: Pathfinder fits all of it.

    Examples
    --------
    >>> from pymc_ext.step_methods.warmstart_init import check_covers_model
    >>> check_covers_model(["a"], {"a": slice(0, 1)})
    """
    if sorted(names) != sorted(model_slices) or any(n not in model_slices for n in names):
        missing = sorted(set(model_slices) - set(names))
        raise ValueError(
            "WarmStartNUTS samples all free variables of the model together (Pathfinder "
            f"fits their joint density): this step has {sorted(names)}, and the model also "
            f"has {missing}. If those are discrete, neither WarmStartNUTS nor "
            "pymc_ext.sample can sample them, and they cannot share the model with another "
            "step method: marginalise them out (pymc_extras.marginalize) or use pm.sample."
        )
