"""A conformance kit for generator plugins (in the spirit of e3nn's ``assert_equivariant``).

``check_generator(generator, system)`` drives the generator through the real sampler on a few
molecules of a CG frame and raises ``AssertionError`` naming the first broken promise:

- **output**: ``propose`` returns a finite (B, K, U, 3) tensor for every call the sampler makes;
- **local frame**: placements are in the unit's local frame — mapped to the lab frame they lie
  within the environment cut-off of their bead (a generator returning lab coordinates fails);
- **invariance**: the whole input rotated and translated (in a box large enough that no periodic
  image is in reach) gives the same placements rotated and translated, with the same seed;
- **determinism**: the same seed gives the same output;
- **state round trip**: the generator saved as a model folder (safetensors + JSON) and loaded
  again proposes the same placements.

Use it in a plugin's own test suite::

    from backmap.testing import ConformanceSystem, check_generator
    report = check_generator(my_trained_generator, ConformanceSystem.from_files(top, mapping, cg_frame))
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backmap.engine.loaders import load_mapping, load_topology
from backmap.engine.models import load_model, save_model
from backmap.engine.plugin import Generator
from backmap.engine.registry import Registry, default_registry
from backmap.sampling.backmapper import Backmapper, BackmapSettings
from backmap.sampling.environment import Channels, EnvironmentBatch
from backmap.system.io import Frame, read_frames
from backmap.system.mapping import CGTopology
from backmap.system.pbc import Unwrapper
from backmap.system.topology import MoleculeBlock, Topology


@dataclass
class ConformanceSystem:
    """A CG frame (molecules whole) of a system a generator was trained on, with its channels."""

    cg_topology: CGTopology
    beads: np.ndarray  # (M, 3) nm
    channels: Channels

    @classmethod
    def from_files(cls, topology: Path | str, mapping: Path | str | list, cg: Path | str, frame: int = 0,
                   channels: Channels | None = None, registry: Registry | None = None) -> "ConformanceSystem":
        topo = load_topology(topology, registry)
        cg_top = load_mapping(mapping, topo, registry).cg_topology(topo)
        fr = next(read_frames(Path(cg), cg_top.n_beads, [frame], expect="CG system of the mapping"))
        beads = Unwrapper.for_cg(cg_top)(fr.positions, fr.dimensions)
        return cls(cg_top, beads, channels or Channels.from_system(cg_top))

    def first_molecules(self, n: int) -> "ConformanceSystem":
        """The first ``n`` molecules of every molecule type (a small, fast system)."""
        blocks, mappings, rows, first_atom = [], {}, [], 0
        for cb in self.cg_topology.blocks:
            k = min(n, cb.block.count)
            blocks.append(MoleculeBlock(cb.block.moltype, k, first_atom))
            first_atom += k * cb.block.moltype.n_atoms
            mappings[cb.block.moltype.name] = cb.mapping
            rows.append(np.arange(cb.first_bead, cb.first_bead + k * cb.mapping.n_beads))
        topo = Topology(self.cg_topology.topology.source, blocks, self.cg_topology.topology.defaults)
        return ConformanceSystem(CGTopology(topo, mappings), self.beads[np.concatenate(rows)], self.channels)


class _Checked(Generator):
    """Wraps a generator: checks every ``propose`` result and records the lab-frame distances of
    the placements from their unit's bead."""

    def __init__(self, inner: Generator, cutoff: float):
        self.inner, self.cutoff = inner, cutoff
        self.name, self.params, self.environment = inner.name, inner.params, inner.environment
        self.calls = 0
        self.max_distance = 0.0

    def propose(self, batch: EnvironmentBatch, n_candidates: int, rng: np.random.Generator) -> torch.Tensor:
        out = self.inner.propose(batch, n_candidates, rng)
        U = batch.target_types.shape[1]
        assert torch.is_tensor(out), f"{self.name}.propose returned {type(out).__name__}, not a torch.Tensor"
        assert tuple(out.shape) == (batch.size, n_candidates, U, 3), (
            f"{self.name}.propose returned shape {tuple(out.shape)} for {batch.size} units of {U} atoms and "
            f"{n_candidates} candidates: expected {(batch.size, n_candidates, U, 3)}")
        assert torch.isfinite(out).all(), f"{self.name}.propose returned non-finite coordinates"
        lab = batch.to_lab(out.float())
        distance = float((lab - batch.centre[:, None, None]).norm(dim=-1).max())
        self.max_distance = max(self.max_distance, distance)
        self.calls += 1
        return out


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _backmap(generator: Generator, system: ConformanceSystem, beads: np.ndarray, box: float, seed: int,
             candidates: int, gibbs: int, registry: Registry) -> np.ndarray:
    spec = generator.environment
    settings = BackmapSettings(candidates=candidates, gibbs_sweeps=gibbs,
                               energy=system.cg_topology.topology.blocks[0].moltype.parameters is not None)
    bm = Backmapper(system.cg_topology, generator, system.channels,
                    registry.get("traversal", spec.traversal).cls(), registry.get("selector", "lowest_energy").cls(),
                    settings, seed=seed)
    dims = np.array([box, box, box, 90.0, 90.0, 90.0])
    return next(bm.run([Frame(beads, dims)])).positions


