"""Amortized inference against peers: pymc_ext's Amortizer, sbi's NPE and BayesFlow 2.1.

Issue #16, item 5. For each problem (``eight_schools``, ``negbin``: built by
``benchmarks/amortized.py``'s ``make_problem``) every method is trained on the
*same* ``--simulations`` prior-predictive simulations (the ones
``Amortizer.fit`` draws with ``--seed``), with one torch thread:

- ``pymc_ext.Amortizer``: ``benchmarks/amortized.py``'s settings (200 epochs at
  most, batch 256, its own validation split and early stopping); two rows: the
  raw flow draws and the PSIS-corrected draws (``correct="psis"``);
- ``sbi`` 0.27 NPE: its default MAF and training settings (``run_sbi`` in
  ``benchmarks/amortized.py``);
- ``BayesFlow`` 2.1 (Keras 3, torch backend): ``BasicWorkflow`` with its
  default ``CouplingFlow``, inference variables and conditions standardized,
  ``fit_offline`` on the same arrays (``--bf-epochs`` epochs, batch
  ``--bf-batch-size``, 10% held out for the validation loss, no early stopping:
  its cosine learning-rate schedule runs the fixed number of epochs).

Everything is compared in the space of the simulations' ``theta``: the model's
unconstrained parameter vector (``amortizer.target.param_names``, e.g.
``tau_log__``). The Amortizer's draws are taken in that space
(``pymc_ext.amortized.sampling.posterior_draws``) and NUTS draws are mapped to
it with ``amortizer.density.unconstrain_batch``.

Per method:

1. training seconds (wall, one torch thread; the Amortizer's excludes its
   simulation time, which is shared);
2. SBC on ``--sbc-datasets`` new prior-predictive datasets (``--sbc-draws``
   draws each): per unconstrained parameter the rank ECDF's largest gap from
   uniform, whether it stays in the simultaneous 95% band
   (``pymc_ext.amortized.calibration.simulation_based_calibration``, Bonferroni
   over parameters), and the chi-square p-value of the ranks in 10 bins; the
   worst over parameters;
3. on ``--datasets`` held-out datasets, against default ``pm.sample(draws=1000,
   chains=4, cores=1)`` on the model built for that dataset: the largest over
   parameters of ``|mean - mean_nuts| / sd_nuts`` and ``|sd / sd_nuts - 1|``
   (from ``--error-draws`` draws), and C2ST (``sbi.utils.metrics.c2st``, MLP
   classifier, 5-fold, z-scored) between ``--c2st-draws`` draws of the method
   and as many NUTS draws (0.5: indistinguishable);
4. wall time for 1000 draws on one new dataset (median of ``--repeats``).

Writes ``benchmarks/results/amortized_peers<tag>.md`` and ``.json``.

Usage::

    python benchmarks/amortized_peers.py --simulations 2000 --datasets 2 --sbc-datasets 20 \\
        --tag smoke
    python benchmarks/amortized_peers.py --tag full
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before bayesflow / keras are imported

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

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
    run_sbi,
    sbi_draws,
    sbi_draws_batched,
)
from benchmarks.common import (  # noqa: E402
    fmt,
    machine_info,
    md_row,
    run_problems,
    write_results,
)
from benchmarks.fit_many_scale import default_pm_sample, nuts_health  # noqa: E402
from pymc_ext.amortized import Amortizer  # noqa: E402
from pymc_ext.amortized.calibration import sbc_ranks, simulation_based_calibration  # noqa: E402
from pymc_ext.amortized.sampling import posterior_draws  # noqa: E402
from pymc_ext.amortized.simulation import simulate  # noqa: E402

PROBLEMS = ("eight_schools", "negbin")
METHODS = ("amortizer_raw", "amortizer_psis", "sbi_npe", "bayesflow")
LABELS = {
    "amortizer_raw": "pymc_ext Amortizer (raw)",
    "amortizer_psis": "pymc_ext Amortizer (PSIS)",
    "sbi_npe": "sbi 0.27 NPE (MAF)",
    "bayesflow": "BayesFlow 2.1 (CouplingFlow)",
}


# -- the methods: each gives draws (datasets, draws, dim) in the unconstrained space ---------
class AmortizerMethod:
    """pymc_ext's Amortizer; ``correct=None`` (raw) or ``"psis"``."""

    def __init__(self, amortizer: Amortizer, correct: str | None) -> None:
        self.amortizer, self.correct = amortizer, correct

    def draws(self, datasets: list[dict], x: np.ndarray, n: int, seed: int) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, theta, _, _ = posterior_draws(
                self.amortizer, datasets, n, seed, self.correct, diagnostics=False
            )
        return theta

    def draw_1000(self, data: dict, x: np.ndarray) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.amortizer.sample(data, 1000, random_seed=0, correct=self.correct,
                                  diagnostics=False, return_inferencedata=False)


