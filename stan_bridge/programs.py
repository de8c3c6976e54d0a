"""Stan programs of the reference posteriors, for tests, examples and benchmarks.

The programs are the posteriordb ones (BSD-3-Clause, Stan Developers) in the
array syntax that Stan 2.26 and later accept. ``eight_schools`` also follows
the prior-predictive convention of :mod:`stan_bridge.prior` (an
``int prior_only`` data flag and a ``y_rep`` generated quantity), so its data
need ``prior_only = 0``; :func:`reference_data` adds it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

__all__ = [
    "PROGRAMS",
    "REFERENCE_POSTERIORS",
    "EXAMPLE_CODE",
    "EXAMPLE_DATA",
    "example_model",
    "reference_data",
    "write_program",
]

#: A small program used in the docstring examples (with the prior-predictive
#: convention, so every method can be shown on it).
EXAMPLE_CODE = """\
data {
  int<lower=0> N;
  vector[N] y;
  int<lower=0, upper=1> prior_only;
}
parameters {
  real mu;
  real<lower=0> sigma;
}
transformed parameters {
  real log_sigma = log(sigma);
}
model {
  mu ~ normal(0, 10);
  sigma ~ exponential(1);
  if (!prior_only) {
    y ~ normal(mu, sigma);
  }
}
generated quantities {
  vector[N] y_rep = to_vector(normal_rng(rep_vector(mu, N), sigma));
}
"""

#: Data for :data:`EXAMPLE_CODE`.
EXAMPLE_DATA = {"N": 4, "y": [0.3, -1.2, 0.8, 0.1], "prior_only": 0}

PROGRAMS: dict[str, str] = {
    "eight_schools": """\
// Eight schools, non-centred, with the prior-predictive convention:
// prior_only = 1 switches the likelihood off; y_rep simulates y.
data {
  int<lower=0> J;
  array[J] real y;
  array[J] real<lower=0> sigma;
  int<lower=0, upper=1> prior_only;
}
parameters {
  vector[J] theta_trans;
  real mu;
  real<lower=0> tau;
}
transformed parameters {
  vector[J] theta = theta_trans * tau + mu;
}
model {
  theta_trans ~ normal(0, 1);
  mu ~ normal(0, 5);
  tau ~ cauchy(0, 5);
  if (!prior_only) {
    y ~ normal(theta, sigma);
  }
}
generated quantities {
  array[J] real y_rep = normal_rng(theta, sigma);
}
""",
    "arK": """\
// AR(K) model (posteriordb arK).
data {
  int<lower=0> K;
  int<lower=0> T;
  array[T] real y;
}
parameters {
  real alpha;
  array[K] real beta;
  real<lower=0> sigma;
}
model {
  alpha ~ normal(0, 10);
  beta ~ normal(0, 10);
  sigma ~ cauchy(0, 2.5);
  for (t in (K + 1):T) {
    real mu = alpha;
    for (k in 1:K) {
      mu += beta[k] * y[t - k];
    }
    y[t] ~ normal(mu, sigma);
  }
}
""",
    "gp_pois_regr": """\
// Latent Gaussian process with a Poisson likelihood (posteriordb gp_pois_regr).
data {
  int<lower=1> N;
  array[N] real x;
  array[N] int<lower=0> k;
}
parameters {
  real<lower=0> rho;
  real<lower=0> alpha;
  vector[N] f_tilde;
}
transformed parameters {
  vector[N] f;
  {
    matrix[N, N] cov = cov_exp_quad(x, alpha, rho)
                       + diag_matrix(rep_vector(1e-10, N));
    matrix[N, N] L_cov = cholesky_decompose(cov);
    f = L_cov * f_tilde;
  }
}
model {
  rho ~ gamma(25, 4);
  alpha ~ normal(0, 2);
  f_tilde ~ normal(0, 1);
  k ~ poisson_log(f);
}
""",
    "low_dim_gauss_mix": """\
// Two-component normal mixture with ordered means (posteriordb low_dim_gauss_mix).
data {
  int<lower=0> N;
  vector[N] y;
}
parameters {
  ordered[2] mu;
  array[2] real<lower=0> sigma;
  real<lower=0, upper=1> theta;
}
model {
  sigma ~ normal(0, 2);
  mu ~ normal(0, 2);
  theta ~ beta(5, 5);
  for (n in 1:N) {
    target += log_mix(theta, normal_lpdf(y[n] | mu[1], sigma[1]),
                      normal_lpdf(y[n] | mu[2], sigma[2]));
  }
}
""",
}

#: program name -> posteriordb reference posterior name
REFERENCE_POSTERIORS = {
    "eight_schools": "eight_schools-eight_schools_noncentered",
    "arK": "arK-arK",
    "gp_pois_regr": "gp_pois_regr-gp_pois_regr",
    "low_dim_gauss_mix": "low_dim_gauss_mix-low_dim_gauss_mix",
}


def example_model(**kwargs: Any):
    """:data:`EXAMPLE_CODE` with :data:`EXAMPLE_DATA` as a :class:`~stan_bridge.StanModel`.

    Compiled on first use (tens of seconds), cached afterwards.

    Parameters
    ----------
    **kwargs
        Passed to :class:`~stan_bridge.StanModel`.

    Examples
    --------
    >>> from stan_bridge.programs import example_model
    >>> sm = example_model()
    >>> sm.names
    ['mu', 'sigma', 'log_sigma']
    """
    from stan_bridge.model import StanModel

    kwargs.setdefault("progressbar", False)
    return StanModel(EXAMPLE_CODE, EXAMPLE_DATA, **kwargs)


def reference_data(name: str) -> dict[str, Any]:
    """The reference posterior's ``data.json`` for a program of :data:`PROGRAMS`.

    Parameters
    ----------
    name : str
        A key of :data:`PROGRAMS`.

    Returns
    -------
    dict
        The data, with ``prior_only = 0`` where the program declares it.

    Examples
    --------
    >>> from stan_bridge.programs import reference_data
    >>> reference_data("eight_schools")["prior_only"]
    0
    """
    from pymc_ext.references.posteriors import load_reference_data

    if name not in PROGRAMS:
        raise KeyError(f"Unknown program {name!r}; known: {sorted(PROGRAMS)}")
    data = dict(load_reference_data(REFERENCE_POSTERIORS[name]))
    if "prior_only" in PROGRAMS[name]:
        data["prior_only"] = 0
    return data


def write_program(name: str, directory: str | os.PathLike | None = None) -> Path:
    """Write a program of :data:`PROGRAMS` to a ``.stan`` file and return its path.

    The default folder is stable (inside the stan_bridge cache, named by the
    program's hash), so CmdStan's executable built next to it is reused
    across sessions.

    Parameters
    ----------
    name : str
        A key of :data:`PROGRAMS`.
    directory : path, optional
        Where to write it.

    Returns
    -------
    Path

    Examples
    --------
    >>> from stan_bridge.programs import write_program
    >>> write_program("arK").name
    'arK.stan'
    """
    from stan_bridge.builder import cache_dir

    code = PROGRAMS[name]
    if directory is None:
        digest = hashlib.sha256(code.encode()).hexdigest()[:12]
        directory = cache_dir() / "programs" / f"{name}-{digest}"
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.stan"
    if not path.exists() or path.read_text() != code:
        tmp = path.with_suffix(f".stan.tmp{os.getpid()}")
        tmp.write_text(code)
        os.replace(tmp, path)
    return path
