"""Building blocks shared by every algorithm: optimisation, importance sampling, linear algebra,
random streams, torch settings and progress bars.

Nothing here knows about PyMC, Stan, flows or samplers; the algorithms in
:mod:`pymc_ext.vi`, :mod:`pymc_ext.flows`, :mod:`pymc_ext.flow_sampler` and
:mod:`pymc_ext.amortized` import from here, never the other way round.

========================  =====================================================
module                    what it holds
========================  =====================================================
``lbfgs``                 the one L-BFGS (strong-Wolfe line search, history)
``dual_averaging``        Nesterov dual averaging of a step size
``importance``            PSIS log weights, importance ESS, resampling
``covariance``            pooled covariance with a ridge, a Cholesky that never fails
``random``                seeds: integer seeds for torch, child streams
``torch_settings``        the torch device and dtype names
``progress``              the one progress bar (rich, as PyMC's)
``metric_choice``         diagonal, low-rank or dense metric from a warm start
``affine``                the map ``x = mean + L z`` from a covariance (3 forms)
========================  =====================================================
"""
