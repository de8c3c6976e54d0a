"""Normalizing flows on the unconstrained space of a :class:`~pymc_ext.density.LogDensity`.

The flows themselves come from `zuko <https://github.com/probabilists/zuko>`_
(PyTorch): a neural spline flow (``zuko.flows.NSF``) by default, with sizes
chosen from the dimension, or zuko's MAF / RealNVP. Nothing here re-implements
a flow layer. What this module adds around zuko:

- :class:`StandardizedFlow`: the zuko flow acts on ``z = L^{-1} (x - m)``, where
  ``m`` and ``L L^T`` are a mean and covariance (for example from Pathfinder),
  so the spline domain ``[-5, 5]`` covers the posterior whatever its scale.
- :func:`fit_forward_kl`: maximum likelihood on samples (forward KL), with a
  validation split and early stopping.
- :func:`fit_reverse_kl`: the ELBO from the density alone (reverse KL), with
  the reparameterisation gradient through the density's own gradient.
- Both fits share one training loop: a tqdm progress bar, a seed, early
  stopping, and a guard against non-finite losses that restarts from the best
  weights with a smaller learning rate and, if that keeps failing, raises
  :class:`FlowFitError` saying what to try.
- :func:`flow_init`: Pathfinder, then a flow fitted both ways, then
  Pareto-smoothed importance resampling against the true density. This is
  what ``WarmStartNUTS(init="flow")`` starts chains from.

Torch runs on the GPU when it sees one, else on the CPU.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
import zuko
from tqdm.auto import tqdm

from pymc_ext.density import LogDensity

__all__ = [
    "FlowFitError",
    "FlowConfig",
    "default_flow_config",
    "torch_device",
    "StandardizedFlow",
    "build_flow",
    "FitInfo",
    "fit_forward_kl",
    "fit_reverse_kl",
    "fit_flow",
    "SeedResult",
    "pathfinder_seed",
    "FlowInitResult",
    "flow_init",
]

FLOW_FORMAT = "pymc_ext.flow"
FLOW_FORMAT_VERSION = 1


class FlowFitError(RuntimeError):
    """Fitting a flow failed (non-finite losses that restarts did not cure, or bad input)."""


# -- construction --------------------------------------------------------------------------


@dataclass
class FlowConfig:
    """Which zuko flow to build and how big.

    Attributes
    ----------
    kind : {"nsf", "maf", "realnvp"}
        ``zuko.flows.NSF`` (neural spline flow, the default), ``zuko.flows.MAF``
        (affine autoregressive) or ``zuko.flows.RealNVP`` (affine coupling).
    transforms : int
        Number of flow transformations.
    hidden_features : tuple of int
        Widths of the hidden layers of each transformation's network.
    bins : int
        Spline bins (NSF only).
    passes : int or None
        2 gives coupling transformations (one network pass to sample *and* to
        evaluate, the right trade for MCMC proposals); None gives fully
        autoregressive ones (``dim`` passes to sample). Not used by RealNVP.
    base : {"normal", "student"}
        Base distribution: standard normal (zuko's default) or independent
        Student-t with ``base_df`` degrees of freedom (heavier tails, for
        heavy-tailed posteriors; outside the splines' ``[-5, 5]`` the flow's
        tails are the base's).
    base_df : float
        Degrees of freedom of the Student-t base.

    Examples
    --------
    >>> from pymc_ext.flows import FlowConfig
    >>> FlowConfig(transforms=2, hidden_features=(32, 32)).kind
    'nsf'
    """

    kind: str = "nsf"
    transforms: int = 4
    hidden_features: tuple[int, ...] = (64, 64)
    bins: int = 8
    passes: int | None = 2
    base: str = "normal"
    base_df: float = 5.0

    def __post_init__(self) -> None:
        if self.kind not in ("nsf", "maf", "realnvp"):
            raise ValueError(
                f"Unknown flow kind {self.kind!r}: use 'nsf' (neural spline flow, default), "
                "'maf' or 'realnvp'."
            )
        if int(self.transforms) < 1:
            raise ValueError(f"transforms must be >= 1, got {self.transforms}.")
        self.transforms = int(self.transforms)
        self.hidden_features = tuple(int(h) for h in self.hidden_features)
        if not self.hidden_features or min(self.hidden_features) < 1:
            raise ValueError(
                f"hidden_features must be positive widths, got {self.hidden_features}."
            )
        self.bins = int(self.bins)
        if self.base not in ("normal", "student"):
            raise ValueError(f"base must be 'normal' or 'student', got {self.base!r}.")
        self.base_df = float(self.base_df)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (for saving)."""
        d = asdict(self)
        d["hidden_features"] = list(self.hidden_features)
        return d


def default_flow_config(dim: int, **overrides: Any) -> FlowConfig:
    """Flow sizes chosen from the dimension: a coupling neural spline flow.

    Four transformations from 3 to 20 dimensions, three otherwise (spline
    coupling layers are costly on a CPU, and measured on a 50-dimensional
    mixture, three fitted as well as five); two hidden layers of width 64 up
    to 64 dimensions, 128 up to 200, 256 beyond.

    Parameters
    ----------
    dim : int
        Number of unconstrained parameters.
    **overrides
        Any :class:`FlowConfig` field.

    Examples
    --------
    >>> from pymc_ext.flows import default_flow_config
    >>> default_flow_config(10).hidden_features
    (64, 64)
    >>> default_flow_config(50).transforms
    3
    """
    dim = int(dim)
    transforms = 3 if dim < 3 or dim > 20 else 4
    width = 64 if dim <= 64 else (128 if dim <= 200 else 256)
    config = {"kind": "nsf", "transforms": transforms, "hidden_features": (width, width)}
    config.update(overrides)
    return FlowConfig(**config)


def torch_device() -> torch.device:
    """The device flows are put on: the first CUDA GPU when torch sees one, else the CPU.

    Examples
    --------
    >>> from pymc_ext.flows import torch_device
    >>> torch_device().type in ("cpu", "cuda")
    True
    """
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _student_t_base(df: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor):
    return torch.distributions.Independent(torch.distributions.StudentT(df, loc, scale), 1)


def _zuko_flow(dim: int, config: FlowConfig) -> zuko.flows.Flow:
    flow = _zuko_flow_normal_base(dim, config)
    if config.base == "student":
        flow.base = zuko.flows.UnconditionalDistribution(
            _student_t_base,
            torch.full((dim,), config.base_df),
            torch.zeros(dim),
            torch.ones(dim),
            buffer=True,
        )
    return flow


def _zuko_flow_normal_base(dim: int, config: FlowConfig) -> zuko.flows.Flow:
    hidden = config.hidden_features
    if config.kind == "nsf":
        return zuko.flows.NSF(
            features=dim,
            transforms=config.transforms,
            bins=config.bins,
            passes=config.passes,
            hidden_features=hidden,
        )
    if config.kind == "maf":
        return zuko.flows.MAF(
            features=dim,
            transforms=config.transforms,
            passes=config.passes,
            hidden_features=hidden,
        )
    if dim < 2:
        raise ValueError("RealNVP needs at least 2 dimensions; use kind='nsf' for 1-D targets.")
    return zuko.flows.RealNVP(features=dim, transforms=config.transforms, hidden_features=hidden)


def _seed_int(random_seed: int | np.random.Generator | None) -> int:
    return int(np.random.default_rng(random_seed).integers(2**31 - 1))


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
        flow = build_flow(int(blob["dim"]), config=config)
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
    scale_tril = _safe_cholesky(np.eye(dim) if covariance is None else covariance, dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed_int(random_seed))
        zflow = _zuko_flow(dim, config)
    flow = StandardizedFlow(zflow, mean, scale_tril, config)
    return flow.to(device if device is not None else torch_device())


def _safe_cholesky(covariance: np.ndarray, dim: int) -> np.ndarray:
    cov = np.asarray(covariance, dtype=float)
    if cov.ndim == 1:
        cov = np.diag(cov)
    if cov.shape != (dim, dim):
        raise ValueError(f"covariance must be ({dim}, {dim}) or ({dim},), got {cov.shape}.")
    if not np.all(np.isfinite(cov)):
        raise ValueError("covariance has non-finite entries; pass a finite covariance or None.")
    cov = 0.5 * (cov + cov.T)
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        vals, vecs = np.linalg.eigh(cov)
        floor = max(1e-8, 1e-8 * float(np.max(np.abs(vals))))
        warnings.warn(
            "The standardisation covariance is not positive definite; eigenvalues were floored "
            f"at {floor:.2g}.",
            stacklevel=3,
        )
        cov = (vecs * np.maximum(vals, floor)) @ vecs.T
        return np.linalg.cholesky(0.5 * (cov + cov.T))


# -- training --------------------------------------------------------------------------------


class FitInfo(NamedTuple):
    """What a flow fit did.

    Attributes
    ----------
    losses : ndarray
        Training loss at every step of the final attempt.
    monitor : ndarray
        Validation loss (forward KL) or smoothed training loss (reverse KL)
        at each check; early stopping watches this.
    steps : int
        Optimiser steps in the final attempt.
    restarts : int
        Restarts after a non-finite loss (each with a smaller learning rate).
    learning_rate : float
        Learning rate of the final attempt.
    stopped_early : bool
        Whether early stopping ended the fit.
    best : float
        Best value of ``monitor`` (its weights are the ones kept).
    grad_evals : int
        Density gradient evaluations (reverse KL; 0 for forward KL).
    seconds : float
        Wall time.
    """

    losses: np.ndarray
    monitor: np.ndarray
    steps: int
    restarts: int
    learning_rate: float
    stopped_early: bool
    best: float
    grad_evals: int
    seconds: float


class _NonFiniteLoss(Exception):
    pass


def _train(
    flow: StandardizedFlow,
    loss_fn: Callable[[int], torch.Tensor],
    monitor_fn: Callable[[list[float]], float] | None,
    max_steps: int,
    learning_rate: float,
    patience: int,
    check_every: int,
    max_restarts: int,
    progressbar: bool,
    desc: str,
    min_steps: int = 0,
    max_grad_norm: float = 10.0,
) -> FitInfo:
    """Adam on ``loss_fn`` with early stopping on ``monitor_fn`` and a NaN guard.

    ``monitor_fn=None`` watches the running mean of the last ``check_every`` losses.
    """
    max_steps, patience, check_every = int(max_steps), int(patience), int(check_every)
    max_restarts, min_steps = int(max_restarts), int(min_steps)
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}.")
    if monitor_fn is None:

        def monitor_fn(losses: list[float]) -> float:
            return float(np.mean(losses[-check_every:]))
    start_time = time.perf_counter()
    restart_state = copy.deepcopy(flow.state_dict())
    lr = float(learning_rate)
    failures: list[str] = []
    for attempt in range(max_restarts + 1):
        flow.load_state_dict(restart_state)
        flow.train()
        optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
        best = math.inf
        best_state = copy.deepcopy(flow.state_dict())
        since_best = 0
        losses: list[float] = []
        monitor: list[float] = []
        stopped_early = False
        bar = tqdm(
            total=max_steps,
            desc=desc if attempt == 0 else f"{desc} (restart {attempt}, lr={lr:.1e})",
            disable=not progressbar,
            leave=False,
        )
        try:
            for step in range(max_steps):
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(step)
                if not torch.isfinite(loss):
                    raise _NonFiniteLoss(f"loss {loss.item()} at step {step}")
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(flow.parameters(), max_grad_norm)
                if not torch.isfinite(grad_norm):
                    raise _NonFiniteLoss(f"non-finite gradient at step {step}")
                optimizer.step()
                losses.append(float(loss.detach()))
                bar.update(1)
                if (step + 1) % check_every == 0 or step + 1 == max_steps:
                    value = float(monitor_fn(losses))
                    if not math.isfinite(value):
                        raise _NonFiniteLoss(f"monitored loss {value} at step {step}")
                    monitor.append(value)
                    bar.set_postfix(loss=f"{value:.4g}")
                    if not math.isfinite(best) or value < best - 1e-4 * max(1.0, abs(best)):
                        best, since_best = value, 0
                        best_state = copy.deepcopy(flow.state_dict())
                    else:
                        since_best += 1
                        if since_best >= patience and step + 1 >= min_steps:
                            stopped_early = True
                            break
        except _NonFiniteLoss as err:
            bar.close()
            failures.append(f"attempt {attempt + 1} (lr={lr:.2g}): {err}")
            if math.isfinite(best):
                restart_state = best_state
            lr *= 0.2
            continue
        bar.close()
        flow.load_state_dict(best_state)
        flow.eval()
        return FitInfo(
            losses=np.asarray(losses),
            monitor=np.asarray(monitor),
            steps=len(losses),
            restarts=attempt,
            learning_rate=lr,
            stopped_early=stopped_early,
            best=best,
            grad_evals=0,
            seconds=time.perf_counter() - start_time,
        )
    flow.load_state_dict(restart_state)
    flow.eval()
    raise FlowFitError(
        f"Fitting the flow gave non-finite losses {max_restarts + 1} times, the learning rate "
        f"going down to {lr / 0.2:.2g}: " + "; ".join(failures) + ". What to try: check that the "
        "log density is finite near the draws (a NaN in the model shows up here first), "
        "standardise with a better mean/covariance (e.g. from Pathfinder), pass a smaller "
        "learning_rate, or use a smaller flow (fewer transforms, kind='realnvp')."
    )


def _as_tensor(flow: StandardizedFlow, X: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(X, dtype=np.float64), dtype=flow.dtype).to(flow.device)


def fit_forward_kl(
    flow: StandardizedFlow,
    samples: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    max_steps: int = 2000,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    validation_fraction: float = 0.1,
    patience: int = 10,
    check_every: int | None = None,
    min_steps: int = 0,
    max_restarts: int = 3,
    random_seed: int | np.random.Generator | None = None,
    progressbar: bool = True,
    desc: str = "flow: forward KL",
) -> FitInfo:
    """Fit ``flow`` to samples by maximum likelihood (forward KL), in place.

    Parameters
    ----------
    flow : StandardizedFlow
    samples : ndarray, shape (n, dim)
        Draws from (an approximation of) the target.
    weights : ndarray, shape (n,), optional
        Non-negative importance weights (weighted maximum likelihood).
    max_steps : int
        Most optimiser steps.
    batch_size : int
        Minibatch size.
    learning_rate : float
        Adam's learning rate (cut by 5 at each restart after a non-finite loss).
    validation_fraction : float
        Share of the samples held out; early stopping watches their loss.
        With fewer than 32 held-out samples, a running mean of the training
        loss is watched instead.
    patience : int
        Checks without improvement before stopping.
    check_every : int, optional
        Steps between checks (default: about one pass over the data).
    min_steps : int
        Do not stop early before this many steps.
    max_restarts : int
        Restarts allowed after non-finite losses before :class:`FlowFitError`.
    random_seed : int or Generator, optional
        Seeds the split and the minibatches.
    progressbar : bool
        Show a tqdm bar.
    desc : str
        Progress bar label.

    Returns
    -------
    FitInfo
        The flow keeps the weights with the best validation loss.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flows import build_flow, fit_forward_kl
    >>> rng = np.random.default_rng(0)
    >>> samples = rng.normal(2.0, 0.5, size=(512, 2))
    >>> flow = build_flow(2, mean=samples.mean(0), covariance=np.cov(samples.T),
    ...                   transforms=2, hidden_features=(16, 16), random_seed=0)
    >>> info = fit_forward_kl(flow, samples, max_steps=100, random_seed=0, progressbar=False)
    >>> x, _ = flow.sample(2000, rng)
    >>> bool(abs(x.mean() - 2.0) < 0.1)
    True
    """
    X = np.asarray(samples, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != flow.dim:
        raise ValueError(f"samples must have shape (n, {flow.dim}); got {X.shape}.")
    if X.shape[0] < 2:
        raise ValueError("forward KL needs at least 2 samples.")
    if not np.all(np.isfinite(X)):
        raise ValueError("samples contain NaN or inf; drop those rows first.")
    rng = np.random.default_rng(random_seed)
    w = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape[0] != X.shape[0] or np.any(w < 0) or not np.all(np.isfinite(w)) or w.sum() <= 0:
            raise ValueError("weights must be finite, non-negative, one per sample, not all zero.")
        w = w / w.mean()
    perm = rng.permutation(X.shape[0])
    n_val = int(round(validation_fraction * X.shape[0]))
    if n_val < 32:
        n_val = 0
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    X_t = _as_tensor(flow, X)
    w_t = None if w is None else torch.as_tensor(w, dtype=flow.dtype).to(flow.device)
    n_train = len(train_idx)
    batch_size = int(min(batch_size, n_train))
    if check_every is None:
        check_every = max(1, min(50, n_train // batch_size))

    def weighted_nll(idx: np.ndarray) -> torch.Tensor:
        idx_t = torch.as_tensor(idx, device=flow.device)
        logq = flow.log_prob(X_t[idx_t])
        if w_t is None:
            return -logq.mean()
        return -(w_t[idx_t] * logq).mean()

    def loss_fn(step: int) -> torch.Tensor:
        return weighted_nll(train_idx[rng.integers(0, n_train, size=batch_size)])

    def validation_nll(losses: list[float]) -> float:
        with torch.no_grad():
            return float(weighted_nll(val_idx))

    return _train(flow, loss_fn, validation_nll if n_val else None, max_steps, learning_rate,
                  patience, check_every, max_restarts, progressbar, desc, min_steps)


class _DensityLogp(torch.autograd.Function):
    """``log p(x)`` of a numpy LogDensity as a torch function (gradient from the density)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, density: LogDensity) -> torch.Tensor:  # type: ignore[override]
        X = x.detach().double().cpu().numpy()
        lp, grad = density.logp_and_grad_batch(X)
        bad = ~(np.isfinite(lp) & np.all(np.isfinite(grad), axis=1))
        grad = np.where(bad[:, None], 0.0, grad)
        ctx.save_for_backward(torch.as_tensor(grad, dtype=x.dtype, device=x.device))
        return torch.as_tensor(lp, dtype=x.dtype, device=x.device)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad_output.unsqueeze(-1) * grad, None


def density_logp_torch(density: LogDensity, x: torch.Tensor) -> torch.Tensor:
    """``log p`` at the rows of ``x``, differentiable in torch through the density's gradient.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flows import density_logp_torch
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x)
    >>> x = torch.ones(3, 2, requires_grad=True)
    >>> density_logp_torch(d, x).sum().backward()
    >>> x.grad[0].tolist()
    [-1.0, -1.0]
    """
    return _DensityLogp.apply(x, density)


def fit_reverse_kl(
    flow: StandardizedFlow,
    density: LogDensity,
    *,
    max_steps: int = 1000,
    batch_size: int | None = None,
    learning_rate: float = 1e-3,
    patience: int = 10,
    check_every: int = 25,
    min_steps: int = 0,
    max_restarts: int = 3,
    random_seed: int | np.random.Generator | None = None,
    progressbar: bool = True,
    desc: str = "flow: reverse KL",
) -> FitInfo:
    """Fit ``flow`` to the density alone by maximising the ELBO (reverse KL), in place.

    The loss is ``mean(log q(x) - log p(x))`` over reparameterised draws
    ``x ~ q``; its gradient flows through the density's own gradient
    (``logp_and_grad_batch``), so any :class:`~pymc_ext.density.LogDensity`
    works. Draws where the density is not finite are left out of the loss;
    when more than half are, the step counts as non-finite (and the NaN
    guard restarts with a smaller learning rate).

    Reverse KL is mode-seeking: on its own it can settle on one mode of a
    multimodal posterior. Start it from a forward-KL fit on draws that cover
    the modes (:func:`fit_flow` with ``method="both"``), and check the result
    with importance weights (:func:`flow_init` reports the Pareto k).

    Parameters
    ----------
    flow : StandardizedFlow
    density : LogDensity
    max_steps : int
        Most optimiser steps (each costs ``batch_size`` gradient evaluations).
    batch_size : int, optional
        Draws per step; default from the dimension (64 to 256).
    learning_rate, patience, check_every, min_steps, max_restarts, progressbar, desc
        As in :func:`fit_forward_kl`; early stopping watches the running mean
        of the loss over the last ``check_every`` steps.
    random_seed : int or Generator, optional
        Seeds the base draws.

    Returns
    -------
    FitInfo
        ``best`` is the best running mean of ``-ELBO`` (a lower bound on
        ``-log Z``); ``grad_evals`` counts density gradients.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flows import build_flow, fit_reverse_kl
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * ((x - 1) ** 2).sum(),
    ...                        grad_fn=lambda x: -(x - 1),
    ...                        logp_batch_fn=lambda X: -0.5 * ((X - 1) ** 2).sum(1),
    ...                        grad_batch_fn=lambda X: -(X - 1))
    >>> flow = build_flow(2, transforms=2, hidden_features=(16, 16), random_seed=0)
    >>> info = fit_reverse_kl(flow, d, max_steps=200, random_seed=0, progressbar=False)
    >>> x, _ = flow.sample(4000, np.random.default_rng(1))
    >>> bool(np.all(np.abs(x.mean(0) - 1) < 0.15))
    True
    """
    if getattr(density, "dim", None) != flow.dim:
        raise ValueError(
            f"The flow has dim {flow.dim} but the density has dim {getattr(density, 'dim', None)}."
        )
    if batch_size is None:
        batch_size = int(np.clip(16 * flow.dim, 64, 256))
    noise_rng = np.random.default_rng(random_seed)
    grad_before = int(getattr(density, "grad_evals", 0))

    def loss_fn(step: int) -> torch.Tensor:
        noise = flow.base_noise(batch_size, noise_rng)
        x, logq = flow.rsample_and_log_prob(noise=noise)
        logp = density_logp_torch(density, x)
        good = torch.isfinite(logp) & torch.isfinite(logq)
        if int(good.sum()) * 2 < batch_size:
            return torch.tensor(float("nan"), dtype=flow.dtype)
        return (logq[good] - logp[good]).mean()

    info = _train(flow, loss_fn, None, max_steps, learning_rate, patience, check_every,
                  max_restarts, progressbar, desc, min_steps)
    return info._replace(grad_evals=int(getattr(density, "grad_evals", 0)) - grad_before)


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
    if method not in ("auto", "forward", "reverse", "both"):
        raise ValueError(f"method must be 'auto', 'forward', 'reverse' or 'both', got {method!r}.")
    if method == "auto":
        method = "both" if samples is not None else "reverse"
    if method in ("forward", "both") and samples is None:
        raise ValueError(f"method={method!r} needs samples (draws covering the target).")
    rng = np.random.default_rng(random_seed)
    if samples is not None:
        samples = np.asarray(samples, dtype=float)
        if mean is None:
            mean = samples.mean(0)
        if covariance is None and samples.shape[0] > samples.shape[1]:
            covariance = np.cov(samples.T).reshape(density.dim, density.dim)
            covariance += 1e-6 * np.mean(np.diag(covariance)) * np.eye(density.dim)
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


# -- Pathfinder seeding ----------------------------------------------------------------------


@dataclass
class SeedResult:
    """Starting draws for flows and walkers, from multi-path Pathfinder (or its fallback).

    Attributes
    ----------
    draws : ndarray, shape (n, dim)
        Draws pooled over the paths, the same number from each path (not
        importance-resampled, so every mode a path found keeps its share).
    path_index : ndarray, shape (n,)
        Which path each draw came from.
    centers : ndarray, shape (n_paths, dim)
        Each path's centre (the mean of its normal approximation).
    path_scales : ndarray, shape (n_paths, dim)
        Each path's standard deviations (within-mode scales).
    mean, covariance : ndarray
        Mean and covariance of ``draws`` (the standardisation for flows).
    within_variance : ndarray, shape (dim,)
        Average of the per-path variances: a within-mode inverse metric.
    grad_evals : int
        Gradient evaluations spent.
    method : str
        ``"multipath_pathfinder"`` or ``"lbfgs_laplace"`` (the fallback).
    pathfinder : object
        The PathfinderResult, when Pathfinder ran.
    pareto_k : float
        Pathfinder's Pareto k (nan for the fallback).
    """

    draws: np.ndarray
    path_index: np.ndarray
    centers: np.ndarray
    path_scales: np.ndarray
    mean: np.ndarray
    covariance: np.ndarray
    within_variance: np.ndarray
    grad_evals: int
    method: str
    pathfinder: Any = None
    pareto_k: float = float("nan")
    path_ok: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


def _pooled_covariance(draws: np.ndarray) -> np.ndarray:
    """Covariance of seed draws (rows), with a tiny ridge so it always has full rank."""
    dim = draws.shape[1]
    covariance = np.cov(draws.T).reshape(dim, dim) if draws.shape[0] > 1 else np.eye(dim)
    return covariance + 1e-8 * max(1e-12, float(np.mean(np.diag(covariance)))) * np.eye(dim)


def _overdispersed_inits(
    density: LogDensity, num_paths: int, rng: np.random.Generator, init_scale: float
) -> np.ndarray:
    center = np.zeros(density.dim)
    ip = getattr(density, "initial_point", None)
    if callable(ip):
        try:
            center = np.asarray(ip(), dtype=float).reshape(density.dim)
        except Exception:  # noqa: BLE001 - any failure just means "start around zero"
            center = np.zeros(density.dim)
    # Overdispersed at several scales: paths cycle through init_scale, 2x and 4x, so a
    # mode whose basin does not reach the middle is still found by the wider starts.
    widths = init_scale * 2.0 ** (np.arange(num_paths) % 3)
    return center + widths[:, None] * rng.uniform(-1.0, 1.0, size=(num_paths, density.dim))


def _lbfgs_laplace_paths(
    density: LogDensity,
    num_paths: int,
    num_draws_per_path: int,
    rng: np.random.Generator,
    init_scale: float,
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[bool]]:
    """Fallback seeding: L-BFGS from overdispersed starts, then a Laplace-style normal."""
    from scipy.optimize import minimize

    inits = _overdispersed_inits(density, num_paths, rng, init_scale)
    draws, centers, scales, ok = [], [], [], []
    dim = density.dim
    for x0 in inits:

        def fg(x: np.ndarray) -> tuple[float, np.ndarray]:
            lp, g = density.logp_and_grad(x)
            if not np.isfinite(lp) or not np.all(np.isfinite(g)):
                return 1e300, np.zeros_like(x)
            return -lp, -g

        res = minimize(fg, x0, jac=True, method="L-BFGS-B", options={"maxiter": 500})
        x_opt = np.asarray(res.x, dtype=float)
        try:
            cov = np.asarray(res.hess_inv.todense(), dtype=float)
            cov = 0.5 * (cov + cov.T)
            chol = np.linalg.cholesky(cov + 1e-10 * np.eye(dim))
        except Exception:  # noqa: BLE001
            chol = np.eye(dim)
            cov = np.eye(dim)
        # Keep the normal sane when the L-BFGS memory says little about some directions.
        sd = np.sqrt(np.clip(np.diag(cov), 1e-12, None))
        draws.append(x_opt + rng.standard_normal((num_draws_per_path, dim)) @ chol.T)
        centers.append(x_opt)
        scales.append(sd)
        ok.append(bool(np.isfinite(-res.fun)))
    return draws, centers, scales, ok


def _path_draws_from_result(result: Any, num_paths: int) -> list[np.ndarray] | None:
    """Per-path (not resampled) draws from a PathfinderResult, where it exposes them."""
    paths = getattr(result, "paths", None)
    if paths is None:
        return None
    out = []
    for p in paths:
        if not getattr(p, "ok", True):
            continue
        d = getattr(p, "draws", None)
        if d is None:
            continue
        d = np.asarray(d, dtype=float)
        lp = getattr(p, "lp", None)
        good = np.all(np.isfinite(d), axis=1)
        if lp is not None:
            good &= np.isfinite(np.asarray(lp, dtype=float))
        if d.ndim == 2 and good.sum() >= 2:
            out.append(d[good])
    return out or None


def pathfinder_seed(
    density: LogDensity,
    *,
    num_paths: int = 16,
    num_draws: int = 1024,
    random_seed: int | np.random.Generator | None = None,
    init_scale: float = 2.0,
    pathfinder_kwargs: dict[str, Any] | None = None,
) -> SeedResult:
    """Overdispersed multi-path Pathfinder draws, pooled over paths, to seed flows and walkers.

    Each path starts from an overdispersed point: the density's initial point
    (when it has one) plus ``U(-s, s)`` per coordinate, where ``s`` cycles
    through ``init_scale``, ``2 * init_scale`` and ``4 * init_scale`` over the
    paths, so separate modes tend to get separate paths even when one wide
    mode's basin covers the middle. The draws are pooled with the
    same number from every path: unlike Pathfinder's importance resampling,
    this keeps every mode that any path found (the MCMC corrects the weights).

    Uses ``pymc_ext.pathfinder_core.multipath_pathfinder`` when it is
    available; otherwise L-BFGS from the same starts with a normal from the
    L-BFGS inverse Hessian (``method="lbfgs_laplace"``).

    Parameters
    ----------
    density : LogDensity
    num_paths : int
        Number of paths (starts).
    num_draws : int
        Total draws returned (split evenly over the paths).
    random_seed : int or Generator, optional
    init_scale : float
        Smallest half-width of the uniform jitter of the starts.
    pathfinder_kwargs : dict, optional
        Passed on to ``multipath_pathfinder`` (default ``maxiter=100`` per path).

    Returns
    -------
    SeedResult

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flows import pathfinder_seed
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x)
    >>> seed = pathfinder_seed(d, num_paths=2, num_draws=100, random_seed=0)
    >>> seed.draws.shape
    (100, 2)
    """
    if num_paths < 1:
        raise ValueError(f"num_paths must be >= 1, got {num_paths}.")
    rng = np.random.default_rng(random_seed)
    dim = density.dim
    grad_before = int(getattr(density, "grad_evals", 0))
    per_path = max(2, int(math.ceil(num_draws / num_paths)))
    result = None
    method = "lbfgs_laplace"
    path_draws: list[np.ndarray] | None = None
    pareto_k = float("nan")
    try:
        from pymc_ext.pathfinder_core import multipath_pathfinder  # type: ignore[import-not-found]
    except ImportError:
        multipath_pathfinder = None
    if multipath_pathfinder is not None:
        inits = _overdispersed_inits(density, num_paths, rng, init_scale)
        # maxiter: the best-ELBO iterate comes early; on funnels L-BFGS otherwise runs down
        # the neck for its whole budget, at a full ELBO evaluation per iteration.
        kwargs = {
            "num_paths": num_paths,
            "num_draws": num_draws,
            "num_draws_per_path": per_path,
            "maxiter": 100,
        }
        kwargs.update(pathfinder_kwargs or {})
        try:
            result = multipath_pathfinder(
                density, random_seed=rng, init=inits, **kwargs
            )
            path_draws = _path_draws_from_result(result, num_paths)
            if path_draws is None:
                draws_all = np.asarray(result.draws, dtype=float).reshape(-1, dim)
                path_draws = [draws_all]
            method = "multipath_pathfinder"
            pareto_k = float(np.max(np.atleast_1d(getattr(result, "pareto_k", np.nan))))
        except Exception as err:  # noqa: BLE001 - fall back, but say so
            warnings.warn(
                f"multi-path Pathfinder failed ({type(err).__name__}: {err}); seeding from "
                "L-BFGS + Laplace approximations instead.",
                stacklevel=2,
            )
            path_draws, result = None, None
    if path_draws is None:
        path_draws, centers, scales, ok = _lbfgs_laplace_paths(
            density, num_paths, per_path, rng, init_scale
        )
    else:
        centers = [d.mean(0) for d in path_draws]
        scales = [d.std(0) + 1e-12 for d in path_draws]
        ok = [True] * len(path_draws)
    # Drop paths whose draws are unusable, take the same number from each.
    keep = [i for i, d in enumerate(path_draws) if d.shape[0] >= 2 and np.all(np.isfinite(d))]
    if not keep:
        raise FlowFitError(
            "No Pathfinder path produced finite draws. Check that the log density is finite "
            "somewhere near the initial point (pass init_scale smaller, or fix the model)."
        )
    per = max(2, int(math.ceil(num_draws / len(keep))))
    chunks, index = [], []
    for i in keep:
        d = path_draws[i]
        sel = rng.choice(d.shape[0], size=per, replace=d.shape[0] < per)
        chunks.append(d[sel])
        index.append(np.full(per, i))
    draws = np.concatenate(chunks)
    path_index = np.concatenate(index)
    pick = rng.permutation(draws.shape[0])[:num_draws]
    draws, path_index = draws[pick], path_index[pick]
    mean = draws.mean(0)
    covariance = _pooled_covariance(draws)
    centers_a = np.asarray([centers[i] for i in keep])
    scales_a = np.asarray([scales[i] for i in keep])
    return SeedResult(
        draws=draws,
        path_index=path_index,
        centers=centers_a,
        path_scales=scales_a,
        mean=mean,
        covariance=covariance,
        within_variance=np.mean(scales_a**2, axis=0),
        grad_evals=int(getattr(density, "grad_evals", 0)) - grad_before,
        method=method,
        pathfinder=result,
        pareto_k=pareto_k,
        path_ok=np.asarray([ok[i] for i in keep], dtype=bool),
    )


# -- flow initialisation for NUTS -------------------------------------------------------------


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
    (ArviZ's PSIS) and resampled.

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
    grad_before = int(getattr(density, "grad_evals", 0))
    if seed is None:
        seed = pathfinder_seed(
            density, num_paths=num_paths, num_draws=max(1024, num_draws), random_seed=rng
        )
    fit_method = "both" if method == "auto" else method
    samples = seed.draws if fit_method in ("forward", "both") else None
    flow, infos = fit_flow(
        density,
        samples,
        method=fit_method,
        mean=seed.mean,
        covariance=seed.covariance,
        flow_kwargs=flow_kwargs,
        forward_kwargs=forward_kwargs,
        reverse_kwargs=reverse_kwargs,
        random_seed=rng,
        progressbar=progressbar,
    )
    from pymc_ext.pathfinder_core import psis_log_weights

    n_prop = int(num_proposals or max(4 * num_draws, 2000))
    proposals, logq = flow.sample(n_prop, rng)
    logp = density.logp_batch(proposals)
    logw = np.where(np.isfinite(logp), logp - logq, -np.inf)
    if not np.any(np.isfinite(logw)):
        raise FlowFitError(
            "The log density is -inf or NaN at every flow draw: the flow does not overlap the "
            "posterior. Check the model, or fit with method='forward' on draws from the posterior."
        )
    smoothed, pareto_k = psis_log_weights(logw)
    w = np.exp(smoothed - np.max(smoothed))
    w /= w.sum()
    idx = rng.choice(n_prop, size=num_draws, replace=True, p=w)
    mean = w @ proposals
    centred = proposals - mean
    covariance = (centred * w[:, None]).T @ centred
    if pareto_k > 0.7:
        warnings.warn(
            f"The flow's Pareto k against the density is {pareto_k:.2f} > 0.7: it misses part of "
            "the posterior, so its draws are fine as starting points but not as posterior draws. "
            "What to try: more fitting steps (forward_kwargs/reverse_kwargs max_steps), more "
            "Pathfinder paths, or pymc_ext.flow_mcmc for an exact local+global sampler.",
            stacklevel=2,
        )
    return FlowInitResult(
        draws=proposals[idx],
        mean=mean,
        covariance=covariance,
        inverse_metric_diag=np.clip(np.diag(covariance).copy(), 1e-10, None),
        grad_evals=int(getattr(density, "grad_evals", 0)) - grad_before,
        pareto_k=pareto_k,
        flow=flow,
        fit_info=infos,
        seed=seed,
        ess=float(1.0 / np.sum(w**2)),
    )
