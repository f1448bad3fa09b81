"""Recipe parameters of the voxel GAN and its presets.

``preset`` fills every key it names; keys given next to it in the recipe win. ``dbm`` is
DeepBackmap's published configuration (config.ini of the sPS model and thesis 5.1.4): 8³ grid over
1.2 nm, σ = 0.1 nm, 64 channels, noise 64, 4 critic steps, Adam 5e-5 / 1e-4 with β = (0, 0.9),
λ_gp = 0.1, networks sized to ≈ 0.9 GFLOP per placement like DBM's — out of reach on a CPU. ``cpu``
keeps the grid and the method and shrinks the networks (≈ 23 MFLOP per placement), trains the
critic twice per generator step on half of each batch's steps — about 3× cheaper per training
sequence than 4 full critic steps —, lets the critic judge a Gaussian at the generated coordinate
(eq. 4.12), and uses learning rates 40× DBM's, decaying linearly to a tenth: with DBM's rates the
generator hardly moves in the ≈ 1000 iterations a CPU hour allows; ``tiny`` is for tests and smoke
runs.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PRESETS: dict[str, dict[str, Any]] = {
    "dbm": {"grid": 8, "length": 1.2, "sigma": 0.1, "width": 64, "depth": 2, "full_depth": 1, "noise_dim": 64,
            "output": "density", "n_critic": 4, "critic_fraction": 1.0, "lr_generator": 5e-5, "lr_critic": 1e-4,
            "lr_end_fraction": 1.0, "betas": (0.0, 0.9), "gp_weight": 0.1},
    "cpu": {"grid": 8, "length": 1.2, "sigma": 0.1, "width": 16, "depth": 2, "full_depth": 0, "noise_dim": 32,
            "output": "coordinate", "n_critic": 2, "critic_fraction": 0.5, "lr_generator": 2e-3, "lr_critic": 2e-3,
            "lr_end_fraction": 0.1, "betas": (0.0, 0.9), "gp_weight": 1.0, "regularizer_samples": 32},
    "tiny": {"grid": 6, "length": 1.2, "sigma": 0.12, "width": 4, "depth": 1, "full_depth": 0, "noise_dim": 4,
             "output": "coordinate", "n_critic": 2, "critic_fraction": 1.0, "lr_generator": 1e-3, "lr_critic": 1e-3,
             "lr_end_fraction": 1.0, "betas": (0.0, 0.9), "gp_weight": 1.0, "regularizer_samples": 8},
}


class VoxelGANParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preset: Literal["dbm", "cpu", "tiny"] | None = Field(
        "cpu", description="fills the keys it names (dbm: DeepBackmap's published network; cpu: small "
                           "networks for 2 CPU cores; tiny: tests); keys given explicitly win")
    # voxel grid
    grid: int = Field(8, ge=4, description="voxels per side (even)")
    length: float = Field(1.2, gt=0, description="edge of the grid cube (nm)")
    sigma: float = Field(0.1, gt=0, description="Gaussian standard deviation of a particle (nm)")
    # networks
    width: int = Field(16, ge=1, description="channels at full resolution (twice that after pooling)")
    depth: int = Field(2, ge=1, description="residual blocks at the pooled resolution (per network)")
    full_depth: int = Field(0, ge=0, description="residual blocks at full resolution (generator encoder and "
                                                 "decoder, critic), 8x the cost of a pooled block")
    noise_dim: int = Field(32, ge=1, description="dimension of the generator's noise")
    output: Literal["density", "coordinate"] = Field(
        "coordinate", description="density: the critic sees the generator's density (eq. 4.11); coordinate: it "
                               "sees a Gaussian at the generated coordinate (eq. 4.12)")
    # training
    n_critic: int = Field(2, ge=1, description="critic steps per generator step")
    lr_generator: float = Field(2e-3, gt=0)
    lr_critic: float = Field(2e-3, gt=0)
    betas: tuple[float, float] = Field((0.0, 0.9), description="Adam betas")
    lr_end_fraction: float = Field(0.1, gt=0, le=1, description="learning rates decay linearly to this fraction "
                                                               "of their value over the training (1: constant)")
    gp_weight: float = Field(1.0, ge=0, description="λ_gp of the gradient penalty")
    critic_fraction: float = Field(0.5, gt=0, le=1, description="fraction of a batch's (sequence, step) pairs "
                                                               "each critic step is trained on (CPU cost)")
    unroll: bool = Field(True, description="back-propagate through each bead's whole atom sequence (eqs. "
                                           "4.13-4.14); false: earlier generated atoms enter later "
                                           "environments detached")
    rotate: bool = Field(True, description="random rotations about the local z axis (training augmentation)")
    context: Literal["forward", "gibbs", "mixed"] = Field(
        "mixed", description="environments trained on: as in the forward pass (only atoms placed before), as in "
                             "Gibbs sweeps (all other atoms), or each sequence drawn from either")
    regularizer_samples: int = Field(32, ge=0, description="sequences of each generator batch scored by the "
                                                          "recipe's regularizers (and logged energies)")
    threads: int | None = Field(1, ge=1, description="torch threads while training and proposing (None: leave)")
    # inference
    rotate_candidates: bool = Field(True, description="each candidate sees the environment rotated about z by a "
                                                      "random angle (DBM 5.1.4)")

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        if isinstance(data, dict):
            name = data.get("preset", "cpu")
            if name in PRESETS:
                return {**PRESETS[name], **data}
        return data

    @model_validator(mode="after")
    def _even_grid(self) -> "VoxelGANParams":
        if self.grid % 2:
            raise ValueError(f"grid must be even (one pooling halves it), got {self.grid}")
        return self
