"""Benchmark: the warm start against nutpie (default and ``low_rank``) on every PyMC posterior.

For every reference posterior with a PyMC version (all 31 of
``../shared/reference``), four samplers, each timed in a **fresh process** with
**warm compile caches** (an untimed tiny run of the same sampler in an earlier
process fills PyTensor's C and numba caches):

- ``nutpie``: ``pm.sample()`` as a user gets it (nutpie, diagonal adaptation);
- ``nutpie-lowrank``: ``pm.sample(nuts_sampler_kwargs={"adaptation": "low_rank"})``;
- ``warm``: ``pymc_ext.sample(warmstart="pathfinder")`` with its defaults
  (PyMC's NUTS, ``metric="auto"``);
- ``warm-nutpie``: ``pymc_ext.sample(warmstart="pathfinder", nuts_sampler="nutpie")``.

Each run: 4 chains one after the other (``cores=1``), 1000 draws, warmup kept.
The cost to reach ESS_bulk >= 400 for every posterior scalar with R-hat <=
1.01 (shortest prefix of the draws, checked every 25) is measured as in
``benchmarks/warmstart.py``: gradient evaluations (Pathfinder + warmup + draws
to the target) and wall time to the target (the whole call, compiles and
Pathfinder included, with the sampling time scaled to the draws needed).
Errors are of the full run against the reference draws.

Usage::

    python benchmarks/pymc_corpus.py                         # all 31, four samplers
    python benchmarks/pymc_corpus.py --models kidiq,arK --samplers nutpie,warm

Writes ``benchmarks/results/pymc_corpus.md`` and ``.json`` (``--tag`` suffixes
them) after every posterior, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS_DIR, fmt, machine_info, md_row, write_json  # noqa: E402

SAMPLERS = ["nutpie", "nutpie-lowrank", "warm", "warm-nutpie"]
OURS = ("warm", "warm-nutpie")
SEED = 20261204


def _subprocess(args: list[str], timeout: float) -> dict[str, Any]:
    """Run this script in a fresh interpreter; its last stdout line is JSON."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        return {"error": " / ".join(tail)[-300:] or f"exit {out.returncode}"}
    return json.loads(lines[-1])


def _one(kind: str, name: str, warm_only: bool) -> dict[str, Any]:
    """In the child: warm the caches, or time one run."""
    import warnings

    from benchmarks.warmstart import _run_sampler_warmup, bench_sampler

    warnings.simplefilter("ignore")
    if warm_only:
        _run_sampler_warmup(kind, name)
        return {"warmed": True}
    t0 = time.perf_counter()
    res = bench_sampler(kind, name, SEED, 1000, 4, warm_cache=False)
    res["process_wall"] = time.perf_counter() - t0
    return {k: v for k, v in res.items() if not isinstance(v, np.ndarray)}


def _ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
    if not a or not b or "error" in a or "error" in b:
        return None
    return a[key] / b[key] if b[key] else None


