"""Sphinx configuration of kyu-trio's documentation (MyST Markdown, autodoc, sphinx-click).

The build must work offline and without warnings: ``scripts/test.sh`` runs
``sphinx-build -W --keep-going -b html docs docs/_build/html``. No intersphinx: it would
fetch inventories from the network at build time.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))  # kyu_trio from this checkout

import kyu_trio  # noqa: E402

project = "kyu-trio"
author = "kyu-trio contributors"
copyright = "kyu-trio contributors"
release = kyu_trio.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx_click",
    "kyu_docs",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "README.md"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# Docstrings say `Queue` or `serve()` in single backticks: show them as code and link
# them where Sphinx knows the name (unknown names stay plain code, without a warning).
default_role = "py:obj"
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "separated"
autodoc_default_options = {"members": True, "undoc-members": False}
add_module_names = False
python_use_unqualified_type_names = True

html_theme = "furo"
html_title = f"kyu-trio {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
highlight_language = "text"  # an unlabelled block is text, never guessed as Python
