"""Force-field energies of training sequences: what the recipe's regularizers score (thesis 4.5) and
the energy terms of the training log.

A sequence's energy involves the atoms of its bead (generated) and its visible reference
neighbours, all in the bead's local frame (whole, no box): the force field of exactly these atoms
(``ForceField.subsystem``) is built once per sequence and kept in a bounded cache.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from backmap.devices import to_host
from backmap.forcefield import ForceField
from backmap.training.sequences import BeadSequences
from backmap.system.topology import Topology
from backmap.training.regularization import RegularizerSample

#: logged energy terms: name → force-field terms summed into it
LOGGED = {"bond": ("bond",), "angle": ("angle", "urey_bradley"), "dihedral": ("proper", "rb"),
          "improper": ("improper",), "lj": ("lj", "lj14")}


class LocalEnergies:
    """Builds :class:`backmap.training.regularization.RegularizerSample` s of training sequences."""

    def __init__(self, topology: Topology, cache_size: int = 4096):
        self.ff = ForceField(topology, dtype=torch.float64)
        self.types = np.concatenate([np.tile(b.moltype.atom_types, b.count) for b in topology.blocks])
        self.cache_size = cache_size
        self._cache: OrderedDict[int, tuple[ForceField, np.ndarray, np.ndarray]] = OrderedDict()
        present = {name for name, t in self.ff.params.bonded.items() if len(t.atoms)} | {"lj"}
        terms = {k: [t for t in v if t in present] for k, v in LOGGED.items()}
        self.terms = {k: v for k, v in terms.items() if v}

    def _subsystem(self, key: int, seqs: BeadSequences, s: int) -> tuple[ForceField, np.ndarray, np.ndarray]:
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        targets = to_host(seqs.target_mask[s])
        env = to_host((seqs.atom_index[s] >= 0) & (seqs.slot[s] < 0) & seqs.visible[s].any(0))
        atoms = np.concatenate([to_host(seqs.target_atoms[s])[targets], to_host(seqs.atom_index[s])[env]])
        entry = (self.ff.subsystem(atoms), np.flatnonzero(env), atoms)
        self._cache[key] = entry
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return entry

    def sample(self, key: int, seqs: BeadSequences, s: int, generated: torch.Tensor) -> RegularizerSample:
        """Sequence ``s`` of ``seqs`` (global id ``key``) with its bead's atoms at ``generated``
        (T, 3) — differentiable — and its neighbours at their reference positions."""
        ff, env, atoms = self._subsystem(key, seqs, s)
        t_ok = seqs.target_mask[s]
        n_gen = int(t_ok.sum())
        neighbours = seqs.atom_positions[s][torch.as_tensor(env)].double()
        gen = torch.cat([generated[t_ok].double(), neighbours])[None]
        ref = torch.cat([seqs.target_positions[s][t_ok].double(), neighbours])[None]
        mask = np.arange(len(atoms)) < n_gen
        return RegularizerSample(ff, gen, mask, self.types[atoms], ref)

    def terms_of(self, sample: RegularizerSample) -> dict[str, float]:
        """Logged energy terms of the generated and the reference configuration (kJ/mol)."""
        wanted = sorted({t for v in self.terms.values() for t in v})
        out = {}
        with torch.no_grad():
            for label, x in (("gen", sample.positions), ("ref", sample.reference)):
                e = sample.forcefield.energy(x, None, subset=sample.generated, terms=wanted).terms
                for name, parts in self.terms.items():
                    out[f"{label}_{name}"] = float(sum(e[t].sum() for t in parts if t in e))
        return out
