"""CmdStanModel: cmdstanpy unchanged without a warm start; Pathfinder warm starts with CmdStan.

These run the real CmdStan (2.27 here, built by the set-up) and compare
with the posteriordb reference draws in ../shared/reference.
"""

from __future__ import annotations

import json
import logging
import warnings

import arviz as az
import cmdstanpy
import numpy as np
import pytest
from cmdstanpy.utils.logging import get_logger as cmdstanpy_logger

import stan_bridge
from pymc_ext import pathfinder_core
from pymc_ext.models import eight_schools as eight_schools_pymc
from pymc_ext.reference import compare_to_reference
from stan_bridge import CmdStanModel, StanModel
from stan_bridge.programs import REFERENCE_POSTERIORS, reference_data, write_program

pytestmark = pytest.mark.stan
cmdstanpy_logger().setLevel(logging.WARNING)  # warnings (divergences) stay visible


@pytest.fixture(scope="module")
def eight_schools():
    return CmdStanModel(stan_file=write_program("eight_schools"))


def _total_leapfrog(fit) -> int:
    return int(fit.method_variables()["n_leapfrog__"].sum())


def test_is_a_cmdstanpy_model(eight_schools):
    assert isinstance(eight_schools, cmdstanpy.CmdStanModel)


def test_no_warmstart_is_plain_cmdstanpy(eight_schools):
    data = reference_data("eight_schools")
    ours = eight_schools.sample(
        data=data, chains=2, seed=5, iter_warmup=300, iter_sampling=200, show_progress=False
    )
    plain = cmdstanpy.CmdStanModel(exe_file=eight_schools.exe_file).sample(
        data=data, chains=2, seed=5, iter_warmup=300, iter_sampling=200, show_progress=False
    )
    assert not hasattr(ours, "warmstart")
    np.testing.assert_array_equal(ours.draws(), plain.draws())


def test_warmstart_eight_schools_matches_reference_with_fewer_gradients(eight_schools):
    """Warm start: accurate, and cheaper in total than cmdstanpy's default, in one run."""
    data = reference_data("eight_schools")
    fit = eight_schools.sample(
        data=data, warmstart="pathfinder", chains=4, seed=3, save_warmup=True, show_progress=False
    )
    ws = fit.warmstart
    assert isinstance(ws, stan_bridge.WarmStartInfo)
    assert isinstance(ws.grad_evals, int) and ws.grad_evals > 0
    assert isinstance(ws.pareto_k, float) and np.isfinite(ws.pareto_k)
    # eight schools: a rough Pathfinder (k about 0.9), so a short warmup re-estimates the metric
    assert ws.warmup in ("keep", "adapt") and not ws.fallback, ws.metric_reason
    assert ws.iter_warmup == {"keep": 19, "adapt": 200}[ws.warmup]
    assert fit.draws(inc_warmup=True).shape[0] == ws.iter_warmup + 1000
    errors = compare_to_reference(az.from_cmdstanpy(fit), REFERENCE_POSTERIORS["eight_schools"])
    assert errors["max_mean_error"] <= 0.1 and errors["max_sd_error"] <= 0.1, errors
    plain = eight_schools.sample(data=data, chains=4, seed=3, save_warmup=True, show_progress=False)
    warm_total = _total_leapfrog(fit) + ws.grad_evals + ws.logp_evals + ws.discarded_leapfrogs
    assert warm_total < _total_leapfrog(plain)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["arK", "gp_pois_regr"])
def test_warmstart_matches_reference(name):
    model = CmdStanModel(stan_file=write_program(name))
    # 2000 draws per chain: gp_pois_regr's alpha is heavy-tailed, and the sd error of
    # 1000 draws (ESS about 600) reaches 0.1 by Monte Carlo error alone.
    fit = model.sample(
        data=reference_data(name),
        warmstart="pathfinder",
        chains=4,
        seed=1,
        iter_sampling=2000,
        show_progress=False,
    )
    errors = compare_to_reference(az.from_cmdstanpy(fit), REFERENCE_POSTERIORS[name])
    assert errors["max_mean_error"] <= 0.1 and errors["max_sd_error"] <= 0.1, errors
    assert fit.warmstart.grad_evals > 0


