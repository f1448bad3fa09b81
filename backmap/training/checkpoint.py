"""Reading training checkpoints: tensors and plain values only (``weights_only``), with a clear
error naming the file when it is truncated or foreign."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from backmap.errors import BackmapError


def read_checkpoint(path: Path, what: str) -> dict[str, Any]:
    """A checkpoint's tensors and plain values (``weights_only``), or a clear error naming the file."""
    try:
        return torch.load(path, weights_only=True)
    except Exception as exc:  # noqa: BLE001 — truncated or foreign files raise many types
        raise BackmapError(f"cannot read the {what} ({exc.__class__.__name__}); remove it to start over",
                           source=path) from None
