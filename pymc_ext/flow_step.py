"""Old path of ``FlowMC``, kept as a thin re-export.

The code now lives in :mod:`pymc_ext.step_methods.flow`.
"""

from pymc_ext.step_methods.flow import FlowMC, FlowMCState

__all__ = ["FlowMC", "FlowMCState"]
