"""What travels to a dask worker: how it rebuilds the model, and the trained amortizer's bytes.

Nothing live is shipped (no PyTensor function, no torch module, no compiled
library handle). A :class:`ModelRecipe` says how to rebuild the amortizer's
model: with the model function ``model_builder`` and the training model's
data (PyMC), or from a Stan program's code, data and build options (the
compiled library comes from the build cache). :func:`recipe_for` builds the
recipe and checks it here, before anything is sent; :func:`saved_bytes` is
the trained networks as :meth:`Amortizer.save <pymc_ext.Amortizer.save>`
writes them. :mod:`pymc_ext.amortized.cluster` ships both.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pymc_ext.amortized.results import AmortizerMismatchError

__all__ = ["ModelRecipe", "recipe_for", "saved_bytes"]


#: How the model function is called (in the errors about it).
BUILDER_SIGNATURE = (
    "The model function is called with ONE argument, a dict name -> array of the data"
)


@dataclass(frozen=True)
class ModelRecipe:
    """How a worker rebuilds the amortizer's model, without any live object.

    Attributes
    ----------
    build : callable or None
        ``model_builder(data)``: the model (a ``pm.Model``, or a density with
        the prior-predictive convention) for a dataset, called with ``data``.
    data : dict
        The training model's data (observed values and covariates).
    stan : dict or None
        For a ``stan_bridge.StanModel`` without a ``build``: the keywords of
        ``StanModel(**stan)`` (code, data, seed, ``propto``, ``jacobian``,
        toolchain and build cache).
    observed, covariates : list of str
        What the amortizer conditions on.
    covariate_sampler : callable or None
        As given to the amortizer (shipped like the model function).
    num_threads : int or None
        The amortizer's torch threads.
    device : str
        Where the networks run (the client's device, so that batches match).
    """

    build: Callable[[Mapping[str, Any]], Any] | None
    data: dict[str, np.ndarray]
    stan: dict[str, Any] | None
    observed: list[str]
    covariates: list[str] = field(default_factory=list)
    covariate_sampler: Callable[[np.random.Generator], Mapping[str, Any]] | None = None
    num_threads: int | None = 1
    device: str = "cpu"

    def model(self) -> Any:
        """The training model, rebuilt: ``build(data)``, ``data`` one dict ``name -> array``.

        Raises
        ------
        TypeError
            ``build`` failed when called with the data dict; the message says
            the signature it needs (``build(data)``, not ``build(y)``).

        Examples
        --------
        >>> import numpy as np, pymc as pm
        >>> from pymc_ext.amortized.recipe import ModelRecipe
        >>> def build(y):                       # takes the array, not the data dict
        ...     with pm.Model() as m:
        ...         pm.Normal("y", pm.Normal("mu"), 1, observed=np.asarray(y, dtype=float))
        ...     return m
        >>> ModelRecipe(build, {"y": np.zeros(3)}, None, ["y"]).model()
        Traceback (most recent call last):
        ...
        TypeError: model_builder(data) failed (...). The model function is called with ONE argument, a dict name -> array of the data (keys ['y']): write it as `def build(data): ... data['y'] ...`, or pass model_builder=lambda data: build(data['y']).
        """  # noqa: E501
        if self.build is None:
            from stan_bridge import StanModel

            return StanModel(**self.stan)
        # arrays unpickled from the scheduler can be unaligned views, which PyTensor refuses
        data = {k: np.array(v, copy=True) for k, v in self.data.items()}
        try:
            return self.build(data)
        except Exception as err:
            names = list(data)
            raise TypeError(
                f"model_builder(data) failed ({type(err).__name__}: {err}). {BUILDER_SIGNATURE} "
                f"(keys {names}): write it as `def build(data): ... data[{names[0]!r}] ...`, "
                f"or pass model_builder=lambda data: build(data[{names[0]!r}])."
            ) from err

    def target_kwargs(self) -> dict[str, Any]:
        """``make_target`` keywords (only the ones that apply)."""
        kwargs: dict[str, Any] = {"observed": list(self.observed)}
        if self.covariates:
            kwargs["covariates"] = list(self.covariates)
        if self.covariate_sampler is not None:
            kwargs["covariate_sampler"] = self.covariate_sampler
        return kwargs

    def target(self) -> Any:
        """The amortization target of the rebuilt model (for simulating)."""
        from pymc_ext.amortized.targets import make_target

        return make_target(self.model(), **self.target_kwargs())


def _stan_keywords(density: Any) -> dict[str, Any] | None:
    """``StanModel(**keywords)`` that rebuilds ``density`` from the build cache, if it is one."""
    try:
        from stan_bridge import StanModel
    except ImportError:  # pragma: no cover - stan_bridge ships with pymc_ext
        return None
    if not isinstance(density, StanModel):
        return None
    return {
        "stan_file_or_code": density.code,
        "data": {k: np.asarray(v) for k, v in density.data.items()},
        "seed": density.seed,
        "propto": density.propto,
        "jacobian": density.jacobian,
        "toolchain": density.toolchain,
        "cache_dir": str(density.build.directory.parent.parent),  # <cache>/models/<key>
        "model_name": density.model_name,
        "progressbar": False,
    }


def recipe_for(amortizer: Any, model_builder: Callable | None = None) -> ModelRecipe:
    """The :class:`ModelRecipe` of ``amortizer``'s model, checked here before anything is sent.

    Raises
    ------
    ValueError
        A PyMC model (or a density that is not a ``StanModel``) without
        ``model_builder``; or a ``model_builder`` whose model differs from the
        amortizer's (:class:`~pymc_ext.amortized.AmortizerMismatchError`,
        naming what differs).

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> def build(data):
    ...     with pm.Model() as m:
    ...         pm.Normal("y", pm.Normal("mu"), 1, observed=data["y"])
    ...     return m
    >>> from pymc_ext.amortized.recipe import recipe_for
    >>> recipe = recipe_for(pymc_ext.Amortizer(build({"y": np.zeros(3)})), build)
    >>> recipe.data["y"].tolist(), recipe.observed
    ([0.0, 0.0, 0.0], ['y'])
    """
    from pymc_ext.amortized.targets import PyMCTarget

    target = amortizer.target
    stan = None if model_builder is not None else _stan_keywords(target.density)
    if model_builder is None and stan is None:
        what = (
            "the function that built the training model: build(data) returns the pm.Model "
            "for one dataset" if isinstance(target, PyMCTarget)
            else "a function data -> this density at those data"
        )
        raise ValueError(
            "On a cluster the workers rebuild the model from what they are sent, never from "
            f"live objects: pass model_builder=build, {what} (importable on the workers, or "
            "defined in __main__)."
        )
    if model_builder is not None and not callable(model_builder):
        raise TypeError("model_builder must be a function data -> model.")
    recipe = ModelRecipe(
        build=model_builder,
        data={k: np.asarray(v) for k, v in target.current_data().items()},
        stan=stan,
        observed=list(target.observed),
        covariates=list(target.covariates),
        covariate_sampler=getattr(target, "covariate_sampler", None),
        num_threads=amortizer.num_threads,
        device=str(amortizer.device),
    )
    _check_recipe(amortizer, recipe)
    return recipe


def _check_recipe(amortizer: Any, recipe: ModelRecipe) -> None:
    """Rebuild the model here (no compiling) and compare its fingerprint with the amortizer's."""
    from pymc_ext.amortized.serialization import (
        current_fingerprint,
        fingerprint_differences,
        strip_rows,
    )

    has_rows = amortizer.layout.has_rows
    model = recipe.model()
    if recipe.stan is not None and model.build.library != amortizer.density.build.library:
        raise ValueError(
            "Rebuilt from its code, data and seed, this Stan program gives another compiled "
            "library (it was built with stanc_options, cxxflags or include_paths): pass "
            "model_builder=lambda data: StanModel(..., data) with the same options, so the "
            "workers load the library from the build cache instead of compiling another."
        )
    saved = strip_rows(amortizer.target.fingerprint(), has_rows)
    diffs = fingerprint_differences(
        saved, current_fingerprint(model, recipe.observed, recipe.covariates, has_rows)
    )
    if diffs:
        raise AmortizerMismatchError(
            "model_builder builds a model other than the amortizer's: " + "; ".join(diffs)
            + ". Pass the function that built the training model. "
            + BUILDER_SIGNATURE + f" (keys {list(recipe.data)})."
        )


def saved_bytes(amortizer: Any) -> bytes:
    """The bytes of ``amortizer.save``'s file (what workers rebuild the networks from).

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> a = pymc_ext.Amortizer(model).fit(300, epochs=2, random_seed=0, progressbar=False)
    >>> from pymc_ext.amortized.recipe import saved_bytes
    >>> len(saved_bytes(a)) > 1000
    True
    """
    with tempfile.TemporaryDirectory(prefix="pymc_ext_cluster_") as tmp:
        path = os.path.join(tmp, "amortizer.pt")
        amortizer.save(path)
        with open(path, "rb") as fh:
            return fh.read()
