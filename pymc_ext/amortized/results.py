"""What the amortizer hands back, and its errors: draws, training history, exceptions."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "AmortizedDraws",
    "AmortizerMismatchError",
    "AmortizerNotFittedError",
    "Correction",
    "TrainingHistory",
]


class AmortizerNotFittedError(RuntimeError):
    """The amortizer has to be trained (``.fit``) or loaded first.

    Examples
    --------
    >>> from pymc_ext.amortized import AmortizerNotFittedError
    >>> issubclass(AmortizerNotFittedError, RuntimeError)
    True
    """


class AmortizerMismatchError(ValueError):
    """Saved weights do not belong to the model they are loaded into.

    Examples
    --------
    >>> from pymc_ext.amortized import AmortizerMismatchError
    >>> issubclass(AmortizerMismatchError, ValueError)
    True
    """


class Correction(StrEnum):
    """How amortized draws are corrected against the true density (``correct=``).

    ``NONE`` (``correct=None``) keeps the raw draws; ``PSIS`` importance-resamples
    them with Pareto-smoothed weights; ``MH`` runs independence
    Metropolis-Hastings chains with the amortized posterior as proposal (exact).

    Examples
    --------
    >>> from pymc_ext.amortized.results import Correction
    >>> Correction.parse("psis") == "psis", Correction.parse(None) is Correction.NONE
    (True, True)
    """

    NONE = "None"
    PSIS = "psis"
    MH = "mh"

    @classmethod
    def parse(cls, correct: str | None) -> Correction:
        """The member for ``correct`` (``None``, ``"psis"`` or ``"mh"``); ValueError otherwise."""
        if correct is None:
            return cls.NONE
        for member in (cls.PSIS, cls.MH):
            if correct == member:
                return member
        raise ValueError(f"correct must be None, 'psis' or 'mh', got {correct!r}.")


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
    simulation), ``best_epoch``, ``best_val_loss``, ``epochs_run``,
    ``stopped_early``, ``num_simulations``, ``num_dropped`` (non-finite
    simulations removed), ``simulation_seconds``, ``training_seconds``,
    ``device``, ``simulations_per_epoch``, ``frame`` (which frame the flow
    learns in, ``"laplace: ..."`` or ``"prior: ..."``, and why) and
    ``frame_seconds`` (the Laplace fits of the training simulations).

    Examples
    --------
    >>> from pymc_ext.amortized import TrainingHistory
    >>> h = TrainingHistory(epochs_run=3)
    >>> h.epochs_run, h["epochs_run"]
    (3, 3)
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err
