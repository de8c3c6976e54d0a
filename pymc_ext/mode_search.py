"""Old path of the mode search, kept as a thin re-export.

The code now lives in :mod:`pymc_ext.flow_sampler.mode_search`.
"""

from pymc_ext.flow_sampler.mode_search import (
    ModeSearch,
    add_modes_to_seed,
    laplace_log_mass,
    search_modes,
)

__all__ = ["ModeSearch", "add_modes_to_seed", "laplace_log_mass", "search_modes"]
