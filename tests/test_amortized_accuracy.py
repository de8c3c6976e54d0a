"""Accuracy of amortized fitting (slow): exact conjugate posteriors, SBC, AmortizedMH vs NUTS.

- Normal-inverse-gamma model: the exact posterior is known in closed form.
  SBC must pass, the raw amortized draws must be close to the exact posterior
  (an approximation: the tolerance is what this small budget buys, printed),
  and the PSIS-corrected draws closer.
- A non-conjugate model: ``pm.sample(step=AmortizedMH(amortizer))`` must match
  PyMC's NUTS within Monte Carlo error, because the MH correction makes the
  amortized proposal exact.
"""

from __future__ import annotations

import warnings

import numpy as np
import pymc as pm
import pytest
import torch

from pymc_ext.amortized import Amortizer
from pymc_ext.amortized_diagnostics import AmortizedDataWarning
from pymc_ext.amortized_step import AmortizedMH

torch.set_num_threads(1)

A0, B0, K0, M0, N_OBS = 3.0, 2.0, 1.0, 0.0, 8


def nig_model() -> pm.Model:
    with pm.Model() as model:
        sigma2 = pm.InverseGamma("sigma2", A0, B0)
        mu = pm.Normal("mu", M0, pm.math.sqrt(sigma2 / K0))
        pm.Normal("y", mu, pm.math.sqrt(sigma2), observed=np.zeros(N_OBS))
    return model


def nig_exact(y: np.ndarray) -> dict[str, tuple[float, float]]:
    """Posterior mean and sd of mu and sigma2 (normal-inverse-gamma conjugacy)."""
    n, ybar = len(y), float(np.mean(y))
    kn = K0 + n
    mn = (K0 * M0 + n * ybar) / kn
    an = A0 + n / 2
    bn = B0 + 0.5 * float(((y - ybar) ** 2).sum()) + K0 * n * (ybar - M0) ** 2 / (2 * kn)
    return {
        "mu": (mn, float(np.sqrt(bn / (kn * (an - 1))))),
        "sigma2": (bn / (an - 1), float(bn / ((an - 1) * np.sqrt(an - 2)))),
    }


@pytest.fixture(scope="module")
def nig_amortizer():
    amortizer = Amortizer(nig_model(), flow_kwargs={"transforms": 3, "hidden_features": (32, 32)})
    amortizer.fit(
        4000, epochs=60, batch_size=128, patience=60, random_seed=11, progressbar=False
    )
    return amortizer


def _errors(idata, exact):
    out = {}
    for name, (mean, sd) in exact.items():
        draws = idata.posterior[name].values.ravel()
        out[name] = (abs(draws.mean() - mean) / sd, abs(draws.std() / sd - 1))
    return out


@pytest.mark.slow
def test_sbc_passes_on_the_conjugate_model(nig_amortizer):
    result = nig_amortizer.check_calibration(num_datasets=300, draws=100, random_seed=3)
    print(result, result.summary())
    assert result.passed, result.summary()
    assert result.ranks.shape == (300, 2)
    # the data are informative about mu: the posterior contracts
    rows = {r["parameter"]: r for r in result.summary()}
    assert rows["mu"]["mean_contraction"] > 0.5


@pytest.mark.slow
def test_amortized_draws_match_the_exact_posterior(nig_amortizer):
    rng = np.random.default_rng(7)
    raw_errors, corrected_errors, ks = [], [], []
    for i in range(6):
        sigma2 = 1.0 / rng.gamma(A0, 1.0 / B0)
        mu = rng.normal(M0, np.sqrt(sigma2 / K0))
        y = rng.normal(mu, np.sqrt(sigma2), size=N_OBS)
        exact = nig_exact(y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AmortizedDataWarning)
            raw = nig_amortizer.sample({"y": y}, draws=4000, random_seed=i)
            corrected = nig_amortizer.sample({"y": y}, draws=4000, random_seed=i, correct="psis")
        raw_errors.append(_errors(raw, exact))
        corrected_errors.append(_errors(corrected, exact))
        ks.append(raw.posterior.attrs["pareto_k"])
    raw_mean = np.mean([e[n][0] for e in raw_errors for n in e])
    raw_sd = np.mean([e[n][1] for e in raw_errors for n in e])
    raw_max = max(max(e[n]) for e in raw_errors for n in e)
    cor_mean = np.mean([e[n][0] for e in corrected_errors for n in e])
    cor_sd = np.mean([e[n][1] for e in corrected_errors for n in e])
    print(f"raw: mean errors {raw_mean:.3f} sd, sd errors {raw_sd:.3f} (worst {raw_max:.3f}); "
          f"PSIS: mean errors {cor_mean:.3f} sd, sd errors {cor_sd:.3f}; k = {np.round(ks, 2)}")
    # the raw amortized posterior is an approximation (4000 simulations): on average within
    # 0.25 posterior sd in mean and 25% in sd here; single datasets can be off by more
    assert raw_mean < 0.25 and raw_sd < 0.25 and raw_max < 0.8
    # importance resampling against the true density removes most of the error
    assert cor_mean < 0.1 and cor_sd < 0.1
    assert np.median(ks) < 0.7


def normal_model() -> pm.Model:
    rng = np.random.default_rng(0)
    with pm.Model() as model:
        mu = pm.Normal("mu", 0.0, 2.0)
        sigma = pm.HalfNormal("sigma", 1.0)
        pm.Normal("y", mu, sigma, observed=rng.normal(0.8, 0.5, size=10))
    return model


@pytest.mark.slow
def test_amortized_mh_matches_nuts():
    model = normal_model()
    amortizer = Amortizer(model)
    # trained briefly on purpose: q is rough (acceptance about 0.2 without adaptation), so the
    # pilot adaptation has work to do, and the draws must still be exact
    amortizer.fit(3000, epochs=3, batch_size=128, random_seed=2, progressbar=False)
    with model:
        nuts = pm.sample(
            draws=2000, tune=1000, chains=2, cores=1, nuts_sampler="pymc",
            random_seed=4, progressbar=False, compute_convergence_checks=False,
        )
    for adapt in ("dense", "diag"):
        with model:
            mh = pm.sample(
                draws=2000, tune=200, chains=2, cores=1, step=AmortizedMH(amortizer, adapt=adapt),
                random_seed=3, progressbar=False, compute_convergence_checks=False,
            )
        acceptance = float(mh.sample_stats["accepted"].mean())
        assert {"accept", "accepted", "log_weight"} <= set(mh.sample_stats.data_vars)
        print(adapt, "acceptance", acceptance)
        assert acceptance > 0.3
        for name in ("mu", "sigma"):
            a, b = mh.posterior[name].values.ravel(), nuts.posterior[name].values.ravel()
            sd = b.std()
            print(name, a.mean(), b.mean(), a.std(), sd)
            # both are exact MCMC: differences are Monte Carlo error (ESS ~ 1000 each)
            assert abs(a.mean() - b.mean()) < 0.12 * sd
            assert abs(a.std() / sd - 1) < 0.12
