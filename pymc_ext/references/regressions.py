"""The reference linear regressions (kidiq, earnings, mesquite, nes) as PyMC models.

Twenty-four posteriordb posteriors are one model, ``y ~ normal(X beta, sigma)``,
with a design matrix made from the data by the Stan program's ``transformed
data`` block, a flat prior on ``beta`` and either a flat prior on
``sigma > 0`` or ``sigma ~ cauchy(0, 2.5)`` (the ``kidiq-*`` programs). Each is
written here as a :class:`RegressionSpec`: the response, the columns of the
design matrix (named, in the Stan program's order, so ``beta[j]`` is column
``j``) and the prior on ``sigma``. :func:`regression_model` builds the PyMC
model; :data:`REGRESSIONS` holds all of them by posterior name.

Several are badly conditioned on purpose (raw predictors on very different
scales: ``earnings-logearn_height``, ``mesquite-mesquite``, the ``nes`` ones).
Standardisation inside ``transformed data`` uses Stan's ``sd``, which divides
by ``N - 1``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pymc as pm
import pytensor.tensor as pt

__all__ = ["RegressionSpec", "REGRESSIONS", "regression_model"]

Column = Callable[["_Data"], np.ndarray]


class _Data:
    """The data as float arrays, with an error naming the posterior and what is missing."""

    def __init__(self, data: Mapping[str, Any], name: str, needed: tuple[str, ...]) -> None:
        missing = [k for k in needed if k not in data]
        if missing:
            raise ValueError(
                f"{name}: the data lack {missing}; give every variable of the Stan program's "
                f"data block ({sorted(needed)}), as in its data.json."
            )
        self.arrays = {k: np.asarray(data[k], dtype=float) for k in needed}
        lengths = {k: v.shape for k, v in self.arrays.items()}
        if len(set(lengths.values())) != 1 or len(next(iter(lengths.values()))) != 1:
            raise ValueError(
                f"{name}: every data vector must have the same length N; got {lengths}"
            )

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]


def _z(x: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Stan's ``(x - mean(x)) / (scale * sd(x))`` (``sd`` divides by N - 1)."""
    return (x - x.mean()) / (scale * x.std(ddof=1))


@dataclass(frozen=True)
class RegressionSpec:
    """One reference regression: ``response ~ normal(X beta, sigma)``.

    Attributes
    ----------
    response : str
        Name of the observed variable (what the Stan program models).
    y : callable
        Data -> the response vector.
    columns : tuple of (str, callable)
        The design matrix's columns in the Stan program's order: a label (the
        ``coef`` coordinate) and data -> column.
    sigma_prior : {"flat", "half_cauchy"}
        ``real<lower=0> sigma`` with no prior, or ``sigma ~ cauchy(0, 2.5)``.
    needs : tuple of str
        The data vectors the program reads.

    Examples
    --------
    >>> from pymc_ext.references.regressions import REGRESSIONS
    >>> spec = REGRESSIONS["kidiq-kidscore_momhsiq"]
    >>> [label for label, _ in spec.columns], spec.sigma_prior
    (['intercept', 'mom_hs', 'mom_iq'], 'half_cauchy')
    """

    response: str
    y: Column
    columns: tuple[tuple[str, Column], ...]
    sigma_prior: str
    needs: tuple[str, ...]


def _one(d: _Data) -> np.ndarray:
    return np.ones_like(next(iter(d.arrays.values())))


def _col(key: str) -> Column:
    return lambda d: d[key]


def _log(key: str) -> Column:
    return lambda d: np.log(d[key])


def _eq(key: str, level: int) -> Column:
    return lambda d: (d[key] == level).astype(float)


# -- kidiq: sigma ~ cauchy(0, 2.5) ---------------------------------------------------
def _kidiq(*columns: tuple[str, Column], needs: tuple[str, ...]) -> RegressionSpec:
    return RegressionSpec(
        "kid_score",
        _col("kid_score"),
        (("intercept", _one), *columns),
        "half_cauchy",
        ("kid_score", *needs),
    )


