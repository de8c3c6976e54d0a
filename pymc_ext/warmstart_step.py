"""``WarmStartNUTS``: PyMC's NUTS, started from Pathfinder (or a flow) with its mass matrix.

What it does, per chain:

1. Before sampling (in the constructor, once for all chains) it runs
   multi-path Pathfinder on the model (:func:`~pymc_ext.pathfinder_core.multipath_pathfinder`),
   or another warm start (``init="flow"``, or any object with ``draws``,
   ``mean``, ``covariance``, ``inverse_metric_diag``, ``grad_evals`` and
   ``pareto_k``).
2. Each chain starts from its own Pathfinder draw, and the inverse mass
   matrix starts from the Pathfinder covariance (diagonal by default; dense
   or low-rank on request).
3. A short adaptation (``warmup`` iterations, default
   :data:`DEFAULT_WARMUP`) refines step size and mass matrix: the metric is
   re-estimated from the chain's draws at a couple of points, blended with
   the Pathfinder estimate, and dual averaging restarts after each update.
4. When ``pm.sample``'s ``tune`` is longer than that, the remaining tuning
   iterations do nothing at all: they return the current point, cost no
   gradient evaluation and are marked ``warmup_idle`` in the stats. Tuning
   draws are discarded, so this changes nothing but the cost. When the user
   leaves ``tune`` unset, ``pm.sample`` asks the step (``default_tune_steps``)
   and tunes for exactly ``warmup`` iterations.

The warm-start cost travels with the result: every draw carries the
per-draw stats ``warmstart_grad_evals`` and ``warmstart_pareto_k`` (the channel
PyMC gives step methods, which works across processes), and this module lifts
them into ``sample_stats.attrs`` when PyMC converts the trace (see
:func:`install_warmstart_attrs_hook`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pytensor
from pymc.blocking import RaveledVars
from pymc.model import modelcontext
from pymc.step_methods.hmc.nuts import NUTS, NUTSState
from pymc.step_methods.hmc.quadpotential import PotentialState, QuadPotential
from pymc.step_methods.state import dataclass_state
from scipy import linalg

from pymc_ext.density import BaseLogDensity

__all__ = [
    "WarmStartNUTS",
    "WarmStart",
    "WarmStartPotential",
    "StepLogDensity",
    "DEFAULT_WARMUP",
    "run_warmstart",
    "lift_warmstart_attrs",
    "install_warmstart_attrs_hook",
    "WARMSTART_INITS",
]

#: Default number of adaptation iterations after a warm start (chosen from
#: ``benchmarks/warmstart.py``; see docs/warmstart.md).
DEFAULT_WARMUP = 75

#: Pareto k up to which the warm start's covariance gets a large weight in
#: the mass-matrix estimates.
TRUSTED_PARETO_K = 0.7

#: ``metric="auto"`` uses a dense mass matrix up to this many parameters, and
#: the low-rank-plus-diagonal one above.
AUTO_DENSE_MAX_DIM = 50


def _trusted(pareto_k: float) -> bool:
    return bool(not np.isnan(pareto_k) and pareto_k <= TRUSTED_PARETO_K)


def _default_prior_weight(pareto_k: float) -> float:
    """Weight (in draws) of the warm-start covariance against the chain's draws."""
    if not np.isfinite(pareto_k) and pareto_k < 0:  # exact approximation
        return 50.0
    if pareto_k <= 0.5:
        return 50.0
    if pareto_k <= TRUSTED_PARETO_K:
        return 20.0
    return 5.0


_ATTR_STATS = ("warmstart_grad_evals", "warmstart_pareto_k")

#: Pathfinder settings for a warm start: fewer draws than a stand-alone fit and
#: a looser L-BFGS tolerance (a warm start needs start points in the typical set
#: and a covariance, which the short adaptation then refines; not a posterior
#: sample).
WARMSTART_PATHFINDER_DEFAULTS: dict[str, Any] = {
    "num_paths": 4,
    "num_draws": 250,
    "num_draws_per_path": 250,
    "num_elbo_draws": 10,
    "ftol": 1e-5,
}


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


