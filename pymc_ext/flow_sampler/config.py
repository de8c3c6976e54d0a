"""The options of flow MCMC, in one frozen dataclass that validates itself once.

:func:`~pymc_ext.flow_sampler.flow_mcmc` and
:func:`~pymc_ext.flow_sampler.flow_mcmc_adapt` take ``config=None, **overrides``:
``flow_mcmc(d, n_rounds=8)`` and ``flow_mcmc(d, config=FlowMCMCConfig(n_rounds=8))``
are the same run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from enum import StrEnum
from typing import Any

import numpy as np

from pymc_ext.blocks.torch_settings import torch_dtype
from pymc_ext.flows.fit_info import SCHEDULES

__all__ = [
    "Explore",
    "FitMethod",
    "FlowMCMCConfig",
    "LocalKernel",
    "LocalSpace",
    "MetricKind",
    "make_config",
]


class LocalKernel(StrEnum):
    """The local move: preconditioned MALA or HMC (a ``str``: ``kernel == "mala"`` holds)."""

    MALA = "mala"
    HMC = "hmc"


class MetricKind(StrEnum):
    """The local moves' inverse metric: the walkers' within-mode covariance, or its diagonal."""

    DENSE = "dense"
    DIAG = "diag"


class FitMethod(StrEnum):
    """How the flow is fitted (see :class:`FlowMCMCConfig` ``fit``)."""

    AUTO = "auto"
    FORWARD = "forward"
    BOTH = "both"
    REVERSE = "reverse"


class LocalSpace(StrEnum):
    """Where production's local moves run (see :class:`FlowMCMCConfig` ``local_space``)."""

    AUTO = "auto"
    FLOW = "flow"
    POSITION = "position"


class Explore(StrEnum):
    """How the modes are found before the flow is fitted (see :class:`FlowMCMCConfig` ``explore``).
    """

    CLIMBS = "climbs"
    TEMPERING = "tempering"


_EXPLORE_HELP = (
    "explore must be 'climbs' (Pathfinder paths and L-BFGS climbs from overdispersed starts) "
    "or 'tempering' (populations tempered from a broad reference to the posterior), got {!r}."
)
_FIT_HELP = (
    "fit must be 'auto' (forward, switching to reverse when the forward flow misses "
    "part of a single-mode posterior), 'forward' (maximum likelihood on walker "
    "states), 'both' (plus a short reverse-KL refinement from the density each round) "
    "or 'reverse' (a forward-KL start on the walker states, then reverse KL from the "
    "density only), got {!r}."
)
_METRIC_HELP = (
    "metric must be 'dense' (within-mode covariance of the walkers) or 'diag' (its "
    "diagonal), got {!r}."
)
#: options that must be non-negative integers (or None where the field allows it)
_COUNTS = (
    "draws", "chains", "n_rounds", "local_steps", "adapt_local_steps", "global_steps",
    "first_train_steps", "train_steps", "buffer_rounds", "num_paths", "thin",
    "tempering_moves", "tempering_reference_moves",
)


def _enum(kind: type[StrEnum], value: Any, message: str) -> StrEnum:
    try:
        return kind(value)
    except ValueError:
        raise ValueError(message.format(value)) from None


