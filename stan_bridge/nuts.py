"""A small NUTS for any :class:`~pymc_ext.density.LogDensity` (numpy only).

Used by :mod:`stan_bridge.prior` to draw from a program's prior-only
density. Multinomial NUTS with a diagonal metric, as in Stan (Betancourt,
2017): biased progressive sampling between subtrees, uniform within them,
the generalised no-U-turn criterion on the summed momenta, and warmup with
dual-averaging step size (:mod:`pymc_ext.blocks.dual_averaging`) and
windowed variance estimates.

The shape follows BlackJAX: :class:`NUTSState` and :class:`NUTSInfo` named
tuples and a pure :func:`nuts_step` kernel; :func:`sample_nuts` runs warmup
and sampling for a few chains.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from pymc_ext.blocks.dual_averaging import (
    DualAveragingState,
    dual_averaging_init,
    dual_averaging_update,
)
from pymc_ext.blocks.progress import ProgressBar
from pymc_ext.density import LogDensity

__all__ = ["NUTSState", "NUTSInfo", "RunawayChainError", "nuts_step", "sample_nuts"]

#: Stan's energy error above which a transition counts as divergent.
MAX_ENERGY_ERROR = 1000.0


class NUTSState(NamedTuple):
    """Position, its log density and gradient."""

    x: np.ndarray
    logp: float
    grad: np.ndarray


class NUTSInfo(NamedTuple):
    """What one NUTS transition did."""

    accept_prob: float
    n_leapfrog: int
    depth: int
    diverging: bool
    energy: float


class RunawayChainError(FloatingPointError):
    """A chain ran off to huge values: the target is probably improper."""


class _Tree(NamedTuple):
    left: NUTSState
    r_left: np.ndarray
    right: NUTSState
    r_right: np.ndarray
    proposal: NUTSState
    log_weight: float
    rho: np.ndarray
    turning: bool
    diverging: bool
    sum_accept: float
    n_leapfrog: int


class _Trajectory(NamedTuple):
    """What every leapfrog step of one transition shares."""

    density: LogDensity
    inv_metric: np.ndarray
    h0: float
    rng: np.random.Generator


def _logp_grad(density: LogDensity, x: np.ndarray) -> NUTSState:
    with np.errstate(all="ignore"):
        try:
            lp, g = density.logp_and_grad(x)
        except (FloatingPointError, ValueError, ArithmeticError):
            return NUTSState(x, -np.inf, np.full_like(x, np.nan))
    if not np.isfinite(lp) or not np.all(np.isfinite(g)):
        return NUTSState(x, -np.inf, np.full_like(x, np.nan))
    return NUTSState(x, float(lp), np.asarray(g, dtype=float))


def _uturn(rho: np.ndarray, p_left: np.ndarray, p_right: np.ndarray) -> bool:
    return bool(rho @ p_left <= 0 or rho @ p_right <= 0)


def _leaf(traj: _Trajectory, s: NUTSState, r: np.ndarray, eps: float) -> _Tree:
    """One leapfrog step from ``(s, r)``: a tree of depth 0."""
    inv_metric = traj.inv_metric
    r_half = r + 0.5 * eps * s.grad
    x_new = s.x + eps * inv_metric * r_half
    new = _logp_grad(traj.density, x_new)
    r_new = r_half + 0.5 * eps * new.grad
    h = new.logp - 0.5 * float(r_new @ (inv_metric * r_new))
    if not math.isfinite(h):
        h = -math.inf
    h0 = traj.h0
    diverging = (h0 - h) > MAX_ENERGY_ERROR
    accept = math.exp(min(0.0, h - h0)) if math.isfinite(h) else 0.0  # no overflow
    return _Tree(new, r_new, new, r_new, new, h - h0, r_new, False, diverging, accept, 1)


def _build_tree(traj: _Trajectory, s: NUTSState, r: np.ndarray, eps: float, depth: int) -> _Tree:
    """A subtree of ``2**depth`` leapfrog steps from ``(s, r)`` in the direction of ``eps``."""
    if depth == 0:
        return _leaf(traj, s, r, eps)
    t1 = _build_tree(traj, s, r, eps, depth - 1)
    if t1.turning or t1.diverging:
        return t1
    edge, r_edge = (t1.right, t1.r_right) if eps > 0 else (t1.left, t1.r_left)
    t2 = _build_tree(traj, edge, r_edge, eps, depth - 1)
    n_leap = t1.n_leapfrog + t2.n_leapfrog
    acc = t1.sum_accept + t2.sum_accept
    if t2.turning or t2.diverging:
        return t1._replace(
            turning=t2.turning, diverging=t2.diverging, sum_accept=acc, n_leapfrog=n_leap
        )
    log_w = float(np.logaddexp(t1.log_weight, t2.log_weight))
    take_new = math.log(traj.rng.uniform()) < t2.log_weight - log_w
    proposal = t2.proposal if take_new else t1.proposal
    if eps > 0:
        left, r_left, right, r_right = t1.left, t1.r_left, t2.right, t2.r_right
    else:
        left, r_left, right, r_right = t2.left, t2.r_left, t1.right, t1.r_right
    rho = t1.rho + t2.rho
    inv_metric = traj.inv_metric
    turning = _uturn(rho, inv_metric * r_left, inv_metric * r_right)
    return _Tree(left, r_left, right, r_right, proposal, log_w, rho, turning, False, acc, n_leap)


def nuts_step(
    density: LogDensity,
    state: NUTSState,
    step_size: float,
    inv_metric: np.ndarray,
    rng: np.random.Generator,
    max_depth: int = 10,
) -> tuple[NUTSState, NUTSInfo]:
    """One multinomial NUTS transition with a diagonal metric.

    Parameters
    ----------
    density : LogDensity
        Target on ``R^dim``.
    state : NUTSState
        Current position (with finite log density).
    step_size : float
        Leapfrog step size.
    inv_metric : ndarray
        Diagonal of the inverse metric, ``(dim,)``.
    rng : numpy.random.Generator
    max_depth : int
        Maximum tree depth (at most ``2**max_depth`` leapfrog steps).

    Returns
    -------
    (NUTSState, NUTSInfo)

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from stan_bridge.nuts import NUTSState, nuts_step
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, lambda x: -x)
    >>> s = NUTSState(np.zeros(2), 0.0, np.zeros(2))
    >>> s, info = nuts_step(d, s, 0.5, np.ones(2), np.random.default_rng(0))
    >>> info.n_leapfrog > 0
    True
    """
    sqrt_m = 1.0 / np.sqrt(inv_metric)
    r0 = rng.normal(size=state.x.shape) * sqrt_m
    h0 = state.logp - 0.5 * float(r0 @ (inv_metric * r0))
    traj = _Trajectory(density, inv_metric, h0, rng)
    proposal, n_leap, sum_accept, depth, diverging = _grow_trajectory(
        traj, state, r0, step_size, max_depth
    )
    info = NUTSInfo(
        accept_prob=sum_accept / max(n_leap, 1),
        n_leapfrog=n_leap,
        depth=depth,
        diverging=diverging,
        energy=-h0,
    )
    return proposal, info


def _grow_trajectory(
    traj: _Trajectory, state: NUTSState, r0: np.ndarray, step_size: float, max_depth: int
) -> tuple[NUTSState, int, float, int, bool]:
    """Double the trajectory in random directions until it turns, diverges or hits ``max_depth``.

    Returns the proposal, the number of leapfrog steps, the summed acceptance
    probabilities, the depth reached and whether it diverged.
    """
    inv_metric, rng = traj.inv_metric, traj.rng
    left = right = state
    r_left = r_right = r0
    rho = r0.copy()
    proposal = state
    log_w = 0.0
    n_leap, sum_accept, depth, diverging = 0, 0.0, 0, False
    while depth < max_depth:
        direction = 1.0 if rng.uniform() < 0.5 else -1.0
        if direction > 0:
            sub = _build_tree(traj, right, r_right, step_size, depth)
        else:
            sub = _build_tree(traj, left, r_left, -step_size, depth)
        n_leap += sub.n_leapfrog
        sum_accept += sub.sum_accept
        depth += 1
        if sub.diverging:
            diverging = True
            break
        if sub.turning:
            break
        # biased progressive sampling between the old tree and the new subtree
        if math.log(rng.uniform()) < sub.log_weight - log_w:
            proposal = sub.proposal
        log_w = float(np.logaddexp(log_w, sub.log_weight))
        if direction > 0:
            right, r_right = sub.right, sub.r_right
        else:
            left, r_left = sub.left, sub.r_left
        rho = rho + sub.rho
        if _uturn(rho, inv_metric * r_left, inv_metric * r_right):
            break
    return proposal, n_leap, sum_accept, depth, diverging


def _find_step_size(
    density: LogDensity, state: NUTSState, inv_metric: np.ndarray, rng: np.random.Generator
) -> float:
    eps = 1.0
    for _ in range(50):
        r = rng.normal(size=state.x.shape) / np.sqrt(inv_metric)
        h0 = state.logp - 0.5 * float(r @ (inv_metric * r))
        r_half = r + 0.5 * eps * state.grad
        new = _logp_grad(density, state.x + eps * inv_metric * r_half)
        r_new = r_half + 0.5 * eps * new.grad
        h = new.logp - 0.5 * float(r_new @ (inv_metric * r_new))
        if math.isfinite(h) and h - h0 > math.log(0.8):
            return eps
        eps *= 0.5
    return eps


def _check_runaway(x: np.ndarray, max_abs: float | None) -> None:
    if max_abs is not None and np.max(np.abs(x)) > max_abs:
        raise RunawayChainError(
            f"A chain reached |x| = {np.max(np.abs(x)):.3g} (> {max_abs:.3g}) on the "
            "unconstrained scale: the target is probably improper."
        )


def _windows(num_warmup: int) -> list[int]:
    """Ends of Stan's metric-adaptation windows for ``num_warmup`` iterations."""
    init, term, base = 75, 50, 25
    if num_warmup < init + term + base:
        init, term = int(0.15 * num_warmup), int(0.1 * num_warmup)
        base = num_warmup - init - term
    ends, start, size = [], init, base
    while start + size < num_warmup - term:
        nxt = start + size
        if nxt + 2 * size > num_warmup - term:
            nxt = num_warmup - term
        ends.append(nxt)
        start, size = nxt, 2 * size
    if not ends or ends[-1] != num_warmup - term:
        ends.append(num_warmup - term)
    return ends


