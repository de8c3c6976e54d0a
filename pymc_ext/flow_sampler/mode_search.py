"""Finding modes: L-BFGS climbs, barrier checks, Laplace masses, and a multi-start search.

flow_mcmc seeds its walkers from multi-path Pathfinder, so it samples every
mode that some path reaches. A path is one L-BFGS climb from one
overdispersed start, and in a few dimensions a mode narrower than another
one has a small basin of attraction: on a 10-D mixture of scales 1, 1 and
1.5, only 2 to 8% of such climbs end at each of the two narrower modes
(``benchmarks/mode_basins.py``), so 16 paths miss one of them in most runs.
:func:`search_modes` runs many cheaper climbs (no ELBO, no draws) from the
same kind of starts and returns the modes they reach that the paths missed,
each with its Laplace approximation, which :func:`add_modes_to_seed` turns
into seed draws. A climb's end counts as a mode only if it is a proper
maximum (negative-definite Hessian) holding a non-negligible share of the
mass by its Laplace approximation, so the deep neck of a funnel, where
climbs end at points of high density but no volume, is never taken for a
mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy.linalg import solve_triangular

from pymc_ext.blocks.covariance import pooled_covariance
from pymc_ext.blocks.lbfgs import lbfgs_maximize
from pymc_ext.density import LogDensity
from pymc_ext.flow_sampler.modes import same_mode
from pymc_ext.flows.seeding import SeedResult, overdispersed_inits

__all__ = [
    "ModeSearch",
    "add_modes_to_seed",
    "climbed_laplace",
    "laplace_log_mass",
    "nearest_in_sds",
    "search_modes",
]


def laplace_log_mass(
    density: LogDensity, top: np.ndarray, rel_step: float = 1e-4
) -> tuple[float, np.ndarray | None]:
    """Log of the mass near a maximum by its Laplace approximation, and that normal's covariance.

    The Hessian comes from central differences of the gradient (``2 * dim``
    gradients in one batched call). Returns ``(-inf, None)`` where ``top`` is
    not a proper maximum (the Hessian is not negative definite, or not
    finite).

    Parameters
    ----------
    density : LogDensity
    top : ndarray, shape (dim,)
        A maximum of the log density (for example the end of an L-BFGS climb).
    rel_step : float
        Finite-difference step, relative to ``1 + |top_i|``.

    Returns
    -------
    log_mass : float
        ``log p(top) + dim / 2 * log(2 pi) - log det(-H) / 2``: for a normal
        component with weight ``w`` of a normalised density, ``log w``.
    covariance : ndarray or None
        ``(-H)^-1``, the Laplace approximation's covariance.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler.mode_search import laplace_log_mass
    >>> lp = lambda X: np.log(0.3) - 0.5 * (X ** 2).sum(-1) - np.log(2 * np.pi)
    >>> d = FunctionLogDensity(2, lambda x: lp(x[None])[0], lambda x: -x, lp, lambda X: -X)
    >>> log_mass, cov = laplace_log_mass(d, np.zeros(2))
    >>> round(float(np.exp(log_mass)), 3), np.round(np.diag(cov), 3).tolist()
    (0.3, [1.0, 1.0])
    """
    top = np.asarray(top, dtype=float)
    dim = top.shape[0]
    h = rel_step * (1.0 + np.abs(top))
    steps = np.diag(h)
    lp_top = float(density.logp(top))
    _, grads = density.logp_and_grad_batch(np.concatenate([top + steps, top - steps]))
    if not np.isfinite(lp_top) or not np.all(np.isfinite(grads)):
        return -math.inf, None
    hess = (grads[:dim] - grads[dim:]) / (2.0 * h[:, None])  # row i: d grad / d x_i
    neg = -0.5 * (hess + hess.T)
    try:
        chol = np.linalg.cholesky(neg)
    except np.linalg.LinAlgError:
        return -math.inf, None  # not a proper maximum
    log_det = 2.0 * float(np.log(np.diag(chol)).sum())
    cov = np.linalg.inv(neg)
    return lp_top + 0.5 * dim * math.log(2.0 * math.pi) - 0.5 * log_det, 0.5 * (cov + cov.T)


def climbed_laplace(
    density: LogDensity, start: np.ndarray, maxiter: int = 200
) -> tuple[np.ndarray | None, float, np.ndarray | None]:
    """Climb from ``start`` (L-BFGS) and take the Laplace approximation at the end.

    Returns ``(top, log_mass, covariance)``: ``top`` is ``None`` where the
    climb did not converge, and the Laplace approximation is then taken at
    ``start`` (:func:`laplace_log_mass`: ``-inf`` and ``None`` where that is
    not a proper maximum).

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flow_sampler.mode_search import climbed_laplace
    >>> d = FunctionLogDensity(1, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x,
    ...                        logp_batch_fn=lambda X: -0.5 * (X * X).sum(1),
    ...                        grad_batch_fn=lambda X: -X)
    >>> top, log_mass, cov = climbed_laplace(d, np.array([2.0]))
    >>> np.round(top, 3).tolist(), round(log_mass, 3), cov.round(3).tolist()
    ([0.0], 0.919, [[1.0]])
    """
    start = np.asarray(start, dtype=float)
    top = lbfgs_maximize(density, start, maxiter=maxiter)[0]
    log_mass, cov = laplace_log_mass(density, start if top is None else top)
    return top, float(log_mass), cov


def nearest_in_sds(point: np.ndarray, chol: np.ndarray, others: np.ndarray) -> float:
    """Mahalanobis distance from ``point`` to the nearest row of ``others`` (``inf`` if none).

    ``chol`` is the lower Cholesky factor of the covariance that measures it.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.flow_sampler.mode_search import nearest_in_sds
    >>> nearest_in_sds(np.zeros(2), 2 * np.eye(2), np.array([[6.0, 8.0], [0.0, 4.0]]))
    2.0
    """
    others = np.asarray(others, dtype=float).reshape(-1, point.shape[0])
    if others.shape[0] == 0:
        return math.inf
    z = solve_triangular(chol, (others - point).T, lower=True)
    return float(np.sqrt((z * z).sum(0)).min())


@dataclass
class ModeSearch:
    """What :func:`search_modes` found.

    Attributes
    ----------
    tops : ndarray, shape (k, dim)
        Modes the climbs reached that none of the known modes is (best first).
    covariances : ndarray, shape (k, dim, dim)
        Their Laplace covariances.
    log_masses : ndarray, shape (k,)
        Their Laplace log masses.
    reference_log_mass : float
        What a mode's log mass was compared with (the largest of Pathfinder's
        best ELBO and the known modes' Laplace log masses).
    climbs : int
        Climbs run.
    ended_at_new : ndarray, shape (k,)
        How many climbs ended at each new mode.
    rejected : int
        Distinct climb ends that were not kept: not a proper maximum, or less
        than ``min_mass`` of the reference mass.
    grad_evals : int
        Gradient evaluations spent.
    """

    tops: np.ndarray
    covariances: np.ndarray
    log_masses: np.ndarray
    reference_log_mass: float
    climbs: int
    ended_at_new: np.ndarray
    rejected: int
    grad_evals: int


def _best_elbo(seed: SeedResult) -> float:
    """Pathfinder's best ELBO over its paths (a lower bound on log Z), or -inf."""
    paths = getattr(seed.pathfinder, "paths", None) or []
    best = -math.inf
    for path in paths:
        elbo = np.asarray(getattr(path, "elbo", []), dtype=float)
        if elbo.size and np.isfinite(elbo).any():
            best = max(best, float(np.nanmax(np.where(np.isfinite(elbo), elbo, np.nan))))
    return best


