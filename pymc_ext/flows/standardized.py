"""A zuko flow on standardised coordinates (:class:`StandardizedFlow`) and :func:`build_flow`.

The zuko flow acts on ``z = L^{-1} (x - m)``, where ``m`` and ``L L^T`` are a
mean and covariance (for example from Pathfinder), so the spline domain
``[-5, 5]`` covers the posterior whatever its scale.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import zuko

from pymc_ext.blocks.covariance import safe_cholesky
from pymc_ext.blocks.random import seed_int
from pymc_ext.blocks.torch_settings import torch_device
from pymc_ext.flows.config import (
    FLOW_FORMAT,
    FLOW_FORMAT_VERSION,
    FlowConfig,
    default_flow_config,
)
from pymc_ext.flows.construction import zuko_flow

__all__ = ["StandardizedFlow", "build_flow"]


class StandardizedFlow(torch.nn.Module):
    """A zuko flow on standardised coordinates: ``x = mean + L z`` with ``z ~ flow``.

    ``L`` is the Cholesky factor of a covariance (for example Pathfinder's), so
    the flow sees a posterior with roughly zero mean and unit scale, which is
    where zuko's splines (defined on ``[-5, 5]``) do their work.

    Parameters
    ----------
    flow : zuko.flows.Flow
        The flow on ``z``.
    mean : array_like, shape (dim,)
    scale_tril : array_like, shape (dim, dim)
        Lower-triangular ``L`` with a positive diagonal.
    config : FlowConfig, optional
        How ``flow`` was built (kept for saving and loading).

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flows import build_flow
    >>> flow = build_flow(3, mean=np.ones(3), covariance=4 * np.eye(3), random_seed=0)
    >>> x, logq = flow.sample(5, np.random.default_rng(0))
    >>> x.shape, bool(np.allclose(flow.log_prob_numpy(x), logq, atol=1e-4))
    ((5, 3), True)
    """

    def __init__(
        self,
        flow: zuko.flows.Flow,
        mean: np.ndarray | torch.Tensor,
        scale_tril: np.ndarray | torch.Tensor,
        config: FlowConfig | None = None,
    ) -> None:
        super().__init__()
        self.flow = flow
        mean_t = torch.as_tensor(np.asarray(mean, dtype=np.float64), dtype=torch.float32)
        tril_t = torch.as_tensor(np.asarray(scale_tril, dtype=np.float64), dtype=torch.float32)
        self.dim = int(mean_t.shape[0])
        if tril_t.shape != (self.dim, self.dim):
            raise ValueError(
                f"scale_tril must be ({self.dim}, {self.dim}), got {tuple(tril_t.shape)}"
            )
        self.register_buffer("mean", mean_t)
        self.register_buffer("scale_tril", tril_t)
        self.config = config

    # -- helpers -------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.mean.dtype

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def _log_det_scale(self) -> torch.Tensor:
        return torch.log(torch.diagonal(self.scale_tril)).sum()

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """``z = L^{-1} (x - mean)`` for rows of ``x``."""
        centred = (x - self.mean).unsqueeze(-1)
        return torch.linalg.solve_triangular(self.scale_tril, centred, upper=False).squeeze(-1)

    def unstandardize(self, z: torch.Tensor) -> torch.Tensor:
        """``x = mean + L z`` for rows of ``z``."""
        return self.mean + z @ self.scale_tril.T

    # -- densities and draws -------------------------------------------------------------
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log q(x)`` for rows of ``x`` (a tensor on this flow's device and dtype)."""
        return self.flow().log_prob(self.standardize(x)) - self._log_det_scale()

    def rsample_and_log_prob(
        self, n: int | None = None, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised draws and their ``log q``; ``noise`` is the base N(0, I) draw."""
        dist = self.flow()
        if noise is None:
            if n is None:
                raise ValueError("give n or noise")
            noise = dist.base.sample((n,)).to(self.dtype)
        z, ladj = dist.transform.inv.call_and_ladj(noise)
        logq = dist.base.log_prob(noise) - ladj - self._log_det_scale()
        return self.unstandardize(z), logq

    @torch.no_grad()
    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` draws (float64 ndarray, shape ``(n, dim)``) and their ``log q``.

        The base noise comes from the numpy ``rng``, so draws are reproducible
        from a numpy seed and do not touch torch's global random state.
        """
        noise = self.base_noise(int(n), rng)
        x, logq = self.rsample_and_log_prob(noise=noise)
        return x.double().cpu().numpy(), logq.double().cpu().numpy()

    def base_noise(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        """``n`` draws from the base distribution, made with the numpy ``rng``."""
        config = self.config
        if config is not None and config.base == "student":
            z = rng.standard_t(config.base_df, size=(n, self.dim))
        else:
            z = rng.standard_normal((n, self.dim))
        return torch.as_tensor(z, dtype=self.dtype).to(self.device)

    @torch.no_grad()
    def log_prob_numpy(self, X: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        """``log q`` at the rows of a numpy array (float64 out)."""
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        out = []
        for start in range(0, X.shape[0], batch_size):
            xb = torch.as_tensor(X[start : start + batch_size], dtype=self.dtype).to(self.device)
            out.append(self.log_prob(xb).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def frozen(self, dtype: torch.dtype = torch.float64) -> StandardizedFlow:
        """A detached copy for use as a fixed MCMC proposal (no gradients, ``dtype``)."""
        twin = copy.deepcopy(self).to(dtype=dtype)
        twin.eval()
        for p in twin.parameters():
            p.requires_grad_(False)
        return twin

    # -- saving ---------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Save weights and configuration (plain tensors + JSON-like dict).

        Load with :meth:`StandardizedFlow.load`, which uses
        ``torch.load(..., weights_only=True)``.
        """
        if self.config is None:
            raise ValueError(
                "Only flows built with build_flow (which records a config) can be saved."
            )
        torch.save(
            {
                "format": FLOW_FORMAT,
                "version": FLOW_FORMAT_VERSION,
                "zuko_version": zuko.__version__,
                "dim": self.dim,
                "config": self.config.to_dict(),
                "dtype": str(self.dtype).replace("torch.", ""),
                "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            },
            path,
        )

    @classmethod
    def load(cls, path: str) -> StandardizedFlow:
        """Load a flow written by :meth:`save` (safe: ``weights_only=True``).

        Examples
        --------
        >>> import os, tempfile, numpy as np
        >>> from pymc_ext.flows import StandardizedFlow, build_flow
        >>> flow = build_flow(2, random_seed=0)
        >>> path = os.path.join(tempfile.mkdtemp(), "flow.pt")
        >>> flow.save(path)
        >>> twin = StandardizedFlow.load(path)
        >>> x = np.zeros((1, 2))
        >>> bool(np.allclose(twin.log_prob_numpy(x), flow.log_prob_numpy(x)))
        True
        """
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != FLOW_FORMAT:
            raise ValueError(f"{path} is not a flow saved by pymc_ext (StandardizedFlow.save).")
        if int(blob.get("version", -1)) != FLOW_FORMAT_VERSION:
            raise ValueError(
                f"{path} was saved in flow format version {blob.get('version')}; this version "
                f"of pymc_ext reads version {FLOW_FORMAT_VERSION}. Refit the flow."
            )
        config = FlowConfig(**blob["config"])
        flow = build_flow(int(blob["dim"]), config=config, device="cpu")
        flow = flow.to(dtype=getattr(torch, blob.get("dtype", "float32")))
        flow.load_state_dict(blob["state_dict"])
        return flow.to(torch_device())


def build_flow(
    dim: int,
    *,
    mean: np.ndarray | None = None,
    covariance: np.ndarray | None = None,
    config: FlowConfig | None = None,
    random_seed: int | np.random.Generator | None = None,
    device: torch.device | str | None = None,
    **config_kwargs: Any,
) -> StandardizedFlow:
    """Build an untrained zuko flow on ``R^dim``, standardised by a mean and covariance.

    Parameters
    ----------
    dim : int
        Dimension (the density's ``dim``).
    mean, covariance : ndarray, optional
        Standardisation, for example a Pathfinder mean and covariance. Default
        zero and identity. A covariance that is not positive definite is
        regularised (eigenvalues floored) with a warning.
    config : FlowConfig, optional
        Default :func:`default_flow_config` ``(dim, **config_kwargs)``.
    random_seed : int or Generator, optional
        Seeds the network's initial weights (torch's global state is left as it was).
    device : optional
        Default :func:`torch_device`.
    **config_kwargs
        Fields of :class:`FlowConfig` (``kind``, ``transforms``,
        ``hidden_features``, ``bins``, ``passes``).

    Returns
    -------
    StandardizedFlow

    Examples
    --------
    >>> from pymc_ext.flows import build_flow
    >>> flow = build_flow(4, transforms=2, hidden_features=(16, 16), random_seed=1)
    >>> flow.config.transforms, flow.dim
    (2, 4)
    """
    dim = int(dim)
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}.")
    if config is None:
        config = default_flow_config(dim, **config_kwargs)
    elif config_kwargs:
        config = FlowConfig(**{**config.to_dict(), **config_kwargs})
    mean = np.zeros(dim) if mean is None else np.asarray(mean, dtype=float).reshape(dim)
    scale_tril = safe_cholesky(np.eye(dim) if covariance is None else covariance, dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_int(random_seed))
        zflow = zuko_flow(dim, config)
    flow = StandardizedFlow(zflow, mean, scale_tril, config)
    return flow.to(device if device is not None else torch_device())
