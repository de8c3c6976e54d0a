"""Old path of Pathfinder, kept as a thin re-export.

The code now lives in :mod:`pymc_ext.vi`: :mod:`~pymc_ext.vi.approximation`
(:class:`NormalApproximation`), :mod:`~pymc_ext.vi.single_path`,
:mod:`~pymc_ext.vi.multipath`, :mod:`~pymc_ext.vi.result` (:class:`PathResult`,
:class:`PathfinderResult`, :class:`PathfinderError`, :class:`PathStatus`),
:mod:`~pymc_ext.vi.datatree` and :mod:`~pymc_ext.vi.api` (:func:`pathfinder`,
:func:`density_pathfinder`). L-BFGS is :mod:`pymc_ext.blocks.lbfgs` and PSIS
:func:`pymc_ext.blocks.importance.psis_log_weights`.
"""

from pymc_ext.blocks.importance import psis_log_weights
from pymc_ext.blocks.lbfgs import LBFGSInfo, LBFGSState
from pymc_ext.vi.api import density_pathfinder, pathfinder
from pymc_ext.vi.approximation import NormalApproximation
from pymc_ext.vi.config import PathfinderConfig
from pymc_ext.vi.datatree import pathfinder_to_datatree
from pymc_ext.vi.multipath import multipath_pathfinder
from pymc_ext.vi.result import PathfinderError, PathfinderResult, PathResult, PathStatus
from pymc_ext.vi.single_path import single_path_pathfinder

__all__ = [
    "NormalApproximation",
    "PathResult",
    "PathfinderResult",
    "PathfinderError",
    "single_path_pathfinder",
    "multipath_pathfinder",
    "pathfinder_to_datatree",
    "density_pathfinder",
    "pathfinder",
    "psis_log_weights",
    "LBFGSState",
    "LBFGSInfo",
    "PathStatus",
    "PathfinderConfig",
]
