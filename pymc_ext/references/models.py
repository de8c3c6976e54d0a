"""Built-in example models: the reference posteriors written as PyMC models.

:func:`reference_model` is the one entry point. The models live here and, by
family, in :mod:`~pymc_ext.references.regressions` (the 24 linear
regressions), :mod:`~pymc_ext.references.hmm` (the hidden Markov model) and
:mod:`~pymc_ext.references.ode` (Lotka-Volterra). Each builder takes the
data dict exactly as the posteriordb Stan program reads it (``data.json``)
and returns a ``pm.Model`` whose variable names
match the reference draws (``beta[1]`` is element 0 of ``beta``).
:func:`eight_schools` carries its data, so the demo needs no files.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from pymc_ext.references.hmm import hmm_drive_model
from pymc_ext.references.ode import lotka_volterra_model
from pymc_ext.references.regressions import REGRESSIONS, regression_model

__all__ = [
    "eight_schools",
    "reference_model",
    "MODEL_BUILDERS",
    "PYMC_REFERENCE_NAMES",
    "EIGHT_SCHOOLS_DATA",
]

EIGHT_SCHOOLS_DATA = {
    "J": 8,
    "y": [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0],
    "sigma": [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0],
}


def eight_schools(data: dict[str, Any] | None = None) -> pm.Model:
    """Eight schools, non-centred: the built-in example model.

    Parameters
    ----------
    data : dict, optional
        ``{"J", "y", "sigma"}``; Rubin's classic data by default.

    Examples
    --------
    >>> from pymc_ext.references.models import eight_schools
    >>> model = eight_schools()
    >>> sorted(model.named_vars)
    ['mu', 'tau', 'theta', 'theta_trans', 'y']
    """
    data = data or EIGHT_SCHOOLS_DATA
    J = int(data["J"])
    with pm.Model(coords={"school": np.arange(J)}) as model:
        theta_trans = pm.Normal("theta_trans", 0.0, 1.0, dims="school")
        mu = pm.Normal("mu", 0.0, 5.0)
        tau = pm.HalfCauchy("tau", 5.0)
        theta = pm.Deterministic("theta", mu + tau * theta_trans, dims="school")
        pm.Normal("y", theta, np.asarray(data["sigma"], float), observed=data["y"], dims="school")
    return model


def _ark(data: dict[str, Any]) -> pm.Model:
    K, T = int(data["K"]), int(data["T"])
    y = np.asarray(data["y"], float)
    lags = np.column_stack([y[K - k - 1 : T - k - 1] for k in range(K)])  # y[t-k-1], t >= K
    with pm.Model(coords={"lag": np.arange(1, K + 1)}) as model:
        alpha = pm.Normal("alpha", 0.0, 10.0)
        beta = pm.Normal("beta", 0.0, 10.0, dims="lag")
        sigma = pm.HalfCauchy("sigma", 2.5)
        pm.Normal("y", alpha + pt.dot(lags, beta), sigma, observed=y[K:])
    return model


def _gp_pois_regr(data: dict[str, Any]) -> pm.Model:
    x = np.asarray(data["x"], float)
    N = int(data["N"])
    sq = (x[:, None] - x[None, :]) ** 2
    with pm.Model(coords={"obs": np.arange(N)}) as model:
        rho = pm.Gamma("rho", alpha=25.0, beta=4.0)
        alpha = pm.HalfNormal("alpha", 2.0)
        f_tilde = pm.Normal("f_tilde", 0.0, 1.0, dims="obs")
        K = alpha**2 * pt.exp(-sq / (2.0 * rho**2)) + 1e-10 * np.eye(N)
        L = pt.linalg.cholesky(K)
        f = pm.Deterministic("f", pt.dot(L, f_tilde), dims="obs")
        pm.Poisson("k", pt.exp(f), observed=np.asarray(data["k"], int), dims="obs")
    return model


def _low_dim_gauss_mix(data: dict[str, Any]) -> pm.Model:
    y = np.asarray(data["y"], float)
    with pm.Model(coords={"component": [1, 2]}) as model:
        mu = pm.Normal(
            "mu",
            0.0,
            2.0,
            dims="component",
            transform=pm.distributions.transforms.ordered,
            initval=np.array([-1.0, 1.0]),
        )
        sigma = pm.HalfNormal("sigma", 2.0, dims="component")
        theta = pm.Beta("theta", 5.0, 5.0)
        w = pt.stack([theta, 1.0 - theta])
        pm.NormalMixture("y", w=w, mu=mu, sigma=sigma, observed=y)
    return model


def _blr(data: dict[str, Any]) -> pm.Model:
    X = np.asarray(data["X"], float)
    with pm.Model(coords={"coef": np.arange(1, int(data["D"]) + 1)}) as model:
        beta = pm.Normal("beta", 0.0, 10.0, dims="coef")
        sigma = pm.HalfNormal("sigma", 10.0)
        pm.Normal("y", pt.dot(X, beta), sigma, observed=np.asarray(data["y"], float))
    return model


_REGRESSION_BUILDERS = {name: partial(regression_model, name) for name in REGRESSIONS}

MODEL_BUILDERS: dict[str, Callable[[dict[str, Any]], pm.Model]] = {
    # the first eight reference posteriors, in the order of REFERENCE_NAMES
    "eight_schools-eight_schools_noncentered": eight_schools,
    "kidiq-kidscore_momiq": _REGRESSION_BUILDERS["kidiq-kidscore_momiq"],
    "earnings-logearn_interaction": _REGRESSION_BUILDERS["earnings-logearn_interaction"],
    "arK-arK": _ark,
    "gp_pois_regr-gp_pois_regr": _gp_pois_regr,
    "low_dim_gauss_mix-low_dim_gauss_mix": _low_dim_gauss_mix,
    "mesquite-logmesquite_logvas": _REGRESSION_BUILDERS["mesquite-logmesquite_logvas"],
    "sblrc-blr": _blr,
    # the wider set
    **_REGRESSION_BUILDERS,
    "bball_drive_event_1-hmm_drive_1": hmm_drive_model,
    "hudson_lynx_hare-lotka_volterra": lotka_volterra_model,
}

#: The reference posteriors that have a PyMC version (the keys of :data:`MODEL_BUILDERS`).
PYMC_REFERENCE_NAMES: tuple[str, ...] = tuple(MODEL_BUILDERS)


def reference_model(name: str, data: dict[str, Any] | None = None) -> pm.Model:
    """A reference posterior as a PyMC model, with names matching its reference draws.

    Parameters
    ----------
    name : str
        Full posteriordb name (``"arK-arK"``) or its short data name (``"arK"``).
    data : dict, optional
        The data; by default the reference's own ``data.json``.

    Examples
    --------
    >>> from pymc_ext.references.models import reference_model
    >>> model = reference_model("sblrc-blr")
    >>> [v.name for v in model.free_RVs]
    ['beta', 'sigma']
    """
    from pymc_ext.references.posteriors import canonical_name, load_reference_data

    name = canonical_name(name)
    if name not in MODEL_BUILDERS:
        raise KeyError(
            f"The reference posterior {name!r} has no PyMC version (its Stan program is "
            f"{name}/model.stan in the reference folder). These have one: "
            f"{', '.join(PYMC_REFERENCE_NAMES)}"
        )
    return MODEL_BUILDERS[name](data if data is not None else load_reference_data(name))
