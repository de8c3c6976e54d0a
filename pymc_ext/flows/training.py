"""The one torch training loop: Adam, gradient clipping, early stopping and a non-finite guard.

Every neural fit goes through :func:`train`: the flows' forward and reverse KL
fits (:mod:`pymc_ext.flows.forward_kl`, :mod:`pymc_ext.flows.reverse_kl`) and the
amortizer's training (:mod:`pymc_ext.amortized`). What differs between them is a
parameter: the *rounds* (a check every ``check_every`` steps, or an epoch of
minibatches), what early stopping watches (``monitor``), the improvement
threshold, clipping, a learning-rate schedule, a time limit, and what a
non-finite loss, gradient or monitored value leads to (:class:`RestartMode`).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import torch

from pymc_ext.blocks.progress import ProgressBar

__all__ = [
    "RestartMode",
    "RoundProgress",
    "TrainingDivergedError",
    "TrainingOptions",
    "TrainingResult",
    "running_mean",
    "step_batches",
    "train",
]


class TrainingDivergedError(RuntimeError):
    """Training gave non-finite losses more often than the restarts allow.

    Examples
    --------
    >>> from pymc_ext.flows.training import TrainingDivergedError
    >>> issubclass(TrainingDivergedError, RuntimeError)
    True
    """


class RestartMode(StrEnum):
    """What :func:`train` does after a non-finite loss, gradient or monitored value.

    Examples
    --------
    >>> from pymc_ext.flows.training import RestartMode
    >>> RestartMode("resume") is RestartMode.RESUME
    True
    """

    FRESH = "fresh"
    """A new attempt: best weights so far, a fresh optimiser, the rounds counted from 0."""
    RESUME = "resume"
    """Reload the best weights, cut the optimiser's learning rate and go on to the next round."""


@dataclass(frozen=True)
class TrainingOptions:
    """How :func:`train` trains (validated once).

    Attributes
    ----------
    max_rounds : int
        Most rounds (checks or epochs).
    learning_rate : float
        Adam's initial learning rate.
    patience : int
        Rounds without improvement of the monitored value before stopping.
    min_steps : int
        Do not stop early before this many optimiser steps.
    min_delta, relative_delta : float, bool
        An improvement beats the best by ``min_delta`` (times ``max(1, |best|)`` if relative).
    max_grad_norm : float or None
        Clip the gradient norm to this (None: no clipping; a non-finite
        gradient is caught either way).
    lr_backoff : float
        Learning-rate factor at each restart.
    max_restarts : int
        Restarts allowed before training counts as diverged.
    restart : RestartMode
        ``"fresh"``: a new attempt from the best weights so far, with a fresh
        optimiser and the learning rate times ``lr_backoff``; ``"resume"``:
        reload the best weights, cut the optimiser's rate, go on to the next round.
    max_seconds : float or None
        Stop (keeping the best weights) after a round that ends past this time.
    progressbar : bool
        Show a :class:`~pymc_ext.blocks.progress.ProgressBar`.
    description, progress_total, progress_per_step : str, int or None, bool
        The bar's label, total (default ``max_rounds``), and whether it advances
        at each step (True) or at each round (False).

    Examples
    --------
    >>> from pymc_ext.flows.training import TrainingOptions
    >>> TrainingOptions(max_rounds=10, restart="resume").restart
    <RestartMode.RESUME: 'resume'>
    """

    max_rounds: int
    learning_rate: float = 1e-3
    patience: int = 10
    min_steps: int = 0
    min_delta: float = 1e-4
    relative_delta: bool = True
    max_grad_norm: float | None = 10.0
    lr_backoff: float = 0.2
    max_restarts: int = 3
    restart: RestartMode = RestartMode.FRESH
    max_seconds: float | None = None
    progressbar: bool = True
    description: str = "training"
    progress_total: int | None = None
    progress_per_step: bool = False

    def __post_init__(self) -> None:
        if int(self.max_rounds) < 1:
            raise ValueError(f"max_rounds must be >= 1, got {self.max_rounds}.")
        if not float(self.learning_rate) > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}.")
        if not 0.0 < float(self.lr_backoff) <= 1.0:
            raise ValueError(f"lr_backoff must be in (0, 1], got {self.lr_backoff}.")
        if int(self.max_restarts) < 0 or int(self.patience) < 0:
            raise ValueError("max_restarts and patience must be >= 0.")
        for name in ("max_rounds", "patience", "min_steps", "max_restarts"):
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "restart", RestartMode(self.restart))


