"""The mode census: every mode the tempering explorations found, and whether to trust it.

After each exploration (:mod:`pymc_ext.flow_sampler.tempering`) the walkers
at ``beta = 1`` are grouped by the mode they climb to
(:func:`exploration_modes`). The modes of all explorations are merged
(:func:`build_census`): each :class:`CensusMode` records its location and
scale, which explorations found it, the weight each gave it (with a
genealogy standard error), and the temperature at which it was first seen.
The flow sampler then adds what only production can say: the share of the
production draws in each mode (with a Monte Carlo error from the ESS), per
exploration's flow, and whether the production flow covers it
(:func:`production_shares`, :func:`flow_shares`). :func:`census_warnings`
turns disagreements into messages.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.special import logsumexp

from pymc_ext.density import LogDensity
from pymc_ext.flow_sampler.mode_search import climbed_laplace
from pymc_ext.flow_sampler.modes import mode_groups, same_mode
from pymc_ext.flow_sampler.strata import cluster_walkers
from pymc_ext.flow_sampler.tempering import Exploration

__all__ = [
    "CensusMode",
    "ExplorationModes",
    "ModeCensus",
    "assign_modes",
    "build_census",
    "exploration_modes",
    "first_seen_beta",
    "flow_shares",
    "laplace_masses",
    "laplace_shares",
    "mode_weight",
    "production_shares",
]

#: walkers below this weight (relative to an equal share) are left out of an exploration's modes
NEGLIGIBLE_WEIGHT = 1e-6
#: a mode below this weight everywhere is not worth a disagreement warning
MIN_WARN_WEIGHT = 0.01


@dataclass
class ExplorationModes:
    """The modes of one exploration's final population.

    Attributes
    ----------
    labels : ndarray of int, shape (n,)
        The mode of each walker (-1: a walker of negligible weight).
    tops : ndarray, shape (k, dim)
    scales : ndarray, shape (k, dim)
        Weighted standard deviation of each mode's walkers.
    weights, weight_se : ndarray, shape (k,)
        Importance weight of each mode and its genealogy standard error.
    first_seen : ndarray, shape (k,)
        The ``beta`` at which each mode was first a stratum of its own.
    """

    labels: np.ndarray
    tops: np.ndarray
    scales: np.ndarray
    weights: np.ndarray
    weight_se: np.ndarray
    first_seen: np.ndarray


def assign_modes(X: np.ndarray, tops: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The mode of each row of ``X``: the most likely under a normal per mode (equal weights).

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flow_sampler.census import assign_modes
    >>> tops, scales = np.array([[0.0], [4.0]]), np.array([[2.0], [0.2]])
    >>> assign_modes(np.array([[3.0], [3.9]]), tops, scales).tolist()
    [0, 1]
    """
    X = np.atleast_2d(X)
    z = (X[:, None, :] - tops[None]) / scales[None]
    return np.argmin((z * z).sum(-1) + 2 * np.log(scales).sum(-1)[None], axis=1)


def _genealogy_se(log_weights: np.ndarray, ancestors: np.ndarray, indicator: np.ndarray,
                  resamplings: int) -> float:
    """Chan & Lai's standard error of a weighted share, grouped by ancestor at ``beta = 0``."""
    n = log_weights.shape[0]
    w = np.exp(log_weights - logsumexp(log_weights))
    share = float(w @ indicator)
    by_eve = np.bincount(ancestors, weights=w * (indicator - share), minlength=n)
    var = (n / (n - 1.0)) ** (resamplings + 1) * float(np.sum(by_eve**2))
    return float(math.sqrt(max(var, share * (1 - share) / n)))


