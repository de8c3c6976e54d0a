"""Benchmark: where the time of one amortized posterior goes (1000 draws and the Pareto k).

Trains a small amortizer for each problem (the timings do not depend on how
well it is trained: the networks have their default sizes), then times, in
one process and one after the other, for one prior-predictive dataset:

- ``prepare``: the layout check and the summary network (the context);
- ``flow``: :func:`pymc_ext.amortized.sampling.draw`, 1000 draws and their ``log q``;
- ``log density``: the model's joint log density at the 1000 draws (PyTensor);
- ``PSIS``: Pareto-smoothed weights, k and the importance ESS (ArviZ's PSIS);
- ``constrain``: the draws on the model's constrained scale;
- ``.sample`` with NumPy output (``return_inferencedata=False``) without and
  with the Pareto k, and with a DataTree;
- the same ``.sample`` with the amortizer's torch threads at 1 (the default),
  2 and ``None`` (torch's own setting, 2 here);
- ``sample_many`` over ``--num-many`` datasets, 1000 draws each, with k;
- with ``--zuko``, the flow and ``.sample`` again on zuko's own drawing path
  (200 000-row batches: the code before the drawing path of
  :mod:`pymc_ext.flows.conditional`).

Wall and process CPU time, the median of ``--repeats``; on a shared machine
CPU time is the steadier figure (the load average is recorded).

Problems: ``eight_schools`` (10 parameters, 8 observations) and ``negbin``
(the issue's negative-binomial regression: 3 parameters, 30 observations; see
``benchmarks/amortized.py``).

Writes ``benchmarks/results/amortized_latency.md`` and ``.json``.

Usage::

    python benchmarks/amortized_latency.py
    python benchmarks/amortized_latency.py --problems negbin --num-many 1000 --zuko
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from amortized import negbin_model  # noqa: E402

from pymc_ext.amortized import Amortizer  # noqa: E402
from pymc_ext.amortized.sampling import draw, prepare  # noqa: E402
from pymc_ext.blocks.importance import importance_ess, psis_log_weights  # noqa: E402
from pymc_ext.flows.conditional import torch_threads  # noqa: E402
from pymc_ext.models import eight_schools  # noqa: E402
from pymc_ext.pymc_adapter.datatree import to_datatree  # noqa: E402

PROBLEMS = {"eight_schools": eight_schools, "negbin": negbin_model}


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


def with_threads(amortizer: Amortizer, num_threads: int | None, fn):
    def call():
        old = amortizer.num_threads
        amortizer.num_threads = num_threads
        try:
            return fn()
        finally:
            amortizer.num_threads = old

    return call


def measure(amortizer: Amortizer, datasets: list[dict], repeats: int) -> dict[str, Any]:
    d0 = datasets[0]
    checked, ctx = prepare(amortizer, [d0])
    theta, log_q = draw(amortizer, ctx, 1000, 0)
    log_p = amortizer.target.joint_logp_many(theta, checked)

    def psis():
        log_w, _ = psis_log_weights(log_p - log_q)
        return importance_ess(log_w)

    def sample(**kw):
        return lambda: amortizer.sample(d0, 1000, random_seed=0, **kw)

    numpy_k = sample(return_inferencedata=False)
    steps = {
        "prepare (summary network)": lambda: prepare(amortizer, [d0]),
        "flow (1000 draws and log q)": lambda: draw(amortizer, ctx, 1000, 0),
        "log density (PyTensor)": lambda: amortizer.target.joint_logp_many(theta, checked),
        "PSIS, k and ESS": psis,
        "constrain": lambda: amortizer.density.constrain_batch(theta[0]),
        "DataTree (to_datatree)": lambda: to_datatree(
            amortizer.density, theta, sample_stats={"log_q": log_q}, observed_data=d0
        ),
        ".sample NumPy, no k": sample(diagnostics=False, return_inferencedata=False),
        ".sample NumPy, with k": numpy_k,
        ".sample DataTree, with k": sample(),
        ".sample NumPy with k, torch threads 2": with_threads(amortizer, 2, numpy_k),
        ".sample NumPy with k, torch threads None": with_threads(amortizer, None, numpy_k),
    }
    out: dict[str, Any] = {}
    for key, fn in steps.items():
        # the parts under the amortizer's thread count, as .sample runs them
        threads = amortizer.num_threads if "torch threads" not in key else None
        with torch_threads(threads):
            out[key] = timed(fn, repeats)
        print(f"  {key}: wall / CPU ms {out[key][0]:.1f} / {out[key][1]:.1f}", flush=True)
    amortizer.sample_many(datasets[:2], 10, random_seed=0)  # compile the batched density
    t0, c0 = time.perf_counter(), time.process_time()
    amortizer.sample_many(datasets, 1000, random_seed=0, return_inferencedata=False)
    out[f"sample_many, {len(datasets)} datasets, NumPy with k"] = (
        1e3 * (time.perf_counter() - t0), 1e3 * (time.process_time() - c0)
    )
    return out


def zuko_path(amortizer: Amortizer, d0: dict, repeats: int) -> dict[str, Any]:
    """The flow and ``.sample`` on zuko's own drawing path, 200 000-row batches."""
    amortizer.flow._fast_ok = False  # zuko's own rsample_and_log_prob
    try:
        _, ctx = prepare(amortizer, [d0])
        with torch_threads(amortizer.num_threads):
            return {
                "flow (1000 draws and log q)": timed(
                    lambda: draw(amortizer, ctx, 1000, 0, max_rows=200_000), repeats
                ),
            }
    finally:
        amortizer.flow._fast_ok = True


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problems", default="eight_schools,negbin")
    p.add_argument("--num-simulations", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--num-many", type=int, default=200)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--zuko", action="store_true", help="also zuko's own drawing path")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(2 if (os.cpu_count() or 1) >= 2 else 1)  # torch's own default here
    warnings.simplefilter("ignore")
    results: dict[str, Any] = {
        "command": "python benchmarks/amortized_latency.py " + " ".join(argv or sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "problems": {},
    }
    for name in args.problems.split(","):
        model = PROBLEMS[name]()
        amortizer = Amortizer(model).fit(
            args.num_simulations, epochs=args.epochs, random_seed=1, progressbar=False
        )
        rng = np.random.default_rng(3)
        datasets = [
            {k: np.asarray(v[i]) for k, v in data.items()}
            for theta, data in amortizer.target.simulate(args.num_many, rng)
            for i in range(theta.shape[0])
        ]
        print(f"{name}: {amortizer}", flush=True)
        load = os.getloadavg()[0]
        res = {"dim": amortizer.dim, "load_start": load, "steps": measure(
            amortizer, datasets, args.repeats)}
        if args.zuko:
            res["zuko"] = zuko_path(amortizer, datasets[0], args.repeats)
        res["load_end"] = os.getloadavg()[0]
        results["problems"][name] = res
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "amortized_latency.json").write_text(json.dumps(results, indent=2))
    names = list(results["problems"])
    lines = [
        "# Amortized fitting: where the time goes (one dataset, 1000 draws)",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']}; load average (1 min) at start / end: "
        + ", ".join(
            f"{n} {r['load_start']:.1f} / {r['load_end']:.1f}"
            for n, r in results["problems"].items()
        )
        + " (a shared 2-core machine: CPU time is the steadier figure).",
        "",
        "| what | " + " | ".join(f"{n}: wall / CPU ms" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for key in results["problems"][names[0]]["steps"]:
        cells = []
        for n in names:
            w, c = results["problems"][n]["steps"].get(key, (float("nan"),) * 2)
            cells.append(f"{w:.1f} / {c:.1f}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    if args.zuko:
        for key in results["problems"][names[0]]["zuko"]:
            cells = [
                "{:.1f} / {:.1f}".format(*results["problems"][n]["zuko"][key]) for n in names
            ]
            lines.append(f"| zuko's path: {key} | " + " | ".join(cells) + " |")
    (out / "amortized_latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
