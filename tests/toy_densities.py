"""Toy log densities and Monte Carlo helpers shared by the flow tests.

Real numpy densities (``FunctionLogDensity``) with exact vectorised gradients,
and the share-with-standard-error helper the exactness tests compare against.
"""

from __future__ import annotations

import arviz as az
import numpy as np
import pymc as pm
import xarray as xr

from pymc_ext.density import FunctionLogDensity


def batched(dim: int, logp_batch, grad_batch) -> FunctionLogDensity:
    return FunctionLogDensity(
        dim,
        lambda x: logp_batch(x[None])[0],
        lambda x: grad_batch(x[None])[0],
        logp_batch,
        grad_batch,
    )


def gaussian_density(mean, cov) -> FunctionLogDensity:
    """Unnormalised N(mean, cov): logp and gradient vectorised."""
    mean = np.asarray(mean, float)
    prec = np.linalg.inv(cov)

    def logp_batch(X):
        d = X - mean
        return -0.5 * np.einsum("ni,ij,nj->n", d, prec, d)

    def grad_batch(X):
        return -(X - mean) @ prec

    return batched(len(mean), logp_batch, grad_batch)


def mixture_density(dim, weights, centers, scales) -> FunctionLogDensity:
    """Isotropic Gaussian mixture, normalised: logp and gradient vectorised."""
    weights = np.asarray(weights, float)
    centers = np.asarray(centers, float)
    scales = np.asarray(scales, float)

    def comps(X):
        out = []
        for w, c, s in zip(weights, centers, scales, strict=True):
            z = (X - c) / s
            out.append(
                np.log(w) - 0.5 * (z * z).sum(-1) - dim * np.log(s) - 0.5 * dim * np.log(2 * np.pi)
            )
        return np.stack(out, -1)

    def logp_batch(X):
        return np.logaddexp.reduce(comps(X), axis=-1)

    def grad_batch(X):
        c = comps(X)
        r = np.exp(c - np.logaddexp.reduce(c, axis=-1, keepdims=True))
        return sum(r[:, [k]] * -(X - centers[k]) / scales[k] ** 2 for k in range(len(weights)))

    return batched(dim, logp_batch, grad_batch)


def mixture_draws(rng, n, weights, centers, scales) -> np.ndarray:
    """``n`` exact draws from the isotropic mixture."""
    k = rng.choice(len(weights), size=n, p=weights)
    centers, scales = np.asarray(centers, float), np.asarray(scales, float)
    return centers[k] + scales[k, None] * rng.normal(size=(n, centers.shape[1]))


def share_and_se(indicator) -> tuple[float, float]:
    """Mean of a (chain, draw) indicator and its Monte Carlo standard error (ArviZ ESS)."""
    values = np.asarray(indicator, dtype=float)
    ess = float(az.ess(xr.Dataset({"i": (("chain", "draw"), values)}))["i"])
    p = float(values.mean())
    return p, float(np.sqrt(max(p * (1 - p), 1e-4) / max(ess, 1.0)))


def funnel_density(dim: int) -> FunctionLogDensity:
    """Neal's funnel: v ~ N(0, 3^2), x_i | v ~ N(0, exp(v / 2)^2), i = 1..dim-1 (v first)."""

    def logp_batch(X):
        v, x = X[:, 0], X[:, 1:]
        return (-v**2 / 18.0 - 0.5 * (x**2).sum(1) * np.exp(-v) - 0.5 * (dim - 1) * v
                - 0.5 * dim * np.log(2 * np.pi) - np.log(3.0))

    def grad_batch(X):
        v, x = X[:, 0], X[:, 1:]
        g = np.empty_like(X)
        g[:, 0] = -v / 9.0 + 0.5 * (x**2).sum(1) * np.exp(-v) - 0.5 * (dim - 1)
        g[:, 1:] = -x * np.exp(-v)[:, None]
        return g

    return batched(dim, logp_batch, grad_batch)


def normal_model(y) -> pm.Model:
    """mu ~ N(0, 1), sigma ~ HalfNormal(1), y ~ N(mu, sigma): a user's model function."""
    y = np.asarray(y, dtype=float)
    with pm.Model(coords={"obs": np.arange(len(y))}) as model:
        mu = pm.Normal("mu", 0.0, 1.0)
        sigma = pm.HalfNormal("sigma", 1.0)
        pm.Normal("y", mu, sigma, observed=y, dims="obs")
    return model


def normal_model_posterior_means(y, mu_range=(-3.0, 8.0), sigma_max=6.0) -> dict[str, float]:
    """Exact posterior means of :func:`normal_model` by quadrature on a fine grid."""
    from scipy import stats

    mu = np.linspace(*mu_range, 901)[:, None]
    sigma = np.linspace(0.005, sigma_max, 1200)[None, :]
    logp = stats.norm.logpdf(mu) + stats.halfnorm.logpdf(sigma)
    logp = logp + stats.norm.logpdf(np.asarray(y)[:, None, None], mu, sigma).sum(0)
    w = np.exp(logp - logp.max())
    w /= w.sum()
    return {"mu": float((w * mu).sum()), "sigma": float((w * sigma).sum())}
