"""Data-free training by reverse KL (Schöberl, Zabaras & Koutsourelakis, seed ``003``).

A latent-variable model q(x, z) = q(z) q(x | z) with reparameterized samples is trained toward
p(x) ∝ exp(−βU(x) − V(x)) without any sample of p, by minimizing

    L = ⟨βU(x) + V(x) + ln q(z) + ln q(x | z) − ln r(z | x)⟩_q(x, z)  ≥  KL(q(x) ‖ p) − ln Z(β)

(eq. 19 of the paper, negated): r(z | x) is an auxiliary encoder that bounds the intractable
marginal entropy of q(x) from below, and the gradient of ⟨βU⟩ flows through the samples, i.e. the
force field's forces enter the gradient. Here r is the model's own encoder, so that a VAE trained
this way is also a :class:`~backmap.refinement.latent_moves.LatentModel` for exact VAE Monte Carlo.

V is a part of the target that is *not* tempered: a box wall for the double well (the paper's
U_aux, eq. 47) or the CG restraint in backmapping, so that exp(−V) keeps p normalizable at β → 0.

β is raised from ≈ 0 to the target by the paper's adaptive Algorithm 1: after ``steps_per_beta``
optimizer steps at β_k, the increment Δβ = f Δβ_max is shrunk (f ← 0.6 f) while the estimated
relative increase of the KL divergence

    c = [ln Z(β+Δβ) − ln Z(β) + Δβ ⟨U⟩] / [ln Z(β) + L]           (eq. 36, appendix B)

exceeds c_max, with Z(β+Δβ)/Z(β) by importance sampling with the model's weights (eq. 44). The
paper chains these ratios from Z(β₀) (multistage sampling); their errors accumulate, and in our
runs the KL estimate in the denominator turned negative halfway, stalling β. Here ln Z(β_k) is
estimated afresh at every increment by importance sampling (eq. 50 at β_k), which keeps the KL
estimate ln⟨w⟩ − ⟨ln w⟩ non-negative. Early on (β below
``clip_until`` of the target), the gradient reaching each sample is clipped to κ times the mean
over the batch (appendix F). A loss or gradient that is NaN/inf, or a loss that jumps far above its
recent values, rolls the model back to the last good state (checkpoint or β increment) and halves the
learning rate and Δβ_max; a jump a fresh batch does not repeat is an outlier batch, skipped.
A checkpoint is written atomically every ``checkpoint_every`` steps; a killed run resumes from it.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from backmap.engine.recipe import InputPath, PluginRef
from backmap.errors import BackmapError
from backmap.refinement.latent_moves import JointLogDensity
from backmap.system.io import atomic_path
from backmap.training.log import TrainingLog
from backmap.training.checkpoint import read_checkpoint
from backmap.training.progress import TrainingProgress

CHECKPOINT_FORMAT = 1


class ReparameterizedModel(Protocol):
    """A latent-variable model for ``B`` independent systems whose samples are differentiable in
    its parameters: ``generate`` gives n pairs per system, x (B, n, …), z (B, n, …);
    ``log_joint`` gives ln r(z | x) (``encoder``), ln q(z) (``prior``), ln q(x | z) (``decoder``);
    ``encode`` draws z ~ r(z | x) reparameterized (only for ``entropy_samples`` > 0)."""

    def generate(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]: ...

    def encode(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> JointLogDensity: ...


class ReverseKLProblem(Protocol):
    """What the trainer trains on: ``beta`` the target β; ``draw`` the model (bound to systems,
    e.g. units in their environments) and target of one step; ``observe`` the step's samples
    (B, n, …), e.g. to move an environment pool along with the model."""

    beta: float

    def draw(self, generator: torch.Generator) -> list[tuple[ReparameterizedModel, "Target"]]: ...

    def observe(self, xs: list[torch.Tensor], generator: torch.Generator) -> None: ...


@dataclass
class FixedProblem:
    """One model and one target for every step (the double well)."""

    model: ReparameterizedModel
    target: "Target"

    @property
    def beta(self) -> float:
        return self.target.beta

    def draw(self, generator: torch.Generator) -> list[tuple[ReparameterizedModel, "Target"]]:
        return [(self.model, self.target)]

    def observe(self, xs: list[torch.Tensor], generator: torch.Generator) -> None:
        pass


@dataclass
class Target:
    """p(x) ∝ exp(−β energy(x) − wall(x)) for states x (B, n, …) → (B, n) each. ``energy`` is
    tempered (kJ/mol or reduced units, with β to match), ``wall`` is not (in kT)."""

    energy: Callable[[torch.Tensor], torch.Tensor]
    wall: Callable[[torch.Tensor], torch.Tensor] | None = None
    beta: float = 1.0

    def terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.energy(x)
        v = self.wall(x) if self.wall is not None else torch.zeros_like(u)
        return u, v


class TemperingParams(BaseModel):
    """The reverse-KL objective's schedule (Algorithm 1 of seed ``003``); every key can be set in a
    recipe's train step under ``reverse_kl:``."""

    model_config = ConfigDict(extra="forbid")
    samples: int = Field(1000, ge=2, description="samples per system and step (the paper's J)")
    beta0: float = Field(1e-10, ge=0, description="initial β as a fraction of the target β")
    dbeta_max: float = Field(1e-3, gt=0, le=1, description="largest increment of β, as a fraction of the target β")
    c_max: float = Field(1.0, gt=0, description="largest relative increase of the KL divergence per increment")
    shrink: float = Field(0.6, gt=0, lt=1, description="factor on the increment while c > c_max")
    max_shrinks: int = Field(25, ge=1, description="tries per increment; the last (smallest) is taken anyway")
    steps_per_beta: int = Field(10, ge=1, description="optimizer steps at each β before the next increment")
    final_steps: int = Field(500, ge=0, description="optimizer steps at the target β after tempering")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate (the paper: 1e-3)")
    clip_kappa: float = Field(3.0, gt=0, description="per-sample gradient norm clipped to κ × the batch mean")
    clip_until: float = Field(0.5, ge=0, le=1, description="clip while β is below this fraction of the target")
    clip_reference: Literal["mean", "median"] = Field("mean", description="κ times the batch's mean gradient norm "
                                                                        "(the paper) or its median")
    entropy_samples: int = Field(0, ge=0, description="extra encoder draws per sample for the importance-weighted "
                                                      "bound on ln q(x) (Sobolev & Vetrov 2019); 0: the paper's "
                                                      "one-draw bound, whose gap can differ between modes")
    divergence: float = Field(30.0, gt=0, description="a loss this many spreads (median absolute deviations of the "
                                                        "last 50 losses, at least 1 kT) above their median is a divergence")
    max_rollbacks: int = Field(10, ge=0, description="divergences tolerated before training stops with an error")
    log_every: int = Field(20, ge=1, description="optimizer steps between log rows")
    checkpoint_every: int = Field(200, ge=0, description="optimizer steps between checkpoints (0: only at the end)")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps in total")


