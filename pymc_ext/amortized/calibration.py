"""Simulation-based calibration (SBC): is an amortized posterior calibrated on average?

Draw ``theta* ~ p(theta)``, ``y ~ p(y | theta*)``, then ``L`` draws from the
approximate posterior ``q(theta | y)``. If ``q`` is the true posterior, the
rank of ``theta*`` among the ``L`` draws is uniform on ``{0, ..., L}`` for
every parameter (Talts et al., 2018). This module turns ranks into a
pass/fail test and a plot:

- **ranks** per dataset and parameter, and randomised PIT values
  ``u = (rank + U(0, 1)) / (L + 1)``, exactly uniform under calibration;
- **a simultaneous ECDF band test** (Säilynoja, Bürkner and Vehtari, 2022):
  the ECDF of the PIT values must stay inside a band that holds the whole
  ECDF of uniform draws with probability ``1 - alpha / dim`` (Bonferroni
  over parameters, so the test as a whole has level ``alpha``). The band is
  ArviZ's (``arviz_stats.ecdf_utils.ecdf_pit``, the simulation method);
- **the ECDF-difference plot** (``ECDF(u) - u`` with the band), ArviZ style;
- **posterior contraction** ``1 - var_post / var_prior`` and **z-scores**
  ``(mean_post - theta*) / sd_post`` (Schad, Betancourt and Vasishth, 2021),
  which say how much the data teach and whether the posterior is biased or
  over-confident.

SBC checks calibration *on average over the prior*: it can pass while the
posterior is wrong for some datasets (the issue's low-noise example). The
per-dataset Pareto k of :meth:`pymc_ext.Amortizer.sample` is the check for a
single dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "CalibrationResult",
    "sbc_ranks",
    "ecdf_band_test",
    "posterior_contraction",
    "posterior_z_scores",
    "simulation_based_calibration",
]


def sbc_ranks(true_params: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Rank of each true parameter among its posterior draws.

    Parameters
    ----------
    true_params : ndarray, shape (n, dim)
        The parameters each dataset was simulated from.
    draws : ndarray, shape (n, L, dim)
        ``L`` posterior draws per dataset.

    Returns
    -------
    ndarray of int, shape (n, dim)
        Number of draws below the true value, in ``0..L``.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.amortized.calibration import sbc_ranks
    >>> sbc_ranks(np.array([[0.5]]), np.array([[[0.1], [0.7], [0.2]]])).tolist()
    [[2]]
    """
    true_params = np.asarray(true_params, dtype=float)
    draws = np.asarray(draws, dtype=float)
    if draws.ndim != 3 or true_params.shape != (draws.shape[0], draws.shape[2]):
        raise ValueError(
            f"need true_params (n, dim) and draws (n, L, dim); got {true_params.shape} and "
            f"{draws.shape}."
        )
    return (draws < true_params[:, None, :]).sum(axis=1)


def ecdf_band_test(
    pit: np.ndarray, prob: float, n_simulations: int = 1000, random_seed: Any = 0
) -> tuple[bool, dict[str, np.ndarray]]:
    """Is the ECDF of ``pit`` inside ArviZ's simultaneous ``prob`` band for uniform values?

    Parameters
    ----------
    pit : ndarray, shape (n,)
        Values that are Uniform(0, 1) under the null.
    prob : float
        Simultaneous coverage of the band.
    n_simulations : int
        Simulations used by ArviZ to calibrate the band.
    random_seed : int or Generator
        Seed for those simulations.

    Returns
    -------
    passed : bool
    band : dict
        ``x`` (evaluation points), ``ecdf``, ``lower``, ``upper``.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.amortized.calibration import ecdf_band_test
    >>> u = np.random.default_rng(1).uniform(size=300)
    >>> ecdf_band_test(u, prob=0.99)[0]
    True
    >>> ecdf_band_test(u**2, prob=0.99)[0]
    False
    """
    from arviz_stats.ecdf_utils import ecdf_pit

    pit = np.asarray(pit, dtype=float).ravel()
    x, ecdf, lower, upper = ecdf_pit(
        pit, prob, n_simulations, rng=np.random.default_rng(random_seed)
    )
    eps = 1e-12
    passed = bool(np.all(ecdf >= lower - eps) and np.all(ecdf <= upper + eps))
    return passed, {"x": x, "ecdf": ecdf, "lower": lower, "upper": upper}


def posterior_contraction(draws: np.ndarray, prior_var: np.ndarray) -> np.ndarray:
    """``1 - var_post / var_prior`` per dataset and parameter (1: the data pin it down).

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.amortized.calibration import posterior_contraction
    >>> d = np.random.default_rng(0).normal(0, 0.5, size=(1, 4000, 1))
    >>> float(posterior_contraction(d, np.array([1.0]))[0, 0].round(1))
    0.8
    """
    return 1.0 - np.var(draws, axis=1, ddof=1) / np.asarray(prior_var)[None, :]