def first_seen_beta(
    strata: list[tuple[float, np.ndarray, np.ndarray]], tops: np.ndarray, scale: np.ndarray
) -> np.ndarray:
    """When each final mode first was a stratum of its own, tracing the strata back in ``beta``.

    Each mode follows, back through the temperatures, the nearest stratum
    (scaled distance). Where two modes' tracks reach the same stratum, the
    one nearer to it keeps the track and the other was first seen at the
    temperature after.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flow_sampler.census import first_seen_beta
    >>> strata = [(0.1, np.array([[0.0]]), np.ones(1)),
    ...           (0.5, np.array([[0.0], [5.0]]), np.ones(2) / 2),
    ...           (1.0, np.array([[0.0], [5.0]]), np.ones(2) / 2)]
    >>> first_seen_beta(strata, np.array([[0.0], [5.0]]), np.ones(1)).tolist()
    [0.1, 0.5]
    """
    k = tops.shape[0]
    seen = np.ones(k)
    if not strata:
        return seen
    pos = tops.copy()
    alive = np.ones(k, dtype=bool)
    for beta, reps, _ in reversed(strata):
        if not alive.any():
            break
        d2 = (((pos[:, None, :] - reps[None]) / scale) ** 2).sum(-1)
        nearest = np.argmin(d2, axis=1)
        for j in np.unique(nearest[alive]):
            share = np.flatnonzero(alive & (nearest == j))
            keep = share[np.argmin(d2[share, j])]
            for m in share:
                if m != keep:
                    alive[m] = False
        seen[alive] = beta
        pos[alive] = reps[nearest[alive]]
    return seen


def exploration_modes(density: LogDensity, ex: Exploration) -> ExplorationModes:
    """Group the final walkers of ``ex`` by the mode of ``density`` they climb to.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler.census import exploration_modes
    >>> from pymc_ext.flow_sampler.reference import default_reference
    >>> from pymc_ext.flow_sampler.tempering import explore_tempering
    >>> lp = lambda X: -0.5 * ((X - 3) ** 2).sum(-1)
    >>> d = FunctionLogDensity(2, lambda x: lp(x[None])[0], lambda x: 3 - x, lp,
    ...                        lambda X: 3 - X)
    >>> ex = explore_tempering(d, default_reference(d, 5.0), n_walkers=128, random_seed=0,
    ...                        progressbar=False)
    >>> m = exploration_modes(d, ex)
    >>> np.round(m.tops, 2).tolist(), m.weights.tolist()
    ([[3.0, 3.0]], [1.0])
    """
    w = np.exp(ex.log_weights - logsumexp(ex.log_weights))
    n = w.shape[0]
    spread = np.sqrt(np.maximum(w @ (ex.position - w @ ex.position) ** 2, 1e-12))
    # Walkers of negligible weight (a jump to beta = 1 leaves many) do not make a mode found.
    live = w * n > NEGLIGIBLE_WEIGHT
    live_labels, tops, _ = cluster_walkers(density, ex.position[live], spread, tol=2.0,
                                           iters=50)
    if tops.shape[0] > 1:
        # The batch ascent stops after 50 steps, so on a curved mode (gp_pois_regr) its ends
        # lie apart along a ridge, with dips on the straight segments between them: merge
        # the groups whose ends L-BFGS climbs to one top.
        groups, reps = mode_groups(density, tops)
        live_labels = groups[live_labels]
        tops = tops[reps]
    labels = np.full(n, -1, dtype=np.int64)
    labels[live] = live_labels
    k = tops.shape[0]
    weights = np.bincount(live_labels, weights=w[live], minlength=k)
    scales = np.ones((k, density.dim))
    se = np.zeros(k)
    for j in range(k):
        sel = labels == j
        wj = w[sel] / max(weights[j], 1e-300)
        scales[j] = np.sqrt(np.maximum(wj @ (ex.position[sel] - tops[j]) ** 2, 1e-12))
        se[j] = _genealogy_se(ex.log_weights, ex.ancestors, sel.astype(float), ex.resamplings)
    first = first_seen_beta(ex.strata, tops, spread)
    return ExplorationModes(labels, tops, scales, weights / weights.sum(), se, first)


@dataclass
class CensusMode:
    """One mode of the census (see :class:`ModeCensus`).

    Attributes
    ----------
    location : list of float
        Its top (unconstrained space).
    scale : list of float
        Standard deviations of its walkers.
    found_by : list of int
        The explorations that found it.
    exploration_weight, exploration_weight_se : list of float
        Per exploration: its importance weight at ``beta = 1`` (0 where that
        exploration missed it) and the genealogy standard error.
    first_seen_beta : float
        The smallest ``beta`` at which an exploration saw it as a mode of its own.
    weight, weight_se : float
        Share of the production draws nearest it, with its Monte Carlo error
        (nan before production).
    share_per_exploration, share_se_per_exploration : list of float
        The same share among the chains of each exploration's flow, with its
        Monte Carlo error.
    laplace_log_mass : float
        ``log`` of its mass by the Laplace approximation at its top (``log w``
        for a normal component of a normalised density; ``-inf`` where the top
        is not a proper maximum).
    flow_share : float
        Share of the production flow's draws nearest it (nan before the flow).
    covered : bool
        Whether the flow puts at least a tenth of the mode's weight on it.
    """

    location: list[float]
    scale: list[float]
    found_by: list[int]
    exploration_weight: list[float]
    exploration_weight_se: list[float]
    first_seen_beta: float
    weight: float = float("nan")
    weight_se: float = float("nan")
    share_per_exploration: list[float] = field(default_factory=list)
    share_se_per_exploration: list[float] = field(default_factory=list)
    laplace_log_mass: float = float("nan")
    flow_share: float = float("nan")
    covered: bool = True


