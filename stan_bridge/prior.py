"""Prior-predictive simulation for Stan programs, by a stated convention.

A Stan program has no separate "prior" and "likelihood", so the program has
to say how to simulate from it. stan_bridge asks for two things:

1. **A data flag** ``int<lower=0, upper=1> prior_only;`` in the ``data``
   block, and the likelihood wrapped in ``if (!prior_only) { ... }`` in the
   ``model`` block. With ``prior_only = 1`` the density is the prior.
2. **A generated quantity per simulated observation**, named after the data
   variable with the suffix ``_rep`` and drawn with ``_rng`` functions:
   ``array[J] real y_rep = normal_rng(theta, sigma);`` simulates ``y``. It
   has the shape of ``y``.

:func:`prior_predictive` then draws parameters from the prior-only density
with our own NUTS (:mod:`stan_bridge.nuts`), several chains, thinned, and
runs the generated quantities at those draws with a seeded RNG. The
eight-schools program in :data:`stan_bridge.programs.PROGRAMS` follows the
convention (``print(PROGRAMS["eight_schools"])`` shows it), as does
:data:`stan_bridge.programs.EXAMPLE_CODE`.

The priors must be proper (a flat prior has no prior predictive), and, as
for any MCMC, non-centred parameterisations sample better.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from stan_bridge.nuts import RunawayChainError, sample_nuts

if TYPE_CHECKING:  # pragma: no cover
    from stan_bridge.model import StanModel

__all__ = ["PriorPredictiveError", "prior_predictive", "check_convention"]

_EXAMPLE = (
    "    data {\n"
    "      ...\n"
    "      int<lower=0, upper=1> prior_only;\n"
    "    }\n"
    "    model {\n"
    "      ... priors ...\n"
    "      if (!prior_only) {\n"
    "        y ~ normal(mu, sigma);   // the likelihood\n"
    "      }\n"
    "    }\n"
    "    generated quantities {\n"
    "      array[N] real y_rep = normal_rng(mu, sigma);   // simulates y\n"
    "    }\n"
)


class PriorPredictiveError(ValueError):
    """The Stan program does not follow the prior-predictive convention."""


def _convention_help(flag: str, suffix: str) -> str:
    return (
        "To simulate from a Stan program, stan_bridge needs the prior-predictive "
        f"convention: an int data flag `{flag}` that switches the likelihood off, and a "
        f"generated quantity `<obs>{suffix}` drawn with _rng functions for each simulated "
        f"observation <obs>, with the shape of <obs>. For example:\n{_EXAMPLE}"
        "See docs/stan.md, 'Prior predictive'."
    )


def check_convention(
    info: dict,
    observed: Sequence[str] | None = None,
    flag: str = "prior_only",
    suffix: str = "_rep",
) -> list[str]:
    """Check a program (its ``stanc --info``) against the convention.

    Parameters
    ----------
    info : dict
        ``stanc --info`` output (``StanModel.info``).
    observed : sequence of str, optional
        Data variables to simulate. Default: every data variable ``y`` that
        has a generated quantity ``y + suffix``.
    flag : str
        Name of the int data flag.
    suffix : str
        Suffix of the simulating generated quantities.

    Returns
    -------
    list of str
        The observed data names.

    Raises
    ------
    PriorPredictiveError
        Saying what is missing and showing the convention.

    Examples
    --------
    >>> from stan_bridge.prior import check_convention
    >>> info = {"inputs": {"N": {"type": "int", "dimensions": 0},
    ...                    "y": {"type": "real", "dimensions": 1},
    ...                    "prior_only": {"type": "int", "dimensions": 0}},
    ...         "generated quantities": {"y_rep": {"type": "real", "dimensions": 1}}}
    >>> check_convention(info)
    ['y']
    """
    inputs = info.get("inputs", {})
    gqs = info.get("generated quantities", {})
    problems = []
    decl = inputs.get(flag)
    if decl is None:
        problems.append(f"the data block has no `{flag}` flag")
    elif decl.get("type") != "int" or int(decl.get("dimensions", 0)) != 0:
        problems.append(f"`{flag}` must be a scalar int (int<lower=0, upper=1> {flag};)")
    if observed is None:
        observed = [n for n in inputs if n != flag and n + suffix in gqs]
        if not observed:
            problems.append(
                f"no generated quantity simulates a data variable (none named <data>{suffix}; "
                f"generated quantities are {sorted(gqs) or 'none'})"
            )
    else:
        observed = list(observed)
        for name in observed:
            if name not in inputs:
                problems.append(f"`{name}` is not a data variable of the program")
            elif name + suffix not in gqs:
                problems.append(f"no generated quantity `{name}{suffix}` simulates `{name}`")
            elif int(gqs[name + suffix]["dimensions"]) != int(inputs[name]["dimensions"]):
                problems.append(
                    f"`{name}{suffix}` has {gqs[name + suffix]['dimensions']} dimension(s) but "
                    f"`{name}` has {inputs[name]['dimensions']}"
                )
    if problems:
        raise PriorPredictiveError(
            "This Stan program does not follow the prior-predictive convention: "
            + "; ".join(problems)
            + ".\n"
            + _convention_help(flag, suffix)
        )
    return list(observed)


def prior_predictive(
    model: StanModel,
    n: int,
    random_seed: int | None = None,
    observed: Sequence[str] | None = None,
    *,
    flag: str = "prior_only",
    suffix: str = "_rep",
    chains: int = 4,
    thin: int = 2,
    warmup: int = 500,
    progressbar: bool = True,
    return_info: bool = False,
) -> tuple[np.ndarray, dict[str, np.ndarray]] | tuple[np.ndarray, dict[str, np.ndarray], dict]:
    """Draw ``n`` (parameters, simulated data) pairs from a Stan program's prior predictive.

    Parameters
    ----------
    model : StanModel
        The program (with any data: the observed values are not used, only
        their shapes and the other data such as sizes and covariates).
    n : int
        Number of draws.
    random_seed : int, optional
        Seed of the MCMC and of the generated quantities' RNG.
    observed : sequence of str, optional
        Data variables to simulate (default: every one with a
        ``<name>_rep`` generated quantity).
    flag, suffix : str
        Names of the convention (``prior_only``, ``_rep``).
    chains : int
        NUTS chains on the prior-only density.
    thin : int
        Keep every ``thin``-th draw of each chain.
    warmup : int
        Warmup iterations per chain.
    progressbar : bool
        Show a progress bar.
    return_info : bool
        Also return a dict of MCMC diagnostics (divergences, step sizes,
        acceptance).

    Returns
    -------
    params : ndarray
        ``(n, dim)`` unconstrained parameter draws from the prior.
    simulated : dict
        ``obs_name -> (n, *shape)`` simulated data (int64 for int data).
    info : dict, optional
        With ``return_info=True``.

    Raises
    ------
    PriorPredictiveError
        When the program does not follow the convention, or its prior is
        improper.

    Examples
    --------
    >>> from stan_bridge import StanModel
    >>> from stan_bridge.programs import PROGRAMS, reference_data
    >>> sm = StanModel(PROGRAMS["eight_schools"], reference_data("eight_schools"),
    ...                progressbar=False)
    >>> params, sims = sm.prior_predictive(200, random_seed=1, progressbar=False)
    >>> params.shape, sims["y"].shape
    ((200, 10), (200, 8))
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be at least 1; got {n}.")
    observed = check_convention(model.info, observed, flag, suffix)
    prior_model = model.with_data({**model.data, flag: 1})
    rng = np.random.default_rng(random_seed)
    mcmc_seed, gq_seed = (int(s) for s in rng.integers(0, 2**31 - 1, size=2))
    chains = max(1, min(int(chains), n))
    params, stats = _sample_prior(
        prior_model, n, chains, warmup, thin, mcmc_seed, progressbar, flag, suffix
    )
    gq = prior_model.generated_quantities(params, seed=gq_seed)
    simulated = {name: _simulated(model, gq, name, flag, suffix) for name in observed}
    if return_info:
        return params, simulated, _mcmc_info(stats, chains, thin, warmup)
    return params, simulated


