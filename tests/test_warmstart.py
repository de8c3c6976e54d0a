"""Tests for WarmStartNUTS and pymc_ext.sample (Pathfinder warm starts)."""

from __future__ import annotations

import dataclasses
import logging
import warnings

import arviz as az
import numpy as np
import pymc as pm
import pytest

from pymc_ext.pathfinder_core import PathfinderResult, multipath_pathfinder
from pymc_ext.pymc_adapter.logdensity import log_density
from pymc_ext.step_methods.warmstart_metric import FALLBACK_WARMUP
from pymc_ext.warmstart_step import (
    DEFAULT_WARMUP,
    StepLogDensity,
    WarmStartNUTS,
    WarmStartPotential,
    lift_warmstart_attrs,
)

Y = np.array([1.2, 0.4, 2.1, 1.6, 0.9, 1.3, 0.2, 1.8])
SAMPLE_KW = dict(progressbar=False, compute_convergence_checks=False)


def small_model() -> pm.Model:
    with pm.Model(coords={"obs": range(len(Y))}) as model:
        mu = pm.Normal("mu", 0.0, 5.0)
        sigma = pm.HalfNormal("sigma", 2.0)
        pm.Normal("y", mu, sigma, observed=Y, dims="obs")
    return model


@pytest.fixture(scope="module")
def model():
    return small_model()


def _check_result(idata, chains, draws):
    assert idata.posterior["mu"].shape == (chains, draws)
    attrs = idata.sample_stats.attrs
    assert isinstance(attrs["warmstart_grad_evals"], int) and attrs["warmstart_grad_evals"] > 0
    assert isinstance(attrs["warmstart_pareto_k"], float)
    assert "warmstart_grad_evals" not in idata.sample_stats.data_vars
    assert "n_steps" in idata.sample_stats.data_vars
    assert idata.sample_stats["n_steps"].values.min() >= 1


@pytest.mark.parametrize(("chains", "cores"), [(1, 1), (4, 1), (4, 2)])
def test_step_in_pm_sample(model, chains, cores):
    with model, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        step = WarmStartNUTS(random_seed=1)
        idata = pm.sample(
            draws=150, step=step, chains=chains, cores=cores, random_seed=2, **SAMPLE_KW
        )
    # plain pm.sample keeps the figures per draw; pymc_ext.sample lifts them (no patching)
    assert int(idata.sample_stats["warmstart_grad_evals"].max()) == step.warmstart_grad_evals
    idata = lift_warmstart_attrs(idata)
    _check_result(idata, chains, 150)
    # pm.sample asked the step for its tune: the short warmup, and room to extend it
    # (idle unless the adaptation has not settled).
    assert step.warmup == DEFAULT_WARMUP
    assert idata.posterior.attrs["tuning_steps"] == step.default_tune_steps
    assert not np.any(idata.sample_stats["warmup_extensions"].values)
    assert idata.sample_stats.attrs["warmstart_grad_evals"] == step.warmstart_grad_evals


def test_remaining_tuning_iterations_are_free(model):
    with model:
        step = WarmStartNUTS(random_seed=1, warmup=40)
        idata = pm.sample(
            draws=50,
            tune=200,
            step=step,
            chains=2,
            cores=1,
            random_seed=3,
            discard_tuned_samples=False,
            **SAMPLE_KW,
        )
    idata = lift_warmstart_attrs(idata)  # what pymc_ext.sample does
    warm = idata.warmup_sample_stats
    idle = warm["warmup_idle"].values
    assert idle.shape == (2, 200)
    assert np.all(idle[:, 40:]) and not np.any(idle[:, :40])
    assert np.all(warm["n_steps"].values[:, 40:] == 0)
    assert np.all(warm["n_steps"].values[:, :40] >= 1)
    # An idle iteration keeps the chain where it is.
    mu = idata.warmup_posterior["mu"].values
    assert np.all(mu[:, 40:] == mu[:, [39]])
    assert not np.any(idata.sample_stats["warmup_idle"].values)
    assert idata.warmup_sample_stats.attrs["warmstart_grad_evals"] == step.warmstart_grad_evals


