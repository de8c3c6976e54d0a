"""Exact draws from an amortized posterior: the moved proposal and independence Metropolis-Hastings.

An independence Metropolis-Hastings sampler whose proposal is the trained
amortized posterior ``q(theta | y)`` at one dataset. A proposal ``theta'`` is
accepted with probability ``min(1, w(theta') / w(theta))``, ``w = p(theta, y) /
q(theta | y)``, which leaves the true posterior invariant, so the draws are
exact however rough ``q`` is; the acceptance rate says how good ``q`` is.

Before sampling (``adapt="dense"``, the default), a pilot batch from ``q`` is
importance-weighted against the true density, and the proposal is moved by an
affine map so that its mean and covariance match the weighted (PSIS)
estimates: ``theta' = a + B theta``, ``theta ~ q``, ``log q'(theta') = log
q(theta) - log |det B|``. ``B = L_p L_q^{-1}`` is lower triangular; it corrects
location, scale and correlation while keeping the flow's shape (``"diag"``:
per-coordinate sd only, also used in a round whose pilot ESS is below ten per
parameter). Further pilots refine the estimates; while a pilot's Pareto k is
above 0.7 the round matches the moments of the tempered target ``p^beta q^(1 -
beta)`` with the largest ``beta`` that keeps a quarter of the pilot as ESS. The
proposal is fixed before the first step and depends only on pilot draws, never
on a chain, so the sampler stays exact. The adaptation is kept only when it
raises the pilot's importance ESS.

:class:`AmortizedProposal` holds the moved proposal; :func:`independence_mh`
runs chains with it. :class:`pymc_ext.AmortizedMH` is the same proposal as a
``pm.sample`` step method; ``Amortizer.sample(data, correct="mh")`` runs
:func:`independence_mh` directly on any dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
from scipy.linalg import solve_triangular
from scipy.special import logsumexp

from pymc_ext.amortized.diagnostics import PARETO_K_THRESHOLD
from pymc_ext.blocks.importance import importance_ess, psis_log_weights

__all__ = [
    "ADAPT_MODES",
    "LOW_MH_ACCEPTANCE",
    "AmortizedProposal",
    "MHChains",
    "exact_draws",
    "independence_mh",
]

#: ``adapt=`` values: ``True`` is ``"dense"``.
ADAPT_MODES = (True, False, "dense", "diag")


def _apply_scale(scale: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``scale u`` for a vector or the rows of ``u``: ``scale`` is per coordinate or a matrix."""
    return u * scale if scale.ndim == 1 else u @ scale.T


def _tempered_log_weights(log_w: np.ndarray, min_ess: float) -> np.ndarray:
    """Normalised ``beta * log_w`` with the largest ``beta`` in [0, 1] whose ESS >= ``min_ess``."""

    def normalised(beta: float) -> np.ndarray:
        x = beta * log_w
        x = x - x.max()
        return x - logsumexp(x)

    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        if importance_ess(normalised(mid)) >= min_ess:
            lo = mid
        else:
            hi = mid
    return normalised(lo)


