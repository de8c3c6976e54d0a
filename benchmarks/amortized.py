"""Benchmark: amortized fitting (pymc_ext.Amortizer) against NUTS and against sbi's NPE.

Problems (PyMC models):

- ``eight_schools``: the non-centred eight schools model (10 parameters, 8
  observations, identity summary);
- ``regression``: ``y_i ~ N(alpha + beta x_i, sigma)`` with ``N`` drawn from
  20..200 and ``x_i ~ N(0, 1)`` for every simulation (DeepSet summary, the
  variable-N path);
- ``regression_n20``: the same with a fixed design of ``N = 20`` (the setting
  of the sbi anchor in the issue: 3 parameters, 20 observations);
- ``negbin``: the issue's negative-binomial regression, ``y_i ~ NB(exp(alpha +
  beta x_i), phi)`` with 3 parameters and a fixed design of ``N = 30``
  (identity summary).

For each, in one run:

1. **Training**: ``Amortizer.fit(num_simulations)``; simulation and training
   seconds, epochs.
2. **SBC**: ``check_calibration(num_datasets, draws=100)``: pass/fail of the
   simultaneous ECDF band test, largest ECDF gap, mean contraction; the
   ECDF-difference plot is saved as a PNG.
3. **One new dataset, 1000 draws**: median wall time of the flow alone, of
   ``.sample(diagnostics=False)`` (returns a DataTree) and of ``.sample()``
   (true density + Pareto k); against a default ``pm.sample()`` (nutpie when
   installed, as PyMC 6 picks it; compile cache warm) on the same dataset.
4. **Many datasets**: ``sample_many`` over ``num_many`` prior-predictive
   datasets, 1000 draws each, with the Pareto k of every dataset.
5. **Held-out datasets**: for each, PyMC NUTS (4 chains x 1000 draws) as the
   reference; the raw amortized posterior, the PSIS-corrected one and
   ``pm.sample(step=AmortizedMH(...))`` (4 chains x 2500 draws, 200 tune; a step
   is cheap, and an independence sampler needs more draws for the same ESS):
   the largest mean error (in reference sd) and sd error over the scalar
   parameters, the Pareto k, the MH acceptance rate.
6. **sbi NPE** (``sbi`` 0.27, its default MAF, default training settings) on
   the *same simulations* (same budget, unconstrained parameters, raw data):
   training time, SBC on the same datasets, time for 1000 draws and errors
   against NUTS on the same held-out datasets. Fixed-size problems only (sbi's
   default estimator takes a fixed-length ``x``).

Writes ``benchmarks/results/amortized.md`` and ``amortized.json`` (or with
``--tag``) and ``benchmarks/results/amortized_sbc_<problem>.png``.

Usage::

    python benchmarks/amortized.py                 # all problems, full budgets
    python benchmarks/amortized.py --quick         # eight_schools, small budgets
    python benchmarks/amortized.py --problems regression --num-simulations 20000

Timings are only comparable within one run on one machine; the report gives
the load average during the run (the benchmark machine is shared).
"""

from __future__ import annotations

import argparse
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

import pymc as pm  # noqa: E402
import torch  # noqa: E402

import pymc_ext  # noqa: E402
from pymc_ext.amortized import Amortizer  # noqa: E402
from pymc_ext.amortized.sampling import SBC_CHUNK, draw  # noqa: E402
from pymc_ext.amortized.simulation import (  # noqa: E402
    join_blocks,
    simulate,
    simulate_blocks,
    simulation_chunks,
)
from pymc_ext.amortized_diagnostics import AmortizedDataWarning  # noqa: E402
from pymc_ext.amortized_step import AmortizedMH  # noqa: E402
from pymc_ext.calibration import simulation_based_calibration  # noqa: E402
from pymc_ext.models import eight_schools  # noqa: E402

PROBLEMS = ("eight_schools", "regression", "regression_n20", "negbin")


# -- problems -------------------------------------------------------------------------------
def regression_model(n: int = 20, seed: int = 0) -> pm.Model:
    """The regression with ``x`` and ``y`` as pm.Data, so a dataset is set with pm.set_data."""
    rng = np.random.default_rng(seed)
    with pm.Model() as model:
        x = pm.Data("x", rng.normal(size=n))
        y_obs = pm.Data("y_obs", np.zeros(n))
        alpha = pm.Normal("alpha", 0.0, 1.0)
        beta = pm.Normal("beta", 0.0, 1.0)
        sigma = pm.HalfNormal("sigma", 1.0)
        pm.Normal("y", alpha + beta * x, sigma, observed=y_obs, shape=x.shape)
    return model