@dataclass(frozen=True)
class FlowMCMCConfig:
    """Every option of flow MCMC (adaptation and production), checked when it is made.

    Attributes
    ----------
    draws : int, optional
        Production draws per walker (after adaptation). Default 500 up to 20
        dimensions, 1000 above (:func:`~pymc_ext.flow_sampler.default_num_draws`).
    chains : int, optional
        Number of walkers (at least 4), run vectorised; each is reported as one
        ArviZ chain. Default from the dimension and the number of modes found at
        seeding (64 to 256, at least 32 per mode; ``default_num_walkers``).
    n_rounds : int, optional
        Adaptation rounds of (local moves, flow fit, flow moves). Default 6 up to
        20 dimensions with at most two modes found at seeding, 10 otherwise
        (``default_num_rounds``).
    local_kernel : {"mala", "hmc"}
        Local move (a :class:`LocalKernel`).
    metric : {"dense", "diag"}
        Inverse metric of the local moves, re-estimated each adaptation round from
        the walker states (pooled within each mode): the dense covariance
        (default), or only its diagonal. Dense lets MALA take much larger steps on
        correlated posteriors (on gp_pois_regr, whose correlation matrix has
        condition number about 500, the diagonal metric held the step near 0.1 and
        the walkers never reached the posterior's spread).
    local_steps : int, optional
        Local steps before each flow proposal (production; also between the flow
        proposals of a round). Default 1, or 0 with a reverse-KL flow
        (``fit="reverse"``, or ``"auto"`` when it switches): that flow covers the
        posterior by itself, and MALA diverges where it goes (a funnel's neck).
    local_space : {"auto", "flow", "position"}
        Where production's local moves run. ``"flow"``: HMC on the flow's base
        space, on the density pulled back through the flow (NeuTra; every
        iteration one HMC move of ``num_integration_steps`` leapfrog steps, with
        its step size tuned over 100 unkept iterations, then the flow's
        independence proposal), so a region where the flow has too little mass
        (a funnel's neck) is still explored. ``"position"``: ``local_steps``
        moves of ``local_kernel`` on ``x``. ``"auto"`` (default): ``"flow"`` with
        a reverse-KL flow (one bijection, no Laplace components), else
        ``"position"``. For ``flow_mcmc``; ``FlowMC`` has the same move as
        ``local="neutra"``.
    adapt_local_steps : int
        Local steps per adaptation round (the walker states fed to the flow are
        taken ``snapshots_per_round`` times per round).
    global_steps : int
        Flow proposals per adaptation round.
    first_train_steps, train_steps : int
        Optimiser steps for the first flow fit and for each refinement.
    buffer_rounds : int
        How many recent rounds of walker states the flow is fitted on.
    fit : {"auto", "forward", "both", "reverse"}
        ``"forward"``: maximum likelihood on the walker states (flowMC's choice).
        ``"both"``: plus a short reverse-KL refinement from the density each round
        (costs gradients). ``"reverse"``: a forward-KL start on the walker states in
        the first round, then reverse KL (the ELBO) from the density alone: the
        flow learns regions the walkers never reach, such as a funnel's neck. Its
        defaults differ: a fully autoregressive affine flow in its inverse
        (IAF) direction (``flow_kwargs={"kind": "iaf", "passes": None}`` unless
        ``flow_kwargs`` names a ``kind``: it represents a funnel's neck exactly,
        and it draws with its log density in one network pass, where a MAF takes
        ``dim``),
        ``learning_rate=3e-3``, ``reverse_steps=2000`` and ``local_steps=0``.
        Reverse KL is mode-seeking, so do not use it for separated modes; it also
        costs 10-20 times the gradients. ``"auto"`` (default): adapt with
        ``"forward"``; when a single mode was found and the forward flow shows it
        missed part of the posterior (``reverse_kl_reason``: Pareto k of its
        importance weights above 0.7, last-round global acceptance below 0.3, or
        walkers where it has almost no mass), adapt again with ``"reverse"`` from
        the same Pathfinder seeding. Which one was kept, and why, is in
        ``sample_stats.attrs["fit"]`` and ``["fit_reason"]``.
    reverse_steps : int, optional
        Most reverse-KL optimiser steps per round (early stopping applies): default
        50 for ``fit="both"``; for ``fit="reverse"`` 2000 in the first round and a
        quarter of that in each later one.
    target_accept : float, optional
        Local acceptance target (default 0.574 for MALA, 0.75 for HMC).
    num_integration_steps : int
        Leapfrog steps per HMC move.
    num_paths : int
        Pathfinder paths seeding the walkers (overdispersed starts).
    search_climbs : int
        L-BFGS climbs from more starts of the same kind, searching for modes the
        paths missed (:func:`pymc_ext.flow_sampler.mode_search.search_modes`): a
        mode narrower than another has a small basin, which few of 16 paths reach.
        A climb's end is added as a mode, with walkers seeded from its Laplace
        normal, when it is a proper maximum holding at least 1/1000 of the mass (so
        never a funnel's neck). 0 turns the search off. Its cost is in
        ``sample_stats.attrs["grad_evals"]``.
    init_scale : float
        Half-width of the uniform jitter of the Pathfinder starts.
    explore : {"tempering", "climbs"}
        How the modes are found before the flow is fitted. ``"tempering"``
        (default): ``explorations`` independent populations of
        ``tempering_walkers`` walkers, each tempered from a broad reference to
        the posterior (adaptive SMC, :mod:`pymc_ext.flow_sampler.tempering`)
        with every mode kept populated; each seeds and trains its own flow,
        the production chains are split between the flows, and a mode census
        (``sample_stats.attrs["mode_census"]``) records every mode, with
        warnings where the explorations disagree. Where every exploration
        finds one mode, the flow is fitted from the climbs' seeding as below
        (the mode's shape is then the question, not finding modes).
        ``"climbs"``: Pathfinder paths and ``search_climbs`` L-BFGS climbs from
        overdispersed starts only; faster, but a mode whose basin no climb
        reaches is missed, silently (a narrow mode off to one side).
    explorations : int
        Independent tempering explorations (at least 2 for the disagreement
        checks; 1 allowed).
    tempering_walkers : int
        Walkers per exploration.
    tempering_ess : float
        Conditional ESS fraction kept at each temperature step (in (0, 1)):
        closer to 1 means more, smaller steps.
    tempering_moves, tempering_reference_moves : int
        MALA moves, and independence proposals from the reference, per
        temperature.
    tempering_max_steps : int
        Budget of temperatures per exploration; past it the last step jumps
        to ``beta = 1`` and a warning says so. 200: the phi^4 field ran out of
        100 at N = 32 and N = 64 (the only targets measured that did), and
        with 200 both explorations reached ``beta = 1`` at N = 64 and found
        both modes (541 s instead of 745 s, no warning).
    reference_scale : float, optional
        Standard deviation (per unconstrained coordinate) of the reference's
        broad Gaussian around the initial point (default ``2.5 * init_scale``,
        i.e. 5).
    reference : {"broad", "pathfinder"}
        The tempering reference ``q0``: the broad Gaussian alone (default), or
        half of it and half Gaussians at ``num_paths`` Pathfinder path
        centres, three times their spread (for a posterior far from the
        initial point or much narrower than ``reference_scale``; on a 2-D
        mixture it made the explorations' mode weights noisier).
    mode_proposals : float, optional
        Share of the global proposals drawn from Laplace normals at the modes
        found (:mod:`pymc_ext.flow_sampler.mode_proposal`), mixed with the
        flow's. Default (``None``): 0.5 where at least two modes were found
        (per exploration with ``explore="tempering"``) in at most 500
        dimensions, else none; 0 turns them off. A flow fitted to walkers can
        miss a narrow mode's shape in many dimensions (on the 32-site phi^4
        field its proposals were accepted 1.4% of the time and the two
        modes' weights came out 0.63 / 0.37); the normals fit such a mode
        whatever the walkers did, and they cost at most half the flow's
        acceptance where they fit badly.
    flow_kwargs : dict, optional
        Passed to :func:`pymc_ext.flows.build_flow` (``kind``, ``transforms``,
        ``hidden_features``, ``bins``).
    learning_rate : float, optional
        Adam's learning rate for the flow: default 1e-3, or 3e-3 for a reverse-KL
        fit.
    reverse_schedule : {"cosine", "constant"}
        The learning rate of a ``fit="reverse"`` fit: cosine-annealed to 1% of
        ``learning_rate`` over each fit's ``reverse_steps`` (default; at a
        constant rate the last iterates jitter, and gp_pois_regr came out
        0.08 / 0.19 sd off on one seed of three), or constant.
    snapshots_per_round : int
        Walker states kept per walker per round for fitting the flow.
    flow_dtype : {"float32", "float64"}
        Precision of the frozen flow in production. float32 is 3-4 times faster on
        a CPU; its ``log q`` is consistent between sampling and evaluation to about
        3e-5 nats (measured), far below Monte Carlo error. float64 makes that about
        1e-13.
    restart_threshold : float or None
        At the end of adaptation, walkers where ``log p - log q - log Z`` is above
        this many nats (a flow proposal would be accepted with probability about
        ``exp(-threshold)``) restart at flow draws resampled by ``p / q``, when
        those importance weights have an effective sample size of at least a tenth
        of the draws. This changes only where the production chains start, not the
        kernel; their number is in ``sample_stats.attrs["restarted_walkers"]``.
        ``None`` turns it off. On Neal's funnel, MALA had dragged 6 of 64 walkers
        deep into the neck during adaptation, 70 to 160 nats above the flow; left
        there, they never moved and gave a v sd of 4.4 instead of 3.
    thin : int
        Keep every ``thin``-th production iteration.
    min_global_acceptance : float
        Warn when the production global acceptance is below this.
    max_rhat : float or None
        Warn when the production chains' largest rank-normalised R-hat (over
        the coordinates) is above this; ``None`` turns it off. 1.05, not
        PyMC's 1.01: on the 20 random mixtures of the family benchmark first
        measured, 1.01 fired on 5 correct answers (R-hat 1.012-1.086 with
        weight errors at most 0.018), while 1.05 fired only on the one wrong
        answer that nothing else warned about (a narrow heavy mode never found
        in 20-D, R-hat 1.051) and on one already warned.
    progressbar : bool
        Progress bars for adaptation and sampling.

    Raises
    ------
    ValueError
        On an option out of its range, with what is allowed.

    Examples
    --------
    >>> from pymc_ext.flow_sampler.config import FlowMCMCConfig
    >>> cfg = FlowMCMCConfig(n_rounds=8, local_kernel="hmc")
    >>> cfg.local_kernel == "hmc", cfg.resolved("reverse").local_steps
    (True, 0)
    >>> FlowMCMCConfig(fit="elbo")
    Traceback (most recent call last):
    ...
    ValueError: fit must be 'auto' (forward, switching to reverse ...
    """

    draws: int | None = None
    chains: int | None = None
    n_rounds: int | None = None
    local_kernel: LocalKernel = LocalKernel.MALA
    metric: MetricKind = MetricKind.DENSE
    local_steps: int | None = None
    local_space: LocalSpace = LocalSpace.AUTO
    adapt_local_steps: int = 20
    global_steps: int = 4
    first_train_steps: int = 500
    train_steps: int = 150
    buffer_rounds: int = 3
    fit: FitMethod = FitMethod.AUTO
    reverse_steps: int | None = None
    target_accept: float | None = None
    num_integration_steps: int = 8
    num_paths: int = 16
    search_climbs: int = 128
    init_scale: float = 2.0
    explore: Explore = Explore.TEMPERING
    explorations: int = 2
    tempering_walkers: int = 1024
    tempering_ess: float = 0.9
    tempering_moves: int = 10
    tempering_reference_moves: int = 2
    tempering_max_steps: int = 200
    reference_scale: float | None = None
    reference: str = "broad"
    mode_proposals: float | None = None
    flow_kwargs: dict[str, Any] | None = None
    learning_rate: float | None = None
    reverse_schedule: str = "cosine"
    snapshots_per_round: int = 10
    flow_dtype: str = "float32"
    restart_threshold: float | None = 6.0
    thin: int = 1
    min_global_acceptance: float = 0.05
    max_rhat: float | None = 1.05
    progressbar: bool = True

    def __post_init__(self) -> None:
        for name in _COUNTS:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int | np.integer) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}.")
        if self.search_climbs < 0:
            raise ValueError(
                f"search_climbs must be >= 0 (0: no search), got {self.search_climbs}."
            )
        set_ = object.__setattr__
        set_(self, "local_kernel", _enum(
            LocalKernel, self.local_kernel, "local_kernel must be 'mala' or 'hmc', got {!r}."
        ))
        set_(self, "metric", _enum(MetricKind, self.metric, _METRIC_HELP))
        set_(self, "local_space", _enum(
            LocalSpace, self.local_space,
            "local_space must be 'auto', 'flow' or 'position', got {!r}.",
        ))
        set_(self, "fit", _enum(FitMethod, self.fit, _FIT_HELP))
        set_(self, "explore", _enum(Explore, self.explore, _EXPLORE_HELP))
        set_(self, "flow_kwargs", None if self.flow_kwargs is None else dict(self.flow_kwargs))
        self._check_ranges()

    def _check_tempering(self) -> None:
        if not isinstance(self.explorations, int | np.integer) or self.explorations < 1:
            raise ValueError(f"explorations must be a positive integer, got {self.explorations!r}.")
        if self.tempering_walkers < 8:
            raise ValueError(f"tempering_walkers must be at least 8, got {self.tempering_walkers}.")
        if not 0.0 < self.tempering_ess < 1.0:
            raise ValueError(f"tempering_ess must be in (0, 1), got {self.tempering_ess!r}.")
        if self.tempering_max_steps < 1:
            raise ValueError(
                f"tempering_max_steps must be at least 1, got {self.tempering_max_steps!r}.")
        if self.reference not in ("broad", "pathfinder"):
            raise ValueError(f"reference must be 'broad' or 'pathfinder', got {self.reference!r}.")
        if self.reference_scale is not None and not self.reference_scale > 0:
            raise ValueError(f"reference_scale must be positive, got {self.reference_scale!r}.")

    def _check_ranges(self) -> None:
        self._check_tempering()
        if self.mode_proposals is not None and not 0.0 <= self.mode_proposals < 1.0:
            raise ValueError(
                f"mode_proposals must be in [0, 1) (0: no normals), got {self.mode_proposals!r}.")
        rs = self.reverse_steps
        if rs is not None and (not isinstance(rs, int | np.integer) or rs < 1):
            raise ValueError(f"reverse_steps must be a positive integer, got {rs!r}.")
        if self.reverse_schedule not in SCHEDULES:
            raise ValueError(
                f"reverse_schedule must be one of {SCHEDULES}, got {self.reverse_schedule!r}."
            )
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}.")
        if self.n_rounds is not None and self.n_rounds < 1:
            raise ValueError("n_rounds must be at least 1 (the flow is fitted during the rounds).")
        if self.chains and self.chains < 4:
            raise ValueError(f"chains (walkers) must be at least 4, got {self.chains}.")
        torch_dtype(self.flow_dtype)
        if self.restart_threshold is not None and not self.restart_threshold > 0:
            raise ValueError(
                "restart_threshold must be positive (nats) or None, got "
                f"{self.restart_threshold!r}."
            )
        if self.snapshots_per_round < 1:
            raise ValueError(f"snapshots_per_round must be >= 1, got {self.snapshots_per_round}.")
        if self.draws is not None and self.draws < 1:
            raise ValueError("draws must be at least 1.")
        if self.thin < 1:
            raise ValueError("thin must be at least 1.")

    def resolved(self, fit: str | FitMethod) -> FlowMCMCConfig:
        """This config for one way of fitting, with the defaults that depend on it filled in.

        With ``fit="reverse"`` the flow is the whole sampler: a fully autoregressive
        IAF, 2000 reverse-KL steps at a learning rate of 3e-3, and no local moves
        in production (MALA diverges in a funnel's neck, where the flow goes).
        ``target_accept`` defaults to 0.574 for MALA and 0.75 for HMC.

        Parameters
        ----------
        fit : {"forward", "both", "reverse"}

        Returns
        -------
        FlowMCMCConfig
            With ``fit``, ``local_steps``, ``learning_rate``, ``reverse_steps``,
            ``flow_kwargs`` and ``target_accept`` all set.

        Examples
        --------
        >>> from pymc_ext.flow_sampler.config import FlowMCMCConfig
        >>> cfg = FlowMCMCConfig().resolved("reverse")
        >>> cfg.learning_rate, cfg.reverse_steps, cfg.flow_kwargs
        (0.003, 2000, {'kind': 'iaf', 'passes': None})
        """
        fit = FitMethod(fit)
        reverse = fit == FitMethod.REVERSE
        kwargs = dict(self.flow_kwargs or {})
        if reverse and "kind" not in kwargs:
            kwargs = {"kind": "iaf", "passes": None, **kwargs}
        default_accept = 0.574 if self.local_kernel == LocalKernel.MALA else 0.75
        return replace(
            self,
            fit=fit,
            local_steps=(0 if reverse else 1) if self.local_steps is None else self.local_steps,
            learning_rate=float(
                (3e-3 if reverse else 1e-3) if self.learning_rate is None else self.learning_rate
            ),
            reverse_steps=int(
                (2000 if reverse else 50) if self.reverse_steps is None else self.reverse_steps
            ),
            flow_kwargs=kwargs,
            target_accept=default_accept if self.target_accept is None else self.target_accept,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (enums as their strings).

        Examples
        --------
        >>> from pymc_ext.flow_sampler.config import FlowMCMCConfig
        >>> FlowMCMCConfig().to_dict()["fit"]
        'auto'
        """
        return {k: (str(v) if isinstance(v, StrEnum) else v) for k, v in asdict(self).items()}


_FIELDS = frozenset(f.name for f in fields(FlowMCMCConfig))


def make_config(config: FlowMCMCConfig | None, overrides: dict[str, Any]) -> FlowMCMCConfig:
    """``config`` (default: all defaults) with ``overrides`` applied, checked once.

    Parameters
    ----------
    config : FlowMCMCConfig, optional
    overrides : dict
        Field names and values; an unknown name is a ``TypeError``, as an unknown
        keyword argument would be.

    Returns
    -------
    FlowMCMCConfig

    Examples
    --------
    >>> from pymc_ext.flow_sampler.config import FlowMCMCConfig, make_config
    >>> make_config(FlowMCMCConfig(n_rounds=3), {"chains": 16}).n_rounds
    3
    """
    unknown = sorted(set(overrides) - _FIELDS)
    if unknown:
        raise TypeError(f"Unknown flow MCMC option(s) {unknown}; see FlowMCMCConfig.")
    if config is None:
        return FlowMCMCConfig(**overrides)
    if not isinstance(config, FlowMCMCConfig):
        raise TypeError(f"config must be a FlowMCMCConfig, got {type(config).__name__}.")
    return replace(config, **overrides) if overrides else config
