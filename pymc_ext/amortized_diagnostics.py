"""Old path of the amortized trust checks, kept as a thin re-export.

The code now lives in :mod:`pymc_ext.amortized.diagnostics`; the PSIS, importance
ESS and resampling are the package's one implementation in
:mod:`pymc_ext.blocks.importance`.
"""

from pymc_ext.amortized.diagnostics import (
    PARETO_K_THRESHOLD,
    AmortizedDataWarning,
    importance_ess,
    importance_resample,
    psis_log_weights,
    warn_high_pareto_k,
)

__all__ = [
    "PARETO_K_THRESHOLD",
    "AmortizedDataWarning",
    "psis_log_weights",
    "importance_resample",
    "importance_ess",
    "warn_high_pareto_k",
]
