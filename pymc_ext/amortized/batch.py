"""Many datasets in one call: :meth:`Amortizer.sample_many` and :meth:`Amortizer.check_calibration`.

Both run here or, given a ``dask.distributed`` ``Client``, as tasks on its
cluster (:mod:`pymc_ext.amortized.cluster`), with the same results for the
same seed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from pymc_ext.amortized import sampling
from pymc_ext.amortized.calibration import CalibrationResult
from pymc_ext.amortized.cluster import cluster_run
from pymc_ext.amortized.deterministics import posterior_values, stack_values
from pymc_ext.amortized.networks import with_threads
from pymc_ext.amortized.results import AmortizedDraws

__all__ = ["BatchMixin"]

# frames between a public method's caller and sampling.posterior_draws: the method, with_threads
_PUBLIC_STACKLEVEL = 3


class BatchMixin:
    """:meth:`sample_many` and :meth:`check_calibration` for :class:`~pymc_ext.Amortizer`."""

    @with_threads
    def sample_many(
        self,
        datasets: Sequence[Mapping[str, Any]],
        draws: int = 1000,
        random_seed: int | np.random.Generator | None = None,
        correct: str | None = None,
        diagnostics: bool = True,
        return_inferencedata: bool = True,
        cores: int | None = None,
        *,
        client: Any = None,
        model_builder: Callable[[Mapping[str, Any]], Any] | None = None,
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
        client : dask.distributed.Client, optional
            Draw the datasets in tasks on this cluster (a few per worker); the
            same draws as without it. None: here.
        model_builder : callable, optional
            With a ``client``: ``data -> model``, the function that built the
            training model (needed for a PyMC model; a ``StanModel`` is
            rebuilt from its program). Workers rebuild the model from it and
            the amortizer from its saved file.

        Returns
        -------
        xarray.DataTree or AmortizedDraws
            ``posterior`` with dims ``(dataset, draw, ...)``; ``sample_stats``
            likewise; group ``amortized_diagnostics`` with ``pareto_k``
            ``(dataset,)`` (and ``num_rows`` for set data). On a cluster, a
            task that failed twice over gives NaN draws for its datasets, and
            a warning names them.

        Examples
        --------
        >>> import numpy as np, pymc as pm, pymc_ext
        >>> with pm.Model() as model:
        ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
        >>> a = pymc_ext.Amortizer(model).fit(300, epochs=2, random_seed=0, progressbar=False)
        >>> dt = a.sample_many([{"y": np.ones(3)}, {"y": -np.ones(3)}], draws=50, random_seed=1)
        >>> dt.posterior["mu"].shape, dt["amortized_diagnostics"]["pareto_k"].shape
        ((2, 50), (2,))
        """
        if isinstance(datasets, Mapping) or len(datasets) == 0:
            raise ValueError("datasets must be a non-empty list of dicts (one per dataset).")
        if int(draws) < 1:
            raise ValueError(f"draws must be a positive number of draws, got {draws!r}.")
        cluster = cluster_run(client, self, model_builder)
        checked, theta, stats, diag = sampling.posterior_draws(
            self, list(datasets), draws, random_seed, correct, diagnostics, cores=cores,
            stacklevel=_PUBLIC_STACKLEVEL, cluster=cluster,
        )
        if self.layout.has_rows:
            diag["num_rows"] = np.array([np.shape(d[self.layout.names[0]])[0] for d in checked])
        # Deterministics at each dataset's own data
        posterior = stack_values(
            posterior_values(self, theta, checked, stacklevel=_PUBLIC_STACKLEVEL),
            stacklevel=_PUBLIC_STACKLEVEL,
        )
        if not return_inferencedata:
            return AmortizedDraws(posterior, stats, diag)
        return sampling.many_to_datatree(self, theta, stats, diag, correct, values=posterior)

    @with_threads
    def check_calibration(
        self,
        num_datasets: int = 200,
        draws: int = 100,
        random_seed: int | np.random.Generator | None = None,
        alpha: float = 0.01,
        progressbar: bool = False,
        *,
        client: Any = None,
        model_builder: Callable[[Mapping[str, Any]], Any] | None = None,
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
        client : dask.distributed.Client, optional
            Simulate and draw in tasks on this cluster (chunks of
            :data:`~pymc_ext.amortized.sampling.SBC_CHUNK` datasets); the same
            ranks as without it.
        model_builder : callable, optional
            As in :meth:`sample_many`.

        Returns
        -------
        CalibrationResult
            ``.passed``, ``.ranks``, ``.plot()``, contraction and z-scores, on
            the unconstrained parameters (ranks do not change under the
            monotone transforms, so this also checks each constrained scalar).

        Examples
        --------
        >>> import numpy as np, pymc as pm, pymc_ext
        >>> with pm.Model() as model:
        ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
        >>> a = pymc_ext.Amortizer(model).fit(300, epochs=2, random_seed=0, progressbar=False)
        >>> sbc = a.check_calibration(num_datasets=30, draws=20, random_seed=1)
        >>> sbc.ranks.shape
        (30, 1)
        """
        self.check_fitted()
        cluster = cluster_run(client, self, model_builder)
        return sampling.calibrate(
            self, num_datasets, draws, random_seed, alpha, progressbar, cluster=cluster
        )
