"""Amortized fitting on models users write every day: Deterministics that read the data,
discrete likelihoods, constant distribution parameters, scalar observations, and the
errors for inputs that cannot work.

Real PyMC models and small, briefly trained amortizers: the checks are exact relations
(a Deterministic against its formula at the returned draws), not accuracy, so they run
in seconds.
"""

from __future__ import annotations

import warnings

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import pytest
import torch

import pymc_ext
from pymc_ext.amortized import Amortizer, AmortizerMismatchError
from pymc_ext.amortized.diagnostics import AmortizedDataWarning
from pymc_ext.amortized.layout import DataShapeError

torch.set_num_threads(1)

SMALL_FLOW = {"transforms": 2, "hidden_features": (16, 16)}
X0 = np.linspace(-1, 1, 10)
Y0 = 1.0 + 2.0 * X0


def regression_with_deterministics() -> pm.Model:
    """A regression whose Deterministics read the covariate, the observations, or a constant."""
    with pm.Model() as model:
        x = pm.Data("x", X0)
        y_obs = pm.Data("y_obs", Y0)
        a = pm.Normal("a", 0.0, 2.0)
        b = pm.Normal("b", 0.0, 2.0)
        pm.Deterministic("xbar_pred", a + b * x.mean())               # the covariate
        pm.Deterministic("resid_mean", (y_obs - a - b * x).mean())    # the observations
        pm.Deterministic("mu_i", a + b * x)                           # one per observation
        pm.Deterministic("twice_a", 2 * a)                            # no data
        pm.Deterministic("frozen", pt.as_tensor(Y0).mean() - a)       # NumPy copy of the data
        pm.Normal("y", a + b * x, 1.0, observed=y_obs, shape=x.shape)
    return model


@pytest.fixture(scope="module")
def det_amortizer():
    model = regression_with_deterministics()
    amortizer = Amortizer(
        model, covariates=["x"], summary="deepset", frame="prior", flow_kwargs=SMALL_FLOW,
        covariate_sampler=lambda rng: {"x": rng.normal(size=int(rng.integers(8, 13)))},
    )
    amortizer.fit(256, epochs=2, batch_size=128, random_seed=0, progressbar=False)
    return model, amortizer


def _check_deterministics(posterior, x, y) -> None:
    a = posterior["a"].values[..., None]
    b = posterior["b"].values[..., None]
    np.testing.assert_allclose(posterior["xbar_pred"].values, (a + b * x.mean())[..., 0])
    np.testing.assert_allclose(posterior["resid_mean"].values, (y - a - b * x).mean(-1))
    np.testing.assert_allclose(posterior["mu_i"].values, a + b * x)
    np.testing.assert_allclose(posterior["twice_a"].values, 2 * a[..., 0])


