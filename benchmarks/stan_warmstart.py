"""Benchmark: CmdStan NUTS with and without our Pathfinder warm start; cost of a log-density call.

In one run, for each program (Stan versions of the reference posteriors) and
each seed:

- ``plain``: ``cmdstanpy`` sampling as it is (4 chains, 1000 warmup, 1000 draws);
- ``warm``: ``stan_bridge.CmdStanModel.sample(warmstart="pathfinder")`` (diagonal
  metric, 200 warmup iterations, 1000 draws);
- ``warm-dense``: the same with ``metric="dense_e"``.

Gradient evaluations are counted from what CmdStan reports: the sum of
``n_leapfrog__`` over warmup and draws of all chains (``save_warmup=True``),
plus, for warm starts, Pathfinder's gradient evaluations and its
log-density-only evaluations (counted as gradients: conservative). Also:
min ESS_bulk over the reference parameters, gradient evaluations per
effective draw, wall time of the call (compiled programs cached), and the
mean/sd errors against the reference draws.

Second table: the cost of one log density + gradient on eight schools:
``StanModel.logp_and_grad`` (ctypes), the per-row cost inside one batched
call (Stan's gradient plus a C loop), ``StanModel.logp``, PyStan's
``log_prob_grad`` (httpstan's services module, built on first use; skip with
``--no-pystan``) and PyMC's compiled ``logp_and_grad``.

Writes ``benchmarks/results/stan_warmstart.md`` and ``.json``.

Usage::

    python benchmarks/stan_warmstart.py                    # 3 programs x 3 seeds
    python benchmarks/stan_warmstart.py --quick            # eight_schools, 1 seed, no PyStan
    python benchmarks/stan_warmstart.py --programs arK --seeds 1
"""

from __future__ import annotations

import argparse
import asyncio
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
VARIANTS = ["plain", "warm", "warm-dense"]


def _min_ess_bulk(dt) -> float:
    """Smallest bulk ESS over the posterior's variables (parameters and transformed ones)."""
    import arviz as az

    ess = az.ess(dt, method="bulk")
    ds = ess.to_dataset() if hasattr(ess, "to_dataset") else ess
    return float(min(np.nanmin(np.asarray(ds[v])) for v in ds.data_vars))


def run_variant(model, name: str, data: dict, variant: str, seed: int) -> dict[str, Any]:
    import arviz as az

    from pymc_ext.reference import compare_to_reference
    from stan_bridge.programs import REFERENCE_POSTERIORS

    kwargs = dict(data=data, chains=4, seed=seed, save_warmup=True, show_progress=False)
    t0 = time.perf_counter()
    if variant == "plain":
        fit = model.sample(**kwargs)
    else:
        metric = "dense_e" if variant == "warm-dense" else "diag_e"
        fit = model.sample(
            warmstart="pathfinder",
            metric=metric,
            warmstart_options={"progressbar": False},
            **kwargs,
        )
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
    }
    ws = getattr(fit, "warmstart", None)
    row["pathfinder_grad_evals"] = int(ws.grad_evals) if ws else 0
    row["pathfinder_logp_evals"] = int(ws.logp_evals) if ws else 0
    row["pareto_k"] = float(ws.pareto_k) if ws else None
    row["pathfinder_seconds"] = float(ws.seconds) if ws else 0.0
    row["total_grad_evals"] = (
        row["nuts_grad_evals"] + row["pathfinder_grad_evals"] + row["pathfinder_logp_evals"]
    )
    dt = az.from_cmdstanpy(fit)
    err = compare_to_reference(dt, REFERENCE_POSTERIORS[name])
    row["max_mean_error"] = err["max_mean_error"]
    row["max_sd_error"] = err["max_sd_error"]
    row["min_ess_bulk"] = _min_ess_bulk(dt)
    row["grad_evals_per_ess"] = row["total_grad_evals"] / row["min_ess_bulk"]
    return row


def bench_programs(programs: list[str], seeds: list[int]) -> dict[str, Any]:
    from stan_bridge import CmdStanModel
    from stan_bridge.programs import reference_data, write_program

    out: dict[str, Any] = {}
    for name in programs:
        t0 = time.perf_counter()
        model = CmdStanModel(stan_file=write_program(name))
        data = reference_data(name)
        model.stan_model(data, seed=seeds[0])  # build (or load) our library before timing
        compile_s = time.perf_counter() - t0
        rows = []
        for seed in seeds:
            for variant in VARIANTS:
                print(f"{name} seed={seed} {variant} ...", flush=True)
                rows.append(run_variant(model, name, data, variant, seed))
        out[name] = {"rows": rows, "compile_or_load_seconds": compile_s}
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


