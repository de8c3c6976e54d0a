"""A PyMC model as an amortization target (see :mod:`pymc_ext.amortized.targets`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from pymc_ext.amortized.target_base import Simulations, chunk_sizes, flat_parameter_names
from pymc_ext.pymc_adapter.prior import PriorPredictiveSampler

__all__ = ["PyMCTarget", "SizedPriorPredictive", "pymc_fingerprint", "rebuild_graph"]


def rebuild_graph(outputs: list, replacements: dict) -> list:
    """Rebuild a graph with some variables replaced, letting static shapes change.

    ``graph_replace`` keeps every static shape by inserting ``SpecifyShape``;
    here the observed data must take any shape, so nodes are re-made from
    their ops, and the ``SpecifyShape`` that PyMC puts on observed values is
    dropped.
    """
    from pytensor.graph.traversal import graph_inputs, io_toposort
    from pytensor.tensor.shape import SpecifyShape

    memo = dict(replacements)
    for node in io_toposort(list(graph_inputs(outputs)), outputs):
        if any(o in memo for o in node.outputs):
            continue
        new_inputs = [memo.get(i, i) for i in node.inputs]
        if all(a is b for a, b in zip(new_inputs, node.inputs, strict=True)):
            continue
        if isinstance(node.op, SpecifyShape):
            memo[node.outputs[0]] = new_inputs[0]
            continue
        new_node = node.clone_with_new_inputs(new_inputs, strict=False)
        memo.update(zip(node.outputs, new_node.outputs, strict=True))
    return [memo.get(o, o) for o in outputs]


class SizedPriorPredictive(PriorPredictiveSampler):
    """Vectorised prior-predictive sampler that also handles RVs with a symbolic size.

    Kept for compatibility: :class:`~pymc_ext.pymc_adapter.prior.PriorPredictiveSampler`
    now gives every non-root RV with a size (``shape=x.shape``, ``dims=``, a
    constant first parameter such as ``pm.Binomial("y", n=20, p=p)``) the
    size ``(n, *size)`` explicitly (:func:`~pymc_ext.pymc_adapter.prior.vectorize_prior`).

    Examples
    --------
    >>> import numpy as np, pymc as pm
    >>> from pymc_ext.amortized.pymc_target import SizedPriorPredictive
    >>> with pm.Model() as m:
    ...     x = pm.Data("x", np.zeros(4))
    ...     p = pm.Beta("p", 2, 2)
    ...     y = pm.Binomial("y", n=20, p=p, observed=np.zeros(4, dtype=int), shape=x.shape)
    >>> free, obs = SizedPriorPredictive(m, ["y"])(3, np.random.default_rng(0))
    >>> obs["y"].shape
    (3, 4)
    """

    def __init__(self, model: Any, observed: Sequence[str]) -> None:
        super().__init__(model, observed)


class PyMCTarget:
    """A PyMC model as an amortization target.

    Parameters
    ----------
    model : pm.Model
        The model.
    observed : list of str, optional
        Observed variables to condition on (all by default).
    covariates : list of str, optional
        ``pm.Data`` variables to condition on as well (for example the
        regressors ``x`` of a regression). They enter the summary network
        next to the observations.
    covariate_sampler : callable, optional
        ``rng -> {covariate name: array}``: new covariate values for each
        block of simulations, so that training covers the covariates (and
        dataset sizes ``N``) you will see. Without it, training uses the
        covariates in the model. Changing ``N`` needs a model whose
        observed variable's size follows the data, e.g. ``shape=x.shape``.
    simulation_block : int
        Simulations per covariate draw.

    Examples
    --------
    >>> import numpy as np, pymc as pm
    >>> from pymc_ext.amortized.targets import PyMCTarget
    >>> with pm.Model() as model:
    ...     mu = pm.Normal("mu")
    ...     y = pm.Normal("y", mu, 1, observed=np.zeros(3))
    >>> target = PyMCTarget(model)
    >>> [(theta.shape, data["y"].shape)
    ...  for theta, data in target.simulate(4, np.random.default_rng(0))]
    [((4, 1), (4, 3))]
    >>> target.joint_logp(np.zeros((2, 1)), {"y": np.zeros(3)}).shape
    (2,)
    """

    kind = "pymc"
    simulation_chunk = 2000

    def __init__(
        self,
        model: Any,
        observed: Sequence[str] | None = None,
        covariates: Sequence[str] | None = None,
        covariate_sampler: Callable[[np.random.Generator], Mapping[str, Any]] | None = None,
        simulation_block: int = 32,
    ) -> None:
        import pymc as pm
        from pytensor.compile.sharedvalue import SharedVariable

        from pymc_ext.pymc_adapter.logdensity import log_density

        self.model = pm.modelcontext(model)
        self.density = log_density(self.model)
        self.dim = self.density.dim
        obs_names = [rv.name for rv in self.model.observed_RVs]
        if not obs_names:
            raise ValueError(
                "The model has no observed variables, so there is nothing to condition on. "
                "Give the likelihood `observed=` data (any placeholder values of the right shape)."
            )
        self.observed = list(obs_names if observed is None else observed)
        unknown = [o for o in self.observed if o not in obs_names]
        if unknown:
            raise ValueError(
                f"observed={unknown} are not observed variables of the model; its observed "
                f"variables are {obs_names}."
            )
        self.covariates = list(covariates or [])
        for c in self.covariates:
            var = self.model.named_vars.get(c)
            if not isinstance(var, SharedVariable):
                data_names = [v.name for v in self.model.data_vars]
                raise ValueError(
                    f"covariates: {c!r} is not a pm.Data variable of the model (pm.Data "
                    f"variables: {data_names}). Declare it with pm.Data({c!r}, values)."
                )
        if covariate_sampler is not None and not callable(covariate_sampler):
            raise TypeError("covariate_sampler must be a function rng -> {name: array}.")
        self.covariate_sampler = covariate_sampler
        self.simulation_block = int(simulation_block)
        initial = self.model.initial_point()
        self.value_shapes = {
            v.name: tuple(np.shape(initial[v.name])) for v in self.density.value_vars
        }
        self.param_names = flat_parameter_names(
            [(v.name, self.value_shapes[v.name]) for v in self.density.value_vars]
        )
        self._logp_fn = None
        self._logp_many_fn = None
        self._logp_grad_many_fn = None
        self._fallback_sampler: SizedPriorPredictive | None = None
        self._batched_ok = False

    def data_names(self) -> list[str]:
        """Observed names, then covariate names."""
        return self.observed + self.covariates

    def data_variables(self) -> list[Any]:
        """The model's variables that hold the data, in the order of :meth:`data_names`.

        The observed variables' values, then the covariates' ``pm.Data``.
        """
        return [self._obs_value_var(n) for n in self.observed] + [
            self.model[n] for n in self.covariates
        ]

    # -- data ---------------------------------------------------------------------------------
    def _obs_value_var(self, name: str) -> Any:
        return self.model.rvs_to_values[self.model[name]]

    def current_data(self) -> dict[str, np.ndarray]:
        """The observed values and covariates now in the model."""
        from pymc.pytensorf import extract_obs_data

        out = {n: np.asarray(extract_obs_data(self._obs_value_var(n))) for n in self.observed}
        for c in self.covariates:
            out[c] = np.asarray(self.model[c].get_value())
        return out

    # -- simulation -----------------------------------------------------------------------------
    def _prior_predictive(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        from pymc_ext.pymc_adapter.prior import prior_predictive

        if self._fallback_sampler is None:
            try:
                return prior_predictive(self.model, n, random_seed=rng, observed=self.observed)
            except ValueError as err:
                if "Size length is incompatible" not in str(err):
                    raise
                self._fallback_sampler = SizedPriorPredictive(self.model, self.observed)
        free, obs = self._fallback_sampler(n, rng)
        return self.density.unconstrain_batch(free), {k: np.asarray(v) for k, v in obs.items()}

    def simulate(self, n: int, rng: np.random.Generator) -> Simulations:
        """``n`` prior-predictive pairs as blocks ``[(params (k, dim), data {name: (k, ...)})]``."""
        import pymc as pm

        if self.covariate_sampler is None:
            params, obs = self._prior_predictive(int(n), rng)
            current = self.current_data()
            for c in self.covariates:
                obs[c] = np.broadcast_to(current[c], (int(n), *current[c].shape))
            return [(params, obs)]
        original = {c: self.model[c].get_value() for c in self.covariates}
        blocks: Simulations = []
        try:
            for k in chunk_sizes(int(n), self.simulation_block):
                new = self.covariate_sampler(rng)
                extra = set(new) - set(self.covariates)
                if extra:
                    raise ValueError(
                        f"covariate_sampler returned {sorted(extra)}, which are not among "
                        f"covariates={self.covariates}."
                    )
                if new:
                    pm.set_data(dict(new), model=self.model)
                try:
                    params, obs = self._prior_predictive(k, rng)
                except ValueError as err:
                    raise ValueError(
                        f"Simulating with the covariates from covariate_sampler failed ({err}). "
                        "If they change the number of observations, the likelihood's size has to "
                        "follow them: declare it with e.g. "
                        "`pm.Normal('y', mu, sigma, observed=y, shape=x.shape)`."
                    ) from err
                for c in self.covariates:
                    value = np.asarray(self.model[c].get_value())
                    obs[c] = np.broadcast_to(value, (k, *value.shape))
                blocks.append((params, obs))
        finally:
            pm.set_data(original, model=self.model)
        return blocks

    # -- the true joint density at any data ----------------------------------------------------
    def _build_logp(self) -> None:
        import pytensor.tensor as pt
        from pymc.pytensorf import compile as pm_compile
        from pytensor.graph.replace import vectorize_graph

        model, density = self.model, self.density
        theta = pt.vector("theta")
        replace = {}
        for v in density.value_vars:
            shape = self.value_shapes[v.name]
            replace[v] = theta[density.slices[v.name]].reshape(shape).astype(v.dtype)
        data_inputs = []
        for name, var in zip(self.data_names(), self.data_variables(), strict=True):
            inp = pt.tensor(f"{name}_data", dtype=var.dtype, shape=(None,) * var.ndim)
            replace[var] = inp
            data_inputs.append(inp)
        [logp] = rebuild_graph([model.logp(jacobian=True, sum=True)], replace)
        Theta = pt.matrix("Theta")
        logp_vec = vectorize_graph(logp, {theta: Theta})
        with model:
            self._logp_fn = pm_compile(
                [Theta, *data_inputs], logp_vec, random_seed=False, on_unused_input="ignore"
            )
        self._data_inputs = data_inputs
        self._logp_vec = logp_vec
        self._Theta = Theta

    def _batched_logp_graph(self) -> tuple[Any, list[Any], Any]:
        """The joint log density over a batch of datasets, as a PyTensor graph.

        Returns ``(Theta_b, data_b, out)``: ``Theta_b`` of shape ``(B, K, dim)``,
        one input per data variable with a leading batch axis, and ``out`` of
        shape ``(B, K)``, ``log p(theta_bk, y_b)``. Compile it (with gradients,
        for instance) inside ``self.model``.
        """
        import pytensor.tensor as pt
        from pytensor.graph.replace import vectorize_graph

        if self._logp_fn is None:
            self._build_logp()
        Theta_b = pt.tensor3("Theta_batch")
        batched = {
            inp: pt.tensor(f"{inp.name}_batch", dtype=inp.dtype, shape=(None,) * (inp.ndim + 1))
            for inp in self._data_inputs
        }
        out = vectorize_graph(self._logp_vec, {self._Theta: Theta_b, **batched})
        return Theta_b, list(batched.values()), out

    def _build_logp_many(self) -> None:
        from pymc.pytensorf import compile as pm_compile
        from pytensor.tensor.blockwise import Blockwise

        Theta_b, batched, out = self._batched_logp_graph()
        with self.model:
            self._logp_many_fn = pm_compile(
                [Theta_b, *batched], out, random_seed=False, on_unused_input="ignore"
            )
        # ops PyTensor could not vectorise natively fall back to a slow Blockwise loop;
        # a loop over datasets is faster then
        self._batched_ok = not any(
            isinstance(node.op, Blockwise) for node in self._logp_many_fn.maker.fgraph.apply_nodes
        )

    def logp_grad_many(
        self, theta: np.ndarray, data: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``log p(theta[b, i], y_b)`` ``(B, m)`` and its gradient in theta ``(B, m, dim)``.

        ``data`` holds a batch of datasets of one shape, ``name -> (B, ...)``
        (:meth:`stacked_by_shape`); compiled once per target.
        """
        if self._logp_grad_many_fn is None:
            import pytensor.tensor as pt
            from pymc.pytensorf import compile as pm_compile

            Theta_b, batched, out = self._batched_logp_graph()
            with self.model:
                self._logp_grad_many_fn = pm_compile(
                    [Theta_b, *batched], [out, pt.grad(out.sum(), Theta_b)],
                    random_seed=False, on_unused_input="ignore",
                )
        lp, grad = self._logp_grad_many_fn(np.ascontiguousarray(theta), *self._data_args(data))
        return lp, grad

    def stacked_by_shape(
        self, datasets: Sequence[Mapping[str, np.ndarray]]
    ) -> list[tuple[list[int], dict[str, np.ndarray]]]:
        """The datasets grouped by the shapes of their data: ``(indices, name -> stacked)``."""
        groups: dict[tuple, list[int]] = {}
        for b, d in enumerate(datasets):
            groups.setdefault(tuple(np.shape(d[n]) for n in self.data_names()), []).append(b)
        return [
            (idx, {n: np.stack([np.asarray(datasets[b][n]) for b in idx])
                   for n in self.data_names()})
            for idx in groups.values()
        ]

    def check_values(self, data: Mapping[str, Any], where: str = "data") -> None:
        """Raise :class:`~pymc_ext.amortized.layout.DataShapeError` for values the model cannot take.

        Integer data (a discrete likelihood's observed values, an integer
        ``pm.Data``) must hold whole numbers: they are never rounded.

        Examples
        --------
        >>> import numpy as np, pymc as pm
        >>> from pymc_ext.amortized.targets import PyMCTarget
        >>> with pm.Model() as model:
        ...     y = pm.Poisson("y", pm.Exponential("lam", 1), observed=np.ones(3, dtype=int))
        >>> PyMCTarget(model).check_values({"y": np.array([1.0, 2.5, 0.0])})
        Traceback (most recent call last):
        ...
        pymc_ext.amortized.layout.DataShapeError: data['y'] has non-integer values (e.g. 2.5), but the model's 'y' takes integers (int64; a discrete likelihood). Give whole numbers: they are not rounded.
        """  # noqa: E501
        from pymc_ext.amortized.layout import refuse_non_integer

        for name, var in zip(self.data_names(), self.data_variables(), strict=True):
            if name in data and np.issubdtype(np.dtype(var.dtype), np.integer):
                refuse_non_integer(
                    data[name], f"{where}[{name!r}]",
                    f"the model's {name!r} takes integers ({var.dtype}; a discrete likelihood)",
                )

    def _data_args(self, data: Mapping[str, np.ndarray], batched: bool = False) -> list:
        self.check_values(data)
        args = []
        for name, var in zip(self.data_names(), self.data_variables(), strict=True):
            # np.ascontiguousarray would make a scalar (0-d) observed value 1-d
            args.append(np.array(data[name], dtype=var.dtype, order="C"))
        return args

    def joint_logp(self, theta: np.ndarray, data: Mapping[str, np.ndarray]) -> np.ndarray:
        """``log p(theta_i, y)`` for each row of ``theta`` at one dataset ``data``."""
        if self._logp_fn is None:
            self._build_logp()
        theta = np.ascontiguousarray(np.atleast_2d(np.asarray(theta, dtype=float)))
        args = self._data_args(data)  # a DataShapeError of its own for non-integer counts
        try:
            out = self._logp_fn(theta, *args)
        except (AssertionError, ValueError) as err:
            raise ValueError(
                f"The model's log density could not be evaluated at data of this shape "
                f"({ {k: np.shape(v) for k, v in data.items()} }): {err}. If the number of "
                "observations changes, declare the likelihood with a size that follows the "
                "data, for example `pm.Normal('y', mu, sigma, observed=y, shape=x.shape)`."
            ) from err
        return np.asarray(out, dtype=float).reshape(theta.shape[0])

    def joint_logp_many(
        self, theta: np.ndarray, datasets: Sequence[Mapping[str, np.ndarray]]
    ) -> np.ndarray:
        """``log p(theta[b, i], y_b)`` for ``theta`` ``(B, m, dim)``.

        Datasets of one shape go through one call of a graph vectorised over
        datasets too, where PyTensor can vectorise the model's graph fully;
        otherwise one call per dataset.
        """
        theta = np.asarray(theta, dtype=float)
        out = np.empty(theta.shape[:2])
        groups = self.stacked_by_shape(datasets)
        if self._logp_many_fn is None and any(len(idx) > 1 for idx, _ in groups):
            self._build_logp_many()
        for idx, stacked in groups:
            if len(idx) == 1 or not self._batched_ok:
                for b in idx:
                    out[b] = self.joint_logp(theta[b], datasets[b])
                continue
            out[idx] = self._logp_many_fn(
                np.ascontiguousarray(theta[idx]), *self._data_args(stacked)
            )
        return out

    # -- identity ------------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        """Variables, shapes and transforms of the model (compared on ``Amortizer.load``)."""
        return pymc_fingerprint(self.model, self.observed, self.covariates)


