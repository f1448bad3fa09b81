"""Where along the chain a backmapped or refined structure is strained: per bead of the mapping,
the LJ energy of the interactions that involve that bead's atoms (kJ/mol per molecule, mean over
frames), and per carbon the mean and s.d. of its H–C–H angles, for the reference and each
trajectory. This is how the vae_mc stall at the sPS chain ends was found (docs/vae-sps.md, "From the
voxel GAN's output as its recipe makes it").

    .venv/bin/python benchmarks/chain_end_strain.py --topology ../shared/data/sps/top/topol.top \\
        --mapping recipes/sps/sps.xml --mdp ../shared/data/sps/top/md.mdp \\
        --reference ../shared/data/sps/eval_t568/aa.xtc --frames 0:8 OUT.xtc [...]

One JSON line per trajectory (the reference first). The molecule type is the topology's first;
shared atoms count for every bead that lists them.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from backmap.engine.loaders import load_mapping, load_topology
from backmap.forcefield import ForceField, NonbondedSettings
from backmap.system.io import read_frames
from backmap.system.pairs import select_frames


def bead_masks(topology, mapping) -> dict[str, np.ndarray]:
    """Atom masks (N,) of each bead name of the first molecule type, over all its copies."""
    block = topology.blocks[0]
    n = block.moltype.n_atoms
    molecule = next(m for m in mapping.molecules.values() if m.moltype.n_atoms == n)
    masks = {}
    for bead in molecule.beads:
        mask = np.zeros(topology.n_atoms, bool)
        for copy in range(block.count):
            mask[block.first_atom + copy * n + np.asarray(bead.atoms)] = True
        masks[bead.name] = mask
    return masks


def hch_triples(moltype) -> np.ndarray:
    """(H, C, H) local index triples of every carbon with two or more hydrogens."""
    elements = np.asarray(moltype.elements)
    neighbours: dict[int, list[int]] = {i: [] for i in range(moltype.n_atoms)}
    for a, b in np.asarray(moltype.bonds)[:, :2].astype(int):
        neighbours[a].append(b)
        neighbours[b].append(a)
    rows = []
    for c in np.flatnonzero(elements == "C"):
        hs = [h for h in neighbours[int(c)] if elements[h] == "H"]
        rows += [(hs[i], int(c), hs[j]) for i in range(len(hs)) for j in range(i + 1, len(hs))]
    return np.asarray(rows, int).reshape(-1, 3)


def strain(path: str, frames: list[int], topology, ff: ForceField, masks, triples) -> dict:
    block = topology.blocks[0]
    n = block.moltype.n_atoms
    read = list(read_frames(path, topology.n_atoms, frames))
    x = np.stack([f.positions for f in read]).astype(np.float64)
    boxes = np.stack([f.box for f in read])
    lj = {name: round(float(ff.energy(x, boxes, subset=mask, terms=("lj",)).total.mean()) / block.count, 2)
          for name, mask in masks.items()}
    mol = x[:, block.first_atom:block.first_atom + block.count * n].reshape(len(x), block.count, n, 3)
    angles = []
    for f in range(len(x)):  # minimum image in the frame's (triclinic) box
        box, inv = boxes[f], np.linalg.inv(boxes[f])
        a = mol[f][:, triples[:, 0]] - mol[f][:, triples[:, 1]]
        b = mol[f][:, triples[:, 2]] - mol[f][:, triples[:, 1]]
        a -= np.round(a @ inv) @ box
        b -= np.round(b @ inv) @ box
        cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
        angles.append(np.degrees(np.arccos(np.clip(cos, -1, 1))))
    angles = np.concatenate(angles)  # (frames · copies, triples)
    names = block.moltype.atom_names
    hch: dict[str, list[float]] = {}
    for k, (_h, c, _h2) in enumerate(triples):
        hch.setdefault(names[c], []).extend(angles[:, k].tolist())
    return {"trajectory": path, "frames": len(x), "lj_per_bead_kj_mol": lj,
            "hch_deg": {c: [round(float(np.mean(v)), 1), round(float(np.std(v)), 1)] for c, v in hch.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topology", required=True)
    ap.add_argument("--mapping", required=True)
    ap.add_argument("--mdp", default=None, help="cut-offs and Coulomb settings (the evaluation's .mdp); the LJ is "
                    "plain cut-off, as evaluate's lj_per_molecule (vdw_modifier: none)")
    ap.add_argument("--reference", required=True)
    ap.add_argument("--frames", default="0:8", help="'start:stop:step' or '0,5,9' (every trajectory)")
    ap.add_argument("trajectories", nargs="+")
    args = ap.parse_args()
    topology = load_topology(args.topology)
    mapping = load_mapping([args.mapping], topology)
    settings = NonbondedSettings.from_mdp(args.mdp) if args.mdp else NonbondedSettings()
    settings = settings.model_copy(update={"vdw_modifier": "none"})
    ff = ForceField(topology, settings, dtype=torch.float64)
    masks, triples = bead_masks(topology, mapping), hch_triples(topology.blocks[0].moltype)
    for path in [args.reference, *args.trajectories]:
        n_frames = sum(1 for _ in read_frames(path, topology.n_atoms))
        frames = list(select_frames(args.frames, [], n_frames, path))
        print(json.dumps({"benchmark": "chain_end_strain", **strain(path, frames, topology, ff, masks, triples)}))


if __name__ == "__main__":
    main()