def write_report(results: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "stan_warmstart.json"
    md_path = out_dir / "stan_warmstart.md"
    write_json(results, json_path)
    lines = [
        "# Stan warm-start benchmark",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']}. CmdStan {results['cmdstan']}; 4 chains, 1000 draws "
        "each; plain = cmdstanpy defaults (1000 warmup); warm = Pathfinder warm start "
        "(200 warmup). Means over seeds "
        f"{results['seeds']}; programs compiled beforehand (cached).",
        "",
        "Total gradient evaluations = CmdStan's n_leapfrog over warmup and draws of all chains "
        "+ Pathfinder's gradient evaluations + Pathfinder's log-density evaluations (counted as "
        "gradients). Errors against the posteriordb reference draws: max over parameters of "
        "|mean - ref| / ref_sd and |sd / ref_sd - 1|.",
        "",
        "| program | variant | total grad evals | vs plain | NUTS warmup grads | Pathfinder "
        "grads + logps | min ESS bulk | grads / ESS | wall (s) | max mean err | max sd err | "
        "Pareto k | divergences |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in results["programs"].items():
        rows = res["rows"]
        by: dict[str, list[dict]] = {}
        for r in rows:
            by.setdefault(r["variant"], []).append(r)

        def mean(v, key, by=by):
            vals = [r[key] for r in by[v] if r.get(key) is not None]
            return float(np.mean(vals)) if vals else None

        base = mean("plain", "total_grad_evals")
        for v in VARIANTS:
            if v not in by:
                continue
            tot = mean(v, "total_grad_evals")
            pf = mean(v, "pathfinder_grad_evals") + mean(v, "pathfinder_logp_evals")
            lines.append(
                md_row(
                    [
                        name,
                        v,
                        fmt(tot),
                        fmt(tot / base) if base else "–",
                        fmt(mean(v, "warmup_grad_evals")),
                        fmt(pf),
                        fmt(mean(v, "min_ess_bulk"), 0),
                        fmt(mean(v, "grad_evals_per_ess"), 1),
                        fmt(mean(v, "wall_time")),
                        fmt(max(r["max_mean_error"] for r in by[v])),
                        fmt(max(r["max_sd_error"] for r in by[v])),
                        fmt(mean(v, "pareto_k")),
                        fmt(sum(r["divergences"] for r in by[v])),
                    ]
                )
            )
    lines += [
        "",
        "Error columns show the worst seed. Per-seed rows are in the JSON file.",
        "",
        "## Cost of one log density + gradient (eight schools, 10 parameters)",
        "",
        "Best of 5 repeats.",
        "",
        "| call | µs per call | notes |",
        "|---|---|---|",
    ]
    for r in results["call_cost"]:
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
    md_path.write_text("\n".join(lines) + "\n")
    return md_path, json_path


def rewrite_report(out_dir: Path) -> None:
    """Write the markdown again from the JSON file (after a change of format)."""
    results = json.loads((out_dir / "stan_warmstart.json").read_text())
    write_report(results, out_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--programs", default=",".join(PROGRAMS))
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (1, 2, ...)")
    parser.add_argument("--no-pystan", action="store_true", help="skip PyStan's log_prob_grad")
    parser.add_argument("--quick", action="store_true", help="eight_schools, one seed, no PyStan")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    import cmdstanpy
    from cmdstanpy.utils.logging import get_logger as cmdstanpy_logger

    cmdstanpy_logger().setLevel(logging.WARNING)  # warnings (divergences) stay visible

    programs = ["eight_schools"] if args.quick else args.programs.split(",")
    seeds = [1] if args.quick else list(range(1, args.seeds + 1))
    results: dict[str, Any] = {
        "command": "python benchmarks/stan_warmstart.py " + " ".join(sys.argv[1:] or []),
        "machine": machine_info(),
        "cmdstan": ".".join(str(v) for v in cmdstanpy.cmdstan_version() or ()),
        "seeds": seeds,
        "programs": bench_programs(programs, seeds),
        "call_cost": bench_call_cost(pystan=not (args.no_pystan or args.quick)),
    }
    md, js = write_report(results, Path(args.out))
    print(md.read_text())
    print(f"wrote {md} and {js}")


if __name__ == "__main__":
    main()