def test_inits_and_metric_files(eight_schools, tmp_path):
    data = reference_data("eight_schools")
    fit = eight_schools.sample(
        data=data,
        warmstart="pathfinder",
        chains=3,
        seed=4,
        iter_warmup=150,
        iter_sampling=100,
        metric="dense_e",
        show_progress=False,
        warmstart_options={"output_dir": tmp_path, "num_draws": 500},
    )
    ws = fit.warmstart
    assert ws.metric == "dense_e" and ws.iter_warmup == 150  # the caller's warmup is kept
    assert ws.warmup == "given" and "metric='dense_e' given" in ws.metric_reason
    assert fit.draws().shape == (100, 3, fit.draws().shape[2])
    inv_metric = np.asarray(json.loads(open(ws.metric_file).read())["inv_metric"])
    assert inv_metric.shape == (10, 10)
    np.testing.assert_allclose(inv_metric, ws.result.covariance)
    assert np.all(np.linalg.eigvalsh(inv_metric) > 0)
    inits = [json.loads(open(f).read()) for f in ws.inits_files]
    assert len(inits) == 3 and set(inits[0]) == {"theta_trans", "mu", "tau"}
    assert len({init["mu"] for init in inits}) == 3  # a distinct start per chain
    sm = eight_schools.stan_model(data)
    pool = {tuple(np.round(d, 8)) for d in ws.result.draws}
    for init in inits:
        assert tuple(np.round(sm.unconstrain(init), 8)) in pool


def test_pathfinder_ext_and_module_function(eight_schools):
    data = reference_data("eight_schools")
    dt = eight_schools.pathfinder_ext(data, num_draws=400, seed=2, progressbar=False)
    assert dt.posterior["theta"].shape == (1, 400, 8)
    assert dt.posterior["tau"].values.min() > 0
    assert dt.sample_stats.attrs["grad_evals"] > 0
    assert np.isfinite(dt.sample_stats.attrs["pareto_k"])
    sm = StanModel(write_program("eight_schools"), data, progressbar=False)
    dt2 = stan_bridge.pathfinder(sm, num_draws=400, random_seed=2, progressbar=False)
    np.testing.assert_allclose(dt2.posterior["mu"].values, dt.posterior["mu"].values)
    # The PyMC version of the same posterior, same seed, same algorithm: the same draws
    # (the two densities differ by a constant only, and the unconstrained coordinates
    # come in the same order).
    dt_pymc = pathfinder_core.pathfinder(
        eight_schools_pymc(), num_draws=400, random_seed=2, progressbar=False
    )
    for name in ("mu", "tau", "theta"):
        np.testing.assert_allclose(
            dt2.posterior[name].values, dt_pymc.posterior[name].values, rtol=1e-8, atol=1e-8
        )


def test_bad_warmstart_arguments(eight_schools):
    data = reference_data("eight_schools")
    with pytest.raises(ValueError, match="warmstart must be None, 'pathfinder' or 'flow'"):
        eight_schools.sample(data=data, warmstart="laplace")
    with pytest.raises(ValueError, match="metric must be 'auto', 'diag_e' or 'dense_e'"):
        eight_schools.sample(data=data, warmstart="pathfinder", metric="unit_e")
    with pytest.raises(ValueError, match="warmstart_options needs"):
        eight_schools.sample(data=data, warmstart_options={"num_paths": 2})
    with pytest.raises(ValueError, match="fixed_param"):
        eight_schools.sample(data=data, warmstart="pathfinder", fixed_param=True)
    exe_only = CmdStanModel(exe_file=eight_schools.exe_file)
    with pytest.raises(ValueError, match="needs the Stan program"):
        exe_only.sample(data=data, warmstart="pathfinder")


# ---------------------------------------------------------------------------
# metric="auto", and the fallbacks, on a small program of our own
# ---------------------------------------------------------------------------
TOY_CODE = """\
// A 2-D normal with correlation rho and scales 1 and 10; or, with heavy = 1, independent
// Cauchy coordinates (a posterior whose variance a Gaussian approximation cannot get).
data {
  real<lower=-1, upper=1> rho;
  int<lower=0, upper=1> heavy;
}
parameters {
  vector[2] x;
}
model {
  if (heavy) {
    x ~ cauchy(0, 1);
  } else {
    x ~ multi_normal([0, 0]', [[1, 10 * rho], [10 * rho, 100]]);
  }
}
"""


