"""DeepBackmap's potential-energy regularizers (thesis 4.5): C_pot^(1) = Σ_t λ_t e_t(generated)
(energy minimizing) and C_pot^(2) = Σ_t λ_t |e_t(generated) − e_t(reference)| (energy matching),
with t over force-field terms and an overall weight that ramps up during training."""
from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from backmap.api import Regularizer
from backmap.api.forcefield import TERMS
from backmap.api.training import RegularizerSample, Schedule

#: DBM's default: bonded terms weighted 1, Lennard-Jones 0.1 (its bonded/non-bonded ratio)
DEFAULT_TERMS = {"bond": 1.0, "angle": 1.0, "proper": 1.0, "rb": 1.0, "improper": 1.0, "lj": 0.1}


class EnergyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: Schedule = Field(default_factory=lambda: Schedule(start=0.0, end=0.01, ramp_epochs=10),
                             description="overall weight λ_pot: a number or {start, end, ramp_epochs, delay}")
    terms: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_TERMS),
                                    description="per-term weights λ_t (bond, angle, proper, rb, improper, "
                                                "urey_bradley, lj14, coulomb14, lj, coulomb)")

    @field_validator("terms")
    @classmethod
    def _known(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(TERMS))
        if unknown:
            raise ValueError(f"unknown energy term {unknown[0]!r} (known: {', '.join(TERMS)})")
        return value


def _terms(sample: RegularizerSample, positions: torch.Tensor, names) -> dict[str, torch.Tensor]:
    """Energy terms of the interactions that involve a generated atom."""
    return sample.forcefield.energy(positions, None, subset=sample.generated, terms=names).terms


class EnergyMin(Regularizer):
    name = "energy_min"
    summary = "Σ_t λ_t e_t(generated): energy minimizing (DBM C_pot^(1))"
    Params = EnergyParams

    def loss(self, sample: RegularizerSample, epoch: float) -> torch.Tensor:
        w = self.params.weight(epoch)
        e = _terms(sample, sample.positions, list(self.params.terms))
        return w * sum(self.params.terms[t] * v for t, v in e.items())


class EnergyMatch(Regularizer):
    name = "energy_match"
    summary = "Σ_t λ_t |e_t(generated) − e_t(reference)|: energy matching (DBM C_pot^(2))"
    Params = EnergyParams

    def loss(self, sample: RegularizerSample, epoch: float) -> torch.Tensor:
        if sample.reference is None:
            raise ValueError("energy_match needs the reference positions of the sample")
        w = self.params.weight(epoch)
        names = list(self.params.terms)
        gen = _terms(sample, sample.positions, names)
        with torch.no_grad():
            ref = _terms(sample, sample.reference, names)
        return w * sum(self.params.terms[t] * (gen[t] - ref[t]).abs() for t in gen)
