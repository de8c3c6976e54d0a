"""The amortizer's work on a ``dask.distributed`` cluster: what travels, the tasks, retries.

Every entry point that takes ``client=`` (the simulations of
:meth:`Amortizer.fit <pymc_ext.Amortizer.fit>`, :meth:`~pymc_ext.Amortizer.sample_many`,
:meth:`~pymc_ext.Amortizer.check_calibration` and
:meth:`~pymc_ext.Amortizer.fit_many`) splits its work into chunks that are the
same locally and on a cluster, each with its own seed, and hands them to a
:class:`ClusterRun`:

- **Nothing live travels.** A worker gets a
  :class:`~pymc_ext.amortized.recipe.ModelRecipe`: the model
  function ``model_builder`` and the training model's data for a PyMC model;
  the program's code, data and build options for a Stan program, whose
  compiled library the worker finds in the on-disk build cache
  (``STAN_BRIDGE_CACHE``) instead of compiling it. Once the amortizer is
  trained, the worker also gets the bytes of its saved file (sent once, as the
  result of a task that dask reruns if the worker holding it dies). It
  rebuilds both and keeps them for the next tasks (a small cache per worker
  thread, keyed by a hash of what was shipped).
- **The same seeds give the same results.** A chunk's seed and its place
  among the datasets fix its draws (see :func:`~pymc_ext.amortized.sampling.draw`),
  whichever worker runs it and in whichever order.
- **A worker that dies loses nothing.** Its tasks are rerun elsewhere
  (``TASK_RETRIES`` times at most). A chunk that fails even so is reported
  by name: the training simulations and SBC raise its error with a note naming
  the chunk; ``sample_many`` returns NaN draws for its datasets and a
  warning naming them; ``fit_many`` marks its dataset ``failed``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from pymc_ext.amortized.layout import DataLayout
from pymc_ext.amortized.recipe import ModelRecipe, recipe_for, saved_bytes
from pymc_ext.amortized.sampling import batch_datasets, draws_and_checks, sbc_chunk
from pymc_ext.amortized.simulation import Block, simulate_blocks
from pymc_ext.flows.conditional import torch_threads

__all__ = [
    "TASK_RETRIES",
    "ClusterRun",
    "cluster_run",
    "draws_task",
    "sbc_task",
    "simulate_task",
    "worker_amortizer",
    "worker_target",
]

#: Reruns of a task whose worker died (or that raised) before it is reported failed.
TASK_RETRIES = 2
#: Rebuilt models and amortizers a worker thread keeps (the latest runs').
WORKER_CACHE_SIZE = 4
#: Tasks per worker that ``sample_many`` aims at (a few, so that a slow worker is not the tail).
TASKS_PER_WORKER = 4


# -- on the worker ----------------------------------------------------------------------------
_WORKER_CACHE: OrderedDict[tuple, Any] = OrderedDict()
_WORKER_LOCK = threading.Lock()


def _on_worker(key: tuple, make: Callable[[], Any]) -> Any:
    """``make()`` once per worker thread and key (PyTensor functions are not thread-safe)."""
    key = (*key, threading.get_ident())
    with _WORKER_LOCK:
        if key in _WORKER_CACHE:
            _WORKER_CACHE.move_to_end(key)
            return _WORKER_CACHE[key]
    value = make()
    with _WORKER_LOCK:
        _WORKER_CACHE[key] = value
        while len(_WORKER_CACHE) > WORKER_CACHE_SIZE:
            _WORKER_CACHE.popitem(last=False)
    return value


def worker_target(token: str, recipe: ModelRecipe) -> Any:
    """The rebuilt amortization target of ``recipe`` (cached per worker thread)."""
    return _on_worker(("target", token), recipe.target)


def worker_amortizer(token: str, recipe: ModelRecipe, payload: bytes) -> Any:
    """The amortizer rebuilt from its saved bytes, in the rebuilt model (cached)."""

    def load() -> Any:
        from pymc_ext.amortized.core import Amortizer

        with tempfile.TemporaryDirectory(prefix="pymc_ext_cluster_") as tmp:
            path = os.path.join(tmp, "amortizer.pt")
            with open(path, "wb") as fh:
                fh.write(payload)
            return Amortizer.load(
                path, recipe.model(), covariate_sampler=recipe.covariate_sampler,
                device=recipe.device, num_threads=recipe.num_threads,
            )

    return _on_worker(("amortizer", token), load)


def _copied(datasets: Sequence[Mapping[str, Any]]) -> list[dict[str, np.ndarray]]:
    return [{k: np.array(v, copy=True) for k, v in d.items()} for d in datasets]


def simulate_task(
    token: str, recipe: ModelRecipe, layout: dict[str, Any], n: int, seed: int
) -> list[Block]:
    """A worker's chunk of training simulations (:func:`~pymc_ext.amortized.simulation.simulate_blocks`)."""  # noqa: E501
    target = worker_target(token, recipe)
    return simulate_blocks(target, DataLayout.from_config(layout), n, seed)


