"""Benchmark: nutpie with the warm start's metric (the reparametrisation ``x = mu + L z``).

On correlated reference posteriors, in one process, each sampler with 4
chains run one after the other (``cores=1``), 1000 draws, warmup kept:

- ``default``: ``pm.sample()`` as a user gets it (nutpie, diagonal
  adaptation, tune 1000);
- ``low_rank``: ``pm.sample(nuts_sampler_kwargs={"adaptation": "low_rank"})``;
- ``reparam``: ``pymc_ext.sample(nuts_sampler="nutpie")`` (Pathfinder, the
  ``metric="auto"`` choice, nutpie on ``z``, default tune 200);
- ``reparam-lr``: the same with nutpie's ``adaptation="low_rank"`` on ``z``;
- ``points``: what ``pymc_ext.sample(nuts_sampler="nutpie")`` did before:
  Pathfinder's start points only, nutpie's own diagonal metric, tune 200
  (the fallback path, forced);
- ``kind@N`` sets that sampler's tune to N (``reparam@100``); ``reparam:dense``
  forces a metric.

Reported per run: gradient evaluations (Pathfinder + warmup + draws, from
nutpie's ``n_steps``) per unit of the smallest bulk ESS over every posterior
scalar; wall time of the whole call (compiles included; PyTensor's compile
cache warmed by one tiny untimed run per posterior and sampler) and
milliseconds per unit of ESS; max R-hat; mean and sd errors against the
reference draws (in reference sds).

Usage::

    python benchmarks/nutpie_reparam.py
    python benchmarks/nutpie_reparam.py --models kidiq --samplers default,reparam

Writes ``benchmarks/results/nutpie_reparam.md`` and ``.json`` (``--tag``
suffixes the names).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    RESULTS_DIR,
    fmt,
    full_reference_name,
    machine_info,
    md_row,
    write_json,
)

MODELS = [
    "earnings-logearn_interaction",
    "kidiq-kidscore_momiq",
    "mesquite-logmesquite_logvas",
    "sblrc-blr",
]
SAMPLERS = ["default", "low_rank", "reparam"]
LABELS = {
    "default": "`pm.sample()` (nutpie, diag)",
    "low_rank": "nutpie `low_rank`",
    "reparam": '`pymc_ext.sample(nuts_sampler="nutpie")`',
    "reparam-lr": "same, nutpie `low_rank` on z",
    "points": "before: Pathfinder start points only",
}


def run_one(kind: str, name: str, seed: int, draws: int, chains: int) -> Any:
    """One sampler on one posterior; returns the DataTree."""
    import pymc as pm

    import pymc_ext
    from pymc_ext.references.models import reference_model
    from pymc_ext.step_methods.warmstart_init import (
        WARMSTART_PATHFINDER_DEFAULTS as WARMSTART_PF,
    )
    from pymc_ext.step_methods.warmstart_init import run_warmstart

    base, _, tune = kind.partition("@")
    base, _, metric = base.partition(":")
    common = dict(
        draws=draws,
        tune=int(tune) if tune else None,
        chains=chains,
        cores=1,
        random_seed=seed,
        discard_tuned_samples=False,
        progressbar=False,
    )
    model = reference_model(name)
    with model, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if base in ("default", "low_rank"):
            if common["tune"] is None:
                common.pop("tune")
            nuts = {"adaptation": "low_rank"} if base == "low_rank" else {}
            return pm.sample(
                nuts_sampler="nutpie",
                nuts_sampler_kwargs=nuts,
                compute_convergence_checks=False,
                **common,
            )
        if base == "points":  # the old behaviour: start points only, nutpie's own metric
            ws = run_warmstart(
                pymc_ext.log_density(model), "pathfinder", random_seed=seed, **WARMSTART_PF
            )
            common["tune"] = common["tune"] or 200
            return pymc_ext.sample(
                nuts_sampler="nutpie",
                warmstart=dataclasses.replace(ws, pareto_k=np.inf),
                **common,
            )
        if base in ("reparam", "reparam-lr"):
            nuts = {"adaptation": "low_rank"} if base == "reparam-lr" else {}
            return pymc_ext.sample(
                nuts_sampler="nutpie", metric=metric or "auto", nuts=nuts, **common
            )
    raise SystemExit(f"unknown sampler {kind!r}; use {list(LABELS)} (and @N, :kind)")


def measure(idata: Any, wall: float, name: str) -> dict[str, Any]:
    """Gradients, ESS, R-hat, errors and timings of one run."""
    import arviz as az

    from pymc_ext.references.posteriors import compare_to_reference

    ss = idata.sample_stats
    attrs = dict(ss.attrs)
    ws = int(attrs.get("warmstart_grad_evals", 0))
    warm = float(idata.warmup_sample_stats["n_steps"].values.sum())
    draws = float(ss["n_steps"].values.sum())
    ess = az.ess(idata.posterior, method="bulk")
    rhat = az.rhat(idata.posterior)
    min_ess = float(min(np.nanmin(ess[v].values) for v in ess.data_vars))
    max_rhat = float(max(np.nanmax(rhat[v].values) for v in rhat.data_vars))
    total = ws + warm + draws
    cmp = compare_to_reference(idata, name)
    return {
        "warmstart_grad_evals": ws,
        "warmup_grad_evals": warm,
        "draw_grad_evals": draws,
        "total_grad_evals": total,
        "min_ess_bulk": min_ess,
        "max_rhat": max_rhat,
        "grads_per_ess": total / max(min_ess, 1e-9),
        "wall_time": wall,
        "ms_per_ess": 1000.0 * wall / max(min_ess, 1e-9),
        "sampling_time": float(idata.posterior.attrs.get("sampling_time", np.nan)),
        "tune": int(idata.posterior.attrs.get("tuning_steps", -1)),
        "divergences": int(ss["diverging"].values.sum()),
        "max_mean_error": cmp["max_mean_error"],
        "max_sd_error": cmp["max_sd_error"],
        "metric": attrs.get("warmstart_metric"),
        "metric_reason": attrs.get("warmstart_metric_reason"),
        "reparametrization": attrs.get("warmstart_reparametrization"),
        "pareto_k": attrs.get("warmstart_pareto_k"),
    }


def bench(
    models: list[str],
    samplers: list[str],
    seed: int,
    draws: int,
    chains: int,
    warm_cache: bool,
    repeats: int = 1,
) -> dict[str, Any]:
    """Every sampler on every posterior, one after the other, in this process.

    With ``repeats`` > 1 the identical run (same seed: the same draws and
    gradient counts) is timed that many times and the median wall time kept
    (the machine is shared and noisy).
    """
    results: dict[str, Any] = {"runs": []}
    for name in models:
        for kind in samplers:
            if warm_cache:  # PyTensor's C cache (Pathfinder's density); numba never caches
                run_one(kind, name, seed + 1, 20, 1)
            walls = []
            for _ in range(max(1, repeats)):
                t0 = time.perf_counter()
                idata = run_one(kind, name, seed, draws, chains)
                walls.append(time.perf_counter() - t0)
            wall = float(np.median(walls))
            row = {"posterior": name, "sampler": kind, **measure(idata, wall, name)}
            row["wall_times"] = walls
            results["runs"].append(row)
            print(
                f"{name:32s} {kind:14s} grads/ESS {row['grads_per_ess']:9.1f}  "
                f"wall {wall:6.1f} s  ms/ESS {row['ms_per_ess']:8.2f}  "
                f"R-hat {row['max_rhat']:.3f}  err {row['max_mean_error']:.3f}/"
                f"{row['max_sd_error']:.3f}  {row['reparametrization'] or ''}",
                flush=True,
            )
    return results


def write_report(results: dict[str, Any], command: str, tag: str) -> Path:
    """The markdown table (and JSON) under benchmarks/results/."""
    lines = [
        "# nutpie with the warm start's metric",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_info()}; {results['chains']} chains one after the other, "
        f"{results['draws']} draws, seed {results['seed']}. Gradients include Pathfinder's and "
        "the warmup's; wall time is the whole call, compiles included (median of "
        f"{results.get('repeats', 1)} identical runs); sampling is nutpie's own time.",
        "",
        md_row(
            [
                "posterior",
                "sampler",
                "grads/ESS",
                "wall (s)",
                "of it sampling (s)",
                "ms/ESS",
                "min ESS",
                "max R-hat",
                "mean err",
                "sd err",
                "tune",
                "map",
            ]
        ),
        md_row(["---"] * 12),
    ]
    for r in results["runs"]:
        base = r["sampler"].split("@")[0].split(":")[0]
        label = LABELS.get(base, base) + r["sampler"][len(base) :]
        lines.append(
            md_row(
                [
                    r["posterior"],
                    label,
                    fmt(r["grads_per_ess"], 1),
                    fmt(r["wall_time"], 1),
                    fmt(r["sampling_time"], 1),
                    fmt(r["ms_per_ess"], 2),
                    fmt(r["min_ess_bulk"], 0),
                    fmt(r["max_rhat"], 3),
                    fmt(r["max_mean_error"], 3),
                    fmt(r["max_sd_error"], 3),
                    str(r["tune"]),
                    r["reparametrization"] or "–",
                ]
            )
        )
    out = RESULTS_DIR / f"nutpie_reparam{('_' + tag) if tag else ''}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    write_json(results, out.with_suffix(".json"))
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line: ``--models``, ``--samplers``, ``--draws``, ``--chains``, ``--seed``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help="short or full reference names")
    p.add_argument("--samplers", default=",".join(SAMPLERS))
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--seed", type=int, default=20261204)
    p.add_argument("--no-warm-cache", action="store_true", help="skip the untimed warm-up runs")
    p.add_argument("--repeats", type=int, default=1, help="timed runs each; median wall")
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    models = [full_reference_name(m) for m in args.models.split(",")]
    samplers = args.samplers.split(",")
    results = bench(
        models, samplers, args.seed, args.draws, args.chains, not args.no_warm_cache, args.repeats
    )
    results.update(draws=args.draws, chains=args.chains, seed=args.seed, repeats=args.repeats)
    command = "python benchmarks/nutpie_reparam.py " + " ".join(argv or sys.argv[1:])
    print(write_report(results, command.strip(), args.tag))


if __name__ == "__main__":
    main()
