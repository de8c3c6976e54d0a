"""Tests for multi-path Pathfinder (pymc_ext.pathfinder_core)."""

from __future__ import annotations

import numpy as np
import pytest

from pymc_ext.density import FunctionLogDensity
from pymc_ext.pathfinder_core import (
    PathfinderError,
    multipath_pathfinder,
    pathfinder_to_datatree,
    psis_log_weights,
    single_path_pathfinder,
)


def gaussian_density(mu: np.ndarray, cov: np.ndarray, normalised: bool = False):
    prec = np.linalg.inv(cov)
    const = -0.5 * np.linalg.slogdet(2 * np.pi * cov)[1] if normalised else 0.0
    return FunctionLogDensity(
        len(mu),
        lambda x: const - 0.5 * (x - mu) @ prec @ (x - mu),
        lambda x: -prec @ (x - mu),
        lambda X: const - 0.5 * np.einsum("ni,ij,nj->n", X - mu, prec, X - mu),
        lambda X: -(X - mu) @ prec,
    )


@pytest.fixture
def correlated():
    rng = np.random.default_rng(42)
    A = rng.normal(size=(5, 5))
    cov = A @ A.T / 5 + 0.5 * np.eye(5)
    mu = 3 * rng.normal(size=5)
    return mu, cov


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_correlated_gaussian_is_near_exact(correlated, seed):
    mu, cov = correlated
    d = gaussian_density(mu, cov)
    res = multipath_pathfinder(d, random_seed=seed)
    sd = np.sqrt(np.diag(cov))
    assert res.num_paths_ok == 4
    assert all(p.status == "converged" for p in res.paths)
    # Importance-weighted moments and the resampled draws match the target.
    assert np.max(np.abs(res.mean - mu) / sd) < 0.1
    assert np.max(np.abs(np.sqrt(np.diag(res.covariance)) / sd - 1)) < 0.1
    assert np.max(np.abs(res.covariance - cov)) < 0.15 * np.max(np.abs(cov))
    draw_cov = np.cov(res.draws.T)
    assert np.max(np.abs(draw_cov - cov)) < 0.2 * np.max(np.abs(cov))
    # The best path approximation is itself close: ELBO near log Z.
    log_z = 0.5 * np.linalg.slogdet(2 * np.pi * cov)[1]
    best = max(p.best_elbo for p in res.paths)
    assert abs(best - log_z) < 0.15
    np.testing.assert_allclose(res.inverse_metric_diag, np.diag(res.covariance))


def test_draws_and_elbo_on_known_target():
    # Normalised standard normal: log Z = 0, so the ELBO is <= 0 and ~0 when exact.
    d = gaussian_density(np.zeros(3), np.eye(3), normalised=True)
    path = single_path_pathfinder(d, np.array([1.5, -1.0, 0.7]), num_elbo_draws=200, random_seed=3)
    assert path.status == "converged"
    assert np.all(path.elbo[np.isfinite(path.elbo)] < 0.05)
    assert path.best_elbo > -0.05
    # Draws from the best approximation: lp and logq are the right densities.
    np.testing.assert_allclose(path.lp, d.logp_batch(path.draws))
    q = path.approximation
    cov = q.covariance()
    diff = path.draws - q.mean
    logq = -0.5 * (
        np.linalg.slogdet(2 * np.pi * cov)[1]
        + np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff)
    )
    np.testing.assert_allclose(path.logq, logq, atol=1e-8)
    assert np.abs(path.draws.mean(0)).max() < 0.15
    assert np.abs(path.draws.std(0) - 1).max() < 0.1


def test_elbo_trace_rises_on_a_far_start():
    d = gaussian_density(np.full(4, 5.0), np.diag([1.0, 4.0, 0.25, 1.0]), normalised=True)
    path = single_path_pathfinder(d, np.zeros(4), num_elbo_draws=50, random_seed=0)
    assert path.elbo[-1] > path.elbo[0]
    assert path.best_elbo > -0.2