@dataclass
class ModeCensus:
    """Every mode the explorations found, the log evidence, and what disagrees.

    In ``sample_stats.attrs["mode_census"]`` of a ``flow_mcmc`` run (as JSON)
    and on the adaptation (``FlowMCMCAdaptation.census``).

    Attributes
    ----------
    modes : list of CensusMode
    log_evidence, log_evidence_se : float
        ``log Z``: the mean over explorations, and the larger of its genealogy
        error and the spread between explorations.
    log_evidence_per_exploration : list of float
    explorations : int
    temperatures : list of int
        Temperature steps each exploration took.
    reached_target : list of bool
        False where an exploration ran out of temperature budget.

    Examples
    --------
    >>> from pymc_ext.flow_sampler.census import CensusMode, ModeCensus
    >>> c = ModeCensus([CensusMode([0.0], [1.0], [0, 1], [1.0, 1.0], [0.0, 0.0], 0.01)],
    ...                0.0, 0.1, [0.0, 0.0], 2, [10, 11], [True, True])
    >>> c.n_modes, c.to_json()[:10]
    (1, '{"modes": ')
    """

    modes: list[CensusMode]
    log_evidence: float
    log_evidence_se: float
    log_evidence_per_exploration: list[float]
    explorations: int
    temperatures: list[int]
    reached_target: list[bool]

    @property
    def n_modes(self) -> int:
        """Number of modes."""
        return len(self.modes)

    @property
    def tops(self) -> np.ndarray:
        """Mode locations, shape ``(k, dim)``."""
        return np.asarray([m.location for m in self.modes])

    @property
    def scales(self) -> np.ndarray:
        """Mode scales, shape ``(k, dim)``."""
        return np.asarray([m.scale for m in self.modes])

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)

    def to_json(self) -> str:
        """``json.dumps`` of :meth:`to_dict` (NaN written as ``NaN``)."""
        return json.dumps(self.to_dict())


def build_census(
    density: LogDensity, explorations: list[Exploration], found: list[ExplorationModes]
) -> ModeCensus:
    """Merge the modes of several explorations (no barrier between two tops: one mode).

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler.census import build_census, exploration_modes
    >>> from pymc_ext.flow_sampler.reference import default_reference
    >>> from pymc_ext.flow_sampler.tempering import explore_tempering
    >>> lp = lambda X: -0.5 * (X ** 2).sum(-1) - np.log(2 * np.pi)
    >>> d = FunctionLogDensity(2, lambda x: lp(x[None])[0], lambda x: -x, lp, lambda X: -X)
    >>> exs = [explore_tempering(d, default_reference(d, 5.0), n_walkers=128, random_seed=s,
    ...                          progressbar=False) for s in (0, 1)]
    >>> census = build_census(d, exs, [exploration_modes(d, e) for e in exs])
    >>> census.n_modes, census.modes[0].found_by, bool(abs(census.log_evidence) < 0.5)
    (1, [0, 1], True)
    """
    n_ex = len(explorations)
    modes: list[CensusMode] = []
    for e, fm in enumerate(found):
        for j in np.argsort(-fm.weights):
            top = fm.tops[j]
            match = next((m for m in modes if same_mode(density, np.asarray(m.location), top)),
                         None)
            if match is None or e in match.found_by:
                match = CensusMode(top.tolist(), fm.scales[j].tolist(), [], [0.0] * n_ex,
                                   [0.0] * n_ex, float(fm.first_seen[j]))
                modes.append(match)
            match.found_by.append(e)
            match.exploration_weight[e] += float(fm.weights[j])
            match.exploration_weight_se[e] = float(
                math.hypot(match.exploration_weight_se[e], fm.weight_se[j]))
            match.first_seen_beta = min(match.first_seen_beta, float(fm.first_seen[j]))
    modes.sort(key=lambda m: -float(np.mean(m.exploration_weight)))
    log_z = np.array([ex.log_evidence for ex in explorations])
    se = np.array([ex.log_evidence_se for ex in explorations])
    spread = float(log_z.std(ddof=1)) if n_ex > 1 else 0.0
    return ModeCensus(
        modes=modes,
        log_evidence=float(log_z.mean()),
        log_evidence_se=float(max(math.sqrt(np.sum(se**2)) / n_ex, spread / math.sqrt(n_ex))),
        log_evidence_per_exploration=log_z.tolist(),
        explorations=n_ex,
        temperatures=[ex.n_temperatures for ex in explorations],
        reached_target=[bool(ex.reached_target) for ex in explorations],
    )


