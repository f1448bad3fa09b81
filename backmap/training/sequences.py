"""Teacher-forced training sequences (thesis 4.4.2), for generators that place one atom or one bead
per step.

For every bead of every training frame: the environments its atoms see when they are placed in
plan order (a bead unit: all of them see the one environment of the unit), built by the sampler's own :class:`EnvironmentBuilder` from the reference AA positions
— so a generator trains on exactly what it is given at inference — together with the reference
positions of those atoms in the bead's local frame.

Two contexts, as the sampler has two kinds of sweeps: ``forward`` (only atoms placed before the
current one are seen) and ``gibbs`` (every other atom is seen); and a third for block moves
(:mod:`backmap.sampling.blocks`): ``block`` (every other atom but the later beads of the bead's
block in its own molecule; a bead in no block: as ``gibbs``). Within one bead all steps share the
bead's frame and candidate neighbours; what changes from step to step is which neighbours are
visible (placed, hydrogens hidden from heavy atoms, never the atom itself) and their interaction
channel with the atom being placed. The neighbours are therefore stored once per bead, with a
per-step visibility mask and interaction channels; ``slot`` marks the neighbours that are the
bead's own atoms, which an autoregressive generator replaces by what it generated in earlier steps.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterable, Iterator

import numpy as np
import torch

from backmap.system.pairs import PairSet
from backmap.sampling.blocks import Block, hidden_steps
from backmap.sampling.environment import Channels, EnvironmentBuilder
from backmap.errors import BackmapError
from backmap.system.mapping import CGTopology
from backmap.system.pbc import box_vectors
from backmap.progress import progress
from backmap.threads import torch_threads
from backmap.sampling.traversal import Plan

CONTEXTS = ("forward", "gibbs", "block")


@dataclass
class BeadSequences:
    """S sequences (one per bead, frame and context), padded: K neighbour atoms, T steps, L beads.
    Positions are in the bead's local frame (nm)."""

    atom_positions: torch.Tensor  # (S, K, 3) reference positions of the neighbour atoms
    atom_types: torch.Tensor  # (S, K) atom-type channel
    atom_index: torch.Tensor  # (S, K) global atom index, -1 = padding
    slot: torch.Tensor  # (S, K) t if the neighbour is the atom placed at step t, else -1
    visible: torch.Tensor  # (S, T, K) seen by the atom of step t
    interaction: torch.Tensor  # (S, T, K) interaction channel with the atom of step t
    bead_positions: torch.Tensor  # (S, L, 3) neighbour beads, own bead first
    bead_types: torch.Tensor  # (S, L)
    bead_mask: torch.Tensor  # (S, L)
    target_positions: torch.Tensor  # (S, T, 3) reference positions of the bead's atoms, plan order
    target_types: torch.Tensor  # (S, T)
    target_atoms: torch.Tensor  # (S, T) global atom index, -1 = padding
    target_mask: torch.Tensor  # (S, T)
    frame: torch.Tensor  # (S,) index of the frame in the pair set
    bead: torch.Tensor  # (S,) global bead index
    context: torch.Tensor  # (S,) index into CONTEXTS
    #: trajectory mode: the bead's atoms in the previous frame, this frame's local frame (S, T, 3),
    #: and where there is one (S, T); zeros and False for frame-wise sequences (None: not built)
    previous_positions: torch.Tensor | None = None
    previous_mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.frame.shape[0])

    def select(self, index) -> "BeadSequences":
        """The sequences at ``index`` (tensor, array or slice), all fields."""
        index = torch.as_tensor(index) if not isinstance(index, slice) else index
        return BeadSequences(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
                                for f in fields(self)})

    def to(self, device) -> "BeadSequences":
        """The sequences on ``device`` (the same object where they already are)."""
        if all(t is None or t.device == torch.device(device) for t in (getattr(self, f.name) for f in fields(self))):
            return self
        return BeadSequences(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                                for f in fields(self)})

    @property
    def lengths(self) -> torch.Tensor:
        return self.target_mask.sum(1)


#: every field of :class:`BeadSequences`: (axes padded when sequences are concatenated, fill, dtype)
_FIELDS = {
    "atom_positions": ((1,), 0.0, torch.float32), "atom_types": ((1,), 0, torch.long),
    "atom_index": ((1,), -1, torch.long), "slot": ((1,), -1, torch.long),
    "visible": ((1, 2), False, torch.bool), "interaction": ((1, 2), 0, torch.uint8),
    "bead_positions": ((1,), 0.0, torch.float32), "bead_types": ((1,), 0, torch.long),
    "bead_mask": ((1,), False, torch.bool), "target_positions": ((1,), 0.0, torch.float32),
    "target_types": ((1,), 0, torch.long), "target_atoms": ((1,), -1, torch.long),
    "target_mask": ((1,), False, torch.bool), "frame": ((), 0, torch.long), "bead": ((), 0, torch.long),
    "context": ((), 0, torch.long), "previous_positions": ((1,), 0.0, torch.float32),
    "previous_mask": ((1,), False, torch.bool)}


