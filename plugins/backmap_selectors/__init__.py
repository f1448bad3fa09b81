"""Built-in candidate selectors: lowest energy (DeepBackmap's choice), Boltzmann-weighted, random."""
from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from backmap.api import Selector, hookimpl
from backmap.api.forcefield import BOLTZMANN



class LowestEnergy(Selector):
    name = "lowest_energy"
    summary = "the candidate with the lowest local energy (DeepBackmap)"

    def select(self, energies: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.argmin(energies, axis=1)


class RandomChoice(Selector):
    name = "random"
    summary = "a uniformly random candidate (ignores energies)"

    def select(self, energies: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, energies.shape[1], size=energies.shape[0])


class BoltzmannParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(300.0, gt=0, description="K")


class Boltzmann(Selector):
    name = "boltzmann"
    summary = "a candidate drawn with probability ∝ exp(−E/kT)"
    Params = BoltzmannParams

    def select(self, energies: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        e = energies / (BOLTZMANN * self.params.temperature)
        w = np.exp(-(e - e.min(axis=1, keepdims=True)))
        w /= w.sum(axis=1, keepdims=True)
        u = rng.random((len(w), 1))
        return np.minimum((np.cumsum(w, axis=1) < u).sum(axis=1), w.shape[1] - 1)


@hookimpl
def backmap_selectors():
    return [LowestEnergy, RandomChoice, Boltzmann]
