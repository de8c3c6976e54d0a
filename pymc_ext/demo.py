"""The README's demo: default ``pm.sample`` against the Pathfinder warm start, on eight schools.

Run it with ``make demo`` (sets everything up first) or
``python -m pymc_ext.demo [--draws N] [--chains C] [--seed S]``.

It prints one small table: gradient evaluations (warmup, sampling, and the
warm start itself), wall time, the worst R-hat and the smallest bulk ESS, so
you see what the warm start saved on a real model.
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

__all__ = ["gradient_evaluations", "run_demo", "main"]


def gradient_evaluations(idata: Any) -> dict[str, int]:
    """Count gradient evaluations in a ``pm.sample`` result (``discard_tuned_samples=False``).

    NUTS spends one gradient per leapfrog step, so the count is the sum of
    ``n_steps`` over warmup and sampling, plus the warm start's own
    ``warmstart_grad_evals`` when there is one (an attribute of
    ``sample_stats`` after ``pymc_ext.sample``, a per-draw statistic after
    ``pm.sample(step=WarmStartNUTS())``).

    Parameters
    ----------
    idata : DataTree
        Result of ``pm.sample`` or ``pymc_ext.sample`` with the warmup kept.

    Returns
    -------
    dict
        ``{"warmstart", "warmup", "sampling", "total"}``.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> from pymc_ext.demo import gradient_evaluations
    >>> def stats(n):
    ...     return xr.Dataset({"n_steps": (("chain", "draw"), np.full((2, 5), n))})
    >>> dt = xr.DataTree.from_dict({"sample_stats": stats(3.0), "warmup_sample_stats": stats(7.0)})
    >>> gradient_evaluations(dt)
    {'warmstart': 0, 'warmup': 70, 'sampling': 30, 'total': 100}
    """
    children = idata.children
    sampling = int(idata["sample_stats"]["n_steps"].values.sum())
    warmup = (
        int(idata["warmup_sample_stats"]["n_steps"].values.sum())
        if "warmup_sample_stats" in children
        else 0
    )
    stats = idata["sample_stats"]
    if "warmstart_grad_evals" in stats.attrs:  # pymc_ext.sample
        warmstart = int(stats.attrs["warmstart_grad_evals"])
    elif "warmstart_grad_evals" in stats.data_vars:  # pm.sample(step=WarmStartNUTS())
        warmstart = int(stats["warmstart_grad_evals"].values.max())
    else:
        warmstart = 0
    return {
        "warmstart": warmstart,
        "warmup": warmup,
        "sampling": sampling,
        "total": warmstart + warmup + sampling,
    }


def _diagnostics(idata: Any) -> tuple[float, float]:
    import arviz as az

    summary = az.summary(idata, kind="diagnostics")
    return float(summary["r_hat"].max()), float(summary["ess_bulk"].min())


def run_demo(draws: int = 1000, chains: int = 4, seed: int = 2026) -> dict[str, dict[str, Any]]:
    """Sample eight schools twice, default ``pm.sample`` and warm-started, and tabulate.

    Parameters
    ----------
    draws, chains : int
        Kept draws per chain and number of chains (both runs).
    seed : int
        ``random_seed`` of both runs.

    Returns
    -------
    dict
        ``run name -> {grad evals, seconds, r_hat, ess_bulk}``.

    Examples
    --------
    >>> from pymc_ext.demo import run_demo
    >>> rows = run_demo(draws=200, chains=2)  # doctest: +SKIP
    >>> sorted(rows)  # doctest: +SKIP
    ['pm.sample (PyMC NUTS)', 'pymc_ext.sample (warm start)']
    """
    import pymc as pm

    import pymc_ext
    from pymc_ext.references.models import eight_schools

    model = eight_schools()
    rows: dict[str, dict[str, Any]] = {}
    common = dict(
        draws=draws,
        chains=chains,
        cores=1,
        random_seed=seed,
        nuts_sampler="pymc",
        discard_tuned_samples=False,
        progressbar=False,
        model=model,
    )
    runs = {
        "pm.sample (PyMC NUTS)": lambda: pm.sample(**common),
        "pymc_ext.sample (warm start)": lambda: pymc_ext.sample(warmstart="pathfinder", **common),
    }
    # compile once outside the timings (both runs reuse PyTensor's cache)
    pymc_ext.log_density(model)
    for name, run in runs.items():
        print(f"running {name} ...", flush=True)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            idata = run()
        seconds = time.perf_counter() - start
        r_hat, ess = _diagnostics(idata)
        rows[name] = {**gradient_evaluations(idata), "seconds": seconds, "r_hat": r_hat, "ess": ess}
    return rows


def _print_table(rows: dict[str, dict[str, Any]]) -> None:
    header = (
        f"{'run':30s} {'warm start':>10s} {'warmup':>8s} {'sampling':>9s} {'total':>8s} "
        f"{'time [s]':>9s} {'max R-hat':>9s} {'min ESS':>8s} {'total/ESS':>9s}"
    )
    print("\n" + header)
    print("-" * len(header))
    for name, r in rows.items():
        print(
            f"{name:30s} {r['warmstart']:>10d} {r['warmup']:>8d} {r['sampling']:>9d} "
            f"{r['total']:>8d} {r['seconds']:>9.1f} {r['r_hat']:>9.3f} {r['ess']:>8.0f} "
            f"{r['total'] / r['ess']:>9.1f}"
        )
    base, warm = rows.values()
    before = warm["warmstart"] + warm["warmup"]
    print(
        f"\nWarmup: the warm start spent {before:d} gradient evaluations before sampling "
        f"(Pathfinder included) against {base['warmup']:d}, {before / base['warmup']:.2f}x."
        f"\nIn all, {warm['total'] / base['total']:.2f}x the gradient evaluations "
        f"({base['total'] - warm['total']:d} saved), "
        f"{(warm['total'] / warm['ess']) / (base['total'] / base['ess']):.2f}x per effective "
        f"draw, in {warm['seconds'] / base['seconds']:.2f}x the wall time."
    )


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point of the demo (``python -m pymc_ext.demo``).

    Examples
    --------
    >>> from pymc_ext.demo import main
    >>> main(["--draws", "200", "--chains", "2"])  # doctest: +SKIP
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)
    print("Eight schools (non-centred), PyMC NUTS, with and without a Pathfinder warm start.")
    rows = run_demo(draws=args.draws, chains=args.chains, seed=args.seed)
    _print_table(rows)
    print(
        "\nRead more: docs/warmstart.md (warm starts), docs/flow_mcmc.md (flow MCMC),\n"
        "docs/amortized.md (amortized fitting), docs/stan.md (Stan / cmdstanpy);\n"
        "the benchmarks over all reference posteriors are in docs/benchmarks.md."
    )


if __name__ == "__main__":
    main()