@pytest.fixture(scope="module")
def toy():
    import hashlib

    from stan_bridge.builder import cache_dir

    folder = (
        cache_dir() / "programs" / f"toy_corr-{hashlib.sha256(TOY_CODE.encode()).hexdigest()[:12]}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "toy_corr.stan"
    if not path.exists():
        path.write_text(TOY_CODE)
    return CmdStanModel(stan_file=str(path))


def _toy_fit(toy, rho, heavy=0, **options):
    return toy.sample(
        data={"rho": rho, "heavy": heavy},
        warmstart="pathfinder",
        chains=2,
        seed=1,
        iter_sampling=300,
        show_progress=False,
        warmstart_options={"progressbar": False, **options},
    )


def test_auto_metric_dense_when_correlated_diag_when_independent(toy):
    fit = _toy_fit(toy, 0.95)
    ws = fit.warmstart
    assert ws.metric == "dense_e" and fit.metric_type == "dense_e", ws.metric_reason
    assert ws.plan.choice.kind == "dense" and ws.plan.choice.max_abs_corr > 0.9
    assert "dense" in ws.metric_reason and not ws.fallback
    # A good Pathfinder (k <= 0.7): its metric is kept, CmdStan adapts the step size only.
    assert ws.warmup == "keep" and ws.iter_warmup == 19
    np.testing.assert_allclose(np.asarray(fit.inv_metric)[0], ws.result.covariance, rtol=1e-5)
    assert ws.metric_mismatch < 2.0
    x = fit.stan_variable("x")
    assert abs(np.corrcoef(x.T)[0, 1] - 0.95) < 0.03 and abs(x[:, 1].std() / 10 - 1) < 0.15

    fit = _toy_fit(toy, 0.0)
    ws = fit.warmstart
    assert ws.metric == "diag_e" and fit.metric_type == "diag_e", ws.metric_reason
    assert ws.plan.choice.kind == "diag" and "condition" in ws.metric_reason
    np.testing.assert_allclose(
        np.asarray(fit.inv_metric)[0], np.diag(ws.result.covariance), rtol=1e-5
    )


def test_fallbacks_when_pathfinder_is_poor(toy):
    # Two L-BFGS iterations: the approximation is far off (Pareto k 5.7), so CmdStan
    # runs its own full warmup, from Pathfinder's draws, with its own unit metric.
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a high k alone does not warn
        fit = _toy_fit(toy, 0.95, maxiter=2)
    ws = fit.warmstart
    assert ws.fallback and ws.warmup == "fallback" and not ws.plan.choice.trusted
    assert "Pareto k" in ws.metric_reason and "full warmup" in ws.metric_reason
    assert ws.iter_warmup == 1000 and ws.metric_file is None and len(ws.inits_files) == 2
    x = fit.stan_variable("x")
    assert abs(np.corrcoef(x.T)[0, 1] - 0.95) < 0.03
    # One L-BFGS iteration on a heavy-tailed posterior: k looks fine (0.62), the metric is
    # kept, but the chains' variances do not fit it: the run is redone with a full warmup.
    fit = _toy_fit(toy, 0.0, heavy=1, maxiter=1)
    ws = fit.warmstart
    assert ws.plan.choice.pareto_k <= 0.7 and ws.warmup == "fallback"
    assert ws.metric_mismatch > 2.0 and ws.discarded_leapfrogs > 0
    assert "did not fit the chains" in ws.metric_reason and ws.iter_warmup == 1000


def test_warmstart_iter_warmup_is_cmdstans_with_thin(eight_schools):
    """fit.warmstart.iter_warmup is the warmup CmdStan ran, not the thinned warmup draws."""
    fit = eight_schools.sample(
        data=reference_data("eight_schools"), warmstart="pathfinder", chains=2, seed=3, thin=2,
        save_warmup=True, iter_sampling=100, show_progress=False,
    )
    ws = fit.warmstart
    assert ws.iter_warmup == fit.metadata.cmdstan_config["num_warmup"]
    assert fit.num_draws_warmup == -(-ws.iter_warmup // 2)  # cmdstanpy's: thinned
    assert ws.iter_warmup == {"keep": 19, "adapt": 200, "fallback": 1000}[ws.warmup]
