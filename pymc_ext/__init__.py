"""pymc-ext: Pathfinder warm starts, flow-based MCMC and amortized fitting for PyMC.

Public names are imported lazily, so ``import pymc_ext`` stays cheap and a
part that needs torch loads torch only when it is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "LogDensity": "pymc_ext.density",
    "BaseLogDensity": "pymc_ext.density",
    "FunctionLogDensity": "pymc_ext.density",
    "NonFiniteDensityError": "pymc_ext.density",
    "log_density": "pymc_ext.pymc_model",
    "PyMCLogDensity": "pymc_ext.pymc_model",
    "prior_predictive": "pymc_ext.pymc_model",
    "to_datatree": "pymc_ext.arviz_io",
    "pathfinder": "pymc_ext.pathfinder_core",
    "WarmStartNUTS": "pymc_ext.warmstart_step",
    "FlowMC": "pymc_ext.flow_step",
    "AmortizedMH": "pymc_ext.amortized_step",
    "sample": "pymc_ext.sampling",
    "flow_mcmc": "pymc_ext.flow_sampler",
    "Amortizer": "pymc_ext.amortized",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pymc_ext' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
