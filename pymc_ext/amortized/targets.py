"""What an :class:`~pymc_ext.Amortizer` is trained on: a model with a simulator and a density.

Amortized fitting needs three things from a model, whatever its engine:

1. **a prior-predictive simulator**: ``(params, data)`` pairs, params on the
   unconstrained space of the model's :class:`~pymc_ext.density.LogDensity`;
2. **the true joint density at any dataset**, ``log p(theta, y)``, to check
   and correct amortized draws (Pareto k, importance resampling);
3. **names, shapes and a fingerprint**, to report results and to refuse
   loading saved weights into a different model.

Two adapters provide them:

- :class:`PyMCTarget` for a ``pm.Model``. The simulator is
  :func:`pymc_ext.prior_predictive` (the model's own random graph,
  vectorised). The joint density is the model's ``logp`` graph with the
  observed data (and conditioned covariates) turned into inputs, compiled
  once and vectorised over draws (and over datasets of one shape): a new
  dataset costs no compilation.
- :class:`PriorPredictiveTarget` for any log density that follows the
  prior-predictive convention, such as ``stan_bridge.StanModel``: it has
  ``prior_predictive(n, seed) -> (params (n, dim), {obs_name: (n, *shape)})``
  and a way to build the same density at other data (for Stan, the same
  compiled program with new data).

The adapters live in :mod:`pymc_ext.amortized.pymc_target` and
:mod:`pymc_ext.amortized.density_target`, the interface in
:mod:`pymc_ext.amortized.target_base`; this module gathers them and picks one
(:func:`make_target`).
"""

from __future__ import annotations

from typing import Any

from pymc_ext.amortized.density_target import PriorPredictiveTarget
from pymc_ext.amortized.pymc_target import PyMCTarget, pymc_fingerprint
from pymc_ext.amortized.target_base import AmortizedTarget, flat_parameter_names

__all__ = [
    "AmortizedTarget",
    "PyMCTarget",
    "PriorPredictiveTarget",
    "make_target",
    "flat_parameter_names",
    "pymc_fingerprint",
]


def make_target(model: Any, **kwargs: Any) -> AmortizedTarget:
    """The right adapter for a ``pm.Model`` or a density with ``prior_predictive``.

    Examples
    --------
    >>> import numpy as np, pymc as pm
    >>> from pymc_ext.amortized.targets import make_target
    >>> with pm.Model() as model:
    ...     mu = pm.Normal("mu")
    ...     y = pm.Normal("y", mu, 1, observed=np.zeros(3))
    >>> make_target(model).kind
    'pymc'
    """
    import pymc as pm

    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if model is None or isinstance(model, pm.Model):
        return PyMCTarget(model, **kwargs)
    if callable(getattr(model, "prior_predictive", None)):
        extra = set(kwargs) - {"observed", "condition"}
        if extra:
            raise ValueError(
                f"{sorted(extra)} apply to PyMC models only; a {type(model).__name__} conditions "
                "on the observed data its prior_predictive returns."
            )
        return PriorPredictiveTarget(model, **kwargs)
    raise TypeError(
        f"Cannot amortize a {type(model).__name__}: give a pm.Model, or a LogDensity with "
        "prior_predictive(n, seed) -> (params, {obs: data}) such as stan_bridge.StanModel."
    )