def negbin_model(n: int = 30, seed: int = 0) -> pm.Model:
    """The issue's negative-binomial regression: 3 parameters, ``n`` counts, a fixed design."""
    rng = np.random.default_rng(seed)
    with pm.Model() as model:
        x = pm.Data("x", rng.normal(size=n))
        y_obs = pm.Data("y_obs", np.zeros(n, dtype="int64"))
        alpha = pm.Normal("alpha", 1.5, 1.0)  # log of the mean count at x = 0
        beta = pm.Normal("beta", 0.0, 0.5)
        phi = pm.Gamma("phi", 2.0, 0.5)  # dispersion: var = mu + mu^2 / phi
        pm.NegativeBinomial("y", mu=pm.math.exp(alpha + beta * x), alpha=phi, observed=y_obs,
                            shape=x.shape)
    return model


def random_design(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Covariates for one block of simulations: N in 20..200, x ~ N(0, 1)."""
    return {"x": rng.normal(size=int(rng.integers(20, 201)))}


def make_problem(name: str) -> tuple[pm.Model, dict[str, Any]]:
    if name == "eight_schools":
        return eight_schools(), {}
    if name == "regression":
        return regression_model(50), {
            "covariates": ["x"], "covariate_sampler": random_design, "summary": "deepset"
        }
    if name == "regression_n20":
        return regression_model(20), {}
    if name == "negbin":
        return negbin_model(), {}
    raise SystemExit(f"unknown problem {name!r}; choose from {PROBLEMS}")


def set_dataset(name: str, model: pm.Model, data: dict[str, np.ndarray]) -> pm.Model:
    """A model holding ``data`` as its observed values (for NUTS and AmortizedMH)."""
    if name == "eight_schools":
        from pymc_ext.models import EIGHT_SCHOOLS_DATA

        return eight_schools({**EIGHT_SCHOOLS_DATA, "y": list(map(float, data["y"]))})
    new = {"y_obs": data["y"]}
    if "x" in data:
        new["x"] = data["x"]
    pm.set_data(new, model=model)
    return model


def held_out_datasets(name: str, amortizer: Amortizer, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for theta, data in amortizer.target.simulate(n, rng):
        for i in range(theta.shape[0]):
            out.append({k: np.asarray(v[i]) for k, v in data.items()})
    return out[:n]


# -- helpers ----------------------------------------------------------------------------------
def _scalars(posterior: Any, names: list[str]) -> dict[str, np.ndarray]:
    out = {}
    for name in names:
        values = np.asarray(posterior[name].values)
        flat = values.reshape(values.shape[0] * values.shape[1], -1)
        for j in range(flat.shape[1]):
            out[f"{name}[{j}]" if flat.shape[1] > 1 else name] = flat[:, j]
    return out


def errors_against(reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict:
    mean_err = max(abs(other[k].mean() - v.mean()) / v.std() for k, v in reference.items())
    sd_err = max(abs(other[k].std() / v.std() - 1) for k, v in reference.items())
    return {"mean_error": float(mean_err), "sd_error": float(sd_err)}


def median_ms(fn, repeats: int, clock=time.perf_counter) -> float:
    """Median milliseconds of ``fn()``: wall time, or CPU time with ``time.process_time``."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return 1e3 * float(np.median(times))


def load_average() -> float:
    try:
        return float(os.getloadavg()[0])
    except OSError:
        return float("nan")


# -- sbi -------------------------------------------------------------------------------------
def run_sbi(theta: np.ndarray, x: np.ndarray, seed: int) -> dict[str, Any]:
    from sbi.inference import NPE

    torch.manual_seed(seed)
    inference = NPE(prior=None, density_estimator="maf", show_progress_bars=False)
    t0 = time.perf_counter()
    inference.append_simulations(
        torch.as_tensor(theta, dtype=torch.float32), torch.as_tensor(x, dtype=torch.float32)
    )
    estimator = inference.train(show_train_summary=False)
    seconds = time.perf_counter() - t0
    posterior = inference.build_posterior(estimator)
    return {"posterior": posterior, "train_seconds": seconds,
            "epochs": int(inference._summary["epochs_trained"][-1])}


def sbi_draws(posterior: Any, x: np.ndarray, draws: int) -> np.ndarray:
    out = posterior.sample(
        (draws,), x=torch.as_tensor(x, dtype=torch.float32), show_progress_bars=False
    )
    return out.double().numpy()


def sbi_draws_batched(posterior: Any, X: np.ndarray, draws: int) -> np.ndarray:
    out = posterior.sample_batched(
        (draws,), x=torch.as_tensor(X, dtype=torch.float32), show_progress_bars=False
    )
    return out.double().numpy().transpose(1, 0, 2)  # (datasets, draws, dim)


# -- one problem ------------------------------------------------------------------------------
def bench_problem(name: str, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    res: dict[str, Any] = {"problem": name, "load_average_start": load_average()}
    model, kwargs = make_problem(name)
    summary = kwargs.pop("summary", "auto")
    amortizer = Amortizer(model, summary=summary, frame=args.frame, **kwargs)
    res["summary_net"] = amortizer.summary_kind
    res["dim"] = amortizer.dim
    print(f"[{name}] {amortizer}", flush=True)

    # 1. training
    t0 = time.perf_counter()
    amortizer.fit(
        num_simulations=args.num_simulations, epochs=args.epochs, batch_size=args.batch_size,
        random_seed=args.seed, progressbar=False,
        simulations_per_epoch=args.simulations_per_epoch, max_seconds=args.max_seconds,
    )
    h = amortizer.history
    res["train"] = {
        "num_simulations": args.num_simulations,
        "seconds_total": time.perf_counter() - t0,
        "simulation_seconds": h["simulation_seconds"],
        "training_seconds": h["training_seconds"],
        "epochs_run": h["epochs_run"],
        "best_epoch": h["best_epoch"],
        "best_val_loss": h["best_val_loss"],
        "frame": h.get("frame"),
        "frame_seconds": h.get("frame_seconds"),
    }
    print(f"[{name}] trained: {res['train']}", flush=True)
    amortizer.save(args.save_path)  # AmortizedMH on held-out data loads it into new models

    # 2. SBC
    sbc = amortizer.check_calibration(
        num_datasets=args.num_sbc, draws=100, random_seed=args.seed + 1
    )
    png = out_dir / f"amortized_sbc_{name}{args.tag}.png"
    sbc.plot(path=str(png))
    res["sbc"] = {
        "passed": sbc.passed,
        "num_datasets": sbc.num_datasets,
        "failed": sbc.failed_parameters,
        "max_ecdf_diff": max(r["max_ecdf_diff"] for r in sbc.summary()),
        "mean_contraction": float(np.mean([r["mean_contraction"] for r in sbc.summary()])),
        "plot": os.path.relpath(png, ROOT),
        "seconds": sbc.info["seconds"],
    }
    print(f"[{name}] SBC: {res['sbc']}", flush=True)

    # 3. one new dataset
    held = held_out_datasets(name, amortizer, args.num_held_out, seed=args.seed + 2)
    data0 = held[0]
    _, ctx = amortizer.prepare([data0])

    def raw_with_k() -> Any:
        return amortizer.sample(data0, 1000, random_seed=0, return_inferencedata=False)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AmortizedDataWarning)
        res["speed"] = {
            "flow_only_ms": median_ms(lambda: draw(amortizer, ctx, 1000, 0), args.repeats),
            "sample_no_diagnostics_ms": median_ms(
                lambda: amortizer.sample(data0, 1000, random_seed=0, diagnostics=False),
                args.repeats,
            ),
            "sample_with_pareto_k_ms": median_ms(
                lambda: amortizer.sample(data0, 1000, random_seed=0), args.repeats
            ),
            # NumPy output (no DataTree), with the Pareto k: wall and CPU time
            "sample_numpy_with_k_ms": median_ms(raw_with_k, args.repeats),
            "sample_numpy_with_k_cpu_ms": median_ms(raw_with_k, args.repeats, time.process_time),
        }
    nuts_model = set_dataset(name, model, data0)
    with nuts_model, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm.sample(progressbar=False, random_seed=1, compute_convergence_checks=False)
        t0 = time.perf_counter()
        pm.sample(progressbar=False, random_seed=2, compute_convergence_checks=False)
        res["speed"]["pm_sample_default_s"] = time.perf_counter() - t0
    res["speed"]["ratio_default_pm_sample_to_sample_with_k"] = (
        1e3 * res["speed"]["pm_sample_default_s"] / res["speed"]["sample_with_pareto_k_ms"]
    )
    print(f"[{name}] speed: {res['speed']}", flush=True)

    # 4. many datasets
    many = held_out_datasets(name, amortizer, args.num_many, seed=args.seed + 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AmortizedDataWarning)
        amortizer.sample_many(many[:2], draws=10, random_seed=0)  # compile the density first
        t0 = time.perf_counter()
        amortizer.sample_many(
            many, draws=1000, random_seed=4, diagnostics=False, return_inferencedata=False
        )
        t_raw = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        dt = amortizer.sample_many(many, draws=1000, random_seed=4)
        t_k, c_k = time.perf_counter() - t0, time.process_time() - c0
    k = dt["amortized_diagnostics"]["pareto_k"].values
    res["many"] = {
        "num_datasets": len(many),
        "seconds_no_diagnostics": t_raw,
        "seconds_with_pareto_k": t_k,
        "cpu_seconds_with_pareto_k": c_k,
        "share_k_below_0_7": float(np.mean(k <= 0.7)),
        "median_k": float(np.nanmedian(k)),
    }
    print(f"[{name}] many: {res['many']}", flush=True)

    # 5. held-out datasets: NUTS reference, raw / PSIS / AmortizedMH
    free = [rv.name for rv in model.free_RVs]
    rows, refs = [], []
    for i, data in enumerate(held):
        m = set_dataset(name, model, data)
        with m, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = pm.sample(draws=1000, chains=4, cores=1, nuts_sampler="pymc", random_seed=10 + i,
                            progressbar=False, compute_convergence_checks=False)
        ref_s = _scalars(ref.posterior, free)
        refs.append(ref_s)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AmortizedDataWarning)
            raw = amortizer.sample(data, 4000, random_seed=i)
            psis = amortizer.sample(data, 4000, random_seed=i, correct="psis")
        a = amortizer if m is model else Amortizer.load(args.save_path, m)
        with m, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            mh = pm.sample(draws=2500, tune=200, chains=4, cores=1, step=AmortizedMH(a),
                           random_seed=20 + i, progressbar=False, compute_convergence_checks=False)
            mh_seconds = time.perf_counter() - t0
        row = {
            "dataset": i,
            "pareto_k": raw.posterior.attrs["pareto_k"],
            "raw_shift": raw.posterior.attrs.get("raw_shift"),
            "raw": errors_against(ref_s, _scalars(raw.posterior, free)),
            "psis": errors_against(ref_s, _scalars(psis.posterior, free)),
            "amortized_mh": errors_against(ref_s, _scalars(mh.posterior, free)),
            "mh_acceptance": float(mh.sample_stats["accepted"].mean()),
            "mh_seconds": mh_seconds,
        }
        rows.append(row)
        print(f"[{name}] held-out {i}: {row}", flush=True)
    res["held_out"] = rows

    # 6. sbi NPE on the same simulations
    if args.sbi and amortizer.layout.kind == "vector":
        res["sbi"] = bench_sbi(amortizer, held, refs, free, args)
    res["load_average_end"] = load_average()
    return res