def posterior_z_scores(true_params: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """``(mean_post - theta*) / sd_post`` per dataset and parameter.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.amortized.calibration import posterior_z_scores
    >>> d = np.random.default_rng(0).normal(1.0, 1.0, size=(1, 4000, 1))
    >>> float(posterior_z_scores(np.zeros((1, 1)), d)[0, 0].round(0))
    1.0
    """
    sd = np.std(draws, axis=1, ddof=1)
    return (np.mean(draws, axis=1) - true_params) / np.where(sd > 0, sd, np.nan)


@dataclass
class CalibrationResult:
    """The outcome of simulation-based calibration.

    Attributes
    ----------
    passed : bool
        Whether every parameter's ECDF stays inside its band.
    ranks : ndarray of int, shape (num_datasets, dim)
        Rank of the true value among ``num_draws`` posterior draws.
    num_draws : int
        Posterior draws per dataset (ranks run from 0 to ``num_draws``).
    param_names : list of str
        One label per entry of the (unconstrained) parameter vector.
    pit : ndarray, shape (num_datasets, dim)
        Randomised PIT values from the ranks.
    per_parameter_passed : dict
        ``name -> bool``.
    bands : dict
        ``name -> {"x", "ecdf", "lower", "upper"}``.
    contraction : ndarray, shape (num_datasets, dim)
    z_scores : ndarray, shape (num_datasets, dim)
    alpha : float
        Level of the whole test (Bonferroni over parameters).
    """

    passed: bool
    ranks: np.ndarray
    num_draws: int
    param_names: list[str]
    pit: np.ndarray
    per_parameter_passed: dict[str, bool]
    bands: dict[str, dict[str, np.ndarray]]
    contraction: np.ndarray
    z_scores: np.ndarray
    alpha: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_datasets(self) -> int:
        """Number of simulated datasets."""
        return int(self.ranks.shape[0])

    @property
    def failed_parameters(self) -> list[str]:
        """Parameters whose ECDF leaves the band."""
        return [n for n, ok in self.per_parameter_passed.items() if not ok]

    def summary(self) -> list[dict[str, Any]]:
        """One row per parameter: pass/fail, largest ECDF gap, contraction and z-scores.

        Examples
        --------
        >>> import numpy as np
        >>> from pymc_ext.amortized.calibration import simulation_based_calibration
        >>> rng = np.random.default_rng(0)
        >>> theta = rng.normal(size=(200, 1))
        >>> draws = rng.normal(size=(200, 50, 1))     # the prior: calibrated, no contraction
        >>> rows = simulation_based_calibration(theta, draws, prior_var=[1.0]).summary()
        >>> rows[0]["passed"], abs(rows[0]["mean_contraction"]) < 0.1
        (True, True)
        """
        rows = []
        for j, name in enumerate(self.param_names):
            band = self.bands[name]
            rows.append(
                {
                    "parameter": name,
                    "passed": self.per_parameter_passed[name],
                    "max_ecdf_diff": float(np.max(np.abs(band["ecdf"] - band["x"]))),
                    "mean_contraction": float(np.nanmean(self.contraction[:, j])),
                    "mean_z": float(np.nanmean(self.z_scores[:, j])),
                    "sd_z": float(np.nanstd(self.z_scores[:, j])),
                }
            )
        return rows

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (for benchmark records)."""
        return {
            "passed": self.passed,
            "num_datasets": self.num_datasets,
            "num_draws": self.num_draws,
            "alpha": self.alpha,
            "failed_parameters": self.failed_parameters,
            "parameters": self.summary(),
            **self.info,
        }

    def __repr__(self) -> str:
        verdict = "passed" if self.passed else f"FAILED for {self.failed_parameters}"
        return (
            f"CalibrationResult({verdict}; {self.num_datasets} datasets x {self.num_draws} draws, "
            f"{len(self.param_names)} parameters, alpha={self.alpha})"
        )

    def plot(
        self,
        parameters: Sequence[str] | None = None,
        ncols: int = 4,
        figsize: tuple[float, float] | None = None,
        path: str | None = None,
    ) -> Any:
        """ECDF-difference plots, ArviZ style: ``ECDF(u) - u`` and the simultaneous band.

        Parameters
        ----------
        parameters : list of str, optional
            Which to show (all by default).
        ncols : int
            Panels per row.
        figsize : tuple, optional
            Figure size in inches.
        path : str, optional
            Also save the figure there (PNG, SVG or PDF by suffix).

        Returns
        -------
        matplotlib.figure.Figure

        Examples
        --------
        >>> import numpy as np, matplotlib
        >>> matplotlib.use("Agg")
        >>> from pymc_ext.amortized.calibration import simulation_based_calibration
        >>> rng = np.random.default_rng(0)
        >>> res = simulation_based_calibration(rng.normal(size=(100, 2)),
        ...                                    rng.normal(size=(100, 20, 2)))
        >>> len(res.plot().axes)
        2
        """
        import matplotlib.pyplot as plt

        names = list(parameters) if parameters is not None else list(self.param_names)
        unknown = [n for n in names if n not in self.bands]
        if unknown:
            raise ValueError(f"unknown parameters {unknown}; choose from {self.param_names}.")
        ncols = max(1, min(ncols, len(names)))
        nrows = int(np.ceil(len(names) / ncols))
        if figsize is None:
            figsize = (3.2 * ncols, 2.6 * nrows)
        fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False, sharey=True)
        for ax in axes.ravel()[len(names):]:
            ax.set_visible(False)
        for ax, name in zip(axes.ravel(), names, strict=False):
            band = self.bands[name]
            x = band["x"]
            ok = self.per_parameter_passed[name]
            ax.fill_between(
                x, band["lower"] - x, band["upper"] - x, step="post", color="0.85", lw=0,
                label=f"{100 * self.info.get('band_prob', 1 - self.alpha):.1f}% band",
            )
            ax.step(x, band["ecdf"] - x, where="post", color="C0" if ok else "C3", lw=1.4)
            ax.axhline(0.0, color="0.4", lw=0.6)
            ax.set_title(f"{name} ({'pass' if ok else 'FAIL'})", fontsize=9)
            ax.set_xlim(0, 1)
            ax.tick_params(labelsize=8)
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
        for ax in axes[:, 0]:
            ax.set_ylabel("ECDF - uniform", fontsize=9)
        for ax in axes[-1, :]:
            ax.set_xlabel("fractional rank", fontsize=9)
        verdict = "passed" if self.passed else "failed"
        fig.suptitle(
            f"SBC: {self.num_datasets} datasets, {self.num_draws} draws each; {verdict} "
            f"(alpha = {self.alpha})",
            fontsize=10,
        )
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=110)
        return fig


def simulation_based_calibration(
    true_params: np.ndarray,
    draws: np.ndarray,
    *,
    prior_var: Sequence[float] | np.ndarray | None = None,
    param_names: Sequence[str] | None = None,
    alpha: float = 0.01,
    n_simulations: int = 1000,
    random_seed: Any = 0,
) -> CalibrationResult:
    """SBC from true parameters and posterior draws (engine-agnostic).

    Parameters
    ----------
    true_params : ndarray, shape (n, dim)
        Parameters the datasets were simulated from.
    draws : ndarray, shape (n, L, dim)
        Posterior draws for each dataset.
    prior_var : array, shape (dim,), optional
        Prior variance per parameter, for the contraction (the variance of
        ``true_params`` by default).
    param_names : list of str, optional
        Labels.
    alpha : float
        Level of the whole test; each parameter is tested at ``alpha / dim``.
    n_simulations : int
        Simulations to calibrate ArviZ's simultaneous band.
    random_seed : int or Generator
        Seed for the PIT randomisation and the band.

    Returns
    -------
    CalibrationResult

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.amortized.calibration import simulation_based_calibration
    >>> rng = np.random.default_rng(0)
    >>> theta = rng.normal(size=(300, 1))
    >>> good = rng.normal(size=(300, 99, 1))           # draws from the prior itself
    >>> simulation_based_calibration(theta, good).passed
    True
    >>> narrow = 0.3 * rng.normal(size=(300, 99, 1))   # over-confident
    >>> simulation_based_calibration(theta, narrow).passed
    False
    """
    true_params = np.asarray(true_params, dtype=float)
    draws = np.asarray(draws, dtype=float)
    ranks = sbc_ranks(true_params, draws)
    n, num_draws, dim = draws.shape
    if n < 20:
        raise ValueError(f"SBC needs at least 20 datasets to say anything; got {n}.")
    names = list(param_names) if param_names is not None else [f"theta[{j}]" for j in range(dim)]
    if len(names) != dim:
        raise ValueError(f"param_names has {len(names)} entries for {dim} parameters.")
    rng = np.random.default_rng(random_seed)
    pit = (ranks + rng.uniform(size=ranks.shape)) / (num_draws + 1)
    prob = 1.0 - alpha / dim
    per_param, bands = {}, {}
    for j, name in enumerate(names):
        ok, band = ecdf_band_test(pit[:, j], prob, n_simulations, random_seed=rng)
        per_param[name] = ok
        bands[name] = band
    if prior_var is None:
        prior_var = np.var(true_params, axis=0, ddof=1)
    return CalibrationResult(
        passed=all(per_param.values()),
        ranks=ranks,
        num_draws=int(num_draws),
        param_names=names,
        pit=pit,
        per_parameter_passed=per_param,
        bands=bands,
        contraction=posterior_contraction(draws, np.asarray(prior_var, dtype=float)),
        z_scores=posterior_z_scores(true_params, draws),
        alpha=float(alpha),
        info={"band_prob": prob},
    )
