"""Summary networks: turn one dataset into a fixed-length vector for a conditional flow.

Amortized fitting conditions a flow ``q(theta | s(y))`` on a learned summary
``s(y)``. Which network fits depends on the data's structure:

- :class:`IdentitySummary` -- small fixed-size data (a few numbers): the
  standardised data themselves.
- :class:`MLPSummary` -- larger fixed-size data.
- :class:`DeepSetSummary` -- exchangeable observations (rows whose order does
  not matter), masked so that datasets of different size ``N`` train and run
  in one padded batch. The pooled mean is joined by ``log N``, so the flow
  knows how much data there is (posterior width depends on it).
- :class:`GRUSummary` / :class:`ConvSummary` -- series (ordered rows).

Every network maps ``x`` to ``(batch, output_dim)``. Fixed-size data come as
``x`` of shape ``(batch, features)``; sets and series as ``(batch, N,
features)`` with a boolean ``mask`` of shape ``(batch, N)`` (``True`` = a real
row, ``False`` = padding). A user's own ``torch.nn.Module`` works too if it
follows the same call (``forward(x, mask=None)``) and has an ``output_dim``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SUMMARY_KINDS",
    "IdentitySummary",
    "MLPSummary",
    "DeepSetSummary",
    "GRUSummary",
    "ConvSummary",
    "build_summary_net",
    "check_summary_net",
]

SUMMARY_KINDS = ("identity", "mlp", "deepset", "gru", "conv")


def _mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.SiLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class IdentitySummary(nn.Module):
    """The (already standardised) data vector itself, for small fixed-size data.

    Parameters
    ----------
    input_dim : int
        Number of data values.

    Examples
    --------
    >>> import torch
    >>> from pymc_ext.amortized.summary_nets import IdentitySummary
    >>> net = IdentitySummary(3)
    >>> net(torch.ones(5, 3)).shape
    torch.Size([5, 3])
    """

    kind = "identity"

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        self.input_dim = int(input_dim)
        self.output_dim = int(input_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able), used by ``Amortizer.save``."""
        return {"input_dim": self.input_dim}


class MLPSummary(nn.Module):
    """A multilayer perceptron on the flattened fixed-size data.

    Parameters
    ----------
    input_dim : int
        Number of data values.
    output_dim : int
        Length of the summary.
    hidden : sequence of int
        Hidden layer widths.

    Examples
    --------
    >>> import torch
    >>> from pymc_ext.amortized.summary_nets import MLPSummary
    >>> MLPSummary(50, output_dim=8)(torch.zeros(4, 50)).shape
    torch.Size([4, 8])
    """

    kind = "mlp"

    def __init__(
        self, input_dim: int, output_dim: int = 16, hidden: Sequence[int] = (128, 128)
    ) -> None:
        super().__init__()
        self.input_dim = int(input_dim)
        self.output_dim = int(output_dim)
        self.hidden = [int(h) for h in hidden]
        self.net = _mlp([self.input_dim, *self.hidden, self.output_dim])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x.reshape(x.shape[0], -1))

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able), used by ``Amortizer.save``."""
        return {"input_dim": self.input_dim, "output_dim": self.output_dim, "hidden": self.hidden}


def _masked_mean(h: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over axis 1 of ``h`` (batch, N, k) counting only rows where ``mask``; and N."""
    if mask is None:
        n = torch.full((h.shape[0], 1), float(h.shape[1]), dtype=h.dtype, device=h.device)
        return h.mean(dim=1), n
    m = mask.to(h.dtype).unsqueeze(-1)
    n = m.sum(dim=1).clamp_min(1.0)
    return (h * m).sum(dim=1) / n, n


