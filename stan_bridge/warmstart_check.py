"""After a warm-started CmdStan run that kept Pathfinder's metric: did the metric fit?

A ``"keep"`` run (:data:`~stan_bridge.warmstart.KEEP_METRIC_WARMUP`) adapts
the step size only, so nothing in CmdStan corrects a metric that misses the
posterior's scales. :func:`kept_metric_mismatch` compares every chain's
variances (on the unconstrained space) with the metric; above
:func:`keep_mismatch_threshold`, :class:`stan_bridge.CmdStanModel` redoes the
run with CmdStan's full warmup, from the chains' last draws and with their
covariance as the first metric (:func:`rerun_arguments`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pymc_ext.blocks.metric_choice import metric_mismatch, mismatch_threshold
from stan_bridge.model import StanModel
from stan_bridge.warmstart import write_inits, write_metric

__all__ = [
    "KEEP_MISMATCH_FACTOR",
    "kept_metric_mismatch",
    "keep_mismatch_threshold",
    "rerun_arguments",
]

#: After a ``"keep"`` run, the kept metric fits when every chain's variances (on the
#: unconstrained space) are within this factor of it (more with few draws:
#: :func:`keep_mismatch_threshold`); otherwise the run is redone with CmdStan's
#: full warmup.
KEEP_MISMATCH_FACTOR = 2.0


def _unconstrained_draws(stan_model: StanModel, fit: Any) -> np.ndarray:
    """``(draws, chains, dim)``: a CmdStan fit's parameter draws on the unconstrained space.

    A draw that does not unconstrain (CmdStan writes 6 significant digits, so a
    simplex may sum to 1.0000002) is NaN.
    """
    names = stan_model.flat_names(include_tp=False)
    columns = list(fit.column_names)
    idx = [columns.index(n) for n in names]
    draws = np.asarray(fit.draws(concat_chains=False))[:, :, idx]
    out = np.full(draws.shape[:2] + (stan_model.dim,), np.nan)
    for i in range(draws.shape[0]):
        for c in range(draws.shape[1]):
            try:
                out[i, c] = stan_model.param_unconstrain(draws[i, c])
            except ValueError:
                continue
    return out


def kept_metric_mismatch(stan_model: StanModel, fit: Any) -> float:
    """The largest factor between a chain's variances and the metric it sampled with.

    Per chain: ``exp(max_i |log(var_i / inv_metric_ii)|)`` over the
    unconstrained coordinates of the kept draws; the largest over chains.
    A metric that fits gives about 1 (within the noise of the draws); one
    that does not (Pathfinder's covariance missed a scale, or a chain is
    stuck) gives more than :func:`keep_mismatch_threshold`. NaN (no verdict)
    where fewer than half of a chain's draws can be unconstrained.

    Examples
    --------
    >>> from stan_bridge import CmdStanModel
    >>> from stan_bridge.programs import reference_data, write_program
    >>> from stan_bridge.warmstart_check import kept_metric_mismatch
    >>> m = CmdStanModel(stan_file=write_program("arK"))
    >>> data = reference_data("arK")
    >>> fit = m.sample(data=data, warmstart="pathfinder", chains=2, seed=2, show_progress=False)
    >>> bool(kept_metric_mismatch(m.stan_model(data, seed=2), fit) < 2.0)
    True
    """
    inv = np.asarray(fit.inv_metric, dtype=float)
    x = _unconstrained_draws(stan_model, fit)
    factors = []
    for c in range(x.shape[1]):
        ok = np.all(np.isfinite(x[:, c]), axis=1)
        if ok.sum() < max(10, x.shape[0] // 2):  # too few draws unconstrain: no verdict
            continue
        m = inv[c] if inv.ndim == 2 else np.diag(inv[c])
        factors.append(metric_mismatch(m, x[ok, c].var(axis=0)))
    return float(np.max(factors)) if factors else float("nan")


def keep_mismatch_threshold(num_draws: int) -> float:
    """The :func:`kept_metric_mismatch` above which a kept metric does not fit.

    :func:`~pymc_ext.blocks.metric_choice.mismatch_threshold` for a quarter of
    the draws per chain (they are autocorrelated), at least
    :data:`KEEP_MISMATCH_FACTOR`.

    Examples
    --------
    >>> from stan_bridge.warmstart_check import keep_mismatch_threshold
    >>> keep_mismatch_threshold(1000), round(keep_mismatch_threshold(100), 2)
    (2.0, 3.1)
    """
    return mismatch_threshold(num_draws / 4.0, KEEP_MISMATCH_FACTOR)


def rerun_arguments(
    stan_model: StanModel, fit: Any, metric: str, directory: str | os.PathLike
) -> tuple[list[str], str]:
    """Inits (each chain's last draw) and a metric (the draws' covariance) from a first run.

    For redoing a run whose kept metric did not fit: CmdStan's full warmup
    then starts where the chains are, with the best metric there is.

    Returns
    -------
    inits_files : list of str
    metric_file : str
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    x = _unconstrained_draws(stan_model, fit)
    pooled = x.reshape(-1, x.shape[-1])
    pooled = pooled[np.all(np.isfinite(pooled), axis=1)]
    cov = np.atleast_2d(np.cov(pooled.T))
    cov = cov + 1e-10 * np.diag(np.diag(cov)) + 1e-300 * np.eye(len(cov))
    inv_metric = cov if metric == "dense_e" else np.diag(cov).copy()
    last = []
    for c in range(x.shape[1]):  # each chain's last draw that unconstrained
        ok = np.flatnonzero(np.all(np.isfinite(x[:, c]), axis=1))
        last.append(x[ok[-1], c] if ok.size else pooled[-1])
    inits = write_inits(stan_model, np.array(last), directory / "rerun")
    return inits, write_metric(inv_metric, metric, directory / "rerun")
