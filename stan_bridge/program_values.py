"""A Stan program's own outputs at given parameter draws, computed with a given dataset's data.

An amortized posterior (:class:`~stan_bridge.stan_amortizer.StanAmortizer`)
draws the parameters for a dataset that is not the one its
:class:`~stan_bridge.StanModel` holds. The transformed parameters and
generated quantities of those draws must come from the program run with
*that* dataset's data, as CmdStan computes them: :func:`program_values` does
so (Stan's ``write_array`` in the compiled model, through
:meth:`~stan_bridge.StanModel.param_constrain`), and
:func:`with_program_values` puts them into a posterior ``xarray.Dataset``.

Generated quantities use Stan's RNG seeded with ``(seed, chain)``, as CmdStan
seeds chain ``chain`` of a run with ``seed``; the RNG runs on across the draws
of the stream, so the same seed gives the same values. Where the program
throws at a draw (a failed check in ``transformed parameters``, an ``_rng``
argument out of its range in ``generated quantities``), that draw's
transformed parameters and generated quantities are NaN, as CmdStan writes
them, and a :class:`ProgramValuesWarning` says how many draws and why.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["ProgramValuesWarning", "program_values", "with_program_values"]


class ProgramValuesWarning(UserWarning):
    """The program threw at some draws; their transformed parameters / GQs are NaN."""


def _unconstrained(stan_model: Any, params: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    """``(n, dim)`` unconstrained points of the rows of the parameter values."""
    names = list(stan_model.param_names_list)
    values = {k: np.asarray(params[k], dtype=float).reshape(n, *stan_model.shapes[k])
              for k in names}
    X = np.full((n, stan_model.dim), np.nan)
    for i in range(n):
        try:
            X[i] = stan_model.unconstrain({k: values[k][i] for k in names})
        except ValueError:  # a value on its constraint's edge: NaN row, reported by the caller
            pass
    return X


def _row_seed(seed: int, chain: int, row: int) -> int:
    return int(np.random.SeedSequence([seed, chain, row]).generate_state(1)[0] % (2**31 - 1))


def _constrain(stan_model: Any, X: np.ndarray, include_gq: bool, seed: int, chain: int,
               stacklevel: int) -> np.ndarray:
    """Flat constrained rows; rows where the program throws get NaN (the caller keeps the
    parameters' own values)."""
    width = stan_model.layout.width(True, include_gq)
    out = np.full((X.shape[0], width), np.nan)
    ok = np.all(np.isfinite(X), axis=1)
    errors = ["a parameter value is outside its constraint"] * int((~ok).sum())
    try:
        if ok.any():
            out[ok] = np.atleast_2d(stan_model.param_constrain(
                X[ok], include_tp=True, include_gq=include_gq, seed=seed, chain=chain))
        ok[:] = False
    except RuntimeError:
        pass
    for i in np.flatnonzero(ok):
        x = X[i]
        try:  # one row at a time, each with its own RNG stream (only after a failure)
            out[i] = stan_model.param_constrain(
                x, include_tp=True, include_gq=include_gq, seed=_row_seed(seed, chain, i),
                chain=chain)
        except RuntimeError as err:
            errors.append(str(err))
    if errors:
        warnings.warn(
            f"The program threw at {len(errors)} of {X.shape[0]} draws while computing its "
            f"transformed parameters / generated quantities (first: {errors[0]}). Those values "
            "are NaN at those draws, as CmdStan writes them.",
            ProgramValuesWarning,
            stacklevel=stacklevel + 1,
        )
    return out


def program_values(
    stan_model: Any,
    params: Mapping[str, np.ndarray],
    *,
    seed: int,
    chain: int = 1,
    include_gq: bool = True,
    stacklevel: int = 2,
) -> dict[str, np.ndarray]:
    """Parameters, transformed parameters and generated quantities at parameter draws.

    Parameters
    ----------
    stan_model : StanModel
        The program with the data to compute them with.
    params : dict
        ``name -> (n, *shape)`` for every parameter of the program
        (constrained values; other names are ignored).
    seed, chain : int
        Stan's RNG for the generated quantities is seeded with ``(seed,
        chain)``, as CmdStan seeds that chain; it runs on across the ``n``
        draws.
    include_gq : bool
        Also compute the generated quantities.
    stacklevel : int
        Of the :class:`ProgramValuesWarning`, counted from the caller.

    Returns
    -------
    dict
        ``name -> (n, *shape)`` in the program's order (the parameters as
        given); integer generated quantities as int64 (float where one is NaN).

    Examples
    --------
    >>> import numpy as np
    >>> from stan_bridge.program_values import program_values
    >>> from stan_bridge.programs import example_model
    >>> sm = example_model().with_data({"N": 2, "y": [1.0, 2.0], "prior_only": 0})
    >>> out = program_values(sm, {"mu": np.zeros(3), "sigma": np.ones(3)}, seed=1)
    >>> list(out), out["y_rep"].shape, out["log_sigma"].tolist()
    (['mu', 'sigma', 'log_sigma', 'y_rep'], (3, 2), [0.0, 0.0, 0.0])
    """
    first = np.asarray(params[stan_model.param_names_list[0]])
    n = int(first.shape[0])
    include_gq = bool(include_gq) and bool(stan_model.gq_names_list)
    X = _unconstrained(stan_model, params, n)
    flat = _constrain(stan_model, X, include_gq, int(seed), int(chain), stacklevel + 1)
    names = list(stan_model.names) + (list(stan_model.gq_names_list) if include_gq else [])
    out = stan_model.layout.split(flat, names)
    for k in stan_model.param_names_list:  # the draws themselves, not their round trip
        out[k] = np.asarray(params[k], dtype=float)
    gq_info = stan_model.info.get("generated quantities", {})
    for name in stan_model.gq_names_list:
        if name in out and gq_info.get(name, {}).get("type") == "int":
            if np.all(np.isfinite(out[name])):
                out[name] = out[name].astype(np.int64)
    return {k: np.asarray(v).reshape(n, *stan_model.shapes[k]) for k, v in out.items()}


def with_program_values(
    posterior: Any,
    stan_models: Sequence[Any],
    seeds: Sequence[int],
    *,
    chain_ids: Sequence[int] | None = None,
    stacklevel: int = 2,
) -> Any:
    """A posterior ``xarray.Dataset`` with the program's outputs recomputed per leading index.

    The posterior has dims ``(lead, draw, ...)`` (``lead``: ``chain`` or
    ``dataset``). The parameters are kept as they are; the transformed
    parameters are recomputed (keeping their dims) and the generated
    quantities added (dims ``<name>_dim_<k>``, as ``CmdStanModel.flow_sample``
    names them). Row ``a`` of the leading dim is computed with
    ``stan_models[a]`` (its data) and Stan's RNG seeded with ``(seeds[a],
    chain_ids[a])`` (``chain_ids`` default: ``a + 1``).
    Attributes are kept.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> from stan_bridge.program_values import with_program_values
    >>> from stan_bridge.programs import example_model
    >>> sm = example_model()
    >>> post = xr.Dataset({"mu": (("chain", "draw"), np.zeros((2, 5))),
    ...                    "sigma": (("chain", "draw"), np.ones((2, 5)))})
    >>> out = with_program_values(post, [sm, sm], seeds=[1, 1])
    >>> list(out.data_vars), out["y_rep"].dims
    (['mu', 'sigma', 'log_sigma', 'y_rep'], ('chain', 'draw', 'y_rep_dim_0'))
    """
    post = posterior.copy()
    lead_dims = list(post[stan_models[0].param_names_list[0]].dims[:2])
    A = int(post.sizes[lead_dims[0]])
    if len(stan_models) != A or len(seeds) != A:
        raise ValueError(f"Need one model and one seed per {lead_dims[0]} ({A}).")
    chain_ids = [a + 1 for a in range(A)] if chain_ids is None else list(chain_ids)
    per_lead = []
    for a, sm in enumerate(stan_models):
        params = {k: np.asarray(post[k].isel({lead_dims[0]: a}).values)
                  for k in sm.param_names_list}
        per_lead.append(program_values(sm, params, seed=int(seeds[a]), chain=int(chain_ids[a]),
                                       stacklevel=stacklevel + 1))
    params = set(stan_models[0].param_names_list)
    for name in per_lead[0]:
        if name in params:
            continue
        arr = np.stack([v[name] for v in per_lead])
        if name in post.data_vars and post[name].ndim == arr.ndim:
            dims = post[name].dims
        else:
            dims = (*lead_dims, *(f"{name}_dim_{k}" for k in range(arr.ndim - 2)))
        post[name] = (dims, arr)
    return post
