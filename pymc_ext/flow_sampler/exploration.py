"""``explore="tempering"``: independent tempering explorations, their seeds and their census.

:func:`explore` builds the broad reference (:func:`tempering_reference`),
runs ``explorations`` independent tempering runs
(:func:`~pymc_ext.flow_sampler.tempering.explore_tempering`, each on its own
child random stream), groups each final population into modes
(:func:`~pymc_ext.flow_sampler.census.exploration_modes`), merges them into a
:class:`~pymc_ext.flow_sampler.census.ModeCensus`, and turns each exploration
into a :class:`~pymc_ext.flows.SeedResult` (:func:`seed_from_exploration`)
that seeds and trains that exploration's own flow. :class:`MixtureFlow` is
the equal mixture of those flows, the global proposal of
:class:`~pymc_ext.step_methods.flow.FlowMC` (each ``pm.sample`` chain cannot
know its index, so it cannot pick one flow).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import logsumexp

from pymc_ext.blocks.covariance import pooled_covariance
from pymc_ext.blocks.random import child_rng
from pymc_ext.density import LogDensity
from pymc_ext.flow_sampler.census import (
    ExplorationModes,
    ModeCensus,
    build_census,
    exploration_modes,
)
from pymc_ext.flow_sampler.config import FlowMCMCConfig
from pymc_ext.flow_sampler.reference import GaussianReference, default_reference
from pymc_ext.flow_sampler.result import FlowMCMCWarning
from pymc_ext.flow_sampler.tempering import Exploration, explore_tempering
from pymc_ext.flows import SeedResult, pathfinder_seed
from pymc_ext.flows.seeding import SeedMethod

__all__ = [
    "MixtureFlow",
    "TemperingResult",
    "explore",
    "seed_from_exploration",
    "tempering_reference",
    "tempering_seed",
]

#: every mode of an exploration gets at least this share, split evenly, of its seed draws
SEED_MODE_FLOOR = 0.25


def tempering_reference(
    density: LogDensity, cfg: FlowMCMCConfig, rng: np.random.Generator
) -> GaussianReference:
    """The reference ``q0``: a broad Gaussian at the initial point (and Pathfinder's centres).

    With ``reference="pathfinder"`` (and ``num_paths > 0``) overdispersed
    multi-path Pathfinder runs once (:func:`~pymc_ext.flows.pathfinder_seed`),
    and each path's centre adds a Gaussian three times its spread; by default
    only the broad Gaussian (``reference_scale``) is used.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler.config import FlowMCMCConfig
    >>> from pymc_ext.flow_sampler.exploration import tempering_reference
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x)
    >>> q0 = tempering_reference(d, FlowMCMCConfig(), np.random.default_rng(0))
    >>> q0.scales.tolist()
    [[5.0, 5.0]]
    """
    if cfg.reference_scale is not None:
        scale = cfg.reference_scale
    else:
        scale = _finite_reference_scale(density, 2.5 * cfg.init_scale)
    if cfg.reference != "pathfinder" or not cfg.num_paths:
        return default_reference(density, scale)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a failed path only means one Gaussian fewer
        seed = pathfinder_seed(density, num_paths=cfg.num_paths, num_draws=64 * cfg.num_paths,
                               random_seed=rng, init_scale=cfg.init_scale)
    return default_reference(density, scale, seed.centers, seed.path_scales)


#: the default reference is halved until at least this share of its draws has a finite density
MIN_FINITE_REFERENCE = 0.05


def _finite_reference_scale(density: LogDensity, scale: float, halvings: int = 4) -> float:
    """The default reference scale, halved (at most ``halvings`` times) to overlap the support.

    A broad Gaussian can miss a posterior's support almost everywhere: on
    gp_pois_regr (13 parameters, an exponentiated GP) not one of 1024 draws
    of ``N(x0, 5^2 I)`` had a finite log density, and tempering could not
    start. 256 draws (a fixed seed: the run's random stream is untouched) are
    checked per scale; a smaller scale is used, with a warning, where fewer
    than ``MIN_FINITE_REFERENCE`` of them are finite.
    """
    first = scale
    for _ in range(halvings + 1):
        x = default_reference(density, scale).sample(256, np.random.default_rng(0))
        with np.errstate(all="ignore"):
            finite = float(np.mean(np.isfinite(density.logp_batch(x))))
        if finite >= MIN_FINITE_REFERENCE:
            break
        scale /= 2.0
    else:
        return first  # nothing helped: let the tempering say so, with the user's scale
    if scale != first:
        warnings.warn(
            f"The tempering reference N(x0, {first:g}^2) had a finite log density at under "
            f"{MIN_FINITE_REFERENCE:.0%} of its draws, so its scale is {scale:g} instead. A "
            "narrower reference can miss modes far from the initial point; pass "
            "reference_scale to choose it, or reference='pathfinder'.",
            FlowMCMCWarning, stacklevel=3,
        )
    return scale


def seed_from_exploration(
    ex: Exploration, modes: ExplorationModes, num_draws: int, rng: np.random.Generator
) -> SeedResult:
    """Seed draws from an exploration's walkers: by weight, with a floor per mode.

    Mode ``k`` of weight ``W_k`` gets ``max(SEED_MODE_FLOOR / K, W_k)``
    (renormalised) of the draws, resampled from its walkers by their
    weights: a mode the exploration found but weighed too low still gets
    walkers, and the flow MCMC's exact moves fix its weight.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler.census import exploration_modes
    >>> from pymc_ext.flow_sampler.exploration import seed_from_exploration
    >>> from pymc_ext.flow_sampler.reference import default_reference
    >>> from pymc_ext.flow_sampler.tempering import explore_tempering
    >>> d = FunctionLogDensity(1, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x)
    >>> ex = explore_tempering(d, default_reference(d, 5.0), n_walkers=64, random_seed=0,
    ...                        progressbar=False)
    >>> seed = seed_from_exploration(ex, exploration_modes(d, ex), 200, np.random.default_rng(0))
    >>> seed.draws.shape, str(seed.method)
    ((200, 1), 'tempering')
    """
    k = modes.tops.shape[0]
    share = np.maximum(modes.weights / max(modes.weights.sum(), 1e-300), SEED_MODE_FLOOR / k)
    share /= share.sum()
    counts = np.floor(share * num_draws).astype(int)
    counts[np.argmax(share)] += num_draws - counts.sum()
    chunks, index = [], []
    for j in range(k):
        members = np.flatnonzero(modes.labels == j)
        lw = ex.log_weights[members]
        if members.size == 0 or counts[j] == 0 or not np.any(np.isfinite(lw)):
            continue
        p = np.exp(lw - logsumexp(lw))
        chunks.append(ex.position[rng.choice(members, size=counts[j], p=p / p.sum())])
        index.append(np.full(counts[j], j))
    draws, path_index = np.concatenate(chunks), np.concatenate(index)
    order = rng.permutation(draws.shape[0])
    draws, path_index = draws[order], path_index[order]
    var = np.average(modes.scales**2, axis=0, weights=np.bincount(path_index, minlength=k) + 1e-9)
    return SeedResult(
        draws=draws, path_index=path_index, centers=modes.tops.copy(),
        path_scales=modes.scales.copy(), mean=draws.mean(0), covariance=pooled_covariance(draws),
        within_variance=var, grad_evals=int(ex.grad_evals), method=SeedMethod.TEMPERING,
        path_ok=np.ones(k, dtype=bool),
    )


@dataclass
class TemperingResult:
    """What :func:`explore` found: the explorations, their modes and seeds, and the census."""

    explorations: list[Exploration]
    modes: list[ExplorationModes]
    seeds: list[SeedResult]
    census: ModeCensus
    reference: GaussianReference
    grad_evals: int


def explore(
    density: LogDensity, cfg: FlowMCMCConfig, rng: np.random.Generator, num_draws: int
) -> TemperingResult:
    """Run ``cfg.explorations`` independent tempering explorations and merge what they found.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler.config import FlowMCMCConfig
    >>> from pymc_ext.flow_sampler.exploration import explore
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x,
    ...                        logp_batch_fn=lambda X: -0.5 * (X * X).sum(1),
    ...                        grad_batch_fn=lambda X: -X)
    >>> cfg = FlowMCMCConfig(tempering_walkers=128, progressbar=False)
    >>> res = explore(d, cfg, np.random.default_rng(0), 256)
    >>> res.census.n_modes, len(res.seeds)
    (1, 2)
    """
    grad_before = int(density.grad_evals)
    reference = tempering_reference(density, cfg, child_rng(rng))
    explorations, found, seeds = [], [], []
    for _ in range(cfg.explorations):
        stream = child_rng(rng)
        ex = explore_tempering(
            density, reference, n_walkers=cfg.tempering_walkers, target_cess=cfg.tempering_ess,
            moves=cfg.tempering_moves, reference_moves=cfg.tempering_reference_moves,
            max_temperatures=cfg.tempering_max_steps, random_seed=stream,
            progressbar=cfg.progressbar,
        )
        fm = exploration_modes(density, ex)
        explorations.append(ex)
        found.append(fm)
        seeds.append(seed_from_exploration(ex, fm, num_draws, stream))
    census = build_census(density, explorations, found)
    return TemperingResult(explorations, found, seeds, census, reference,
                           int(density.grad_evals) - grad_before)


def tempering_seed(
    density: LogDensity,
    config: FlowMCMCConfig | None = None,
    *,
    random_seed: int | np.random.Generator | None = None,
    num_draws: int = 1024,
    **overrides: Any,
) -> SeedResult:
    """Seed draws from tempering explorations, pooled: a ``seed`` for any flow fit.

    For the warm starts that fit a flow from a seeding
    (:func:`pymc_ext.flows.flow_init`, and so ``WarmStartNUTS(init="flow")`` and
    ``pymc_ext.sample(warmstart="flow")`` through ``init_kwargs`` /
    ``warmstart_kwargs={"seed": ...}``): their flow then starts from every mode
    the explorations found, not only those Pathfinder's paths reach. The
    draws of ``explorations`` explorations are pooled (equal numbers).

    Parameters
    ----------
    density : LogDensity
        For a PyMC model, :func:`pymc_ext.log_density` of it (the ordering
        ``flow_init`` uses).
    config : FlowMCMCConfig, optional
        The tempering options (``tempering_*``, ``explorations``, ``reference_scale``).
    random_seed : int or Generator, optional
    num_draws : int
    **overrides
        Any ``FlowMCMCConfig`` field.

    Returns
    -------
    SeedResult

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler.exploration import tempering_seed
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x,
    ...                        logp_batch_fn=lambda X: -0.5 * (X * X).sum(1),
    ...                        grad_batch_fn=lambda X: -X)
    >>> seed = tempering_seed(d, tempering_walkers=128, random_seed=0, progressbar=False)
    >>> seed.draws.shape, str(seed.method)
    ((1024, 2), 'tempering')
    """
    from pymc_ext.flow_sampler.config import make_config

    cfg = make_config(config, overrides)
    rng = np.random.default_rng(random_seed)
    e = cfg.explorations
    per = [num_draws // e + (1 if i < num_draws % e else 0) for i in range(e)]
    found = explore(density, cfg, rng, num_draws=max(per))
    draws = np.concatenate([s.draws[:p] for s, p in zip(found.seeds, per, strict=True)])
    labels = np.concatenate([s.path_index[:p] + sum(len(t.centers) for t in found.seeds[:i])
                             for i, (s, p) in enumerate(zip(found.seeds, per, strict=True))])
    return SeedResult(
        draws=draws, path_index=labels,
        centers=np.concatenate([s.centers for s in found.seeds]),
        path_scales=np.concatenate([s.path_scales for s in found.seeds]),
        mean=draws.mean(0), covariance=pooled_covariance(draws),
        within_variance=np.mean([s.within_variance for s in found.seeds], axis=0),
        grad_evals=found.grad_evals, method=SeedMethod.TEMPERING,
        path_ok=np.ones(sum(len(s.centers) for s in found.seeds), dtype=bool),
        census=found.census,
    )


class MixtureFlow:
    """The equal mixture of frozen flows: ``q(x) = mean_e q_e(x)``, sampled component-wise.

    Parameters
    ----------
    flows : list of StandardizedFlow
        Frozen flows on the same space.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flows import build_flow
    >>> from pymc_ext.flow_sampler.exploration import MixtureFlow
    >>> a = build_flow(2, random_seed=0).frozen()
    >>> mix = MixtureFlow([a, a])
    >>> x, logq = mix.sample(5, np.random.default_rng(0))
    >>> bool(np.allclose(logq, a.log_prob_numpy(x), atol=1e-5))
    True
    """

    def __init__(self, flows: list[Any]) -> None:
        if not flows:
            raise ValueError("MixtureFlow needs at least one flow.")
        self.flows = list(flows)
        self.dim = int(flows[0].dim)
        self.config = flows[0].config

    def to(self, device: Any) -> MixtureFlow:
        """The mixture with every flow moved to ``device`` (as ``torch.nn.Module.to``)."""
        return MixtureFlow([f.to(device) for f in self.flows])

    def log_prob_numpy(self, X: np.ndarray) -> np.ndarray:
        """``log q`` at each row of ``X``."""
        parts = np.stack([f.log_prob_numpy(X) for f in self.flows])
        return logsumexp(parts, axis=0) - math.log(len(self.flows))

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` draws and their ``log q`` under the mixture."""
        comp = rng.integers(len(self.flows), size=int(n))
        x = np.empty((int(n), self.dim))
        for e, f in enumerate(self.flows):
            sel = comp == e
            if sel.any():
                x[sel] = f.sample(int(sel.sum()), rng)[0]
        return x, self.log_prob_numpy(x)
