"""Benchmark: can the likelihood make raw amortized draws accurate at 20 000 simulations?

The amortizer is trained by neural posterior estimation (NPE: forward KL on
the simulations). Its raw draws are 0.3-0.6 sd off NUTS on held-out datasets,
as sbi's and BayesFlow's are (``benchmarks/amortized_peers.py``). Unlike
those tools, the project has the model's true joint density
``log p(theta, y)`` at any dataset, vectorised over datasets
(``target.joint_logp_many``). This script asks whether using it in training
closes the gap, without a single extra simulation. From one NPE fit it
fine-tunes copies of the networks for the same wall time with:

- ``npe``: more NPE steps (the control);
- ``lv``: NPE plus the log-variance (self-consistency) loss of the
  importance log-weights ``log p(theta_k, y) - log q(theta_k | y)`` over K
  flow draws per training dataset (Schmitt et al., ICML 2024); only
  ``log p`` values are needed;
- ``rws``: NPE plus the reweighted wake-sleep update: ``-sum_k w_k log q``
  with self-normalised importance weights (bounded, mass-covering);
- ``rkl``: NPE plus the reverse KL (negative ELBO) through reparameterised
  draws, with ``grad log p`` from PyTensor (mode-seeking, low variance);
- ``rkl_only``: the reverse KL alone (amortized variational inference);
- ``per_dataset``: the reverse KL alone, on the evaluated datasets only (no
  amortization: the bound on what this flow can reach on them).

Every mode decays its learning rate to zero on a cosine over its time: with a
constant rate the last iterate jitters, and per-dataset reverse KL stopped at
0.06-0.6 sd instead of 0.02-0.04.

Errors are measured on held-out datasets and, to separate the amortization
gap from the objective, on as many of the training datasets.

Errors are the largest over parameters of the mean error (in reference sd)
and ``|sd ratio - 1|`` against nutpie (4 x 1000 draws) on held-out datasets,
as in ``benchmarks/amortized.py``; the raw draws are 4000 per dataset.

Usage::

    python benchmarks/amortized_finetune.py                        # negbin, about 25 minutes
    python benchmarks/amortized_finetune.py --problems eight_schools --seconds 60 --held-out 4
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import pymc as pm  # noqa: E402
from amortized import (  # noqa: E402
    _scalars,
    errors_against,
    held_out_datasets,
    make_problem,
    set_dataset,
)

from benchmarks.common import fmt, machine_info, run_problems, write_results  # noqa: E402
from pymc_ext import Amortizer  # noqa: E402
from pymc_ext.amortized.diagnostics import AmortizedDataWarning  # noqa: E402
from pymc_ext.amortized.networks import contexts  # noqa: E402
from pymc_ext.amortized.simulation import simulate  # noqa: E402

MODES = ("npe", "lv", "rws", "rkl", "rkl_only", "per_dataset")


class _LogP(torch.autograd.Function):
    """``log p(theta, y)`` as a torch function whose backward is PyTensor's gradient."""

    @staticmethod
    def forward(ctx: Any, theta: torch.Tensor, target: Any, data: dict) -> torch.Tensor:
        lp, grad = target.logp_grad_many(theta.detach().double().numpy(), data)
        ctx.save_for_backward(torch.as_tensor(grad, dtype=theta.dtype))
        return torch.as_tensor(lp, dtype=theta.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple:
        (grad,) = ctx.saved_tensors
        return grad_out[..., None] * grad, None, None


def data_batch(amortizer: Amortizer, values: np.ndarray) -> tuple[list[dict], dict]:
    """Raw vector-layout rows as dataset dicts (the data's own dtypes), and stacked."""
    target = amortizer.target
    if target._logp_fn is None:
        target._build_logp()
    dtypes = dict(zip(target.data_names(), target._data_dtypes, strict=True))
    dicts = [{n: v.astype(dtypes[n]) for n, v in d.items()}
             for d in amortizer.layout.datasets(values, None)]
    stacked = {n: np.stack([d[n] for d in dicts]) for n in amortizer.target.data_names()}
    return dicts, stacked


def finetune(amortizer: Amortizer, sims: Any, mode: str, seconds: float, args: Any,
             only: np.ndarray | None = None) -> dict[str, Any]:
    """Fine-tune ``amortizer``'s networks in place for ``seconds``; steps and final losses.

    ``only``: the rows of ``sims`` every step uses (``per_dataset``).
    """
    rng = np.random.default_rng(args.seed)
    flow, net = amortizer.flow, amortizer.summary_net
    params = list(net.parameters()) + list(flow.parameters())
    opt = torch.optim.Adam(params, lr=args.learning_rate)
    theta_all = torch.as_tensor(sims.theta, dtype=torch.float32)
    flow.train()
    net.train()
    steps, t0, last = 0, time.perf_counter(), {}
    while (elapsed := time.perf_counter() - t0) < seconds:
        for group in opt.param_groups:
            group["lr"] = args.learning_rate * 0.5 * (1 + np.cos(np.pi * elapsed / seconds))
        idx = only if only is not None else rng.choice(len(theta_all), args.batch_size,
                                                       replace=False)
        ctx = contexts(net, amortizer.layout, sims.values[idx], None, amortizer.device)
        npe = -flow.log_prob(theta_all[idx], ctx).mean()
        extra = torch.zeros(())
        if mode in ("lv", "rws"):
            dicts, _ = data_batch(amortizer, sims.values[idx])
            with torch.no_grad():
                z = flow.flow(ctx).sample((args.draws,))
                theta = z * flow.theta_std + flow.theta_mean  # (K, B, dim)
            logp = amortizer.target.joint_logp_many(theta.permute(1, 0, 2).double().numpy(), dicts)
            log_w = torch.as_tensor(logp.T, dtype=torch.float32) - flow.log_prob(theta, ctx)
            ok = torch.isfinite(log_w).all(0)
            if mode == "lv":
                extra = log_w[:, ok].var(0).mean()
            else:
                w = torch.softmax(log_w[:, ok].detach(), 0)
                extra = -(w * flow.log_prob(theta, ctx)[:, ok]).sum(0).mean()
        elif mode in ("rkl", "rkl_only", "per_dataset"):
            _, stacked = data_batch(amortizer, sims.values[idx])
            z, log_qz = flow.flow(ctx).rsample_and_log_prob((args.draws,))
            theta = (z * flow.theta_std + flow.theta_mean).permute(1, 0, 2)  # (B, K, dim)
            log_w = _LogP.apply(theta, amortizer.target, stacked) - (log_qz.T - flow._log_jac())
            ok = torch.isfinite(log_w).all(1)
            extra = -log_w[ok].mean() / amortizer.dim
        loss = (npe if mode in ("npe", "lv", "rws", "rkl") else 0.0) + args.weight * extra
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        steps += 1
        last = {"npe": float(npe.detach()), "extra": float(extra.detach())}
    flow.eval()
    net.eval()
    return {"steps": steps, **last}


def raw_errors(amortizer: Amortizer, held: list, refs: list, free: list) -> list[dict]:
    out = []
    for i, data in enumerate(held):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AmortizedDataWarning)
            raw = amortizer.sample(data, 4000, random_seed=i)
        err = errors_against(refs[i], _scalars(raw.posterior, free))
        out.append({**err, "pareto_k": float(raw.posterior.attrs["pareto_k"])})
    return out


