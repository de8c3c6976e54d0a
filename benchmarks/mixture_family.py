"""A family of random Gaussian mixtures, generated from a seed, for the flow-MCMC benchmark.

Instance ``i`` of family seed ``s`` (``family_spec(i, s)``):

- 2 to 4 components; dimension D drawn from {2, 6, 10, 20};
- isotropic scales drawn from U(0.5, 1.5), one per component;
- weights ``0.1 + (1 - 0.1 K) * Dirichlet(1)``, so every weight is at least 0.1;
- centres drawn from N(0, (u^2 / 2D) I) with u ~ U(4, 8) (pairwise distances
  about u), redrawn until every pair is at least 3 times the larger of its
  two scales apart.

Samplers (``run_instance``):

- ``tempering``: ``flow_mcmc(explore="tempering")``, all other options default;
- ``climbs``: ``flow_mcmc`` with its defaults (``explore="climbs"``);
- ``smc``: ``pm.sample_smc`` (PyMC's tempering SMC, 2 chains of 2,000
  particles, default settings), which needs a proper prior: N(0, 10^2) on
  every coordinate; its error is measured against that posterior's own
  weights (``w_k N(mu_k; 0, (100 + s_k^2) I)``, normalised), so the prior
  does not count against it;
- ``nutpie``: nutpie with its defaults (``pm.sample()``'s sampler), 4 chains
  of 1,000 draws after 1,000 tuning steps. It raises no warning itself, so a
  run counts as warned where its max R-hat is above 1.01, the level at which
  ``pm.sample`` warns;
- ``flowmc``: flowMC 0.6.5 with its tutorial settings, as in
  ``benchmarks/flows.py`` (20 chains from the initial point plus
  N(0, 3^2 I)); warned by the same R-hat rule as nutpie.

The weight estimate is the mean of the exact component responsibilities
over the draws (``E[r_k(x)] = w_k`` under the posterior), and the error the
largest absolute difference over components. A run is *silently wrong* when
its error is above 0.05 and it raised no warning.

``python benchmarks/flows.py --family 40`` runs the whole family (see
``docs/flow_mcmc.md`` for the figures); ``--family 8 --family-dims 2,6,10``
a development subset.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
from scipy.special import logsumexp

DIMS = (2, 6, 10, 20)
SMC_PRIOR_SD = 10.0
SILENT_ERROR = 0.05
TARGET_ERROR = 0.03


def family_spec(index: int, seed: int = 0, dims: tuple[int, ...] = DIMS) -> dict[str, Any]:
    """Weights, centres and scales of instance ``index`` of the family with ``seed``.

    Examples
    --------
    >>> import numpy as np
    >>> from benchmarks.mixture_family import family_spec
    >>> spec = family_spec(0)
    >>> 2 <= len(spec["weights"]) <= 4, min(spec["weights"]) >= 0.1, spec["dim"] in (2, 6, 10, 20)
    (True, True, True)
    >>> c, s = np.asarray(spec["centers"]), np.asarray(spec["scales"])
    >>> all(np.linalg.norm(c[i] - c[j]) >= 3 * max(s[i], s[j])
    ...     for i in range(len(s)) for j in range(i))
    True
    """
    rng = np.random.default_rng([seed, index])
    k = int(rng.integers(2, 5))
    dim = int(rng.choice(dims))
    scales = rng.uniform(0.5, 1.5, size=k)
    weights = 0.1 + (1.0 - 0.1 * k) * rng.dirichlet(np.ones(k))
    spread = rng.uniform(4.0, 8.0)
    for _ in range(10_000):
        centers = rng.normal(0.0, spread / np.sqrt(2 * dim), size=(k, dim))
        ok = all(np.linalg.norm(centers[i] - centers[j]) >= 3 * max(scales[i], scales[j])
                 for i in range(k) for j in range(i))
        if ok:
            break
    return {"name": f"family{seed}_{index}", "dim": dim, "weights": weights.tolist(),
            "centers": centers.tolist(), "scales": scales.tolist()}


def responsibilities(x: np.ndarray, spec: dict[str, Any],
                     weights: np.ndarray | None = None) -> np.ndarray:
    """Exact component responsibilities ``r_k(x)`` of each row of ``x`` (shape ``(n, K)``)."""
    w = np.asarray(spec["weights"] if weights is None else weights, float)
    c, s = np.asarray(spec["centers"], float), np.asarray(spec["scales"], float)
    d = x.shape[-1]
    z = ((x[:, None, :] - c[None]) ** 2).sum(-1) / s**2
    comp = np.log(w) - 0.5 * z - d * np.log(s)
    return np.exp(comp - logsumexp(comp, axis=1, keepdims=True))


def smc_weights(spec: dict[str, Any]) -> np.ndarray:
    """The component weights of the prior-times-mixture posterior that ``pm.sample_smc`` sees."""
    w = np.asarray(spec["weights"], float)
    c, s = np.asarray(spec["centers"], float), np.asarray(spec["scales"], float)
    var = SMC_PRIOR_SD**2 + s**2
    log = np.log(w) - 0.5 * (c**2).sum(1) / var - 0.5 * spec["dim"] * np.log(var)
    return np.exp(log - logsumexp(log))


def build_model(spec: dict[str, Any], prior_sd: float | None = None):
    """The mixture as a PyMC model: flat (``prior_sd=None``) or with a N(0, prior_sd^2) prior."""
    import pymc as pm
    import pytensor.tensor as pt

    with pm.Model() as model:
        if prior_sd is None:
            x = pm.Flat("x", shape=spec["dim"])
        else:
            x = pm.Normal("x", 0.0, prior_sd, shape=spec["dim"])
        comps = [
            np.log(w) + pm.logp(pm.Normal.dist(c, s), x).sum()
            for w, c, s in zip(spec["weights"], spec["centers"], spec["scales"], strict=True)
        ]
        pm.Potential("mixture", pt.logsumexp(pt.stack(comps)))
    return model


def _flow(spec: dict[str, Any], seed: int, explore: str) -> dict[str, Any]:
    import json

    from pymc_ext.flow_sampler import flow_mcmc
    from pymc_ext.pymc_model import log_density

    density = log_density(build_model(spec))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        idata = flow_mcmc(density, explore=explore, random_seed=seed, progressbar=False)
    attrs = idata.sample_stats.attrs
    x = idata.posterior["x"].values
    out = {
        "draws": x.reshape(-1, spec["dim"]),
        "warnings": [str(w.message)[:200] for w in caught
                     if "FlowMCMCWarning" in type(w.message).__name__],
        "n_modes": int(attrs["n_modes"]),
        "grad_evals": int(attrs["grad_evals"]),
        "global_acceptance": float(attrs["global_acceptance"]),
        "chains": x,
    }
    if "mode_census" in attrs:
        out["log_evidence"] = float(attrs["log_evidence"])
        out["log_evidence_se"] = float(attrs["log_evidence_se"])
        census = json.loads(attrs["mode_census"])
        out["first_seen_beta"] = [m["first_seen_beta"] for m in census["modes"]]
    return out


def _smc(spec: dict[str, Any], seed: int) -> dict[str, Any]:
    import pymc as pm

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with build_model(spec, SMC_PRIOR_SD):
            idata = pm.sample_smc(chains=2, cores=1, random_seed=seed, progressbar=False,
                                  compute_convergence_checks=False)
    x = idata.posterior["x"].values
    return {"draws": x.reshape(-1, spec["dim"]), "chains": x,
            "warnings": [str(w.message)[:200] for w in caught
                         if issubclass(w.category, UserWarning)]}


#: R-hat above which ``pm.sample`` warns; nutpie raises no warning of its own, so a nutpie
#: run counts as warned where its R-hat is above this (what a PyMC user would be told)
NUTPIE_RHAT_WARNING = 1.01


def _rhat_warned(spec: dict[str, Any], x: np.ndarray, **extra: Any) -> dict[str, Any]:
    """A peer's row: it raises no warning of its own, so R-hat above 1.01 counts as one."""
    from arviz_stats.base import array_stats

    rhat = max(float(array_stats.rhat(x[..., j], chain_axis=0, draw_axis=1))
               for j in range(spec["dim"]))
    warned = [f"max R-hat {rhat:.3f} > {NUTPIE_RHAT_WARNING} (pm.sample's warning)"
              ] if rhat > NUTPIE_RHAT_WARNING else []
    return {"draws": x.reshape(-1, spec["dim"]), "chains": x, "warnings": warned, **extra}


