"""fit_many at scale: issue #16's 1000-dataset targets, against default pm.sample on each dataset.

For each problem (``eight_schools``: the non-centred eight schools model;
``negbin``: the negative-binomial regression, 3 parameters, 30 observations;
both built by ``benchmarks/amortized.py``'s ``make_problem``, with its settings):

1. train an ``Amortizer`` (``--simulations``, 20 000; 200 epochs, batch 256,
   one torch thread, as ``benchmarks/amortized.py``) and time it;
2. simulate ``--datasets`` (1000) datasets from the prior predictive (seeded)
   and run ``amortizer.fit_many(datasets, random_seed=...)``: its wall time,
   the route table (which path each dataset took, and why), the share that
   needed MCMC;
3. on a random ``--check`` (50) of them (seeded), build the model for that
   dataset the way a user would (the same model function, new data) and run
   default ``pm.sample(chains=4, draws=1000, cores=1)`` (PyMC 6 picks nutpie
   when it is installed), timing each call in this process, compile included.
   Errors of fit_many's posterior against NUTS: the largest over the scalar
   parameters of ``|mean - mean_nuts| / sd_nuts`` and ``|sd / sd_nuts - 1|``.
   NUTS's own Monte Carlo error is measured the same way, between two NUTS
   seeds, on the first ``--nuts-repeats`` (5) checked datasets;
4. the time ratio: fit_many's total (with and without training) over
   ``datasets x median pm.sample seconds`` (the issue's target: at most 1/20).

Writes ``benchmarks/results/fit_many_scale<tag>.md`` and ``.json``.

Usage::

    python benchmarks/fit_many_scale.py                                   # the issue's sizes
    python benchmarks/fit_many_scale.py --datasets 40 --check 4 --simulations 2000 --tag smoke

Uses one core (torch threads 1, cores=1). Timings are comparable only within
one run on one machine; the report gives the load average (the machine may be
shared).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pymc as pm  # noqa: E402
import torch  # noqa: E402

import pymc_ext  # noqa: E402
from benchmarks.amortized import (  # noqa: E402
    errors_against,
    held_out_datasets,
    load_average,
    make_problem,
    set_dataset,
)
from benchmarks.common import RESULTS_DIR, fmt, machine_info, md_row, write_json  # noqa: E402
from pymc_ext.amortized import Amortizer  # noqa: E402
from pymc_ext.blocks.progress import ProgressBar  # noqa: E402

PROBLEMS = ("eight_schools", "negbin")
TOLERANCE = 0.1  # the target: within 0.1 sd of NUTS
TABLE_COLUMNS = ("route", "reason", "pareto_k", "acceptance", "rhat", "ess", "divergences",
                 "seconds", "error")


# -- helpers ----------------------------------------------------------------------------------
def scalar_draws(posterior: Any, names: list[str]) -> dict[str, np.ndarray]:
    """Every scalar of the variables ``names``: ``"theta_trans[3]" -> draws`` (chains pooled)."""
    out = {}
    for name in names:
        values = np.asarray(posterior[name].values)
        flat = values.reshape(values.shape[0] * values.shape[1], -1)
        for j in range(flat.shape[1]):
            out[f"{name}[{j}]" if flat.shape[1] > 1 else name] = flat[:, j]
    return out


def default_pm_sample(name: str, data: dict[str, np.ndarray], seed: int) -> tuple[Any, float]:
    """Default ``pm.sample`` on a model built for ``data`` as a user would; and its seconds."""
    model = set_dataset(name, make_problem(name)[0], data)  # the model function, new data
    with model, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        idata = pm.sample(draws=1000, chains=4, cores=1, random_seed=seed, progressbar=False)
        seconds = time.perf_counter() - t0
    return idata, seconds


def nuts_health(idata: Any) -> dict[str, Any]:
    """The reference run's own check: divergences, largest R-hat, smallest bulk ESS, sampler."""
    import arviz as az

    posterior = idata["posterior"].to_dataset()
    stats = idata["sample_stats"]
    div = int(stats["diverging"].values.sum()) if "diverging" in stats.data_vars else 0
    return {
        "sampler": str(posterior.attrs.get("inference_library", "?")),
        "divergences": div,
        "rhat": float(az.rhat(posterior).to_array().max()),
        "ess_bulk": float(az.ess(posterior, method="bulk").to_array().min()),
    }