class _ChainSettings(NamedTuple):
    """What the warmup and sampling of every chain share."""

    density: LogDensity
    rng: np.random.Generator
    target_accept: float
    max_depth: int
    max_abs: float | None
    bar: ProgressBar


def _initial_state(
    density: LogDensity, x0: np.ndarray | None, rng: np.random.Generator
) -> NUTSState:
    """The given start, else the first of 100 uniform draws on (-2, 2) with a finite density."""
    state = None
    for _ in range(100):
        x = rng.uniform(-2, 2, size=density.dim) if x0 is None else x0
        state = _logp_grad(density, x)
        if math.isfinite(state.logp):
            return state
        x0 = None
    raise FloatingPointError("No finite log density at 100 random initial points in (-2, 2).")


def _restart_adaptation(
    run: _ChainSettings, state: NUTSState, inv_metric: np.ndarray
) -> tuple[float, DualAveragingState]:
    """A fresh step size for ``inv_metric``, and dual averaging started from it."""
    eps = _find_step_size(run.density, state, inv_metric, run.rng)
    return eps, dual_averaging_init(eps)


def _windowed_variance(window: list[np.ndarray]) -> np.ndarray:
    """Stan's regularised variance estimate of one metric window."""
    w = np.asarray(window)
    n = w.shape[0]
    var = w.var(axis=0, ddof=1)
    return (n / (n + 5.0)) * var + 1e-3 * (5.0 / (n + 5.0))