def bench_problem(name: str, args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    model, kwargs = make_problem(name)
    kwargs.pop("summary", None)
    amortizer = Amortizer(model, **kwargs)
    if amortizer.layout.has_rows:
        raise SystemExit(f"{name}: only vector-layout problems are supported here.")
    t0 = time.perf_counter()
    amortizer.fit(num_simulations=args.num_simulations, random_seed=args.seed, progressbar=False,
                  max_seconds=args.max_seconds)
    res: dict[str, Any] = {"npe_fit_seconds": time.perf_counter() - t0,
                           "epochs": amortizer.history["epochs_run"],
                           "best_epoch": amortizer.history["best_epoch"]}
    # the same simulations as the fit (its generator simulates first)
    sims = simulate(amortizer.target, amortizer.layout, args.num_simulations,
                    np.random.default_rng(args.seed), False)
    held = held_out_datasets(name, amortizer, args.held_out, seed=args.seed + 2)
    n_held = len(held)
    train_rows = np.random.default_rng(args.seed + 5).choice(len(sims.theta), n_held,
                                                             replace=False)
    held += data_batch(amortizer, sims.values[train_rows])[0]
    free = [rv.name for rv in model.free_RVs]
    refs = []
    for i, data in enumerate(held):
        with set_dataset(name, model, data), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = pm.sample(draws=1000, chains=4, random_seed=10 + i, progressbar=False,
                            compute_convergence_checks=False)
        refs.append(_scalars(ref.posterior, free))
    res["fit"] = {"errors": raw_errors(amortizer, held, refs, free)}
    state = copy.deepcopy({"net": amortizer.summary_net.state_dict(),
                           "flow": amortizer.flow.state_dict()})
    rows = np.concatenate([
        np.arange(len(sims.theta), len(sims.theta) + n_held), train_rows])
    evaluated = sims._replace(  # the evaluated datasets appended, for per_dataset
        theta=np.concatenate([sims.theta, sims.theta[:n_held], sims.theta[train_rows]]),
        values=np.concatenate([sims.values, amortizer.layout.raw(held[:n_held])[0],
                               sims.values[train_rows]]))
    res["n_held_out"] = n_held
    for mode in args.modes:
        amortizer.summary_net.load_state_dict(state["net"])
        amortizer.flow.load_state_dict(state["flow"])
        only = rows if mode == "per_dataset" else None
        info = finetune(amortizer, evaluated if only is not None else sims, mode, args.seconds,
                        args, only)
        res[mode] = {**info, "errors": raw_errors(amortizer, held, refs, free)}
        print(f"[{name}] {mode}: {res[mode]}", flush=True)
    return res


def report(results: dict[str, Any], tag: str) -> Path:
    a = results["args"]
    lines = [
        "# Raw amortized draws: fine-tuning with the likelihood",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {machine_info()}; torch threads 1. Each mode starts from the same NPE fit "
        f"({a['num_simulations']} simulations) and runs {a['seconds']} s on the same "
        f"simulations (batch {a['batch_size']}, {a['draws']} flow draws per dataset, "
        f"learning rate {a['learning_rate']}, weight {a['weight']}).",
        "",
        "Per dataset: largest mean error (reference sd) / largest |sd ratio - 1| against "
        "nutpie, 4 x 1000 draws. Held-out datasets first (h0, h1, ...), then training "
        "datasets (t0, t1, ...): the difference is the amortization gap.",
        "",
    ]
    for name, res in results["problems"].items():
        modes = ["fit", *[m for m in a["modes"] if m in res]]
        lines += [f"## {name}", "",
                  f"NPE fit: {res['npe_fit_seconds']:.0f} s, {res['epochs']} epochs "
                  f"(best {res['best_epoch']}).", "",
                  "| dataset | " + " | ".join(modes) + " |",
                  "|---" * (len(modes) + 1) + "|"]
        n_held = res["n_held_out"]
        for i in range(len(res["fit"]["errors"])):
            cells = [f"{fmt(res[m]['errors'][i]['mean_error'])} / "
                     f"{fmt(res[m]['errors'][i]['sd_error'])}" for m in modes]
            label = f"h{i}" if i < n_held else f"t{i - n_held}"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        for label, part in (("held-out", slice(0, n_held)), ("training", slice(n_held, None))):
            med = [f"{fmt(np.median([e['mean_error'] for e in res[m]['errors'][part]]))} / "
                   f"{fmt(np.median([e['sd_error'] for e in res[m]['errors'][part]]))}"
                   for m in modes]
            lines.append(f"| median, {label} | " + " | ".join(med) + " |")
        lines.append("| steps | – | " + " | ".join(str(res[m]["steps"]) for m in modes[1:]) + " |")
        lines.append("")
    return write_results(results, f"amortized_finetune{tag}", lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--problems", default="negbin")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--num-simulations", type=int, default=20_000)
    p.add_argument("--max-seconds", type=float, default=300.0)
    p.add_argument("--seconds", type=float, default=240.0, help="fine-tuning time per mode")
    p.add_argument("--held-out", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--draws", type=int, default=16, help="flow draws per dataset and step")
    p.add_argument("--learning-rate", type=float, default=1e-3,
                   help="starting rate of the cosine decay")
    p.add_argument("--weight", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    unknown = set(args.modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown modes {sorted(unknown)}; choose from {MODES}")
    tag = f"_{args.tag}" if args.tag else ""
    results: dict[str, Any] = {
        "command": "python benchmarks/amortized_finetune.py " + " ".join(argv or sys.argv[1:]),
        "args": vars(args), "problems": {},
    }
    md = run_problems(results, args.problems.split(","),
                      lambda name: bench_problem(name, args), lambda r: report(r, tag))
    print(f"wrote {md}")


if __name__ == "__main__":
    main()