def _pathfinder_init(density: Any, random_seed: Any = None, **kwargs: Any) -> WarmStart:
    from pymc_ext.pathfinder_core import multipath_pathfinder

    return multipath_pathfinder(density, random_seed=random_seed, **kwargs)


def _flow_init(density: Any, random_seed: Any = None, **kwargs: Any) -> WarmStart:
    try:
        from pymc_ext.flows import flow_init
    except ImportError as err:  # pragma: no cover - depends on the flows module
        raise ImportError(
            "init='flow' needs pymc_ext.flows.flow_init (and torch, zuko); it is not "
            f"available here: {err}. Use init='pathfinder' instead."
        ) from err
    return flow_init(density, random_seed=random_seed, **kwargs)


#: Named warm starts: ``name -> callable(density, random_seed=..., **init_kwargs)``.
WARMSTART_INITS: dict[str, Callable[..., WarmStart]] = {
    "pathfinder": _pathfinder_init,
    "flow": _flow_init,
}


def run_warmstart(
    density: Any,
    init: str | WarmStart | Callable[..., WarmStart] = "pathfinder",
    random_seed: int | np.random.Generator | None = None,
    **init_kwargs: Any,
) -> WarmStart:
    """Run (or check) a warm start on a density.

    Parameters
    ----------
    density : LogDensity
        The target.
    init : str, WarmStart or callable
        ``"pathfinder"`` or ``"flow"`` (see :data:`WARMSTART_INITS`), a
        finished warm start (returned as is after checks), or a callable
        ``(density, random_seed=..., **init_kwargs) -> WarmStart``.
    random_seed : int or Generator, optional
        Seed for the warm start.
    **init_kwargs
        Passed to the warm start (for Pathfinder: ``num_paths``,
        ``num_draws``, ...).

    Returns
    -------
    WarmStart

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.warmstart_step import run_warmstart
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
# The mass matrix: starts at the warm-start covariance, refined in windows
# ---------------------------------------------------------------------------
@dataclass_state
class WarmStartPotentialState(PotentialState):
    _cov: np.ndarray
    _var: np.ndarray
    _chol: np.ndarray | None
    _lr_scale: np.ndarray | None
    _lr_vecs: np.ndarray | None
    _lr_vals: np.ndarray | None
    _n_x: int
    _mean_x: np.ndarray
    _m2_x: np.ndarray
    _draws: list
    _mean_g: np.ndarray
    _m2_g: np.ndarray
    _n_updates: int

    kind: str = field(metadata={"frozen": True})
    dtype: Any = field(metadata={"frozen": True})
    _n: int = field(metadata={"frozen": True})
    _initial_cov: np.ndarray = field(metadata={"frozen": True})
    _prior_weight: float = field(metadata={"frozen": True})
    _rank: int = field(metadata={"frozen": True})
    _use_grads: bool = field(metadata={"frozen": True})


class WarmStartPotential(QuadPotential):
    """Inverse mass matrix from a warm start, refined from the chain's own draws.

    It does not adapt by itself on every draw: :class:`WarmStartNUTS` feeds it
    draws (``update``) and tells it when to re-estimate
    (:meth:`refresh`). The estimate blends the warm-start covariance (weight
    ``prior_weight`` draws) with the draws seen so far.

    Parameters
    ----------
    initial_cov : ndarray
        ``(n, n)`` warm-start covariance on the sampler's ordering.
    kind : {"diag", "dense", "lowrank"}
        ``diag``: the diagonal only. ``dense``: the full matrix.
        ``lowrank``: the diagonal plus the ``rank`` directions whose
        variance differs most from it (cheap for large models).
    prior_weight : float
        Weight of the warm-start estimate, in draws.
    rank : int
        Rank of the low-rank part (``kind="lowrank"``).
    use_grads : bool
        For ``diag``: estimate each variance as ``sqrt(var(x) / var(grad))``
        (as nutpie does), which converges in fewer draws.
    dtype, rng
        As for PyMC's potentials.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.warmstart_step import WarmStartPotential
    >>> pot = WarmStartPotential(np.array([[2.0, 0.5], [0.5, 1.0]]), kind="dense", rng=0)
    >>> pot.velocity(np.array([1.0, 0.0])).tolist()
    [2.0, 0.5]
    """

    _state_class = WarmStartPotentialState

    def __init__(
        self,
        initial_cov: np.ndarray,
        kind: str = "diag",
        prior_weight: float = 20.0,
        rank: int = 8,
        use_grads: bool = False,
        dtype: Any = None,
        rng: Any = None,
    ) -> None:
        if kind not in ("diag", "dense", "lowrank"):
            raise ValueError(f"metric must be 'diag', 'dense' or 'lowrank'; got {kind!r}.")
        initial_cov = np.asarray(initial_cov, dtype=float)
        n = initial_cov.shape[0]
        if initial_cov.shape != (n, n):
            raise ValueError(f"initial_cov must be square; got {initial_cov.shape}.")
        self.dtype = dtype or pytensor.config.floatX
        self.kind = kind
        self._n = n
        self._initial_cov = _regularise_cov(initial_cov)
        self._prior_weight = float(prior_weight)
        self._rank = int(max(1, min(rank, n)))
        self._use_grads = bool(use_grads)
        super().__init__(rng=rng)
        self.reset()

    # -- state ----------------------------------------------------------------
    def reset(self) -> None:
        n = self._n
        self._n_x = 0
        self._mean_x = np.zeros(n)
        self._m2_x = np.zeros(n)
        self._draws = []
        self._mean_g = np.zeros(n)
        self._m2_g = np.zeros(n)
        self._n_updates = 0
        self._set_cov(self._initial_cov.copy())

    def _set_cov(self, cov: np.ndarray) -> None:
        self._cov = cov
        self._var = np.clip(np.diag(cov).copy(), 1e-12, 1e12)
        self._chol = None
        self._lr_scale = self._lr_vecs = self._lr_vals = None
        if self.kind == "dense":
            self._chol = linalg.cholesky(cov, lower=True)
        elif self.kind == "lowrank":
            scale = np.sqrt(self._var)
            corr = cov / np.outer(scale, scale)
            vals, vecs = np.linalg.eigh(0.5 * (corr + corr.T))
            vals = np.clip(vals, 1e-10, None)
            order = np.argsort(-np.abs(np.log(vals)))[: self._rank]
            self._lr_scale = scale
            self._lr_vecs = np.ascontiguousarray(vecs[:, order])
            self._lr_vals = vals[order]

    # -- what the integrator uses -------------------------------------------
    def velocity(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if self.kind == "diag":
            return np.multiply(self._var, x, out=out)
        if self.kind == "dense":
            return np.dot(self._cov, x, out=out)
        s, U, lam = self._lr_scale, self._lr_vecs, self._lr_vals
        y = s * x
        y = y + U @ ((lam - 1.0) * (U.T @ y))
        y = s * y
        if out is not None:
            out[...] = y
            return out
        return y

    def energy(self, x: np.ndarray, velocity: np.ndarray | None = None) -> float:
        if velocity is None:
            velocity = self.velocity(x)
        return 0.5 * float(np.dot(x, velocity))

    def velocity_energy(self, x: np.ndarray, v_out: np.ndarray) -> float:
        self.velocity(x, out=v_out)
        return 0.5 * float(np.dot(x, v_out))

    def random(self) -> np.ndarray:
        z = self.rng.normal(size=self._n)
        if self.kind == "diag":
            return (z / np.sqrt(self._var)).astype(self.dtype)
        if self.kind == "dense":
            return linalg.solve_triangular(self._chol.T, z, lower=False).astype(self.dtype)
        # p ~ N(0, M) with M = S^-1 (I + U (1/lam - 1) U^T) S^-1
        s, U, lam = self._lr_scale, self._lr_vecs, self._lr_vals
        w = z + U @ ((lam**-0.5 - 1.0) * (U.T @ z))
        return (w / s).astype(self.dtype)

    # -- adaptation ------------------------------------------------------------
    def update(self, sample: np.ndarray, grad: np.ndarray, tune: bool) -> None:
        """Called by PyMC after every draw; collection is driven by :meth:`collect`."""

    def collect(self, sample: np.ndarray, grad: np.ndarray) -> None:
        """Add one draw (and its gradient) to the running estimate (Welford)."""
        self._n_x += 1
        k = self._n_x
        dx = sample - self._mean_x
        self._mean_x = self._mean_x + dx / k
        self._m2_x = self._m2_x + dx * (sample - self._mean_x)
        if self.kind != "diag":
            self._draws.append(np.array(sample, dtype=float, copy=True))
        if self._use_grads:
            dg = grad - self._mean_g
            self._mean_g = self._mean_g + dg / k
            self._m2_g = self._m2_g + dg * (grad - self._mean_g)

    def refresh(self, restart: bool = True) -> bool:
        """Re-estimate the metric from the draws collected so far; True if it changed.

        The estimate is ``(w0 * warm_start + n * sample) / (w0 + n)``. For a
        dense or low-rank metric the sample covariance's correlations are
        shrunk towards zero by the Schäfer-Strimmer (Ledoit-Wolf type)
        intensity estimated from the draws themselves, so a few hundred draws
        give a usable matrix. With ``restart`` the collected draws are dropped
        afterwards (a new window).
        """
        n = self._n_x
        if n < 5:
            return False
        w0 = self._prior_weight
        if self.kind == "diag":
            var = self._m2_x / (n - 1)
            if self._use_grads:
                gvar = self._m2_g / (n - 1)
                ok = (gvar > 0) & np.isfinite(gvar)
                var = np.where(ok, np.sqrt(var / np.where(ok, gvar, 1.0)), var)
            est = np.diag(var)
        else:
            est = _shrunk_covariance(np.asarray(self._draws))
        prior = self._initial_cov
        if self.kind == "diag":
            prior = np.diag(np.diag(prior))
        new = (w0 * prior + n * est) / (w0 + n)
        new = _regularise_cov(new)
        if not np.all(np.isfinite(new)):
            return False
        try:
            self._set_cov(new)
        except (linalg.LinAlgError, ValueError):
            return False
        self._n_updates += 1
        if restart:
            n_ = self._n
            self._n_x = 0
            self._mean_x = np.zeros(n_)
            self._m2_x = np.zeros_like(self._m2_x)
            self._draws = []
            self._mean_g = np.zeros(n_)
            self._m2_g = np.zeros(n_)
        return True

    def stats(self) -> dict[str, float]:
        return {"largest_eigval": np.nan, "smallest_eigval": np.nan}

    def raise_ok(self, map_info: Any = None) -> None:
        if not np.all(np.isfinite(self._var)) or np.any(self._var <= 0):
            raise ValueError(
                "The warm-start mass matrix has non-finite or zero entries; run with "
                "metric='diag' or a different init."
            )


def _shrunk_covariance(draws: np.ndarray) -> np.ndarray:
    """Sample covariance with its correlations shrunk towards 0 (Schäfer & Strimmer 2005).

    The shrinkage intensity ``lam = sum Var(r_ij) / sum r_ij**2`` (off-diagonal)
    is estimated from the draws; the variances are kept.
    """
    n, d = draws.shape
    centred = draws - draws.mean(axis=0)
    sd = np.sqrt((centred**2).sum(axis=0) / (n - 1))
    sd = np.where(sd > 0, sd, 1.0)
    z = centred / sd
    w_sum = z.T @ z
    r = w_sum / (n - 1)
    sq = (z * z).T @ (z * z)  # sum_k z_ki^2 z_kj^2
    var_r = n / (n - 1) ** 3 * (sq - w_sum**2 / n)
    off = ~np.eye(d, dtype=bool)
    denom = float((r[off] ** 2).sum())
    lam = 1.0 if denom <= 0 else float(np.clip(var_r[off].sum() / denom, 0.0, 1.0))
    corr = (1.0 - lam) * r
    corr[np.diag_indices(d)] = 1.0
    return corr * np.outer(sd, sd)


def _regularise_cov(cov: np.ndarray) -> np.ndarray:
    """Symmetric, finite, positive definite (adds jitter to the diagonal if needed)."""
    cov = 0.5 * (cov + cov.T)
    d = np.diag(cov).copy()
    bad = ~np.isfinite(d) | (d <= 0)
    if np.any(bad):
        d[bad] = 1.0
        cov = np.where(np.isfinite(cov), cov, 0.0)
        cov[np.diag_indices_from(cov)] = d
    cov[np.diag_indices_from(cov)] = np.clip(np.diag(cov), 1e-10, 1e10)
    for jitter in (0.0, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2):
        try:
            linalg.cholesky(cov + jitter * np.diag(np.diag(cov)), lower=True)
            return cov + jitter * np.diag(np.diag(cov))
        except linalg.LinAlgError:
            continue
    return np.diag(np.diag(cov))


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
    >>> from pymc_ext.warmstart_step import StepLogDensity
    >>> with pm.Model():
    ...     x = pm.Normal("x", 0, 1, shape=2)
    ...     step = pm.NUTS()
    >>> d = StepLogDensity(step)
    >>> d.logp_and_grad(np.zeros(2))[1].tolist()
    [-0.0, -0.0]
    """

    def __init__(self, step: Any, initial_point: Mapping[str, Any] | None = None) -> None:
        fn = step._logp_dlogp_func
        self._fn = fn._pytensor_function
        self._dtype = fn.dtype
        names = [v.name for v in step.vars]
        ip = step._model.initial_point() if initial_point is None else initial_point
        shapes = {k: tuple(np.shape(ip[k])) for k in names}
        sizes = [int(np.prod(shapes[k], dtype=int)) for k in names]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        #: ``name -> slice`` of the flat vector (the step's ordering)
        self.slices = {k: slice(int(offsets[i]), int(offsets[i + 1])) for i, k in enumerate(names)}
        super().__init__(int(offsets[-1]), names=names, shapes=shapes)

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


