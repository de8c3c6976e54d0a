"""Build (or take) a flow and fit it to a density: :func:`fit_flow`.

:class:`FitInfo` and :class:`FlowFitError` are defined in
:mod:`pymc_ext.flows.fit_info` and re-exported here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pymc_ext.density import LogDensity
from pymc_ext.flows.fit_info import FitInfo, FlowFitError
from pymc_ext.flows.forward_kl import fit_forward_kl
from pymc_ext.flows.reverse_kl import fit_reverse_kl
from pymc_ext.flows.standardized import StandardizedFlow, build_flow

__all__ = ["FitInfo", "FlowFitError", "fit_flow"]


def fit_flow(
    density: LogDensity,
    samples: np.ndarray | None = None,
    *,
    method: str = "auto",
    mean: np.ndarray | None = None,
    covariance: np.ndarray | None = None,
    flow: StandardizedFlow | None = None,
    flow_kwargs: dict[str, Any] | None = None,
    forward_kwargs: dict[str, Any] | None = None,
    reverse_kwargs: dict[str, Any] | None = None,
    random_seed: int | np.random.Generator | None = None,
    progressbar: bool = True,
) -> tuple[StandardizedFlow, dict[str, FitInfo]]:
    """Build (or take) a flow and fit it to a density, by forward KL, reverse KL or both.

    Parameters
    ----------
    density : LogDensity
        The target, on its unconstrained space.
    samples : ndarray, shape (n, dim), optional
        Draws covering the target (walker states, Pathfinder draws) for the
        forward-KL fit.
    method : {"auto", "forward", "reverse", "both"}
        ``"both"`` fits forward KL on ``samples`` first and then refines by
        reverse KL; ``"auto"`` is ``"both"`` with samples, ``"reverse"`` without.
    mean, covariance : ndarray, optional
        Standardisation; default the samples' mean and covariance when there
        are samples, else zero and identity.
    flow : StandardizedFlow, optional
        A flow to refine instead of building one.
    flow_kwargs : dict, optional
        Passed to :func:`build_flow` (``kind``, ``transforms``, ``hidden_features``, ...).
    forward_kwargs, reverse_kwargs : dict, optional
        Passed to :func:`fit_forward_kl` / :func:`fit_reverse_kl`.
    random_seed : int or Generator, optional
    progressbar : bool

    Returns
    -------
    flow : StandardizedFlow
    infos : dict
        ``"forward"`` and/or ``"reverse"`` -> :class:`FitInfo`.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flows import fit_flow
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x)
    >>> flow, infos = fit_flow(d, method="reverse", random_seed=0, progressbar=False,
    ...                        flow_kwargs={"transforms": 2, "hidden_features": (16, 16)},
    ...                        reverse_kwargs={"max_steps": 50})
    >>> sorted(infos)
    ['reverse']
    """
    method = _resolve_method(method, samples)
    rng = np.random.default_rng(random_seed)
    if samples is not None:
        samples = np.asarray(samples, dtype=float)
        mean, covariance = _standardisation(samples, mean, covariance, density.dim)
    if flow is None:
        flow = build_flow(
            density.dim, mean=mean, covariance=covariance, random_seed=rng, **(flow_kwargs or {})
        )
    infos: dict[str, FitInfo] = {}
    if method in ("forward", "both"):
        kw = {"random_seed": rng, "progressbar": progressbar, **(forward_kwargs or {})}
        infos["forward"] = fit_forward_kl(flow, samples, **kw)
    if method in ("reverse", "both"):
        kw = {"random_seed": rng, "progressbar": progressbar, **(reverse_kwargs or {})}
        infos["reverse"] = fit_reverse_kl(flow, density, **kw)
    return flow, infos


def _resolve_method(method: str, samples: np.ndarray | None) -> str:
    if method not in ("auto", "forward", "reverse", "both"):
        raise ValueError(f"method must be 'auto', 'forward', 'reverse' or 'both', got {method!r}.")
    if method == "auto":
        method = "both" if samples is not None else "reverse"
    if method in ("forward", "both") and samples is None:
        raise ValueError(f"method={method!r} needs samples (draws covering the target).")
    return method


def _standardisation(
    samples: np.ndarray, mean: np.ndarray | None, covariance: np.ndarray | None, dim: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Default mean and covariance from the samples (a tiny ridge on the covariance)."""
    if mean is None:
        mean = samples.mean(0)
    if covariance is None and samples.shape[0] > samples.shape[1]:
        covariance = np.cov(samples.T).reshape(dim, dim)
        covariance += 1e-6 * np.mean(np.diag(covariance)) * np.eye(dim)
    return mean, covariance
