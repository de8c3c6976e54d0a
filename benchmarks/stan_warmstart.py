"""Benchmark: CmdStan NUTS with and without our Pathfinder warm start; cost of a log-density call.

In one run, for each program and each seed:

- ``plain``: ``cmdstanpy`` sampling as it is (4 chains, 1000 warmup, 1000 draws);
- ``warm``: ``stan_bridge.CmdStanModel.sample(warmstart="pathfinder")`` with its
  defaults (``metric="auto"``: the metric, and the warmup that follows, chosen
  from Pathfinder's covariance and Pareto k; the table shows the choice);
- ``warm-diag`` / ``warm-dense``: the same with ``metric="diag_e"`` / ``"dense_e"``;
- a suffix ``@N`` sets ``iter_warmup=N`` (``@200``: the 200-iteration schedule
  with one 100-iteration metric window; ``@19``: step size only).

Programs are the Stan versions of the reference posteriors: the names of
``stan_bridge.programs.PROGRAMS`` (``eight_schools``, ``arK``, ...) or any
folder of the reference set (``sblrc-blr``, ``nes1972-nes``; its
``model.stan``, ``data.json`` and reference draws); ``--programs all`` runs
every folder.

Gradient evaluations are counted from what CmdStan reports: the sum of
``n_leapfrog__`` over warmup and draws of all chains (``save_warmup=True``),
plus, for warm starts, Pathfinder's gradient evaluations and its
log-density-only evaluations (counted as gradients: conservative) and the
leapfrogs of a kept-metric run that was redone (``discarded_leapfrogs``). Also:
min ESS_bulk over the reference parameters, gradient evaluations per
effective draw, wall time of the call (compiled programs cached), and the
mean/sd errors against the reference draws.

Second table (``--call-cost``): the cost of one log density + gradient on eight
schools: ``StanModel.logp_and_grad`` (ctypes), the per-row cost inside one
batched call, ``StanModel.logp``, PyStan's ``log_prob_grad`` (httpstan's
services module, built on first use; skip with ``--no-pystan``) and PyMC's
compiled ``logp_and_grad``.

Writes ``benchmarks/results/stan_warmstart[_TAG].md`` and ``.json``.

Usage::

    python benchmarks/stan_warmstart.py                    # 3 programs x 3 seeds
    python benchmarks/stan_warmstart.py --quick            # eight_schools, 1 seed, no PyStan
    python benchmarks/stan_warmstart.py --programs sblrc-blr,nes1972-nes --seeds 1
    python benchmarks/stan_warmstart.py --programs all --seeds 1 --tag all
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import fmt, machine_info, md_row, write_json  # noqa: E402

PROGRAMS = ["eight_schools", "arK", "gp_pois_regr"]
VARIANTS = ["plain", "warm", "warm-diag", "warm-dense"]

#: The warmup schedules a ``@N`` suffix can name (others: ``iter_warmup=N`` alone).
_WARMUP_SUFFIX = {200: {"adapt_init_phase": 50, "adapt_metric_window": 100, "adapt_step_size": 50}}


def _reference_folder(name: str) -> Path:
    from pymc_ext.references.posteriors import reference_dir

    return reference_dir() / name


def all_programs() -> list[str]:
    """Every folder of the reference set that has a Stan program."""
    from pymc_ext.references.posteriors import reference_dir

    return sorted(p.name for p in reference_dir().iterdir() if (p / "model.stan").is_file())


def load_program(name: str) -> tuple[Path, dict[str, Any], str]:
    """``(stan_file, data, reference name)`` for a program of ``PROGRAMS`` or a reference folder.

    A reference folder's ``model.stan`` is copied into the stan_bridge cache
    (named by its hash), so CmdStan's executable is built once and reused.
    """
    from stan_bridge.builder import cache_dir
    from stan_bridge.programs import PROGRAMS as CODE
    from stan_bridge.programs import REFERENCE_POSTERIORS, reference_data, write_program

    if name in CODE:
        return write_program(name), reference_data(name), REFERENCE_POSTERIORS[name]
    folder = _reference_folder(name)
    if not (folder / "model.stan").is_file():
        raise SystemExit(f"Unknown program {name!r}: not in {sorted(CODE)} nor in {folder.parent}")
    code = (folder / "model.stan").read_text()
    digest = hashlib.sha256(code.encode()).hexdigest()[:12]
    target = cache_dir() / "programs" / f"{name}-{digest}"
    target.mkdir(parents=True, exist_ok=True)
    stan_file = target / f"{name.replace('-', '_')}.stan"
    if not stan_file.exists():
        stan_file.write_text(code)
    return stan_file, json.loads((folder / "data.json").read_text()), name


def reference_errors(dt, name: str) -> dict[str, Any]:
    """Mean/sd errors against the reference draws (any folder of the reference set)."""
    from pymc_ext.references.posteriors import compare_to_reference

    return compare_to_reference(dt, name)


def _min_ess_bulk(dt) -> float:
    """Smallest bulk ESS over the posterior's variables (parameters and transformed ones)."""
    import arviz as az

    ess = az.ess(dt, method="bulk")
    ds = ess.to_dataset() if hasattr(ess, "to_dataset") else ess
    return float(min(np.nanmin(np.asarray(ds[v])) for v in ds.data_vars))