_HS, _IQ = ("mom_hs", _col("mom_hs")), ("mom_iq", _col("mom_iq"))
_KIDIQ = {
    "kidiq-kidscore_momhs": _kidiq(_HS, needs=("mom_hs",)),
    "kidiq-kidscore_momiq": _kidiq(_IQ, needs=("mom_iq",)),
    "kidiq-kidscore_momhsiq": _kidiq(_HS, _IQ, needs=("mom_hs", "mom_iq")),
    "kidiq-kidscore_interaction": _kidiq(
        _HS,
        _IQ,
        ("mom_hs:mom_iq", lambda d: d["mom_hs"] * d["mom_iq"]),
        needs=("mom_hs", "mom_iq"),
    ),
}


# -- kidiq_with_mom_work: flat priors -------------------------------------------------
def _flat(response: str, y: Column, *columns: tuple[str, Column], needs: tuple[str, ...]):
    return RegressionSpec(response, y, (("intercept", _one), *columns), "flat", needs)


def _c2(d: _Data) -> tuple[np.ndarray, np.ndarray]:
    return d["mom_hs"] - 0.5, d["mom_iq"] - 100.0


def _zz(d: _Data) -> tuple[np.ndarray, np.ndarray]:
    return _z(d["mom_hs"], 2.0), _z(d["mom_iq"], 2.0)


_KID = ("kid_score", _col("kid_score"))
_HS_IQ = ("kid_score", "mom_hs", "mom_iq")
_KIDIQ_WORK = {
    "kidiq_with_mom_work-kidscore_interaction_c2": _flat(
        *_KID,
        ("c2_mom_hs", lambda d: _c2(d)[0]),
        ("c2_mom_iq", lambda d: _c2(d)[1]),
        ("c2_mom_hs:c2_mom_iq", lambda d: np.prod(_c2(d), axis=0)),
        needs=_HS_IQ,
    ),
    "kidiq_with_mom_work-kidscore_interaction_z": _flat(
        *_KID,
        ("z_mom_hs", lambda d: _zz(d)[0]),
        ("z_mom_iq", lambda d: _zz(d)[1]),
        ("z_mom_hs:z_mom_iq", lambda d: np.prod(_zz(d), axis=0)),
        needs=_HS_IQ,
    ),
    "kidiq_with_mom_work-kidscore_mom_work": _flat(
        *_KID,
        ("work2", _eq("mom_work", 2)),
        ("work3", _eq("mom_work", 3)),
        ("work4", _eq("mom_work", 4)),
        needs=("kid_score", "mom_work"),
    ),
}

# -- earnings: flat priors, log (or log10) earnings -----------------------------------
_LOG_EARN = ("log_earn", _log("earn"))
_HEIGHT, _MALE = ("height", _col("height")), ("male", _col("male"))
_EHM = ("earn", "height", "male")
_EARNINGS = {
    "earnings-log10earn_height": _flat(
        "log10_earn", lambda d: np.log10(d["earn"]), _HEIGHT, needs=("earn", "height")
    ),
    "earnings-logearn_height": _flat(*_LOG_EARN, _HEIGHT, needs=("earn", "height")),
    "earnings-logearn_height_male": _flat(*_LOG_EARN, _HEIGHT, _MALE, needs=_EHM),
    "earnings-logearn_interaction": _flat(
        *_LOG_EARN, _HEIGHT, _MALE, ("height:male", lambda d: d["height"] * d["male"]), needs=_EHM
    ),
    "earnings-logearn_interaction_z": _flat(
        *_LOG_EARN,
        ("z_height", lambda d: _z(d["height"])),
        _MALE,
        ("z_height:male", lambda d: _z(d["height"]) * d["male"]),
        needs=_EHM,
    ),
    "earnings-logearn_logheight_male": _flat(
        *_LOG_EARN, ("log_height", _log("height")), _MALE, needs=_EHM
    ),
}

