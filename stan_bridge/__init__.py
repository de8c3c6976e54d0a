"""stan_bridge: Stan programs as log densities, and a cmdstanpy drop-in with warm starts.

- :class:`StanModel`: a Stan program and its data as a
  :class:`pymc_ext.density.LogDensity` (our C++ shim around
  ``stan::model::model_base``, compiled once and cached, called with ctypes).
- :class:`CmdStanModel`: a drop-in subclass of ``cmdstanpy.CmdStanModel``
  whose ``sample(..., warmstart="pathfinder")`` starts CmdStan's NUTS from
  our Pathfinder.
- :func:`pathfinder`: multi-path Pathfinder on a :class:`StanModel`, as ArviZ
  data.
- ``CmdStanModel.sample(warmstart="flow")``, ``CmdStanModel.flow_sample``
  (flow MCMC, a :class:`StanFlowFit` with cmdstanpy's accessors) and
  ``CmdStanModel.amortize`` (a :class:`StanAmortizer`).

Names are imported lazily, so ``import stan_bridge`` stays cheap.
"""

from __future__ import annotations

from pymc_ext.exports import lazy_exports as _lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "StanModel": "stan_bridge.model",
    "StanModelError": "stan_bridge.model",
    "StanRejectError": "stan_bridge.library",
    "StanCompileError": "stan_bridge.builder",
    "StanBuildError": "stan_bridge.builder",
    "StanDataError": "stan_bridge.data",
    "PriorPredictiveError": "stan_bridge.prior",
    "Toolchain": "stan_bridge.toolchain",
    "ToolchainNotFoundError": "stan_bridge.toolchain",
    "find_toolchain": "stan_bridge.toolchain",
    "CmdStanModel": "stan_bridge.cmdstan",
    "WarmStartInfo": "stan_bridge.cmdstan",
    "pathfinder": "stan_bridge.cmdstan",
    "StanFlowFit": "stan_bridge.flow_fit",
    "StanAmortizer": "stan_bridge.stan_amortizer",
    "StanAmortizerDataError": "stan_bridge.stan_amortizer",
}

__getattr__, __dir__, __all__ = _lazy_exports("stan_bridge", _EXPORTS, globals())