def _warmup(
    run: _ChainSettings, state: NUTSState, num_warmup: int
) -> tuple[NUTSState, float, np.ndarray]:
    """Adapt step size and diagonal metric; return the state, step size and inverse metric."""
    inv_metric = np.ones(run.density.dim)
    eps, da = _restart_adaptation(run, state, inv_metric)
    ends = _windows(num_warmup)
    window: list[np.ndarray] = []
    init_buffer = min(75, int(0.15 * num_warmup)) if num_warmup < 150 else 75
    for it in range(num_warmup):
        state, info = nuts_step(run.density, state, eps, inv_metric, run.rng, run.max_depth)
        _check_runaway(state.x, run.max_abs)
        da = dual_averaging_update(da, info.accept_prob, run.target_accept)
        eps = math.exp(da.log_step)
        if it >= init_buffer and ends and it < ends[-1]:
            window.append(state.x)
        if ends and it + 1 == ends[0]:
            ends.pop(0)
            if len(window) >= 10:
                inv_metric = _windowed_variance(window)
                eps, da = _restart_adaptation(run, state, inv_metric)
            window = []
        run.bar.update()
    if num_warmup > 0:
        # Stan starts its iterate average at log(1) and the block at log(step); the first
        # update has weight 1, so the two give the same bits.
        eps = math.exp(da.log_step_avg)
    return state, eps, inv_metric


