"""Old path of simulation-based calibration, kept as a thin re-export.

The code now lives in :mod:`pymc_ext.amortized.calibration`.
"""

from pymc_ext.amortized.calibration import (
    CalibrationResult,
    ecdf_band_test,
    posterior_contraction,
    posterior_z_scores,
    sbc_ranks,
    simulation_based_calibration,
)

__all__ = [
    "CalibrationResult",
    "sbc_ranks",
    "ecdf_band_test",
    "posterior_contraction",
    "posterior_z_scores",
    "simulation_based_calibration",
]
