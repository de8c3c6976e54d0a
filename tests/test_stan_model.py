"""StanModel: log density and gradient against PyMC, transforms, batching, RNG, caching.

Every test compiles real Stan programs with the real toolchain (CmdStan
2.27 here) through our C++ shim; builds are cached, so only a first run
pays for compiling.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pymc_ext.density import BaseLogDensity, LogDensity
from pymc_ext.models import reference_model
from pymc_ext.pymc_model import log_density
from stan_bridge import StanModel
from stan_bridge.programs import PROGRAMS, REFERENCE_POSTERIORS, reference_data

pytestmark = pytest.mark.stan

COMPARED = ["eight_schools", "arK", "gp_pois_regr", "low_dim_gauss_mix"]


@pytest.fixture(scope="module")
def models():
    """One StanModel per reference program (propto=False: all constants kept)."""
    return {
        name: StanModel(PROGRAMS[name], reference_data(name), propto=False, progressbar=False)
        for name in COMPARED
    }


@pytest.fixture(scope="module")
def pymc_densities():
    return {name: log_density(reference_model(REFERENCE_POSTERIORS[name])) for name in COMPARED}


def _stan_to_pymc(sm: StanModel, pm_density, X: np.ndarray) -> np.ndarray:
    """The PyMC unconstrained points for Stan's (same transforms, other order)."""
    return np.stack([pm_density.unconstrain(sm.constrain(x)) for x in X])


def _permutation(sm, pm_density, rng) -> np.ndarray:
    """perm with x_pymc == x_stan[perm] (both use the same transforms)."""
    x = rng.uniform(-1.5, 1.5, size=sm.dim)
    xp = pm_density.unconstrain(sm.constrain(x))
    perm = np.array([int(np.argmin(np.abs(x - v))) for v in xp])
    np.testing.assert_allclose(x[perm], xp, rtol=0, atol=1e-12)
    assert sorted(perm.tolist()) == list(range(sm.dim))
    return perm


@pytest.mark.parametrize("name", COMPARED)
def test_logp_and_grad_equal_pymc_to_1e8(models, pymc_densities, name):
    """Same posterior written in Stan and in PyMC: log density differences and gradients agree.

    Stan's `cauchy`/`normal` on a `<lower=0>` parameter omit the truncation
    constant that PyMC's half-distributions include, so absolute values
    differ by a constant; differences between points and gradients must not.
    """
    sm, pmd = models[name], pymc_densities[name]
    rng = np.random.default_rng(0)
    perm = _permutation(sm, pmd, rng)
    X = rng.uniform(-1.5, 1.5, size=(6, sm.dim))
    lp_s, g_s = sm.logp_and_grad_batch(X)
    lp_p, g_p = pmd.logp_and_grad_batch(X[:, perm])
    d_s, d_p = lp_s - lp_s[0], lp_p - lp_p[0]
    scale = np.maximum(1.0, np.abs(lp_s))
    assert np.max(np.abs(d_s - d_p) / scale) < 1e-8, (d_s, d_p)
    gscale = np.maximum(1.0, np.abs(g_s[:, perm]))
    assert np.max(np.abs(g_s[:, perm] - g_p) / gscale) < 1e-8


def test_jacobian_and_propto_switches(models):
    """Eight schools: the Jacobian term is tau's log transform, x_tau; propto drops constants."""
    sm = models["eight_schools"]
    rng = np.random.default_rng(1)
    tau_idx = sm.unconstrained_names.index("tau")
    for x in rng.normal(size=(4, sm.dim)):
        with_j = sm.log_density(x, jacobian=True)
        without = sm.log_density(x, jacobian=False)
        assert with_j - without == pytest.approx(x[tau_idx], abs=1e-10)
        _, g1 = sm.log_density_gradient(x, jacobian=True)
        _, g0 = sm.log_density_gradient(x, jacobian=False)
        e = np.zeros(sm.dim)
        e[tau_idx] = 1.0
        np.testing.assert_allclose(g1 - g0, e, atol=1e-12)
    # propto=True drops the same constant everywhere
    X = rng.normal(size=(5, sm.dim))
    full = np.array([sm.log_density(x, propto=False) for x in X])
    prop = np.array([sm.log_density(x, propto=True) for x in X])
    diff = full - prop
    assert np.ptp(diff) < 1e-10
    # 8 normals (theta_trans) + 8 normals (y) + mu's normal: -0.5 log(2 pi) each, plus
    # the scale constants -log(5) (mu), log(5)-log(pi) (cauchy), -sum log sigma (y)
    sigma = np.asarray(reference_data("eight_schools")["sigma"], float)
    const = (
        -17 * 0.5 * np.log(2 * np.pi)
        - np.log(5.0)
        + (-np.log(np.pi) - np.log(5.0))
        - np.log(sigma).sum()
    )
    assert diff[0] == pytest.approx(const, abs=1e-9)


