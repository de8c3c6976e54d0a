"""Standardisation of the amortizer's inputs and outputs, and the out-of-distribution check.

Parameters are standardised by their prior-predictive mean and standard
deviation inside the flow; data by the layout's robust centre and scale
(:meth:`~pymc_ext.amortized.layout.DataLayout.fit_standardization`); the
deep-set summary also centres ``log N``. After training, the range of the
summaries seen in training is kept: data whose summaries fall well outside it
(or whose ``N`` is outside the training range) draw an
:class:`~pymc_ext.amortized.diagnostics.AmortizedDataWarning`.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from pymc_ext.amortized.diagnostics import AmortizedDataWarning
from pymc_ext.amortized.layout import DataLayout

__all__ = [
    "OOD_MARGIN",
    "fit_standardization",
    "out_of_distribution_messages",
    "warn_out_of_distribution",
]

OOD_MARGIN = 0.25  # a summary this far (fraction of the training range) outside warns
MIN_LOG_N_SCALE = 0.5


def fit_standardization(
    amortizer: Any, theta: np.ndarray, values: np.ndarray, lengths: np.ndarray | None
) -> None:
    """Fit the layout's, the flow's and (deep sets) the summary's standardisation.

    Parameters
    ----------
    amortizer : Amortizer
        Its ``layout``, ``flow``, ``summary_net`` and ``summary_kind`` are used.
    theta : ndarray, shape (n, dim)
        Simulated parameters.
    values, lengths
        Raw simulated data (see :func:`~pymc_ext.amortized.simulation.simulate`).

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> from pymc_ext.amortized.standardize import fit_standardization
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> a = pymc_ext.Amortizer(model)
    >>> fit_standardization(a, np.array([[1.0], [3.0]]), np.zeros((2, 3)), None)
    >>> a.flow.theta_mean.tolist()
    [2.0]
    """
    amortizer.layout.fit_standardization(values, lengths)
    centre, scale = theta.mean(axis=0), theta.std(axis=0)
    if amortizer.flow.framed:
        # frame coordinates: about standard normal, with a few datasets whose frame is poor
        # far out; their moments would set the scale for all (robust centre and scale instead)
        q25, centre, q75 = np.percentile(theta, [25, 50, 75], axis=0)
        scale = np.where(q75 - q25 > 1e-8, (q75 - q25) / 1.349, np.maximum(scale, 1e-8))
    amortizer.flow.set_standardization(
        torch.as_tensor(centre, dtype=torch.float32),
        torch.as_tensor(scale, dtype=torch.float32),
    )
    if amortizer.summary_kind == "deepset" and lengths is not None:
        log_n = np.log(lengths)
        amortizer.summary_net.log_n_center.fill_(float(log_n.mean()))
        amortizer.summary_net.log_n_scale.fill_(float(max(log_n.std(), MIN_LOG_N_SCALE)))


def out_of_distribution_messages(
    ctx: np.ndarray,
    lengths: np.ndarray | None,
    layout: DataLayout,
    summary_range: np.ndarray | None,
) -> list[str]:
    """What is unlike the training data: ``N`` outside its range, summaries far outside theirs.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.amortized.layout import DataLayout
    >>> from pymc_ext.amortized.standardize import out_of_distribution_messages
    >>> layout = DataLayout("vector", ["y"], {"y": (1,)})
    >>> out_of_distribution_messages(np.array([[0.5], [9.0]]), None, layout,
    ...                              np.array([[0.0], [1.0]]))
    ['1 dataset(s) have summaries outside the range seen in training (e.g. dataset 1)']
    """
    messages = []
    if lengths is not None and layout.n_range is not None:
        lo, hi = layout.n_range
        outside = np.flatnonzero((lengths < lo) | (lengths > hi))
        if len(outside):
            messages.append(
                f"{len(outside)} dataset(s) have N outside the training range [{lo}, {hi}] "
                f"(e.g. N = {int(lengths[outside[0]])})"
            )
    if summary_range is not None and ctx.shape[0]:
        low, high = summary_range
        margin = OOD_MARGIN * np.maximum(high - low, 1e-6)
        far = (ctx < low - margin) | (ctx > high + margin)
        bad = np.flatnonzero(far.any(axis=1))
        if len(bad):
            messages.append(
                f"{len(bad)} dataset(s) have summaries outside the range seen in training "
                f"(e.g. dataset {int(bad[0])})"
            )
    return messages


def warn_out_of_distribution(
    ctx: torch.Tensor,
    lengths: np.ndarray | None,
    layout: DataLayout,
    summary_range: np.ndarray | None,
    stacklevel: int,
) -> None:
    """Warn with :class:`AmortizedDataWarning` when data are unlike the training simulations.

    Examples
    --------
    >>> import numpy as np, torch, warnings
    >>> from pymc_ext.amortized.layout import DataLayout
    >>> from pymc_ext.amortized.standardize import warn_out_of_distribution
    >>> layout = DataLayout("vector", ["y"], {"y": (1,)})
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_out_of_distribution(torch.tensor([[9.0]]), None, layout,
    ...                              np.array([[0.0], [1.0]]), stacklevel=2)
    >>> len(caught)
    1
    """
    messages = out_of_distribution_messages(ctx.cpu().numpy(), lengths, layout, summary_range)
    if messages:
        warnings.warn(
            "Data unlike the training simulations: " + "; ".join(messages) + ". Amortized "
            "posteriors there are extrapolations: check the Pareto k (and use correct='psis' "
            "or pymc_ext.AmortizedMH), or retrain with a prior / covariate_sampler that "
            "covers such data.",
            AmortizedDataWarning,
            stacklevel=stacklevel + 1,
        )
