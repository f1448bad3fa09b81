"""Recipe parameters of the ``equivariant`` generator."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EquivariantParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    constraints: Literal["all-bonds", "h-bonds", "none"] = Field(
        "none", description="bonds the reference MD held rigid (GROMACS' constraints option): placed at exactly "
                            "the topology's length; the others are sampled")
    parity: Literal["so3", "o3"] = Field(
        "so3", description="so3: every irrep labelled even, so the encoder can tell mirror images apart "
                           "(stereocentres); o3: true parities, mirror-blind invariants (for tests)")
    width: int = Field(32, ge=4, description="scalar channels of the encoder")
    vectors: int = Field(16, ge=2, description="vector (l = 1) channels of the encoder")
    tensors: int = Field(8, ge=1, description="l = 2 channels of the encoder's first layer")
    hidden: int = Field(128, ge=8, description="width of the internal-coordinate head")
    context: Literal["forward", "gibbs", "mixed"] = Field(
        "mixed", description="environments trained on: forward pass, Gibbs sweeps, or both")
    blocks: list[str] = Field(
        [], description="also train the environments of these blocks (bead names, e.g. 'B9,S9,B10,S10'): each bead "
                        "seeing all but its block's later beads, as vae_mc's block moves draw them (context 'block')")
    lr: float = Field(2e-3, gt=0, description="Adam learning rate at the start")
    lr_end_fraction: float = Field(0.05, gt=0, le=1, description="cosine decay to this fraction of lr")
    mirror_augment: bool = Field(
        True, description="train on mirror images too (for chemistry whose mirror image is as likely, e.g. "
                          "atactic/syndiotactic chains): the hand is then read from the environment")
    project: bool = Field(True, description="enforce the rigid bonds the internal-coordinate tree leaves open "
                                            "(ring closures, second bonds to placed atoms) by a SHAKE projection")
    recentre: bool = Field(True, description="turn a bead whose mapping lies wholly in it about its bond to the "
                                             "placed atoms (or shift a bead built from virtual points) so that "
                                             "it maps onto its CG bead: bond lengths stay exact")
    recentre_by: Literal["rotation", "rotation+shift", "shift"] = Field(
        "rotation", description="how 'recentre' makes a unit map onto its bead: 'rotation' about its bond to the "
                                "placed atoms (keeps that bond length: rigid chemistry; the centre's distance "
                                "stays off), 'rotation+shift' (then shifted onto the bead: exact centre, that "
                                "bond changes only by the radial miss), 'shift' (exact centre, no rotation)")
    project_cg: bool = Field(True, description="ask the core to project each sampled frame onto its CG input "
                                               "(backmap.sampling.cg_projection: M(x) = R exactly, bond lengths "
                                               "kept); the backmap settings' project_cg overrides it")
    previous_dropout: float = Field(
        0.1, ge=0, le=1, description="trajectory mode (environment.temporal): fraction of training beads shown "
                                     "without their previous frame, so the same model also starts a trajectory")
    transferable: bool = Field(
        False, description="key what the networks see by chemistry instead of by position in the bead: a "
                           "neighbour's relation to the atoms being placed by their atom types, the known atoms "
                           "as the nearest ones with their types (for models applied to other molecules: "
                           "chemical transfer, docs/transfer.md)")
    max_unit_atoms: int | None = Field(None, ge=1, description="room for atoms per bead (default: the training "
                                                               "system's largest bead); set it for a model meant for "
                                                               "other molecules (chemical transfer)")
    max_external_atoms: int | None = Field(None, ge=1, description="room for bonded atoms of other beads a bead's "
                                                                   "atoms are built from (default: the training "
                                                                   "system's most; sPS needs 15)")
    angle_spread: float = Field(
        1.0, gt=0, description="multiplies the spread of every drawn bond angle (and free bond length): "
                               "√(T/T₀) backmaps a system at T with a model trained at T₀ (harmonic terms "
                               "spread as √T; dihedrals are not scaled)")
    threads: int = Field(1, ge=1, description="torch threads")
