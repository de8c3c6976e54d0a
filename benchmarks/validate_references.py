"""Check each PyMC version of a reference posterior against its Stan program and its draws.

For every posterior with a PyMC version (``pymc_ext.references.models.PYMC_REFERENCE_NAMES``):

(a) **Same density.** At 20 reference draws, map each draw to the unconstrained
    space of each side (PyMC's value transforms, Stan's ``unconstrain``) and
    evaluate both log densities, Jacobians included (``stan_bridge.StanModel``
    of the posterior's own ``model.stan`` and ``data.json``, ``propto=False``).
    The differences ``PyMC - Stan`` must be one constant: their spread
    (max - min) must be below 1e-6. The same is done on the constrained scale
    (no Jacobians), which does not depend on the two sides' transforms.
    Lotka-Volterra: the Stan program's ``integrate_ode_rk45`` runs at relative
    tolerance 1e-5 (absolute 1e-3), so its log density carries a solver error
    (a spread of 0.02 over the reference draws); the check is made against
    the same program with tolerances 1e-10 (the PyMC side solves the ODE to
    about 1e-11), and the spread against the program as written is reported
    beside it.
(b) **Same posterior.** nutpie (``adaptation="low_rank"``) on the PyMC model,
    4 chains x 500 draws after 500 tuning steps by default; every parameter's
    mean and sd must be within 0.1 reference sd of the reference draws (the
    errors of ``pymc_ext.references.posteriors.compare_to_reference``).
    Exceptions, named in the table: ``SAMPLER_OVERRIDES`` (gp_pois_regr needs
    target_accept 0.95) and ``START_AT_REFERENCE_MEAN`` (Lotka-Volterra has a
    poor-fit local mode that catches chains from the default start).

Usage::

    python benchmarks/validate_references.py                # all, one table
    python benchmarks/validate_references.py nes1996-nes    # some (merged into the table)
    python benchmarks/validate_references.py --new --no-sample

Writes ``benchmarks/results/validate_references.{json,md}``. Posteriors run one
at a time; Stan builds are cached (``$STAN_BRIDGE_CACHE``), so reruns compile
nothing on the Stan side.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS_DIR, fmt, machine_info, md_row, write_json  # noqa: E402
from pymc_ext.references.posteriors import (  # noqa: E402
    REFERENCE_NAMES,
    canonical_name,
    compare_to_reference,
    flatten_draws,
    load_reference,
    reference_dir,
)

SPREAD_TOL = 1e-6  # (a): the spread of PyMC - Stan over the draws
ERROR_TOL = 0.1  # (b): mean and sd errors, in reference sds
ODE_NAME = "hudson_lynx_hare-lotka_volterra"
ODE_TOLERANCES = ("1e-5, 1e-3, 5e2", "1e-10, 1e-10, 1e8")  # as written -> tight
# Posteriors with a poor-fit local mode that catches chains from PyMC's jittered default
# start: their chains start at the reference mean (no jitter), so (b) checks the model,
# not whether the sampler finds the main mode.
START_AT_REFERENCE_MEAN = (ODE_NAME,)
# Posteriors whose geometry needs smaller steps: at nutpie's default target_accept 0.8,
# gp_pois_regr diverges (a funnel in alpha; 7 divergences, sd error 0.17 at 4 x 500).
SAMPLER_OVERRIDES: dict[str, dict[str, Any]] = {
    "gp_pois_regr-gp_pois_regr": {
        "target_accept": 0.95,
        "draws": 1000,
        "tune": 1000,
        "why": "at 0.8 it diverges (a funnel in alpha)",
    },
}


def reference_points(name: str, n: int, seed: int) -> list[dict[str, float]]:
    """``n`` reference draws (flat Stan names -> value), spread over the chains."""
    ref = load_reference(name)
    chains, draws = next(iter(ref.values())).shape
    idx = np.random.default_rng(seed).choice(chains * draws, size=n, replace=False)
    return [{k: float(v.ravel()[i]) for k, v in ref.items()} for i in idx]


def structured(flat: dict[str, float], shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """Flat Stan names (``beta[1]``, ``theta[1,2]``) -> arrays in the given shapes."""
    out = {}
    for name, shape in shapes.items():
        if shape == ():
            out[name] = np.asarray(flat[name])
            continue
        values = [
            flat[f"{name}[{','.join(str(i + 1) for i in idx)}]"] for idx in np.ndindex(*shape)
        ]
        out[name] = np.asarray(values).reshape(shape)
    return out


def stan_model(name: str, tight_ode: bool = False):
    """The posterior's own Stan program as a StanModel (all constants kept)."""
    from stan_bridge import StanModel

    folder = reference_dir() / name
    code = (folder / "model.stan").read_text()
    model_name = name.replace("-", "_")
    if tight_ode:
        if ODE_TOLERANCES[0] not in code:
            raise RuntimeError(
                f"{name}: the ODE tolerances {ODE_TOLERANCES[0]!r} are not in model.stan"
            )
        code = code.replace(*ODE_TOLERANCES)
        model_name += "_tight"
    return StanModel(
        code, str(folder / "data.json"), propto=False, model_name=model_name, progressbar=False
    )


