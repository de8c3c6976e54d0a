"""The same Amortizer on a Stan program (a StanModel with the prior-predictive convention)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from pymc_ext.amortized import Amortizer, AmortizerMismatchError
from pymc_ext.amortized_diagnostics import AmortizedDataWarning
from stan_bridge import StanModel
from stan_bridge.programs import PROGRAMS, reference_data

pytestmark = pytest.mark.stan
torch.set_num_threads(1)

NORMAL_PROGRAM = """
data {
  int<lower=0> N;
  vector[N] y;
  int<lower=0, upper=1> prior_only;
}
parameters {
  real mu;
  real<lower=0> sigma;
}
model {
  mu ~ normal(0, 1);
  sigma ~ normal(0, 1);
  if (!prior_only) {
    y ~ normal(mu, sigma);
  }
}
generated quantities {
  array[N] real y_rep = normal_rng(rep_vector(mu, N), sigma);
}
"""


@pytest.fixture(scope="module")
def eight_schools():
    sm = StanModel(PROGRAMS["eight_schools"], reference_data("eight_schools"), progressbar=False)
    amortizer = Amortizer(sm, flow_kwargs={"transforms": 2, "hidden_features": (32, 32)})
    amortizer.fit(1000, epochs=4, batch_size=128, random_seed=0, progressbar=False)
    return sm, amortizer


def test_stan_amortizer_samples_with_stan_names(eight_schools):
    sm, amortizer = eight_schools
    assert amortizer.target.observed == ["y"]
    assert amortizer.target.param_names == sm.unconstrained_names
    y = np.array([10.0, 5.0, 0.0, 3.0, -2.0, 4.0, 12.0, 8.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AmortizedDataWarning)
        idata = amortizer.sample({"y": y}, draws=200, random_seed=1)
        corrected = amortizer.sample({"y": y}, draws=200, random_seed=1, correct="psis")
    post = idata.posterior
    assert {"mu", "tau", "theta", "theta_trans"} <= set(post.data_vars)
    assert post["theta"].shape == (1, 200, 8) and float(post["tau"].min()) > 0
    assert np.isfinite(post.attrs["pareto_k"])
    assert corrected.posterior.attrs["correct"] == "psis"
    # log_p is Stan's own log density of the program at these data
    x = np.column_stack(
        [post["theta_trans"].values[0, :3], post["mu"].values[0, :3],
         np.log(post["tau"].values[0, :3])]
    )
    expected = sm.with_data({**sm.data, "y": y}).logp_batch(x)
    np.testing.assert_allclose(idata.sample_stats["log_p"].values[0, :3], expected, rtol=1e-6)


def test_stan_save_load_and_mismatch(eight_schools, tmp_path):
    sm, amortizer = eight_schools
    path = tmp_path / "stan_amortizer.pt"
    amortizer.save(path)
    fresh = StanModel(PROGRAMS["eight_schools"], reference_data("eight_schools"), progressbar=False)
    loaded = Amortizer.load(path, fresh)
    a = amortizer.sample(draws=30, random_seed=4, diagnostics=False).posterior["mu"].values
    b = loaded.sample(draws=30, random_seed=4, diagnostics=False).posterior["mu"].values
    np.testing.assert_allclose(a, b, rtol=1e-6)
    other = StanModel(NORMAL_PROGRAM, {"N": 8, "y": np.zeros(8), "prior_only": 0},
                      progressbar=False)
    with pytest.raises(AmortizerMismatchError, match="different model"):
        Amortizer.load(path, other)


def test_stan_program_without_the_convention_fails_clearly():
    # arK has no prior_only flag and no y_rep (and is built by the StanModel tests anyway)
    sm = StanModel(PROGRAMS["arK"], reference_data("arK"), progressbar=False)
    with pytest.raises(ValueError, match="prior_only"):
        Amortizer(sm)


@pytest.mark.slow
def test_stan_sbc_on_a_small_program():
    sm = StanModel(NORMAL_PROGRAM, {"N": 8, "y": np.zeros(8), "prior_only": 0}, progressbar=False)
    amortizer = Amortizer(sm, flow_kwargs={"transforms": 3, "hidden_features": (32, 32)})
    amortizer.fit(3000, epochs=40, batch_size=128, random_seed=1, progressbar=False)
    result = amortizer.check_calibration(num_datasets=200, draws=100, random_seed=2)
    print(result, result.summary())
    assert result.passed


def test_fit_many_on_a_stan_program_routes_and_returns_stan_names(eight_schools):
    sm, amortizer = eight_schools  # briefly trained
    typical = np.array([10.0, 5.0, 0.0, 3.0, -2.0, 4.0, 12.0, 8.0])
    far = np.full(8, 400.0)  # far outside the prior predictive
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NUTS on the far dataset may not converge here
        out = amortizer.fit_many([{"y": typical}, {"y": far}], draws=200, chains=2,
                                 random_seed=1, progressbar=False)
    assert out.table["route"][1] in ("mh", "nuts")
    for idata in out.posteriors:
        assert {"mu", "tau", "theta"} <= set(idata.posterior.data_vars)
    # the far dataset's school effects follow its data (tau absorbs them; mu keeps its prior)
    assert float(out.posteriors[1].posterior["theta"].mean()) > 100
