"""User-facing errors: one line that names the file, line or recipe key at fault."""
from __future__ import annotations

from pathlib import Path


class BackmapError(Exception):
    """An error caused by the user's input; the CLI prints it on one line and exits with code 2."""

    exit_code = 2

    def __init__(self, message: str, *, source: str | Path | None = None):
        self.source = str(source) if source is not None else None
        super().__init__(f"{self.source}: {message}" if self.source else message)
