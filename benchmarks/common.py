"""Helpers shared by the benchmark scripts: the machine line, reference names, table cells.

The scripts run as ``python benchmarks/<name>.py``; each puts the repository
root on ``sys.path`` and then imports this module as ``benchmarks.common``.

Examples
--------
>>> from benchmarks.common import fmt, full_reference_name
>>> fmt(1234.5), fmt(0.123456, 3), fmt(None)
('1,234', '0.123', '–')
>>> full_reference_name("kidiq")
'kidiq-kidscore_momiq'
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pymc_ext.reference import REFERENCE_NAMES

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"

__all__ = [
    "REFERENCE_NAMES",
    "RESULTS_DIR",
    "ROOT",
    "fmt",
    "full_reference_name",
    "machine_info",
    "md_row",
    "write_json",
]


def machine_info() -> str:
    """One line naming the machine: processor, CPU count (shared) and Python version.

    Examples
    --------
    >>> from benchmarks.common import machine_info
    >>> "Python" in machine_info()
    True
    """
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared), "
        f"Python {platform.python_version()}"
    )


def full_reference_name(short: str) -> str:
    """A reference posterior's full name from a short one (``"arK"`` -> ``"arK-arK"``).

    Raises ``SystemExit`` naming the choices for an unknown name.

    Examples
    --------
    >>> from benchmarks.common import full_reference_name
    >>> full_reference_name("eight_schools")
    'eight_schools-eight_schools_noncentered'
    """
    for name in REFERENCE_NAMES:
        if name == short or name.startswith(short + "-") or name.split("-")[0] == short:
            return name
    raise SystemExit(f"Unknown reference posterior {short!r}; choose from {list(REFERENCE_NAMES)}")


def short_label(name: str) -> str:
    """A reference posterior's short name where it names this posterior, else the full name.

    Examples
    --------
    >>> from benchmarks.common import short_label
    >>> short_label("kidiq-kidscore_momiq"), short_label("kidiq-kidscore_interaction")
    ('kidiq', 'kidiq-kidscore_interaction')
    >>> short_label("nes1972-nes")
    'nes1972-nes'
    """
    short = name.split("-")[0]
    try:
        return short if full_reference_name(short) == name else name
    except SystemExit:  # not one of the eight with a short name
        return name


def fmt(x: Any, nd: int = 2) -> str:
    """A table cell: ``–`` for missing/non-finite, thousands separators from 1000 up.

    Examples
    --------
    >>> from benchmarks.common import fmt
    >>> fmt(3), fmt(float("nan")), fmt(2.5, 1)
    ('3', '–', '2.5')
    """
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    if isinstance(x, (int, np.integer)) or (isinstance(x, float) and abs(x) >= 1000):
        return f"{x:,.0f}"
    return f"{x:.{nd}f}"


def md_row(cells: Sequence[str]) -> str:
    """One markdown table row from its cells.

    Examples
    --------
    >>> from benchmarks.common import md_row
    >>> md_row(["a", "1.00"])
    '| a | 1.00 |'
    """
    return "| " + " | ".join(cells) + " |"


def write_json(results: dict[str, Any], path: Path) -> Path:
    """Write ``results`` as indented JSON (numpy scalars as floats), creating the folder.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from benchmarks.common import write_json
    >>> p = write_json({"a": 1}, pathlib.Path(tempfile.mkdtemp()) / "r.json")
    >>> p.read_text().startswith("{")
    True
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=float))
    return path


def write_results(results: dict[str, Any], stem: str, lines: Sequence[str],
                  out_dir: Path = RESULTS_DIR) -> Path:
    r"""Write ``<stem>.json`` (the results) and ``<stem>.md`` (``lines``); return the markdown path.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from benchmarks.common import write_results
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> md = write_results({"a": 1}, "bench_x", ["# x", "", "done"], out)
    >>> md.name, md.read_text(), (out / "bench_x.json").exists()
    ('bench_x.md', '# x\n\ndone\n', True)
    """
    write_json(results, Path(out_dir) / f"{stem}.json")
    md = Path(out_dir) / f"{stem}.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def run_problems(results: dict[str, Any], names: Sequence[str],
                 bench: Callable[[str], dict[str, Any]],
                 report: Callable[[dict[str, Any]], Path]) -> Path | None:
    """``bench(name)`` for each problem into ``results["problems"]``, the report rewritten after
    each (an interrupted run keeps what it measured); the report's path.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from benchmarks.common import run_problems, write_results
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> res = {"problems": {}}
    >>> md = run_problems(res, ["a", "b"], lambda n: {"x": len(n)},
    ...                   lambda r: write_results(r, "demo", [str(sorted(r["problems"]))], out))
    >>> md.read_text().strip(), "total_seconds" in res
    ("['a', 'b']", True)
    """
    t0 = time.perf_counter()
    md = None
    for name in names:
        results["problems"][name] = bench(name)
        results["total_seconds"] = time.perf_counter() - t0
        md = report(results)
    return md
