"""Per-dataset Laplace frames: the amortizer's flow learns the posterior around each dataset's mode.

A plain amortizer learns ``q(theta | y)`` in one global frame (the prior's
mean and scale). Its raw draws then carry the network's error in *where* the
posterior is: on a negative-binomial regression the raw means were 0.3-0.6
posterior sd off NUTS. The frame moves that part out of the network: for each
dataset a damped Newton fit of the true joint density ``log p(theta, y)``
gives a mode ``m(y)`` and the Cholesky factor ``L(y)`` of the inverse negative
Hessian there, and the flow learns ``u = L(y)^-1 (theta - m(y))`` given ``y``.
Any smooth ``(m, L)`` keeps this exact as a reparametrisation (``log q(theta
| y) = log q(u | y) - log |L(y)|``); a good one leaves the flow only the
posterior's shape to learn.

Whether the frame helps depends on the model: where the posterior is far from
Gaussian around its mode (hierarchical scales, funnels) the Laplace scale is
wrong and the frame hurts. :func:`check_frames` decides from the simulations
themselves: under the joint prior-predictive, ``u`` is standard normal when
the Laplace approximation is right; its robust spread per coordinate must stay
within :data:`SPREAD_RANGE`, and few simulations may land far out (failed fits).

The Newton fit works in prior-standardised units from the prior mean, with
the negative Hessian's eigenvalues clamped to :data:`PRECISION_RANGE`, steps
of at most :data:`MAX_STEP` prior sd (far from the mode of a near-noiseless
dataset an unlimited step was thousands of sd long) and a halving line search.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "FRAME_KINDS",
    "SPREAD_RANGE",
    "LaplaceFrames",
    "check_frames",
    "choose_frames",
    "frame_coordinates",
    "in_frames",
    "prior_sd",
    "supports_frames",
    "with_frames",
]

FRAME_KINDS = ("auto", "laplace", "prior")
#: The robust sd of each frame coordinate over the simulations must lie in this range.
SPREAD_RANGE = (0.5, 2.0)
#: ... and at most this share of them may have a coordinate beyond ``FAR`` (failed frames).
FAR = 8.0
MAX_FAR_FRACTION = 0.05
#: Simulations the ``frame="auto"`` check fits (the frame is then fitted for all of them).
CHECK_SIMULATIONS = 2000
NEWTON_STEPS = 30
LINE_SEARCH = 12
MAX_STEP = 2.0  # longest Newton step, in prior sd
FD_STEP = 1e-4  # central differences of the gradient, in prior-standardised units
#: Clamp of the precision's eigenvalues in prior-standardised units: the frame's scale stays
#: between 1e-4 and 2 prior sd, whatever the curvature (flat or singular directions).
PRECISION_RANGE = (0.25, 1e8)
BATCH = 4096
#: ``frame="auto"`` keeps the prior frame when fitting every training simulation's frame
#: would take longer than this (estimated from the check): a density that does not
#: vectorise over datasets.
FRAME_SECONDS_BUDGET = 600.0


class LaplaceFrames:
    """Each dataset's mode and Laplace scale under the true joint density, batched over datasets.

    Parameters
    ----------
    target : PyMCTarget
        The amortizer's target (``_batched_logp_graph`` gives the joint
        density over a batch of datasets).
    theta_mean, theta_std : ndarray
        The prior-predictive mean and sd of the parameters: Newton starts at
        the mean and works in these units.

    Examples
    --------
    >>> import numpy as np, pymc as pm
    >>> from pymc_ext.amortized.targets import make_target
    >>> from pymc_ext.amortized.frames import LaplaceFrames
    >>> with pm.Model() as model:
    ...     mu = pm.Normal("mu", 0, 10)
    ...     y = pm.Normal("y", mu, 1, observed=np.zeros(4))
    >>> frames = LaplaceFrames(make_target(model), np.zeros(1), np.full(1, 10.0))
    >>> loc, chol = frames([{"y": np.full(4, 2.0)}])
    >>> np.round(loc, 3).tolist(), np.round(chol[0] ** 2, 3).tolist()
    ([[1.995]], [[0.249]])
    """

    def __init__(self, target: Any, theta_mean: np.ndarray, theta_std: np.ndarray) -> None:
        if not supports_frames(target):
            raise ValueError(
                "Laplace frames need the joint density's gradient over a batch of datasets, "
                "which only PyMC models give; use frame='prior'."
            )
        self.target = target
        self.mean = np.asarray(theta_mean, dtype=float)
        self.std = np.asarray(theta_std, dtype=float)

    def __call__(
        self, datasets: Sequence[Mapping[str, np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``loc (B, dim)`` and ``chol (B, dim, dim)`` for each dataset (grouped by shape)."""
        B, d = len(datasets), self.mean.size
        loc, chol = np.empty((B, d)), np.empty((B, d, d))
        for idx, stacked in self.target.stacked_by_shape(datasets):
            for start in range(0, len(idx), BATCH):
                part = idx[start : start + BATCH]
                loc[part], chol[part] = self.batched(
                    {n: v[start : start + BATCH] for n, v in stacked.items()}
                )
        return loc, chol

    def batched(self, data: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The frames of a batch of datasets of one shape (``name -> (B, ...)``)."""
        B, d = len(next(iter(data.values()))), self.mean.size

        def value_grad(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            with np.errstate(all="ignore"):
                lp, g = self.target.logp_grad_many((self.mean + self.std * s)[:, None, :], data)
            lp, g = lp[:, 0], g[:, 0, :] * self.std
            bad = ~(np.isfinite(lp) & np.all(np.isfinite(g), axis=1))
            return np.where(bad, -np.inf, lp), np.where(bad[:, None], 0.0, g)

        s = np.zeros((B, d))
        lp, g = value_grad(s)
        for _ in range(NEWTON_STEPS):
            w, V = _precision(value_grad, s, d)
            step = np.einsum("bij,bj,bkj,bk->bi", V, 1.0 / w, V, g)
            # a trust region: where the curvature was clamped (far from the mode, steep
            # gradients) the Newton step can be thousands of prior sd; halving cannot save it
            norm = np.linalg.norm(step, axis=1)
            step *= np.minimum(1.0, MAX_STEP / np.maximum(norm, 1e-300))[:, None]
            active = np.isfinite(lp) & (np.abs(step).max(axis=1) > 1e-6)
            if not active.any():
                break
            t = np.where(active, 1.0, 0.0)
            for _ls in range(LINE_SEARCH):
                cand = s + t[:, None] * step
                lpc, gc = value_grad(cand)
                ok = (t > 0) & (lpc >= lp)
                s, lp, g = np.where(ok[:, None], cand, s), np.where(ok, lpc, lp), np.where(
                    ok[:, None], gc, g
                )
                t = np.where(ok, 0.0, 0.5 * t)
                if not np.any(t > 0):
                    break
        s = np.where(np.isfinite(lp)[:, None], s, 0.0)  # no finite density: the prior frame
        w, V = _precision(value_grad, s, d)
        w = np.where(np.isfinite(lp)[:, None], w, 1.0)
        cov = np.einsum("bij,bj,bkj->bik", V, 1.0 / w, V)
        chol_s = np.linalg.cholesky(cov)
        return self.mean + self.std * s, self.std[None, :, None] * chol_s


def _precision(value_grad: Any, s: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of the clamped negative Hessian (central differences of the gradient)."""
    H = np.empty((s.shape[0], d, d))
    for j in range(d):
        e = np.zeros(d)
        e[j] = FD_STEP
        H[:, :, j] = (value_grad(s + e)[1] - value_grad(s - e)[1]) / (2 * FD_STEP)
    H = np.nan_to_num(0.5 * (H + H.transpose(0, 2, 1)), nan=0.0, posinf=0.0, neginf=0.0)
    w, V = np.linalg.eigh(-H)
    return np.clip(w, *PRECISION_RANGE), V


def supports_frames(target: Any) -> bool:
    """Whether ``target`` gives the joint density's gradient over a batch of datasets.

    Examples
    --------
    >>> from pymc_ext.amortized.frames import supports_frames
    >>> supports_frames(object())
    False
    """
    return hasattr(target, "logp_grad_many")


def frame_coordinates(theta: np.ndarray, loc: np.ndarray, chol: np.ndarray) -> np.ndarray:
    """``u = chol^-1 (theta - loc)``, row by row.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.amortized.frames import frame_coordinates
    >>> frame_coordinates(np.array([[3.0]]), np.array([[1.0]]), np.array([[[2.0]]])).tolist()
    [[1.0]]
    """
    return np.linalg.solve(chol, (theta - loc)[..., None])[..., 0]


def check_frames(u: np.ndarray) -> tuple[bool, str]:
    """Whether frame coordinates of prior-predictive simulations look standard normal enough.

    The robust sd (the interquartile range / 1.349) of every coordinate must
    be within :data:`SPREAD_RANGE`, and at most :data:`MAX_FAR_FRACTION` of
    the simulations may have a coordinate beyond :data:`FAR` (a standard normal
    almost never does: those are datasets whose frame failed, such as a
    regression with almost no noise, whose Newton fit did not reach the mode).

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.amortized.frames import check_frames
    >>> rng = np.random.default_rng(0)
    >>> check_frames(rng.normal(size=(2000, 2)))[0], check_frames(5 * rng.normal(size=(2000, 2)))[0]
    (True, False)
    """
    q25, q75 = np.nanpercentile(u, [25, 75], axis=0)
    spread = (q75 - q25) / 1.349
    lo, hi = SPREAD_RANGE
    spread_ok = bool(np.all((spread >= lo) & (spread <= hi)))
    far = float(np.mean(~np.all(np.abs(u) <= FAR, axis=1)))
    worst = int(np.argmax(np.abs(np.log(np.clip(spread, 1e-12, None)))))
    reason = (
        f"frame coordinates of {u.shape[0]} simulations have robust sd "
        f"{spread.min():.2f}-{spread.max():.2f} (coordinate {worst}: {spread[worst]:.2f}; "
        f"{'within' if spread_ok else 'outside'} [{lo}, {hi}]), {far:.1%} beyond {FAR:g} "
        f"({'at most' if far <= MAX_FAR_FRACTION else 'more than'} {MAX_FAR_FRACTION:.0%})"
    )
    return spread_ok and far <= MAX_FAR_FRACTION, reason


def choose_frames(amortizer: Any, sims: Any) -> tuple[str, Any]:
    """Set ``amortizer.frames`` (and the flow's ``framed``) from its ``frame`` setting.

    ``"prior"``: no frames. ``"laplace"``: Laplace frames. ``"auto"``: Laplace
    frames when the target gives batched gradients (PyMC) and
    :func:`check_frames` passes on the first :data:`CHECK_SIMULATIONS`
    training simulations (and the fits neither fail nor would take longer
    than :data:`FRAME_SECONDS_BUDGET` for all of them).

    Parameters
    ----------
    amortizer : Amortizer
    sims : SimulationSet
        The training simulations.

    Returns
    -------
    reason : str
        ``"laplace: ..."`` or ``"prior: ..."``, and why.
    sims : SimulationSet
        ``sims`` with ``theta`` in the frame coordinates when frames were
        chosen (the check's fits reused), else ``sims`` itself.

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> from pymc_ext.amortized.frames import choose_frames
    >>> from pymc_ext.amortized.simulation import SimulationSet
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> a = pymc_ext.Amortizer(model, frame="prior")
    >>> choose_frames(a, SimulationSet(np.zeros((5, 1)), np.zeros((5, 3)), None, 0))[0]
    "prior: frame='prior'"
    """
    amortizer.frames = None
    amortizer.flow.framed = False
    kind = amortizer.frame
    if kind == "prior":
        return "prior: frame='prior'", sims
    if not supports_frames(amortizer.target):
        return "prior: the target has no batched gradient (a Stan program)", sims
    theta, n = sims.theta, sims.theta.shape[0]
    frames = LaplaceFrames(amortizer.target, theta.mean(axis=0), theta.std(axis=0))
    k = min(n, CHECK_SIMULATIONS)
    try:
        start = time.perf_counter()
        u_check = _coordinates(frames, amortizer.layout, sims, slice(0, k))
        ok, reason = check_frames(u_check)
        expected = (time.perf_counter() - start) * n / max(k, 1)
        if kind == "auto" and expected > FRAME_SECONDS_BUDGET:
            return (f"prior: the Laplace fits of all {n} simulations would take about "
                    f"{expected:.0f} s (budget {FRAME_SECONDS_BUDGET:.0f} s)"), sims
    except Exception as err:  # noqa: BLE001 - auto falls back to the prior frame, saying why
        if kind != "auto":
            raise
        return f"prior: the Laplace fits failed ({type(err).__name__}: {err})", sims
    if kind == "auto" and not ok:
        return f"prior: {reason}", sims
    amortizer.frames = frames
    amortizer.flow.framed = True
    u = np.concatenate([u_check, _coordinates(frames, amortizer.layout, sims, slice(k, n))])
    return f"laplace: {reason}", sims._replace(theta=u)


def _coordinates(frames: LaplaceFrames, layout: Any, sims: Any, rows: slice) -> np.ndarray:
    """Frame coordinates of the simulations ``rows``."""
    lengths = None if sims.lengths is None else sims.lengths[rows]
    loc, chol = frames(layout.datasets(sims.values[rows], lengths))
    return frame_coordinates(sims.theta[rows], loc, chol)


def in_frames(amortizer: Any, sims: Any) -> Any:
    """``sims`` (a :class:`SimulationSet`) with ``theta`` in each dataset's frame coordinates.

    Unchanged when the amortizer has no frames.

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> from pymc_ext.amortized.frames import in_frames
    >>> from pymc_ext.amortized.simulation import SimulationSet
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> sims = SimulationSet(np.zeros((2, 1)), np.zeros((2, 3)), None, 0)
    >>> in_frames(pymc_ext.Amortizer(model), sims) is sims
    True
    """
    if getattr(amortizer, "frames", None) is None:
        return sims
    rows = slice(0, sims.theta.shape[0])
    return sims._replace(theta=_coordinates(amortizer.frames, amortizer.layout, sims, rows))


def with_frames(amortizer: Any, ctx: torch.Tensor,
                datasets: Sequence[Mapping[str, np.ndarray]]) -> torch.Tensor:
    """The network contexts ``ctx`` with each dataset's frame appended (unchanged without frames).

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext, torch
    >>> from pymc_ext.amortized.frames import with_frames
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> a = pymc_ext.Amortizer(model, frame="prior")
    >>> tuple(with_frames(a, torch.zeros(1, 3), [{"y": np.zeros(3)}]).shape)
    (1, 3)
    """
    if getattr(amortizer, "frames", None) is None:
        return ctx
    loc, chol = amortizer.frames(datasets)
    frame = np.concatenate([loc, chol.reshape(len(datasets), -1)], axis=1)
    return torch.cat([ctx, torch.as_tensor(frame, dtype=ctx.dtype, device=ctx.device)], dim=1)


def prior_sd(amortizer: Any) -> np.ndarray:
    """The prior predictive sd of the parameters (the flow's own scale is the frames' then).

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> from pymc_ext.amortized.frames import prior_sd
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> prior_sd(pymc_ext.Amortizer(model)).tolist()
    [1.0]
    """
    if getattr(amortizer, "frames", None) is not None:
        return np.asarray(amortizer.frames.std, dtype=float)
    return amortizer.flow.theta_std.double().cpu().numpy()
