"""Benchmark: Pathfinder warm starts against default PyMC NUTS and nutpie; Pathfinder itself.

For every reference posterior (PyMC versions from ``pymc_ext.models``), in one run:

1. Samplers, each with 4 chains run one after the other (``cores=1``) and the
   warmup kept:

   - ``pymc``: default ``pm.sample(nuts_sampler="pymc")`` (tune=1000);
   - ``nutpie``: ``pm.sample(nuts_sampler="nutpie")`` (nutpie's tune=400);
   - ``nutpie-lowrank``: the same with nutpie's ``adaptation="low_rank"``;
   - ``warm``: ``pymc_ext.sample(warmstart="pathfinder")`` (PyMC NUTS, the
     default ``metric="auto"``: diagonal, dense or low-rank as
     :func:`pymc_ext.blocks.metric_choice.choose_metric` decides from
     Pathfinder's covariance, and the default short warmup; the table shows
     the choice, any fallback and any extension of the warmup);
   - ``warm-diag``: the same with ``metric="diag"``;
   - ``warm-nutpie``: ``pymc_ext.sample(warmstart="pathfinder", nuts_sampler="nutpie")``.

   For each: the total gradient evaluations (Pathfinder + warmup + draws)
   until ESS_bulk >= 400 for every posterior variable with R-hat <= 1.01,
   found on the shortest prefix of the kept draws (checked every 25 draws);
   wall time (warm compile cache) of the whole call and to that target; and
   mean/sd errors of the full run against the reference draws.

2. ``pymc_ext.pathfinder`` against ``pymc_extras.fit(method="pathfinder")``:
   wall time with a cold compile cache (a subprocess with a fresh
   ``PYTENSOR_FLAGS=base_compiledir``, so both the C and the numba caches
   start empty) and a warm one, gradient evaluations (pymc-extras exposes
   only its L-BFGS iteration counts), Pareto k and errors.

Writes ``benchmarks/results/warmstart.md`` and ``warmstart.json`` (or the
``--tag``-suffixed names).

Usage::

    python benchmarks/warmstart.py                      # everything
    python benchmarks/warmstart.py --models eight_schools,kidiq --quick
    python benchmarks/warmstart.py --no-cold --samplers pymc,warm
    python benchmarks/warmstart.py --models nes1972-nes,mesquite-logmesquite --samplers pymc,warm

``--quick`` keeps 1000 draws but skips the cold-cache Pathfinder runs and the
``warm-nutpie`` sampler. ``--samplers warm@75,warm@150,warm@300`` sweeps the
warm start's tune (the evidence for its default). The tune column shows the
warm start's own adaptation length (``warmstart_warmup``), not ``pm.sample``'s
tune, which includes the idle room for extensions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    REFERENCE_NAMES,
    fmt,
    full_reference_name,
    machine_info,
    md_row,
    short_label,
    write_json,
)

ALL_MODELS = list(REFERENCE_NAMES)


def _model_name(name: str) -> str:
    """A posterior with a PyMC version: a full name of any of them, or a short one of the eight."""
    from pymc_ext.references.models import PYMC_REFERENCE_NAMES

    return name if name in PYMC_REFERENCE_NAMES else full_reference_name(name)


ALL_SAMPLERS = ["pymc", "nutpie", "nutpie-lowrank", "warm", "warm-diag", "warm-nutpie"]
ESS_TARGET = 400.0
RHAT_TARGET = 1.01
CHECK_EVERY = 25


# ---------------------------------------------------------------------------
# Cost to reach the ESS / R-hat target
# ---------------------------------------------------------------------------
def _stacked(posterior: Any) -> np.ndarray:
    """All posterior variables as one (chain, draw, k) array."""
    cols = []
    for name in posterior.data_vars:
        arr = np.asarray(posterior[name].values, dtype=float)
        cols.append(arr.reshape(arr.shape[0], arr.shape[1], -1))
    return np.concatenate(cols, axis=2)


def _diagnostics(x: np.ndarray) -> tuple[float, float]:
    from arviz_stats.base import array_stats

    ess = array_stats.ess(np.moveaxis(x, 2, 0), method="bulk", chain_axis=-2, draw_axis=-1)
    rhat = array_stats.rhat(np.moveaxis(x, 2, 0), method="rank", chain_axis=-2, draw_axis=-1)
    ess = np.asarray(ess, dtype=float)
    rhat = np.asarray(rhat, dtype=float)
    return float(np.nanmin(ess)), float(np.nanmax(rhat))


def cost_to_target(idata: Any, warmstart_grad_evals: int = 0) -> dict[str, Any]:
    """Gradient evaluations until ESS_bulk >= 400 and R-hat <= 1.01 on a draw prefix."""
    post = _stacked(idata.posterior)
    steps = np.asarray(idata.sample_stats["n_steps"].values, dtype=float)
    warm_steps = (
        float(np.asarray(idata.warmup_sample_stats["n_steps"].values).sum())
        if "warmup_sample_stats" in idata.children
        else float("nan")
    )
    n_draws = post.shape[1]
    out: dict[str, Any] = {
        "warmup_grad_evals": warm_steps,
        "sampling_grad_evals_full": float(steps.sum()),
        "warmstart_grad_evals": int(warmstart_grad_evals),
        "draws_full": n_draws,
    }
    ess_full, rhat_full = _diagnostics(post)
    out["min_ess_bulk_full"], out["max_rhat_full"] = ess_full, rhat_full
    reached = None
    for n in list(range(CHECK_EVERY * 2, n_draws, CHECK_EVERY)) + [n_draws]:
        ess, rhat = _diagnostics(post[:, :n])
        if ess >= ESS_TARGET and rhat <= RHAT_TARGET:
            reached = (n, ess, rhat)
            break
    if reached is None:
        out.update(reached=False, draws_to_target=None)
        n = n_draws
    else:
        n, ess, rhat = reached
        out.update(reached=True, draws_to_target=n, ess_at_target=ess, rhat_at_target=rhat)
    out["sampling_grad_evals_to_target"] = float(steps[:, :n].sum())
    out["total_grad_evals_to_target"] = (
        warmstart_grad_evals + warm_steps + out["sampling_grad_evals_to_target"]
    )
    out["total_grad_evals_full"] = warmstart_grad_evals + warm_steps + float(steps.sum())
    out["warmup_fraction_full"] = warm_steps / max(out["total_grad_evals_full"], 1.0)
    return out


# ---------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------
def _sample_kwargs(tune: int | None, draws: int, chains: int, seed: int) -> dict[str, Any]:
    """The ``pm.sample`` keywords every benchmarked run shares (warmup kept, cores=1)."""
    return dict(
        tune=tune,
        draws=draws,
        chains=chains,
        cores=1,
        random_seed=seed,
        discard_tuned_samples=False,
        progressbar=False,
        compute_convergence_checks=False,
    )


def _run_sampler(kind: str, name: str, seed: int, draws: int, chains: int) -> Any:
    """Run one sampler; ``kind@N`` sets its tune to N (for the warmup sweep)."""
    import pymc as pm

    import pymc_ext
    from pymc_ext.models import reference_model

    model = reference_model(name)
    kind, _, tune = kind.partition("@")
    common = _sample_kwargs(int(tune) if tune else None, draws, chains, seed)
    with model, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "pymc":
            return pm.sample(nuts_sampler="pymc", **common)
        if kind == "nutpie":
            return pm.sample(nuts_sampler="nutpie", **common)
        if kind == "nutpie-lowrank":
            return pm.sample(
                nuts_sampler="nutpie", nuts_sampler_kwargs={"adaptation": "low_rank"}, **common
            )
        if kind == "warm":
            return pymc_ext.sample(warmstart="pathfinder", nuts_sampler="pymc", **common)
        if kind == "warm-diag":
            return pymc_ext.sample(
                warmstart="pathfinder", nuts_sampler="pymc", metric="diag", **common
            )
        if kind == "warm-nutpie":
            return pymc_ext.sample(warmstart="pathfinder", nuts_sampler="nutpie", **common)
    raise ValueError(kind)


def bench_sampler(
    kind: str,
    name: str,
    seed: int,
    draws: int,
    chains: int,
    repeats: int = 1,
    warm_cache: bool = True,
) -> dict[str, Any]:
    """One sampler on one posterior; with ``repeats`` > 1 the identical run (same
    seed, so the same draws and gradient counts) is timed that many times and
    the median wall times are reported (the machine is shared and noisy)."""
    from pymc_ext.reference import compare_to_reference

    # Warm the compile caches (PyTensor C code; pymc_ext's compiled density).
    if warm_cache:
        _run_sampler_warmup(kind, name)
    walls, to_target = [], []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        idata = _run_sampler(kind, name, seed, draws, chains)
        wall = time.perf_counter() - t0
        ss_attrs = dict(idata.sample_stats.attrs)
        ws_grads = int(ss_attrs.get("warmstart_grad_evals", 0))
        res = cost_to_target(idata, ws_grads)
        sampling_time = float(idata.posterior.attrs.get("sampling_time", np.nan))
        nuts_grads = res["warmup_grad_evals"] + res["sampling_grad_evals_full"]
        per_grad = sampling_time / max(nuts_grads, 1.0)
        fixed = wall - sampling_time
        nuts_to_target = res["total_grad_evals_to_target"] - ws_grads
        walls.append(wall)
        to_target.append(fixed + per_grad * nuts_to_target)
    res.update(
        sampler=kind,
        repeats=len(walls),
        wall_time=float(np.median(walls)),
        wall_times=walls,
        sampling_time=sampling_time,
        wall_time_to_target=float(np.median(to_target)),
        wall_times_to_target=to_target,
        tune=int(idata.posterior.attrs.get("tuning_steps", -1)),
        warmstart_pareto_k=ss_attrs.get("warmstart_pareto_k"),
        warmstart_metric=ss_attrs.get("warmstart_metric"),
        warmstart_metric_reason=ss_attrs.get("warmstart_metric_reason"),
        warmstart_fallback=ss_attrs.get("warmstart_fallback"),
        warmstart_warmup=ss_attrs.get("warmstart_warmup"),
        warmup_extensions=_max_stat(idata, "warmup_extensions"),
        divergences=int(np.asarray(idata.sample_stats["diverging"].values).sum()),
    )
    cmp = compare_to_reference(idata, name)
    res["max_mean_error"] = cmp["max_mean_error"]
    res["max_sd_error"] = cmp["max_sd_error"]
    return res


def _max_stat(idata: Any, name: str) -> int | None:
    """Largest value of an integer per-draw statistic (None where the sampler has none)."""
    ss = idata.sample_stats
    return int(np.asarray(ss[name].values).max()) if name in ss.data_vars else None


def _metric_cell(r: dict[str, Any]) -> str:
    """The warm start's metric, with what happened to the warmup (a table cell)."""
    metric = r.get("warmstart_metric")
    if not metric:
        return "–"
    cell = str(metric)
    if r.get("warmstart_fallback"):
        cell += ", fallback"
    if r.get("warmup_extensions"):
        cell += f", warmup extended x{r['warmup_extensions']}"
    return cell