def test_chains_start_from_distinct_pathfinder_draws(model):
    with model:
        step = WarmStartNUTS(random_seed=4, warmup=10)
    parent = np.random.default_rng(9)
    starts = []
    for rng in parent.spawn(4):
        step.setup_chain(rng, tune=10, draws=10)
        starts.append(step._chain_start.copy())
    starts = np.array(starts)
    assert len(np.unique(starts, axis=0)) == 4
    # Every start is one of the (finite) Pathfinder draws.
    assert all(np.any(np.all(step._init_points == s, axis=1)) for s in starts)


def test_random_seed_reproducible_across_cores(model):
    def run(cores):
        with model, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            step = WarmStartNUTS(random_seed=11)
            idata = pm.sample(
                draws=100, step=step, chains=2, cores=cores, random_seed=12, **SAMPLE_KW
            )
        return lift_warmstart_attrs(idata)  # what pymc_ext.sample does

    a, b, c = run(1), run(1), run(2)
    np.testing.assert_array_equal(a.posterior["mu"].values, b.posterior["mu"].values)
    np.testing.assert_array_equal(a.posterior["mu"].values, c.posterior["mu"].values)
    # one step object in two pm.sample calls: nothing carries over (as with pm.NUTS)
    with model, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        step = WarmStartNUTS(random_seed=11)
        first, second = (
            pm.sample(draws=100, step=step, chains=2, cores=1, random_seed=12, **SAMPLE_KW)
            for _ in range(2)
        )
    np.testing.assert_array_equal(first.posterior["mu"].values, a.posterior["mu"].values)
    np.testing.assert_array_equal(second.posterior["mu"].values, a.posterior["mu"].values)
    assert (
        a.sample_stats.attrs["warmstart_grad_evals"] == c.sample_stats.attrs["warmstart_grad_evals"]
    )


@pytest.mark.parametrize("metric", ["diag", "dense", "lowrank"])
def test_metrics_sample_the_conjugate_posterior(metric):
    # y ~ N(mu, 1), mu ~ N(0, 10): posterior N(m, v) exactly.
    with pm.Model():
        mu = pm.Normal("mu", 0.0, 10.0, shape=3)
        pm.Normal("y", mu, 1.0, observed=np.tile(Y[:, None], (1, 3)))
        step = WarmStartNUTS(random_seed=5, metric=metric, rank=2)
        idata = pm.sample(draws=500, step=step, chains=2, cores=1, random_seed=6, **SAMPLE_KW)
    v = 1 / (1 / 100 + len(Y))
    draws = idata.posterior["mu"].values.reshape(-1, 3)
    assert np.abs(draws.mean(0) - v * Y.sum()).max() < 0.15 * np.sqrt(v)
    assert np.abs(draws.std(0) / np.sqrt(v) - 1).max() < 0.15


def test_potential_lowrank_matches_dense():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(6, 6))
    cov = A @ A.T + np.eye(6)
    full = WarmStartPotential(cov, kind="dense", rng=1)
    lowrank = WarmStartPotential(cov, kind="lowrank", rank=6, rng=1)
    p = rng.normal(size=6)
    np.testing.assert_allclose(lowrank.velocity(p), full.velocity(p), rtol=1e-8)
    assert lowrank.energy(p) == pytest.approx(full.energy(p))
    # Momentum draws have covariance M = cov^-1.
    draws = np.array([lowrank.random() for _ in range(20000)])
    np.testing.assert_allclose(np.cov(draws.T), np.linalg.inv(cov), atol=0.05)
    diag = WarmStartPotential(cov, kind="diag", rng=1)
    np.testing.assert_allclose(diag.velocity(p), np.diag(cov) * p)


def test_potential_refresh_blends_with_prior():
    pot = WarmStartPotential(np.eye(2) * 4.0, kind="diag", prior_weight=10.0, rng=0)
    rng = np.random.default_rng(1)
    for x in rng.normal(size=(10, 2)):
        pot.collect(x, np.zeros(2))
    assert pot.refresh()
    # Half prior (4.0), half sample variance (~1).
    assert np.all((pot._var > 1.5) & (pot._var < 3.5))
    pot.reset()
    np.testing.assert_array_equal(pot._var, [4.0, 4.0])


