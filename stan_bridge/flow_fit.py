"""The result of :meth:`stan_bridge.CmdStanModel.flow_sample`: flow MCMC with cmdstanpy's accessors.

:class:`StanFlowFit` holds the draws of :func:`pymc_ext.flow_mcmc` on a
:class:`~stan_bridge.StanModel` in the layout of cmdstanpy's ``CmdStanMCMC``:
``draws()`` is ``(iterations, chains, columns)`` with ``lp__`` first and the
program's parameters, transformed parameters and generated quantities in
CmdStan's column order; ``stan_variable`` gives the program's shapes;
``summary()`` is a pandas DataFrame like cmdstanpy's (computed with ArviZ);
``diagnose()`` is a text of the flow's diagnostics. Each flow-MCMC walker is
one chain. ``to_datatree()`` is the ArviZ ``DataTree`` with the program's
names, and ``save_csvfiles(dir)`` writes Stan CSV files that
``cmdstanpy.from_csv`` reads (see :mod:`stan_bridge.stan_csv`).

The columns ending in ``__`` are the sampler's, per draw: ``lp__`` (the log
density, Jacobian included, without constants, as CmdStan's), ``accept_stat__``
(the local MALA/HMC move's acceptance probability), ``flow_accept_stat__`` (the
flow proposal's Metropolis-Hastings acceptance probability),
``flow_accepted__`` (1 when the flow proposal was taken), ``divergent__`` and
``mode__`` (the nearest mode found, numbered from 0). ``accept_stat__`` is 0
where flow MCMC makes no local moves (a reverse-KL flow: ``fit="reverse"``, or
``fit="auto"`` when it switches, see ``figures["fit"]``).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

__all__ = ["METHOD_COLUMNS", "StanFlowFit", "flow_fit_from_datatree"]

_log = logging.getLogger("stan_bridge")

#: The sampler's columns, and the ``sample_stats`` of flow MCMC each comes from.
METHOD_COLUMNS = {
    "lp__": "lp",
    "accept_stat__": "local_acceptance",
    "flow_accept_stat__": "flow_acceptance",
    "flow_accepted__": "flow_accepted",
    "divergent__": "diverging",
    "mode__": "mode",
}

#: R-hat above this, or a bulk ESS below ``_MIN_ESS``, is reported by ``diagnose``.
_MAX_RHAT = 1.01
_MIN_ESS = 400


def _unconstrained_draws(stan_model: Any, posterior: xr.Dataset) -> np.ndarray:
    """``(chains, draws, dim)`` unconstrained draws from the posterior's parameters."""
    names = list(stan_model.param_names_list)
    first = posterior[names[0]]
    n_chains, n_draws = first.shape[:2]
    values = {n: posterior[n].values.reshape(n_chains * n_draws, *stan_model.shapes[n])
              for n in names}
    flat = np.stack([stan_model.unconstrain({n: values[n][i] for n in names})
                     for i in range(n_chains * n_draws)])
    return flat.reshape(n_chains, n_draws, stan_model.dim)


def _with_generated_quantities(
    dt: xr.DataTree, stan_model: Any, flat: np.ndarray
) -> xr.DataTree:
    """``dt`` with the generated quantities (from the flat rows) in its posterior."""
    gq_names = list(stan_model.gq_names_list)
    if not gq_names:
        return dt
    n_chains, n_draws = flat.shape[:2]
    split = stan_model.layout.split(flat.reshape(n_chains * n_draws, -1), gq_names)
    gq_info = stan_model.info.get("generated quantities", {})
    post = dt["posterior"].to_dataset()
    for name in gq_names:
        arr = np.asarray(split[name]).reshape(n_chains, n_draws, *stan_model.shapes[name])
        if gq_info.get(name, {}).get("type") == "int" and np.all(np.isfinite(arr)):
            arr = arr.astype(np.int64)
        dims = ["chain", "draw", *(f"{name}_dim_{i}" for i in range(arr.ndim - 2))]
        post[name] = (dims, arr)
    dt["posterior"] = xr.DataTree(post)
    return dt


