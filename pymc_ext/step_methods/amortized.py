"""``AmortizedMH``: exact posteriors from an amortized one, as a ``pm.sample`` step method.

An independence Metropolis-Hastings sampler whose proposal is the trained
amortized posterior ``q(theta | y_observed)`` at the model's observed data.
A proposal ``theta'`` is accepted with probability

    min(1, w(theta') / w(theta)),   w(theta) = p(theta, y) / q(theta | y),

which leaves the model's true posterior invariant, so the draws are exact
however rough ``q`` is; the acceptance rate says how good ``q`` is (1 for a
perfect ``q``). Proposals and their log densities are drawn in vectorised
batches, so a step costs an array lookup.

Before a chain starts (``adapt=True``, the default), a pilot batch from ``q``
is importance-weighted against the true density, and the proposal is moved
by an affine map so that its mean and covariance match the weighted (PSIS)
estimates: ``theta' = a + B theta``, ``theta ~ q``, with ``log q'(theta') =
log q(theta) - log |det B|``. ``B = L_p L_q^{-1}`` is lower triangular, from
the Cholesky factors of the weighted covariance and of ``q``'s own; it
corrects errors of location, scale and correlation while keeping the flow's
shape (``adapt="diag"``: per-coordinate sd only, also used in a round whose
pilot ESS is below ten per parameter). Further pilots from the moved
proposal refine the estimates; while a pilot's Pareto k is above 0.7 (its
weighted moments are unreliable), the round matches the moments of the
tempered target ``p^beta q^(1 - beta)`` with the largest ``beta`` that keeps a
quarter of the pilot as ESS, so the proposal walks towards ``p``. The
amortized posterior is often off in location or scale on a given dataset
(what its Pareto k measures), and an independence sampler is very sensitive
to that; the moment-matched proposal keeps the flow's shape. The proposal is fixed before
the first step and depends only on pilot draws, never on the chain, so the
sampler stays an exact MH sampler. The adaptation is kept only when it raises
the pilot's importance ESS.

The statistics ``accept`` (the acceptance probability), ``accepted`` and
``log_weight`` (``log w`` of the current state) go into ``sample_stats``.

Use it whenever an exact answer is needed: it is the "trust, but verify"
path of amortized fitting. Check its acceptance rate: when the pilot cannot
find the posterior (an ESS near 1), it stays near 0 and NUTS is the better
choice. The first step of each chain starts from a proposal, so chains do not
get stuck at an initial point where ``q`` is tiny.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

import numpy as np
from pymc.step_methods.compound import BlockedStep, Competence, StepMethodState
from pymc.step_methods.state import dataclass_state
from pymc.util import get_random_generator
from pytensor.graph.basic import Variable

from pymc_ext.amortized.mh import AmortizedProposal

__all__ = ["AmortizedMH", "AmortizedMHState"]


@dataclass_state
class AmortizedMHState(StepMethodState):
    """Sampling state of :class:`AmortizedMH` (for multiprocess chains and checkpoints)."""

    proposals: np.ndarray
    proposal_log_weights: np.ndarray
    next_proposal: int
    current_x: np.ndarray | None
    current_log_weight: float
    started: bool
    shift: np.ndarray
    scale: np.ndarray  # (dim,) per coordinate, or (dim, dim) lower triangular
    proposal_batch: int = field(metadata={"frozen": True})


def _pymc_model(amortizer: Any) -> Any:
    """The PyMC model of the amortizer's target, or None for a target of another kind."""
    from pymc_ext.amortized.targets import PyMCTarget

    return amortizer.target.model if isinstance(amortizer.target, PyMCTarget) else None


def _sampled_model(amortizer: Any) -> Any:
    """The model in context (``with build(y_new): pm.sample(step=AmortizedMH(a))``), else the
    amortizer's own."""
    import pymc as pm

    context = pm.Model.get_context(error_if_none=False)
    return context if context is not None else _pymc_model(amortizer)