def search_modes(
    density: LogDensity,
    seed: SeedResult,
    known: np.ndarray,
    *,
    num_climbs: int,
    rng: np.random.Generator,
    init_scale: float = 2.0,
    min_mass: float = 1e-3,
    maxiter: int = 100,
) -> ModeSearch:
    """Climb from overdispersed starts and return the modes reached that ``known`` misses.

    The starts are those of the Pathfinder paths (the density's initial point
    plus ``U(-s, s)``, ``s`` cycling through ``init_scale``, twice and four
    times that). Climb ends are merged when no barrier separates them; an
    end that is the same mode as a known mode (or as the top its climb
    reaches) is dropped. What is left is kept when it is a proper maximum
    whose Laplace mass is at least ``min_mass`` times the reference: the
    largest of Pathfinder's best ELBO and the known modes' Laplace masses.

    Parameters
    ----------
    density : LogDensity
    seed : SeedResult
        The Pathfinder seeding (its ELBO sets the reference mass).
    known : ndarray, shape (m, dim)
        Modes already known (the distinct path centres).
    num_climbs : int
    rng : numpy Generator
    init_scale : float
        Smallest half-width of the starts.
    min_mass : float
        Smallest share of the reference mass a new mode must hold.
    maxiter : int
        L-BFGS iterations per climb (a climb not converged by then, down a
        funnel's neck say, is dropped).

    Returns
    -------
    ModeSearch

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flows import pathfinder_seed
    >>> from pymc_ext.flow_sampler.mode_search import search_modes
    >>> def lp(X):  # N(-3, 1) and N(3, 1) in 2-D, weights 0.5 each
    ...     a, b = -0.5 * ((X + 3) ** 2).sum(-1), -0.5 * ((X - 3) ** 2).sum(-1)
    ...     return np.logaddexp(a, b) - np.log(4 * np.pi)
    >>> def gr(X):
    ...     a, b = -0.5 * ((X + 3) ** 2).sum(-1), -0.5 * ((X - 3) ** 2).sum(-1)
    ...     r = np.exp(a - np.logaddexp(a, b))[:, None]
    ...     return r * -(X + 3) + (1 - r) * -(X - 3)
    >>> d = FunctionLogDensity(2, lambda x: lp(x[None])[0], lambda x: gr(x[None])[0], lp, gr)
    >>> seed = pathfinder_seed(d, num_paths=2, num_draws=100, random_seed=0)
    >>> found = search_modes(d, seed, np.array([[3.0, 3.0]]), num_climbs=32,
    ...                      rng=np.random.default_rng(0))
    >>> np.round(found.tops, 2).tolist(), np.round(np.exp(found.log_masses), 2).tolist()
    ([[-3.0, -3.0]], [0.5])
    """
    if num_climbs < 0:
        raise ValueError(f"num_climbs must be >= 0, got {num_climbs}.")
    dim = int(density.dim)
    grad_before = int(density.grad_evals)
    known = np.atleast_2d(np.asarray(known, dtype=float)).reshape(-1, dim)
    empty = ModeSearch(np.zeros((0, dim)), np.zeros((0, dim, dim)), np.zeros(0), -math.inf,
                       0, np.zeros(0, dtype=int), 0, 0)
    if num_climbs == 0:
        return empty
    known_tops = [t for t in (_climb(density, k, maxiter) for k in known) if t is not None]
    known_masses = [laplace_log_mass(density, t)[0] for t in known_tops]
    reference = max([_best_elbo(seed), *known_masses])
    if not np.isfinite(reference):  # nothing to weigh a new mode against: no search
        return replace(empty, grad_evals=int(density.grad_evals) - grad_before)
    scale = np.sqrt(np.maximum(seed.within_variance, 1e-300))
    starts = overdispersed_inits(density, num_climbs, rng, init_scale)
    ends, counts = _climb_ends(density, starts, maxiter, scale)
    tops, covs, masses, hits, rejected = _new_modes(
        density, ends, counts, [*known, *known_tops], reference + math.log(min_mass)
    )
    order = np.argsort(-np.asarray(masses)) if masses else np.zeros(0, dtype=int)
    return ModeSearch(
        np.asarray(tops).reshape(-1, dim)[order], np.asarray(covs).reshape(-1, dim, dim)[order],
        np.asarray(masses)[order], float(reference), int(num_climbs),
        np.asarray(hits, dtype=int)[order], rejected, int(density.grad_evals) - grad_before,
    )


