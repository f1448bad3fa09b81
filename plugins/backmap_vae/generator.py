"""The ``vae`` generator: the equivariant generator's environment encoder and autoregressive
internal-coordinate decoder, with a latent variable per unit — encoder q(z | x, env), prior
P(z | env), decoder P(x | z, env) — so that all three densities are exact (docs/vae.md).

Why a latent on top of a good autoregressive decoder: the decoder alone factorizes a bead's
density atom by atom; z carries what the atoms share (a ring's tilt, a backbone's twist), which
is what makes whole-unit proposals acceptable to an exact Metropolis–Hastings test (Monroe &
Shen: the decoder's probabilistic model decides acceptance). Trained by the ELBO with the KL term
annealed in; usable by the ordinary forward pass + Gibbs sampler (z from the prior), and by the
``vae_mc`` refiner through :meth:`VAEGenerator.latent_model`.
"""
from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from backmap.api import BackmapError
from backmap.api.io import host_random, torch_threads
from backmap.api.refinement import JointLogDensity
from backmap.api.sampling import EnvironmentBatch
from backmap.api.icgen import EquivariantParams, InternalCoordinateGenerator, mlp, repeat_rows

STATE_FORMAT = 1
LOG_2PI = math.log(2 * math.pi)
#: per-atom internal-coordinate features the encoder q(z | x) reads
N_IC_FEATURES = 5


class VAEParams(EquivariantParams):
    latent: int = Field(8, ge=1, description="latent dimensions per unit (the paper compares 1 and 20)")
    kl_weight: float = Field(1.0, gt=0, description="weight of KL(q ‖ P) in the loss at the end of annealing "
                                                    "(1 = the ELBO)")
    kl_anneal: float = Field(0.3, ge=0, lt=1, description="fraction of training over which the KL weight rises "
                                                          "linearly from 0 (Monroe & Shen anneal 20–40 epochs)")
    rigid_anchors: bool = Field(
        False, description="hold the bond from a unit to the atom it is built on at the topology's length as the "
                           "equivariant generator does; false (default): sample its length, so that every rigid bond "
                           "between units is treated alike in vae_mc's target (a stiff spring; see docs/vae.md)")
    prior: Literal["conditional", "standard"] = Field(
        "conditional", description="P(z | env) as a Gaussian predicted from the environment, or N(0, I)")
    temperatures: tuple[float, float] | None = Field(
        None, description="data-free training only: learn exp(−U/k_BT) for every T in this range (K; it must hold "
                          "the train step's reverse_kl temperature), with T an input of the networks; backmap at "
                          "any T in it with the inference parameter 'temperature'")
    temperature: float | None = Field(
        None, gt=0, description="the temperature (K) a model trained over 'temperatures' samples at (default: its "
                                "reverse_kl training temperature)")

    @model_validator(mode="after")
    def _range(self):
        if self.temperatures is not None and not 0 < self.temperatures[0] < self.temperatures[1]:
            raise ValueError("temperatures must be [low, high] with 0 < low < high")
        return self