def _variant_arguments(variant: str) -> dict[str, Any]:
    """``sample`` keywords for a variant name (``warm-dense@200`` ...)."""
    base, _, warmup = variant.partition("@")
    if base == "plain":
        out: dict[str, Any] = {}
    else:
        out = {"warmstart": "pathfinder", "warmstart_options": {"progressbar": False}}
        metric = {"warm": None, "warm-diag": "diag_e", "warm-dense": "dense_e"}[base]
        if metric:
            out["metric"] = metric
    if warmup:
        out["iter_warmup"] = int(warmup)
        out.update(_WARMUP_SUFFIX.get(int(warmup), {}))
    return out


def run_variant(model, ref_name: str, data: dict, variant: str, seed: int) -> dict[str, Any]:
    import arviz as az

    kwargs = dict(data=data, chains=4, seed=seed, save_warmup=True, show_progress=False)
    t0 = time.perf_counter()
    fit = model.sample(**kwargs, **_variant_arguments(variant))
    wall = time.perf_counter() - t0
    leap = fit.method_variables()["n_leapfrog__"]
    n_warm = leap.shape[0] - fit.num_draws_sampling
    row: dict[str, Any] = {
        "variant": variant,
        "seed": seed,
        "wall_time": wall,
        "nuts_grad_evals": int(leap.sum()),
        "warmup_grad_evals": int(leap[:n_warm].sum()),
        "iter_warmup": int(n_warm),
        "divergences": int(fit.method_variables()["divergent__"][n_warm:].sum()),
        "step_size": [float(s) for s in np.atleast_1d(fit.step_size)],
    }
    ws = getattr(fit, "warmstart", None)
    row["pathfinder_grad_evals"] = int(ws.grad_evals) if ws else 0
    row["pathfinder_logp_evals"] = int(ws.logp_evals) if ws else 0
    row["pareto_k"] = float(ws.pareto_k) if ws else None
    row["pathfinder_seconds"] = float(ws.seconds) if ws else 0.0
    row["discarded_leapfrogs"] = int(getattr(ws, "discarded_leapfrogs", 0)) if ws else 0
    if ws is not None:
        row["metric"] = ws.metric
        row["metric_mismatch"] = float(ws.metric_mismatch)
        row["warmup"] = ws.warmup
        row["metric_reason"] = ws.metric_reason
        row["metric_choice"] = ws.plan.choice.as_dict() if ws.plan is not None else None
    row["total_grad_evals"] = (
        row["nuts_grad_evals"]
        + row["pathfinder_grad_evals"]
        + row["pathfinder_logp_evals"]
        + row["discarded_leapfrogs"]  # a kept-metric run that was redone
    )
    dt = az.from_cmdstanpy(fit)
    err = reference_errors(dt, ref_name)
    row["max_mean_error"] = err["max_mean_error"]
    row["max_sd_error"] = err["max_sd_error"]
    row["min_ess_bulk"] = _min_ess_bulk(dt)
    row["grad_evals_per_ess"] = row["total_grad_evals"] / row["min_ess_bulk"]
    return row