def _climb(density: LogDensity, x0: np.ndarray, maxiter: int) -> np.ndarray | None:
    """The top of ``x0``'s mode by L-BFGS, or None (no converged top: not a mode)."""
    return lbfgs_maximize(density, x0, maxiter=maxiter)[0]


def _climb_ends(
    density: LogDensity, starts: np.ndarray, maxiter: int, scale: np.ndarray
) -> tuple[list[np.ndarray], list[int]]:
    """Climb from every start; the distinct ends (merged when no barrier separates them)
    with how many climbs ended at each."""
    ends: list[np.ndarray] = []
    counts: list[int] = []
    for x0 in starts:
        top = _climb(density, x0, maxiter)
        if top is None:
            continue
        for k, end in enumerate(ends):
            if np.sqrt(np.mean(((top - end) / scale) ** 2)) < 0.05 or same_mode(
                density, top, end
            ):
                counts[k] += 1
                break
        else:
            ends.append(top)
            counts.append(1)
    return ends, counts


def _new_modes(
    density: LogDensity,
    ends: list[np.ndarray],
    counts: list[int],
    known: list[np.ndarray],
    min_log_mass: float,
) -> tuple[list, list, list, list, int]:
    """The climb ends that are new proper maxima with enough Laplace mass: their tops,
    covariances, log masses and climb counts, and how many ends were rejected."""
    tops, covs, masses, hits = [], [], [], []
    rejected = 0
    for end, count in zip(ends, counts, strict=True):
        if any(same_mode(density, end, m) for m in known) or any(
            same_mode(density, end, t) for t in tops
        ):
            continue
        log_mass, cov = laplace_log_mass(density, end)
        if cov is None or log_mass < min_log_mass:
            rejected += 1
            continue
        tops.append(end)
        covs.append(cov)
        masses.append(log_mass)
        hits.append(count)
    return tops, covs, masses, hits, rejected