def test_deterministics_use_each_datasets_data(det_amortizer):
    """sample (raw, psis, mh), sample_many and fit_many: Deterministics at the dataset's data.

    A Deterministic that reads the training data through a NumPy constant is left out with
    a warning (it cannot be moved to new data), and kept where the data are the training's.
    """
    model, amortizer = det_amortizer
    x1 = np.linspace(2.0, 4.0, 12)        # another N, another x, another y
    y1 = 5.0 - x1
    data = {"x": x1, "y": y1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AmortizedDataWarning)
        for correct in (None, "psis", "mh"):
            with pytest.warns(UserWarning, match=r"\['frozen'\].*pm.Data"):
                kw = {"chains": 2} if correct == "mh" else {}
                idata = amortizer.sample(data, draws=50, random_seed=1, correct=correct, **kw)
            _check_deterministics(idata.posterior, x1, y1)
            assert "frozen" not in idata.posterior
            assert idata.posterior["mu_i"].shape[-1] == 12
        raw = amortizer.sample(data, draws=20, random_seed=1, return_inferencedata=False)
        np.testing.assert_allclose(
            raw.posterior["xbar_pred"], raw.posterior["a"] + raw.posterior["b"] * x1.mean()
        )
        x2, y2 = x1[::-1].copy(), y1 + 1.0
        many = amortizer.sample_many([data, {"x": x2, "y": y2}], draws=30, random_seed=1)
        for i, (x, y) in enumerate([(x1, y1), (x2, y2)]):
            _check_deterministics(many.posterior.isel(dataset=i), x, y)
        with pytest.warns(UserWarning, match=r"\['mu_i'\].*shapes differ"):
            ragged = amortizer.sample_many(
                [data, {"x": X0, "y": Y0}], draws=30, random_seed=1
            )
        assert "mu_i" not in ragged.posterior and "xbar_pred" in ragged.posterior
        out = amortizer.fit_many(
            [data], draws=40, random_seed=1, progressbar=False, mcmc_k=np.inf, min_psis_ess=0
        )
        assert out.table["route"].tolist() == ["psis"]
        _check_deterministics(out.posteriors[0].posterior, x1, y1)
        # the training data: the NumPy copy is right there, so it is kept, without a warning
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            warnings.simplefilter("ignore", AmortizedDataWarning)
            own = amortizer.sample(draws=20, random_seed=1)
        np.testing.assert_allclose(
            own.posterior["frozen"].values, Y0.mean() - own.posterior["a"].values
        )
        _check_deterministics(own.posterior, X0, Y0)


@pytest.fixture(scope="module")
def count_amortizer():
    with pm.Model() as model:
        lam = pm.Exponential("lam", 0.5)
        pm.Poisson("y", lam, observed=np.array([1, 0, 3, 2, 2, 1]))
    amortizer = Amortizer(model, frame="prior", flow_kwargs=SMALL_FLOW)
    amortizer.fit(256, epochs=2, batch_size=128, random_seed=0, progressbar=False)
    return model, amortizer


def test_non_integer_data_for_a_discrete_likelihood_is_refused(count_amortizer):
    """Non-integer counts are an error naming the variable, never truncated; whole floats pass."""
    _, amortizer = count_amortizer
    y = np.array([1, 0, 3, 2, 2, 1])
    with pytest.raises(DataShapeError, match=r"'y'.*non-integer.*1\.5.*integers"):
        amortizer.sample({"y": y + 0.5}, draws=10, random_seed=1)
    with pytest.raises(DataShapeError, match=r"datasets\[1\]\['y'\].*non-integer"):
        amortizer.sample_many([{"y": y}, {"y": y + 0.9}], draws=10)
    with pytest.raises(DataShapeError, match="non-integer"):
        amortizer.target.joint_logp(np.zeros((1, 1)), {"y": y + 0.9})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AmortizedDataWarning)
        idata = amortizer.sample({"y": y.astype(float)}, draws=10, random_seed=1)
    assert idata.posterior["lam"].shape == (1, 10)


def _constant_first_parameter_models() -> dict[str, pm.Model]:
    with pm.Model(coords={"obs": range(6)}) as binomial:
        p = pm.Beta("p", 2, 2)
        pm.Binomial("y", n=20, p=p, observed=np.full(6, 8), dims="obs")
    with pm.Model() as student:
        mu = pm.Normal("mu")
        s = pm.HalfNormal("s")
        pm.StudentT("y", nu=4, mu=mu, sigma=s, observed=np.ones(6))
    with pm.Model() as normal:
        s = pm.HalfNormal("s")
        pm.Normal("y", 0.0, s, observed=np.ones(6), shape=6)
    return {"binomial": binomial, "student": student, "normal": normal}


@pytest.mark.parametrize("name", ["binomial", "student", "normal"])
def test_likelihood_with_a_constant_first_parameter(name):
    """pm.Binomial(n=20, p=...), pm.StudentT(nu=4, ...): prior predictive and fit work."""
    model = _constant_first_parameter_models()[name]
    params, data = pymc_ext.prior_predictive(model, 400, random_seed=1)
    assert params.shape[0] == 400 and data["y"].shape == (400, 6)
    if name == "binomial":  # each simulation's data follow its own p
        p = 1 / (1 + np.exp(-params[:, 0]))
        assert np.corrcoef(p, data["y"].mean(1))[0, 1] > 0.9
        assert data["y"].max() <= 20
    amortizer = Amortizer(model, frame="prior", flow_kwargs=SMALL_FLOW)
    amortizer.fit(200, epochs=1, batch_size=100, random_seed=0, progressbar=False)
    assert amortizer.fitted


