"""A PyMC model sampled through an affine map: ``x = mu + L z``.

nutpie takes no mass matrix, but it samples any model it can compile. A warm
start's covariance ``Sigma ~ L L^T`` can therefore be given to it as a change
of variables: :func:`reparametrized_model` builds a PyMC model with one free
vector ``z`` (flat, no transform) whose density is the user's model at
``x = mu + L z`` (``x`` the model's flat unconstrained vector, in
:func:`~pymc_ext.log_density`'s ordering). In ``z`` a good warm start leaves a
posterior close to a standard normal, which is what a sampler with a unit
metric handles best. The Jacobian ``log|det L|`` is a constant and is left
out, so the new model's log density *equals* the user's at the mapped point
(and nutpie's ``logp`` statistic means what it always means).

Every variable of the user's model (free variables, their transformed values,
Deterministics) is a Deterministic of the new model, with the same name and
dims, so a trace of the new model minus ``z`` is a trace of the user's model.

The map's numbers are constants of the new graph. (Shared variables would let
one compile serve every map, so that Pathfinder could run on nutpie's own
compiled function; but nutpie's numba compile costs seconds more per shared
variable, more than the separate Pathfinder density saves; see
``docs/warmstart.md``, section "nutpie".)

The map itself is :class:`~pymc_ext.blocks.affine.AffineReparam`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pymc_ext.blocks.affine import AffineReparam

__all__ = ["ReparametrizedModel", "reparametrized_model", "LATENT_NAME"]

#: Name of the free vector of the reparametrised model (a suffix is added if
#: the user's model already has a variable of that name).
LATENT_NAME = "reparam_z"


@dataclass(frozen=True)
class ReparametrizedModel:
    """A PyMC model over ``z``, standing for a user's model over ``x = mean + L z``.

    Attributes
    ----------
    model : pm.Model
        The new model: one free vector ``latent`` and, as Deterministics,
        every traced variable of the user's model.
    reparam : AffineReparam
        The map (constants of the new model's graph).
    latent : str
        Name of the free vector ``z``.
    transformed_names : list of str
        Names of the user's transformed value variables (``sigma_log__``);
        ``pm.sample`` keeps them out of the posterior.
    value_names : list of str
        The user's value variables, in the order of ``x``.
    unconstrained_labels : list of str
        One label per entry of ``x``, as nutpie names its
        ``unconstrained_parameter`` coordinate.
    """

    model: Any
    reparam: AffineReparam
    latent: str
    transformed_names: list[str]
    value_names: list[str]
    unconstrained_labels: list[str]

    @property
    def dim(self) -> int:
        """Length of ``z`` (and ``x``)."""
        return len(self.unconstrained_labels)

    @property
    def hidden_names(self) -> list[str]:
        """Names a trace of the new model has and ``pm.sample`` would not show."""
        return [self.latent, *self.transformed_names]


def _coords(model: Any) -> dict[str, Any]:
    """The model's coords with every dimension given values (lengths-only dims get a range)."""
    out = {}
    for name, vals in model.coords.items():
        if vals is None:
            vals = np.arange(int(model.dim_lengths[name].eval()))
        out[name] = vals
    return out


def _free_name(taken: Any, base: str) -> str:
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name


def _labels(names: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> list[str]:
    out = []
    for base, shape in zip(names, shapes, strict=True):
        for idx in itertools.product(*[range(n) for n in shape]):
            out.append(f"{base}_{'.'.join(str(i) for i in idx)}" if idx else base)
    return out


def _traced_outputs(model: Any, var_names: Iterable[str] | None) -> list[Any]:
    """What ``pm.sample(nuts_sampler="nutpie")`` traces, in its order (value variables first)."""
    values = [model.rvs_to_values[rv] for rv in model.free_RVs]
    names = {v.name for v in values}
    rest = [v for v in model.unobserved_value_vars if v.name not in names]
    if var_names is not None:
        keep = set(var_names)
        rest = [v for v in rest if v.name in keep]
    return values + rest


def _dims_of(model: Any, name: str, shapes: Mapping[str, tuple[int, ...]]) -> Any:
    """The dims of ``name``; a transformed value gets its variable's where the shapes match."""
    dims = model.named_vars_to_dims.get(name)
    if dims is not None or name not in shapes:
        return dims
    rv = next((r for v, r in model.values_to_rvs.items() if v.name == name), None)
    dims = model.named_vars_to_dims.get(rv.name) if rv is not None else None
    if not dims or any(model.coords.get(d) is None for d in dims):
        return None
    return dims if tuple(len(model.coords[d]) for d in dims) == shapes[name] else None


def _map_graph(reparam: AffineReparam, z: Any) -> Any:
    """``mean + L z`` as a PyTensor expression, the map's numbers as constants."""
    import pytensor.tensor as pt

    const = pt.as_tensor
    if reparam.kind == "dense":
        return const(reparam.mean) + pt.dot(const(reparam.chol), z)
    if reparam.kind == "lowrank":
        vecs = const(reparam.vecs)
        z = z + pt.dot(vecs, const(np.sqrt(reparam.vals) - 1.0) * pt.dot(vecs.T, z))
    return const(reparam.mean) + const(reparam.scale) * z


def reparametrized_model(
    model: Any,
    reparam: AffineReparam,
    *,
    slices: Mapping[str, slice] | None = None,
    var_names: Iterable[str] | None = None,
) -> ReparametrizedModel:
    """The model over ``z`` whose density is ``model``'s at ``x = mean + L z`` (no Jacobian).

    Parameters
    ----------
    model : pm.Model
        The user's model, continuous free variables only (as
        :func:`~pymc_ext.log_density` checks, which gives the warm start the map
        comes from).
    reparam : AffineReparam
        The map, on ``model``'s flat unconstrained vector.
    slices : dict, optional
        ``value variable name -> slice`` of ``x``; by default the ordering of
        :func:`~pymc_ext.log_density` (``model.value_vars``).
    var_names : iterable of str, optional
        As ``pm.sample``'s ``var_names``: the free variables' values are always
        traced, other variables only when named.

    Returns
    -------
    ReparametrizedModel

    Raises
    ------
    ValueError
        When the map's dimension is not the model's.

    Examples
    --------
    >>> import numpy as np, pymc as pm
    >>> from pymc_ext.blocks.affine import affine_reparam
    >>> from pymc_ext.pymc_adapter.reparam import reparametrized_model
    >>> with pm.Model(coords={"i": ["a", "b"]}) as model:
    ...     x = pm.Normal("x", 0, 1, dims="i")
    ...     s = pm.HalfNormal("s")
    ...     d = pm.Deterministic("d", x.sum() * s)
    >>> r = affine_reparam(np.ones(3), np.diag([4.0, 4.0, 1.0]), "diag")
    >>> rm = reparametrized_model(model, r)
    >>> [v.name for v in rm.model.free_RVs], rm.model.named_vars_to_dims["x"]
    (['reparam_z'], ('i',))
    >>> lp_z = rm.model.compile_logp()({"reparam_z": np.zeros(3)})
    >>> lp_x = model.compile_logp()({"x": np.ones(2), "s_log__": np.array(1.0)})
    >>> bool(np.isclose(lp_z, lp_x))
    True
    """
    import pymc as pm
    from pytensor.graph.replace import graph_replace

    values = [model.rvs_to_values[rv] for rv in model.free_RVs]
    ip = model.initial_point()
    shapes = {v.name: tuple(np.shape(ip[v.name])) for v in values}
    if slices is None:
        slices, start = {}, 0
        for v in model.value_vars:
            size = int(np.prod(np.shape(ip[v.name]), dtype=int))
            slices[v.name] = slice(start, start + size)
            start += size
    dim = sum(int(np.prod(s, dtype=int)) for s in shapes.values())
    if reparam.dim != dim:
        raise ValueError(
            f"The map has dimension {reparam.dim} but the model has {dim} unconstrained "
            "parameters; build the map from this model's warm start."
        )
    latent = _free_name(model.named_vars, LATENT_NAME)
    outputs = _traced_outputs(model, var_names)
    with pm.Model(coords=_coords(model), check_bounds=model.check_bounds, model=None) as new:
        x = _map_graph(reparam, pm.Flat(latent, shape=dim))
        replace = {v: x[slices[v.name]].reshape(shapes[v.name]).astype(v.dtype) for v in values}
        logp, *traced = graph_replace([model.logp(), *outputs], replace, strict=False)
        pm.Potential(_free_name(set(model.named_vars) | {latent}, f"{latent}_logp"), logp)
        for var, expr in zip(outputs, traced, strict=True):
            pm.Deterministic(var.name, expr, dims=_dims_of(model, var.name, shapes))
    order = [v.name for v in values]
    return ReparametrizedModel(
        model=new,
        reparam=reparam,
        latent=latent,
        transformed_names=[
            model.rvs_to_values[rv].name
            for rv in model.free_RVs
            if model.rvs_to_transforms.get(rv) is not None
        ],
        value_names=order,
        unconstrained_labels=_labels(order, [shapes[n] for n in order]),
    )
