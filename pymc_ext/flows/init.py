"""Flow initialisation for NUTS: :func:`flow_init`.

Pathfinder, then a flow fitted both ways, then Pareto-smoothed importance
resampling against the true density. This is what ``WarmStartNUTS(init="flow")``
starts chains from.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from pymc_ext.blocks.importance import importance_ess, importance_resample, psis_log_weights
from pymc_ext.density import LogDensity
from pymc_ext.flows.fit import FitInfo, FlowFitError, fit_flow
from pymc_ext.flows.seeding import SeedResult, pathfinder_seed
from pymc_ext.flows.standardized import StandardizedFlow

__all__ = ["FlowInitResult", "flow_init"]


@dataclass
class FlowInitResult:
    """Draws from a fitted flow, importance-resampled against the density.

    What ``WarmStartNUTS(init="flow")`` uses: start points from ``draws`` and
    a mass matrix from ``inverse_metric_diag`` (or ``covariance``).

    Attributes
    ----------
    draws : ndarray, shape (n, dim)
        PSIS-resampled draws on the unconstrained space.
    mean, covariance : ndarray
        Importance-weighted moments.
    inverse_metric_diag : ndarray, shape (dim,)
        ``diag(covariance)``.
    grad_evals : int
        Density gradient evaluations (Pathfinder + flow fit).
    pareto_k : float
        PSIS Pareto k of the flow against the density: below 0.7 the flow is
        a usable importance proposal; above 0.7 trust ``draws`` only as
        starting points.
    flow : StandardizedFlow
    fit_info : dict
        :class:`FitInfo` per fit.
    seed : SeedResult
        The Pathfinder seeding.
    ess : float
        Importance ESS of the weighted flow draws.

    Examples
    --------
    >>> from pymc_ext.flows import FlowInitResult
    >>> "pareto_k" in FlowInitResult.__dataclass_fields__
    True
    """

    draws: np.ndarray
    mean: np.ndarray
    covariance: np.ndarray
    inverse_metric_diag: np.ndarray
    grad_evals: int
    pareto_k: float
    flow: StandardizedFlow
    fit_info: dict[str, FitInfo]
    seed: SeedResult
    ess: float = float("nan")


def flow_init(
    density: LogDensity,
    *,
    num_draws: int = 1000,
    num_paths: int = 8,
    method: str = "both",
    random_seed: int | np.random.Generator | None = None,
    progressbar: bool = True,
    seed: SeedResult | None = None,
    flow_kwargs: dict[str, Any] | None = None,
    forward_kwargs: dict[str, Any] | None = None,
    reverse_kwargs: dict[str, Any] | None = None,
    num_proposals: int | None = None,
) -> FlowInitResult:
    """Fit a flow to a density and return importance-resampled draws, for starting NUTS.

    Steps: overdispersed multi-path Pathfinder (:func:`pathfinder_seed`);
    a flow standardised by the Pathfinder draws' mean and covariance, fitted
    by forward KL on those draws and refined by reverse KL (``method``);
    ``num_proposals`` flow draws weighted by ``p / q`` with Pareto smoothing
    (:func:`pymc_ext.blocks.importance.psis_log_weights`) and resampled.

    Parameters
    ----------
    density : LogDensity
    num_draws : int
        Number of resampled draws returned.
    num_paths : int
        Pathfinder paths.
    method : {"both", "forward", "reverse"}
        How the flow is fitted (see :func:`fit_flow`).
    random_seed : int or Generator, optional
    progressbar : bool
    seed : SeedResult, optional
        Reuse a Pathfinder seeding.
    flow_kwargs, forward_kwargs, reverse_kwargs : dict, optional
        Passed to :func:`build_flow`, :func:`fit_forward_kl`, :func:`fit_reverse_kl`.
    num_proposals : int, optional
        Flow draws weighted (default ``max(4 * num_draws, 2000)``).

    Returns
    -------
    FlowInitResult

    Warns
    -----
    UserWarning
        When the Pareto k is above 0.7 (the flow misses part of the posterior).

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flows import flow_init
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x,
    ...                        logp_batch_fn=lambda X: -0.5 * (X * X).sum(1),
    ...                        grad_batch_fn=lambda X: -X)
    >>> res = flow_init(d, num_draws=200, num_paths=2, random_seed=0, progressbar=False,
    ...                 flow_kwargs={"transforms": 2, "hidden_features": (16, 16)},
    ...                 forward_kwargs={"max_steps": 100}, reverse_kwargs={"max_steps": 100})
    >>> res.draws.shape, bool(res.pareto_k < 0.7)
    ((200, 2), True)
    """
    if num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws}.")
    rng = np.random.default_rng(random_seed)
    grad_before = density.grad_evals
    if seed is None:
        seed = pathfinder_seed(
            density, num_paths=num_paths, num_draws=max(1024, num_draws), random_seed=rng
        )
    fit_method = "both" if method == "auto" else method
    samples = seed.draws if fit_method in ("forward", "both") else None
    flow, infos = fit_flow(
        density, samples, method=fit_method, mean=seed.mean, covariance=seed.covariance,
        flow_kwargs=flow_kwargs, forward_kwargs=forward_kwargs, reverse_kwargs=reverse_kwargs,
        random_seed=rng, progressbar=progressbar,
    )
    n_prop = int(num_proposals or max(4 * num_draws, 2000))
    draws, log_w, pareto_k = _resampled(flow, density, n_prop, num_draws, rng)
    mean, covariance = _weighted_moments(draws[1], log_w)
    return FlowInitResult(
        draws=draws[0], mean=mean, covariance=covariance,
        inverse_metric_diag=np.clip(np.diag(covariance).copy(), 1e-10, None),
        grad_evals=density.grad_evals - grad_before, pareto_k=pareto_k, flow=flow,
        fit_info=infos, seed=seed, ess=float(importance_ess(log_w)),
    )


def _resampled(
    flow: StandardizedFlow, density: LogDensity, n: int, size: int, rng: np.random.Generator
) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, float]:
    """``((resampled draws, all proposals), log weights, Pareto k)``; warns when k > 0.7."""
    proposals, log_w, pareto_k = _weighted_proposals(flow, density, n, rng)
    idx = importance_resample(log_w, size, rng)
    _warn_if_poor(pareto_k)
    return (proposals[idx], proposals), log_w, pareto_k


def _weighted_proposals(
    flow: StandardizedFlow, density: LogDensity, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, float]:
    """``n`` flow draws, their Pareto-smoothed normalised log weights ``p / q``, the Pareto k."""
    proposals, logq = flow.sample(n, rng)
    logp = density.logp_batch(proposals)
    logw = np.where(np.isfinite(logp), logp - logq, -np.inf)
    if not np.any(np.isfinite(logw)):
        raise FlowFitError(
            "The log density is -inf or NaN at every flow draw: the flow does not overlap the "
            "posterior. Check the model, or fit with method='forward' on draws from the posterior."
        )
    log_w, pareto_k = psis_log_weights(logw)
    return proposals, log_w, float(pareto_k)


def _weighted_moments(x: np.ndarray, log_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = np.exp(log_w)
    mean = w @ x
    centred = x - mean
    return mean, (centred * w[:, None]).T @ centred


def _warn_if_poor(pareto_k: float) -> None:
    if pareto_k > 0.7:
        warnings.warn(
            f"The flow's Pareto k against the density is {pareto_k:.2f} > 0.7: it misses part of "
            "the posterior, so its draws are fine as starting points but not as posterior draws. "
            "What to try: more fitting steps (forward_kwargs/reverse_kwargs max_steps), more "
            "Pathfinder paths, or pymc_ext.flow_mcmc for an exact local+global sampler.",
            stacklevel=4,
        )
