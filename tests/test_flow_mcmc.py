"""Flow MCMC (pymc_ext.flow_sampler): kernels, exactness of the MH correction, the sampler."""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pytest
from toy_densities import gaussian_density, mixture_density, mixture_draws, share_and_se

from pymc_ext.flow_sampler import (
    FlowMCMCWarning,
    coverage_check,
    flow_independence_step,
    flow_mcmc,
    flow_mcmc_adapt,
    hmc_step,
    local_init,
    mala_step,
)
from pymc_ext.flows import build_flow, fit_forward_kl

FAST = {
    "n_rounds": 4,
    "first_train_steps": 200,
    "train_steps": 60,
    "adapt_local_steps": 10,
    "num_paths": 6,
    "progressbar": False,
    "flow_kwargs": {"transforms": 3, "hidden_features": (32, 32)},
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- local kernels --------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["mala", "hmc"])
def test_local_kernels_leave_a_correlated_gaussian_invariant(kernel):
    cov = np.array([[4.0, 1.5], [1.5, 1.0]])
    d = gaussian_density([1.0, -2.0], cov)
    rng = np.random.default_rng(0)
    state = local_init(d, rng.multivariate_normal([1.0, -2.0], cov, size=2000))
    for _ in range(30):
        if kernel == "mala":
            state, info = mala_step(rng, state, d, 0.8, np.diag(cov))
        else:
            state, info = hmc_step(rng, state, d, 0.3, np.diag(cov), 5)
    assert 0.2 < info.acceptance_rate.mean() < 1.0
    # started in the target: stays there (means and covariance within MC error of 2000 draws)
    assert np.allclose(state.position.mean(0), [1.0, -2.0], atol=0.15)
    assert np.allclose(np.cov(state.position.T), cov, atol=0.45)


# -- the MH correction is what makes it exact -------------------------------------------------


def test_mh_correction_fixes_a_deliberately_misfitted_flow():
    """Flow fitted to the wrong weights (0.8/0.2); corrected draws give the true 0.3/0.7.

    Fails if the correction is removed: accepting every proposal gives the flow's
    0.2, and a ratio without q targets p*q (about 0.37).
    """
    weights, centers, scales = [0.3, 0.7], [[-3.0, -3.0], [3.0, 3.0]], [1.0, 1.0]
    d = mixture_density(2, weights, centers, scales)
    rng = np.random.default_rng(0)
    wrong = mixture_draws(rng, 3000, [0.8, 0.2], centers, [1.3, 1.3])
    flow = build_flow(2, mean=wrong.mean(0), covariance=np.cov(wrong.T), random_seed=0,
                      transforms=3, hidden_features=(32, 32))
    fit_forward_kl(flow, wrong, max_steps=600, random_seed=0, progressbar=False)
    flow = flow.frozen()

    uncorrected, _ = flow.sample(20000, rng)
    flow_share = (uncorrected.mean(1) > 0).mean()
    assert abs(flow_share - 0.7) > 0.3  # the proposal alone is visibly wrong

    state = local_init(d, flow.sample(400, rng)[0])
    logq = flow.log_prob_numpy(state.position)
    keep = []
    for it in range(80):
        state, logq, info = flow_independence_step(rng, state, logq, d, flow)
        if it >= 20:
            keep.append(state.position.mean(1) > 0)
    share, se = share_and_se(np.stack(keep, axis=1))
    assert 0.1 < info.acceptance_rate.mean() < 0.95
    assert abs(share - 0.7) < max(4 * se, 0.02), (share, se)


# -- the sampler ------------------------------------------------------------------------------


def test_flow_mcmc_gets_three_unequal_modes_right_within_mc_error():
    weights = [0.2, 0.5, 0.3]
    centers = [[-5.0, 0.0], [0.0, 5.0], [5.0, -3.0]]
    scales = [0.5, 1.0, 1.5]
    d = mixture_density(2, weights, centers, scales)
    dt = flow_mcmc(d, draws=200, chains=64, random_seed=3, **FAST)
    x = dt.posterior["x"].values  # (chain, draw, 2)
    label = np.argmin(
        ((x[..., None, :] - np.asarray(centers)) ** 2).sum(-1) / np.asarray(scales) ** 2, axis=-1
    )
    for k, w in enumerate(weights):
        share, se = share_and_se(label == k)
        assert abs(share - w) < max(4 * se, 0.02), (k, share, w, se)
    attrs = dt.sample_stats.attrs
    assert attrs["n_modes"] == 3
    assert attrs["mode_hops"] > 100 and attrs["global_acceptance"] > 0.2
    assert len(attrs["global_acceptance_per_round"]) == FAST["n_rounds"]
    assert attrs["grad_evals"] > attrs["grad_evals_adaptation"] > 0
    stats = dt.sample_stats
    assert stats["flow_accepted"].dtype == bool and stats["lp"].shape == (64, 200)
    assert "flow_adaptation" in dt.children


