"""The reference hidden Markov model (``bball_drive_event_1-hmm_drive_1``) as a PyMC model.

Two hidden states (no drive, drive) emit ``u`` (1/speed) and ``v`` (hoop
distance) as normals with known sds ``tau`` and ``rho``; each row of the
transition matrix has a Dirichlet prior; the emission means are ordered. The
hidden states are summed out by the forward algorithm, exactly as the Stan
program does (its first state has no initial distribution: the forward
variable starts at the first emission's density).

The forward algorithm is a product of matrices, so it is computed here without
a loop: ``exp(log Z) = g_1 M_2 M_3 ... M_N 1`` with ``M_t = Theta diag(exp(e_t))``,
the product taken as a balanced tree of batched 2x2 matrix products (about
``log2 N`` levels), each level rescaled so nothing under- or overflows. That is
the same sum as the recursion (to rounding) and gives PyTensor a small graph
that it differentiates and vectorises.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pymc as pm
import pytensor.tensor as pt

__all__ = ["hmm_drive_model", "hmm_log_marginal"]


def hmm_log_marginal(
    log_emission: pt.TensorVariable, transition: pt.TensorVariable, n_steps: int
) -> pt.TensorVariable:
    """Log of the sum over hidden paths, by the forward algorithm as a tree of matrix products.

    Parameters
    ----------
    log_emission : TensorVariable
        Shape ``(N, K)``: ``log p(obs_t | state k)``.
    transition : TensorVariable
        Shape ``(K, K)``: row ``j`` is ``p(state_{t+1} | state_t = j)``.
    n_steps : int
        ``N``, known when the graph is built.

    Returns
    -------
    TensorVariable
        ``log sum_k gamma[N, k]`` of the Stan program's forward recursion
        (``gamma[1] = e[1]``: no initial-state distribution).

    Examples
    --------
    >>> import numpy as np, pytensor.tensor as pt
    >>> from scipy.special import logsumexp
    >>> from pymc_ext.references.hmm import hmm_log_marginal
    >>> e = np.log(np.random.default_rng(0).uniform(0.1, 1, size=(5, 2)))
    >>> T = np.array([[0.9, 0.1], [0.3, 0.7]])
    >>> g = e[0]
    >>> for t in range(1, 5):
    ...     g = logsumexp(g[:, None] + np.log(T), axis=0) + e[t]
    >>> out = hmm_log_marginal(pt.as_tensor(e), pt.as_tensor(T), 5).eval(mode="FAST_COMPILE")
    >>> bool(np.isclose(out, logsumexp(g)))
    True
    """
    shift = pt.max(log_emission, axis=1)  # per-step scale: exp(e_t - shift_t) <= 1
    scaled = pt.exp(log_emission - shift[:, None])
    log_scale = pt.sum(shift)
    first = scaled[0]
    if n_steps == 1:
        return log_scale + pt.log(pt.sum(first))
    mats = transition[None, :, :] * scaled[1:, None, :]  # M_t[j, k] = Theta[j, k] exp(e_t[k])
    m = n_steps - 1
    while m > 1:
        if m % 2:  # pad with the identity so the matrices pair up
            mats = pt.concatenate([mats, pt.eye(transition.shape[-1])[None]], axis=0)
            m += 1
        mats = pt.matmul(mats[0::2], mats[1::2])
        norm = pt.sum(mats, axis=(1, 2))
        mats = mats / norm[:, None, None]
        log_scale = log_scale + pt.sum(pt.log(norm))
        m //= 2
    return log_scale + pt.log(pt.sum(pt.dot(first, mats[0])))


def hmm_drive_model(data: Mapping[str, Any]) -> pm.Model:
    """``bball_drive_event_1-hmm_drive_1``: the two-state drive HMM, hidden states summed out.

    Free variables ``theta1``, ``theta2`` (the transition matrix's rows,
    simplexes), ``phi`` and ``lambda`` (ordered emission means), as in the
    Stan program; ``theta`` (its transformed parameter, rows ``theta1`` and
    ``theta2``) is a Deterministic.

    Parameters
    ----------
    data : dict
        ``K`` (must be 2, as the program assumes), ``N``, ``u``, ``v``,
        ``alpha`` (K x K Dirichlet parameters), ``tau``, ``rho``.

    Examples
    --------
    >>> from pymc_ext.references.hmm import hmm_drive_model
    >>> from pymc_ext.references.posteriors import load_reference_data
    >>> model = hmm_drive_model(load_reference_data("bball_drive_event_1-hmm_drive_1"))
    >>> [v.name for v in model.free_RVs]
    ['theta1', 'theta2', 'phi', 'lambda']
    """
    missing = [k for k in ("K", "N", "u", "v", "alpha", "tau", "rho") if k not in data]
    if missing:
        raise ValueError(
            f"hmm_drive_1: the data lack {missing} (see the Stan program's data block)"
        )
    if int(data["K"]) != 2:
        raise ValueError(f"hmm_drive_1 has two hidden states (theta1, theta2); got K={data['K']}")
    u, v = np.asarray(data["u"], float), np.asarray(data["v"], float)
    alpha = np.asarray(data["alpha"], float)
    N = int(data["N"])
    if u.shape != (N,) or v.shape != (N,) or alpha.shape != (2, 2):
        raise ValueError(
            f"hmm_drive_1: u and v need length N={N} and alpha shape (2, 2); "
            f"got {u.shape}, {v.shape}, {alpha.shape}"
        )
    tau, rho = float(data["tau"]), float(data["rho"])
    ordered = pm.distributions.transforms.ordered
    coords = {"state": [1, 2], "from_state": [1, 2], "to_state": [1, 2], "time": np.arange(N)}
    with pm.Model(coords=coords) as model:
        theta1 = pm.Dirichlet("theta1", a=alpha[0], dims="state")
        theta2 = pm.Dirichlet("theta2", a=alpha[1], dims="state")
        mu_prior = np.array([0.0, 3.0])
        phi = pm.Normal("phi", mu_prior, 1.0, dims="state", transform=ordered, initval=mu_prior)
        lam = pm.Normal("lambda", mu_prior, 1.0, dims="state", transform=ordered, initval=mu_prior)
        theta = pm.Deterministic(
            "theta", pt.stack([theta1, theta2]), dims=("from_state", "to_state")
        )
        log_emission = pm.logp(pm.Normal.dist(phi, tau), u[:, None]) + pm.logp(
            pm.Normal.dist(lam, rho), v[:, None]
        )
        pm.Potential("forward_algorithm", hmm_log_marginal(log_emission, theta, N))
    return model
