"""Prior-predictive simulations for training and calibration, and the mini-batches over them."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from pymc_ext.amortized.layout import DataLayout
from pymc_ext.amortized.target_base import AmortizedTarget, chunk_sizes
from pymc_ext.blocks.progress import ProgressBar
from pymc_ext.blocks.random import seed_int

__all__ = [
    "RollingWindow",
    "SimulationSet",
    "epoch_batches",
    "join_blocks",
    "simulate",
    "simulate_blocks",
    "simulation_chunks",
]

MAX_DROPPED_FRACTION = 0.5


class SimulationSet(NamedTuple):
    """Finite simulations: ``theta (n, dim)``, raw data ``values``, row ``lengths``, dropped.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.amortized.simulation import SimulationSet
    >>> SimulationSet(np.zeros((2, 1)), np.zeros((2, 3)), None, 0).dropped
    0
    """

    theta: np.ndarray
    values: np.ndarray
    lengths: np.ndarray | None
    dropped: int


Block = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]  # theta, raw values, row lengths


def _join(blocks: list, layout: DataLayout, n_theta: int) -> tuple:
    """Raw data values of the blocks in one array (rows padded), lengths and finite mask."""
    if not layout.has_rows:
        values = np.concatenate([b[1] for b in blocks])
        return values, None, np.isfinite(values).all(axis=1)
    n_max = max(b[1].shape[1] for b in blocks)
    values = np.zeros((n_theta, n_max, layout.num_features))
    start = 0
    for _, v, _ in blocks:
        values[start : start + v.shape[0], : v.shape[1]] = v
        start += v.shape[0]
    lengths = np.concatenate([b[2] for b in blocks])
    return values, lengths, np.isfinite(values).all(axis=(1, 2))


def simulation_chunks(n: int, chunk: int | None, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``(size, seed)`` of each chunk of ``n`` simulations; ``rng`` is advanced by one draw.

    The chunks are the unit of work, locally and on a cluster: chunk ``i``
    is simulated from its own seed, so the simulations do not depend on
    where (or in which order) the chunks run.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.amortized.simulation import simulation_chunks
    >>> [size for size, _ in simulation_chunks(5000, 2000, np.random.default_rng(0))]
    [2000, 2000, 1000]
    """
    sizes = chunk_sizes(int(n), max(1, min(int(n), int(chunk or n))))
    children = np.random.SeedSequence(seed_int(rng)).spawn(len(sizes))
    return [(k, int(c.generate_state(1)[0])) for k, c in zip(sizes, children, strict=True)]


def simulate_blocks(
    target: AmortizedTarget, layout: DataLayout, n: int, seed: int
) -> list[Block]:
    """One chunk: ``n`` prior-predictive pairs from ``seed``, as raw blocks (what a worker runs).

    Examples
    --------
    >>> import numpy as np, pymc as pm
    >>> from pymc_ext.amortized.networks import data_layout
    >>> from pymc_ext.amortized.simulation import simulate_blocks
    >>> from pymc_ext.amortized.targets import PyMCTarget
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> target = PyMCTarget(model)
    >>> layout = data_layout("vector", ["y"], target.current_data())
    >>> [(t.shape, v.shape) for t, v, _ in simulate_blocks(target, layout, 4, seed=1)]
    [((4, 1), (4, 3))]
    """
    blocks = []
    for theta, data in target.simulate(int(n), np.random.default_rng(seed)):
        values, lengths = layout.raw(data)
        blocks.append((np.asarray(theta, dtype=float), values, lengths))
    return blocks


def join_blocks(blocks: list[Block], layout: DataLayout) -> SimulationSet:
    """The blocks as one :class:`SimulationSet`, the non-finite simulations removed.

    Raises RuntimeError when more than half are NaN or inf (a prior too wide
    for the likelihood).

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.amortized.layout import DataLayout
    >>> from pymc_ext.amortized.simulation import join_blocks
    >>> layout = DataLayout("vector", ["y"], {"y": (2,)})
    >>> block = (np.zeros((3, 1)), np.array([[0.0, 1.0], [np.nan, 1.0], [2.0, 3.0]]), None)
    >>> sims = join_blocks([block], layout)
    >>> sims.theta.shape, sims.dropped
    ((2, 1), 1)
    """
    theta = np.concatenate([b[0] for b in blocks])
    values, lengths, finite = _join(blocks, layout, theta.shape[0])
    finite &= np.isfinite(theta).all(axis=1)
    dropped = int((~finite).sum())
    if dropped > MAX_DROPPED_FRACTION * len(finite):
        raise RuntimeError(
            f"{dropped} of {len(finite)} prior-predictive simulations are NaN or inf. The "
            "prior is too wide for the likelihood (overflow): use narrower priors."
        )
    keep = np.flatnonzero(finite)
    return SimulationSet(
        theta[keep], values[keep], (lengths[keep] if lengths is not None else None), dropped
    )


