"""pymc-ext: Pathfinder warm starts, flow-based MCMC and amortized fitting for PyMC.

Public names are imported lazily, so ``import pymc_ext`` stays cheap and a
part that needs torch loads torch only when it is used.
"""

from __future__ import annotations

from pymc_ext.exports import lazy_exports as _lazy_exports

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
    "density_pathfinder": "pymc_ext.pathfinder_core",
    "WarmStartNUTS": "pymc_ext.warmstart_step",
    "FlowMC": "pymc_ext.flow_step",
    "AmortizedMH": "pymc_ext.amortized_step",
    "sample": "pymc_ext.sampling",
    "flow_mcmc": "pymc_ext.flow_sampler",
    "Amortizer": "pymc_ext.amortized",
    "AmortizedDraws": "pymc_ext.amortized",
}

__getattr__, __dir__, __all__ = _lazy_exports("pymc_ext", _EXPORTS, globals())
