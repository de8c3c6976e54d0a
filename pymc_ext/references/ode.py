"""The reference Lotka-Volterra model (``hudson_lynx_hare-lotka_volterra``) as a PyMC model.

The Stan program solves the predator-prey ODE with ``integrate_ode_rk45``
(relative tolerance 1e-5, absolute 1e-3). Here :class:`LotkaVolterraSolve`, a
PyTensor ``Op``, solves it together with its forward sensitivities (the ODE for
``d z / d (z_init, theta)``) by the classical fourth-order Runge-Kutta method
with a fixed step of at most :data:`MAX_STEP` (compiled with numba). Because the
step is fixed, the sensitivities are the exact derivatives of the computed
solution: the gradient is consistent with the log density, which NUTS needs.
Against SciPy's DOP853 at tolerance 1e-13 the log populations agree to about
1e-11 on the reference draws (``tests/test_references.py`` checks 1e-8), so the
PyMC model is the Stan program's density with the ODE solved exactly: against
the same program with rk45 tolerances of 1e-10, PyMC minus Stan is one constant
to 6e-9 over reference draws (``benchmarks/validate_references.py``). The Stan
program as written differs by its own solver error, which moves its log density
by up to 0.02 between reference draws: small against the posterior's spread of
log densities (several units), so the reference draws still describe this
model within Monte Carlo error.

The Op has a numba implementation, so nutpie and PyTensor's numba backend run
it natively; the C and Python backends call the same compiled integrator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numba
import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pytensor.gradient import DisconnectedType, grad_not_implemented
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op

__all__ = ["MAX_STEP", "LotkaVolterraSolve", "lotka_volterra_model"]

#: Largest Runge-Kutta step (time units of ``ts``).
MAX_STEP = 0.005


@numba.njit(cache=True)
def _rhs(y: np.ndarray, theta: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover (numba)
    """d/dt of the state (u, v) and of its 2 x 6 sensitivities, into ``out`` (14,).

    Sensitivities to (u0, v0, alpha, beta, gamma, delta): ``S' = J S + df/dp``.
    """
    alpha, beta, gamma, delta = theta[0], theta[1], theta[2], theta[3]
    u, v = y[0], y[1]
    out[0] = (alpha - beta * v) * u
    out[1] = (-gamma + delta * u) * v
    j00, j01 = alpha - beta * v, -beta * u
    j10, j11 = delta * v, -gamma + delta * u
    for c in range(6):
        s0, s1 = y[2 + c], y[8 + c]
        out[2 + c] = j00 * s0 + j01 * s1
        out[8 + c] = j10 * s0 + j11 * s1
    out[4] += u  # df_u / d alpha
    out[5] -= u * v  # df_u / d beta
    out[12] -= v  # df_v / d gamma
    out[13] += u * v  # df_v / d delta


@numba.njit(cache=True)
def _solve(
    z_init: np.ndarray, theta: np.ndarray, times: np.ndarray, substeps: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover (numba)
    """RK4 from t = 0 through ``times``; ``substeps[i]`` equal steps up to ``times[i]``."""
    y = np.zeros(14)
    y[0], y[1] = z_init[0], z_init[1]
    y[2] = 1.0  # du/du0
    y[9] = 1.0  # dv/dv0
    n = times.shape[0]
    z = np.empty((n, 2))
    dz = np.empty((n, 2, 6))
    k1, k2, k3, k4, tmp = np.empty(14), np.empty(14), np.empty(14), np.empty(14), np.empty(14)
    t = 0.0
    for i in range(n):
        h = (times[i] - t) / substeps[i]
        for _ in range(substeps[i]):
            _rhs(y, theta, k1)
            tmp[:] = y + 0.5 * h * k1
            _rhs(tmp, theta, k2)
            tmp[:] = y + 0.5 * h * k2
            _rhs(tmp, theta, k3)
            tmp[:] = y + h * k3
            _rhs(tmp, theta, k4)
            y += (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        t = times[i]
        z[i, 0], z[i, 1] = y[0], y[1]
        dz[i] = y[2:].reshape(2, 6)
    return z, dz


class LotkaVolterraSolve(Op):
    """``(z_init, theta) -> (z, dz)``: the Lotka-Volterra solution and its sensitivities.

    ``du/dt = (alpha - beta v) u``, ``dv/dt = (-gamma + delta u) v`` from
    ``(u, v) = z_init`` at time 0, with ``theta = (alpha, beta, gamma,
    delta)``; ``z`` has shape ``(len(times), 2)`` and ``dz`` shape
    ``(len(times), 2, 6)``: derivatives with respect to ``(z_init[0],
    z_init[1], alpha, beta, gamma, delta)``. The gradient of anything computed
    from ``z`` uses ``dz``, so one solve gives both the value and the gradient.

    Parameters
    ----------
    times : array_like
        Increasing times, all > 0.
    max_step : float
        Largest Runge-Kutta step (default :data:`MAX_STEP`).

    Examples
    --------
    >>> import numpy as np, pytensor.tensor as pt
    >>> from pymc_ext.references.ode import LotkaVolterraSolve
    >>> solve = LotkaVolterraSolve([1.0, 2.0])
    >>> z, dz = solve(pt.as_tensor([30.0, 4.0]), pt.as_tensor([0.55, 0.028, 0.8, 0.024]))
    >>> z.eval().shape, dz.eval().shape
    ((2, 2), (2, 2, 6))
    """

    __props__ = ("times", "max_step")

    def __init__(self, times: Any, max_step: float = MAX_STEP) -> None:
        t = np.asarray(times, dtype=float).ravel()
        if t.size == 0 or t[0] <= 0 or np.any(np.diff(t) <= 0):
            raise ValueError("LotkaVolterraSolve needs increasing times, all > 0 (t0 is 0).")
        if not max_step > 0:
            raise ValueError(f"max_step must be > 0; got {max_step}")
        self.times = tuple(float(x) for x in t)
        self.max_step = float(max_step)

    @property
    def substeps(self) -> np.ndarray:
        """Number of equal RK4 steps in each interval between output times."""
        gaps = np.diff(np.concatenate([[0.0], self.times]))
        return np.array([max(1, math.ceil(g / self.max_step - 1e-9)) for g in gaps], dtype=np.int64)

    def make_node(self, z_init: Any, theta: Any) -> Apply:
        z_init = pt.as_tensor_variable(z_init, dtype="float64")
        theta = pt.as_tensor_variable(theta, dtype="float64")
        if z_init.type.ndim != 1 or theta.type.ndim != 1:
            raise TypeError("LotkaVolterraSolve takes two vectors: z_init (2,) and theta (4,)")
        n = len(self.times)
        outputs = [
            pt.tensor(dtype="float64", shape=(n, 2)),
            pt.tensor(dtype="float64", shape=(n, 2, 6)),
        ]
        return Apply(self, [z_init, theta], outputs)

    def perform(self, node: Apply, inputs: list, output_storage: list) -> None:
        z_init, theta = (np.ascontiguousarray(x, dtype=float) for x in inputs)
        z, dz = _solve(z_init, theta, np.asarray(self.times), self.substeps)
        output_storage[0][0], output_storage[1][0] = z, dz

    def infer_shape(self, *args: Any) -> list:  # (node, input_shapes); older PyTensor adds fgraph
        n = len(self.times)
        return [(n, 2), (n, 2, 6)]

    def pullback(self, inputs: list, outputs: list, cotangents: list) -> list:
        g_z, g_dz = cotangents
        if not isinstance(g_dz.type, DisconnectedType):
            return [
                grad_not_implemented(self, i, x, "second derivatives of the ODE solution")
                for i, x in enumerate(inputs)
            ]
        if isinstance(g_z.type, DisconnectedType):
            return [pt.zeros_like(x) for x in inputs]
        total = pt.tensordot(g_z, outputs[1], axes=[[0, 1], [0, 1]])  # (6,)
        return [total[:2], total[2:]]

    L_op = pullback  # the name PyTensor releases before ``pullback`` call


def _register_numba() -> None:
    """Let PyTensor's numba backend (and nutpie) run the Op natively, not in object mode."""
    try:
        from pytensor.link.numba.dispatch.basic import register_funcify_default_op_cache_key
    except ImportError:  # another PyTensor: the object-mode fallback still works
        return

    @register_funcify_default_op_cache_key(LotkaVolterraSolve)
    def _funcify(op: LotkaVolterraSolve, node: Any = None, **kwargs: Any) -> Any:
        times, substeps = np.asarray(op.times), op.substeps

        @numba.njit
        def lotka_volterra_solve(z_init, theta):  # pragma: no cover (numba)
            return _solve(z_init, theta, times, substeps)

        return lotka_volterra_solve


