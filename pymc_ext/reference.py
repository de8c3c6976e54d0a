"""Old path of the reference posteriors, kept as a thin re-export.

The code now lives in :mod:`pymc_ext.references.posteriors`.
"""

from pymc_ext.references.posteriors import (
    REFERENCE_NAMES,
    compare_draws,
    compare_to_reference,
    flatten_draws,
    load_reference,
    load_reference_data,
    reference_dir,
)

__all__ = [
    "REFERENCE_NAMES",
    "reference_dir",
    "load_reference",
    "load_reference_data",
    "flatten_draws",
    "compare_to_reference",
    "compare_draws",
]
