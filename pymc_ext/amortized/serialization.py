"""Saving and loading a trained amortizer: one file, no pickled code, a model fingerprint check.

The file is a ``torch.save`` archive of tensors and one JSON string, read back
with ``torch.load(weights_only=True)``; its format name and version are
checked before anything else. Before any network is built, the fingerprint of
the model the weights were trained on (variables, shapes, transforms and a
hash of the model) is compared with the model they are loaded into.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pymc_ext.amortized.frames import LaplaceFrames
from pymc_ext.amortized.layout import DataLayout
from pymc_ext.amortized.results import AmortizerMismatchError, TrainingHistory

__all__ = [
    "PersistenceMixin",
    "SAVE_FORMAT",
    "SAVE_FORMAT_VERSION",
    "amortizer_config",
    "current_fingerprint",
    "fingerprint_differences",
    "load_amortizer",
    "read_payload",
    "save_amortizer",
    "strip_rows",
]

SAVE_FORMAT = "pymc_ext.amortizer"
SAVE_FORMAT_VERSION = 1
# what torch.load raises for a file that is not a (safe) torch archive
_UNREADABLE = (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError,
               KeyError, AttributeError, IsADirectoryError, PermissionError)


def strip_rows(fp: dict[str, Any], has_rows: bool) -> dict[str, Any]:
    """For row data, the number of rows is free: drop it from the shapes.

    Examples
    --------
    >>> from pymc_ext.amortized.serialization import strip_rows
    >>> strip_rows({"observed": {"y": [30, 2]}}, has_rows=True)["observed"]
    {'y': [2]}
    """
    if has_rows:
        for key in ("observed", "covariates"):
            fp[key] = {n: list(s)[1:] for n, s in fp.get(key, {}).items()}
    return fp


def amortizer_config(amortizer: Any) -> dict[str, Any]:
    """Everything but the weights, as JSON-able data.

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> a = pymc_ext.Amortizer(model).fit(300, epochs=2, random_seed=0, progressbar=False)
    >>> from pymc_ext.amortized.serialization import amortizer_config
    >>> amortizer_config(a)["summary"]["kind"]
    'identity'
    """
    import pymc_ext

    summary_net, history, summary_range = (
        amortizer.summary_net, amortizer.history, amortizer.summary_range
    )
    return {
        "format": SAVE_FORMAT,
        "format_version": SAVE_FORMAT_VERSION,
        "pymc_ext_version": pymc_ext.__version__,
        "torch_version": torch.__version__,
        "target_kind": amortizer.target.kind,
        "observed": list(amortizer.target.observed),
        "covariates": list(amortizer.target.covariates),
        "fingerprint": strip_rows(amortizer.target.fingerprint(), amortizer.layout.has_rows),
        "summary": {
            "kind": amortizer.summary_kind,
            "kwargs": summary_net.config() if hasattr(summary_net, "config") else {},
        },
        "flow": amortizer.flow.config(),
        "frame": amortizer.frame,
        "frames": None if amortizer.frames is None else {
            "mean": amortizer.frames.mean.tolist(), "std": amortizer.frames.std.tolist()
        },
        "layout": amortizer.layout.config(),
        "summary_range": None if summary_range is None else summary_range.tolist(),
        "history": dict(history) if history is not None else None,
    }


def save_amortizer(amortizer: Any, path: str | os.PathLike) -> None:
    """Write ``amortizer`` to ``path`` atomically (temporary file, then rename).

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> a = pymc_ext.Amortizer(model).fit(300, epochs=2, random_seed=0, progressbar=False)
    >>> import os, tempfile
    >>> from pymc_ext.amortized.serialization import read_payload, save_amortizer
    >>> path = os.path.join(tempfile.mkdtemp(), "a.pt")
    >>> save_amortizer(a, path)
    >>> read_payload(path)["config"]["format_version"]
    1
    """
    path = os.fspath(path)
    payload = {
        "format": SAVE_FORMAT,
        "format_version": SAVE_FORMAT_VERSION,
        "config": json.dumps(amortizer_config(amortizer)),
        "summary_state": {
            k: v.detach().cpu() for k, v in amortizer.summary_net.state_dict().items()
        },
        "flow_state": {k: v.detach().cpu() for k, v in amortizer.flow.state_dict().items()},
    }
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".amortizer-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_payload(path: str) -> dict[str, Any]:
    """The saved tensors and the parsed configuration (format and version checked).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        Not an amortizer file, or another format version.

    Examples
    --------
    >>> import os, tempfile, torch
    >>> from pymc_ext.amortized.serialization import read_payload
    >>> path = os.path.join(tempfile.mkdtemp(), "other.pt")
    >>> torch.save({"format": "something else"}, path)
    >>> try:
    ...     read_payload(path)
    ... except ValueError as err:
    ...     print("is not an amortizer" in str(err))
    True
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except _UNREADABLE as err:
        raise ValueError(f"{path} is not a readable amortizer file: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != SAVE_FORMAT:
        raise ValueError(f"{path} is not an amortizer saved by pymc_ext.Amortizer.save.")
    version = payload.get("format_version")
    if version != SAVE_FORMAT_VERSION:
        raise ValueError(
            f"{path} has amortizer format version {version}; this pymc_ext reads version "
            f"{SAVE_FORMAT_VERSION}. Retrain, or load it with the pymc_ext version that "
            "saved it."
        )
    payload["config"] = json.loads(payload["config"])
    return payload


def current_fingerprint(
    model: Any, observed: Sequence[str], covariates: Sequence[str], has_rows: bool
) -> dict[str, Any]:
    """The fingerprint of ``model`` as a saved amortizer would record it (nothing compiled).

    Examples
    --------
    >>> import numpy as np, pymc as pm
    >>> from pymc_ext.amortized.serialization import current_fingerprint
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> current_fingerprint(model, ["y"], [], has_rows=False)["observed"]
    {'y': [3]}
    """
    import pymc as pm

    from pymc_ext.amortized.targets import PriorPredictiveTarget, pymc_fingerprint

    if model is None or isinstance(model, pm.Model):
        model = pm.modelcontext(model)
        names = {rv.name for rv in model.observed_RVs}
        missing = [o for o in observed if o not in names]
        if missing:
            return {"kind": "pymc", "params": [], "observed": {o: None for o in missing}}
        fp = pymc_fingerprint(model, observed, [c for c in covariates if c in model.named_vars])
    else:
        fp = PriorPredictiveTarget(model, observed=observed).fingerprint()
    return strip_rows(fp, has_rows)


def _param_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    saved_params = {p[0]: p for p in saved.get("params", [])}
    current_params = {p[0]: p for p in current.get("params", [])}
    missing = sorted(set(saved_params) - set(current_params))
    extra = sorted(set(current_params) - set(saved_params))
    diffs = []
    if missing:
        diffs.append(f"parameters {missing} are missing from this model")
    if extra:
        diffs.append(f"this model has parameters {extra} the amortizer does not know")
    for name in sorted(set(saved_params) & set(current_params)):
        if list(saved_params[name]) != list(current_params[name]):
            diffs.append(
                f"parameter {name!r} was {saved_params[name][1:]} (value var, shape, transform), "
                f"is {current_params[name][1:]}"
            )
    return diffs


def fingerprint_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two model fingerprints.

    Examples
    --------
    >>> from pymc_ext.amortized.serialization import fingerprint_differences
    >>> fingerprint_differences({"kind": "pymc", "params": [["mu"]]},
    ...                         {"kind": "pymc", "params": [["mu"], ["tau"]]})
    ["this model has parameters ['tau'] the amortizer does not know"]
    """
    diffs = []
    if saved.get("kind") != current.get("kind"):
        diffs.append(f"model kind {saved.get('kind')!r} vs {current.get('kind')!r}")
    diffs += _param_differences(saved, current)
    if not diffs and [p[0] for p in saved.get("params", [])] != [
        p[0] for p in current.get("params", [])
    ]:
        diffs.append("the parameters are in a different order")
    for key in ("observed", "covariates"):
        if dict(saved.get(key, {})) != dict(current.get(key, {})):
            diffs.append(f"{key} data {saved.get(key)} vs {current.get(key)}")
    if not diffs and saved.get("model_hash") != current.get("model_hash"):
        diffs.append(
            "the distributions differ (same names and shapes, different model hash "
            f"{saved.get('model_hash')} vs {current.get('model_hash')})"
        )
    return diffs


def _constructor_kwargs(config: Mapping[str, Any], custom: bool) -> dict[str, Any]:
    """Keyword arguments of ``Amortizer(...)`` that rebuild the saved networks."""
    kind = config["summary"]["kind"]
    return {
        "observed": config["observed"],
        "covariates": config["covariates"] or None,
        "summary_kwargs": {
            # files written before the pooled moments existed have no "moments" key
            **({"moments": False} if kind == "deepset" else {}),
            **{
                k: v for k, v in config["summary"]["kwargs"].items()
                if k not in ("input_dim", "feature_dim")
            },
        },
        "flow_kwargs": {
            k: v for k, v in config["flow"].items() if k not in ("dim", "context_dim")
        },
        "data_layout": DataLayout.from_config(config["layout"]).kind if custom else None,
        "frame": config.get("frame", "prior"),  # files from before frames: none
    }


def _restore(amortizer: Any, payload: Mapping[str, Any], layout: DataLayout) -> None:
    """Put the saved layout, weights, summary range and history into ``amortizer``."""
    config = payload["config"]
    amortizer.layout = layout
    try:
        amortizer.summary_net.load_state_dict(payload["summary_state"])
        amortizer.flow.load_state_dict(payload["flow_state"])
    except RuntimeError as err:
        raise AmortizerMismatchError(f"The saved weights do not fit the networks: {err}") from err
    amortizer.summary_net.to(amortizer.device).eval()
    amortizer.flow.to(amortizer.device).eval()
    if config.get("summary_range") is not None:
        amortizer.summary_range = np.asarray(config["summary_range"], dtype=float)
    if config.get("history") is not None:
        amortizer.history = TrainingHistory(config["history"])
    if config.get("frames") is not None:
        amortizer.frames = LaplaceFrames(
            amortizer.target, np.asarray(config["frames"]["mean"]),
            np.asarray(config["frames"]["std"]),
        )
    amortizer.fitted = True


def load_amortizer(
    cls: type,
    path: str | os.PathLike,
    model: Any = None,
    *,
    summary: nn.Module | None = None,
    covariate_sampler: Callable[[np.random.Generator], Mapping[str, Any]] | None = None,
    device: str | torch.device | None = None,
    num_threads: int | None = 1,
    source: str | None = None,
) -> Any:
    """The body of :meth:`Amortizer.load` (``cls`` is the class to build).

    ``source`` names the weights in the mismatch error (default: the file).

    Examples
    --------
    >>> import numpy as np, pymc as pm, pymc_ext
    >>> with pm.Model() as model:
    ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
    >>> a = pymc_ext.Amortizer(model).fit(300, epochs=2, random_seed=0, progressbar=False)
    >>> import os, tempfile
    >>> from pymc_ext.amortized.serialization import load_amortizer
    >>> path = os.path.join(tempfile.mkdtemp(), "a.pt")
    >>> a.save(path)
    >>> load_amortizer(pymc_ext.Amortizer, path, model).fitted
    True
    """
    path = os.fspath(path)
    payload = read_payload(path)
    config = payload["config"]
    if config["summary"]["kind"] == "custom" and summary is None:
        raise ValueError(
            "This amortizer was trained with a custom summary module: pass a fresh instance "
            "of it as Amortizer.load(path, model, summary=MyNet(...))."
        )
    layout = DataLayout.from_config(config["layout"])
    # compare the models before building anything (no compiling for a wrong model)
    current = current_fingerprint(
        model, config["observed"], config["covariates"], layout.has_rows
    )
    diffs = fingerprint_differences(config["fingerprint"], current)
    if diffs:
        raise AmortizerMismatchError(
            f"{source or f'The amortizer in {path}'} was trained on a different model: "
            + "; ".join(diffs)
            + ". Load it into the model it was trained on, or train a new amortizer for "
            "this model."
        )
    amortizer = cls(
        model,
        summary=summary if summary is not None else config["summary"]["kind"],
        covariate_sampler=covariate_sampler,
        device=device,
        num_threads=num_threads,
        **_constructor_kwargs(config, custom=summary is not None),
    )
    _restore(amortizer, payload, layout)
    return amortizer


class PersistenceMixin:
    """``save``, ``load`` and ``attach`` for :class:`~pymc_ext.amortized.core.Amortizer`."""

    def attach(self, model: Any = None) -> Any:
        """The trained amortizer for another model of the same structure (a new dataset).

        A new dataset usually comes in a new model built by the same model
        function. This returns an amortizer for that model, with a copy of
        the trained weights, conditioned on the new model's own data:
        ``attach(new).sample()``, ``pm.sample(step=AmortizedMH(...))`` in the
        new model (which attaches by itself), ``check_calibration`` and so on
        work as on the original. It is the in-memory form of
        ``save(path); Amortizer.load(path, new_model)``, with the same check.

        Parameters
        ----------
        model : pm.Model or LogDensity, optional
            The other model (the one in context by default).

        Returns
        -------
        Amortizer

        Raises
        ------
        AmortizerMismatchError
            When ``model``'s parameters, shapes, transforms, data shapes or
            distributions differ from the ones the amortizer was trained on;
            the message names each difference.

        Examples
        --------
        >>> import numpy as np, pymc as pm, pymc_ext
        >>> def build(y):
        ...     with pm.Model() as m:
        ...         pm.Normal("y", pm.Normal("mu"), 1, observed=y)
        ...     return m
        >>> a = pymc_ext.Amortizer(build(np.zeros(3))).fit(300, epochs=2, random_seed=0,
        ...                                                progressbar=False)
        >>> b = a.attach(build(np.ones(3)))
        >>> b.target.current_data()["y"].tolist()
        [1.0, 1.0, 1.0]
        """
        import copy
        import tempfile

        self.check_fitted()
        custom = amortizer_config(self)["summary"]["kind"] == "custom"
        with tempfile.TemporaryDirectory(prefix="pymc_ext_attach_") as tmp:
            path = os.path.join(tmp, "amortizer.pt")
            save_amortizer(self, path)
            return load_amortizer(
                type(self),
                path,
                model,
                summary=copy.deepcopy(self.summary_net) if custom else None,
                covariate_sampler=getattr(self.target, "covariate_sampler", None),
                device=self.device,
                num_threads=self.num_threads,
                source="This amortizer",
            )

    def save(self, path: str | os.PathLike) -> None:
        """Save weights and configuration to one file (atomically; no pickled code).

        The file is a ``torch.save`` archive of tensors and one JSON string,
        readable with ``torch.load(weights_only=True)``. It is written to a
        temporary file beside ``path`` and moved into place, so an interrupted
        save never leaves a corrupt file.

        Examples
        --------
        >>> import os, tempfile, numpy as np, pymc as pm, pymc_ext
        >>> with pm.Model() as model:
        ...     mu = pm.Normal("mu")
        ...     y = pm.Normal("y", mu, 1, observed=np.zeros(3))
        >>> a = pymc_ext.Amortizer(model).fit(300, epochs=2, random_seed=0, progressbar=False)
        >>> path = os.path.join(tempfile.mkdtemp(), "amortizer.pt")
        >>> a.save(path)
        >>> pymc_ext.Amortizer.load(path, model).fitted
        True
        """
        self.check_fitted()
        save_amortizer(self, path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        model: Any = None,
        *,
        summary: nn.Module | None = None,
        covariate_sampler: Callable[[np.random.Generator], Mapping[str, Any]] | None = None,
        device: str | torch.device | None = None,
        num_threads: int | None = 1,
    ) -> Any:
        """Load a saved amortizer into ``model``, checking that it is the same model.

        Parameters
        ----------
        path : str
            A file written by :meth:`save`.
        model : pm.Model or LogDensity
            The model to attach it to (the one in context by default).
        summary : torch.nn.Module, optional
            Needed only when the saved amortizer used a custom summary module:
            a fresh instance of the same architecture.
        covariate_sampler : callable, optional
            For further training or calibration with new covariates.
        device : str or torch.device, optional
            Where to run.
        num_threads : int or None
            As in :class:`Amortizer`.

        Raises
        ------
        AmortizerMismatchError
            If the model's variables, shapes or transforms differ from the
            ones the weights were trained on (the message lists them).
        ValueError
            If the file is not an amortizer or has an unknown format version.

        Examples
        --------
        >>> import numpy as np, pymc as pm, pymc_ext
        >>> with pm.Model() as model:
        ...     y = pm.Normal("y", pm.Normal("mu"), 1, observed=np.zeros(3))
        >>> a = pymc_ext.Amortizer(model).fit(300, epochs=2, random_seed=0, progressbar=False)
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "amortizer.pt")
        >>> a.save(path)
        >>> with pm.Model() as other:
        ...     y = pm.Normal("y", pm.Normal("tau"), 1, observed=np.zeros(3))
        >>> try:
        ...     pymc_ext.Amortizer.load(path, other)
        ... except pymc_ext.amortized.AmortizerMismatchError:
        ...     print("refused")
        refused
        """
        return load_amortizer(
            cls, path, model, summary=summary, covariate_sampler=covariate_sampler,
            device=device, num_threads=num_threads,
        )