def draws_task(
    token: str, recipe: ModelRecipe, payload: bytes, ctx: np.ndarray,
    datasets: list[dict], draws: int, seeds: tuple[int, int], correct: str | None,
    diagnostics: bool, first: int,
) -> tuple[np.ndarray, dict, dict]:
    """A worker's share of ``sample_many`` (:func:`~pymc_ext.amortized.sampling.draws_and_checks`)."""  # noqa: E501
    amortizer = worker_amortizer(token, recipe, payload)
    with torch_threads(amortizer.num_threads):
        context = torch.as_tensor(np.array(ctx, copy=True), device=amortizer.device)
        return draws_and_checks(
            amortizer, _copied(datasets), context, draws, seeds, correct, diagnostics,
            first=first, cores=1,
        )


def sbc_task(
    token: str, recipe: ModelRecipe, payload: bytes, n: int, seed: int, draws: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """A worker's chunk of SBC (:func:`~pymc_ext.amortized.sampling.sbc_chunk`)."""
    amortizer = worker_amortizer(token, recipe, payload)
    with torch_threads(amortizer.num_threads):
        return sbc_chunk(amortizer, n, seed, draws, cores=1)


def _payload(data: bytes) -> bytes:
    """The saved amortizer's bytes as a task result (recomputed if its worker dies)."""
    return data


# -- on the client ----------------------------------------------------------------------------
class ClusterRun:
    """One call's work on a dask cluster: the client, the recipe and the shipped amortizer.

    Parameters
    ----------
    client : distributed.Client
        A client of the cluster (a ``LocalCluster`` or a remote scheduler).
    amortizer : Amortizer
        The amortizer whose work is shipped.
    model_builder : callable, optional
        See :func:`recipe_for` (needed for PyMC models).
    weights : bool
        Ship the trained networks too (not for the training simulations).

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> from pymc_ext.amortized.cluster import ClusterRun
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> try:
    ...     ClusterRun(object(), pymc_ext.Amortizer(model), weights=False)
    ... except ValueError as err:
    ...     print(str(err)[:56])
    On a cluster the workers rebuild the model from what the
    """

    def __init__(
        self, client: Any, amortizer: Any, model_builder: Callable | None = None, *,
        weights: bool = True,
    ) -> None:
        if weights:
            amortizer.check_fitted()
            if amortizer.summary_kind == "custom":
                raise ValueError(
                    "An amortizer with a custom summary module cannot be rebuilt on a worker "
                    "from its saved file (the module's code is not in it): run this call "
                    "locally (client=None)."
                )
        self.recipe = recipe_for(amortizer, model_builder)
        if not callable(getattr(client, "submit", None)) or not callable(
            getattr(client, "scheduler_info", None)
        ):
            raise TypeError(
                "client must be a dask.distributed.Client (or None to run here), e.g. "
                f"Client('tcp://scheduler:8786'); got {type(client).__name__}."
            )
        self.client = client
        self.amortizer = amortizer
        self.payload = saved_bytes(amortizer) if weights else b""
        import cloudpickle

        digest = hashlib.sha1(self.payload)
        digest.update(cloudpickle.dumps(self.recipe))
        self.token = digest.hexdigest()[:16]
        # A task that returns the bytes, not scattered data: dask keeps one replica of scattered
        # data (its memory manager drops the others), and data lost with a dying worker cannot
        # be rebuilt, while a task's result is recomputed from the bytes in its spec.
        self.remote_payload = (
            client.submit(_payload, self.payload, key=f"pymc_ext-amortizer-{self.token}",
                          pure=False)
            if weights else None
        )

    def run(
        self, fn: Callable, jobs: Sequence[tuple], names: Sequence[str], what: str,
        bar: Any = None, steps: Sequence[int] | None = None,
    ) -> list[Any]:
        """``fn(*job)`` for every job, as tasks; each result, or the exception of a failed task.

        ``names`` name the jobs in errors; ``bar`` advances by ``steps[i]``
        (1 by default) as job ``i`` finishes.
        """
        from distributed import as_completed

        run_id = uuid.uuid4().hex[:8]
        futures = {
            self.client.submit(fn, *job, key=f"pymc_ext-{what}-{run_id}-{i}",
                               retries=TASK_RETRIES, pure=False): i
            for i, job in enumerate(jobs)
        }
        out: list[Any] = [None] * len(jobs)
        for future in as_completed(futures):
            i = futures[future]
            try:
                out[i] = future.result()
            except Exception as err:  # noqa: BLE001 - reported by the caller, by name
                err.add_note(
                    f"pymc_ext: in the dask task for {names[i]} (after up to {TASK_RETRIES} "
                    "retries)"
                )
                out[i] = err
            finally:
                future.release()
            if bar is not None:
                bar.update(int(steps[i]) if steps is not None else 1)
        return out

    def _raise_failed(self, results: Sequence[Any]) -> None:
        for result in results:
            if isinstance(result, BaseException):
                raise result

    # -- the entry points' work ------------------------------------------------------------------
    def simulate(self, chunks: Sequence[tuple[int, int]], layout: DataLayout, bar: Any) -> list:
        """Each ``(size, seed)`` chunk of training simulations as a task; their blocks, in order."""
        config = layout.config()
        jobs = [(self.token, self.recipe, config, k, seed) for k, seed in chunks]
        names = [f"simulation chunk {i} ({k} simulations)" for i, (k, _) in enumerate(chunks)]
        results = self.run(simulate_task, jobs, names, "simulate", bar, [k for k, _ in chunks])
        self._raise_failed(results)
        return results

    def sbc(self, chunks: Sequence[tuple[int, int]], draws: int, bar: Any) -> list:
        """Each ``(size, seed)`` chunk of SBC as a task; ``(theta, draws, dropped)`` in order."""
        jobs = [(self.token, self.recipe, self.remote_payload, k, seed, draws)
                for k, seed in chunks]
        names = [f"SBC chunk {i} ({k} datasets)" for i, (k, _) in enumerate(chunks)]
        results = self.run(sbc_task, jobs, names, "sbc", bar, [k for k, _ in chunks])
        self._raise_failed(results)
        return results

    def workers(self) -> int:
        """Workers of the cluster now (at least 1)."""
        return max(1, len(self.client.scheduler_info().get("workers", {})))

    def draws(
        self, checked: list[dict], ctx: torch.Tensor, draws: int, seeds: tuple[int, int],
        correct: str | None, diagnostics: bool,
    ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """``sample_many``'s draws in tasks of whole batches; a failed task's datasets get NaN."""
        n = len(checked)
        per = batch_datasets(self.amortizer, draws)
        batches = -(-n // per)
        size = per * max(1, -(-batches // (TASKS_PER_WORKER * self.workers())))
        starts = list(range(0, n, size))
        ctx_np = ctx.detach().cpu().numpy()
        jobs = [
            (self.token, self.recipe, self.remote_payload, ctx_np[s : s + size],
             checked[s : s + size], draws, seeds, correct, diagnostics, s)
            for s in starts
        ]
        names = [f"datasets {s}-{min(s + size, n) - 1}" for s in starts]
        results = self.run(draws_task, jobs, names, "sample_many")
        return _join_draws(results, names, [min(size, n - s) for s in starts], draws,
                           self.amortizer.dim)


def _join_draws(
    results: list[Any], names: list[str], sizes: list[int], draws: int, dim: int
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The tasks' draws in one array; NaN (and a warning naming them) for failed tasks."""
    good = [r for r in results if not isinstance(r, BaseException)]
    if not good:
        raise results[0]
    _, stats0, diag0 = good[0]
    failed = [(name, r) for name, r in zip(names, results, strict=True)
              if isinstance(r, BaseException)]
    parts = [
        r if not isinstance(r, BaseException) else (
            np.full((k, draws, dim), np.nan),
            {key: np.full((k, draws), np.nan) for key in stats0},
            {key: np.full(k, np.nan) for key in diag0},
        )
        for r, k in zip(results, sizes, strict=True)
    ]
    if failed:
        warnings.warn(
            f"sample_many: the cluster could not draw {[name for name, _ in failed]} "
            f"({failed[0][1]!r}); their draws and diagnostics are NaN. Rerun those datasets.",
            UserWarning,
            stacklevel=6,  # the caller of sample_many
        )
    theta = np.concatenate([p[0] for p in parts])
    stats = {key: np.concatenate([p[1][key] for p in parts]) for key in stats0}
    diag = {key: np.concatenate([p[2][key] for p in parts]) for key in diag0}
    return theta, stats, diag


def cluster_run(
    client: Any, amortizer: Any, model_builder: Callable | None, weights: bool = True
) -> ClusterRun | None:
    """A :class:`ClusterRun` for ``client``, or None to run locally (``client=None``).

    Examples
    --------
    >>> from pymc_ext.amortized.cluster import cluster_run
    >>> cluster_run(None, amortizer=None, model_builder=None) is None
    True
    """
    if client is None:
        return None
    return ClusterRun(client, amortizer, model_builder, weights=weights)