def test_grad_evals_are_counted():
    d = gaussian_density(np.zeros(2), np.eye(2))
    res = multipath_pathfinder(d, num_paths=3, num_draws=50, random_seed=1)
    assert res.grad_evals == d.grad_evals == sum(p.grad_evals for p in res.paths)
    assert res.grad_evals > 0
    assert res.logp_evals == d.logp_evals


def test_random_seed_reproducible():
    d = gaussian_density(np.array([1.0, -1.0]), np.array([[1.0, 0.5], [0.5, 2.0]]))
    a = multipath_pathfinder(d, num_draws=100, random_seed=7)
    b = multipath_pathfinder(d, num_draws=100, random_seed=7)
    c = multipath_pathfinder(d, num_draws=100, random_seed=8)
    np.testing.assert_array_equal(a.draws, b.draws)
    np.testing.assert_array_equal(a.lp, b.lp)
    assert a.pareto_k == b.pareto_k
    assert not np.array_equal(a.draws, c.draws)


def test_init_and_jitter():
    d = gaussian_density(np.zeros(2), np.eye(2))
    init = np.array([[3.0, 3.0], [-3.0, 2.0]])
    res = multipath_pathfinder(d, num_paths=2, num_draws=20, init=init, random_seed=0)
    np.testing.assert_array_equal([p.start for p in res.paths], init)
    res = multipath_pathfinder(d, num_paths=2, num_draws=20, init=init, jitter=0.1, random_seed=0)
    starts = np.array([p.start for p in res.paths])
    assert 0 < np.abs(starts - init).max() <= 0.1
    shared = multipath_pathfinder(d, num_paths=3, num_draws=20, init=np.ones(2), random_seed=0)
    assert all(np.array_equal(p.start, np.ones(2)) for p in shared.paths)
    with pytest.raises(ValueError, match="init must have shape"):
        multipath_pathfinder(d, num_paths=3, init=init)
    with pytest.raises(ValueError, match="num_paths"):
        multipath_pathfinder(d, num_paths=0)


def test_failed_paths_are_dropped_and_reported():
    # The log density is -inf for x[0] > 2: paths started there fail.
    def logp(x):
        return -np.inf if x[0] > 2 else -0.5 * float(x @ x)

    d = FunctionLogDensity(
        2,
        logp,
        lambda x: -x,
        lambda X: np.where(X[:, 0] > 2, -np.inf, -0.5 * (X * X).sum(1)),
    )
    init = np.array([[3.0, 0.0], [1.0, 1.0], [-1.0, 0.5], [5.0, 5.0]])
    res = multipath_pathfinder(d, init=init, num_draws=200, random_seed=0)
    statuses = [p.status for p in res.paths]
    assert statuses[0] == statuses[3] == "failed"
    assert "not finite at the starting point" in res.paths[0].message
    assert statuses[1] == statuses[2] == "converged"
    assert res.num_paths_ok == 2
    assert np.all(res.draws[:, 0] <= 2)
    dt = pathfinder_to_datatree(d, res)
    assert list(dt.pathfinder_paths["status"].values) == statuses


def test_all_paths_failed_raises_with_reasons():
    d = FunctionLogDensity(2, lambda x: np.nan, lambda x: np.full(2, np.nan))
    with pytest.raises(PathfinderError, match="All 2 Pathfinder paths failed.*not finite"):
        multipath_pathfinder(d, num_paths=2, random_seed=0)


def test_line_search_failure_returns_start():
    # Finite only at the start point: no step can increase the log density.
    x0 = np.array([0.3, -0.2])

    def logp(x):
        return 0.0 if np.allclose(x, x0, atol=0) else -np.inf

    d = FunctionLogDensity(2, logp, lambda x: np.array([1.0, 1.0]))
    path = single_path_pathfinder(d, x0, random_seed=0)
    assert path.status == "returned-start"
    assert not path.ok
    with pytest.raises(PathfinderError, match="returned-start"):
        multipath_pathfinder(d, num_paths=2, init=x0, random_seed=0)


