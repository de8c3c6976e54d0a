"""Old path of ``AmortizedMH``, kept as a thin re-export.

The code now lives in :mod:`pymc_ext.step_methods.amortized`.
"""

from pymc_ext.step_methods.amortized import AmortizedMH, AmortizedMHState

__all__ = ["AmortizedMH", "AmortizedMHState"]
