"""The torch parts on a GPU: the same runs on CUDA and on the CPU, side by side.

Nothing in the project needs a GPU; the flows and the amortizer go to the
first CUDA device when torch sees one (:func:`pymc_ext.blocks.torch_settings.torch_device`).
This script checks that every torch path works there and gives the same
answers within Monte Carlo error, and reports the wall times:

- flow MCMC on a two-mode mixture (flow fits by forward KL, flow proposals);
- an amortizer trained on a small PyMC model, then raw, PSIS and MH draws.

Run it on a machine with a GPU (the CPU rows run with CUDA hidden)::

    python benchmarks/gpu_check.py            # both devices, one table
    python benchmarks/gpu_check.py --quick    # smaller budgets
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def _mixture():
    from pymc_ext.density import FunctionLogDensity

    dim, w = 6, 0.3
    shift = np.zeros(dim)
    shift[0] = 4.0

    def logp(X):
        a = -0.5 * ((X + shift) ** 2).sum(-1) + np.log(w)
        b = -0.5 * ((X - shift) ** 2).sum(-1) + np.log(1 - w)
        return np.logaddexp(a, b) - 0.5 * dim * np.log(2 * np.pi)

    def grad(X):
        a = -0.5 * ((X + shift) ** 2).sum(-1) + np.log(w)
        b = -0.5 * ((X - shift) ** 2).sum(-1) + np.log(1 - w)
        wa = np.exp(a - np.logaddexp(a, b))[:, None]
        return wa * -(X + shift) + (1 - wa) * -(X - shift)

    density = FunctionLogDensity(
        dim, lambda x: logp(x[None])[0], lambda x: grad(x[None])[0], logp, grad
    )
    return density, w


def run_flow(quick: bool) -> dict:
    """Flow MCMC on the mixture; the weight of the left mode against its truth."""
    from pymc_ext.flow_sampler import flow_mcmc

    density, w = _mixture()
    t0 = time.perf_counter()
    idata = flow_mcmc(
        density,
        draws=200 if quick else 500,
        chains=64,
        random_seed=1,
        progressbar=False,
    )
    seconds = time.perf_counter() - t0
    x0 = idata.posterior["x"].values[..., 0]
    return {
        "seconds": round(seconds, 2),
        "weight_left": round(float((x0 < 0).mean()), 3),
        "weight_true": w,
        "global_acceptance": round(float(idata.sample_stats.attrs.get("global_acceptance", -1)), 3),
    }


def run_amortizer(quick: bool) -> dict:
    """Train on a conjugate normal model; raw/PSIS/MH means against the exact posterior."""
    import pymc as pm

    import pymc_ext

    y_obs = np.array([0.8, 1.9, 1.1, 0.4, 1.5])

    def build(y):
        with pm.Model() as model:
            mu = pm.Normal("mu", 0.0, 2.0)
            pm.Normal("y", mu, 1.0, observed=y)
        return model

    n = len(y_obs)
    post_var = 1.0 / (1.0 / 4.0 + n)
    post_mean = post_var * y_obs.sum()
    amortizer = pymc_ext.Amortizer(build(y_obs), num_threads=None)
    t0 = time.perf_counter()
    amortizer.fit(
        num_simulations=4000 if quick else 20000,
        epochs=30 if quick else 100,
        random_seed=2,
        progressbar=False,
    )
    train_s = time.perf_counter() - t0
    out: dict = {"device": str(amortizer.device), "train_seconds": round(train_s, 2)}
    for correct in (None, "psis", "mh"):
        t1 = time.perf_counter()
        idata = amortizer.sample({"y": y_obs}, draws=1000, correct=correct, random_seed=3)
        mu = idata.posterior["mu"].values.ravel()
        key = correct or "raw"
        out[f"{key}_seconds"] = round(time.perf_counter() - t1, 3)
        out[f"{key}_mean_error_sd"] = round(abs(mu.mean() - post_mean) / np.sqrt(post_var), 3)
    return out


def _one_device(quick: bool) -> dict:
    import torch

    from pymc_ext.blocks.torch_settings import torch_device

    return {
        "device": str(torch_device()),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "flow_mcmc": run_flow(quick),
        "amortizer": run_amortizer(quick),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--one", action="store_true", help="this process's device only")
    parser.add_argument("--out", default=None, help="write the JSON here too")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_one_device(args.quick)))
        return
    rows = []
    for hide in (False, True):
        env = dict(os.environ)
        if hide:
            env["CUDA_VISIBLE_DEVICES"] = ""
        cmd = [sys.executable, __file__, "--one"] + (["--quick"] if args.quick else [])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(proc.stderr[-4000:], file=sys.stderr)
            rows.append({"device": "cpu" if hide else "cuda?", "error": proc.stderr[-500:]})
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    text = json.dumps(rows, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