_register_numba()


def lotka_volterra_model(data: Mapping[str, Any]) -> pm.Model:
    """``hudson_lynx_hare-lotka_volterra``: predator-prey ODE, log-normal measurement errors.

    Free variables as in the Stan program: ``theta`` = (alpha, beta, gamma,
    delta) > 0, ``z_init`` (initial hare and lynx populations) and ``sigma``
    (measurement sds on the log scale); ``z`` (the ODE solution at ``ts``) is
    a Deterministic.

    Parameters
    ----------
    data : dict
        ``N``, ``ts`` (N increasing times > 0), ``y_init`` (2), ``y`` (N x 2).

    Examples
    --------
    >>> from pymc_ext.references.ode import lotka_volterra_model
    >>> from pymc_ext.references.posteriors import load_reference_data
    >>> model = lotka_volterra_model(load_reference_data("hudson_lynx_hare-lotka_volterra"))
    >>> [v.name for v in model.free_RVs], model.named_vars_to_dims["z"]
    (['theta', 'z_init', 'sigma'], ('time', 'species'))
    """
    missing = [k for k in ("N", "ts", "y_init", "y") if k not in data]
    if missing:
        raise ValueError(
            f"lotka_volterra: the data lack {missing} (see the Stan program's data block)"
        )
    ts = np.asarray(data["ts"], float)
    y = np.asarray(data["y"], float)
    y_init = np.asarray(data["y_init"], float)
    N = int(data["N"])
    if ts.shape != (N,) or y.shape != (N, 2) or y_init.shape != (2,):
        raise ValueError(
            f"lotka_volterra: ts needs shape ({N},), y ({N}, 2), y_init (2,); "
            f"got {ts.shape}, {y.shape}, {y_init.shape}"
        )
    coords = {"param": ["alpha", "beta", "gamma", "delta"], "species": ["hare", "lynx"], "time": ts}
    with pm.Model(coords=coords) as model:
        theta = pm.TruncatedNormal(
            "theta",
            mu=[1.0, 0.05, 1.0, 0.05],
            sigma=[0.5, 0.05, 0.5, 0.05],
            lower=0.0,
            dims="param",
        )
        z_init = pm.LogNormal("z_init", np.log(10.0), 1.0, dims="species")
        sigma = pm.LogNormal("sigma", -1.0, 1.0, dims="species")
        z_sol, _ = LotkaVolterraSolve(ts)(z_init, theta)
        z = pm.Deterministic("z", z_sol, dims=("time", "species"))
        pm.LogNormal("y_init", pt.log(z_init), sigma, observed=y_init, dims="species")
        pm.LogNormal("y", pt.log(z), sigma, observed=y, dims=("time", "species"))
    return model