# -- mesquite: flat priors -------------------------------------------------------------
_M_ALL = ("weight", "diam1", "diam2", "canopy_height", "total_height", "density", "group")
_M_VA = ("weight", "diam1", "diam2", "canopy_height")
_LOG_W = ("log_weight", _log("weight"))
_GROUP = ("group", _col("group"))
_CANOPY_VOLUME = (
    "log_canopy_volume",
    lambda d: np.log(d["diam1"] * d["diam2"] * d["canopy_height"]),
)
_CANOPY_AREA = ("log_canopy_area", lambda d: np.log(d["diam1"] * d["diam2"]))
_MESQUITE = {
    "mesquite-mesquite": _flat(
        "weight", _col("weight"), *((k, _col(k)) for k in _M_ALL[1:]), needs=_M_ALL
    ),
    "mesquite-logmesquite": _flat(
        *_LOG_W, *((f"log_{k}", _log(k)) for k in _M_ALL[1:-1]), _GROUP, needs=_M_ALL
    ),
    "mesquite-logmesquite_logva": _flat(
        *_LOG_W, _CANOPY_VOLUME, _CANOPY_AREA, _GROUP, needs=(*_M_VA, "group")
    ),
    "mesquite-logmesquite_logvas": _flat(
        *_LOG_W,
        _CANOPY_VOLUME,
        _CANOPY_AREA,
        ("log_canopy_shape", lambda d: np.log(d["diam1"] / d["diam2"])),
        ("log_total_height", _log("total_height")),
        ("log_density", _log("density")),
        _GROUP,
        needs=_M_ALL,
    ),
    "mesquite-logmesquite_logvolume": _flat(*_LOG_W, _CANOPY_VOLUME, needs=_M_VA),
}

# -- nes: flat priors, nine coefficients (the same program for six survey years) ------
_NES = ("partyid7", "real_ideo", "race_adj", "educ1", "gender", "income", "age_discrete")
_NES_SPEC = _flat(
    "partyid7",
    _col("partyid7"),
    ("real_ideo", _col("real_ideo")),
    ("race_adj", _col("race_adj")),
    ("age30_44", _eq("age_discrete", 2)),
    ("age45_64", _eq("age_discrete", 3)),
    ("age65up", _eq("age_discrete", 4)),
    ("educ1", _col("educ1")),
    ("gender", _col("gender")),
    ("income", _col("income")),
    needs=_NES,
)

#: Every reference regression, by posteriordb name.
REGRESSIONS: dict[str, RegressionSpec] = {
    **_KIDIQ,
    **_KIDIQ_WORK,
    **_EARNINGS,
    **_MESQUITE,
    **{f"nes{year}-nes": _NES_SPEC for year in (1972, 1976, 1984, 1988, 1992, 1996)},
}


def regression_model(name: str, data: Mapping[str, Any]) -> pm.Model:
    """One of the reference regressions as a PyMC model.

    ``beta`` is a vector with a flat prior and the ``coef`` coordinate (the
    design matrix's column labels, in the Stan program's order, so
    ``beta[1]`` of the reference draws is ``beta[0]`` here); ``sigma`` is
    ``pm.HalfFlat`` or ``pm.HalfCauchy(2.5)`` as in the Stan program.

    Parameters
    ----------
    name : str
        Full posteriordb name, a key of :data:`REGRESSIONS`.
    data : dict
        The data as the Stan program reads it (its ``data.json``).

    Raises
    ------
    KeyError
        For a name that is not a reference regression.
    ValueError
        For data that lack a variable the program reads, or vectors of
        different lengths.

    Examples
    --------
    >>> from pymc_ext.references.posteriors import load_reference_data
    >>> from pymc_ext.references.regressions import regression_model
    >>> model = regression_model("nes1996-nes", load_reference_data("nes1996-nes"))
    >>> model.coords["coef"][:3], [v.name for v in model.free_RVs]
    (('intercept', 'real_ideo', 'race_adj'), ['beta', 'sigma'])
    """
    if name not in REGRESSIONS:
        raise KeyError(f"{name!r} is not a reference regression; known: {sorted(REGRESSIONS)}")
    spec = REGRESSIONS[name]
    d = _Data(data, name, spec.needs)
    X = np.column_stack([column(d) for _, column in spec.columns])
    y = spec.y(d)
    coords = {"coef": [label for label, _ in spec.columns], "obs": np.arange(len(y))}
    with pm.Model(coords=coords) as model:
        beta = pm.Flat("beta", dims="coef")
        if spec.sigma_prior == "half_cauchy":
            sigma = pm.HalfCauchy("sigma", 2.5)
        else:
            sigma = pm.HalfFlat("sigma")
        pm.Normal(spec.response, pt.dot(X, beta), sigma, observed=y, dims="obs")
    return model
