"""The PyMC adapter: log density, gradient, batching, transforms, errors, prior predictive."""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import pymc_ext
from pymc_ext.models import reference_model
from pymc_ext.pymc_model import ModelSpecificationError, log_density, prior_predictive

# Four reference posteriors with different transforms: log (half-Cauchy,
# half-normal, HalfFlat), ordered, logodds (Beta), Cholesky inside the graph.
REFERENCE_MODELS = [
    "eight_schools-eight_schools_noncentered",
    "arK-arK",
    "gp_pois_regr-gp_pois_regr",
    "low_dim_gauss_mix-low_dim_gauss_mix",
    "earnings-logearn_interaction",
]


@pytest.fixture(scope="module", params=REFERENCE_MODELS)
def ref(request):
    model = reference_model(request.param)
    return model, log_density(model)


def _factorised_condition(model, point):
    """Largest 2-norm condition number of the matrices the logp graph Cholesky-factorises.

    1.0 for a model without a factorisation.
    """
    from pytensor.graph.traversal import io_toposort

    nodes = [
        node
        for node in io_toposort(model.value_vars, [model.logp()])
        if type(getattr(node.op, "core_op", node.op)).__name__ == "Cholesky"
    ]
    if not nodes:
        return 1.0
    f = model.compile_fn(
        [node.inputs[0] for node in nodes],
        inputs=model.value_vars,
        on_unused_input="ignore",
        point_fn=False,
    )
    mats = f(*[point[v.name] for v in model.value_vars])
    return max(float(np.linalg.cond(m)) for m in mats)


def _agreement_tolerance(model, point, values):
    """Absolute tolerance for two compiled graphs of the same floating-point quantity.

    Two graphs of one model (ours, PyMC's ``compile_dlogp``; batched and looped)
    differ in the order of operations. Backward error analysis bounds the
    relative difference of a result that goes through a Cholesky factorisation
    by about ``eps * cond(K)`` (Higham, *Accuracy and Stability*, ch. 10),
    which for a GP kernel with a 1e-10 jitter is ~1e9 * 2e-16, i.e. ~1e-7,
    and the size of the difference scales with the largest value. Without a
    factorisation ``1e-8`` relative is ample (sums of a few thousand terms
    lose far less). A wrong Jacobian term or a missing constant is O(1) or
    larger, many orders above either tolerance.
    """
    eps = np.finfo(float).eps
    kappa = _factorised_condition(model, point)
    relative = max(1e-8, eps * kappa)
    return relative * max(1.0, float(np.max(np.abs(values))))


def _random_points(density, n=5, seed=0):
    rng = np.random.default_rng(seed)
    return density.initial_point() + rng.normal(scale=0.5, size=(n, density.dim))


def test_logp_and_grad_match_pymc(ref):
    model, density = ref
    f_logp, f_dlogp = model.compile_logp(), model.compile_dlogp()
    for x in _random_points(density):
        point = density.point_from_x(x)
        lp, grad = density.logp_and_grad(x)
        lp_tol = _agreement_tolerance(model, point, lp)
        grad_tol = _agreement_tolerance(model, point, grad)
        np.testing.assert_allclose(lp, f_logp(point), rtol=0, atol=lp_tol)
        np.testing.assert_allclose(grad, f_dlogp(point), rtol=0, atol=grad_tol)
        assert density.logp(x) == pytest.approx(lp, rel=1e-12, abs=1e-10)


def test_batch_equals_loop(ref):
    model, density = ref
    X = _random_points(density, n=7, seed=1)
    lp_loop = np.array([density.logp(x) for x in X])
    grad_loop = np.array([density.logp_and_grad(x)[1] for x in X])
    lp_only = density.logp_batch(X)
    lp_b, grad_b = density.logp_and_grad_batch(X)
    for i, x in enumerate(X):
        point = density.point_from_x(x)
        lp_tol = _agreement_tolerance(model, point, lp_loop[i])
        grad_tol = _agreement_tolerance(model, point, grad_loop[i])
        np.testing.assert_allclose(lp_only[i], lp_loop[i], rtol=0, atol=lp_tol)
        np.testing.assert_allclose(lp_b[i], lp_loop[i], rtol=0, atol=lp_tol)
        np.testing.assert_allclose(grad_b[i], grad_loop[i], rtol=0, atol=grad_tol)


