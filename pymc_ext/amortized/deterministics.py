"""Posterior values at each dataset's own data: Deterministics that depend on the data.

An amortizer draws the free parameters for a dataset that is not in the
training model. The model's Deterministics that read the data (observed
values, or ``pm.Data`` covariates), such as ``pm.Deterministic("resid", y -
mu)`` or a per-observation ``mu_i = a + b * x``, must then be computed with that
dataset's data, not with the training model's. :class:`DatasetDeterministics`
compiles them once with the data as inputs (the graph of the training model,
data replaced, as the true joint density of
:class:`~pymc_ext.amortized.pymc_target.PyMCTarget` is built); the free
variables and the Deterministics that do not read the data keep the model's
own compiled function.

A Deterministic that reads the training data through a constant baked into
the graph (a NumPy array that is also the observed value, say) cannot be
moved to another dataset: where a dataset's data differ from the training
data it is left out of the result, with a warning that names it and says to
declare the data with ``pm.Data``.

:func:`posterior_values` is what ``Amortizer.sample``, ``sample_many`` and
``fit_many`` use; :func:`datatree_at` builds one dataset's DataTree.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["DatasetDeterministics", "datatree_at", "posterior_values"]


class DatasetDeterministics:
    """The Deterministics of a PyMC target that depend on the data, at any dataset.

    Parameters
    ----------
    target : PyMCTarget
        The amortization target (its model, observed names and covariates).

    Attributes
    ----------
    dependent : list of str
        Deterministics computed from the dataset's data.
    frozen : dict
        ``Deterministic -> data names`` whose training values are baked into
        its graph as constants (left out where a dataset's data differ).

    Examples
    --------
    >>> import numpy as np, pymc as pm
    >>> from pymc_ext.amortized.pymc_target import PyMCTarget
    >>> from pymc_ext.amortized.deterministics import DatasetDeterministics
    >>> with pm.Model() as model:
    ...     y_obs = pm.Data("y_obs", np.zeros(4))
    ...     mu = pm.Normal("mu")
    ...     d = pm.Deterministic("ybar_minus_mu", y_obs.mean() - mu)
    ...     y = pm.Normal("y", mu, 1, observed=y_obs)
    >>> dets = DatasetDeterministics(PyMCTarget(model))
    >>> dets.dependent
    ['ybar_minus_mu']
    >>> dets(np.zeros((2, 1)), {"y": np.full(4, 3.0)})["ybar_minus_mu"].tolist()
    [3.0, 3.0]
    """

    def __init__(self, target: Any) -> None:
        from pytensor.graph.basic import Constant
        from pytensor.graph.traversal import ancestors

        self.target = target
        model = target.model
        data_vars = target.data_variables()
        dets = list(model.deterministics)
        outs = model.replace_rvs_by_values(dets) if dets else []
        data_set = set(data_vars)
        self.dependent: list[str] = []
        self._outs: list[Any] = []
        for det, out in zip(dets, outs, strict=True):
            if data_set & set(ancestors([out])):
                self.dependent.append(det.name)
                self._outs.append(out)
        current = target.current_data()
        self.training = current
        self.frozen: dict[str, list[str]] = {}
        for det, out in zip(dets, outs, strict=True):
            names = []
            for var in ancestors([out], blockers=list(data_vars)):
                if not isinstance(var, Constant) or var in data_set:
                    continue
                value = np.asarray(var.data)
                if value.size < 2:
                    continue
                for name, train in current.items():
                    if (value.shape == np.shape(train) and name not in names
                            and np.array_equal(value, train)):
                        names.append(name)
            if names:
                self.frozen[det.name] = names
        self._fn = None

    def _build(self) -> None:
        import pytensor.tensor as pt
        from pymc.pytensorf import compile as pm_compile
        from pytensor.graph.replace import vectorize_graph

        from pymc_ext.amortized.pymc_target import rebuild_graph

        target = self.target
        density = target.density
        theta = pt.vector("theta")
        replace = {}
        for v in density.value_vars:
            shape = target.value_shapes[v.name]
            replace[v] = theta[density.slices[v.name]].reshape(shape).astype(v.dtype)
        inputs = []
        for name, var in zip(target.data_names(), target.data_variables(), strict=True):
            inp = pt.tensor(f"{name}_data", dtype=var.dtype, shape=(None,) * var.ndim)
            replace[var] = inp
            inputs.append(inp)
        outs = rebuild_graph(self._outs, replace)
        Theta = pt.matrix("Theta")
        outs_vec = vectorize_graph(outs, {theta: Theta})
        self._batched = [v.ndim == o.ndim + 1 for o, v in zip(outs, outs_vec, strict=True)]
        with target.model:
            self._fn = pm_compile(
                [Theta, *inputs], list(outs_vec), random_seed=False, on_unused_input="ignore"
            )

    def __call__(self, theta: np.ndarray, data: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The dependent Deterministics at the rows of ``theta`` ``(n, dim)`` and ``data``.

        Raises whatever the compiled graph raises at data it cannot take.
        """
        if not self.dependent:
            return {}
        if self._fn is None:
            self._build()
        theta = np.ascontiguousarray(np.atleast_2d(np.asarray(theta, dtype=float)))
        values = self._fn(theta, *self.target._data_args(data))
        n = theta.shape[0]
        out = {}
        for name, value, batched in zip(self.dependent, values, self._batched, strict=True):
            value = np.asarray(value)
            out[name] = value if batched else np.broadcast_to(value, (n, *value.shape)).copy()
        return out

    def stale(self, data: Mapping[str, Any]) -> list[str]:
        """The frozen Deterministics whose baked-in training data differ from ``data``'s."""
        out = []
        for det, names in self.frozen.items():
            for name in names:
                new = np.asarray(data[name]) if name in data else None
                if new is None or new.shape != np.shape(self.training[name]) or not np.array_equal(
                    new, self.training[name]
                ):
                    out.append(det)
                    break
        return out


def _dataset_deterministics(target: Any) -> DatasetDeterministics | None:
    """The target's :class:`DatasetDeterministics` (built once), or None for a non-PyMC target."""
    if not callable(getattr(target, "data_variables", None)):
        return None
    dets = getattr(target, "_dataset_dets", None)
    if dets is None:
        dets = DatasetDeterministics(target)
        target._dataset_dets = dets
    return dets


def _warn_left_out(names: Sequence[str], why: str, stacklevel: int) -> None:
    warnings.warn(
        f"Deterministics {sorted(set(names))} are left out of the result: {why}",
        UserWarning,
        stacklevel=stacklevel + 1,
    )


def posterior_values(
    amortizer: Any,
    theta: np.ndarray,
    datasets: Sequence[Mapping[str, Any]],
    stacklevel: int = 2,
) -> list[dict[str, np.ndarray]]:
    """Free variables and Deterministics for each dataset, its own data used.

    Parameters
    ----------
    amortizer : Amortizer
    theta : ndarray, shape (B, n, dim)
        Unconstrained draws, ``n`` per dataset.
    datasets : list of dict
        The ``B`` (checked) datasets.
    stacklevel : int
        Of the warnings, counted from the caller of this function.

    Returns
    -------
    list of dict
        Per dataset, ``name -> (n, *shape)`` in the model's order. A
        Deterministic that reads data the amortizer cannot replace (see the
        module docstring), or that fails at a dataset, is left out with a
        warning.

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> from pymc_ext.amortized.deterministics import posterior_values
    >>> with pm.Model() as model:
    ...     x = pm.Data("x", np.zeros(3))
    ...     b = pm.Normal("b")
    ...     mu = pm.Deterministic("mu_i", b * x)
    ...     y = pm.Normal("y", mu, 1, observed=np.zeros(3), shape=x.shape)
    >>> a = pymc_ext.Amortizer(model, covariates=["x"])
    >>> out = posterior_values(a, np.ones((1, 2, 1)), [{"y": np.zeros(3), "x": np.arange(3.0)}])
    >>> out[0]["mu_i"].tolist()
    [[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]]
    """
    theta = np.asarray(theta, dtype=float)
    B, n, dim = theta.shape
    flat = amortizer.density.constrain_batch(theta.reshape(-1, dim))
    base = [{k: np.asarray(v)[b * n : (b + 1) * n] for k, v in flat.items()} for b in range(B)]
    dets = _dataset_deterministics(amortizer.target)
    if dets is None or not (dets.dependent or dets.frozen):
        return base
    left_out: dict[str, str] = {}
    for b, data in enumerate(datasets):
        try:
            base[b].update(dets(theta[b], data))
        except Exception as err:  # noqa: BLE001 - reported by name, below
            for name in dets.dependent:
                base[b].pop(name, None)
                left_out.setdefault(name, f"they could not be computed at this data ({err}).")
        for name in dets.stale(data):
            base[b].pop(name, None)
            left_out.setdefault(
                name,
                f"they read the training data {dets.frozen[name]} through a constant in the "
                "model's graph (a NumPy array), which the amortizer cannot replace by the "
                "dataset's. Declare those data with pm.Data (and use the pm.Data variable in "
                "the Deterministic) to get them computed at each dataset.",
            )
    if left_out:
        by_reason: dict[str, list[str]] = {}
        for name, why in left_out.items():
            by_reason.setdefault(why, []).append(name)
        for why, names in by_reason.items():
            _warn_left_out(names, why, stacklevel + 1)
        for values in base:
            for name in left_out:
                values.pop(name, None)
    return base


def stack_values(
    values: Sequence[Mapping[str, np.ndarray]], stacklevel: int = 2
) -> dict[str, np.ndarray]:
    """Per-dataset values stacked to ``name -> (B, n, *shape)``.

    A variable whose shape differs between datasets (a per-observation
    Deterministic on datasets of different sizes) is left out, with a warning.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.amortized.deterministics import stack_values
    >>> stack_values([{"mu": np.zeros(5)}, {"mu": np.ones(5)}])["mu"].shape
    (2, 5)
    """
    out = {}
    ragged = []
    for name in values[0]:
        shapes = {np.shape(v[name]) for v in values}
        if len(shapes) > 1:
            ragged.append(name)
            continue
        out[name] = np.stack([np.asarray(v[name]) for v in values])
    if ragged:
        _warn_left_out(
            ragged,
            "their shapes differ between the datasets (datasets of different sizes). "
            "Draw each dataset with Amortizer.sample (or fit_many) to get them.",
            stacklevel + 1,
        )
    return out


class _ValuesView:
    """A density-like object for ``to_datatree`` that hands back precomputed values."""

    def __init__(self, density: Any, values: Mapping[str, np.ndarray], rows: int) -> None:
        self.dim = density.dim
        self.coords = getattr(density, "coords", None) or {}
        self._values = {k: np.asarray(v).reshape(rows, *np.shape(v)[2:]) for k, v in values.items()}
        dims = dict(getattr(density, "dims", None) or {})
        for name, value in self._values.items():
            named = dims.get(name)
            if named and not _dims_fit(list(named), value.shape[1:], self.coords):
                dims.pop(name)
        self.dims = dims
        self.names = list(self._values)

    def constrain_batch(self, X: np.ndarray) -> dict[str, np.ndarray]:
        if np.shape(X)[0] != next(iter(self._values.values())).shape[0]:
            raise ValueError("the draws are not those the values were computed for.")
        return self._values


def _dims_fit(named: list[str], shape: tuple[int, ...], coords: Mapping[str, Any]) -> bool:
    if len(named) != len(shape):
        return False
    return all(d not in coords or len(coords[d]) == n for d, n in zip(named, shape, strict=True))


def datatree_at(
    amortizer: Any,
    theta: np.ndarray,
    data: Mapping[str, Any] | None,
    *,
    values: Mapping[str, np.ndarray] | None = None,
    stacklevel: int = 2,
    **kwargs: Any,
) -> Any:
    """``to_datatree`` of draws ``(chains, draws, dim)``, Deterministics at ``data``.

    With ``values`` (``name -> (chains, draws, ...)``, already computed, e.g.
    for the datasets of ``sample_many`` as chains), ``data`` is not used.
    ``kwargs`` go to :func:`~pymc_ext.pymc_adapter.datatree.to_datatree`.

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> from pymc_ext.amortized.deterministics import datatree_at
    >>> with pm.Model() as model:
    ...     y_obs = pm.Data("y_obs", np.zeros(3))
    ...     mu = pm.Normal("mu")
    ...     d = pm.Deterministic("d", y_obs.sum() - mu)
    ...     y = pm.Normal("y", mu, 1, observed=y_obs)
    >>> a = pymc_ext.Amortizer(model)
    >>> dt = datatree_at(a, np.zeros((1, 2, 1)), {"y": np.ones(3)})
    >>> dt.posterior["d"].values.tolist()
    [[3.0, 3.0]]
    """
    from pymc_ext.pymc_adapter.datatree import to_datatree

    theta = np.asarray(theta, dtype=float)
    chains, draws, dim = theta.shape
    if values is None:
        [flat] = posterior_values(
            amortizer, theta.reshape(1, -1, dim), [data], stacklevel=stacklevel + 1
        )
        values = {k: v.reshape(chains, draws, *np.shape(v)[1:]) for k, v in flat.items()}
    view = _ValuesView(amortizer.density, values, chains * draws)
    if "observed_data" not in kwargs and hasattr(amortizer.density, "observed_data"):
        kwargs["observed_data"] = amortizer.density.observed_data
    return to_datatree(view, theta, **kwargs)
