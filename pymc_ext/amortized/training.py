"""Training an amortizer: simulate, standardise, then the package's one training loop.

The loop itself is :func:`pymc_ext.flows.training.train` (shared with the
normalizing flows): one round is one epoch over the training simulations,
the monitored value is the validation loss, a non-finite loss reloads the best
weights and halves the learning rate (``restart="resume"``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pymc_ext.amortized.frames import choose_frames, in_frames
from pymc_ext.amortized.networks import TorchSeed, contexts, contexts_no_grad
from pymc_ext.amortized.results import TrainingHistory
from pymc_ext.amortized.simulation import RollingWindow, SimulationSet, epoch_batches, simulate
from pymc_ext.amortized.standardize import fit_standardization
from pymc_ext.blocks.random import seed_int
from pymc_ext.flows.training import RestartMode, TrainingOptions, train

__all__ = ["FitConfig", "fit_amortizer", "fit_config", "negative_log_q"]

MAX_GRAD_NORM = 5.0
LR_BACKOFF = 0.5
MAX_RESTARTS = 3
MIN_DELTA = 1e-4
EVAL_BATCH = 2048
RANGE_SAMPLE = 4096  # training summaries used for the out-of-distribution range


@dataclass(frozen=True)
class FitConfig:
    """Settings of :meth:`Amortizer.fit` (validated once).

    Attributes
    ----------
    num_simulations, epochs, batch_size, validation_fraction, learning_rate, patience,
    simulations_per_epoch, max_seconds
        As in :meth:`Amortizer.fit`.

    Examples
    --------
    >>> from pymc_ext.amortized.training import FitConfig
    >>> FitConfig(num_simulations=500, epochs=3).batch_size
    256
    >>> FitConfig(num_simulations=5)
    Traceback (most recent call last):
    ...
    ValueError: num_simulations=5 is too few; use at least 1000.
    """

    num_simulations: int = 10_000
    epochs: int = 200
    batch_size: int = 256
    validation_fraction: float = 0.1
    learning_rate: float = 1e-3
    patience: int = 20
    simulations_per_epoch: int = 0
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if int(self.num_simulations) < 20:
            raise ValueError(
                f"num_simulations={self.num_simulations} is too few; use at least 1000."
            )
        if not 0.0 <= float(self.validation_fraction) < 1.0:
            raise ValueError("validation_fraction must be in [0, 1).")
        if int(self.epochs) < 1 or int(self.batch_size) < 1:
            raise ValueError("epochs and batch_size must be positive.")


def negative_log_q(
    amortizer: Any, theta: torch.Tensor, values: np.ndarray, lengths: np.ndarray | None
) -> torch.Tensor:
    """Mean ``-log q(theta | y)`` on the standardised parameter scale.

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> a = pymc_ext.Amortizer(model).fit(300, epochs=2, random_seed=0, progressbar=False)
    >>> import torch
    >>> from pymc_ext.amortized.training import negative_log_q
    >>> loss = negative_log_q(a, torch.zeros(2, 1), np.zeros((2, 3)), None)
    >>> loss.ndim, bool(torch.isfinite(loss))
    (0, True)
    """
    flow = amortizer.flow
    context = contexts(amortizer.summary_net, amortizer.layout, values, lengths, amortizer.device)
    z = (theta - flow.theta_mean) / flow.theta_std
    return -flow.flow(context).log_prob(z).mean()


def _eval_loss(amortizer: Any, window: RollingWindow, idx: np.ndarray) -> float:
    amortizer.summary_net.eval()
    amortizer.flow.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(idx), EVAL_BATCH):
            j = idx[i : i + EVAL_BATCH]
            lengths = None if window.lengths is None else window.lengths[j]
            loss = negative_log_q(amortizer, window.theta[j], window.values[j], lengths)
            total += float(loss) * len(j)
    return total / max(len(idx), 1)


def _split(n: int, validation_fraction: float, rng: np.random.Generator) -> tuple:
    perm = rng.permutation(n)
    n_val = int(round(validation_fraction * n)) if validation_fraction > 0 else 0
    n_val = min(max(n_val, 1 if validation_fraction > 0 else 0), n - 1)
    return perm[:n_val], perm[n_val:]


def _reset_weights(amortizer: Any) -> None:
    """Fresh weights (under the caller's torch seed), so fit(random_seed=s) is reproducible."""
    for module in list(amortizer.summary_net.modules()) + list(amortizer.flow.modules()):
        if module is not amortizer.summary_net and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    if amortizer.flow.framed:  # start from each dataset's Laplace approximation
        amortizer.flow.start_at_identity()


def _diverged(failures: Any, learning_rate: float) -> Exception:
    return RuntimeError(
        "Training diverged (non-finite loss) repeatedly. Try a smaller "
        "learning_rate, a larger batch_size, or narrower priors."
    )


def _train_loop(
    amortizer: Any,
    config: FitConfig,
    window: RollingWindow,
    val_idx: np.ndarray,
    rng: np.random.Generator,
    progressbar: bool,
    cluster: Any = None,
) -> Any:
    """Epochs of :func:`pymc_ext.flows.training.train` over the simulations in ``window``."""
    batch_size = int(config.batch_size)

    def batches(epoch: int) -> list[np.ndarray]:
        if config.simulations_per_epoch > 0 and epoch > 0:
            window.replace_oldest(in_frames(amortizer, simulate(
                amortizer.target, amortizer.layout, int(config.simulations_per_epoch), rng,
                cluster=cluster,
            )))
        return epoch_batches(window.train_idx, window.lengths, batch_size, rng)

    def loss_fn(idx: np.ndarray) -> torch.Tensor:
        lengths = None if window.lengths is None else window.lengths[idx]
        return negative_log_q(amortizer, window.theta[idx], window.values[idx], lengths)

    def monitor(progress: Any) -> float:
        return _eval_loss(amortizer, window, val_idx) if len(val_idx) else progress.round_loss

    options = TrainingOptions(
        max_rounds=int(config.epochs),
        learning_rate=config.learning_rate,
        patience=int(config.patience),
        min_delta=MIN_DELTA,
        relative_delta=False,
        max_grad_norm=MAX_GRAD_NORM,
        lr_backoff=LR_BACKOFF,
        max_restarts=MAX_RESTARTS,
        restart=RestartMode.RESUME,
        max_seconds=config.max_seconds,
        progressbar=progressbar,
        description="training",
    )
    module = nn.ModuleDict({"summary": amortizer.summary_net, "flow": amortizer.flow})
    return train(
        module, loss_fn, batches, options,
        monitor=monitor,
        batch_weight=len,
        scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=int(config.epochs)
        ),
        on_diverged=_diverged,
    )