def _pad_cat(arrays: list[np.ndarray], axes: tuple[int, ...], fill) -> np.ndarray:
    """Concatenate along axis 0 after padding ``axes`` to their largest size (into one array
    filled once: one np.pad per part cost a quarter of building the sequences of a small molecule)."""
    shape = list(arrays[0].shape)
    for a in axes:
        shape[a] = max(x.shape[a] for x in arrays)
    shape[0] = sum(x.shape[0] for x in arrays)
    out = np.full(shape, fill, dtype=np.result_type(*arrays))
    row = 0
    for x in arrays:
        out[(slice(row, row + x.shape[0]),) + tuple(slice(0, n) for n in x.shape[1:])] = x
        row += x.shape[0]
    return out


def _bead_groups(plan: Plan) -> list[list[int]]:
    """Consecutive plan steps that place atoms of the same bead."""
    groups: list[list[int]] = []
    for s, unit in enumerate(plan.units):
        if groups and plan.units[groups[-1][-1]].bead == unit.bead:
            groups[-1].append(s)
        else:
            groups.append([s])
    return groups


def build_sequences(cg_topology: CGTopology, plans: dict[str, Plan], pairs: PairSet, channels: Channels,
                    contexts: tuple[str, ...] = ("forward",), cutoff: float = 0.7, strip_hydrogens: bool = True,
                    label: str | None = "training environments", temporal: bool = False,
                    temporal_alignment: str = "beads", temporal_twist: float = 0.0,
                    blocks: list[Block] | None = None) -> BeadSequences:
    """Sequences for every bead of every frame of ``pairs`` in each of ``contexts``, ordered
    context-major (all beads of all frames for the first context, then the next), so that
    sequence ``c * n + i`` is bead-frame ``i`` in context ``c``. ``temporal``: each sequence also
    carries its atoms' positions in the pair one frame spacing earlier
    (:meth:`PairSet.previous_index`; a frame without one has ``previous_mask`` False), carried into
    the present frame as ``temporal_alignment`` and ``temporal_twist`` say
    (:meth:`EnvironmentBuilder.set_previous`). ``blocks``: what the ``block`` context hides.
    All in memory: training streams them from disk instead (:mod:`backmap.training.sequence_store`)."""
    frames = list(frame_sequences(cg_topology, plans, pairs, channels, contexts, cutoff, strip_hydrogens, label,
                                  temporal, temporal_alignment, temporal_twist, blocks))
    if not frames:
        raise BackmapError("no training sequences: the pair set has no frames")
    flat = [p for c in range(len(contexts)) for parts in frames for p in parts[c]]
    return BeadSequences(**{name: torch.as_tensor(_pad_cat([p[name] for p in flat], axes, fill)).to(dtype)
                            for name, (axes, fill, dtype) in _FIELDS.items()})


#: molecules whose environments are built together: bounds the memory of building a frame of a
#: large system (the candidate lists of 12 000 water molecules at once took 2 GB)
MOLECULE_CHUNK = 1024


def frame_sequences(cg_topology: CGTopology, plans: dict[str, Plan], pairs: PairSet, channels: Channels,
                    contexts: tuple[str, ...] = ("forward",), cutoff: float = 0.7, strip_hydrogens: bool = True,
                    label: str | None = "training environments", temporal: bool = False,
                    temporal_alignment: str = "beads", temporal_twist: float = 0.0,
                    blocks: list[Block] | None = None, frames: Iterable[int] | None = None
                    ) -> Iterator[list[list[dict[str, np.ndarray]]]]:
    """The sequences of each frame of ``pairs`` (or of ``frames``), one frame at a time: for each
    context, the parts (row blocks, each padded to its own sizes) in the order
    :func:`build_sequences` joins them. Arguments as there."""
    unknown = set(contexts) - set(CONTEXTS)
    if unknown:
        raise BackmapError(f"unknown training context {sorted(unknown)[0]!r} (known: {', '.join(CONTEXTS)})")
    blocks = list(blocks or ())
    builder = EnvironmentBuilder(cg_topology, plans, channels, cutoff=cutoff, strip_hydrogens=strip_hydrogens)
    n_atoms = cg_topology.topology.n_atoms
    previous = pairs.previous_index() if temporal else np.full(len(pairs), -1)
    todo = list(range(len(pairs))) if frames is None else list(frames)
    for f in progress(todo, total=len(todo), description=label or ""):
        with torch_threads(1):  # many small tensors (backmap.threads)
            builder.set_frame(pairs.cg[f].astype(np.float64), box_vectors(pairs.dimensions[f]))
            builder.set_previous(pairs.aa[previous[f]] if previous[f] >= 0 else None, temporal_alignment,
                                 temporal_twist)
            positions = torch.as_tensor(pairs.aa[f], dtype=torch.float32)
            done_blocks = {c: np.zeros(n_atoms, bool) for c in contexts}
            out: dict[str, list[dict[str, np.ndarray]]] = {c: [] for c in contexts}
            for cb in cg_topology.blocks:
                plan = plans[cb.block.moltype.name]
                for steps in _bead_groups(plan):
                    for lo in range(0, cb.block.count, MOLECULE_CHUNK):
                        molecules = np.arange(lo, min(lo + MOLECULE_CHUNK, cb.block.count))
                        for context in contexts:  # the contexts share the chunk's cached environments
                            part = _bead_group(builder, cb, plan, steps, positions, done_blocks[context], context,
                                               blocks, molecules)
                            part["frame"] = np.full(len(part["bead"]), f)
                            part["context"] = np.full(len(part["bead"]), CONTEXTS.index(context))
                            out[context].append(part)
                        if cb.block.count > MOLECULE_CHUNK:
                            builder.forget_units()
                for context in contexts:
                    done_blocks[context][cb.block.atom_slice] = True
        yield [out[c] for c in contexts]


