"""``WarmStartPotential``: the inverse mass matrix of :class:`WarmStartNUTS`.

It starts at the warm start's covariance and is re-estimated, at a few points
of the warmup, from the chain's own draws blended with that covariance
(diagonal, dense, or low-rank plus diagonal).
"""

from __future__ import annotations

import math
from dataclasses import field
from typing import Any

import numpy as np
import pytensor
from pymc.step_methods.hmc.quadpotential import PotentialState, QuadPotential
from pymc.step_methods.state import dataclass_state
from scipy import linalg

from pymc_ext.blocks.metric_choice import metric_mismatch

__all__ = ["WarmStartPotential", "WarmStartPotentialState"]

#: The most draws' worth a distrusted warm-start covariance keeps
#: (:meth:`WarmStartPotential.distrust_prior`).
DISTRUSTED_WEIGHT = 5.0


@dataclass_state
class WarmStartPotentialState(PotentialState):
    """Sampling state of :class:`WarmStartPotential` (PyMC's state protocol)."""

    _cov: np.ndarray
    _var: np.ndarray
    _chol: np.ndarray | None
    _lr_scale: np.ndarray | None
    _lr_vecs: np.ndarray | None
    _lr_vals: np.ndarray | None
    _n_x: int
    _mean_x: np.ndarray
    _m2_x: np.ndarray
    _draws: list
    _mean_g: np.ndarray
    _m2_g: np.ndarray
    _n_updates: int
    _last_mismatch: float
    _last_window: int
    _prior_scale: float

    kind: str = field(metadata={"frozen": True})
    dtype: Any = field(metadata={"frozen": True})
    _n: int = field(metadata={"frozen": True})
    _initial_cov: np.ndarray = field(metadata={"frozen": True})
    _prior_weight: float = field(metadata={"frozen": True})
    _rank: int = field(metadata={"frozen": True})
    _use_grads: bool = field(metadata={"frozen": True})


