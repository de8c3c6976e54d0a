"""Multi-path Pathfinder (Zhang, Carpenter, Gelman & Vehtari, 2022), engine-agnostic.

Pathfinder runs L-BFGS (:mod:`pymc_ext.blocks.lbfgs`) on ``-log p`` from a few
starting points. At every iterate it turns the L-BFGS ``(s, y)`` history into a
normal approximation whose covariance is the BFGS inverse Hessian in its
low-rank-plus-diagonal form (the paper's Algorithms 3-5), scores it by a Monte
Carlo ELBO computed with the batched log density, and keeps the best one.
Several paths are pooled and importance-resampled with Pareto-smoothed
importance sampling (:mod:`pymc_ext.blocks.importance`).

- :mod:`~pymc_ext.vi.approximation`: :class:`NormalApproximation`, the BFGS approximation;
- :mod:`~pymc_ext.vi.single_path`: :func:`single_path_pathfinder`;
- :mod:`~pymc_ext.vi.multipath`: :func:`multipath_pathfinder`, its options in
  :mod:`~pymc_ext.vi.config` (:class:`PathfinderConfig`);
- :mod:`~pymc_ext.vi.result`: :class:`PathResult`, :class:`PathfinderResult`,
  :class:`PathStatus`, :class:`PathfinderError`;
- :mod:`~pymc_ext.vi.datatree`: :func:`pathfinder_to_datatree`;
- :mod:`~pymc_ext.vi.api`: :func:`pathfinder` (PyMC) and :func:`density_pathfinder`.

Everything except :func:`pathfinder` works on a :class:`~pymc_ext.density.LogDensity`
and never sees PyMC or Stan. Import from the submodules.
"""
