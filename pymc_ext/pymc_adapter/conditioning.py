"""A PyMC model conditioned on other data: the same graph, new observed values and covariates.

Amortized fitting sees a new dataset as a dict; the exact correction
(:class:`~pymc_ext.AmortizedMH`) needs a model whose likelihood is at that
dataset. :func:`condition_on` clones the model's graph (PyMC's
``fgraph_from_model`` / ``model_from_fgraph``), puts the new values in place
of the observed constants, and sets the cloned ``pm.Data`` containers. The
original model is never changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["condition_on", "with_shared_observations"]


def condition_on(model: Any, data: Mapping[str, Any]) -> Any:
    """A copy of ``model`` whose observed values and ``pm.Data`` are those in ``data``.

    Parameters
    ----------
    model : pm.Model
    data : dict
        ``name -> array`` for observed variables and ``pm.Data`` containers;
        names left out keep the model's values. Shapes may change where the
        model allows it (data containers whose length sets a dimension).

    Returns
    -------
    pm.Model
        A new model; ``model`` is not changed.

    Raises
    ------
    KeyError
        For a name that is neither observed nor a data container.

    Examples
    --------
    >>> import numpy as np, pymc as pm
    >>> from pymc_ext.pymc_adapter.conditioning import condition_on
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1.0, observed=np.zeros(3))
    >>> new = condition_on(model, {"y": np.ones(3)})
    >>> new.rvs_to_values[new["y"]].data.tolist(), model.rvs_to_values[model["y"]].data.tolist()
    ([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    """
    import pymc as pm
    import pytensor.tensor as pt
    from pymc.model.fgraph import ModelObservedRV, fgraph_from_model, model_from_fgraph
    from pytensor.compile.sharedvalue import SharedVariable

    observed = {rv.name for rv in model.observed_RVs}
    containers = set(model.data_vars) if hasattr(model, "data_vars") else set()
    containers = {v.name for v in containers} | {
        name for name, v in model.named_vars.items() if isinstance(v, SharedVariable)
    }
    unknown = sorted(set(data) - observed - containers)
    if unknown:
        raise KeyError(
            f"{unknown} are neither observed variables nor pm.Data of the model "
            f"(observed: {sorted(observed)}, data: {sorted(containers)})."
        )
    fgraph, _ = fgraph_from_model(model, inlined_views=True)
    shared_updates = {}
    for out in fgraph.outputs:
        node = out.owner
        if not (node is not None and isinstance(node.op, ModelObservedRV) and out.name in data):
            continue
        old = node.inputs[1]
        if isinstance(old, SharedVariable):  # observed through a pm.Data container
            shared_updates[old.name] = data[out.name]
            continue
        # a fresh copy: arrays unpickled from another process may be unaligned views
        new = pt.as_tensor(np.array(data[out.name], dtype=old.dtype, copy=True))
        fgraph.replace(old, new, import_missing=True)
    new_model = model_from_fgraph(fgraph, mutate_fgraph=True)
    updates = {name: value for name, value in data.items() if name in containers}
    updates.update(shared_updates)
    if updates:
        pm.set_data(updates, model=new_model)
    return new_model


def with_shared_observations(model: Any, suffix: str = "__observed") -> tuple[Any, dict[str, str]]:
    """A copy of ``model`` whose observed data are shared variables, to swap without recompiling.

    Parameters
    ----------
    model : pm.Model
    suffix : str
        Added to an observed variable's name to name its shared variable.

    Returns
    -------
    (pm.Model, dict)
        The new model, and ``observed name -> shared variable name`` (the
        container's own name for data already in a ``pm.Data``).

    Examples
    --------
    >>> import numpy as np, pymc as pm
    >>> from pymc_ext.pymc_adapter.conditioning import with_shared_observations
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1.0, observed=np.zeros(3))
    >>> new, names = with_shared_observations(model)
    >>> names
    {'y': 'y__observed'}
    """
    import pytensor
    from pymc.model.fgraph import ModelObservedRV, fgraph_from_model, model_from_fgraph
    from pytensor.compile.sharedvalue import SharedVariable
    from pytensor.graph.basic import Constant

    try:
        from pytensor.graph.traversal import graph_inputs
    except ImportError:  # PyTensor before 2.32
        from pytensor.graph.basic import graph_inputs

    fgraph, _ = fgraph_from_model(model, inlined_views=True)
    names: dict[str, str] = {}
    for out in list(fgraph.outputs):
        node = out.owner
        if node is None or not isinstance(node.op, ModelObservedRV):
            continue
        old = node.inputs[1]
        roots = [v for v in graph_inputs([old]) if not isinstance(v, Constant)]
        if len(roots) == 1 and isinstance(roots[0], SharedVariable):
            # a pm.Data container, maybe behind a cast or a name (pm.Data int64 data)
            names[out.name] = roots[0].name
            continue
        if roots:
            raise ValueError(
                f"The observed data of {out.name!r} depend on {[v.name for v in roots]}: "
                "give it a constant array or one pm.Data container."
            )
        value = np.array(old.eval(), dtype=old.dtype, copy=True)
        shared = pytensor.shared(value, name=out.name + suffix, shape=(None,) * value.ndim)
        fgraph.replace(old, shared, import_missing=True)
        names[out.name] = shared.name
    return model_from_fgraph(fgraph, mutate_fgraph=True), names
