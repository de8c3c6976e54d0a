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
   The accuracy reference is a longer NUTS run on the same model
   (``--reference-draws``, 4000 per chain, untimed). Errors of fit_many's
   posterior against it: the largest over the scalar parameters of
   ``|mean - mean_ref| / sd_ref`` and ``|sd / sd_ref - 1|``; and the same
   *beyond Monte Carlo error*: each scalar's error less twice the standard
   error of the difference (from both sides' ESS: fit_many's importance ESS
   on the ``psis`` route, the bulk ESS of its chains on ``mh`` and ``nuts``),
   floored at 0. A method that matches has errors beyond Monte Carlo error
   near 0; a bias shows there whatever the draws. The timed default
   ``pm.sample`` run is scored the same way, as the yardstick;
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
    held_out_datasets,
    load_average,
    make_problem,
    set_dataset,
)
from benchmarks.common import (  # noqa: E402
    fmt,
    machine_info,
    md_row,
    run_problems,
    write_results,
)
from pymc_ext.amortized import Amortizer  # noqa: E402
from pymc_ext.blocks.progress import ProgressBar  # noqa: E402

PROBLEMS = ("eight_schools", "negbin")
TOLERANCE = 0.1  # the target: within 0.1 sd of NUTS
MAX_Z = 4.0  # an error this many standard errors out stands out from Monte Carlo noise
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


def reference_pm_sample(name: str, data: dict[str, np.ndarray], seed: int, draws: int) -> Any:
    """The accuracy reference: ``pm.sample`` with ``draws`` per chain on the same model."""
    model = set_dataset(name, make_problem(name)[0], data)
    with model, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pm.sample(draws=draws, chains=4, cores=1, random_seed=seed, progressbar=False)


def scalar_ess(posterior: Any, names: list[str]) -> dict[str, float]:
    """Bulk ESS of every scalar of ``names`` (keys as :func:`scalar_draws`)."""
    from arviz_stats.base import array_stats

    out = {}
    for name in names:
        values = np.asarray(posterior[name].values, float)
        flat = values.reshape(values.shape[0], values.shape[1], -1)
        ess = np.atleast_1d(array_stats.ess(np.moveaxis(flat, -1, 0), method="bulk",
                                            chain_axis=-2, draw_axis=-1))
        for j, e in enumerate(ess):
            out[f"{name}[{j}]" if flat.shape[2] > 1 else name] = float(e)
    return out


def mc_errors(ref: dict[str, np.ndarray], ref_ess: dict[str, float],
              other: dict[str, np.ndarray], other_ess: dict[str, float]) -> dict[str, float]:
    """Errors against the reference, raw and beyond twice their Monte Carlo standard error.

    The standard error of ``mean - mean_ref`` (in reference sds) is
    ``sqrt(1/ess + 1/ess_ref)``; of ``sd / sd_ref - 1`` it is
    ``sqrt((kurtosis - 1) / 4 (1/ess + 1/ess_ref))``."""
    out = {"mean_error": 0.0, "sd_error": 0.0, "mean_excess": 0.0, "sd_excess": 0.0,
           "max_z": 0.0}
    for key, r in ref.items():
        o, sd = other[key], r.std()
        inv = 1.0 / max(other_ess[key], 1.0) + 1.0 / max(ref_ess[key], 1.0)
        kurt = float(np.mean(((r - r.mean()) / sd) ** 4))
        se_mean, se_sd = np.sqrt(inv), np.sqrt(max(kurt - 1.0, 0.5) / 4.0 * inv)
        dm, ds = abs(o.mean() - r.mean()) / sd, abs(o.std() / sd - 1.0)
        out["mean_error"] = max(out["mean_error"], float(dm))
        out["sd_error"] = max(out["sd_error"], float(ds))
        out["mean_excess"] = max(out["mean_excess"], float(dm - 2 * se_mean))
        out["sd_excess"] = max(out["sd_excess"], float(ds - 2 * se_sd))
        out["max_z"] = max(out["max_z"], float(dm / se_mean), float(ds / se_sd))
    return out


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


def quantiles(values: list[float], tolerance: float = TOLERANCE) -> dict[str, float]:
    v = np.asarray([x for x in values if np.isfinite(x)], float)
    if not v.size:
        return {"n": 0}
    return {"n": int(v.size), "median": float(np.median(v)), "p90": float(np.quantile(v, 0.9)),
            "max": float(v.max()), "over_tolerance": int((v > tolerance).sum()),
            "tolerance": tolerance}


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
        for i in chosen:
            default, seconds = default_pm_sample(name, datasets[i], seed=args.seed + 100 + i)
            ref = reference_pm_sample(name, datasets[i], args.seed + 10_000 + i,
                                      args.reference_draws)
            ref_s, ref_ess = scalar_draws(ref.posterior, free), scalar_ess(ref.posterior, free)
            route = str(out.table["route"].iloc[i])
            row: dict[str, Any] = {"dataset": int(i), "pm_sample_seconds": seconds,
                                   "route": route,
                                   "pareto_k": float(out.table["pareto_k"].iloc[i]),
                                   "fit_many_ess": float(out.table["ess"].iloc[i]),
                                   "nuts": nuts_health(default), "reference": nuts_health(ref)}
            post = out.posteriors[i]
            if post is None:
                row["fit_many"] = {k: float("nan") for k in ("mean_error", "sd_error",
                                                             "mean_excess", "sd_excess", "max_z")}
            else:
                post_ess = ({k: row["fit_many_ess"] for k in ref_s} if route == "psis"
                            else scalar_ess(post.posterior, free))
                row["fit_many"] = mc_errors(ref_s, ref_ess, scalar_draws(post.posterior, free),
                                            post_ess)
            row["error"] = max(row["fit_many"]["mean_error"], row["fit_many"]["sd_error"])
            row["excess"] = max(row["fit_many"]["mean_excess"], row["fit_many"]["sd_excess"], 0.0)
            # the yardstick: the timed default pm.sample, scored the same way
            row["nuts_vs_nuts"] = mc_errors(ref_s, ref_ess, scalar_draws(default.posterior, free),
                                            scalar_ess(default.posterior, free))
            rows.append(row)
            bar.update(err=f"{row['error']:.3f}", excess=f"{row['excess']:.3f}")
            print(f"[{name}] check {i}: {row}", flush=True)
    return rows


