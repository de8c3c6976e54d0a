"""Exploration by tempering: the SMC core, the strata, the census, and flow MCMC with it.

Real densities (numpy mixtures with exact gradients, a PyMC model for FlowMC),
real zuko flows; every weight is checked against the truth within Monte Carlo
error.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from scipy.special import logsumexp
from toy_densities import gaussian_density, mixture_density, share_and_se

from pymc_ext.density import FunctionLogDensity
from pymc_ext.flow_sampler import (
    FlowMCMCConfig,
    FlowMCMCWarning,
    distinct_modes,
    flow_mcmc,
    flow_mcmc_adapt,
)
from pymc_ext.flow_sampler.census import build_census, exploration_modes
from pymc_ext.flow_sampler.disagreement import census_warnings
from pymc_ext.flow_sampler.mode_search import search_modes
from pymc_ext.flow_sampler.reference import default_reference
from pymc_ext.flow_sampler.strata import stratified_resample
from pymc_ext.flow_sampler.tempering import explore_tempering, next_beta
from pymc_ext.flows import pathfinder_seed

#: N(0, I) with weight 0.6 and a narrow N((10, 10), 0.3^2 I) with weight 0.4, off to one side:
#: 1 climb in 3,000 from the default overdispersed starts ends at the narrow mode
WEIGHTS, CENTERS, SCALES = [0.6, 0.4], [[0.0, 0.0], [10.0, 10.0]], [1.0, 0.3]
SMALL_FLOW = {
    "chains": 64, "n_rounds": 3, "first_train_steps": 200, "train_steps": 50,
    "flow_kwargs": {"hidden_features": (32, 32), "transforms": 2}, "progressbar": False,
}


@pytest.fixture(scope="module")
def narrow_off_side():
    return mixture_density(2, WEIGHTS, CENTERS, SCALES)


def test_next_beta_keeps_the_conditional_ess_at_its_target():
    rng = np.random.default_rng(0)
    logw = np.log(rng.dirichlet(np.ones(500)))
    delta = rng.normal(0.0, 30.0, 500)
    b = next_beta(logw, delta, 0.2, 0.9)
    inc = (b - 0.2) * delta
    cess = np.exp(2 * logsumexp(logw + inc) - logsumexp(logw + 2 * inc))
    assert 0.2 < b < 1.0
    assert cess == pytest.approx(0.9, abs=1e-6)
    assert next_beta(logw, np.zeros(500), 0.2, 0.9) == 1.0  # nothing changes: straight to 1


def test_stratified_resampling_keeps_each_stratum_weight_and_a_floor_of_walkers():
    rng = np.random.default_rng(1)
    n = 400
    labels = rng.choice(3, size=n, p=[0.9, 0.09, 0.01])
    logw = np.log(rng.dirichlet(np.ones(n)))
    logw[labels == 2] -= 12.0  # a stratum of almost no weight
    logw -= logsumexp(logw)
    f = rng.normal(size=n)
    estimates = []
    for _ in range(400):
        idx, lw = stratified_resample(logw, labels, 20, rng)
        assert idx.shape == (n,) and lw.shape == (n,)
        for k in range(3):
            assert np.sum(labels[idx] == k) >= 20
            assert logsumexp(lw[labels[idx] == k]) == pytest.approx(
                logsumexp(logw[labels == k]), abs=1e-9)
        estimates.append(np.exp(lw) @ f[idx])
    truth = np.exp(logw) @ f
    se = np.std(estimates) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates) - truth) < 4 * se + 1e-12  # resampling is unbiased


def test_tempered_population_has_the_posterior_moments_and_log_evidence():
    # unnormalised N((3, -1), diag(0.5^2, 2^2)): log Z = log(2 pi * 0.5 * 2) + log(7)
    mean, cov = np.array([3.0, -1.0]), np.diag([0.25, 4.0])
    base = gaussian_density(mean, cov)
    d = FunctionLogDensity(2, lambda x: base.logp(x) + np.log(7.0),
                           lambda x: base.logp_and_grad(x)[1],
                           lambda X: base.logp_batch(X) + np.log(7.0),
                           lambda X: base.logp_and_grad_batch(X)[1])
    ex = explore_tempering(d, default_reference(d, 5.0), n_walkers=1024, random_seed=3,
                           progressbar=False)
    w = np.exp(ex.log_weights)
    m = w @ ex.position
    v = w @ (ex.position - m) ** 2
    ess = 1.0 / np.sum(w**2)
    assert np.all(np.abs(m - mean) < 5 * np.sqrt(np.diag(cov) / ess))
    assert np.allclose(v, np.diag(cov), rtol=0.2)
    truth = np.log(2 * np.pi * 0.5 * 2.0) + np.log(7.0)
    assert 0 < ex.log_evidence_se < 0.3
    assert abs(ex.log_evidence - truth) < 4 * ex.log_evidence_se
    assert ex.reached_target and ex.betas[-1] == 1.0


def test_log_evidence_of_a_normalised_mixture_is_zero_within_its_error(narrow_off_side):
    ex = explore_tempering(narrow_off_side, default_reference(narrow_off_side, 5.0),
                           n_walkers=1024, random_seed=0, progressbar=False)
    assert ex.log_evidence_se < 0.3
    assert abs(ex.log_evidence) < 4 * ex.log_evidence_se


def test_the_census_keeps_a_curved_mode_whole():
    """A banana is one mode: the walkers' short batch ascent ends spread along its ridge, with
    dips deeper than the barrier tolerance on the straight segments between the ends (3
    groups), and the L-BFGS climbs from those ends merge them (gp_pois_regr's posterior was
    split in 4 this way, so the flow sampler took it for multimodal)."""
    from toy_densities import batched

    from pymc_ext.flow_sampler.strata import cluster_walkers

    def lp(X):
        return -0.5 * X[:, 0] ** 2 / 1.5**2 - 0.5 * (X[:, 1] - X[:, 0] ** 2) ** 2 / 0.5**2

    def gr(X):
        r = (X[:, 1] - X[:, 0] ** 2) / 0.5**2
        return np.column_stack([-X[:, 0] / 1.5**2 + 2 * X[:, 0] * r, -r])

    banana = batched(2, lp, gr)
    ex = explore_tempering(banana, default_reference(banana, 5.0), n_walkers=256,
                           random_seed=0, progressbar=False)
    w = np.exp(ex.log_weights - logsumexp(ex.log_weights))
    spread = np.sqrt(w @ (ex.position - w @ ex.position) ** 2)
    assert cluster_walkers(banana, ex.position, spread, tol=2.0, iters=50)[1].shape[0] > 1
    modes = exploration_modes(banana, ex)
    assert modes.tops.shape[0] == 1 and modes.weights.tolist() == [1.0]
    assert np.allclose(modes.tops[0], 0.0, atol=0.05)


def test_no_climb_from_the_default_starts_finds_the_narrow_mode(narrow_off_side):
    """The climbs' lottery loses: Pathfinder's paths and 128 more climbs find one mode."""
    seed = pathfinder_seed(narrow_off_side, num_paths=16, random_seed=1)
    known = distinct_modes(narrow_off_side, seed.centers)
    found = search_modes(narrow_off_side, seed, known, num_climbs=128,
                         rng=np.random.default_rng(1))
    tops = np.vstack([known, found.tops])
    assert not np.any(np.linalg.norm(tops - np.array(CENTERS[1]), axis=1) < 1.0)


@pytest.mark.slow
def test_tempering_gives_a_narrow_mode_off_to_one_side_its_weight(
    narrow_off_side, one_torch_thread
):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FlowMCMCWarning)  # a healthy run warns of nothing
        idata = flow_mcmc(narrow_off_side, explore="tempering", tempering_walkers=512,
                          draws=200, random_seed=1, **SMALL_FLOW)
    attrs = idata.sample_stats.attrs
    census = json.loads(attrs["mode_census"])
    tops = np.array([m["location"] for m in census["modes"]])
    assert tops.shape == (2, 2)
    narrow = int(np.argmin(np.linalg.norm(tops - np.array(CENTERS[1]), axis=1)))
    assert np.allclose(tops[narrow], CENTERS[1], atol=0.05)
    assert np.allclose(tops[1 - narrow], CENTERS[0], atol=0.05)
    mode = census["modes"][narrow]
    assert mode["found_by"] == [0, 1] and mode["covered"]
    assert 0.0 < mode["first_seen_beta"] <= 1.0
    # the census weight (production draws, MC error from the ESS) and the exact truth
    assert abs(mode["weight"] - 0.4) < 4 * mode["weight_se"] + 0.01
    x = idata.posterior["x"].values.reshape(-1, 2)
    share = np.mean(np.linalg.norm(x - CENTERS[1], axis=1) < 3.0)
    assert abs(share - 0.4) < 4 * mode["weight_se"] + 0.01
    # chains split between the two explorations' flows; the log evidence of a normalised target
    assert sorted(set(attrs["chain_exploration"])) == [0, 1]
    assert abs(attrs["log_evidence"]) < 4 * attrs["log_evidence_se"] + 0.05


def test_explorations_that_disagree_on_the_modes_raise_the_warning(narrow_off_side):
    """One exploration tempers properly; the other jumps to beta = 1 in one step and loses
    the narrow mode."""
    q0 = default_reference(narrow_off_side, 5.0)
    good = explore_tempering(narrow_off_side, q0, n_walkers=512, random_seed=2,
                             progressbar=False)
    rushed = explore_tempering(narrow_off_side, q0, n_walkers=128, max_temperatures=1,
                               random_seed=2, progressbar=False)
    assert good.reached_target and not rushed.reached_target
    found = [exploration_modes(narrow_off_side, ex) for ex in (good, rushed)]
    census = build_census(narrow_off_side, [good, rushed], found)
    assert census.n_modes == 2
    messages = census_warnings(census, budget=1)
    assert any("Exploration 1 ran out of temperatures" in m for m in messages)
    missed = [m for m in messages if m.startswith("Exploration 1 found no mode at [10, 10]")]
    assert len(missed) == 1 and "exploration 0 found" in missed[0]


def test_an_exploration_out_of_temperatures_warns_through_flow_mcmc(
    narrow_off_side, one_torch_thread
):
    with pytest.warns(FlowMCMCWarning, match="ran out of temperatures"):
        ad = flow_mcmc_adapt(
            narrow_off_side, explore="tempering", tempering_walkers=64, tempering_max_steps=2,
            random_seed=0, **{**SMALL_FLOW, "n_rounds": 1, "first_train_steps": 20,
                              "chains": 16})
    assert ad.census.reached_target == [False, False]
    assert ad.census.temperatures == [2, 2]


def test_explore_options_are_checked_before_any_work():
    with pytest.raises(ValueError, match="explore must be 'climbs'"):
        FlowMCMCConfig(explore="anneal")
    with pytest.raises(ValueError, match="tempering_ess must be in"):
        FlowMCMCConfig(tempering_ess=1.0)
    with pytest.raises(ValueError, match="explorations must be a positive integer"):
        FlowMCMCConfig(explorations=0)
    with pytest.raises(ValueError, match="reference must be"):
        FlowMCMCConfig(reference="prior")


NARROW_OFF_SIDE_STAN = """
parameters {
  vector[2] x;
}
model {
  target += log_mix(0.6, normal_lpdf(x | 0, 1), normal_lpdf(x | 10, 0.3));
}
"""


def _narrow_share(x: np.ndarray) -> float:
    return float(np.mean(np.linalg.norm(x.reshape(-1, 2) - CENTERS[1], axis=1) < 3.0))


@pytest.mark.slow
def test_flowmc_with_tempering_proposes_from_both_explorations_flows(one_torch_thread):
    import pymc as pm
    import pytensor.tensor as pt

    from pymc_ext.flow_sampler import MixtureFlow
    from pymc_ext.flow_step import FlowMC

    with pm.Model():
        x = pm.Flat("x", shape=2)
        comps = [np.log(w) + pm.logp(pm.Normal.dist(np.asarray(c), s), x).sum()
                 for w, c, s in zip(WEIGHTS, CENTERS, SCALES, strict=True)]
        pm.Potential("mixture", pt.logsumexp(pt.stack(comps)))
        step = FlowMC(explore="tempering", tempering_walkers=512, random_seed=0,
                      local="mala", walkers=64,
                      **{k: v for k, v in SMALL_FLOW.items() if k != "chains"})
        idata = pm.sample(draws=400, tune=100, chains=2, cores=1, step=step, random_seed=1,
                          progressbar=False, compute_convergence_checks=False)
    assert isinstance(step.flow, MixtureFlow) and len(step.adaptation.members) == 2
    assert step.adaptation.census.n_modes == 2
    x = idata.posterior["x"].values
    share, se = share_and_se(np.linalg.norm(x - CENTERS[1], axis=-1) < 3.0)
    assert abs(share - 0.4) < 4 * se + 0.02


@pytest.mark.slow
def test_a_stan_program_explored_by_tempering(one_torch_thread):
    from stan_bridge import StanModel

    sm = StanModel(NARROW_OFF_SIDE_STAN, {}, progressbar=False)
    idata = flow_mcmc(sm, explore="tempering", tempering_walkers=512, draws=200,
                      random_seed=3, **SMALL_FLOW)
    census = json.loads(idata.sample_stats.attrs["mode_census"])
    assert len(census["modes"]) == 2
    narrow = min(census["modes"], key=lambda m: np.linalg.norm(np.subtract(m["location"], 10)))
    assert abs(narrow["weight"] - 0.4) < 4 * narrow["weight_se"] + 0.01
    assert abs(_narrow_share(idata.posterior["x"].values) - 0.4) < 4 * narrow["weight_se"] + 0.01


def test_production_checks_name_a_weight_disagreement_and_a_mode_the_chains_miss():
    from pymc_ext.flow_sampler.census import CensusMode, ModeCensus

    def census(shares, ses, weight, laplace):
        a = CensusMode([0.0, 0.0], [1.0, 1.0], [0, 1], [0.6, 0.6], [0.05, 0.05], 0.01,
                       weight=1 - weight, weight_se=0.01, share_per_exploration=[0.6, 0.6],
                       share_se_per_exploration=[0.01, 0.01], laplace_log_mass=np.log(1 - laplace),
                       flow_share=0.6)
        b = CensusMode([10.0, 10.0], [0.3, 0.3], [0, 1], [0.4, 0.4], [0.05, 0.05], 0.1,
                       weight=weight, weight_se=0.01, share_per_exploration=shares,
                       share_se_per_exploration=ses, laplace_log_mass=np.log(laplace),
                       flow_share=0.4)
        return ModeCensus([a, b], 0.0, 0.1, [0.0, 0.0], 2, [10, 10], [True, True])

    agree = census([0.39, 0.41], [0.01, 0.01], 0.4, 0.4)
    assert census_warnings(agree, stage="production") == []
    split = census_warnings(census([0.2, 0.6], [0.02, 0.02], 0.4, 0.4), stage="production")
    assert len(split) == 1 and "exploration 0's flow put 0.200" in split[0]
    missed = census_warnings(census([0.01, 0.01], [0.005, 0.005], 0.01, 0.4),
                             stage="production")
    assert any("Laplace approximation holds 0.400" in m for m in missed)


def test_production_draws_above_every_known_top_warn_of_a_missed_mode(one_torch_thread):
    """An adaptation that knows only a wide mode, reused on the target with a narrow, heavy
    mode beside it (as in the benchmark's family0_8, where tempering in 20-D never put a
    walker in the narrow mode, yet production chains fell into it): the draws above the
    wide mode's top warn, and the climb from them finds the missed top."""
    wide = mixture_density(2, [1.0], [[0.0, 0.0]], [1.0])
    both = mixture_density(2, [0.3, 0.7], [[0.0, 0.0], [2.5, 0.0]], [1.0, 0.2])
    adaptation = flow_mcmc_adapt(wide, random_seed=0, **SMALL_FLOW)
    with pytest.warns(FlowMCMCWarning, match="a mode the explorations missed"):
        idata = flow_mcmc(both, adaptation=adaptation, draws=200, random_seed=1,
                          progressbar=False)
    top = np.asarray(json.loads(idata.sample_stats.attrs["missed_modes"]))
    assert top.shape == (1, 2) and np.allclose(top[0], [2.5, 0.0], atol=0.05), top
    # the adaptation's own target: nothing above its top, no warning of the kind
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        same = flow_mcmc(wide, adaptation=adaptation, draws=100, random_seed=1,
                         progressbar=False)
    assert not [w for w in caught if "missed" in str(w.message)]
    assert json.loads(same.sample_stats.attrs["missed_modes"]) == []


