"""The ArviZ conversion helper: names, dims, coords, Deterministics, stats, observed data."""

from __future__ import annotations

import arviz as az
import matplotlib
import numpy as np
import pytest

from pymc_ext.arviz_io import to_datatree
from pymc_ext.density import FunctionLogDensity
from pymc_ext.models import eight_schools
from pymc_ext.pymc_model import log_density

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def schools():
    density = log_density(eight_schools())
    rng = np.random.default_rng(0)
    draws = density.initial_point() + rng.normal(size=(2, 200, density.dim))
    stats = {"lp": density.logp_batch(draws.reshape(-1, density.dim)).reshape(2, 200)}
    dt = to_datatree(
        density, draws, sample_stats=stats, sample_stats_attrs={"warmstart_grad_evals": 12}
    )
    return density, draws, dt


def test_posterior_has_model_names_dims_coords(schools):
    density, draws, dt = schools
    post = dt["posterior"]
    assert set(post.data_vars) == {"mu", "tau", "theta_trans", "theta"}
    assert post["theta"].dims == ("chain", "draw", "school")
    assert post["theta_trans"].dims == ("chain", "draw", "school")
    np.testing.assert_array_equal(post["school"].values, np.arange(8))
    # values are the constrained ones, Deterministic included
    point = density.constrain(draws[1, 17])
    assert float(post["tau"].values[1, 17]) == pytest.approx(float(point["tau"]))
    np.testing.assert_allclose(post["theta"].values[1, 17], point["theta"])
    assert np.all(post["tau"].values > 0)


def test_sample_stats_and_observed(schools):
    _, _, dt = schools
    assert dt["sample_stats"]["lp"].dims == ("chain", "draw")
    assert dt["sample_stats"].attrs["warmstart_grad_evals"] == 12
    np.testing.assert_array_equal(
        dt["observed_data"]["y"].values, [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
    )


def test_arviz_functions_work_unchanged(schools):
    _, _, dt = schools
    summary = az.summary(dt)
    assert "theta[0]" in summary.index or "theta[0]" in str(summary.index.tolist())
    ess = az.ess(dt)
    assert (
        float(ess["posterior"]["mu"]) > 0 if "posterior" in getattr(ess, "children", {}) else True
    )
    az.plot_trace(dt, var_names=["mu", "tau"])


def test_shape_errors_are_clear():
    d = FunctionLogDensity(2, lambda x: -0.5 * x @ x)
    with pytest.raises(ValueError, match=r"\(chains, draws, 2\)"):
        to_datatree(d, np.zeros((3, 4, 5)))
    with pytest.raises(ValueError, match="first axis must be"):
        to_datatree(d, np.zeros((3, 4, 2)), sample_stats={"lp": np.zeros((2, 4))})
