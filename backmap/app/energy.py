"""The energy use case: per-term potential energies of every frame, like a GROMACS rerun, and
optionally the AA forces summed per CG bead (``backmap energy``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from backmap.app.options import FrameSelection, NonbondedOptions, Request
from backmap.engine.loaders import load_mapping, load_topology
from backmap.errors import BackmapError
from backmap.fields import option
from backmap.forcefield import ForceField, NonbondedSettings
from backmap.forcefield.trajectory import rerun_trajectory
from backmap.progress import progress
from backmap.system.claim import claim_outputs
from backmap.system.io import Frame, write_frames
from backmap.system.pairs import count_frames, select_frames

TRAJECTORY_HELP = "AA trajectory in any format MDAnalysis reads (.xtc, .trr, .gro, .dcd, LAMMPS dump, …)."


class EnergyRequest(FrameSelection, NonbondedOptions, Request):
    topology: Path = option(description="AA topology with parameters (.top).")
    traj: Path = option(description=TRAJECTORY_HELP)
    mapping: list[Path] = option(default_factory=list, description="Mapping: also report the AA forces summed per "
                                                                    "CG bead.")
    forces_out: Path | None = option(None, "Write CG positions and summed bead forces to this .trr (needs --mapping).")
    WRITES: ClassVar[tuple[str, ...]] = ("forces_out",)


@dataclass
class Energies:
    """Per frame (index, time) the energies of ``terms`` in kJ/mol; per bead type the mean force."""

    request: EnergyRequest
    settings: NonbondedSettings
    terms: list[str]
    frames: list[tuple[int, float, dict[str, float]]]
    bead_forces: dict[str, dict[str, float]] | None = None

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "topology": str(self.request.topology), "trajectory": str(self.request.traj),
            "settings": self.settings.model_dump(), "units": "kJ/mol",
            "frames": [{"frame": i, "time": t, "energies": {k: e[k] for k in self.terms}} for i, t, e in self.frames]}
        if self.bead_forces:
            doc["bead_forces"] = self.bead_forces
        return doc


def compute_energies(request: EnergyRequest) -> Energies:
    r = request
    if r.forces_out is None:
        return _energies(r)
    if not r.mapping:
        raise BackmapError("--forces-out needs --mapping")
    with claim_outputs(r.written_paths(), r.read_paths(), "energy", option="--forces-out"):
        return _energies(r)


def _energies(r: EnergyRequest) -> Energies:
    settings = r.nonbonded()
    topo = load_topology(r.topology)
    ff = ForceField(topo, settings)
    cg_top = load_mapping(list(r.mapping), topo).cg_topology(topo) if r.mapping else None
    idx = select_frames(r.frames, [], count_frames(r.traj), str(r.traj))
    rows = list(progress(rerun_trajectory(ff, r.traj, idx, cg_top), total=len(idx), description="energies"))
    terms = [t for t in rows[0].energies if any(abs(x.energies[t]) > 0 for x in rows) or t == "potential"]
    result = Energies(r, settings, terms, [(x.frame.index, x.frame.time, x.energies) for x in rows])
    if cg_top is not None:
        f = np.stack([x.bead_forces for x in rows])
        result.bead_forces = {
            t: {"mean_abs_force": float(np.linalg.norm(f[:, cg_top.bead_types == t], axis=-1).mean()),
                "mean_force_x": float(f[:, cg_top.bead_types == t, 0].mean())} for t in sorted(set(cg_top.bead_types))}
        if r.forces_out:
            stream = (Frame(x.bead_positions, x.frame.dimensions, x.frame.time, x.frame.index, x.bead_forces)
                      for x in rows)
            write_frames(r.forces_out, stream, cg_top.bead_names, cg_top.resnames, cg_top.resids)
    return result