def test_precomputed_warmstart_is_reused(model):
    from pymc_ext.pymc_model import log_density

    res = multipath_pathfinder(log_density(model), num_draws=100, random_seed=3)
    with model:
        step = WarmStartNUTS(init=res, random_seed=1)
    assert step.warmstart is res
    assert step.warmstart_grad_evals == res.grad_evals
    assert isinstance(step.warmstart, PathfinderResult)


def test_step_density_reuses_nuts_function(model):
    with model:
        nuts = pm.NUTS()
    d = StepLogDensity(nuts)
    x = np.array([0.5, 0.1])
    lp, grad = d.logp_and_grad(x)
    ref = model.compile_logp()({"mu": 0.5, "sigma_log__": 0.1})
    assert lp == pytest.approx(float(ref))
    assert d.grad_evals == 1


def test_bad_input_is_rejected(model):
    with model:
        with pytest.raises(ValueError, match="metric"):
            WarmStartNUTS(metric="full")
        with pytest.raises(ValueError, match="all free variables"):
            WarmStartNUTS(vars=[model["mu"]])
        with pytest.raises(ValueError, match="mass matrix"):
            WarmStartNUTS(scaling=np.ones(2))
        with pytest.raises(ValueError, match="Unknown warm start"):
            WarmStartNUTS(init="laplace")
        with pytest.raises(TypeError, match="WarmStartNUTS got unexpected.*metrc"):
            WarmStartNUTS(metrc="dense")


def test_building_the_step_patches_nothing(model):
    import pymc.backends.arviz

    original = pm.to_inference_data
    with model:
        WarmStartNUTS(random_seed=1, warmup=10)
    assert pm.to_inference_data is original is pymc.backends.arviz.to_inference_data


def test_lift_attrs():
    import xarray as xr

    ss = xr.Dataset(
        {
            "warmstart_grad_evals": (("chain", "draw"), np.full((2, 3), 17)),
            "warmstart_pareto_k": (("chain", "draw"), np.full((2, 3), 0.4)),
            "n_steps": (("chain", "draw"), np.ones((2, 3))),
        }
    )
    dt = lift_warmstart_attrs(xr.DataTree.from_dict({"sample_stats": ss}))
    assert dt.sample_stats.attrs == {"warmstart_grad_evals": 17, "warmstart_pareto_k": 0.4}
    assert list(dt.sample_stats.data_vars) == ["n_steps"]


def test_pymc_ext_sample_pymc(model):
    import pymc_ext.sampling as sampling

    idata = sampling.sample(
        draws=120, chains=2, cores=1, random_seed=1, model=model, target_accept=0.9, **SAMPLE_KW
    )
    _check_result(idata, 2, 120)
    assert idata.sample_stats.attrs["warmstart_warmup"] == DEFAULT_WARMUP
    again = sampling.sample(draws=120, chains=2, cores=1, random_seed=1, model=model, **SAMPLE_KW)
    assert (
        again.sample_stats.attrs["warmstart_grad_evals"]
        == idata.sample_stats.attrs["warmstart_grad_evals"]
    )
    plain = sampling.sample(
        draws=50, tune=50, chains=1, warmstart=None, model=model, nuts_sampler="pymc", **SAMPLE_KW
    )
    assert "warmstart_grad_evals" not in plain.sample_stats.attrs
    with pytest.raises(ValueError, match="nuts_sampler"):
        sampling.sample(model=model, nuts_sampler="stan")


