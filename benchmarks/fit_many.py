"""fit_many on many simulated datasets: routes, time per dataset, error against the exact answer.

The model is the normal model of the tests (mu ~ N(0, 1), sigma ~ HalfNormal(1),
six observations), whose exact posterior means come from quadrature, so every
dataset's final posterior is checked. Datasets are prior-predictive
simulations (what the amortizer was trained on) plus a share of datasets far
outside it.

    python benchmarks/fit_many.py [--datasets 200] [--far 0.1] [--simulations 20000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pymc as pm
import torch

import pymc_ext


def build(y: np.ndarray) -> pm.Model:
    with pm.Model(coords={"obs": np.arange(len(y))}) as model:
        mu = pm.Normal("mu", 0.0, 1.0)
        sigma = pm.HalfNormal("sigma", 1.0)
        pm.Normal("y", mu, sigma, observed=np.asarray(y, dtype=float), dims="obs")
    return model


def _grid_moments(y: np.ndarray, mu: np.ndarray, log_sigma: np.ndarray) -> dict:
    """Posterior mean and sd of mu and sigma on a grid (uniform in mu and log sigma)."""
    from scipy import stats

    mu, log_sigma = mu[:, None], log_sigma[None, :]
    sigma = np.exp(log_sigma)
    logp = stats.norm.logpdf(mu) + stats.halfnorm.logpdf(sigma) + log_sigma  # Jacobian
    logp = logp + stats.norm.logpdf(y[:, None, None], mu, sigma).sum(0)
    w = np.exp(logp - logp.max())
    w /= w.sum()
    out = {}
    for name, grid in (("mu", mu), ("sigma", sigma), ("log_sigma", log_sigma)):
        m = float((w * grid).sum())
        out[name] = (m, float(np.sqrt((w * (grid - m) ** 2).sum())))
    return out


def exact_moments(y: np.ndarray) -> dict[str, tuple[float, float]]:
    """Exact posterior moments by quadrature: a wide grid, then a fine one around the mass."""
    coarse = _grid_moments(y, np.linspace(-6.0, 12.0, 1801), np.linspace(-9.0, 3.0, 1201))
    (m_mu, s_mu), (m_ls, s_ls) = coarse["mu"], coarse["log_sigma"]
    s_mu, s_ls = max(s_mu, 1e-3), max(s_ls, 1e-3)
    fine = _grid_moments(
        y,
        np.linspace(m_mu - 12 * s_mu, m_mu + 12 * s_mu, 1201),
        np.linspace(m_ls - 12 * s_ls, m_ls + 12 * s_ls, 1201),
    )
    return {"mu": fine["mu"], "sigma": fine["sigma"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=200)
    parser.add_argument("--far", type=float, default=0.1, help="share of datasets far outside")
    parser.add_argument("--simulations", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--worst", type=int, default=0, help="print the worst N datasets")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    amortizer = pymc_ext.Amortizer(build(np.zeros(6)))
    amortizer.fit(args.simulations, random_seed=args.seed, progressbar=False)
    train = time.perf_counter() - t0
    rng = np.random.default_rng(args.seed)
    n_far = int(round(args.far * args.datasets))
    _, sims = pymc_ext.prior_predictive(build(np.zeros(6)), n=args.datasets - n_far,
                                        random_seed=args.seed)
    datasets = [{"y": y} for y in sims["y"]]
    datasets += [{"y": rng.normal(rng.uniform(3, 6), 0.3, 6)} for _ in range(n_far)]
    t0 = time.perf_counter()
    out = amortizer.fit_many(datasets, draws=1000, random_seed=args.seed, progressbar=False)
    seconds = time.perf_counter() - t0
    errors = []
    for data, idata in zip(datasets, out.posteriors, strict=True):
        exact = exact_moments(data["y"])
        post = idata.posterior
        errors.append(max(
            max(abs(float(post[n].mean()) - m) / s, abs(float(post[n].std()) - s) / s)
            for n, (m, s) in exact.items()
        ))
    errors = np.array(errors)
    table = out.table.assign(error_sd=errors)
    print(f"training: {args.simulations} simulations, {train:.0f} s")
    print(f"fit_many: {len(datasets)} datasets in {seconds:.1f} s "
          f"({1000 * seconds / len(datasets):.0f} ms per dataset)")
    print("routes:", out.route_counts(), f"share MCMC {out.share_mcmc:.2f}")
    print("worst error (mean or sd, in posterior sd) by route:")
    print(table.groupby("route")["error_sd"].describe()[["count", "mean", "50%", "max"]]
          .to_string())
    if args.worst:
        worst = table.sort_values("error_sd", ascending=False).head(args.worst)
        print(worst[["route", "pareto_k", "acceptance", "error_sd"]].to_string())
        for i in worst.index:
            exact = exact_moments(datasets[i]["y"])
            post = out.posteriors[i].posterior
            print(i, np.round(datasets[i]["y"], 3).tolist(),
                  {n: (round(float(post[n].mean()), 4), round(float(post[n].std()), 4),
                       tuple(round(v, 4) for v in exact[n])) for n in exact})


if __name__ == "__main__":
    main()
