"""DeepBackmap's text layout (``.map`` mappings, ``ff.txt`` channel maps): ``[name]`` opens a
section, ``[/name]`` closes it, ``;`` starts a comment. One parser, so both readers agree on it."""
from __future__ import annotations

from pathlib import Path

from backmap.errors import BackmapError

Sections = dict[str, list[tuple[int, list[str]]]]


def read_sections(path: str | Path) -> Sections:
    """Section name (lower case) → its rows as (1-based line number, whitespace-split fields).

    The line numbers let callers name ``file:line`` in their errors. Rows outside any section
    are ignored, as DeepBackmap does; a section that appears twice collects the rows of both."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BackmapError(f"cannot read: {exc}", source=path) from exc
    sections: Sections = {}
    current: str | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split(";")[0].strip()
        if not line:
            continue
        if line.startswith("[/"):
            current = None
        elif line.startswith("["):
            current = line.strip("[] ").lower()
            sections.setdefault(current, [])
        elif current is not None:
            sections[current].append((lineno, line.split()))
    return sections


__all__ = ["Sections", "read_sections"]