def test_flow_mcmc_is_reproducible_from_random_seed():
    d = mixture_density(2, [0.5, 0.5], [[-3, 0], [3, 0]], [1.0, 1.0])
    kw = {**FAST, "n_rounds": 2, "first_train_steps": 40, "train_steps": 10}
    a = flow_mcmc(d, draws=20, chains=16, random_seed=11, **kw)
    b = flow_mcmc(d, draws=20, chains=16, random_seed=11, **kw)
    assert np.array_equal(a.posterior["x"].values, b.posterior["x"].values)
    c = flow_mcmc(d, draws=20, chains=16, random_seed=12, **kw)
    assert not np.array_equal(a.posterior["x"].values, c.posterior["x"].values)


def test_low_global_acceptance_warns_and_says_what_to_try():
    d = gaussian_density([0.0, 0.0], np.eye(2))
    kw = {**FAST, "n_rounds": 1, "first_train_steps": 20}
    with pytest.warns(FlowMCMCWarning, match=r"global acceptance.*What to try"):
        dt = flow_mcmc(d, draws=10, chains=16, random_seed=0, min_global_acceptance=1.01, **kw)
    assert "global acceptance" in dt.sample_stats.attrs["warnings"]


def test_coverage_check_flags_a_mode_the_flow_missed():
    centers = [[-4.0, -4.0], [4.0, 4.0]]
    d = mixture_density(2, [0.5, 0.5], centers, [1.0, 1.0])
    rng = np.random.default_rng(0)
    one_mode = mixture_draws(rng, 2000, [1.0, 0.0], centers, [1.0, 1.0])
    flow = build_flow(2, mean=one_mode.mean(0), covariance=np.cov(one_mode.T), random_seed=0,
                      transforms=2, hidden_features=(16, 16))
    fit_forward_kl(flow, one_mode, max_steps=300, random_seed=0, progressbar=False)
    walkers = mixture_draws(rng, 64, [0.5, 0.5], centers, [1.0, 1.0])
    out = coverage_check(
        d, flow.frozen(), walkers, d.logp_batch(walkers), np.asarray(centers), np.ones(2), rng
    )
    assert out["starved_modes"] == [1]
    assert out["starved_walker_fraction"] > 0.3


@pytest.mark.slow
def test_high_dimension_warns_before_the_work():
    d = gaussian_density(np.zeros(301), np.eye(301))
    with pytest.warns(FlowMCMCWarning, match="dimension is 301.*What to try"):
        flow_mcmc_adapt(
            d, chains=8, n_rounds=1, adapt_local_steps=1, global_steps=1, first_train_steps=1,
            num_paths=1, random_seed=0, progressbar=False,
            flow_kwargs={"transforms": 1, "hidden_features": (8, 8)},
        )


def test_bad_input_is_refused_up_front():
    d = gaussian_density([0.0], np.eye(1))
    with pytest.raises(TypeError, match="PyMC model or a LogDensity"):
        flow_mcmc(object())
    with pytest.raises(ValueError, match="local_kernel"):
        flow_mcmc(d, local_kernel="nuts")
    with pytest.raises(ValueError, match="at least 4"):
        flow_mcmc(d, chains=2)
    with pytest.raises(ValueError, match="flow_dtype"):
        flow_mcmc(d, flow_dtype="float16")
    with pytest.raises(ValueError, match="draws"):
        flow_mcmc(d, draws=-1)


@pytest.mark.slow
def test_flow_mcmc_on_a_pymc_model_matches_the_analytic_posterior():
    import pymc as pm

    y = np.array([0.5, 1.5, 1.0, 2.0])
    with pm.Model(coords={"obs": range(4)}) as model:
        mu = pm.Normal("mu", 0, 1)
        pm.HalfNormal("sigma", 1)  # not in the likelihood: posterior = prior
        pm.Normal("y", mu, 1, observed=y, dims="obs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FlowMCMCWarning)
        dt = flow_mcmc(model, draws=150, chains=64, random_seed=1, **FAST)
    post = dt.posterior
    assert set(post.data_vars) == {"mu", "sigma"}
    assert "observed_data" in dt.children
    n = len(y)
    mu_mean, mu_sd = y.sum() / (n + 1), np.sqrt(1 / (n + 1))
    mu_draws = post["mu"].values
    ess = float(az.ess(post)["mu"])
    assert abs(mu_draws.mean() - mu_mean) < 4 * mu_sd / np.sqrt(ess)
    assert abs(mu_draws.std() / mu_sd - 1) < 0.1
    s = post["sigma"].values
    assert abs(s.mean() - np.sqrt(2 / np.pi)) < 0.05
    assert float(az.rhat(post)["mu"]) < 1.02