def _spread(values: list[float]) -> float:
    return float(np.max(values) - np.min(values))


def check_density(name: str, n_points: int = 20, seed: int = 0) -> dict[str, Any]:
    """(a): PyMC minus Stan log density at reference draws, with and without Jacobians."""
    from pymc_ext.pymc_model import log_density
    from pymc_ext.references.models import reference_model

    model = reference_model(name)
    pm_jac, pm_raw = log_density(model), log_density(model, jacobian=False)
    free = {rv.name: pm_jac.shapes[rv.name] for rv in model.free_RVs}
    points = reference_points(name, n_points, seed)
    at = "reference draws"
    if any(f"{k}[1]" not in points[0] and k not in points[0] for k in free):
        # The draws lack a parameter (eight schools' theta_trans, gp's f_tilde): use
        # points of PyMC's unconstrained space, x ~ N(0, 1), in the constrained scale.
        rng = np.random.default_rng(seed)
        X = rng.standard_normal((n_points, pm_jac.dim))
        values = pm_jac.constrain_batch(X)  # name -> (n_points, *shape)
        flat = flatten_draws({n: np.asarray(values[n])[None] for n in free})  # (1, n) each
        points = [{k: float(v[0, i]) for k, v in flat.items()} for i in range(n_points)]
        at = "N(0, 1) points of the unconstrained space (the draws lack a parameter)"
    sides = {"stan": stan_model(name)}
    if name == ODE_NAME:
        sides["stan_tight"] = stan_model(name, tight_ode=True)
    out: dict[str, Any] = {"n_points": n_points, "at": at}
    for label, sm in sides.items():
        params = {p: sm.shapes[p] for p in sm.info["parameters"]}
        d_jac, d_raw = [], []
        for flat in points:
            x_p = pm_jac.unconstrain(structured(flat, free))
            x_s = sm.unconstrain(structured(flat, params))
            d_jac.append(pm_jac.logp(x_p) - sm.logp(x_s))
            d_raw.append(pm_raw.logp(x_p) - sm.log_density(x_s, jacobian=False))
        out[label] = {
            "spread": _spread(d_jac),
            "spread_constrained": _spread(d_raw),
            "constant": float(np.mean(d_jac)),
        }
    checked = out.get("stan_tight", out["stan"])
    out["spread"] = checked["spread"]
    out["spread_constrained"] = checked["spread_constrained"]
    out["passed"] = bool(max(out["spread"], out["spread_constrained"]) < SPREAD_TOL)
    return out


def check_sampling(name: str, chains: int, draws: int, tune: int, seed: int) -> dict[str, Any]:
    """(b): nutpie (low-rank adaptation) on the PyMC model against the reference draws."""
    import arviz as az
    import nutpie
    import xarray as xr

    from pymc_ext.references.models import reference_model

    model = reference_model(name)
    init: dict[str, Any] = {}
    if name in START_AT_REFERENCE_MEAN:
        mean = {k: float(v.mean()) for k, v in load_reference(name).items()}
        shapes = {rv.name: tuple(int(n) for n in rv.shape.eval()) for rv in model.free_RVs}
        init = {"initial_points": structured(mean, shapes), "jitter_rvs": set()}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba's and nutpie's compile chatter
        compiled = nutpie.compile_pymc_model(model, **init)
    t_compile = time.perf_counter() - t0
    settings = {"draws": draws, "tune": tune, "target_accept": 0.8}
    settings.update(SAMPLER_OVERRIDES.get(name, {}))
    why = settings.pop("why", None)
    t0 = time.perf_counter()
    idata = nutpie.sample(
        compiled,
        chains=chains,
        seed=seed,
        cores=1,
        adaptation="low_rank",
        progress_bar=False,
        **settings,
    )
    t_sample = time.perf_counter() - t0
    result = compare_to_reference(idata, name)
    ref = load_reference(name)
    flat = flatten_draws(idata)
    ds = xr.Dataset({k: (("chain", "draw"), flat[k]) for k in ref})
    ess = float(az.ess(ds).to_array().min())
    rhat = float(az.rhat(ds).to_array().max())
    diverging = int(np.asarray(idata["sample_stats"]["diverging"]).sum())
    worst = max(result["params"], key=lambda p: result["params"][p]["mean_error"])
    return {
        "sampler": "nutpie low_rank",
        "init": "reference mean" if init else "default (jittered support point)",
        "chains": chains,
        **settings,
        "why": why,
        "max_mean_error": result["max_mean_error"],
        "max_sd_error": result["max_sd_error"],
        "worst_mean_param": worst,
        "missing": result["missing"],
        "min_ess_bulk": ess,
        "max_rhat": rhat,
        "divergences": diverging,
        "compile_s": t_compile,
        "sample_s": t_sample,
        "passed": bool(
            max(result["max_mean_error"], result["max_sd_error"]) < ERROR_TOL
            and not result["missing"]
        ),
    }


