"""The metric choice (pymc_ext.blocks.metric_choice): diag, dense or low-rank, and when to trust."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pymc_ext.blocks.metric_choice import MetricChoice, choose_metric


def _estimated(cov: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """The covariance as a warm start would estimate it: from ``n`` draws."""
    draws = np.random.default_rng(seed).multivariate_normal(np.zeros(len(cov)), cov, size=n)
    return np.cov(draws.T)


def test_strongly_correlated_gaussian_gets_dense():
    corr = np.array([[1.0, 0.98, 0.3], [0.98, 1.0, 0.3], [0.3, 0.3, 1.0]])
    scales = np.array([1e-3, 10.0, 1.0])  # scales do not matter, correlations do
    cov = _estimated(corr * np.outer(scales, scales), n=300)
    choice = choose_metric(cov, 0.4, ess=300)
    assert isinstance(choice, MetricChoice)
    assert choice.kind == "dense" and choice.trusted and choice.rank == 0
    assert choice.max_abs_corr > 0.95 and choice.condition > 50
    assert "dense" in choice.reason and "max |corr| 0.98" in choice.reason


def test_independent_gaussian_gets_diag_even_with_noisy_correlations():
    scales = np.array([1e-4, 1.0, 300.0, 5.0, 0.1, 2.0, 1.0, 7.0])
    cov = _estimated(np.diag(scales**2), n=100, seed=3)
    sd = np.sqrt(np.diag(cov))
    off = np.abs(cov / np.outer(sd, sd) - np.eye(len(sd)))
    assert 0.1 < off.max() < 0.5  # sample noise gives some correlation
    choice = choose_metric(cov, 0.3, ess=100)
    assert choice.kind == "diag" and choice.trusted, choice.reason
    exact = choose_metric(np.diag(scales**2), 0.3)
    assert exact.kind == "diag" and exact.condition == pytest.approx(1.0)


def test_noise_band_decides_weak_correlation():
    """A weak correlation is dense with many draws behind it, diag within the noise."""
    rho = 0.6 ** np.abs(np.subtract.outer(np.arange(10), np.arange(10)))  # condition ~16
    assert choose_metric(rho, 0.3, ess=5000).kind == "dense"
    assert choose_metric(rho, 0.3, ess=40).kind == "diag"


def test_large_correlated_gets_lowrank_with_the_outlying_directions():
    """Three blocks of 40 equicorrelated parameters: three directions stand out."""
    blocks = [(1 - rho) * np.eye(40) + rho for rho in (0.5, 0.8, 0.9)]
    corr = np.block(
        [[b if i == j else np.zeros((40, 40)) for j, b in enumerate(blocks)] for i in range(3)]
    )
    sd = np.exp(np.random.default_rng(1).normal(size=120))
    cov = corr * np.outer(sd, sd)
    choice = choose_metric(cov, 0.5, max_dense_dim=50)
    assert choice.kind == "lowrank" and choice.rank == 3 and choice.num_outlying == 3
    assert choose_metric(cov, 0.5, max_dense_dim=200).kind == "dense"


@pytest.mark.parametrize(
    ("cov", "k", "kwargs", "why"),
    [
        (np.eye(2), 2.5, {}, "Pareto k 2.50"),
        (np.eye(2), np.nan, {}, "Pareto k unknown"),
        (np.array([[1.0, np.nan], [np.nan, 1.0]]), 0.3, {}, "not finite"),
        (np.array([[1.0, 2.0], [2.0, 1.0]]), 0.3, {}, "positive definite"),
        (np.eye(2), 0.3, {"num_paths": 4, "num_paths_ok": 1}, "1/4 Pathfinder paths"),
    ],
)
def test_poor_warm_starts_are_not_trusted(cov, k, kwargs, why):
    choice = choose_metric(cov, k, **kwargs)
    assert not choice.trusted and choice.kind == "diag"
    assert why in choice.reason and "not trusted" in choice.reason


def test_exact_approximation_is_trusted_and_choice_is_frozen():
    choice = choose_metric(np.array([[1.0, 0.9], [0.9, 1.0]]), -np.inf)
    assert choice.trusted and choice.kind == "dense" and "k -inf" in choice.reason
    with pytest.raises(dataclasses.FrozenInstanceError):
        choice.kind = "diag"
    assert choice.as_dict()["kind"] == "dense"


def test_a_sampler_can_limit_dense_to_near_normal_posteriors():
    cov = np.array([[1.0, 0.97], [0.97, 1.0]])
    assert choose_metric(cov, 1.2).kind == "dense"  # no limit by default
    choice = choose_metric(cov, 1.2, max_dense_pareto_k=1.0)
    assert choice.kind == "diag" and choice.trusted and "far from normal" in choice.reason


def test_high_k_on_flat_weights_is_noise():
    """Nearly equal importance weights (an exact approximation): a high fitted k is noise."""
    cov = np.array([[1.0, 0.95], [0.95, 1.0]])
    assert choose_metric(cov, 2.6, relative_ess=0.99).trusted
    assert not choose_metric(cov, 2.6, relative_ess=0.5).trusted