class AmortizedMH(BlockedStep):
    """Independence Metropolis-Hastings with the amortized posterior as proposal.

    Parameters
    ----------
    amortizer : pymc_ext.Amortizer
        A fitted amortizer for this model.
    vars : list, optional
        Must be all of the model's continuous free variables (the default):
        the proposal is joint over all of them.
    model : pm.Model, optional
        The model to sample: the one in context, else the amortizer's own. A
        model other than the amortizer's own, built by the same model
        function (a new dataset), gets the trained weights through
        :meth:`Amortizer.attach <pymc_ext.Amortizer.attach>`; one of another
        structure raises ``AmortizerMismatchError`` naming what differs. The
        proposal conditions on the model's data as they are when the step is
        made (after ``pm.set_data`` in the training model, the new values;
        data of another shape raise ``AmortizerMismatchError``).
    proposal_batch : int
        Proposals drawn (and evaluated) per vectorised batch.
    adapt : bool or {"dense", "diag"}
        Moment-match the proposal to pilot importance-weighted draws before
        each chain (see the module docstring): ``True`` or ``"dense"`` matches
        the mean and covariance, ``"diag"`` the mean and per-coordinate sd.
        ``False``: propose from ``q`` itself.
    pilot_draws : int
        Draws per pilot batch for ``adapt``.
    widen : float
        The moved proposal's sd is this many times the weighted estimate: a
        slightly wide independence proposal keeps the weights bounded in the
        tails, where a pilot of a few thousand draws sees little.
    adapt_rounds : int
        Pilot batches (each moves the proposal once) for ``adapt``.
    widen_search : sequence of float
        After the rounds, the best map is also tried with its spread times
        each of these factors (one pilot batch each); the proposal with the
        largest pilot importance ESS is kept. ``()`` skips the search.
    rng : int or Generator, optional
        Seed (``pm.sample`` sets one per chain).

    Examples
    --------
    >>> import numpy as np, pymc as pm
    >>> from pymc_ext.amortized import Amortizer
    >>> from pymc_ext.step_methods.amortized import AmortizedMH  # also pymc_ext.AmortizedMH
    >>> with pm.Model() as model:
    ...     mu = pm.Normal("mu", 0, 1)
    ...     y = pm.Normal("y", mu, 1, observed=np.array([0.3, 0.9]))
    >>> amortizer = Amortizer(model).fit(500, epochs=3, random_seed=0, progressbar=False)
    >>> with model:
    ...     idata = pm.sample(draws=200, tune=50, chains=1, random_seed=1, progressbar=False,
    ...                       step=AmortizedMH(amortizer),
    ...                       compute_convergence_checks=False)
    >>> float(idata.sample_stats["accepted"].mean()) > 0.2
    True
    """

    name = "amortized_mh"
    default_blocked = True
    stats_dtypes_shapes = {
        "accept": (np.float64, []),
        "accepted": (bool, []),
        "log_weight": (np.float64, []),
    }
    _state_class = AmortizedMHState

    def __new__(cls, *args: Any, **kwargs: Any) -> AmortizedMH:
        # BlockedStep.__new__ reads the variables from the first positional argument;
        # ours is the amortizer.
        if args and not isinstance(args[0], list | tuple):
            kwargs["amortizer"] = args[0]
            args = args[1:]
        amortizer = kwargs.get("amortizer")
        if amortizer is not None and kwargs.get("model") is None:
            kwargs["model"] = _sampled_model(amortizer)
        return super().__new__(cls, *args, **kwargs)

    def __init__(
        self,
        amortizer: Any = None,
        vars: list | None = None,
        *,
        model: Any = None,
        proposal_batch: int = 1024,
        adapt: bool | str = True,
        pilot_draws: int = 2048,
        widen: float = 1.1,
        adapt_rounds: int = 6,
        widen_search: tuple[float, ...] = (1.25, 1.5, 2.0),
        rng: Any = None,
        blocked: bool = True,
    ) -> None:
        import pymc as pm

        if isinstance(amortizer, list | tuple):  # called as AmortizedMH(vars, amortizer=...)
            amortizer, vars = vars, amortizer
        if amortizer is None:
            raise TypeError("AmortizedMH needs a fitted amortizer: AmortizedMH(amortizer).")
        amortizer.check_fitted()
        target_model = _pymc_model(amortizer)
        if target_model is None:
            raise TypeError(
                "AmortizedMH is a pm.sample step and needs an amortizer of a PyMC model; "
                f"this one was built on a {amortizer.target.kind} target."
            )
        model = pm.modelcontext(model) if model is not None else _sampled_model(amortizer)
        if model is not target_model:
            # a new dataset in a new model of the same structure: the trained weights,
            # conditioned on this model's data (AmortizerMismatchError names what differs)
            amortizer = amortizer.attach(model)
        density = amortizer.density
        expected = [v.name for v in density.value_vars]
        if vars is not None:
            given = set()
            for v in vars:
                v = model.rvs_to_values.get(v, v)
                given.add(v.name if isinstance(v, Variable) else str(v))
            if given != set(expected):
                raise ValueError(
                    f"AmortizedMH proposes all parameters jointly and must be given all of "
                    f"{expected} (got {sorted(given)}). Leave `vars` out."
                )
        vars = list(density.value_vars)
        self.vars = vars
        self.density = density
        _, ctx = amortizer.prepare([amortizer.model_data()])
        self.proposal = AmortizedProposal(
            amortizer.flow,
            ctx[0],
            density.logp_batch,
            density.dim,
            num_threads=amortizer.num_threads,
            adapt=adapt,
            pilot_draws=pilot_draws,
            widen=widen,
            adapt_rounds=adapt_rounds,
            widen_search=widen_search,
        )
        self.adapt = self.proposal.mode
        self.proposal_batch = int(proposal_batch)
        self.rng = get_random_generator(rng)
        self.tune = True
        self._reset()

    # -- state (the proposal's map is part of it, for multiprocess chains) -------------------
    @property
    def shift(self) -> np.ndarray:
        """The proposal map's shift."""
        return self.proposal.shift

    @shift.setter
    def shift(self, value: np.ndarray) -> None:
        self.proposal.shift = value

    @property
    def scale(self) -> np.ndarray:
        """The proposal map's scale: per coordinate, or lower triangular."""
        return self.proposal.scale

    @scale.setter
    def scale(self, value: np.ndarray) -> None:
        self.proposal.scale = value

    def _reset(self) -> None:
        self.proposals = np.zeros((0, self.density.dim))
        self.proposal_log_weights = np.zeros(0)
        self.next_proposal = 0
        self.current_x = None
        self.current_log_weight = -np.inf
        self.started = False
        self.proposal.reset()

    def setup_chain(self, rng: Any, tune: int, draws: int) -> None:
        """Fresh generator and proposal pool for each chain."""
        super().setup_chain(rng, tune, draws)
        self._reset()

    def _propose(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` proposals from the (moved) proposal and their log weights ``log p - log q'``."""
        return self.proposal.propose(n, self.rng)

    def _forward(self, u: np.ndarray) -> np.ndarray:
        return self.proposal.forward(u)

    def _inverse(self, x: np.ndarray) -> np.ndarray:
        return self.proposal.inverse(x)

    def _refill(self) -> None:
        self.proposals, self.proposal_log_weights = self._propose(self.proposal_batch)
        self.next_proposal = 0

    def _adapt(self) -> None:
        """Moment-match the proposal to pilot batches (see :mod:`pymc_ext.amortized.mh`)."""
        self.proposal.adapt(self.rng)

    def _log_weight(self, x: np.ndarray) -> float:
        return self.proposal.log_weight(x, self.density.logp(x))

    # -- the step --------------------------------------------------------------------------------
    def step(self, point: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[dict]]:
        """One independence MH step (PyMC's ``BlockedStep`` interface)."""
        x = np.concatenate([np.asarray(point[v.name], dtype=float).ravel() for v in self.vars])
        if not self.started and self.adapt:
            self._adapt()
        if self.next_proposal >= len(self.proposals):
            self._refill()
        proposal = self.proposals[self.next_proposal]
        proposal_lw = float(self.proposal_log_weights[self.next_proposal])
        self.next_proposal += 1

        if not self.started:
            # start the chain from the proposal: an initial point where q is tiny
            # would otherwise hold an independence sampler for a long time
            self.started = True
            accepted, accept = bool(np.isfinite(proposal_lw)), 1.0
            if accepted:
                self.current_x, self.current_log_weight = proposal.copy(), proposal_lw
            else:
                self.current_x, self.current_log_weight = x, self._log_weight(x)
        else:
            if self.current_x is None or not np.array_equal(x, self.current_x):
                self.current_x, self.current_log_weight = x, self._log_weight(x)
            log_ratio = proposal_lw - self.current_log_weight
            if not np.isfinite(self.current_log_weight):
                log_ratio = 0.0 if np.isfinite(proposal_lw) else -np.inf
            accept = float(np.exp(min(0.0, log_ratio))) if np.isfinite(log_ratio) else 0.0
            accepted = bool(np.log(self.rng.uniform()) < log_ratio)
            if accepted:
                self.current_x, self.current_log_weight = proposal.copy(), proposal_lw

        new_point = dict(point)
        new_point.update(self.density.point_from_x(self.current_x))
        stats = {
            "accept": accept,
            "accepted": accepted,
            "log_weight": float(self.current_log_weight),
        }
        return new_point, [stats]

    @staticmethod
    def competence(var: Any, has_grad: bool) -> Competence:
        """Never assigned automatically: pass it as ``step=``."""
        return Competence.INCOMPATIBLE
