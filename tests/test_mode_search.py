"""Mode search (pymc_ext.mode_search): Laplace masses, multi-start climbs, and flow_mcmc with it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from toy_densities import funnel_density, gaussian_density, mixture_density, share_and_se

from pymc_ext.density import FunctionLogDensity
from pymc_ext.flow_sampler import distinct_modes, flow_mcmc, flow_mcmc_adapt
from pymc_ext.flows import pathfinder_seed
from pymc_ext.mode_search import add_modes_to_seed, laplace_log_mass, search_modes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: the 10-D mixture of ``benchmarks/flows.py`` ``mixture3_d10_a3_s1-1-1.5``: centres -3 * 1,
#: +3 * 1 and (+3, -3, ...), scales 1, 1, 1.5; the two narrower modes each catch only 2-8% of
#: the climbs from overdispersed starts (``benchmarks/mode_basins.py --grid``)
DIM = 10
WEIGHTS = [0.2, 0.5, 0.3]
ALT = np.where(np.arange(DIM) % 2 == 0, 3.0, -3.0)
CENTERS = [-3.0 * np.ones(DIM), 3.0 * np.ones(DIM), ALT]
SCALES = [1.0, 1.0, 1.5]


def test_laplace_log_mass_is_the_weight_and_covariance_of_a_normal_component():
    cov = np.array([[1.0, 0.6, 0.0], [0.6, 2.0, -0.3], [0.0, -0.3, 0.5]])
    a = gaussian_density([0.0, 0.0, 0.0], cov)  # unnormalised: add log 0.3 - log Z_a
    b = gaussian_density([9.0, 9.0, 9.0], np.eye(3))
    log_wa = math.log(0.3) - 0.5 * np.linalg.slogdet(2 * np.pi * cov)[1]
    log_wb = math.log(0.7) - 1.5 * math.log(2 * np.pi)

    def lp(X):
        return np.logaddexp(log_wa + a.logp_batch(X), log_wb + b.logp_batch(X))

    def gr(X):
        la, lb = log_wa + a.logp_batch(X), log_wb + b.logp_batch(X)
        r = np.exp(la - np.logaddexp(la, lb))[:, None]
        return r * a.logp_and_grad_batch(X)[1] + (1 - r) * b.logp_and_grad_batch(X)[1]

    d = FunctionLogDensity(3, lambda x: lp(x[None])[0], lambda x: gr(x[None])[0], lp, gr)
    log_mass, laplace_cov = laplace_log_mass(d, np.zeros(3))
    assert abs(log_mass - math.log(0.3)) < 1e-4
    np.testing.assert_allclose(laplace_cov, cov, atol=1e-4)


def test_laplace_log_mass_refuses_a_point_that_is_not_a_maximum():
    d = mixture_density(2, [0.5, 0.5], [[-3.0, 0.0], [3.0, 0.0]], [1.0, 1.0])
    log_mass, cov = laplace_log_mass(d, np.zeros(2))  # the saddle between the two modes
    assert log_mass == -math.inf and cov is None


def test_search_finds_the_modes_not_yet_known_with_their_masses():
    d = mixture_density(DIM, WEIGHTS, CENTERS, SCALES)
    seed = pathfinder_seed(d, num_paths=4, random_seed=0)
    found = search_modes(d, seed, ALT[None], num_climbs=128, rng=np.random.default_rng(1))
    assert found.tops.shape[0] == 2  # the two narrower modes; the broad one was known
    order = np.argsort([np.abs(t - CENTERS[0]).max() for t in found.tops])
    np.testing.assert_allclose(found.tops[order[0]], CENTERS[0], atol=1e-3)
    np.testing.assert_allclose(found.tops[order[1]], CENTERS[1], atol=1e-3)
    np.testing.assert_allclose(np.exp(found.log_masses[order]), [0.2, 0.5], atol=1e-3)
    assert found.ended_at_new.sum() < 0.25 * found.climbs  # small basins: few climbs end there
    more = add_modes_to_seed(seed, found, np.random.default_rng(2))
    assert more.centers.shape[0] == seed.centers.shape[0] + 2
    near_new = np.min([np.abs(more.draws - t).max(1) for t in found.tops], axis=0) < 5.0
    assert near_new.sum() >= 2 * (seed.draws.shape[0] // seed.centers.shape[0])


def test_search_takes_no_point_of_a_funnels_neck_for_a_mode():
    """Climbs in a funnel end deep in the neck: high density, no volume. Not a mode."""
    d = funnel_density(10)
    seed = pathfinder_seed(d, num_paths=16, random_seed=1)
    known = distinct_modes(d, seed.centers)
    found = search_modes(d, seed, known, num_climbs=128, rng=np.random.default_rng(1))
    assert found.tops.shape[0] == 0
    assert np.isfinite(found.reference_log_mass)


def test_search_climbs_zero_turns_the_search_off_and_negative_is_refused():
    d = gaussian_density([0.0, 0.0], np.eye(2))
    ad = flow_mcmc_adapt(d, chains=16, n_rounds=1, first_train_steps=20, num_paths=2,
                         search_climbs=0, random_seed=0, progressbar=False,
                         flow_kwargs={"transforms": 2, "hidden_features": (8, 8)})
    assert ad.mode_search is None
    with pytest.raises(ValueError, match="search_climbs"):
        flow_mcmc(d, search_climbs=-1)


@pytest.mark.slow
def test_flow_mcmc_finds_and_weighs_all_three_modes_of_a_10d_mixture_with_unequal_scales():
    """The climbs' search, every other option default. Seed 2's 16 Pathfinder paths find only
    the broad mode (measured: ``flow_mcmc_adapt(..., search_climbs=0)`` gives one mode); the
    search finds the other two. With three modes found the defaults are 128 walkers and 10
    rounds. About 40 s."""
    d = mixture_density(DIM, WEIGHTS, CENTERS, SCALES)
    dt = flow_mcmc(d, random_seed=2, progressbar=False, explore="climbs")
    attrs = dt.sample_stats.attrs
    assert attrs["n_modes"] == 3
    assert attrs["modes_from_search"] >= 1
    assert dt.posterior.sizes["chain"] == 128  # 32 walkers per mode found: default_num_walkers
    x = dt.posterior["x"].values
    label = np.argmin(((x[..., None, :] - np.asarray(CENTERS)) ** 2).sum(-1), axis=-1)
    for k, w in enumerate(WEIGHTS):
        share, se = share_and_se(label == k)
        assert abs(share - w) < max(4 * se, 0.02), (k, share, w, se)
