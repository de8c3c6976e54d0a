"""What flow MCMC's adaptation hands to production: the frozen kernel, the walkers, the record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pymc_ext.flow_sampler.census import ModeCensus
from pymc_ext.flow_sampler.config import FitMethod
from pymc_ext.flow_sampler.kernel import FlowMCMCKernel
from pymc_ext.flow_sampler.kernels import LocalState
from pymc_ext.flow_sampler.mode_search import ModeSearch
from pymc_ext.flow_sampler.modes import nearest_mode
from pymc_ext.flows import FitInfo, SeedResult

__all__ = ["FlowMCMCAdaptation", "FlowMCMCWarning"]


class FlowMCMCWarning(UserWarning):
    """A flow-MCMC diagnostic says the flow is not to be trusted (the message says what to try).

    Examples
    --------
    >>> import warnings
    >>> from pymc_ext.flow_sampler import FlowMCMCWarning
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warnings.warn("low global acceptance", FlowMCMCWarning)
    >>> caught[0].category.__name__
    'FlowMCMCWarning'
    """


@dataclass
class FlowMCMCAdaptation:
    """Result of the adaptation: the frozen kernel, the walkers, and what happened.

    Attributes
    ----------
    kernel : FlowMCMCKernel
        Frozen flow, step size and metric.
    state : LocalState
        Walker states at the end of adaptation.
    modes : ndarray, shape (k, dim)
        Distinct modes found by the Pathfinder paths (used to count hops).
    mode_scale : ndarray, shape (dim,)
        Within-mode standard deviations (for nearest-mode labels).
    history : dict
        Per-round arrays: ``global_acceptance``, ``local_acceptance``,
        ``step_size``, ``flow_loss``, ``mode_hops``, ``grad_evals``.
    coverage : dict
        :func:`coverage_check` of the final flow.
    seed : SeedResult
        The Pathfinder seeding.
    grad_evals : int
        Density gradient evaluations spent adapting (Pathfinder included).
    seconds : float
    warnings : list of str
        Warnings raised (also issued as :class:`FlowMCMCWarning`).
    fit_infos : list of FitInfo
        Every flow fit, in order.
    restarted_walkers : int
        Walkers moved at the end of adaptation from where the frozen flow
        could never move them (``restart_threshold``) to resampled flow draws.
    fit : str
        How the frozen flow was fitted: ``"forward"``, ``"both"`` or
        ``"reverse"`` (with ``fit="auto"``, the one it chose).
    fit_reason : str
        With ``fit="auto"``: why it switched to reverse KL (empty when it
        kept the forward fit).
    mode_search : ModeSearch or None
        What the multi-start climbs (``search_climbs``) found beyond the
        Pathfinder paths (None when none ran).
    census : ModeCensus or None
        With ``explore="tempering"``: every mode the explorations found, their
        weights, when each was first seen, the log evidence
        (:class:`~pymc_ext.flow_sampler.census.ModeCensus`).
    members : list of FlowMCMCAdaptation
        With ``explore="tempering"``: one adaptation (flow, walkers) per
        exploration. ``flow_mcmc`` splits its production chains between them;
        this adaptation's own ``kernel`` proposes from their equal mixture
        (what ``FlowMC`` uses), and its ``state`` holds all their walkers.
    tempering : object
        The :class:`~pymc_ext.flow_sampler.exploration.TemperingResult` (the
        explorations themselves), or None.
    notes : list of str
        Checks that were settled without a warning, and how (for example an
        evidence shortfall of the walkers that the adapted flow's own
        evidence shows to be the walkers', not a missed mode's).

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler import flow_mcmc_adapt
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x,
    ...                        logp_batch_fn=lambda X: -0.5 * (X * X).sum(1),
    ...                        grad_batch_fn=lambda X: -X)
    >>> ad = flow_mcmc_adapt(d, chains=16, n_rounds=1, first_train_steps=20, num_paths=2,
    ...                      search_climbs=0, random_seed=0, progressbar=False, fit="forward",
    ...                      flow_kwargs={"transforms": 1, "hidden_features": (8, 8)})
    >>> ad.fit == "forward", ad.labels(np.zeros((3, 2))).tolist()
    (True, [0, 0, 0])
    """

    kernel: FlowMCMCKernel
    state: LocalState
    modes: np.ndarray
    mode_scale: np.ndarray
    history: dict[str, np.ndarray]
    coverage: dict[str, Any]
    seed: SeedResult
    grad_evals: int
    seconds: float
    warnings: list[str] = field(default_factory=list)
    fit_infos: list[FitInfo] = field(default_factory=list)
    restarted_walkers: int = 0
    fit: FitMethod = FitMethod.FORWARD
    fit_reason: str = ""
    mode_search: ModeSearch | None = None
    census: ModeCensus | None = None
    members: list[FlowMCMCAdaptation] = field(default_factory=list)
    tempering: Any = None
    notes: list[str] = field(default_factory=list)

    def labels(self, X: np.ndarray) -> np.ndarray:
        """Index of the nearest mode for each row of ``X``."""
        return nearest_mode(np.atleast_2d(X), self.modes, self.mode_scale)
