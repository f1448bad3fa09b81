"""Running GROMACS: ``grompp`` + ``mdrun -rerun`` + ``gmx energy`` for reference energies and
forces (validation of the force field, CG-quality assessment, checking outputs)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backmap.errors import BackmapError

#: GROMACS energy-file term name → backmap term name
GMX_TERMS = {
    "Bond": "bond", "Angle": "angle", "U-B": "urey_bradley", "Proper Dih.": "proper",
    "Ryckaert-Bell.": "rb", "Improper Dih.": "improper", "Per. Imp. Dih.": "proper_improper",
    "LJ-14": "lj14", "Coulomb-14": "coulomb14", "LJ (SR)": "lj", "Coulomb (SR)": "coulomb",
    "Disper. corr.": "dispersion_correction", "Potential": "potential",
}


def gromacs_topdir() -> Path | None:
    """GROMACS's force-field library (``share/gromacs/top``), where ``#include`` files resolve."""
    candidates = []
    if os.environ.get("GMXDATA"):
        candidates.append(Path(os.environ["GMXDATA"]) / "top")
    gmx = shutil.which("gmx") or shutil.which("gmx_mpi")
    if gmx:
        candidates.append(Path(gmx).resolve().parent.parent / "share" / "gromacs" / "top")
    candidates += [Path("/usr/share/gromacs/top"), Path("/usr/local/gromacs/share/gromacs/top")]
    return next((c for c in candidates if c.is_dir()), None)


def gmx_binary(double: bool = False) -> str:
    """``gmx`` (or ``gmx_d``, the double-precision build, for reference forces)."""
    names = ("gmx_d", "gmx_mpi_d") if double else ("gmx", "gmx_mpi")
    exe = next((shutil.which(n) for n in names if shutil.which(n)), None)
    if exe is None:
        raise BackmapError(f"GROMACS ({names[0]}) not found: apt-get install gromacs")
    return exe


def run(args: list[str], cwd: Path, stdin: str | None = None, check: bool = True, double: bool = False) -> str:
    """Run ``gmx ARGS``; a failure becomes a BackmapError with GROMACS's own error text."""
    proc = subprocess.run([gmx_binary(double), *args], cwd=cwd, input=stdin, capture_output=True, text=True)
    if check and proc.returncode != 0:
        text = proc.stderr + proc.stdout
        m = re.search(r"(Fatal error:|ERROR \d+ \[.*?\]:)\s*(.*?)(\n\n|For more information)", text, re.S)
        detail = " ".join(m.group(2).split()) if m else text.strip().splitlines()[-1:]
        raise BackmapError(f"gmx {args[0]} failed: {detail}")
    return proc.stdout + proc.stderr


def write_mdp(path: Path, settings: dict[str, object]) -> None:
    path.write_text("".join(f"{k:24s} = {v}\n" for k, v in settings.items()))


def rerun_mdp(cutoff: float, coulomb: str = "reaction-field", epsilon_rf: float = 1.0, epsilon_r: float = 1.0,
              vdw_modifier: str = "Potential-shift", dispcorr: str = "no") -> dict[str, object]:
    """mdp settings for an exact rerun with plain cut-offs (Verlet lists, no buffer tricks)."""
    return {
        "integrator": "md", "nsteps": 0, "cutoff-scheme": "Verlet", "nstlist": 1, "pbc": "xyz",
        "verlet-buffer-tolerance": -1, "rlist": cutoff, "coulombtype": coulomb, "rcoulomb": cutoff,
        "epsilon-r": epsilon_r, "epsilon-rf": epsilon_rf, "vdwtype": "cut-off", "vdw-modifier": vdw_modifier,
        "rvdw": cutoff, "DispCorr": dispcorr, "constraints": "none", "nstcalcenergy": 1, "nstenergy": 1,
        "nstfout": 1, "nstxout": 0, "nstvout": 0, "comm-mode": "none",
    }


@dataclass
class Rerun:
    """Energies per frame by backmap term name (kJ/mol) and forces (F, N, 3) in kJ/mol/nm."""

    energies: dict[str, np.ndarray]
    forces: np.ndarray


