"""Benchmark: flow MCMC against PyMC NUTS, nutpie and nutpie's normalizing-flow adaptation.

Targets (all written as PyMC models, so every sampler sees the same density):

- ``mixture2_d10`` / ``mixture2_d50``: two Gaussian modes N(+-3 * 1, I) with
  weights 0.3 (minus) and 0.7 (plus), in 10 and 50 dimensions;
- ``mixture3_d10``: three modes with weights 0.2 / 0.5 / 0.3 and scales
  0.5 / 1 / 1.5, in 10 dimensions, centres -4 * 1, +4 * 1 and (+4, -4, ...);
- ``mixture3_d10_a3_s1-1-1.5``: the same weights with scales 1 / 1 / 1.5 and
  centres at distance 3 (-3 * 1, +3 * 1, (+3, -3, ...)), like the two-mode
  mixture's (other variants by name: ``mixture_spec``);
- ``funnel_d10``: Neal's funnel, v ~ N(0, 3), x_i ~ N(0, exp(v / 2)), i = 1..9
  (centred, the hard way round);
- ``phi4_n32`` / ``phi4_n64``: the 1-D Ginzburg-Landau (phi^4) field of Gabrie,
  Rotskoff & Vanden-Eijnden (PNAS 2022) with N sites, ``phi_0 = phi_{N+1} =
  0``, ``beta U = 20 [sum (phi_i - phi_{i-1})^2 / (2a) + sum (1 - phi_i^2)^2 /
  (4a)]``, ``a = 0.1``, no external field: two modes (field near +1 or -1)
  of weight 0.5 each by symmetry; judged by the share of draws with a positive
  mean field;
- ``eight_schools_centred``: eight schools written the centred way
  (theta ~ N(mu, tau)), a funnel in tau; it has the same posterior as the
  non-centred reference, so it is judged against that reference's draws;
- every reference posterior (``pymc_ext.models.reference_model``).

Samplers, in one run:

- ``flow_mcmc``: :func:`pymc_ext.flow_sampler.flow_mcmc` with its defaults
  (walkers, adaptation rounds and draws per walker from the dimension: 64
  walkers, 6 rounds and 500 draws at D=10; 256, 10 and 1000 at D=50; 128
  walkers and 10 rounds at D=10 when seeding finds three modes), plus
  any keywords given with ``--flow-options`` (shown in the notes column),
  on the model's vectorised log density (``pymc_ext.log_density``);
- ``pymc``: ``pm.sample(nuts_sampler="pymc")``, 4 chains, tune=1000, 1000 draws;
- ``nutpie``: ``nutpie.sample`` (numba backend), 4 chains, tune=1000, 1000 draws;
- ``smc``: ``pm.sample_smc`` with its defaults (4 chains of 2000 particles, one
  core), where a flat prior is N(0, 10^2) instead (``build_target(proper_prior=True)``);
- ``cmdstan``: plain CmdStan through cmdstanpy with its defaults (4 chains, 1000
  warmup, 1000 draws), on the funnel's and the phi^4 field's Stan programs
  (``STAN_PROGRAMS``), compile in the notes;
- ``nutpie_flow``: ``nutpie.sample(adaptation="flow")`` on the jax backend
  (needs ``jax`` and ``flowjax``), 4 chains, tune=1000, 1000 draws;
- ``flowmc``: flowMC 0.6.5 (JAX), the issue's anchor, with the settings of
  its own tutorial (``FLOWMC_SETTINGS``: 20 chains, an RQ spline flow, MALA
  local moves, 10 training and 10 production loops), chains started from
  the model's initial point plus N(0, 3^2 I); it samples the same flat log
  density (the PyTensor graph translated to JAX). Needs ``flowMC``, which
  ``make bench`` installs (the ``bench`` extra).

Reported per run: wall time (the whole call, compile included; the PyTensor
cache warm after the first target), gradient evaluations (tune + draws; for
flow_mcmc also Pathfinder and the flow fits' reverse-KL gradients, if any),
max R-hat and min bulk ESS over the posterior, divergences, and the accuracy:
mixture weight error (share of draws nearest each mode against the true
weight, the largest difference), funnel mean and sd error of ``v``, or the
reference errors (mean error in reference sd, relative sd error; largest over
parameters). For flow_mcmc also the global acceptance and mode hops.

Writes ``benchmarks/results/flows.md`` and ``flows.json`` (``--tag`` adds a
suffix), updated after every run so a long run can be stopped.

Usage::

    python benchmarks/flows.py                       # everything (long: about an hour)
    python benchmarks/flows.py --quick               # mixture2_d10, funnel_d10, 2 references
    python benchmarks/flows.py --targets mixture2_d10,funnel_d10 --samplers flow_mcmc,pymc
    python benchmarks/flows.py --targets funnel_d10 --samplers flow_mcmc --flow-options \
        '{"fit": "reverse", "local_steps": 0, "flow_kwargs": {"kind": "maf", "passes": null}}'
    python benchmarks/flows.py --family 40          # the random-mixture family (long)
    python benchmarks/flows.py --family 8 --family-dims 2,6,10   # a development subset

``--family N`` runs ``benchmarks/mixture_family.py``'s family instead of the
targets above: flow_mcmc with ``explore="tempering"``, with its defaults
(``explore="climbs"``) and ``pm.sample_smc`` on N random mixtures, and
writes ``benchmarks/results/flows_family.md`` (the error distribution per
sampler, silent failures, times; one row per instance).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import REFERENCE_NAMES, machine_info, write_json  # noqa: E402

REFERENCES = list(REFERENCE_NAMES)
TOY_TARGETS = ["mixture2_d10", "mixture2_d50", "mixture3_d10", "mixture3_d10_a3_s1-1-1.5",
               "funnel_d10", "funnel_d50", "phi4_n32", "phi4_n64", "eight_schools_centred"]
ALL_TARGETS = TOY_TARGETS + REFERENCES
QUICK_TARGETS = ["mixture2_d10", "funnel_d10", "eight_schools-eight_schools_noncentered",
                 "kidiq-kidscore_momiq"]
ALL_SAMPLERS = ["flow_mcmc", "pymc", "nutpie", "nutpie_flow", "flowmc"]


# -- targets ---------------------------------------------------------------------------------


def mixture_spec(name: str) -> dict[str, Any]:
    """Weights, centres and scales of the mixture targets.

    ``mixture3_d10`` is the three-mode target: weights 0.2 / 0.5 / 0.3, scales
    0.5 / 1 / 1.5, centres at -4 * 1, +4 * 1 and (+4, -4, +4, ...). Variants
    of it name the centre distance and the three scales, for example
    ``mixture3_d10_a3_s1-1-1.5`` (centres at -3 * 1, +3 * 1 and (+3, -3, ...),
    scales 1, 1 and 1.5); ``benchmarks/mode_basins.py --grid`` uses them.
    """
    if name.startswith("mixture2"):
        dim = int(name.split("_d")[1])
        one = np.ones(dim)
        return {"dim": dim, "weights": [0.3, 0.7], "centers": [-3 * one, 3 * one],
                "scales": [1.0, 1.0]}
    if name.startswith("mixture3"):
        parts = name.split("_")
        dim = int(parts[1].removeprefix("d"))
        dist, scales = 4.0, [0.5, 1.0, 1.5]
        for part in parts[2:]:
            if part.startswith("a"):
                dist = float(part[1:])
            elif part.startswith("s"):
                scales = [float(v) for v in part[1:].split("-")]
            else:
                raise KeyError(name)
        if len(scales) != 3:
            raise KeyError(name)
        one = np.ones(dim)
        alt = np.where(np.arange(dim) % 2 == 0, dist, -dist)
        return {"dim": dim, "weights": [0.2, 0.5, 0.3],
                "centers": [-dist * one, dist * one, alt], "scales": scales}
    raise KeyError(name)


def _all_references() -> list[str]:
    """Every reference posterior with a PyMC version (``--targets all-references``)."""
    from pymc_ext.references.models import PYMC_REFERENCE_NAMES

    return sorted(PYMC_REFERENCE_NAMES)


def build_target(name: str, proper_prior: bool = False):
    """``(pm.Model, info)`` for a target name.

    ``proper_prior`` (for ``pm.sample_smc``, which starts from the prior): the
    mixtures' and the phi^4 field's flat priors become N(0, 10^2) per coordinate
    (on phi^4, whose sites stay within about 1.5 of 0, that changes the log density
    by under 0.02); the funnel, all prior as written (so SMC's first stage would
    already be the target), becomes a N(0, 10^2) prior times the funnel's density
    over it (the same posterior).
    """
    import pymc as pm
    import pytensor.tensor as pt

    def flat(var: str, size: int):
        if proper_prior:
            return pm.Normal(var, 0.0, 10.0, shape=size)
        return pm.Flat(var, shape=size)

    if name.startswith("mixture"):
        spec = mixture_spec(name)
        with pm.Model() as model:
            x = flat("x", spec["dim"])
            comps = [
                np.log(w) + pm.logp(pm.Normal.dist(c, s), x).sum()
                for w, c, s in zip(spec["weights"], spec["centers"], spec["scales"], strict=True)
            ]
            pm.Potential("mixture", pt.logsumexp(pt.stack(comps)))
        return model, {"kind": "mixture", **spec}
    if name.startswith("funnel"):
        dim = int(name.split("_d")[1])
        with pm.Model() as model:
            if proper_prior:  # the funnel over a N(0, 10^2) prior: SMC tempers from that prior
                v, x = pm.Normal("v", 0.0, 10.0), pm.Normal("x", 0.0, 10.0, shape=dim - 1)
                wide = pm.logp(pm.Normal.dist(0.0, 10.0), pt.concatenate([v[None], x])).sum()
                funnel = (pm.logp(pm.Normal.dist(0.0, 3.0), v)
                          + pm.logp(pm.Normal.dist(0.0, pm.math.exp(v / 2)), x).sum())
                pm.Potential("funnel_over_prior", funnel - wide)
            else:
                v = pm.Normal("v", 0.0, 3.0)
                pm.Normal("x", 0.0, pm.math.exp(v / 2), shape=dim - 1)
        return model, {"kind": "funnel", "dim": dim}
    if name.startswith("phi4"):
        n, a, beta = int(name.split("_n")[1]), 0.1, 20.0
        with pm.Model() as model:
            phi = flat("phi", n)
            padded = pt.concatenate([pt.zeros(1), phi, pt.zeros(1)])
            kinetic = pt.sum(pt.diff(padded) ** 2) / (2 * a)
            potential = pt.sum((1 - phi**2) ** 2) / (4 * a)
            pm.Potential("minus_beta_u", -beta * (kinetic + potential))
        return model, {"kind": "phi4", "dim": n}
    if name == "eight_schools_centred":
        from pymc_ext.models import EIGHT_SCHOOLS_DATA as data

        with pm.Model(coords={"school": np.arange(data["J"])}) as model:
            mu = pm.Normal("mu", 0.0, 5.0)
            tau = pm.HalfCauchy("tau", 5.0)
            theta = pm.Normal("theta", mu, tau, dims="school")
            pm.Normal("y", theta, np.asarray(data["sigma"], float), observed=data["y"],
                      dims="school")
        return model, {"kind": "reference", "reference": "eight_schools-eight_schools_noncentered"}
    from pymc_ext.models import reference_model

    return reference_model(name), {"kind": "reference", "reference": name}


# -- metrics ---------------------------------------------------------------------------------


def _flat_draws(idata, var: str) -> np.ndarray:
    x = idata.posterior[var].values
    return x.reshape(x.shape[0], x.shape[1], -1)


def accuracy(name: str, info: dict[str, Any], idata) -> dict[str, Any]:
    """Target-specific accuracy numbers."""
    if info["kind"] == "mixture":
        x = _flat_draws(idata, "x")
        centers = np.asarray(info["centers"])
        scales = np.asarray(info["scales"])
        d2 = ((x[..., None, :] - centers) ** 2).sum(-1) / scales**2 + 2 * x.shape[-1] * np.log(
            scales
        )
        label = np.argmin(d2, axis=-1)
        shares = [float((label == k).mean()) for k in range(len(info["weights"]))]
        errs = [abs(s - w) for s, w in zip(shares, info["weights"], strict=True)]
        per_chain_plus = [float((label[c] == np.argmax(info["weights"])).mean())
                          for c in range(label.shape[0])]
        return {
            "weights": shares,
            "weight_error": max(errs),
            "chains_in_one_mode": int(
                sum(len(np.unique(label[c])) == 1 for c in range(label.shape[0]))
            ),
            "heavy_mode_share_per_chain_range": [min(per_chain_plus), max(per_chain_plus)],
        }
    if info["kind"] == "funnel":
        v = idata.posterior["v"].values.ravel()
        return {"v_mean": float(v.mean()), "v_sd": float(v.std()),
                "v_mean_error": float(abs(v.mean())), "v_sd_error": float(abs(v.std() - 3.0))}
    if info["kind"] == "phi4":
        mean_field = _flat_draws(idata, "phi").mean(-1)
        plus = mean_field > 0
        share = float(plus.mean())
        return {"weights": [1 - share, share], "weight_error": abs(share - 0.5),
                "plus_share_per_chain_range": [float(plus.mean(1).min()),
                                               float(plus.mean(1).max())]}
    from pymc_ext.reference import compare_to_reference

    out = compare_to_reference(idata, info["reference"])
    return {"max_mean_error": out["max_mean_error"], "max_sd_error": out["max_sd_error"]}


def convergence(idata) -> dict[str, Any]:
    import arviz as az

    post = idata.posterior
    rhat = az.rhat(post)
    ess = az.ess(post)
    return {
        "max_rhat": float(max(float(rhat[v].max()) for v in rhat.data_vars)),
        "min_ess_bulk": float(min(float(ess[v].min()) for v in ess.data_vars)),
        "draws_total": int(post.sizes["chain"] * post.sizes["draw"]),
    }


# -- samplers --------------------------------------------------------------------------------


#: keyword arguments for flow_mcmc on top of its defaults (``--flow-options``)
FLOW_OPTIONS: dict[str, Any] = {}


def run_flow_mcmc(model, seed: int, quick: bool) -> tuple[Any, dict[str, Any]]:
    from pymc_ext.flow_sampler import flow_mcmc
    from pymc_ext.pymc_model import log_density

    t0 = time.perf_counter()
    density = log_density(model)
    t_compile = time.perf_counter() - t0
    kwargs = {**({"draws": 300} if quick else {}), **FLOW_OPTIONS}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        idata = flow_mcmc(density, random_seed=seed, progressbar=False, **kwargs)
    attrs = idata.sample_stats.attrs
    extra = {
        "options": dict(FLOW_OPTIONS),
        "setup_s": t_compile,
        "grad_evals": int(attrs["grad_evals"]),
        "divergences": int(attrs["divergences"]),
        "global_acceptance": float(attrs["global_acceptance"]),
        "local_acceptance": float(attrs["local_acceptance"]),
        "mode_hops": int(attrs["mode_hops"]),
        "n_modes": int(attrs["n_modes"]),
        "restarted_walkers": int(attrs.get("restarted_walkers", 0)),
        "fit": str(attrs.get("fit", "")),
        "fit_reason": str(attrs.get("fit_reason", "")),
        "flow_pareto_k": float(attrs.get("flow_pareto_k", float("nan"))),
        "walkers": int(idata.posterior.sizes["chain"]),
        "adaptation_s": float(attrs["adaptation_seconds"]),
        "sampling_s": float(attrs["sampling_seconds"]),
        "global_acceptance_per_round": attrs["global_acceptance_per_round"],
        "warnings": [str(w.message)[:160] for w in caught
                     if "FlowMCMCWarning" in type(w.message).__name__],
    }
    return idata, extra


def run_pymc(model, seed: int, quick: bool) -> tuple[Any, dict[str, Any]]:
    import pymc as pm

    n = 500 if quick else 1000
    with model:
        idata = pm.sample(draws=n, tune=n, chains=4, cores=1, nuts_sampler="pymc",
                          random_seed=seed, progressbar=False, discard_tuned_samples=False,
                          compute_convergence_checks=False)
    grads = int(idata.sample_stats["n_steps"].sum())
    if "warmup_sample_stats" in idata.children:
        grads += int(idata.warmup_sample_stats["n_steps"].sum())
    return idata, {"grad_evals": grads,
                   "divergences": int(idata.sample_stats["diverging"].sum())}


def _nutpie(model, seed: int, quick: bool, flow: bool) -> tuple[Any, dict[str, Any]]:
    import nutpie

    n = 500 if quick else 1000
    t0 = time.perf_counter()
    if flow:
        compiled = nutpie.compile_pymc_model(model, backend="jax", gradient_backend="jax")
    else:
        compiled = nutpie.compile_pymc_model(model)
    t_compile = time.perf_counter() - t0
    kwargs = {"adaptation": "flow"} if flow else {}
    idata = nutpie.sample(compiled, draws=n, tune=n, chains=4, cores=1, seed=seed,
                          progress_bar=False, save_warmup=True, **kwargs)
    grads = int(idata.sample_stats["n_steps"].sum())
    if "warmup_sample_stats" in idata.children:
        grads += int(idata.warmup_sample_stats["n_steps"].sum())
    return idata, {"setup_s": t_compile, "grad_evals": grads,
                   "divergences": int(idata.sample_stats["diverging"].sum())}


def run_nutpie(model, seed: int, quick: bool):
    return _nutpie(model, seed, quick, flow=False)


def run_nutpie_flow(model, seed: int, quick: bool):
    from importlib.util import find_spec

    missing = [p for p in ("jax", "flowjax") if find_spec(p) is None]
    if missing:
        raise RuntimeError(
            f"nutpie's flow adaptation needs {missing}: pip install jax flowjax"
        )
    return _nutpie(model, seed, quick, flow=True)


def run_smc(model, seed: int, quick: bool, target: str = "") -> tuple[Any, dict[str, Any]]:
    """``pm.sample_smc`` with its defaults (4 chains, one core), on the proper-prior model."""
    import pymc as pm

    if target:
        model, _ = build_target(target, proper_prior=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with model:
            idata = pm.sample_smc(draws=500 if quick else 2000, chains=4, cores=1,
                                  random_seed=seed, progressbar=False,
                                  compute_convergence_checks=False)
    stats = idata.sample_stats
    # the tempering stages of each chain: a list of betas per chain (an object array), or a
    # stage dimension when the chains took the same number
    betas = stats["beta"].values if "beta" in stats else np.zeros((0,))
    stages = max((np.size(np.asarray(b, dtype=float)) for b in np.atleast_1d(betas)), default=0)
    if betas.ndim > 1:
        stages = int(betas.shape[-1])
    return idata, {
        "notes": "from a N(0, 10^2) prior per coordinate" if target.startswith(
            ("phi4", "mix", "funnel")) else "",
        "warnings": [str(w.message)[:160] for w in caught if issubclass(w.category, UserWarning)],
        "smc_stages": stages,
        "divergences": "-",
    }


#: Stan programs of the toy targets, for the ``cmdstan`` peer (CmdStan's defaults)
STAN_PROGRAMS = {
    "funnel": """
