"""Prior predictive for Stan programs: the convention, the draws, the errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from stan_bridge import PriorPredictiveError, StanModel
from stan_bridge.nuts import sample_nuts
from stan_bridge.programs import PROGRAMS, reference_data

pytestmark = pytest.mark.stan


@pytest.fixture(scope="module")
def eight_schools():
    return StanModel(PROGRAMS["eight_schools"], reference_data("eight_schools"), progressbar=False)


@pytest.fixture(scope="module")
def draws(eight_schools):
    return eight_schools.prior_predictive(2000, random_seed=7, progressbar=False, return_info=True)


def test_shapes_and_reproducibility(eight_schools, draws):
    params, sims, info = draws
    assert params.shape == (2000, eight_schools.dim)
    assert set(sims) == {"y"} and sims["y"].shape == (2000, 8)
    again, sims_again = eight_schools.prior_predictive(50, random_seed=3, progressbar=False)
    again2, sims_again2 = eight_schools.prior_predictive(50, 3, progressbar=False)
    np.testing.assert_array_equal(again, again2)
    np.testing.assert_array_equal(sims_again["y"], sims_again2["y"])
    assert info["divergences"] <= 0.01 * 2000 * info["thin"]


def test_prior_draws_follow_the_prior(eight_schools, draws):
    """mu ~ N(0, 5), tau ~ half-Cauchy(0, 5), theta_trans ~ N(0, 1): KS tests on thinned draws."""
    params, sims, _ = draws
    point = eight_schools.constrain_batch(params)
    assert stats.kstest(point["mu"], stats.norm(0, 5).cdf).pvalue > 0.001
    assert stats.kstest(point["tau"], stats.halfcauchy(0, 5).cdf).pvalue > 0.001
    assert stats.kstest(point["theta_trans"][:, 3], stats.norm().cdf).pvalue > 0.001
    # the simulated data follow y ~ normal(theta, sigma) at each prior draw
    sigma = np.asarray(reference_data("eight_schools")["sigma"], float)
    z = (sims["y"] - point["theta"]) / sigma
    assert stats.kstest(z.ravel(), stats.norm().cdf).pvalue > 0.001


# Int data, covariates, and a flag that makes the prior improper (one compile).
POISSON_CODE = """
data {
  int<lower=1> N;
  vector[N] x;
  array[N] int<lower=0> k;
  int<lower=0, upper=1> prior_only;
  int<lower=0, upper=1> flat_prior;
}
parameters { real a; real b; }
model {
  if (!flat_prior) {
    a ~ normal(1, 0.5);
    b ~ normal(0, 0.3);
  }
  if (!prior_only) k ~ poisson_log(a + b * x);
}
generated quantities {
  array[N] int k_rep = poisson_log_rng(a + b * x);
  real unrelated = normal_rng(0, 1);
}
"""
POISSON_DATA = {
    "N": 4,
    "x": [-1.0, 0.0, 1.0, 2.0],
    "k": [1, 2, 3, 9],
    "prior_only": 0,
    "flat_prior": 0,
}


@pytest.fixture(scope="module")
def poisson():
    return StanModel(POISSON_CODE, POISSON_DATA, progressbar=False)


def test_observed_and_int_data(poisson):
    sm = poisson
    params, sims = sm.prior_predictive(1500, random_seed=1, observed=["k"], progressbar=False)
    assert sims["k"].dtype == np.int64 and sims["k"].shape == (1500, 4)
    # E[k at x=0] = E[exp(a)] = exp(1 + 0.5**2 / 2)
    assert sims["k"][:, 1].mean() == pytest.approx(np.exp(1.125), rel=0.1)
    assert params[:, 0].mean() == pytest.approx(1.0, abs=0.06)
    # the data's own values are not used: other observed counts, same prior predictive law
    sm2 = sm.with_data({**POISSON_DATA, "k": [0, 0, 0, 0]})
    _, sims2 = sm2.prior_predictive(1500, random_seed=1, observed=["k"], progressbar=False)
    np.testing.assert_array_equal(sims2["k"], sims["k"])


def test_program_without_the_convention_gets_a_clear_error():
    sm = StanModel(PROGRAMS["arK"], reference_data("arK"), progressbar=False)
    with pytest.raises(PriorPredictiveError) as err:
        sm.prior_predictive(10, random_seed=0)
    msg = str(err.value)
    assert "no `prior_only` flag" in msg and "y_rep" in msg and "docs/stan.md" in msg


def test_partial_conventions_are_named(eight_schools):
    with pytest.raises(PriorPredictiveError, match="no generated quantity `sigma_rep`"):
        eight_schools.prior_predictive(10, observed=["sigma"])
    with pytest.raises(PriorPredictiveError, match="`nope` is not a data variable"):
        eight_schools.prior_predictive(10, observed=["nope"])
    with pytest.raises(PriorPredictiveError, match="no generated quantity simulates"):
        eight_schools.prior_predictive(10, suffix="_sim")


def test_improper_prior_is_refused(poisson):
    sm = poisson.with_data({**POISSON_DATA, "flat_prior": 1})
    with pytest.raises(PriorPredictiveError, match="improper"):
        sm.prior_predictive(200, random_seed=0, progressbar=False)


def test_nuts_on_a_correlated_gaussian():
    """Our NUTS (used for the prior draws) against an analytic target."""
    from pymc_ext.density import FunctionLogDensity

    cov = np.array([[4.0, 1.8], [1.8, 1.0]])
    P = np.linalg.inv(cov)
    d = FunctionLogDensity(2, lambda x: -0.5 * x @ P @ x, lambda x: -P @ x)
    out, st = sample_nuts(d, 1000, chains=4, num_warmup=400, random_seed=3, progressbar=False)
    flat = out.reshape(-1, 2)
    assert np.abs(flat.mean(0) / np.sqrt(np.diag(cov))).max() < 0.15
    np.testing.assert_allclose(np.cov(flat.T), cov, rtol=0.15, atol=0.1)
    assert st["diverging"].sum() == 0


def test_amortizer_refuses_non_integer_int_data_as_stanmodel_does(poisson):
    """Non-integer values of an int data variable are refused, not rounded (StanDataError)."""
    from stan_bridge import StanAmortizer
    from stan_bridge.data import StanDataError

    amortizer = StanAmortizer(poisson, observed=["k"])  # the data are checked before drawing
    bad = {**POISSON_DATA, "k": [1.5, 2, 3, 9]}
    with pytest.raises(StanDataError, match="'k' is declared int") as from_model:
        poisson.with_data(bad)
    for call in (lambda: amortizer.sample(bad, draws=10),
                 lambda: amortizer.sample_many([POISSON_DATA, bad], draws=10),
                 lambda: amortizer.fit_many([bad], draws=10),
                 lambda: amortizer.log_q(np.zeros((1, 2)), bad)):
        with pytest.raises(StanDataError) as err:
            call()
        assert str(err.value) == str(from_model.value)
