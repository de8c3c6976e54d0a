"""nutpie with the warm start's metric, as the reparametrisation ``x = mu + L z``.

Real PyMC models, real Pathfinder, real nutpie (numba backend); reference
posteriors from posteriordb.
"""

from __future__ import annotations

import dataclasses
import warnings

import arviz as az
import numpy as np
import pymc as pm
import pytensor
import pytest

import pymc_ext
from pymc_ext.blocks.affine import affine_reparam
from pymc_ext.pymc_adapter.reparam import reparametrized_model
from pymc_ext.references.models import reference_model
from pymc_ext.references.posteriors import compare_to_reference
from pymc_ext.sampling_nutpie import DEFAULT_NUTPIE_TUNE, NUTPIE_FALLBACK_TUNE
from pymc_ext.step_methods.warmstart_init import run_warmstart

KIDIQ = "kidiq-kidscore_momiq"  # beta[0] and beta[1] correlate at -0.99
QUIET = dict(progressbar=False, cores=1)


def _random_cov(dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(dim, dim))
    return a @ a.T + 0.1 * np.eye(dim)


def _kidiq_with_deterministic() -> pm.Model:
    model = reference_model(KIDIQ)
    with model:
        pm.Deterministic("slope_sd", model["beta"][1] / model["sigma"])
    return model


def _no_latent(idata, latent: str = "reparam_z") -> None:
    for group in idata.children:
        ds = idata[group].to_dataset()
        assert latent not in ds.data_vars, f"{latent} left in {group}"
        assert not any(str(c).startswith(latent) for c in ds.coords), f"{latent} coord in {group}"


@pytest.mark.parametrize("kind", ["dense", "lowrank", "diag"])
def test_affine_map_factors_the_covariance(kind):
    dim = 5
    cov, mean = _random_cov(dim, 1), np.arange(dim, dtype=float)
    r = affine_reparam(mean, cov, kind, rank=dim)  # full rank: lowrank is exact too
    L = r.matrix()
    target = np.diag(np.diag(cov)) if kind == "diag" else cov
    np.testing.assert_allclose(L @ L.T, target, rtol=1e-8, atol=1e-10)
    z = np.random.default_rng(2).normal(size=(7, dim))
    np.testing.assert_allclose(r.forward(z), mean + z @ L.T, atol=1e-10)
    np.testing.assert_allclose(r.inverse(r.forward(z)), z, atol=1e-10)
    g_x = np.random.default_rng(3).normal(size=(7, dim))
    np.testing.assert_allclose(r.gradient_to_x(g_x @ L), g_x, atol=1e-8)  # g_z = L^T g_x
    assert r.log_det() == pytest.approx(np.linalg.slogdet(L)[1])


def test_lowrank_keeps_the_outlying_directions():
    """Two spiked directions of a 30-dim covariance: rank 2 whitens it almost exactly."""
    dim = 30
    u = np.ones(dim) / np.sqrt(dim)
    v = np.resize([1.0, -1.0], dim) / np.sqrt(dim)  # |u_i| = |v_i|: a constant diagonal
    c = np.eye(dim) + 20.0 * np.outer(u, u) + 20.0 * np.outer(v, v)
    corr = c / np.sqrt(np.outer(np.diag(c), np.diag(c)))
    s = np.linspace(0.1, 10.0, dim)
    cov = corr * np.outer(s, s)
    r = affine_reparam(np.zeros(dim), cov, "lowrank", rank=2)
    assert r.rank == 2
    L = r.matrix()
    whitened = np.linalg.solve(L, np.linalg.solve(L, cov).T)
    assert np.linalg.cond(corr) > 15.0
    assert np.linalg.cond(whitened) < 3.0  # the bulk's 1 / 0.43; the spikes are gone