def test_one_row_outside_the_support_does_not_spoil_the_batch():
    """A batched Cholesky that fails for one row gives -inf for the whole batch in PyTensor;
    the density evaluates the rows apart where that happens (first seen on gp_pois_regr)."""
    import pytensor.tensor as pt

    with pm.Model() as model:
        rho = pm.Normal("rho", 0, 1)
        cov = pt.stack([pt.stack([1.0, rho]), pt.stack([rho, 1.0])])
        pm.MvNormal("y", mu=np.zeros(2), cov=cov, observed=np.array([[0.3, -0.2], [1.0, 0.5]]))
    density = log_density(model)
    X = np.array([[0.5], [2.0], [-0.3], [0.0]])  # rho = 2: not positive definite
    loop = np.array([density.logp(x) for x in X])
    assert np.isfinite(loop).tolist() == [True, False, True, True]
    np.testing.assert_allclose(density.logp_batch(X), loop)
    lp, grad = density.logp_and_grad_batch(X)
    np.testing.assert_allclose(lp, loop)
    np.testing.assert_allclose(grad[[0, 2, 3]], [density.logp_and_grad(x)[1] for x in X[[0, 2, 3]]])


def test_constrain_round_trip_and_shapes(ref):
    model, density = ref
    X = _random_points(density, n=4, seed=2)
    expected = [rv.name for rv in model.free_RVs] + [d.name for d in model.deterministics]
    assert density.names == expected
    batch = density.constrain_batch(X)
    for i, x in enumerate(X):
        point = density.constrain(x)
        assert list(point) == expected
        for rv in model.free_RVs + model.deterministics:
            shape = tuple(model.initial_point().get(rv.name, point[rv.name]).shape)
            assert point[rv.name].shape == density.shapes[rv.name]
            if rv in model.free_RVs and model.rvs_to_transforms.get(rv) is None:
                assert point[rv.name].shape == shape
            np.testing.assert_allclose(batch[rv.name][i], point[rv.name], atol=1e-12)
        np.testing.assert_allclose(density.unconstrain(point), x, atol=1e-8)
    np.testing.assert_allclose(density.unconstrain_batch(batch), X, atol=1e-8)


def test_compiled_once_and_cached():
    model = reference_model("sblrc-blr")
    density = log_density(model)
    # the same object back means nothing was compiled again (no wall-clock check: a
    # timing threshold fails on a loaded machine)
    again = log_density(model)
    assert again is density
    # adding a variable invalidates the cache
    with model:
        pm.Normal("extra")
    assert log_density(model) is not density
    assert log_density(model).dim == density.dim + 1


def test_a_potential_added_after_a_first_call_is_in_the_density():
    # a new user's sequence: fit, add a Potential to the same model, fit again
    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 1)
        pm.Normal("y", mu, 1, observed=[0.1, -0.2, 0.05])
    before = log_density(model)
    with model:
        pm.Potential("pull", -0.5 * ((mu - 5) / 0.1) ** 2)
    after = log_density(model)
    assert after is not before
    # the Potential moves the mode to about 4.8
    assert after.logp(np.array([4.8])) > after.logp(np.array([0.0])) + 1000


def test_gradient_counter():
    density = log_density(reference_model("sblrc-blr"))
    density.reset_counters()
    X = _random_points(density, n=6)
    density.logp_and_grad(X[0])
    density.logp_and_grad_batch(X)
    density.logp_batch(X)
    assert density.grad_evals == 7
    assert density.logp_evals == 6


# -- transforms: a property test on the round trip ---------------------------------
@pytest.fixture(scope="module")
def transforms_density():
    with pm.Model() as model:
        pm.HalfNormal("positive", 1.0, shape=2)  # log
        pm.Uniform("interval", -1.0, 3.0, shape=2)  # interval
        pm.Beta("unit", 2.0, 2.0)  # logodds
        pm.Normal(
            "ordered",
            0.0,
            3.0,
            shape=3,
            transform=pm.distributions.transforms.ordered,
            initval=np.array([-1.0, 0.0, 1.0]),
        )
        pm.Dirichlet("simplex", np.ones(4))  # simplex
        pm.LKJCorr("corr", n=3, eta=2.0)  # Cholesky factor of a correlation matrix
    return log_density(model)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_transform_round_trip(transforms_density, data):
    density = transforms_density
    x = data.draw(
        arrays(np.float64, density.dim, elements=st.floats(-3, 3, allow_nan=False, width=64))
    )
    point = density.constrain(x)
    assert np.all(point["positive"] > 0)
    assert np.all((point["interval"] > -1) & (point["interval"] < 3))
    assert 0 < point["unit"] < 1
    assert np.all(np.diff(point["ordered"]) > 0)
    assert point["simplex"].sum() == pytest.approx(1.0) and np.all(point["simplex"] > 0)
    chol = point["corr"]
    assert chol.shape == (3, 3)
    np.testing.assert_allclose(np.triu(chol, 1), 0.0)
    corr = chol @ chol.T
    np.testing.assert_allclose(np.diag(corr), 1.0, atol=1e-10)
    assert np.all(np.linalg.eigvalsh(corr) > 0)
    np.testing.assert_allclose(density.unconstrain(point), x, atol=1e-7)


