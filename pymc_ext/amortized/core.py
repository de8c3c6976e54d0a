"""The :class:`Amortizer`: a slim front that delegates to the modules of :mod:`pymc_ext.amortized`.

Construction picks the summary network and data layout
(:mod:`~pymc_ext.amortized.networks`); :meth:`Amortizer.fit` simulates and
trains (:mod:`~pymc_ext.amortized.training`, on the package's one training
loop); :meth:`Amortizer.sample` / :meth:`Amortizer.sample_many` draw and check
against the true density (:mod:`~pymc_ext.amortized.sampling`);
:meth:`Amortizer.save` / :meth:`Amortizer.load` are in
:mod:`~pymc_ext.amortized.serialization`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pymc_ext.amortized import sampling, serialization
from pymc_ext.amortized.batch import BatchMixin
from pymc_ext.amortized.cluster import cluster_run
from pymc_ext.amortized.deterministics import datatree_at, posterior_values
from pymc_ext.amortized.diagnostics import AmortizedDataWarning
from pymc_ext.amortized.frames import FRAME_KINDS, LaplaceFrames, supports_frames
from pymc_ext.amortized.layout import DataShapeError
from pymc_ext.amortized.many import ManyDatasetsMixin
from pymc_ext.amortized.mh import exact_draws
from pymc_ext.amortized.networks import build_summary, choose_summary, with_threads
from pymc_ext.amortized.networks import data_layout as layout_for
from pymc_ext.amortized.results import (
    AmortizedDraws,
    AmortizerMismatchError,
    AmortizerNotFittedError,
    Correction,
    TrainingHistory,
)
from pymc_ext.amortized.targets import make_target
from pymc_ext.amortized.training import FitConfig, fit_amortizer, fit_config
from pymc_ext.blocks.torch_settings import torch_device
from pymc_ext.flows.conditional import ConditionalFlow

__all__ = ["Amortizer"]

# frames between a public method's caller and sampling.posterior_draws: the method, with_threads
_PUBLIC_STACKLEVEL = 3


def _warn_potentials(target: Any) -> None:
    """Warn, before training, that the prior predictive simulations leave out Potentials."""
    model = getattr(target, "model", None)
    potentials = [p.name for p in getattr(model, "potentials", [])]
    if potentials:
        warnings.warn(
            f"The model has Potentials {potentials}: the prior predictive simulations the "
            "amortizer trains on leave them out (as pm.sample_prior_predictive does), so its "
            "raw draws are for the model without them. The true density at each dataset keeps "
            "them: use correct='psis' or 'mh' (fit_many does), or write the Potentials as "
            "priors.",
            AmortizedDataWarning,
            stacklevel=3,
        )


class Amortizer(serialization.PersistenceMixin, BatchMixin, ManyDatasetsMixin):
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
        :class:`~pymc_ext.amortized.targets.PyMCTarget`.
    summary_kwargs : dict, optional
        Sizes of the built-in summary network (``output_dim``, ``hidden``).
    flow_kwargs : dict, optional
        Sizes of the flow (``transforms``, ``hidden_features``, ``bins``,
        ``autoregressive``); see :class:`~pymc_ext.flows.conditional.ConditionalFlow`.
    data_layout : {"vector", "set", "series"}, optional
        Only for a custom summary module: how data reach it.
    device : str or torch.device, optional
        Where the networks run; the GPU when torch sees one, else the CPU.
    num_threads : int or None
        Torch CPU threads while the amortizer trains or draws (restored
        afterwards). 1 by default: the networks are small, and extra threads
        slow them down on a busy machine. ``None`` leaves torch's setting.
    frame : {"auto", "laplace", "prior"}
        The frame the flow learns the posterior in. ``"laplace"``: each
        dataset's own, from a damped Newton fit of the true joint density (its
        mode and the Cholesky factor of the inverse negative Hessian), so the
        network learns only the posterior's shape around it
        (:mod:`pymc_ext.amortized.frames`; PyMC models only). ``"prior"``: one
        frame for all (the prior predictive's mean and sd). ``"auto"``
        (default): Laplace frames when the target is a PyMC model and the
        frame coordinates of 2000 training simulations look standard normal
        (robust sd within 0.5-2 in every coordinate, at most 5% of them beyond
        8), else the prior's; ``history.frame`` says which, and why.

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
        frame: str = "auto",
    ) -> None:
        if frame not in FRAME_KINDS:
            raise ValueError(f"frame must be one of {FRAME_KINDS}, got {frame!r}.")
        self.frame = frame
        self.frames: LaplaceFrames | None = None
        self.num_threads = num_threads
        self.target = make_target(
            model, observed=observed, covariates=covariates, covariate_sampler=covariate_sampler
        )
        self.density = self.target.density
        if frame == "laplace" and not supports_frames(self.target):
            raise ValueError(
                "frame='laplace' needs the joint density's gradient over a batch of datasets, "
                "which only a PyMC model gives; use frame='auto' or 'prior' for a Stan program."
            )
        self.dim = int(self.target.dim)
        self.device = torch.device(device) if device is not None else torch_device()
        current = self.target.current_data()
        self.summary_kwargs = dict(summary_kwargs or {})
        self.flow_kwargs = dict(flow_kwargs or {})
        self.summary_kind, layout_kind = choose_summary(
            summary, current, self.target.data_names(), covariate_sampler is not None, data_layout
        )
        self.layout = layout_for(layout_kind, self.target.data_names(), current)
        if isinstance(summary, nn.Module):
            self.summary_net = summary
        else:
            self.summary_net = build_summary(self.summary_kind, self.summary_kwargs, self.layout)
        self.flow = ConditionalFlow(self.dim, self.summary_net.output_dim, **self.flow_kwargs)
        self.summary_net.to(self.device)
        self.flow.to(self.device)
        self.history: TrainingHistory | None = None
        self.summary_range: np.ndarray | None = None  # (2, output_dim): low, high
        self.fitted = False

    def __repr__(self) -> str:
        state = "fitted" if self.fitted else "not fitted"
        return (
            f"Amortizer({self.target.kind}, dim={self.dim}, data={self.layout.names} "
            f"({self.layout.kind}), summary={self.summary_kind}, {state})"
        )

    # -- training ------------------------------------------------------------------------------
    @with_threads
    def fit(
        self,
        num_simulations: int | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        validation_fraction: float | None = None,
        random_seed: int | np.random.Generator | None = None,
        progressbar: bool = True,
        *,
        learning_rate: float | None = None,
        patience: int | None = None,
        simulations_per_epoch: int | None = None,
        max_seconds: float | None = None,
        config: FitConfig | None = None,
        client: Any = None,
        model_builder: Callable[[Mapping[str, Any]], Any] | None = None,
    ) -> Amortizer:
        """Train on simulations from the model's prior predictive.

        Parameters
        ----------
        num_simulations : int
            Stored simulation budget (training plus validation); 10 000 by default.
        epochs : int
            Most passes over the training set (200).
        batch_size : int
            Simulations per gradient step (256).
        validation_fraction : float
            Share of simulations held out for early stopping (0.1).
        random_seed : int or Generator, optional
            Seeds the simulations, the split, the initial weights and the batches.
        progressbar : bool
            Show progress bars (simulation, epochs).
        learning_rate : float
            Adam's initial learning rate (cosine-annealed over ``epochs``; 1e-3).
        patience : int
            Stop when the validation loss has not improved for this many epochs;
            the best weights are kept (20).
        simulations_per_epoch : int
            Simulate this many fresh pairs every epoch, replacing the oldest
            training pairs (on-the-fly simulation beyond the stored budget;
            cheap simulators make the flow less prone to over-fitting).
        max_seconds : float, optional
            Stop training after this long (the best weights so far are kept).
        config : FitConfig, optional
            All of the settings above at once
            (:class:`~pymc_ext.amortized.training.FitConfig`); the arguments
            that are given override it.
        client : dask.distributed.Client, optional
            Simulate on this cluster, in seeded chunks: the same simulations,
            so the same amortizer, as without it. Training runs here.
        model_builder : callable, optional
            With a ``client``: ``data -> model``, the function that built this
            model, which workers rebuild it from (not for a ``StanModel``).

        Returns
        -------
        Amortizer
            ``self``, so ``Amortizer(model).fit(...)`` chains.

        Examples
        --------
        >>> import numpy as np, pymc as pm, pymc_ext
        >>> with pm.Model() as model:
        ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
        >>> a = pymc_ext.Amortizer(model).fit(300, epochs=3, random_seed=0, progressbar=False)
        >>> a.fitted, a.history.epochs_run
        (True, 3)
        """
        config = fit_config(
            config, num_simulations=num_simulations, epochs=epochs, batch_size=batch_size,
            validation_fraction=validation_fraction, learning_rate=learning_rate,
            patience=patience, simulations_per_epoch=simulations_per_epoch,
            max_seconds=max_seconds,
        )
        _warn_potentials(self.target)
        cluster = cluster_run(client, self, model_builder, weights=False)
        self.history = fit_amortizer(self, config, random_seed, progressbar, cluster)
        self.fitted = True
        return self

    def check_fitted(self) -> None:
        """Raise :class:`AmortizerNotFittedError` unless trained or loaded.

        Examples
        --------
        >>> import numpy as np, pymc as pm, pymc_ext
        >>> with pm.Model() as model:
        ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
        >>> pymc_ext.Amortizer(model).check_fitted()
        Traceback (most recent call last):
        ...
        pymc_ext.amortized.results.AmortizerNotFittedError: This amortizer is not trained yet: call .fit(num_simulations=...) first, or Amortizer.load(path, model) for saved weights.
        """  # noqa: E501
        if not self.fitted:
            raise AmortizerNotFittedError(
                "This amortizer is not trained yet: call .fit(num_simulations=...) first, or "
                "Amortizer.load(path, model) for saved weights."
            )

    def model_data(self) -> dict[str, np.ndarray]:
        """The data in the model now (new values after ``pm.set_data``), checked against training.

        What :meth:`sample`, :meth:`log_q` and :class:`~pymc_ext.AmortizedMH`
        condition on when no dataset is given.

        Raises
        ------
        AmortizerMismatchError
            The data no longer have the shapes the amortizer was trained on
            (for set and series data: the shape of one row); the message names
            both.

        Examples
        --------
        >>> import numpy as np, pymc as pm, pymc_ext
        >>> with pm.Model() as model:
        ...     y_obs = pm.Data("y_obs", np.zeros(3))
        ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=y_obs)
        >>> a = pymc_ext.Amortizer(model).fit(300, epochs=2, random_seed=0, progressbar=False)
        >>> pm.set_data({"y_obs": np.ones(3)}, model=model)
        >>> a.model_data()["y"].tolist()
        [1.0, 1.0, 1.0]
        """
        data = self.target.current_data()
        try:
            self.layout.check(data)
        except DataShapeError as err:
            lead = ["N"] if self.layout.has_rows else []  # set data: any number N of rows
            trained = {n: [*lead, *s] for n, s in self.layout.shapes.items()}
            now = {n: list(np.shape(data[n])) for n in self.layout.names}
            hint = (
                "(N rows each, the same N for every variable)" if self.layout.has_rows
                else "(summary='deepset' takes any number of rows)"
            )
            raise AmortizerMismatchError(
                f"The model's data no longer fit this amortizer (changed with pm.set_data?): "
                f"{err} It was trained on data shaped {trained}; the model's are now shaped "
                f"{now}. Set data of the trained shapes {hint}, or train an amortizer for "
                "the new ones."
            ) from err
        return data

    def prepare(self, datasets: Sequence[Mapping[str, Any]]) -> tuple[list[dict], torch.Tensor]:
        """Checked datasets and their contexts ``(len(datasets), context_dim)``.

        With Laplace frames (``flow.framed``) each context ends with its dataset's
        frame, ``dim + dim**2`` more entries.

        Warns (:class:`~pymc_ext.amortized.diagnostics.AmortizedDataWarning`)
        when data are unlike the training simulations.

        Examples
        --------
        >>> import numpy as np, pymc as pm, pymc_ext
        >>> with pm.Model() as model:
        ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
        >>> a = pymc_ext.Amortizer(model).fit(300, epochs=2, random_seed=0, progressbar=False)
        >>> checked, ctx = a.prepare([{"y": np.ones(3)}])
        >>> tuple(ctx.shape), a.flow.context_dim, a.flow.framed   # 3 + 1 + 1 * 1
        ((1, 5), 3, True)
        """
        return sampling.prepare(self, datasets, stacklevel=2)

    # -- drawing ---------------------------------------------------------------------------------
    @with_threads
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

        Examples
        --------
        >>> import numpy as np, pymc as pm, pymc_ext
        >>> with pm.Model() as model:
        ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
        >>> a = pymc_ext.Amortizer(model).fit(300, epochs=2, random_seed=0, progressbar=False)
        >>> a.log_q(np.zeros((4, 1)), {"y": np.ones(3)}).shape
        (4,)
        """
        self.check_fitted()
        data = self.model_data() if data is None else data
        _, ctx = sampling.prepare(self, [data], stacklevel=_PUBLIC_STACKLEVEL)
        theta_t = torch.as_tensor(np.atleast_2d(theta), dtype=torch.float32, device=self.device)
        with torch.no_grad():
            out = self.flow.log_prob(theta_t, ctx.expand(theta_t.shape[0], -1))
        return out.double().cpu().numpy()

    @with_threads
    def sample(
        self,
        data: Mapping[str, Any] | None = None,
        draws: int = 1000,
        random_seed: int | np.random.Generator | None = None,
        correct: str | None = None,
        diagnostics: bool = True,
        return_inferencedata: bool = True,
        chains: int = 4,
    ) -> Any:
        """Amortized posterior draws for one dataset, as ArviZ data.

        Parameters
        ----------
        data : dict, optional
            ``name -> array`` with the observed values (and covariates), named
            as in the model; by default the data in the model now
            (:meth:`model_data`: after ``pm.set_data``, the new values).
        draws : int
            Number of draws.
        random_seed : int or Generator, optional
            Seed.
        correct : {None, "psis", "mh"}
            ``"psis"``: importance-resample the draws with Pareto-smoothed
            weights against the true density (a warning when k > 0.7).
            ``"mh"``: exact draws, from ``chains`` independence
            Metropolis-Hastings chains of ``draws`` each, with the amortized
            posterior (moment-matched to pilot draws) as proposal; a warning
            when the acceptance rate is too low to be useful.
        diagnostics : bool
            Evaluate the true density and the Pareto k (costs ``draws``
            density evaluations; ``False`` is the fastest path).
        return_inferencedata : bool
            ``False``: skip building the DataTree (a few ms) and return an
            :class:`AmortizedDraws` of plain NumPy arrays (not with ``"mh"``).
        chains : int
            Chains for ``correct="mh"``.

        Returns
        -------
        xarray.DataTree or AmortizedDraws
            ``posterior`` (1 chain) with the model's names, dims and coords;
            ``sample_stats`` with ``log_q`` (and ``log_p``, ``log_weight``);
            ``observed_data``; ``posterior.attrs["pareto_k"]``.

        Examples
        --------
        >>> import numpy as np, pymc as pm, pymc_ext
        >>> with pm.Model() as model:
        ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
        >>> a = pymc_ext.Amortizer(model).fit(300, epochs=2, random_seed=0, progressbar=False)
        >>> idata = a.sample({"y": np.ones(3)}, draws=100, random_seed=1, correct="psis")
        >>> idata.posterior["mu"].shape, idata.posterior.attrs["correct"]
        ((1, 100), 'psis')
        """
        data = self.model_data() if data is None else data
        if int(draws) < 1:
            raise ValueError(f"draws must be a positive number of draws, got {draws!r}.")
        if Correction.parse(correct) is Correction.MH:
            return exact_draws(
                self, data, draws, chains, random_seed, stacklevel=_PUBLIC_STACKLEVEL
            )
        checked, theta, stats, diag = sampling.posterior_draws(
            self, [data], draws, random_seed, correct, diagnostics, stacklevel=_PUBLIC_STACKLEVEL
        )
        theta = theta[0]
        stats = {key: v[0] for key, v in stats.items()}
        attrs: dict[str, Any] = {"inference_library": "pymc_ext.Amortizer", "correct": str(correct)}
        attrs.update({key: float(v[0]) for key, v in diag.items()})
        # Deterministics at this dataset's data (not the training model's)
        [values] = posterior_values(self, theta[None], checked, stacklevel=_PUBLIC_STACKLEVEL)
        if not return_inferencedata:
            return AmortizedDraws(values, stats, attrs)
        return datatree_at(
            self,
            theta[None],
            None,
            values={k: v[None] for k, v in values.items()},
            sample_stats={key: v[None] for key, v in stats.items()},
            observed_data=checked[0],
            attrs=attrs,
        )