def test_laplace_masses_far_above_the_evidence_warn_that_walkers_missed_mass():
    """The census of the benchmark's family0_8: one mode whose top is the narrow, heavy
    component's (Laplace mass 0.86 of a normalised target), while the walkers sat in the
    wide one and carried log Z = log 0.136 to beta = 1."""
    from pymc_ext.flow_sampler.census import CensusMode, ModeCensus

    def census(laplace_mass, log_z):
        mode = CensusMode([0.0] * 3, [1.0] * 3, [0, 1], [1.0, 1.0], [0.0, 0.0], 0.01,
                          laplace_log_mass=np.log(laplace_mass))
        return ModeCensus([mode], log_z, 0.07, [log_z, log_z], 2, [20, 20], [True, True])

    missed = census_warnings(census(0.864, np.log(0.136)))
    assert len(missed) == 1 and "the walkers missed mass near that top" in missed[0]
    assert "6.35 times the evidence" in missed[0]
    assert census_warnings(census(0.95, 0.0)) == []        # a fair Laplace mass: no warning
    assert census_warnings(census(0.864, np.log(0.136)), stage="production") == []
    # phi^4 at N = 64: explorations that never reached the posterior carried log Z far below
    # the top's Laplace mass; the ratio overflowed a float and the run crashed
    assert "e^1000 times the evidence" in census_warnings(census(1.0, -1000.0))[0]


