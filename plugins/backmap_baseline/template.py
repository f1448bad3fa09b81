"""Fragment-template baseline (the geometric placement of Backward/CG2AT-style tools, thesis
5.1.3): each bead's atoms are a rigid fragment taken from the training data — the real fragment
closest to the Procrustes mean, so its internal geometry is physical — expressed together with the
bead and the beads that fix its orientation; at inference the fragment's bead part is superimposed
(Kabsch) on the actual CG beads, plus an optional random kick."""
from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from backmap.api import BackmapError, Generator
from backmap.api.system import kabsch


class TemplateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kick: float = Field(0.0, ge=0, description="s.d. of a Gaussian kick per atom and candidate (nm)")
    iterations: int = Field(3, ge=1, description="Procrustes-mean iterations when fitting")


class FragmentTemplate(Generator):
    name = "template"
    summary = "rigid mean fragments from the training pairs, superimposed on the CG beads (baseline)"
    Params = TemplateParams
    unit = "bead"

    def __init__(self, params=None, environment=None):
        super().__init__(params, environment)
        # moltype -> bead -> (frame beads (F, 3), atom indices (n,), atom positions (n, 3)), centred on the bead
        self.templates: dict[str, dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}

    def fit(self, data, context) -> dict:
        train = data.train()
        if len(train) == 0:
            raise BackmapError("template: no training frames")
        n_frag = 0
        for cb in data.cg_topology.blocks:
            mt, mm = cb.block.moltype, cb.mapping
            aa = train.aa[:, cb.block.atom_slice].reshape(len(train), cb.block.count, mt.n_atoms, 3)
            cg = train.cg[:, cb.first_bead:cb.first_bead + cb.n_beads].reshape(len(train), cb.block.count,
                                                                               mm.n_beads, 3)
            table = {}
            for b in range(mm.n_beads):
                atoms = [int(a) for a in np.flatnonzero(mm.home == b)]
                if not atoms:
                    continue
                frame = mm.frame_beads(b)
                f = (cg[:, :, frame] - cg[:, :, b:b + 1]).reshape(-1, len(frame), 3).astype(float)
                a = (aa[:, :, atoms] - cg[:, :, b:b + 1]).reshape(-1, len(atoms), 3).astype(float)
                ref_f, ref_a = f[0], a[0]
                # Procrustes mean of beads and atoms together: a sharp mean geometry even where the
                # beads alone hardly fix the orientation (near-linear chains)
                pts = np.concatenate([f, a], 1)
                for _ in range(self.params.iterations):
                    ref = np.concatenate([ref_f, ref_a], 0)
                    rot = kabsch(pts, np.broadcast_to(ref, pts.shape))
                    ref_f, ref_a = (f @ rot).mean(0), (a @ rot).mean(0)
                # a Cartesian mean shrinks freely rotating groups (methyls); keep the real fragment
                # nearest the mean (the medoid) so that bond lengths and angles are physical
                aligned = np.concatenate([f, a], 1) @ rot
                best = int(((aligned - np.concatenate([ref_f, ref_a], 0)) ** 2).sum((1, 2)).argmin())
                table[b] = (aligned[best, :len(frame)], np.array(atoms), aligned[best, len(frame):])
                n_frag += 1
            self.templates[mt.name] = table
        return {"fragments": n_frag}

    def propose(self, batch, n_candidates: int, rng: np.random.Generator) -> torch.Tensor:
        meta = batch.meta
        frame_t, index_t, atoms_t = self.templates[meta["moltype"]][meta["bead"]]
        where = {int(a): k for k, a in enumerate(index_t)}
        order = [where[int(a)] for a in meta["unit_atoms"]]  # the unit's atoms in the template's order
        target = batch.frame_beads.numpy().astype(float)  # (B, F, 3) local frame, bead at origin
        src = np.broadcast_to(frame_t, target.shape)
        if target.shape[1] >= 2:
            rot = kabsch(src - src.mean(1, keepdims=True), target - target.mean(1, keepdims=True))
            shift = target.mean(1) - np.einsum("bi,bij->bj", frame_t.mean(0)[None].repeat(len(target), 0), rot)
            placed = atoms_t[None] @ rot + shift[:, None]
        else:  # a one-bead molecule: a random orientation per molecule
            rot = _random_rotations(len(target), rng)
            placed = atoms_t[None] @ rot
        placed = placed[:, order]
        out = np.repeat(placed[:, None], n_candidates, 1)
        if self.params.kick > 0:
            out = out + rng.normal(0.0, self.params.kick, out.shape)
        return torch.as_tensor(out, dtype=torch.float32)

    def state_dict(self) -> dict:
        return {m: {b: (f.tolist(), i.tolist(), a.tolist()) for b, (f, i, a) in t.items()}
                for m, t in self.templates.items()}

    def load_state_dict(self, state: dict) -> None:
        self.templates = {m: {int(b): (np.asarray(f), np.asarray(i, int), np.asarray(a)) for b, (f, i, a) in t.items()}
                          for m, t in state.items()}


def _random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)], 1)


class TrivialParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spread: float = Field(0.1, ge=0, description="s.d. of the positions around the bead (nm)")


class TrivialGenerator(Generator):
    name = "bead_centre"
    summary = "atoms scattered around their bead (no training; for tests and overhead benchmarks)"
    Params = TrivialParams
    unit = "atom"

    def fit(self, data, context) -> dict:
        return {}

    def propose(self, batch, n_candidates: int, rng: np.random.Generator) -> torch.Tensor:
        shape = (batch.size, n_candidates, batch.target_types.shape[1], 3)
        return torch.as_tensor(rng.normal(0.0, self.params.spread, shape), dtype=torch.float32)