def reason_counts(reasons: list[str]) -> dict[str, int]:
    """Why datasets left the PSIS route: each clause of the table's reason, numbers dropped."""
    import re

    counts: dict[str, int] = {}
    for reason in reasons:
        for clause in reason.split("; "):
            key = re.sub(r"-?\d+(\.\d+)?|nan|inf", "#", clause).strip()
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def quantiles(values: list[float]) -> dict[str, float]:
    v = np.asarray([x for x in values if np.isfinite(x)], float)
    if not v.size:
        return {"n": 0}
    return {"n": int(v.size), "median": float(np.median(v)), "p90": float(np.quantile(v, 0.9)),
            "max": float(v.max()), "over_tolerance": int((v > TOLERANCE).sum())}


# -- the steps --------------------------------------------------------------------------------
def train(name: str, args: argparse.Namespace) -> tuple[Amortizer, dict[str, Any]]:
    """Step 1: the amortizer, with ``benchmarks/amortized.py``'s settings."""
    model, kwargs = make_problem(name)
    summary = kwargs.pop("summary", "auto")
    amortizer = Amortizer(model, summary=summary, **kwargs)
    t0 = time.perf_counter()
    amortizer.fit(num_simulations=args.simulations, epochs=args.epochs,
                  batch_size=args.batch_size, random_seed=args.seed,
                  progressbar=args.progress, max_seconds=args.max_seconds)
    h = amortizer.history
    info = {"num_simulations": args.simulations, "seconds": time.perf_counter() - t0,
            "simulation_seconds": h["simulation_seconds"],
            "training_seconds": h["training_seconds"], "epochs_run": h["epochs_run"],
            "best_epoch": h["best_epoch"], "summary_net": amortizer.summary_kind,
            "dim": amortizer.dim}
    print(f"[{name}] trained: {info}", flush=True)
    return amortizer, info


def run_fit_many(
    name: str, amortizer: Amortizer, datasets: list[dict], args: argparse.Namespace
) -> tuple[Any, dict[str, Any]]:
    """Step 2: fit_many on every dataset; wall time, routes, warnings, the table."""
    logging.getLogger("pymc").setLevel(logging.WARNING)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        out = amortizer.fit_many(datasets, random_seed=args.seed + 4, progressbar=args.progress)
        seconds = time.perf_counter() - t0
    table = out.table
    by_route = table.groupby("route")["seconds"].agg(["count", "sum", "median"])
    info = {
        "num_datasets": len(datasets),
        "seconds": seconds,
        "seconds_per_dataset": seconds / max(len(datasets), 1),
        "route_counts": out.route_counts(),
        "share_mcmc": out.share_mcmc,
        "mcmc_reasons": reason_counts(table.loc[table["route"] != "psis", "reason"].tolist()),
        "route_seconds": {str(r): {"count": int(row["count"]), "sum": float(row["sum"]),
                                   "median": float(row["median"])}
                          for r, row in by_route.iterrows()},
        "warnings": sorted({f"{w.category.__name__}: {w.message}" for w in caught}),
        "table": [{c: (str(v) if c in ("route", "reason", "error") else float(v))
                   for c, v in row.items() if c in TABLE_COLUMNS}
                  for row in table.to_dict("records")],
    }
    print(f"[{name}] fit_many: {len(datasets)} datasets in {seconds:.1f} s, routes "
          f"{info['route_counts']}, share MCMC {out.share_mcmc:.3f}", flush=True)
    return out, info