@dataclass
class RoundProgress:
    """What the monitor sees at the end of a round.

    Attributes
    ----------
    round : int
        Round index (within the attempt for ``"fresh"`` restarts).
    step : int
        Optimiser steps so far in the attempt.
    losses : list of float
        Every step loss of the attempt so far.
    round_loss : float
        Weighted mean of this round's step losses (weights from ``batch_weight``).

    Examples
    --------
    >>> from pymc_ext.flows.training import RoundProgress
    >>> RoundProgress(round=0, step=2, losses=[1.0, 0.5], round_loss=0.75).round_loss
    0.75
    """

    round: int
    step: int
    losses: list[float]
    round_loss: float


@dataclass
class TrainingResult:
    """What :func:`train` did (the module keeps the weights of the best monitored value).

    Attributes
    ----------
    losses : ndarray
        Step losses of the final attempt.
    monitor : ndarray
        Monitored value after each completed round.
    round_losses : ndarray
        Weighted mean training loss of each completed round.
    rounds : int
        Rounds run (``"resume"``: failed rounds included).
    steps : int
        Optimiser steps of the final attempt.
    restarts : int
        Restarts after non-finite values.
    learning_rate : float
        Learning rate at the end (before any schedule).
    stopped_early : bool
        Patience or ``max_seconds`` ended training.
    best : float
        Best monitored value (inf when no round completed).
    best_round : int
        Round of ``best``.
    seconds : float
        Wall time.
    failures : list of str
        One line per non-finite event.

    Examples
    --------
    >>> import torch
    >>> from pymc_ext.flows.training import TrainingOptions, train
    >>> model = torch.nn.Linear(1, 1)
    >>> options = TrainingOptions(max_rounds=3, progressbar=False)
    >>> result = train(model, lambda b: (model.weight - 1.0).pow(2).sum(), lambda r: range(5),
    ...                options)
    >>> result.steps, result.rounds, len(result.monitor)
    (15, 3, 3)
    """

    losses: np.ndarray
    monitor: np.ndarray
    round_losses: np.ndarray
    rounds: int
    steps: int
    restarts: int
    learning_rate: float
    stopped_early: bool
    best: float
    best_round: int
    seconds: float
    failures: list[str] = field(default_factory=list)


class _NonFinite(Exception):
    pass


_DivergedFactory = Callable[[Sequence[str], float], Exception]


def running_mean(window: int) -> Callable[[RoundProgress], float]:
    """A monitor: the mean of the last ``window`` step losses.

    Examples
    --------
    >>> from pymc_ext.flows.training import RoundProgress, running_mean
    >>> running_mean(2)(RoundProgress(round=0, step=3, losses=[3.0, 2.0, 1.0], round_loss=2.0))
    1.5
    """
    window = int(window)

    def monitor(progress: RoundProgress) -> float:
        return float(np.mean(progress.losses[-window:]))

    return monitor


