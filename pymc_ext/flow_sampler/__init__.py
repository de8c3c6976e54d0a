"""Flow MCMC: a vectorised local + global sampler for posteriors NUTS cannot mix across.

Many walkers run at once on the batched density (``logp_and_grad_batch``).
During adaptation, each round

(a) moves every walker locally (MALA or HMC, step size adapted by dual
    averaging, dense metric from the within-mode covariance),
(b) fits or refines a normalizing flow (zuko, :mod:`pymc_ext.flows`) on the
    pooled walker states,
(c) proposes globally from the flow, an independence Metropolis-Hastings
    move accepted with the exact ratio ``p(x') q(x) / (p(x) q(x'))``,

and repeats (Gabrié, Rotskoff & Vanden-Eijnden, PNAS 2022; flowMC). The
walkers are seeded from overdispersed multi-path Pathfinder, so every mode a
path finds starts with walkers in it, wherever the user's initial point is.

After adaptation the flow, step size and metric are frozen, and the
production draws come from a fixed kernel (local moves, then one flow
independence proposal) that leaves the posterior invariant: each walker is
an exact MCMC chain. Walkers are reported as ArviZ chains.

The kernels are small and pure, BlackJAX style: ``State`` / ``Info`` named
tuples and ``init`` / ``step`` functions that take an explicit numpy
``Generator``.

=================  ==================================================================
module             what it holds
=================  ==================================================================
``kernels``        :class:`LocalState`, :class:`LocalInfo`, :class:`Metric`,
                   :func:`local_init`, :func:`mala_step`, :func:`hmc_step`
``global_move``    :class:`GlobalInfo`, :func:`flow_independence_step`
``mode_proposal``  :class:`ModeMixtureProposal`: the flow mixed with Laplace normals at
                   the modes (:func:`laplace_components`, :func:`with_mode_components`)
``kernel``         the production kernel: :class:`FlowMCMCKernel`, its state and info,
                   :func:`flow_mcmc_init`, :func:`flow_mcmc_step`
``modes``          :func:`distinct_modes`, :func:`discover_modes`, :func:`coverage_check`
``mode_search``    the multi-start L-BFGS search for modes the paths missed
``reference``      the tempering reference ``q0`` and ``pi_beta`` (:class:`TemperedDensity`)
``strata``         walkers grouped by mode of ``pi_beta``, stratified resampling
``tempering``      :func:`explore_tempering`: adaptive SMC from ``q0`` to the posterior
``census``         :class:`ModeCensus`: the modes the explorations found, their weights
``disagreement``   :func:`census_warnings`: where the explorations disagree
``exploration``    ``explore="tempering"``: explorations, their seeds, :func:`tempering_seed`,
                   :class:`MixtureFlow`
``explored_init``  the flow warm starts (``init="flow"``) seeded by tempering, and their
                   warning of several modes
``config``         :class:`FlowMCMCConfig` (every option, checked once) and its enums
``result``         :class:`FlowMCMCAdaptation`, :class:`FlowMCMCWarning`
``rounds``         the adaptation rounds, :func:`restart_stuck_walkers`
``adaptation``     :func:`flow_mcmc_adapt`, :func:`reverse_kl_reason`, the defaults
``driver``         :func:`flow_mcmc`
=================  ==================================================================

Step-size adaptation is :mod:`pymc_ext.blocks.dual_averaging` (re-exported here).
"""

from pymc_ext.blocks.dual_averaging import (
    DualAveragingState,
    dual_averaging_init,
    dual_averaging_update,
)
from pymc_ext.flow_sampler.adaptation import (
    default_num_draws,
    default_num_rounds,
    default_num_walkers,
    flow_mcmc_adapt,
    reverse_kl_reason,
)
from pymc_ext.flow_sampler.census import CensusMode, ModeCensus
from pymc_ext.flow_sampler.config import (
    Explore,
    FitMethod,
    FlowMCMCConfig,
    LocalKernel,
    MetricKind,
)
from pymc_ext.flow_sampler.disagreement import census_warnings
from pymc_ext.flow_sampler.driver import flow_mcmc
from pymc_ext.flow_sampler.exploration import MixtureFlow, tempering_seed
from pymc_ext.flow_sampler.global_move import GlobalInfo, flow_independence_step
from pymc_ext.flow_sampler.kernel import (
    FlowMCMCInfo,
    FlowMCMCKernel,
    FlowMCMCState,
    flow_mcmc_init,
    flow_mcmc_step,
)
from pymc_ext.flow_sampler.kernels import (
    DIVERGENCE_THRESHOLD,
    LocalInfo,
    LocalState,
    Metric,
    hmc_step,
    local_init,
    mala_step,
)
from pymc_ext.flow_sampler.mode_proposal import (
    LaplaceComponents,
    ModeMixtureProposal,
    laplace_components,
    with_mode_components,
)
from pymc_ext.flow_sampler.mode_search import ModeSearch
from pymc_ext.flow_sampler.modes import coverage_check, discover_modes, distinct_modes
from pymc_ext.flow_sampler.reference import GaussianReference, TemperedDensity
from pymc_ext.flow_sampler.result import FlowMCMCAdaptation, FlowMCMCWarning
from pymc_ext.flow_sampler.rounds import restart_stuck_walkers
from pymc_ext.flow_sampler.tempering import Exploration, explore_tempering

__all__ = [
    "FlowMCMCWarning",
    "LocalState",
    "LocalInfo",
    "local_init",
    "mala_step",
    "hmc_step",
    "GlobalInfo",
    "flow_independence_step",
    "DualAveragingState",
    "dual_averaging_init",
    "dual_averaging_update",
    "FlowMCMCState",
    "FlowMCMCInfo",
    "FlowMCMCKernel",
    "flow_mcmc_init",
    "flow_mcmc_step",
    "FlowMCMCAdaptation",
    "flow_mcmc_adapt",
    "flow_mcmc",
    "default_num_walkers",
    "default_num_rounds",
    "default_num_draws",
    "coverage_check",
    "discover_modes",
    "reverse_kl_reason",
    # new public names of the package
    "DIVERGENCE_THRESHOLD",
    "FitMethod",
    "FlowMCMCConfig",
    "LocalKernel",
    "Metric",
    "MetricKind",
    "ModeSearch",
    "distinct_modes",
    "restart_stuck_walkers",
    # exploration by tempering (issue #15)
    "CensusMode",
    "Exploration",
    "Explore",
    "GaussianReference",
    "MixtureFlow",
    "ModeCensus",
    "TemperedDensity",
    "census_warnings",
    "explore_tempering",
    "tempering_seed",
    # Laplace normals at the modes in the global proposal
    "LaplaceComponents",
    "ModeMixtureProposal",
    "laplace_components",
    "with_mode_components",
]
