"""Flows (pymc_ext.flows): construction, standardisation, both fits, NaN guard, seeding, saving."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toy_densities import gaussian_density, mixture_density

from pymc_ext.density import FunctionLogDensity
from pymc_ext.flows import (
    FlowConfig,
    FlowFitError,
    StandardizedFlow,
    build_flow,
    default_flow_config,
    fit_flow,
    fit_forward_kl,
    fit_reverse_kl,
    flow_init,
    pathfinder_seed,
)

SMALL = {"transforms": 2, "hidden_features": (16, 16)}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- construction ---------------------------------------------------------------------------


def test_default_sizes_grow_with_dimension():
    small, big = default_flow_config(2), default_flow_config(300)
    assert small.kind == "nsf"
    assert big.hidden_features[0] > small.hidden_features[0]
    with pytest.raises(ValueError, match="Unknown flow kind"):
        FlowConfig(kind="glow")


@pytest.mark.parametrize("kind", ["nsf", "maf", "iaf", "realnvp"])
def test_sample_and_log_prob_agree_and_standardisation_is_exact(kind):
    rng = np.random.default_rng(0)
    mean = np.array([1.0, -2.0, 0.5])
    a = rng.normal(size=(3, 3))
    cov = a @ a.T + np.eye(3)
    flow = build_flow(3, mean=mean, covariance=cov, kind=kind, random_seed=0, **SMALL)
    x, logq = flow.sample(200, rng)
    assert np.allclose(flow.log_prob_numpy(x), logq, atol=1e-4)
    # log q(x) = log q_z(L^{-1}(x - m)) - log|det L| with L = chol(cov)
    L = np.linalg.cholesky(cov)
    z = np.linalg.solve(L, (x - mean).T).T
    with torch.no_grad():
        zt = torch.as_tensor(z, dtype=torch.float32, device=flow.device)
        logq_z = flow.flow().log_prob(zt).double().cpu().numpy()
    assert np.allclose(logq, logq_z - np.log(np.diag(L)).sum(), atol=1e-3)


def test_one_dimensional_flow_works():
    flow = build_flow(1, random_seed=0)
    x, logq = flow.sample(10, np.random.default_rng(0))
    assert x.shape == (10, 1) and np.all(np.isfinite(logq))


def test_bad_covariance_is_floored_with_a_warning():
    with pytest.warns(UserWarning, match="not positive definite"):
        build_flow(2, covariance=np.array([[1.0, 2.0], [2.0, 1.0]]), **SMALL)
    with pytest.raises(ValueError, match="covariance must be"):
        build_flow(2, covariance=np.eye(3))


def test_build_is_reproducible_from_seed_and_leaves_torch_state_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    f1 = build_flow(3, random_seed=7, **SMALL)
    after = torch.rand(1)
    f2 = build_flow(3, random_seed=7, **SMALL)
    assert torch.equal(before, after)
    x = np.random.default_rng(0).normal(size=(5, 3))
    assert np.array_equal(f1.log_prob_numpy(x), f2.log_prob_numpy(x))


# -- fitting -------------------------------------------------------------------------------


def test_forward_kl_recovers_a_gaussian_and_stops_early():
    rng = np.random.default_rng(1)
    cov = np.array([[2.0, 0.8], [0.8, 1.0]])
    samples = rng.multivariate_normal([3.0, -1.0], cov, size=1000)
    flow = build_flow(2, mean=samples.mean(0), covariance=np.cov(samples.T), random_seed=0, **SMALL)
    info = fit_forward_kl(
        flow, samples, max_steps=3000, learning_rate=3e-3, patience=5, random_seed=0,
        progressbar=False,
    )
    assert info.stopped_early and info.steps < 3000
    x, _ = flow.sample(20000, rng)
    # the flow reproduces the sample it was fitted to
    assert np.allclose(x.mean(0), samples.mean(0), atol=0.1)
    assert np.allclose(np.cov(x.T), np.cov(samples.T), atol=0.25)


def test_forward_kl_same_seed_same_flow():
    samples = np.random.default_rng(0).normal(size=(300, 2))
    fits = []
    for _ in range(2):
        flow = build_flow(2, random_seed=3, **SMALL)
        fit_forward_kl(flow, samples, max_steps=30, random_seed=4, progressbar=False)
        fits.append(flow.log_prob_numpy(samples[:10]))
    assert np.array_equal(fits[0], fits[1])


def test_reverse_kl_matches_a_correlated_gaussian_and_its_normaliser():
    cov = np.array([[1.0, 0.9], [0.9, 1.0]])
    d = gaussian_density([1.0, -1.0], cov)
    flow = build_flow(2, random_seed=0, **SMALL)
    info = fit_reverse_kl(
        flow, d, max_steps=300, batch_size=128, learning_rate=3e-3, random_seed=0,
        progressbar=False,
    )
    # -ELBO >= -log Z; log Z of the unnormalised Gaussian is log(2 pi sqrt(det cov))
    log_z = np.log(2 * np.pi * np.sqrt(np.linalg.det(cov)))
    assert -log_z - 0.02 < info.best < -log_z + 0.15
    assert info.grad_evals > 0
    x, _ = flow.sample(20000, np.random.default_rng(0))
    assert np.allclose(x.mean(0), [1.0, -1.0], atol=0.1)
    assert np.allclose(np.cov(x.T), cov, atol=0.15)


def test_nan_guard_restarts_with_smaller_step_then_succeeds():
    calls = {"n": 0}
    base = gaussian_density([0.0, 0.0], np.eye(2))

    def logp_batch(X):
        calls["n"] += 1
        out = base.logp_batch(X)
        return out * np.nan if calls["n"] <= 1 else out  # first step: NaN everywhere

    d = FunctionLogDensity(
        2, lambda x: logp_batch(x[None])[0], None, logp_batch, lambda X: -X
    )
    flow = build_flow(2, random_seed=0, **SMALL)
    info = fit_reverse_kl(
        flow, d, max_steps=60, learning_rate=1e-2, max_restarts=3, random_seed=0, progressbar=False
    )
    assert info.restarts == 1
    assert info.learning_rate == pytest.approx(2e-3)


def test_nan_guard_fails_clearly_when_the_density_is_always_nan():
    d = FunctionLogDensity(
        2, lambda x: np.nan, None, lambda X: np.full(len(X), np.nan), lambda X: np.zeros_like(X)
    )
    flow = build_flow(2, random_seed=0, **SMALL)
    with pytest.raises(FlowFitError, match="non-finite losses 3 times.*What to try"):
        fit_reverse_kl(flow, d, max_steps=20, max_restarts=2, progressbar=False)


def test_fit_input_errors_come_before_any_work():
    flow = build_flow(2, **SMALL)
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        fit_forward_kl(flow, np.zeros((10, 3)))
    with pytest.raises(ValueError, match="NaN"):
        fit_forward_kl(flow, np.full((10, 2), np.nan))
    d = gaussian_density([0.0, 0.0], np.eye(2))
    with pytest.raises(ValueError, match="needs samples"):
        fit_flow(d, method="forward")
    with pytest.raises(ValueError, match="dim 3"):
        fit_reverse_kl(build_flow(3, **SMALL), d)


def test_save_and_load_round_trip(tmp_path):
    flow = build_flow(3, mean=np.ones(3), covariance=2 * np.eye(3), random_seed=0, **SMALL)
    path = tmp_path / "flow.pt"
    flow.save(str(path))
    twin = StandardizedFlow.load(str(path))
    x = np.random.default_rng(0).normal(size=(7, 3))
    assert np.allclose(twin.log_prob_numpy(x), flow.log_prob_numpy(x))
    iaf = build_flow(3, kind="iaf", passes=None, random_seed=0, **SMALL)
    iaf.save(str(tmp_path / "iaf.pt"))
    assert np.allclose(StandardizedFlow.load(str(tmp_path / "iaf.pt")).log_prob_numpy(x),
                       iaf.log_prob_numpy(x))
    blob = torch.load(str(path), weights_only=True)
    blob["version"] = 99
    torch.save(blob, str(tmp_path / "old.pt"))
    with pytest.raises(ValueError, match="format version 99"):
        StandardizedFlow.load(str(tmp_path / "old.pt"))


def test_student_t_base_is_heavy_tailed_consistent_and_saved(tmp_path):
    rng = np.random.default_rng(0)
    flow = build_flow(3, random_seed=0, base="student", base_df=3.0, **SMALL)
    x, logq = flow.sample(500, rng)
    assert np.allclose(flow.log_prob_numpy(x), logq, atol=1e-3)
    # the base draws are Student-t(3): about 2.7% beyond 4 sd, against 6e-5 for a normal
    z = flow.base_noise(20000, rng).cpu().numpy()
    assert 0.015 < (np.abs(z) > 4).mean() < 0.04
    path = tmp_path / "student.pt"
    flow.save(str(path))
    twin = StandardizedFlow.load(str(path))
    assert twin.config.base == "student" and twin.config.base_df == 3.0
    assert np.allclose(twin.log_prob_numpy(x), logq, atol=1e-3)
    with pytest.raises(ValueError, match="base must be"):
        FlowConfig(base="cauchy")


# -- seeding and flow_init -------------------------------------------------------------------


def test_pathfinder_seed_keeps_every_mode():
    d = mixture_density(2, [0.1, 0.9], [[-4, -4], [4, 4]], [1.0, 1.0])
    seed = pathfinder_seed(d, num_paths=8, num_draws=800, random_seed=2)
    side = seed.draws.mean(1) > 0
    # PSIS resampling would all but drop the 10% mode; the pooled seed keeps it.
    assert 0.05 < (~side).mean() < 0.95
    assert seed.within_variance.shape == (2,)
    assert np.all(seed.within_variance < 3.0)  # within-mode, not the 16+ between-mode spread


@pytest.mark.slow
def test_flow_init_importance_resamples_to_the_right_weights():
    d = mixture_density(2, [0.3, 0.7], [[-3, -3], [3, 3]], [1.0, 1.0])
    res = flow_init(
        d,
        num_draws=2000,
        num_paths=8,
        random_seed=0,
        progressbar=False,
        forward_kwargs={"max_steps": 400},
        reverse_kwargs={"max_steps": 200},
    )
    assert res.draws.shape == (2000, 2)
    assert res.inverse_metric_diag.shape == (2,)
    assert res.pareto_k < 0.7
    assert res.grad_evals > 0
    plus = (res.draws.mean(1) > 0).mean()
    assert abs(plus - 0.7) < 0.06
    assert np.allclose(res.mean, 0.7 * 3 + 0.3 * -3, atol=0.3)