class SbiMethod:
    """sbi's NPE (default MAF, default training), ``benchmarks/amortized.py``'s ``run_sbi``."""

    def __init__(self, theta: np.ndarray, x: np.ndarray, seed: int) -> None:
        fit = run_sbi(theta, x, seed)
        self.posterior = fit["posterior"]
        self.info = {"train_seconds": fit["train_seconds"], "epochs": fit["epochs"]}

    def draws(self, datasets: list[dict], x: np.ndarray, n: int, seed: int) -> np.ndarray:
        torch.manual_seed(seed)
        if x.shape[0] == 1:
            return sbi_draws(self.posterior, x[0], n)[None]
        return sbi_draws_batched(self.posterior, x, n)

    def draw_1000(self, data: dict, x: np.ndarray) -> None:
        sbi_draws(self.posterior, x[0], 1000)


class BayesFlowMethod:
    """BayesFlow 2.1 ``BasicWorkflow`` (CouplingFlow), offline training on fixed arrays."""

    def __init__(self, theta: np.ndarray, x: np.ndarray, args: argparse.Namespace) -> None:
        import bayesflow as bf
        import keras

        keras.utils.set_random_seed(args.seed)
        self.workflow = bf.BasicWorkflow(
            inference_network=bf.networks.CouplingFlow(),
            inference_variables=["theta"],
            inference_conditions=["x"],
            standardize=["inference_variables", "inference_conditions"],
        )
        n_val = max(1, int(0.1 * theta.shape[0]))
        perm = np.random.default_rng(args.seed).permutation(theta.shape[0])
        val, train = perm[:n_val], perm[n_val:]
        data = {"theta": theta.astype(np.float32), "x": x.astype(np.float32)}
        t0 = time.perf_counter()
        with torch.no_grad():  # BayesFlow's own default on torch (see main)
            history = self.workflow.fit_offline(
                {k: v[train] for k, v in data.items()}, epochs=args.bf_epochs,
                batch_size=args.bf_batch_size,
                validation_data={k: v[val] for k, v in data.items()}, verbose=0,
            )
        self.info = {
            "train_seconds": time.perf_counter() - t0,
            "epochs": args.bf_epochs,
            "batch_size": args.bf_batch_size,
            "final_loss": float(history.history["loss"][-1]),
            "final_val_loss": float(history.history.get("val_loss", [np.nan])[-1]),
            "best_val_epoch": int(np.argmin(history.history["val_loss"])) + 1
            if "val_loss" in history.history else None,
        }

    def draws(self, datasets: list[dict], x: np.ndarray, n: int, seed: int) -> np.ndarray:
        import keras

        keras.utils.set_random_seed(seed)
        with torch.no_grad():
            out = self.workflow.sample(num_samples=n, conditions={"x": x.astype(np.float32)})
        return np.asarray(out["theta"], dtype=float)

    def draw_1000(self, data: dict, x: np.ndarray) -> None:
        with torch.no_grad():
            self.workflow.sample(num_samples=1000, conditions={"x": x.astype(np.float32)})


