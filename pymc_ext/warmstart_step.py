"""Old path of ``WarmStartNUTS``, kept as a thin re-export.

The code now lives in :mod:`pymc_ext.step_methods`: :mod:`~pymc_ext.step_methods.warmstart`
(:class:`WarmStartNUTS`), :mod:`~pymc_ext.step_methods.warmstart_init` (:class:`WarmStart`,
:func:`run_warmstart`, :class:`StepLogDensity`, :data:`DEFAULT_WARMUP`,
:data:`WARMSTART_INITS`), :mod:`~pymc_ext.step_methods.warmstart_potential`
(:class:`WarmStartPotential`), and :mod:`pymc_ext.sampling` (:func:`lift_warmstart_attrs`,
the deprecated no-op :func:`install_warmstart_attrs_hook`).
"""

from pymc_ext.sampling import install_warmstart_attrs_hook, lift_warmstart_attrs
from pymc_ext.step_methods.warmstart import WarmStartNUTS
from pymc_ext.step_methods.warmstart_init import (
    DEFAULT_WARMUP,
    WARMSTART_INITS,
    StepLogDensity,
    WarmStart,
    run_warmstart,
)
from pymc_ext.step_methods.warmstart_potential import WarmStartPotential

__all__ = [
    "WarmStartNUTS",
    "WarmStart",
    "WarmStartPotential",
    "StepLogDensity",
    "DEFAULT_WARMUP",
    "run_warmstart",
    "lift_warmstart_attrs",
    "install_warmstart_attrs_hook",
    "WARMSTART_INITS",
]
