"""When the mode census says the answer could be wrong: the explorations disagree, the flow
misses a mode, or an exploration ran out of temperatures (:func:`census_warnings`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import logsumexp

from pymc_ext.flow_sampler.census import (
    MIN_WARN_WEIGHT,
    CensusMode,
    ModeCensus,
    assign_modes,
    laplace_shares,
    mode_weight,
)
from pymc_ext.flow_sampler.tempering import Exploration

__all__ = [
    "DISAGREE_ABS",
    "DISAGREE_Z",
    "LAPLACE_EVIDENCE_RATIO",
    "LAPLACE_RATIO",
    "POPULATION_Z",
    "MISSED_MODE_NATS",
    "census_warnings",
    "missed_mode_warnings",
    "population_warnings",
    "settle_shortfall",
]

#: shares of two explorations' chains disagree beyond this many standard errors ...
DISAGREE_Z = 4.0
#: ... and by at least this much
DISAGREE_ABS = 0.03
#: a production weight below its Laplace share divided by this (and 0.05 below it) warns
LAPLACE_RATIO = 4.0
#: an exploration's within-mode mean this many within-mode sds from production's warns
POPULATION_Z = 0.5
#: a production draw this many nats above the highest known mode's top is in another mode
MISSED_MODE_NATS = 1.0
#: ... unless the density rises to it from a known top dipping by at most this (a funnel)
JOINED_DIP_NATS = 0.1
#: the modes' Laplace masses above this many times the tempering's evidence warn
LAPLACE_EVIDENCE_RATIO = 3.0


def _where(mode: CensusMode) -> str:
    loc = np.asarray(mode.location)
    head = ", ".join(f"{v:.3g}" for v in loc[:3]) + (", ..." if loc.size > 3 else "")
    return f"[{head}]"


_WHAT_TO_TRY = (
    "What to try: more tempering walkers (tempering_walkers), smaller temperature steps "
    "(tempering_ess closer to 1), more explorations, or another reference_scale; and treat "
    "the mode weights as uncertain until the explorations agree."
)


def census_warnings(
    census: ModeCensus, budget: int | None = None, stage: str = "adaptation"
) -> list[str]:
    """What in the census says the answer could be wrong, each with what to try.

    At ``stage="adaptation"``:

    - the modes' Laplace masses add up to more than
      :data:`LAPLACE_EVIDENCE_RATIO` times the tempering's evidence (the
      walkers missed mass near a top);
    - an exploration ran out of temperatures (``budget``) before ``beta = 1``;
    - a mode that one exploration found and another did not, with an
      exploration weight of at least 0.01.

    At ``stage="production"`` (after :func:`production_shares` and
    :func:`flow_shares`):

    - a mode missed by an exploration whose exploration weights were all
      below 0.01 but whose production weight is not (tempering found it late
      and weighed it low; the exact moves gave it its weight);
    - a mode whose share differs between the chains of two explorations' flows
      beyond Monte Carlo error (by 4 standard errors and at least 0.03);
    - a mode the production flow puts less than a tenth of its weight on;
    - a mode whose production weight is below a quarter of its share by the
      modes' Laplace approximations (and 0.05 below it): the chains may be
      missing it, whatever the flow says.

    Examples
    --------
    >>> from pymc_ext.flow_sampler.census import CensusMode, ModeCensus
    >>> from pymc_ext.flow_sampler.disagreement import census_warnings
    >>> a = CensusMode([0.0], [1.0], [0, 1], [0.6, 0.6], [0.0, 0.0], 0.01)
    >>> b = CensusMode([8.0], [0.3], [1], [0.0, 0.4], [0.0, 0.0], 0.2)
    >>> msgs = census_warnings(ModeCensus([a, b], 0.0, 0.1, [0.0, 0.0], 2, [9, 9],
    ...                                   [True, True]))
    >>> msgs[0][:60]
    'Exploration 0 found no mode at [8] that exploration 1 found '
    """
    production = stage == "production"
    out = []
    laplace = laplace_shares(census) if census.n_modes > 1 else np.full(census.n_modes, np.nan)
    if not production:
        out += _evidence_shortfall(census)
        out += [
            f"Exploration {e} ran out of temperatures (tempering_max_steps={budget}) before "
            "beta = 1 and jumped there in one step, so it may have lost modes and its "
            "weights are unreliable. What to try: a larger tempering_max_steps, or a lower "
            "tempering_ess (larger steps)."
            for e, ok in enumerate(census.reached_target) if not ok
        ]
    for mode, lap in zip(census.modes, laplace, strict=True):
        w = mode_weight(mode)
        missing = [e for e in range(census.explorations) if e not in mode.found_by]
        early = max(mode.exploration_weight) >= MIN_WARN_WEIGHT
        if missing and w >= MIN_WARN_WEIGHT and early != production:
            out.append(
                f"Exploration {', '.join(map(str, missing))} found no mode at {_where(mode)} "
                f"that exploration {', '.join(map(str, sorted(set(mode.found_by))))} found "
                f"(weight {w:.3f}): the explorations disagree on the modes, so a mode all of "
                f"them missed is possible too. {_WHAT_TO_TRY}"
            )
        if not production:
            continue
        out += _share_disagreement(mode)
        if np.isfinite(lap) and w < lap / LAPLACE_RATIO and lap - w > 0.05:
            out.append(
                f"The production chains put {w:.3f} of their draws in the mode at "
                f"{_where(mode)}, but its Laplace approximation holds {lap:.3f} of the modes' "
                "mass: the chains and the flow may be missing most of it. What to try: more "
                "adaptation rounds (n_rounds), more walkers (chains), a larger flow "
                "(flow_kwargs); check the mode's shape, as a Laplace mass is only a guide "
                "away from a normal."
            )
        if not mode.covered:
            out.append(
                f"The flow puts {mode.flow_share:.3f} of its mass on the mode at {_where(mode)}, "
                f"much less than its weight {w:.3f}: global moves rarely reach or leave it, so "
                "its weight may be off. What to try: more adaptation rounds (n_rounds), more "
                "walkers (chains), or a larger flow (flow_kwargs)."
            )
    return out


#: the header every evidence-shortfall message starts with
SHORTFALL_HEAD = "The modes' Laplace approximations hold"


def settle_shortfall(
    census: ModeCensus, messages: list[str], coverages: list[dict[str, Any]]
) -> tuple[list[str], list[str]]:
    """Re-check an evidence shortfall against the adapted flows' own evidence.

    The tempering's ``log Z`` is low when its walkers did not equilibrate
    (in a posterior correlated near +-1, say) as well as when they missed a
    heavy mode. Each adapted flow gives a second estimate, ``log mean(p / q)``
    over its draws, with the Pareto k of those weights: the ``log_z`` and
    ``pareto_k`` of its :func:`~pymc_ext.flow_sampler.coverage_check`. Where
    every flow's k is at most 0.7 (it covers the posterior) and the modes'
    Laplace masses are not far above its estimate, the mass is in the flows,
    so the shortfall is the walkers' alone: the warning becomes a note.
    Otherwise it stays.

    Returns
    -------
    (messages, notes)
    """
    shortfall = [m for m in messages if m.startswith(SHORTFALL_HEAD)]
    if not shortfall or not coverages:
        return messages, []
    for c in coverages:
        if not (c["pareto_k"] <= 0.7 and np.isfinite(c["log_z"])
                and not _evidence_shortfall(census, c["log_z"], 0.0)):
            return messages, []
    log_z = ", ".join(f"{c['log_z']:.4g}" for c in coverages)
    k = max(c["pareto_k"] for c in coverages)
    note = (f" Settled: the adapted flow's importance weights give log Z {log_z} (Pareto k "
            f"at most {k:.2f}), which the Laplace masses do not exceed: the flow holds that "
            "mass, so only the walkers' evidence was low.")
    return [m for m in messages if m not in shortfall], [m + note for m in shortfall]


def _evidence_shortfall(
    census: ModeCensus, log_evidence: float | None = None, log_evidence_se: float | None = None
) -> list[str]:
    """The modes' Laplace masses far above the evidence the walkers carried to ``beta = 1``.

    A Gaussian mode's Laplace mass is its mass, so the masses of the modes
    found add up to at most ``Z``. Far more (:data:`LAPLACE_EVIDENCE_RATIO`
    times, beyond three standard errors of ``log Z``) says the walkers missed
    mass near a top: a narrow, heavy mode that the climbs from the walkers
    reached but no walker populated (the climbs merge basins across shallow
    barriers), so its weight is missing from every estimate.
    """
    log_z = census.log_evidence if log_evidence is None else log_evidence
    se = census.log_evidence_se if log_evidence_se is None else log_evidence_se
    lm = np.array([m.laplace_log_mass for m in census.modes], dtype=float)
    ok = np.isfinite(lm)
    if not ok.any() or not np.isfinite(log_z):
        return []
    total = float(logsumexp(lm[ok]))
    limit = log_z + math.log(LAPLACE_EVIDENCE_RATIO) + 3 * se
    if not total > limit:
        return []
    mode = census.modes[int(np.flatnonzero(ok)[np.argmax(lm[ok])])]
    return [
        f"{SHORTFALL_HEAD} {_times(total - census.log_evidence)} "
        f"times the evidence the tempering carried to beta = 1 (log Z {census.log_evidence:.3g}"
        f" ± {census.log_evidence_se:.2g}), most of it at the top {_where(mode)}: the walkers "
        "missed mass near that top, as with a narrow, heavy mode beside a wide one that no "
        "walker reached. The mode weights, and the flow fitted to the walkers, are not to be "
        "trusted (a mode far from normal can also make its Laplace mass wrong). What to try: "
        "more tempering walkers (tempering_walkers), smaller temperature steps (tempering_ess "
        "closer to 1), more explorations; compare the census between seeds."
    ]


def _times(log_ratio: float) -> str:
    """``exp(log_ratio)`` for a message, as ``e^x`` where it would overflow a float."""
    return f"{math.exp(log_ratio):.3g}" if log_ratio < 700 else f"e^{log_ratio:.0f}"


def _share_disagreement(mode: CensusMode) -> list[str]:
    shares = np.asarray(mode.share_per_exploration, dtype=float)
    ses = np.asarray(mode.share_se_per_exploration, dtype=float)
    ok = np.isfinite(shares)
    if ok.sum() < 2:
        return []
    idx = np.flatnonzero(ok)
    a, b = idx[np.argmin(shares[ok])], idx[np.argmax(shares[ok])]
    gap = shares[b] - shares[a]
    if gap <= max(DISAGREE_ABS, DISAGREE_Z * math.hypot(ses[a], ses[b])):
        return []
    return [
        f"The chains of exploration {a}'s flow put {shares[a]:.3f} (± {ses[a]:.3f}) of their "
        f"draws in the mode at {_where(mode)}, those of exploration {b}'s flow "
        f"{shares[b]:.3f} (± {ses[b]:.3f}): the explorations disagree on its weight beyond "
        f"Monte Carlo error (R-hat shows it too). {_WHAT_TO_TRY}"
    ]


def population_warnings(
    census: ModeCensus, explorations: list[Exploration], draws: np.ndarray
) -> list[str]:
    """Explorations whose walkers at ``beta = 1`` do not look like the production draws.

    Within each mode, the walkers' weighted mean is compared with the
    production draws' (in the draws' within-mode sd), and so is their
    spread. The production chains are exact; an exploration whose local
    moves never reached part of the posterior (a funnel's neck) shows here,
    and then its log evidence and weights are not to be trusted.

    Parameters
    ----------
    census : ModeCensus
    explorations : list of Exploration
    draws : ndarray, shape (n, dim)
        Production draws.

    Returns
    -------
    list of str
    """
    out = []
    labels = assign_modes(draws, census.tops, census.scales)
    for e, ex in enumerate(explorations):
        w = np.exp(ex.log_weights - logsumexp(ex.log_weights))
        walker_labels = assign_modes(ex.position, census.tops, census.scales)
        for k, mode in enumerate(census.modes):
            mine, theirs = draws[labels == k], walker_labels == k
            if mine.shape[0] < 50 or w[theirs].sum() < 1e-3 or theirs.sum() < 10:
                continue
            wk = w[theirs] / w[theirs].sum()
            mean, sd = mine.mean(0), mine.std(0) + 1e-300
            m = wk @ ex.position[theirs]
            s = np.sqrt(wk @ (ex.position[theirs] - m) ** 2)
            z, ratio = np.abs(m - mean) / sd, s / sd
            i = int(np.argmax(np.maximum(z / POPULATION_Z, np.abs(np.log(ratio)) / np.log(1.5))))
            if z[i] > POPULATION_Z or not 1 / 1.5 < ratio[i] < 1.5:
                out.append(
                    f"Exploration {e}'s walkers in the mode at {_where(mode)} have mean "
                    f"{m[i]:.3g} and sd {s[i]:.3g} in coordinate {i}, the production draws "
                    f"{mean[i]:.3g} and {sd[i]:.3g}: the tempering's local moves did not reach "
                    "part of the posterior (a funnel's neck, say), so its log evidence "
                    f"({ex.log_evidence:.3g}) and weights are not to be trusted. The production "
                    "draws are exact MCMC; check their R-hat."
                )
                break
    return out


def _joined_to_known(density: Any, top: np.ndarray, known_tops: np.ndarray) -> bool:
    """Whether the density only rises from a known mode's top to ``top`` (no dip on the way).

    Then that mode's top was short of its maximum (a funnel's neck, where the
    density grows towards a point with no volume), not a mode the explorations
    missed. The segment may dip by :data:`JOINED_DIP_NATS` at most (a narrow
    heavy mode 2.5 sd beside a wide one dips by 1.4 nats, and is a missed mode).
    """
    from pymc_ext.flow_sampler.modes import same_mode

    return any(same_mode(density, top, t, tol=JOINED_DIP_NATS) for t in np.atleast_2d(known_tops))


def missed_mode_warnings(
    density: Any, tops: np.ndarray, draws: np.ndarray, lp: np.ndarray, scale: np.ndarray
) -> tuple[list[str], np.ndarray]:
    """Production draws above every known mode's top: a mode the explorations missed.

    Inside a mode's basin no point is higher than its top, so a draw whose log
    density exceeds the highest known top (climbed further first, so that a
    top short of its maximum is no alarm; by :data:`MISSED_MODE_NATS`) lies
    in the basin of a mode nobody found. It happens when a mode dominates
    only near ``beta = 1``: a narrow, heavy mode beside a wide one in many
    dimensions (the wide one holds the walkers at every temperature below
    1), which the exact local moves of production can still fall into. The
    chains that do cannot leave it by the flow, and the mode weights are
    wrong. A top the density rises to from a known mode's top, with no dip on
    the way, is that mode, higher than the adaptation got (a funnel's neck:
    high density, no volume), and gives no warning.

    Parameters
    ----------
    density : LogDensity
    tops : ndarray, shape (k, dim)
        The modes the adaptation knows.
    draws : ndarray, shape (chains, draws, dim)
    lp : ndarray, shape (chains, draws)
        Log density of each draw.
    scale : ndarray, shape (dim,)
        Step scale for the climb from the highest draw.

    Returns
    -------
    (list of str, ndarray)
        The warning (empty when no draw is above) and the new top found by
        climbing from the highest draw (shape ``(0, dim)`` when none).

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler.disagreement import missed_mode_warnings
    >>> def lp(X):        # a wide mode at 0 and a narrow, higher one at 4
    ...     return np.logaddexp(-0.5 * (X ** 2).sum(-1), 3 - 2 * ((X - 4) ** 2).sum(-1))
    >>> def grad(X):
    ...     a, b = -0.5 * (X ** 2).sum(-1), 3 - 2 * ((X - 4) ** 2).sum(-1)
    ...     r = np.exp(b - np.logaddexp(a, b))[:, None]
    ...     return (1 - r) * -X + r * -4 * (X - 4)
    >>> d = FunctionLogDensity(1, lambda x: lp(x[None])[0], lambda x: grad(x[None])[0], lp, grad)
    >>> draws = np.array([[[0.1], [-0.5]], [[3.9], [4.2]]])    # chain 1 fell into it
    >>> msgs, new = missed_mode_warnings(d, np.zeros((1, 1)), draws, lp(draws), np.ones(1))
    >>> msgs[0][:38], np.round(new, 2).tolist()
    ('Production chain 1 reached log density', [[4.0]])
    """
    from pymc_ext.flow_sampler.strata import ascend_batch

    dim = draws.shape[-1]
    none = [], np.zeros((0, dim))
    tops = np.asarray(tops, dtype=float)
    if tops.shape[0] == 0 or lp.size == 0:
        return none
    lp = np.asarray(lp)
    # climbing only raises the tops: nothing above them as they are, nothing to climb for
    if not lp.max() > float(np.max(density.logp_batch(tops))) + MISSED_MODE_NATS:
        return none
    # the known tops climbed further first: a top short of its mode's maximum is no alarm
    known_tops, top_lp = ascend_batch(density, tops, scale, iters=200)
    best = float(np.max(top_lp))
    above = lp > best + MISSED_MODE_NATS
    if not above.any():
        return none
    chains = np.flatnonzero(above.any(axis=1))
    c, t = np.unravel_index(int(np.argmax(np.where(above, lp, -np.inf))), lp.shape)
    top, top_lp = ascend_batch(density, draws[c, t][None], scale, iters=200)
    if _joined_to_known(density, top[0], known_tops):
        return none
    share = float(above.mean())
    names = ", ".join(map(str, chains[:8])) + (", ..." if chains.size > 8 else "")
    head = ", ".join(f"{v:.3g}" for v in top[0][:3]) + (", ..." if dim > 3 else "")
    msg = (
        f"Production chain{'s' if chains.size > 1 else ''} {names} reached log density "
        f"{float(lp[c, t]):.3g}, {float(lp[c, t]) - best:.3g} nats above the top of the highest "
        f"mode the adaptation found ({best:.3g}); a climb from there ends at [{head}] (log "
        f"density {float(top_lp[0]):.3g}). That is a mode the explorations missed: it is not "
        f"in the mode census, the flow does not cover it, and the {share:.1%} of draws in it "
        "are far from its weight. The mode weights are wrong. What to try: more tempering "
        "walkers (tempering_walkers) and smaller temperature steps (tempering_ess closer to "
        "1), or the other reference (reference='pathfinder'); a mode that dominates only near "
        "beta = 1 (narrow and heavy beside a wide one) can stay hidden from them all. Treat "
        "the weights as unknown until a run finds it in its census."
    )
    return [msg], top