class WarmStartPotential(QuadPotential):
    """Inverse mass matrix from a warm start, refined from the chain's own draws.

    It does not adapt by itself on every draw: :class:`WarmStartNUTS` feeds it
    draws (``update``) and tells it when to re-estimate
    (:meth:`refresh`). The estimate blends the warm-start covariance (weight
    ``prior_weight`` draws) with the draws seen so far.

    Parameters
    ----------
    initial_cov : ndarray
        ``(n, n)`` warm-start covariance on the sampler's ordering.
    kind : {"diag", "dense", "lowrank"}
        ``diag``: the diagonal only. ``dense``: the full matrix.
        ``lowrank``: the diagonal plus the ``rank`` directions whose
        variance differs most from it (cheap for large models).
    prior_weight : float
        Weight of the warm-start estimate, in draws. ``inf`` keeps it as the
        metric (the draws' estimates are computed, for the settle check, but
        not blended in) until :meth:`distrust_prior`.
    rank : int
        Rank of the low-rank part (``kind="lowrank"``).
    use_grads : bool
        For ``diag``: estimate each variance as ``sqrt(var(x) / var(grad))``
        (as nutpie does), which converges in fewer draws.
    dtype, rng
        As for PyMC's potentials.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.step_methods.warmstart_potential import WarmStartPotential
    >>> pot = WarmStartPotential(np.array([[2.0, 0.5], [0.5, 1.0]]), kind="dense", rng=0)
    >>> pot.velocity(np.array([1.0, 0.0])).tolist()
    [2.0, 0.5]
    """

    _state_class = WarmStartPotentialState

    def __init__(
        self,
        initial_cov: np.ndarray,
        kind: str = "diag",
        prior_weight: float = 20.0,
        rank: int = 8,
        use_grads: bool = False,
        dtype: Any = None,
        rng: Any = None,
    ) -> None:
        if kind not in ("diag", "dense", "lowrank"):
            raise ValueError(f"metric must be 'diag', 'dense' or 'lowrank'; got {kind!r}.")
        initial_cov = np.asarray(initial_cov, dtype=float)
        n = initial_cov.shape[0]
        if initial_cov.shape != (n, n):
            raise ValueError(f"initial_cov must be square; got {initial_cov.shape}.")
        self.dtype = dtype or pytensor.config.floatX
        self.kind = kind
        self._n = n
        self._initial_cov = _regularise_cov(initial_cov)
        self._prior_weight = float(prior_weight)
        self._rank = int(max(1, min(rank, n)))
        self._use_grads = bool(use_grads)
        super().__init__(rng=rng)
        self.reset()

    @property
    def last_mismatch(self) -> tuple[float, int]:
        """At the last :meth:`refresh`: the chain's variances against the metric in use.

        ``(factor, draws)``: the largest factor between the variances of the
        draws and the metric's (NaN before any refresh), and how many draws.
        """
        return self._last_mismatch, self._last_window

    def distrust_prior(self, scale: float = 0.1) -> None:
        """Give the warm-start covariance ``scale`` times its weight from now on.

        At most :data:`DISTRUSTED_WEIGHT` draws' worth: a kept metric (a weight
        of thousands of draws) that the chain's draws disagree with must yield
        to them.
        """
        if math.isinf(self._prior_weight):
            self._prior_scale = 0.0  # the kept metric yields to the draws (see refresh)
        else:
            cap = DISTRUSTED_WEIGHT / max(self._prior_weight, 1e-12)
            self._prior_scale = min(float(scale), cap)

    @property
    def use_grads(self) -> bool:
        """Whether :meth:`collect` needs the gradients (``use_grads`` of the constructor)."""
        return self._use_grads

    # -- state ----------------------------------------------------------------
    def reset(self) -> None:
        n = self._n
        self._n_x = 0
        self._mean_x = np.zeros(n)
        self._m2_x = np.zeros(n)
        self._draws = []
        self._mean_g = np.zeros(n)
        self._m2_g = np.zeros(n)
        self._n_updates = 0
        self._last_mismatch = np.nan
        self._last_window = 0
        self._prior_scale = 1.0
        self._set_cov(self._initial_cov.copy())

    def _set_cov(self, cov: np.ndarray) -> None:
        self._cov = cov
        self._var = np.clip(np.diag(cov).copy(), 1e-12, 1e12)
        self._chol = None
        self._lr_scale = self._lr_vecs = self._lr_vals = None
        if self.kind == "dense":
            self._chol = linalg.cholesky(cov, lower=True)
        elif self.kind == "lowrank":
            scale = np.sqrt(self._var)
            corr = cov / np.outer(scale, scale)
            vals, vecs = np.linalg.eigh(0.5 * (corr + corr.T))
            vals = np.clip(vals, 1e-10, None)
            order = np.argsort(-np.abs(np.log(vals)))[: self._rank]
            self._lr_scale = scale
            self._lr_vecs = np.ascontiguousarray(vecs[:, order])
            self._lr_vals = vals[order]

    # -- what the integrator uses -------------------------------------------
    def velocity(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if self.kind == "diag":
            return np.multiply(self._var, x, out=out)
        if self.kind == "dense":
            return np.dot(self._cov, x, out=out)
        s, U, lam = self._lr_scale, self._lr_vecs, self._lr_vals
        y = s * x
        y = y + U @ ((lam - 1.0) * (U.T @ y))
        y = s * y
        if out is not None:
            out[...] = y
            return out
        return y

    def energy(self, x: np.ndarray, velocity: np.ndarray | None = None) -> float:
        if velocity is None:
            velocity = self.velocity(x)
        return 0.5 * float(np.dot(x, velocity))

    def velocity_energy(self, x: np.ndarray, v_out: np.ndarray) -> float:
        self.velocity(x, out=v_out)
        return 0.5 * float(np.dot(x, v_out))

    def random(self) -> np.ndarray:
        z = self.rng.normal(size=self._n)
        if self.kind == "diag":
            return (z / np.sqrt(self._var)).astype(self.dtype)
        if self.kind == "dense":
            return linalg.solve_triangular(self._chol.T, z, lower=False).astype(self.dtype)
        # p ~ N(0, M) with M = S^-1 (I + U (1/lam - 1) U^T) S^-1
        s, U, lam = self._lr_scale, self._lr_vecs, self._lr_vals
        w = z + U @ ((lam**-0.5 - 1.0) * (U.T @ z))
        return (w / s).astype(self.dtype)

    # -- adaptation ------------------------------------------------------------
    def update(self, sample: np.ndarray, grad: np.ndarray, tune: bool) -> None:
        """Called by PyMC after every draw; collection is driven by :meth:`collect`."""

    def collect(self, sample: np.ndarray, grad: np.ndarray) -> None:
        """Add one draw (and its gradient) to the running estimate (Welford)."""
        self._n_x += 1
        k = self._n_x
        dx = sample - self._mean_x
        self._mean_x = self._mean_x + dx / k
        self._m2_x = self._m2_x + dx * (sample - self._mean_x)
        if self.kind != "diag":
            self._draws.append(np.array(sample, dtype=float, copy=True))
        if self._use_grads:
            dg = grad - self._mean_g
            self._mean_g = self._mean_g + dg / k
            self._m2_g = self._m2_g + dg * (grad - self._mean_g)

    def _weight(self) -> float:
        """The warm-start covariance's weight now: infinite keeps it, until distrusted."""
        if math.isinf(self._prior_weight):
            return DISTRUSTED_WEIGHT if self._prior_scale == 0.0 else math.inf
        return self._prior_weight * self._prior_scale

    def refresh(self, restart: bool = True) -> bool:
        """Re-estimate the metric from the draws collected so far; True if it changed.

        The estimate is ``(w0 * warm_start + n * sample) / (w0 + n)``. For a
        dense or low-rank metric the sample covariance's correlations are
        shrunk towards zero by the Schäfer-Strimmer (Ledoit-Wolf type)
        intensity estimated from the draws themselves, so a few hundred draws
        give a usable matrix. With ``restart`` the collected draws are dropped
        afterwards (a new window).
        """
        n = self._n_x
        if n < 5:
            return False
        w0 = self._weight()
        if self.kind == "diag":
            var = self._m2_x / (n - 1)
            if self._use_grads:
                gvar = self._m2_g / (n - 1)
                ok = (gvar > 0) & np.isfinite(gvar)
                var = np.where(ok, np.sqrt(var / np.where(ok, gvar, 1.0)), var)
            est = np.diag(var)
        else:
            est = _shrunk_covariance(np.asarray(self._draws))
        self._last_mismatch = metric_mismatch(np.diag(self._cov), np.diag(est))
        self._last_window = n
        prior = self._initial_cov
        if self.kind == "diag":
            prior = np.diag(np.diag(prior))
        if math.isinf(w0):
            new = prior
        elif self.kind == "dense" and self._prior_scale == 1.0:
            new = _rescaled(prior, np.asarray(self._draws), w0)
        else:
            new = (w0 * prior + n * est) / (w0 + n)
        new = _regularise_cov(new)
        if not np.all(np.isfinite(new)):
            return False
        try:
            self._set_cov(new)
        except (linalg.LinAlgError, ValueError):
            return False
        self._n_updates += 1
        if restart:
            n_ = self._n
            self._n_x = 0
            self._mean_x = np.zeros(n_)
            self._m2_x = np.zeros_like(self._m2_x)
            self._draws = []
            self._mean_g = np.zeros(n_)
            self._m2_g = np.zeros(n_)
        return True

    def stats(self) -> dict[str, float]:
        return {"largest_eigval": np.nan, "smallest_eigval": np.nan}

    def raise_ok(self, map_info: Any = None) -> None:
        if not np.all(np.isfinite(self._var)) or np.any(self._var <= 0):
            raise ValueError(
                "The warm-start mass matrix has non-finite or zero entries; run with "
                "metric='diag' or a different init."
            )


def _rescaled(prior: np.ndarray, draws: np.ndarray, w0: float) -> np.ndarray:
    """The warm start's dense covariance with its scales re-estimated from ``draws``.

    ``L diag(d) L^T`` with ``L L^T = prior`` and ``d`` the variances of the
    whitened draws ``L^{-1} x``, shrunk towards 1 with ``w0`` draws' worth: the
    warm start's correlations are kept and only the scale of each whitened
    direction is learnt, as nutpie's diagonal adaptation on ``z`` in
    ``x = mu + L z`` does.
    """
    chol = np.linalg.cholesky(prior)
    z = linalg.solve_triangular(chol, (draws - draws.mean(0)).T, lower=True).T
    d = (w0 + z.shape[0] * z.var(0)) / (w0 + z.shape[0])
    return (chol * d) @ chol.T


def _shrunk_covariance(draws: np.ndarray) -> np.ndarray:
    """Sample covariance with its correlations shrunk towards 0 (Schäfer & Strimmer 2005).

    The shrinkage intensity ``lam = sum Var(r_ij) / sum r_ij**2`` (off-diagonal)
    is estimated from the draws; the variances are kept.
    """
    n, d = draws.shape
    centred = draws - draws.mean(axis=0)
    sd = np.sqrt((centred**2).sum(axis=0) / (n - 1))
    sd = np.where(sd > 0, sd, 1.0)
    z = centred / sd
    w_sum = z.T @ z
    r = w_sum / (n - 1)
    sq = (z * z).T @ (z * z)  # sum_k z_ki^2 z_kj^2
    var_r = n / (n - 1) ** 3 * (sq - w_sum**2 / n)
    off = ~np.eye(d, dtype=bool)
    denom = float((r[off] ** 2).sum())
    lam = 1.0 if denom <= 0 else float(np.clip(var_r[off].sum() / denom, 0.0, 1.0))
    corr = (1.0 - lam) * r
    corr[np.diag_indices(d)] = 1.0
    return corr * np.outer(sd, sd)


def _regularise_cov(cov: np.ndarray) -> np.ndarray:
    """Symmetric, finite, positive definite (adds jitter to the diagonal if needed)."""
    cov = 0.5 * (cov + cov.T)
    d = np.diag(cov).copy()
    bad = ~np.isfinite(d) | (d <= 0)
    if np.any(bad):
        d[bad] = 1.0
        cov = np.where(np.isfinite(cov), cov, 0.0)
        cov[np.diag_indices_from(cov)] = d
    cov[np.diag_indices_from(cov)] = np.clip(np.diag(cov), 1e-10, 1e10)
    for jitter in (0.0, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2):
        try:
            linalg.cholesky(cov + jitter * np.diag(np.diag(cov)), lower=True)
            return cov + jitter * np.diag(np.diag(cov))
        except linalg.LinAlgError:
            continue
    return np.diag(np.diag(cov))
