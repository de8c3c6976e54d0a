"""The README's demo: default ``pm.sample`` against the warm start, on a correlated regression.

Run it with ``make demo`` (sets everything up first) or
``python -m pymc_ext.demo [--draws N] [--chains C] [--seed S]``.

It prints one small table: four runs (``pm.sample()`` as you run it, which is
nutpie when it is installed; PyMC's NUTS; and ``pymc_ext.sample`` with each),
with their gradient evaluations (the warm start's included), wall time
(compiles included), the worst R-hat and the smallest bulk ESS, so you see
what the warm start saved on a real model.
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

__all__ = ["DEMO_POSTERIOR", "RUNS", "gradient_evaluations", "main", "run_demo"]


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


#: The demo's model: a posteriordb regression whose slope and intercept are correlated
#: (about -1), as in most regressions on raw scales. This is where the metric matters.
DEMO_POSTERIOR = "kidiq-kidscore_momiq"

#: Row names, in the order the demo runs them.
RUNS = (
    "pm.sample()  [nutpie, your default]",
    "pm.sample(nuts_sampler='pymc')",
    "pymc_ext.sample(nuts_sampler='nutpie')",
    "pymc_ext.sample()  [PyMC NUTS]",
)


def run_demo(
    draws: int = 1000, chains: int = 4, seed: int = 2026, posterior: str = DEMO_POSTERIOR
) -> dict[str, dict[str, Any]]:
    """Sample one reference posterior four ways, with and without the warm start, and tabulate.

    The runs are ``pm.sample()`` as a user runs it (nutpie when it is
    installed), PyMC's NUTS, and ``pymc_ext.sample`` with each of the two.
    Wall time includes each run's compile (nutpie compiles its model anew for
    every call; PyTensor's C cache is warmed once before the timings).

    Parameters
    ----------
    draws, chains : int
        Kept draws per chain and number of chains (every run).
    seed : int
        ``random_seed`` of every run.
    posterior : str
        A reference posterior with a PyMC version
        (:data:`~pymc_ext.references.models.PYMC_REFERENCE_NAMES`).

    Returns
    -------
    dict
        ``run name -> {grad evals (warmstart, warmup, sampling, total), seconds, r_hat, ess,
        metric}``.

    Examples
    --------
    >>> from pymc_ext.demo import run_demo
    >>> rows = run_demo(draws=200, chains=2)  # doctest: +SKIP
    >>> len(rows)  # doctest: +SKIP
    4
    """
    import pymc as pm

    import pymc_ext
    from pymc_ext.references.models import reference_model

    model = reference_model(posterior)
    common = dict(
        draws=draws,
        chains=chains,
        cores=1,
        random_seed=seed,
        discard_tuned_samples=False,
        progressbar=False,
        model=model,
    )
    runs = dict(
        zip(
            RUNS,
            (
                lambda: pm.sample(**common),
                lambda: pm.sample(nuts_sampler="pymc", **common),
                lambda: pymc_ext.sample(nuts_sampler="nutpie", **common),
                lambda: pymc_ext.sample(nuts_sampler="pymc", **common),
            ),
            strict=True,
        )
    )
    pymc_ext.log_density(model)  # warm PyTensor's C cache once, outside the timings
    rows: dict[str, dict[str, Any]] = {}
    for name, run in runs.items():
        print(f"running {name} ...", flush=True)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            idata = run()
        seconds = time.perf_counter() - start
        r_hat, ess = _diagnostics(idata)
        metric = idata["sample_stats"].attrs.get("warmstart_metric", "diag (adapted)")
        rows[name] = {
            **gradient_evaluations(idata),
            "seconds": seconds,
            "r_hat": r_hat,
            "ess": ess,
            "metric": str(metric),
        }
    return rows


def _print_table(rows: dict[str, dict[str, Any]]) -> None:
    header = (
        f"{'run':40s} {'metric':>14s} {'grads':>9s} {'time [s]':>9s} {'max R-hat':>9s} "
        f"{'min ESS':>8s} {'grads/ESS':>9s} {'ms/ESS':>7s}"
    )
    print("\n" + header)
    print("-" * len(header))
    for name, r in rows.items():
        print(
            f"{name:40s} {r['metric'][:14]:>14s} {r['total']:>9d} {r['seconds']:>9.1f} "
            f"{r['r_hat']:>9.3f} {r['ess']:>8.0f} {r['total'] / r['ess']:>9.1f} "
            f"{1000 * r['seconds'] / r['ess']:>7.2f}"
        )
    default, pymc_nuts, warm_nutpie, warm_pymc = (rows[name] for name in RUNS)

    def ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> float:
        return (a[key] / a["ess"]) / (b[key] / b["ess"])

    print(
        f"\nAgainst your default (pm.sample() with nutpie), the warm start with nutpie spent\n  "
        f"{ratio(warm_nutpie, default, 'total'):.2f}x the gradients and "
        f"{ratio(warm_nutpie, default, 'seconds'):.2f}x the wall time per effective draw."
        f"\nAgainst PyMC's NUTS, the warm start with PyMC's NUTS spent\n  "
        f"{ratio(warm_pymc, pymc_nuts, 'total'):.2f}x the gradients and "
        f"{ratio(warm_pymc, pymc_nuts, 'seconds'):.2f}x the wall time per effective draw."
        f"\n(Gradients include Pathfinder's; wall time includes compiles.)"
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
    parser.add_argument("--posterior", default=DEMO_POSTERIOR)
    args = parser.parse_args(argv)
    print(
        f"{args.posterior}: a regression with correlated coefficients, sampled with and "
        "without a Pathfinder warm start."
    )
    rows = run_demo(draws=args.draws, chains=args.chains, seed=args.seed, posterior=args.posterior)
    _print_table(rows)
    print(
        "\nRead more: docs/warmstart.md (warm starts), docs/flow_mcmc.md (flow MCMC),\n"
        "docs/amortized.md (amortized fitting), docs/stan.md (Stan / cmdstanpy);\n"
        "the benchmarks over all reference posteriors are in docs/benchmarks.md."
    )


if __name__ == "__main__":
    main()
