"""The cmdstanpy wrapper's flow and amortized methods, on a real CmdStan.

One small program serves every test: a conjugate normal with the
prior-predictive convention. ``y[n] ~ normal(mu, 1)`` (``mu`` a 2-vector with a
``normal(0, 1)`` prior) has the posterior ``mu[j] ~ normal(sum_n y[n, j] /
(N + 1), 1 / sqrt(N + 1))``; ``s ~ exponential(1)`` is not in the likelihood,
so its posterior is its prior (mean 1, sd 1). Transformed parameters and a
generated quantity (``y_rep``) check the constrained outputs and their shapes;
``ybar_minus_mu`` reads the data, so an amortized posterior must compute it
with each dataset's own ``y``.
"""

from __future__ import annotations

import logging
import time
import warnings

import arviz as az
import cmdstanpy
import numpy as np
import pytest
import torch
from cmdstanpy.utils.logging import get_logger as cmdstanpy_logger
from stan_helpers import write_code

from pymc_ext.flow_sampler import FlowMCMCWarning
from stan_bridge import CmdStanModel, StanAmortizer, StanAmortizerDataError, StanFlowFit
from stan_bridge.prior import PriorPredictiveError
from stan_bridge.programs import write_program

pytestmark = pytest.mark.stan
cmdstanpy_logger().setLevel(logging.WARNING)
torch.set_num_threads(1)  # the flows are small; extra threads only slow a shared machine

PROGRAM = """\
// Conjugate normal with the prior-predictive convention (tests of the cmdstanpy wrapper).
data {
  int<lower=0> N;
  array[N] vector[2] y;
  int<lower=0, upper=1> prior_only;
}
parameters {
  vector[2] mu;
  real<lower=0> s;
}
transformed parameters {
  real mu_diff = mu[1] - mu[2];
  vector[2] ybar_minus_mu = -mu;
  for (n in 1:N) {
    ybar_minus_mu += y[n] / N;
  }
}
model {
  mu ~ normal(0, 1);
  s ~ exponential(1);
  if (!prior_only) {
    for (n in 1:N) {
      y[n] ~ normal(mu, 1);
    }
  }
}
generated quantities {
  array[N] vector[2] y_rep;
  for (n in 1:N) {
    y_rep[n] = to_vector(normal_rng(mu, 1));
  }
}
"""
N = 5
Y = np.random.default_rng(0).normal(0.5, 1.0, size=(N, 2))
DATA = {"N": N, "y": Y.tolist(), "prior_only": 0}

# small settings that keep each run to seconds
FLOW_OPTIONS = {"n_rounds": 2, "search_climbs": 0, "num_paths": 4}
WARM_OPTIONS = {
    "num_draws": 300, "num_paths": 4,
    "flow_kwargs": {"transforms": 2, "hidden_features": (16, 16)},
    "forward_kwargs": {"max_steps": 200}, "reverse_kwargs": {"max_steps": 100},
}


def analytic(y: np.ndarray) -> tuple[np.ndarray, float]:
    """Posterior mean and sd of each ``mu[j]``."""
    n = y.shape[0]
    return y.sum(0) / (n + 1), 1.0 / np.sqrt(n + 1)




@pytest.fixture(scope="module")
def model():
    return CmdStanModel(stan_file=write_code(PROGRAM, "wrapper_normal"))