def bench_programs(
    programs: list[str],
    seeds: list[int],
    variants: list[str],
    out: dict[str, Any] | None = None,
    checkpoint: Any = None,
) -> dict[str, Any]:
    """Every program x seed x variant; ``checkpoint()`` after each program (partial reports)."""
    from stan_bridge import CmdStanModel

    out = {} if out is None else out
    for name in programs:
        t0 = time.perf_counter()
        stan_file, data, ref_name = load_program(name)
        model = CmdStanModel(stan_file=str(stan_file))
        model.stan_model(data, seed=seeds[0])  # build (or load) our library before timing
        compile_s = time.perf_counter() - t0
        rows = []
        for seed in seeds:
            for variant in variants:
                print(f"{name} seed={seed} {variant} ...", flush=True)
                rows.append(run_variant(model, ref_name, data, variant, seed))
                r = rows[-1]
                print(
                    f"  total {r['total_grad_evals']:,} grads/ESS {r['grad_evals_per_ess']:.1f} "
                    f"err {r['max_mean_error']:.3f}/{r['max_sd_error']:.3f} "
                    f"{r.get('metric', '')} {r.get('warmup', '')} {r.get('metric_reason', '')}",
                    flush=True,
                )
        out[name] = {"rows": rows, "compile_or_load_seconds": compile_s, "reference": ref_name}
        if checkpoint is not None:
            checkpoint()
    return out


def _time_call(fn, n: int, repeats: int = 5) -> float:
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def bench_call_cost(pystan: bool) -> list[dict[str, Any]]:
    from stan_bridge import StanModel
    from stan_bridge.programs import PROGRAMS as CODE
    from stan_bridge.programs import reference_data

    code, data = CODE["eight_schools"], reference_data("eight_schools")
    sm = StanModel(code, data, progressbar=False)
    x = np.random.default_rng(0).normal(size=sm.dim)
    X = np.tile(x, (20000, 1))
    rows = [
        {
            "what": "stan_bridge StanModel.logp_and_grad (one call from Python)",
            "us_per_call": _time_call(lambda: sm.logp_and_grad(x), 20000),
        },
        {
            "what": "stan_bridge StanModel.logp (one call from Python)",
            "us_per_call": _time_call(lambda: sm.logp(x), 20000),
        },
        {
            "what": "Stan's gradient alone: per row of one logp_and_grad_batch call (C loop)",
            "us_per_call": _time_call(lambda: sm.logp_and_grad_batch(X), 1) / X.shape[0],
        },
    ]
    if pystan:
        try:
            import httpstan.models

            mname = httpstan.models.calculate_model_name(code)
            try:
                mod = httpstan.models.import_services_extension_module(mname)
            except KeyError:
                print("building PyStan's (httpstan) services module ...", flush=True)
                asyncio.run(httpstan.models.build_services_extension_module(code))
                mod = httpstan.models.import_services_extension_module(mname)
            xl = list(x)
            lp_ref = mod.log_prob(data, xl, True)
            g_ref = np.asarray(mod.log_prob_grad(data, xl, True))
            lp, g = sm.logp_and_grad(x)
            rows.append(
                {
                    "what": "PyStan (httpstan 4.17, Stan 2.39) log_prob_grad",
                    "us_per_call": _time_call(lambda: mod.log_prob_grad(data, xl, True), 300),
                    "abs_diff_logp_vs_ours": abs(lp - lp_ref),
                    "max_abs_diff_grad_vs_ours": float(np.abs(g - g_ref).max()),
                }
            )
        except Exception as err:  # report, do not hide
            rows.append({"what": "PyStan (httpstan) log_prob_grad", "error": repr(err)})
    try:
        from pymc_ext.models import eight_schools
        from pymc_ext.pymc_model import log_density

        d = log_density(eight_schools())
        xp = d.initial_point()
        rows.append(
            {
                "what": "PyMC 6 compiled logp_and_grad (pymc_ext.log_density)",
                "us_per_call": _time_call(lambda: d.logp_and_grad(xp), 5000),
            }
        )
    except Exception as err:
        rows.append({"what": "PyMC logp_and_grad", "error": repr(err)})
    return rows


def _by_variant(rows: list[dict]) -> dict[str, list[dict]]:
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r)
    return by


