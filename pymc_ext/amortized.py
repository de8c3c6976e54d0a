"""Amortized fitting: train once on a model's prior predictive, then posteriors in milliseconds.

:class:`Amortizer` trains a summary network and a conditional neural spline
flow ``q(theta | y)`` by maximum likelihood on ``(theta, y)`` pairs simulated
from the model itself. After that, the posterior for a new dataset is one
pass through the networks. Because the model's true density is at hand, every
amortized posterior is checked against it:

- :meth:`Amortizer.sample` reports the Pareto k of the importance weights
  ``p(theta, y) / q(theta | y)`` for that dataset, and ``correct="psis"``
  importance-resamples the draws;
- :class:`pymc_ext.AmortizedMH` uses ``q`` as an independence proposal inside
  ``pm.sample``, which makes the result exact;
- :meth:`Amortizer.check_calibration` runs simulation-based calibration.

The pieces live in small modules: :mod:`pymc_ext.summary_nets`,
:mod:`pymc_ext.conditional_flow`, :mod:`pymc_ext.amortized_layout`,
:mod:`pymc_ext.amortized_targets`, :mod:`pymc_ext.amortized_diagnostics` and
:mod:`pymc_ext.calibration`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from pymc_ext.amortized_diagnostics import (
    PARETO_K_THRESHOLD,
    AmortizedDataWarning,
    importance_ess,
    importance_resample,
    psis_log_weights,
    warn_high_pareto_k,
)
from pymc_ext.amortized_layout import DataLayout
from pymc_ext.amortized_targets import make_target
from pymc_ext.calibration import CalibrationResult, simulation_based_calibration
from pymc_ext.conditional_flow import ConditionalFlow, torch_device, torch_threads
from pymc_ext.summary_nets import build_summary_net, check_summary_net

__all__ = [
    "AmortizedDraws",
    "Amortizer",
    "AmortizerMismatchError",
    "AmortizerNotFittedError",
    "TrainingHistory",
]

SAVE_FORMAT = "pymc_ext.amortizer"
SAVE_FORMAT_VERSION = 1
_LAYOUT_OF_SUMMARY = {
    "identity": "vector",
    "mlp": "vector",
    "deepset": "set",
    "gru": "series",
    "conv": "series",
}
_IDENTITY_MAX_FEATURES = 32
_OOD_MARGIN = 0.25  # a summary this far (fraction of the training range) outside warns


class AmortizerNotFittedError(RuntimeError):
    """The amortizer has to be trained (``.fit``) or loaded first."""


class AmortizerMismatchError(ValueError):
    """Saved weights do not belong to the model they are loaded into."""


def _epoch_batches(
    train_idx: np.ndarray, lengths: np.ndarray | None, batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """One epoch's mini-batches, in random order.

    For sets and series the shuffled indices are cut into windows of 32
    batches, each window is sorted by ``N`` before it is cut into batches, and
    the batches are shuffled: a batch then holds datasets of similar size, so
    little of its padded ``(batch, max N)`` input is padding.
    """
    order = train_idx[rng.permutation(len(train_idx))]
    if lengths is None:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    window = 32 * batch_size
    batches = []
    for j in range(0, len(order), window):
        chunk = order[j : j + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def _seed_int(random_seed: Any) -> int:
    if isinstance(random_seed, np.random.Generator):
        return int(random_seed.integers(2**31 - 1))
    return int(np.random.default_rng(random_seed).integers(2**31 - 1))


class _TorchSeed:
    """Seed torch's global generator inside a block and restore it afterwards."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.seed = seed
        self.devices = [device.index or 0] if device.type == "cuda" else []

    def __enter__(self) -> None:
        self._ctx = torch.random.fork_rng(devices=self.devices)
        self._ctx.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


class AmortizedDraws(NamedTuple):
    """Amortized draws as plain NumPy arrays (``return_inferencedata=False``).

    Attributes
    ----------
    posterior : dict
        ``name -> (draws, *shape)`` for :meth:`Amortizer.sample`, ``(dataset,
        draws, *shape)`` for :meth:`Amortizer.sample_many`, on the model's
        constrained scale.
    sample_stats : dict
        ``log_q`` (and ``log_p``, ``log_weight`` with diagnostics), per draw.
    diagnostics : dict
        ``pareto_k``, ``importance_ess`` (per dataset for ``sample_many``).

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> with pm.Model() as normal_mean:
    ...     pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(5))
    y
    >>> a = pymc_ext.Amortizer(normal_mean).fit(300, epochs=2, random_seed=1, progressbar=False)
    >>> out = a.sample({"y": np.ones(5)}, draws=100, return_inferencedata=False)
    >>> out.posterior["mu"].shape
    (100,)
    """

    posterior: dict[str, np.ndarray]
    sample_stats: dict[str, np.ndarray]
    diagnostics: dict[str, Any]