class AmortizedProposal:
    """The amortized posterior at one dataset, moved by an affine map fitted to pilot draws.

    Parameters
    ----------
    flow : ConditionalFlow
        The amortizer's trained flow.
    context : torch.Tensor, shape (context_dim,)
        The summary of the dataset.
    log_p_batch : callable
        ``theta (n, dim) -> log p(theta, y)`` (unconstrained, Jacobian included).
    dim : int
        Number of parameters.
    num_threads : int or None
        Torch threads while drawing.
    adapt : bool or {"dense", "diag"}
        See the module docstring; ``False`` proposes from ``q`` itself.
    pilot_draws : int
        Draws per pilot batch.
    widen : float
        The moved proposal's spread is this many times the weighted estimate.
    adapt_rounds : int
        Pilot batches (each moves the proposal once).
    widen_search : sequence of float
        After the rounds, the best map is also tried widened by each factor; the
        proposal with the largest pilot importance ESS is kept.

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> from pymc_ext.amortized.mh import AmortizedProposal
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> a = pymc_ext.Amortizer(model).fit(300, epochs=2, random_seed=0, progressbar=False)
    >>> _, ctx = a.prepare([{"y": np.ones(3)}])
    >>> q = AmortizedProposal(a.flow, ctx[0], a.density.logp_batch, a.dim)
    >>> theta, log_w = q.propose(5, np.random.default_rng(0))
    >>> theta.shape, log_w.shape
    ((5, 1), (5,))
    """

    def __init__(
        self,
        flow: Any,
        context: Any,
        log_p_batch: Callable[[np.ndarray], np.ndarray],
        dim: int,
        num_threads: int | None = 1,
        adapt: bool | str = True,
        pilot_draws: int = 2048,
        widen: float = 1.1,
        adapt_rounds: int = 6,
        widen_search: tuple[float, ...] = (1.25, 1.5, 2.0),
    ) -> None:
        if adapt not in ADAPT_MODES:
            raise ValueError(f"adapt must be True, False, 'dense' or 'diag', got {adapt!r}.")
        self.widen_search = tuple(float(f) for f in widen_search)
        if any(not (f > 0 and np.isfinite(f)) for f in self.widen_search):
            raise ValueError(f"widen_search factors must be positive, got {widen_search!r}.")
        self.flow = flow
        self.context = context.detach().cpu().clone()
        self.log_p_batch = log_p_batch
        self.num_threads = num_threads
        self.mode = "dense" if adapt is True else adapt
        self.pilot_draws = int(pilot_draws)
        self.widen = float(widen)
        self.adapt_rounds = int(adapt_rounds)
        self.dim = int(dim)
        self.reset()

    def reset(self) -> None:
        """Back to ``q`` itself (no map)."""
        self.shift = np.zeros(self.dim)
        self.scale = np.ones(self.dim)

    def propose(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` proposals from the (moved) proposal and their log weights ``log p - log q'``."""
        import torch

        from pymc_ext.flows.conditional import torch_threads

        seed = int(rng.integers(2**31 - 1))
        flow = self.flow.cpu() if next(self.flow.parameters()).device.type != "cpu" else self.flow
        with torch.no_grad(), torch.random.fork_rng(devices=[]), torch_threads(self.num_threads):
            torch.manual_seed(seed)
            theta, log_q = flow.sample(int(n), self.context)
        theta = self.forward(theta.double().numpy())
        log_q = log_q.double().numpy() - self.log_det()
        log_p = self.log_p_batch(theta)
        log_w = log_p - log_q
        log_w[~np.isfinite(log_w)] = -np.inf
        return theta, log_w

    def forward(self, u: np.ndarray) -> np.ndarray:
        """``shift + scale u`` for rows ``u``."""
        return self.shift + _apply_scale(self.scale, u)

    def inverse(self, x: np.ndarray) -> np.ndarray:
        """``u`` with ``_forward(u) = x``."""
        if self.scale.ndim == 1:
            return (x - self.shift) / self.scale
        return solve_triangular(self.scale, (x - self.shift).T, lower=True).T

    def log_det(self) -> float:
        diag = self.scale if self.scale.ndim == 1 else np.diag(self.scale)
        return float(np.log(np.abs(diag)).sum())

    def adapt(self, rng: np.random.Generator) -> None:
        """Moment-match the proposal to pilot batches (kept only if the pilot ESS rises)."""
        raw = None
        best_ess, best = -1.0, (self.shift.copy(), self.scale.copy())
        for _ in range(self.adapt_rounds):
            theta, log_w = self.propose(self.pilot_draws, rng)
            ok = np.isfinite(log_w)
            if ok.sum() < 20:
                break
            theta, log_w = theta[ok], log_w[ok]
            lw, k = psis_log_weights(log_w)
            ess = float(importance_ess(lw))
            if ess > best_ess:
                best_ess, best = ess, (self.shift.copy(), self.scale.copy())
            # theta = shift + scale u with u ~ q: the q-moments of u give the map
            if raw is None:  # mean, sd and covariance of u under q, fixed from the first pilot
                u = self.inverse(theta)
                raw = (u.mean(axis=0), np.maximum(u.std(axis=0), 1e-12), np.atleast_2d(np.cov(u.T)))
            if not (np.isfinite(k) and k < PARETO_K_THRESHOLD):
                # too few effective draws for p's moments: match those of the tempered
                # target p^beta q^(1 - beta), beta as large as leaves a quarter of the draws
                lw = _tempered_log_weights(log_w, len(log_w) / 4)
            self._match_moments(theta, np.exp(lw), raw)
        if best_ess > 0 and raw is not None:
            best_ess, best = self._search_spread(best_ess, best, raw, rng)
        self.shift, self.scale = best

    def _match_moments(self, theta: np.ndarray, w: np.ndarray, raw: tuple) -> None:
        """Move the proposal so that its mean and (co)variance are the weighted ones."""
        mean = w @ theta
        centred = theta - mean
        dense = self.mode == "dense" and 1.0 / (w @ w) >= 10 * theta.shape[1]
        if dense:
            cov = centred.T @ (centred * w[:, None])
            cov_u = raw[2]
            jitter = 1e-10 * np.eye(len(mean))
            try:
                chol_p = np.linalg.cholesky(cov + jitter * max(np.trace(cov), 1e-12))
                chol_q = np.linalg.cholesky(cov_u + jitter * max(np.trace(cov_u), 1e-12))
            except np.linalg.LinAlgError:
                dense = False
        if dense:
            # B = L_p L_q^{-1} (lower triangular), so that B cov_u B^T = cov
            self.scale = self.widen * solve_triangular(chol_q.T, chol_p.T, lower=False).T
        else:
            sd = np.sqrt(np.maximum(w @ centred**2, 1e-24))
            self.scale = self.widen * sd / raw[1]
        self.shift = mean - _apply_scale(self.scale, raw[0])

    def _search_spread(
        self,
        best_ess: float,
        best: tuple[np.ndarray, np.ndarray],
        raw: tuple,
        rng: np.random.Generator,
    ) -> tuple[float, tuple[np.ndarray, np.ndarray]]:
        """A last check of the final map; then the best map widened or narrowed about its mean.

        Weighted estimates of the spread are low when the weights are uneven, and a
        proposal with lighter tails than p makes an independence sampler sticky.
        """
        candidates = [(self.shift.copy(), self.scale.copy())]
        centre = best[0] + _apply_scale(best[1], raw[0])
        for f in self.widen_search:
            candidates.append((centre - f * (centre - best[0]), f * best[1]))
        for shift, scale in candidates:
            self.shift, self.scale = shift, scale
            theta, log_w = self.propose(self.pilot_draws, rng)
            ok = np.isfinite(log_w)
            if ok.sum() >= 20:
                ess = float(importance_ess(psis_log_weights(log_w[ok])[0]))
                if ess > best_ess:
                    best_ess, best = ess, (shift.copy(), scale.copy())
        return best_ess, best

    def log_weight(self, x: np.ndarray, log_p: float) -> float:
        """``log p - log q'`` at one point ``x`` (``log p`` given), ``-inf`` where not finite."""
        import torch

        u = self.inverse(x[None])[0]
        with torch.no_grad():
            theta = torch.as_tensor(u[None], dtype=torch.float32, device=self.context.device)
            log_q = float(self.flow.cpu().log_prob(theta, self.context[None])[0])
        value = log_p - (log_q - self.log_det())
        return float(value) if np.isfinite(value) else -np.inf


class MHChains(NamedTuple):
    """Independence MH chains: ``theta`` ``(chains, draws, dim)`` and per-draw statistics."""

    theta: np.ndarray
    accept: np.ndarray
    accepted: np.ndarray
    log_weight: np.ndarray


def independence_mh(
    proposal: AmortizedProposal, rng: np.random.Generator, chains: int, draws: int
) -> MHChains:
    """Independence Metropolis-Hastings chains with a (moved) amortized proposal.

    Each chain starts from its first finite proposal, so no chain waits at a
    point where ``q`` is tiny; every later step proposes afresh and accepts with
    ``min(1, w' / w)``.

    Parameters
    ----------
    proposal : AmortizedProposal
        Adapted (or not) before the call.
    rng : numpy.random.Generator
    chains, draws : int

    Returns
    -------
    MHChains

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> from pymc_ext.amortized.mh import AmortizedProposal, independence_mh
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> a = pymc_ext.Amortizer(model).fit(300, epochs=2, random_seed=0, progressbar=False)
    >>> _, ctx = a.prepare([{"y": np.ones(3)}])
    >>> q = AmortizedProposal(a.flow, ctx[0], a.density.logp_batch, a.dim)
    >>> out = independence_mh(q, np.random.default_rng(1), chains=2, draws=100)
    >>> out.theta.shape, bool(out.accepted.mean() > 0.2)
    ((2, 100, 1), True)
    """
    theta_all = np.empty((chains, draws, proposal.shift.shape[0]))
    accept = np.empty((chains, draws))
    accepted = np.zeros((chains, draws), dtype=bool)
    log_weight = np.empty((chains, draws))
    for c in range(chains):
        theta, log_w = proposal.propose(draws + 1, rng)
        finite = np.flatnonzero(np.isfinite(log_w))
        if len(finite) == 0:
            raise FloatingPointError(
                "No proposal from the amortized posterior has a finite density at this dataset: "
                "it is far outside what the amortizer was trained on. Sample it with NUTS."
            )
        current, current_lw = theta[finite[0]], log_w[finite[0]]
        uniforms = np.log(rng.uniform(size=draws))
        for i in range(draws):
            log_ratio = log_w[i + 1] - current_lw
            accept[c, i] = float(np.exp(min(0.0, log_ratio))) if np.isfinite(log_ratio) else 0.0
            if uniforms[i] < log_ratio:
                current, current_lw = theta[i + 1], log_w[i + 1]
                accepted[c, i] = True
            theta_all[c, i] = current
            log_weight[c, i] = current_lw
    return MHChains(theta_all, accept, accepted, log_weight)


#: Below this acceptance rate the exact chains mix too slowly to be worth having.
LOW_MH_ACCEPTANCE = 0.05


def exact_draws(
    amortizer: Any,
    data: Mapping[str, Any],
    draws: int,
    chains: int,
    random_seed: int | np.random.Generator | None,
    stacklevel: int = 2,
    **mh_options: Any,
) -> Any:
    """Exact posterior draws for one dataset: independence MH with the adapted amortized proposal.

    The body of ``Amortizer.sample(data, correct="mh")``; ``mh_options`` go to
    :class:`~pymc_ext.amortized.mh.AmortizedProposal`. Works for any target
    (PyMC model or Stan program): the true density comes from the target's
    joint log density at ``data``.

    Returns
    -------
    xarray.DataTree
        ``posterior`` (``chains`` x ``draws``) with the model's names, dims and
        coords; ``sample_stats`` with ``accept``, ``accepted``, ``log_weight``;
        ``posterior.attrs["acceptance_rate"]``.

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> a = pymc_ext.Amortizer(model).fit(300, epochs=2, random_seed=0, progressbar=False)
    >>> from pymc_ext.amortized.mh import exact_draws
    >>> idata = exact_draws(a, {"y": np.ones(3)}, draws=100, chains=2, random_seed=1)
    >>> idata.posterior["mu"].shape
    (2, 100)
    """
    import warnings

    from pymc_ext.amortized.deterministics import datatree_at
    from pymc_ext.amortized.sampling import prepare
    from pymc_ext.flows.conditional import torch_threads

    amortizer.check_fitted()
    # every torch operation under the amortizer's thread count: the draws then do not depend
    # on the caller's torch setting (a dask worker's differs from the client's)
    with torch_threads(amortizer.num_threads):
        checked, ctx = prepare(amortizer, [data], stacklevel=stacklevel + 1)

        def log_p_batch(theta: np.ndarray) -> np.ndarray:
            return amortizer.target.joint_logp_many(theta[None], checked)[0]

        proposal = AmortizedProposal(
            amortizer.flow, ctx[0], log_p_batch, amortizer.dim, amortizer.num_threads,
            **mh_options,
        )
        rng = np.random.default_rng(random_seed)
        if proposal.mode:
            proposal.adapt(rng)
        out = independence_mh(proposal, rng, int(chains), int(draws))
    rate = float(out.accepted.mean())
    if rate < LOW_MH_ACCEPTANCE:
        warnings.warn(
            f"The exact amortized chains accepted {rate:.1%} of their proposals: the amortized "
            "posterior is far from this dataset's, so the chains mix slowly (check the ESS). "
            "Sample this dataset with NUTS (pm.sample) instead.",
            UserWarning,
            stacklevel=stacklevel + 1,
        )
    attrs = {
        "inference_library": "pymc_ext.Amortizer",
        "correct": "mh",
        "acceptance_rate": rate,
    }
    return datatree_at(
        amortizer,
        out.theta,
        checked[0],
        stacklevel=stacklevel + 1,
        sample_stats={"accept": out.accept, "accepted": out.accepted, "log_weight": out.log_weight},
        observed_data=checked[0],
        attrs=attrs,
    )