def _simulated(model: StanModel, gq: dict, name: str, flag: str, suffix: str) -> np.ndarray:
    """The simulated values of data variable ``name``, checked against its shape and type."""
    sim = gq[name + suffix]
    want = model.data[name].shape
    if sim.shape[1:] != want:
        raise PriorPredictiveError(
            f"`{name}{suffix}` has shape {sim.shape[1:]} but `{name}` has shape {want}; "
            "the simulating generated quantity must have the shape of the data.\n"
            + _convention_help(flag, suffix)
        )
    if model.info["inputs"][name]["type"] == "int":
        sim = np.asarray(np.round(sim), dtype=np.int64)
    return sim


def _mcmc_info(stats: dict, chains: int, thin: int, warmup: int) -> dict[str, Any]:
    return {
        "divergences": int(stats["diverging"].sum()),
        "mean_accept_prob": float(stats["accept_prob"].mean()),
        "step_size": stats["step_size"].tolist(),
        "grad_evals": int(stats["n_leapfrog"].sum()),
        "chains": chains,
        "thin": thin,
        "warmup": warmup,
    }


def _sample_prior(
    prior_model: StanModel,
    n: int,
    chains: int,
    warmup: int,
    thin: int,
    seed: int,
    progressbar: bool,
    flag: str,
    suffix: str,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``n`` NUTS draws from the prior-only density (rows), and the sampler's statistics.

    An improper prior raises :class:`PriorPredictiveError`.
    """
    try:
        draws, stats = sample_nuts(
            prior_model,
            -(-n // chains),
            chains=chains,
            num_warmup=warmup,
            thin=thin,
            random_seed=seed,
            progressbar=progressbar,
            desc="Prior draws (NUTS, prior_only=1)",
            max_abs=1e8,
        )
    except RunawayChainError as err:
        raise PriorPredictiveError(
            f"The prior-only density looks improper: {err} Give every parameter a proper "
            "prior (a flat prior has no prior predictive).\n" + _convention_help(flag, suffix)
        ) from None
    n_div = int(stats["diverging"].sum())
    if n_div > 0.01 * stats["diverging"].size:
        warnings.warn(
            f"{n_div} divergent transitions while drawing from the prior: the prior draws "
            "may be biased. A non-centred parameterisation usually fixes this.",
            stacklevel=3,
        )
    return draws.reshape(-1, prior_model.dim)[:n], stats