class TrainingHistory(dict):
    """Loss history and timings of :meth:`Amortizer.fit` (a dict with attribute access).

    Keys: ``train_loss`` and ``val_loss`` (per epoch, negative log q per
    simulation), ``best_epoch``, ``epochs_run``, ``stopped_early``,
    ``num_simulations``, ``num_dropped`` (non-finite simulations removed),
    ``simulation_seconds``, ``training_seconds``, ``device``.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err


def _with_threads(method: Callable) -> Callable:
    """Run an Amortizer method under its ``num_threads`` setting."""

    @functools.wraps(method)
    def wrapper(self: Amortizer, *args: Any, **kwargs: Any) -> Any:
        with torch_threads(getattr(self, "num_threads", None)):
            return method(self, *args, **kwargs)

    return wrapper


class Amortizer:
    """Amortized posterior estimation for a PyMC model or a Stan program.

    Parameters
    ----------
    model : pm.Model or LogDensity
        A PyMC model (the one in context by default), or a log density that
        follows the prior-predictive convention, such as
        ``stan_bridge.StanModel`` (``prior_predictive(n, seed)`` and
        ``with_data(data)``).
    observed : list of str, optional
        Observed variables to condition on (all by default).
    summary : str or torch.nn.Module
        ``"auto"`` (default), ``"identity"``, ``"mlp"``, ``"deepset"``
        (exchangeable rows, any ``N``), ``"gru"`` or ``"conv"`` (series), or
        your own module with ``forward(x, mask=None)`` and ``output_dim``
        (then say its input with ``data_layout``). ``"auto"`` picks
        ``"deepset"`` when a ``covariate_sampler`` varies the data, else
        ``"identity"`` for up to 32 data values and ``"mlp"`` beyond.
    covariates : list of str, optional
        PyMC only: ``pm.Data`` variables that change between datasets and
        are conditioned on (for example regressors).
    covariate_sampler : callable, optional
        PyMC only: ``rng -> {covariate: array}``, new covariates (and so new
        ``N``) for each block of simulations. See
        :class:`~pymc_ext.amortized_targets.PyMCTarget`.
    summary_kwargs : dict, optional
        Sizes of the built-in summary network (``output_dim``, ``hidden``).
    flow_kwargs : dict, optional
        Sizes of the flow (``transforms``, ``hidden_features``, ``bins``,
        ``autoregressive``); see :class:`~pymc_ext.conditional_flow.ConditionalFlow`.
    data_layout : {"vector", "set", "series"}, optional
        Only for a custom summary module: how data reach it.
    device : str or torch.device, optional
        Where the networks run; the GPU when torch sees one, else the CPU.
    num_threads : int or None
        Torch CPU threads while the amortizer trains or draws (restored
        afterwards). 1 by default: the networks are small, and extra threads
        slow them down on a busy machine. ``None`` leaves torch's setting.

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> with pm.Model() as model:
    ...     mu = pm.Normal("mu", 0, 1)
    ...     y = pm.Normal("y", mu, 1, observed=np.zeros(5))
    >>> amortizer = pymc_ext.Amortizer(model).fit(
    ...     num_simulations=500, epochs=3, random_seed=1, progressbar=False)
    >>> idata = amortizer.sample({"y": np.ones(5)}, draws=200, random_seed=2)
    >>> idata.posterior["mu"].shape
    (1, 200)
    >>> "pareto_k" in idata.posterior.attrs
    True
    """

    def __init__(
        self,
        model: Any = None,
        observed: Sequence[str] | None = None,
        summary: str | nn.Module = "auto",
        *,
        covariates: Sequence[str] | None = None,
        covariate_sampler: Callable[[np.random.Generator], Mapping[str, Any]] | None = None,
        summary_kwargs: Mapping[str, Any] | None = None,
        flow_kwargs: Mapping[str, Any] | None = None,
        data_layout: str | None = None,
        device: str | torch.device | None = None,
        num_threads: int | None = 1,
    ) -> None:
        self.num_threads = num_threads
        self.target = make_target(
            model, observed=observed, covariates=covariates, covariate_sampler=covariate_sampler
        )
        self.density = self.target.density
        self.dim = int(self.target.dim)
        self.device = torch.device(device) if device is not None else torch_device()
        current = self.target.current_data()
        names = self.target.data_names()
        self.summary_kwargs = dict(summary_kwargs or {})
        self.flow_kwargs = dict(flow_kwargs or {})

        # -- the summary network and the data layout it needs -------------------------------
        if isinstance(summary, nn.Module):
            check_summary_net(summary)
            self.summary_kind = "custom"
            layout_kind = data_layout or "vector"
        else:
            if summary == "auto":
                total = sum(int(np.size(current[n])) for n in names)
                if covariate_sampler is not None:
                    summary = "deepset"
                elif total <= _IDENTITY_MAX_FEATURES:
                    summary = "identity"
                else:
                    summary = "mlp"
            if summary not in _LAYOUT_OF_SUMMARY:
                raise ValueError(
                    f"summary={summary!r} is not one of 'auto', {sorted(_LAYOUT_OF_SUMMARY)} or "
                    "a torch.nn.Module."
                )
            self.summary_kind = summary
            layout_kind = _LAYOUT_OF_SUMMARY[summary]
            if data_layout is not None and data_layout != layout_kind:
                raise ValueError(
                    f"data_layout={data_layout!r} does not fit summary={summary!r} "
                    f"(which takes {layout_kind!r} data); data_layout is for custom modules."
                )
        if layout_kind == "vector":
            shapes = {n: np.shape(current[n]) for n in names}
        else:
            scalar = [n for n in names if np.ndim(current[n]) == 0]
            if scalar:
                raise ValueError(
                    f"{scalar} are scalars, but a {layout_kind} summary reads data as rows "
                    "(first axis = observations). Use summary='identity' or 'mlp'."
                )
            shapes = {n: np.shape(current[n])[1:] for n in names}
        self.layout = DataLayout(layout_kind, names, shapes)
        if isinstance(summary, nn.Module):
            self.summary_net = summary
        else:
            self.summary_net = self._build_summary(self.summary_kind, self.summary_kwargs)
        self.flow = ConditionalFlow(self.dim, self.summary_net.output_dim, **self.flow_kwargs)
        self.summary_net.to(self.device)
        self.flow.to(self.device)
        self.history: TrainingHistory | None = None
        self._summary_range: np.ndarray | None = None  # (2, output_dim): low, high
        self.fitted = False

    # -- construction helpers -------------------------------------------------------------------
    def _build_summary(self, kind: str, kwargs: Mapping[str, Any]) -> nn.Module:
        kwargs = dict(kwargs)
        if kind in ("identity", "mlp"):
            kwargs["input_dim"] = self.layout.num_features
            if kind == "identity":
                kwargs = {"input_dim": kwargs["input_dim"]}
        else:
            kwargs["feature_dim"] = self.layout.num_features
        if kind == "deepset":
            kwargs.setdefault("moments", True)
        return build_summary_net(kind, **kwargs)

    def __repr__(self) -> str:
        state = "fitted" if self.fitted else "not fitted"
        return (
            f"Amortizer({self.target.kind}, dim={self.dim}, data={self.layout.names} "
            f"({self.layout.kind}), summary={self.summary_kind}, {state})"
        )

    # -- simulation -----------------------------------------------------------------------------
    def _simulate(
        self, n: int, rng: np.random.Generator, progressbar: bool = False, desc: str = "simulating"
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
        """``n`` simulations as (theta, raw data values, lengths, number dropped)."""
        from tqdm.auto import tqdm

        chunk = getattr(self.target, "simulation_chunk", None) or int(n)
        chunk = max(1, min(int(n), chunk))
        blocks = []
        with tqdm(total=int(n), desc=desc, disable=not progressbar, leave=False) as bar:
            done = 0
            while done < n:
                k = min(chunk, n - done)
                for theta, data in self.target.simulate(k, rng):
                    values, lengths = self.layout.raw(data)
                    blocks.append((np.asarray(theta, dtype=float), values, lengths))
                done += k
                bar.update(k)
        theta = np.concatenate([b[0] for b in blocks])
        if self.layout.has_rows:
            n_max = max(b[1].shape[1] for b in blocks)
            values = np.zeros((theta.shape[0], n_max, self.layout.num_features))
            start = 0
            for _, v, _ in blocks:
                values[start : start + v.shape[0], : v.shape[1]] = v
                start += v.shape[0]
            lengths = np.concatenate([b[2] for b in blocks])
            finite = np.isfinite(values).all(axis=(1, 2))
        else:
            values = np.concatenate([b[1] for b in blocks])
            lengths = None
            finite = np.isfinite(values).all(axis=1)
        finite &= np.isfinite(theta).all(axis=1)
        dropped = int((~finite).sum())
        if dropped > 0.5 * len(finite):
            raise RuntimeError(
                f"{dropped} of {len(finite)} prior-predictive simulations are NaN or inf. The "
                "prior is too wide for the likelihood (overflow): use narrower priors."
            )
        keep = np.flatnonzero(finite)
        return theta[keep], values[keep], (lengths[keep] if lengths is not None else None), dropped

    # -- networks ------------------------------------------------------------------------------
    def _context(self, values: np.ndarray, lengths: np.ndarray | None) -> torch.Tensor:
        if lengths is not None and len(lengths):
            values = values[:, : int(lengths.max())]  # no all-padding columns
        x, mask = self.layout.to_tensors(values, lengths, device=self.device)
        return self.summary_net(x, mask)

    def _contexts_no_grad(
        self, values: np.ndarray, lengths: np.ndarray | None, batch: int = 4096
    ) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for i in range(0, values.shape[0], batch):
                out.append(
                    self._context(values[i : i + batch],
                                  None if lengths is None else lengths[i : i + batch])
                )
        return torch.cat(out) if out else torch.zeros(0, self.flow.context_dim)

    def _set_standardization(self, theta: np.ndarray, values: np.ndarray, lengths: Any) -> None:
        self.layout.fit_standardization(values, lengths)
        mean = theta.mean(axis=0)
        std = theta.std(axis=0)
        self.flow.set_standardization(
            torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        )
        if self.summary_kind == "deepset" and lengths is not None:
            log_n = np.log(lengths)
            self.summary_net.log_n_center.fill_(float(log_n.mean()))
            self.summary_net.log_n_scale.fill_(float(max(log_n.std(), 0.5)))

    def _nll(self, theta: torch.Tensor, values: np.ndarray, lengths: Any) -> torch.Tensor:
        """Mean ``-log q(theta | y)`` on the standardised parameter scale."""
        context = self._context(values, lengths)
        z = (theta - self.flow.theta_mean) / self.flow.theta_std
        return -self.flow.flow(context).log_prob(z).mean()

    # -- training ------------------------------------------------------------------------------
    @_with_threads
    def fit(
        self,
        num_simulations: int = 10_000,
        epochs: int = 200,
        batch_size: int = 256,
        validation_fraction: float = 0.1,
        random_seed: int | np.random.Generator | None = None,
        progressbar: bool = True,
        *,
        learning_rate: float = 1e-3,
        patience: int = 20,
        simulations_per_epoch: int = 0,
        max_seconds: float | None = None,
    ) -> Amortizer:
        """Train on simulations from the model's prior predictive.

        Parameters
        ----------
        num_simulations : int
            Stored simulation budget (training plus validation).
        epochs : int
            Most passes over the training set.
        batch_size : int
            Simulations per gradient step.
        validation_fraction : float
            Share of simulations held out for early stopping.
        random_seed : int or Generator, optional
            Seeds the simulations, the split, the initial weights and the batches.
        progressbar : bool
            Show progress bars (simulation, epochs).
        learning_rate : float
            Adam's initial learning rate (cosine-annealed over ``epochs``).
        patience : int
            Stop when the validation loss has not improved for this many epochs;
            the best weights are kept.
        simulations_per_epoch : int
            Simulate this many fresh pairs every epoch, replacing the oldest
            training pairs (on-the-fly simulation beyond the stored budget;
            cheap simulators make the flow less prone to over-fitting).
        max_seconds : float, optional
            Stop training after this long (the best weights so far are kept).

        Returns
        -------
        Amortizer
            ``self``, so ``Amortizer(model).fit(...)`` chains.
        """
        from tqdm.auto import tqdm

        if int(num_simulations) < 20:
            raise ValueError(f"num_simulations={num_simulations} is too few; use at least 1000.")
        if not 0.0 <= float(validation_fraction) < 1.0:
            raise ValueError("validation_fraction must be in [0, 1).")
        if int(epochs) < 1 or int(batch_size) < 1:
            raise ValueError("epochs and batch_size must be positive.")
        rng = np.random.default_rng(random_seed)
        torch_seed = _seed_int(rng)

        t0 = time.perf_counter()
        theta, values, lengths, dropped = self._simulate(int(num_simulations), rng, progressbar)
        sim_seconds = time.perf_counter() - t0
        n = theta.shape[0]
        if n < 10:
            raise RuntimeError("Fewer than 10 finite simulations: check the model's prior.")
        self._set_standardization(theta, values, lengths)

        perm = rng.permutation(n)
        n_val = int(round(validation_fraction * n)) if validation_fraction > 0 else 0
        n_val = min(max(n_val, 1 if validation_fraction > 0 else 0), n - 1)
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        dev = self.device
        theta_t = torch.as_tensor(theta, dtype=torch.float32, device=dev)

        params = list(self.summary_net.parameters()) + list(self.flow.parameters())
        t1 = time.perf_counter()
        history = TrainingHistory(
            train_loss=[], val_loss=[], best_epoch=0, epochs_run=0, stopped_early=False,
            num_simulations=int(num_simulations), num_dropped=dropped,
            simulation_seconds=sim_seconds, training_seconds=0.0, device=str(dev),
            simulations_per_epoch=int(simulations_per_epoch),
        )
        with _TorchSeed(torch_seed, dev):
            # fresh weights from the seed, so fit(random_seed=s) is reproducible
            for module in list(self.summary_net.modules()) + list(self.flow.modules()):
                if module is not self.summary_net and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
            optimizer = torch.optim.Adam(params, lr=learning_rate)
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(epochs))
            best = (math.inf, None, 0)
            bad_epochs = 0
            restarts = 0
            bar = tqdm(range(int(epochs)), desc="training", disable=not progressbar, leave=False)
            for epoch in bar:
                if simulations_per_epoch > 0 and epoch > 0:
                    theta_new, values_new, lengths_new, _ = self._simulate(
                        int(simulations_per_epoch), rng
                    )
                    theta_t, values, lengths, train_idx = self._replace_oldest(
                        theta_t, values, lengths, train_idx, theta_new, values_new, lengths_new
                    )
                self.summary_net.train()
                self.flow.train()
                total, count, finite = 0.0, 0, True
                for idx in _epoch_batches(train_idx, lengths, int(batch_size), rng):
                    loss = self._nll(
                        theta_t[idx], values[idx], None if lengths is None else lengths[idx]
                    )
                    if not torch.isfinite(loss):
                        finite = False
                        break
                    optimizer.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_(params, 5.0)
                    optimizer.step()
                    total += float(loss.detach()) * len(idx)
                    count += len(idx)
                if not finite:
                    restarts += 1
                    if restarts > 3 or best[1] is None:
                        raise RuntimeError(
                            "Training diverged (non-finite loss) repeatedly. Try a smaller "
                            "learning_rate, a larger batch_size, or narrower priors."
                        )
                    self._load_state(best[1])
                    for group in optimizer.param_groups:
                        group["lr"] *= 0.5
                    continue
                scheduler.step()
                train_loss = total / max(count, 1)
                val_loss = (
                    self._eval_loss(theta_t, values, lengths, val_idx) if n_val else train_loss
                )
                history["train_loss"].append(train_loss)
                history["val_loss"].append(val_loss)
                history["epochs_run"] = epoch + 1
                bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
                if val_loss < best[0] - 1e-4:
                    best = (val_loss, self._state(), epoch)
                    bad_epochs = 0
                else:
                    bad_epochs += 1
                if bad_epochs >= patience:
                    history["stopped_early"] = True
                    break
                if max_seconds is not None and time.perf_counter() - t1 > max_seconds:
                    history["stopped_early"] = True
                    break
            bar.close()
        if best[1] is not None:
            self._load_state(best[1])
        history["best_epoch"] = int(best[2])
        history["best_val_loss"] = float(best[0])
        history["training_seconds"] = time.perf_counter() - t1
        self.history = history
        self.summary_net.eval()
        self.flow.eval()
        # the range of summaries seen in training, for out-of-distribution warnings
        sub = train_idx[: min(len(train_idx), 4096)]
        ctx = self._contexts_no_grad(values[sub], None if lengths is None else lengths[sub])
        ctx_np = ctx.cpu().numpy()
        self._summary_range = np.stack([ctx_np.min(axis=0), ctx_np.max(axis=0)])
        self.fitted = True
        return self

    def _replace_oldest(
        self, theta_t, values, lengths, train_idx, theta_new, values_new, lengths_new
    ):
        """Swap the oldest training simulations for fresh ones (rolling window)."""
        k = min(len(theta_new), len(train_idx))
        if not hasattr(self, "_roll"):
            self._roll = 0
        slots = train_idx[(self._roll + np.arange(k)) % len(train_idx)]
        self._roll = (self._roll + k) % len(train_idx)
        theta_t = theta_t.clone()
        theta_t[slots] = torch.as_tensor(theta_new[:k], dtype=theta_t.dtype, device=theta_t.device)
        if lengths is not None:
            width = max(values.shape[1], values_new.shape[1])
            if width > values.shape[1]:
                padded = np.zeros((values.shape[0], width, values.shape[2]))
                padded[:, : values.shape[1]] = values
                values = padded
            else:
                values = values.copy()
            values[slots] = 0.0
            values[slots, : values_new.shape[1]] = values_new[:k]
            lengths = lengths.copy()
            lengths[slots] = lengths_new[:k]
        else:
            values = values.copy()
            values[slots] = values_new[:k]
        return theta_t, values, lengths, train_idx

    def _eval_loss(self, theta_t, values, lengths, idx, batch: int = 2048) -> float:
        self.summary_net.eval()
        self.flow.eval()
        total = 0.0
        with torch.no_grad():
            for i in range(0, len(idx), batch):
                j = idx[i : i + batch]
                total += float(self._nll(theta_t[j], values[j],
                                         None if lengths is None else lengths[j])) * len(j)
        return total / max(len(idx), 1)

    def _state(self) -> dict[str, dict[str, torch.Tensor]]:
        return {
            "summary": copy.deepcopy(self.summary_net.state_dict()),
            "flow": copy.deepcopy(self.flow.state_dict()),
        }

    def _load_state(self, state: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        self.summary_net.load_state_dict(state["summary"])
        self.flow.load_state_dict(state["flow"])

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise AmortizerNotFittedError(
                "This amortizer is not trained yet: call .fit(num_simulations=...) first, or "
                "Amortizer.load(path, model) for saved weights."
            )

    # -- drawing ---------------------------------------------------------------------------------
    def _prepare(self, datasets: Sequence[Mapping[str, Any]]) -> tuple[list[dict], torch.Tensor]:
        checked = [
            self.layout.check(d, where=f"datasets[{i}]" if len(datasets) > 1 else "data")
            for i, d in enumerate(datasets)
        ]
        values, lengths = self.layout.raw(checked)
        ctx = self._contexts_no_grad(values, lengths)
        self._warn_out_of_distribution(ctx, lengths)
        return checked, ctx

    def _warn_out_of_distribution(self, ctx: torch.Tensor, lengths: np.ndarray | None) -> None:
        messages = []
        if lengths is not None and self.layout.n_range is not None:
            lo, hi = self.layout.n_range
            outside = np.flatnonzero((lengths < lo) | (lengths > hi))
            if len(outside):
                messages.append(
                    f"{len(outside)} dataset(s) have N outside the training range [{lo}, {hi}] "
                    f"(e.g. N = {int(lengths[outside[0]])})"
                )
        if self._summary_range is not None and ctx.shape[0]:
            low, high = self._summary_range
            margin = _OOD_MARGIN * np.maximum(high - low, 1e-6)
            c = ctx.cpu().numpy()
            far = (c < low - margin) | (c > high + margin)
            bad = np.flatnonzero(far.any(axis=1))
            if len(bad):
                messages.append(
                    f"{len(bad)} dataset(s) have summaries outside the range seen in training "
                    f"(e.g. dataset {int(bad[0])})"
                )
        if messages:
            warnings.warn(
                "Data unlike the training simulations: " + "; ".join(messages) + ". Amortized "
                "posteriors there are extrapolations: check the Pareto k (and use correct='psis' "
                "or pymc_ext.AmortizedMH), or retrain with a prior / covariate_sampler that "
                "covers such data.",
                AmortizedDataWarning,
                stacklevel=6,  # _prepare, _posterior_draws, sample(_many), wrapper, caller
            )

    def _draw(
        self,
        ctx: torch.Tensor,
        draws: int,
        seed: int,
        max_rows: int | None = None,
        cores: int | None = 1,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``draws`` per context: theta ``(B, draws, dim)`` float64 and log q ``(B, draws)``.

        Contexts go in batches of about ``max_rows`` draws: 16 384 on a CPU,
        65 536 on a GPU. Each batch has its own generator, seeded from ``(seed,
        batch)``, so the draws do not depend on ``cores``: on the CPU the
        batches are spread over ``cores`` threads (torch releases the GIL in its
        kernels; ``None``: every CPU core). Eight schools, 1000 datasets x 1000
        draws on a quiet 2-core machine: one thread 7.9 s, two threads 4.1 s
        with 16 384-row batches and 4.9 s with 4096-row ones (fewer, larger
        operations leave the threads less time waiting for the GIL).
        """
        B = ctx.shape[0]
        fast = self.flow._fast_ok and not self.flow.training
        if max_rows is None:
            max_rows = 16_384 if self.device.type == "cpu" else 65_536
        per = max(1, max_rows // max(int(draws), 1))
        starts = list(range(0, B, per))

        def batch(j: int) -> tuple[np.ndarray, np.ndarray]:
            # the drawing path takes a seeded generator; zuko's path the (forked) global one
            state = np.random.SeedSequence([int(seed), j]).generate_state(1)[0]
            generator = torch.Generator(device=self.device).manual_seed(int(state))
            seeded = contextlib.nullcontext() if fast else _TorchSeed(int(state), self.device)
            # inference mode, not just no_grad: no version counters or view tracking,
            # about 12% less time per draw on these small tensors
            with torch.inference_mode(), seeded:
                i = starts[j]
                theta, log_q = self.flow.sample(int(draws), ctx[i : i + per], generator)
                return theta.double().cpu().numpy(), log_q.double().cpu().numpy()

        # threads only on the CPU drawing path (zuko's path seeds torch's global generator)
        workers = 1
        if fast and self.device.type == "cpu":
            workers = min((os.cpu_count() or 1) if cores is None else int(cores), len(starts))
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                out = list(pool.map(batch, range(len(starts))))
        else:
            out = [batch(j) for j in range(len(starts))]
        return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])

    @_with_threads
    def log_q(self, theta: np.ndarray, data: Mapping[str, Any] | None = None) -> np.ndarray:
        """``log q(theta_i | y)`` of the amortized posterior at one dataset.

        Parameters
        ----------
        theta : ndarray, shape (n, dim)
            Points on the unconstrained space.
        data : dict, optional
            The dataset (the model's own observed data by default).

        Returns
        -------
        ndarray, shape (n,)
        """
        self._check_fitted()
        data = self.target.current_data() if data is None else data
        _, ctx = self._prepare([data])
        theta_t = torch.as_tensor(np.atleast_2d(theta), dtype=torch.float32, device=self.device)
        with torch.no_grad():
            out = self.flow.log_prob(theta_t, ctx.expand(theta_t.shape[0], -1))
        return out.double().cpu().numpy()

    def _posterior_draws(
        self,
        datasets: list[Mapping[str, Any]],
        draws: int,
        random_seed: int | np.random.Generator | None,
        correct: str | None,
        diagnostics: bool,
        cores: int | None = 1,
    ) -> tuple[list[dict], np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Draws ``(B, draws, dim)``, per-draw stats and per-dataset Pareto k / ESS.

        The shared body of :meth:`sample` (``B = 1``) and :meth:`sample_many`.
        """
        self._check_fitted()
        if correct not in (None, "psis"):
            raise ValueError(f"correct must be None or 'psis', got {correct!r}.")
        rng = np.random.default_rng(random_seed)
        checked, ctx = self._prepare(datasets)
        theta, log_q = self._draw(ctx, int(draws), _seed_int(rng), cores=cores)
        stats: dict[str, np.ndarray] = {"log_q": log_q}
        diag: dict[str, np.ndarray] = {}
        if not (diagnostics or correct == "psis"):
            return checked, theta, stats, diag
        log_p = self.target.joint_logp_many(theta, checked)
        log_w, k = psis_log_weights(log_p - log_q)
        diag["pareto_k"] = np.atleast_1d(k)
        diag["importance_ess"] = np.atleast_1d(importance_ess(log_w))
        stats.update(log_p=log_p, log_weight=log_p - log_q)
        if len(checked) == 1:
            # stack: here, sample, its thread wrapper, the caller
            warn_high_pareto_k(
                float(diag["pareto_k"][0]), corrected=correct == "psis", stacklevel=5
            )
        else:
            bad = np.flatnonzero(diag["pareto_k"] > PARETO_K_THRESHOLD)
            if len(bad):
                warnings.warn(
                    f"{len(bad)} of {len(checked)} datasets have Pareto k > "
                    f"{PARETO_K_THRESHOLD} (e.g. datasets {bad[:5].tolist()}): their amortized "
                    "posteriors do not match the true ones. Sample those with "
                    "pymc_ext.AmortizedMH or pm.sample; if many, retrain with more simulations.",
                    AmortizedDataWarning,
                    stacklevel=4,
                )
        if correct == "psis":
            idx = np.stack([importance_resample(lw, int(draws), rng) for lw in log_w])
            theta = np.take_along_axis(theta, idx[..., None], axis=1)
            stats = {key: np.take_along_axis(v, idx, axis=1) for key, v in stats.items()}
        return checked, theta, stats, diag

    @_with_threads
    def sample(
        self,
        data: Mapping[str, Any] | None = None,
        draws: int = 1000,
        random_seed: int | np.random.Generator | None = None,
        correct: str | None = None,
        diagnostics: bool = True,
        return_inferencedata: bool = True,
    ) -> Any:
        """Amortized posterior draws for one dataset, as ArviZ data.

        Parameters
        ----------
        data : dict, optional
            ``name -> array`` with the observed values (and covariates), named
            as in the model; the model's own observed data by default.
        draws : int
            Number of draws.
        random_seed : int or Generator, optional
            Seed.
        correct : {None, "psis"}
            ``"psis"``: importance-resample the draws with Pareto-smoothed
            weights against the true density (a warning when k > 0.7).
        diagnostics : bool
            Evaluate the true density and the Pareto k (costs ``draws``
            density evaluations; ``False`` is the fastest path).
        return_inferencedata : bool
            ``False``: skip building the DataTree (a few ms) and return an
            :class:`AmortizedDraws` of plain NumPy arrays.

        Returns
        -------
        xarray.DataTree or AmortizedDraws
            ``posterior`` (1 chain) with the model's names, dims and coords;
            ``sample_stats`` with ``log_q`` (and ``log_p``, ``log_weight``);
            ``observed_data``; ``posterior.attrs["pareto_k"]``.
        """
        data = self.target.current_data() if data is None else data
        checked, theta, stats, diag = self._posterior_draws(
            [data], draws, random_seed, correct, diagnostics
        )
        theta = theta[0]
        stats = {key: v[0] for key, v in stats.items()}
        attrs: dict[str, Any] = {"inference_library": "pymc_ext.Amortizer", "correct": str(correct)}
        attrs.update({key: float(v[0]) for key, v in diag.items()})
        if not return_inferencedata:
            return AmortizedDraws(self.density.constrain_batch(theta), stats, attrs)
        from pymc_ext.arviz_io import to_datatree

        return to_datatree(
            self.density,
            theta[None],
            sample_stats={key: v[None] for key, v in stats.items()},
            observed_data=checked[0],
            attrs=attrs,
        )

    @_with_threads
    def sample_many(
        self,
        datasets: Sequence[Mapping[str, Any]],
        draws: int = 1000,
        random_seed: int | np.random.Generator | None = None,
        correct: str | None = None,
        diagnostics: bool = True,
        return_inferencedata: bool = True,
        cores: int | None = None,
    ) -> Any:
        """Amortized posteriors for many datasets in one batched call.

        Parameters
        ----------
        datasets : list of dict
            Each like ``data`` in :meth:`sample`.
        draws, random_seed, correct, diagnostics, return_inferencedata
            As in :meth:`sample`.
        cores : int, optional
            CPU threads that draw batches of datasets at once (every core by
            default). The draws are the same for any ``cores``.

        Returns
        -------
        xarray.DataTree or AmortizedDraws
            ``posterior`` with dims ``(dataset, draw, ...)``; ``sample_stats``
            likewise; group ``amortized_diagnostics`` with ``pareto_k``
            ``(dataset,)`` (and ``num_rows`` for set data).
        """
        if isinstance(datasets, Mapping) or len(datasets) == 0:
            raise ValueError("datasets must be a non-empty list of dicts (one per dataset).")
        checked, theta, stats, diag = self._posterior_draws(
            list(datasets), draws, random_seed, correct, diagnostics, cores=cores
        )
        if self.layout.has_rows:
            diag["num_rows"] = np.array([np.shape(d[self.layout.names[0]])[0] for d in checked])
        if not return_inferencedata:
            flat = self.density.constrain_batch(theta.reshape(-1, self.dim))
            posterior = {
                k: np.asarray(v).reshape(*theta.shape[:2], *np.shape(v)[1:])
                for k, v in flat.items()
            }
            return AmortizedDraws(posterior, stats, diag)
        return self._many_to_datatree(theta, stats, diag, correct)

    def _many_to_datatree(self, theta, stats, diag, correct) -> Any:
        import xarray as xr

        from pymc_ext.arviz_io import to_datatree

        dt = to_datatree(
            self.density,
            theta,
            sample_stats=stats,
            observed_data={},
            attrs={"inference_library": "pymc_ext.Amortizer", "correct": str(correct)},
        )
        for group in ("posterior", "sample_stats"):
            ds = dt[group].to_dataset().rename({"chain": "dataset"})
            dt[group] = xr.DataTree(ds)
        if diag:
            dt["amortized_diagnostics"] = xr.DataTree(
                xr.Dataset({k: ("dataset", np.asarray(v)) for k, v in diag.items()})
            )
        return dt

    # -- calibration -----------------------------------------------------------------------------
    @_with_threads
    def check_calibration(
        self,
        num_datasets: int = 200,
        draws: int = 100,
        random_seed: int | np.random.Generator | None = None,
        alpha: float = 0.01,
        progressbar: bool = False,
    ) -> CalibrationResult:
        """Simulation-based calibration on fresh prior-predictive datasets.

        Parameters
        ----------
        num_datasets : int
            Simulated datasets (at least 20; a few hundred give a sharp test).
        draws : int
            Posterior draws per dataset (ranks run from 0 to ``draws``).
        random_seed : int or Generator, optional
            Seed.
        alpha : float
            Level of the band test over all parameters.
        progressbar : bool
            Show the simulation progress bar.

        Returns
        -------
        CalibrationResult
            ``.passed``, ``.ranks``, ``.plot()``, contraction and z-scores, on
            the unconstrained parameters (ranks do not change under the
            monotone transforms, so this also checks each constrained scalar).
        """
        self._check_fitted()
        rng = np.random.default_rng(random_seed)
        t0 = time.perf_counter()
        theta, values, lengths, dropped = self._simulate(
            int(num_datasets), rng, progressbar, desc="SBC simulations"
        )
        ctx = self._contexts_no_grad(values, lengths)
        post, _ = self._draw(ctx, int(draws), _seed_int(rng), cores=None)
        prior_var = (self.flow.theta_std.double().cpu().numpy()) ** 2
        result = simulation_based_calibration(
            theta, post, prior_var=prior_var, param_names=self.target.param_names,
            alpha=alpha, random_seed=rng,
        )
        result.info.update(seconds=time.perf_counter() - t0, num_dropped=dropped)
        return result

    # -- save / load -------------------------------------------------------------------------------
    def _fingerprint(self) -> dict[str, Any]:
        return _strip_rows(self.target.fingerprint(), self.layout.has_rows)

    def _config(self) -> dict[str, Any]:
        import pymc_ext

        return {
            "format": SAVE_FORMAT,
            "format_version": SAVE_FORMAT_VERSION,
            "pymc_ext_version": pymc_ext.__version__,
            "torch_version": torch.__version__,
            "target_kind": self.target.kind,
            "observed": list(self.target.observed),
            "covariates": list(self.target.covariates),
            "fingerprint": self._fingerprint(),
            "summary": {
                "kind": self.summary_kind,
                "kwargs": self.summary_net.config() if hasattr(self.summary_net, "config") else {},
            },
            "flow": self.flow.config(),
            "layout": self.layout.config(),
            "summary_range": None if self._summary_range is None else self._summary_range.tolist(),
            "history": dict(self.history) if self.history is not None else None,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Save weights and configuration to one file (atomically; no pickled code).

        The file is a ``torch.save`` archive of tensors and one JSON string,
        readable with ``torch.load(weights_only=True)``. It is written to a
        temporary file beside ``path`` and moved into place, so an interrupted
        save never leaves a corrupt file.

        Examples
        --------
        >>> import os, tempfile, numpy as np, pymc as pm, pymc_ext
        >>> with pm.Model() as model:
        ...     mu = pm.Normal("mu")
        ...     y = pm.Normal("y", mu, 1, observed=np.zeros(3))
        >>> a = pymc_ext.Amortizer(model).fit(300, epochs=2, random_seed=0, progressbar=False)
        >>> path = os.path.join(tempfile.mkdtemp(), "amortizer.pt")
        >>> a.save(path)
        >>> pymc_ext.Amortizer.load(path, model).fitted
        True
        """
        self._check_fitted()
        path = os.fspath(path)
        payload = {
            "format": SAVE_FORMAT,
            "format_version": SAVE_FORMAT_VERSION,
            "config": json.dumps(self._config()),
            "summary_state": {
                k: v.detach().cpu() for k, v in self.summary_net.state_dict().items()
            },
            "flow_state": {k: v.detach().cpu() for k, v in self.flow.state_dict().items()},
        }
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".amortizer-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(payload, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        model: Any = None,
        *,
        summary: nn.Module | None = None,
        covariate_sampler: Callable[[np.random.Generator], Mapping[str, Any]] | None = None,
        device: str | torch.device | None = None,
        num_threads: int | None = 1,
    ) -> Amortizer:
        """Load a saved amortizer into ``model``, checking that it is the same model.

        Parameters
        ----------
        path : str
            A file written by :meth:`save`.
        model : pm.Model or LogDensity
            The model to attach it to (the one in context by default).
        summary : torch.nn.Module, optional
            Needed only when the saved amortizer used a custom summary module:
            a fresh instance of the same architecture.
        covariate_sampler : callable, optional
            For further training or calibration with new covariates.
        device : str or torch.device, optional
            Where to run.
        num_threads : int or None
            As in :class:`Amortizer`.

        Raises
        ------
        AmortizerMismatchError
            If the model's variables, shapes or transforms differ from the
            ones the weights were trained on (the message lists them).
        ValueError
            If the file is not an amortizer or has an unknown format version.
        """
        path = os.fspath(path)
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as err:
            raise ValueError(f"{path} is not a readable amortizer file: {err}") from err
        if not isinstance(payload, dict) or payload.get("format") != SAVE_FORMAT:
            raise ValueError(f"{path} is not an amortizer saved by pymc_ext.Amortizer.save.")
        version = payload.get("format_version")
        if version != SAVE_FORMAT_VERSION:
            raise ValueError(
                f"{path} has amortizer format version {version}; this pymc_ext reads version "
                f"{SAVE_FORMAT_VERSION}. Retrain, or load it with the pymc_ext version that "
                "saved it."
            )
        config = json.loads(payload["config"])
        if config["summary"]["kind"] == "custom" and summary is None:
            raise ValueError(
                "This amortizer was trained with a custom summary module: pass a fresh instance "
                "of it as Amortizer.load(path, model, summary=MyNet(...))."
            )
        layout = DataLayout.from_config(config["layout"])
        # compare the models before building anything (no compiling for a wrong model)
        current = _current_fingerprint(
            model, config["observed"], config["covariates"], layout.has_rows
        )
        diffs = _fingerprint_differences(config["fingerprint"], current)
        if diffs:
            raise AmortizerMismatchError(
                f"The amortizer in {path} was trained on a different model: "
                + "; ".join(diffs)
                + ". Load it into the model it was trained on, or train a new amortizer for "
                "this model."
            )
        amortizer = cls(
            model,
            observed=config["observed"],
            summary=summary if summary is not None else config["summary"]["kind"],
            covariates=config["covariates"] or None,
            covariate_sampler=covariate_sampler,
            summary_kwargs={
                # files written before the pooled moments existed have no "moments" key
                **({"moments": False} if config["summary"]["kind"] == "deepset" else {}),
                **{
                    k: v for k, v in config["summary"]["kwargs"].items()
                    if k not in ("input_dim", "feature_dim")
                },
            },
            flow_kwargs={
                k: v for k, v in config["flow"].items() if k not in ("dim", "context_dim")
            },
            data_layout=layout.kind if summary is not None else None,
            device=device,
            num_threads=num_threads,
        )
        amortizer.layout = layout
        try:
            amortizer.summary_net.load_state_dict(payload["summary_state"])
            amortizer.flow.load_state_dict(payload["flow_state"])
        except RuntimeError as err:
            raise AmortizerMismatchError(
                f"The saved weights do not fit the networks: {err}"
            ) from err
        amortizer.summary_net.to(amortizer.device).eval()
        amortizer.flow.to(amortizer.device).eval()
        if config.get("summary_range") is not None:
            amortizer._summary_range = np.asarray(config["summary_range"], dtype=float)
        if config.get("history") is not None:
            amortizer.history = TrainingHistory(config["history"])
        amortizer.fitted = True
        return amortizer


