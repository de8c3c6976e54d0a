"""Run every benchmark in one go (``make bench``).

Each script writes markdown + JSON to benchmarks/results/.

Usage: ``python benchmarks/run_all.py [--quick] [names ...]`` where names are
among ``warmstart stan_warmstart flows mode_basins amortized`` (all by default).
Timings are only comparable within one run on one machine: the scripts say
which machine, and whether the PyTensor compile cache was warm.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("warmstart", "stan_warmstart", "flows", "mode_basins", "amortized")
#: the runs of a script that make the tables the docs show (default: one run, no arguments)
RUNS: dict[str, list[list[str]]] = {
    "mode_basins": [
        ["--grid"],
        ["--targets", "mixture3_d10", "--starts", "30000", "--seed", "123", "--kinds",
         "U(+-4);U(+-8);U(+-12);U(+-16);N(0,5^2 I);N(0,10^2 I)", "--tag", "narrow"],
    ],
}


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmark scripts one after the other; return the number that failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="the scripts' quick subsets")
    args = parser.parse_args(argv)
    failed = 0
    for name in args.names:
        script = HERE / f"{name}.py"
        if not script.exists():
            print(f"[skip] {script.name} does not exist")
            continue
        runs = [[]] if args.quick else RUNS.get(name, [[]])
        for extra in runs:
            cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else []) + extra
            print(f"\n=== {' '.join(cmd)}", flush=True)
            start = time.perf_counter()
            rc = subprocess.call(cmd, cwd=HERE.parent)
            print(f"=== {name}: exit {rc} after {time.perf_counter() - start:.0f} s", flush=True)
            failed += rc != 0
    return failed


if __name__ == "__main__":
    sys.exit(main())