# -- metrics ---------------------------------------------------------------------------------
def sbc_metrics(theta: np.ndarray, draws: np.ndarray, prior_var: np.ndarray,
                names: list[str]) -> dict[str, Any]:
    """Per parameter: ECDF gap, in the simultaneous 95% band, chi-square p (10 bins); worst."""
    from scipy import stats

    res = simulation_based_calibration(theta, draws, prior_var=prior_var, param_names=names)
    ranks = sbc_ranks(theta, draws)  # 0..L
    L = draws.shape[1]
    per = []
    for j, row in enumerate(res.summary()):
        bins = np.minimum((ranks[:, j] * 10) // (L + 1), 9)
        counts = np.bincount(bins.astype(int), minlength=10)
        per.append({"parameter": names[j], "max_ecdf_diff": row["max_ecdf_diff"],
                    "in_band": bool(row["passed"]),
                    "chi2_p": float(stats.chisquare(counts).pvalue),
                    "mean_contraction": row["mean_contraction"]})
    return {
        "num_datasets": int(theta.shape[0]), "draws": int(L), "passed": bool(res.passed),
        "failed": res.failed_parameters,
        "worst_max_ecdf_diff": max(p["max_ecdf_diff"] for p in per),
        "worst_chi2_p": min(p["chi2_p"] for p in per),
        "per_parameter": per,
    }


def c2st_score(a: np.ndarray, b: np.ndarray, seed: int) -> float:
    """sbi's C2ST (MLP classifier, 5-fold CV accuracy, z-scored on ``a``)."""
    from sbi.utils.metrics import c2st

    return float(c2st(torch.as_tensor(a, dtype=torch.float32),
                      torch.as_tensor(b, dtype=torch.float32), seed=seed, classifier="mlp"))


def datasets_with_theta(amortizer: Amortizer, n: int, seed: int) -> tuple[np.ndarray, list]:
    """``n`` prior-predictive datasets and their true unconstrained parameters."""
    thetas, out = [], []
    for theta, data in amortizer.target.simulate(n, np.random.default_rng(seed)):
        for i in range(theta.shape[0]):
            thetas.append(np.asarray(theta[i], float))
            out.append({k: np.asarray(v[i]) for k, v in data.items()})
    return np.stack(thetas[:n]), out[:n]


def median_s(fn: Any, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def quantiles(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, float)
    return {"median": float(np.median(v)), "max": float(v.max()), "n": int(v.size)}


# -- one problem -----------------------------------------------------------------------------
def bench_problem(name: str, args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {"problem": name, "load_average_start": load_average()}
    model, kwargs = make_problem(name)
    summary = kwargs.pop("summary", "auto")
    amortizer = Amortizer(model, summary=summary, **kwargs)
    names = list(amortizer.target.param_names)
    free = [rv.name for rv in model.free_RVs]
    res["parameters"] = names

    # the simulations: those Amortizer.fit draws (it takes its torch seed first, then simulates)
    rng = np.random.default_rng(args.seed)
    rng.integers(2**31 - 1)
    sims = simulate(amortizer.target, amortizer.layout, args.simulations, rng)
    theta, x = sims.theta, sims.values
    res["simulations"] = {"requested": args.simulations, "kept": int(theta.shape[0]),
                          "theta_dim": int(theta.shape[1]), "x_dim": int(x.shape[1])}
    prior_var = theta.var(axis=0)

    train: dict[str, dict[str, Any]] = {}
    methods: dict[str, Any] = {}
    train_s: dict[str, float] = {}
    first = None
    for frame in args.frames:
        a = Amortizer(model, summary=summary, frame=frame, **kwargs)
        t0 = time.perf_counter()
        a.fit(num_simulations=args.simulations, epochs=args.epochs, batch_size=256,
              random_seed=args.seed, progressbar=False)
        h = a.history
        key = "amortizer" if first is None else f"amortizer[{frame}]"
        first = first or a
        train[key] = {"train_seconds": h["training_seconds"],
                      "simulation_seconds": h["simulation_seconds"],
                      "frame_seconds": h.get("frame_seconds"), "frame": h.get("frame"),
                      "wall_seconds": time.perf_counter() - t0,
                      "epochs": h["epochs_run"], "best_epoch": h["best_epoch"]}
        print(f"[{name}] Amortizer (frame={frame}) trained: {train[key]}", flush=True)
        for correct, suffix in ((None, "raw"), ("psis", "psis")):
            label = f"{key}_{suffix}"
            LABELS.setdefault(label, f"pymc_ext Amortizer, frame={frame} ({suffix})")
            methods[label] = AmortizerMethod(a, correct)
            train_s[label] = h["training_seconds"]
    amortizer = first
    if "sbi" in args.peers:
        sbi_m = SbiMethod(theta, x, args.seed)
        train["sbi"] = sbi_m.info
        print(f"[{name}] sbi trained: {sbi_m.info}", flush=True)
        methods["sbi_npe"], train_s["sbi_npe"] = sbi_m, sbi_m.info["train_seconds"]
    if "bayesflow" in args.peers:
        bf_m = BayesFlowMethod(theta, x, args)
        train["bayesflow"] = bf_m.info
        print(f"[{name}] BayesFlow trained: {bf_m.info}", flush=True)
        methods["bayesflow"], train_s["bayesflow"] = bf_m, bf_m.info["train_seconds"]
    res["train"] = train

    # SBC datasets: new prior-predictive simulations (their own seed)
    sbc_theta, sbc_data = datasets_with_theta(amortizer, args.sbc_datasets, seed=args.seed + 7)
    sbc_x = amortizer.layout.raw(sbc_data)[0]
    # held-out datasets and their NUTS references
    held = held_out_datasets(name, amortizer, args.datasets, seed=args.seed + 2)
    refs, health, nuts_seconds = [], [], []
    for i, data in enumerate(held):
        idata, seconds = default_pm_sample(name, data, seed=args.seed + 100 + i)
        post = {n: np.asarray(idata.posterior[n].values) for n in free}
        post = {n: v.reshape(v.shape[0] * v.shape[1], *v.shape[2:]) for n, v in post.items()}
        refs.append(amortizer.density.unconstrain_batch(post))
        health.append(nuts_health(idata))
        nuts_seconds.append(seconds)
        print(f"[{name}] NUTS {i}: {seconds:.1f} s, {health[-1]}", flush=True)
    res["nuts"] = {"seconds": nuts_seconds, "health": health}

    res["methods"] = {}
    for key, method in methods.items():
        out: dict[str, Any] = {"train_seconds": train_s[key]}
        t0 = time.perf_counter()
        d = method.draws(sbc_data, sbc_x, args.sbc_draws, seed=args.seed + 11)
        out["sbc"] = sbc_metrics(sbc_theta, d, prior_var, names)
        out["sbc"]["seconds"] = time.perf_counter() - t0
        rows = []
        for i, data in enumerate(held):
            xi = amortizer.layout.raw([data])[0]
            ref = refs[i]
            d = method.draws([data], xi, max(args.error_draws, args.c2st_draws), seed=1000 + i)[0]
            err = errors_against({n: ref[:, j] for j, n in enumerate(names)},
                                 {n: d[: args.error_draws, j] for j, n in enumerate(names)})
            pick = np.random.default_rng(2000 + i).choice(ref.shape[0], args.c2st_draws,
                                                          replace=ref.shape[0] < args.c2st_draws)
            err["c2st"] = c2st_score(ref[pick], d[: args.c2st_draws], seed=i)
            err["error"] = max(err["mean_error"], err["sd_error"])
            rows.append(err)
        out["held_out"] = rows
        out["error"] = quantiles([r["error"] for r in rows])
        out["c2st"] = quantiles([r["c2st"] for r in rows])
        x0 = amortizer.layout.raw([held[0]])[0]
        out["draws_1000_seconds"] = median_s(lambda m=method, x0=x0: m.draw_1000(held[0], x0),
                                             args.repeats)
        res["methods"][key] = out
        print(f"[{name}] {key}: train {out['train_seconds']:.0f} s, SBC worst gap "
              f"{out['sbc']['worst_max_ecdf_diff']:.3f} (band {out['sbc']['passed']}, chi2 p "
              f"{out['sbc']['worst_chi2_p']:.3g}), error {out['error']}, C2ST {out['c2st']}, "
              f"1000 draws {1e3 * out['draws_1000_seconds']:.1f} ms", flush=True)
    res["load_average_end"] = load_average()
    return res


# -- report ----------------------------------------------------------------------------------
def report_lines(results: dict[str, Any]) -> list[str]:
    s = results["settings"]
    lines = [
        "# Amortized inference against peers: pymc_ext, sbi, BayesFlow", "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']}; torch threads {results['torch_threads']}, "
        f"pm.sample cores=1; whole run {fmt(results.get('total_seconds'), 0)} s. The machine is "
        "shared: load average (1 min) at the start / end of each problem below.", "",
        f"All methods use the same {s['simulations']} prior-predictive simulations. Columns:", "",
        "- **train s**: wall seconds of training, one torch thread (the Amortizer's excludes "
        "its simulation time; PSIS uses the same trained flow);",
        f"- **SBC**: {s['sbc_datasets']} new prior-predictive datasets, {s['sbc_draws']} "
        "draws each, ranks of the true unconstrained parameters; *worst gap*: the largest "
        "|rank ECDF - uniform| over parameters; *band*: every parameter inside the "
        "simultaneous 95% band (Bonferroni over parameters) or which failed; *min p*: the "
        "smallest chi-square p-value (ranks in 10 bins) over parameters;",
        f"- **error vs NUTS**: on {s['datasets']} held-out datasets, the largest over the "
        "unconstrained parameters of |mean - mean_NUTS| / sd_NUTS and |sd / sd_NUTS - 1| "
        f"({s['error_draws']} draws against default `pm.sample` 4 x 1000); median / max "
        "over datasets;",
        f"- **C2ST**: 5-fold cross-validated MLP accuracy (`sbi.utils.metrics.c2st`, "
        f"z-scored) separating {s['c2st_draws']} draws of the method from {s['c2st_draws']} "
        "NUTS draws, same datasets; 0.5 = indistinguishable; median / max over datasets "
        "(PSIS draws are resampled, so they hold repeated values);",
        f"- **1000 draws ms**: wall time for 1000 draws on one dataset (median of "
        f"{s['repeats']}; the Amortizer via `.sample(diagnostics=False, "
        "return_inferencedata=False)`, PSIS includes the density evaluations).", "",
    ]
    for r in results["problems"].values():
        tr = r["train"]
        lines += [
            f"## {r['problem']} ({len(r['parameters'])} parameters: "
            f"{', '.join(r['parameters'])})", "",
            f"Simulations kept {r['simulations']['kept']} of {r['simulations']['requested']}; "
            + "; ".join(
                f"{k}: {t['epochs']} epochs (best {t['best_epoch']}), frame "
                f"{t.get('frame') or 'prior'}"
                for k, t in tr.items() if k.startswith("amortizer")
            )
            + (f"; sbi {tr['sbi']['epochs']} epochs" if "sbi" in tr else "")
            + (f"; BayesFlow {tr['bayesflow']['epochs']} epochs "
               f"(batch {tr['bayesflow']['batch_size']}, final val loss "
               f"{fmt(tr['bayesflow']['final_val_loss'], 3)}, best at epoch "
               f"{tr['bayesflow']['best_val_epoch']})" if "bayesflow" in tr else "")
            + ". NUTS reference: "
            f"{', '.join(sorted({h['sampler'] for h in r['nuts']['health']}))}, "
            f"{sum(h['divergences'] for h in r['nuts']['health'])} divergences in all, "
            f"largest R-hat {fmt(max(h['rhat'] for h in r['nuts']['health']), 3)}, smallest "
            f"bulk ESS {fmt(min(h['ess_bulk'] for h in r['nuts']['health']), 0)}. Load "
            f"{fmt(r['load_average_start'], 1)} / {fmt(r['load_average_end'], 1)}.", "",
            md_row(["method", "train s", "SBC worst gap", "SBC band", "SBC min p",
                    "error vs NUTS (median / max)", "C2ST (median / max)", "1000 draws ms"]),
            md_row(["---"] * 8),
        ]
        for key, m in r["methods"].items():
            sbc = m["sbc"]
            band = "pass" if sbc["passed"] else "FAIL: " + ", ".join(sbc["failed"])
            lines.append(md_row([
                LABELS[key], fmt(m["train_seconds"], 0), fmt(sbc["worst_max_ecdf_diff"], 3),
                band, fmt(sbc["worst_chi2_p"], 3),
                f"{fmt(m['error']['median'], 3)} / {fmt(m['error']['max'], 3)}",
                f"{fmt(m['c2st']['median'], 3)} / {fmt(m['c2st']['max'], 3)}",
                fmt(1e3 * m["draws_1000_seconds"], 1),
            ]))
        lines += ["", "Per held-out dataset: error vs NUTS / C2ST, and the NUTS reference's "
                  "largest R-hat, smallest bulk ESS and divergences.", "",
                  md_row(["dataset", *(LABELS[k] for k in r["methods"]), "NUTS R-hat / ESS / div"]),
                  md_row(["---"] * (len(r["methods"]) + 2))]
        for i, h in enumerate(r["nuts"]["health"]):
            cells = [f"{fmt(m['held_out'][i]['error'], 2)} / {fmt(m['held_out'][i]['c2st'], 2)}"
                     for m in r["methods"].values()]
            lines.append(md_row([str(i), *cells, f"{fmt(h['rhat'], 3)} / {fmt(h['ess_bulk'], 0)}"
                                 f" / {h['divergences']}"]))
        lines.append("")
    return lines


def write_report(results: dict[str, Any], tag: str) -> Path:
    return write_results(results, f"amortized_peers{tag}", report_lines(results))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problems", default=",".join(PROBLEMS), help=f"comma-separated: {PROBLEMS}")
    p.add_argument("--simulations", type=int, default=20_000, help="training simulations")
    p.add_argument("--datasets", type=int, default=10, help="held-out datasets with NUTS")
    p.add_argument("--sbc-datasets", type=int, default=200)
    p.add_argument("--sbc-draws", type=int, default=100)
    p.add_argument("--error-draws", type=int, default=4000)
    p.add_argument("--c2st-draws", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=200, help="Amortizer: at most")
    p.add_argument("--bf-epochs", type=int, default=100, help="BayesFlow: fixed")
    p.add_argument("--bf-batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--frames", default="auto",
                   help="comma-separated Amortizer(frame=...) settings, one amortizer each")
    p.add_argument("--peers", default="sbi,bayesflow", help="comma-separated; '' for none")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tag", default="")
    p.add_argument("--from-json", default=None,
                   help="only rewrite the markdown report from this results JSON")
    args = p.parse_args(argv)
    unknown = set(args.problems.split(",")) - set(PROBLEMS)
    if unknown:
        p.error(f"unknown problems {sorted(unknown)}; choose from {PROBLEMS}")
    args.frames = [f for f in args.frames.split(",") if f]
    args.peers = [f for f in args.peers.split(",") if f]
    if args.tag and not args.tag.startswith("_"):
        args.tag = "_" + args.tag
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.from_json:
        import json

        results = json.loads(Path(args.from_json).read_text())
        print(write_report(results, results["settings"]["tag"]).read_text())
        return
    torch.set_num_threads(1)
    import bayesflow
    import keras
    import sbi

    # importing bayesflow on torch turns autograd off process-wide; pymc_ext and sbi train
    # with torch's default (on), BayesFlow's calls run under no_grad as its own default
    torch.set_grad_enabled(True)

    results: dict[str, Any] = {
        "command": "python benchmarks/amortized_peers.py " + " ".join(argv or sys.argv[1:]),
        "machine": f"{machine_info()}, torch {torch.__version__}, pymc {pm.__version__}, "
        f"pymc_ext {pymc_ext.__version__}, sbi {sbi.__version__}, bayesflow "
        f"{bayesflow.__version__}, keras {keras.__version__} ({keras.backend.backend()})",
        "torch_threads": torch.get_num_threads(),
        "settings": vars(args),
        "problems": {},
    }
    md = run_problems(results, args.problems.split(","), lambda n: bench_problem(n, args),
                      lambda r: write_report(r, args.tag))
    print(md.read_text())


if __name__ == "__main__":
    main()
