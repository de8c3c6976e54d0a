"""ctypes bindings of the C interface in ``shim/stan_bridge_shim.cpp``.

One :class:`ShimLibrary` per ``model.so`` (the dynamic loader shares a
library that is loaded twice), one :class:`ModelHandle` per data set.
Arguments travel as raw addresses (``c_void_p``), which keeps a call's
Python-side cost to a few microseconds.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
from enum import IntEnum
from pathlib import Path

import numpy as np

__all__ = ["ShimLibrary", "ModelHandle", "ShimStatus", "StanRejectError", "SHIM_VERSION"]

SHIM_VERSION = 1


class ShimStatus(IntEnum):
    """The status a shim call returns (the calls return it as a plain int).

    Examples
    --------
    >>> from stan_bridge.library import ShimStatus
    >>> ShimStatus.REJECT == 1, ShimStatus(2).name
    (True, 'ERROR')
    """

    OK = 0
    #: Stan's ``std::domain_error``: the point has zero density (``reject``,
    #: an argument outside a distribution's support).
    REJECT = 1
    #: Any other C++ exception: a bug in the program or in the data.
    ERROR = 2


_vp = ctypes.c_void_p
_int = ctypes.c_int
_i64 = ctypes.c_int64
_uint = ctypes.c_uint


class StanRejectError(ValueError):
    """The model rejected a point (Stan's ``std::domain_error``: a zero density)."""


_libraries: dict[str, ShimLibrary] = {}
_lock = threading.Lock()


class ShimLibrary:
    """A loaded ``model.so`` with its C functions typed.

    Use :meth:`load`, which keeps one instance per path.

    Examples
    --------
    >>> from stan_bridge.library import ShimLibrary
    >>> from stan_bridge.programs import example_model
    >>> lib = ShimLibrary.load(example_model().build.library)
    >>> lib is ShimLibrary.load(lib.path), lib.sb_shim_version()
    (True, 1)
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        lib = ctypes.CDLL(str(self.path), mode=os.RTLD_LOCAL | os.RTLD_NOW)
        self._lib = lib
        sig = {
            "sb_shim_version": (_int, []),
            "sb_free_string": (None, [_vp]),
            "sb_new": (
                _vp,
                [_int, _vp, _vp, _vp, _vp, _int, _vp, _vp, _vp, _vp, _uint, _vp],
            ),
            "sb_free": (None, [_vp]),
            "sb_info": (_vp, [_vp]),
            "sb_log_density": (_int, [_vp, _int, _int, _vp, _vp, _vp]),
            "sb_log_density_gradient": (_int, [_vp, _int, _int, _vp, _vp, _vp, _vp]),
            "sb_log_density_batch": (_int, [_vp, _int, _int, _i64, _vp, _vp, _vp, _vp]),
            "sb_log_density_gradient_batch": (
                _int,
                [_vp, _int, _int, _i64, _vp, _vp, _vp, _vp, _vp],
            ),
            "sb_param_constrain": (_int, [_vp, _int, _int, _i64, _vp, _vp, _uint, _uint, _vp]),
            "sb_param_unconstrain": (_int, [_vp, _int, _vp, _vp, _vp, _vp, _vp, _vp]),
        }
        for name, (restype, argtypes) in sig.items():
            fn = getattr(lib, name)
            fn.restype = restype
            fn.argtypes = argtypes
            setattr(self, name, fn)
        version = self.sb_shim_version()
        if version != SHIM_VERSION:
            raise RuntimeError(
                f"{self.path} was built with shim version {version}; this stan_bridge "
                f"expects {SHIM_VERSION}. Delete the stan_bridge cache folder and rebuild."
            )

    @classmethod
    def load(cls, path: str | os.PathLike) -> ShimLibrary:
        """Load a library once per process (later calls return the same object)."""
        key = str(Path(path).resolve())
        with _lock:
            lib = _libraries.get(key)
            if lib is None:
                lib = _libraries[key] = cls(key)
            return lib

    def take_error(self, err: ctypes.c_void_p) -> str:
        """Read and free an error string the shim returned."""
        if not err.value:
            return ""
        msg = ctypes.string_at(err.value).decode(errors="replace")
        self.sb_free_string(err)
        err.value = None
        return msg


def _names_array(names: list[str]):
    arr = (ctypes.c_char_p * max(len(names), 1))(*[n.encode() for n in names])
    return arr


class ModelHandle:
    """One model object in C++ (a Stan model constructed with one data set).

    Parameters
    ----------
    library : ShimLibrary
    real_part, int_part : tuple
        ``(names, values, ndims, dims)`` from :func:`stan_bridge.data.pack_data`.
    seed : int
        Seed of the RNG for ``transformed data``.

    Examples
    --------
    >>> import numpy as np
    >>> from stan_bridge.data import pack_data
    >>> from stan_bridge.library import ModelHandle, ShimLibrary, ShimStatus
    >>> from stan_bridge.programs import example_model
    >>> sm = example_model()
    >>> lib = ShimLibrary.load(sm.build.library)
    >>> handle = ModelHandle(lib, *pack_data(sm.data, sm.info["inputs"]))
    >>> status, lp, msg = handle.log_density(np.zeros(2), True, True)
    >>> status == ShimStatus.OK, handle.dim
    (True, 2)
    """

    def __init__(self, library: ShimLibrary, real_part, int_part, seed: int = 0) -> None:
        self.lib = library
        self._ptr = None
        rn, rv, rnd, rd = real_part
        inn, iv, ind, idd = int_part
        rn_arr, in_arr = _names_array(rn), _names_array(inn)
        err = ctypes.c_void_p()
        ptr = library.sb_new(
            len(rn),
            ctypes.addressof(rn_arr),
            rv.ctypes.data,
            rnd.ctypes.data,
            rd.ctypes.data,
            len(inn),
            ctypes.addressof(in_arr),
            iv.ctypes.data,
            ind.ctypes.data,
            idd.ctypes.data,
            int(seed) % (2**32),
            ctypes.addressof(err),
        )
        if not ptr:
            raise StanRejectError(library.take_error(err) or "model construction failed")
        self._ptr = ptr
        raw = library.sb_info(ptr)
        self.info = json.loads(ctypes.string_at(raw).decode())
        library.sb_free_string(raw)
        self.dim = int(self.info["dim"])
        self._tls = threading.local()
        self._f_lp = library.sb_log_density
        self._f_grad = library.sb_log_density_gradient

    def __del__(self) -> None:
        ptr, self._ptr = getattr(self, "_ptr", None), None
        if ptr:
            try:
                self.lib.sb_free(ptr)
            except (AttributeError, TypeError, OSError, ctypes.ArgumentError):
                pass  # interpreter shutdown: the library or ctypes is already gone

    def _buffers(self):
        """Per-thread input/output buffers with their addresses, made once.

        Taking an array's address (``arr.ctypes.data``) costs microseconds;
        reusing buffers whose addresses are known keeps a call cheap.
        """
        x = np.empty(self.dim)
        out = np.empty(self.dim + 1)
        err = ctypes.c_void_p()
        oa = out.ctypes.data
        bufs = (x, x.ctypes.data, out, oa, oa + 8, err, ctypes.addressof(err))
        self._tls.bufs = bufs
        return bufs

    # The calls below return the status; the caller decides what a reject means.
    def log_density(self, x: np.ndarray, propto: bool, jacobian: bool) -> tuple[int, float, str]:
        """Returns (status, lp, msg) at one point."""
        try:
            xb, xa, out, oa, _, err, ea = self._tls.bufs
        except AttributeError:
            xb, xa, out, oa, _, err, ea = self._buffers()
        xb[:] = x
        status = self._f_lp(self._ptr, propto, jacobian, xa, oa, ea)
        return status, float(out[0]), self.lib.take_error(err) if status else ""

    def log_density_gradient(
        self, x: np.ndarray, propto: bool, jacobian: bool
    ) -> tuple[int, float, np.ndarray, str]:
        """Returns (status, lp, gradient (a new array), msg)."""
        try:
            xb, xa, out, oa, og, err, ea = self._tls.bufs
        except AttributeError:
            xb, xa, out, oa, og, err, ea = self._buffers()
        xb[:] = x
        status = self._f_grad(self._ptr, propto, jacobian, xa, oa, og, ea)
        return status, float(out[0]), out[1:].copy(), self.lib.take_error(err) if status else ""

    def log_density_batch(
        self, X: np.ndarray, propto: bool, jacobian: bool
    ) -> tuple[int, np.ndarray, int, str]:
        """Returns (status, lp of each row, number of rejected rows, msg)."""
        n = X.shape[0]
        lp = np.empty(n)
        n_rej = np.zeros(1, dtype=np.int64)
        err = ctypes.c_void_p()
        status = self.lib.sb_log_density_batch(
            self._ptr,
            propto,
            jacobian,
            n,
            X.ctypes.data,
            lp.ctypes.data,
            n_rej.ctypes.data,
            ctypes.addressof(err),
        )
        return status, lp, int(n_rej[0]), self.lib.take_error(err)

    def log_density_gradient_batch(
        self, X: np.ndarray, propto: bool, jacobian: bool
    ) -> tuple[int, np.ndarray, np.ndarray, int, str]:
        """Returns (status, lp of each row, gradients, number of rejected rows, msg)."""
        n = X.shape[0]
        lp = np.empty(n)
        grad = np.empty((n, self.dim))
        n_rej = np.zeros(1, dtype=np.int64)
        err = ctypes.c_void_p()
        status = self.lib.sb_log_density_gradient_batch(
            self._ptr,
            propto,
            jacobian,
            n,
            X.ctypes.data,
            lp.ctypes.data,
            grad.ctypes.data,
            n_rej.ctypes.data,
            ctypes.addressof(err),
        )
        return status, lp, grad, int(n_rej[0]), self.lib.take_error(err)

    def param_constrain(
        self, X: np.ndarray, width: int, include_tp: bool, include_gq: bool, seed: int, chain: int
    ) -> tuple[int, np.ndarray, str]:
        """Returns (status, ``(n, width)`` constrained values, msg); see ``StanModel``."""
        n = X.shape[0]
        out = np.empty((n, width))
        err = ctypes.c_void_p()
        status = self.lib.sb_param_constrain(
            self._ptr,
            include_tp,
            include_gq,
            n,
            X.ctypes.data,
            out.ctypes.data,
            int(seed) % (2**32),
            int(chain) % (2**32),
            ctypes.addressof(err),
        )
        return status, out, self.lib.take_error(err) if status else ""

    def param_unconstrain(
        self, names: list[str], values: np.ndarray, ndims: np.ndarray, dims: np.ndarray
    ) -> tuple[int, np.ndarray, str]:
        """Returns (status, the unconstrained vector, msg) for packed parameter values."""
        out = np.empty(self.dim)
        names_arr = _names_array(names)
        err = ctypes.c_void_p()
        status = self.lib.sb_param_unconstrain(
            self._ptr,
            len(names),
            ctypes.addressof(names_arr),
            values.ctypes.data,
            ndims.ctypes.data,
            dims.ctypes.data,
            out.ctypes.data,
            ctypes.addressof(err),
        )
        return status, out, self.lib.take_error(err) if status else ""