@pytest.mark.parametrize("kind", ["dense", "lowrank", "diag"])
def test_wrapper_logp_is_the_model_logp_at_mapped_points(kind):
    """log p_z(z) = log p(mu + L z) exactly (the constant Jacobian is left out)."""
    model = _kidiq_with_deterministic()
    density = pymc_ext.log_density(model)
    cov = np.array([[4.0, -0.05, 0.01], [-0.05, 0.002, 0.0], [0.01, 0.0, 0.01]])
    r = affine_reparam(np.array([26.0, 0.6, np.log(18.3)]), cov, kind, rank=1)
    rm = reparametrized_model(model, r, slices=density.slices)
    assert [v.name for v in rm.model.free_RVs] == [rm.latent]
    logp_z = rm.model.compile_logp()
    dlogp_z = rm.model.compile_dlogp()
    for z in np.random.default_rng(0).normal(size=(4, 3)):
        x = r.forward(z)
        lp, grad_x = density.logp_and_grad(x)
        assert logp_z({rm.latent: z}) == pytest.approx(lp, rel=1e-10, abs=1e-8)
        np.testing.assert_allclose(dlogp_z({rm.latent: z}), r.matrix().T @ grad_x, rtol=1e-7)
    # The user's variables (and the Deterministic) are Deterministics of the wrapper.
    z = np.array([0.5, -1.0, 0.2])
    names = ("beta", "sigma", "slope_sd")
    outs = rm.model.replace_rvs_by_values([rm.model[n] for n in names])
    values = pytensor.function([rm.model.rvs_to_values[rm.model[rm.latent]]], outs)(z)
    expected = density.constrain(r.forward(z))
    for name, value in zip(names, values, strict=True):
        np.testing.assert_allclose(value, expected[name], rtol=1e-12)
    assert rm.model.named_vars_to_dims["beta"] == ("coef",)
    assert rm.hidden_names == [rm.latent, "sigma_log__"]
    # var_names as in pm.sample: the values are always traced, the rest only when named.
    only = reparametrized_model(model, r, slices=density.slices, var_names=["slope_sd"])
    traced = [v.name for v in only.model.deterministics]
    assert traced == ["beta", "sigma_log__", "slope_sd"]