def bench_sbi(amortizer, held, refs, free, args) -> dict[str, Any]:
    """sbi's NPE on the same simulations; errors against the NUTS references ``refs``."""
    rng = np.random.default_rng(args.seed)  # the same simulations as Amortizer.fit:
    rng.integers(2**31 - 1)  # fit draws its torch seed first, then simulates
    theta, values, _, _ = simulate(
        amortizer.target, amortizer.layout, args.num_simulations, rng
    )
    fit = run_sbi(theta, values, args.seed)
    posterior = fit["posterior"]
    out: dict[str, Any] = {"train_seconds": fit["train_seconds"], "epochs": fit["epochs"]}
    # SBC on the datasets our check_calibration used (its chunks, each from its own seed)
    rng = np.random.default_rng(args.seed + 1)
    sbc_sims = [
        join_blocks(simulate_blocks(amortizer.target, amortizer.layout, k, seed), amortizer.layout)
        for k, seed in simulation_chunks(args.num_sbc, SBC_CHUNK, rng)
    ]
    theta_sbc = np.concatenate([s.theta for s in sbc_sims])
    values_sbc = np.concatenate([s.values for s in sbc_sims])
    t0 = time.perf_counter()
    draws = sbi_draws_batched(posterior, values_sbc, 100)
    sbc = simulation_based_calibration(
        theta_sbc, draws, prior_var=theta.var(axis=0), param_names=amortizer.target.param_names
    )
    out["sbc"] = {
        "passed": sbc.passed,
        "failed": sbc.failed_parameters,
        "max_ecdf_diff": max(r["max_ecdf_diff"] for r in sbc.summary()),
        "seconds": time.perf_counter() - t0,
    }
    x0 = amortizer.layout.raw([held[0]])[0][0]
    out["draws_1000_ms"] = median_ms(lambda: sbi_draws(posterior, x0, 1000), args.repeats)
    rows = []
    for ref_s, data in zip(refs, held, strict=True):
        x = amortizer.layout.raw([data])[0][0]
        d = sbi_draws(posterior, x, 4000)
        post = amortizer.density.constrain_batch(d)
        sbi_s = {}
        for n in free:
            flat = post[n].reshape(post[n].shape[0], -1)
            for j in range(flat.shape[1]):
                sbi_s[f"{n}[{j}]" if flat.shape[1] > 1 else n] = flat[:, j]
        rows.append(errors_against(ref_s, sbi_s))
    out["held_out"] = rows
    print(f"sbi: {out}", flush=True)
    return out


