"""Every public name resolves, and has a numpy-style docstring with an example."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

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


API_PAGE = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
# docs/conf.py documents every module's members by default (autodoc_default_options)
DOCUMENTED_MODULES = re.findall(r"automodule:: ([\w.]+)", API_PAGE)


@pytest.mark.parametrize("package,name", PUBLIC, ids=[f"{p.__name__}.{n}" for p, n in PUBLIC])
def test_public_name_is_in_the_api_reference(package, name):
    """Listed by name, or a member (in ``__all__``) of a module documented there."""
    obj = getattr(package, name)
    listed = f"{package.__name__}.{name}" in API_PAGE or any(
        any(getattr(mod, n, None) is obj for n in getattr(mod, "__all__", ()))
        for mod in map(importlib.import_module, DOCUMENTED_MODULES)
    )
    assert listed, f"{package.__name__}.{name} is not in docs/api.md"
