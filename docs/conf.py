"""Sphinx configuration of the backmap documentation (MyST Markdown).

Build: bash scripts/docs.sh (warnings are errors; .ci/run builds it). The Reference pages of
recipe keys and plugin parameters are generated here from the pydantic models that validate them,
the command-line reference by sphinx-click from the click commands, the API from docstrings."""
from __future__ import annotations

from pathlib import Path

from backmap import __version__

HERE = Path(__file__).parent

project = "backmap"
author = "the backmap developers"
copyright = "2026, the backmap developers"
release = version = __version__

extensions = ["myst_parser", "sphinx_click", "sphinx.ext.autodoc", "sphinx.ext.mathjax", "sphinx.ext.viewcode"]
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
exclude_patterns = ["_build", "examples/*/README.md", "examples/**/*.md"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
html_theme = "furo"
html_title = f"backmap {release}"
html_static_path: list[str] = []


def _write_reference(app) -> None:  # noqa: ANN001 - sphinx's callback signature
    """Regenerate the recipe-key and plugin-parameter pages (kept out of git: .gitignore)."""
    from backmap.app.reference import reference_pages
    from backmap.engine.registry import default_registry

    for name, text in reference_pages(default_registry()).items():
        path = HERE / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


def setup(app):  # noqa: ANN001, ANN201
    app.connect("builder-inited", _write_reference)
