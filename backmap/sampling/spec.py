"""What a generator sees, declared once: the environment spec.

Training sequences and inference batches are both built by the core from this one object, and it
is saved in the model file, so a model can only ever be used with the environment it was trained
on. A recipe or command-line value that contradicts it is an error naming both values
(:meth:`EnvironmentSpec.check_against`), never a silent mismatch.
"""
from __future__ import annotations

from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field

from backmap.errors import BackmapError

#: the settings a backmapping run may repeat but never change
SPEC_KEYS = ("unit", "cutoff", "traversal", "heavy_first", "strip_hydrogens", "channels")


class EnvironmentSpec(BaseModel):
    """The local environment a generator is trained on and proposes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unit: Literal["atom", "bead"] = Field(
        "atom", description="what one placement is: one atom, or all atoms of a bead at once")
    cutoff: float = Field(0.7, gt=0, description="environment radius around the unit's bead (nm)")
    traversal: str = Field("dfs", description="traversal plugin ordering the beads (dfs, bfs, random, …)")
    heavy_first: bool = Field(True, description="a bead's heavy atoms before its hydrogens")
    strip_hydrogens: bool = Field(True, description="hydrogens of the unit's and bonded beads hidden from heavy atoms")
    channels: Literal["types", "split"] = Field(
        "types", description="interaction channels derived from the topology: bond/angle/dihedral/LJ (types), or "
                             "also split by the atom types of the pair (split); a recipe's system.channels map "
                             "(DeepBackmap ff.txt) overrides both")
    temporal: bool = Field(
        False, description="trajectory mode (thesis ch. 8): every unit also sees where its own atoms were in the "
                           "previous AA frame, so consecutive frames stay coherent; trained on consecutive "
                           "frames, applied to a CG trajectory in order")
    temporal_alignment: Literal["beads", "frame"] = Field(
        "beads", description="trajectory mode: how the previous frame's atoms are carried into the present one. "
                             "beads: turned by the rotation that best carries the unit's bead and its bonded beads "
                             "from then to now, regularised towards no turn about what those beads leave undecided "
                             "(the spin of a nearly straight chain); frame: through the unit's local frame then "
                             "(models made before this option; that frame's spin about a nearly straight bead "
                             "chain is noise)")
    temporal_twist: float | None = Field(
        None, ge=0, description="trajectory mode, alignment beads: how strongly the turn about the beads' principal "
                                "axis is shrunk where their spread across it is small (the twist's noise against its "
                                "signal); none: the value that best predicts the present atoms from the previous "
                                "ones on the training frames, chosen when training starts and kept in the model")

    def check_against(self, given: Mapping[str, Any], where: str) -> None:
        """Refuse settings in ``given`` (None = not given) that differ from this spec."""
        for key in SPEC_KEYS:
            value = given.get(key)
            if value is not None and value != getattr(self, key):
                raise BackmapError(f"{where}.{key}: {value!r} contradicts the model, which was trained with "
                                   f"{key} = {getattr(self, key)!r} (leave it out to use the model's)")
