"""The one progress bar of the package, built on rich as PyMC's own progress bars are.

Every loop that can take more than a few seconds (Pathfinder paths, flow
training, flow MCMC rounds, amortized training and calibration, Stan builds)
shows one of these. ``show=False`` turns it off; a console that is not a
terminal gets the final state only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["ProgressBar", "track"]



class ProgressBar:
    """A progress bar with a description, a count and free-form fields.

    Parameters
    ----------
    total : int or None
        Steps expected (``None``: unknown).
    description : str
        Shown on the left.
    show : bool
        ``False`` shows nothing (every method still works).

    Examples
    --------
    >>> from pymc_ext.blocks.progress import ProgressBar
    >>> with ProgressBar(3, "fitting", show=False) as bar:
    ...     for step in range(3):
    ...         bar.update(loss=f"{1.0 / (step + 1):.2f}")
    >>> bar.completed
    3
    """

    def __init__(self, total: int | None, description: str = "", show: bool = True) -> None:
        self.show = bool(show)
        self.completed = 0
        self._progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            disable=not self.show,
            console=Console(stderr=True),  # like tqdm: results on stdout stay clean
        )
        self._task = self._progress.add_task(description, total=total, info="")
        self._started = False

    def __enter__(self) -> ProgressBar:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Start showing the bar (``__enter__`` does this)."""
        if not self._started:
            self._progress.start()
            self._started = True

    def update(self, advance: int = 1, **fields: Any) -> None:
        """Advance by ``advance`` steps and show ``fields`` as ``key=value``."""
        self.start()
        self.completed += int(advance)
        info = " ".join(f"{k}={v}" for k, v in fields.items())
        if fields:
            self._progress.update(self._task, advance=advance, info=info)
        else:
            self._progress.update(self._task, advance=advance)

    def set_description(self, description: str) -> None:
        """Change the description."""
        self._progress.update(self._task, description=description)

    def close(self) -> None:
        """Stop showing the bar (``__exit__`` does this)."""
        if self._started:
            self._progress.stop()
            self._started = False


def track[T](
    iterable: Iterable[T], total: int | None = None, description: str = "", show: bool = True
) -> Iterator[T]:
    """Iterate with a :class:`ProgressBar`.

    Parameters
    ----------
    iterable : iterable
    total : int, optional
        Its length, where ``len`` does not give it.
    description : str
    show : bool

    Yields
    ------
    The items of ``iterable``.

    Examples
    --------
    >>> from pymc_ext.blocks.progress import track
    >>> sum(track(range(4), description="adding", show=False))
    6
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with ProgressBar(total, description, show) as bar:
        for item in iterable:
            yield item
            bar.update()
