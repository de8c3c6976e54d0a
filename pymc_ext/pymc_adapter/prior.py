"""The prior predictive of a PyMC model, vectorised over the number of draws.

:func:`prior_predictive` draws (parameters, data) pairs from the model's own
random graph: every root random variable gets a leading axis of size ``n`` and
the rest of the graph is vectorised over it. :class:`PriorPredictiveSampler`
is the compiled sampler behind it (also used by the amortized targets).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pymc.pytensorf import compile as pm_compile
from pytensor.graph.replace import vectorize_graph

from pymc_ext.pymc_adapter.logdensity import (
    ModelSpecificationError,
    log_density,
    model_cache,
    resolve_model,
    structure_key,
)

__all__ = ["prior_predictive", "PriorPredictiveSampler", "root_rvs", "vectorize_prior"]


def root_rvs(rvs: Sequence[pt.TensorVariable], all_rvs: set) -> list:
    """The random variables in ``rvs`` that have no other model RV among their ancestors.

    Parameters
    ----------
    rvs : sequence of TensorVariable
        Candidate random variables.
    all_rvs : set
        Every random variable of the model (free and observed).

    Returns
    -------
    list
        The roots, in the order of ``rvs``.

    Examples
    --------
    >>> import pymc as pm
    >>> from pymc_ext.pymc_adapter.prior import root_rvs
    >>> with pm.Model() as m:
    ...     mu = pm.Normal("mu")
    ...     y = pm.Normal("y", mu, 1, observed=[0.0])
    >>> [rv.name for rv in root_rvs([mu, y], {mu, y})]
    ['mu']
    """
    from pytensor.graph.traversal import ancestors

    roots = []
    for rv in rvs:
        parents = [a for a in ancestors(rv.owner.inputs) if a in all_rvs and a is not rv]
        if not parents:
            roots.append(rv)
    return roots


def vectorize_prior(outs: Sequence[pt.TensorVariable], all_rvs: set, n: pt.TensorVariable) -> list:
    """The graph of ``outs`` (model RVs) with a leading axis of size ``n`` on every RV.

    Root RVs get the new axis from their size (``change_dist_size``); the rest
    of the graph is vectorised over it. A non-root RV with an explicit size
    (``shape=``, ``dims=`` or the shape of its observed data) gets the size
    ``(n, *size)`` explicitly: PyTensor would widen it only by the batch
    dimensions of its *first* parameter, and fail ("Size length is
    incompatible with batched dimensions") where that is a constant, as in
    ``pm.Binomial("y", n=20, p=p, observed=y)`` or ``pm.StudentT("y", nu=4,
    mu=mu, sigma=s, observed=y)``.

    Parameters
    ----------
    outs : sequence of TensorVariable
        The model RVs to draw.
    all_rvs : set
        Every random variable of the model (free and observed).
    n : TensorVariable
        The integer scalar number of draws.

    Returns
    -------
    list
        ``outs`` vectorised, in order.

    Examples
    --------
    >>> import numpy as np, pymc as pm, pytensor.tensor as pt
    >>> from pymc_ext.pymc_adapter.prior import vectorize_prior
    >>> with pm.Model() as m:
    ...     p = pm.Beta("p", 2, 2)
    ...     y = pm.Binomial("y", n=20, p=p, observed=np.full(6, 8))
    >>> n = pt.iscalar("n")
    >>> p_n, y_n = vectorize_prior([p, y], {p, y}, n)
    >>> y_n.eval({n: 4}).shape
    (4, 6)
    """
    from pymc.distributions.shape_utils import change_dist_size
    from pytensor.graph.traversal import graph_inputs, io_toposort
    from pytensor.tensor.random.op import RandomVariable
    from pytensor.tensor.type_other import NoneTypeT

    outs = list(outs)
    roots = root_rvs(outs, all_rvs)
    # each sized non-root RV gets its own placeholder size, replaced by (n, *size) below
    memo: dict = {}
    sizes: dict = {}
    for node in io_toposort(list(graph_inputs(outs)), outs):
        new_inputs = [memo.get(i, i) for i in node.inputs]
        rv_out = next((o for o in node.outputs if o in all_rvs), None)
        if isinstance(node.op, RandomVariable) and rv_out is not None and rv_out not in roots:
            size = node.op.size_param(node)
            if not isinstance(size.type, NoneTypeT) and size.type.ndim == 1 and (
                size.type.shape[0] is not None
            ):
                placeholder = pt.tensor(
                    f"{rv_out.name}_size", dtype=size.dtype, shape=size.type.shape
                )
                sizes[placeholder] = pt.concatenate(
                    [pt.as_tensor([n]).astype(size.dtype), memo.get(size, size)]
                )
                new_inputs[node.inputs.index(size)] = placeholder
        if all(a is b for a, b in zip(new_inputs, node.inputs, strict=True)):
            continue
        new_node = node.clone_with_new_inputs(new_inputs, strict=False)
        memo.update(zip(node.outputs, new_node.outputs, strict=True))
    rebuilt = [memo.get(o, o) for o in outs]
    replace = dict(sizes)
    for rv, new in zip(outs, rebuilt, strict=True):
        if rv in roots:
            replace[new] = change_dist_size(new, new_size=(n,), expand=True)
    return list(vectorize_graph(rebuilt, replace=replace))


class PriorPredictiveSampler:
    """Compiled, vectorised sampler of (free RVs, observed RVs) from the prior.

    Parameters
    ----------
    model : pm.Model
        The model.
    observed : sequence of str
        Names of the observed variables to simulate.

    Calling it as ``sampler(n, rng)`` returns ``(free, obs)``: two dicts
    ``name -> ndarray (n, *shape)``, free variables on their constrained space.

    Examples
    --------
    >>> import numpy as np, pymc as pm
    >>> from pymc_ext.pymc_adapter.prior import PriorPredictiveSampler
    >>> with pm.Model() as m:
    ...     mu = pm.Normal("mu")
    ...     y = pm.Normal("y", mu, 1, observed=[0.0, 0.0])
    >>> free, obs = PriorPredictiveSampler(m, ["y"])(4, np.random.default_rng(0))
    >>> free["mu"].shape, obs["y"].shape
    ((4,), (4, 2))
    """

    def __init__(self, model: pm.Model, observed: Sequence[str]) -> None:
        self.model = model
        self.observed = list(observed)
        obs_rvs = [model[name] for name in self.observed]
        free = list(model.free_RVs)
        all_rvs = set(model.free_RVs) | set(model.observed_RVs)
        self.n = pt.iscalar("n")
        outs = vectorize_prior(free + obs_rvs, all_rvs, self.n)
        self.free_names = [rv.name for rv in free]
        with model:
            self.fn = pm_compile([self.n], outs, random_seed=False)

    def __call__(self, n: int, rng: np.random.Generator) -> tuple[dict, dict]:
        """``n`` joint draws ``(free, obs)``, reseeded from ``rng``."""
        from pymc.pytensorf import reseed_rngs

        shared_rngs = [
            s
            for s in self.fn.get_shared()
            if isinstance(s.type, pt.random.type.RandomGeneratorType)
        ]
        reseed_rngs(shared_rngs, rng.integers(2**31))
        values = self.fn(np.int32(n))
        k = len(self.free_names)
        free = dict(zip(self.free_names, values[:k], strict=True))
        obs = dict(zip(self.observed, values[k:], strict=True))
        return free, obs


def prior_predictive(
    model: pm.Model | None = None,
    n: int = 1000,
    random_seed: int | np.random.Generator | None = None,
    observed: Sequence[str] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draw ``n`` (parameters, data) pairs from a model's prior predictive, vectorised.

    The draws come from the model's own random graph: every root random
    variable is given a leading axis of size ``n`` and the rest of the graph
    is vectorised over it, so one compiled call produces all ``n`` pairs.

    Parameters
    ----------
    model : pm.Model, optional
        The model; the one in context by default.
    n : int
        Number of simulations.
    random_seed : int or Generator, optional
        Seed for reproducible draws.
    observed : list of str, optional
        Names of the observed variables to simulate (all by default).

    Returns
    -------
    params : ndarray, shape (n, dim)
        Parameters on the unconstrained space of :func:`log_density`.
    data : dict
        ``observed name -> ndarray (n, *shape)``.

    Examples
    --------
    >>> import pymc as pm, pymc_ext
    >>> with pm.Model() as model:
    ...     mu = pm.Normal("mu", 0, 1)
    ...     y = pm.Normal("y", mu, 1, observed=[0.0, 0.0, 0.0])
    >>> params, data = pymc_ext.prior_predictive(model, n=500, random_seed=1)
    >>> params.shape, data["y"].shape
    ((500, 1), (500, 3))
    """
    model = resolve_model(model)
    density = log_density(model)
    if observed is None:
        observed = [rv.name for rv in model.observed_RVs]
    unknown = [o for o in observed if o not in {rv.name for rv in model.observed_RVs}]
    if unknown:
        raise ModelSpecificationError(
            f"{unknown} are not observed variables of the model; observed variables are "
            f"{[rv.name for rv in model.observed_RVs]}."
        )
    cache = model_cache(model)
    key = ("prior_predictive", structure_key(model), tuple(observed))
    if key not in cache:
        cache[key] = PriorPredictiveSampler(model, observed)
    sampler = cache[key]
    rng = np.random.default_rng(random_seed)
    free, obs = sampler(int(n), rng)
    params = density.unconstrain_batch(free) if n else np.zeros((0, density.dim))
    return params, {k: np.asarray(v) for k, v in obs.items()}