_WARMED: set[tuple[str, str]] = set()


def _run_sampler_warmup(kind: str, name: str) -> None:
    """A tiny untimed run so that the timed run sees a warm compile cache."""
    key = ("nutpie" if "nutpie" in kind else "pymc", name)
    if key in _WARMED:
        return
    import pymc as pm

    from pymc_ext.models import reference_model
    from pymc_ext.pymc_model import log_density

    model = reference_model(name)
    with model, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm.sample(
            draws=5,
            tune=5,
            chains=1,
            cores=1,
            nuts_sampler=key[0],
            progressbar=False,
            compute_convergence_checks=False,
            random_seed=0,
        )
        log_density(model)
    _WARMED.add(key)


# ---------------------------------------------------------------------------
# What the idle tuning iterations cost
# ---------------------------------------------------------------------------
def bench_idle(name: str, seed: int, draws: int, chains: int) -> dict[str, Any]:
    """pm.sample(step=WarmStartNUTS(), tune=1000) against the step's own tune.

    The same Pathfinder result is reused, so only the tuning differs: the
    iterations past the step's warmup are idle (no gradient evaluation).
    """
    import pymc as pm

    from pymc_ext.models import reference_model
    from pymc_ext.warmstart_step import WarmStartNUTS

    model = reference_model(name)
    out: dict[str, Any] = {}
    with model, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ws = WarmStartNUTS(random_seed=seed).warmstart
        for label, tune in (("default_tune", None), ("tune_1000", 1000)):
            step = WarmStartNUTS(init=ws, random_seed=seed)
            idata = pm.sample(step=step, **_sample_kwargs(tune, draws, chains, seed))
            warm = idata.warmup_sample_stats
            out[label] = {
                "tune": int(idata.posterior.attrs["tuning_steps"]),
                "sampling_time": float(idata.posterior.attrs["sampling_time"]),
                "warmup_grad_evals": float(warm["n_steps"].sum()),
                "idle_iterations": int(warm["warmup_idle"].sum()),
                "draws_grad_evals": float(idata.sample_stats["n_steps"].sum()),
            }
        # Direct: a chain whose every tuning iteration is idle (warmup=0).
        step = WarmStartNUTS(init=ws, random_seed=seed, warmup=0)
        n_idle = 4000
        idata = pm.sample(
            draws=1,
            tune=n_idle,
            step=step,
            chains=1,
            cores=1,
            random_seed=seed,
            progressbar=False,
            compute_convergence_checks=False,
        )
        out["idle_only"] = {
            "idle_iterations": n_idle,
            "sampling_time": float(idata.posterior.attrs["sampling_time"]),
        }
    a, b = out["default_tune"], out["tune_1000"]
    extra = b["idle_iterations"] - a["idle_iterations"]
    out["seconds_per_idle_iteration_difference"] = (
        (b["sampling_time"] - a["sampling_time"]) / extra if extra else None
    )
    out["seconds_per_idle_iteration"] = out["idle_only"]["sampling_time"] / n_idle
    return out