class ReverseKLOptions(TemperingParams):
    """Data-free training of a generator for backmapping: the tempering schedule, and the target
    p(x | R) ∝ exp(−βU(x) − β[restraint + springs] − wall) of each unit in its environment (the
    restraint, the springs and the wall are not tempered: they keep the target a backmapping at
    every β). The train step's ``reverse_kl:`` keys."""

    samples: int = Field(8, ge=2, description="samples per unit and step")
    units: int = Field(64, ge=1, description="units per step (colour groups are drawn until there are this many)")
    dbeta_max: float = Field(0.02, gt=0, le=1, description="largest increment of β, as a fraction of the target β")
    steps_per_beta: int = Field(5, ge=1, description="optimizer steps at each β before the next increment")
    final_steps: int = Field(1000, ge=0, description="optimizer steps at the target β after tempering")
    temperature: float = Field(300.0, gt=0, description="target temperature (K): β = 1/k_B T")
    restraint: float = Field(2.0e3, gt=0, description="k of ½k|M(x) − R|² per bead (kJ/mol/nm²); softer than "
                                                     "vae_mc's: raw draws place a bead's centre to ≈ 0.1 nm")
    closure_stiffness: float = Field(1.0e6, gt=0, description="k_c (kJ/mol/nm²) of the springs on rigid bonds "
                                                               "between units (as vae_mc's target)")
    constraints: Literal["none", "h-bonds", "all-bonds"] = Field(
        "none", description="bonds held rigid (springs between units); match the generator's 'constraints'")
    extent: float = Field(0.5, gt=0, description="wall: a unit atom farther than this (nm) from its bead")
    minimize_steps: int = Field(300, ge=0, description="restrained minimization steps of the starting structures "
                                                       "(the environments before the model makes its own)")
    minimize_cutoff: float = Field(0.7, gt=0, description="non-bonded cut-off (nm) of that minimization: it removes "
                                                         "clashes; the full cut-off costs 6x as much (1.3 nm)")
    energy_cap: float = Field(1.0e5, gt=0, description="per unit, force-field energies above this (kJ/mol) enter "
                                                       "as cap + ln(1 + U − cap) (Boltzmann generators' "
                                                       "regularization; the restraint at half of it): it bounds the "
                                                       "loss of overlapping atoms; set it above the typical energy "
                                                       "of early samples, or their forces vanish")
    clip_until: float = Field(1.0, ge=0, le=1, description="clip while β is below this fraction of the target")
    clip_reference: Literal["mean", "median"] = Field("median", description="κ times the batch's mean gradient "
                                                                          "norm or its median (a few overlapping "
                                                                          "atoms set the mean)")
    pool_candidates: int = Field(1, ge=1, description="draws per unit when the environment pool is updated; the "
                                                      "lowest-energy one is kept")
    pretrain_epochs: int = Field(12, ge=0, description="epochs of maximum likelihood on the starting structures (a "
                                                      "forward pass of the untrained model: force-field bond "
                                                      "lengths and angles, random torsions) before reverse KL")
    wall: float = Field(1000.0, gt=0, description="slope of the wall beyond 'extent' (kT/nm)")
    thermalize: PluginRef | None = Field(
        None, description="a refiner run on the starting structures after their minimization, e.g. {plugin: "
                          "openmm, params: {steps: 1000}} (temperature: the target's unless given): the warm start "
                          "then learns thermal structures of the force field under the CG restraint, not minimized "
                          "ones, whose narrow geometry its own draws reproduced badly; no AA data either way")
    stereo_reference: InputPath | None = Field(
        None, description="AA structure of the system (first frame used) whose stereocentres' handedness the starting "
                          "pool takes (after its minimization, centres of the other handedness are inverted): "
                          "the only AA information used; for a force field that does not fix the tacticity "
                          "(no impropers on the stereocentres) the pool is otherwise atactic")

    @model_validator(mode="after")
    def _thermalize_refiner(self):
        """The refiner must exist and take its params (validated here, so a typo fails before training)."""
        if self.thermalize is not None:
            from backmap.engine.registry import default_registry

            try:
                info = default_registry().get("refiner", self.thermalize.plugin)
            except BackmapError as exc:
                raise ValueError(f"thermalize.plugin: {exc}") from None
            params = {"temperature": self.temperature, **self.thermalize.params}
            try:
                params = info.cls.Params.model_validate(params).model_dump()
            except ValidationError as exc:
                raise ValueError("; ".join(f"thermalize.params.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                           for e in exc.errors())) from None
            self.thermalize = PluginRef(plugin=self.thermalize.plugin, params=params)
        return self


@dataclass
class Estimates:
    """Monte Carlo estimates from one batch of samples at β: ⟨U⟩, the loss L (the KL bound minus
    ln Z(β)), the entropy bound ⟨−ln q(x, z) + ln r(z | x)⟩ ≤ H(q(x)) and the log importance
    weights ln w = −βU − V − ln q(x, z) + ln r(z | x) (detached, float64, flattened)."""

    mean_u: float
    loss: float
    entropy: float
    u: torch.Tensor
    log_w: torch.Tensor


def _logmeanexp(a: torch.Tensor) -> float:
    return float(torch.logsumexp(a, 0) - math.log(len(a)))


def log_z_ratio(est: Estimates, dbeta: float) -> float:
    """ln Z(β + Δβ) − ln Z(β) by importance sampling with the model's weights (appendix B, eq. 44)."""
    w = est.log_w - torch.logsumexp(est.log_w, 0)
    return float(torch.logsumexp(w - dbeta * est.u, 0))


def kl_estimate(est: Estimates) -> float:
    """KL(q(x) ‖ p) bound at the batch's β with ln Z(β) by importance sampling from the same batch
    (eq. 50): ln ⟨w⟩ − ⟨ln w⟩ ≥ 0 (Jensen), consistent as the batch grows."""
    return _logmeanexp(est.log_w) - float(est.log_w.mean())


def relative_kl_increase(est: Estimates, dbeta: float) -> float:
    """c of eq. 36: the KL divergence's relative increase when β grows by Δβ (inf if the current
    KL estimate is 0)."""
    kl = kl_estimate(est)
    step = log_z_ratio(est, dbeta) + dbeta * est.mean_u
    return step / kl if kl > 0 else math.inf


def clip_per_sample(grad: torch.Tensor, kappa: float, sample_dims: int, robust: bool = False) -> torch.Tensor:
    """The gradient (…, n, state…) with every sample's norm capped at κ × the mean norm (appendix F),
    or κ × the median (``robust``: when a few overlapping atoms would set the mean)."""
    flat = grad.reshape(*grad.shape[:grad.ndim - sample_dims], -1) if sample_dims else grad[..., None]
    norm = flat.norm(dim=-1)
    finite = torch.isfinite(norm)
    if not finite.any():
        return grad
    limit = kappa * (norm[finite].median() if robust else norm[finite].mean())
    scale = torch.where(norm > limit, limit / norm.clamp(min=1e-300), torch.ones_like(norm))
    return grad * scale.view(*scale.shape, *[1] * sample_dims)


def log_marginal_bound(model: ReparameterizedModel, x: torch.Tensor, z: torch.Tensor, k: int,
                       generator: torch.Generator) -> torch.Tensor:
    """An upper bound on ln q(x) (B, n) for samples x drawn with latents z, whose expectation tightens
    to ln q(x) as k grows: ln [(w₀ + Σ_{i=1..k} wᵢ) / (k + 1)], wᵢ = q(x, zᵢ) / r(zᵢ | x), with zᵢ ~ r(z | x)
    drawn by the model's ``encode`` (importance-weighted hierarchical VI, Sobolev & Vetrov 2019).
    k = 0 is the paper's bound ln q(x, z) − ln r(z | x), too high by KL(q(z | x) ‖ r(z | x)) — a gap
    that may differ between modes and so bias their weights."""
    j = model.log_joint(x, z)
    log_q = j.prior.double() + j.decoder.double() - j.encoder.double()
    if k == 0:
        return log_q
    b, n = log_q.shape
    xr = x.repeat(1, k, *[1] * (x.ndim - 2))  # (B, k·n, …): every sample k times, the same environments
    jk = model.log_joint(xr, model.encode(xr, generator))
    log_qk = (jk.prior.double() + jk.decoder.double() - jk.encoder.double()).reshape(b, k, n)
    return torch.logsumexp(torch.cat([log_q[:, None], log_qk], 1), 1) - math.log(k + 1)


def reverse_kl_batch(model: ReparameterizedModel, target: Target, beta: float, n: int, generator: torch.Generator,
                     clip_kappa: float | None = None, sample_dims: int = 1, clip_reference: str = "mean",
                     entropy_samples: int = 0) -> tuple[torch.Tensor, Estimates, torch.Tensor]:
    """The loss L at β on n fresh samples per system (differentiable when the model's samples are),
    its estimates and the samples (detached); ``clip_kappa``: clip the gradient reaching each
    sample (appendix F); ``entropy_samples``: K of :func:`log_marginal_bound`."""
    x, z = model.generate(n, generator)
    if clip_kappa is not None and x.requires_grad:
        robust = clip_reference == "median"
        x.register_hook(lambda g: clip_per_sample(g, clip_kappa, sample_dims, robust))
    u, v = target.terms(x)
    log_q = log_marginal_bound(model, x, z, entropy_samples, generator)
    per_sample = beta * u.double() + v.double() + log_q
    loss = per_sample.mean()
    with torch.no_grad():
        est = Estimates(mean_u=float(u.double().mean()), loss=float(loss), entropy=float(-log_q.mean()),
                        u=u.detach().double().reshape(-1), log_w=(-per_sample).detach().reshape(-1))
    return loss, est, x.detach()


@dataclass
class TemperingState:
    """Where tempering stands: β (absolute), ln Z(β) (relative to nothing: absolute by importance
    sampling at β₀), optimizer steps done, steps at this β, the current Δβ_max and learning rate
    (halved by rollbacks), rollbacks so far, and recent losses for divergence detection."""

    beta: float
    log_z: float | None = None
    step: int = 0
    at_beta: int = 0
    final: int = 0
    dbeta_max: float = 0.0
    lr: float = 0.0
    kl: float | None = None
    rollbacks: int = 0
    recent: list[float] = field(default_factory=list)
    #: batches whose loss jumped but a fresh batch's did not: skipped, not rolled back
    outliers: int = 0


class ReverseKLTrainer:
    """Trains ``module`` (whose parameters the problem's models' samples depend on) on
    ``problem`` by the reverse-KL objective with tempering. ``sample_dims``: trailing dimensions of one state (for
    per-sample clipping; x is (B, n, …state)). ``directory``: checkpoints, log and plot."""

    def __init__(self, problem: ReverseKLProblem, module: torch.nn.Module, params: TemperingParams | None = None,
                 seed: int = 0, sample_dims: int = 1, directory: Path | None = None,
                 say: Callable[[str], None] | None = None,
                 monitor: Callable[[torch.Tensor], dict[str, float]] | None = None):
        self.problem, self.module = problem, module
        self.monitor = monitor
        self.beta_target = problem.beta
        self.p = params or TemperingParams()
        self.sample_dims = sample_dims
        self.directory = Path(directory) if directory is not None else None
        self.say = say or (lambda _msg: None)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=self.p.lr)
        self.state = TemperingState(beta=self.p.beta0 * self.beta_target, dbeta_max=self.p.dbeta_max, lr=self.p.lr)
        self.log = TrainingLog()
        self._good: dict[str, Any] | None = None
        self._sums: dict[str, float] = {}
        self._n = 0
        self.seconds = 0.0

    # ------------------------------------------------------------------ estimates
    def _batch(self, beta: float, clip: bool) -> tuple[torch.Tensor, Estimates, list[torch.Tensor]]:
        """The loss over every (model, target) pair the problem draws (weighted by their samples)."""
        kappa = self.p.clip_kappa if clip else None
        parts = [reverse_kl_batch(model, target, beta, self.p.samples, self.generator, kappa, self.sample_dims,
                                  self.p.clip_reference, self.p.entropy_samples)
                 for model, target in self.problem.draw(self.generator)]
        if len(parts) == 1:
            loss, est, x = parts[0]
            return loss, est, [x]
        sizes = torch.tensor([len(e.u) for _l, e, _x in parts], dtype=torch.float64)
        w = sizes / sizes.sum()
        loss = sum(wi * l for wi, (l, _e, _x) in zip(w, parts))
        u = torch.cat([e.u for _l, e, _x in parts])
        log_w = torch.cat([e.log_w for _l, e, _x in parts])
        est = Estimates(mean_u=float(u.mean()), loss=float(loss.detach()), entropy=float(sum(wi * e.entropy for wi, (_l, e, _x)
                                                                                    in zip(w, parts))),
                        u=u, log_w=log_w)
        return loss, est, [x for _l, _e, x in parts]

    def estimate(self, beta: float | None = None) -> Estimates:
        """Estimates at β (default: the current one) from a fresh batch, without gradients."""
        with torch.no_grad():
            return self._batch(self.state.beta if beta is None else beta, clip=False)[1]

    # ------------------------------------------------------------------ one optimizer step
    def _diverged(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return True
        recent = self.state.recent
        if len(recent) < 10:
            return False
        t = torch.tensor(recent, dtype=torch.float64)
        spread = max(float((t - t.median()).abs().median()), 1.0)  # in kT: noise below 1 kT is no signal
        return loss > float(t.median()) + self.p.divergence * spread

    def _snapshot(self) -> dict[str, Any]:
        return {"module": copy.deepcopy(self.module.state_dict()), "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "state": copy.deepcopy(self.state.__dict__)}

    def _rollback(self, why: str) -> None:
        s = self.state
        if s.rollbacks >= self.p.max_rollbacks or self._good is None:
            raise BackmapError(f"reverse_kl: training diverged ({why}) at β = {s.beta:.4g}, step {s.step}, after "
                               f"{s.rollbacks} rollbacks; lower reverse_kl.lr or reverse_kl.dbeta_max",
                               source=self.directory)
        good = self._good
        self.module.load_state_dict(good["module"])
        self.optimizer.load_state_dict(good["optimizer"])
        rollbacks = s.rollbacks + 1
        self.state = TemperingState(**copy.deepcopy(good["state"]))
        self.state.rollbacks = rollbacks
        self.state.lr *= 0.5
        self.state.dbeta_max *= 0.5
        for g in self.optimizer.param_groups:
            g["lr"] = self.state.lr
        self.say(f"reverse_kl: {why} at step {s.step}: rolled back to step {self.state.step} (β {self.state.beta:.4g}), "
                 f"learning rate {self.state.lr:.3g}, Δβ_max {self.state.dbeta_max:.3g}")

    def step(self) -> Estimates | None:
        """One optimizer step at the current β; None if it diverged and was rolled back."""
        s = self.state
        clip = s.beta < self.p.clip_until * self.beta_target
        self.optimizer.zero_grad()
        loss, est, xs = self._batch(s.beta, clip)
        if self._diverged(est.loss):
            if math.isfinite(est.loss) and not self._diverged(self.estimate().loss):
                # one batch's outlier (e.g. a rare overlap), not a model gone bad: skip its step
                s.outliers += 1
                return None
            self._rollback("the loss is not finite" if not math.isfinite(est.loss) else
                           f"the loss jumped to {est.loss:.4g}")
            return None
        loss.backward()
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        if not all(bool(torch.isfinite(g).all()) for g in grads):
            self._rollback("a gradient is not finite")
            return None
        self.optimizer.step()
        self.problem.observe(xs, self.generator)
        s.step += 1
        s.recent = (s.recent + [est.loss])[-50:]
        return est

    # ------------------------------------------------------------------ tempering
    def next_beta(self, est: Estimates) -> tuple[float, float]:
        """Algorithm 1: the next β and the relative KL increase c it was accepted with."""
        s, target = self.state, self.beta_target
        f, c = 1.0, math.inf
        for _ in range(self.p.max_shrinks):
            dbeta = min(f * s.dbeta_max * target, target - s.beta)
            c = relative_kl_increase(est, dbeta)
            if c <= self.p.c_max:
                break
            f *= self.p.shrink
        return s.beta + dbeta, c

    def _raise_beta(self) -> float | None:
        """The next β (Algorithm 1); None if the estimate was not finite (then rolled back)."""
        s = self.state
        est = self.estimate()
        if not (math.isfinite(est.loss) and bool(torch.isfinite(est.u).all())):
            self._rollback("the energies are not finite")
            return None
        new, c = self.next_beta(est)
        s.log_z = _logmeanexp(est.log_w) + log_z_ratio(est, new - s.beta)  # ln Z(β_{k+1}), for the log
        s.kl = kl_estimate(est)
        s.beta, s.at_beta = new, 0
        return c

    # ------------------------------------------------------------------ the loop
    @property
    def total(self) -> int:
        """An upper bound on the steps of a full run (tempering takes at most 1/Δβ_max·… increments;
        the progress bar uses the steps if every increment were Δβ_max)."""
        increments = math.ceil((1 - self.p.beta0) / self.p.dbeta_max)
        n = increments * self.p.steps_per_beta + self.p.final_steps
        return min(n, self.p.max_steps) if self.p.max_steps else n

    def run(self) -> dict[str, Any]:
        """Temper to the target β and train ``final_steps`` more there; resumes from the checkpoint."""
        if self.checkpoint_path is not None and self.checkpoint_path.is_file():
            self.load(self.checkpoint_path)
            self.say(f"reverse_kl: resumed from {self.checkpoint_path} at step {self.state.step}, β {self.state.beta:.4g}")
        self._good = self._snapshot()
        t0, seconds0 = time.perf_counter(), self.seconds
        last_c = math.nan
        target = self.beta_target
        with TrainingProgress(self.total, self.state.step, ("beta", "loss", "mean_u")) as bar:
            while not self._done():
                s = self.state
                at_target = s.beta >= target
                est = self.step()
                if est is None:
                    continue
                s.at_beta += 1
                if at_target:
                    s.final += 1
                self._accumulate(est)
                if not at_target and s.at_beta >= self.p.steps_per_beta:
                    c = self._raise_beta()
                    if c is None:
                        continue
                    last_c = c
                    self._good = self._snapshot()
                self.seconds = seconds0 + time.perf_counter() - t0
                if s.step % self.p.log_every == 0 or self._done():
                    row = self._row(last_c)
                    bar.status(row)
                    if not bar.enabled:
                        self.say("  ".join(f"{k} {row[k]:.4g}" for k in ("step", "beta", "loss", "mean_u", "kl", "u_forcefield",
                                                                   "u_restraint", "outside")
                                           if k in row))
                if self.p.checkpoint_every and s.step % self.p.checkpoint_every == 0:
                    self.save()
                    self._good = self._snapshot()  # the last good checkpoint (else, at the target β, the
                    # last increment: a late divergence threw away every final step)
                bar.advance()
        self.save()
        final = self.estimate()
        return {"steps": self.state.step, "beta": self.state.beta, "rollbacks": self.state.rollbacks,
                "outlier batches skipped": self.state.outliers,
                "final <U>": final.mean_u, "final entropy bound": final.entropy,
                "final KL estimate": kl_estimate(final), "train seconds": round(self.seconds, 1)}

    def _done(self) -> bool:
        s = self.state
        if self.p.max_steps is not None and s.step >= self.p.max_steps:
            return True
        return s.beta >= self.beta_target and s.final >= self.p.final_steps

    def _accumulate(self, est: Estimates) -> None:
        for k, v in (("loss", est.loss), ("mean_u", est.mean_u), ("entropy", est.entropy)):
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._n += 1

    def _row(self, c: float) -> dict[str, float]:
        s = self.state
        row = {"iteration": s.step, "step": s.step, "seconds": round(self.seconds, 2), "beta": s.beta,
               **{k: v / max(self._n, 1) for k, v in self._sums.items()}}
        if hasattr(self.problem, "log_stats"):  # the problem's own numbers (e.g. energy terms)
            row.update(self.problem.log_stats())
        if self.monitor is not None:
            with torch.no_grad():
                model = self.problem.draw(self.generator)[0][0]
                row.update(self.monitor(model.generate(self.p.samples, self.generator)[0]))
        if s.log_z is not None:
            row["kl"] = s.kl
            row["log_z"] = s.log_z
        if math.isfinite(c):
            row["relative_kl"] = c
        self._sums, self._n = {}, 0
        self.log.add(row)
        return row

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.directory is None else self.directory / "reverse_kl.pt"

    def _fingerprint(self) -> str:
        params = self.p.model_dump(mode="json", exclude={"max_steps", "log_every", "checkpoint_every"})
        for key, default in (("entropy_samples", 0), ("stereo_reference", None)):
            if key in params and params[key] == default:  # newer keys at their defaults: older checkpoints resume
                params.pop(key)
        return json.dumps({"params": params, "seed": self.seed, "beta": self.beta_target}, sort_keys=True)

    def save(self) -> None:
        path = self.checkpoint_path
        if path is None:
            return
        state = {"format": CHECKPOINT_FORMAT, "fingerprint": self._fingerprint(), "module": self.module.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "state": json.dumps(self.state.__dict__),
                 "generator": self.generator.get_state(), "log": json.dumps(self.log.rows), "seconds": self.seconds}
        if hasattr(self.problem, "state_dict"):  # e.g. an environment pool that moves with the model
            state["problem"] = self.problem.state_dict()
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        if self.log.rows:
            self.log.write_csv(path.parent / "reverse_kl_log.csv")
            self.plot(path.parent / "reverse_kl.png")

    def load(self, path: Path) -> None:
        state = read_checkpoint(path, "reverse-KL checkpoint")
        if state.get("format") != CHECKPOINT_FORMAT or state.get("fingerprint") != self._fingerprint():
            raise BackmapError("the reverse-KL checkpoint was made with other parameters, target or seed; remove it "
                               "to start over", source=path)
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.state = TemperingState(**json.loads(state["state"]))
        self.generator.set_state(state["generator"])
        self.log = TrainingLog(json.loads(state["log"]))
        self.seconds = state["seconds"]
        if "problem" in state and hasattr(self.problem, "load_state_dict"):
            self.problem.load_state_dict(state["problem"])

    def plot(self, path: Path) -> bool:
        """The log in four panels against steps: β, ⟨U⟩, the entropy bound, the KL bound and the
        relative KL increase c of each accepted increment."""
        if not self.log.rows:
            return False
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = (("beta", "β", "linear"), ("mean_u", "⟨U⟩", "symlog"), ("entropy", "entropy bound", "linear"),
                  ("kl", "KL bound", "symlog"), ("relative_kl", "relative KL increase c", "linear"))
        fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.2))
        for ax, (key, label, scale) in zip(axes, panels):
            pts = [(r["step"], r[key]) for r in self.log.rows if key in r]
            if pts:
                ax.plot(*zip(*pts), lw=1)
            ax.set_yscale(scale)
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("step")
        fig.suptitle(f"reverse-KL training ({self.state.step} steps, β = {self.state.beta:.4g})", fontsize=10)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
        plt.close(fig)
        return True
