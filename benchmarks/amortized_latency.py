"""Benchmark: where the time of an amortized posterior goes (eight schools, 1000 draws).

Trains one eight-schools :class:`pymc_ext.Amortizer` (or loads it with
``--load``), then times, in one process and one after the other:

- the flow alone (``pymc_ext.amortized.sampling.draw``: 1000 draws and their ``log q``);
- the ArviZ conversion alone (``pymc_ext.arviz_io.to_datatree`` of those draws);
- ``.sample`` with NumPy output (``return_inferencedata=False``) and with a
  DataTree, each without and with the true density and Pareto k;
- ``.sample_many`` over ``--num-many`` datasets, 1000 draws each.

Each twice: with zuko's own sampling path and 200 000-row batches (``before``,
the code before the drawing path of :mod:`pymc_ext.conditional_flow`), and
with the current path (``after``). Wall and process CPU time (the median of
``--repeats``); on a shared machine the CPU time is the steadier figure.

Writes ``benchmarks/results/amortized_latency.md`` and ``.json``.

Usage::

    python benchmarks/amortized_latency.py                  # train 5000 sims, 40 epochs
    python benchmarks/amortized_latency.py --num-many 1000
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pymc_ext.amortized import Amortizer  # noqa: E402
from pymc_ext.amortized.sampling import draw  # noqa: E402
from pymc_ext.arviz_io import to_datatree  # noqa: E402
from pymc_ext.models import eight_schools  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds of ``fn()`` (after one warm-up call)."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return 1e3 * float(np.median(wall)), 1e3 * float(np.median(cpu))


def measure(amortizer: Amortizer, datasets: list[dict], repeats: int) -> dict[str, Any]:
    d0 = datasets[0]
    _, ctx = amortizer.prepare([d0])
    theta, log_q = draw(amortizer, ctx, 1000, 0)
    single = {
        "flow only": lambda: draw(amortizer, ctx, 1000, 0),
        "ArviZ conversion only": lambda: to_datatree(
            amortizer.density, theta, sample_stats={"log_q": log_q}, observed_data=d0
        ),
        ".sample NumPy, no k": lambda: amortizer.sample(
            d0, 1000, random_seed=0, diagnostics=False, return_inferencedata=False
        ),
        ".sample NumPy, with k": lambda: amortizer.sample(
            d0, 1000, random_seed=0, return_inferencedata=False
        ),
        ".sample DataTree, no k": lambda: amortizer.sample(
            d0, 1000, random_seed=0, diagnostics=False
        ),
        ".sample DataTree, with k": lambda: amortizer.sample(d0, 1000, random_seed=0),
    }
    out: dict[str, Any] = {k: timed(fn, repeats) for k, fn in single.items()}
    amortizer.sample_many(datasets[:2], 10, random_seed=0)  # compile the batched density
    for label, kw in [
        ("NumPy, no k", {"diagnostics": False, "return_inferencedata": False}),
        ("DataTree, with k", {}),
    ]:
        t0, c0 = time.perf_counter(), time.process_time()
        amortizer.sample_many(datasets, 1000, random_seed=0, **kw)
        out[f"sample_many {label}"] = (
            1e3 * (time.perf_counter() - t0), 1e3 * (time.process_time() - c0)
        )
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-simulations", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--num-many", type=int, default=200)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--load", default=None, help="a saved eight-schools amortizer")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    model = eight_schools()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.load or str(Path(tmp) / "es.pt")
        if args.load is None:
            Amortizer(model).fit(
                args.num_simulations, epochs=args.epochs, random_seed=1, progressbar=False
            ).save(path)
        after = Amortizer.load(path, model)
        before = Amortizer.load(path, model)
    before.flow._fast_ok = False  # zuko's own rsample_and_log_prob
    before._draw = functools.partial(before._draw, max_rows=200_000)
    rng = np.random.default_rng(3)
    datasets = [
        {k: np.asarray(v[i]) for k, v in data.items()}
        for theta, data in after.target.simulate(args.num_many, rng)
        for i in range(theta.shape[0])
    ]
    results: dict[str, Any] = {
        "command": "python benchmarks/amortized_latency.py " + " ".join(argv or sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        "torch threads 1",
        "load_average_start": os.getloadavg()[0],
    }
    for name, amortizer in (("before", before), ("after", after)):
        results[name] = measure(amortizer, datasets, args.repeats)
        print(name, results[name], flush=True)
    results["load_average_end"] = os.getloadavg()[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "amortized_latency.json").write_text(json.dumps(results, indent=2))
    lines = [
        "# Amortized fitting: where the time goes (eight schools, 1000 draws)",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']}; load average {results['load_average_start']:.1f} / "
        f"{results['load_average_end']:.1f} (shared machine: CPU time is the steadier figure). "
        "`before`: zuko's sampling path, 200 000-row batches; `after`: the current drawing "
        f"path. `sample_many`: {len(datasets)} datasets x 1000 draws, one call.",
        "",
        "| what | before: wall / CPU ms | after: wall / CPU ms | CPU speed-up |",
        "|---|---|---|---|",
    ]
    for key in results["after"]:
        (bw, bc), (aw, ac) = results["before"][key], results["after"][key]
        lines.append(f"| {key} | {bw:.1f} / {bc:.1f} | {aw:.1f} / {ac:.1f} | {bc / ac:.1f}x |")
    (out / "amortized_latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
