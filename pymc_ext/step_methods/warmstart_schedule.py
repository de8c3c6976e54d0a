"""The adaptation schedule of :class:`~pymc_ext.step_methods.warmstart.WarmStartNUTS`.

A mixin: when the metric is re-estimated (fractions ``metric_windows`` of the
warmup), and what happens at the end of a chain's adaptation: if, at the
last re-estimate, the chain's own variances still disagreed with its metric by
more than the noise of the estimate
(:func:`~pymc_ext.blocks.metric_choice.mismatch_threshold`), the
adaptation goes on (``extension`` more iterations with their own windows, at
most :data:`~pymc_ext.step_methods.warmstart_metric.MAX_WARMUP_EXTENSIONS`
times) while ``tune`` leaves room, and otherwise a warning goes into the
chain's statistics (PyMC logs it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pymc.stats.convergence import SamplerWarning, WarningType

from pymc_ext.blocks.metric_choice import mismatch_threshold
from pymc_ext.step_methods.warmstart_metric import MAX_WARMUP_EXTENSIONS, UNSETTLED_FACTOR

__all__ = ["AdaptationSchedule", "MIN_EXTENSION"]

#: Shortest extension of an adaptation that has not settled (room for its windows).
MIN_EXTENSION = 80


class AdaptationSchedule:
    """Per-chain adaptation schedule (a mixin of ``WarmStartNUTS``).

    The class using it sets ``warmup``, ``extension``, ``metric_windows`` and
    ``potential`` (a :class:`~pymc_ext.step_methods.warmstart_potential.WarmStartPotential`).

    Examples
    --------
    >>> from pymc_ext.step_methods.warmstart_schedule import AdaptationSchedule
    >>> s = AdaptationSchedule()
    >>> s.metric_windows = (0.25, 0.5, 0.75)
    >>> s._schedule(100)
    [25, 50, 75]
    """

    warmup: int
    extension: int
    metric_windows: tuple[float, ...]
    potential: Any
    _chain_tune: int
    _chain_iter: int
    _warm_iter: int
    _start_pending: bool
    _chain_adapt: int
    _window_ends: list
    _restart_ends: list
    _extensions: int
    _settle_factor: float
    _pending_warning: Any

    def _schedule(self, n_adapt: int) -> list[int]:
        """Iterations (0-based) after which the metric is re-estimated."""
        ends = sorted({int(round(f * n_adapt)) for f in self.metric_windows})
        return [e for e in ends if 10 <= e < n_adapt - 10]

    def _reset_chain(self, tune: int) -> None:
        self._chain_tune = int(tune)
        self._chain_iter = 0
        self._warm_iter = 0
        self._start_pending = True
        self._chain_adapt = min(self.warmup, int(tune))
        self._window_ends = self._schedule(self._chain_adapt)
        self._restart_ends = self._window_ends[:1]
        self._extensions = 0
        self._settle_factor = np.nan
        self._pending_warning = None

    def _end_of_adaptation(self) -> None:
        """At the end of a chain's adaptation: extend it where the metric has not settled.

        Settled: at the last re-estimate, the variances of the chain's own draws
        agreed with the metric they were drawn with, within the noise of the
        estimate (:func:`~pymc_ext.blocks.metric_choice.mismatch_threshold` for
        half the window's draws).
        Otherwise the adaptation goes on for ``extension`` more iterations (a new
        set of windows, the warm start's covariance weighted down), at most
        ``MAX_WARMUP_EXTENSIONS`` times, while ``tune`` leaves room; where it does
        not, a warning says to give a longer ``tune``.
        """
        factor, window = self.potential.last_mismatch
        self._settle_factor = factor
        # Half the window's draws count: warmup draws are autocorrelated (with all of
        # them, 4 of 8 reference posteriors extended a chain that had settled).
        threshold = mismatch_threshold(window / 2, UNSETTLED_FACTOR)
        if not factor > threshold:  # settled, or never re-estimated (NaN)
            return
        room = self._chain_tune - self._chain_adapt
        if self._extensions < MAX_WARMUP_EXTENSIONS and room >= self.extension:
            start = self._chain_adapt
            ends = [start + e for e in self._schedule(self.extension)]
            self._chain_adapt += self.extension
            self._extensions += 1
            self._window_ends = self._window_ends + ends
            self._restart_ends = self._restart_ends + ends[:1]
            self.potential.distrust_prior()  # the draws disagree with it
            return
        self._pending_warning = SamplerWarning(
            WarningType.BAD_PARAMS,
            f"WarmStartNUTS: the warm-started adaptation has not settled after "
            f"{self._chain_adapt} iterations (the chain's variances differ from its mass "
            f"matrix by a factor {factor:.3g}). The draws are valid but may mix slowly: give "
            "a longer tune (or leave tune unset, so that the adaptation can extend itself).",
            "warning",
        )
