"""The options of multi-path Pathfinder: :class:`PathfinderConfig` (frozen, validated once)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PathfinderConfig"]


@dataclass(frozen=True)
class PathfinderConfig:
    """Options of :func:`~pymc_ext.vi.multipath.multipath_pathfinder` (frozen, validated once).

    Attributes
    ----------
    num_paths : int
        Number of independent L-BFGS paths.
    num_draws : int
        Number of draws returned after importance resampling.
    jitter : float, optional
        Without ``init``: the half-width of the uniform random starts
        (default 2, like Stan). With ``init``: uniform noise of this
        half-width added to each start (default 0, no noise).
    num_draws_per_path : int, optional
        Draws from each path's best approximation before resampling
        (default ``num_draws``).
    num_elbo_draws : int
        Monte Carlo draws for the ELBO at every iterate.
    history_size : int
        L-BFGS history ``J``.
    maxiter : int
        Maximum L-BFGS iterations per path.
    ftol, gtol : float
        Convergence tolerances (relative change of ``log p``; max-abs gradient).
        The default ``ftol=1e-8`` is tighter than pymc-extras' 1e-5: with a
        large ``|log p|`` (many observations) 1e-5 stops L-BFGS early in long,
        narrow valleys (kidiq: mean error 4.1 sd at 1e-5, 0.04 at 1e-8, for
        twice the gradient evaluations).
    importance_sampling : {"psis", "none"}
        ``"psis"`` resamples the pooled draws by Pareto-smoothed importance
        weights; ``"none"`` pools them with equal weight per path.
    replace : bool
        Resample with replacement (standard importance resampling).

    Examples
    --------
    >>> from pymc_ext.vi.config import PathfinderConfig
    >>> PathfinderConfig(num_paths=8).draws_per_path
    1000
    >>> PathfinderConfig(importance_sampling="is")
    Traceback (most recent call last):
    ...
    ValueError: importance_sampling must be 'psis' or 'none'; got 'is'.
    """

    num_paths: int = 4
    num_draws: int = 1000
    jitter: float | None = None
    num_draws_per_path: int | None = None
    num_elbo_draws: int = 25
    history_size: int = 6
    maxiter: int = 1000
    ftol: float = 1e-8
    gtol: float = 1e-8
    importance_sampling: str = "psis"
    replace: bool = True

    def __post_init__(self) -> None:
        if int(self.num_paths) < 1:
            raise ValueError(f"num_paths must be at least 1; got {self.num_paths}.")
        if int(self.num_draws) < 1:
            raise ValueError(f"num_draws must be at least 1; got {self.num_draws}.")
        if self.importance_sampling not in ("psis", "none"):
            raise ValueError(
                f"importance_sampling must be 'psis' or 'none'; got {self.importance_sampling!r}."
            )
        for name in ("num_elbo_draws", "history_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)}.")
        if int(self.maxiter) < 0:
            raise ValueError(f"maxiter must be >= 0; got {self.maxiter}.")
        for name in ("num_paths", "num_draws", "num_elbo_draws", "history_size", "maxiter"):
            object.__setattr__(self, name, int(getattr(self, name)))

    @property
    def draws_per_path(self) -> int:
        """Draws taken from each path (``num_draws_per_path``, or ``num_draws``)."""
        return int(self.num_draws_per_path or self.num_draws)