def _value_var_slices(model: Any, ip: Mapping[str, Any]) -> dict[str, slice]:
    """``value variable name -> slice`` in model.value_vars order (log_density's ordering)."""
    out, start = {}, 0
    for v in model.value_vars:
        size = int(np.prod(np.shape(ip[v.name]), dtype=int))
        out[v.name] = slice(start, start + size)
        start += size
    return out


# ---------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------
@dataclass_state
class WarmStartNUTSState(NUTSState):
    warmup: int
    _chain_tune: int
    _chain_iter: int
    _warm_iter: int
    _start_pending: bool
    _chain_start: np.ndarray | None
    _last_logp: float
    _window_ends: list


class WarmStartNUTS(NUTS):
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
        :class:`~pymc_ext.pathfinder_core.PathfinderResult`) is used as is.
    metric : {"auto", "diag", "dense", "lowrank"}
        Mass-matrix structure. ``auto`` (default): ``dense`` up to
        :data:`AUTO_DENSE_MAX_DIM` parameters, ``lowrank`` above. ``diag`` is
        the cheapest and what PyMC uses; ``dense`` pays off on correlated
        posteriors (regressions, time series); ``lowrank`` keeps the ``rank``
        directions whose variance differs most from the diagonal.
    warmup : int, optional
        Adaptation iterations after the warm start (default
        :data:`DEFAULT_WARMUP`). Also the ``tune`` that ``pm.sample`` uses
        when it is not given. Tuning iterations beyond it are free no-ops.
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
        Passed to the warm start (e.g. ``{"num_paths": 8}``).
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
    lift_attrs : bool
        Install the hook that moves the warm-start figures into
        ``sample_stats.attrs`` (see :func:`install_warmstart_attrs_hook`).
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

    Notes
    -----
    ``sample_stats`` gets the usual NUTS statistics (``n_steps`` included),
    ``warmup_idle`` (tuning iterations that cost nothing), and the attributes
    ``warmstart_grad_evals`` and ``warmstart_pareto_k``. Total gradient
    evaluations are ``warmstart_grad_evals + n_steps.sum()`` over warmup and
    draws (keep the warmup with ``discard_tuned_samples=False``).

    Examples
    --------
    >>> import pymc as pm
    >>> from pymc_ext.warmstart_step import WarmStartNUTS
    >>> with pm.Model() as model:
    ...     mu = pm.Normal("mu", 0, 1)
    ...     sigma = pm.HalfNormal("sigma", 1)
    ...     y = pm.Normal("y", mu, sigma, observed=[0.1, -0.3, 0.5, 0.2])
    ...     step = WarmStartNUTS(random_seed=1)
    ...     idata = pm.sample(draws=200, step=step, chains=2, cores=1, random_seed=2,
    ...                       progressbar=False, compute_convergence_checks=False)
    >>> int(idata.sample_stats.attrs["warmstart_grad_evals"]) > 0
    True
    >>> int(idata.posterior.attrs["tuning_steps"]) == step.warmup
    True
    """

    name = "warmstart_nuts"
    _state_class = WarmStartNUTSState

    stats_dtypes_shapes = {
        **NUTS.stats_dtypes_shapes,
        "warmup_idle": (bool, []),
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
        lift_attrs: bool = True,
        progressbar: bool = False,
        **nuts_kwargs: Any,
    ) -> None:
        if "potential" in nuts_kwargs or "scaling" in nuts_kwargs:
            raise ValueError(
                "WarmStartNUTS sets the mass matrix from the warm start; do not pass "
                "`potential` or `scaling` (use pm.NUTS for that)."
            )
        if metric not in ("auto", "diag", "dense", "lowrank"):
            raise ValueError(
                f"metric must be 'auto', 'diag', 'dense' or 'lowrank'; got {metric!r}."
            )
        if warmup is not None and int(warmup) < 0:
            raise ValueError(f"warmup must be >= 0; got {warmup}.")
        if any(not 0 < f < 1 for f in metric_windows):
            raise ValueError(f"metric_windows must be fractions in (0, 1); got {metric_windows}.")
        model = modelcontext(model)

        # The step must cover the whole (continuous) model: Pathfinder fits all of it.
        value_vars = list(model.continuous_value_vars if vars is None else vars)
        names = [v.name for v in value_vars]
        if initial_point is None:
            initial_point = model.initial_point()  # computed once, also given to NUTS
        model_slices = _value_var_slices(model, initial_point)
        if sorted(names) != sorted(model_slices) or any(
            v.name not in model_slices for v in value_vars
        ):
            raise ValueError(
                "WarmStartNUTS samples all free variables of the model together (Pathfinder "
                f"fits the joint density); it was given {names} of {sorted(model_slices)}. "
                "Models with discrete variables are not supported."
            )
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

        t0 = time.perf_counter()
        init_kwargs = dict(init_kwargs or {})
        if isinstance(init, str) and init == "pathfinder":
            for key, value in WARMSTART_PATHFINDER_DEFAULTS.items():
                init_kwargs.setdefault(key, value)
            init_kwargs.setdefault("progressbar", progressbar)
        precomputed = not isinstance(init, str) and isinstance(init, WarmStart)
        if density is None and not (isinstance(init, str) and init == "flow"):
            density = StepLogDensity(self, initial_point)
            # A finished result is on log_density's ordering; a fresh one on the step's.
            slices = model_slices if precomputed else density.slices
        else:
            if density is None:
                from pymc_ext.pymc_model import log_density

                density = log_density(model)
            slices = getattr(density, "slices", model_slices)
        perm = np.concatenate([np.arange(slices[k].start, slices[k].stop) for k in names])
        ws = run_warmstart(density, init, random_seed=random_seed, **init_kwargs)
        self.warmstart = ws
        self.warmstart_seconds = time.perf_counter() - t0
        self.warmstart_grad_evals = int(ws.grad_evals)
        self.warmstart_pareto_k = float(ws.pareto_k)
        self.warmstart_trusted = _trusted(self.warmstart_pareto_k)
        if metric == "auto":
            metric = "dense" if n <= AUTO_DENSE_MAX_DIM else "lowrank"
        warmup = DEFAULT_WARMUP if warmup is None else int(warmup)
        if prior_weight is None:
            prior_weight = _default_prior_weight(self.warmstart_pareto_k)
        self.prior_weight = float(prior_weight)

        # Distinct starting points, shuffled reproducibly.
        draws = np.asarray(ws.draws, dtype=float)[:, perm]
        draws = draws[np.all(np.isfinite(draws), axis=1)]
        if draws.shape[0] == 0:
            raise ValueError("The warm start gave no finite draws to start chains from.")
        uniq = np.unique(draws, axis=0)
        rng = np.random.default_rng(random_seed)
        self._init_points = uniq[rng.permutation(uniq.shape[0])]

        cov = np.asarray(ws.covariance, dtype=float)[np.ix_(perm, perm)]
        if metric == "diag":
            diag = np.asarray(ws.inverse_metric_diag, dtype=float)[perm]
            cov = np.diag(np.where(np.isfinite(diag) & (diag > 0), diag, np.diag(cov)))
        potential = WarmStartPotential(
            cov,
            kind=metric,
            prior_weight=self.prior_weight,
            rank=rank,
            use_grads=use_grads,
            rng=self.rng.spawn(1)[0],
        )
        self.potential = potential
        self.integrator._potential = potential
        self.metric = metric
        self.warmup = warmup
        self.default_tune_steps = warmup
        self.metric_windows = tuple(float(f) for f in metric_windows)
        self._chain_tune = warmup
        self._chain_iter = 0
        self._warm_iter = 0
        self._start_pending = True
        self._chain_start = None
        self._last_logp = np.nan
        self._window_ends = self._schedule(warmup)
        if lift_attrs:
            install_warmstart_attrs_hook()

    # -- schedule -------------------------------------------------------------
    def _schedule(self, n_adapt: int) -> list[int]:
        """Iterations (0-based) after which the metric is re-estimated."""
        ends = sorted({int(round(f * n_adapt)) for f in self.metric_windows})
        return [e for e in ends if 10 <= e < n_adapt - 10]

    # -- chain set-up ---------------------------------------------------------------
    def setup_chain(self, rng: Any, tune: int, draws: int) -> None:
        super().setup_chain(rng, tune, draws)
        self._chain_tune = int(tune)
        self._chain_iter = 0
        self._warm_iter = 0
        self._start_pending = True
        n_adapt = min(self.warmup, int(tune))
        self._window_ends = self._schedule(n_adapt)
        self._chain_start = self._init_points[self._chain_index(self.rng)]

    def _chain_index(self, rng: np.random.Generator) -> int:
        """Index of this chain's starting draw.

        ``pm.sample`` gives chain ``i`` a generator spawned as the ``i``-th child
        of one seed sequence (also across processes), so its ``spawn_key`` tells
        the chain apart: chains get distinct draws. Without one, the chain's own
        generator picks a draw.
        """
        n = self._init_points.shape[0]
        seed_seq = getattr(getattr(rng, "bit_generator", None), "seed_seq", None)
        key = tuple(getattr(seed_seq, "spawn_key", ()) or ())
        if key:
            return int(key[-1]) % n
        return int(rng.integers(n))

    def reset_tuning(self, start: Any = None) -> None:
        super().reset_tuning(start)
        self.potential.reset()

    # -- one iteration ---------------------------------------------------------------
    def astep(self, q0: RaveledVars) -> tuple[RaveledVars, list[dict[str, Any]]]:
        if self._start_pending:
            self._start_pending = False
            if self._chain_start is not None:
                q0 = RaveledVars(
                    np.asarray(self._chain_start, dtype=q0.data.dtype).copy(), q0.point_map_info
                )
        in_tuning = self.tune and self._chain_iter < self._chain_tune
        self._chain_iter += 1
        n_adapt = min(self.warmup, self._chain_tune)
        if in_tuning and self._warm_iter >= n_adapt:
            return q0, [self._idle_stats()]
        q, stats = super().astep(q0)
        st = stats[0]
        self._last_logp = float(st.get("model_logp", np.nan))
        if in_tuning:
            self.potential.collect(q.data, self._last_grad(q))
            if self._warm_iter in self._window_ends and self.potential.refresh(
                restart=self._warm_iter == self._window_ends[0]
            ):
                # Restart dual averaging from the current averaged step size.
                self.step_adapt._initial_step = float(np.exp(self.step_adapt._log_bar))
                self.step_adapt.reset()
            self._warm_iter += 1
        st["warmup_idle"] = False
        st["warmstart_grad_evals"] = self.warmstart_grad_evals
        st["warmstart_pareto_k"] = self.warmstart_pareto_k
        return q, stats

    def _last_grad(self, q: RaveledVars) -> np.ndarray:
        if not self.potential._use_grads:
            return np.zeros_like(q.data)
        _, grad = self.integrator._logp_dlogp_func(q.data, q.point_map_info)
        return np.asarray(grad)

    def _idle_stats(self) -> dict[str, Any]:
        t = time.perf_counter()
        st: dict[str, Any] = {
            "depth": 0,
            "step_size": float(np.exp(self.step_adapt._log_bar)),
            "mean_tree_accept": np.nan,
            "step_size_bar": float(np.exp(self.step_adapt._log_bar)),
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
            "warmup_idle": True,
            "warmstart_grad_evals": self.warmstart_grad_evals,
            "warmstart_pareto_k": self.warmstart_pareto_k,
        }
        return st


# ---------------------------------------------------------------------------
# Getting the figures into sample_stats.attrs
# ---------------------------------------------------------------------------
def lift_warmstart_attrs(idata: Any) -> Any:
    """Move the ``warmstart_*`` per-draw stats into ``sample_stats.attrs``.

    ``warmstart_grad_evals`` (int) and ``warmstart_pareto_k`` (float) are the
    same at every draw; this stores them once as attributes of
    ``sample_stats`` (and ``warmup_sample_stats``) and drops the variables.
    A result without them is returned unchanged.

    Parameters
    ----------
    idata : xarray.DataTree

    Returns
    -------
    xarray.DataTree
        The same object, changed in place.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> from pymc_ext.warmstart_step import lift_warmstart_attrs
    >>> ss = xr.Dataset({"warmstart_grad_evals": (("chain", "draw"), np.full((1, 3), 42))})
    >>> dt = lift_warmstart_attrs(xr.DataTree.from_dict({"sample_stats": ss}))
    >>> dt.sample_stats.attrs["warmstart_grad_evals"]
    42
    """
    children = getattr(idata, "children", {})
    values: dict[str, Any] = {}
    for group in ("sample_stats", "warmup_sample_stats"):
        if group not in children:
            continue
        ds = idata[group].to_dataset()
        present = [k for k in _ATTR_STATS if k in ds.data_vars]
        for k in present:
            arr = np.asarray(ds[k].values)
            if arr.size:
                values[k] = int(arr.max()) if k.endswith("grad_evals") else float(arr.flat[0])
        if present:
            idata[group] = idata[group].to_dataset().drop_vars(present)
    for group in ("sample_stats", "warmup_sample_stats"):
        if group in children and values:
            idata[group].attrs.update(values)
    return idata


_HOOK_INSTALLED = False


def install_warmstart_attrs_hook() -> None:
    """Make ``pm.sample`` put the warm-start figures into ``sample_stats.attrs``.

    PyMC gives a step method no public way to set attributes of the result;
    it does carry every step's per-draw stats through to it, across
    processes. :class:`WarmStartNUTS` reports ``warmstart_grad_evals`` and
    ``warmstart_pareto_k`` as per-draw stats, and this hook wraps
    ``pymc.to_inference_data`` (the function ``pm.sample`` calls to build its
    result) so that those two stats are moved into ``sample_stats.attrs`` by
    :func:`lift_warmstart_attrs`. Results without them are untouched. It is
    installed once, when the first :class:`WarmStartNUTS` is built
    (``lift_attrs=False`` skips it). ``pymc_ext.sample`` does the same lift
    itself, so it does not rely on the hook.

    Examples
    --------
    >>> import pymc as pm
    >>> from pymc_ext.warmstart_step import install_warmstart_attrs_hook
    >>> install_warmstart_attrs_hook()
    >>> getattr(pm.to_inference_data, "_pymc_ext_warmstart_hook", False)
    True
    """
    global _HOOK_INSTALLED
    import pymc

    current = pymc.to_inference_data
    if _HOOK_INSTALLED or getattr(current, "_pymc_ext_warmstart_hook", False):
        _HOOK_INSTALLED = True
        return

    @functools.wraps(current)
    def to_inference_data(*args: Any, **kwargs: Any) -> Any:
        return lift_warmstart_attrs(current(*args, **kwargs))

    to_inference_data._pymc_ext_warmstart_hook = True  # type: ignore[attr-defined]
    pymc.to_inference_data = to_inference_data
    _HOOK_INSTALLED = True