class LatentNets(torch.nn.Module):
    """q(z | x, env) from the unit's internal coordinates (per atom: its slot's embedding and its
    angle, dihedral and bond-length offset, pooled over atoms) and the environment context; and
    P(z | env) from the context alone. Both diagonal Gaussians."""

    def __init__(self, n_context: int, n_slots: int, latent: int, hidden: int, conditional_prior: bool):
        super().__init__()
        self.latent = latent
        self.slot = torch.nn.Embedding(n_slots, 16)
        self.atom = mlp(16 + N_IC_FEATURES, hidden, hidden)
        self.posterior = mlp(hidden + n_context, hidden, 2 * latent)
        self.prior = mlp(n_context, hidden // 2, 2 * latent) if conditional_prior else None
        with torch.no_grad():  # start near q = P = N(0, I)
            for last in (self.posterior[-1], *([self.prior[-1]] if self.prior is not None else [])):
                last.weight.mul_(0.01)
                last.bias.zero_()

    @staticmethod
    def _split(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = out.chunk(2, -1)
        return mean, log_std.clamp(-6.0, 2.0)

    def q(self, context: torch.Tensor, slot: torch.Tensor, ic_features: torch.Tensor, mask: torch.Tensor):
        per_atom = self.atom(torch.cat([self.slot(slot), ic_features], -1)) * mask[..., None]
        pooled = per_atom.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return self._split(self.posterior(torch.cat([pooled, context], -1)))

    def p(self, context: torch.Tensor):
        if self.prior is None:
            zero = context.new_zeros(context.shape[0], self.latent)
            return zero, zero
        return self._split(self.prior(context))


def normal_log_prob(z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Σ over the last axis of a diagonal Gaussian's log density."""
    u = (z - mean) * torch.exp(-log_std)
    return (-0.5 * u * u - log_std - 0.5 * LOG_2PI).sum(-1)


def gaussian_kl(mq, lq, mp, lp) -> torch.Tensor:
    """KL(N(mq, e^{2lq}) ‖ N(mp, e^{2lp})) summed over the last axis."""
    return (lp - lq + 0.5 * (torch.exp(2 * (lq - lp)) + ((mq - mp) * torch.exp(-lp)) ** 2) - 0.5).sum(-1)


class VAEGenerator(InternalCoordinateGenerator):
    name = "vae"
    summary = ("VAE on the equivariant generator: encoder q(z|x,env), prior P(z|env), autoregressive "
               "internal-coordinate decoder P(x|z,env) — exact densities for VAE Monte Carlo (vae_mc)")
    Params = VAEParams
    progress_columns = ("loss", "nll", "kl", "kl_weight")

    inference_params = InternalCoordinateGenerator.inference_params | {"temperature"}

    def __init__(self, params=None, environment=None):
        super().__init__(params, environment)
        self.latent_nets: LatentNets | None = None
        #: the reverse-KL training temperature (K) of a temperature-conditioned model, else None
        self.reference_temperature: float | None = None
        #: while fitting to a pool thermalized frame by frame at different temperatures: each
        #: training frame's temperature (K), the networks' temperature input for its units
        self.frame_temperatures: torch.Tensor | None = None

    def at_temperature(self, temperature: float, trained_at: float | None) -> dict:
        """A model trained over a range of temperatures takes T as its input; others widen their
        angles as the equivariant generator does."""
        if self.conditions_on_temperature:
            return {"temperature": temperature}
        return super().at_temperature(temperature, trained_at)

    @property
    def conditions_on_temperature(self) -> bool:
        return self.params.temperatures is not None

    def temperature_feature(self, temperature: float | torch.Tensor) -> torch.Tensor:
        """The networks' temperature input: 5 (T_ref/T − 1), i.e. β/β_ref − 1 scaled to O(1)
        over a ±20 % range; a model trained over ``temperatures`` refuses one outside it."""
        t = torch.as_tensor(temperature, dtype=torch.float32)
        self._check_temperature(float(t.min()), float(t.max()), "generator_params.temperature (or vae_mc's)")
        return 5.0 * (self.reference_temperature / t - 1.0)

    def _check_temperature(self, low: float, high: float, where: str) -> None:
        """Temperatures ``low``–``high`` (K) are ones this model was trained over, else an error naming ``where``."""
        if not self.conditions_on_temperature:
            raise BackmapError(f"{where}: this vae model learnt one temperature; only a model trained by reverse_kl "
                               "over 'temperatures' takes a temperature")
        lo, hi = self.params.temperatures
        if low < lo * (1 - 1e-6) or high > hi * (1 + 1e-6):
            shown = f"{low:g}" if low == high else f"{low:g}–{high:g}"
            raise BackmapError(f"{where}: {shown} K is outside the range this vae model was trained over "
                               f"({lo:g}–{hi:g} K, its parameter 'temperatures')")

    def for_inference(self, values: dict[str, Any], where: str = "generator_params") -> "VAEGenerator":
        """As the core's, and a ``temperature`` only for a model trained over a range that holds it."""
        out = super().for_inference(values, where)
        t = out.params.temperature
        if t is not None and t != self.params.temperature:
            self._check_temperature(t, t, f"{where}.temperature")
        return out

    def _encode(self, v: dict):
        """The encoder's scalars, with the temperature input appended for a temperature-
        conditioned model (``v["temperature"]`` per unit, else the ``temperature`` parameter)."""
        if "encoded" in v:
            return v["encoded"]
        scalars, vectors = super()._encode(v)
        if self.conditions_on_temperature:
            t = v.get("temperature")
            if t is None:
                t = torch.full((scalars.shape[0],), self.params.temperature or self.reference_temperature)
            scalars = torch.cat([scalars, self.temperature_feature(t)[:, None].to(scalars.dtype)], -1)
        return scalars, vectors

    def _view_sequences(self, seqs) -> dict:
        v = super()._view_sequences(seqs)
        if self.frame_temperatures is not None and self.conditions_on_temperature:
            v["temperature"] = self.frame_temperatures[seqs.frame]
        return v

    # ------------------------------------------------------------------ networks
    def _extra_context_width(self) -> int:
        return self.params.latent + int(self.conditions_on_temperature)

    def _decoder_context(self, scalars: torch.Tensor, v: dict) -> torch.Tensor:
        z = v.get("latent")
        if z is None or z.shape[0] != scalars.shape[0]:
            raise BackmapError("vae: the decoder needs one latent vector per unit and candidate")
        return torch.cat([scalars, z.to(scalars.dtype)], -1)

    def _build(self, layout: dict) -> None:
        super()._build(layout)
        p = self.params
        self.latent_nets = LatentNets(self.encoder.n_scalars + p.width + int(self.conditions_on_temperature),
                                      self.tables.n_slots, p.latent, p.hidden, p.prior == "conditional")

    def parameters(self):
        return [*super().parameters(), *self.latent_nets.parameters()]

    def _free_anchors(self) -> None:
        """Only bonds inside a unit stay rigid in the decoder (see ``rigid_anchors``)."""
        if not self.params.rigid_anchors:
            t = self.tables
            t.constrained &= t.triples[..., 0] < t.U

    def setup(self, data, seed: int) -> None:
        super().setup(data, seed)
        self._free_anchors()

    # ------------------------------------------------------------------ densities
    def _ic_features(self, v: dict):
        """Slots (B, T), IC features (B, T, 5) and mask of the reference placements ``v["targets"]``."""
        _codes, slot, _bond, rigid, (r, theta, phi), *_ = self._teacher(v)
        free = (~rigid).to(r.dtype)
        feats = torch.stack([torch.cos(theta), torch.sin(theta), torch.cos(phi), torch.sin(phi),
                             (r - self.r_ref[slot]) * 10 * free], -1)
        return slot, feats, v["target_mask"]

    def _posterior(self, v: dict, context: torch.Tensor):
        return self.latent_nets.q(context, *self._ic_features(v))

    def _terms(self, v: dict, generator: torch.Generator, loop=None):
        """Teacher-forced NLL per atom (B, T) with z drawn from q (reparameterized), the mask,
        and KL(q ‖ P) per unit (B,). With the training ``loop``, the noise is this process's rows
        of the whole batch's."""
        enc = self._encode(v)
        v = {**v, "encoded": enc}
        mq, lq = self._posterior(v, enc[0])
        mp, lp = self.latent_nets.p(enc[0])
        if loop is None:
            noise = host_random(torch.randn, mq.shape, generator=generator)
        else:
            noise = loop.local_randn(mq.shape, generator)
        z = mq + torch.exp(lq) * noise
        v["latent"] = z
        dist, (r, theta, phi), rigid = self._teacher_pass(v)
        lp_a, lp_d, lp_r = dist.log_prob(r, theta, phi)
        m = v["target_mask"].to(lp_a.dtype)
        nll = -(lp_a + lp_d + lp_r * (~rigid).to(lp_a.dtype)) * m
        return nll, m, gaussian_kl(mq, lq, mp, lp)

    # ------------------------------------------------------------------ training
    def _training_loss(self, v: dict, batch, loop) -> tuple[torch.Tensor, dict[str, float]]:
        """Negative ELBO per atom with the KL weight annealed in over ``kl_anneal`` of training."""
        p = self.params
        kl_weight = p.kl_weight * (min(1.0, batch.fraction / p.kl_anneal) if p.kl_anneal > 0 else 1.0)
        gen = torch.Generator().manual_seed(int(loop.np_rng.integers(2**62)))
        nll, m, kl = self._terms(v, gen, loop)
        n = m.sum().clamp(min=1)
        loss = (nll.sum() + kl_weight * kl.sum()) / n
        return loss, {"loss": float(loss.detach()), "nll": float(nll.sum().detach() / n),
                      "kl": float(kl.mean().detach()), "kl_weight": kl_weight}

    def fit(self, data, context) -> dict[str, Any]:
        if self.conditions_on_temperature and self.reference_temperature is None:
            raise BackmapError("generator.params.temperatures: a range of temperatures is learnt only without data "
                               "(steps.train.objective: reverse_kl); AA data hold one temperature")
        return super().fit(data, context)

    def fit_reverse_kl(self, data, system, options, context) -> dict[str, Any]:
        """Data-free training (docs/reverse-kl.md): the networks learn exp(−U/kT) under the CG
        restraint from the force field and the training CG frames (:mod:`backmap_vae.data_free`)."""
        from backmap.api.training import ReverseKLTrainer
        from backmap_vae.data_free import UnitProblem, data_free_pool, forcefield_reference_ics, pretrain_on_pool
        from backmap_vae.targets import UnitTargets

        summary: dict[str, Any] = {}
        if self.conditions_on_temperature:
            lo, hi = self.params.temperatures
            if not lo <= options.temperature <= hi:
                raise BackmapError(f"steps.train.reverse_kl.temperature: {options.temperature:g} K must lie in the "
                                   f"generator's temperatures [{lo:g}, {hi:g}]")
            self.reference_temperature = float(options.temperature)
        with torch_threads(self.params.threads):
            self.setup_networks(data, context.seed)
            self.theta_ref, self.theta_std, self.r_ref = forcefield_reference_ics(self, data.cg_topology,
                                                                                  options.temperature)
            self._free_anchors()
            self.bounded_ics = True
            train = data.train()
            targets = UnitTargets(system, self, data.channels, options.temperature, options.restraint,
                                  options.closure_stiffness, options.extent, options.constraints,
                                  who="steps.train (reverse_kl)")
            pool, temperatures = data_free_pool(self, targets, train, system, options, context)
            if temperatures is not None:
                summary["pool temperatures (K)"] = [round(float(t), 1) for t in temperatures]
            if options.pretrain_epochs:
                summary["pretraining"] = pretrain_on_pool(self, data, train, pool, options.pretrain_epochs, context,
                                                          temperatures)
            problem = UnitProblem(self, targets, train.cg, train.dimensions, options, pool)
            module = torch.nn.ModuleDict({"encoder": self.encoder, "head": self.head, "latent": self.latent_nets})
            trainer = ReverseKLTrainer(problem, module, options, seed=context.seed, sample_dims=2,
                                       directory=context.directory, say=context.say)
            summary.update(trainer.run())
        summary["parameters"] = self.n_parameters()
        return summary

    def nll(self, v: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Negative ELBO per atom (one latent draw per unit) — the validation loss."""
        nll, m, kl = self._terms(v, torch.Generator().manual_seed(0))
        n = m.sum().clamp(min=1)
        loss = (nll.sum() + kl.sum()) / n
        return loss, {"loss": float(loss.detach()), "nll": float(nll.sum().detach() / n), "kl": float(kl.mean())}

    def training_state(self) -> dict[str, Any]:
        return {**super().training_state(), "latent_nets": self.latent_nets.state_dict()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        super().load_training_state(state)
        self.latent_nets.load_state_dict(state["latent_nets"])

    # ------------------------------------------------------------------ inference
    def propose(self, batch: EnvironmentBatch, n_candidates: int, rng: np.random.Generator) -> torch.Tensor:
        """Candidates with z from the prior (recentred and projected as the equivariant generator's)."""
        self._require()
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        with torch.no_grad(), torch_threads(self.params.threads):
            model = self.latent_model(batch)
            return model.generate(n_candidates, gen, raw=False)[0]

    @property
    def has_log_prob(self) -> bool:
        return False  # the marginal is intractable; the joint densities are (latent_model)

    def log_prob(self, batch: EnvironmentBatch, positions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("vae: the marginal density p(x | env) is intractable; use latent_model(batch) "
                                  "for the exact joint densities (the vae_mc refiner does)")

    def latent_model(self, batch: EnvironmentBatch, temperature: float | torch.Tensor | None = None
                     ) -> "BoundLatentModel":
        """The VAE bound to a batch of unit environments (one table per batch): the
        :class:`backmap.refinement.latent_moves.LatentModel` the ``vae_mc`` refiner moves with.
        ``temperature`` (K; one, or one per unit): what a temperature-conditioned model samples at
        (others ignore it)."""
        self._require()
        view = self._view_batch(batch)
        if temperature is not None and self.conditions_on_temperature:
            view["temperature"] = torch.as_tensor(temperature, dtype=torch.float32).expand(view["keys"].shape[0])
        return BoundLatentModel(self, view)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["vae_format"] = STATE_FORMAT
        state["reference_temperature"] = self.reference_temperature
        state["latent_nets"] = {k: v.clone() for k, v in self.latent_nets.state_dict().items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("vae_format") != STATE_FORMAT:
            raise BackmapError(f"vae: unknown state format {state.get('vae_format')!r}")
        self.reference_temperature = state.get("reference_temperature")
        super().load_state_dict(state)
        self._free_anchors()
        self.latent_nets.load_state_dict(state["latent_nets"])
        self.latent_nets.eval()


class BoundLatentModel:
    """A :class:`VAEGenerator` with the environments of B units encoded once. States ``x`` are
    unit placements in the units' local frames (B, U, 3) or (B, n, U, 3), nm."""

    def __init__(self, generator: VAEGenerator, view: dict):
        self.g = generator
        self.v = view
        self.v["encoded"] = generator._encode(view)
        self.B = view["keys"].shape[0]
        self.prior_params = generator.latent_nets.p(self.v["encoded"][0])

    def _rows(self, n: int) -> dict:
        return repeat_rows(self.v, n) if n > 1 else dict(self.v)

    def encode(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """z ~ q(z | x, env) for placements (B, U, 3) → (B, D), or (B, n, U, 3) → (B, n, D)."""
        B, U = x.shape[0], x.shape[-2]
        n = x.shape[1] if x.ndim == 4 else 1
        v = self._rows(n)
        v["targets"] = x.reshape(B * n, U, 3).to(torch.float32)
        mq, lq = self.g._posterior(v, v["encoded"][0])
        z = mq + torch.exp(lq) * host_random(torch.randn, mq.shape, generator=generator)
        return z.view(B, n, -1) if x.ndim == 4 else z

    def generate(self, n: int, generator: torch.Generator, raw: bool = True, reparameterized: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """n pairs per unit: z ~ P(z | env), x ~ P(x | z, env) → x (B, n, U, 3), z (B, n, D). ``raw``
        (for Monte Carlo): the decoder's draws as they are; else recentred and projected.
        ``reparameterized`` (for reverse-KL training): x and z differentiable in the parameters."""
        mp, lp = self.prior_params
        z = mp[:, None] + torch.exp(lp)[:, None] * host_random(torch.randn, self.B, n, mp.shape[-1],
                                                               generator=generator)
        v = dict(self.v)
        v["latent"] = z.reshape(self.B * n, -1)
        return self.g._sample(v, n, generator, raw=raw, reparameterized=reparameterized), z

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> JointLogDensity:
        """ln q(z | x, env), ln P(z | env), ln P(x | z, env) of pairs x (B, n, U, 3), z (B, n, D)
        → each (B, n), float64 (the networks run in float32)."""
        B, n, U = x.shape[:3]
        v = self._rows(n)
        v["targets"] = x.reshape(B * n, U, 3).to(torch.float32)
        v["latent"] = z.reshape(B * n, -1).to(torch.float32)
        context = v["encoded"][0]
        mq, lq = self.g._posterior(v, context)
        mp, lp = (t.repeat_interleave(n, 0) for t in self.prior_params)
        zf = v["latent"]
        enc = normal_log_prob(zf.double(), mq.double(), lq.double())
        prior = normal_log_prob(zf.double(), mp.double(), lp.double())
        dec = self.g._log_density(v).double()
        return JointLogDensity(enc.view(B, n), prior.view(B, n), dec.view(B, n))