def _nutpie(spec: dict[str, Any], seed: int, **options: Any) -> dict[str, Any]:
    """nutpie's defaults (diagonal adaptation), or with ``options`` (``adaptation="low_rank"``)."""
    import nutpie

    compiled = nutpie.compile_pymc_model(build_model(spec))
    idata = nutpie.sample(compiled, draws=1000, tune=1000, chains=4, cores=1, seed=seed,
                          progress_bar=False, **options)
    return _rhat_warned(spec, idata.posterior["x"].values,
                        grad_evals=int(idata.sample_stats["n_steps"].sum()))


def _pymc_nuts(spec: dict[str, Any], seed: int) -> dict[str, Any]:
    """PyMC's own NUTS with its defaults (``nuts_sampler="pymc"``), 4 chains in turn."""
    import warnings

    import pymc as pm

    with build_model(spec), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata = pm.sample(draws=1000, tune=1000, chains=4, cores=1, random_seed=seed,
                          nuts_sampler="pymc", progressbar=False,
                          compute_convergence_checks=False)
    return _rhat_warned(spec, idata.posterior["x"].values,
                        grad_evals=int(idata.sample_stats["n_steps"].sum()))


def _flowmc(spec: dict[str, Any], seed: int) -> dict[str, Any]:
    from benchmarks.flows import run_flowmc

    idata, extra = run_flowmc(build_model(spec), seed, quick=False)
    return _rhat_warned(spec, idata.posterior["x"].values, grad_evals=extra["grad_evals"],
                        global_acceptance=extra["global_acceptance"])


