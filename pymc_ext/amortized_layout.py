"""Old path of the amortizer's data layout, kept as a thin re-export.

The code now lives in :mod:`pymc_ext.amortized.layout`.
"""

from pymc_ext.amortized.layout import LAYOUT_KINDS, DataLayout, DataShapeError

__all__ = ["DataLayout", "DataShapeError", "LAYOUT_KINDS"]
