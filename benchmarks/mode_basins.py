"""Benchmark: which mode does a climb from an overdispersed start reach?

flow_mcmc finds modes by climbing the log density from overdispersed starts
(Pathfinder's L-BFGS paths, and L-BFGS climbs from walkers far from every
known mode). A mode whose basin of attraction no start reaches is never
found, by this sampler or by any other that starts from such points. This
script measures, for the mixture targets of ``benchmarks/flows.py``, where
an L-BFGS climb (``pymc_ext.blocks.lbfgs.lbfgs_maximize``, the climb the sampler
itself uses) ends from many starts of each kind:

- ``U(+-w)``: the sampler's own starts, uniform of half-width w = 2, 4, 8
  around the model's initial point (``init_scale`` 2 and the paths' 2x and
  4x; ``pymc_ext.flows.seeding.overdispersed_inits``);
- ``N(0, 3^2 I)``: the broad start of the issue's flowMC anchor;
- ``N(0, 10^2 I)``: a much broader one.

Each climb is labelled with the nearest mode centre. Writes
``benchmarks/results/mode_basins.md`` and ``.json``.

``--grid`` also climbs on variants of the three-mode mixture (centre
distance 3 or 4, and the scales of its three modes; names as in
``benchmarks.flows.mixture_spec``), from the sampler's own uniform starts
and from the issue's N(0, 3^2 I), to show how the basin of a narrower mode
shrinks with the ratio of the scales in 10 dimensions.

Usage::

    python benchmarks/mode_basins.py                    # mixture2_d10, mixture3_d10; 3000 starts
    python benchmarks/mode_basins.py --targets mixture3_d10 --starts 500
    python benchmarks/mode_basins.py --quick            # 300 starts of each kind
    python benchmarks/mode_basins.py --grid             # and the three-mode variants
    python benchmarks/mode_basins.py --targets mixture3_d10 --starts 30000 --seed 123 \
        --kinds "U(+-4);U(+-8);U(+-12);U(+-16);N(0,5^2 I);N(0,10^2 I)" --tag narrow
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS_DIR, machine_info, write_json  # noqa: E402
from benchmarks.flows import build_target  # noqa: E402

#: three-mode variants for ``--grid``: (centre distance, scales of the -, + and alternating mode)
GRID = [(a, sc) for a in (3, 4) for sc in ("1-1-1", "1-1-1.5", "0.75-1-1.5", "0.5-1-1",
                                          "0.5-1-1.5")]
GRID_KINDS = ["U(+-2)", "U(+-8)", "N(0,3^2 I)"]
KINDS = ["U(+-2)", "U(+-4)", "U(+-8)", "N(0,3^2 I)", "N(0,10^2 I)"]


def start_points(kind: str, n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` starts of one kind (see the module docstring)."""
    if kind.startswith("U"):
        width = float(kind.strip("U(+-)"))
        return rng.uniform(-width, width, size=(n, dim))
    scale = float(kind.split(",")[1].split("^")[0])
    return rng.normal(0.0, scale, size=(n, dim))


def climb_counts(name: str, kinds: list[str], n: int, seed: int) -> list[dict[str, Any]]:
    """For each kind of start: how many of ``n`` climbs end at each mode."""
    from pymc_ext import log_density
    from pymc_ext.blocks.lbfgs import lbfgs_maximize

    model, info = build_target(name)
    density = log_density(model)
    centers = np.asarray(info["centers"])
    rng = np.random.default_rng(seed)
    rows = []
    for kind in kinds:
        t0 = time.perf_counter()
        counts = np.zeros(len(centers) + 1, dtype=int)  # last: the climb failed
        for x0 in start_points(kind, n, density.dim, rng):
            top, _ = lbfgs_maximize(density, x0, maxiter=500)
            if top is None:
                counts[-1] += 1
            else:
                counts[int(np.argmin(((top - centers) ** 2).sum(-1)))] += 1
        rows.append({"target": name, "starts": kind, "n": n, "weights": info["weights"],
                     "scales": info["scales"], "ended_at": counts[:-1].tolist(),
                     "failed": int(counts[-1]), "seconds": time.perf_counter() - t0})
        print(rows[-1], flush=True)
    return rows


def write_report(rows: list[dict[str, Any]], meta: dict[str, Any], command: str,
                 tag: str = "") -> None:
    lines = [
        "# Mode basins: where L-BFGS climbs from overdispersed starts end",
        "",
        f"Command: `{command}`  ",
        f"Machine: {meta['machine']}; started {meta['started']}.",
        "",
        "| target | weights | scales | starts | climbs | ended at each mode | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ended = " / ".join(str(c) for c in r["ended_at"])
        lines.append(f"| {r['target']} | {r['weights']} | {r['scales']} | {r['starts']} | "
                     f"{r['n']} | {ended} | {r['failed']} |")
    stem = "mode_basins" + (f"_{tag}" if tag else "")
    (RESULTS_DIR / f"{stem}.md").write_text("\n".join(lines) + "\n")
    write_json({"meta": meta, "rows": rows}, RESULTS_DIR / f"{stem}.json")


def main(argv: list[str] | None = None) -> None:
    """Run the climbs and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="mixture2_d10,mixture3_d10")
    parser.add_argument("--starts", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="300 starts of each kind")
    parser.add_argument("--kinds", default=";".join(KINDS),
                        help="start kinds separated by ';', e.g. 'U(+-12);N(0,5^2 I)'")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--grid", action="store_true",
                        help="also the three-mode variants (GRID), from GRID_KINDS starts")
    args = parser.parse_args(argv)
    if args.quick:
        args.starts = 300
    kinds = args.kinds.split(";")
    meta = {"machine": machine_info(), "started": time.strftime("%Y-%m-%d %H:%M")}
    rows = []
    for name in args.targets.split(","):
        rows += climb_counts(name, kinds, args.starts, args.seed)
    if args.grid:
        for dist, scales in GRID:
            name = f"mixture3_d10_a{dist}_s{scales}"
            rows += climb_counts(name, GRID_KINDS, args.starts, args.seed)
    command = "python benchmarks/mode_basins.py " + shlex.join(argv or sys.argv[1:])
    write_report(rows, meta, command.strip(), args.tag)


if __name__ == "__main__":
    main()
