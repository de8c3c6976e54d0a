"""The PyMC adapter: PyMC models as :class:`~pymc_ext.density.LogDensity` objects.

- :mod:`pymc_ext.pymc_adapter.logdensity`: :func:`log_density`, :class:`PyMCLogDensity`,
  :func:`model_fingerprint`, :class:`ModelSpecificationError`;
- :mod:`pymc_ext.pymc_adapter.prior`: :func:`prior_predictive` and the compiled
  :class:`PriorPredictiveSampler`;
- :mod:`pymc_ext.pymc_adapter.datatree`: unconstrained draws -> ArviZ ``DataTree``
  (:func:`to_datatree`, :func:`posterior_dict`).

Import from the submodules (kept out of this file so that importing one part
does not load the others, e.g. ArviZ).
"""
