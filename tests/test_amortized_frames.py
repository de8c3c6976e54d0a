"""Per-dataset Laplace frames of the Amortizer (``frame="auto" | "laplace" | "prior"``)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pymc as pm
import pytest

import pymc_ext
from pymc_ext.amortized import frames as frames_module
from pymc_ext.amortized.diagnostics import AmortizedDataWarning
from pymc_ext.amortized.frames import LaplaceFrames, check_frames
from pymc_ext.amortized.sampling import draw, prepare
from pymc_ext.amortized.targets import make_target


def normal_mean(y: np.ndarray, prior_sd: float = 1.0) -> pm.Model:
    with pm.Model() as model:
        mu = pm.Normal("mu", 0.0, prior_sd)
        pm.Normal("y", mu, 1.0, observed=y)
    return model


def exact_normal_mean(y: np.ndarray, prior_sd: float = 1.0) -> tuple[float, float]:
    precision = len(y) + 1.0 / prior_sd**2
    return float(y.sum() / precision), 1.0 / math.sqrt(precision)


def test_laplace_frames_are_the_exact_posterior_of_a_conjugate_model():
    frames = LaplaceFrames(make_target(normal_mean(np.zeros(4), 2.0)), np.zeros(1),
                           np.full(1, 2.0))
    datasets = [{"y": np.full(4, 2.0)}, {"y": np.array([30.0, 31.0, 29.0, 30.5])},
                {"y": np.zeros(4)}]
    loc, chol = frames(datasets)
    for d, m, c in zip(datasets, loc, chol, strict=True):
        mean, sd = exact_normal_mean(d["y"], 2.0)
        assert m[0] == pytest.approx(mean, abs=1e-6)  # 30 prior sd out too
        assert c[0, 0] == pytest.approx(sd, rel=1e-4)


def test_check_frames_wants_standard_normal_coordinates():
    rng = np.random.default_rng(0)
    assert check_frames(rng.normal(size=(2000, 3)))[0]
    ok, reason = check_frames(rng.normal(size=(2000, 3)) * np.array([1.0, 1.0, 4.0]))
    assert not ok and "coordinate 2" in reason
    # the right spread, but 10% of the datasets' frames failed (far out): not standard normal
    u = rng.normal(size=(2000, 3))
    u[:200, 2] = 50.0
    ok, reason = check_frames(u)
    assert not ok and "10.0% beyond 8" in reason


def test_auto_takes_laplace_frames_for_a_near_gaussian_posterior_not_for_a_funnel(monkeypatch):
    with pm.Model() as regression:
        mu = pm.Normal("mu", 0.0, 2.0)
        sigma = pm.HalfNormal("sigma", 1.0)
        pm.Normal("y", mu, sigma, observed=np.zeros(20))
    with pm.Model() as centred:  # a centred hierarchy: no Gaussian shape around any mode
        mu = pm.Normal("mu", 0.0, 5.0)
        tau = pm.HalfNormal("tau", 5.0)
        theta = pm.Normal("theta", mu, tau, shape=6)
        pm.Normal("y", theta, 10.0, observed=np.zeros(6))
    a = pymc_ext.Amortizer(regression).fit(1000, epochs=1, random_seed=0, progressbar=False)
    assert a.history.frame.startswith("laplace: ") and a.flow.framed and a.frames is not None
    b = pymc_ext.Amortizer(centred).fit(1000, epochs=1, random_seed=0, progressbar=False)
    assert b.history.frame.startswith("prior: ") and "outside" in b.history.frame
    assert not b.flow.framed and b.frames is None
    c = pymc_ext.Amortizer(centred, frame="laplace").fit(1000, epochs=1, random_seed=0,
                                                        progressbar=False)
    assert c.history.frame.startswith("laplace: ") and c.flow.framed  # asked for: kept
    with pytest.raises(ValueError, match="frame must be one of"):
        pymc_ext.Amortizer(regression, frame="map")
    # frames too slow to fit for every simulation (here: any time at all): the prior's
    monkeypatch.setattr(frames_module, "FRAME_SECONDS_BUDGET", 0.0)
    d = pymc_ext.Amortizer(regression).fit(1000, epochs=1, random_seed=0, progressbar=False)
    assert d.history.frame.startswith("prior: the Laplace fits of all") and not d.flow.framed


def test_the_frame_makes_raw_draws_exact_far_from_the_training_data(tmp_path):
    """Briefly trained: in one global frame the raw draws are 1.5 sd off at data the prior
    rarely makes; in Laplace frames 0.24 (the network still bends u a little at contexts it
    has not seen). Fails if the frame is dropped."""
    y = np.array([3.5, 4.0, 4.5])
    exact_mean, exact_sd = exact_normal_mean(y)
    errors = {}
    for frame in ("laplace", "prior"):
        a = pymc_ext.Amortizer(normal_mean(np.zeros(3)), frame=frame)
        a.fit(1000, epochs=10, random_seed=0, progressbar=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AmortizedDataWarning)
            raw = a.sample({"y": y}, draws=4000, random_seed=1)
        x = raw.posterior["mu"].values.ravel()
        errors[frame] = max(abs(x.mean() - exact_mean) / exact_sd, abs(x.std() / exact_sd - 1))
        if frame == "laplace":
            framed = a
    assert errors["laplace"] < 0.4 < 1.0 < errors["prior"], errors
    # log q of the draws is the flow's density at them, the frame's Jacobian included
    _, ctx = prepare(framed, [{"y": y}])
    theta, log_q = draw(framed, ctx, 50, seed=2)
    np.testing.assert_allclose(framed.log_q(theta[0], {"y": y}), log_q[0], atol=1e-4)
    # saved and loaded, or attached to a new model: the same frames, the same density
    path = tmp_path / "framed.pt"
    framed.save(path)
    for again in (pymc_ext.Amortizer.load(path, normal_mean(np.zeros(3))),
                  framed.attach(normal_mean(y))):
        assert again.flow.framed and again.frames is not None
        np.testing.assert_allclose(again.log_q(theta[0], {"y": y}), log_q[0], atol=1e-4)
