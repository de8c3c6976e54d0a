"""The flow warm starts, seeded by tempering: :func:`explored_flow_init`.

``WarmStartNUTS(init="flow")``, ``pymc_ext.sample(warmstart="flow")`` and a
Stan program's ``CmdStanModel.sample(warmstart="flow")`` (there with
``warmstart_options={"explore": "tempering"}``: a Stan density is evaluated
one point at a time, which makes the explorations costly) fit a flow
(:func:`pymc_ext.flows.flow_init`) and start NUTS from its importance-resampled
draws. Seeded by Pathfinder's paths, that flow knows only the modes a path
climbs to, so every chain could start in one mode of several and look
converged. Seeded by tempering explorations (:func:`tempering_seed`, the
default here), the flow starts from every mode the explorations found, so
the chains start spread over them; and since NUTS cannot move between
separated modes, a census with more than one mode warns that the chains'
shares of the modes are not the posterior's weights (:func:`warn_if_multimodal`).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from pymc_ext.blocks.random import child_rng
from pymc_ext.density import LogDensity
from pymc_ext.flow_sampler.census import MIN_WARN_WEIGHT, ModeCensus, mode_weight
from pymc_ext.flow_sampler.exploration import tempering_seed
from pymc_ext.flow_sampler.result import FlowMCMCWarning
from pymc_ext.flows.init import FlowInitResult, flow_init

__all__ = ["FLOW_INIT_EXPLORE", "explored_flow_init", "mode_weights", "warn_if_multimodal"]

#: How a flow warm start finds the modes its flow is fitted to: tempering explorations
#: (the default), or Pathfinder's paths only (cheaper; can miss modes, silently).
FLOW_INIT_EXPLORE = ("tempering", "pathfinder")


def explored_flow_init(
    density: LogDensity,
    *,
    explore: str = "tempering",
    random_seed: int | np.random.Generator | None = None,
    progressbar: bool = True,
    tempering_options: dict[str, Any] | None = None,
    **flow_init_kwargs: Any,
) -> FlowInitResult:
    """:func:`~pymc_ext.flows.flow_init` seeded by tempering explorations; warns on several modes.

    Parameters
    ----------
    density : LogDensity
    explore : {"tempering", "pathfinder"}
        ``"tempering"``: the flow is fitted to the pooled walkers of
        independent tempering explorations (:func:`tempering_seed`);
        ``"pathfinder"``: to multi-path Pathfinder's draws (``flow_init``'s
        own seeding, cheaper, blind to modes no path reaches). Ignored when
        ``flow_init_kwargs`` has a ``seed``.
    random_seed : int or Generator, optional
    progressbar : bool
    tempering_options : dict, optional
        :class:`~pymc_ext.flow_sampler.FlowMCMCConfig` fields for the
        explorations (``tempering_walkers``, ``explorations``,
        ``reference_scale``, ...).
    **flow_init_kwargs
        Keywords of :func:`~pymc_ext.flows.flow_init` (``num_draws``,
        ``method``, ``flow_kwargs``, ...). Where the explorations found two or
        more modes, ``method`` defaults to ``"forward"``: the reverse-KL
        refinement of ``flow_init``'s default ``"both"`` is mode-seeking.

    Returns
    -------
    FlowInitResult
        ``grad_evals`` includes the explorations'; ``seed.census`` is their
        :class:`~pymc_ext.flow_sampler.ModeCensus`.

    Warns
    -----
    FlowMCMCWarning
        When the explorations found more than one mode (:func:`warn_if_multimodal`).

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler.explored_init import explored_flow_init
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x,
    ...                        logp_batch_fn=lambda X: -0.5 * (X * X).sum(1),
    ...                        grad_batch_fn=lambda X: -X)
    >>> res = explored_flow_init(d, random_seed=0, progressbar=False, num_draws=200,
    ...                          method="forward", tempering_options={"tempering_walkers": 128},
    ...                          flow_kwargs={"transforms": 2, "hidden_features": (16, 16)},
    ...                          forward_kwargs={"max_steps": 100})
    >>> res.draws.shape, str(res.seed.method), res.seed.census.n_modes
    ((200, 2), 'tempering', 1)
    """
    if explore not in FLOW_INIT_EXPLORE:
        raise ValueError(f"explore must be one of {FLOW_INIT_EXPLORE}; got {explore!r}.")
    rng = np.random.default_rng(random_seed)
    seed = flow_init_kwargs.pop("seed", None)
    seed_grads = 0
    if seed is None and explore == "tempering":
        options = {"progressbar": progressbar, **(tempering_options or {})}
        num_draws = max(1024, int(flow_init_kwargs.get("num_draws", 1000)))
        seed = tempering_seed(density, random_seed=child_rng(rng), num_draws=num_draws,
                              **options)
        seed_grads = int(seed.grad_evals)
    census = getattr(seed, "census", None)
    if census is not None and len(mode_weights(census)) >= 2:
        # reverse KL is mode-seeking: on a two-mode posterior it took the resampled draws'
        # share of one mode from 0.49 (forward KL alone, k 0.0) to 0.74 (k 1.3); truth 0.5
        flow_init_kwargs.setdefault("method", "forward")
    result = flow_init(density, random_seed=rng, progressbar=progressbar, seed=seed,
                       **flow_init_kwargs)
    result.grad_evals += seed_grads
    if census is not None:
        warn_if_multimodal(census, stacklevel=3)
    return result


def mode_weights(census: ModeCensus) -> list[float]:
    """The census modes' weights (:func:`~pymc_ext.flow_sampler.census.mode_weight`) of
    :data:`~pymc_ext.flow_sampler.census.MIN_WARN_WEIGHT` or more, largest first.

    Examples
    --------
    >>> from pymc_ext.flow_sampler.census import CensusMode, ModeCensus
    >>> from pymc_ext.flow_sampler.explored_init import mode_weights
    >>> modes = [CensusMode([x], [1.0], [0, 1], [w, w], [0.01, 0.01], 0.1)
    ...          for x, w in ((-4.0, 0.3), (4.0, 0.7), (9.0, 0.001))]
    >>> mode_weights(ModeCensus(modes, 0.0, 0.1, [0.0, 0.0], 2, [10, 11], [True, True]))
    [0.7, 0.3]
    """
    weights = (mode_weight(m) for m in census.modes)
    return sorted((w for w in weights if w >= MIN_WARN_WEIGHT), reverse=True)


def warn_if_multimodal(census: ModeCensus, stacklevel: int = 2) -> bool:
    """Warn that NUTS started from a flow cannot weigh the modes, where there are several.

    Returns whether it warned: when at least two modes have an exploration
    weight of :data:`~pymc_ext.flow_sampler.census.MIN_WARN_WEIGHT` or more.

    Examples
    --------
    >>> import warnings
    >>> from pymc_ext.flow_sampler.census import CensusMode, ModeCensus
    >>> from pymc_ext.flow_sampler.explored_init import warn_if_multimodal
    >>> modes = [CensusMode([x], [1.0], [0, 1], [w, w], [0.01, 0.01], 0.1)
    ...          for x, w in ((-4.0, 0.7), (4.0, 0.3))]
    >>> census = ModeCensus(modes, 0.0, 0.1, [0.0, 0.0], 2, [10, 11], [True, True])
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_if_multimodal(census)
    True
    >>> "2 separated modes" in str(caught[0].message)
    True
    """
    seen = mode_weights(census)
    if len(seen) < 2:
        return False
    shown = ", ".join(f"{w:.2f}" for w in seen[:6]) + (", ..." if len(seen) > 6 else "")
    warnings.warn(
        f"Tempering found {len(seen)} separated modes (exploration weights {shown}). NUTS "
        "cannot move between them: each chain stays in the mode it starts in, so the share "
        "of draws in each mode is set by where the chains start, not by the posterior, and "
        "R-hat across chains in different modes will be large. For the modes' weights use "
        "flow MCMC: pymc_ext.flow_mcmc, or pm.sample(step=pymc_ext.FlowMC()) (exact global "
        "moves between the modes).",
        FlowMCMCWarning, stacklevel=stacklevel + 1,
    )
    return True
