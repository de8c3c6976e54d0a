"""Fitting a flow to samples by maximum likelihood (forward KL): :func:`fit_forward_kl`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pymc_ext.flows.fit_info import FitInfo, FitSettings, train_flow
from pymc_ext.flows.standardized import StandardizedFlow
from pymc_ext.flows.training import RoundProgress

__all__ = ["as_flow_tensor", "fit_forward_kl"]


def as_flow_tensor(flow: StandardizedFlow, X: np.ndarray) -> torch.Tensor:
    """Rows of ``X`` as a tensor on the flow's device and dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flows import build_flow
    >>> from pymc_ext.flows.forward_kl import as_flow_tensor
    >>> as_flow_tensor(build_flow(2, random_seed=0), np.zeros((3, 2))).dtype
    torch.float32
    """
    return torch.as_tensor(np.asarray(X, dtype=np.float64), dtype=flow.dtype).to(flow.device)


def fit_forward_kl(
    flow: StandardizedFlow,
    samples: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    max_steps: int = 2000,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    validation_fraction: float = 0.1,
    patience: int = 10,
    check_every: int | None = None,
    min_steps: int = 0,
    max_restarts: int = 3,
    random_seed: int | np.random.Generator | None = None,
    progressbar: bool = True,
    desc: str = "flow: forward KL",
) -> FitInfo:
    """Fit ``flow`` to samples by maximum likelihood (forward KL), in place.

    Parameters
    ----------
    flow : StandardizedFlow
    samples : ndarray, shape (n, dim)
        Draws from (an approximation of) the target.
    weights : ndarray, shape (n,), optional
        Non-negative importance weights (weighted maximum likelihood).
    batch_size : int
        Minibatch size.
    validation_fraction : float
        Share of the samples held out; early stopping watches their loss.
        With fewer than 32 held-out samples, a running mean of the training
        loss is watched instead.
    check_every : int, optional
        Steps between checks (default: about one pass over the data).
    random_seed : int or Generator, optional
        Seeds the split and the minibatches.
    max_steps, learning_rate, patience, min_steps, max_restarts, progressbar, desc
        How it trains: see :class:`~pymc_ext.flows.fit_info.FitSettings`.

    Returns
    -------
    FitInfo
        The flow keeps the weights with the best validation loss.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flows import build_flow, fit_forward_kl
    >>> rng = np.random.default_rng(0)
    >>> samples = rng.normal(2.0, 0.5, size=(512, 2))
    >>> flow = build_flow(2, mean=samples.mean(0), covariance=np.cov(samples.T),
    ...                   transforms=2, hidden_features=(16, 16), random_seed=0)
    >>> info = fit_forward_kl(flow, samples, max_steps=100, random_seed=0, progressbar=False)
    >>> x, _ = flow.sample(2000, rng)
    >>> bool(abs(x.mean() - 2.0) < 0.1)
    True
    """
    X = _checked_samples(flow, samples)
    rng = np.random.default_rng(random_seed)
    w_t = _normalised_weights(flow, weights, X.shape[0])
    train_idx, val_idx = _split(rng, X.shape[0], validation_fraction)
    batch_size = int(min(batch_size, len(train_idx)))
    if check_every is None:
        check_every = max(1, min(50, len(train_idx) // batch_size))
    loss_fn, validation_nll = _losses(flow, X, w_t, train_idx, val_idx, batch_size, rng)
    settings = FitSettings(
        max_steps, check_every, learning_rate, patience, min_steps, max_restarts, progressbar, desc
    )
    return train_flow(flow, loss_fn, validation_nll if len(val_idx) else None, settings)


def _losses(
    flow: StandardizedFlow,
    X: np.ndarray,
    w_t: torch.Tensor | None,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
) -> tuple[Callable[[int], torch.Tensor], Callable[[RoundProgress], float]]:
    """The minibatch loss (weighted negative log likelihood) and the validation monitor."""
    X_t = as_flow_tensor(flow, X)
    n_train = len(train_idx)

    def weighted_nll(idx: np.ndarray) -> torch.Tensor:
        idx_t = torch.as_tensor(idx, device=flow.device)
        logq = flow.log_prob(X_t[idx_t])
        if w_t is None:
            return -logq.mean()
        return -(w_t[idx_t] * logq).mean()

    def loss_fn(step: int) -> torch.Tensor:
        return weighted_nll(train_idx[rng.integers(0, n_train, size=batch_size)])

    def validation_nll(progress: RoundProgress) -> float:
        with torch.no_grad():
            return float(weighted_nll(val_idx))

    return loss_fn, validation_nll

def _checked_samples(flow: StandardizedFlow, samples: np.ndarray) -> np.ndarray:
    X = np.asarray(samples, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != flow.dim:
        raise ValueError(f"samples must have shape (n, {flow.dim}); got {X.shape}.")
    if X.shape[0] < 2:
        raise ValueError("forward KL needs at least 2 samples.")
    if not np.all(np.isfinite(X)):
        raise ValueError("samples contain NaN or inf; drop those rows first.")
    return X


def _normalised_weights(
    flow: StandardizedFlow, weights: np.ndarray | None, n: int
) -> torch.Tensor | None:
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != n or np.any(w < 0) or not np.all(np.isfinite(w)) or w.sum() <= 0:
        raise ValueError("weights must be finite, non-negative, one per sample, not all zero.")
    return torch.as_tensor(w / w.mean(), dtype=flow.dtype).to(flow.device)


def _split(
    rng: np.random.Generator, n: int, validation_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation indices (no validation set below 32 held-out samples)."""
    perm = rng.permutation(n)
    n_val = int(round(validation_fraction * n))
    if n_val < 32:
        n_val = 0
    return perm[n_val:], perm[:n_val]
