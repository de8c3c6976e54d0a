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
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

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