data { int<lower=2> D; }
parameters { real v; vector[D - 1] x; }
model { v ~ normal(0, 3); x ~ normal(0, exp(v / 2)); }
""",
    "phi4": """
data { int<lower=1> N; }
parameters { vector[N] phi; }
model {
  real a = 0.1;
  vector[N + 2] p = append_row(append_row(rep_vector(0, 1), phi), rep_vector(0, 1));
  target += -20 * (dot_self(p[2:(N + 2)] - p[1:(N + 1)]) / (2 * a)
                   + sum(square(1 - square(phi))) / (4 * a));
}
""",
}


def run_cmdstan(model, seed: int, quick: bool, target: str = "") -> tuple[Any, dict[str, Any]]:
    """Plain CmdStan (cmdstanpy defaults: 4 chains, 1000 warmup, 1000 draws), compile included."""
    import tempfile

    import arviz as az
    import cmdstanpy

    kind = target.split("_")[0]
    if kind not in STAN_PROGRAMS:
        raise RuntimeError(f"no Stan program for {target!r} here (funnel and phi4 only)")
    size = int(target.split("_d")[1]) if kind == "funnel" else int(target.split("_n")[1])
    folder = Path(tempfile.mkdtemp(prefix="flows_stan_"))
    (folder / f"{kind}.stan").write_text(STAN_PROGRAMS[kind])
    t0 = time.perf_counter()
    stan = cmdstanpy.CmdStanModel(stan_file=str(folder / f"{kind}.stan"))
    compile_s = time.perf_counter() - t0
    n = 500 if quick else 1000
    fit = stan.sample(data={"D" if kind == "funnel" else "N": size}, chains=4, seed=seed,
                      iter_warmup=n, iter_sampling=n, save_warmup=True, show_progress=False)
    idata = az.from_cmdstanpy(fit)
    mv = fit.method_variables()
    n_warm = mv["n_leapfrog__"].shape[0] - fit.num_draws_sampling
    return idata, {"setup_s": compile_s, "grad_evals": int(mv["n_leapfrog__"].sum()),
                   "divergences": int(mv["divergent__"][n_warm:].sum())}


#: flowMC's tutorial settings (docs/tutorials/dualmoon.ipynb of flowMC 0.6.5), as in the issue
FLOWMC_SETTINGS: dict[str, Any] = {
    "n_chains": 20, "n_local_steps": 100, "n_global_steps": 10, "n_training_loops": 10,
    "n_production_loops": 10, "n_epochs": 5, "rq_spline_hidden_units": [32, 32],
    "rq_spline_n_bins": 8, "rq_spline_n_layers": 4, "learning_rate": 5e-3,
    "batch_size": 10000, "n_max_examples": 10000, "start_sd": 3.0,
}


def run_flowmc(model, seed: int, quick: bool) -> tuple[Any, dict[str, Any]]:
    """flowMC (JAX; RQ spline flow + MALA) with its tutorial settings: the issue's anchor.

    The chains start from the model's initial point plus N(0, 3^2 I), the
    issue's broad start. flowMC gets the same flat log density as flow_mcmc
    (the PyTensor graph of ``pymc_ext.log_density``, translated to JAX).
    """
    from importlib.util import find_spec

    missing = [p for p in ("jax", "flowMC") if find_spec(p) is None]
    if missing:
        raise RuntimeError(f"the flowMC anchor needs {missing}: pip install 'flowMC==0.6.5'")
    import tempfile

    import jax
    from flowMC.resource_strategy_bundle.RQSpline_MALA import RQSpline_MALA_Bundle
    from flowMC.Sampler import Sampler
    from pymc.sampling.jax import get_jaxified_graph

    from pymc_ext.arviz_io import to_datatree
    from pymc_ext.pymc_model import log_density

    t0 = time.perf_counter()
    density = log_density(model)
    inputs, output = density._graphs["logp"]()
    logp_jax = get_jaxified_graph(inputs=inputs, outputs=[output])
    t_compile = time.perf_counter() - t0

    def logpdf(x, data):
        return logp_jax(x)[0]

    s = dict(FLOWMC_SETTINGS)
    n_chains, start_sd = s.pop("n_chains"), s.pop("start_sd")
    loops = {"n_training_loops": 5, "n_production_loops": 5} if quick else {}
    s.update(loops)
    key = jax.random.PRNGKey(seed)
    key, sub = jax.random.split(key)
    bundle = RQSpline_MALA_Bundle(sub, n_chains, density.dim, logpdf, s.pop("n_local_steps"),
                                  s.pop("n_global_steps"), s.pop("n_training_loops"),
                                  s.pop("n_production_loops"), s.pop("n_epochs"), **s)
    start = np.random.default_rng(seed).normal(0.0, start_sd, size=(n_chains, density.dim))
    x0 = jax.numpy.asarray(density.initial_point()[None, :] + start)
    with tempfile.TemporaryDirectory() as outdir:
        sampler = Sampler(n_dim=density.dim, n_chains=n_chains, rng_key=key,
                          resource_strategy_bundles=bundle, outdir=outdir,
                          checkpoint_interval=0)
        sampler.sample(x0, {})
    res = sampler.resources
    draws = np.asarray(res["positions_production"].data)
    g_acc = np.asarray(res["global_accs_production"].data)
    l_acc = np.asarray(res["local_accs_production"].data)
    settings = {**FLOWMC_SETTINGS, **loops}
    n_loops = settings["n_training_loops"] + settings["n_production_loops"]
    # MALA takes one gradient per step; the flow's global moves take none.
    grads = n_chains * n_loops * settings["n_local_steps"]
    return to_datatree(density, draws), {
        "setup_s": t_compile,
        "grad_evals": grads,
        "divergences": 0,
        "global_acceptance": float(g_acc[np.isfinite(g_acc)].mean()),
        "local_acceptance": float(l_acc[np.isfinite(l_acc)].mean()),
        "flowmc_settings": settings,
    }


RUNNERS = {"flow_mcmc": run_flow_mcmc, "pymc": run_pymc, "nutpie": run_nutpie,
           "nutpie_flow": run_nutpie_flow, "flowmc": run_flowmc, "smc": run_smc,
           "cmdstan": run_cmdstan}
#: the runners that are told the target's name (they build their own model)
TARGET_RUNNERS = ("smc", "cmdstan")


# -- report ----------------------------------------------------------------------------------


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not np.isfinite(v):
            return str(v)
        return f"{v:.{digits}f}" if abs(v) < 1e4 else f"{v:.3g}"
    return str(v)


def write_report(results: list[dict[str, Any]], meta: dict[str, Any], out: Path, tag: str):
    out.mkdir(parents=True, exist_ok=True)
    stem = "flows" + (f"_{tag}" if tag else "")
    write_json({"meta": meta, "results": results}, out / f"{stem}.json")
    lines = [
        "# Flow MCMC benchmark",
        "",
        f"Command: `{meta['command']}`  ",
        *[f"{line}  " for line in meta.get("reruns", [])],
        f"Machine: {meta['machine']}; started {meta['started']}; "
        f"torch threads {meta['torch_threads']}; load average at start {meta['load']}.  ",
        "Wall times include compilation (PyTensor cache warm after the first target; "
        "nutpie's numba/jax compile is in the time). The machine was shared with other "
        "jobs, so compare times within a target only.",
        "",
        "| target | sampler | wall s | grad evals | accuracy | max R-hat | min ESS | "
        "divergences | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            what = r["error"] if r["error"].startswith("not run") else f"failed: {r['error']}"
            lines.append(f"| {r['target']} | {r['sampler']} | - | - | {what[:130]} "
                         "| - | - | - | - |")
            continue
        acc = r["accuracy"]
        if "weight_error" in acc:
            acc_s = (f"weight err {_fmt(acc['weight_error'], 3)} "
                     f"(shares {', '.join(_fmt(s, 3) for s in acc['weights'])})")
            if "chains_in_one_mode" in acc:
                acc_s += f"; chains stuck in one mode: {acc['chains_in_one_mode']}"
            else:
                acc_s += ("; plus share per chain "
                          + " to ".join(_fmt(v) for v in acc["plus_share_per_chain_range"]))
        elif "v_mean_error" in acc:
            acc_s = f"v mean {_fmt(acc['v_mean'])}, sd {_fmt(acc['v_sd'])} (truth 0, 3)"
        else:
            acc_s = (f"mean err {_fmt(acc['max_mean_error'], 3)}, "
                     f"sd err {_fmt(acc['max_sd_error'], 3)}")
        notes = []
        if r["sampler"].startswith("flow_mcmc"):
            notes.append(f"global acc {_fmt(r['global_acceptance'])}, hops {r['mode_hops']}, "
                         f"{r['walkers']} walkers, modes {r['n_modes']}, adapt "
                         f"{_fmt(r['adaptation_s'], 0)} s + sample {_fmt(r['sampling_s'], 0)} s")
            if r.get("fit"):
                notes.append(f"fit {r['fit']}, flow k {_fmt(r['flow_pareto_k'])}"
                             + (f" (switched: {r['fit_reason']})" if r.get("fit_reason") else ""))
            if r.get("restarted_walkers"):
                notes.append(f"{r['restarted_walkers']} stuck walkers restarted")
            if r.get("options"):
                notes.append("options " + json.dumps(r["options"]))
            if r.get("warnings"):
                notes.append(f"{len(r['warnings'])} warning(s)")
        if r["sampler"] == "flowmc":
            notes.append(f"global acc {_fmt(r['global_acceptance'])}, local acc "
                         f"{_fmt(r['local_acceptance'])}, "
                         f"{r['flowmc_settings']['n_chains']} chains from N(init, 3^2 I); "
                         "grad evals = MALA steps")
        if r["sampler"] in TARGET_RUNNERS:
            if r.get("notes"):
                notes.append(r["notes"])
            if r.get("smc_stages"):
                notes.append(f"{r['smc_stages']} stages (most of any chain); grad evals not "
                             "counted")
            if r.get("warnings"):
                notes.append(f"{len(r['warnings'])} warning(s)")
        if r.get("setup_s") is not None:
            notes.append(f"compile {_fmt(r['setup_s'], 0)} s")
        lines.append(
            f"| {r['target']} | {r['sampler']} | {_fmt(r['wall_s'], 0)} | "
            f"{r.get('grad_evals', '-')} | "
            f"{acc_s} | {_fmt(r['max_rhat'], 3)} | {_fmt(r['min_ess_bulk'], 0)} | "
            f"{r['divergences']} | {'; '.join(notes)} |"
        )
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")


def _run_family(args: argparse.Namespace, argv: list[str] | None) -> int:
    import torch

    from benchmarks.mixture_family import parse_instances, run_family

    torch.set_num_threads(args.threads)
    meta = {
        "command": "python benchmarks/flows.py " + shlex.join(argv if argv is not None
                                                              else sys.argv[1:]),
        "machine": machine_info(),
        "started": time.strftime("%Y-%m-%d %H:%M"),
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }
    dims = tuple(int(d) for d in args.family_dims.split(","))
    merge = None
    if args.family_merge:
        merge = json.loads(Path(args.family_merge).read_text())["results"]
        meta["command"] += f" (joined with the rows of {Path(args.family_merge).name})"
    run_family(args.family, args.family_seed, dims, args.family_samplers.split(","),
               Path(args.out), args.tag, meta, run_seed=args.seed,
               instances=parse_instances(args.family_instances) if args.family_instances
               else None, merge=merge)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"targets {','.join(QUICK_TARGETS)}; 300-500 draws")
    parser.add_argument("--targets", default=None,
                        help="comma-separated (short names work); all-references: the 31 "
                             "reference posteriors")
    parser.add_argument("--samplers", default=",".join(ALL_SAMPLERS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--tag", default="")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: more threads oversubscribe a shared small machine)")
    parser.add_argument("--skip", default="",
                        help="comma-separated sampler:target pairs not to run (a row says so), "
                             "e.g. nutpie_flow:funnel_d10 (short target names work)")
    parser.add_argument("--flow-options", default="",
                        help="JSON dict of extra flow_mcmc keywords for every flow_mcmc run, "
                             "e.g. '{\"fit\": \"reverse\", \"local_steps\": 0}' (shown in "
                             "the notes column)")
    parser.add_argument("--family", type=int, default=0,
                        help="run N instances of the random-mixture family instead of targets")
    parser.add_argument("--family-seed", type=int, default=0)
    parser.add_argument("--family-dims", default="2,6,10,20")
    parser.add_argument("--family-samplers", default="tempering,climbs,smc")
    parser.add_argument("--family-instances", default="",
                        help="only these instances of the family, e.g. '8,24-39'")
    parser.add_argument("--family-merge", default="",
                        help="a family run's JSON whose rows this run joins (same instance "
                             "and sampler: this run's row replaces it)")
    args = parser.parse_args(argv)
    if args.family:
        return _run_family(args, argv)
    if args.flow_options:
        options = json.loads(args.flow_options)
        if not isinstance(options, dict):
            raise SystemExit("--flow-options must be a JSON object (a dict of keywords).")
        FLOW_OPTIONS.update(options)

    import torch

    torch.set_num_threads(args.threads)
    if args.targets:
        targets = []
        for t in args.targets.split(","):
            if t == "all-references":  # every reference posterior with a PyMC version (31)
                targets += [n for n in _all_references() if n not in targets]
                continue
            match = [n for n in ALL_TARGETS + _all_references() if n == t or n.split("-")[0] == t]
            if not match and t.startswith("mixture3_"):
                mixture_spec(t)  # a variant of the three-mode mixture; KeyError if malformed
                match = [t]
            if not match:
                raise SystemExit(f"Unknown target {t!r}; choose from {ALL_TARGETS}")
            targets.append(match[0])
    else:
        targets = QUICK_TARGETS if args.quick else ALL_TARGETS
    samplers = args.samplers.split(",")
    unknown = [s for s in samplers if s not in RUNNERS]
    if unknown:
        raise SystemExit(f"Unknown sampler(s) {unknown}; choose from {ALL_SAMPLERS}")
    meta = {
        "command": "python benchmarks/flows.py " + shlex.join(argv if argv is not None
                                                              else sys.argv[1:]),
        "machine": machine_info(),
        "started": time.strftime("%Y-%m-%d %H:%M"),
        "torch_threads": torch.get_num_threads(),
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "seed": args.seed,
    }
    skip = {tuple(pair.split(":", 1)) for pair in args.skip.split(",") if ":" in pair}
    results: list[dict[str, Any]] = []
    for target in targets:
        model, info = build_target(target)
        for sampler in samplers:
            row: dict[str, Any] = {"target": target, "sampler": sampler}
            if (sampler, target) in skip or (sampler, target.split("-")[0]) in skip:
                row["error"] = "not run in this run (--skip, to keep the run's time down)"
                results.append(row)
                continue
            print(f"[{time.strftime('%H:%M:%S')}] {target} / {sampler}", flush=True)
            t0 = time.perf_counter()
            try:
                named = {"target": target} if sampler in TARGET_RUNNERS else {}
                idata, extra = RUNNERS[sampler](model, args.seed, args.quick, **named)
                row["wall_s"] = time.perf_counter() - t0
                row.update(extra)
                row.update(convergence(idata))
                row["accuracy"] = accuracy(target, info, idata)
            except Exception as err:  # noqa: BLE001 - record and go on
                row["error"] = f"{type(err).__name__}: {err}"
                row["wall_s"] = time.perf_counter() - t0
                traceback.print_exc()
            print("   ", {k: v for k, v in row.items() if k not in ("warnings",)}, flush=True)
            results.append(row)
            write_report(results, meta, Path(args.out), args.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
