"""The models and reference posteriors used as examples, tests and benchmarks.

- :mod:`pymc_ext.references.models`: the reference posteriors written as PyMC
  models (:func:`eight_schools`, :func:`reference_model`, the one entry point;
  ``PYMC_REFERENCE_NAMES`` lists the posteriors that have one), with the families
  in :mod:`~pymc_ext.references.regressions`, :mod:`~pymc_ext.references.hmm`
  and :mod:`~pymc_ext.references.ode`;
- :mod:`pymc_ext.references.posteriors`: loading the posteriordb reference draws and
  data, and the one way results are compared with them (:func:`compare_to_reference`).

Import from the submodules (the models need PyMC, the posteriors do not).
"""
