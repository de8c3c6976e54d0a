"""Stan programs with stan_bridge: a log density, Pathfinder, and warm-started CmdStan NUTS.

Runs eight schools (non-centred) end to end:

1. ``StanModel``: the program and its data as a log density (our C++ shim,
   compiled once and cached); log density, gradient, constrain.
2. ``stan_bridge.pathfinder``: multi-path Pathfinder, as ArviZ data.
3. ``CmdStanModel.sample(warmstart="pathfinder")`` against plain
   ``cmdstanpy`` sampling: gradient evaluations (CmdStan's n_leapfrog, warmup
   included, plus Pathfinder's) and errors against the reference draws.
4. Prior predictive draws by the ``prior_only`` / ``y_rep`` convention.
5. ArviZ: summary, and a trace plot saved to ``--out`` if given.

The first run compiles the program twice (our shared library and CmdStan's
executable: a minute or two); later runs take seconds.

Usage::

    python examples/stan_cmdstanpy.py            # 4 chains x 1000 draws
    python examples/stan_cmdstanpy.py --quick    # 2 chains x 300 draws
    python examples/stan_cmdstanpy.py --out trace.png
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer chains and draws")
    parser.add_argument(
        "--out", "--plot", dest="out", default=None, help="save an ArviZ trace plot to this file"
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("PYMC_EXT_QUICK") == "1"
    chains, draws = (2, 300) if quick else (4, 1000)
    import arviz as az
    from cmdstanpy.utils.logging import get_logger as cmdstanpy_logger

    cmdstanpy_logger().setLevel(logging.WARNING)  # warnings (divergences) stay visible

    import stan_bridge
    from pymc_ext.reference import compare_to_reference
    from stan_bridge.programs import REFERENCE_POSTERIORS, reference_data, write_program

    stan_file = write_program("eight_schools")  # a .stan file; any path works
    data = reference_data("eight_schools")  # dict (a JSON path works too)
    print(f"Program: {stan_file}\n")

    # 1. The log density
    sm = stan_bridge.StanModel(stan_file, data)
    x = np.zeros(sm.dim)
    lp, grad = sm.logp_and_grad(x)
    print(f"StanModel: dim={sm.dim}, names={sm.names}")
    print(f"  log p(0) = {lp:.4f}, |grad| = {np.linalg.norm(grad):.4f}")
    print(f"  tau at x=0: {float(sm.constrain(x)['tau']):.3f} (= exp(0))\n")

    # 2. Pathfinder
    dt_pf = stan_bridge.pathfinder(sm, num_draws=500, random_seed=args.seed, progressbar=False)
    attrs = dt_pf.sample_stats.attrs
    print(
        f"Pathfinder: {attrs['grad_evals']} gradient evaluations, Pareto k = "
        f"{attrs['pareto_k']:.2f}, mean of mu = {float(dt_pf.posterior['mu'].mean()):.2f}\n"
    )

    # 3. CmdStan NUTS, warm-started and plain
    model = stan_bridge.CmdStanModel(stan_file=stan_file)
    common = dict(
        data=data,
        chains=chains,
        iter_sampling=draws,
        seed=args.seed,
        save_warmup=True,
        show_progress=False,
    )
    warm = model.sample(warmstart="pathfinder", **common)
    plain = model.sample(**common)
    ref = REFERENCE_POSTERIORS["eight_schools"]
    for label, fit in (("plain cmdstanpy", plain), ("warm start", warm)):
        leap = int(fit.method_variables()["n_leapfrog__"].sum())
        extra = 0
        if hasattr(fit, "warmstart"):
            extra = fit.warmstart.grad_evals + fit.warmstart.logp_evals
        err = compare_to_reference(az.from_cmdstanpy(fit), ref)
        print(
            f"{label:16s}: warmup {fit.num_draws_warmup:4d}, gradient evaluations "
            f"{leap + extra:7,d} (NUTS {leap:,d} + Pathfinder {extra:,d}); "
            f"max mean error {err['max_mean_error']:.3f} sd, max sd error "
            f"{err['max_sd_error']:.3f}"
        )
    print(f"warm start: Pareto k = {warm.warmstart.pareto_k:.2f}\n")

    # 4. Prior predictive (the program has `prior_only` and `y_rep`)
    params, sims = sm.prior_predictive(200, random_seed=args.seed, progressbar=False)
    print(f"prior predictive: params {params.shape}, y {sims['y'].shape}")
    print(f"  sd of simulated y per school: {np.round(sims['y'].std(0), 1)}\n")

    # 5. ArviZ
    idata = az.from_cmdstanpy(warm)
    n = idata.posterior.sizes["draw"]
    if idata.sample_stats.sizes["draw"] != n:
        # ArviZ 1.3's from_cmdstanpy keeps the warmup iterations in sample_stats when the
        # fit saved them (save_warmup=True); keep the sampling iterations only.
        import xarray as xr

        stats = idata.sample_stats.to_dataset().isel(draw=slice(-n, None))
        idata["sample_stats"] = xr.DataTree(stats.assign_coords(draw=np.arange(n)))
    print(az.summary(idata, var_names=["mu", "tau"]))
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        pc = az.plot_trace_dist(idata, var_names=["mu", "tau"])
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pc.savefig(args.out)
        print(f"trace plot written to {args.out}")


if __name__ == "__main__":
    main()
