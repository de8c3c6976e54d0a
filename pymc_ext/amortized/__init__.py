"""Amortized fitting: train once on a model's prior predictive, then posteriors in milliseconds.

:class:`Amortizer` trains a summary network and a conditional neural spline
flow ``q(theta | y)`` by maximum likelihood on ``(theta, y)`` pairs simulated
from the model itself. After that, the posterior for a new dataset is one
pass through the networks. Because the model's true density is at hand, every
amortized posterior is checked against it:

- :meth:`Amortizer.sample` reports the Pareto k of the importance weights
  ``p(theta, y) / q(theta | y)`` for that dataset, and ``correct="psis"``
  importance-resamples the draws;
- :class:`pymc_ext.AmortizedMH` uses ``q`` as an independence proposal inside
  ``pm.sample``, which makes the result exact;
- :meth:`Amortizer.check_calibration` runs simulation-based calibration.

The package's modules:

- :mod:`~pymc_ext.amortized.core`: the :class:`Amortizer` itself (slim, delegates);
- :mod:`~pymc_ext.amortized.results`: draws, training history, errors;
- :mod:`~pymc_ext.amortized.targets` (with :mod:`~pymc_ext.amortized.target_base`,
  :mod:`~pymc_ext.amortized.pymc_target`, :mod:`~pymc_ext.amortized.density_target`):
  what is amortized (PyMC models, Stan programs);
- :mod:`~pymc_ext.amortized.layout`, :mod:`~pymc_ext.amortized.summary_nets`,
  :mod:`~pymc_ext.amortized.networks`: data layout and networks;
- :mod:`~pymc_ext.amortized.simulation`, :mod:`~pymc_ext.amortized.standardize`,
  :mod:`~pymc_ext.amortized.training`: simulate, standardise, train;
- :mod:`~pymc_ext.amortized.sampling`, :mod:`~pymc_ext.amortized.diagnostics`,
  :mod:`~pymc_ext.amortized.calibration`: draws, Pareto k, SBC;
- :mod:`~pymc_ext.amortized.mh`: the exact path (independence MH with the
  amortized proposal);
- :mod:`~pymc_ext.amortized.batch`, :mod:`~pymc_ext.amortized.many`: many
  datasets (``sample_many``, ``check_calibration``, ``fit_many``);
- :mod:`~pymc_ext.amortized.cluster`: the same work on a ``dask.distributed``
  cluster (what is shipped, tasks, retries);
- :mod:`~pymc_ext.amortized.serialization`: save / load.
"""

from pymc_ext.amortized.core import Amortizer
from pymc_ext.amortized.results import (
    AmortizedDraws,
    AmortizerMismatchError,
    AmortizerNotFittedError,
    TrainingHistory,
)

__all__ = [
    "AmortizedDraws",
    "Amortizer",
    "AmortizerMismatchError",
    "AmortizerNotFittedError",
    "TrainingHistory",
]
