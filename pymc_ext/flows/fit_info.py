"""What a flow fit returns (:class:`FitInfo`), its error (:class:`FlowFitError`), and
:func:`train_flow`, the flows' use of the one training loop (:func:`pymc_ext.flows.training.train`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from pymc_ext.flows.standardized import StandardizedFlow
from pymc_ext.flows.training import (
    RestartMode,
    RoundProgress,
    TrainingOptions,
    running_mean,
    step_batches,
    train,
)

__all__ = ["FitInfo", "FitSettings", "FlowFitError", "train_flow"]

#: The flows' constants for the training loop: clip at 10, learning rate x 0.2 per restart,
#: a fresh attempt from the best weights after a non-finite loss.
MAX_GRAD_NORM = 10.0
LR_BACKOFF = 0.2
#: Learning-rate schedules of a flow fit, and where the cosine one ends (a fraction of the start).
SCHEDULES = ("constant", "cosine")
COSINE_FLOOR = 0.01


class FlowFitError(RuntimeError):
    """Fitting a flow failed (non-finite losses that restarts did not cure, or bad input).

    Examples
    --------
    >>> from pymc_ext.flows import FlowFitError
    >>> issubclass(FlowFitError, RuntimeError)
    True
    """


class FitInfo(NamedTuple):
    """What a flow fit did.

    Attributes
    ----------
    losses : ndarray
        Training loss at every step of the final attempt.
    monitor : ndarray
        Validation loss (forward KL) or smoothed training loss (reverse KL)
        at each check; early stopping watches this.
    steps : int
        Optimiser steps in the final attempt.
    restarts : int
        Restarts after a non-finite loss (each with a smaller learning rate).
    learning_rate : float
        Learning rate of the final attempt.
    stopped_early : bool
        Whether early stopping ended the fit.
    best : float
        Best value of ``monitor`` (its weights are the ones kept).
    grad_evals : int
        Density gradient evaluations (reverse KL; 0 for forward KL).
    seconds : float
        Wall time.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flows import FitInfo
    >>> FitInfo(np.zeros(3), np.zeros(1), 3, 0, 1e-3, False, 0.0, 0, 0.1).steps
    3
    """

    losses: np.ndarray
    monitor: np.ndarray
    steps: int
    restarts: int
    learning_rate: float
    stopped_early: bool
    best: float
    grad_evals: int
    seconds: float


def _flow_diverged(failures: Sequence[str], learning_rate: float) -> FlowFitError:
    return FlowFitError(
        f"Fitting the flow gave non-finite losses {len(failures)} times, the learning rate "
        f"going down to {learning_rate:.2g}: " + "; ".join(failures) + ". What to try: check "
        "that the log density is finite near the draws (a NaN in the model shows up here "
        "first), standardise with a better mean/covariance (e.g. from Pathfinder), pass a "
        "smaller learning_rate, or use a smaller flow (fewer transforms, kind='realnvp')."
    )


@dataclass(frozen=True)
class FitSettings:
    """How a flow fit trains: the options :func:`fit_forward_kl` and :func:`fit_reverse_kl` share.

    Attributes
    ----------
    max_steps : int
        Most optimiser steps.
    learning_rate : float
        Adam's learning rate (cut by 5 at each restart after a non-finite loss).
    patience : int
        Checks without improvement before stopping.
    check_every : int
        Steps between checks.
    min_steps : int
        Do not stop early before this many steps.
    max_restarts : int
        Restarts allowed after non-finite losses before :class:`FlowFitError`.
    progressbar : bool
        Show a progress bar.
    desc : str
        Progress bar label.
    schedule : {"constant", "cosine"}
        The learning rate: constant, or cosine-annealed from ``learning_rate``
        down to 1% of it over ``max_steps`` (stepped at each check).

    Examples
    --------
    >>> from pymc_ext.flows.fit_info import FitSettings
    >>> FitSettings(max_steps=100, check_every=10).options().max_rounds
    10
    """

    max_steps: int
    check_every: int
    learning_rate: float = 1e-3
    patience: int = 10
    min_steps: int = 0
    max_restarts: int = 3
    progressbar: bool = True
    desc: str = "flow"
    schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"schedule must be one of {SCHEDULES}, got {self.schedule!r}."
            )

    def scheduler(self) -> Callable[[torch.optim.Optimizer], Any] | None:
        """``scheduler(optimizer)`` for :func:`~pymc_ext.flows.training.train`, or None."""
        if self.schedule == "constant":
            return None
        rounds = self.options().max_rounds
        return lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=rounds, eta_min=COSINE_FLOOR * self.learning_rate
        )

    def options(self) -> TrainingOptions:
        """The training loop's options: clip at 10, fresh restarts at a fifth of the rate."""
        return TrainingOptions(
            max_rounds=step_batches(self.max_steps, self.check_every)[0],
            learning_rate=self.learning_rate,
            patience=self.patience,
            min_steps=self.min_steps,
            relative_delta=True,
            max_grad_norm=MAX_GRAD_NORM,
            lr_backoff=LR_BACKOFF,
            max_restarts=self.max_restarts,
            restart=RestartMode.FRESH,
            progressbar=self.progressbar,
            description=self.desc,
            progress_total=int(self.max_steps),
            progress_per_step=True,
        )


def train_flow(
    flow: StandardizedFlow,
    loss_fn: Callable[[int], torch.Tensor],
    monitor_fn: Callable[[RoundProgress], float] | None,
    settings: FitSettings,
) -> FitInfo:
    """Adam on ``loss_fn(step)`` with a check every ``settings.check_every`` steps, in place.

    Early stopping watches ``monitor_fn`` (default: the mean of the last
    ``check_every`` losses) with a relative threshold; a non-finite loss,
    gradient or monitored value starts a fresh attempt from the best weights
    with the learning rate times 0.2, and after ``max_restarts`` restarts
    raises :class:`FlowFitError`. One call of
    :func:`pymc_ext.flows.training.train`.

    Returns
    -------
    FitInfo
        ``grad_evals`` is 0 (the caller fills it in).

    Examples
    --------
    >>> import torch
    >>> from pymc_ext.flows import build_flow
    >>> from pymc_ext.flows.fit_info import FitSettings, train_flow
    >>> flow = build_flow(1, transforms=1, hidden_features=(8,), random_seed=0)
    >>> x = torch.linspace(-1, 1, 64).unsqueeze(1)
    >>> settings = FitSettings(max_steps=20, check_every=5, learning_rate=1e-2,
    ...                        progressbar=False)
    >>> info = train_flow(flow, lambda step: -flow.log_prob(x).mean(), None, settings)
    >>> info.steps, info.restarts
    (20, 0)
    """
    batches = step_batches(settings.max_steps, settings.check_every)[1]
    monitor = running_mean(int(settings.check_every)) if monitor_fn is None else monitor_fn
    result = train(
        flow, loss_fn, batches, settings.options(), monitor=monitor,
        scheduler=settings.scheduler(), on_diverged=_flow_diverged,
    )
    return FitInfo(
        losses=result.losses,
        monitor=result.monitor,
        steps=result.steps,
        restarts=result.restarts,
        learning_rate=result.learning_rate,
        stopped_early=result.stopped_early,
        best=result.best,
        grad_evals=0,
        seconds=result.seconds,
    )