def table(results: dict[str, dict[str, Any]], command: str) -> str:
    """The markdown table (one row per posterior)."""
    head = [
        "posterior",
        "dim",
        "(a) spread",
        "(a) spread, no Jacobian",
        "(b) max mean err",
        "(b) max sd err",
        "min ESS",
        "R-hat",
        "div.",
        "passed",
    ]
    lines = [md_row(head), md_row(["---"] * len(head))]
    for name, r in results.items():
        a, b = r.get("density", {}), r.get("sampling", {})
        spread = f"{a['spread']:.1e}" if a else "–"
        if a.get("at", "").startswith("N(0, 1)"):
            spread += " †"
        if name == ODE_NAME and a:
            spread += f" (rk45 as written: {a['stan']['spread']:.1e})"
        passed = all(part.get("passed", False) for part in (a, b) if part) and bool(a or b)
        lines.append(
            md_row(
                [
                    f"`{name}`" + ("" if name in REFERENCE_NAMES else " (new)"),
                    str(r.get("dim", "–")),
                    spread,
                    f"{a['spread_constrained']:.1e}" if a else "–",
                    fmt(b.get("max_mean_error"), 3),
                    fmt(b.get("max_sd_error"), 3),
                    fmt(b.get("min_ess_bulk"), 0),
                    fmt(b.get("max_rhat"), 3),
                    fmt(b.get("divergences")),
                    "yes" if passed else "**no**",
                ]
            )
        )
    n_pass = sum(line.endswith("| yes |") for line in lines)
    starts = [
        f"`{n}`" for n, r in results.items() if "reference" in r.get("sampling", {}).get("init", "")
    ]
    note = (
        f" Chains of {', '.join(starts)} start at the reference mean: from PyMC's jittered "
        "default start, chains can stick in a poor-fit local mode (see the docs)."
        if starts
        else ""
    )
    for n, r in results.items():
        b = r.get("sampling", {})
        if b.get("why"):
            note += (
                f" `{n}`: {b['chains']} x {b['draws']} draws after {b['tune']}, "
                f"target_accept {b['target_accept']}: {b['why']}."
            )
    return "\n".join(
        [
            "# PyMC versions of the reference posteriors, checked",
            "",
            f"Command: `{command}`  ",
            f"Machine: {machine_info()}",
            "",
            f"(a) spread (max - min) of PyMC minus Stan log density at 20 reference draws "
            f"(must be < {SPREAD_TOL:g}); (b) nutpie low-rank, errors in reference sds "
            f"(must be < {ERROR_TOL:g}). {n_pass} of {len(results)} pass.{note} "
            "†: at N(0, 1) points of the unconstrained space, where the draws lack a "
            "parameter (theta_trans, f_tilde).",
            "",
            *lines,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    from pymc_ext.references.models import PYMC_REFERENCE_NAMES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="posteriors (default: all with a PyMC version)")
    parser.add_argument("--new", action="store_true", help="only those beyond the first eight")
    parser.add_argument("--no-sample", action="store_true", help="only the density check (a)")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--tune", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="validate_references")
    args = parser.parse_args(argv)

    names = [canonical_name(n) for n in args.names] or list(PYMC_REFERENCE_NAMES)
    if args.new:
        names = [n for n in names if n not in REFERENCE_NAMES]
    unknown = [n for n in names if n not in PYMC_REFERENCE_NAMES]
    if unknown:
        raise SystemExit(f"No PyMC version for {unknown}; these have one: {PYMC_REFERENCE_NAMES}")

    json_path = RESULTS_DIR / f"{args.out}.json"
    saved = json.loads(json_path.read_text()) if json_path.exists() else {}
    results: dict[str, dict[str, Any]] = saved.get("results", {})
    for name in names:
        t0 = time.perf_counter()
        from pymc_ext.pymc_model import log_density
        from pymc_ext.references.models import reference_model

        row: dict[str, Any] = {"dim": log_density(reference_model(name)).dim}
        row["density"] = check_density(name, seed=args.seed)
        if not args.no_sample:
            row["sampling"] = check_sampling(name, args.chains, args.draws, args.tune, args.seed)
        elif "sampling" in results.get(name, {}):
            row["sampling"] = results[name]["sampling"]
        row["seconds"] = time.perf_counter() - t0
        results[name] = row
        a, b = row["density"], row.get("sampling", {})
        print(
            f"{name}: spread {a['spread']:.1e} / {a['spread_constrained']:.1e}"
            + (
                f", mean err {b['max_mean_error']:.3f}, sd err {b['max_sd_error']:.3f}, "
                f"ESS {b['min_ess_bulk']:.0f}"
                if b
                else ""
            )
            + f" ({row['seconds']:.0f} s)",
            flush=True,
        )
    order = [n for n in PYMC_REFERENCE_NAMES if n in results]
    results = {n: results[n] for n in order}
    command = "python benchmarks/validate_references.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    write_json(
        {"command": command.strip(), "machine": machine_info(), "results": results}, json_path
    )
    md = table(results, command.strip())
    (RESULTS_DIR / f"{args.out}.md").write_text(md)
    print(md)
    failed = [
        n
        for n, r in results.items()
        if not all(
            part.get("passed", False) for k, part in r.items() if k in ("density", "sampling")
        )
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