def summarize(res: dict[str, Any], n: int) -> dict[str, Any]:
    """Step 4: error distribution and time ratios."""
    rows = res["checked"]
    times = [r["pm_sample_seconds"] for r in rows]
    median_s = float(np.median(times)) if times else float("nan")
    per_dataset_nuts = n * median_s
    fm, tr = res["fit_many"]["seconds"], res["train"]["seconds"]
    nvn = [max(r["nuts_vs_nuts"]["mean_error"], r["nuts_vs_nuts"]["sd_error"]) for r in rows]
    nvn_excess = [max(r["nuts_vs_nuts"]["mean_excess"], r["nuts_vs_nuts"]["sd_excess"], 0.0)
                  for r in rows]
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
        "excess": quantiles([r["excess"] for r in rows]),
        "max_z": quantiles([r["fit_many"]["max_z"] for r in rows], tolerance=MAX_Z),
        "nuts_vs_nuts_excess": quantiles(nvn_excess),
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
            f"({q['over_tolerance']} of {q['n']} > {q.get('tolerance', TOLERANCE):g})")


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
    lines += ["", "## Errors against the NUTS reference", "",
              "Per checked dataset: the largest over the scalar parameters (free variables) of "
              "|mean - mean_ref| / sd_ref and of |sd / sd_ref - 1|; the error is the larger of "
              "the two. *Beyond MC*: each scalar's error less twice the Monte Carlo standard "
              "error of the difference (both sides' ESS), floored at 0: what no number of "
              "draws would remove. *max z*: the largest error in standard errors (counted above "
              f"{MAX_Z:g}). Cells: "
              "median / 90% / max (how many above 0.1). `default pm.sample` is the timed user "
              "run scored the same way against the same reference: the yardstick.", "",
              md_row(["problem", "error", "beyond MC", "max z", "mean error", "sd error",
                      "default pm.sample: error", "default pm.sample: beyond MC",
                      "reference sampler", "default runs with divergences"]),
              md_row(["---"] * 10)]
    for r in results["problems"].values():
        s = r["summary"]
        lines.append(md_row([r["problem"], _q(s["error"]), _q(s.get("excess", {})),
                             _q(s.get("max_z", {})), _q(s["mean_error"]), _q(s["sd_error"]),
                             _q(s["nuts_vs_nuts"]), _q(s.get("nuts_vs_nuts_excess", {})),
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
                      "sd error", "beyond MC", "max z", "default pm.sample: error / beyond MC",
                      "pm.sample s", "NUTS divergences"]),
              md_row(["---"] * 12)]
    for r in results["problems"].values():
        for c in r["checked"]:
            nvn = c["nuts_vs_nuts"]
            nvn_err = max(nvn["mean_error"], nvn["sd_error"])
            nvn_exc = max(nvn.get("mean_excess", 0.0), nvn.get("sd_excess", 0.0), 0.0)
            lines.append(md_row([
                r["problem"], str(c["dataset"]), f"`{c['route']}`", fmt(c["pareto_k"]),
                fmt(c["fit_many_ess"], 0), fmt(c["fit_many"]["mean_error"], 3),
                fmt(c["fit_many"]["sd_error"], 3), fmt(c.get("excess"), 3),
                fmt(c["fit_many"].get("max_z"), 1),
                f"{fmt(nvn_err, 3)} / {fmt(nvn_exc, 3)}",
                fmt(c["pm_sample_seconds"], 2), str(c["nuts"]["divergences"])]))
    for r in results["problems"].values():
        for w in r["fit_many"]["warnings"]:
            lines += ["", f"{r['problem']}: fit_many warned: {w}"]
    return lines


def write_report(results: dict[str, Any], tag: str) -> Path:
    return write_results(results, f"fit_many_scale{tag}", report_lines(results))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problems", default=",".join(PROBLEMS), help=f"comma-separated: {PROBLEMS}")
    p.add_argument("--datasets", type=int, default=1000, help="prior-predictive datasets")
    p.add_argument("--check", type=int, default=50, help="datasets checked against NUTS")
    p.add_argument("--reference-draws", type=int, default=4000,
                   help="draws per chain of the accuracy reference (untimed pm.sample)")
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
    md = run_problems(results, args.problems.split(","), lambda n: bench_problem(n, args),
                      lambda r: write_report(r, args.tag))
    print(md.read_text())


if __name__ == "__main__":
    main()