# -- report -----------------------------------------------------------------------------------
def _f(x: Any, nd: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "pass" if x else "FAIL"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def write_report(results: dict[str, Any], out_dir: Path, tag: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"amortized{tag}.json").write_text(json.dumps(results, indent=2, default=float))
    lines = [
        "# Amortized fitting benchmark",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']}; torch threads {results['torch_threads']}; load average "
        "(1 min) at the start / end of each problem in the tables (the machine is shared).",
        "",
        "## Training, calibration, speed",
        "",
        "| problem | summary | sims | train s (sim + fit) | epochs | SBC | max ECDF gap | "
        "1000 draws: flow / .sample / +Pareto k / NumPy +k (ms) | NumPy +k CPU ms | "
        "default pm.sample (s) | ratio | sample_many (s, with k) | k <= 0.7 | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["problems"].values():
        tr, sp, mn = r["train"], r["speed"], r["many"]
        lines.append(
            f"| {r['problem']} | {r['summary_net']} | {tr['num_simulations']} | "
            f"{_f(tr['seconds_total'], 0)} ({_f(tr['simulation_seconds'], 0)} + "
            f"{_f(tr['training_seconds'], 0)}) | {tr['epochs_run']} | "
            f"{_f(r['sbc']['passed'])} ({r['sbc']['num_datasets']}) | "
            f"{_f(r['sbc']['max_ecdf_diff'], 3)} | {_f(sp['flow_only_ms'], 1)} / "
            f"{_f(sp['sample_no_diagnostics_ms'], 1)} / {_f(sp['sample_with_pareto_k_ms'], 1)} / "
            f"{_f(sp.get('sample_numpy_with_k_ms'), 1)} | "
            f"{_f(sp.get('sample_numpy_with_k_cpu_ms'), 1)} | "
            f"{_f(sp['pm_sample_default_s'], 1)} | "
            f"{_f(sp['ratio_default_pm_sample_to_sample_with_k'], 0)}x | "
            f"{mn['num_datasets']}: {_f(mn['seconds_with_pareto_k'], 1)} "
            f"(CPU {_f(mn.get('cpu_seconds_with_pareto_k'), 1)}; "
            f"{_f(mn['seconds_no_diagnostics'], 1)} NumPy without k) | "
            f"{_f(100 * mn['share_k_below_0_7'], 0)}% | "
            f"{_f(r['load_average_start'], 1)} / {_f(r['load_average_end'], 1)} |"
        )
    lines += [
        "",
        "## Held-out datasets: errors against PyMC NUTS (4 x 1000 draws)",
        "",
        "Largest error over the scalar parameters: mean error in reference sd, |sd ratio - 1|.",
        "",
        "| problem | dataset | Pareto k | raw amortized | raw error estimated from the weights "
        "(`raw_shift`) | PSIS-corrected | AmortizedMH | MH acceptance | sbi NPE |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["problems"].values():
        sbi_rows = r.get("sbi", {}).get("held_out", [])
        for row in r["held_out"]:
            i = row["dataset"]
            s = sbi_rows[i] if i < len(sbi_rows) else None
            lines.append(
                f"| {r['problem']} | {i} | {_f(row['pareto_k'])} | "
                f"{_f(row['raw']['mean_error'])} / {_f(row['raw']['sd_error'])} | "
                f"{_f(row.get('raw_shift'))} | "
                f"{_f(row['psis']['mean_error'])} / {_f(row['psis']['sd_error'])} | "
                f"{_f(row['amortized_mh']['mean_error'])} / "
                f"{_f(row['amortized_mh']['sd_error'])} | "
                f"{_f(row['mh_acceptance'])} | "
                + (f"{_f(s['mean_error'])} / {_f(s['sd_error'])} |" if s else "- |")
            )
    sbi_problems = [r for r in results["problems"].values() if "sbi" in r]
    if sbi_problems:
        lines += [
            "",
            "## Side by side with sbi's NPE (same simulations)",
            "",
            "| problem | method | train s | epochs | SBC | max ECDF gap | 1000 draws (ms) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in sbi_problems:
            tr, s = r["train"], r["sbi"]
            lines.append(
                f"| {r['problem']} | pymc_ext.Amortizer (NSF) | {_f(tr['training_seconds'], 0)} | "
                f"{tr['epochs_run']} | {_f(r['sbc']['passed'])} | "
                f"{_f(r['sbc']['max_ecdf_diff'], 3)} | {_f(r['speed']['flow_only_ms'], 1)} |"
            )
            lines.append(
                f"| {r['problem']} | sbi 0.27 NPE (MAF) | {_f(s['train_seconds'], 0)} | "
                f"{s['epochs']} | {_f(s['sbc']['passed'])} | {_f(s['sbc']['max_ecdf_diff'], 3)} | "
                f"{_f(s['draws_1000_ms'], 1)} |"
            )
    md = out_dir / f"amortized{tag}.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="eight_schools, small budgets")
    p.add_argument("--problems", default=None, help=f"comma-separated, from {PROBLEMS}")
    p.add_argument("--num-simulations", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--simulations-per-epoch", type=int, default=0,
                   help="fresh simulations every epoch (Amortizer.fit's simulations_per_epoch)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="training time budget (Amortizer.fit's max_seconds)")
    p.add_argument("--num-sbc", type=int, default=None)
    p.add_argument("--num-many", type=int, default=None)
    p.add_argument("--num-held-out", type=int, default=None)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--no-sbi", dest="sbi", action="store_false")
    p.add_argument("--frame", default="auto", choices=["auto", "laplace", "prior"],
                   help="Amortizer(frame=...): per-dataset Laplace frames or the prior's")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tag", default="")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: small networks gain little from more when busy)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    quick = args.quick
    torch.set_num_threads(args.threads)
    problems = (args.problems or ("eight_schools" if quick else ",".join(PROBLEMS))).split(",")
    args.num_simulations = args.num_simulations or (5000 if quick else 20000)
    args.epochs = args.epochs or (40 if quick else 200)
    args.num_sbc = args.num_sbc or (200 if quick else 500)
    args.num_many = args.num_many or (200 if quick else 1000)
    args.num_held_out = args.num_held_out or (2 if quick else 4)
    if args.tag and not args.tag.startswith("_"):
        args.tag = "_" + args.tag
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.sbi:
        try:
            import sbi  # noqa: F401
        except ImportError:
            print("sbi is not installed: skipping the sbi comparison (pip install sbi==0.27.0)")
            args.sbi = False
    results: dict[str, Any] = {
        "command": "python benchmarks/amortized.py " + " ".join(argv or sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}, "
        f"torch {torch.__version__}, pymc {pm.__version__}, pymc_ext {pymc_ext.__version__}",
        "torch_threads": torch.get_num_threads(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "problems": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in problems:
            args.save_path = str(Path(tmp) / f"amortizer_{name}.pt")
            results["problems"][name] = bench_problem(name, args, out_dir)
            write_report(results, out_dir, args.tag)
    md = write_report(results, out_dir, args.tag)
    print(md.read_text())


if __name__ == "__main__":
    main()
