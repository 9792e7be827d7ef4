"""Sphinx configuration of spiketriton's documentation.

Build (as CI does, warnings are errors, a broken cross-reference included)::

    pip install -e ".[docs]"
    python -m sphinx -W -n --keep-going -b html docs build/docs

Why Sphinx (with furo and myst-parser) and not mkdocs-material with mkdocstrings: the docstrings of the
package are reStructuredText (``:class:``, ``:func:``, ``:meth:`` roles, literal blocks), which Sphinx's
autodoc renders and *checks* (``-n``: every role must name a documented object), while mkdocstrings
would print the roles literally and has no equivalent of ``-n`` for them; the guides stay Markdown through
myst-parser. Both stacks install from the package index here; Sphinx builds the whole site (about 70 pages,
45 of them generated) in 15-19 s of CPU time on this 2-core machine.

The API reference is generated, not written: ``_api.py`` walks the ``spiketriton`` package at every
build and writes one page per public module into ``api/generated/`` (not committed), so a module
added to the package appears without touching the docs.
"""

from __future__ import annotations

import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
# importing spiketriton must not need a GPU nor pick the Triton interpreter up from the environment
os.environ.pop("TRITON_INTERPRET", None)

import spiketriton  # noqa: E402

import _api  # noqa: E402

project = "spiketriton"
author = "spiketriton contributors"
copyright = "spiketriton contributors, Apache-2.0"
release = version = spiketriton.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "build", "README.md", "**/.ipynb_checkpoints"]

# Markdown: explicit (label)= targets are the stable anchors other pages and the docstrings cite;
# headings up to level 3 also get slug anchors for links within and across pages.
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3

# every cross-reference must resolve (-n); what lives outside this site is listed here
nitpicky = True
nitpick_ignore_regex = [
    # third-party types in signatures: no intersphinx (the build runs offline)
    (r"py:.*", r"(torch|numpy|np|nir|os|argparse|collections|typing|pathlib|enum|abc|types|dataclasses)(\..*)?"),
    (r"py:.*", r"(Tensor|Module|Path|PathLike|Sequence|Mapping|Iterable|Callable|Optional|Union|Any)"),
    # private base classes named by show-inheritance and private helpers named in docstrings
    (r"py:.*", r"(.*\.)?_[A-Za-z].*"),
]
nitpick_ignore = _api.KNOWN_BROKEN_REFERENCES

autodoc_member_order = "bysource"
autodoc_inherit_docstrings = False      # nn.Module.forward's docstring is torch's, not ours
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autosummary_generate = False            # _api.py writes the pages itself

html_theme = "furo"
html_title = f"spiketriton {release}"
html_static_path: list[str] = []

# bench/README.md, included as the benchmark reference, skips heading levels (a style matter, not a broken link)
suppress_warnings = ["myst.header"]


def setup(app):
    app.connect("missing-reference", _api.resolve_alias)
    app.connect("builder-inited", lambda app: _api.write_pages(HERE / "api" / "generated"))
