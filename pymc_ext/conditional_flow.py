"""The inference network of amortized fitting: a conditional neural spline flow (zuko).

:class:`ConditionalFlow` is ``q(theta | context)`` on the model's
unconstrained parameter space. The zuko flow acts on standardised parameters
``z = (theta - mean) / std`` (the spline domain is ``[-5, 5]``), and
:meth:`ConditionalFlow.log_prob` / :meth:`ConditionalFlow.sample` work in the
original unconstrained space, the standardisation's Jacobian included.

The flow is zuko's neural spline flow (``zuko.flows.NSF`` is ``MAF`` with
monotonic rational-quadratic splines). The one change is the spline
transform's constructor: :class:`_FastRQSTransform` computes the bin softmax
by hand, which gives the same numbers as zuko's but is several times faster on
CPUs, where ``torch.softmax`` over a last axis of 8 bins is slow. Every other
part, the masked hyper-network and the spline maths, is zuko's own.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
import zuko
from torch import nn
from torch.distributions import Transform
from zuko.transforms import MonotonicRQSTransform

__all__ = ["ConditionalFlow", "torch_device", "torch_threads"]


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run a block with ``torch.set_num_threads(num_threads)``, then restore the old value.

    The networks of amortized fitting are small: torch's intra-op threads
    gain little on them, and on a busy machine (more runnable processes than
    cores) its spinning worker threads slow every operation down many times.
    ``None`` leaves torch's setting alone.

    Examples
    --------
    >>> import torch
    >>> from pymc_ext.conditional_flow import torch_threads
    >>> before = torch.get_num_threads()
    >>> with torch_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    if num_threads is None:
        yield
        return
    old = torch.get_num_threads()
    if old != num_threads:
        torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        if old != num_threads:
            torch.set_num_threads(old)


def torch_device() -> torch.device:
    """The GPU where torch sees one, else the CPU.

    Examples
    --------
    >>> from pymc_ext.conditional_flow import torch_device
    >>> torch_device().type in {"cpu", "cuda", "mps"}
    True
    """
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _softmax_last(x: torch.Tensor) -> torch.Tensor:
    e = torch.exp(x - x.amax(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


class _FastRQSTransform(MonotonicRQSTransform):
    """zuko's monotonic rational-quadratic spline, with a faster bin softmax.

    Same parameters and numbers as :class:`zuko.transforms.MonotonicRQSTransform`.
    """

    def __init__(
        self,
        widths: torch.Tensor,
        heights: torch.Tensor,
        derivatives: torch.Tensor,
        bound: float = 5.0,
        slope: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        Transform.__init__(self, **kwargs)
        log_slope = math.log(slope)
        widths = widths / (1 + abs(2 * widths / log_slope))
        heights = heights / (1 + abs(2 * heights / log_slope))
        derivatives = derivatives / (1 + abs(derivatives / log_slope))
        widths = F.pad(_softmax_last(widths), (1, 0), value=0)
        heights = F.pad(_softmax_last(heights), (1, 0), value=0)
        derivatives = F.pad(derivatives, (1, 1), value=0)
        self.horizontal = bound * (2 * torch.cumsum(widths, dim=-1) - 1)
        self.vertical = bound * (2 * torch.cumsum(heights, dim=-1) - 1)
        self.derivatives = torch.exp(derivatives)


class ConditionalFlow(nn.Module):
    """``q(theta | context)``: a conditional neural spline flow on standardised parameters.

    Parameters
    ----------
    dim : int
        Number of unconstrained parameters.
    context_dim : int
        Length of the context (the summary network's output).
    transforms : int
        Number of spline transforms.
    hidden_features : sequence of int
        Hidden layers of each transform's hyper-network.
    bins : int
        Spline bins.
    autoregressive : bool
        ``False`` (default): coupling transforms (zuko ``passes=2``), where
        drawing costs about as much as evaluating the density. ``True``: fully
        autoregressive, more flexible but drawing takes ``dim`` passes.

    Examples
    --------
    >>> import torch
    >>> from pymc_ext.conditional_flow import ConditionalFlow
    >>> flow = ConditionalFlow(dim=2, context_dim=3)
    >>> theta, log_q = flow.sample(5, torch.zeros(4, 3))
    >>> theta.shape, log_q.shape
    (torch.Size([4, 5, 2]), torch.Size([4, 5]))
    >>> flow.log_prob(theta[:, 0], torch.zeros(4, 3)).shape
    torch.Size([4])
    """

    def __init__(
        self,
        dim: int,
        context_dim: int,
        transforms: int = 3,
        hidden_features: tuple[int, ...] | list[int] = (64, 64),
        bins: int = 8,
        autoregressive: bool = False,
    ) -> None:
        super().__init__()
        self.dim = int(dim)
        self.context_dim = int(context_dim)
        self.transforms = int(transforms)
        self.hidden_features = [int(h) for h in hidden_features]
        self.bins = int(bins)
        self.autoregressive = bool(autoregressive)
        self.flow = zuko.flows.MAF(
            features=self.dim,
            context=self.context_dim,
            transforms=self.transforms,
            passes=None if self.autoregressive else 2,
            hidden_features=self.hidden_features,
            univariate=partial(_FastRQSTransform, slope=1e-3),
            shapes=[(self.bins,), (self.bins,), (self.bins - 1,)],
        )
        self.register_buffer("theta_mean", torch.zeros(self.dim))
        self.register_buffer("theta_std", torch.ones(self.dim))

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able), used by ``Amortizer.save``."""
        return {
            "dim": self.dim,
            "context_dim": self.context_dim,
            "transforms": self.transforms,
            "hidden_features": self.hidden_features,
            "bins": self.bins,
            "autoregressive": self.autoregressive,
        }

    def set_standardization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Set the parameter standardisation (from the training simulations)."""
        self.theta_mean.copy_(torch.as_tensor(mean, dtype=self.theta_mean.dtype))
        self.theta_std.copy_(torch.as_tensor(std, dtype=self.theta_std.dtype).clamp_min(1e-8))

    def _log_jac(self) -> torch.Tensor:
        return torch.log(self.theta_std).sum()

    def log_prob(self, theta: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``log q(theta | context)`` on the unconstrained space; batch shapes broadcast."""
        z = (theta - self.theta_mean) / self.theta_std
        return self.flow(context).log_prob(z) - self._log_jac()

    def sample(self, n: int, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` draws per context and their ``log q``.

        Parameters
        ----------
        n : int
            Draws per context.
        context : Tensor
            ``(context_dim,)`` or ``(batch, context_dim)``.

        Returns
        -------
        theta : Tensor
            ``(n, dim)`` for one context, ``(batch, n, dim)`` for a batch.
        log_q : Tensor
            ``(n,)`` or ``(batch, n)``.
        """
        z, log_q = self.flow(context).rsample_and_log_prob((int(n),))
        theta = z * self.theta_std + self.theta_mean
        log_q = log_q - self._log_jac()
        if context.ndim == 2:
            theta = theta.transpose(0, 1)
            log_q = log_q.transpose(0, 1)
        return theta, log_q