def check_against_nuts(
    name: str, out: Any, datasets: list[dict], free: list[str], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Step 3: default pm.sample on a random ``args.check`` datasets; fit_many's errors."""
    rng = np.random.default_rng(args.seed + 5)
    chosen = sorted(rng.choice(len(datasets), size=min(args.check, len(datasets)),
                               replace=False).tolist())
    rows = []
    with ProgressBar(len(chosen), f"[{name}] default pm.sample on the checked datasets",
                     show=args.progress) as bar:
        for j, i in enumerate(chosen):
            ref, seconds = default_pm_sample(name, datasets[i], seed=args.seed + 100 + i)
            ref_s = scalar_draws(ref.posterior, free)
            row: dict[str, Any] = {"dataset": int(i), "pm_sample_seconds": seconds,
                                   "route": str(out.table["route"].iloc[i]),
                                   "pareto_k": float(out.table["pareto_k"].iloc[i]),
                                   "fit_many_ess": float(out.table["ess"].iloc[i]),
                                   "nuts": nuts_health(ref)}
            post = out.posteriors[i]
            if post is None:
                row["fit_many"] = {"mean_error": float("nan"), "sd_error": float("nan")}
            else:
                row["fit_many"] = errors_against(ref_s, scalar_draws(post.posterior, free))
            row["error"] = max(row["fit_many"].values())
            if j < args.nuts_repeats:  # NUTS's own Monte Carlo error, by a second seed
                again, _ = default_pm_sample(name, datasets[i], seed=args.seed + 10_000 + i)
                row["nuts_vs_nuts"] = errors_against(ref_s, scalar_draws(again.posterior, free))
            rows.append(row)
            bar.update(err=f"{row['error']:.3f}")
            print(f"[{name}] check {i}: {row}", flush=True)
    return rows


def summarize(res: dict[str, Any], n: int) -> dict[str, Any]:
    """Step 4: error distribution and time ratios."""
    rows = res["checked"]
    times = [r["pm_sample_seconds"] for r in rows]
    median_s = float(np.median(times)) if times else float("nan")
    per_dataset_nuts = n * median_s
    fm, tr = res["fit_many"]["seconds"], res["train"]["seconds"]
    nvn = [max(r["nuts_vs_nuts"].values()) for r in rows if "nuts_vs_nuts" in r]
    by_route: dict[str, list[float]] = {}
    for r in rows:
        by_route.setdefault(r["route"], []).append(r["error"])
    return {
        "pm_sample_median_seconds": median_s,
        "pm_sample_seconds_range": [float(min(times)), float(max(times))] if times else [],
        "pm_sample_all_datasets_seconds": per_dataset_nuts,
        "ratio_excluding_training": fm / per_dataset_nuts,
        "ratio_including_training": (fm + tr) / per_dataset_nuts,
        "target_ratio": 1 / 20,
        "error": quantiles([r["error"] for r in rows]),
        "mean_error": quantiles([r["fit_many"]["mean_error"] for r in rows]),
        "sd_error": quantiles([r["fit_many"]["sd_error"] for r in rows]),
        "error_by_route": {k: quantiles(v) for k, v in by_route.items()},
        "nuts_vs_nuts": quantiles(nvn),
        "nuts_divergent_datasets": [r["dataset"] for r in rows if r["nuts"]["divergences"]],
        "nuts_sampler": sorted({r["nuts"]["sampler"] for r in rows}),
    }


def bench_problem(name: str, args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {"problem": name, "load_average_start": load_average()}
    amortizer, res["train"] = train(name, args)
    datasets = held_out_datasets(name, amortizer, args.datasets, seed=args.seed + 3)
    out, res["fit_many"] = run_fit_many(name, amortizer, datasets, args)
    free = [rv.name for rv in amortizer.target.model.free_RVs]
    res["checked"] = check_against_nuts(name, out, datasets, free, args)
    res["summary"] = summarize(res, len(datasets))
    res["load_average_end"] = load_average()
    print(f"[{name}] summary: {res['summary']}", flush=True)
    return res


# -- report -----------------------------------------------------------------------------------
def _q(q: dict[str, Any]) -> str:
    if not q.get("n"):
        return "–"
    return (f"{fmt(q['median'], 3)} / {fmt(q['p90'], 3)} / {fmt(q['max'], 3)} "
            f"({q['over_tolerance']} of {q['n']} > {TOLERANCE})")


def report_lines(results: dict[str, Any]) -> list[str]:
    lines = [
        "# fit_many at scale (issue #16's targets)", "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']}; torch threads {results['torch_threads']}, "
        f"pm.sample cores=1. Whole run: {fmt(results.get('total_seconds'), 0)} s.", "",
        "Targets: every final posterior within 0.1 sd of NUTS (checked on a random subset); "
        "fit_many's total time at most 1/20 of default `pm.sample` on every dataset. "
        "`pm.sample` time for all datasets = datasets x the median of the checked calls "
        "(each timed in this process, compile included).", "",
        "## Summary", "",
        md_row(["problem", "sims", "train s", "datasets", "fit_many s", "ms / dataset",
                "share MCMC", "pm.sample median s (min–max)", "ratio excl. training",
                "ratio incl. training", "target", "load"]),
        md_row(["---"] * 12),
    ]
    for r in results["problems"].values():
        s, f, t = r["summary"], r["fit_many"], r["train"]
        lo_hi = s["pm_sample_seconds_range"]
        lines.append(md_row([
            r["problem"], fmt(t["num_simulations"]), fmt(t["seconds"], 0),
            fmt(f["num_datasets"]), fmt(f["seconds"], 1), fmt(1e3 * f["seconds_per_dataset"], 0),
            fmt(f["share_mcmc"], 3),
            f"{fmt(s['pm_sample_median_seconds'], 2)} ({fmt(lo_hi[0], 2)}–{fmt(lo_hi[1], 2)})"
            if lo_hi else "–",
            fmt(s["ratio_excluding_training"], 4), fmt(s["ratio_including_training"], 4),
            "0.05", f"{fmt(r['load_average_start'], 1)} / {fmt(r['load_average_end'], 1)}",
        ]))
    lines += ["", "## Routes", "",
              md_row(["problem", "route", "datasets", "share", "seconds (sum)", "median s"]),
              md_row(["---"] * 6)]
    for r in results["problems"].values():
        n = r["fit_many"]["num_datasets"]
        for route, rs in r["fit_many"]["route_seconds"].items():
            lines.append(md_row([r["problem"], f"`{route}`", fmt(rs["count"]),
                                 fmt(rs["count"] / n, 3), fmt(rs["sum"], 1),
                                 fmt(rs["median"], 3)]))
    lines += ["", "## Errors against NUTS", "",
              "Per checked dataset: the largest over the scalar parameters (free variables) of "
              "|mean - mean_nuts| / sd_nuts and of |sd / sd_nuts - 1|; the error is the larger "
              "of the two. Cells: median / 90% / max (how many above 0.1). `NUTS vs NUTS` is "
              "the same error between two NUTS seeds on the first checked datasets: the "
              "Monte Carlo error floor of the check itself.", "",
              md_row(["problem", "error", "mean error", "sd error", "NUTS vs NUTS",
                      "NUTS sampler", "NUTS runs with divergences"]),
              md_row(["---"] * 7)]
    for r in results["problems"].values():
        s = r["summary"]
        lines.append(md_row([r["problem"], _q(s["error"]), _q(s["mean_error"]),
                             _q(s["sd_error"]), _q(s["nuts_vs_nuts"]),
                             ", ".join(s["nuts_sampler"]),
                             str(s["nuts_divergent_datasets"] or "none")]))
    lines += ["", "By route:", "", md_row(["problem", "route", "error"]), md_row(["---"] * 3)]
    for r in results["problems"].values():
        for route, q in r["summary"]["error_by_route"].items():
            lines.append(md_row([r["problem"], f"`{route}`", _q(q)]))
    return lines + detail_lines(results)


def detail_lines(results: dict[str, Any]) -> list[str]:
    """The report's tail: why datasets needed MCMC, every checked dataset, fit_many's warnings."""
    lines = ["", "Why datasets needed MCMC (clauses of the table's `reason`; one dataset can "
              "have several):", "", md_row(["problem", "reason", "datasets"]),
              md_row(["---"] * 3)]
    for r in results["problems"].values():
        for reason, count in r["fit_many"]["mcmc_reasons"].items():
            lines.append(md_row([r["problem"], f"`{reason}`", fmt(count)]))
    lines += ["", "Checked datasets (fit_many ESS: the importance ESS on the `psis` route, the "
              "smallest bulk ESS on `mh` and `nuts`):", "",
              md_row(["problem", "dataset", "route", "Pareto k", "fit_many ESS", "mean error",
                      "sd error", "NUTS vs NUTS", "pm.sample s", "NUTS divergences"]),
              md_row(["---"] * 10)]
    for r in results["problems"].values():
        for c in r["checked"]:
            nvn = c.get("nuts_vs_nuts")
            lines.append(md_row([
                r["problem"], str(c["dataset"]), f"`{c['route']}`", fmt(c["pareto_k"]),
                fmt(c["fit_many_ess"], 0), fmt(c["fit_many"]["mean_error"], 3),
                fmt(c["fit_many"]["sd_error"], 3),
                f"{fmt(nvn['mean_error'], 3)} / {fmt(nvn['sd_error'], 3)}" if nvn else "–",
                fmt(c["pm_sample_seconds"], 2), str(c["nuts"]["divergences"])]))
    for r in results["problems"].values():
        for w in r["fit_many"]["warnings"]:
            lines += ["", f"{r['problem']}: fit_many warned: {w}"]
    return lines


def write_report(results: dict[str, Any], tag: str) -> Path:
    write_json(results, RESULTS_DIR / f"fit_many_scale{tag}.json")
    md = RESULTS_DIR / f"fit_many_scale{tag}.md"
    md.write_text("\n".join(report_lines(results)) + "\n")
    return md


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problems", default=",".join(PROBLEMS), help=f"comma-separated: {PROBLEMS}")
    p.add_argument("--datasets", type=int, default=1000, help="prior-predictive datasets")
    p.add_argument("--check", type=int, default=50, help="datasets checked against NUTS")
    p.add_argument("--nuts-repeats", type=int, default=5,
                   help="checked datasets given a second NUTS seed (NUTS's own error)")
    p.add_argument("--simulations", type=int, default=20_000, help="training simulations")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-seconds", type=float, default=None, help="training time budget")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tag", default="")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    unknown = set(args.problems.split(",")) - set(PROBLEMS)
    if unknown:
        p.error(f"unknown problems {sorted(unknown)}; choose from {PROBLEMS}")
    if args.datasets < 1 or args.check < 1 or args.check > args.datasets:
        p.error("need 1 <= --check <= --datasets")
    if args.tag and not args.tag.startswith("_"):
        args.tag = "_" + args.tag
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    results: dict[str, Any] = {
        "command": "python benchmarks/fit_many_scale.py " + " ".join(argv or sys.argv[1:]),
        "machine": f"{machine_info()}, torch {torch.__version__}, pymc {pm.__version__}, "
        f"pymc_ext {pymc_ext.__version__}",
        "torch_threads": torch.get_num_threads(),
        "settings": vars(args),
        "problems": {},
    }
    t0 = time.perf_counter()
    for name in args.problems.split(","):
        results["problems"][name] = bench_problem(name, args)
        results["total_seconds"] = time.perf_counter() - t0
        md = write_report(results, args.tag)
    print(md.read_text())


if __name__ == "__main__":
    main()