def _summary_range(amortizer: Any, window: RollingWindow) -> np.ndarray:
    """``(2, output_dim)``: low and high of the summaries of (up to 4096) training sets."""
    sub = window.train_idx[: min(len(window.train_idx), RANGE_SAMPLE)]
    lengths = None if window.lengths is None else window.lengths[sub]
    ctx = contexts_no_grad(
        amortizer.summary_net, amortizer.layout, window.values[sub], lengths, amortizer.device,
        amortizer.flow.context_dim,
    ).cpu().numpy()
    return np.stack([ctx.min(axis=0), ctx.max(axis=0)])


def fit_amortizer(
    amortizer: Any,
    config: FitConfig,
    random_seed: int | np.random.Generator | None,
    progressbar: bool,
    cluster: Any = None,
) -> TrainingHistory:
    """Simulate, standardise and train ``amortizer``; its training history.

    The body of :meth:`Amortizer.fit`: afterwards the networks hold the best
    weights (by validation loss) and ``amortizer.summary_range`` the range of
    training summaries. With ``cluster`` (a
    :class:`~pymc_ext.amortized.cluster.ClusterRun`) the simulations run as
    tasks on its dask cluster (the same simulations); training stays here.

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> from pymc_ext.amortized.training import FitConfig, fit_amortizer
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> a = pymc_ext.Amortizer(model)
    >>> history = fit_amortizer(a, FitConfig(300, epochs=2), random_seed=0, progressbar=False)
    >>> history.epochs_run, len(history.val_loss)
    (2, 2)
    """
    rng = np.random.default_rng(random_seed)
    torch_seed = seed_int(rng)
    t0 = time.perf_counter()
    sims: SimulationSet = simulate(
        amortizer.target, amortizer.layout, int(config.num_simulations), rng, progressbar,
        cluster=cluster,
    )
    sim_seconds = time.perf_counter() - t0
    n = sims.theta.shape[0]
    if n < 10:
        raise RuntimeError("Fewer than 10 finite simulations: check the model's prior.")
    t_frames = time.perf_counter()
    frame_reason, sims = choose_frames(amortizer, sims)
    frame_seconds = time.perf_counter() - t_frames
    fit_standardization(amortizer, sims.theta, sims.values, sims.lengths)
    val_idx, train_idx = _split(n, float(config.validation_fraction), rng)
    theta_t = torch.as_tensor(sims.theta, dtype=torch.float32, device=amortizer.device)
    window = RollingWindow(theta_t, sims.values, sims.lengths, train_idx)
    t1 = time.perf_counter()
    with TorchSeed(torch_seed, amortizer.device):
        _reset_weights(amortizer)
        result = _train_loop(amortizer, config, window, val_idx, rng, progressbar, cluster)
    history = TrainingHistory(
        train_loss=[float(v) for v in result.round_losses],
        val_loss=[float(v) for v in result.monitor],
        best_epoch=int(result.best_round),
        best_val_loss=float(result.best),
        epochs_run=int(result.rounds),
        stopped_early=bool(result.stopped_early),
        num_simulations=int(config.num_simulations),
        num_dropped=sims.dropped,
        simulation_seconds=sim_seconds,
        training_seconds=time.perf_counter() - t1,
        device=str(amortizer.device),
        simulations_per_epoch=int(config.simulations_per_epoch),
        frame=frame_reason,
        frame_seconds=frame_seconds,
    )
    amortizer.summary_range = _summary_range(amortizer, window)
    return history


def fit_config(config: FitConfig | None, **overrides: Any) -> FitConfig:
    """``config`` (default :class:`FitConfig`) with the given non-None overrides.

    Examples
    --------
    >>> from pymc_ext.amortized.training import fit_config
    >>> fit_config(None, epochs=3, max_seconds=None).epochs
    3
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(config or FitConfig(), **given)
