"""Constrain, unconstrain and generated quantities of a compiled Stan program.

:class:`ConstrainMixin` holds the methods of :class:`~stan_bridge.StanModel`
that go between the unconstrained vectors the samplers use and the
program's own variables: ``param_constrain`` (Stan's ``write_array``, with
transformed parameters and generated quantities on request),
``constrain`` / ``constrain_batch``, ``generated_quantities`` from a seeded
RNG, ``unconstrain`` / ``param_unconstrain``, and CmdStan-style names. The
arithmetic happens in the compiled model (:mod:`stan_bridge.library`);
:mod:`stan_bridge.layout` knows where each variable sits in a flat row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

import numpy as np

from stan_bridge.layout import VariableLayout
from stan_bridge.library import ModelHandle

__all__ = ["ConstrainMixin"]


class ConstrainMixin:
    """Constrain / unconstrain methods for a class that holds a compiled model.

    The host class sets ``dim``, ``names``, ``shapes``, ``info``,
    ``layout`` (a :class:`~stan_bridge.layout.VariableLayout`), the
    parameter-name lists and ``_handle`` (a
    :class:`~stan_bridge.library.ModelHandle`), and implements ``_raise``.
    :class:`stan_bridge.StanModel` is that class.

    Examples
    --------
    >>> import numpy as np
    >>> from stan_bridge.constrain import ConstrainMixin
    >>> from stan_bridge.programs import example_model
    >>> sm = example_model()
    >>> isinstance(sm, ConstrainMixin), sm.constrain(np.zeros(2))["sigma"]
    (True, array(1.))
    """

    dim: int
    names: list[str]
    shapes: dict[str, tuple[int, ...]]
    info: dict
    layout: VariableLayout
    param_names_list: list[str]
    tparam_names_list: list[str]
    gq_names_list: list[str]
    _handle: ModelHandle

    def _raise(self, msg: str) -> NoReturn:
        raise RuntimeError(msg)

    def _as_point(self, x: np.ndarray) -> np.ndarray:
        if np.shape(x) != (self.dim,):
            raise ValueError(f"Expected a point of shape ({self.dim},); got {np.shape(x)}.")
        return x

    def _as_batch(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(np.atleast_2d(X), dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise ValueError(f"Expected points of shape (n, {self.dim}); got {X.shape}.")
        return X

    def param_constrain(
        self,
        X: np.ndarray,
        *,
        include_tp: bool = True,
        include_gq: bool = False,
        seed: int | None = None,
        chain: int = 1,
    ) -> np.ndarray:
        """Constrained values, flat, in Stan's order (as CmdStan's CSV columns).

        Parameters
        ----------
        X : ndarray
            ``(dim,)`` or ``(n, dim)`` unconstrained points.
        include_tp, include_gq : bool
            Also return transformed parameters / generated quantities.
        seed, chain : int
            Seed the RNG of the generated quantities (the RNG runs on across
            the rows, so a batch is reproducible from ``seed``).

        Returns
        -------
        ndarray
            ``(width,)`` or ``(n, width)``.

        Examples
        --------
        >>> import numpy as np
        >>> from stan_bridge.programs import example_model
        >>> sm = example_model()
        >>> sm.param_constrain(np.array([0.5, 0.0]))
        array([0.5, 1. , 0. ])
        """
        X = np.asarray(X, dtype=np.float64)
        single = X.ndim == 1
        X = self._as_batch(X)
        if seed is None:
            seed = int(np.random.default_rng().integers(2**31))
        width = self.layout.width(bool(include_tp), bool(include_gq))
        status, out, msg = self._handle.param_constrain(
            X, width, bool(include_tp) or bool(include_gq), bool(include_gq), seed, chain
        )
        if status:
            self._raise(msg)
        return out[0] if single else out

    def constrain_batch(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Parameters and transformed parameters of each row: ``name -> (n, *shape)``.

        Examples
        --------
        >>> import numpy as np
        >>> from stan_bridge.programs import example_model
        >>> sm = example_model()
        >>> sm.constrain_batch(np.zeros((5, 2)))["sigma"].shape
        (5,)
        """
        X = self._as_batch(X)
        flat = self.param_constrain(X, include_tp=True, include_gq=False, seed=0)
        return self.layout.split(flat, self.names)

    def constrain(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Parameters and transformed parameters at one point, in the program's shapes.

        Examples
        --------
        >>> import numpy as np
        >>> from stan_bridge.programs import example_model
        >>> sm = example_model()
        >>> sm.constrain(np.array([0.5, 0.0]))
        {'mu': array(0.5), 'sigma': array(1.), 'log_sigma': array(0.)}
        """
        out = self.constrain_batch(np.asarray(self._as_point(x), dtype=np.float64)[None])
        return {k: v[0, ...] for k, v in out.items()}

    def generated_quantities(
        self, X: np.ndarray, seed: int | None = None, chain: int = 1
    ) -> dict[str, np.ndarray]:
        """Generated quantities at each row of ``X``, from a seeded RNG.

        Parameters
        ----------
        X : ndarray
            ``(n, dim)`` unconstrained points.
        seed : int, optional
            RNG seed; the same seed gives the same draws.
        chain : int
            RNG stream (as CmdStan's chain id).

        Returns
        -------
        dict
            ``name -> (n, *shape)``; integer quantities come back as int64.

        Examples
        --------
        >>> import numpy as np
        >>> from stan_bridge.programs import example_model
        >>> sm = example_model()
        >>> gq = sm.generated_quantities(np.zeros((10, 2)), seed=1)
        >>> gq["y_rep"].shape
        (10, 4)
        """
        X = self._as_batch(X)
        flat = self.param_constrain(X, include_tp=True, include_gq=True, seed=seed, chain=chain)
        out = self.layout.split(flat, self.gq_names_list)
        gq_info = self.info.get("generated quantities", {})
        for n, arr in out.items():
            if gq_info.get(n, {}).get("type") == "int" and np.all(np.isfinite(arr)):
                out[n] = arr.astype(np.int64)
        return out

    def unconstrain(self, point: Mapping[str, Any]) -> np.ndarray:
        """Unconstrained vector for parameter values given in the program's shapes.

        Parameters
        ----------
        point : dict
            ``name -> value`` for every parameter (other keys are ignored).

        Returns
        -------
        ndarray
            Shape ``(dim,)``.

        Examples
        --------
        >>> import numpy as np
        >>> from stan_bridge.programs import example_model
        >>> sm = example_model()
        >>> sm.unconstrain({"mu": 0.5, "sigma": np.e})
        array([0.5, 1. ])
        """
        missing = [n for n in self.param_names_list if n not in point]
        if missing:
            raise KeyError(f"unconstrain needs a value for every parameter; missing {missing}.")
        values, ndims, dims = [], [], []
        for n in self.param_names_list:
            shape = self.shapes[n]
            arr = np.asarray(point[n], dtype=np.float64)
            if arr.shape != shape:
                raise ValueError(f"Parameter {n!r} must have shape {shape}; got {arr.shape}.")
            values.append(arr.ravel(order="F"))
            ndims.append(len(shape))
            dims.extend(shape)
        status, out, msg = self._handle.param_unconstrain(
            list(self.param_names_list),
            np.ascontiguousarray(np.concatenate(values) if values else np.zeros(0)),
            np.asarray(ndims, dtype=np.int32),
            np.asarray(dims, dtype=np.int64),
        )
        if status:
            raise ValueError(f"Cannot unconstrain {dict(point)!r}: {msg}")
        return out

    def param_unconstrain(self, flat: np.ndarray) -> np.ndarray:
        """Unconstrain parameters given flat in Stan's order (as :meth:`param_constrain`).

        Examples
        --------
        >>> import numpy as np
        >>> from stan_bridge.programs import example_model
        >>> sm = example_model()
        >>> x = np.array([0.5, -1.0])
        >>> flat = sm.param_constrain(x, include_tp=False)
        >>> np.allclose(sm.param_unconstrain(flat), x)
        True
        """
        flat = np.asarray(flat, dtype=np.float64)
        n_par = self.layout.width(include_tp=False, include_gq=False)
        if flat.shape != (n_par,):
            raise ValueError(f"Expected {n_par} constrained parameter values; got {flat.shape}.")
        point = self.layout.split(flat[None], self.param_names_list)
        return self.unconstrain({k: v[0, ...] for k, v in point.items()})

    def flat_names(self, include_tp: bool = True, include_gq: bool = False) -> list[str]:
        """Scalar names in Stan's order, CmdStan style: ``theta[1]``, ``L[2,1]``.

        Examples
        --------
        >>> from stan_bridge.programs import example_model
        >>> example_model().flat_names(include_gq=True)
        ['mu', 'sigma', 'log_sigma', 'y_rep[1]', 'y_rep[2]', 'y_rep[3]', 'y_rep[4]']
        """
        return self.layout.flat_names(include_tp, include_gq)

    @property
    def unconstrained_names(self) -> list[str]:
        """Stan's names of the unconstrained coordinates (``tau``, ``theta.1``, ...)."""
        return list(self._handle.info["unconstrained_names"])