def _exact_lp(dt: xr.DataTree, stan_model: Any, x: np.ndarray) -> None:
    """``sample_stats.lp`` recomputed by the program in float64 at the draws (``lp__``).

    The flow MCMC's own record of the log density can carry the float32
    precision of the flow's proposals; ``lp__`` is Stan's log density
    (Jacobian, no constants) at each draw, as in CmdStan's output.
    """
    stats = dt["sample_stats"].to_dataset()
    if "lp" not in stats:
        return
    n_chains, n_draws, dim = x.shape
    try:
        lp = stan_model._logp_batch(x.reshape(-1, dim))
    except RuntimeError:  # the program throws at a draw: keep the sampler's record
        return
    stats["lp"] = (stats["lp"].dims, lp.reshape(stats["lp"].shape))
    dt["sample_stats"] = xr.DataTree(stats)


def flow_fit_from_datatree(
    stan_model: Any, dt: xr.DataTree, *, gq_seed: int, seconds: dict[str, float] | None = None
) -> StanFlowFit:
    """A :class:`StanFlowFit` from the ``DataTree`` that ``flow_mcmc`` returned on a StanModel.

    The constrained columns (parameters, transformed parameters and generated
    quantities) are computed by the compiled program at the draws; the
    generated quantities use an RNG seeded with ``gq_seed``, one stream per
    chain, as CmdStan's.

    Parameters
    ----------
    stan_model : StanModel
        The program and data the draws are from.
    dt : xarray.DataTree
        What :func:`pymc_ext.flow_mcmc` returned.
    gq_seed : int
        Seed of the generated quantities.
    seconds : dict, optional
        ``{"Warm-up": ..., "Sampling": ...}`` (for the CSV files' timing block).

    Returns
    -------
    StanFlowFit

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext import flow_mcmc
    >>> from stan_bridge.flow_fit import flow_fit_from_datatree
    >>> from stan_bridge.programs import example_model
    >>> sm = example_model()
    >>> dt = flow_mcmc(sm, draws=20, chains=8, n_rounds=1, random_seed=1, progressbar=False,
    ...                search_climbs=0, num_paths=4, fit="forward", first_train_steps=100)
    >>> fit = flow_fit_from_datatree(sm, dt, gq_seed=1)
    >>> fit.draws().shape, fit.stan_variable("y_rep").shape
    ((20, 8, 13), (160, 4))
    """
    x = _unconstrained_draws(stan_model, dt["posterior"])
    n_chains, n_draws = x.shape[:2]
    include_gq = bool(stan_model.gq_names_list)
    flat = np.stack([
        np.atleast_2d(stan_model.param_constrain(
            x[c], include_tp=True, include_gq=include_gq, seed=int(gq_seed), chain=c + 1
        ))
        for c in range(n_chains)
    ])
    dt = _with_generated_quantities(dt, stan_model, flat)
    _exact_lp(dt, stan_model, x)
    stats = dt["sample_stats"]
    method = np.stack(
        [np.asarray(stats[key].values, dtype=float) for key in METHOD_COLUMNS.values()], axis=-1
    )
    columns = list(METHOD_COLUMNS) + stan_model.flat_names(include_tp=True, include_gq=include_gq)
    draws = np.concatenate([method, flat], axis=-1).transpose(1, 0, 2)
    return StanFlowFit(dt, columns, np.asfortranarray(draws), stan_model=stan_model,
                       seed=int(gq_seed), seconds=seconds)


def _round_sig(value: float, sig_figs: int) -> float:
    return float(f"{value:.{sig_figs}g}") if np.isfinite(value) else value


