"""Old path of the amortization targets, kept as a thin re-export.

The code now lives in :mod:`pymc_ext.amortized.targets` (with
:mod:`~pymc_ext.amortized.pymc_target`, :mod:`~pymc_ext.amortized.density_target`
and :mod:`~pymc_ext.amortized.target_base`).
"""

from pymc_ext.amortized.targets import (
    AmortizedTarget,
    PriorPredictiveTarget,
    PyMCTarget,
    flat_parameter_names,
    make_target,
    pymc_fingerprint,
)

__all__ = [
    "AmortizedTarget",
    "PyMCTarget",
    "PriorPredictiveTarget",
    "make_target",
    "flat_parameter_names",
    "pymc_fingerprint",
]