@pytest.mark.slow  # two numba compiles of a model with a simplex: ~30 s
def test_same_result_layout_as_pm_sample_nutpie():
    """Groups, names, dims, coords, stats as pm.sample(nuts_sampler="nutpie"); no z anywhere."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + rng.normal(size=40)
    with pm.Model(coords={"coef": ["a", "b", "c"], "obs": np.arange(40)}) as model:
        beta = pm.Normal("beta", 0.0, 5.0, dims="coef")
        sigma = pm.HalfNormal("sigma", 2.0)
        w = pm.Dirichlet("w", np.ones(3), dims="coef")
        mu = pm.Deterministic("mu", pm.math.dot(X, beta), dims="obs")
        pm.Normal("y", mu, sigma, observed=y, dims="obs")
        pm.Multinomial("counts", n=30, p=w, observed=[10, 12, 8], dims="coef")
    kw = dict(draws=30, tune=30, chains=2, random_seed=3, discard_tuned_samples=False, **QUIET)
    kw["idata_kwargs"] = {"include_transformed": True}
    with model, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Only 30 samples per chain"
        ref = pm.sample(nuts_sampler="nutpie", nuts_sampler_kwargs={"store_gradient": True}, **kw)
        ours = pymc_ext.sample(
            nuts_sampler="nutpie", metric="dense", nuts={"store_gradient": True}, **kw
        )

    assert list(ours.children) == list(ref.children)
    for group in ref.children:
        a, b = ref[group].to_dataset(), ours[group].to_dataset()
        assert list(b.data_vars) == list(a.data_vars), group
        for name in a.data_vars:
            assert b[name].dims == a[name].dims, (group, name)
        for c in a.coords:
            np.testing.assert_array_equal(b[c].values, a[c].values)
    _no_latent(ours)
    assert ours.sample_stats.attrs["warmstart_metric"] == "dense"
    assert ours.sample_stats.attrs["warmstart_reparametrization"].startswith("x = mu + L z")
    # Statistics in x, not z: logp, the unconstrained draw and the gradient agree.
    density = pymc_ext.log_density(model)
    ss = ours.sample_stats
    for c, d in [(0, 0), (1, 17)]:
        lp, grad = density.logp_and_grad(ss.unconstrained_draw.values[c, d])
        assert ss.logp.values[c, d] == pytest.approx(lp, rel=1e-9)
        np.testing.assert_allclose(ss.gradient.values[c, d], grad, rtol=1e-6, atol=1e-8)
    uc = ours.unconstrained_posterior
    x = ss.unconstrained_draw.values
    np.testing.assert_allclose(uc.sigma_log__.values, x[..., 3], rtol=1e-12)
    # The warm start's cost and nutpie's own gradient counts are both there.
    assert ss.attrs["warmstart_grad_evals"] > 0
    assert int(ss.n_steps.sum()) > 0


@pytest.mark.parametrize(
    "metric", ["dense", "diag", pytest.param("lowrank", marks=pytest.mark.slow)]
)
def test_nutpie_reparam_matches_reference(metric):
    model = _kidiq_with_deterministic()
    with model:
        idata = pymc_ext.sample(
            draws=500, chains=4, random_seed=11, nuts_sampler="nutpie", metric=metric, **QUIET
        )
    attrs = idata.sample_stats.attrs
    assert attrs["warmstart_metric"] == metric, attrs["warmstart_metric_reason"]
    assert attrs["warmstart_fallback"] == 0
    assert attrs["warmstart_reparametrization"].startswith("x = mu + L z")
    assert attrs["warmstart_metric_rank"] == (0 if metric != "lowrank" else 1)
    assert idata.posterior.attrs["tuning_steps"] == DEFAULT_NUTPIE_TUNE
    post = idata.posterior
    assert list(post.data_vars) == ["beta", "sigma", "slope_sd"]
    assert post["beta"].dims == ("chain", "draw", "coef")
    assert post["beta"].coords["coef"].values.tolist() == ["intercept", "mom_iq"]
    _no_latent(idata)
    # Within Monte Carlo error of the reference (4 x 500 draws, ESS > 1000).
    cmp = compare_to_reference(idata, KIDIQ)
    assert cmp["max_mean_error"] < 0.1, cmp
    assert cmp["max_sd_error"] < 0.1, cmp
    np.testing.assert_allclose(
        post["slope_sd"].values, post["beta"].values[..., 1] / post["sigma"].values, rtol=1e-12
    )


def test_untrusted_warm_start_falls_back_to_plain_nutpie():
    model = _kidiq_with_deterministic()
    ws = run_warmstart(pymc_ext.log_density(model), "pathfinder", random_seed=5, num_draws=200)
    # As if Pathfinder had failed: a high k on unequal weights (a low importance ESS).
    bad = dataclasses.replace(ws, pareto_k=3.0, ess=10.0)
    with model, pytest.warns(UserWarning, match="metric is not used"):
        idata = pymc_ext.sample(
            draws=300,
            chains=4,
            random_seed=2,
            warmstart=bad,
            nuts_sampler="nutpie",
            metric="dense",
            **QUIET,
        )
    attrs = idata.sample_stats.attrs
    assert attrs["warmstart_fallback"] == 1
    assert attrs["warmstart_warmup"] == NUTPIE_FALLBACK_TUNE
    assert attrs["warmstart_reparametrization"].startswith("none")
    assert "Pareto k 3.00" in attrs["warmstart_metric_reason"]
    assert idata.posterior.attrs["tuning_steps"] == NUTPIE_FALLBACK_TUNE
    assert list(idata.posterior.data_vars) == ["beta", "sigma", "slope_sd"]
    # Plain nutpie mixes slowly here (correlation -0.99): compare within its own MC error.
    ess = az.ess(idata, method="bulk")
    cmp = compare_to_reference(idata, KIDIQ)["params"]
    for name, ess_value in (("beta[1]", ess["beta"][0]), ("beta[2]", ess["beta"][1])):
        assert cmp[name]["mean_error"] < 4.0 / np.sqrt(float(ess_value)) + 0.02, (name, cmp)


def test_bad_metric_is_refused_before_pathfinder():
    model = reference_model(KIDIQ)
    with model, pytest.raises(ValueError, match="metric must be one of"):
        pymc_ext.sample(nuts_sampler="nutpie", metric="full", **QUIET)
    with model, pytest.raises(TypeError, match="does not support"):
        pymc_ext.sample(nuts_sampler="nutpie", trace="x", **QUIET)
    with pytest.raises(ValueError, match="dimension 2"):
        reparametrized_model(model, affine_reparam(np.zeros(2), np.eye(2), "diag"))


@pytest.mark.slow  # two compiles: ~10 s
def test_same_seed_same_draws():
    model = reference_model(KIDIQ)
    runs = []
    for _ in range(2):
        with model:
            runs.append(
                pymc_ext.sample(draws=50, chains=2, random_seed=7, nuts_sampler="nutpie", **QUIET)
            )
    np.testing.assert_array_equal(
        runs[0].posterior["beta"].values, runs[1].posterior["beta"].values
    )
    assert (
        runs[0].sample_stats.attrs["warmstart_grad_evals"]
        == runs[1].sample_stats.attrs["warmstart_grad_evals"]
    )