@pytest.mark.slow
def test_pymc_ext_sample_nutpie(model):
    import pymc_ext.sampling as sampling

    idata = sampling.sample(
        draws=300,
        chains=3,
        random_seed=4,
        model=model,
        nuts_sampler="nutpie",
        discard_tuned_samples=False,
        idata_kwargs={"log_likelihood": True},
        **SAMPLE_KW,
    )
    _check_result(idata, 3, 300)
    assert idata["log_likelihood"]["y"].shape == (3, 300, len(Y))  # as pm.sample gives
    assert idata.posterior.attrs["tuning_steps"] == sampling.DEFAULT_NUTPIE_TUNE
    assert idata.sample_stats.attrs["inference_library"] == "nutpie"
    # Posterior close to a long PyMC NUTS run on the same model.
    with model:
        ref = pm.sample(
            draws=1000, chains=2, cores=1, random_seed=5, nuts_sampler="pymc", **SAMPLE_KW
        )
    for name in ("mu", "sigma"):
        a, b = idata.posterior[name].values.ravel(), ref.posterior[name].values.ravel()
        assert abs(a.mean() - b.mean()) < 0.15 * b.std()
        assert abs(a.std() / b.std() - 1) < 0.15


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["eight_schools-eight_schools_noncentered", "kidiq-kidscore_momiq"]
)
def test_warm_started_chains_match_reference(name):
    from pymc_ext.models import reference_model
    from pymc_ext.reference import compare_to_reference

    with reference_model(name):
        step = WarmStartNUTS(random_seed=1)
        idata = pm.sample(draws=1000, step=step, chains=4, cores=1, random_seed=2, **SAMPLE_KW)
    cmp = compare_to_reference(idata, name)
    assert cmp["max_mean_error"] <= 0.1, cmp
    assert cmp["max_sd_error"] <= 0.1, cmp


# ---------------------------------------------------------------------------
# metric="auto", the fallback, and an adaptation that has not settled
# ---------------------------------------------------------------------------
def correlated_model(rho: float) -> pm.Model:
    """A regression-like posterior: two coefficients with correlation ``rho``."""
    cov = np.array([[1.0, rho * 30.0], [rho * 30.0, 900.0]])
    with pm.Model() as model:
        pm.MvNormal("beta", mu=np.zeros(2), cov=cov)
    return model


@pytest.mark.parametrize(("rho", "metric"), [(0.97, "dense"), (0.0, "diag")])
def test_auto_metric_is_recorded_in_sample_stats(rho, metric):
    import pymc_ext.sampling as sampling

    idata = sampling.sample(
        draws=500, chains=2, cores=1, random_seed=3, model=correlated_model(rho), **SAMPLE_KW
    )
    attrs = idata.sample_stats.attrs
    assert attrs["warmstart_metric"] == metric
    assert f": {metric}" in attrs["warmstart_metric_reason"]
    assert "max |corr|" in attrs["warmstart_metric_reason"]
    assert attrs["warmstart_fallback"] == 0 and attrs["warmstart_warmup"] == DEFAULT_WARMUP
    draws = idata.posterior["beta"].values.reshape(-1, 2)
    ess = float(az.ess(idata.posterior)["beta"].min())
    # the sample correlation's standard error is about (1 - rho^2) / sqrt(ESS): four of them
    assert abs(np.corrcoef(draws.T)[0, 1] - rho) < 4 * (1 - rho**2) / np.sqrt(ess) + 0.01, ess


def _poor(model, **changes):
    """Pathfinder's own result on ``model``, made poor by ``changes``."""
    res = multipath_pathfinder(log_density(model), num_draws=200, random_seed=3)
    return dataclasses.replace(res, **changes)


def test_fallback_when_pathfinder_is_poor():
    model = correlated_model(0.97)
    with model, warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a high k alone does not warn
        step = WarmStartNUTS(init=_poor(model, pareto_k=2.4, ess=20.0), random_seed=1)
        idata = pm.sample(draws=200, step=step, chains=2, cores=1, random_seed=2, **SAMPLE_KW)
    assert step.warmstart_fallback and not step.warmstart_trusted
    assert step.metric == "diag" and step.warmup == FALLBACK_WARMUP
    assert "Pareto k 2.40" in step.metric_reason and "fallback" in step.metric_reason
    assert step.warmstart_attrs()["warmstart_fallback"] == 1
    draws = idata.posterior["beta"].values.reshape(-1, 2)
    assert abs(draws[:, 1].std() / 30.0 - 1) < 0.2  # still the right posterior
    # A broken covariance: the user should look, so it warns.
    nan_cov = np.full((2, 2), np.nan)
    with model, pytest.warns(RuntimeWarning, match="not usable"):
        step = WarmStartNUTS(init=_poor(model, covariance=nan_cov), random_seed=1)
    assert step.metric == "diag" and "not finite" in step.metric_reason


