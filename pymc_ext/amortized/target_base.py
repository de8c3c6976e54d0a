"""The interface of an amortization target, and helpers shared by the targets.

See :mod:`pymc_ext.amortized.targets` for what a target provides and the two
adapters (:class:`~pymc_ext.amortized.pymc_target.PyMCTarget`,
:class:`~pymc_ext.amortized.density_target.PriorPredictiveTarget`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from pymc_ext.density import LogDensity

__all__ = ["AmortizedTarget", "Simulations", "chunk_sizes", "flat_parameter_names"]

Simulations = list[tuple[np.ndarray, dict[str, np.ndarray]]]


class AmortizedTarget(Protocol):
    """The interface :class:`~pymc_ext.Amortizer` uses (see the module docstring)."""

    density: LogDensity
    dim: int
    kind: str
    observed: list[str]
    covariates: list[str]
    param_names: list[str]
    simulation_chunk: int | None  # simulations per call of simulate (None: all at once)

    def data_names(self) -> list[str]: ...

    def current_data(self) -> dict[str, np.ndarray]: ...

    def simulate(self, n: int, rng: np.random.Generator) -> Simulations: ...

    def joint_logp(self, theta: np.ndarray, data: Mapping[str, np.ndarray]) -> np.ndarray: ...

    def joint_logp_many(
        self, theta: np.ndarray, datasets: Sequence[Mapping[str, np.ndarray]]
    ) -> np.ndarray: ...

    def fingerprint(self) -> dict[str, Any]: ...


def flat_parameter_names(names_shapes: Sequence[tuple[str, tuple[int, ...]]]) -> list[str]:
    """Labels for the entries of a flat parameter vector, ``name[i,j]`` for arrays.

    Examples
    --------
    >>> from pymc_ext.amortized.targets import flat_parameter_names
    >>> flat_parameter_names([("mu", ()), ("z", (2,))])
    ['mu', 'z[0]', 'z[1]']
    """
    out = []
    for name, shape in names_shapes:
        shape = tuple(shape)
        if shape == () or int(np.prod(shape)) == 1 and len(shape) == 0:
            out.append(name)
            continue
        for idx in np.ndindex(*shape):
            out.append(f"{name}[{','.join(map(str, idx))}]")
    return out

def chunk_sizes(n: int, size: int) -> list[int]:
    """``n`` split into blocks of ``size`` (the last one shorter).

    Examples
    --------
    >>> from pymc_ext.amortized.target_base import chunk_sizes
    >>> chunk_sizes(7, 3)
    [3, 3, 1]
    """
    sizes = [size] * (n // size)
    if n % size:
        sizes.append(n % size)
    return sizes