def test_psis_uses_arviz():
    from arviz_stats.base import array_stats

    log_ratio = np.random.default_rng(0).standard_t(3, size=2000)
    lw, k = psis_log_weights(log_ratio)
    ref_lw, ref_k = array_stats.psislw(-log_ratio)
    np.testing.assert_allclose(lw, ref_lw)
    assert k == pytest.approx(float(ref_k))
    # A constant ratio (exact approximation) gives uniform weights.
    lw, k = psis_log_weights(np.full(100, 3.0))
    np.testing.assert_allclose(np.exp(lw), 0.01)
    assert k == -np.inf


def test_datatree_output():
    d = gaussian_density(np.zeros(2), np.eye(2))
    res = multipath_pathfinder(d, num_draws=300, random_seed=0)
    dt = pathfinder_to_datatree(d, res)
    assert dt.posterior["x"].shape == (1, 300, 2)
    assert dt.sample_stats["lp"].shape == (1, 300)
    assert dt.sample_stats["logq"].shape == (1, 300)
    assert dt.sample_stats.attrs["grad_evals"] == res.grad_evals
    assert dt.sample_stats.attrs["pareto_k"] == pytest.approx(res.pareto_k)
    paths = dt.pathfinder_paths
    assert paths["elbo"].dims == ("path", "iteration")
    assert list(paths["grad_evals"].values) == [p.grad_evals for p in res.paths]


def test_pymc_pathfinder_on_conjugate_model():
    import pymc as pm

    from pymc_ext.pathfinder_core import pathfinder

    y = np.array([1.2, 0.4, 2.1, 1.6, 0.9, 1.3])
    with pm.Model(coords={"obs": range(6)}) as model:
        mu = pm.Normal("mu", 0.0, 10.0)
        pm.Normal("y", mu, 1.0, observed=y, dims="obs")
    dt = pathfinder(model, num_draws=1000, random_seed=5, progressbar=False)
    post_var = 1 / (1 / 100 + len(y))
    post_mean = post_var * y.sum()
    draws = dt.posterior["mu"].values.ravel()
    assert abs(draws.mean() - post_mean) < 0.1 * np.sqrt(post_var)
    assert abs(draws.std() / np.sqrt(post_var) - 1) < 0.1
    assert "observed_data" in dt.children
    assert dt.sample_stats.attrs["grad_evals"] > 0


def test_pymc_pathfinder_compiles_only_what_it_needs():
    """log_density compiles lazily: Pathfinder needs logp+grad, batched logp and batched
    constrain, and a Deterministic that does not depend on the parameters still converts."""
    import pymc as pm
    import pytensor.tensor as pt

    from pymc_ext.pathfinder_core import pathfinder
    from pymc_ext.pymc_model import log_density

    with pm.Model() as model:
        mu = pm.Normal("mu", 0.0, 10.0)
        sigma = pm.HalfNormal("sigma", 2.0)
        pm.Deterministic("two", pt.constant(2.0))
        pm.Deterministic("mu_sq", mu**2)
        pm.Normal("y", mu, sigma, observed=[1.2, 0.4, 2.1, 1.6])
    dt = pathfinder(model, num_draws=200, random_seed=3, progressbar=False)
    assert set(log_density(model)._fns) == {"logp_grad", "logp_batch", "constrain_batch"}
    assert dt.posterior["two"].shape == (1, 200)
    assert np.all(dt.posterior["two"].values == 2.0)
    np.testing.assert_allclose(dt.posterior["mu_sq"].values, dt.posterior["mu"].values ** 2)


def test_init_as_a_point_in_the_models_space():
    import pymc as pm

    import pymc_ext

    with pm.Model() as m:
        pm.Normal("mu", 0, 1)
        pm.HalfNormal("s", 1)
    idata = pymc_ext.pathfinder(m, init={"mu": 0.5, "s": 1.0}, num_paths=2, random_seed=1,
                                progressbar=False)
    assert idata.posterior["s"].values.min() > 0
    with pytest.raises(ValueError, match="lacks"):
        pymc_ext.pathfinder(m, init={"mu": 0.5}, progressbar=False)