def _bead_group(builder: EnvironmentBuilder, cb, plan: Plan, steps: list[int], positions: torch.Tensor,
                done_blocks: np.ndarray, context: str, blocks: list[Block] = (),
                molecules: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The sequences of one bead of the ``molecules`` of a block (default: all): environments of
    its steps, compacted to the neighbours seen in at least one step."""
    mt, mm = cb.block.moltype, cb.mapping
    molecules = np.arange(cb.block.count) if molecules is None else molecules
    count = len(molecules)
    first_atom = cb.block.first_atom + mt.n_atoms * molecules
    first_bead = cb.first_bead + mm.n_beads * molecules
    unit0 = plan.units[steps[0]]
    bead = first_bead + unit0.bead
    pred = np.where(unit0.predecessor >= 0, first_bead + unit0.predecessor, -1)
    frame_beads = first_bead[:, None] + np.asarray(mm.frame_beads(unit0.bead))[None]
    rank = plan.rank
    masks, inters, targets = [], [], []
    env0 = None
    for s in steps:
        unit_atoms = np.asarray(plan.units[s].atoms)
        atoms = first_atom[:, None] + unit_atoms[None]
        if context == "gibbs":
            placed = np.ones(len(positions), bool)
        elif context == "block":  # per molecule: all but its own block's later beads
            placed = np.ones((count, len(positions)), bool)
            for t in hidden_steps(blocks, mt.name, s):
                placed[np.arange(count)[:, None], first_atom[:, None] + np.asarray(plan.units[t].atoms)[None]] = False
        else:  # the sampler's forward pass: earlier blocks complete, this block up to the unit
            placed = done_blocks.copy()
            placed[cb.block.atom_slice] = np.tile(rank < rank[unit_atoms].min(), cb.block.count)
        env = builder.build(mt.name, atoms, bead, pred, positions, torch.as_tensor(placed), frame_beads=frame_beads)
        if env0 is None:
            env0 = env
        for u in range(len(unit_atoms)):  # a unit of several atoms: one target per atom, one environment
            masks.append(env.atom_mask)
            inters.append(env.interaction[:, u])
            targets.append(atoms[:, u])
    mask = torch.stack(masks, 1)  # (B, T, Kc)
    seen = mask.any(1)
    width = max(int(seen.sum(1).max()), 1)
    order = torch.argsort((~seen).to(torch.int8), dim=1, stable=True)[:, :width]
    keep = seen.gather(1, order)

    def take(x: torch.Tensor) -> torch.Tensor:  # (B, Kc, ...) -> (B, width, ...)
        idx = order.reshape(order.shape + (1,) * (x.ndim - 2)).expand(-1, -1, *x.shape[2:])
        return x.gather(1, idx)

    index = torch.where(keep, take(env0.atom_index), torch.full_like(order, -1))
    target_atoms = torch.as_tensor(np.stack(targets, 1))  # (B, T)
    hit = index[:, :, None] == target_atoms[:, None, :]  # (B, width, T)
    slot = torch.where(hit.any(-1), hit.float().argmax(-1), torch.full_like(index, -1))
    vis = torch.stack([take(m) for m in masks], 1) & keep[:, None]
    inter = torch.stack([take(i) for i in inters], 1)
    lab = positions[target_atoms] - env0.centre[:, None]
    prev, prev_ok = builder.previous_local(target_atoms.numpy(), bead, pred, frame_beads)
    return {"previous_positions": prev.numpy(), "previous_mask": prev_ok.numpy(),"atom_positions": take(env0.atom_positions).numpy(), "atom_types": take(env0.atom_types).numpy(),
            "atom_index": index.numpy(), "slot": slot.numpy(), "visible": vis.numpy(),
            "interaction": inter.numpy().astype(np.uint8),
            "bead_positions": env0.bead_positions.numpy(), "bead_types": env0.bead_types.numpy(),
            "bead_mask": env0.bead_mask.numpy(),
            "target_positions": (lab @ env0.rotation.transpose(1, 2)).numpy(),
            "target_types": builder.atom_type[target_atoms].numpy(),
            "target_atoms": target_atoms.numpy(), "target_mask": np.ones(target_atoms.shape, bool),
            "bead": bead}
