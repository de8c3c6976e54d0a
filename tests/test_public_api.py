"""Every public name resolves, and has a numpy-style docstring with an example."""

from __future__ import annotations

import pytest

import pymc_ext
import stan_bridge

PUBLIC = [(pymc_ext, n) for n in pymc_ext.__all__ if n != "__version__"] + [
    (stan_bridge, n) for n in stan_bridge.__all__ if n != "__version__"
]


@pytest.mark.parametrize("package,name", PUBLIC, ids=[f"{p.__name__}.{n}" for p, n in PUBLIC])
def test_public_name_resolves_and_is_documented(package, name):
    obj = getattr(package, name)
    doc = obj.__doc__ or ""
    assert doc.strip(), f"{package.__name__}.{name} has no docstring"
    is_exception = isinstance(obj, type) and issubclass(obj, BaseException)
    if not is_exception:
        assert "Examples" in doc, f"{package.__name__}.{name} has no Examples section"