def pymc_fingerprint(
    model: Any, observed: Sequence[str], covariates: Sequence[str] = ()
) -> dict[str, Any]:
    """A readable fingerprint of a PyMC model, computed without compiling anything.

    Examples
    --------
    >>> import numpy as np, pymc as pm
    >>> from pymc_ext.amortized.targets import pymc_fingerprint
    >>> with pm.Model() as model:
    ...     s = pm.HalfNormal("s")
    ...     y = pm.Normal("y", 0, s, observed=np.zeros(3))
    >>> pymc_fingerprint(model, ["y"])["params"]
    [['s', 's_log__', [], 'LogTransform']]
    """
    from pymc.pytensorf import extract_obs_data

    from pymc_ext.pymc_adapter.logdensity import model_fingerprint

    ip = model.initial_point()
    params = []
    for v in model.value_vars:
        rv = model.values_to_rvs[v]
        transform = model.rvs_to_transforms.get(rv)
        params.append([rv.name, v.name, list(np.shape(ip[v.name])), type(transform).__name__])
    missing = [o for o in observed if o not in model.named_vars]
    if missing:
        raise ValueError(f"{missing} are not variables of the model.")
    return {
        "kind": "pymc",
        "model_hash": model_fingerprint(model),
        "params": params,
        "observed": {
            o: list(np.shape(extract_obs_data(model.rvs_to_values[model[o]]))) for o in observed
        },
        "covariates": {c: list(np.shape(model[c].get_value())) for c in covariates},
    }
