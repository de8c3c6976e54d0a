"""Amortized fitting: train once on eight schools' prior predictive, then many datasets fast.

What it shows:

1. ``pymc_ext.Amortizer(model).fit(...)`` on simulations from the model itself;
2. simulation-based calibration with its ECDF-difference plot (saved as PNG);
3. one new dataset in milliseconds, with the Pareto k that says whether to
   trust it, and ``correct="psis"``;
4. a thousand datasets through ``sample_many``: the time per dataset;
5. the exact answer for one dataset with ``pm.sample(step=pymc_ext.AmortizedMH(...))``.

Run ``python examples/amortized_many_datasets.py --quick`` (under a minute on
two cores) or without ``--quick`` for a better-trained network.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pymc as pm

import pymc_ext
from pymc_ext.amortized.diagnostics import AmortizedDataWarning
from pymc_ext.amortized_step import AmortizedMH  # also pymc_ext.AmortizedMH
from pymc_ext.models import EIGHT_SCHOOLS_DATA, eight_schools


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small budget (under a minute)")
    parser.add_argument("--out", default="amortized_sbc.png", help="where to save the SBC plot")
    args = parser.parse_args()
    quick = args.quick or os.environ.get("PYMC_EXT_QUICK") == "1"
    num_simulations, epochs = (2000, 10) if quick else (10000, 200)
    num_sbc, num_datasets = (100, 100) if quick else (500, 1000)

    model = eight_schools()
    t0 = time.perf_counter()
    amortizer = pymc_ext.Amortizer(model)
    # simulations are cheap here: 4000 fresh ones every epoch keep the flow from over-fitting
    amortizer.fit(num_simulations=num_simulations, epochs=epochs, random_seed=1,
                  progressbar=not quick, simulations_per_epoch=0 if quick else 4000,
                  max_seconds=None if quick else 200)
    fresh = "" if quick else " (plus 4000 fresh ones per epoch)"
    print(f"trained on {num_simulations} simulations{fresh} in {time.perf_counter() - t0:.1f} s "
          f"({amortizer.history['epochs_run']} epochs)")

    # -- calibration -----------------------------------------------------------------------
    sbc = amortizer.check_calibration(num_datasets=num_sbc, draws=100, random_seed=2)
    print(sbc)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sbc.plot(path=args.out)
    print(f"SBC plot saved to {Path(args.out).resolve()}")

    # -- one new dataset ---------------------------------------------------------------------
    y = np.array(EIGHT_SCHOOLS_DATA["y"])
    amortizer.sample({"y": y}, draws=1000, random_seed=3)  # warm up
    t0 = time.perf_counter()
    idata = amortizer.sample({"y": y}, draws=1000, random_seed=3)
    dt = time.perf_counter() - t0
    k = idata.posterior.attrs["pareto_k"]
    print(f"1000 draws for the classic data in {1e3 * dt:.1f} ms (with the Pareto k check): "
          f"k = {k:.2f}; tau mean {float(idata.posterior['tau'].mean()):.2f}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AmortizedDataWarning)
        fixed = amortizer.sample({"y": y}, draws=1000, random_seed=3, correct="psis")
    print(f"PSIS-corrected tau mean {float(fixed.posterior['tau'].mean()):.2f}")

    # -- many datasets -------------------------------------------------------------------------
    rng = np.random.default_rng(4)
    _, sims = pymc_ext.prior_predictive(model, n=num_datasets, random_seed=rng)
    datasets = [{"y": row} for row in sims["y"]]
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AmortizedDataWarning)
        many = amortizer.sample_many(datasets, draws=1000, random_seed=5)
    dt = time.perf_counter() - t0
    k = many["amortized_diagnostics"]["pareto_k"].values
    print(f"{num_datasets} datasets x 1000 draws in {dt:.2f} s "
          f"({1e3 * dt / num_datasets:.2f} ms per dataset, Pareto k included); "
          f"{np.mean(k <= 0.7):.0%} of datasets have k <= 0.7")

    # -- exact, for one dataset -----------------------------------------------------------------
    with model:
        exact = pm.sample(draws=300 if quick else 1000, tune=100, chains=2, cores=1,
                          step=AmortizedMH(amortizer), random_seed=6,
                          progressbar=False, compute_convergence_checks=False)
    acc = float(exact.sample_stats["accepted"].mean())
    print(f"AmortizedMH: acceptance {acc:.2f}; tau mean {float(exact.posterior['tau'].mean()):.2f}")


if __name__ == "__main__":
    main()
