"""Any log density with the prior-predictive convention (Stan) as an amortization target."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from pymc_ext.amortized.target_base import Simulations
from pymc_ext.density import LogDensity

__all__ = ["PriorPredictiveTarget"]


class PriorPredictiveTarget:
    """A log density that follows the prior-predictive convention (e.g. ``stan_bridge.StanModel``).

    The density must have ``prior_predictive(n, seed) -> (params (n, dim)
    unconstrained, {obs_name: (n, *shape)})``. The true density at another
    dataset comes from ``condition(data) -> LogDensity``; by default that is
    ``density.with_data({**density.data, **data})`` (StanModel: the same
    compiled program with new data, no compiling), cached per dataset.

    For Stan, the program states how to simulate: an ``int prior_only`` data
    flag that switches the likelihood off, and a generated quantity
    ``<obs>_rep`` drawn with ``_rng`` functions for each simulated
    observation (see :mod:`stan_bridge.prior`).

    Parameters
    ----------
    density : LogDensity
        With ``prior_predictive``.
    observed : list of str, optional
        Observed names (for Stan: every data variable with a ``_rep``
        generated quantity; otherwise all that ``prior_predictive`` returns).
    condition : callable, optional
        ``data dict -> LogDensity`` at that data.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.amortized.targets import PriorPredictiveTarget
    >>> class Toy(FunctionLogDensity):
    ...     def __init__(self, y=np.zeros(2)):
    ...         self.data = {"y": np.asarray(y, dtype=float)}
    ...         f = lambda x: -0.5 * x @ x - 0.5 * ((self.data["y"] - x) ** 2).sum()
    ...         super().__init__(1, f, logp_batch_fn=lambda X: np.array([f(x) for x in X]))
    ...     def prior_predictive(self, n, seed=None):
    ...         rng = np.random.default_rng(seed)
    ...         mu = rng.normal(size=(n, 1))
    ...         return mu, {"y": mu + rng.normal(size=(n, 2))}
    ...     def with_data(self, data):
    ...         return Toy(data["y"])
    >>> target = PriorPredictiveTarget(Toy())
    >>> target.joint_logp(np.zeros((3, 1)), {"y": np.ones(2)}).round(2).tolist()
    [-1.0, -1.0, -1.0]
    """

    kind = "prior_predictive"
    # simulations per chunk (each chunk runs its own MCMC warmup on the prior: large chunks);
    # chunks are what a dask cluster spreads over its workers
    simulation_chunk = 5000

    def __init__(
        self,
        density: Any,
        observed: Sequence[str] | None = None,
        condition: Callable[[Mapping[str, np.ndarray]], LogDensity] | None = None,
    ) -> None:
        if not callable(getattr(density, "prior_predictive", None)):
            raise TypeError(
                f"{type(density).__name__} has no prior_predictive(n, seed) method. For a Stan "
                "program, the program has to say how to simulate: add a `prior_only` data flag "
                "and draw the parameters and the data with _rng functions in generated "
                "quantities (see docs/amortized.md), then build StanModel from it."
            )
        self.density = density
        self.dim = int(density.dim)
        self.covariates: list[str] = []
        info = getattr(density, "info", None)
        if observed is None and isinstance(info, Mapping) and "inputs" in info:
            from stan_bridge.prior import check_convention

            observed = check_convention(info)
        if observed is None:
            _, probe = density.prior_predictive(2, 0)
            observed = list(probe)
        self.observed = list(observed)
        current = self.current_data()
        self._shapes = {o: tuple(np.shape(current[o])) for o in self.observed}
        if condition is None:
            if not callable(getattr(density, "with_data", None)):
                raise TypeError(
                    f"{type(density).__name__} has no with_data(data) method: pass "
                    "condition=lambda data: <the same density at `data`>."
                )
            base = dict(getattr(density, "data", {}) or {})

            def condition(data: Mapping[str, np.ndarray]) -> LogDensity:
                return density.with_data({**base, **data})

        self._condition = condition
        self._cache: dict[bytes, LogDensity] = {}
        names = getattr(density, "unconstrained_names", None)
        if callable(names):
            names = names()
        self.param_names = (
            list(names) if names is not None and len(names) == self.dim
            else [f"theta[{i}]" for i in range(self.dim)]
        )

    def data_names(self) -> list[str]:
        """The observed names."""
        return list(self.observed)

    def current_data(self) -> dict[str, np.ndarray]:
        """The density's own observed values (``observed_data`` or ``data`` attribute)."""
        data = getattr(self.density, "observed_data", None) or getattr(self.density, "data", None)
        data = data or {}
        missing = [o for o in self.observed if o not in data]
        if missing:
            raise ValueError(
                f"{type(self.density).__name__} does not hold observed values for {missing} "
                "(no `observed_data` or `data`); pass the data explicitly."
            )
        return {o: np.asarray(data[o]) for o in self.observed}

    def simulate(self, n: int, rng: np.random.Generator) -> Simulations:
        """``n`` prior-predictive pairs in one block."""
        seed = int(rng.integers(2**31 - 1))
        try:
            params, data = self.density.prior_predictive(
                int(n), seed, observed=self.observed, progressbar=False
            )
        except TypeError:
            params, data = self.density.prior_predictive(int(n), seed)
        return [(np.asarray(params, dtype=float), {o: np.asarray(data[o]) for o in self.observed})]

    def check_values(self, data: Mapping[str, Any], where: str = "data") -> None:
        """Raise :class:`~pymc_ext.amortized.layout.DataShapeError` for non-integer values
        of data that the density holds as integers (they are never rounded).

        Examples
        --------
        >>> import numpy as np
        >>> from pymc_ext.amortized.density_target import PriorPredictiveTarget
        >>> class Counts:
        ...     dim, data = 1, {"y": np.array([1, 2])}
        ...     def prior_predictive(self, n, seed):
        ...         return np.zeros((n, 1)), {"y": np.ones((n, 2), dtype=int)}
        >>> target = PriorPredictiveTarget(Counts(), condition=lambda data: None)
        >>> target.check_values({"y": [1.0, 2.5]})
        Traceback (most recent call last):
        ...
        pymc_ext.amortized.layout.DataShapeError: data['y'] has non-integer values (e.g. 2.5), but it holds integers. Give whole numbers: they are not rounded.
        """  # noqa: E501
        from pymc_ext.amortized.layout import refuse_non_integer

        current = self.current_data()
        for o in self.observed:
            if o in data and np.issubdtype(current[o].dtype, np.integer):
                refuse_non_integer(data[o], f"{where}[{o!r}]", "it holds integers")

    def conditioned(self, data: Mapping[str, np.ndarray]) -> LogDensity:
        """The density at the dataset ``data`` (cached for the last 64 datasets)."""
        key = b"".join(
            np.ascontiguousarray(np.asarray(data[o], dtype=float)).tobytes() for o in self.observed
        )
        if key not in self._cache:
            self.check_values(data)
            if len(self._cache) > 64:
                self._cache.clear()
            dtypes = {o: self.current_data()[o].dtype for o in self.observed}
            self._cache[key] = self._condition(
                {o: np.asarray(data[o]).astype(dtypes[o]) for o in self.observed}
            )
        return self._cache[key]

    def joint_logp(self, theta: np.ndarray, data: Mapping[str, np.ndarray]) -> np.ndarray:
        """``log p(theta_i, y)`` for each row of ``theta``."""
        return np.asarray(self.conditioned(data).logp_batch(np.atleast_2d(theta)), dtype=float)

    def joint_logp_many(
        self, theta: np.ndarray, datasets: Sequence[Mapping[str, np.ndarray]]
    ) -> np.ndarray:
        """One :meth:`joint_logp` per dataset."""
        return np.stack([self.joint_logp(theta[b], d) for b, d in enumerate(datasets)])

    def fingerprint(self) -> dict[str, Any]:
        """Parameter names, observed shapes and a hash of the program (checked on load)."""
        import hashlib

        code = getattr(self.density, "code", None)
        model_hash = (
            hashlib.sha256(str(code).encode()).hexdigest()[:16]
            if code is not None else type(self.density).__name__
        )
        return {
            "kind": self.kind,
            "model_hash": model_hash,
            "params": [[n] for n in self.param_names],
            "observed": {o: list(s) for o, s in self._shapes.items()},
            "covariates": {},
        }
