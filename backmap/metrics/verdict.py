"""The one line that says what an evaluation's headline means (docs/evaluation.md): each
candidate's mean JSD as a multiple of the noise floor, good within a factor of two."""
from __future__ import annotations

import math
from typing import Any


def _fmt(v: float) -> str:
    return f"{v:.2e}" if abs(v) < 1e-3 else f"{v:.4g}"


#: a backmapper within this factor of the noise floor is called good (docs/evaluation.md)
GOOD_FACTOR = 2.0


def verdict(headline: dict[str, Any]) -> str:
    """One line on what the headline means: each candidate's mean JSD as a multiple of the noise
    floor, and which are good (within :data:`GOOD_FACTOR` of it). ``headline`` is
    ``metrics.json``'s ``summary.mean_jsd_headline``."""
    floor = headline.get("noise_floor")
    if floor is None or not math.isfinite(floor) or floor <= 0:
        return "no noise floor (too few reference frames to split in halves): compare candidates with each other"
    parts = []
    for label, value in headline["candidates"].items():
        if value is None or not math.isfinite(value):
            parts.append(f"{label} –")
            continue
        ratio = value / floor
        parts.append(f"{label} {_fmt(value)} = {ratio:.1f}× ({'good' if ratio <= GOOD_FACTOR else 'not yet good'})")
    return (f"Good is a mean JSD within {GOOD_FACTOR:g}× the noise floor {_fmt(floor)} "
            f"(0 = the simulation's distributions, 1 = disjoint): " + "; ".join(parts) + ".")
