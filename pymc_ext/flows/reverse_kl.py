"""Fitting a flow to a density alone by maximising the ELBO (reverse KL): :func:`fit_reverse_kl`.

The reparameterisation gradient flows through the density's own gradient
(:func:`density_logp_torch`), so any :class:`~pymc_ext.density.LogDensity` works.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pymc_ext.density import LogDensity
from pymc_ext.flows.fit_info import FitInfo, FitSettings, train_flow
from pymc_ext.flows.standardized import StandardizedFlow

__all__ = ["density_logp_torch", "fit_reverse_kl"]


class _DensityLogp(torch.autograd.Function):
    """``log p(x)`` of a numpy LogDensity as a torch function (gradient from the density)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, density: LogDensity) -> torch.Tensor:  # type: ignore[override]
        X = x.detach().double().cpu().numpy()
        lp, grad = density.logp_and_grad_batch(X)
        bad = ~(np.isfinite(lp) & np.all(np.isfinite(grad), axis=1))
        grad = np.where(bad[:, None], 0.0, grad)
        ctx.save_for_backward(torch.as_tensor(grad, dtype=x.dtype, device=x.device))
        return torch.as_tensor(lp, dtype=x.dtype, device=x.device)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad_output.unsqueeze(-1) * grad, None


def density_logp_torch(density: LogDensity, x: torch.Tensor) -> torch.Tensor:
    """``log p`` at the rows of ``x``, differentiable in torch through the density's gradient.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flows import density_logp_torch
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x)
    >>> x = torch.ones(3, 2, requires_grad=True)
    >>> density_logp_torch(d, x).sum().backward()
    >>> x.grad[0].tolist()
    [-1.0, -1.0]
    """
    return _DensityLogp.apply(x, density)


def fit_reverse_kl(
    flow: StandardizedFlow,
    density: LogDensity,
    *,
    max_steps: int = 1000,
    batch_size: int | None = None,
    learning_rate: float = 1e-3,
    patience: int = 10,
    check_every: int = 25,
    min_steps: int = 0,
    max_restarts: int = 3,
    random_seed: int | np.random.Generator | None = None,
    progressbar: bool = True,
    desc: str = "flow: reverse KL",
    schedule: str = "constant",
) -> FitInfo:
    """Fit ``flow`` to the density alone by maximising the ELBO (reverse KL), in place.

    The loss is ``mean(log q(x) - log p(x))`` over reparameterised draws
    ``x ~ q``; its gradient flows through the density's own gradient
    (``logp_and_grad_batch``), so any :class:`~pymc_ext.density.LogDensity`
    works. Draws where the density is not finite are left out of the loss;
    when more than half are, the step counts as non-finite (and the NaN
    guard restarts with a smaller learning rate).

    Reverse KL is mode-seeking: on its own it can settle on one mode of a
    multimodal posterior. Start it from a forward-KL fit on draws that cover
    the modes (:func:`fit_flow` with ``method="both"``), and check the result
    with importance weights (:func:`flow_init` reports the Pareto k).

    Parameters
    ----------
    flow : StandardizedFlow
    density : LogDensity
    max_steps : int
        Most optimiser steps (each costs ``batch_size`` gradient evaluations).
    batch_size : int, optional
        Draws per step; default from the dimension (64 to 256).
    check_every : int
        Steps between checks; early stopping watches the running mean of the
        loss over the last ``check_every`` steps.
    learning_rate, patience, min_steps, max_restarts, progressbar, desc, schedule
        How it trains: see :class:`~pymc_ext.flows.fit_info.FitSettings`
        (``schedule="cosine"`` anneals the learning rate to 1% over ``max_steps``).
    random_seed : int or Generator, optional
        Seeds the base draws.

    Returns
    -------
    FitInfo
        ``best`` is the best running mean of ``-ELBO`` (a lower bound on
        ``-log Z``); ``grad_evals`` counts density gradients.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flows import build_flow, fit_reverse_kl
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * ((x - 1) ** 2).sum(),
    ...                        grad_fn=lambda x: -(x - 1),
    ...                        logp_batch_fn=lambda X: -0.5 * ((X - 1) ** 2).sum(1),
    ...                        grad_batch_fn=lambda X: -(X - 1))
    >>> flow = build_flow(2, transforms=2, hidden_features=(16, 16), random_seed=0)
    >>> info = fit_reverse_kl(flow, d, max_steps=200, random_seed=0, progressbar=False)
    >>> x, _ = flow.sample(4000, np.random.default_rng(1))
    >>> bool(np.all(np.abs(x.mean(0) - 1) < 0.15))
    True
    """
    if density.dim != flow.dim:
        raise ValueError(f"The flow has dim {flow.dim} but the density has dim {density.dim}.")
    if batch_size is None:
        batch_size = int(np.clip(16 * flow.dim, 64, 256))
    noise_rng = np.random.default_rng(random_seed)
    grad_before = density.grad_evals

    loss_fn = _negative_elbo(flow, density, batch_size, noise_rng)
    settings = FitSettings(
        max_steps, check_every, learning_rate, patience, min_steps, max_restarts, progressbar, desc,
        schedule,
    )
    info = train_flow(flow, loss_fn, None, settings)
    return info._replace(grad_evals=density.grad_evals - grad_before)


def _negative_elbo(
    flow: StandardizedFlow, density: LogDensity, batch_size: int, noise_rng: np.random.Generator
) -> Callable[[int], torch.Tensor]:
    """The loss of one step: ``mean(log q - log p)`` over the draws where both are finite."""

    def loss_fn(step: int) -> torch.Tensor:
        noise = flow.base_noise(batch_size, noise_rng)
        x, logq = flow.rsample_and_log_prob(noise=noise)
        logp = density_logp_torch(density, x)
        good = torch.isfinite(logp) & torch.isfinite(logq)
        if int(good.sum()) * 2 < batch_size:
            return torch.tensor(float("nan"), dtype=flow.dtype)
        return (logq[good] - logp[good]).mean()

    return loss_fn
