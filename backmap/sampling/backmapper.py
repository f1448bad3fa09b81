"""From CG frames and a trained generator to AA frames: the sampler driven over a trajectory,
streamed to disk, with a GROMACS topology written beside the output."""
from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from backmap.errors import BackmapError
from backmap.system.io import Frame, atomic_path, read_frames, write_frames
from backmap.system.mapping import CGTopology
from backmap.system.pbc import Unwrapper
from backmap.engine.plugin import Generator
from backmap.progress import progress
from backmap.engine.registry import Registry, default_registry
from backmap.sampling.sampler import Sampler, SamplerOptions
from backmap.sampling.traversal import make_plan


class BackmapSettings(BaseModel):
    """How CG frames are backmapped (the ``backmap`` step's and ``backmap apply``'s options)."""

    model_config = ConfigDict(extra="forbid")
    traversal: str = Field("dfs", description="traversal plugin: dfs, bfs, random, …")
    selector: str = Field("lowest_energy", description="selector plugin: lowest_energy, boltzmann, random")
    candidates: int = Field(8, ge=1, description="candidates per unit (K)")
    gibbs_sweeps: int = Field(2, ge=0)
    cutoff: float = Field(0.7, gt=0, description="environment radius (nm)")
    heavy_first: bool = Field(True, description="heavy atoms of a bead before its hydrogens")
    strip_hydrogens: bool = Field(True, description="hide hydrogens of the current and bonded beads from heavy atoms")
    colouring: bool = Field(False, description="never update two units with overlapping environments together")
    batch_molecules: bool = Field(True, description="all molecules of a type advance together")
    energy: bool = Field(True, description="score candidates with the force field (needs a .top)")
    minimize_steps: int = Field(0, ge=0, description="restrained energy-minimization steps after sampling "
                                                     "(the EM baseline; 0 = none)")
    restraint: float = Field(1000.0, ge=0, description="CG restraint constant for minimization (kJ/mol/nm²)")
    stereo_reference: Path | None = Field(None, description="AA structure of the system (first frame used) whose "
                                                           "stereocentres' handedness the sampler keeps")
    stereo_weight: float = Field(1e5, ge=0, description="selection penalty per flipped neighbour triple of a stereocentre (kJ/mol); "
                                                         "the default outweighs any candidate's other energy")


def load_checkpoint(path: Path, registry: Registry | None = None) -> tuple[Generator, dict]:
    """A trained generator from ``model/generator.pkl`` (or a run directory containing it)."""
    registry = registry or default_registry()
    path = Path(path)
    if path.is_dir():
        path = path / "model" / "generator.pkl"
    if not path.is_file():
        raise BackmapError("no trained model here (expected a run directory or model/generator.pkl)", source=path)
    with open(path, "rb") as fh:
        ckpt = pickle.load(fh)
    info_path = path.with_suffix(".json")
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    # relative paths in the model's description are relative to it (a model shipped in a repository)
    if info.get("topology"):
        info["topology"] = str(info_path.parent / info["topology"])
    info["mapping"] = [str(info_path.parent / m) for m in info.get("mapping", [])]
    generator = registry.get("generator", ckpt["plugin"], where=str(path)).cls(ckpt["params"])
    generator.load_state_dict(ckpt["state"])
    return generator, info


@dataclass
class Backmapper:
    """Drives a generator over CG frames. ``frames`` yields CG :class:`Frame` s (n_beads atoms)."""

    cg_topology: CGTopology
    generator: Generator
    settings: BackmapSettings = field(default_factory=BackmapSettings)
    seed: int = 0
    registry: Registry = field(default_factory=default_registry)

    def __post_init__(self):
        rng = np.random.default_rng(self.seed)
        traversal = self.registry.get("traversal", self.settings.traversal).cls()
        selector = self.registry.get("selector", self.settings.selector).cls()
        unit = getattr(self.generator, "unit", "atom")
        self.plans = {cb.block.moltype.name: make_plan(cb.mapping, traversal, rng, unit=unit,
                                                       heavy_first=self.settings.heavy_first)
                      for cb in self.cg_topology.blocks}
        s = self.settings
        options = SamplerOptions(candidates=s.candidates, gibbs_sweeps=s.gibbs_sweeps, cutoff=s.cutoff,
                                 colouring=s.colouring, batch_molecules=s.batch_molecules,
                                 strip_hydrogens=s.strip_hydrogens, energy=s.energy)
        self.chirality = None
        if s.stereo_reference is not None:
            if not s.energy:
                raise BackmapError("stereo_reference: keeping stereocentres needs energy scoring (a .top topology)",
                                   source=s.stereo_reference)
            from backmap.sampling.chirality import load_chiral_centres

            self.chirality = load_chiral_centres(self.cg_topology.topology, s.stereo_reference, s.stereo_weight)
        self.sampler = Sampler(self.cg_topology, self.plans, self.generator, selector, options, rng=rng,
                               chirality=self.chirality)
        self._whole_cg = Unwrapper.for_cg(self.cg_topology)
        self.forcefield = None
        if s.minimize_steps:
            import torch

            from backmap.forcefield import ForceField

            self.forcefield = ForceField(self.cg_topology.topology, dtype=torch.float32)

    def run(self, frames: Iterable[Frame], total: int | None = None) -> Iterator[Frame]:
        """AA frames, one per CG frame, in the AA topology's atom order (molecules whole). With a
        stereo reference, ``chirality_kept`` lists each frame's fraction of centres kept."""
        self.chirality_kept: list[float] = []
        for k, cg in enumerate(progress(frames, total=total, description="backmapping")):
            beads = self._whole_cg(cg.positions, cg.dimensions)
            x = self.sampler.backmap(beads, cg.box)
            if self.forcefield is not None:
                from backmap.forcefield.minimize import minimize_restrained

                x = minimize_restrained(self.forcefield, x, cg.box, self.cg_topology, beads,
                                        restraint=self.settings.restraint, steps=self.settings.minimize_steps).positions
            if self.chirality is not None:
                self.chirality_kept.append(self.chirality.kept(self.cg_topology.topology, x))
            yield Frame(x, cg.dimensions, cg.time, cg.index)


def read_cg(cg_topology: CGTopology, path: Path, frames=None) -> Iterator[Frame]:
    """CG frames from a file whose beads are in the mapping's order."""
    return read_frames(path, cg_topology.n_beads, frames, expect="CG system of the mapping")


def write_topology(topology_path: Path, out: Path) -> Path:
    """A copy of the AA ``.top`` usable from ``out``'s directory: relative ``#include``s that
    resolve beside the original are made absolute; everything else is unchanged."""
    src = Path(topology_path)
    if src.suffix != ".top":
        raise BackmapError("a GROMACS topology for the output needs the system's .top", source=src)
    lines = []
    for line in src.read_text().splitlines():
        m = re.match(r'(\s*#include\s+")([^"]+)(".*)', line)
        if m and not Path(m.group(2)).is_absolute() and (src.parent / m.group(2)).is_file():
            line = f"{m.group(1)}{(src.parent / m.group(2)).resolve()}{m.group(3)}"
        lines.append(line)
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return out


def write_aa(path: Path, frames: Iterable[Frame], topology) -> int:
    """Write AA frames with the topology's atom and residue names."""
    return write_frames(path, frames, topology.atom_names, topology.resnames, topology.residue_numbers())