RUNNERS = {
    "tempering": lambda spec, seed: _flow(spec, seed, "tempering"),
    "climbs": lambda spec, seed: _flow(spec, seed, "climbs"),
    "smc": _smc,
    "nutpie": _nutpie,
    "nutpie_low_rank": lambda spec, seed: _nutpie(spec, seed, adaptation="low_rank"),
    "pymc": _pymc_nuts,
    "flowmc": _flowmc,
}


def run_instance(spec: dict[str, Any], sampler: str, seed: int = 1) -> dict[str, Any]:
    """One sampler on one instance: weight estimates, error, time, warnings, R-hat."""
    from arviz_stats.base import array_stats

    t0 = time.perf_counter()
    out = RUNNERS[sampler](spec, seed)
    wall = time.perf_counter() - t0
    truth = smc_weights(spec) if sampler == "smc" else np.asarray(spec["weights"])
    r = responsibilities(out.pop("draws"), spec, truth)
    est = r.mean(0)
    chains = out.pop("chains")
    rhat = max(float(array_stats.rhat(chains[..., j], chain_axis=0, draw_axis=1))
               for j in range(spec["dim"]))
    error = float(np.max(np.abs(est - truth)))
    return {
        "instance": spec["name"], "dim": spec["dim"], "k": len(spec["weights"]),
        "sampler": sampler, "wall_s": wall, "weights_true": truth.tolist(),
        "weights": est.tolist(), "weight_error": error, "max_rhat": rhat,
        "warned": bool(out["warnings"]),
        "silently_wrong": bool(error > SILENT_ERROR and not out["warnings"]),
        **out,
    }


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown: per sampler, the error distribution, time, and silent failures."""
    lines = ["| sampler | instances | error median | error 90% | error max | "
             f"error <= {TARGET_ERROR} | silently wrong (> {SILENT_ERROR}, no warning) | "
             "warned | time median s | time max s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        sel = [r for r in rows if r["sampler"] == sampler and "weight_error" in r]
        if not sel:
            continue
        err = np.array([r["weight_error"] for r in sel])
        wall = np.array([r["wall_s"] for r in sel])
        lines.append(
            f"| {sampler} | {len(sel)} | {np.median(err):.3f} | {np.quantile(err, 0.9):.3f} | "
            f"{err.max():.3f} | {np.mean(err <= TARGET_ERROR):.0%} | "
            f"{sum(r['silently_wrong'] for r in sel)} | {sum(r['warned'] for r in sel)} | "
            f"{np.median(wall):.0f} | {wall.max():.0f} |")
    return lines


def instance_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown: one row per instance and sampler."""
    lines = ["| instance | D | K | sampler | weight error | weights (truth) | max R-hat | "
             "warned | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['instance']} | | | {r['sampler']} | failed: {r['error'][:80]} "
                         "| | | | |")
            continue
        pairs = ", ".join(f"{a:.3f} ({b:.3f})" for a, b in zip(r["weights"], r["weights_true"],
                                                               strict=True))
        lines.append(f"| {r['instance']} | {r['dim']} | {r['k']} | {r['sampler']} | "
                     f"{r['weight_error']:.3f} | {pairs} | {r['max_rhat']:.3f} | "
                     f"{'yes' if r['warned'] else 'no'} | {r['wall_s']:.0f} |")
    return lines