# ---------------------------------------------------------------------------
# Pathfinder against pymc-extras (cold and warm compile cache, in subprocesses)
# ---------------------------------------------------------------------------
def _pathfinder_worker(impl: str, name: str, seed: int) -> dict[str, Any]:
    """Runs inside a subprocess: build the model, fit, time (imports excluded)."""
    import pymc as pm  # noqa: F401

    from pymc_ext.models import reference_model
    from pymc_ext.pathfinder_core import pathfinder
    from pymc_ext.reference import compare_to_reference

    t0 = time.perf_counter()
    model = reference_model(name)
    out: dict[str, Any] = {"impl": impl}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if impl == "pymc_ext":
            dt = pathfinder(model, random_seed=seed, progressbar=False)
            out["wall_time"] = time.perf_counter() - t0
            out["grad_evals"] = int(dt.sample_stats.attrs["grad_evals"])
            out["lbfgs_iterations"] = int(dt.pathfinder_paths["num_iterations"].values.sum())
            out["pareto_k"] = float(dt.sample_stats.attrs["pareto_k"])
            out["paths_ok"] = int(dt.sample_stats.attrs["num_paths_ok"])
            t1 = time.perf_counter()
            pathfinder(model, random_seed=seed + 1, progressbar=False)
            out["repeat_wall_time"] = time.perf_counter() - t1
        else:
            import pymc_extras as pmx

            dt = pmx.fit(method="pathfinder", model=model, random_seed=seed, progressbar=False)
            out["wall_time"] = time.perf_counter() - t0
            out["grad_evals"] = None
            out["lbfgs_iterations"] = _pmx_niter(dt)
            out["pareto_k"] = _pmx_pareto_k(dt)
            t1 = time.perf_counter()
            pmx.fit(method="pathfinder", model=model, random_seed=seed + 1, progressbar=False)
            out["repeat_wall_time"] = time.perf_counter() - t1
    cmp = compare_to_reference(dt, name)
    out["max_mean_error"] = cmp["max_mean_error"]
    out["max_sd_error"] = cmp["max_sd_error"]
    return out


