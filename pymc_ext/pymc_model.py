"""Old path of the PyMC adapter, kept as a thin re-export.

The code now lives in :mod:`pymc_ext.pymc_adapter`: :mod:`~pymc_ext.pymc_adapter.logdensity`
(:func:`log_density`, :class:`PyMCLogDensity`, :func:`model_fingerprint`,
:class:`ModelSpecificationError`) and :mod:`~pymc_ext.pymc_adapter.prior`
(:func:`prior_predictive`).
"""

from pymc_ext.pymc_adapter.logdensity import (
    ModelSpecificationError,
    PyMCLogDensity,
    log_density,
    model_fingerprint,
)
from pymc_ext.pymc_adapter.prior import prior_predictive

__all__ = [
    "PyMCLogDensity",
    "log_density",
    "prior_predictive",
    "model_fingerprint",
    "ModelSpecificationError",
]
