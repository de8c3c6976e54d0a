"""The amortizer's networks: choosing the summary network and data layout, contexts, torch seeding.

The summary network turns a batch of datasets (laid out by
:class:`~pymc_ext.amortized.layout.DataLayout`) into context vectors for the
conditional flow :class:`~pymc_ext.flows.conditional.ConditionalFlow`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pymc_ext.amortized.layout import DataLayout
from pymc_ext.amortized.summary_nets import build_summary_net, check_summary_net
from pymc_ext.flows.conditional import torch_threads

__all__ = [
    "IDENTITY_MAX_FEATURES",
    "LAYOUT_OF_SUMMARY",
    "TorchSeed",
    "build_summary",
    "choose_summary",
    "contexts",
    "contexts_no_grad",
    "data_layout",
    "with_threads",
]

LAYOUT_OF_SUMMARY = {
    "identity": "vector",
    "mlp": "vector",
    "deepset": "set",
    "gru": "series",
    "conv": "series",
}
IDENTITY_MAX_FEATURES = 32


class TorchSeed:
    """Seed torch's global generator inside a block and restore it afterwards.

    Examples
    --------
    >>> import torch
    >>> from pymc_ext.amortized.networks import TorchSeed
    >>> with TorchSeed(3, torch.device("cpu")):
    ...     a = torch.rand(1)
    >>> with TorchSeed(3, torch.device("cpu")):
    ...     b = torch.rand(1)
    >>> bool(a == b)
    True
    """

    def __init__(self, seed: int, device: torch.device) -> None:
        self.seed = seed
        self.devices = [device.index or 0] if device.type == "cuda" else []

    def __enter__(self) -> None:
        self._ctx = torch.random.fork_rng(devices=self.devices)
        self._ctx.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


def with_threads(method: Callable) -> Callable:
    """Run an Amortizer method under its ``num_threads`` setting.

    Examples
    --------
    >>> import torch
    >>> from pymc_ext.amortized.networks import with_threads
    >>> class Box:
    ...     num_threads = 1
    ...     @with_threads
    ...     def threads(self):
    ...         return torch.get_num_threads()
    >>> Box().threads()
    1
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with torch_threads(self.num_threads):
            return method(self, *args, **kwargs)

    return wrapper


def choose_summary(
    summary: str | nn.Module,
    current: Mapping[str, Any],
    names: Sequence[str],
    covariates_vary: bool,
    layout_kind: str | None,
) -> tuple[str, str]:
    """``(summary kind, layout kind)`` for the ``summary`` / ``data_layout`` arguments.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.amortized.networks import choose_summary
    >>> choose_summary("auto", {"y": np.zeros(5)}, ["y"], False, None)
    ('identity', 'vector')
    >>> choose_summary("auto", {"y": np.zeros(5)}, ["y"], True, None)
    ('deepset', 'set')
    """
    if isinstance(summary, nn.Module):
        check_summary_net(summary)
        return "custom", layout_kind or "vector"
    if summary == "auto":
        total = sum(int(np.size(current[n])) for n in names)
        if covariates_vary:
            summary = "deepset"
        elif total <= IDENTITY_MAX_FEATURES:
            summary = "identity"
        else:
            summary = "mlp"
    if summary not in LAYOUT_OF_SUMMARY:
        raise ValueError(
            f"summary={summary!r} is not one of 'auto', {sorted(LAYOUT_OF_SUMMARY)} or "
            "a torch.nn.Module."
        )
    needed = LAYOUT_OF_SUMMARY[summary]
    if layout_kind is not None and layout_kind != needed:
        raise ValueError(
            f"data_layout={layout_kind!r} does not fit summary={summary!r} "
            f"(which takes {needed!r} data); data_layout is for custom modules."
        )
    return summary, needed


def data_layout(kind: str, names: Sequence[str], current: Mapping[str, Any]) -> DataLayout:
    """The :class:`DataLayout` of ``kind`` for data like ``current``.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.amortized.networks import data_layout
    >>> data_layout("set", ["y"], {"y": np.zeros((4, 2))}).num_features
    2
    """
    if kind == "vector":
        return DataLayout(kind, names, {n: np.shape(current[n]) for n in names})
    scalar = [n for n in names if np.ndim(current[n]) == 0]
    if scalar:
        raise ValueError(
            f"{scalar} are scalars, but a {kind} summary reads data as rows "
            "(first axis = observations). Use summary='identity' or 'mlp'."
        )
    return DataLayout(kind, names, {n: np.shape(current[n])[1:] for n in names})


def build_summary(kind: str, kwargs: Mapping[str, Any], layout: DataLayout) -> nn.Module:
    """A built-in summary network of ``kind`` sized for ``layout``.

    Examples
    --------
    >>> from pymc_ext.amortized.layout import DataLayout
    >>> from pymc_ext.amortized.networks import build_summary
    >>> layout = DataLayout("vector", ["y"], {"y": (5,)})
    >>> build_summary("identity", {}, layout).output_dim
    5
    """
    kwargs = dict(kwargs)
    if kind in ("identity", "mlp"):
        kwargs["input_dim"] = layout.num_features
        if kind == "identity":
            kwargs = {"input_dim": kwargs["input_dim"]}
    else:
        kwargs["feature_dim"] = layout.num_features
    if kind == "deepset":
        kwargs.setdefault("moments", True)
    return build_summary_net(kind, **kwargs)


def contexts(
    summary_net: nn.Module,
    layout: DataLayout,
    values: np.ndarray,
    lengths: np.ndarray | None,
    device: torch.device,
) -> torch.Tensor:
    """Summary-network output for raw data values (with gradients).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from pymc_ext.amortized.layout import DataLayout
    >>> from pymc_ext.amortized.networks import build_summary, contexts
    >>> layout = DataLayout("vector", ["y"], {"y": (3,)})
    >>> net = build_summary("identity", {}, layout)
    >>> tuple(contexts(net, layout, np.zeros((2, 3)), None, torch.device("cpu")).shape)
    (2, 3)
    """
    if lengths is not None and len(lengths):
        values = values[:, : int(lengths.max())]  # no all-padding columns
    x, mask = layout.to_tensors(values, lengths, device=device)
    return summary_net(x, mask)


def contexts_no_grad(
    summary_net: nn.Module,
    layout: DataLayout,
    values: np.ndarray,
    lengths: np.ndarray | None,
    device: torch.device,
    context_dim: int,
    batch: int = 4096,
) -> torch.Tensor:
    """:func:`contexts` in batches of ``batch`` datasets, without gradients.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from pymc_ext.amortized.layout import DataLayout
    >>> from pymc_ext.amortized.networks import build_summary, contexts_no_grad
    >>> layout = DataLayout("vector", ["y"], {"y": (3,)})
    >>> net = build_summary("identity", {}, layout)
    >>> tuple(contexts_no_grad(net, layout, np.zeros((0, 3)), None, torch.device("cpu"), 3).shape)
    (0, 3)
    """
    out = []
    with torch.no_grad():
        for i in range(0, values.shape[0], batch):
            part = None if lengths is None else lengths[i : i + batch]
            out.append(contexts(summary_net, layout, values[i : i + batch], part, device))
    return torch.cat(out) if out else torch.zeros(0, context_dim)
