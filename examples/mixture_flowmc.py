"""Two separated modes: NUTS chains stay where they start, FlowMC chains move between them.

The target is a mixture 0.3 N(-3, I) + 0.7 N(+3, I) in ``--dim`` dimensions,
written as a PyMC model. Both runs use ``pm.sample`` with 4 chains, one after
the other:

- PyMC's NUTS: each chain settles in one mode and never leaves it, so the
  weight of the + mode comes out as a multiple of 1/4;
- ``FlowMC``: NUTS moves plus exact independence proposals from a flow
  fitted once before the chains (``pymc_ext.FlowMC``); the chains jump
  between the modes and the weight comes out near 0.7.

It prints the weight each run finds and saves side-by-side trace and
histogram plots.

    python examples/mixture_flowmc.py --quick     # under a minute with a warm compile cache
    python examples/mixture_flowmc.py --dim 10 --draws 1000 --out mixture.png

By default the plot goes to ``mixture_flowmc.png`` next to this file.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pymc as pm  # noqa: E402
import pytensor.tensor as pt  # noqa: E402
import torch  # noqa: E402

from pymc_ext.flow_step import FlowMC  # noqa: E402  (also pymc_ext.FlowMC)

WEIGHTS = (0.3, 0.7)


def mixture_model(dim: int) -> pm.Model:
    """0.3 N(-3, I) + 0.7 N(+3, I) on R^dim."""
    with pm.Model() as model:
        x = pm.Flat("x", shape=dim)
        lo = np.log(WEIGHTS[0]) + pm.logp(pm.Normal.dist(-3.0, 1.0), x).sum()
        hi = np.log(WEIGHTS[1]) + pm.logp(pm.Normal.dist(3.0, 1.0), x).sum()
        pm.Potential("mixture", pt.logaddexp(lo, hi))
    return model


def plus_share(idata) -> np.ndarray:
    """Per chain: share of draws in the + mode."""
    return (idata.posterior["x"].mean("x_dim_0") > 0).mean("draw").values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 dimensions, short runs")
    parser.add_argument("--dim", type=int, default=None)
    parser.add_argument("--draws", type=int, default=None)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--out", default=str(Path(__file__).with_name("mixture_flowmc.png")))
    args = parser.parse_args()
    quick = args.quick or os.environ.get("PYMC_EXT_QUICK") == "1"
    dim = args.dim or (2 if quick else 6)
    draws = args.draws or (300 if quick else 1000)
    torch.set_num_threads(1)

    model = mixture_model(dim)
    common = dict(draws=draws, tune=300 if quick else 1000, chains=4, cores=1,
                  random_seed=args.seed, progressbar=False, compute_convergence_checks=False)

    t0 = time.perf_counter()
    with model:
        nuts = pm.sample(nuts_sampler="pymc", **common)
    t_nuts = time.perf_counter() - t0

    t0 = time.perf_counter()
    adapt = dict(n_rounds=4, walkers=32, first_train_steps=200, train_steps=50,
                 flow_kwargs={"transforms": 3, "hidden_features": (32, 32)}) if quick else {}
    with model, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        step = FlowMC(random_seed=args.seed, progressbar=not quick, **adapt)
        flow = pm.sample(step=step, **common)
    t_flow = time.perf_counter() - t0

    for name, idata, secs in (("NUTS  ", nuts, t_nuts), ("FlowMC", flow, t_flow)):
        shares = plus_share(idata)
        print(
            f"{name}: weight of the + mode {shares.mean():.3f} (true {WEIGHTS[1]}); "
            f"per chain {np.round(shares, 2).tolist()}; {secs:.0f} s"
        )
    acc = float(flow.sample_stats["flow_accept_prob"].mean())
    jumps = int(flow.sample_stats["flow_accepted"].sum())
    print(f"FlowMC: flow acceptance {acc:.2f}, accepted flow moves {jumps}, "
          f"adaptation global acceptance per round "
          f"{np.round(step.adaptation.history['global_acceptance'], 2).tolist()}")

    fig, axes = plt.subplots(2, 2, figsize=(11, 6), sharey="row")
    for col, (title, idata) in enumerate((("PyMC NUTS", nuts), ("FlowMC (NUTS + flow)", flow))):
        x0 = idata.posterior["x"].values[..., 0]
        for c in range(x0.shape[0]):
            axes[0, col].plot(x0[c], lw=0.6, label=f"chain {c}")
        axes[0, col].set_title(f"{title}: trace of x[0]")
        axes[0, col].set_xlabel("draw")
        pooled = x0.ravel()
        axes[1, col].hist(pooled, bins=80, density=True, alpha=0.7, label="draws")
        grid = np.linspace(-7, 7, 400)
        truth = sum(w * np.exp(-0.5 * (grid - m) ** 2) / np.sqrt(2 * np.pi)
                    for w, m in zip(WEIGHTS, (-3.0, 3.0), strict=True))
        axes[1, col].plot(grid, truth, "k", lw=1.5, label="true marginal")
        axes[1, col].set_title(f"weight of + mode: {plus_share(idata).mean():.2f} (true 0.70)")
    axes[0, 0].set_ylabel("x[0]")
    axes[1, 0].set_ylabel("density")
    axes[0, 1].legend(loc="upper right", fontsize=7)
    axes[1, 1].legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
