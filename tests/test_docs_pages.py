"""The docs are for users: no page over 40 KB, no pointers to issue numbers or dated lab entries,
and "thesis" cited with its full reference on the pages that use it. (The site itself is built
with warnings as errors by bash scripts/docs.sh in .ci/run.)"""
from __future__ import annotations

import re

import pytest

from conftest import REPO

PAGES = sorted((REPO / "docs").glob("*.md"))


def test_there_are_pages():
    assert len(PAGES) > 20


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_is_for_users(page):
    text = page.read_text()
    assert len(text.encode()) <= 40 * 1024, f"{page.name} is {len(text.encode()) / 1024:.0f} KB"
    assert not re.search(r"\b[Ii]ssues? #?\d+\b(?! of)", re.sub(r"MDAnalysis issue #\d+", "", text)), page.name
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), f"{page.name} has a dated entry"
    if re.search(r"\bthesis (ch|eq|table|§|section)", text):
        assert "Stieffenhofer" in text and "Mainz" in text, f"{page.name} cites the thesis without its reference"