def test_a_default_reference_that_misses_the_support_is_narrowed_with_a_warning():
    """10-D normal with support |x_i| < 4: under 1% of N(0, 5^2) draws land inside it."""
    from pymc_ext.flow_sampler.config import FlowMCMCConfig
    from pymc_ext.flow_sampler.exploration import tempering_reference

    def lp(X):
        return np.where(np.all(np.abs(X) < 4, axis=-1), -0.5 * (X * X).sum(-1), -np.inf)

    d = FunctionLogDensity(10, lambda x: lp(x[None])[0], lambda x: -x, lp, lambda X: -X)
    with pytest.warns(FlowMCMCWarning, match=r"N\(x0, 5\^2\).*its scale is 2.5 instead"):
        q0 = tempering_reference(d, FlowMCMCConfig(), np.random.default_rng(0))
    assert np.allclose(q0.scales, 2.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a scale the user chose is kept as it is
        q0 = tempering_reference(d, FlowMCMCConfig(reference_scale=5.0),
                                 np.random.default_rng(0))
    assert np.allclose(q0.scales, 5.0)


def test_a_flow_warm_start_seeded_by_tempering_starts_in_the_mode_no_climb_finds(
    narrow_off_side, one_torch_thread
):
    """The flow of ``WarmStartNUTS(init="flow")`` is fitted to tempering walkers: its
    resampled draws put the narrow mode's weight there (Pathfinder's paths never reach it,
    test above), and a warning says NUTS cannot weigh two modes."""
    from pymc_ext.flow_sampler.explored_init import explored_flow_init

    with pytest.warns(FlowMCMCWarning, match="2 separated modes"):
        res = explored_flow_init(
            narrow_off_side, random_seed=1, progressbar=False, num_draws=2000,
            tempering_options={"tempering_walkers": 512},
            flow_kwargs={"hidden_features": (32, 32), "transforms": 2},
            forward_kwargs={"max_steps": 400},
        )
    assert str(res.seed.method) == "tempering" and res.seed.census.n_modes == 2
    assert set(res.fit_info) == {"forward"}  # two modes: no mode-seeking reverse-KL refinement
    assert res.grad_evals >= res.seed.grad_evals > 0
    share = np.mean(np.linalg.norm(res.draws - CENTERS[1], axis=1) < 3.0)
    assert abs(share - 0.4) < 0.08  # importance-resampled: near the true weight


def test_pymc_sample_with_a_flow_warm_start_starts_chains_in_both_modes(one_torch_thread):
    """End to end through ``pymc_ext.sample(warmstart="flow")`` on a PyMC model: the chains
    start in both modes, stay there (NUTS), and the warning names the reason."""
    import pymc as pm

    import pymc_ext

    c = np.array([[0.0, 0.0], [10.0, 10.0]])
    with pm.Model() as model:
        x = pm.Flat("x", shape=2)
        comps = [np.log(w) - 0.5 * pm.math.sum(((x - ci) / s) ** 2) - 2 * np.log(s)
                 for w, ci, s in zip(WEIGHTS, c, SCALES, strict=True)]
        pm.Potential("mix", pm.math.logsumexp(pm.math.stack(comps)))
    options = {"num_draws": 500, "method": "forward",
               "tempering_options": {"tempering_walkers": 512},
               "flow_kwargs": {"hidden_features": (32, 32), "transforms": 2},
               "forward_kwargs": {"max_steps": 300}}
    with pytest.warns(FlowMCMCWarning, match="NUTS cannot move between them"):
        idata = pymc_ext.sample(draws=30, tune=30, chains=8, cores=1, random_seed=3,
                                warmstart="flow", warmstart_kwargs=options, model=model,
                                progressbar=False, compute_convergence_checks=False)
    chain_means = idata.posterior["x"].values.mean(1)  # (chains, 2)
    in_narrow = np.linalg.norm(chain_means - c[1], axis=1) < 2.0
    in_wide = np.linalg.norm(chain_means - c[0], axis=1) < 3.0
    assert in_narrow.any() and in_wide.any() and (in_narrow | in_wide).all()


def test_an_evidence_shortfall_the_adapted_flow_accounts_for_is_a_note_not_a_warning():
    """Walkers that did not equilibrate carry a low log Z (on 6 of the reference posteriors
    with a right answer); the adapted flow's own evidence settles it when it covers the
    posterior, and leaves the warning where it does not."""
    from pymc_ext.flow_sampler import coverage_check
    from pymc_ext.flow_sampler.census import CensusMode, ModeCensus
    from pymc_ext.flow_sampler.disagreement import settle_shortfall
    from pymc_ext.flows import build_flow

    target = gaussian_density(np.zeros(2), np.eye(2))  # exp(-x'x / 2): log Z = log(2 pi)
    log_z = np.log(2 * np.pi)
    mode = CensusMode([0.0, 0.0], [1.0, 1.0], [0, 1], [1.0, 1.0], [0.0, 0.0], 0.01,
                      laplace_log_mass=log_z)  # exact for a normal
    low = log_z + np.log(0.01)  # the walkers carried a hundredth of it
    census = ModeCensus([mode], low, 0.05, [low] * 2, 2, [20, 20], [True, True])
    messages = census_warnings(census)
    assert len(messages) == 1 and "100 times the evidence" in messages[0]
    walkers = np.random.default_rng(1).normal(size=(64, 2))

    def coverage(cov):  # what the adaptation computes for its frozen flow
        flow = build_flow(2, mean=np.zeros(2), covariance=cov, random_seed=0)
        return coverage_check(target, flow, walkers, target.logp_batch(walkers),
                              np.zeros((1, 2)), np.ones(2), np.random.default_rng(0))

    kept, notes = settle_shortfall(census, messages, [coverage(np.eye(2))])
    assert kept == [] and len(notes) == 1 and "Settled" in notes[0]
    kept, notes = settle_shortfall(census, messages, [coverage(0.05 * np.eye(2))])
    assert kept == messages and notes == []
