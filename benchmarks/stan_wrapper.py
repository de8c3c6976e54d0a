"""Benchmark: the cmdstanpy wrapper's three capabilities on reference posteriors.

For each program and seed, against the posteriordb reference draws:

- ``plain``: cmdstanpy's ``sample`` (4 chains, 1000 warmup, 1000 draws);
- ``warm-pathfinder`` / ``warm-flow``: ``CmdStanModel.sample(warmstart=...)``
  with their defaults (4 chains, 1000 draws; the metric and warmup chosen by
  the warm start's plan); ``warm-flow-both`` adds the reverse-KL refinement
  (``warmstart_options={"method": "both"}``, flow_init's own default);
- ``flow_sample``: ``CmdStanModel.flow_sample`` with its defaults;
- ``amortized`` / ``amortized+psis``: ``CmdStanModel.amortize`` (programs with
  the prior-predictive convention only), then ``sample`` at the reference data,
  raw and PSIS-corrected (4000 draws); the training time is in the row of the
  raw draws, the time per posterior in the ``seconds`` column.

Gradient evaluations: CmdStan's ``n_leapfrog__`` over warmup and draws of all
chains, plus the warm start's own (gradients and log-density evaluations, also
shown alone as ``warmstart_evals``);
flow MCMC's ``grad_evals`` (Pathfinder seeding, mode search, flow fits and
production). Errors are the largest |mean error| / sd and |sd error| / sd over
the reference parameters. Wall times are of the call, compiled programs
cached, with one torch thread.

Usage::

    python benchmarks/stan_wrapper.py                       # eight_schools, seed 1
    python benchmarks/stan_wrapper.py --programs eight_schools,arK --seeds 1,2
    python benchmarks/stan_wrapper.py --skip amortized      # leave a variant out

Writes ``benchmarks/results/stan_wrapper.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ("plain", "warm-pathfinder", "warm-flow", "warm-flow-both", "flow_sample", "amortized")


def _leapfrogs(fit: Any) -> int:
    return int(fit.method_variables()["n_leapfrog__"].sum())


def _errors(posterior: Any, name: str) -> dict[str, float]:
    from pymc_ext.reference import compare_to_reference
    from stan_bridge.programs import REFERENCE_POSTERIORS

    err = compare_to_reference(posterior, REFERENCE_POSTERIORS[name])
    return {"max_mean_error": float(err["max_mean_error"]),
            "max_sd_error": float(err["max_sd_error"])}


def _row(name: str, seed: int, variant: str, seconds: float, grads: Any, post: Any,
         **extra: Any) -> dict[str, Any]:
    return {"program": name, "seed": seed, "variant": variant, "seconds": round(seconds, 2),
            "grad_evals": grads, **_errors(post, name), **extra}


def run_cmdstan(model: Any, name: str, data: dict, seed: int, variant: str) -> dict[str, Any]:
    import arviz as az

    kwargs = dict(data=data, chains=4, seed=seed, save_warmup=True, show_progress=False)
    if variant != "plain":
        kwargs["warmstart"] = variant.split("-")[1]
    if variant == "warm-flow-both":
        kwargs["warmstart_options"] = {"method": "both"}
    start = time.perf_counter()
    fit = model.sample(**kwargs)
    seconds = time.perf_counter() - start
    grads = _leapfrogs(fit)
    extra: dict[str, Any] = {}
    if variant != "plain":
        ws = fit.warmstart
        grads += ws.grad_evals + ws.logp_evals
        extra = {"metric": ws.metric, "warmup": ws.warmup, "pareto_k": round(ws.pareto_k, 2),
                 "warmstart_seconds": round(ws.seconds, 2),
                 "warmstart_evals": ws.grad_evals + ws.logp_evals}
    post = az.from_cmdstanpy(fit).posterior
    return _row(name, seed, variant, seconds, grads, post, **extra)


def run_flow_sample(model: Any, name: str, data: dict, seed: int) -> dict[str, Any]:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = model.flow_sample(data=data, seed=seed, show_progress=False)
    seconds = time.perf_counter() - start
    fig = fit.figures
    return _row(name, seed, "flow_sample", seconds, int(fig["grad_evals"]),
                fit.to_datatree().posterior, chains=fit.chains,
                global_acceptance=round(float(fig["global_acceptance"]), 3),
                pareto_k=round(float(fig["flow_pareto_k"]), 2), fit=str(fig["fit"]))


def run_amortized(model: Any, name: str, data: dict, seed: int) -> list[dict[str, Any]]:
    start = time.perf_counter()
    amortizer = model.amortize(data, 4000, seed=seed, show_progress=False, epochs=60,
                               max_seconds=240)
    train = time.perf_counter() - start
    rows = []
    for correct in (None, "psis"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            amortizer.sample(data, draws=4000, seed=seed, correct=correct)  # warm caches
            start = time.perf_counter()
            idata = amortizer.sample(data, draws=4000, seed=seed, correct=correct)
        seconds = time.perf_counter() - start
        rows.append(_row(name, seed, "amortized" + ("+psis" if correct else ""), seconds, 0,
                         idata.posterior, pareto_k=round(idata.posterior.attrs["pareto_k"], 2),
                         train_seconds=round(train, 1)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", default="eight_schools")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--skip", default="", help="comma-separated variants to leave out")
    args = parser.parse_args()

    import cmdstanpy
    import torch

    from stan_bridge import CmdStanModel
    from stan_bridge.programs import PROGRAMS, reference_data, write_program

    torch.set_num_threads(1)
    cmdstanpy.utils.get_logger().setLevel(logging.WARNING)
    skip = set(filter(None, args.skip.split(",")))
    rows: list[dict[str, Any]] = []
    for name in args.programs.split(","):
        model = CmdStanModel(stan_file=write_program(name))
        data = reference_data(name)
        model.stan_model(data)  # build the library once, outside the timings
        for seed in (int(s) for s in args.seeds.split(",")):
            for variant in ("plain", "warm-pathfinder", "warm-flow", "warm-flow-both"):
                if variant not in skip:
                    rows.append(run_cmdstan(model, name, data, seed, variant))
                    print(rows[-1], flush=True)
            if "flow_sample" not in skip:
                rows.append(run_flow_sample(model, name, data, seed))
                print(rows[-1], flush=True)
            if "amortized" not in skip and "prior_only" in PROGRAMS[name]:
                rows += run_amortized(model, name, data, seed)
                print(rows[-2:], flush=True)
    out = ROOT / "benchmarks" / "results" / "stan_wrapper"
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    cols = ["program", "seed", "variant", "grad_evals", "warmstart_evals", "seconds",
            "max_mean_error",
            "max_sd_error", "pareto_k", "metric", "warmup", "global_acceptance", "train_seconds"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in cols) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    return str(value)


if __name__ == "__main__":
    main()