def parse_instances(text: str) -> list[int]:
    """``"8,24-39"`` -> ``[8, 24, 25, ..., 39]``.

    Examples
    --------
    >>> from benchmarks.mixture_family import parse_instances
    >>> parse_instances("8,24-26")
    [8, 24, 25, 26]
    """
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def merge_rows(*row_lists: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of several runs, one per (instance, sampler): a later run's row replaces an
    earlier one; ordered by instance number, then sampler.

    Examples
    --------
    >>> from benchmarks.mixture_family import merge_rows
    >>> a = [{"instance": "family0_8", "sampler": "smc", "x": 1}]
    >>> b = [{"instance": "family0_8", "sampler": "smc", "x": 2},
    ...      {"instance": "family0_10", "sampler": "smc", "x": 3}]
    >>> [r["x"] for r in merge_rows(a, b)]
    [2, 3]
    """
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for rows in row_lists:
        for row in rows:
            merged[(row["instance"], row["sampler"])] = row
    return sorted(merged.values(),
                  key=lambda r: (int(r["instance"].rsplit("_", 1)[1]), r["sampler"]))


def family_report(rows: list[dict[str, Any]], meta: dict[str, Any], seed: int,
                  dims: tuple[int, ...], run_seed: int) -> str:
    """The markdown report of a family run."""
    text = ["# Flow MCMC on a family of random mixtures", "",
            f"Command: `{meta['command']}`  ",
            f"Machine: {meta['machine']}; started {meta['started']}; load average at "
            f"start {meta['load']}. Family seed {seed}, dimensions {list(dims)}, "
            f"sampler seed {run_seed}.", "", "## Summary", "",
            *summary_lines(rows), "", "## Instances", "", *instance_lines(rows)]
    return "\n".join(text) + "\n"


def run_family(n: int, seed: int, dims: tuple[int, ...], samplers: list[str], out_dir,
               tag: str, meta: dict[str, Any], run_seed: int = 1,
               instances: list[int] | None = None,
               merge: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Run every sampler on instances ``0 .. n-1`` (or ``instances``); write
    ``flows_family<tag>.md/.json`` after each run (a long run can be stopped). ``merge``:
    rows of an earlier run, which this run's rows join (or replace, for the same instance
    and sampler) in the report."""
    import traceback
    from pathlib import Path

    from benchmarks.common import write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "flows_family" + (f"_{tag}" if tag else "")
    rows: list[dict[str, Any]] = []
    todo = list(range(n)) if instances is None else instances
    for i in todo:
        spec = family_spec(i, seed, dims)
        for sampler in samplers:
            print(f"[{time.strftime('%H:%M:%S')}] {spec['name']} (D={spec['dim']}, "
                  f"K={len(spec['weights'])}) / {sampler}", flush=True)
            try:
                row = run_instance(spec, sampler, run_seed)
            except Exception as err:  # noqa: BLE001 - record and go on
                traceback.print_exc()
                row = {"instance": spec["name"], "sampler": sampler,
                       "error": f"{type(err).__name__}: {err}"}
            print("   ", {k: v for k, v in row.items() if k != "warnings"}, flush=True)
            rows.append(row)
            everything = merge_rows(merge or [], rows)
            write_json({"meta": meta, "specs": [family_spec(j, seed, dims)
                                                for j in range(max(n, max(todo) + 1))],
                        "results": everything}, out_dir / f"{stem}.json")
            (out_dir / f"{stem}.md").write_text(
                family_report(everything, meta, seed, dims, run_seed))
    return rows