def _sample_chain(
    run: _ChainSettings,
    state: NUTSState,
    eps: float,
    inv_metric: np.ndarray,
    out: np.ndarray,
    stats: dict[str, np.ndarray],
    chain: int,
    thin: int,
) -> None:
    """Run chain ``chain``'s sampling iterations, filling ``out`` and its row of ``stats``."""
    stats["step_size"][chain] = eps
    stats["inv_metric"][chain] = inv_metric
    for it in range(stats["n_leapfrog"].shape[1]):
        state, info = nuts_step(run.density, state, eps, inv_metric, run.rng, run.max_depth)
        _check_runaway(state.x, run.max_abs)
        stats["n_leapfrog"][chain, it] = info.n_leapfrog
        stats["diverging"][chain, it] = info.diverging
        stats["accept_prob"][chain, it] = info.accept_prob
        stats["depth"][chain, it] = info.depth
        if (it + 1) % thin == 0:
            out[(it + 1) // thin - 1] = state.x
        run.bar.update()


def _empty_stats(chains: int, n_iter: int, dim: int) -> dict[str, np.ndarray]:
    stats = {
        k: np.zeros((chains, n_iter), dtype=t)
        for k, t in (
            ("n_leapfrog", np.int64),
            ("diverging", bool),
            ("accept_prob", float),
            ("depth", np.int64),
        )
    }
    stats["step_size"] = np.zeros(chains)
    stats["inv_metric"] = np.zeros((chains, dim))
    return stats


def sample_nuts(
    density: LogDensity,
    num_draws: int,
    *,
    chains: int = 4,
    num_warmup: int = 500,
    thin: int = 1,
    init: np.ndarray | None = None,
    random_seed: int | np.random.Generator | None = None,
    target_accept: float = 0.8,
    max_depth: int = 10,
    progressbar: bool = True,
    desc: str = "NUTS",
    max_abs: float | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Warm up and sample ``chains`` NUTS chains; return thinned draws.

    Parameters
    ----------
    density : LogDensity
        Target.
    num_draws : int
        Kept draws per chain (after thinning).
    chains : int
        Number of chains (run one after another).
    num_warmup : int
        Warmup iterations per chain (step size and diagonal metric).
    thin : int
        Keep every ``thin``-th draw.
    init : ndarray, optional
        ``(chains, dim)`` starting points (default: uniform on (-2, 2)).
    random_seed : int or Generator, optional
    target_accept : float
        Target mean acceptance probability of the step-size adaptation.
    max_depth : int
        Maximum tree depth.
    progressbar : bool
    desc : str
        Progress-bar label.
    max_abs : float, optional
        Stop with :class:`RunawayChainError` as soon as a coordinate
        exceeds this in absolute value (an improper target).

    Returns
    -------
    draws : ndarray
        ``(chains, num_draws, dim)``.
    stats : dict
        ``n_leapfrog``, ``diverging``, ``accept_prob``, ``depth`` (each
        ``(chains, num_draws * thin)``), ``step_size`` and
        ``inv_metric`` per chain.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from stan_bridge.nuts import sample_nuts
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, lambda x: -x)
    >>> draws, stats = sample_nuts(d, 200, chains=2, num_warmup=200, random_seed=0,
    ...                            progressbar=False)
    >>> draws.shape
    (2, 200, 2)
    >>> bool(abs(draws.std() - 1) < 0.2)
    True
    """
    rng = np.random.default_rng(random_seed)
    num_draws, thin, num_warmup = int(num_draws), max(int(thin), 1), int(num_warmup)
    n_iter = num_draws * thin
    out = np.empty((chains, num_draws, density.dim))
    stats = _empty_stats(chains, n_iter, density.dim)
    with ProgressBar(chains * (num_warmup + n_iter), desc, show=progressbar) as bar:
        run = _ChainSettings(density, rng, target_accept, max_depth, max_abs, bar)
        for c in range(chains):
            x0 = None if init is None else np.asarray(init[c], dtype=float)
            state = _initial_state(density, x0, rng)
            state, eps, inv_metric = _warmup(run, state, num_warmup)
            _sample_chain(run, state, eps, inv_metric, out[c], stats, c, thin)
    return out, stats