def test_scalar_observed_value():
    """observed=0.3: sample (any correction, the model's own data), sample_many, log p."""
    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 1)
        pm.Normal("y", mu, 1, observed=0.3)
    amortizer = Amortizer(model, frame="prior", flow_kwargs=SMALL_FLOW)
    amortizer.fit(200, epochs=1, batch_size=100, random_seed=0, progressbar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AmortizedDataWarning)
        for data in ({"y": 1.0}, {"y": np.array(1.0)}, None):
            for correct in (None, "psis"):
                idata = amortizer.sample(data, draws=20, random_seed=1, correct=correct)
                assert idata.posterior["mu"].shape == (1, 20)
        idata = amortizer.sample({"y": 1.0}, draws=20, random_seed=1)
        many = amortizer.sample_many([{"y": 1.0}, {"y": -1.0}], draws=20, random_seed=1)
    assert many.posterior["mu"].shape == (2, 20)
    mu = idata.posterior["mu"].values[0]
    expected = -0.5 * mu**2 - 0.5 * (1.0 - mu) ** 2 - np.log(2 * np.pi)
    np.testing.assert_allclose(idata.sample_stats["log_p"].values[0], expected)


def test_model_builder_of_the_arrays_gets_a_clear_message(det_amortizer):
    """docs/many_datasets.md: model_builder takes ONE dict; build(y) is told so, clearly."""
    _, amortizer = det_amortizer

    def build(y):  # the signature the docs used to show
        with pm.Model() as model:
            y = np.asarray(y, dtype=float)
            pm.Normal("y", pm.Normal("mu"), 1, observed=y)
        return model

    with pytest.raises(TypeError, match=r"ONE argument, a dict.*\['y', 'x'\].*data\['y'\]"):
        amortizer.sample_many([{"x": X0, "y": Y0}], client=object(), model_builder=build)


def test_empty_and_zero_inputs_and_the_set_data_message(det_amortizer):
    """fit_many([]), draws=0 and pm.set_data with disagreeing rows: clear ValueErrors."""
    model, amortizer = det_amortizer
    with pytest.raises(ValueError, match="non-empty list of datasets"):
        amortizer.fit_many([], progressbar=False)
    with pytest.raises(ValueError, match="draws must be a positive"):
        amortizer.sample({"x": X0, "y": Y0}, draws=0)
    with pytest.raises(ValueError, match="draws must be a positive"):
        amortizer.sample_many([{"x": X0, "y": Y0}], draws=0)
    with pytest.raises(ValueError, match="draws and chains must be at least 1"):
        amortizer.fit_many([{"x": X0, "y": Y0}], draws=0, progressbar=False)
    try:
        pm.set_data({"x": np.linspace(-1, 1, 12)}, model=model)   # y_obs keeps its 10 rows
        with pytest.raises(
            AmortizerMismatchError,
            match=r"12 rows but 'y' has 10.*\{'y': \['N'\], 'x': \['N'\]\}.*"
                  r"\{'y': \[10\], 'x': \[12\]\}",
        ):
            amortizer.sample(draws=10)
    finally:
        pm.set_data({"x": X0}, model=model)


def test_fit_warns_that_the_simulations_leave_out_potentials():
    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 1)
        pm.Potential("pull", -0.5 * ((mu - 1) / 0.5) ** 2)
        pm.Normal("y", mu, 1, observed=np.zeros(3))
    amortizer = pymc_ext.Amortizer(model)
    with pytest.warns(AmortizedDataWarning, match="Potentials"):
        amortizer.fit(200, epochs=1, batch_size=100, random_seed=0, progressbar=False)
