"""The ``pm.sample`` step methods, together (as PyMC's own ``step_methods``).

- :mod:`~pymc_ext.step_methods.warmstart`: :class:`WarmStartNUTS`, PyMC's NUTS
  started from Pathfinder (or a flow) with its mass matrix; its warm starts in
  :mod:`~pymc_ext.step_methods.warmstart_init`, its mass matrix in
  :mod:`~pymc_ext.step_methods.warmstart_potential`.
- :mod:`~pymc_ext.step_methods.flow`: :class:`FlowMC`, NUTS (or MALA) plus exact
  flow independence proposals.
- :mod:`~pymc_ext.step_methods.amortized`: :class:`AmortizedMH`, independence
  Metropolis-Hastings with an amortized posterior as proposal.
- :mod:`~pymc_ext.step_methods.pymc_internals`: the one adapter that touches
  private attributes of PyMC objects, with a PyMC version check.

The classes are imported lazily (``FlowMC`` and ``AmortizedMH`` need torch).

Examples
--------
>>> from pymc_ext.step_methods import WarmStartNUTS
>>> WarmStartNUTS.name
'warmstart_nuts'
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "WarmStartNUTS": "pymc_ext.step_methods.warmstart",
    "FlowMC": "pymc_ext.step_methods.flow",
    "AmortizedMH": "pymc_ext.step_methods.amortized",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pymc_ext.step_methods' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
