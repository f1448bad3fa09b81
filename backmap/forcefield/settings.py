"""Non-bonded settings (cut-offs, Coulomb treatment), as in a GROMACS ``.mdp`` file."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from backmap.errors import BackmapError

ONE_4PI_EPS0 = 138.935458  # kJ mol⁻¹ nm e⁻², GROMACS's electric conversion factor


class NonbondedSettings(BaseModel):
    """Plain cut-off Lennard-Jones and reaction-field Coulomb, as GROMACS's Verlet scheme does them.

    ``coulomb="cutoff"`` is reaction field with ε_rf = 1 (GROMACS's definition of a plain cut-off
    with Verlet lists); ``epsilon_rf = 0`` means ε_rf = ∞ (conducting boundary)."""

    model_config = ConfigDict(extra="forbid")
    rvdw: float = Field(1.0, gt=0, description="LJ cut-off (nm)")
    rcoulomb: float = Field(1.0, gt=0, description="Coulomb cut-off (nm)")
    coulomb: Literal["reaction-field", "cutoff", "none"] = "reaction-field"
    epsilon_r: float = Field(1.0, gt=0)
    epsilon_rf: float = Field(1.0, ge=0, description="0 = infinity")
    vdw_modifier: Literal["potential-shift", "none"] = "potential-shift"

    @property
    def cutoff(self) -> float:
        return max(self.rvdw, self.rcoulomb)

    def reaction_field(self) -> tuple[float, float]:
        """(k_rf, c_rf) of GROMACS's reaction field (0, 0 without Coulomb)."""
        if self.coulomb == "none":
            return 0.0, 0.0
        rc, er = self.rcoulomb, self.epsilon_r
        erf = 1.0 if self.coulomb == "cutoff" else self.epsilon_rf
        k_rf = 1.0 / (2 * rc**3) if erf == 0 else (erf - er) / ((2 * erf + er) * rc**3)
        return k_rf, 1.0 / rc + k_rf * rc**2

    @classmethod
    def from_mdp(cls, path: str | Path) -> "NonbondedSettings":
        """Read the relevant keys of a GROMACS ``.mdp`` file; unsupported choices are errors."""
        path = Path(path)
        if not path.is_file():
            raise BackmapError("mdp file not found", source=path)
        values = {}
        for lineno, raw in enumerate(path.read_text().splitlines(), 1):
            line = raw.split(";")[0].strip()
            if "=" in line:
                key, value = (x.strip() for x in line.split("=", 1))
                # GROMACS treats '-' and '_' alike; coulomb_type (as in DBM's sPS md.mdp) = coulombtype
                values[key.lower().replace("_", "").replace("-", "")] = (value.lower(), lineno)

        def get(key, default):
            return values.get(key, (default, 0))[0]

        where = lambda key: f"{path.name}:{values[key][1]}" if key in values else str(path)  # noqa: E731
        coulomb = get("coulombtype", "cut-off").replace("_", "-")
        if coulomb not in ("reaction-field", "cut-off"):
            raise BackmapError(f"coulombtype = {coulomb} is not supported (use reaction-field or cut-off)",
                               source=where("coulombtype"))
        vdw = get("vdwtype", "cut-off").replace("_", "-")
        if vdw != "cut-off":
            raise BackmapError(f"vdwtype = {vdw} is not supported (use cut-off)", source=where("vdwtype"))
        modifier = get("vdwmodifier", "potential-shift")
        if modifier not in ("potential-shift", "none", "potential-shift-verlet"):
            raise BackmapError(f"vdw-modifier = {modifier} is not supported", source=where("vdwmodifier"))
        if get("cutoffscheme", "verlet") != "verlet":
            raise BackmapError("only cutoff-scheme = Verlet is supported", source=where("cutoffscheme"))
        return cls(
            rvdw=float(get("rvdw", 1.0)), rcoulomb=float(get("rcoulomb", 1.0)),
            coulomb="cutoff" if coulomb == "cut-off" else "reaction-field",
            epsilon_r=float(get("epsilonr", 1.0)), epsilon_rf=float(get("epsilonrf", 1.0)),
            vdw_modifier="none" if modifier == "none" else "potential-shift",
        )

    def mdp(self) -> dict[str, object]:
        """The same settings as mdp keys (for ``gmx grompp``)."""
        return {"coulombtype": "reaction-field" if self.coulomb != "cutoff" else "cut-off",
                "rcoulomb": self.rcoulomb, "rvdw": self.rvdw, "epsilon-r": self.epsilon_r,
                "epsilon-rf": self.epsilon_rf, "vdw-modifier": "Potential-shift" if self.vdw_modifier != "none"
                else "None"}