def step_batches(max_steps: int, check_every: int) -> tuple[int, Callable[[int], range]]:
    """Rounds of ``check_every`` steps over ``max_steps``: ``(max_rounds, batches)``.

    The batches are the step numbers; the last round may be shorter.

    Examples
    --------
    >>> from pymc_ext.flows.training import step_batches
    >>> rounds, batches = step_batches(10, 4)
    >>> rounds, list(batches(2))
    (3, [8, 9])
    """
    max_steps, check_every = int(max_steps), int(check_every)
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}.")
    if check_every < 1:
        raise ValueError(f"check_every must be >= 1, got {check_every}.")

    def batches(round_: int) -> range:
        return range(round_ * check_every, min((round_ + 1) * check_every, max_steps))

    return -(-max_steps // check_every), batches


def _default_diverged(failures: Sequence[str], learning_rate: float) -> Exception:
    return TrainingDivergedError(
        f"Training gave non-finite losses {len(failures)} times, the learning rate going down "
        f"to {learning_rate:.2g}: " + "; ".join(failures) + ". What to try: a smaller "
        "learning_rate, a smaller network, or check the data for NaN."
    )


class _Run:
    """State of one call of :func:`train` (kept out of the function to keep it short)."""

    def __init__(
        self,
        module: torch.nn.Module,
        loss_fn: Callable[[Any], torch.Tensor],
        batches: Callable[[int], Iterable[Any]],
        monitor: Callable[[RoundProgress], float],
        options: TrainingOptions,
        batch_weight: Callable[[Any], float] | None,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None,
    ) -> None:
        self.module, self.loss_fn, self.batches = module, loss_fn, batches
        self.monitor = monitor
        self.opt: TrainingOptions = options
        self.batch_weight = batch_weight
        self.make_scheduler = scheduler
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.lr = float(options.learning_rate)
        self.failures: list[str] = []
        self.restarts = 0
        self.rounds_run = 0
        self.restart_state = copy.deepcopy(module.state_dict())
        self.new_attempt()

    def new_attempt(self) -> None:
        self.module.load_state_dict(self.restart_state)
        self.optimizer = torch.optim.Adam(self.params, lr=self.lr)
        self.scheduler = None if self.make_scheduler is None else self.make_scheduler(
            self.optimizer
        )
        self.best, self.best_round, self.best_state = math.inf, 0, None
        self.since_best = 0
        self.losses: list[float] = []
        self.monitored: list[float] = []
        self.round_losses: list[float] = []
        self.stopped_early = False

    def run_round(self, round_: int, bar: ProgressBar) -> bool:
        """One round of steps and its check; True when training should stop."""
        self.module.train()
        total, count = 0.0, 0.0
        for batch in self.batches(round_):
            loss = self.step(batch)
            weight = 1.0 if self.batch_weight is None else self.batch_weight(batch)
            total += loss * weight
            count += weight
            if self.opt.progress_per_step:
                bar.update(1)
        if self.scheduler is not None:
            self.scheduler.step()
        round_loss = total / max(count, 1)
        progress = RoundProgress(round_, len(self.losses), self.losses, round_loss)
        value = float(self.monitor(progress))
        if not math.isfinite(value):
            raise _NonFinite(f"monitored loss {value} at round {round_}")
        self.monitored.append(value)
        self.round_losses.append(round_loss)
        bar.update(0 if self.opt.progress_per_step else 1, loss=f"{value:.4g}")
        return self.check(value, round_)

    def step(self, batch: Any) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(batch)
        step = len(self.losses)
        if not torch.isfinite(loss):
            raise _NonFinite(f"loss {loss.item()} at step {step}")
        loss.backward()
        max_norm = math.inf if self.opt.max_grad_norm is None else self.opt.max_grad_norm
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        if not torch.isfinite(grad_norm):
            raise _NonFinite(f"non-finite gradient at step {step}")
        self.optimizer.step()
        value = float(loss.detach())
        self.losses.append(value)
        return value

    def check(self, value: float, round_: int) -> bool:
        opt = self.opt
        scale = max(1.0, abs(self.best)) if opt.relative_delta and math.isfinite(self.best) else 1.0
        if not math.isfinite(self.best) or value < self.best - opt.min_delta * scale:
            self.best, self.best_round, self.since_best = value, round_, 0
            self.best_state = copy.deepcopy(self.module.state_dict())
        else:
            self.since_best += 1
            if self.since_best >= opt.patience and len(self.losses) >= opt.min_steps:
                self.stopped_early = True
                return True
        return False

    def result(self, seconds: float) -> TrainingResult:
        return TrainingResult(
            np.asarray(self.losses), np.asarray(self.monitored), np.asarray(self.round_losses),
            self.rounds_run, len(self.losses), self.restarts, self.lr, self.stopped_early,
            self.best, self.best_round, seconds, self.failures,
        )

    def fail(self, err: _NonFinite, on_diverged: _DivergedFactory) -> None:
        """Record a non-finite event and prepare the restart (or raise)."""
        self.failures.append(f"attempt {self.restarts + 1} (lr={self.lr:.2g}): {err}")
        fresh = self.opt.restart == RestartMode.FRESH
        if fresh and self.best_state is not None:
            self.restart_state = self.best_state
        self.restarts += 1
        if self.restarts > self.opt.max_restarts or (not fresh and self.best_state is None):
            self.module.load_state_dict(
                self.restart_state if fresh else (self.best_state or self.restart_state)
            )
            self.module.eval()
            raise on_diverged(list(self.failures), self.lr)
        self.lr *= self.opt.lr_backoff
        if fresh:
            self.new_attempt()
        else:
            self.module.load_state_dict(self.best_state)
            for group in self.optimizer.param_groups:
                group["lr"] *= self.opt.lr_backoff


def train(
    module: torch.nn.Module,
    loss_fn: Callable[[Any], torch.Tensor],
    batches: Callable[[int], Iterable[Any]],
    options: TrainingOptions,
    *,
    monitor: Callable[[RoundProgress], float] | None = None,
    batch_weight: Callable[[Any], float] | None = None,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    torch_seed: int | None = None,
    on_diverged: Callable[[Sequence[str], float], Exception] | None = None,
) -> TrainingResult:
    """Train ``module`` with Adam: the one training loop of the package.

    Each round runs one optimiser step per item of ``batches(round)`` (the
    loss is ``loss_fn(item)``), then steps ``scheduler``, then evaluates
    ``monitor``; the weights with the best monitored value are kept.

    Parameters
    ----------
    module : torch.nn.Module
        Its trainable parameters are optimised (wrap several modules in a
        ``torch.nn.ModuleDict`` to train them together).
    loss_fn : callable
        ``loss_fn(batch) -> scalar tensor``.
    batches : callable
        ``batches(round) -> iterable of batches`` (step numbers, index arrays, ...).
    options : TrainingOptions
    monitor : callable, optional
        ``monitor(RoundProgress) -> float``, lower is better; default the
        round's weighted mean training loss.
    batch_weight : callable, optional
        Weight of a batch in the round's mean loss (default 1, e.g. ``len``).
    scheduler : callable, optional
        ``scheduler(optimizer) -> LRScheduler``, stepped after every round.
    torch_seed : int, optional
        Seed torch's global generator during training (restored afterwards).
    on_diverged : callable, optional
        ``on_diverged(failures, learning_rate) -> Exception`` raised after
        too many restarts; default a :class:`TrainingDivergedError`.

    Returns
    -------
    TrainingResult

    Raises
    ------
    TrainingDivergedError
        (or what ``on_diverged`` builds) after ``max_restarts`` restarts.

    Examples
    --------
    >>> import torch
    >>> from pymc_ext.flows.training import TrainingOptions, train
    >>> model = torch.nn.Linear(1, 1)
    >>> x = torch.linspace(-1, 1, 32).unsqueeze(1)
    >>> loss_fn = lambda step: ((model(x) - 3 * x) ** 2).mean()
    >>> result = train(model, loss_fn, lambda r: range(20),
    ...                TrainingOptions(max_rounds=20, learning_rate=0.1, progressbar=False),
    ...                torch_seed=0)
    >>> bool(result.best < 0.05), result.restarts
    (True, 0)
    """
    start = time.perf_counter()
    with _torch_seed(module, torch_seed):
        run = _Run(module, loss_fn, batches, monitor or _round_loss, options, batch_weight,
                   scheduler)
        _run_rounds(run, start, on_diverged or _default_diverged)
    if run.best_state is not None:
        module.load_state_dict(run.best_state)
    module.eval()
    return run.result(time.perf_counter() - start)


def _round_loss(progress: RoundProgress) -> float:
    return progress.round_loss


@contextmanager
def _torch_seed(module: torch.nn.Module, seed: int | None) -> Iterator[None]:
    """Seed torch's global generator (restored afterwards); nothing when ``seed`` is None."""
    if seed is None:
        yield
        return
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(int(seed))
        yield


def _run_rounds(run: _Run, start: float, on_diverged: _DivergedFactory) -> None:
    opt = run.opt
    total = opt.progress_total if opt.progress_total is not None else opt.max_rounds
    while True:
        label = opt.description
        if run.restarts and opt.restart == RestartMode.FRESH:
            label = f"{label} (restart {run.restarts}, lr={run.lr:.1e})"
        first = 0 if opt.restart == RestartMode.FRESH else run.rounds_run
        with ProgressBar(total, label, show=opt.progressbar) as bar:
            if first and not opt.progress_per_step:
                bar.update(first)
            try:
                for round_ in range(first, opt.max_rounds):
                    run.rounds_run = round_ + 1
                    if run.run_round(round_, bar):
                        return
                    if _out_of_time(opt.max_seconds, start):
                        run.stopped_early = True
                        return
                return
            except _NonFinite as err:
                run.fail(err, on_diverged)


def _out_of_time(max_seconds: float | None, start: float) -> bool:
    return max_seconds is not None and time.perf_counter() - start > max_seconds
