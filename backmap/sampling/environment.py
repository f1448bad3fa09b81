"""Local environments of the units being placed, in torch and in each unit's own frame.

For every bead, the atoms that can ever be in its environment are found once per frame from the
(fixed) CG positions: the atoms whose home bead lies within ``cutoff + margin``. A step then only
gathers their current positions, keeps those already placed and within ``cutoff`` of the bead, and
rotates them into the bead's frame (z along the bond to the predecessor bead). Everything that
depends on positions is a torch operation, so a generator can back-propagate through environments
that contain its own earlier output.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields

import networkx as nx
import numpy as np
import torch

from backmap.forcefield.neighbors import neighbour_pairs
from backmap.system.mapping import CGTopology
from backmap.system.pbc import minimum_image
from backmap.sampling.traversal import Plan

#: interaction of a neighbour with the atom being placed, by bond-graph distance (DBM feature channels)
INTERACTIONS = ("bond", "angle", "dihedral", "lj")


@dataclass
class Channels:
    """Feature channels: atom types, bead types and target–neighbour interactions, each an index.
    By default derived from the topology; ``split`` also splits bonded interactions by the
    atom-type tuple of their ends. A channel map (DeepBackmap's ``ff.txt``, :meth:`from_dbm_ff`)
    instead gives every bond, angle, dihedral and LJ type — keyed by the atom types along the
    bonded path — its own channel (several types may share one)."""

    atom_types: dict[str, int]
    bead_types: dict[str, int]
    interactions: dict[tuple, int]
    split: bool = False
    #: from a channel map: keys are ("bond"|"angle"|"dihedral"|"lj", then the atom types along the path)
    by_path: bool = False

    @classmethod
    def from_system(cls, cg_topology: CGTopology, split: bool = False) -> "Channels":
        types = sorted({str(t) for cb in cg_topology.blocks for t in cb.block.moltype.atom_types})
        beads = sorted({str(t) for t in cg_topology.bead_types})
        inter: dict[tuple, int] = {}
        if split:
            for cb in cg_topology.blocks:
                mt = cb.block.moltype
                dist = dict(nx.all_pairs_shortest_path_length(mt.graph, cutoff=3))
                for a, row in dist.items():
                    for b, d in row.items():
                        if 1 <= d <= 3:
                            key = (INTERACTIONS[d - 1], *sorted((str(mt.atom_types[a]), str(mt.atom_types[b]))))
                            inter.setdefault(key, len(inter))
            inter.setdefault(("lj",), len(inter))
        else:
            inter = {(k,): i for i, k in enumerate(INTERACTIONS)}
        return cls({t: i for i, t in enumerate(types)}, {t: i for i, t in enumerate(beads)}, inter, split)

    @classmethod
    def from_dbm_ff(cls, path, cg_topology: CGTopology) -> "Channels":
        """The channel map of a DeepBackmap ``ff.txt``: ``[bond_types]``, ``[angle_types]``,
        ``[dihedral_types]`` and ``[lj_types]`` give each type (by atom types) a channel number;
        ``[bead_types]`` lists the bead types. Atom-type channels come from the topology (ff.txt's
        ``-1`` entries there mean "no channel"). A bonded path whose types are not listed falls
        back to the LJ channel of its end atoms, as DBM treats unlisted pairs."""
        from pathlib import Path

        from backmap.errors import BackmapError
        from backmap.system.dbm_sections import read_sections

        path = Path(path)
        if not path.is_file():
            raise BackmapError("channel map (ff.txt) not found", source=path)
        sections = read_sections(path)
        width = {"bond_types": 2, "angle_types": 3, "dihedral_types": 4, "lj_types": 2}
        inter: dict[tuple, int] = {}
        for section, n in width.items():
            kind = section.split("_")[0]
            for lineno, fields in sections.get(section, []):
                try:
                    channel = int(fields[n])
                except (IndexError, ValueError):
                    raise BackmapError(f"[{section}]: expected {n} atom types and a channel number",
                                       source=f"{path}:{lineno}") from None
                inter[(kind, *fields[:n])] = channel
        if not any(k[0] == "lj" for k in inter):
            raise BackmapError("the channel map has no [lj_types] section", source=path)
        types = sorted({str(t) for cb in cg_topology.blocks for t in cb.block.moltype.atom_types})
        listed = [f[0] for _l, f in sections.get("bead_types", [])]
        beads = listed or sorted({str(t) for t in cg_topology.bead_types})
        missing = sorted({str(t) for t in cg_topology.bead_types} - set(beads))
        if missing:
            raise BackmapError(f"[bead_types] lacks the mapping's bead types {missing}", source=path)
        return cls({t: i for i, t in enumerate(types)}, {t: i for i, t in enumerate(beads)}, inter, by_path=True)

    @classmethod
    def for_spec(cls, cg_topology: CGTopology, channels: str, channel_map=None) -> "Channels":
        """The channels an environment spec asks for: a channel map (DeepBackmap ``ff.txt``) if
        given, else derived from the topology (``types`` or ``split``)."""
        if channel_map is not None:
            return cls.from_dbm_ff(channel_map, cg_topology)
        return cls.from_system(cg_topology, split=channels == "split")

    def to_json(self) -> dict:
        """A JSON-able description, saved in model files (interaction keys become lists)."""
        return {"atom_types": dict(self.atom_types), "bead_types": dict(self.bead_types),
                "interactions": [[list(k), v] for k, v in self.interactions.items()],
                "split": self.split, "by_path": self.by_path}

    @classmethod
    def from_json(cls, data: dict) -> "Channels":
        return cls(dict(data["atom_types"]), dict(data["bead_types"]),
                   {tuple(k): int(v) for k, v in data["interactions"]}, bool(data["split"]), bool(data["by_path"]))

    def check_system(self, cg_topology: CGTopology, where: str = "model") -> None:
        """Refuse a system with atom or bead types these channels do not know (a model from
        another system), naming them."""
        from backmap.errors import BackmapError

        atoms = sorted({str(t) for cb in cg_topology.blocks for t in cb.block.moltype.atom_types} - set(self.atom_types))
        beads = sorted({str(t) for t in cg_topology.bead_types} - set(self.bead_types))
        if atoms or beads:
            what = "; ".join(x for x in (f"atom types {atoms}" if atoms else "", f"bead types {beads}" if beads else "") if x)
            raise BackmapError(f"the {where} was trained on another system: it has no channel for {what}")

    @property
    def n_atom_types(self) -> int:
        return len(self.atom_types)

    @property
    def n_interactions(self) -> int:
        return max(self.interactions.values()) + 1

    def _lookup(self, kind: str, path_types: tuple[str, ...]) -> int | None:
        return self.interactions.get((kind, *path_types), self.interactions.get((kind, *path_types[::-1])))

    def lj_channel(self, type_a: str, type_b: str) -> int:
        """The channel of a non-bonded neighbour."""
        if not self.by_path:
            return self.interactions[("lj",)]
        found = self._lookup("lj", (type_a, type_b))
        if found is None:
            from backmap.errors import BackmapError

            raise BackmapError(f"the channel map has no LJ channel for atom types {type_a}–{type_b}")
        return found

    def lj_table(self) -> np.ndarray:
        """(n_atom_types, n_atom_types) LJ channel of every atom-type pair."""
        names = sorted(self.atom_types, key=self.atom_types.get)
        return np.array([[self.lj_channel(a, b) for b in names] for a in names])

    def pair_channels(self, mt) -> np.ndarray:
        """(n, n) channel of every atom pair of molecule type ``mt``: bond, angle or dihedral by
        bond-graph distance (split or looked up by path as configured), LJ beyond."""
        t = [str(x) for x in mt.atom_types]
        m = np.array([[self.lj_channel(a, b) for b in t] for a in t]) if self.by_path else \
            np.full((mt.n_atoms, mt.n_atoms), self.interactions[("lj",)])
        paths = dict(nx.all_pairs_shortest_path(mt.graph, cutoff=3))
        for a, row in paths.items():
            for b, path in row.items():
                d = len(path) - 1
                if not 1 <= d <= 3:
                    continue
                kind = INTERACTIONS[d - 1]
                if self.by_path:
                    found = self._lookup(kind, tuple(t[i] for i in path))
                    if found is not None:
                        m[a, b] = found
                else:
                    key = (kind, *sorted((t[a], t[b]))) if self.split else (kind,)
                    m[a, b] = self.interactions[key]
        return m


@dataclass
class EnvironmentBatch:
    """B units to place, each in its own frame (local = (x − centre) @ rotation.T, nm).

    ``atom_*``: neighbour atoms (B, K); ``interaction`` (B, U, K): channel of each neighbour's
    interaction with each of the unit's U atoms; ``bead_*``: neighbour beads (B, L), the unit's own
    bead first; ``target_*`` (B, U): the atoms to place. Masks mark real (unpadded) entries."""

    centre: torch.Tensor
    rotation: torch.Tensor
    atom_positions: torch.Tensor
    atom_types: torch.Tensor
    atom_mask: torch.Tensor
    interaction: torch.Tensor
    bead_positions: torch.Tensor
    bead_types: torch.Tensor
    bead_mask: torch.Tensor
    target_types: torch.Tensor
    target_mask: torch.Tensor
    #: the unit's bead and its CG-bonded beads (in a fixed order per unit), local frame (B, F, 3)
    frame_beads: torch.Tensor = field(repr=False, default=None)
    #: what the batch is: molecule type, the unit's bead and atoms (molecule-local), step number
    meta: dict = field(repr=False, default_factory=dict)
    #: global indices: unit atoms (B, U) (-1 = padding), neighbour atoms (B, K), molecule (B,)
    target_atoms: torch.Tensor = field(repr=False, default=None)
    atom_index: torch.Tensor = field(repr=False, default=None)
    molecule: torch.Tensor = field(repr=False, default=None)
    #: per (target, neighbour) numbers from the builder's ``pair_params`` hook (B, C, U, K), or None
    pair_params: torch.Tensor | None = field(repr=False, default=None)
    #: trajectory mode (``EnvironmentSpec.temporal``): the unit's atoms in the previous AA frame,
    #: this frame's local frame (B, U, 3), and where that frame is known (B, U); None otherwise
    previous_positions: torch.Tensor | None = field(repr=False, default=None)
    previous_mask: torch.Tensor | None = field(repr=False, default=None)

    @property
    def size(self) -> int:
        return self.centre.shape[0]

    @classmethod
    def concatenate(cls, batches: list["EnvironmentBatch"]) -> "EnvironmentBatch":
        """Batches of units of one plan step one after the other (B₁ + B₂ + … rows), neighbour
        atom and bead lists padded to the widest (masked): e.g. several trial copies of a frame
        drawn in one call, or the same step in several frames (``vae_mc`` in lockstep); or of steps
        a generator draws alike (:meth:`~backmap.engine.plugin.Generator.batch_key`), whose
        ``frame_beads`` lists are padded with the unit's own bead."""
        width = max(b.atom_mask.shape[1] for b in batches)
        bead_width = max(b.bead_mask.shape[1] for b in batches)
        frame_width = max(0 if b.frame_beads is None else b.frame_beads.shape[1] for b in batches)
        neighbour_axis = {"atom_positions": 1, "atom_types": 1, "atom_mask": 1, "atom_index": 1,
                          "interaction": 2, "pair_params": 3}
        bead_axis = {"bead_positions", "bead_types", "bead_mask"}
        out = {}
        for f in dataclass_fields(cls):
            if f.name == "meta":
                continue
            parts = [getattr(b, f.name) for b in batches]
            if parts[0] is None:
                out[f.name] = None
                continue
            axis = neighbour_axis.get(f.name)
            if axis is not None:
                parts = [_pad_axis(x, axis, width) for x in parts]
            elif f.name in bead_axis:
                parts = [_pad_axis(x, 1, bead_width) for x in parts]
            elif f.name == "frame_beads":  # steps merged: fewer bonded beads are padded with the unit's own
                parts = [torch.cat([x, x[:, :1].expand(-1, frame_width - x.shape[1], -1)], 1) for x in parts]
            out[f.name] = torch.cat(parts)
        return cls(**out, meta=dict(batches[0].meta))

    def to_lab(self, local: torch.Tensor) -> torch.Tensor:
        """Local-frame positions (B, ..., 3) back to the lab frame."""
        shape = local.shape
        flat = local.reshape(shape[0], -1, 3)
        return (flat @ self.rotation + self.centre[:, None]).reshape(shape)


def frame_rotation(axis: torch.Tensor, towards: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 3, 3) rotations whose third row is the unit vector along ``axis`` (B, 3) (a zero
    axis — no predecessor — gives lab z). The first row points along ``towards`` (B, 3) made
    orthogonal to z (another bonded bead: then the frame is fixed by the molecule alone and
    rotating the input rotates nothing in it); where that is degenerate, lab x (or y)."""
    n = torch.linalg.norm(axis, dim=-1, keepdim=True)
    has = n[:, 0] > 1e-9
    z = torch.where(has[:, None], axis / n.clamp(min=1e-12), torch.tensor([0.0, 0.0, 1.0], dtype=axis.dtype))
    ref = torch.tensor([1.0, 0.0, 0.0], dtype=axis.dtype).expand_as(z).clone()
    near_x = z[:, 0].abs() > 0.9
    ref[near_x] = torch.tensor([0.0, 1.0, 0.0], dtype=axis.dtype)
    if towards is not None:
        t = towards - (towards * z).sum(-1, keepdim=True) * z
        ok = torch.linalg.norm(t, dim=-1) > 1e-3
        ref = torch.where(ok[:, None], towards, ref)
    x = ref - (ref * z).sum(-1, keepdim=True) * z
    x = x / torch.linalg.norm(x, dim=-1, keepdim=True)
    y = torch.linalg.cross(z, x)
    return torch.stack([x, y, z], dim=1)


def regularised_rotation(then: np.ndarray, now: np.ndarray, strength: float = 0.0) -> np.ndarray:
    """(B, 3, 3) rotations R carrying the vectors ``then`` (B, K, 3) onto ``now``: the least-squares
    (Kabsch) rotation, with its twist about the vectors' principal axis shrunk by e₂ / (e₂ + λ),
    λ = ``strength`` × e₁ (e₁ ≥ e₂ the largest eigenvalues of Σ then thenᵀ). The swing of the
    principal axis is fixed by the vectors' full length; the twist about it only by their spread
    across it (e₂), which a nearly straight chain of beads hardly has — there the fit's twist is
    noise, and R does not turn about the axis. A lone vector (e₂ = 0): the minimal rotation.
    No vectors: identity."""
    from scipy.spatial.transform import Rotation

    from backmap.system.superpose import kabsch

    fit = Rotation.from_matrix(np.swapaxes(kabsch(then, now), 1, 2))  # kabsch: then @ K ≈ now, so R = Kᵀ
    e, vec = np.linalg.eigh(np.einsum("bki,bkj->bij", then, then))
    axis = vec[:, :, 2]
    q = fit.as_quat()  # x, y, z, w
    twist = 2 * np.arctan2((q[:, :3] * axis).sum(1), q[:, 3])
    swing = fit * Rotation.from_rotvec(-twist[:, None] * axis)
    keep = e[:, 1] / np.maximum(e[:, 1] + strength * e[:, 2], 1e-30)
    return (swing * Rotation.from_rotvec((keep * twist)[:, None] * axis)).as_matrix()


def bead_turns(then: np.ndarray, now: np.ndarray, bead: np.ndarray, others: np.ndarray, dimensions: np.ndarray,
               strength: float) -> np.ndarray:
    """(B, 3, 3) :func:`regularised_rotation` s of each ``bead`` (B,) from the CG positions ``then`` to
    ``now`` (M, 3), fitted on the vectors to its ``others`` (B, K) beads (-1: none), periodic."""
    ok = (others >= 0)[..., None]
    o = np.clip(others, 0, None)
    before = np.where(ok, minimum_image(then[o] - then[bead][:, None], dimensions), 0.0)
    after = np.where(ok, minimum_image(now[o] - now[bead][:, None], dimensions), 0.0)
    return regularised_rotation(before, after, strength)


class EnvironmentBuilder:
    """Builds :class:`EnvironmentBatch` es for the units of a placement plan, all molecules of a
    type at once, for one CG frame."""

    def __init__(self, cg_topology: CGTopology, plans: dict[str, Plan], channels: Channels, cutoff: float = 0.7,
                 margin: float = 0.4, strip_hydrogens: bool = True, dtype: torch.dtype = torch.float32,
                 pair_params=None):
        """``pair_params``: optional ``f(moltype, units (B, U), neighbours (B, K), mask (B, K)) ->
        (B, C, U, K)`` (global atom indices, -1 padding): per-pair numbers a consumer wants with
        every environment (the sampler: LJ parameters, zero where masked or excluded), computed
        on the final — compacted — neighbour list."""
        self.pair_params = pair_params
        self.cg = cg_topology
        self.plans = plans
        self.channels = channels
        self.cutoff = cutoff
        self.margin = margin
        self.strip_hydrogens = strip_hydrogens
        self.dtype = dtype
        self._previous: np.ndarray | None = None
        topo = cg_topology.topology
        self.n_atoms = topo.n_atoms
        # per atom: global home bead, type channel, molecule, local index, heavy?
        home, types, local, heavy = [], [], [], []
        for cb in cg_topology.blocks:
            mt, mm = cb.block.moltype, cb.mapping
            offs = cb.first_bead + mm.n_beads * np.arange(cb.block.count)
            home.append((mm.home[None] + offs[:, None]).ravel())
            types.append(np.tile([channels.atom_types[str(t)] for t in mt.atom_types], cb.block.count))
            local.append(np.tile(np.arange(mt.n_atoms), cb.block.count))
            heavy.append(np.tile(mt.elements != "H", cb.block.count))
        self.home = np.concatenate(home)
        self.atom_type = torch.as_tensor(np.concatenate(types))
        self.local_index = np.concatenate(local)
        self.heavy = np.concatenate(heavy)
        # beads that are whole molecules (framed by their nearest beads: _frames)
        n_beads = sum(cb.mapping.n_beads * cb.block.count for cb in cg_topology.blocks)
        lone = np.zeros(n_beads, bool)
        for cb in cg_topology.blocks:
            if cb.mapping.n_beads == 1:
                lone[cb.first_bead:cb.first_bead + cb.block.count] = True
        self._lone = lone if lone.any() else None
        self.molecule = topo.molecule_index
        self.bead_type = torch.as_tensor([channels.bead_types[str(t)] for t in cg_topology.bead_types])
        # intramolecular interaction channel of every atom pair of each molecule type; LJ between molecules
        self._intra = {cb.block.moltype.name: channels.pair_channels(cb.block.moltype) for cb in cg_topology.blocks}
        self._lj_table = torch.as_tensor(channels.lj_table())
        self._intra_t = {k: torch.as_tensor(v) for k, v in self._intra.items()}
        self._molecule_t = torch.as_tensor(self.molecule)
        self._local_t = torch.as_tensor(self.local_index)

    # ------------------------------------------------------------------ per frame
    def set_frame(self, cg_positions: np.ndarray, box: np.ndarray) -> None:
        """CG positions (M, 3) of molecules made whole, and the (3, 3) box: finds every bead's
        candidate neighbour atoms and beads with their periodic shifts."""
        self.beads = np.asarray(cg_positions, np.float64)
        self.box = np.asarray(box, np.float64)
        self._box_dims = _dims(self.box)
        self._previous = None
        self._cache: dict = {}
        self._bead_cache: dict = {}
        reach = self.cutoff + self.margin
        i, j, shift = neighbour_pairs(self.beads, self.box, reach, np.zeros(0, np.int64))
        m = len(self.beads)
        # symmetric bead neighbour lists (self included), shift moves bead j next to bead i
        src = np.concatenate([i, j, np.arange(m)])
        dst = np.concatenate([j, i, np.arange(m)])
        sft = np.concatenate([shift, -shift, np.zeros((m, 3))])
        order = np.lexsort((dst, src))
        src, dst, sft = src[order], dst[order], sft[order]
        self._bead_nb = _pad_lists(src, dst, m)
        self._bead_nb_shift = _pad_lists(src, sft, m, fill=0.0)
        # candidate atoms per bead: atoms of neighbouring beads (incl. itself)
        atoms_of_bead = _pad_lists(self.home, np.arange(self.n_atoms), m)
        nb = self._bead_nb  # (m, Lmax)
        cand = atoms_of_bead[np.clip(nb, 0, None)]  # (m, Lmax, A)
        cand_shift = np.broadcast_to(self._bead_nb_shift[:, :, None, :], cand.shape + (3,))
        valid = (nb[:, :, None] >= 0) & (cand >= 0)
        flat_idx = np.where(valid, cand, -1).reshape(m, -1)
        flat_shift = cand_shift.reshape(m, -1, 3)
        keep = flat_idx >= 0
        width = int(keep.sum(1).max())
        order = np.argsort(~keep, axis=1, kind="stable")[:, :width]
        self._cand = np.take_along_axis(flat_idx, order, 1)
        self._cand_shift = np.take_along_axis(flat_shift, order[:, :, None], 1)
        self._cand_t = torch.as_tensor(self._cand)
        self._cand_shift_t = torch.as_tensor(self._cand_shift, dtype=self.dtype)
        self._bead_nb_t = torch.as_tensor(nb)
        self._bead_shift_t = torch.as_tensor(self._bead_nb_shift, dtype=self.dtype)
        self._beads_t = torch.as_tensor(self.beads, dtype=self.dtype)
        # hydrogens of a bead and of its bonded neighbour beads: hidden while heavy atoms are placed
        adjacent = np.zeros((m, m), bool) if m < 4000 else None
        self._adjacent_h = None
        if self.strip_hydrogens and adjacent is not None:
            bonds = self.cg.bonds
            adjacent[np.arange(m), np.arange(m)] = True
            adjacent[bonds[:, 0], bonds[:, 1]] = True
            adjacent[bonds[:, 1], bonds[:, 0]] = True
            c = np.clip(self._cand, 0, None)
            self._adjacent_h = torch.as_tensor(
                adjacent[np.arange(m)[:, None], self.home[c]] & ~self.heavy[c] & (self._cand >= 0))

    def forget_units(self) -> None:
        """Drop what was kept of the units built so far in this frame (their frames, candidate
        lists and masks; rebuilt when asked again): bounds memory when a large frame's units are
        built a part at a time."""
        self._cache.clear()
        self._bead_cache.clear()
        if getattr(self, "_previous_cache", None):
            self._previous_cache.clear()

    def set_previous(self, positions: np.ndarray | None, alignment: str = "beads", twist: float = 0.0) -> None:
        """The previous AA frame (N, 3) of a trajectory, molecules whole, or None (its first frame,
        or frame-wise backmapping): environments built from now on until the next :meth:`set_frame`
        carry its positions of the unit's atoms (:attr:`EnvironmentBatch.previous_positions`),
        carried into the present frame as ``alignment`` and ``twist`` say
        (``EnvironmentSpec.temporal_alignment``, ``temporal_twist``; :func:`regularised_rotation`)."""
        if alignment not in ("beads", "frame"):
            raise ValueError(f"unknown temporal alignment {alignment!r} (beads, frame)")
        self._previous = None if positions is None else np.asarray(positions, np.float64)
        self._previous_beads = None if positions is None else self.cg.apply(self._previous)
        self._previous_alignment = alignment
        self._previous_twist = float(twist)
        self._previous_cache: dict = {}

    def previous_local(self, units: np.ndarray, bead: np.ndarray, predecessor: np.ndarray,
                       frame_beads: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, U, 3) positions of ``units``' atoms (global indices, -1 padding) in the previous
        frame, brought into the unit's present local frame free of the molecule's translation and
        rotation between the frames: the unit's internal motion, in the coordinates the unit is
        placed in now; and (B, U) where known. Zeros and False without a previous frame."""
        units = np.asarray(units)
        known = torch.as_tensor((units >= 0) & (self._previous is not None))
        if self._previous is None:
            return torch.zeros(units.shape + (3,), dtype=self.dtype), known
        key = (units.tobytes(), units.shape, np.asarray(bead).tobytes())
        if key not in self._previous_cache:  # the same units are placed several times per frame (sweeps)
            before = self._previous_beads
            rel = minimum_image(self._previous[np.clip(units, 0, None)] - before[bead][:, None], self._box_dims)
            if self._previous_alignment == "frame":  # in the local frame the unit had then
                _, rot = self._frames(before, bead, predecessor, frame_beads)
            else:  # turned from then to now by its beads, then into the present local frame
                others = frame_beads[:, 1:] if frame_beads is not None else predecessor[:, None]
                turn = bead_turns(before, self.beads, bead, others, self._box_dims, self._previous_twist)
                rel = rel @ np.swapaxes(turn, 1, 2)
                _, rot = self._frames(self.beads, bead, predecessor, frame_beads)
            local = torch.as_tensor(rel, dtype=self.dtype) @ rot.transpose(1, 2)
            self._previous_cache[key] = (torch.where(known[..., None], local, torch.zeros_like(local)), known)
        return self._previous_cache[key]

    def _frames(self, beads: np.ndarray, bead: np.ndarray, predecessor: np.ndarray,
                frame_beads: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Centres (B, 3) and rotations (B, 3, 3) of the local frames of ``bead`` in the CG
        positions ``beads``: z towards the predecessor, x towards another bonded bead. A lone bead
        (a molecule of one bead: water, methanol) has neither: z points to its nearest bead, x to
        the second nearest — so its atoms' orientation is learnt relative to its neighbours, not
        to the lab axes (where no hydrogen bond can be learnt)."""
        centre = torch.as_tensor(beads[bead], dtype=self.dtype)
        pred = np.where(predecessor >= 0, predecessor, bead)
        vec_z = minimum_image(beads[pred] - beads[bead], self._box_dims)
        vec_x = np.zeros_like(vec_z)
        has_x = np.zeros(len(bead), bool)
        if frame_beads is not None and frame_beads.shape[1] > 1:  # a bonded bead other than the unit's own and its predecessor
            others = np.where(frame_beads[:, 1:] == pred[:, None], -1, frame_beads[:, 1:])
            pick = np.argmax(others >= 0, axis=1)
            second = others[np.arange(len(others)), pick]
            has_x = second >= 0
            vec_x = minimum_image(beads[np.where(has_x, second, bead)] - beads[bead], self._box_dims)
        lone = (predecessor < 0) & ~has_x & (self._lone[bead] if self._lone is not None else False)
        if lone.any():
            near = self._nearest_beads(beads, bead[lone])
            vec_z[lone], vec_x[lone] = near[:, 0], near[:, 1]
            has_x = has_x | lone
        axis = torch.as_tensor(vec_z, dtype=self.dtype)
        towards = torch.as_tensor(vec_x, dtype=self.dtype) if has_x.any() else None
        return centre, frame_rotation(axis, towards)

    def _nearest_beads(self, beads: np.ndarray, bead: np.ndarray) -> np.ndarray:
        """(B, 2, 3) vectors from each bead to its nearest and second-nearest other bead of the
        frame's neighbour lists, in the CG positions ``beads`` (zero where there are fewer)."""
        nb = self._bead_nb[bead]
        rel = minimum_image(beads[np.clip(nb, 0, None)] - beads[bead][:, None], self._box_dims)
        d = np.where((nb >= 0) & (nb != bead[:, None]), np.linalg.norm(rel, axis=-1), np.inf)
        order = np.argsort(d, axis=1, kind="stable")[:, :2]
        out = np.take_along_axis(rel, order[:, :, None], 1)
        out[~np.isfinite(np.take_along_axis(d, order, 1))] = 0.0
        if out.shape[1] < 2:
            out = np.concatenate([out, np.zeros((len(bead), 2 - out.shape[1], 3))], 1)
        return out

    # ------------------------------------------------------------------ per step
    def prepare(self, moltype: str, groups: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]],
                rows: int = 4096) -> None:
        """Compute the static parts of many unit groups — ``(units_atoms, bead, predecessor,
        frame_beads)`` as for :meth:`build` — at once: the per-bead parts of all distinct bead
        groups in a few vectorised passes (groups of equal frame-bead width stacked, at most
        ``rows`` beads per pass) instead of one small pass per group — per-call overhead
        dominated (162 groups per sPS frame, 20 distinct bead groups)."""
        buckets: dict = {}
        for _units, bead, predecessor, frame_beads in groups:
            bkey = (bead.tobytes(), predecessor.tobytes(), None if frame_beads is None else frame_beads.tobytes())
            if bkey in self._bead_cache:
                continue
            width = None if frame_beads is None else frame_beads.shape[1]
            buckets.setdefault(width, {})[bkey] = (bead, predecessor, frame_beads)
        for items in buckets.values():
            items = list(items.items())
            start = 0
            while start < len(items):
                stop, n = start, 0
                while stop < len(items) and (n == 0 or n + len(items[stop][1][0]) <= rows):
                    n += len(items[stop][1][0])
                    stop += 1
                chunk = items[start:stop]
                fbs = [it[1][2] for it in chunk]
                st = self._bead_static(np.concatenate([it[1][0] for it in chunk]), np.concatenate([it[1][1] for it in chunk]),
                                       None if fbs[0] is None else np.concatenate(fbs))
                sizes = [len(it[1][0]) for it in chunk]
                parts = {k: (v.split(sizes) if v is not None else [None] * len(sizes)) for k, v in st.items()}
                for j, (bkey, _) in enumerate(chunk):
                    self._bead_cache[bkey] = {k: v[j] for k, v in parts.items()}
                start = stop
        for units_atoms, bead, predecessor, frame_beads in groups:
            key = (moltype, units_atoms.tobytes(), bead.tobytes())
            if key not in self._cache:
                self._cache[key] = self._static(moltype, units_atoms, bead, predecessor, frame_beads)

    def build(self, moltype: str, units_atoms: np.ndarray, bead: np.ndarray, predecessor: np.ndarray,
              positions: torch.Tensor, placed: torch.Tensor, frame_beads: np.ndarray | None = None,
              compact: bool = False) -> EnvironmentBatch:
        """Environments of B units of molecules of type ``moltype``: ``units_atoms`` (B, U) global
        atom indices (-1 padding), ``bead`` (B,) and ``predecessor`` (B,) global bead indices
        (-1: none), current ``positions`` (N, 3) and the ``placed`` mask of atoms that may be
        seen: (N,) for every unit alike, or (B, N) per unit (a block move: each unit sees its own
        molecule's block only up to itself). What depends only on the CG frame is computed once per
        frame and unit group.
        ``compact``: neighbour lists cut to the widest row's visible atoms (same atoms in the same
        order, far less padding: the 1.1 nm candidate lists are ~4× wider than what is seen)."""
        key = (moltype, units_atoms.tobytes(), bead.tobytes())
        st = self._cache.get(key)
        if st is None:
            st = self._cache[key] = self._static(moltype, units_atoms, bead, predecessor, frame_beads)
        c = st["c"]
        B, width = c.shape
        # index_select on the flat index and the squared norm summed by hand: for these small
        # tensors several times faster than advanced indexing and .sum(-1) over a size-3 axis
        flat = c.reshape(-1)
        rel = positions.index_select(0, flat).view(B, width, 3) + st["offset"]
        r2 = torch.addcmul(torch.addcmul(rel[..., 0] * rel[..., 0], rel[..., 1], rel[..., 1]), rel[..., 2], rel[..., 2])
        seen = placed.index_select(0, flat).view(B, width) if placed.ndim == 1 else placed.gather(1, c)
        mask = st["mask"] & seen & (r2 < self.cutoff**2)
        cand, types = st["cand"], st["atom_types"]
        if compact:
            # visible atoms first, in their original order: row-wise rank by a cumulative sum
            rank = mask.cumsum(1)
            counts = rank[:, -1]
            n = max(int(counts.max()), 1)
            slot = torch.where(mask, rank - 1, n)
            order = torch.zeros(B, n + 1, dtype=torch.long).scatter_(1, slot, st["arange"])[:, :n]
            rel = rel.gather(1, order[:, :, None].expand(-1, -1, 3))
            mask = st["arange"][:1, :n] < counts[:, None]
            cand, types = cand.gather(1, order), types.gather(1, order)
        inter = self.interactions(moltype, st["units"], cand, types)
        pp = None if self.pair_params is None else self.pair_params(moltype, st["units"], cand, mask)
        prev = prev_ok = None
        if self._previous is not None:
            prev, prev_ok = self.previous_local(units_atoms, bead, predecessor, frame_beads)
        return EnvironmentBatch(
            frame_beads=st["fb"], centre=st["centre"], rotation=st["rot"], atom_positions=rel @ st["rot_t"],
            atom_types=types, atom_mask=mask, interaction=inter, bead_positions=st["b_local"],
            bead_types=st["bead_types"], bead_mask=st["b_ok"], target_types=st["target_types"],
            target_mask=st["u_ok"], target_atoms=st["units"], atom_index=cand, molecule=st["molecule"], pair_params=pp,
            previous_positions=prev, previous_mask=prev_ok)

    def _static(self, moltype: str, units_atoms: np.ndarray, bead: np.ndarray, predecessor: np.ndarray,
                frame_beads: np.ndarray | None) -> dict:
        """The parts of an environment that depend only on the CG frame. Everything per bead
        (frame, candidate neighbours, neighbour beads) is shared by the units of the same beads —
        ~8 atoms per bead in sPS — so it is computed once per bead group; per unit only the mask
        that hides its own atoms (and hydrogens next to a heavy target)."""
        bkey = (bead.tobytes(), predecessor.tobytes(), None if frame_beads is None else frame_beads.tobytes())
        bst = self._bead_cache.get(bkey)
        if bst is None:
            bst = self._bead_cache[bkey] = self._bead_static(bead, predecessor, frame_beads)
        units = torch.as_tensor(units_atoms)
        c = bst["c"]
        own = (c == units[:, :1]) if units.shape[1] == 1 else (c[:, :, None] == units[:, None, :]).any(-1)
        heavy_target = torch.as_tensor(self.heavy[np.clip(units_atoms, 0, None)] & (units_atoms >= 0)).any(1)
        mask = torch.where(heavy_target[:, None], bst["mask_heavy"], bst["mask"]) & ~own  # never the unit's own atoms
        return {**bst, "units": units, "u_ok": units >= 0, "mask": mask,
                "target_types": self.atom_type[units.clamp(min=0)],
                "molecule": torch.as_tensor(self.molecule[units_atoms[:, 0]])}

    def _bead_static(self, bead: np.ndarray, predecessor: np.ndarray, frame_beads: np.ndarray | None) -> dict:
        """Frame, candidate neighbour atoms and neighbour beads of a group of beads."""
        bead_t = torch.as_tensor(bead)
        centre, rot = self._frames(self.beads, bead, predecessor, frame_beads)
        cand = self._cand_t[bead_t]  # (B, K)
        c = cand.clamp(min=0)
        mask = cand >= 0  # padding out
        mask_heavy = mask & ~self._adjacent_h[bead_t] if self._adjacent_h is not None else mask
        # neighbour beads, own bead first
        nb = self._bead_nb_t[bead_t]
        b_ok = nb >= 0
        b_rel = self._beads_t[nb.clamp(min=0)] + self._bead_shift_t[bead_t] - centre[:, None]
        b_ok &= (b_rel * b_rel).sum(-1) < (self.cutoff + self.margin) ** 2
        first = (nb == bead_t[:, None]).float().argmax(1)
        perm = torch.arange(nb.shape[1]).expand_as(nb).clone()
        perm[:, 0], perm[torch.arange(len(first)), first] = first, 0
        rot_t = rot.transpose(1, 2)
        b_local = (b_rel @ rot_t).gather(1, perm[:, :, None].expand(-1, -1, 3))
        fb = None
        if frame_beads is not None:  # (B, F) global bead indices, nearest images to the centre
            fb_rel = minimum_image(self.beads[frame_beads] - self.beads[bead][:, None], self._box_dims)
            fb = torch.as_tensor(fb_rel, dtype=self.dtype) @ rot_t
        shift = self._cand_shift_t[bead_t]
        return {"centre": centre, "rot": rot, "rot_t": rot_t, "cand": cand, "c": c, "shift": shift,
                "offset": shift - centre[:, None], "arange": torch.arange(cand.shape[1]).expand_as(cand),
                "mask": mask, "mask_heavy": mask_heavy, "atom_types": self.atom_type[c],
                "b_local": b_local, "bead_types": self.bead_type[nb.clamp(min=0)].gather(1, perm),
                "b_ok": b_ok.gather(1, perm), "fb": fb}

    def interactions(self, moltype: str, units: torch.Tensor, neighbours: torch.Tensor,
                     neighbour_types: torch.Tensor) -> torch.Tensor:
        """(B, U, K) channel of every neighbour's interaction with every unit atom: the molecule
        type's intramolecular table within a molecule, the LJ table between molecules. Computed
        per step on the (compacted) neighbour list: cheaper than for every candidate per frame."""
        u, nb = units.clamp(min=0), neighbours.clamp(min=0)
        table = self._intra_t[moltype]
        n_local = table.shape[1]
        same = self._molecule_t[u][:, :, None] == self._molecule_t.index_select(0, nb.reshape(-1)).view(nb.shape)[:, None]
        rows = self._local_t[u] * n_local  # (B, U)
        cols = self._local_t.index_select(0, nb.reshape(-1)).view(nb.shape).clamp(max=n_local - 1)
        intra = table.view(-1)[rows[:, :, None] + cols[:, None, :]]
        n_types = self._lj_table.shape[1]
        lj = self._lj_table.view(-1)[(self.atom_type[u] * n_types)[:, :, None] + neighbour_types[:, None, :]]
        return torch.where(same, intra, lj)


def _pad_axis(x: torch.Tensor, axis: int, width: int) -> torch.Tensor:
    """``x`` zero-padded (False for masks) along ``axis`` to ``width``."""
    missing = width - x.shape[axis]
    if missing <= 0:
        return x
    shape = list(x.shape)
    shape[axis] = missing
    return torch.cat([x, x.new_zeros(shape)], axis)


def _dims(box: np.ndarray) -> np.ndarray:
    from backmap.system.pbc import box_dimensions

    return box_dimensions(box)


def _pad_lists(keys: np.ndarray, values: np.ndarray, n_keys: int, fill=-1) -> np.ndarray:
    """Group ``values`` by integer ``keys`` (0..n_keys-1) into a padded (n_keys, width, ...) array."""
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    counts = np.bincount(keys, minlength=n_keys)
    width = max(int(counts.max()), 1)
    start = np.r_[0, np.cumsum(counts)[:-1]]
    slot = np.arange(len(keys)) - np.repeat(start, counts)
    out = np.full((n_keys, width) + values.shape[1:], fill, dtype=values.dtype)
    out[keys, slot] = values
    return out
