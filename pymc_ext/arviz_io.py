"""Old path of the ArviZ conversion, kept as a thin re-export.

The code now lives in :mod:`pymc_ext.pymc_adapter.datatree`.
"""

from pymc_ext.pymc_adapter.datatree import posterior_dict, to_datatree

__all__ = ["to_datatree", "posterior_dict"]
