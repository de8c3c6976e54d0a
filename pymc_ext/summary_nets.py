"""Old path of the summary networks, kept as a thin re-export.

The code now lives in :mod:`pymc_ext.amortized.summary_nets`.
"""

from pymc_ext.amortized.summary_nets import (
    SUMMARY_KINDS,
    ConvSummary,
    DeepSetSummary,
    GRUSummary,
    IdentitySummary,
    MLPSummary,
    build_summary_net,
    check_summary_net,
)

__all__ = [
    "SUMMARY_KINDS",
    "IdentitySummary",
    "MLPSummary",
    "DeepSetSummary",
    "GRUSummary",
    "ConvSummary",
    "build_summary_net",
    "check_summary_net",
]
