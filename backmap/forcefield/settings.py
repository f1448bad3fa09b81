"""Non-bonded settings (cut-offs, Coulomb treatment), as in a GROMACS ``.mdp`` file."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from backmap.errors import BackmapError

ONE_4PI_EPS0 = 138.935458  # kJ mol⁻¹ nm e⁻², GROMACS's electric conversion factor


class NonbondedSettings(BaseModel):
    """Plain cut-off Lennard-Jones and reaction-field Coulomb, as GROMACS's Verlet scheme does them.

    ``coulomb="cutoff"`` is reaction field with ε_rf = 1 (GROMACS's definition of a plain cut-off
    with Verlet lists); ``epsilon_rf = 0`` means ε_rf = ∞ (conducting boundary). ``coulomb="pme"``
    is smooth particle-mesh Ewald with GROMACS's parameters (``fourierspacing`` or ``fourier-nx/ny/nz``,
    ``pme-order``, ``ewald-rtol``; potential-shift modifier, tin-foil boundary), see
    :mod:`backmap.forcefield.pme`."""

    model_config = ConfigDict(extra="forbid")
    rvdw: float = Field(1.0, gt=0, description="LJ cut-off (nm)")
    rcoulomb: float = Field(1.0, gt=0, description="Coulomb cut-off (nm)")
    coulomb: Literal["reaction-field", "cutoff", "pme", "none"] = "reaction-field"
    epsilon_r: float = Field(1.0, gt=0)
    epsilon_rf: float = Field(1.0, ge=0, description="0 = infinity")
    vdw_modifier: Literal["potential-shift", "none"] = "potential-shift"
    constraints: Literal["none", "h-bonds", "all-bonds", "h-angles", "all-angles"] | None = Field(
        None, description="the .mdp's bond constraints, for the refiners (None: not given)")
    fourier_spacing: float = Field(0.12, gt=0, description="PME grid spacing (nm), GROMACS fourierspacing")
    fourier_n: tuple[int, int, int] = Field((0, 0, 0), description="PME grid fourier-nx/ny/nz (0: from spacing)")
    pme_order: int = Field(4, ge=3, le=12, description="PME B-spline order (GROMACS pme-order)")
    ewald_rtol: float = Field(1e-5, gt=0, lt=1, description="erfc(β r_c), GROMACS ewald-rtol")

    @model_validator(mode="after")
    def _as_gromacs(self) -> "NonbondedSettings":
        if self.epsilon_rf != 0 and self.epsilon_rf < self.epsilon_r:
            raise ValueError(f"epsilon-rf = {self.epsilon_rf:g}: GROMACS requires epsilon-rf ≥ epsilon-r "
                             f"({self.epsilon_r:g}), or 0 for infinity")
        return self

    @property
    def cutoff(self) -> float:
        return max(self.rvdw, self.rcoulomb)

    def ewald_coefficient(self) -> float:
        """β (nm⁻¹) of PME's Ewald splitting, from ``ewald_rtol`` and ``rcoulomb`` as GROMACS has it."""
        from backmap.forcefield.pme import ewald_coefficient

        return ewald_coefficient(self.rcoulomb, self.ewald_rtol)

    def reaction_field(self) -> tuple[float, float]:
        """(k_rf, c_rf) of GROMACS's reaction field (0, 0 without Coulomb)."""
        if self.coulomb in ("none", "pme"):
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

        def choice(key, default):  # GROMACS compares enumerated values ignoring case, '-' and '_'
            return get(key, default).replace("-", "").replace("_", "")

        where = lambda key: f"{path.name}:{values[key][1]}" if key in values else str(path)  # noqa: E731
        coulomb = {"reactionfield": "reaction-field", "cutoff": "cut-off"}.get(choice("coulombtype", "cutoff"),
                                                                            choice("coulombtype", "cutoff"))
        if coulomb not in ("reaction-field", "cut-off", "pme"):
            raise BackmapError(f"coulombtype = {coulomb} is not supported (use reaction-field, cut-off or pme)",
                               source=where("coulombtype"))
        pme = {}
        if coulomb == "pme":
            for key, ok, what in (("ewaldgeometry", "3d", "ewald-geometry = 3d"),
                                  ("epsilonsurface", "0", "epsilon-surface = 0"),
                                  ("coulombmodifier", "potentialshift", "coulomb-modifier = potential-shift")):
                value = choice(key, ok)
                if value != ok and not (key == "epsilonsurface" and float(value) == 0) and not (
                        key == "coulombmodifier" and value == "potentialshiftverlet"):
                    raise BackmapError(f"{key} = {value} is not supported with PME (only {what})", source=where(key))
            pme = {"fourier_spacing": float(get("fourierspacing", 0.12)), "pme_order": int(get("pmeorder", 4)),
                   "ewald_rtol": float(get("ewaldrtol", 1e-5)),
                   "fourier_n": tuple(int(get(f"fourier{d}", 0)) for d in ("nx", "ny", "nz"))}
        if choice("vdwtype", "cutoff") != "cutoff":
            raise BackmapError(f"vdwtype = {get('vdwtype', '')} is not supported (use cut-off)", source=where("vdwtype"))
        modifier = choice("vdwmodifier", "potentialshift")
        if modifier not in ("potentialshift", "none", "potentialshiftverlet"):
            raise BackmapError(f"vdw-modifier = {get('vdwmodifier', '')} is not supported", source=where("vdwmodifier"))
        if choice("cutoffscheme", "verlet") != "verlet":
            raise BackmapError("only cutoff-scheme = Verlet is supported", source=where("cutoffscheme"))
        # constraints: GROMACS compares values ignoring case, '-' and '_'; the refiners refuse angles
        constraints = None
        if "constraints" in values:
            names = {c.replace("-", ""): c for c in ("none", "h-bonds", "all-bonds", "h-angles", "all-angles")}
            constraints = names.get(get("constraints", "none").replace("-", "").replace("_", ""))
            if constraints is None:
                raise BackmapError(f"constraints = {get('constraints', '')} is not a GROMACS choice (none, h-bonds, "
                                   "all-bonds, h-angles, all-angles)", source=where("constraints"))
        try:
            return cls(
                constraints=constraints, rvdw=float(get("rvdw", 1.0)), rcoulomb=float(get("rcoulomb", 1.0)),
                coulomb={"cut-off": "cutoff", "pme": "pme"}.get(coulomb, "reaction-field"), **pme,
                epsilon_r=float(get("epsilonr", 1.0)), epsilon_rf=float(get("epsilonrf", 1.0)),
                vdw_modifier="none" if modifier == "none" else "potential-shift",
            )
        except ValueError as exc:  # also pydantic's ValidationError: a value GROMACS refuses too
            errors = getattr(exc, "errors", None)
            err = errors()[0] if errors else {"loc": (), "msg": str(exc)}
            key = {"rvdw": "rvdw", "rcoulomb": "rcoulomb", "epsilon_rf": "epsilonrf", "epsilon_r": "epsilonr"}.get(
                str(err["loc"][0]) if err["loc"] else "", "")
            raise BackmapError(f"{err['msg'].removeprefix('Value error, ')}", source=where(key) if key else path) \
                from None

    def mdp(self) -> dict[str, object]:
        """The same settings as mdp keys (for ``gmx grompp``)."""
        pme = {"fourierspacing": self.fourier_spacing, "fourier-nx": self.fourier_n[0],
               "fourier-ny": self.fourier_n[1], "fourier-nz": self.fourier_n[2], "pme-order": self.pme_order,
               "ewald-rtol": self.ewald_rtol} if self.coulomb == "pme" else {}
        return pme | {"coulombtype": {"cutoff": "cut-off", "pme": "PME"}.get(self.coulomb, "reaction-field"),
                "rcoulomb": self.rcoulomb, "rvdw": self.rvdw, "epsilon-r": self.epsilon_r,
                "epsilon-rf": self.epsilon_rf, "vdw-modifier": "Potential-shift" if self.vdw_modifier != "none"
                else "None"}


def model_epsilon_rf(mdp: str | Path) -> float:
    """The reaction-field dielectric a model's ``.mdp`` implies for local (cut-off) Coulomb:
    its ``epsilon-rf`` with reaction field, 1 with a plain cut-off, 0 (∞, conducting: Ewald's
    tin-foil boundary) with PME."""
    s = NonbondedSettings.from_mdp(mdp)
    return {"reaction-field": s.epsilon_rf, "cutoff": 1.0}.get(s.coulomb, 0.0)
