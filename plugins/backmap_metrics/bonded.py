"""Bonded geometry: bond-length, angle, dihedral and improper distributions per atom-type tuple.

Terms are the force field's (``build_parameters``), or the bond graph's when the topology has no
parameters; molecules are made whole first. Bin widths are EVALUATION.md's: bonds 0.0025 nm (no
finer: .xtc stores 0.001 nm), angles 1° (0.5° when the vertex atom is in a ring), dihedrals 5°,
impropers 0.5°.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from backmap.api import Metric
from backmap.api.forcefield import TOLERANCE
from backmap.api.metrics import Binning, EvalContext, FrameBatch, Observable, geometry, terms


class _Family(Metric):
    """One bonded family: groups of terms by atom-type tuple, one observable per group."""

    family: ClassVar[str]
    unit: ClassVar[str] = "deg"
    compute = staticmethod(geometry.angles)

    def binning(self, idx: np.ndarray, context: EvalContext) -> Binning:
        raise NotImplementedError

    def prepare(self, context: EvalContext) -> list[Observable]:
        all_terms, source = _terms(context)
        idx = all_terms[self.family]
        self.groups = terms.group_by_types(idx, context.atom_types)
        if not self.groups:
            self.skipped = f"no {self.family} terms in the topology ({source})"
            return []
        return [Observable(f"{self.family}:{key}", "distribution", self.family, self.unit,
                           self.binning(rows, context), label=f"{self.family} {key} ({self.unit})",
                           description=f"{len(rows)} {self.family} terms ({source})")
                for key, rows in self.groups.items()]

    def samples(self, batch: FrameBatch, context: EvalContext) -> dict[str, np.ndarray]:
        x = batch.whole
        return {f"{self.family}:{key}": self.compute(x, rows) for key, rows in self.groups.items()}


def _terms(context: EvalContext) -> tuple[dict[str, np.ndarray], str]:
    """Bonded term lists, derived once per context and shared by the four families."""
    return context.shared("bonded_terms", lambda: terms.bonded_terms(context.topology))


class BondParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: float = Field(0.0025, gt=0, description="bin width (nm)")


class Bonds(_Family):
    name = "bonds"
    summary = "bond-length distributions per atom-type pair (JSD on 0.0025 nm bins, W1)"
    Params = BondParams
    family = "bond"
    unit = "nm"
    compute = staticmethod(geometry.distances)

    def binning(self, idx, context):
        return Binning(width=self.params.width)


class AngleParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: float = Field(1.0, gt=0, description="bin width (degrees)")
    ring_width: float = Field(0.5, gt=0, description="bin width for angles at ring atoms (degrees)")


class Angles(_Family):
    name = "angles"
    summary = "angle distributions per atom-type triple (1° bins, 0.5° at ring atoms)"
    Params = AngleParams
    family = "angle"

    def binning(self, idx, context):
        in_ring = terms.ring_angles(context.topology, idx)
        ring = in_ring.mean() > 0.5  # a group is a ring group when most of its angles have the vertex in a ring
        return Binning(width=self.params.ring_width if ring else self.params.width, lo=0.0, hi=180.0)


class DihedralParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: float = Field(5.0, gt=0, description="bin width (degrees)")


class Dihedrals(_Family):
    name = "dihedrals"
    summary = "proper dihedral distributions per atom-type quadruple (5° bins, circular W1)"
    Params = DihedralParams
    family = "dihedral"
    compute = staticmethod(geometry.dihedrals)

    def binning(self, idx, context):
        return Binning(width=self.params.width, lo=-180.0, hi=180.0, periodic=True)


class ImproperParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: float = Field(0.5, gt=0, description="bin width (degrees)")


class Impropers(_Family):
    name = "impropers"
    summary = "improper dihedral distributions per atom-type quadruple (0.5° bins)"
    Params = ImproperParams
    family = "improper"
    compute = staticmethod(geometry.dihedrals)

    def binning(self, idx, context):
        return Binning(width=self.params.width)


class BrokenBondParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tolerance: float = Field(TOLERANCE, gt=0, description="relative deviation from the reference length that counts "
                                                   "as broken (0.2: a 0.15 nm bond outside 0.12–0.18 nm)")


class BrokenBonds(Metric):
    """Bonds whose length is off the reference structure's by more than ``tolerance`` (relative),
    per bond and frame. The bond-length distributions hide this when a few bonds of one type are
    broken among many good ones, and a molecule torn apart is not a structure anyone can use (the
    chemical-transfer output of 2026-11-26 had every ring 0.37 nm from its backbone)."""

    name = "broken_bonds"
    summary = "broken bonds: fraction of bonds off the reference length by more than 20 %, per frame"
    Params = BrokenBondParams

    def prepare(self, context: EvalContext) -> list[Observable]:
        self.bonds = _terms(context)[0]["bond"]
        if context.reference_frame is None or not len(self.bonds):
            self.skipped = "no bonds or no reference frame"
            return []
        self.length = geometry.distances(context.reference_frame[None], self.bonds)[0]
        return [Observable("broken_bond_fraction", "score", "bond", "fraction",
                           label=f"broken bonds (> {self.params.tolerance:.0%} off the reference length)",
                           description=f"fraction of the {len(self.bonds)} bonds more than "
                                       f"{self.params.tolerance:.0%} off their length in the reference",
                           better="lower")]

    def samples(self, batch: FrameBatch, context: EvalContext) -> dict[str, np.ndarray]:
        d = geometry.distances(batch.whole, self.bonds)
        broken = np.abs(d - self.length) > self.params.tolerance * self.length
        return {"broken_bond_fraction": broken.mean(1)[:, None]}
