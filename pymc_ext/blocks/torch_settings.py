"""Torch settings: the device flows are put on, and the dtype names the options accept."""

from __future__ import annotations

import torch

__all__ = ["torch_device", "torch_dtype"]


def torch_device() -> torch.device:
    """The device flows are put on: the first CUDA GPU when torch sees one, else the CPU.

    Returns
    -------
    torch.device

    Examples
    --------
    >>> from pymc_ext.blocks.torch_settings import torch_device
    >>> torch_device().type in ("cpu", "cuda")
    True
    """
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def torch_dtype(name: str, option: str = "flow_dtype") -> torch.dtype:
    """``torch.float32`` or ``torch.float64`` from its name, with a clear error otherwise.

    Parameters
    ----------
    name : {"float32", "float64"}
    option : str
        The option's name, for the error message.

    Returns
    -------
    torch.dtype

    Examples
    --------
    >>> from pymc_ext.blocks.torch_settings import torch_dtype
    >>> torch_dtype("float64")
    torch.float64
    """
    if name not in ("float32", "float64"):
        raise ValueError(f"{option} must be 'float32' or 'float64', got {name!r}.")
    return getattr(torch, name)