def _pmx_niter(dt: Any) -> int | None:
    for group in dt.children:
        node = dt[group]
        for sub in [node, *node.children.values()]:
            if "niter" in getattr(sub, "data_vars", {}):
                return int(np.asarray(sub["niter"].values).sum())
    return None


def _pmx_pareto_k(dt: Any) -> float | None:
    for group in dt.children:
        node = dt[group]
        for sub in [node, *node.children.values()]:
            for key in ("pareto_k", "psis_pareto_k"):
                if key in getattr(sub, "data_vars", {}):
                    return float(np.asarray(sub[key].values).ravel()[0])
            if "pareto_k" in getattr(sub, "attrs", {}):
                return float(sub.attrs["pareto_k"])
    return None


def _subprocess_pathfinder(impl: str, name: str, seed: int, compiledir: str | None) -> dict:
    env = dict(os.environ)
    if compiledir is not None:
        flags = env.get("PYTENSOR_FLAGS", "")
        # base_compiledir, not compiledir: PyTensor's numba cache lives in
        # base_compiledir/numba, and the C cache below it, so both start empty.
        env["PYTENSOR_FLAGS"] = ",".join(f for f in [flags, f"base_compiledir={compiledir}"] if f)
    cmd = [sys.executable, __file__, "--pathfinder-worker", impl, name, str(seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        return {"impl": impl, "error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_pathfinder(name: str, seed: int, cold: bool) -> list[dict[str, Any]]:
    rows = []
    for impl in ("pymc_ext", "pymc_extras"):
        row: dict[str, Any] = {"impl": impl}
        if cold:
            with tempfile.TemporaryDirectory(prefix="pt_cold_") as d:
                r = _subprocess_pathfinder(impl, name, seed, d)
                row["cold_wall_time"] = r.get("wall_time")
                if "error" in r:
                    row["cold_error"] = r["error"]
        _subprocess_pathfinder(impl, name, seed, None)  # warm the default cache
        r = _subprocess_pathfinder(impl, name, seed, None)
        row.update({k: v for k, v in r.items() if k != "wall_time"})
        row["warm_wall_time"] = r.get("wall_time")
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
def write_report(results: dict[str, Any], out_dir: Path, tag: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = f"_{tag}" if tag else ""
    json_path = out_dir / f"warmstart{suffix}.json"
    md_path = out_dir / f"warmstart{suffix}.md"
    write_json(results, json_path)
    lines = [
        "# Warm-start benchmark",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']}; {results['chains']} chains run one after the other "
        f"(cores=1), {results['draws']} draws each, seed {results['seed']}. Wall times are with "
        "a warm PyTensor compile cache (an untimed tiny run first) and include compilation "
        "(nutpie: numba), Pathfinder and conversion"
        + (
            f"; median of {results['repeats']} identical runs."
            if results.get("repeats", 1) > 1
            else "; one run each (the machine is shared, so single wall times are noisy)."
        ),
        "",
        f"Target: ESS_bulk >= {ESS_TARGET:.0f} for every posterior variable and R-hat <= "
        f"{RHAT_TARGET}, on the shortest prefix of the kept draws (checked every {CHECK_EVERY}). "
        "Gradient evaluations = Pathfinder + all warmup n_steps + n_steps of the draws up to "
        "the target. Wall to target = wall - sampling time + sampling time x (NUTS gradient "
        "evaluations to target / all NUTS gradient evaluations). Errors are of the full run "
        "against the reference draws (mean error in reference sd; sd error as |sd/ref_sd - 1|).",
        "",
        *[f"Note: {note}" for note in results.get("notes", [])],
        *([""] if results.get("notes") else []),
    ]
    if any(res.get("samplers") for res in results["models"].values()):
        lines += [
            "| posterior | sampler | tune | metric | grad evals to target | vs pymc | vs nutpie | "
            "wall to target (s) | vs pymc | draws to target | warmup share | max mean err | "
            "max sd err | Pathfinder k |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
    for name, res in results["models"].items():
        rows = res.get("samplers", {})
        base = rows.get("pymc", {})
        nut = rows.get("nutpie", {})
        for kind, r in rows.items():
            if "error" in r:
                lines.append(f"| {name} | {kind} | error: {r['error'][:80]} |" + " |" * 11)
                continue
            g = r["total_grad_evals_to_target"]
            lines.append(
                md_row(
                    [
                        short_label(name),
                        kind,
                        str(r.get("warmstart_warmup") or r["tune"]),
                        _metric_cell(r),
                        fmt(g) + ("" if r["reached"] else " (not reached)"),
                        fmt(g / base["total_grad_evals_to_target"])
                        if base and "error" not in base
                        else "–",
                        fmt(g / nut["total_grad_evals_to_target"])
                        if nut and "error" not in nut
                        else "–",
                        fmt(r["wall_time_to_target"], 1),
                        fmt(r["wall_time_to_target"] / base["wall_time_to_target"])
                        if base and "error" not in base
                        else "–",
                        str(r["draws_to_target"] or "–"),
                        fmt(
                            (r["warmup_grad_evals"] + r["warmstart_grad_evals"]) / g if g else None
                        ),
                        fmt(r["max_mean_error"], 3),
                        fmt(r["max_sd_error"], 3),
                        fmt(r.get("warmstart_pareto_k")),
                    ]
                )
            )
    reasons = [
        (n, kind, r["warmstart_metric_reason"])
        for n, res in results["models"].items()
        for kind, r in res.get("samplers", {}).items()
        if r.get("warmstart_metric_reason")
    ]
    if reasons:
        lines += ["", "Why each warm start chose its metric (`warmstart_metric_reason`):", ""]
        lines += [f"- {n.split('-')[0]}, {kind}: {why}" for n, kind, why in reasons]
    idle_rows = [(n, res["idle"]) for n, res in results["models"].items() if "idle" in res]
    if idle_rows:
        lines += [
            "",
            "## Idle tuning iterations",
            "",
            "`pm.sample(step=WarmStartNUTS(), tune=1000)` against the step's own tune (the same "
            "Pathfinder result): iterations past the step's warmup return the current point "
            "without a gradient evaluation, so the warmup gradient evaluations are the same. "
            "The cost of one idle iteration is measured directly on a chain whose 4000 tuning "
            "iterations are all idle (`warmup=0`); the difference of the two full runs' "
            "sampling times is within this shared machine's noise.",
            "",
            "| posterior | tune | warmup grad evals | idle iterations | sampling time (s) | "
            "ms per idle iteration (direct) |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in idle_rows:
            for label in ("default_tune", "tune_1000"):
                x = r[label]
                direct = r.get("seconds_per_idle_iteration") if label == "tune_1000" else None
                lines.append(
                    f"| {name.split('-')[0]} | {x['tune']} | {fmt(x['warmup_grad_evals'])} | "
                    f"{x['idle_iterations']} | {fmt(x['sampling_time'], 1)} | "
                    + (fmt(1000 * direct, 3) if direct is not None and "idle_only" in r else "")
                    + " |"
                )
    pf_rows = [(n, r) for n, res in results["models"].items() for r in res.get("pathfinder", [])]
    if pf_rows:
        lines += [
            "",
            "## Pathfinder: pymc_ext vs pymc-extras",
            "",
            "Default settings of each (4 paths, 1000 draws; pymc-extras runs its paths in "
            "worker processes by default). Wall time of model build + compile + fit, imports "
            "excluded, in a fresh process; cold = empty PyTensor base compile directory (C "
            "and numba caches); repeat call = "
            "a second fit on the same model object in that process (pymc_ext reuses the "
            "compiled density cached on the model). pymc-extras does not report gradient "
            "evaluations, only L-BFGS iterations.",
            "",
            "| posterior | implementation | cold wall (s) | warm wall (s) | repeat call (s) | "
            "grad evals | L-BFGS iterations | Pareto k | max mean err | max sd err |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in pf_rows:
            lines.append(
                md_row(
                    [
                        short_label(name),
                        r["impl"],
                        fmt(r.get("cold_wall_time"), 1),
                        fmt(r.get("warm_wall_time"), 1),
                        fmt(r.get("repeat_wall_time"), 2),
                        fmt(r.get("grad_evals")),
                        fmt(r.get("lbfgs_iterations")),
                        fmt(r.get("pareto_k")),
                        fmt(r.get("max_mean_error"), 3),
                        fmt(r.get("max_sd_error"), 3),
                    ]
                )
            )
    md_path.write_text("\n".join(lines) + "\n")
    return md_path, json_path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="all", help="comma-separated (short names ok) or 'all'")
    p.add_argument("--samplers", default=",".join(ALL_SAMPLERS))
    p.add_argument("--quick", action="store_true", help="skip cold-cache runs and warm-nutpie")
    p.add_argument("--no-cold", action="store_true", help="skip cold-cache Pathfinder runs")
    p.add_argument("--no-pathfinder", action="store_true", help="skip Pathfinder comparison")
    p.add_argument("--no-idle", action="store_true", help="skip the idle-tuning measurement")
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--seed", type=int, default=20240)
    p.add_argument("--tag", default="", help="suffix for the result file names")
    p.add_argument(
        "--repeats", type=int, default=1, help="time each (identical) run this many times"
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--pathfinder-worker", nargs=3, metavar=("IMPL", "MODEL", "SEED"))
    p.add_argument("--report-only", metavar="JSON", help="rewrite the markdown from a JSON file")
    args = p.parse_args(argv)

    if args.report_only:
        results = json.loads(Path(args.report_only).read_text())
        md, _ = write_report(results, Path(args.out), args.tag)
        print(f"wrote {md}")
        return

    if args.pathfinder_worker:
        impl, name, seed = args.pathfinder_worker
        print(json.dumps(_pathfinder_worker(impl, name, int(seed)), default=float))
        return

    models = (
        ALL_MODELS if args.models == "all" else [_model_name(m) for m in args.models.split(",")]
    )
    samplers = [s for s in args.samplers.split(",") if s]
    if args.quick:
        samplers = [s for s in samplers if s != "warm-nutpie"]
    unknown = {s.partition("@")[0] for s in samplers} - set(ALL_SAMPLERS)
    if unknown:
        raise SystemExit(f"Unknown samplers {sorted(unknown)}; choose from {ALL_SAMPLERS}")
    results: dict[str, Any] = {
        "command": "python benchmarks/warmstart.py " + " ".join(argv or sys.argv[1:]),
        "machine": machine_info(),
        "draws": args.draws,
        "chains": args.chains,
        "seed": args.seed,
        "repeats": args.repeats,
        "models": {},
    }
    from pymc_ext.blocks.progress import track

    for name in track(models, description="posteriors"):
        entry: dict[str, Any] = {"samplers": {}}
        results["models"][name] = entry
        for kind in samplers:
            try:
                entry["samplers"][kind] = bench_sampler(
                    kind, name, args.seed, args.draws, args.chains, args.repeats
                )
            except Exception as err:  # report and go on with the other samplers
                entry["samplers"][kind] = {"error": f"{type(err).__name__}: {err}"}
            print(name, kind, json.dumps(entry["samplers"][kind], default=float), flush=True)
            write_report(results, Path(args.out), args.tag)
        if not (args.quick or args.no_idle):
            entry["idle"] = bench_idle(name, args.seed, args.draws, args.chains)
            print(name, "idle", json.dumps(entry["idle"], default=float), flush=True)
        if not args.no_pathfinder:
            entry["pathfinder"] = bench_pathfinder(
                name, args.seed, cold=not (args.quick or args.no_cold)
            )
            print(name, "pathfinder", json.dumps(entry["pathfinder"], default=float), flush=True)
        md, js = write_report(results, Path(args.out), args.tag)
    print(f"wrote {md} and {js}")


if __name__ == "__main__":
    main()