class DeepSetSummary(nn.Module):
    """Permutation-invariant summary of exchangeable rows, masked for variable ``N``.

    ``s(y) = rho([mean_i phi(y_i), m(y), log N])``: each row goes through
    ``phi``, the rows are averaged (padding excluded), the pooled moments
    ``m(y)`` and ``log N`` are appended, and ``rho`` maps the result to the
    summary.

    With ``moments=True``, ``m(y)`` holds the row means of every feature and
    of every product of two features (``asinh``-compressed after pooling), on
    the robust-standardised scale (the amortizer feeds ``asinh`` of that scale,
    which ``sinh`` undoes). These are the sufficient statistics of linear-Gaussian
    models (for a regression: the means of ``y``, ``x``, ``x y``, ``x^2``,
    ``y^2``), which a mean-pooled MLP otherwise has to learn to approximate;
    with them the summary is precise enough for narrow posteriors.

    Parameters
    ----------
    feature_dim : int
        Values per row (for a regression: the response and the covariates).
    output_dim : int
        Length of the summary.
    hidden : int
        Width of ``phi``'s and ``rho``'s hidden layers and of the pooled vector.
    log_n_center, log_n_scale : float
        ``log N`` enters as ``(log N - center) / scale``; the amortizer sets
        these from the training data.
    moments : bool
        Append the pooled first and second moments of the rows (see above).

    Examples
    --------
    >>> import torch
    >>> from pymc_ext.amortized.summary_nets import DeepSetSummary
    >>> net = DeepSetSummary(feature_dim=2, output_dim=8)
    >>> x = torch.randn(3, 10, 2)
    >>> mask = torch.ones(3, 10, dtype=torch.bool)
    >>> mask[0, 5:] = False                      # first dataset has 5 rows
    >>> s = net(x, mask)
    >>> s.shape
    torch.Size([3, 8])
    >>> perm = torch.randperm(10)
    >>> bool(torch.allclose(net(x[1:, perm], mask[1:]), s[1:], atol=1e-5))
    True
    """

    kind = "deepset"

    def __init__(
        self,
        feature_dim: int,
        output_dim: int = 16,
        hidden: int = 32,
        log_n_center: float = 0.0,
        log_n_scale: float = 1.0,
        moments: bool = False,
    ) -> None:
        super().__init__()
        self.feature_dim = int(feature_dim)
        self.output_dim = int(output_dim)
        self.hidden = int(hidden)
        self.moments = bool(moments)
        f = self.feature_dim
        n_moments = f + f * (f + 1) // 2 if self.moments else 0
        self.phi = _mlp([self.feature_dim, self.hidden, self.hidden, self.hidden])
        self.rho = _mlp([self.hidden + n_moments + 1, self.hidden, self.output_dim])
        self.register_buffer("_pairs", torch.triu_indices(f, f), persistent=False)
        self.register_buffer("log_n_center", torch.tensor(float(log_n_center)))
        self.register_buffer("log_n_scale", torch.tensor(float(log_n_scale)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        pooled, n = _masked_mean(self.phi(x), mask)
        log_n = (torch.log(n) - self.log_n_center) / self.log_n_scale
        parts = [pooled]
        if self.moments:
            # back to the linear scale; clamped so that squares of outliers stay finite
            u = torch.sinh(x.clamp(-20.0, 20.0))  # padding rows: _masked_mean drops them
            quad = (u.unsqueeze(-1) * u.unsqueeze(-2))[..., self._pairs[0], self._pairs[1]]
            parts.append(torch.asinh(_masked_mean(torch.cat([u, quad], dim=-1), mask)[0]))
        return self.rho(torch.cat([*parts, log_n], dim=-1))

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able), used by ``Amortizer.save``."""
        return {
            "feature_dim": self.feature_dim,
            "output_dim": self.output_dim,
            "hidden": self.hidden,
            "log_n_center": float(self.log_n_center),
            "log_n_scale": float(self.log_n_scale),
            "moments": self.moments,
        }


class GRUSummary(nn.Module):
    """A small GRU over a series; the summary is read from the last real step.

    Parameters
    ----------
    feature_dim : int
        Values per time step.
    output_dim : int
        Length of the summary.
    hidden : int
        GRU state size.

    Examples
    --------
    >>> import torch
    >>> from pymc_ext.amortized.summary_nets import GRUSummary
    >>> GRUSummary(1, output_dim=8)(torch.randn(4, 30, 1)).shape
    torch.Size([4, 8])
    """

    kind = "gru"

    def __init__(self, feature_dim: int, output_dim: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.feature_dim = int(feature_dim)
        self.output_dim = int(output_dim)
        self.hidden = int(hidden)
        self.gru = nn.GRU(self.feature_dim, self.hidden, batch_first=True)
        self.head = _mlp([self.hidden + 1, self.hidden, self.output_dim])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        out, _ = self.gru(x)
        if mask is None:
            last = out[:, -1]
            n = torch.full((x.shape[0], 1), float(x.shape[1]), dtype=x.dtype, device=x.device)
        else:
            lengths = mask.sum(dim=1).clamp_min(1)
            last = out[torch.arange(x.shape[0], device=x.device), lengths - 1]
            n = lengths.to(x.dtype).unsqueeze(-1)
        return self.head(torch.cat([last, torch.log(n) / 5.0], dim=-1))

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able), used by ``Amortizer.save``."""
        return {
            "feature_dim": self.feature_dim,
            "output_dim": self.output_dim,
            "hidden": self.hidden,
        }


class ConvSummary(nn.Module):
    """Two 1-D convolutions over a series, then a masked global average.

    Parameters
    ----------
    feature_dim : int
        Values per time step.
    output_dim : int
        Length of the summary.
    channels : int
        Convolution channels.
    kernel_size : int
        Width of each convolution (odd).

    Examples
    --------
    >>> import torch
    >>> from pymc_ext.amortized.summary_nets import ConvSummary
    >>> ConvSummary(1, output_dim=8)(torch.randn(4, 30, 1)).shape
    torch.Size([4, 8])
    """

    kind = "conv"

    def __init__(
        self, feature_dim: int, output_dim: int = 16, channels: int = 32, kernel_size: int = 5
    ) -> None:
        super().__init__()
        self.feature_dim = int(feature_dim)
        self.output_dim = int(output_dim)
        self.channels = int(channels)
        self.kernel_size = int(kernel_size)
        pad = self.kernel_size // 2
        self.conv1 = nn.Conv1d(self.feature_dim, self.channels, self.kernel_size, padding=pad)
        self.conv2 = nn.Conv1d(self.channels, self.channels, self.kernel_size, padding=pad)
        self.head = _mlp([self.channels + 1, self.channels, self.output_dim])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        # padding is zeroed before each convolution, so padded datasets equal unpadded ones
        m = None if mask is None else mask.unsqueeze(1).to(x.dtype)  # (batch, 1, N)
        h = x.transpose(1, 2)
        for conv in (self.conv1, self.conv2):
            if m is not None:
                h = h * m
            h = F.silu(conv(h))
        pooled, n = _masked_mean(h.transpose(1, 2), mask)
        return self.head(torch.cat([pooled, torch.log(n) / 5.0], dim=-1))

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able), used by ``Amortizer.save``."""
        return {
            "feature_dim": self.feature_dim,
            "output_dim": self.output_dim,
            "channels": self.channels,
            "kernel_size": self.kernel_size,
        }


_CLASSES: dict[str, type[nn.Module]] = {
    "identity": IdentitySummary,
    "mlp": MLPSummary,
    "deepset": DeepSetSummary,
    "gru": GRUSummary,
    "conv": ConvSummary,
}


def build_summary_net(kind: str, **kwargs: Any) -> nn.Module:
    """Build one of the built-in summary networks by name.

    Parameters
    ----------
    kind : {"identity", "mlp", "deepset", "gru", "conv"}
        Which network.
    **kwargs
        Its constructor arguments (``input_dim`` for identity / mlp,
        ``feature_dim`` for the others, ``output_dim`` and sizes).

    Returns
    -------
    torch.nn.Module

    Examples
    --------
    >>> from pymc_ext.amortized.summary_nets import build_summary_net
    >>> build_summary_net("deepset", feature_dim=2, output_dim=4).output_dim
    4
    """
    if kind not in _CLASSES:
        raise ValueError(
            f"Unknown summary network {kind!r}; choose one of {list(SUMMARY_KINDS)} "
            "or pass your own torch.nn.Module with forward(x, mask=None) and output_dim."
        )
    return _CLASSES[kind](**kwargs)


def check_summary_net(net: nn.Module) -> None:
    """Check that a user's own summary network says how long its output is.

    Examples
    --------
    >>> from pymc_ext.amortized.summary_nets import MLPSummary, check_summary_net
    >>> check_summary_net(MLPSummary(4, output_dim=2))
    """
    out = getattr(net, "output_dim", None)
    if not isinstance(out, int) or out <= 0:
        raise ValueError(
            "A custom summary network needs an integer attribute `output_dim` (the length of "
            "its output) and forward(x, mask=None) -> (batch, output_dim)."
        )
