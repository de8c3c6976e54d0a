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
  ``progressbar=`` (cmdstanpy's names);
- data given for an ``int`` data variable are checked as ``StanModel`` checks
  them: non-integer values raise :class:`stan_bridge.data.StanDataError`
  (they are never rounded);
- the posteriors of ``sample``, ``sample_many`` and ``fit_many`` hold the
  program's transformed parameters and generated quantities, as a
  ``CmdStanMCMC`` does, computed by the compiled program with *each
  dataset's* data (:mod:`stan_bridge.program_values`). The generated
  quantities use Stan's RNG: for ``sample(data, seed=s)`` seeded with
  ``(s, chain)`` for chain 1, 2, ... (as CmdStan seeds its chains); for
  ``sample_many`` and ``fit_many``, dataset ``i`` gets its own seed, spawned
  from ``s`` (``numpy.random.SeedSequence(s).spawn``), with chain ids from 1.
  Without a seed, a random one;
- the warnings give Stan advice (``correct="mh"`` / ``"psis"``,
  ``CmdStanModel.sample``) in place of PyMC's (:func:`stan_advice`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pymc_ext.amortized.core import Amortizer
from stan_bridge.data import check_data
from stan_bridge.program_values import with_program_values
from stan_bridge.wrapper_methods import WarningsAtCaller

__all__ = ["StanAmortizer", "StanAmortizerDataError", "stan_advice"]

#: PyMC advice in the amortizer's warnings, and what a Stan user does instead (in order).
_STAN_ADVICE = (
    ("pm.sample (NUTS), or with pm.sample(step=pymc_ext.AmortizedMH(amortizer))",
     'CmdStanModel.sample(data=...) (NUTS), or with amortizer.sample(data, correct="mh")'),
    ("pymc_ext.AmortizedMH or pm.sample",
     'amortizer.sample(data, correct="mh") or CmdStanModel.sample(data=...)'),
    ("NUTS (pm.sample)", "NUTS (CmdStanModel.sample)"),
    ("pm.sample(step=pymc_ext.AmortizedMH(amortizer))", 'amortizer.sample(data, correct="mh")'),
    ("pymc_ext.AmortizedMH", 'correct="mh"'),
    ("pm.sample", "CmdStanModel.sample"),
)


def stan_advice(text: str) -> str:
    """A warning of the amortizer with its PyMC advice replaced by Stan advice.

    Parameters
    ----------
    text : str
        The message of a :mod:`pymc_ext.amortized` warning.

    Returns
    -------
    str
        The message, ``pm.sample`` turned into ``CmdStanModel.sample`` and
        ``pymc_ext.AmortizedMH`` into ``amortizer.sample(data, correct="mh")``.

    Examples
    --------
    >>> from stan_bridge.stan_amortizer import stan_advice
    >>> stan_advice("Sample those with pymc_ext.AmortizedMH or pm.sample.")
    'Sample those with amortizer.sample(data, correct="mh") or CmdStanModel.sample(data=...).'
    """
    for old, new in _STAN_ADVICE:
        text = text.replace(old, new)
    return text


def _argument(method: Any, name: str, args: tuple, kwargs: Mapping[str, Any]) -> Any:
    """The value ``name`` takes in the call ``method(*args, **kwargs)`` (None: not given)."""
    try:
        return inspect.signature(method).bind(*args, **kwargs).arguments.get(name)
    except TypeError:  # the call itself fails, with its own error
        return None


def _gq_seed(random_seed: Any) -> int:
    """Stan's RNG seed of the generated quantities for the sampler's ``random_seed``."""
    if isinstance(random_seed, (int, np.integer)) and not isinstance(random_seed, bool):
        return int(random_seed) % 2**32
    return int(np.random.default_rng(random_seed).integers(2**31))


def _spawned(seed: int, n: int) -> list[int]:
    return [int(s.generate_state(1)[0] % 2**31) for s in np.random.SeedSequence(seed).spawn(n)]


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
        given = {name: data[name] for name in observed if name in data}
        inputs = self.density.info.get("inputs", {})
        # as StanModel checks data: int data must be whole numbers, dims must match
        arrays = check_data({**fixed, **given}, inputs) if inputs else given
        return {name: arrays[name] for name in given}

    def _at(self, data: Mapping[str, Any] | None) -> Any:
        """The StanModel at a checked dataset (None: the training data)."""
        return self.density if data is None else self.target.conditioned(data)

    def _with_outputs(self, post: Any, models: list, seeds: list[int], chain_ids: list[int],
                      one_dataset: bool = False) -> Any:
        """``post`` (a DataTree, or the :class:`~pymc_ext.amortized.AmortizedDraws` of
        ``return_inferencedata=False``) with the program's transformed parameters and
        generated quantities, row ``a`` of the leading dim computed at ``models[a]``'s data."""
        import xarray as xr

        if isinstance(post, xr.DataTree):
            ds = with_program_values(post["posterior"].to_dataset(), models, seeds,
                                     chain_ids=chain_ids, stacklevel=3)
            post["posterior"] = xr.DataTree(ds)
            return post
        # AmortizedDraws: name -> (draws, ...) for one dataset, (dataset, draws, ...) for many
        values = {k: np.asarray(v)[None] if one_dataset else np.asarray(v)
                  for k, v in post.posterior.items()}
        ds = xr.Dataset({k: (("lead", "draw", *(f"{k}_dim_{i}" for i in range(v.ndim - 2))), v)
                         for k, v in values.items()})
        ds = with_program_values(ds, models, seeds, chain_ids=chain_ids, stacklevel=3)
        out = {k: ds[k].values[0] if one_dataset else ds[k].values for k in ds.data_vars}
        return post._replace(posterior=out)

    def _datasets(self, datasets: Sequence[Mapping[str, Any]]) -> list[dict]:
        if isinstance(datasets, Mapping):
            raise ValueError("datasets must be a list of dicts (one per dataset).")
        return [self.stan_dataset(d, f"datasets[{i}]") for i, d in enumerate(datasets)]

    def sample(self, data: Mapping[str, Any] | None = None, *args: Any, seed: int | None = None,
               **kwargs: Any) -> Any:
        """:meth:`pymc_ext.Amortizer.sample` on a Stan data dict (``seed`` for ``random_seed``)."""
        data = self.stan_dataset(data)
        kwargs = _cmdstanpy_names(kwargs, seed)
        random_seed = _argument(super().sample, "random_seed", (data, *args), kwargs)
        with WarningsAtCaller(rewrite=stan_advice):
            out = super().sample(data, *args, **kwargs)
            chains = _chains(out)
            model, base = self._at(data), _gq_seed(random_seed)
            return self._with_outputs(out, [model] * chains, [base] * chains,
                                      list(range(1, chains + 1)), one_dataset=True)

    def sample_many(self, datasets: Sequence[Mapping[str, Any]], *args: Any,
                    seed: int | None = None, **kwargs: Any) -> Any:
        """:meth:`pymc_ext.Amortizer.sample_many` on Stan data dicts."""
        datasets = self._datasets(datasets)
        kwargs = _cmdstanpy_names(kwargs, seed)
        random_seed = _argument(super().sample_many, "random_seed", (datasets, *args), kwargs)
        with WarningsAtCaller(rewrite=stan_advice):
            out = super().sample_many(datasets, *args, **kwargs)
            seeds = _spawned(_gq_seed(random_seed), len(datasets))
            models = [self._at(d) for d in datasets]
            return self._with_outputs(out, models, seeds, [1] * len(datasets))

    def fit_many(self, datasets: Sequence[Mapping[str, Any]], *args: Any,
                 seed: int | None = None, show_progress: bool | None = None,
                 **kwargs: Any) -> Any:
        """:meth:`pymc_ext.Amortizer.fit_many` on Stan data dicts."""
        datasets = self._datasets(datasets)
        kwargs = _cmdstanpy_names(kwargs, seed, show_progress)
        random_seed = _argument(super().fit_many, "random_seed", (datasets, *args), kwargs)
        with WarningsAtCaller(rewrite=stan_advice):
            out = super().fit_many(datasets, *args, **kwargs)
            seeds = _spawned(_gq_seed(random_seed), len(datasets))
            for i, (dt, data) in enumerate(zip(out.posteriors, datasets, strict=True)):
                chains = int(dt["posterior"].sizes["chain"])
                out.posteriors[i] = self._with_outputs(
                    dt, [self._at(data)] * chains, [seeds[i]] * chains,
                    list(range(1, chains + 1)))
            return out

    def log_q(self, theta: np.ndarray, data: Mapping[str, Any] | None = None) -> np.ndarray:
        """:meth:`pymc_ext.Amortizer.log_q` at a Stan data dict."""
        data = self.stan_dataset(data)
        with WarningsAtCaller(rewrite=stan_advice):
            return super().log_q(theta, data)


def _chains(out: Any) -> int:
    """Chains of ``sample``'s result (1 for its plain-array form)."""
    import xarray as xr

    return int(out["posterior"].sizes["chain"]) if isinstance(out, xr.DataTree) else 1


def _show(value: Any) -> str:
    arr = np.asarray(value)
    return str(arr.item()) if arr.ndim == 0 else f"an array of shape {arr.shape}"