def test_log_density_protocol_and_counters(models):
    sm = models["arK"]
    assert isinstance(sm, LogDensity) and isinstance(sm, BaseLogDensity)
    sm.reset_counters()
    x = np.zeros(sm.dim)
    lp, g = sm.logp_and_grad(x)
    assert sm.logp(x) == pytest.approx(lp, abs=1e-12)
    X = np.random.default_rng(2).normal(scale=0.3, size=(7, sm.dim))
    lp_b, g_b = sm.logp_and_grad_batch(X)
    np.testing.assert_allclose(sm.logp_batch(X), lp_b, rtol=1e-14)
    for i, xi in enumerate(X):
        lpi, gi = sm.logp_and_grad(xi)
        assert lpi == pytest.approx(lp_b[i], abs=1e-12)
        np.testing.assert_allclose(gi, g_b[i], atol=1e-12)
    assert sm.grad_evals == 1 + 7 + 7
    assert sm.logp_evals == 1 + 7


def test_names_shapes_and_constrain(models):
    sm = models["gp_pois_regr"]
    assert sm.names == ["rho", "alpha", "f_tilde", "f"]
    assert sm.shapes["f"] == (11,) and sm.shapes["rho"] == ()
    assert sm.dim == 13
    x = np.random.default_rng(3).normal(size=sm.dim)
    point = sm.constrain(x)
    assert point["rho"] == pytest.approx(np.exp(x[0])) and point["alpha"] > 0
    # the transformed parameter, computed independently
    xs = np.asarray(reference_data("gp_pois_regr")["x"], float)
    K = point["alpha"] ** 2 * np.exp(-((xs[:, None] - xs[None]) ** 2) / (2 * point["rho"] ** 2))
    K = K + 1e-10 * np.eye(11)
    L = np.linalg.cholesky(K)
    # numpy's LAPACK and Stan's Eigen factorise an ill-conditioned kernel (cond ~1e9 with the
    # 1e-10 jitter): their factors agree to about eps * cond(K) relative (Higham, ch. 10), not
    # to a fixed 1e-9. A wrong transform or index would be off by O(1).
    tol = np.finfo(float).eps * np.linalg.cond(K) * max(1.0, float(np.abs(point["f"]).max()))
    np.testing.assert_allclose(point["f"], L @ point["f_tilde"], rtol=0, atol=max(tol, 1e-9))
    flat = sm.flat_names()
    assert flat[:4] == ["rho", "alpha", "f_tilde[1]", "f_tilde[2]"] and flat[-1] == "f[11]"
    batch = sm.constrain_batch(np.stack([x, x + 0.1]))
    np.testing.assert_allclose(batch["f"][0], point["f"])
    assert batch["f"].shape == (2, 11)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(COMPARED),
    data=st.data(),
)
def test_constrain_unconstrain_round_trip(models, name, data):
    sm = models[name]
    x = data.draw(arrays(np.float64, sm.dim, elements=st.floats(-3, 3)))
    np.testing.assert_allclose(sm.unconstrain(sm.constrain(x)), x, atol=1e-9)
    flat = sm.param_constrain(x, include_tp=False)
    np.testing.assert_allclose(sm.param_unconstrain(flat), x, atol=1e-9)


# One program for several tests (one compile): constrained types, data layouts,
# reject(), an index error behind a data flag, and an int generated quantity.
SHAPES_CODE = """
data {
  int N;
  matrix[N, 2] M;
  array[2] vector[N] av;
  int<lower=0, upper=1> bad_index;
}
parameters {
  simplex[3] s;
  cholesky_factor_corr[3] L;
  matrix[2, 3] B;
  real x;
}
transformed parameters {
  real m12 = M[1, 2];
  real av21 = av[2][1];
}
model {
  array[2] real a = {1.0, 2.0};
  if (x > 1) reject("x must be at most 1; got ", x);
  if (bad_index) target += a[3];
  s ~ dirichlet(rep_vector(2, 3));
  L ~ lkj_corr_cholesky(2);
  to_vector(B) ~ normal(0, 1);
  x ~ normal(0, 1);
}
generated quantities {
  int k = poisson_rng(3);
}
"""
SHAPES_DATA = {
    "N": 3,
    "M": np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]),
    "av": np.array([[1.0, 2.0, 3.0], [7.0, 8.0, 9.0]]),
    "bad_index": 0,
}


