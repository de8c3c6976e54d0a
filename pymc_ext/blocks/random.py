"""Random streams: one place that turns a ``random_seed`` into generators and torch seeds."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["child_rng", "seed_int"]


def seed_int(random_seed: Any) -> int:
    """A non-negative 31-bit integer seed (for torch) drawn from ``random_seed``.

    Parameters
    ----------
    random_seed : int, numpy Generator, SeedSequence or None
        Anything :func:`numpy.random.default_rng` accepts. A Generator is
        advanced by one draw.

    Returns
    -------
    int

    Examples
    --------
    >>> from pymc_ext.blocks.random import seed_int
    >>> seed_int(1) == seed_int(1)
    True
    """
    return int(np.random.default_rng(random_seed).integers(2**31 - 1))


def child_rng(rng: np.random.Generator) -> np.random.Generator:
    """An independent generator from ``rng`` that leaves ``rng``'s own stream as it is.

    Parameters
    ----------
    rng : numpy.random.Generator

    Returns
    -------
    numpy.random.Generator

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.blocks.random import child_rng
    >>> a, b = np.random.default_rng(0), np.random.default_rng(0)
    >>> _ = child_rng(a).normal()
    >>> bool(a.normal() == b.normal())   # the parent stream is untouched
    True
    """
    try:
        return rng.spawn(1)[0]
    except (TypeError, ValueError, AttributeError):  # a bit generator without a seed sequence
        return np.random.default_rng(rng.bit_generator.random_raw())