# -- bad input ------------------------------------------------------------------
def test_discrete_free_variable_is_named():
    with pm.Model() as model:
        pm.Poisson("count", 3.0)
        pm.Normal("z")
    with pytest.raises(
        ModelSpecificationError, match=r"discrete free variables: count.*marginalise"
    ):
        log_density(model)


def test_no_free_variables():
    with pm.Model() as model:
        pm.Normal("y", 0.0, 1.0, observed=[1.0, 2.0])
    with pytest.raises(ModelSpecificationError, match="no free random variables"):
        log_density(model)


def test_non_finite_initial_point_names_variable():
    with pm.Model() as model:
        sigma = pm.HalfNormal("sigma")
        pm.Normal("mu", 0.0, 1.0, initval=np.inf)
        pm.Exponential("y", sigma, observed=[1.0, 2.0])
    with pytest.raises(ModelSpecificationError, match=r"not finite.*mu"):
        log_density(model)


def test_observed_outside_support_names_likelihood():
    with pm.Model() as model:
        lam = pm.HalfNormal("lam")
        pm.Exponential("waiting", lam, observed=[1.0, -2.0])
    with pytest.raises(ModelSpecificationError, match=r"not finite.*waiting"):
        log_density(model)


def test_no_model_in_context():
    with pytest.raises(ModelSpecificationError, match="No PyMC model"):
        log_density()


# -- prior predictive -------------------------------------------------------------
def test_prior_predictive_moments():
    # mu ~ N(1, 2), s ~ HalfNormal(1), y_i ~ N(mu, 3): y has mean 1, sd sqrt(13),
    # Cov(y_1, y_2) = 4; log(s) has mean -0.635 (E log|Z| = -(gamma + log 2)/2).
    with pm.Model() as model:
        mu = pm.Normal("mu", 1.0, 2.0)
        s = pm.HalfNormal("s", 1.0)
        pm.Normal("y", mu, 3.0, observed=np.zeros(3))
        pm.Normal("z", mu, s, observed=np.zeros(2))
    n = 40_000
    params, data = prior_predictive(model, n=n, random_seed=3)
    assert params.shape == (n, 2)
    assert data["y"].shape == (n, 3) and data["z"].shape == (n, 2)
    se = np.sqrt(13 / n)
    np.testing.assert_allclose(data["y"].mean(0), 1.0, atol=5 * se)
    np.testing.assert_allclose(data["y"].std(0), np.sqrt(13), rtol=0.02)
    assert np.corrcoef(data["y"][:, 0], data["y"][:, 1])[0, 1] == pytest.approx(4 / 13, abs=0.02)
    np.testing.assert_allclose(params[:, 0].mean(), 1.0, atol=5 * 2 / np.sqrt(n))
    log_s_mean = -(np.euler_gamma + np.log(2)) / 2
    np.testing.assert_allclose(params[:, 1].mean(), log_s_mean, atol=0.03)
    # the simulated data really come from the simulated parameters
    z_centered = data["z"] - params[:, [0]]
    np.testing.assert_allclose(np.std(z_centered / np.exp(params[:, [1]])), 1.0, rtol=0.02)


def test_prior_predictive_reproducible_and_selectable():
    model = reference_model("eight_schools")
    a = prior_predictive(model, n=50, random_seed=7)
    b = prior_predictive(model, n=50, random_seed=7)
    c = prior_predictive(model, n=50, random_seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1]["y"], b[1]["y"])
    assert not np.array_equal(a[0], c[0])
    with pytest.raises(ModelSpecificationError, match="not observed variables"):
        prior_predictive(model, n=5, observed=["mu"])


def test_public_names():
    assert pymc_ext.log_density is log_density
    assert pymc_ext.prior_predictive is prior_predictive
