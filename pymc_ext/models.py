"""Old path of the example models, kept as a thin re-export.

The code now lives in :mod:`pymc_ext.references.models`.
"""

from pymc_ext.references.models import (
    EIGHT_SCHOOLS_DATA,
    MODEL_BUILDERS,
    eight_schools,
    reference_model,
)

__all__ = ["eight_schools", "reference_model", "MODEL_BUILDERS", "EIGHT_SCHOOLS_DATA"]
