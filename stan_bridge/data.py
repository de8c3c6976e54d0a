"""Check Stan data against the program's declarations and pack it for the shim.

Data comes as cmdstanpy takes it: a dict ``name -> value`` (numbers, lists,
numpy arrays) or the path of a JSON file in CmdStan's format. The program's
``data`` block, as ``stanc --info`` reports it, says which names must be
there, which are integers and how many dimensions each has; the exact sizes
are checked by Stan itself when the model is constructed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["StanDataError", "load_data", "check_data", "pack_data"]

_INT32 = np.iinfo(np.int32)


class StanDataError(ValueError):
    """The data do not fit the program's ``data`` block."""


def _json_value(v: Any) -> Any:
    # CmdStan's JSON allows "NaN", "Inf", "-Inf" as strings
    if isinstance(v, str):
        low = v.strip().lower()
        if low in ("nan", "inf", "+inf", "infinity", "+infinity", "-inf", "-infinity"):
            return float(low.replace("infinity", "inf"))
        raise StanDataError(f"A string ({v!r}) is not a valid Stan data value.")
    if isinstance(v, list):
        return [_json_value(x) for x in v]
    return v


def load_data(data: Mapping[str, Any] | str | os.PathLike | None) -> dict[str, Any]:
    """Read data given as a dict or as the path of a JSON file.

    Parameters
    ----------
    data : dict, path or None
        ``name -> value``, a path to a CmdStan JSON data file, or None (no
        data).

    Returns
    -------
    dict

    Examples
    --------
    >>> from stan_bridge.data import load_data
    >>> load_data({"N": 3, "y": [0, 1, 1]})
    {'N': 3, 'y': [0, 1, 1]}
    """
    if data is None:
        return {}
    if isinstance(data, Mapping):
        return dict(data)
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.is_file():
            raise StanDataError(
                f"Data file {path} does not exist. Pass the data as a dict or as the path "
                "of a JSON file in CmdStan's format."
            )
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise StanDataError(f"Data file {path} is not valid JSON: {err}") from err
        if not isinstance(raw, dict):
            raise StanDataError(f"Data file {path} must hold a JSON object (name -> value).")
        return {k: _json_value(v) for k, v in raw.items()}
    raise StanDataError(
        f"data must be a dict or the path of a JSON file; got {type(data).__name__}."
    )


def check_data(data: Mapping[str, Any], inputs: Mapping[str, Mapping[str, Any]]) -> dict:
    """Check names, integer-ness and number of dimensions; return numpy arrays.

    Parameters
    ----------
    data : dict
        ``name -> value``.
    inputs : dict
        The ``inputs`` section of ``stanc --info``.

    Returns
    -------
    dict
        ``name -> ndarray`` (int64 for integer data, float64 otherwise) for
        the program's inputs only.

    Raises
    ------
    StanDataError
        Naming every missing variable, or the first with the wrong type or
        number of dimensions.

    Examples
    --------
    >>> from stan_bridge.data import check_data
    >>> inputs = {"N": {"type": "int", "dimensions": 0},
    ...           "y": {"type": "real", "dimensions": 1}}
    >>> out = check_data({"N": 2, "y": [0.5, 1.5]}, inputs)
    >>> out["y"].dtype, out["N"].shape
    (dtype('float64'), ())
    """
    missing = [name for name in inputs if name not in data]
    if missing:
        decl = ", ".join(
            f"{n} ({inputs[n]['type']}, {inputs[n]['dimensions']} dims)" for n in missing
        )
        raise StanDataError(
            f"Data for {len(missing)} variable(s) of the program's data block are missing: "
            f"{decl}. Add them to the data dict (or JSON file)."
        )
    return {name: _checked_array(name, data[name], decl) for name, decl in inputs.items()}


def _checked_array(name: str, value: Any, decl: Mapping[str, Any]) -> np.ndarray:
    """One data variable as a numpy array, checked against its declaration."""
    try:
        arr = np.asarray(value)
    except ValueError as err:  # ragged lists
        raise StanDataError(f"Data variable {name!r} is not a rectangular array: {err}") from err
    if arr.dtype == object:
        raise StanDataError(
            f"Data variable {name!r} is not a rectangular array of numbers "
            f"(got {type(value).__name__})."
        )
    if arr.dtype.kind in "US":
        raise StanDataError(f"Data variable {name!r} holds strings; Stan data are numbers.")
    if arr.dtype.kind == "c" or decl["type"] == "complex":
        raise StanDataError(f"Data variable {name!r}: complex data are not supported.")
    want = int(decl["dimensions"])
    if arr.ndim != want:
        raise StanDataError(
            f"Data variable {name!r} is declared with {want} dimension(s) "
            f"({decl['type']}) but has shape {arr.shape} ({arr.ndim} dimension(s)). "
            "Give it as a nested list or array of that many dimensions."
        )
    if decl["type"] == "int":
        return _int_array(name, arr)
    return arr.astype(np.float64)


def _int_array(name: str, arr: np.ndarray) -> np.ndarray:
    """Integer data as int64, checked to be whole numbers in Stan's 32-bit range."""
    if arr.size and arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise StanDataError(
                f"Data variable {name!r} is declared int but holds non-integer "
                "values. Pass whole numbers."
            )
    elif arr.size and arr.dtype.kind not in "iub":
        raise StanDataError(f"Data variable {name!r} is declared int.")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < _INT32.min or arr.max() > _INT32.max):
        raise StanDataError(f"Data variable {name!r} has values outside Stan's 32-bit int range.")
    return arr


def pack_data(arrays: Mapping[str, np.ndarray], inputs: Mapping[str, Mapping[str, Any]]):
    """Flatten checked data into the arrays the shim's ``sb_new`` takes.

    Values are flattened column-major, as Stan's ``var_context`` stores them.

    Returns
    -------
    tuple
        ``(real_part, int_part)``, each ``(names, values, ndims, dims)``.

    Examples
    --------
    >>> import numpy as np
    >>> from stan_bridge.data import pack_data
    >>> inputs = {"N": {"type": "int", "dimensions": 0}, "y": {"type": "real", "dimensions": 2}}
    >>> real, ints = pack_data({"N": np.array(2), "y": np.array([[1.0, 2.0], [3.0, 4.0]])}, inputs)
    >>> real[1].tolist(), real[3].tolist()
    ([1.0, 3.0, 2.0, 4.0], [2, 2])
    """
    parts = {"real": ([], [], [], []), "int": ([], [], [], [])}
    for name, arr in arrays.items():
        kind = "int" if inputs[name]["type"] == "int" else "real"
        names, vals, ndims, dims = parts[kind]
        names.append(name)
        vals.append(np.asarray(arr).ravel(order="F"))
        ndims.append(arr.ndim)
        dims.extend(arr.shape)
    out = []
    for kind, dtype in (("real", np.float64), ("int", np.int32)):
        names, vals, ndims, dims = parts[kind]
        out.append(
            (
                names,
                np.ascontiguousarray(np.concatenate(vals) if vals else np.zeros(0), dtype=dtype),
                np.asarray(ndims, dtype=np.int32),
                np.asarray(dims, dtype=np.int64),
            )
        )
    return tuple(out)