def add_modes_to_seed(
    seed: SeedResult, found: ModeSearch, rng: np.random.Generator
) -> SeedResult:
    """The seed with draws from each found mode's Laplace normal, as many as one path has.

    Each new mode becomes one more "path" of the seed: its centre, scales and
    draws join the others, so walkers start in it too (the MCMC corrects the
    weights).

    Parameters
    ----------
    seed : SeedResult
    found : ModeSearch
    rng : numpy Generator

    Returns
    -------
    SeedResult

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.density import FunctionLogDensity
    >>> from pymc_ext.flows import pathfinder_seed
    >>> from pymc_ext.flow_sampler.mode_search import ModeSearch, add_modes_to_seed
    >>> d = FunctionLogDensity(2, lambda x: -0.5 * x @ x, grad_fn=lambda x: -x)
    >>> seed = pathfinder_seed(d, num_paths=2, num_draws=100, random_seed=0)
    >>> found = ModeSearch(np.array([[5.0, 5.0]]), np.eye(2)[None], np.zeros(1), 0.0, 8,
    ...                    np.array([3]), 0, 0)
    >>> more = add_modes_to_seed(seed, found, np.random.default_rng(0))
    >>> more.centers.shape, more.draws.shape
    ((3, 2), (150, 2))
    """
    if found.tops.shape[0] == 0:
        return seed
    per = max(2, seed.draws.shape[0] // max(1, seed.centers.shape[0]))
    draws, index = [seed.draws], [seed.path_index]
    next_index = int(seed.path_index.max()) + 1 if seed.path_index.size else 0
    for k, (top, cov) in enumerate(zip(found.tops, found.covariances, strict=True)):
        draws.append(rng.multivariate_normal(top, cov, size=per, method="cholesky"))
        index.append(np.full(per, next_index + k))
    all_draws = np.concatenate(draws)
    scales = np.sqrt(np.diagonal(found.covariances, axis1=1, axis2=2))
    path_scales = np.concatenate([seed.path_scales, scales])
    return replace(
        seed,
        draws=all_draws,
        path_index=np.concatenate(index),
        centers=np.concatenate([seed.centers, found.tops]),
        path_scales=path_scales,
        mean=all_draws.mean(0),
        covariance=pooled_covariance(all_draws),
        within_variance=np.mean(path_scales**2, axis=0),
        grad_evals=seed.grad_evals + found.grad_evals,
        path_ok=np.concatenate([seed.path_ok, np.ones(found.tops.shape[0], dtype=bool)]),
    )
