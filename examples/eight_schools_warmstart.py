"""Eight schools: NUTS warm-started from Pathfinder, against default ``pm.sample``.

Runs both samplers on the non-centred eight-schools model (4 chains, one
after the other), prints the gradient evaluations each spent (warmup +
draws, and Pathfinder for the warm start) and how many the warm start saved,
and saves trace and rank plots of the warm-started run.

    python examples/eight_schools_warmstart.py            # ~30 s
    python examples/eight_schools_warmstart.py --quick    # 2 chains, 500 draws
    python examples/eight_schools_warmstart.py --draws 2000 --out plots.png

By default the plots go to ``eight_schools_warmstart.png`` next to this file.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import arviz as az
import pymc as pm

from pymc_ext.models import eight_schools
from pymc_ext.sampling import lift_warmstart_attrs
from pymc_ext.step_methods.warmstart import WarmStartNUTS


def total_grad_evals(idata) -> int:
    """Warm start + warmup + draws: every gradient evaluation of the run."""
    steps = float(idata.sample_stats["n_steps"].sum())
    if "warmup_sample_stats" in idata.children:
        steps += float(idata.warmup_sample_stats["n_steps"].sum())
    return int(steps) + int(idata.sample_stats.attrs.get("warmstart_grad_evals", 0))


def min_ess_bulk(idata) -> float:
    """Smallest bulk ESS over every posterior variable."""
    ess = az.ess(idata.posterior.to_dataset(), method="bulk")
    return min(float(ess[name].min()) for name in ess.data_vars)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 chains of 500 draws")
    parser.add_argument("--draws", type=int, default=None, help="default 1000 (500 quick)")
    parser.add_argument("--chains", type=int, default=None, help="default 4 (2 quick)")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument(
        "--out", default=str(Path(__file__).with_name("eight_schools_warmstart.png"))
    )
    args = parser.parse_args()
    quick = args.quick or os.environ.get("PYMC_EXT_QUICK") == "1"
    kw = dict(
        draws=args.draws or (500 if quick else 1000),
        chains=args.chains or (2 if quick else 4),
        cores=1,
        random_seed=args.seed,
        discard_tuned_samples=False,
        progressbar=False,
    )
    model = eight_schools()
    with model, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        t0 = time.perf_counter()
        step = WarmStartNUTS(random_seed=args.seed)
        # plain pm.sample keeps the warm-start figures per draw; lift them into the attrs
        warm = lift_warmstart_attrs(pm.sample(step=step, **kw))
        t_warm = time.perf_counter() - t0

        t0 = time.perf_counter()
        default = pm.sample(nuts_sampler="pymc", **kw)
        t_default = time.perf_counter() - t0

    g_warm, g_default = total_grad_evals(warm), total_grad_evals(default)
    ess = {name: min_ess_bulk(idata) for name, idata in (("warm", warm), ("default", default))}
    print(step.warmstart.summary())
    print(
        f"warm start : Pathfinder {step.warmstart_grad_evals} grad evals "
        f"(Pareto k {step.warmstart_pareto_k:.2f}), tune={step.warmup}, "
        f"{g_warm:,} grad evals in total, min ESS_bulk {ess['warm']:.0f}, {t_warm:.1f} s"
    )
    print(
        f"default    : tune=1000, {g_default:,} grad evals in total, "
        f"min ESS_bulk {ess['default']:.0f}, {t_default:.1f} s"
    )
    print(
        f"saved      : {g_default - g_warm:,} gradient evaluations "
        f"({1 - g_warm / g_default:.0%}); per ESS: "
        f"{g_warm / ess['warm']:.1f} vs {g_default / ess['default']:.1f} grad evals"
    )

    import arviz_plots as azp
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    var_names = ["mu", "tau"]
    trace = azp.plot_trace_dist(warm, var_names=var_names, backend="matplotlib")
    trace.savefig(out.with_name(out.stem + "_trace" + out.suffix))
    rank = azp.plot_rank(warm, var_names=var_names, backend="matplotlib")
    rank.savefig(out.with_name(out.stem + "_rank" + out.suffix))
    plt.close("all")
    print(
        f"plots      : {out.with_name(out.stem + '_trace' + out.suffix)}, "
        f"{out.with_name(out.stem + '_rank' + out.suffix)}"
    )


if __name__ == "__main__":
    main()
