"""How datasets become network input for amortized fitting: layout, checks, standardisation.

A dataset is a dict ``name -> array`` holding the model's observed variables
(and, optionally, covariates). :class:`DataLayout` turns a batch of datasets
into one tensor:

- ``"vector"`` (fixed-size data): every array is flattened and joined, giving
  ``(batch, features)``.
- ``"set"`` / ``"series"`` (rows along the first axis; exchangeable or
  ordered): the arrays are joined row by row, giving ``(batch, N, features)``
  and a mask ``(batch, N)``; datasets of different ``N`` are padded.

Inputs are standardised robustly (median and inter-quartile range from the
training simulations) and then passed through ``asinh``, which is the
identity near zero and logarithmic far out. Prior predictive data are often
heavy-tailed (eight schools under a half-Cauchy prior reaches ``1e4``), and
this keeps such draws from dominating training without discarding them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["DataLayout", "DataShapeError", "LAYOUT_KINDS", "refuse_non_integer"]

LAYOUT_KINDS = ("vector", "set", "series")


class DataShapeError(ValueError):
    """A dataset does not have the names or shapes the amortizer was built for."""


def refuse_non_integer(values: Any, label: str, takes: str) -> None:
    """Raise :class:`DataShapeError` where data for an integer variable are not whole numbers.

    ``label`` names the data (``data['y']``), ``takes`` says what holds integers.
    Whole numbers given as floats pass: nothing is rounded silently.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.amortized.layout import refuse_non_integer
    >>> refuse_non_integer(np.array([1.0, 2.0]), "data['y']", "it holds integers")
    >>> try:
    ...     refuse_non_integer(np.array([1.0, 2.5]), "data['y']", "it holds integers")
    ... except ValueError as err:
    ...     print(err)
    data['y'] has non-integer values (e.g. 2.5), but it holds integers. Give whole numbers: they are not rounded.
    """  # noqa: E501
    arr = np.asarray(values)
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
        return
    arr = arr.astype(float)
    bad = arr[np.isfinite(arr) & (arr != np.round(arr))]
    if bad.size:
        raise DataShapeError(
            f"{label} has non-integer values (e.g. {bad.ravel()[0]:g}), but {takes}. "
            "Give whole numbers: they are not rounded."
        )


class DataLayout:
    """The names, shapes and standardisation of the data an amortizer conditions on.

    Parameters
    ----------
    kind : {"vector", "set", "series"}
        See the module docstring.
    names : list of str
        Data names in order (observed variables, then covariates).
    shapes : dict
        ``name -> shape``: the full shape for ``"vector"``; the shape of one
        row (without the leading ``N``) for ``"set"`` / ``"series"``.

    Examples
    --------
    >>> import numpy as np
    >>> from pymc_ext.amortized.layout import DataLayout
    >>> layout = DataLayout("set", ["y", "x"], {"y": (), "x": ()})
    >>> datasets = [{"y": np.ones(3), "x": np.zeros(3)}, {"y": np.ones(5), "x": np.ones(5)}]
    >>> x, mask = layout.encode(datasets)
    >>> tuple(x.shape), mask.sum(1).tolist()
    ((2, 5, 2), [3, 5])
    """

    def __init__(self, kind: str, names: Sequence[str], shapes: Mapping[str, Sequence[int]]):
        if kind not in LAYOUT_KINDS:
            raise ValueError(f"data layout must be one of {LAYOUT_KINDS}, got {kind!r}.")
        self.kind = kind
        self.names = list(names)
        self.shapes = {n: tuple(int(s) for s in shapes[n]) for n in self.names}
        self.sizes = {n: int(np.prod(self.shapes[n], dtype=int)) for n in self.names}
        self.num_features = int(sum(self.sizes.values()))
        self.center = np.zeros(self.num_features)
        self.scale = np.ones(self.num_features)
        self.n_range: tuple[int, int] | None = None

    # -- (de)serialisation ---------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """JSON-able description (used by ``Amortizer.save``)."""
        return {
            "kind": self.kind,
            "names": self.names,
            "shapes": {n: list(s) for n, s in self.shapes.items()},
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            "n_range": list(self.n_range) if self.n_range is not None else None,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DataLayout:
        """Inverse of :meth:`config`."""
        layout = cls(config["kind"], config["names"], config["shapes"])
        layout.center = np.asarray(config["center"], dtype=float)
        layout.scale = np.asarray(config["scale"], dtype=float)
        layout.n_range = tuple(config["n_range"]) if config.get("n_range") else None
        return layout

    @property
    def has_rows(self) -> bool:
        """Whether data come as rows (``"set"`` or ``"series"``)."""
        return self.kind != "vector"

    # -- checks ------------------------------------------------------------------------------
    def check(self, data: Mapping[str, Any], where: str = "data") -> dict[str, np.ndarray]:
        """Check one dataset's names and shapes; return it as float arrays.

        Raises
        ------
        DataShapeError
            Naming the variable, the shape it has and the shape it needs.
        """
        if not isinstance(data, Mapping):
            raise DataShapeError(
                f"{where} must be a dict name -> array with the names {self.names}; "
                f"got {type(data).__name__}."
            )
        missing = [n for n in self.names if n not in data]
        if missing:
            raise DataShapeError(
                f"{where} is missing {missing}. The amortizer conditions on {self.names}: give "
                "a value for each, with the same names as in the model."
            )
        out = {}
        n_rows = None
        for n in self.names:
            arr = np.asarray(data[n], dtype=float)
            if not self.has_rows:
                if arr.shape != self.shapes[n]:
                    raise DataShapeError(
                        f"{where}[{n!r}] has shape {arr.shape}; the amortizer was trained on "
                        f"shape {self.shapes[n]}. Train an amortizer with a set summary "
                        "(summary='deepset') for data whose size varies."
                    )
            else:
                if arr.ndim != len(self.shapes[n]) + 1 or arr.shape[1:] != self.shapes[n]:
                    raise DataShapeError(
                        f"{where}[{n!r}] has shape {arr.shape}; it needs shape (N, "
                        f"{', '.join(map(str, self.shapes[n]))}{',' if self.shapes[n] else ''}) "
                        "with one row per observation."
                    )
                if n_rows is None:
                    n_rows = arr.shape[0]
                elif arr.shape[0] != n_rows:
                    raise DataShapeError(
                        f"{where}[{n!r}] has {arr.shape[0]} rows but {self.names[0]!r} has "
                        f"{n_rows}: every data variable needs the same number of rows."
                    )
            if not np.all(np.isfinite(arr)):
                raise DataShapeError(
                    f"{where}[{n!r}] has NaN or inf values; remove or impute them."
                )
            out[n] = arr
        if self.has_rows and n_rows == 0:
            raise DataShapeError(f"{where} has no rows (N = 0).")
        return out

    # -- encoding ----------------------------------------------------------------------------
    def _raw_rows(self, data: Mapping[str, np.ndarray], batched: bool) -> np.ndarray:
        """(batch, N, F) or (batch, F) raw values from a batched dict."""
        lead = 1 if batched else 0
        parts = []
        for n in self.names:
            arr = np.asarray(data[n], dtype=float)
            if self.has_rows:
                parts.append(arr.reshape(*arr.shape[: lead + 1], self.sizes[n]))
            else:
                parts.append(arr.reshape(*arr.shape[:lead], self.sizes[n]))
        return np.concatenate(parts, axis=-1)

    def raw(self, datasets: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> tuple:
        """Unstandardised ``(values, lengths)``; ``values`` padded with zeros for sets."""
        if isinstance(datasets, Mapping):  # batched dict name -> (batch, ...)
            values = self._raw_rows(datasets, batched=True)
            if self.has_rows:
                lengths = np.full(values.shape[0], values.shape[1], dtype=int)
            else:
                lengths = None
            return values, lengths
        rows = [self._raw_rows(d, batched=False) for d in datasets]
        if not self.has_rows:
            return np.stack(rows) if rows else np.zeros((0, self.num_features)), None
        lengths = np.array([r.shape[0] for r in rows], dtype=int)
        n_max = int(lengths.max()) if len(rows) else 0
        values = np.zeros((len(rows), n_max, self.num_features))
        for i, r in enumerate(rows):
            values[i, : r.shape[0]] = r
        return values, lengths

    def datasets(self, values: np.ndarray, lengths: np.ndarray | None) -> list[dict]:
        """The inverse of :meth:`raw`: one ``name -> array`` dict per dataset (float arrays).

        Examples
        --------
        >>> import numpy as np
        >>> from pymc_ext.amortized.layout import DataLayout
        >>> layout = DataLayout("set", ["y", "x"], {"y": (), "x": ()})
        >>> values, lengths = layout.raw([{"y": np.ones(2), "x": np.zeros(2)},
        ...                               {"y": np.ones(3), "x": np.ones(3)}])
        >>> [d["y"].shape for d in layout.datasets(values, lengths)]
        [(2,), (3,)]
        """
        out = []
        for i in range(values.shape[0]):
            row = values[i] if lengths is None else values[i, : int(lengths[i])]
            lead = () if lengths is None else (row.shape[0],)
            start, d = 0, {}
            for name in self.names:
                d[name] = row[..., start : start + self.sizes[name]].reshape(
                    *lead, *self.shapes[name]
                )
                start += self.sizes[name]
            out.append(d)
        return out

    def fit_standardization(self, values: np.ndarray, lengths: np.ndarray | None) -> None:
        """Set the robust centre / scale from raw training values."""
        if self.has_rows:
            mask = np.arange(values.shape[1])[None, :] < lengths[:, None]
            flat = values[mask]
            self.n_range = (int(lengths.min()), int(lengths.max()))
        else:
            flat = values
        q25, q50, q75 = np.percentile(flat, [25, 50, 75], axis=0)
        scale = (q75 - q25) / 1.349
        sd = flat.std(axis=0)
        scale = np.where(scale > 1e-8, scale, np.where(sd > 1e-8, sd, 1.0))
        self.center = q50
        self.scale = scale

    def standardize(self, values: np.ndarray) -> np.ndarray:
        """Robust standardisation followed by ``asinh``."""
        return np.arcsinh((values - self.center) / self.scale)

    def to_tensors(
        self,
        values: np.ndarray,
        lengths: np.ndarray | None,
        device: torch.device | str = "cpu",
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Standardised network input and mask (``None`` for vectors) as float32 tensors."""
        z = self.standardize(values)
        x = torch.as_tensor(z, dtype=torch.float32, device=device)
        if not self.has_rows:
            return x, None
        mask = torch.arange(values.shape[1], device=device)[None, :] < torch.as_tensor(
            lengths, device=device
        )[:, None]
        x = x * mask.unsqueeze(-1).to(x.dtype)
        return x, mask

    def encode(
        self,
        datasets: Sequence[Mapping[str, Any]] | Mapping[str, Any],
        device: torch.device | str = "cpu",
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Standardised network input for a list of datasets (or a batched dict)."""
        values, lengths = self.raw(datasets)
        return self.to_tensors(values, lengths, device=device)
