"""Normalizing flows on the unconstrained space of a :class:`~pymc_ext.density.LogDensity`.

The flows themselves come from `zuko <https://github.com/probabilists/zuko>`_
(PyTorch): a neural spline flow (``zuko.flows.NSF``) by default, with sizes
chosen from the dimension, or zuko's MAF / RealNVP. Nothing here re-implements
a flow layer. What this package adds around zuko, one module each:

=================  ============================================================
module             what it holds
=================  ============================================================
``config``         :class:`FlowConfig`, :func:`default_flow_config`
``construction``   the zuko flows (NSF, MAF, RealNVP; normal or Student-t base)
``standardized``   :class:`StandardizedFlow` (``x = m + L z``), :func:`build_flow`
``training``       THE training loop (also the amortizer's): Adam, clipping,
                   early stopping, restarts after non-finite losses
``fit_info``       :class:`FitInfo`, :class:`FlowFitError`, the flows' use of it
``forward_kl``     :func:`fit_forward_kl`: maximum likelihood on samples
``reverse_kl``     :func:`fit_reverse_kl`: the ELBO from the density alone
``fit``            :func:`fit_flow`: build and fit, forward, reverse or both
``seeding``        :func:`pathfinder_seed` (:class:`SeedResult`),
                   :func:`~pymc_ext.flows.seeding.overdispersed_inits`
``init``           :func:`flow_init`: what ``WarmStartNUTS(init="flow")`` uses
``conditional``    :class:`~pymc_ext.flows.conditional.ConditionalFlow`, the
                   amortizer's conditional spline flow
=================  ============================================================

Torch runs on the GPU when it sees one, else on the CPU
(:func:`~pymc_ext.blocks.torch_settings.torch_device`).
"""

from pymc_ext.blocks.torch_settings import torch_device
from pymc_ext.flows.config import FLOW_FORMAT as FLOW_FORMAT
from pymc_ext.flows.config import FLOW_FORMAT_VERSION as FLOW_FORMAT_VERSION
from pymc_ext.flows.config import FlowConfig, default_flow_config
from pymc_ext.flows.fit import FitInfo, FlowFitError, fit_flow
from pymc_ext.flows.forward_kl import fit_forward_kl
from pymc_ext.flows.init import FlowInitResult, flow_init
from pymc_ext.flows.reverse_kl import density_logp_torch as density_logp_torch
from pymc_ext.flows.reverse_kl import fit_reverse_kl
from pymc_ext.flows.seeding import SeedResult, pathfinder_seed
from pymc_ext.flows.standardized import StandardizedFlow, build_flow

__all__ = [
    "FlowFitError",
    "FlowConfig",
    "default_flow_config",
    "torch_device",
    "StandardizedFlow",
    "build_flow",
    "FitInfo",
    "fit_forward_kl",
    "fit_reverse_kl",
    "fit_flow",
    "SeedResult",
    "pathfinder_seed",
    "FlowInitResult",
    "flow_init",
]