def test_unsettled_adaptation_extends_itself(caplog):
    """A warm start that is confident and wrong (covariance 1e4 too wide, k 0.3)."""
    model = correlated_model(0.0)
    res = multipath_pathfinder(log_density(model), num_draws=200, random_seed=3)
    wrong = dataclasses.replace(
        res, covariance=res.covariance * 1e4, inverse_metric_diag=res.inverse_metric_diag * 1e4
    )
    with model:
        step = WarmStartNUTS(init=wrong, random_seed=1)
        idata = pm.sample(
            draws=200,
            step=step,
            chains=2,
            cores=1,
            random_seed=2,
            discard_tuned_samples=False,
            **SAMPLE_KW,
        )
    ext = idata.sample_stats["warmup_extensions"].values
    assert np.all(ext >= 1)
    busy = ~idata.warmup_sample_stats["warmup_idle"].values
    assert np.all(busy.sum(axis=1) == step.warmup + ext[:, -1] * step.extension)
    draws = idata.posterior["beta"].values.reshape(-1, 2)
    assert abs(draws.std(0)[1] / 30.0 - 1) < 0.2
    # With no room in tune it cannot extend, and says so.
    with model, caplog.at_level(logging.WARNING, logger="pymc"):
        step = WarmStartNUTS(init=wrong, random_seed=1)
        pm.sample(draws=50, tune=step.warmup, step=step, chains=1, random_seed=2, **SAMPLE_KW)
    assert "has not settled" in caplog.text


def test_nutpie_route_refuses_what_it_cannot_return(model):
    import pymc_ext

    with model:  # raised before Pathfinder or any compile
        with pytest.raises(ValueError, match="return_inferencedata=False"):
            pymc_ext.sample(nuts_sampler="nutpie", return_inferencedata=False)
        with pytest.raises(TypeError, match="idata_kwargs"):
            pymc_ext.sample(nuts_sampler="nutpie", idata_kwargs={"save_warmup": True})


def test_every_pathfinder_path_failing_falls_back_to_plain_adaptation():
    # The "German tank" model: the support of ub depends on the data (ub > 7), so
    # Pathfinder's random starts and its approximations' draws fall outside it.
    import pymc_ext

    with pm.Model() as tank:
        ub = pm.Uniform("ub", 0, 10, initval=8.5)
        pm.Uniform("y", 0, ub, observed=[1.0, 7.0, 3.0])
    with tank, pytest.warns(RuntimeWarning, match="warm start failed"):
        idata = pymc_ext.sample(draws=500, chains=2, cores=1, random_seed=3, **SAMPLE_KW)
    attrs = idata.sample_stats.attrs
    assert attrs["warmstart_fallback"] == 1
    draws = idata.posterior["ub"].values
    assert draws.min() > 7.0  # every chain started inside the support
    # exact: p(ub | y) proportional to ub^-3 on (7, 10), mean 8.235
    assert abs(draws.mean() - 8.235) < 0.25


def test_pathfinder_start_points_pass_through_the_warm_start(model):
    with model:
        step = WarmStartNUTS(init_kwargs={"init": np.array([1.0, 0.0]), "num_paths": 2})
    assert step.warmstart_grad_evals > 0


def test_nan_in_the_data_is_refused_before_pathfinder():
    import pymc_ext
    from pymc_ext.pymc_adapter.logdensity import ModelSpecificationError

    x = np.array([1.0, np.nan, 2.0, 1.5])
    with pm.Model() as m:
        b = pm.Normal("b", 0, 1)
        pm.Normal("y", b * x, 1.0, observed=[1.0, 0.5, 2.0, 1.5])
    with m, pytest.raises(ModelSpecificationError, match="NaN"):
        pymc_ext.sample(draws=10, chains=1, **SAMPLE_KW)


def test_a_misspelt_keyword_fails_before_pathfinder(model):
    import pymc_ext

    with model, pytest.raises(TypeError, match="warm_start"):
        pymc_ext.sample(warm_start="pathfinder")