@pytest.fixture(scope="module")
def flow_fit(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("flow_csv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a short adaptation may warn; the checks below decide
        fit = model.flow_sample(data=DATA, chains=16, iter_sampling=200, seed=3,
                                show_progress=False, output_dir=out, **FLOW_OPTIONS)
    return fit, out


@pytest.fixture(scope="module")
def plain_fit(model):
    return model.sample(data=DATA, chains=1, iter_warmup=100, iter_sampling=20, seed=1,
                        show_progress=False)


def test_warmstart_flow_matches_the_analytic_posterior(model, tmp_path):
    fit = model.sample(data=DATA, warmstart="flow", chains=2, seed=4, show_progress=False,
                       warmstart_options={**WARM_OPTIONS, "output_dir": tmp_path})
    ws = fit.warmstart
    assert ws.method == "flow" and ws.grad_evals > 0 and np.isfinite(ws.pareto_k)
    assert ws.metric in ("diag_e", "dense_e") and ws.metric_reason
    assert len(ws.inits_files) == 2 and all(f.startswith(str(tmp_path)) for f in ws.inits_files)
    assert ws.iter_warmup == fit.num_draws_warmup
    assert ws.warmup in ("keep", "adapt", "fallback")
    assert (ws.iter_warmup < 1000) == (ws.warmup != "fallback")  # a usable flow shortens warmup
    mean, sd = analytic(Y)
    mu = fit.stan_variable("mu")  # 2 chains x 1000 draws: Monte Carlo se about 0.01
    np.testing.assert_allclose(mu.mean(0), mean, atol=0.05)
    np.testing.assert_allclose(mu.std(0), sd, rtol=0.1)
    s = fit.stan_variable("s")
    assert abs(s.mean() - 1.0) < 0.15 and abs(s.std() - 1.0) < 0.2


def test_warmstart_flow_explores_by_tempering_when_asked(model, tmp_path):
    """Stan's flow warm start keeps Pathfinder's seeding by default (cost); explore="tempering"
    seeds the flow from tempering walkers, and one mode raises no multimodal warning."""
    options = {**WARM_OPTIONS, "output_dir": tmp_path, "explore": "tempering",
               "tempering_options": {"tempering_walkers": 128}}
    with warnings.catch_warnings():
        warnings.simplefilter("error", FlowMCMCWarning)
        fit = model.sample(data=DATA, warmstart="flow", chains=2, seed=4, show_progress=False,
                           warmstart_options=options)
    seed = fit.warmstart.result.seed
    assert str(seed.method) == "tempering" and seed.census.n_modes == 1
    mean, _ = analytic(Y)
    np.testing.assert_allclose(fit.stan_variable("mu").mean(0), mean, atol=0.05)


def test_flow_sample_has_cmdstanpy_accessors(flow_fit, plain_fit):
    fit, _ = flow_fit
    assert isinstance(fit, StanFlowFit)
    draws = fit.draws()
    assert draws.shape == (200, 16, len(fit.column_names))
    assert fit.column_names[0] == "lp__"
    # the program's columns are cmdstanpy's, in CmdStan's order
    ours = [c for c in fit.column_names if not c.endswith("__")]
    theirs = [c for c in plain_fit.column_names if not c.endswith("__")]
    assert ours == theirs
    assert set(fit.stan_variables()) == set(plain_fit.stan_variables()) == {
        "mu", "s", "mu_diff", "ybar_minus_mu", "y_rep"
    }
    for name, value in plain_fit.stan_variables().items():
        assert fit.stan_variable(name).shape == (200 * 16, *value.shape[1:])
    assert fit.draws(concat_chains=True).shape == (3200, len(fit.column_names))
    np.testing.assert_array_equal(fit.stan_variable("mu")[:200], draws[:, 0, 6:8])
    frame = fit.draws_pd(["mu", "lp__"])
    assert list(frame.columns) == ["chain__", "iter__", "draw__", "mu[1]", "mu[2]", "lp__"]
    table = fit.summary()
    assert list(table.index) == ["lp__", *theirs]
    assert {"Mean", "MCSE", "StdDev", "5%", "50%", "95%", "ESS_bulk", "R_hat"} <= set(table)
    assert table.loc["mu[1]", "R_hat"] < 1.05
    # lp__ is Stan's log density (Jacobian, no constants), as in CmdStan's output
    sm = fit.stan_model
    x = sm.unconstrain({"mu": fit.stan_variable("mu")[0], "s": fit.stan_variable("s")[0]})
    assert draws[0, 0, 0] == pytest.approx(sm.logp(x), abs=1e-8)
    text = fit.diagnose()
    assert "global acceptance" in text and "Pareto k" in text and "R-hat" in text
    assert np.isfinite(fit.figures["global_acceptance"]) and fit.figures["grad_evals"] > 0


def test_flow_sample_matches_the_analytic_posterior(flow_fit):
    fit, _ = flow_fit
    mean, sd = analytic(Y)
    mu = fit.stan_variable("mu")
    ess = fit.summary().loc[["mu[1]", "mu[2]"], "ESS_bulk"].to_numpy()
    np.testing.assert_array_less(np.abs(mu.mean(0) - mean), 4 * sd / np.sqrt(ess))
    np.testing.assert_allclose(mu.std(0), sd, rtol=0.1)
    np.testing.assert_allclose(fit.stan_variable("mu_diff"), mu[:, 0] - mu[:, 1])
    s = fit.stan_variable("s")
    assert abs(s.mean() - 1.0) < 0.15 and abs(s.std() - 1.0) < 0.2
    # y_rep is the posterior predictive: mean mu, variance 1 + sd^2
    y_rep = fit.stan_variable("y_rep")
    np.testing.assert_allclose(y_rep.mean(0), np.broadcast_to(mean, (N, 2)), atol=0.12)
    np.testing.assert_allclose(y_rep.std(0), np.sqrt(1 + sd**2), rtol=0.1)


def test_flow_sample_csv_and_datatree(flow_fit):
    fit, out = flow_fit
    assert len(fit.csv_files) == 16 and fit.csv_files == sorted(map(str, out.glob("*.csv")))
    read = cmdstanpy.from_csv(fit.csv_files)
    assert read.chains == 16
    np.testing.assert_array_equal(read.draws(), fit.draws())
    assert cmdstanpy.from_csv(str(out)).draws().shape == fit.draws().shape
    assert read.stan_variable("y_rep").shape == fit.stan_variable("y_rep").shape
    dt = az.from_cmdstanpy(read)
    assert dt.posterior["mu"].shape == (16, 200, 2)
    ours = fit.to_datatree()
    assert {"mu", "s", "mu_diff", "y_rep"} <= set(ours.posterior.data_vars)
    np.testing.assert_allclose(ours.posterior["y_rep"].values, dt.posterior["y_rep"].values)
    np.testing.assert_allclose(ours.posterior["mu"].values, dt.posterior["mu"].values)


def test_flow_sample_is_reproducible_from_the_seed(model):
    def run(seed):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return model.flow_sample(data=DATA, chains=8, iter_sampling=30, seed=seed,
                                     show_progress=False, n_rounds=1, search_climbs=0,
                                     num_paths=2).draws()

    a, b = run(11), run(11)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, run(12))


def test_bad_input_fails_before_any_compiling(tmp_path):
    path = tmp_path / "never_built.stan"
    path.write_text(PROGRAM.replace("normal(0, 1);", "normal(0, 1.5);"))
    model = CmdStanModel(stan_file=path, compile=False)
    start = time.perf_counter()
    with pytest.raises(ValueError, match="'pathfinder' or 'flow'"):
        model.sample(data=DATA, warmstart="flows")
    with pytest.raises(TypeError, match="warmstart_options"):
        model.sample(data=DATA, warmstart="flow", warmstart_options={"num_walkers": 3})
    with pytest.raises(TypeError, match="iter_sampling="):
        model.flow_sample(data=DATA, draws=100)
    with pytest.raises(TypeError, match="Unknown flow MCMC option"):
        model.flow_sample(data=DATA, n_round=3)
    with pytest.raises(ValueError, match="chains"):
        model.flow_sample(data=DATA, chains=2)
    with pytest.raises(ValueError, match="seed"):
        model.flow_sample(data=DATA, seed="one")
    with pytest.raises(TypeError, match="unexpected keyword"):
        model.amortize(DATA, epochz=3)
    with pytest.raises(ValueError, match="prior_only"):
        model.amortize({**DATA, "prior_only": 1})
    assert time.perf_counter() - start < 10  # stanc --info at most; no C++ compile
    assert not model.__dict__.get("_stan_models")


def test_amortize_without_the_convention_fails_before_training():
    # arK has no prior_only flag and no y_rep
    model = CmdStanModel(stan_file=write_program("arK"), compile=False)
    start = time.perf_counter()
    with pytest.raises(PriorPredictiveError, match="prior_only"):
        model.amortize({"K": 1, "T": 2, "y": [0.0, 1.0]})
    assert time.perf_counter() - start < 10
    assert not model.__dict__.get("_stan_models")


@pytest.fixture(scope="module")
def amortizer(model):
    return model.amortize(
        DATA, 2000, seed=0, show_progress=False, epochs=40, batch_size=128,
        flow_kwargs={"transforms": 3, "hidden_features": (32, 32)},
    )


@pytest.mark.slow
def test_amortize_gives_the_analytic_posterior_for_stan_data_dicts(amortizer):
    assert isinstance(amortizer, StanAmortizer) and amortizer.fitted
    assert amortizer.target.observed == ["y"]
    y_new = np.random.default_rng(5).normal(-0.3, 1.0, size=(N, 2))
    new = {"N": N, "y": y_new.tolist(), "prior_only": 0}  # as the Stan user writes it
    mean, sd = analytic(y_new)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = amortizer.sample(new, draws=2000, seed=1)
        exact = amortizer.sample(new, draws=2000, seed=1, correct="psis")
    # raw draws of a briefly trained amortizer are an approximation (measured: means off by
    # 0.1-0.35 sd, sds 0-25 % wide); PSIS against the program's own density corrects them
    for idata, tol in ((raw, 0.5), (exact, 0.1)):
        mu = idata.posterior["mu"].values[0]
        np.testing.assert_allclose(mu.mean(0), mean, atol=tol * sd)
        np.testing.assert_allclose(mu.std(0), sd, rtol=0.7 * tol)
    assert exact.posterior.attrs["pareto_k"] < 0.7
    many = amortizer.sample_many([new, DATA], draws=100, seed=2)
    assert many.posterior["mu"].shape == (2, 100, 2)
    out = amortizer.fit_many([new], draws=200, seed=3, show_progress=False)
    assert {"mu", "s", "mu_diff"} <= set(out.posteriors[0].posterior.data_vars)
    np.testing.assert_allclose(
        out.posteriors[0].posterior["mu"].values.reshape(-1, 2).mean(0), mean, atol=0.25 * sd
    )


def test_amortizer_refuses_data_it_was_not_trained_for(model):
    amortizer = model.amortize(DATA, seed=0, show_progress=False, train=False)
    assert not amortizer.fitted  # the data are checked before anything is drawn
    y6 = np.zeros((6, 2)).tolist()
    with pytest.raises(StanAmortizerDataError, match="N = 5"):
        amortizer.sample({"N": 6, "y": y6, "prior_only": 0}, draws=10)
    with pytest.raises(StanAmortizerDataError, match="prior_only"):
        amortizer.sample({**DATA, "prior_only": 1}, draws=10)
    with pytest.raises(StanAmortizerDataError, match="not an input"):
        amortizer.sample_many([{**DATA, "sigma": 2.0}], draws=10)
    with pytest.raises(TypeError, match="not both"):
        amortizer.sample(DATA, draws=10, seed=1, random_seed=1)


def test_flow_sample_has_metadata_like_cmdstanmcmc(flow_fit, plain_fit):
    fit, _ = flow_fit
    config = fit.metadata.cmdstan_config
    assert config["method"] == "sample" and config["algorithm"] == "flow_mcmc"
    assert (config["num_samples"], config["num_chains"], config["seed"]) == (200, 16, 3)
    assert config["save_warmup"] == 0 and config["thin"] == 1
    assert fit.metadata.column_names == fit.column_names
    # the program's variables map to the same shapes as in CmdStan's own metadata
    ours, theirs = fit.metadata.stan_vars, plain_fit.metadata.stan_vars
    assert set(ours) == set(theirs)
    assert all(ours[n].dimensions == theirs[n].dimensions for n in theirs)
    assert "lp__" in fit.metadata.method_vars


@pytest.fixture(scope="module")
def quick_amortizer(model):
    """Briefly trained (seconds): the tests below check the outputs' plumbing, not accuracy."""
    return model.amortize(DATA, 300, seed=0, show_progress=False, epochs=2,
                          flow_kwargs={"transforms": 2, "hidden_features": (16, 16)})


def _ybar_minus_mu(posterior, y) -> np.ndarray:
    return np.asarray(y).mean(0) - posterior["mu"].values


def test_amortized_posteriors_have_tps_and_gqs_at_each_datasets_data(quick_amortizer):
    """Transformed parameters that read the data use the dataset's data, not the training
    data; generated quantities are there, reproducible from the seed."""
    am = quick_amortizer
    y_new = Y + 3.0
    new = {**DATA, "y": y_new.tolist()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a briefly trained amortizer: high Pareto k
        raw = am.sample(new, draws=40, seed=1)
        again = am.sample(new, draws=40, seed=1)
        mh = am.sample(new, draws=30, seed=1, correct="mh", chains=2)
        arrays = am.sample(new, draws=20, seed=1, return_inferencedata=False)
        many = am.sample_many([new, DATA], draws=25, seed=2)
        out = am.fit_many([new, DATA], draws=30, seed=3, show_progress=False, chains=2)
    for idata in (raw, mh, out.posteriors[0]):
        post = idata.posterior
        assert {"mu", "s", "mu_diff", "ybar_minus_mu", "y_rep"} <= set(post.data_vars)
        np.testing.assert_allclose(post["ybar_minus_mu"].values, _ybar_minus_mu(post, y_new))
        assert post["y_rep"].shape == (*post["mu"].shape[:2], N, 2)
    np.testing.assert_allclose(out.posteriors[1].posterior["ybar_minus_mu"].values,
                               _ybar_minus_mu(out.posteriors[1].posterior, Y))
    np.testing.assert_allclose(many.posterior["ybar_minus_mu"].values[0],
                               y_new.mean(0) - many.posterior["mu"].values[0])
    np.testing.assert_allclose(many.posterior["ybar_minus_mu"].values[1],
                               Y.mean(0) - many.posterior["mu"].values[1])
    assert many.posterior["y_rep"].dims == ("dataset", "draw", "y_rep_dim_0", "y_rep_dim_1")
    np.testing.assert_allclose(arrays.posterior["ybar_minus_mu"],
                               y_new.mean(0) - arrays.posterior["mu"])
    assert arrays.posterior["y_rep"].shape == (20, N, 2)
    # Stan's RNG seeded with (seed, chain): the same seed, the same y_rep; chains differ
    np.testing.assert_array_equal(raw.posterior["y_rep"].values, again.posterior["y_rep"].values)
    assert not np.allclose(mh.posterior["y_rep"].values[0], mh.posterior["y_rep"].values[1])
    # y_rep ~ normal(mu, 1) around each draw's own mu
    resid = raw.posterior["y_rep"].values - raw.posterior["mu"].values[:, :, None, :]
    assert abs(resid.mean()) < 0.3 and 0.8 < resid.std() < 1.2


def test_amortizer_warnings_give_stan_advice(quick_amortizer):
    far = {**DATA, "y": np.full((N, 2), 40.0).tolist()}  # far outside the training data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quick_amortizer.sample(far, draws=50, seed=1)
        quick_amortizer.sample_many([far, DATA], draws=50, seed=1)
    texts = [str(w.message) for w in caught]
    assert any("Pareto k" in t for t in texts)
    assert any("CmdStanModel.sample" in t or 'correct="mh"' in t for t in texts)
    assert not [t for t in texts if "pm.sample" in t or "pymc_ext.AmortizedMH" in t]
    assert all(w.filename == __file__ for w in caught)  # pointed at the caller's line
