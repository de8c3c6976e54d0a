"""The one seam: the :class:`LogDensity` protocol and small helpers around it.

Every algorithm in this project (Pathfinder, flows, flow MCMC, amortized
fitting) is written against :class:`LogDensity` and never sees PyMC or Stan.
Two adapters implement it: :func:`pymc_ext.log_density` for PyMC models and
:class:`stan_bridge.StanModel` for Stan programs.

A density lives on the *unconstrained* space ``R^dim``; its ``logp`` includes
the Jacobian of the transform back to the model's own (constrained) space.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "LogDensity",
    "BaseLogDensity",
    "FunctionLogDensity",
    "NonFiniteDensityError",
    "check_finite",
]


class NonFiniteDensityError(FloatingPointError):
    """Raised where a finite log density is required and a NaN or inf came back."""


@runtime_checkable
class LogDensity(Protocol):
    """A log density on ``R^dim``, with what it takes to report results.

    Attributes
    ----------
    dim : int
        Number of unconstrained parameters.
    names : list of str
        Names of the variables that :meth:`constrain` returns, in order
        (free variables first, then derived ones such as Deterministics or
        Stan's transformed parameters).
    shapes : dict
        ``name -> shape`` of each variable in the model's own shapes.
    dims : dict
        ``name -> list of dim names`` (ArviZ dims), for the variables that
        have them.
    coords : dict
        ``dim name -> coordinate values``.
    grad_evals : int
        Number of gradient evaluations so far (one per point: a batched call
        on ``n`` rows counts ``n``).
    logp_evals : int
        Number of log-density-only evaluations so far (per point).
    observed_data : dict or None
        ``observed name -> ndarray`` for ArviZ's ``observed_data`` group, where
        the backend knows it (``None`` otherwise).

    Notes
    -----
    ``initial_point()`` returns a sensible unconstrained starting point (the
    model's own initial point where it has one; zeros otherwise). Algorithms
    start from it and overdisperse around it.

    Densities written by hand only need ``dim``, ``logp_and_grad`` and
    ``logp``; subclass :class:`BaseLogDensity` to get the rest.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity, LogDensity
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x)
    >>> isinstance(d, LogDensity)
    True
    >>> d.logp_and_grad(np.ones(2))
    (-1.0, array([-1., -1.]))
    """

    dim: int
    names: list[str]
    shapes: dict[str, tuple[int, ...]]
    dims: dict[str, list[str]]
    coords: dict[str, Any]
    grad_evals: int
    logp_evals: int
    observed_data: dict[str, np.ndarray] | None

    def initial_point(self) -> np.ndarray: ...

    def logp(self, x: np.ndarray) -> float: ...

    def logp_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]: ...

    def logp_batch(self, X: np.ndarray) -> np.ndarray: ...

    def logp_and_grad_batch(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def constrain(self, x: np.ndarray) -> dict[str, np.ndarray]: ...

    def constrain_batch(self, X: np.ndarray) -> dict[str, np.ndarray]: ...

    def unconstrain(self, point: Mapping[str, Any]) -> np.ndarray: ...


class BaseLogDensity:
    """Mix-in that fills in the :class:`LogDensity` protocol from a few methods.

    A subclass sets ``dim`` and implements ``_logp(x)`` and
    ``_logp_and_grad(x)``; it may override ``_logp_batch`` and
    ``_logp_and_grad_batch`` with vectorised versions, and ``constrain`` /
    ``unconstrain`` where the parameters are not plain ``x``. The public
    methods count evaluations, so every algorithm reports its cost the same
    way.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import BaseLogDensity
    >>> class StdNormal(BaseLogDensity):
    ...     def __init__(self, dim):
    ...         super().__init__(dim)
    ...     def _logp(self, x):
    ...         return -0.5 * float(x @ x)
    ...     def _logp_and_grad(self, x):
    ...         return -0.5 * float(x @ x), -x
    >>> d = StdNormal(3)
    >>> d.logp_and_grad(np.ones(3))[0]
    -1.5
    >>> d.grad_evals
    1
    """

    def __init__(
        self,
        dim: int,
        names: list[str] | None = None,
        shapes: dict[str, tuple[int, ...]] | None = None,
        dims: dict[str, list[str]] | None = None,
        coords: dict[str, Any] | None = None,
    ) -> None:
        self.dim = int(dim)
        self.names = list(names) if names is not None else ["x"]
        self.shapes = dict(shapes) if shapes is not None else {"x": (self.dim,)}
        self.dims = dict(dims) if dims is not None else {}
        self.coords = dict(coords) if coords is not None else {}
        self.grad_evals = 0
        self.logp_evals = 0
        self.observed_data: dict[str, np.ndarray] | None = None

    # -- optional, with defaults ------------------------------------------
    def initial_point(self) -> np.ndarray:
        """A starting point on the unconstrained space: zeros unless a subclass knows better."""
        return np.zeros(self.dim)

    # -- to implement -----------------------------------------------------
    def _logp(self, x: np.ndarray) -> float:
        return self._logp_and_grad(x)[0]

    def _logp_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        raise NotImplementedError

    def _logp_batch(self, X: np.ndarray) -> np.ndarray:
        return np.array([self._logp(x) for x in X], dtype=float)

    def _logp_and_grad_batch(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = [self._logp_and_grad(x) for x in X]
        lp = np.array([o[0] for o in out], dtype=float)
        grad = np.array([o[1] for o in out], dtype=float).reshape(len(X), self.dim)
        return lp, grad

    # -- public, counted ---------------------------------------------------
    def logp(self, x: np.ndarray) -> float:
        """Log density at one unconstrained point (Jacobian included)."""
        self.logp_evals += 1
        return float(self._logp(np.asarray(x, dtype=float)))

    def logp_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """Log density and its gradient at one unconstrained point."""
        self.grad_evals += 1
        lp, grad = self._logp_and_grad(np.asarray(x, dtype=float))
        return float(lp), np.asarray(grad, dtype=float)

    def logp_batch(self, X: np.ndarray) -> np.ndarray:
        """Log density at each row of ``X`` (shape ``(n, dim)``)."""
        X = np.atleast_2d(np.asarray(X, dtype=float))
        self.logp_evals += X.shape[0]
        return np.asarray(self._logp_batch(X), dtype=float).reshape(X.shape[0])

    def logp_and_grad_batch(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Log density and gradient at each row of ``X`` (shape ``(n, dim)``)."""
        X = np.atleast_2d(np.asarray(X, dtype=float))
        self.grad_evals += X.shape[0]
        lp, grad = self._logp_and_grad_batch(X)
        return (
            np.asarray(lp, dtype=float).reshape(X.shape[0]),
            np.asarray(grad, dtype=float).reshape(X.shape[0], self.dim),
        )

    def constrain(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Map an unconstrained vector to ``name -> array`` in the model's shapes."""
        return {"x": np.asarray(x, dtype=float).copy()}

    def constrain_batch(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`constrain` for each row of ``X``; arrays get a leading ``n`` axis."""
        X = np.atleast_2d(np.asarray(X, dtype=float))
        rows = [self.constrain(x) for x in X]
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]} if rows else {}

    def unconstrain(self, point: Mapping[str, Any]) -> np.ndarray:
        """Map ``name -> value`` (model space) back to one unconstrained vector."""
        return np.asarray(point["x"], dtype=float).reshape(self.dim).copy()

    def reset_counters(self) -> None:
        """Set ``grad_evals`` and ``logp_evals`` back to zero."""
        self.grad_evals = 0
        self.logp_evals = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, names={self.names})"


class FunctionLogDensity(BaseLogDensity):
    """A :class:`LogDensity` from plain numpy functions, for tests and toy targets.

    Parameters
    ----------
    dim : int
        Dimension of the parameter vector.
    logp_fn : callable
        ``x -> float``.
    grad_fn : callable, optional
        ``x -> ndarray``. Without it the gradient is taken by central finite
        differences (slow; fine for small tests).
    logp_batch_fn : callable, optional
        ``X -> ndarray`` of shape ``(n,)``, vectorised.
    grad_batch_fn : callable, optional
        ``X -> ndarray`` of shape ``(n, dim)``, vectorised.
    name : str
        Name of the single vector variable that :meth:`constrain` returns.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> d = FunctionLogDensity(
    ...     2,
    ...     logp_fn=lambda x: -0.5 * x @ x,
    ...     grad_fn=lambda x: -x,
    ...     logp_batch_fn=lambda X: -0.5 * (X * X).sum(1),
    ...     grad_batch_fn=lambda X: -X,
    ... )
    >>> d.logp_batch(np.ones((4, 2))).tolist()
    [-1.0, -1.0, -1.0, -1.0]
    """

    def __init__(
        self,
        dim: int,
        logp_fn: Callable[[np.ndarray], float],
        grad_fn: Callable[[np.ndarray], np.ndarray] | None = None,
        logp_batch_fn: Callable[[np.ndarray], np.ndarray] | None = None,
        grad_batch_fn: Callable[[np.ndarray], np.ndarray] | None = None,
        name: str = "x",
    ) -> None:
        super().__init__(dim, names=[name], shapes={name: (int(dim),)})
        self._name = name
        self._logp_fn = logp_fn
        self._grad_fn = grad_fn
        self._logp_batch_fn = logp_batch_fn
        self._grad_batch_fn = grad_batch_fn

    def _logp(self, x: np.ndarray) -> float:
        return float(self._logp_fn(x))

    def _logp_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        lp = float(self._logp_fn(x))
        if self._grad_fn is not None:
            return lp, np.asarray(self._grad_fn(x), dtype=float)
        eps = 1e-6
        grad = np.empty(self.dim)
        for i in range(self.dim):
            e = np.zeros(self.dim)
            e[i] = eps
            grad[i] = (self._logp_fn(x + e) - self._logp_fn(x - e)) / (2 * eps)
        return lp, grad

    def _logp_batch(self, X: np.ndarray) -> np.ndarray:
        if self._logp_batch_fn is not None:
            return np.asarray(self._logp_batch_fn(X), dtype=float)
        return super()._logp_batch(X)

    def _logp_and_grad_batch(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._logp_batch_fn is not None and self._grad_batch_fn is not None:
            return self._logp_batch(X), np.asarray(self._grad_batch_fn(X), dtype=float)
        return super()._logp_and_grad_batch(X)

    def constrain(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {self._name: np.asarray(x, dtype=float).copy()}

    def unconstrain(self, point: Mapping[str, Any]) -> np.ndarray:
        return np.asarray(point[self._name], dtype=float).reshape(self.dim).copy()


def check_finite(value: float | np.ndarray, what: str = "log density") -> None:
    """Raise :class:`NonFiniteDensityError` if ``value`` has a NaN or inf.

    Examples
    --------
    >>> from pymc_ext.density import check_finite
    >>> check_finite(1.0)
    >>> check_finite(float("nan"))
    Traceback (most recent call last):
    ...
    pymc_ext.density.NonFiniteDensityError: The log density is not finite (nan). ...
    """
    arr = np.asarray(value)
    if not np.all(np.isfinite(arr)):
        bad = arr[~np.isfinite(arr)].ravel()[0]
        raise NonFiniteDensityError(
            f"The {what} is not finite ({bad}). Check the model for values outside "
            "a distribution's support, or start from a different initial point."
        )
