"""Reference posteriors (posteriordb) and the one way results are compared with them.

The reference folder holds one directory per posterior with ``data.json``,
``info.json`` and ``reference_draws.json.zip``. It is found through the
``PYMC_EXT_REFERENCE_DIR`` environment variable, or as ``shared/reference``
beside or above this checkout.

Errors are measured the same way everywhere: for each scalar parameter, the
error of the posterior mean in units of the reference sd,
``|mean - ref_mean| / ref_sd``, and of the sd, ``|sd / ref_sd - 1|``.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "REFERENCE_NAMES",
    "ALL_REFERENCE_NAMES",
    "canonical_name",
    "reference_dir",
    "load_reference",
    "load_reference_data",
    "flatten_draws",
    "compare_to_reference",
    "compare_draws",
]

REFERENCE_NAMES = (
    "eight_schools-eight_schools_noncentered",
    "kidiq-kidscore_momiq",
    "earnings-logearn_interaction",
    "arK-arK",
    "gp_pois_regr-gp_pois_regr",
    "low_dim_gauss_mix-low_dim_gauss_mix",
    "mesquite-logmesquite_logvas",
    "sblrc-blr",
)

#: Every reference posterior in the folder: the eight above, then the 23 of the wider set
#: (each has ``model.stan``, ``data.json`` and reference draws; see
#: :data:`pymc_ext.references.models.PYMC_REFERENCE_NAMES` for those with a PyMC version).
ALL_REFERENCE_NAMES = (
    *REFERENCE_NAMES,
    "kidiq-kidscore_momhs",
    "kidiq-kidscore_momhsiq",
    "kidiq-kidscore_interaction",
    "kidiq_with_mom_work-kidscore_interaction_z",
    "kidiq_with_mom_work-kidscore_interaction_c2",
    "kidiq_with_mom_work-kidscore_mom_work",
    "earnings-log10earn_height",
    "earnings-logearn_height",
    "earnings-logearn_height_male",
    "earnings-logearn_logheight_male",
    "earnings-logearn_interaction_z",
    "mesquite-mesquite",
    "mesquite-logmesquite",
    "mesquite-logmesquite_logva",
    "mesquite-logmesquite_logvolume",
    "nes1972-nes",
    "nes1976-nes",
    "nes1984-nes",
    "nes1988-nes",
    "nes1992-nes",
    "nes1996-nes",
    "bball_drive_event_1-hmm_drive_1",
    "hudson_lynx_hare-lotka_volterra",
)


def reference_dir() -> Path:
    """The folder with the reference posteriors.

    Raises
    ------
    FileNotFoundError
        With what to set when the folder cannot be found.

    Examples
    --------
    >>> from pymc_ext.references.posteriors import reference_dir
    >>> (reference_dir() / "sblrc-blr" / "data.json").exists()
    True
    """
    env = os.environ.get("PYMC_EXT_REFERENCE_DIR")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parent
    for parent in [here, *here.parents]:
        candidates += [parent / "shared" / "reference", parent.parent / "shared" / "reference"]
    for path in candidates:
        if (path / REFERENCE_NAMES[0]).is_dir():
            return path
    raise FileNotFoundError(
        "Reference posteriors not found. Set PYMC_EXT_REFERENCE_DIR to the folder that holds "
        f"{REFERENCE_NAMES[0]}/ and the other posteriordb references."
    )


def canonical_name(name: str) -> str:
    """The full posteriordb name of a reference posterior, from its full or short name.

    A short name is the data name before the ``-``. Where several posteriors
    share it, it names the one among the first eight (``"kidiq"`` is
    ``kidiq-kidscore_momiq``); a short name that is still ambiguous
    (``"kidiq_with_mom_work"``) is an error that lists the full names.

    Raises
    ------
    KeyError
        For a name that is not one of :data:`ALL_REFERENCE_NAMES` (nor a short form).

    Examples
    --------
    >>> from pymc_ext.references.posteriors import canonical_name
    >>> canonical_name("kidiq"), canonical_name("nes1996")
    ('kidiq-kidscore_momiq', 'nes1996-nes')
    """
    if name in ALL_REFERENCE_NAMES:
        return name
    first = {n.split("-")[0]: n for n in REFERENCE_NAMES}
    if name in first:
        return first[name]
    matches = [n for n in ALL_REFERENCE_NAMES if n.split("-")[0] == name]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise KeyError(f"{name!r} names several reference posteriors; give one of {matches}")
    raise KeyError(f"Unknown reference posterior {name!r}; known: {', '.join(ALL_REFERENCE_NAMES)}")


def load_reference_data(name: str) -> dict[str, Any]:
    """The data of a reference posterior, exactly as its Stan program reads it.

    Parameters
    ----------
    name : str
        Full posteriordb name, or its short data name (``"eight_schools"``).

    Examples
    --------
    >>> from pymc_ext.references.posteriors import load_reference_data
    >>> load_reference_data("eight_schools")["J"]
    8
    """
    name = canonical_name(name)
    return json.loads((reference_dir() / name / "data.json").read_text())


@lru_cache(maxsize=16)
def _load_reference_cached(name: str) -> dict[str, np.ndarray]:
    path = reference_dir() / name / "reference_draws.json.zip"
    with zipfile.ZipFile(path) as zf:
        chains = json.load(zf.open(zf.namelist()[0]))
    return {key: np.array([c[key] for c in chains], dtype=float) for key in chains[0]}


def load_reference(name: str) -> dict[str, np.ndarray]:
    """Reference draws: ``"beta[1]"``-style name -> array of shape ``(chains, draws)``.

    Examples
    --------
    >>> from pymc_ext.references.posteriors import load_reference
    >>> ref = load_reference("eight_schools-eight_schools_noncentered")
    >>> ref["theta[1]"].shape
    (10, 1000)
    """
    return {k: v.copy() for k, v in _load_reference_cached(canonical_name(name)).items()}


def flatten_draws(posterior: Any) -> dict[str, np.ndarray]:
    """Flatten a posterior into Stan-style scalar names (1-based), ``(chains, draws)`` each.

    Parameters
    ----------
    posterior : DataTree, Dataset or dict
        An ArviZ result (its ``posterior`` group is used) or
        ``name -> (chains, draws, *shape)`` arrays.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.references.posteriors import flatten_draws
    >>> sorted(flatten_draws({"b": np.zeros((2, 5, 2))}))
    ['b[1]', 'b[2]']
    """
    if hasattr(posterior, "children") and "posterior" in posterior.children:
        posterior = posterior["posterior"]
    if hasattr(posterior, "data_vars"):
        posterior = {k: posterior[k].values for k in posterior.data_vars}
    out = {}
    for name, value in posterior.items():
        arr = np.asarray(value, dtype=float)
        if arr.ndim == 2:
            out[name] = arr
            continue
        for idx in np.ndindex(*arr.shape[2:]):
            out[f"{name}[{','.join(str(i + 1) for i in idx)}]"] = arr[
                (slice(None), slice(None), *idx)
            ]
    return out


def compare_draws(
    draws: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    """Mean and sd errors of flat draws against flat reference draws (shared names only).

    Returns
    -------
    dict
        ``{"params": {name: {"mean_error", "sd_error"}}, "max_mean_error",
        "max_sd_error", "missing": [...]}``; errors are in reference-sd
        units (mean) and relative (sd).

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.references.posteriors import compare_draws
    >>> rng = np.random.default_rng(0)
    >>> out = compare_draws({"a": rng.normal(size=(4, 1000))}, {"a": rng.normal(size=(4, 1000))})
    >>> out["max_mean_error"] < 0.1
    True
    """
    params = {}
    for name, ref in reference.items():
        if name not in draws:
            continue
        x = np.asarray(draws[name], dtype=float).ravel()
        r = np.asarray(ref, dtype=float).ravel()
        ref_sd = r.std()
        params[name] = {
            "mean_error": float(abs(x.mean() - r.mean()) / ref_sd),
            "sd_error": float(abs(x.std() / ref_sd - 1.0)),
        }
    if not params:
        raise ValueError(
            "No parameter names in common with the reference; reference names are "
            f"{sorted(reference)[:6]}..., draws have {sorted(draws)[:6]}..."
        )
    return {
        "params": params,
        "max_mean_error": max(p["mean_error"] for p in params.values()),
        "max_sd_error": max(p["sd_error"] for p in params.values()),
        "missing": sorted(set(reference) - set(draws)),
    }


def compare_to_reference(posterior: Any, name: str) -> dict[str, Any]:
    """Compare a result with a reference posterior, the same way everywhere.

    Parameters
    ----------
    posterior : DataTree, Dataset or dict
        ArviZ result, or ``name -> (chains, draws, *shape)``.
    name : str
        Reference posterior name (full or short).

    Returns
    -------
    dict
        As :func:`compare_draws`.

    Examples
    --------
    >>> from pymc_ext.references.posteriors import compare_to_reference, load_reference
    >>> ref = load_reference("sblrc-blr")
    >>> compare_to_reference(ref, "sblrc-blr")["max_mean_error"]
    0.0
    """
    return compare_draws(flatten_draws(posterior), load_reference(name))
