"""Construction of the zuko flows (NSF, MAF, IAF, RealNVP; normal or Student-t base).

Nothing here re-implements a flow layer: :func:`zuko_flow` only picks zuko's
class and sizes from a :class:`~pymc_ext.flows.config.FlowConfig`. The
standardised wrapper and :func:`~pymc_ext.flows.standardized.build_flow` are in
:mod:`pymc_ext.flows.standardized`.
"""

from __future__ import annotations

import torch
import zuko

from pymc_ext.flows.config import FlowConfig

__all__ = ["student_t_base", "zuko_flow"]


def student_t_base(
    df: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor
) -> torch.distributions.Distribution:
    """Independent Student-t distributions, one per coordinate (a flow's base).

    Examples
    --------
    >>> import torch
    >>> from pymc_ext.flows.construction import student_t_base
    >>> student_t_base(torch.full((2,), 5.0), torch.zeros(2), torch.ones(2)).event_shape
    torch.Size([2])
    """
    return torch.distributions.Independent(torch.distributions.StudentT(df, loc, scale), 1)


def zuko_flow(dim: int, config: FlowConfig) -> zuko.flows.Flow:
    """An untrained zuko flow on ``R^dim`` as ``config`` says (torch's global seed decides).

    Parameters
    ----------
    dim : int
    config : FlowConfig

    Returns
    -------
    zuko.flows.Flow

    Raises
    ------
    ValueError
        RealNVP on a 1-dimensional target.

    Examples
    --------
    >>> from pymc_ext.flows.config import FlowConfig
    >>> from pymc_ext.flows.construction import zuko_flow
    >>> type(zuko_flow(3, FlowConfig(kind="maf", transforms=1))).__name__
    'MAF'
    >>> type(zuko_flow(3, FlowConfig(kind="iaf", transforms=1))).__name__
    'Flow'
    """
    flow = _normal_base_flow(dim, config)
    if config.base == "student":
        flow.base = zuko.flows.UnconditionalDistribution(
            student_t_base,
            torch.full((dim,), config.base_df),
            torch.zeros(dim),
            torch.ones(dim),
            buffer=True,
        )
    return flow


def _normal_base_flow(dim: int, config: FlowConfig) -> zuko.flows.Flow:
    hidden = config.hidden_features
    if config.kind == "nsf":
        return zuko.flows.NSF(
            features=dim,
            transforms=config.transforms,
            bins=config.bins,
            passes=config.passes,
            hidden_features=hidden,
        )
    if config.kind in ("maf", "iaf"):
        maf = zuko.flows.MAF(
            features=dim,
            transforms=config.transforms,
            passes=config.passes,
            hidden_features=hidden,
        )
        if config.kind == "maf":
            return maf
        # The inverse of each transformation, in reverse order: sampling runs MAF's cheap
        # direction (one pass), density evaluation its costly one.
        inverted = [zuko.lazy.LazyInverse(t) for t in reversed(list(maf.transform.transforms))]
        return zuko.flows.Flow(inverted, maf.base)
    if dim < 2:
        raise ValueError("RealNVP needs at least 2 dimensions; use kind='nsf' for 1-D targets.")
    return zuko.flows.RealNVP(features=dim, transforms=config.transforms, hidden_features=hidden)