def rerun(topology: Path, structure: Path, positions: np.ndarray, boxes: np.ndarray, mdp: dict[str, object],
          workdir: Path | None = None, double: bool = False) -> Rerun:
    """``gmx grompp`` + ``mdrun -rerun`` on configurations ``positions`` (F, N, 3) nm with box
    vectors ``boxes`` (F, 3, 3) nm. They are written to a ``.trr`` in nm without unit conversion,
    so GROMACS sees exactly ``positions.astype(float32)``. ``double``: GROMACS's double-precision
    build (reference forces to ~1e-6 instead of ~1e-2 kJ/mol/nm). Returns energies and forces."""
    from MDAnalysis.lib.formats.libmdaxdr import TRRFile

    positions = np.asarray(positions, np.float32)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 3, 3)
    with tempfile.TemporaryDirectory() as tmp:
        wd = Path(workdir or tmp)
        wd.mkdir(parents=True, exist_ok=True)
        with TRRFile(str(wd / "input.trr"), "w") as trr:
            for k, (x, box) in enumerate(zip(positions, boxes)):
                trr.write(x, None, None, box, k, float(k), 0.0, x.shape[0])
        write_mdp(wd / "rerun.mdp", mdp)
        run(["grompp", "-f", "rerun.mdp", "-p", str(Path(topology).resolve()), "-c", str(Path(structure).resolve()),
             "-o", "rerun.tpr", "-maxwarn", "5"], wd, double=double)
        run(["mdrun", "-s", "rerun.tpr", "-rerun", "input.trr", "-deffnm", "rerun", "-nt", "1"], wd, double=double)
        listing = run(["energy", "-f", "rerun.edr", "-o", "energy.xvg"], wd, stdin="0\n", check=False,
                      double=double)
        # the listing writes names with '-' for ' ' ("LJ-(SR)"), the legends with spaces
        known = {name.replace(" ", "-") for name in GMX_TERMS}
        block = listing.split("End your selection")[-1].split("\n\n")[0]
        numbers = [n for n, name in re.findall(r"(\d+)\s+(\S+)", block) if name in known]
        run(["energy", "-f", "rerun.edr", "-o", "energy.xvg"], wd, stdin="\n".join(numbers) + "\n\n", double=double)
        legends, rows = [], []
        for line in (wd / "energy.xvg").read_text().splitlines():
            m = re.match(r'@ s\d+ legend "(.*)"', line)
            if m:
                legends.append(m.group(1))
            elif line and line[0] not in "#@":
                rows.append([float(v) for v in line.split()])
        data = np.array(rows)
        energies = {GMX_TERMS[name]: data[:, k + 1] for k, name in enumerate(legends) if name in GMX_TERMS}
        with TRRFile(str(wd / "rerun.trr")) as trr:
            forces = np.stack([frame.f.astype(np.float64) for frame in trr if frame.hasf])
        return Rerun(energies, forces)


@dataclass
class MDCheck:
    """What ``gmx grompp`` + a short ``gmx mdrun`` made of a structure: GROMACS's warnings and notes,
    whether the run finished, the potential energy at its first and last step (kJ/mol) and the
    largest temperature it reached (K)."""

    warnings: list[str]
    notes: list[str]
    finished: bool
    potential: tuple[float, float]
    max_temperature: float
    log: str


def md_check(topology: Path, structure: Path, mdp: Path, steps: int = 1000, threads: int = 1) -> MDCheck:
    """Start ``steps`` MD steps of ``mdp``'s settings (velocities drawn at its ``ref-t``, no
    minimization, ``continuation = no``) from ``structure`` (.gro) with ``grompp -maxwarn 0``: the
    test that a backmapped structure can be simulated as it is. Raises a BackmapError (with
    GROMACS's text) if grompp refuses it; a crash of mdrun is ``finished = False``."""

    keep = {"integrator", "dt", "cutoff-scheme", "nstlist", "pbc", "coulombtype", "rcoulomb", "epsilon-rf", "epsilon-r",
            "vdw-type", "vdwtype", "rvdw", "dispcorr", "constraints", "constraint-algorithm", "tc-grps", "tau-t",
            "ref-t", "fourierspacing", "pme-order", "ewald-rtol", "vdw-modifier", "coulomb-modifier", "tcoupl"}
    settings: dict[str, object] = {}
    for line in Path(mdp).read_text().splitlines():
        line = line.split(";")[0]
        if "=" in line:
            k, v = (s.strip() for s in line.split("=", 1))
            if k.lower().replace("_", "-") in keep:
                settings[k.lower().replace("_", "-")] = v
    temperature = str(settings.get("ref-t", "300")).split()[0]
    settings |= {"nsteps": steps, "gen-vel": "yes", "gen-temp": temperature, "gen-seed": 1, "ld-seed": 1,
                 "continuation": "no", "nstenergy": max(1, steps // 20), "nstcalcenergy": max(1, steps // 20),
                 "nstlog": steps, "nstxout-compressed": 0, "nstxout": 0, "nstvout": 0, "nstfout": 0}
    settings.setdefault("integrator", "md")
    with tempfile.TemporaryDirectory(prefix="backmap-md-") as tmp:
        wd = Path(tmp)
        write_mdp(wd / "md.mdp", settings)
        top = Path(topology).resolve()
        for inc in top.parent.glob("*.itp"):  # includes beside the topology
            shutil.copy(inc, wd / inc.name)
        shutil.copy(top, wd / "topol.top")
        out = run(["grompp", "-f", "md.mdp", "-p", "topol.top", "-c", str(Path(structure).resolve()),
                   "-o", "md.tpr", "-maxwarn", "0"], wd)
        warnings = re.findall(r"WARNING \d+ \[.*?\]:\s*(.*?)\n\n", out, re.S)
        notes = [" ".join(n.split()) for n in re.findall(r"NOTE \d+ \[.*?\]:\s*(.*?)\n\n", out, re.S)]
        proc = subprocess.run([gmx_binary(), "mdrun", "-deffnm", "md", "-nt", str(threads)], cwd=wd,
                              capture_output=True, text=True)
        text = proc.stdout + proc.stderr
        finished = proc.returncode == 0 and (wd / "md.gro").is_file()
        pot, temp = (float("nan"), float("nan")), float("nan")
        if (wd / "md.edr").is_file():
            run(["energy", "-f", "md.edr", "-o", "e.xvg"], wd, stdin="Potential\nTemperature\n\n", check=False)
            if (wd / "e.xvg").is_file():
                rows = np.array([ln.split() for ln in (wd / "e.xvg").read_text().splitlines()
                                 if ln and ln[0] not in "#@"], float)
                if len(rows):
                    pot, temp = (float(rows[0, 1]), float(rows[-1, 1])), float(rows[:, 2].max())
        return MDCheck([" ".join(w.split()) for w in warnings], notes, finished, pot, temp, text[-3000:])
