"""What :func:`pymc_ext.amortized.many.fit_many` takes and gives: settings, routes, result rows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

__all__ = ["FitManyResult", "FitManySettings", "Route", "table_row"]


class Route(StrEnum):
    """The path a dataset took in :func:`fit_many`."""

    PSIS = "psis"
    MH = "mh"
    NUTS = "nuts"
    FAILED = "failed"


@dataclass(frozen=True)
class FitManySettings:
    """Thresholds and sizes of :func:`fit_many` (checked once).

    Attributes
    ----------
    draws : int
        Draws per dataset (per chain for MH and NUTS).
    chains : int
        Chains for MH and NUTS.
    mcmc_k : float
        Pareto k from which MCMC is used (PSIS below it).
    min_psis_ess : float
        Importance ESS (of the amortized draws) under which MCMC is used even
        at a small k: few effective draws make the resampled moments noisy.
    max_psis_factor : int
        A dataset whose k passes but whose ESS is short is drawn again with
        up to this many times ``draws`` before it goes to MCMC.
    min_acceptance : float
        MH acceptance rate below which NUTS takes over.
    max_rhat, min_ess : float
        MH chains with a larger R-hat or a smaller bulk ESS (any variable)
        are replaced by NUTS.
    mh_pilot : int
        MH is tried first on this many of the MCMC datasets (the first by
        number). Where it passes on fewer than ``min_mh_pass`` of them, the
        other MCMC datasets go straight to NUTS: on a posterior the amortized
        proposal cannot cover (a funnel), each MH attempt costs seconds and
        ends in NUTS anyway. 0 tries MH on every dataset.
    min_mh_pass : float
        The share of the pilot on which MH must pass for it to be tried on
        the rest.
    nuts_kwargs : dict
        Passed to ``pm.sample`` on the NUTS route (PyMC models).
    """

    draws: int = 1000
    chains: int = 4
    mcmc_k: float = 0.7
    min_psis_ess: float = 400.0
    max_psis_factor: int = 16
    min_acceptance: float = 0.1
    max_rhat: float = 1.01
    min_ess: float = 400.0
    mh_pilot: int = 8
    min_mh_pass: float = 0.5
    nuts_kwargs: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.draws < 1 or self.chains < 1:
            raise ValueError("draws and chains must be at least 1.")
        if not self.mcmc_k >= 0:
            raise ValueError(f"mcmc_k must be at least 0, got {self.mcmc_k}.")
        if self.max_psis_factor < 1:
            raise ValueError(f"max_psis_factor must be at least 1, got {self.max_psis_factor}.")
        if self.mh_pilot < 0 or not 0 <= self.min_mh_pass <= 1:
            raise ValueError("mh_pilot must be at least 0 and min_mh_pass in [0, 1], got "
                             f"{self.mh_pilot} and {self.min_mh_pass}.")
        if not 0 <= self.min_acceptance < 1:
            raise ValueError(f"min_acceptance must be in [0, 1), got {self.min_acceptance}.")


@dataclass
class FitManyResult:
    """What :func:`fit_many` returns.

    Attributes
    ----------
    posteriors : list of xarray.DataTree
        One per dataset, in order, with the model's names, dims and coords
        (``None`` for a failed dataset).
    table : pandas.DataFrame
        One row per dataset: ``route``, ``reason``, ``pareto_k``,
        ``acceptance`` (MH), ``rhat`` and ``ess`` (MCMC: the worst variable;
        PSIS: the importance ESS), ``divergences`` (NUTS), ``seconds`` and
        ``error``.
    """

    posteriors: list[Any]
    table: Any

    def route_counts(self) -> dict[str, int]:
        """How many datasets took each route."""
        return {str(k): int(v) for k, v in self.table["route"].value_counts().items()}

    @property
    def share_mcmc(self) -> float:
        """The share of datasets that needed MCMC (MH or NUTS)."""
        return float(self.table["route"].isin([Route.MH, Route.NUTS]).mean())


def table_row(route: Route, reason: str, k: float, **extra: Any) -> dict[str, Any]:
    """One row of :attr:`FitManyResult.table`, with the defaults of the columns not given.

    Examples
    --------
    >>> from pymc_ext.amortized.many_types import Route, table_row
    >>> row = table_row(Route.PSIS, "k = 0.31 < 0.7, ESS 812", 0.31, ess=812.0)
    >>> row["route"], row["ess"], row["divergences"]
    (<Route.PSIS: 'psis'>, 812.0, 0)
    """
    row = {
        "route": route,
        "reason": reason,
        "pareto_k": k,
        "acceptance": np.nan,
        "rhat": np.nan,
        "ess": np.nan,
        "divergences": 0,
        "seconds": 0.0,
        "error": "",
    }
    row.update(extra)
    return row
