"""Sphinx configuration for dualnn's documentation.

Build (warnings are errors): ``bash docs/build.sh`` or
``sphinx-build -W --keep-going -b html docs docs/_build/html``.
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))  # the checkout, when dualnn is not installed

import dualnn  # fail loudly: an import error must break the build

project = "dualnn"
author = "the dualnn developers"
copyright = "the dualnn developers"
release = dualnn.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax served from _static/mathjax: math renders offline
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "build.sh", "Thumbs.db", ".DS_Store"]

# --- autodoc / autosummary: document the public surface, no generated stub files
autosummary_generate = False
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"  # numpydoc sections carry the types
autodoc_mock_imports = ["cupy"]  # the GPU backend documents without CuPy installed

# --- math: the sphinx-mathjax-offline package copies its bundled MathJax 3 into
# _build/html/_static/mathjax; pointing mathjax_path there keeps pages free of CDN scripts
mathjax_path = "mathjax/tex-chtml.js"

# --- numpydoc: keep the build green on docstring style, fail on real errors
numpydoc_show_class_members = False  # members are documented by autodoc, not listed twice
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks = set()

# --- MyST (Markdown pages): $...$ and $$...$$ math, ::: fences, heading anchors
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

nitpicky = False
# Docstrings written across the codebase repeat names such as ``Sequential`` that exist in
# two namespaces (dn.Sequential, dn.layers.Sequential); an ambiguous cross-reference is not
# a broken page.
suppress_warnings = ["ref.python", "myst.xref_missing"]

html_theme = "pydata_sphinx_theme"
html_title = f"dualnn {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