def _mean(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def _summary_lines(results: dict[str, Any], variants: list[str]) -> list[str]:
    """One row per program: the default warm start's choice, and each variant against plain."""
    warm = [v for v in variants if v != "plain"]
    head = ["program", "dim", "Pareto k", "metric (auto)", "warmup", "why"]
    for v in warm:
        head += [f"{v}: total vs plain", f"{v}: grads/ESS vs plain", f"{v}: wall vs plain"]
    head += ["max mean err (warm)", "max sd err (warm)"]
    lines = [md_row(head), md_row(["---"] * len(head))]
    ratios: dict[str, dict[str, list[float]]] = {
        v: {"total": [], "ess": [], "wall": []} for v in warm
    }
    for name, res in results["programs"].items():
        by = _by_variant(res["rows"])
        if "plain" not in by:
            continue
        base_tot = _mean(by["plain"], "total_grad_evals")
        base_ess = _mean(by["plain"], "grad_evals_per_ess")
        base_wall = _mean(by["plain"], "wall_time")
        first = next((by[v][0] for v in warm if v in by and by[v][0].get("metric_choice")), {})
        choice = first.get("metric_choice") or {}
        auto = by.get("warm", [{}])[0]
        cells = [
            name,
            fmt(choice.get("dim")),
            fmt(_mean(by.get("warm", by["plain"]), "pareto_k")),
            str(auto.get("metric", "–")),
            str(auto.get("warmup", "–")),
            str(auto.get("metric_reason", "–")).split(";")[0].replace("|", "\\|"),
        ]
        for v in warm:
            if v not in by:
                cells += ["–", "–", "–"]
                continue
            t = _mean(by[v], "total_grad_evals") / base_tot
            e = _mean(by[v], "grad_evals_per_ess") / base_ess
            w = _mean(by[v], "wall_time") / base_wall
            ratios[v]["total"].append(t)
            ratios[v]["ess"].append(e)
            ratios[v]["wall"].append(w)
            cells += [fmt(t), fmt(e), fmt(w)]
        ref = by.get("warm", by["plain"])
        cells += [
            fmt(max(r["max_mean_error"] for r in ref), 3),
            fmt(max(r["max_sd_error"] for r in ref), 3),
        ]
        lines.append(md_row(cells))
    foot = ["median", "", "", "", "", ""]
    worst = ["worst", "", "", "", "", ""]
    for v in warm:
        for key in ("total", "ess", "wall"):
            vals = ratios[v][key]
            foot.append(fmt(float(np.median(vals))) if vals else "–")
            worst.append(fmt(float(np.max(vals))) if vals else "–")
    lines += [md_row(foot + ["", ""]), md_row(worst + ["", ""])]
    return lines


def _detail_lines(results: dict[str, Any], variants: list[str]) -> list[str]:
    lines = [
        "| program | variant | total grad evals | vs plain | NUTS warmup grads | Pathfinder "
        "grads + logps | min ESS bulk | grads / ESS | wall (s) | max mean err | max sd err | "
        "Pareto k | divergences |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in results["programs"].items():
        by = _by_variant(res["rows"])
        base = _mean(by["plain"], "total_grad_evals") if "plain" in by else None
        for v in variants:
            if v not in by:
                continue
            tot = _mean(by[v], "total_grad_evals")
            pf = _mean(by[v], "pathfinder_grad_evals") + _mean(by[v], "pathfinder_logp_evals")
            lines.append(
                md_row(
                    [
                        name,
                        v,
                        fmt(tot),
                        fmt(tot / base) if base else "–",
                        fmt(_mean(by[v], "warmup_grad_evals")),
                        fmt(pf),
                        fmt(_mean(by[v], "min_ess_bulk"), 0),
                        fmt(_mean(by[v], "grad_evals_per_ess"), 1),
                        fmt(_mean(by[v], "wall_time")),
                        fmt(max(r["max_mean_error"] for r in by[v])),
                        fmt(max(r["max_sd_error"] for r in by[v])),
                        fmt(_mean(by[v], "pareto_k")),
                        fmt(sum(r["divergences"] for r in by[v])),
                    ]
                )
            )
    return lines


def _call_cost_lines(call_cost: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Cost of one log density + gradient (eight schools, 10 parameters)",
        "",
        "Best of 5 repeats.",
        "",
        "| call | µs per call | notes |",
        "|---|---|---|",
    ]
    for r in call_cost:
        if "error" in r:
            lines.append(f"| {r['what']} | – | {r['error'][:120]} |")
            continue
        note = ""
        if "abs_diff_logp_vs_ours" in r:
            note = (
                f"same values as ours: log p differs by {r['abs_diff_logp_vs_ours']:.1e}, "
                f"gradient by at most {r['max_abs_diff_grad_vs_ours']:.1e}"
            )
        lines.append(f"| {r['what']} | {fmt(r['us_per_call'], 1)} | {note} |")
    return lines


def write_report(results: dict[str, Any], out_dir: Path, tag: str = "") -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "stan_warmstart" + (f"_{tag}" if tag else "")
    json_path = out_dir / f"{stem}.json"
    md_path = out_dir / f"{stem}.md"
    write_json(results, json_path)
    variants = results.get("variants", ["plain", "warm", "warm-dense"])
    lines = [
        "# Stan warm-start benchmark",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']}. CmdStan {results['cmdstan']}; 4 chains, 1000 draws "
        "each; plain = cmdstanpy defaults (1000 warmup); warm = "
        "`CmdStanModel.sample(warmstart='pathfinder')` with its defaults (metric and warmup "
        f"chosen from Pathfinder's covariance). Means over seeds {results['seeds']}; programs "
        "compiled beforehand (cached).",
        "",
        "Total gradient evaluations = CmdStan's n_leapfrog over warmup and draws of all chains "
        "+ Pathfinder's gradient evaluations + Pathfinder's log-density evaluations (counted as "
        "gradients). grads/ESS = total / min ESS_bulk over the posterior's variables. Errors "
        "against the posteriordb reference draws: max over parameters of |mean - ref| / ref_sd "
        "and |sd / ref_sd - 1|.",
        "",
        *_summary_lines(results, variants),
        "",
        "## Every variant",
        "",
        *_detail_lines(results, variants),
        "",
        "Error columns show the worst seed. Per-seed rows are in the JSON file.",
        "",
    ]
    if results.get("call_cost"):
        lines += _call_cost_lines(results["call_cost"])
    md_path.write_text("\n".join(lines) + "\n")
    return md_path, json_path


def rewrite_report(out_dir: Path, tag: str = "") -> None:
    """Write the markdown again from the JSON file (after a change of format)."""
    stem = "stan_warmstart" + (f"_{tag}" if tag else "")
    results = json.loads((out_dir / f"{stem}.json").read_text())
    write_report(results, out_dir, tag)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--render", action="store_true",
                        help="only write the markdown again from the JSON of --tag")
    parser.add_argument("--programs", default=",".join(PROGRAMS), help="names, or 'all'")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (1, 2, ...)")
    parser.add_argument("--no-pystan", action="store_true", help="skip PyStan's log_prob_grad")
    parser.add_argument("--no-call-cost", action="store_true", help="skip the call-cost table")
    parser.add_argument("--quick", action="store_true", help="eight_schools, one seed, no PyStan")
    parser.add_argument("--tag", default="", help="suffix of the output files")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    if args.render:
        rewrite_report(Path(args.out), args.tag)
        return
    import cmdstanpy
    from cmdstanpy.utils.logging import get_logger as cmdstanpy_logger

    cmdstanpy_logger().setLevel(logging.WARNING)  # warnings (divergences) stay visible

    programs = args.programs.split(",") if args.programs != "all" else all_programs()
    programs = ["eight_schools"] if args.quick else programs
    seeds = [1] if args.quick else list(range(1, args.seeds + 1))
    variants = args.variants.split(",")
    results: dict[str, Any] = {
        "command": "python benchmarks/stan_warmstart.py " + " ".join(sys.argv[1:] or []),
        "machine": machine_info(),
        "cmdstan": ".".join(str(v) for v in cmdstanpy.cmdstan_version() or ()),
        "seeds": seeds,
        "variants": variants,
        "programs": {},
    }
    bench_programs(
        programs,
        seeds,
        variants,
        out=results["programs"],
        checkpoint=lambda: write_report(results, Path(args.out), args.tag),
    )
    if not args.no_call_cost:
        results["call_cost"] = bench_call_cost(pystan=not (args.no_pystan or args.quick))
    md, js = write_report(results, Path(args.out), args.tag)
    print(md.read_text())
    print(f"wrote {md} and {js}")


if __name__ == "__main__":
    main()