def write_report(results: dict[str, Any], tag: str) -> Path:
    """The markdown table and a summary of the ratios (medians, worst)."""
    suffix = f"_{tag}" if tag else ""
    write_json(results, RESULTS_DIR / f"pymc_corpus{suffix}.json")
    lines = [
        "# Warm start against nutpie on every PyMC posterior",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']}. 4 chains one after the other (cores=1), 1000 draws, "
        f"seed {SEED}; each run in a fresh process after an untimed run of the same sampler "
        "filled the compile caches. Target: ESS_bulk >= 400 for every posterior scalar and "
        "R-hat <= 1.01. grads = gradient evaluations to the target (Pathfinder, warmup and "
        "draws to the target); wall = seconds of the whole call to the target (compiles and "
        "Pathfinder included). Ratios of ours against `pm.sample()` (nutpie's default) and "
        "nutpie `low_rank`. Errors: max over scalars of |mean - ref| / ref_sd and "
        "|sd / ref_sd - 1| of our run.",
        "",
        *[f"Note: {note}" for note in results.get("notes", [])],
        *([""] if results.get("notes") else []),
    ]
    header = [
        "posterior",
        "sampler",
        "grads",
        "vs nutpie",
        "vs low_rank",
        "wall (s)",
        "wall vs pm.sample()",
        "wall vs low_rank",
        "metric",
        "mean err",
        "sd err",
    ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    summary: dict[str, dict[str, list[float]]] = {}
    for name, rows in results["models"].items():
        nut, lr = rows.get("nutpie", {}), rows.get("nutpie-lowrank", {})
        for kind, r in rows.items():
            if "error" in r:
                lines.append(md_row([name, kind, "error: " + r["error"][:120]] + [""] * 8))
                continue
            cells = {
                "g_nut": _ratio(r, nut, "total_grad_evals_to_target"),
                "g_lr": _ratio(r, lr, "total_grad_evals_to_target"),
                "w_nut": _ratio(r, nut, "wall_time_to_target"),
                "w_lr": _ratio(r, lr, "wall_time_to_target"),
            }
            if kind in OURS:
                for key, v in cells.items():
                    if v is not None:
                        summary.setdefault(kind, {}).setdefault(key, []).append(v)
            lines.append(
                md_row(
                    [
                        name,
                        kind,
                        fmt(r["total_grad_evals_to_target"])
                        + ("" if r["reached"] else " (not reached)"),
                        fmt(cells["g_nut"]),
                        fmt(cells["g_lr"]),
                        fmt(r["wall_time_to_target"], 1),
                        fmt(cells["w_nut"]),
                        fmt(cells["w_lr"]),
                        str(r.get("warmstart_metric") or "–")
                        + (", fallback" if r.get("warmstart_fallback") else ""),
                        fmt(r["max_mean_error"], 3),
                        fmt(r["max_sd_error"], 3),
                    ]
                )
            )
    if summary:
        lines += [
            "",
            "## Summary over the posteriors",
            "",
            "| sampler | ratio | n | median | worst | above 1.0 |",
            "|---|---|---|---|---|---|",
        ]
        labels = {
            "g_nut": "grads vs pm.sample()",
            "g_lr": "grads vs low_rank",
            "w_nut": "wall vs pm.sample()",
            "w_lr": "wall vs low_rank",
        }
        for kind, by in summary.items():
            for key, label in labels.items():
                v = np.asarray(by.get(key, []))
                if v.size:
                    lines.append(
                        md_row(
                            [
                                kind,
                                label,
                                str(v.size),
                                fmt(float(np.median(v))),
                                fmt(float(v.max())),
                                str(int((v > 1.0).sum())),
                            ]
                        )
                    )
    lines += ["", "## One row per posterior", "", *compact_lines(results)]
    path = RESULTS_DIR / f"pymc_corpus{suffix}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def compact_lines(results: dict[str, Any]) -> list[str]:
    """Ours against nutpie, one row per posterior (the docs' table)."""
    head = [
        "posterior",
        "warm: grads vs pm.sample()",
        "vs low_rank",
        "wall vs pm.sample()",
        "warm-nutpie: grads vs pm.sample()",
        "vs low_rank",
        "wall vs pm.sample()",
        "max err (warm)",
    ]
    lines = [md_row(head), md_row(["---"] * len(head))]
    for name, rows in results["models"].items():
        nut, lr = rows.get("nutpie", {}), rows.get("nutpie-lowrank", {})
        cells = [name]
        for kind in OURS:
            r = rows.get(kind, {})
            if not r or "error" in r:
                cells += ["–", "–", "–"]
                continue
            cells += [
                fmt(_ratio(r, nut, "total_grad_evals_to_target")),
                fmt(_ratio(r, lr, "total_grad_evals_to_target")),
                fmt(_ratio(r, nut, "wall_time_to_target")),
            ]
        w = rows.get("warm", {})
        cells.append(
            fmt(max(w["max_mean_error"], w["max_sd_error"]), 3) if w and "error" not in w else "–"
        )
        lines.append(md_row(cells))
    return lines


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--render":
        suffix = f"_{argv[1]}" if len(argv) > 1 else ""
        results = json.loads((RESULTS_DIR / f"pymc_corpus{suffix}.json").read_text())
        print(write_report(results, argv[1] if len(argv) > 1 else "").read_text())
        return
    if argv and argv[0] in ("--one", "--warm"):
        print(json.dumps(_one(argv[1], argv[2], argv[0] == "--warm"), default=float))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="all", help="comma-separated reference names or 'all'")
    p.add_argument("--samplers", default=",".join(SAMPLERS))
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    p.add_argument("--tag", default="")
    opts = p.parse_args(argv)
    from benchmarks.warmstart import _model_name
    from pymc_ext.references.models import PYMC_REFERENCE_NAMES

    names = (
        list(PYMC_REFERENCE_NAMES)
        if opts.models == "all"
        else [_model_name(m) for m in opts.models.split(",")]
    )
    results: dict[str, Any] = {
        "command": "python benchmarks/pymc_corpus.py " + " ".join(argv),
        "machine": machine_info(),
        "models": {},
    }
    for name in names:
        rows = results["models"].setdefault(name, {})
        for kind in opts.samplers.split(","):
            warmed = _subprocess(["--warm", kind, name], opts.timeout)
            rows[kind] = (
                warmed if "error" in warmed else _subprocess(["--one", kind, name], opts.timeout)
            )
            r = rows[kind]
            print(
                f"{name} {kind}: "
                + (
                    r["error"]
                    if "error" in r
                    else f"grads {r['total_grad_evals_to_target']:.0f}, "
                    f"wall {r['wall_time_to_target']:.1f} s"
                ),
                flush=True,
            )
        write_report(results, opts.tag)
    print(write_report(results, opts.tag).read_text())


if __name__ == "__main__":
    main()
