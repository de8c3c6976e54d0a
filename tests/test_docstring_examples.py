"""The ``Examples`` section of every public docstring runs (doctest)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import matplotlib
import pytest

import pymc_ext
import stan_bridge

matplotlib.use("Agg")

# Modules whose examples train networks or run samplers are slow; all run in CI.
MODULES = sorted(
    name
    for pkg in (pymc_ext, stan_bridge)
    for _, name, _ in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
    if not name.endswith("__main__")
)


@pytest.mark.slow
@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS
        | doctest.NORMALIZE_WHITESPACE
        | doctest.IGNORE_EXCEPTION_DETAIL
    )
    for test in finder.find(module, module_name, globs={}):
        if test.examples and test.name.startswith(module_name):
            runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module_name}"