def check_generator(generator: Generator, system: ConformanceSystem, *, molecules: int = 3, candidates: int = 3,
                    seed: int = 0, atol: float = 2e-3, registry: Registry | None = None) -> dict[str, Any]:
    """Run every check on ``generator`` (trained for ``system``'s molecules); returns what was
    measured. ``atol`` (nm) bounds the invariance error: float32 rounding of the frames, nothing more."""
    registry = registry or default_registry()
    small = system.first_molecules(molecules)
    spec = generator.environment
    centre = small.beads.mean(0)
    extent = float(np.linalg.norm(small.beads - centre, axis=1).max())
    box = 2 * extent + 4 * (spec.cutoff + 0.5)  # no periodic image within any environment, however rotated
    beads = small.beads - centre + box / 2
    report: dict[str, Any] = {"generator": generator.name, "unit": spec.unit, "molecules": molecules}

    # output shape and local frame, in the forward pass and a Gibbs sweep, with K candidates
    checked = _Checked(generator, spec.cutoff)
    x = _backmap(checked, small, beads, box, seed, candidates, 1, registry)
    assert checked.calls > 0, "the sampler never called propose"
    assert np.isfinite(x).all(), "the backmapped structure has non-finite coordinates"
    assert checked.max_distance < spec.cutoff, (
        f"{generator.name}: a placement lies {checked.max_distance:.3f} nm from its bead, beyond the environment "
        f"cut-off {spec.cutoff} nm: is propose returning lab-frame rather than local-frame coordinates?")
    report.update(propose_calls=checked.calls, max_distance_nm=round(checked.max_distance, 4))

    # determinism
    again = _backmap(generator, small, beads, box, seed, 1, 0, registry)
    twice = _backmap(generator, small, beads, box, seed, 1, 0, registry)
    assert np.array_equal(again, twice), f"{generator.name}: the same seed gave different placements"

    # invariance under a global rotation and translation of the input
    g = np.random.default_rng(seed + 1)
    rot = _random_rotation(g)
    shift = g.uniform(-0.5, 0.5, 3)
    moved = (beads - box / 2) @ rot.T + box / 2 + shift
    out = _backmap(generator, small, moved, box, seed, 1, 0, registry)
    expected = (again - box / 2) @ rot.T + box / 2 + shift
    error = float(np.abs(out - expected).max())
    assert error < atol, (
        f"{generator.name}: rotating and translating the input moved the placements by up to {error:.4f} nm "
        f"more than the input moved (tolerance {atol} nm): the output depends on the lab frame")
    report["invariance_error_nm"] = error

    # state round trip through a model folder
    with tempfile.TemporaryDirectory() as tmp:
        save_model(Path(tmp), generator, small.channels, None, [], small.cg_topology)
        loaded = load_model(tmp, registry).generator
    restored = _backmap(loaded, small, beads, box, seed, 1, 0, registry)
    assert np.array_equal(restored, again), (
        f"{generator.name}: the generator loaded from its model files proposes differently "
        f"(max {np.abs(restored - again).max():.3g} nm): state_dict/load_state_dict lose something")
    return report


__all__ = ["ConformanceSystem", "check_generator"]
