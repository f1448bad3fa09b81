"""Blocks: runs of beads of one molecule that a move redraws together, bead after bead in plan
order (``vae_mc``'s block moves), and whose environments a generator can be trained on (the
``block`` training context: a bead sees everything but its block's later beads)."""
from __future__ import annotations

from dataclasses import dataclass

from backmap.errors import BackmapError
from backmap.sampling.traversal import Plan
from backmap.system.mapping import CGTopology


@dataclass(frozen=True)
class Block:
    """Beads of one molecule type moved together: their plan steps in plan order and a label
    (``TYPE:bead+bead…``, in that order)."""

    moltype: str
    steps: tuple[int, ...]
    label: str


def bead_names(cg_topology: CGTopology) -> dict[str, list[str]]:
    """Bead names per molecule type, by bead index."""
    return {cb.block.moltype.name: [bead.name for bead in cb.mapping.beads] for cb in cg_topology.blocks}


def parse_blocks(specs: list[str] | tuple[str, ...], cg_topology: CGTopology, plans: dict[str, Plan],
                 where: str) -> list[Block]:
    """Blocks from specs like ``"B9,S9,B10,S10"`` (bead names; ``"PS1:B9,S9"`` names the molecule
    type when several have those beads), for plans that place one bead per step. Blocks of one
    molecule type may not share a bead. ``where`` names the recipe key or option in errors."""
    labels = bead_names(cg_topology)
    out: list[Block] = []
    for spec in specs:
        moltype, _, names = spec.rpartition(":")
        beads = [b.strip() for b in names.split(",") if b.strip()]
        if len(beads) < 2:
            raise BackmapError(f"{where}: {spec!r}: a block is two or more bead names, comma-separated")
        if len(set(beads)) != len(beads):
            raise BackmapError(f"{where}: {spec!r} names a bead twice")
        if moltype and moltype not in labels:
            raise BackmapError(f"{where}: {spec!r}: no molecule type {moltype!r} (types: {', '.join(labels)})")
        types = [moltype] if moltype else [t for t, known in labels.items() if set(beads) <= set(known)]
        if not types or not set(beads) <= set(labels[types[0]]):
            known = "; ".join(f"{t}: {' '.join(n)}" for t, n in labels.items())
            raise BackmapError(f"{where}: {spec!r}: no molecule type has the beads {', '.join(beads)} "
                               f"(bead names: {known})")
        if len(types) > 1:
            raise BackmapError(f"{where}: {spec!r}: molecule types {', '.join(types)} all have these beads; "
                               "name one ('TYPE:B1,B2')")
        t = types[0]
        plan = plans[t]
        step_of = {}
        for s, unit in enumerate(plan.units):
            if unit.bead in step_of:
                raise BackmapError(f"{where}: blocks need a plan that places one bead per step (unit: bead)")
            step_of[unit.bead] = s
        order = sorted((step_of[labels[t].index(b)], b) for b in beads)
        block = Block(t, tuple(s for s, _ in order), f"{t}:{'+'.join(b for _, b in order)}")
        for other in out:
            if other.moltype == t and set(other.steps) & set(block.steps):
                raise BackmapError(f"{where}: blocks {other.label} and {block.label} share a bead")
        out.append(block)
    return out


def hidden_steps(blocks: list[Block], moltype: str, step: int) -> tuple[int, ...]:
    """The plan steps a unit at ``step`` does not see in its block's move (the block's later
    beads), or () when no block holds it."""
    for b in blocks:
        if b.moltype == moltype and step in b.steps:
            return b.steps[b.steps.index(step) + 1:]
    return ()
