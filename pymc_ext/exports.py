"""Lazy public names for a package: ``import pkg`` stays cheap, a name loads its module on use."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """Module-level ``__getattr__``, ``__dir__`` and ``__all__`` for lazy public names.

    Parameters
    ----------
    package : str
        The package's name, for the error message.
    exports : mapping
        Public name -> the module that defines it.
    namespace : dict
        The package's ``globals()``: a name, once loaded, is cached there.

    Returns
    -------
    (__getattr__, __dir__, __all__)

    Examples
    --------
    >>> from pymc_ext.exports import lazy_exports
    >>> ns = {}
    >>> getattr_, dir_, all_ = lazy_exports("demo", {"sqrt": "math"}, ns)
    >>> getattr_("sqrt")(4.0), all_
    (2.0, ['__version__', 'sqrt'])
    >>> "sqrt" in ns
    True
    """
    names = sorted([*exports, "__version__"])

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return list(names)

    return __getattr__, __dir__, names
