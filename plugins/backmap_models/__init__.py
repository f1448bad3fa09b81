"""The models backmap ships (``models/`` of the repository), registered as a model pack through
the ``backmap.models`` entry point, exactly as a third-party pack registers its own."""
from __future__ import annotations

from pathlib import Path


def shipped() -> list[Path]:
    """The folder of shipped models, where this checkout has one (an editable install)."""
    folder = Path(__file__).resolve().parents[2] / "models"
    return [folder] if folder.is_dir() else []
