"""An :class:`pymc_ext.Amortizer` for a Stan program, taking data dicts as a Stan user writes them.

:meth:`stan_bridge.CmdStanModel.amortize` returns a :class:`StanAmortizer`.
It is a :class:`pymc_ext.Amortizer` (training, ``sample``, ``sample_many``,
``fit_many``, ``check_calibration``, ``save`` / ``load`` all work as there);
what it adds is the Stan user's view of a dataset:

- ``sample``, ``sample_many``, ``fit_many`` and ``log_q`` take the whole data
  dict of the program (``{"N": 8, "y": ..., "sigma": ..., "prior_only": 0}``),
  as ``CmdStanModel.sample(data=...)`` does, not only the observed variables;
- the amortizer conditions only on the observed variables (those with a
  ``<name>_rep`` generated quantity). Every other input (sizes, covariates,
  known scales) was fixed when it was trained, so a dataset that gives
  another value for one of them is refused with a
  :class:`StanAmortizerDataError` naming it, instead of being silently
  answered for the training values;
- ``seed=`` is accepted for ``random_seed=`` and ``show_progress=`` for
  ``progressbar=`` (cmdstanpy's names).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pymc_ext.amortized.core import Amortizer
from stan_bridge.wrapper_methods import WarningsAtCaller

__all__ = ["StanAmortizer", "StanAmortizerDataError"]


class StanAmortizerDataError(ValueError):
    """A dataset gives another value for an input that the amortizer was trained with fixed."""


def _cmdstanpy_names(kwargs: dict[str, Any], seed: Any, show_progress: Any = None) -> dict:
    """``kwargs`` with cmdstanpy's ``seed`` / ``show_progress`` mapped to our names."""
    if seed is not None:
        if kwargs.get("random_seed") is not None:
            raise TypeError("Give seed= or random_seed=, not both.")
        kwargs["random_seed"] = seed
    if show_progress is not None:
        if "progressbar" in kwargs:
            raise TypeError("Give show_progress= or progressbar=, not both.")
        kwargs["progressbar"] = show_progress
    return kwargs


class StanAmortizer(Amortizer):
    """An Amortizer for a Stan program; datasets are the program's data dicts.

    Made by :meth:`stan_bridge.CmdStanModel.amortize` (or
    ``StanAmortizer(stan_model)`` and ``.fit(...)``, or
    ``StanAmortizer.load(path, stan_model)``). Everything of
    :class:`pymc_ext.Amortizer` works; see the module docstring for what
    differs.

    Examples
    --------
    >>> import numpy as np
    >>> from stan_bridge.programs import example_model
    >>> from stan_bridge.stan_amortizer import StanAmortizer
    >>> sm = example_model()  # y ~ normal(mu, sigma), N = 4, with prior_only and y_rep
    >>> a = StanAmortizer(sm).fit(300, epochs=2, random_seed=0, progressbar=False)
    >>> data = {"N": 4, "y": [0.1, 0.5, -0.2, 0.3], "prior_only": 0}
    >>> a.sample(data, draws=50, seed=1).posterior["sigma"].shape
    (1, 50)
    >>> a.sample({**data, "N": 5, "y": [0.1] * 5}, draws=50)
    Traceback (most recent call last):
    ...
    stan_bridge.stan_amortizer.StanAmortizerDataError: data['N'] is 5, but this amortizer was trained with N = 4 ...
    """  # noqa: E501

    flag = "prior_only"

    def stan_dataset(self, data: Mapping[str, Any] | None, where: str = "data") -> dict | None:
        """The observed variables of a Stan data dict, after checking its other inputs.

        Parameters
        ----------
        data : dict or None
            The program's data (all of it, or only the observed variables).
        where : str
            How to name the dataset in errors.

        Returns
        -------
        dict or None
            ``{observed name: value}`` (None stays None: the training data).

        Raises
        ------
        StanAmortizerDataError
            When an input other than the observed ones differs from the
            training data, ``prior_only`` is not 0, or a name is not an
            input of the program.
        """
        if data is None:
            return None
        if not isinstance(data, Mapping):
            raise TypeError(f"{where} must be a dict name -> value; got {type(data).__name__}.")
        observed = list(self.target.observed)
        fixed = self.density.data
        for name, value in data.items():
            if name in observed:
                continue
            if name not in fixed:
                raise StanAmortizerDataError(
                    f"{where} has {name!r}, which is not an input of the program (its inputs: "
                    f"{sorted(fixed)})."
                )
            if not np.array_equal(np.asarray(value, dtype=float), np.asarray(fixed[name], float)):
                shown = value if np.ndim(value) == 0 else f"an array of shape {np.shape(value)}"
                if name == self.flag:
                    raise StanAmortizerDataError(
                        f"{where}[{name!r}] must be 0: an amortized posterior is a posterior "
                        "given the data (the amortizer simulates with prior_only = 1 itself)."
                    )
                raise StanAmortizerDataError(
                    f"{where}[{name!r}] is {shown}, but this amortizer was trained with "
                    f"{name} = {_show(fixed[name])}. It conditions only on {observed}; every "
                    "other input is fixed at training. Give the training value, or train an "
                    "amortizer for these inputs: CmdStanModel.amortize(data=...)."
                )
        return {name: data[name] for name in observed if name in data}

    def _datasets(self, datasets: Sequence[Mapping[str, Any]]) -> list[dict]:
        if isinstance(datasets, Mapping):
            raise ValueError("datasets must be a list of dicts (one per dataset).")
        return [self.stan_dataset(d, f"datasets[{i}]") for i, d in enumerate(datasets)]

    def sample(self, data: Mapping[str, Any] | None = None, *args: Any, seed: int | None = None,
               **kwargs: Any) -> Any:
        """:meth:`pymc_ext.Amortizer.sample` on a Stan data dict (``seed`` for ``random_seed``)."""
        data = self.stan_dataset(data)
        with WarningsAtCaller():
            return super().sample(data, *args, **_cmdstanpy_names(kwargs, seed))

    def sample_many(self, datasets: Sequence[Mapping[str, Any]], *args: Any,
                    seed: int | None = None, **kwargs: Any) -> Any:
        """:meth:`pymc_ext.Amortizer.sample_many` on Stan data dicts."""
        datasets = self._datasets(datasets)
        with WarningsAtCaller():
            return super().sample_many(datasets, *args, **_cmdstanpy_names(kwargs, seed))

    def fit_many(self, datasets: Sequence[Mapping[str, Any]], *args: Any,
                 seed: int | None = None, show_progress: bool | None = None,
                 **kwargs: Any) -> Any:
        """:meth:`pymc_ext.Amortizer.fit_many` on Stan data dicts."""
        datasets = self._datasets(datasets)
        with WarningsAtCaller():
            return super().fit_many(datasets, *args,
                                    **_cmdstanpy_names(kwargs, seed, show_progress))

    def log_q(self, theta: np.ndarray, data: Mapping[str, Any] | None = None) -> np.ndarray:
        """:meth:`pymc_ext.Amortizer.log_q` at a Stan data dict."""
        data = self.stan_dataset(data)
        with WarningsAtCaller():
            return super().log_q(theta, data)


def _show(value: Any) -> str:
    arr = np.asarray(value)
    return str(arr.item()) if arr.ndim == 0 else f"an array of shape {arr.shape}"
