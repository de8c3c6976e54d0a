"""FlowMC (pymc_ext.flow_step): a pm.sample step method with exact flow proposals."""

from __future__ import annotations

import warnings

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import pytest
from toy_densities import share_and_se

from pymc_ext.flow_sampler import FlowMCMCWarning
from pymc_ext.flow_step import FlowMC

ADAPT = {
    "n_rounds": 3,
    "first_train_steps": 200,
    "train_steps": 60,
    "adapt_local_steps": 10,
    "num_paths": 6,
    "walkers": 64,
    "progressbar": False,
    "flow_kwargs": {"transforms": 3, "hidden_features": (32, 32)},
}
SAMPLE = {"progressbar": False, "compute_convergence_checks": False}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def two_mode_model() -> pm.Model:
    """x in R^2: mixture 0.3 N(-3, I) + 0.7 N(3, I) (times a flat-ish N(0, 10^2) prior)."""
    with pm.Model() as model:
        x = pm.Normal("x", 0, 10, shape=2)
        lo = pm.logp(pm.Normal.dist(-3.0, 1.0), x).sum() + np.log(0.3)
        hi = pm.logp(pm.Normal.dist(3.0, 1.0), x).sum() + np.log(0.7)
        pm.Potential("mixture", pt.logaddexp(lo, hi))
    return model


@pytest.fixture(scope="module")
def model_and_adaptation():
    model = two_mode_model()
    with model, warnings.catch_warnings():
        warnings.simplefilter("ignore", FlowMCMCWarning)
        step = FlowMC(random_seed=0, **ADAPT)
    return model, step.adaptation


def _plus_share(idata) -> tuple[float, float]:
    return share_and_se((idata.posterior["x"].mean("x_dim_0") > 0).values)


@pytest.mark.parametrize("local", ["nuts", "mala"])
def test_flowmc_mixes_between_modes_with_the_right_weights(model_and_adaptation, local):
    model, adaptation = model_and_adaptation
    with model:
        step = FlowMC(adaptation=adaptation, local=local)
        idata = pm.sample(draws=400, tune=200, chains=2, cores=1, step=step, random_seed=5,
                          **SAMPLE)
    p, se = _plus_share(idata)
    assert abs(p - 0.7) < max(4 * se, 0.03), (p, se)
    # within a mode: N(+-3, I) shrunk by the N(0, 10^2) prior, sd 1 / sqrt(1.01)
    x = idata.posterior["x"].values.reshape(-1, 2)
    plus = x[x.mean(1) > 0]
    assert np.all(np.abs(plus.std(0) - 1 / np.sqrt(1.01)) < 0.1), plus.std(0)
    stats = idata.sample_stats
    for name in ("flow_accept_prob", "flow_accepted", "move", "diverging", "step_size"):
        assert name in stats
    assert float(stats["flow_accept_prob"].mean()) > 0.3
    # every chain visits both modes (NUTS alone stays where it starts)
    side = idata.posterior["x"].mean("x_dim_0") > 0
    assert bool(side.any("draw").all()) and bool((~side).any("draw").all())
    assert np.array_equal(stats["move"].values, stats["flow_accepted"].values.astype(int))


def test_flowmc_is_reproducible_with_random_seed(model_and_adaptation):
    model, adaptation = model_and_adaptation
    runs = []
    for _ in range(2):
        with model:
            idata = pm.sample(draws=30, tune=20, chains=2, cores=1, random_seed=7,
                              step=FlowMC(adaptation=adaptation), **SAMPLE)
        runs.append(idata.posterior["x"].values)
    assert np.array_equal(runs[0], runs[1])
    with model:
        other = pm.sample(draws=30, tune=20, chains=2, cores=1, random_seed=8,
                          step=FlowMC(adaptation=adaptation), **SAMPLE)
    assert not np.array_equal(runs[0], other.posterior["x"].values)


def test_flowmc_adaptation_is_reproducible_with_its_own_seed(model_and_adaptation):
    model, adaptation = model_and_adaptation
    with model, warnings.catch_warnings():
        warnings.simplefilter("ignore", FlowMCMCWarning)
        again = FlowMC(random_seed=0, local="mala", **ADAPT)
    X = np.random.default_rng(0).normal(size=(5, 2))
    assert np.array_equal(
        again.adaptation.kernel.flow.log_prob_numpy(X), adaptation.kernel.flow.log_prob_numpy(X)
    )


@pytest.mark.slow
def test_flowmc_runs_in_parallel_chains_and_matches_sequential(model_and_adaptation):
    model, adaptation = model_and_adaptation
    out = {}
    for cores in (1, 2):
        with model:
            idata = pm.sample(draws=40, tune=20, chains=2, cores=cores, random_seed=3,
                              step=FlowMC(adaptation=adaptation, local="mala"), **SAMPLE)
        out[cores] = idata
    assert np.array_equal(out[1].posterior["x"].values, out[2].posterior["x"].values)
    assert "local_accept_prob" in out[2].sample_stats


def test_flowmc_refuses_a_subset_of_variables(model_and_adaptation):
    model, adaptation = model_and_adaptation
    with pm.Model():
        a = pm.Normal("a")
        pm.Normal("b")
        with pytest.raises(ValueError, match="all continuous free variables"):
            FlowMC(vars=[a], adaptation=adaptation)
    with model, pytest.raises(ValueError, match="local must be"):
        FlowMC(adaptation=adaptation, local="slice")


def test_flowmc_moves_on_the_flows_base_space_after_a_reverse_kl_fit():
    """With a reverse-KL flow (funnels), local="auto" is HMC on the flow's base space:
    the chains match the funnel's v ~ N(0, 3) and the step size is tuned to ~0.9."""
    from pymc_ext.flow_sampler import flow_mcmc_adapt
    from pymc_ext.pymc_adapter.logdensity import log_density

    with pm.Model() as funnel:
        v = pm.Normal("v", 0, 3)
        pm.Normal("x", 0, pm.math.exp(v / 2), shape=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FlowMCMCWarning)
        adaptation = flow_mcmc_adapt(
            log_density(funnel), fit="reverse", explore="climbs", n_rounds=2,
            reverse_steps=1000, chains=32, num_paths=4, search_climbs=0, random_seed=0,
            progressbar=False,
        )
    with funnel:
        step = FlowMC(adaptation=adaptation)
        assert step.local == "neutra"
        idata = pm.sample(draws=500, tune=300, chains=2, cores=1, step=step, random_seed=3,
                          **SAMPLE)
    stats = idata.sample_stats
    assert "local_accept_prob" in stats and "flow_accept_prob" in stats
    assert 0.75 < float(stats["local_accept_prob"].mean()) < 0.99
    vv = idata.posterior["v"].values
    # loose: 1000 autocorrelated draws (the 0.1 is checked by flow_mcmc's test)
    assert abs(vv.mean()) < 0.5 and abs(vv.std() - 3.0) < 0.5