@pytest.fixture(scope="module")
def shapes_model():
    return StanModel(SHAPES_CODE, SHAPES_DATA, progressbar=False)


def test_matrix_column_major_and_constrained_types(shapes_model):
    """Matrices, arrays of vectors, simplexes and Cholesky factors keep their shapes."""
    sm = shapes_model
    assert sm.dim == 2 + 3 + 6 + 1
    x = np.random.default_rng(4).normal(size=sm.dim)
    x[-1] = 0.3
    p = sm.constrain(x)
    assert p["m12"] == 2.0 and p["av21"] == 7.0  # data read in the right order
    assert p["s"].shape == (3,) and p["s"].sum() == pytest.approx(1.0)
    assert p["L"].shape == (3, 3) and np.allclose(np.triu(p["L"], 1), 0)
    np.testing.assert_allclose((p["L"] @ p["L"].T).diagonal(), 1.0)
    assert p["B"].shape == (2, 3)
    # B is column-major in Stan's flat order: B[1,1], B[2,1], B[1,2], ...
    flat = sm.param_constrain(x, include_tp=False)
    names = sm.flat_names(include_tp=False)
    assert names.index("B[2,1]") == names.index("B[1,1]") + 1
    assert flat[names.index("B[2,1]")] == p["B"][1, 0]
    np.testing.assert_allclose(sm.unconstrain(p), x, atol=1e-9)


def test_generated_quantities_seeded(models):
    sm = models["eight_schools"]
    X = np.random.default_rng(5).normal(size=(2000, sm.dim))
    a = sm.generated_quantities(X, seed=11)
    b = sm.generated_quantities(X, seed=11)
    c = sm.generated_quantities(X, seed=12)
    np.testing.assert_array_equal(a["y_rep"], b["y_rep"])
    assert not np.allclose(a["y_rep"], c["y_rep"])
    # y_rep ~ normal(theta, sigma): standardised residuals are N(0, 1)
    theta = sm.constrain_batch(X)["theta"]
    sigma = np.asarray(reference_data("eight_schools")["sigma"], float)
    z = (a["y_rep"] - theta) / sigma
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1) < 0.03


def test_reject_gives_minus_inf_and_other_errors_raise(shapes_model):
    sm = shapes_model
    x = np.zeros(sm.dim)
    x_bad = x.copy()
    x_bad[-1] = 2.0
    assert np.isfinite(sm.logp(x))
    assert sm.logp(x_bad) == -np.inf
    lp, g = sm.logp_and_grad(x_bad)
    assert lp == -np.inf and np.isnan(g).all()
    assert "x must be at most 1" in sm.last_reject
    lp_b = sm.logp_batch(np.stack([x, x_bad, x]))
    assert np.isfinite(lp_b[[0, 2]]).all() and lp_b[1] == -np.inf
    gq = sm.generated_quantities(np.zeros((500, sm.dim)), seed=3)
    assert gq["k"].dtype == np.int64 and abs(gq["k"].mean() - 3) < 0.3
    bad = sm.with_data({**SHAPES_DATA, "bad_index": 1})
    with pytest.raises(RuntimeError, match="index"):
        bad.logp(x)


def test_threads_give_the_same_answers(models):
    sm = models["gp_pois_regr"]
    X = np.random.default_rng(6).normal(size=(40, sm.dim))
    expected = sm.logp_and_grad_batch(X)
    results = [None] * 4

    def work(k):
        results[k] = [sm.log_density_gradient(x) for x in X]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for res in results:
        np.testing.assert_allclose([r[0] for r in res], expected[0], rtol=1e-14)
        np.testing.assert_allclose(np.stack([r[1] for r in res]), expected[1], rtol=1e-14)


def test_second_construction_is_cached_and_fast(tmp_path):
    code = PROGRAMS["arK"]
    data = reference_data("arK")
    StanModel(code, data, progressbar=False)  # built (or cached) by now
    sm = StanModel(code, data, progressbar=False)
    # build.cached says the library was loaded, not compiled (no wall-clock threshold: it
    # fails on a loaded machine and says nothing a cache miss would not)
    assert sm.build.cached
    # data as a JSON path gives the same density
    path = tmp_path / "arK.json"
    path.write_text(json.dumps(data))
    sm_json = StanModel(code, path, progressbar=False)
    x = np.random.default_rng(7).normal(size=sm.dim)
    assert sm_json.logp(x) == sm.logp(x)
    # a .stan file works as well as code
    stan_file = tmp_path / "arK.stan"
    stan_file.write_text(code)
    sm_file = StanModel(stan_file, data, progressbar=False)
    assert sm_file.logp(x) == pytest.approx(sm.logp(x), abs=1e-12)
