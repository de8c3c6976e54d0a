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
    "log_density": "pymc_ext.pymc_adapter.logdensity",
    "PyMCLogDensity": "pymc_ext.pymc_adapter.logdensity",
    "prior_predictive": "pymc_ext.pymc_adapter.prior",
    "to_datatree": "pymc_ext.pymc_adapter.datatree",
    "pathfinder": "pymc_ext.vi.api",
    "density_pathfinder": "pymc_ext.vi.api",
    "WarmStartNUTS": "pymc_ext.step_methods.warmstart",
    "FlowMC": "pymc_ext.step_methods.flow",
    "AmortizedMH": "pymc_ext.step_methods.amortized",
    "sample": "pymc_ext.sampling",
    "flow_mcmc": "pymc_ext.flow_sampler.driver",
    "Amortizer": "pymc_ext.amortized.core",
    "AmortizedDraws": "pymc_ext.amortized.results",
}

__getattr__, __dir__, __all__ = _lazy_exports("pymc_ext", _EXPORTS, globals())
