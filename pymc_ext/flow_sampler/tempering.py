"""Exploration by tempering: an adaptive SMC sampler from a broad reference to the posterior.

A population of walkers starts from a broad reference ``q0`` and moves along
the geometric path ``pi_beta ∝ q0^(1 - beta) p^beta``, ``beta`` from 0 to 1.
At small ``beta`` the barriers between modes are low, so walkers spread into
every region ``q0`` covers; importance weights carry each region's mass down to
``beta = 1``. Modes are then read off the population, not found by where
L-BFGS climbs happen to end (a narrow mode's basin is tiny).

Each temperature step (Del Moral, Doucet & Jasra 2006; the schedule of Zhou,
Johansen & Aston 2016):

1. the next ``beta`` by bisection, so that the conditional ESS of the
   incremental weights ``exp((beta' - beta) (log p - log q0))`` is a set
   fraction of the population (``target_cess``);
2. reweight (the log evidence accumulates the increments), and resample
   (:func:`pymc_ext.blocks.importance.importance_resample`) when the ESS
   falls below half the walkers;
3. MALA moves that leave ``pi_beta`` invariant
   (:func:`pymc_ext.flow_sampler.kernels.mala_step`), step size by dual
   averaging (:mod:`pymc_ext.blocks.dual_averaging`), diagonal metric from
   the population's spread.

The reference is a mixture of Gaussians: a broad one around the density's
initial point, plus (optionally) inflated Gaussians around Pathfinder's path
centres, so a posterior far from the initial point is still covered
(:func:`default_reference`). The log evidence's standard error uses the
genealogy estimator of Lee & Whiteley (2018).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from scipy.special import logsumexp

from pymc_ext.blocks.dual_averaging import dual_averaging_init, dual_averaging_update
from pymc_ext.blocks.importance import importance_ess
from pymc_ext.blocks.progress import ProgressBar
from pymc_ext.density import LogDensity
from pymc_ext.flow_sampler.kernels import LocalState, Metric, mala_step
from pymc_ext.flow_sampler.reference import GaussianReference, TemperedDensity, tempered_logp
from pymc_ext.flow_sampler.strata import (
    cluster_walkers,
    stratified_resample,
    within_strata_variance,
)

__all__ = ["Exploration", "explore_tempering", "next_beta"]

#: the MALA target acceptance during tempering
TEMPERING_TARGET_ACCEPT = 0.574
#: resample when the ESS falls below this fraction of the walkers
RESAMPLE_FRACTION = 0.5
#: barrier (nats of pi_beta) that splits strata: low, so a mode is protected as soon as it
#: forms (on a 10-D mixture of scales 0.5 / 1 / 1.5, 0.05 kept the narrow mode in 3 of 4
#: seeds, 0.5 in 2 of 4); a needless split costs a little efficiency, never correctness
CLUSTER_TOL = 0.05


def next_beta(
    log_weights: np.ndarray, delta: np.ndarray, beta: float, target_cess: float
) -> float:
    """The next temperature: the conditional ESS of the increments is ``target_cess``.

    The conditional ESS (Zhou, Johansen & Aston 2016) of incremental weights
    ``u_i = exp((beta' - beta) delta_i)`` under normalised weights ``W`` is
    ``(sum W u)^2 / sum W u^2``, a fraction in (0, 1]; it falls as ``beta'``
    grows, and bisection finds where it equals ``target_cess`` (1 when even
    ``beta' = 1`` keeps it above).

    Parameters
    ----------
    log_weights : ndarray, shape (n,)
        Normalised log weights of the walkers.
    delta : ndarray, shape (n,)
        ``log p - log q0`` per walker (``-inf`` where ``p`` is zero).
    beta : float
    target_cess : float
        In (0, 1).

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flow_sampler.tempering import next_beta
    >>> delta = np.random.default_rng(0).normal(0, 10, 1000)
    >>> b = next_beta(np.full(1000, -np.log(1000)), delta, 0.0, 0.9)
    >>> 0 < b < 0.05
    True
    """

    def cess(b: float) -> float:
        inc = np.where(log_weights > -np.inf, (b - beta) * delta, -np.inf)
        inc = np.where(np.isnan(inc), -np.inf, inc)
        a = logsumexp(log_weights + inc)
        c = logsumexp(log_weights + 2 * inc)
        return float(np.exp(2 * a - c)) if np.isfinite(a) else 0.0

    if cess(1.0) >= target_cess:
        return 1.0
    lo, hi = beta, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if cess(mid) >= target_cess:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-9:
            break
    return max(lo, beta + 1e-9)


@dataclass
class Exploration:
    """One tempering exploration: the population at ``beta = 1`` and the path's record.

    Attributes
    ----------
    position : ndarray, shape (n, dim)
        Walkers at ``beta = 1`` (or at the last ``beta`` reached).
    logp : ndarray, shape (n,)
        ``log p`` of each walker.
    log_weights : ndarray, shape (n,)
        Their normalised log importance weights.
    betas : ndarray
        The schedule, ``0`` first.
    log_evidence : float
        ``log Z`` of ``p`` (its normalising constant; ``log q0`` is normalised).
    log_evidence_se : float
        Its standard error (Lee & Whiteley's genealogy estimator; it
        understates the error when few ancestral lines survive, see
        ``surviving_lines``).
    ess : ndarray
        Importance ESS (fraction of walkers) after each reweighting.
    acceptance : ndarray
        Mean MALA acceptance at each temperature.
    resamplings : int
    surviving_lines : int
        Distinct ancestors (at ``beta = 0``) of the final walkers.
    ancestors : ndarray of int, shape (n,)
        Each final walker's ancestor at ``beta = 0``.
    snapshots : list of (float, ndarray)
        ``(beta, walker positions)`` at every temperature (after its moves).
    strata : list of (float, ndarray, ndarray)
        Per temperature: ``beta``, the modes of ``pi_beta`` the walkers climbed
        to (one row each) and their weights (for when a mode was first seen).
    reached_target : bool
        False when the budget of temperatures ran out before ``beta = 1``.
    grad_evals : int
    seconds : float
    """

    position: np.ndarray
    logp: np.ndarray
    log_weights: np.ndarray
    betas: np.ndarray
    log_evidence: float
    log_evidence_se: float
    ess: np.ndarray
    acceptance: np.ndarray
    resamplings: int
    surviving_lines: int
    ancestors: np.ndarray
    snapshots: list[tuple[float, np.ndarray]] = field(default_factory=list)
    strata: list[tuple[float, np.ndarray, np.ndarray]] = field(default_factory=list)
    reached_target: bool = True
    grad_evals: int = 0
    seconds: float = 0.0

    @property
    def n_temperatures(self) -> int:
        """Temperatures after ``beta = 0``."""
        return int(len(self.betas) - 1)


@dataclass
class _Population:
    """Walkers with ``log p``, ``log q0`` and both gradients (so any ``beta`` is exact)."""

    x: np.ndarray
    logp: np.ndarray
    logq: np.ndarray
    gp: np.ndarray
    gq: np.ndarray
    logw: np.ndarray
    eve: np.ndarray

    def take(self, idx: np.ndarray, log_weights: np.ndarray) -> None:
        self.x, self.logp, self.logq = self.x[idx], self.logp[idx], self.logq[idx]
        self.gp, self.gq, self.eve = self.gp[idx], self.gq[idx], self.eve[idx]
        self.logw = log_weights

    def accept(self, a: np.ndarray, x: np.ndarray, target: TemperedDensity) -> None:
        """Rows ``a`` move to ``x`` (the rows of ``target``'s last batch)."""
        col = a[:, None]
        self.x = np.where(col, x, self.x)
        self.logp = np.where(a, target.last_logp, self.logp)
        self.logq = np.where(a, target.last_logq, self.logq)
        self.gp = np.where(col, target.last_gp, self.gp)
        self.gq = np.where(col, target.last_gq, self.gq)

    def state(self, beta: float) -> LocalState:
        """The walkers as a :class:`LocalState` of ``pi_beta``."""
        return LocalState(self.x, tempered_logp(self.logq, self.logp, beta),
                          (1.0 - beta) * self.gq + beta * self.gp)


@dataclass
class _Record:
    """The path's record: per temperature, the schedule, ESS, acceptance and the strata."""

    betas: list[float] = field(default_factory=lambda: [0.0])
    ess: list[float] = field(default_factory=list)
    acceptance: list[float] = field(default_factory=list)
    global_acceptance: list[float] = field(default_factory=list)
    snapshots: list[tuple[float, np.ndarray]] = field(default_factory=list)
    strata: list[tuple[float, np.ndarray, np.ndarray]] = field(default_factory=list)

    def add(self, beta: float, ess: float, reps: np.ndarray, labels: np.ndarray,
            log_weights: np.ndarray) -> None:
        self.betas.append(beta)
        self.ess.append(ess)
        w = np.exp(log_weights - logsumexp(log_weights))
        self.strata.append((beta, reps, np.bincount(labels, weights=w, minlength=len(reps))))


def _needs_resampling(
    log_weights: np.ndarray, labels: np.ndarray, ess: float, min_per: int
) -> bool:
    """Resample when the ESS is below half, or a stratum is short of walkers or degenerate."""
    if ess < RESAMPLE_FRACTION:
        return True
    for k in np.unique(labels):
        lw = log_weights[labels == k]
        if not np.any(np.isfinite(lw)):
            continue
        if lw.size < min_per or importance_ess(lw - logsumexp(lw)) < RESAMPLE_FRACTION * lw.size:
            return True
    return False


def _metric(pop: _Population) -> Metric:
    """Diagonal metric: the weighted spread of the population (clipped to a sane range)."""
    w = np.exp(pop.logw - logsumexp(pop.logw))
    mean = w @ pop.x
    var = w @ (pop.x - mean) ** 2
    scale = float(np.median(var[var > 0])) if np.any(var > 0) else 1.0
    return Metric(np.clip(var, 1e-8 * scale, 1e8 * scale))


def _moves(
    pop: _Population,
    target: TemperedDensity,
    labels: np.ndarray,
    n_moves: int,
    step: list,
    rng: np.random.Generator,
) -> float:
    """``n_moves`` MALA moves on ``pi_beta``; adapts the step size; returns mean acceptance.

    The metric is the pooled within-stratum variance. Each move is one
    kernel for every walker, with the step size scaled for one stratum (the
    strata take turns, largest first): a walker's step never depends on its
    own position, so every move leaves ``pi_beta`` invariant, and walkers of
    a narrow mode still get steps their size."""
    var, factor = within_strata_variance(pop.x, pop.logw, labels)
    metric = Metric(var)
    strata = np.unique(labels)
    strata = strata[np.argsort(-np.bincount(labels)[strata])]
    acc = []
    for i in range(n_moves):
        k = strata[i % strata.size]
        mine = labels == k
        h = math.exp(step[0].log_step) * float(factor[mine][0])
        new, info = mala_step(rng, pop.state(target.beta), target, h, metric)
        pop.accept(info.is_accepted, new.position, target)
        rate = float(np.mean(info.acceptance_rate[mine]))
        step[0] = dual_averaging_update(step[0], rate, TEMPERING_TARGET_ACCEPT)
        acc.append(rate)
    return float(np.mean(acc)) if acc else float("nan")


def _reference_moves(
    pop: _Population, target: TemperedDensity, n_moves: int, rng: np.random.Generator
) -> float:
    """Independence proposals from ``q0``, exact for ``pi_beta``: they keep walkers landing in
    regions no local move reaches (at small ``beta`` most are accepted). Returns the mean
    acceptance."""
    acc = []
    for _ in range(n_moves):
        y = target.reference.sample(pop.x.shape[0], rng)
        target.logp_and_grad_batch(y)
        d_new = np.where(np.isfinite(target.last_logp), target.last_logp - target.last_logq,
                         -np.inf)
        d_old = pop.logp - pop.logq
        with np.errstate(invalid="ignore"):
            log_ratio = target.beta * (d_new - d_old)
        log_ratio = np.where(np.isnan(log_ratio), -np.inf, log_ratio)
        a = np.log(rng.uniform(size=y.shape[0])) < log_ratio
        pop.accept(a, y, target)
        acc.append(float(np.mean(np.exp(np.minimum(0.0, log_ratio)))))
    return float(np.mean(acc)) if acc else float("nan")


def _log_evidence_se(eve: np.ndarray, logw: np.ndarray, n_resample: int) -> float:
    """Lee & Whiteley's (2018) relative-variance estimator of Z, as the sd of log Z."""
    n = eve.shape[0]
    w = np.exp(logw - logsumexp(logw))
    by_eve = np.bincount(eve, weights=w, minlength=n)
    rel_var = 1.0 - (n / (n - 1.0)) ** (n_resample + 1) * (1.0 - float(np.sum(by_eve**2)))
    return float(math.sqrt(max(rel_var, 0.0)))


def _initial_population(
    density: LogDensity, reference: GaussianReference, n: int, rng: np.random.Generator
) -> _Population:
    x = reference.sample(n, rng)
    target = TemperedDensity(density, reference, 0.0)
    target.logp_and_grad_batch(x)
    if not np.any(np.isfinite(target.last_logp)):
        raise ValueError(
            "The log density is not finite at any of the reference's draws: the reference "
            "does not overlap the posterior's support. Pass a smaller reference_scale, or a "
            "model whose initial point is inside the support."
        )
    return _Population(x, target.last_logp, target.last_logq, target.last_gp, target.last_gq,
                       np.full(n, -math.log(n)), np.arange(n))


def explore_tempering(
    density: LogDensity,
    reference: GaussianReference,
    *,
    n_walkers: int = 1024,
    target_cess: float = 0.9,
    moves: int = 10,
    reference_moves: int = 2,
    max_temperatures: int = 200,
    min_per_stratum: int | None = None,
    random_seed: int | np.random.Generator | None = None,
    progressbar: bool = True,
) -> Exploration:
    """Temper a population of walkers from ``reference`` to ``density`` (adaptive SMC).

    Parameters
    ----------
    density : LogDensity
    reference : GaussianReference
        The broad ``q0`` (:func:`default_reference`).
    n_walkers : int
    target_cess : float
        Conditional ESS fraction kept at each temperature step (higher: more,
        smaller steps).
    moves : int
        MALA moves per temperature.
    reference_moves : int
        Independence proposals from ``reference`` per temperature (before the
        MALA moves): they keep proposing the whole region ``q0`` covers, so a
        walker can still land in a narrow mode after the barriers have risen.
    max_temperatures : int
        Budget of temperature steps. When it runs out, the last step jumps to
        ``beta = 1`` whatever the ESS (``reached_target`` is then False).
    min_per_stratum : int, optional
        Fewest walkers kept in each mode of ``pi_beta`` at a resampling
        (default ``max(8, n_walkers // 32)``; see
        :func:`~pymc_ext.flow_sampler.strata.stratified_resample`).
    random_seed : int or Generator, optional
    progressbar : bool

    Returns
    -------
    Exploration

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler.reference import default_reference
    >>> from pymc_ext.flow_sampler.tempering import explore_tempering
    >>> lp = lambda X: -0.5 * ((X - 3) ** 2).sum(-1) - np.log(2 * np.pi)  # normalised N(3, I)
    >>> d = FunctionLogDensity(2, lambda x: lp(x[None])[0], lambda x: 3 - x, lp,
    ...                        lambda X: 3 - X)
    >>> ex = explore_tempering(d, default_reference(d, 5.0), n_walkers=256, random_seed=0,
    ...                        progressbar=False)
    >>> bool(abs(ex.log_evidence) < 4 * ex.log_evidence_se + 0.1)
    True
    >>> bool(np.all(np.abs(np.exp(ex.log_weights) @ ex.position - 3) < 0.3))
    True
    """
    if n_walkers < 8:
        raise ValueError(f"tempering needs at least 8 walkers, got {n_walkers}.")
    if not 0.0 < target_cess < 1.0:
        raise ValueError(f"target_cess must be in (0, 1), got {target_cess!r}.")
    if max_temperatures < 1 or moves < 0:
        raise ValueError("max_temperatures must be >= 1 and moves >= 0.")
    t0 = time.perf_counter()
    rng = np.random.default_rng(random_seed)
    grad_before = int(density.grad_evals)
    n = int(n_walkers)
    min_per = max(8, n // 32) if min_per_stratum is None else int(min_per_stratum)
    pop = _initial_population(density, reference, n, rng)
    step = [dual_averaging_init(float(np.clip(1.0 / density.dim**0.25, 0.05, 1.0)))]
    beta, log_z, n_resample = 0.0, 0.0, 0
    rec = _Record()
    rec.snapshots.append((0.0, pop.x.copy()))
    reached = True
    with ProgressBar(None, "tempering", show=progressbar) as bar:
        while beta < 1.0:
            delta = np.where(np.isfinite(pop.logp), pop.logp - pop.logq, -np.inf)
            proposed = next_beta(pop.logw, delta, beta, target_cess)
            last = len(rec.betas) >= max_temperatures
            reached &= not (last and proposed < 1.0)
            new_beta = 1.0 if last else proposed
            inc = np.where(np.isfinite(delta), (new_beta - beta) * delta, -np.inf)
            log_z += float(logsumexp(pop.logw + inc))
            pop.logw = pop.logw + inc - logsumexp(pop.logw + inc)
            beta = new_beta
            target = TemperedDensity(density, reference, beta)
            labels, reps, _ = cluster_walkers(target, pop.x, np.sqrt(_metric(pop).m),
                                              tol=CLUSTER_TOL)
            ess = float(importance_ess(pop.logw)) / n
            if _needs_resampling(pop.logw, labels, ess, min_per):
                idx, pop_lw = stratified_resample(pop.logw, labels, min_per, rng)
                pop.take(idx, pop_lw)
                labels = labels[idx]
                n_resample += 1
            rec.add(beta, ess, reps, labels, pop.logw)
            rec.global_acceptance.append(_reference_moves(pop, target, reference_moves, rng))
            rec.acceptance.append(_moves(pop, target, labels, moves, step, rng))
            rec.snapshots.append((beta, pop.x.copy()))
            bar.update(beta=f"{beta:.3g}", ess=f"{ess:.2f}", modes=reps.shape[0],
                       acc=f"{rec.acceptance[-1]:.2f}")
    return Exploration(
        position=pop.x, logp=pop.logp, log_weights=pop.logw, betas=np.asarray(rec.betas),
        log_evidence=log_z, log_evidence_se=_log_evidence_se(pop.eve, pop.logw, n_resample),
        ess=np.asarray(rec.ess), acceptance=np.asarray(rec.acceptance),
        resamplings=n_resample, surviving_lines=int(np.unique(pop.eve).size),
        ancestors=pop.eve, snapshots=rec.snapshots, strata=rec.strata, reached_target=reached,
        grad_evals=int(density.grad_evals) - grad_before, seconds=time.perf_counter() - t0,
    )