class StanFlowFit:
    """Flow-MCMC draws of a Stan program, with the accessors of cmdstanpy's ``CmdStanMCMC``.

    Made by :meth:`stan_bridge.CmdStanModel.flow_sample`; each walker of
    :func:`pymc_ext.flow_mcmc` is one chain.

    Attributes
    ----------
    column_names : tuple of str
        ``lp__`` and the sampler's columns, then the program's scalars as
        cmdstanpy names them (``theta[1]``, ``L[2,1]``).
    chains : int
    num_draws_sampling : int
    stan_model : StanModel
        The program with its data.
    csv_files : list of str
        The Stan CSV files written (``output_dir`` or :meth:`save_csvfiles`).

    Examples
    --------
    >>> from stan_bridge import CmdStanModel
    >>> from stan_bridge.programs import reference_data, write_program
    >>> model = CmdStanModel(stan_file=write_program("eight_schools"))
    >>> fit = model.flow_sample(data=reference_data("eight_schools"), chains=8,
    ...                         iter_sampling=20, seed=1, show_progress=False, n_rounds=1,
    ...                         search_climbs=0, num_paths=4, fit="forward",
    ...                         first_train_steps=100)
    >>> fit.draws().shape[:2], fit.column_names[0], fit.stan_variable("theta").shape
    ((20, 8), 'lp__', (160, 8))
    """

    def __init__(
        self,
        datatree: xr.DataTree,
        columns: Sequence[str],
        draws: np.ndarray,
        *,
        stan_model: Any,
        seed: int | None = None,
        seconds: dict[str, float] | None = None,
    ) -> None:
        self._dt = datatree
        self._columns = tuple(columns)
        self._draws = draws
        self.stan_model = stan_model
        self.seed = seed
        self.seconds = dict(seconds or {})
        self.csv_files: list[str] = []

    def __repr__(self) -> str:
        return (
            f"StanFlowFit: model={self.stan_model.model_name} chains={self.chains} "
            f"draws={self.num_draws_sampling} (flow MCMC, pymc_ext.flow_mcmc)\n"
            f" global acceptance {self.figures.get('global_acceptance', float('nan')):.3f}, "
            f"flow Pareto k {self.figures.get('flow_pareto_k', float('nan')):.2f}"
            + ("\n csv_files:\n\t" + "\n\t".join(self.csv_files) if self.csv_files else "")
        )

    # -- shape --------------------------------------------------------------------------------
    @property
    def column_names(self) -> tuple[str, ...]:
        """Names of the columns of :meth:`draws`."""
        return self._columns

    @property
    def chains(self) -> int:
        """Number of chains (flow-MCMC walkers)."""
        return int(self._draws.shape[1])

    @property
    def chain_ids(self) -> list[int]:
        """Chain ids, from 1."""
        return list(range(1, self.chains + 1))

    @property
    def num_draws_sampling(self) -> int:
        """Draws per chain."""
        return int(self._draws.shape[0])

    @property
    def num_draws_warmup(self) -> int:
        """0: flow MCMC keeps no warmup draws (its adaptation is in ``figures``)."""
        return 0

    @property
    def metadata(self) -> Any:
        """The run's configuration and columns, as cmdstanpy's ``InferenceMetadata``.

        ``metadata.cmdstan_config`` holds CmdStan's keys where they apply:
        ``method`` (``"sample"``), ``algorithm`` (``"flow_mcmc"``: not NUTS,
        so there are no ``stepsize``, ``metric`` or ``max_depth`` keys),
        ``num_samples`` (draws per chain), ``num_chains``, ``num_warmup``
        (flow MCMC's adaptation rounds; no warmup draws are kept),
        ``save_warmup`` (0), ``thin`` (1), ``seed`` (of the generated
        quantities and the run), ``model``, the Stan version,
        ``column_names`` and ``raw_header``; ``metadata.stan_vars`` and
        ``metadata.method_vars`` map the names to their columns, as for a
        ``CmdStanMCMC``.

        Examples
        --------
        >>> from stan_bridge import CmdStanModel
        >>> from stan_bridge.programs import reference_data, write_program
        >>> model = CmdStanModel(stan_file=write_program("eight_schools"))
        >>> fit = model.flow_sample(data=reference_data("eight_schools"), chains=8,
        ...                         iter_sampling=20, seed=1, show_progress=False, n_rounds=1,
        ...                         search_climbs=0, num_paths=4, fit="forward",
        ...                         first_train_steps=100)
        >>> config = fit.metadata.cmdstan_config
        >>> config["method"], config["num_samples"], config["num_chains"], config["seed"]
        ('sample', 20, 8, 1)
        >>> fit.metadata.stan_vars["theta"].dimensions
        (8,)
        """
        from cmdstanpy.stanfit.metadata import InferenceMetadata

        from stan_bridge.stan_csv import csv_column_name

        version = [int(p) for p in str(self.stan_model.toolchain.stan_version).split(".")[:3]]
        major, minor, patch = (version + [0, 0, 0])[:3]
        divergent = self._draws[:, :, self._columns.index("divergent__")]
        config: dict[str, Any] = {
            "stan_version_major": major,
            "stan_version_minor": minor,
            "stan_version_patch": patch,
            "model": f"{self.stan_model.model_name}_model",
            "method": "sample",
            "algorithm": "flow_mcmc",
            "num_samples": self.num_draws_sampling,
            "num_warmup": len(self.figures.get("global_acceptance_per_round", [])),
            "save_warmup": 0,
            "thin": 1,
            "num_chains": self.chains,
            "id": 1,
            "seed": self.seed,
            "draws_warmup": 0,
            "draws_sampling": self.num_draws_sampling,
            "ct_divergences": int(np.nansum(divergent)),
            "column_names": self._columns,
            "raw_header": ",".join(csv_column_name(c) for c in self._columns),
        }
        if self.seconds:
            config["time"] = {k.lower().replace("-", ""): float(v)
                              for k, v in self.seconds.items()}
        return InferenceMetadata(config)

    @property
    def stan_vars(self) -> list[str]:
        """The program's variables: parameters, transformed parameters, generated quantities."""
        return [n for n in self._dt["posterior"].data_vars]

    # -- draws --------------------------------------------------------------------------------
    def draws(self, *, inc_warmup: bool = False, concat_chains: bool = False) -> np.ndarray:
        """All columns: ``(draws, chains, columns)``, or ``(draws * chains, columns)``.

        Parameters
        ----------
        inc_warmup : bool
            Accepted for cmdstanpy's signature; flow MCMC keeps no warmup draws.
        concat_chains : bool
            Chains one after the other (chain 1's draws first).
        """
        self._warn_warmup(inc_warmup)
        if concat_chains:
            return self._draws.transpose(1, 0, 2).reshape(-1, len(self._columns))
        return self._draws

    def _warn_warmup(self, inc_warmup: bool) -> None:
        if inc_warmup:
            _log.warning("Flow MCMC keeps no warmup draws; returning the sampling draws.")

    def _columns_of(self, var: str) -> list[int]:
        if var in self._columns:
            return [self._columns.index(var)]
        idx = [i for i, c in enumerate(self._columns) if c.split("[")[0] == var]
        if not idx:
            raise ValueError(
                f"Unknown variable name: {var}\nAvailable variables are "
                f"{self.stan_vars + list(METHOD_COLUMNS)}"
            )
        return idx

    def draws_pd(self, vars: str | Sequence[str] | None = None, inc_warmup: bool = False):
        """The draws as a pandas DataFrame, chains one after the other.

        Columns ``chain__``, ``iter__``, ``draw__``, then the columns of
        ``vars`` (every column by default), as cmdstanpy's ``draws_pd``.
        """
        self._warn_warmup(inc_warmup)
        if vars is None:
            idx = list(range(len(self._columns)))
        else:
            names = [vars] if isinstance(vars, str) else list(vars)
            idx = [i for v in names for i in self._columns_of(v)]
        flat = self.draws(concat_chains=True)[:, idx]
        n, c = self.num_draws_sampling, self.chains
        lead = np.column_stack([
            np.repeat(np.arange(1, c + 1), n), np.tile(np.arange(1, n + 1), c),
            np.arange(1, n * c + 1),
        ]).astype(float)
        return pd.DataFrame(
            np.column_stack([lead, flat]),
            columns=["chain__", "iter__", "draw__"] + [self._columns[i] for i in idx],
        )

    def draws_xr(
        self, vars: str | Sequence[str] | None = None, inc_warmup: bool = False
    ) -> xr.Dataset:
        """The program's variables as an ``xarray.Dataset`` (dims ``chain``, ``draw``, ...)."""
        self._warn_warmup(inc_warmup)
        post = self._dt["posterior"].to_dataset()
        if vars is None:
            return post
        return post[[vars] if isinstance(vars, str) else list(vars)]

    def stan_variable(self, var: str, inc_warmup: bool = False) -> np.ndarray:
        """One variable in the program's shape: ``(draws * chains, *shape)``, chain 1 first."""
        self._warn_warmup(inc_warmup)
        post = self._dt["posterior"]
        if var not in post.data_vars:
            raise ValueError(
                f"Unknown variable name: {var}\nAvailable variables are {self.stan_vars}"
            )
        arr = post[var].values
        return arr.reshape(-1, *arr.shape[2:])

    def stan_variables(self) -> dict[str, np.ndarray]:
        """Every program variable, as :meth:`stan_variable`."""
        return {name: self.stan_variable(name) for name in self.stan_vars}

    def method_variables(self) -> dict[str, np.ndarray]:
        """The sampler's columns (``lp__``, ``accept_stat__``, ...), each ``(draws, chains)``."""
        return {name: self._draws[:, :, self._columns.index(name)] for name in METHOD_COLUMNS}

    # -- ArviZ ----------------------------------------------------------------------------------
    def to_datatree(self) -> xr.DataTree:
        """The ArviZ ``DataTree``: ``posterior`` (the program's names and shapes, generated
        quantities included), ``sample_stats`` (per draw, and the run's figures as
        attributes) and ``flow_adaptation``."""
        return self._dt

    @property
    def idata(self) -> xr.DataTree:
        """Same as :meth:`to_datatree`."""
        return self._dt

    @property
    def figures(self) -> dict[str, Any]:
        """The run's figures (``sample_stats.attrs`` of flow MCMC, warnings decoded)."""
        attrs = dict(self._dt["sample_stats"].attrs)
        if isinstance(attrs.get("warnings"), str):
            attrs["warnings"] = json.loads(attrs["warnings"])
        return attrs

    @property
    def warnings(self) -> list[str]:
        """The warnings of the run (also issued as ``FlowMCMCWarning`` when it ran)."""
        return list(self.figures.get("warnings", []))

    # -- summaries ------------------------------------------------------------------------------
    def summary(self, percentiles: Sequence[int] = (5, 50, 95), sig_figs: int = 6) -> pd.DataFrame:
        """Summary statistics per column, like cmdstanpy's (computed with ArviZ).

        Rows: ``lp__``, then every scalar of the program. Columns: ``Mean``,
        ``MCSE``, ``StdDev``, ``MAD``, the percentiles, ``ESS_bulk``,
        ``ESS_tail`` and ``R_hat`` (CmdStan 2.33's ``stansummary`` layout;
        ArviZ's rank-normalised R-hat and ESS, over the walkers as chains).

        Parameters
        ----------
        percentiles : sequence of int
            Increasing, each in 1..99.
        sig_figs : int
            Significant figures, 1..18.
        """
        pcts = [int(p) for p in percentiles]
        if not pcts or any(not 0 < p < 100 for p in pcts) or sorted(set(pcts)) != pcts:
            raise ValueError("percentiles must be an increasing non-empty list in 1..99.")
        if not isinstance(sig_figs, int) or not 1 <= sig_figs <= 18:
            raise ValueError(f"sig_figs must be an integer in 1..18; got {sig_figs!r}.")
        import arviz_stats as azs

        keep = [i for i, c in enumerate(self._columns) if c == "lp__" or not c.endswith("__")]
        x = self._draws[:, :, keep]
        flat = x.reshape(-1, len(keep))
        kw = {"chain_axis": 1, "draw_axis": 0}
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")  # constant columns give NaN ESS / R-hat
            table = {
                "Mean": flat.mean(0),
                "MCSE": np.asarray(azs.mcse(x, **kw)),
                "StdDev": flat.std(0, ddof=1),
                "MAD": 1.4826 * np.median(np.abs(flat - np.median(flat, 0)), 0),
                **{f"{p}%": np.percentile(flat, p, axis=0) for p in pcts},
                "ESS_bulk": np.asarray(azs.ess(x, **kw)),
                "ESS_tail": np.asarray(azs.ess(x, method="tail", prob=(0.05, 0.95), **kw)),
                "R_hat": np.asarray(azs.rhat(x, **kw)),
            }
        df = pd.DataFrame(table, index=[self._columns[i] for i in keep])
        return df.map(lambda v: _round_sig(float(v), sig_figs))

    def diagnose(self) -> str:
        """A text of the flow-MCMC diagnostics, as cmdstanpy's ``diagnose()`` gives CmdStan's.

        Global and local acceptance, the flow's Pareto k against the
        posterior, the modes found and the hops between them, divergent local
        moves, R-hat and bulk ESS per column, and the run's warnings, each
        with what to try.
        """
        from stan_bridge.flow_diagnose import diagnose_text

        return diagnose_text(self.figures, self.summary(), self.chains, self.num_draws_sampling)

    # -- files ----------------------------------------------------------------------------------
    def save_csvfiles(self, dir: str | Path) -> list[str]:
        """Write one Stan CSV file per chain into ``dir`` (``cmdstanpy.from_csv`` reads them).

        The files are ``<model>-flow-<chain>.csv``, the chain numbered from 1
        and zero-padded, so that sorting their names sorts the chains.
        ``cmdstanpy.from_csv(fit.csv_files)`` keeps the chain order;
        ``cmdstanpy.from_csv(dir)`` takes the files in the order the folder
        lists them, which may differ.

        Returns
        -------
        list of str
            The files written (also in ``csv_files``).
        """
        from stan_bridge.stan_csv import write_stan_csv

        sm = self.stan_model
        version = tuple(int(p) for p in str(sm.toolchain.stan_version).split(".")[:3])
        notes = _csv_notes(self.figures)
        name, width = sm.model_name, len(str(self.chains))
        self.csv_files = [
            write_stan_csv(
                Path(dir) / f"{name}-flow-{c + 1:0{width}d}.csv", self._columns,
                self._draws[:, c, :],
                model_name=f"{name}_model", chain_id=c + 1, seed=self.seed,
                num_warmup=len(self.figures.get("global_acceptance_per_round", [])),
                stan_version=version, comments=notes, seconds=self.seconds,
            )
            for c in range(self.chains)
        ]
        return list(self.csv_files)


def _csv_notes(figures: dict[str, Any]) -> list[str]:
    """The comment block of the CSV files: where the draws come from, and the run's figures."""
    return [
        "Written by stan_bridge (CmdStanModel.flow_sample). These draws come from",
        "pymc_ext.flow_mcmc: local MALA/HMC moves plus normalizing-flow independence",
        "proposals with an exact Metropolis-Hastings correction; one walker per file.",
        "They are MCMC draws, not from CmdStan. 'algorithm: fixed_param' above only",
        "tells CmdStan's readers that there is no NUTS adaptation block and no NUTS columns.",
        "accept_stat__: the local move's acceptance; flow_accept_stat__: the flow proposal's;",
        "flow_accepted__: 1 when the flow proposal was taken; mode__: nearest mode.",
        "num_warmup above: flow MCMC's adaptation rounds (no warmup draws are saved).",
        f"global acceptance: {figures.get('global_acceptance', float('nan')):.4f}; "
        f"flow Pareto k: {figures.get('flow_pareto_k', float('nan')):.3f}; "
        f"modes: {figures.get('n_modes', '?')}; gradient evaluations: "
        f"{figures.get('grad_evals', '?')}",
    ]
