"""Moved: the conditional flow of amortized fitting now lives in :mod:`pymc_ext.flows.conditional`.

This module only re-exports its public names for old import paths.
"""

from pymc_ext.flows.conditional import ConditionalFlow, torch_device, torch_threads

__all__ = ["ConditionalFlow", "torch_device", "torch_threads"]