def _share_and_se(indicator: np.ndarray) -> tuple[float, float]:
    """Mean of a (chain, draw) indicator and its Monte Carlo error (bulk ESS)."""
    from arviz_stats.base import array_stats

    p = float(indicator.mean())
    if indicator.shape[1] < 4 or p in (0.0, 1.0):
        return p, float(math.sqrt(max(p * (1 - p), 1e-4) / max(indicator.size, 1)))
    ess = float(array_stats.ess(indicator.astype(float), chain_axis=0, draw_axis=1))
    ess = ess if np.isfinite(ess) and ess > 0 else 1.0
    return p, float(math.sqrt(max(p * (1 - p), 1e-4) / ess))


def production_shares(census: ModeCensus, draws: np.ndarray, groups: np.ndarray) -> None:
    """Fill in each mode's production weight (with MC error) and its share per exploration.

    Parameters
    ----------
    census : ModeCensus
        Updated in place.
    draws : ndarray, shape (chains, draws, dim)
    groups : ndarray of int, shape (chains,)
        The exploration whose flow each chain used.
    """
    labels = assign_modes(draws.reshape(-1, draws.shape[-1]), census.tops, census.scales)
    labels = labels.reshape(draws.shape[:2])
    for k, mode in enumerate(census.modes):
        ind = labels == k
        mode.weight, mode.weight_se = _share_and_se(ind)
        per = [_share_and_se(ind[groups == e]) if np.any(groups == e)
               else (float("nan"), float("nan")) for e in range(census.explorations)]
        mode.share_per_exploration = [p for p, _ in per]
        mode.share_se_per_exploration = [se for _, se in per]


def laplace_masses(
    density: LogDensity, census: ModeCensus
) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
    """Climb each mode to its top (L-BFGS) and fill in its Laplace log mass.

    The modes' Laplace shares are a check on the production weights that
    does not depend on the flow (:mod:`pymc_ext.flow_sampler.disagreement`).

    Returns
    -------
    list of (top, covariance)
        Per mode, the converged top (``None`` where the climb did not
        converge) and its Laplace covariance (``None`` where it is not a
        proper maximum).
    """
    out = []
    for mode in census.modes:
        top, mode.laplace_log_mass, cov = climbed_laplace(density, mode.location)
        out.append((top, cov))
    return out


def laplace_shares(census: ModeCensus) -> np.ndarray:
    """The modes' Laplace masses, normalised over the modes (nan where any is not finite)."""
    lm = np.array([m.laplace_log_mass for m in census.modes], dtype=float)
    if lm.size == 0 or not np.all(np.isfinite(lm)):
        return np.full(lm.size, np.nan)
    return np.exp(lm - logsumexp(lm))


def mode_weight(mode: CensusMode) -> float:
    """The mode's production weight, or (before production) its largest exploration weight."""
    return float(mode.weight) if np.isfinite(mode.weight) else max(mode.exploration_weight)


def flow_shares(census: ModeCensus, flow_draws: np.ndarray | None = None) -> None:
    """Fill in the share of the flow's draws nearest each mode, and whether it covers it.

    Without ``flow_draws`` only ``covered`` is worked out again (after
    :func:`production_shares` gave the modes their production weights).
    """
    if flow_draws is not None:
        labels = assign_modes(flow_draws, census.tops, census.scales)
        for k, mode in enumerate(census.modes):
            mode.flow_share = float(np.mean(labels == k))
    for mode in census.modes:
        ref = mode_weight(mode)
        mode.covered = bool(mode.flow_share >= 0.1 * ref or ref < MIN_WARN_WEIGHT)
