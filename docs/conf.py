"""Sphinx configuration: PyData theme + MyST, API reference from the docstrings."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "pymc-ext / stan-bridge"
author = "pymc-ext developers"
copyright = "2026, pymc-ext developers"
release = "0.1.0"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "benchmarks_intro.md"]

html_theme = "pydata_sphinx_theme"
html_static_path = ["_static"]
html_title = "pymc-ext / stan-bridge"
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}

autosummary_generate = True
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True
# Heavy optional imports are mocked only for building the API pages.
autodoc_mock_imports: list[str] = []
nitpicky = False
# "ref.python": numpy-style type specs such as "(n, dim)" are not cross-references.
suppress_warnings = ["myst.header", "autosummary.import_cycle", "ref.python"]

# The troubleshooting page lists every message the library raises, from the code.
sys.path.insert(0, os.path.dirname(__file__))
from collect_messages import write_page  # noqa: E402

write_page(__import__("pathlib").Path(__file__).with_name("messages_generated.md"))


def _write_benchmarks_page() -> None:
    """docs/benchmarks.md: the intro plus every table in benchmarks/results/, as it is."""
    from pathlib import Path

    docs = Path(__file__).resolve().parent
    results = docs.parent / "benchmarks" / "results"
    parts = [(docs / "benchmarks_intro.md").read_text()]
    for table in sorted(results.glob("*.md")):
        rel = os.path.relpath(table, docs)
        parts.append(f"\n```{{include}} {rel}\n:heading-offset: 1\n```\n")
    (docs / "benchmarks.md").write_text("\n".join(parts))


_write_benchmarks_page()


def _write_examples_page() -> None:
    """docs/examples.md: each script in examples/ with its command, output and plots.

    The output and plots are those saved under docs/_static/examples/ by the
    last run of the scripts (``make examples``); CI runs every script in its
    quick mode through ``tests/test_examples.py``.
    """
    import ast
    from pathlib import Path

    docs = Path(__file__).resolve().parent
    static = docs / "_static" / "examples"
    lines = [
        "# Examples",
        "",
        "Runnable scripts in `examples/`. Each takes `--quick` (what CI runs, under a",
        "minute once compiled); `make examples` runs them all and refreshes the output",
        "and plots shown here.",
        "",
    ]
    for script in sorted((docs.parent / "examples").glob("*.py")):
        doc = ast.get_docstring(ast.parse(script.read_text())) or ""
        title = doc.splitlines()[0] if doc else script.stem
        lines += [f"## {title}", "", "\n".join(doc.splitlines()[1:]).strip(), ""]
        lines += ["```bash", f"python examples/{script.name}", "```", ""]
        out = static / f"{script.stem}.txt"
        if out.exists():
            include = f"```{{literalinclude}} _static/examples/{out.name}"
            lines += ["Output:", "", include, "```", ""]
        for png in sorted(static.glob(f"{script.stem}*.png")):
            lines += [f"![{png.stem}](_static/examples/{png.name})", ""]
    (docs / "examples.md").write_text("\n".join(lines))


_write_examples_page()