def simulate(
    target: AmortizedTarget,
    layout: DataLayout,
    n: int,
    rng: np.random.Generator,
    progressbar: bool = False,
    description: str = "simulating",
    cluster: Any = None,
) -> SimulationSet:
    """``n`` prior-predictive simulations, the non-finite ones removed.

    The budget is split into chunks of ``target.simulation_chunk``, each
    seeded on its own (:func:`simulation_chunks`); ``cluster`` (a
    :class:`~pymc_ext.amortized.cluster.ClusterRun`) runs them as tasks on a
    dask cluster, with the same result. Raises RuntimeError when more than
    half are NaN or inf (a prior too wide for the likelihood).

    Examples
    --------
    >>> import numpy as np, pymc as pm
    >>> from pymc_ext.amortized.networks import data_layout
    >>> from pymc_ext.amortized.simulation import simulate
    >>> from pymc_ext.amortized.targets import PyMCTarget
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> target = PyMCTarget(model)
    >>> layout = data_layout("vector", ["y"], target.current_data())
    >>> sims = simulate(target, layout, 5, np.random.default_rng(0))
    >>> sims.theta.shape, sims.values.shape, sims.dropped
    ((5, 1), (5, 3), 0)
    """
    chunks = simulation_chunks(int(n), target.simulation_chunk, rng)
    with ProgressBar(int(n), description, show=progressbar) as bar:
        if cluster is not None:
            per_chunk = cluster.simulate(chunks, layout, bar)
        else:
            per_chunk = []
            for k, seed in chunks:
                per_chunk.append(simulate_blocks(target, layout, k, seed))
                bar.update(k)
    return join_blocks([b for blocks in per_chunk for b in blocks], layout)


def epoch_batches(
    train_idx: np.ndarray, lengths: np.ndarray | None, batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """One epoch's mini-batches, in random order.

    For sets and series the shuffled indices are cut into windows of 32
    batches, each window is sorted by ``N`` before it is cut into batches, and
    the batches are shuffled: a batch then holds datasets of similar size, so
    little of its padded ``(batch, max N)`` input is padding.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.amortized.simulation import epoch_batches
    >>> batches = epoch_batches(np.arange(10), None, 4, np.random.default_rng(0))
    >>> [len(b) for b in batches], sorted(np.concatenate(batches).tolist()) == list(range(10))
    ([4, 4, 2], True)
    """
    order = train_idx[rng.permutation(len(train_idx))]
    if lengths is None:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    window = 32 * batch_size
    batches = []
    for j in range(0, len(order), window):
        chunk = order[j : j + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


class RollingWindow:
    """Training simulations whose oldest entries are swapped for fresh ones each epoch.

    Parameters
    ----------
    theta : torch.Tensor, shape (n, dim)
    values : ndarray
        Raw data values (``(n, features)`` or padded ``(n, N, features)``).
    lengths : ndarray or None
        Rows per dataset for set / series data.
    train_idx : ndarray
        The indices that belong to the training set (only they are replaced).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from pymc_ext.amortized.simulation import RollingWindow, SimulationSet
    >>> w = RollingWindow(torch.zeros(4, 1), np.zeros((4, 2)), None, np.array([1, 2, 3]))
    >>> w.replace_oldest(SimulationSet(np.ones((2, 1)), np.ones((2, 2)), None, 0))
    >>> w.theta[:, 0].tolist()
    [0.0, 1.0, 1.0, 0.0]
    """

    def __init__(
        self,
        theta: torch.Tensor,
        values: np.ndarray,
        lengths: np.ndarray | None,
        train_idx: np.ndarray,
    ) -> None:
        self.theta, self.values, self.lengths, self.train_idx = theta, values, lengths, train_idx
        self.position = 0

    def replace_oldest(self, new: SimulationSet) -> None:
        """Swap the oldest training simulations for those in ``new``."""
        train_idx = self.train_idx
        k = min(len(new.theta), len(train_idx))
        slots = train_idx[(self.position + np.arange(k)) % len(train_idx)]
        self.position = (self.position + k) % len(train_idx)
        theta = self.theta.clone()
        theta[slots] = torch.as_tensor(new.theta[:k], dtype=theta.dtype, device=theta.device)
        self.theta = theta
        values = self.values
        if self.lengths is not None:
            width = max(values.shape[1], new.values.shape[1])
            if width > values.shape[1]:
                padded = np.zeros((values.shape[0], width, values.shape[2]))
                padded[:, : values.shape[1]] = values
                values = padded
            else:
                values = values.copy()
            values[slots] = 0.0
            values[slots, : new.values.shape[1]] = new.values[:k]
            self.lengths = self.lengths.copy()
            self.lengths[slots] = new.lengths[:k]
        else:
            values = values.copy()
            values[slots] = new.values[:k]
        self.values = values
