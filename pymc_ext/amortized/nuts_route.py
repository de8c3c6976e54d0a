"""The ``"nuts"`` route of ``fit_many`` for PyMC models: nutpie, compiled once.

``pm.sample`` on a model conditioned on each dataset compiles the model again
for every dataset: seconds each, most of the route's cost on small models
(eight schools: PyMC's NUTS about 6 s a dataset, nutpie's ``pm.sample``
about 2 s, nearly all of it the numba compile). Here the model is compiled by
nutpie once, with each observed variable's data made a shared variable;
each dataset then only swaps the data (``CompiledPyMCModel.with_data``) and
samples, in nuts-rs. The result has the model's names, dims and coords, and
the dataset as ``observed_data``.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from pymc_ext.pymc_adapter.conditioning import with_shared_observations

__all__ = ["CompiledNUTS", "compiled_nuts", "nutpie_available"]

#: Suffix of the shared variable that holds an observed variable's data.
DATA_SUFFIX = "__observed"


def nutpie_available() -> bool:
    """Whether nutpie (and numba) can be imported.

    Examples
    --------
    >>> from pymc_ext.amortized.nuts_route import nutpie_available
    >>> isinstance(nutpie_available(), bool)
    True
    """
    try:
        import numba  # noqa: F401
        import nutpie  # noqa: F401
    except ImportError:
        return False
    return True


class CompiledNUTS:
    """nutpie's NUTS on a PyMC model, compiled once, for many datasets.

    Parameters
    ----------
    model : pm.Model
        The model; its observed variables' data become swappable.

    Examples
    --------
    >>> import numpy as np, pymc as pm
    >>> from pymc_ext.amortized.nuts_route import CompiledNUTS
    >>> with pm.Model() as model:
    ...     mu = pm.Normal("mu", 0, 1)
    ...     y = pm.Normal("y", mu, 1, observed=np.zeros(4))
    >>> nuts = CompiledNUTS(model)                  # numba: a few seconds, once
    >>> idata = nuts.sample({"y": np.full(4, 2.0)}, draws=500, tune=300, chains=2, seed=1)
    >>> abs(float(idata.posterior["mu"].mean()) - 1.6) < 0.15   # exact posterior mean 8/5
    True
    >>> idata.observed_data["y"].values.tolist()
    [2.0, 2.0, 2.0, 2.0]
    """

    def __init__(self, model: Any) -> None:
        import nutpie

        self.model, self.names = with_shared_observations(model, DATA_SUFFIX)
        self.compiled = nutpie.compile_pymc_model(self.model)

    def sample(
        self,
        data: Mapping[str, Any],
        *,
        draws: int,
        tune: int = 1000,
        chains: int = 4,
        seed: int | None = None,
        **nuts_kwargs: Any,
    ) -> Any:
        """NUTS on the model at ``data``; a ``DataTree`` like ``pm.sample``'s.

        Parameters
        ----------
        data : dict
            ``name -> array`` for the observed variables (and ``pm.Data``).
        draws, tune, chains : int
            As ``pm.sample``; the chains run one after the other.
        seed : int, optional
            nutpie's seed.
        **nuts_kwargs
            Passed to ``nutpie.sample`` (``target_accept``, ``maxdepth``, ...).

        Returns
        -------
        xarray.DataTree
        """
        import nutpie
        from pymc.backends.arviz import patch_nutpie_idata

        updates = {self.names.get(name, name): np.asarray(value) for name, value in data.items()}
        compiled = self.compiled.with_data(**updates)
        start = time.perf_counter()
        idata = nutpie.sample(
            compiled, draws=int(draws), tune=int(tune), chains=int(chains), cores=1, seed=seed,
            progress_bar=False, **nuts_kwargs,
        )
        patch_nutpie_idata(idata, self.model, sampling_time=time.perf_counter() - start)
        idata["observed_data"] = _observed(self.model, data)
        return idata


def _observed(model: Any, data: Mapping[str, Any]) -> Any:
    """The dataset as an ``observed_data`` group, with the model's dims where they fit."""
    import xarray as xr

    observed = {rv.name for rv in model.observed_RVs}
    variables = {}
    for name, value in data.items():
        if name not in observed:
            continue
        value = np.asarray(value)
        dims = model.named_vars_to_dims.get(name)
        if dims is None or len(dims) != value.ndim:
            dims = tuple(f"{name}_dim_{i}" for i in range(value.ndim))
        coords = {
            d: np.asarray(list(model.coords[d]))
            for d in dims
            if model.coords.get(d) is not None
            and len(model.coords[d]) == value.shape[dims.index(d)]
        }
        variables[name] = xr.DataArray(value, dims=dims, coords=coords)
    return xr.DataTree(xr.Dataset(variables))


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def compiled_nuts(model: Any) -> CompiledNUTS:
    """The :class:`CompiledNUTS` of ``model``, compiled on first use and kept while it lives.

    Examples
    --------
    >>> import numpy as np, pymc as pm
    >>> from pymc_ext.amortized.nuts_route import compiled_nuts
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(2))
    >>> compiled_nuts(model) is compiled_nuts(model)
    True
    """
    with _CACHE_LOCK:
        if model not in _CACHE:
            _CACHE[model] = CompiledNUTS(model)
        return _CACHE[model]