def _strip_rows(fp: dict[str, Any], has_rows: bool) -> dict[str, Any]:
    """For row data, the number of rows is free: drop it from the shapes."""
    if has_rows:
        for key in ("observed", "covariates"):
            fp[key] = {n: list(s)[1:] for n, s in fp.get(key, {}).items()}
    return fp


def _current_fingerprint(
    model: Any, observed: Sequence[str], covariates: Sequence[str], has_rows: bool
) -> dict[str, Any]:
    import pymc as pm

    from pymc_ext.amortized_targets import PriorPredictiveTarget, pymc_fingerprint

    if model is None or isinstance(model, pm.Model):
        model = pm.modelcontext(model)
        names = {rv.name for rv in model.observed_RVs}
        missing = [o for o in observed if o not in names]
        if missing:
            return {"kind": "pymc", "params": [], "observed": {o: None for o in missing}}
        fp = pymc_fingerprint(model, observed, [c for c in covariates if c in model.named_vars])
    else:
        fp = PriorPredictiveTarget(model, observed=observed).fingerprint()
    return _strip_rows(fp, has_rows)


def _fingerprint_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two model fingerprints."""
    diffs = []
    if saved.get("kind") != current.get("kind"):
        diffs.append(f"model kind {saved.get('kind')!r} vs {current.get('kind')!r}")
    saved_params = {p[0]: p for p in saved.get("params", [])}
    current_params = {p[0]: p for p in current.get("params", [])}
    missing = sorted(set(saved_params) - set(current_params))
    extra = sorted(set(current_params) - set(saved_params))
    if missing:
        diffs.append(f"parameters {missing} are missing from this model")
    if extra:
        diffs.append(f"this model has parameters {extra} the amortizer does not know")
    for name in sorted(set(saved_params) & set(current_params)):
        if list(saved_params[name]) != list(current_params[name]):
            diffs.append(
                f"parameter {name!r} was {saved_params[name][1:]} (value var, shape, transform), "
                f"is {current_params[name][1:]}"
            )
    if not diffs and [p[0] for p in saved.get("params", [])] != [
        p[0] for p in current.get("params", [])
    ]:
        diffs.append("the parameters are in a different order")
    for key in ("observed", "covariates"):
        if dict(saved.get(key, {})) != dict(current.get(key, {})):
            diffs.append(f"{key} data {saved.get(key)} vs {current.get(key)}")
    if not diffs and saved.get("model_hash") != current.get("model_hash"):
        diffs.append(
            "the distributions differ (same names and shapes, different model hash "
            f"{saved.get('model_hash')} vs {current.get('model_hash')})"
        )
    return diffs
