"""The paper's test case for data-free training (Schöberl et al., seed 003, section 2.1): a Gaussian
VAE trained by reverse KL with tempering on the 2D double well U = x₁⁴/4 − 3x₁² + x₁ + x₂²/2 at
β = 1, without any sample of it; optionally its mixture weights calibrated by importance sampling
(``--calibrate N``); then VAE Monte Carlo chains (vae_mc's move) with the final model.

Prints one JSON line: the quadrature's moments, the trained model's, and the chains' (started from
the model's own samples, so the chains must find what the model misses), with the training cost.
Writes a figure of the histograms and the training log beside ``--out``.

    python benchmarks/double_well_reverse_kl.py --out runs/double-well     # ~2 min on one core
    python benchmarks/double_well_reverse_kl.py --prior-components 2 --final-steps 4000 --calibrate 100000 \
        --chains 100000 --moves 200 --out runs/double-well-calibrated      # the docs' table

``--quick``: the same code path (a two-component mixture prior, calibrated) with 200 samples per
step, Δβ_max 0.05, 2 steps per β, 20 final steps, 2 000 calibration draws and 1 000 chains of 10
moves (~10 s; far from converged).
"""
from __future__ import annotations

import argparse
import sys
import json
import time
from pathlib import Path

import numpy as np
import torch

from backmap.refinement.latent_moves import IndependentChains, vae_move
from backmap.threads import torch_threads
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the toy targets are test scaffolding
from toys import GaussianVAE, double_well_box_wall, double_well_energy, double_well_quadrature  # noqa: E402
from backmap.training.reverse_kl import FixedProblem, ReverseKLTrainer, Target, TemperingParams


class OneSystem:
    """The toy VAE as a model of one system (B = 1), as the trainer takes it."""

    def __init__(self, vae: GaussianVAE):
        self.vae = vae

    def generate(self, n, generator):
        return self.vae.generate(n, generator, batch=1)

    def log_joint(self, x, z):
        return self.vae.log_joint(x, z)

    def encode(self, x, generator):
        return self.vae.encode(x, generator)


def moments(x: np.ndarray) -> dict[str, float]:
    return {"mean_x1": float(x[:, 0].mean()), "std_x1": float(x[:, 0].std()), "minor_mass": float((x[:, 0] > 0).mean()),
            "mean_x2": float(x[:, 1].mean()), "std_x2": float(x[:, 1].std())}


def train(params: TemperingParams, seed: int, hidden: int, latent: int, out: Path | None,
          components: int = 1) -> tuple[GaussianVAE, dict]:
    torch.manual_seed(seed)
    vae = GaussianVAE(dim=2, latent=latent, hidden=hidden, prior_components=components)
    target = Target(double_well_energy, double_well_box_wall, 1.0)
    monitor = lambda x: {"minor_mass": float((x[..., 0] > 0).double().mean()), "std_x1": float(x[..., 0].std())}
    trainer = ReverseKLTrainer(FixedProblem(OneSystem(vae), target), vae, params, seed=seed, directory=out,
                               monitor=monitor)
    return vae, trainer.run()


def chains(vae: GaussianVAE, n_chains: int, moves: int, seed: int) -> tuple[np.ndarray, float]:
    """vae_mc moves from the model's own samples; the states after ``moves`` moves and the acceptance."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = vae.generate(n_chains, gen, batch=1)[0][0]
        acc = 0.0
        for _ in range(moves):
            r = vae_move(IndependentChains(vae, n_chains), x, lambda y: -double_well_energy(y), gen)
            x = r.x
            acc += float(r.accepted.double().mean())
    return x.numpy(), acc / moves


def figure(path: Path, exact_grid, exact_cdf, model: np.ndarray, chain: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    p = np.gradient(exact_cdf, exact_grid)
    for a, scale in zip(ax, ("linear", "log")):
        a.plot(exact_grid, p, "k-", lw=1.5, label="quadrature")
        bins = np.linspace(-4.5, 4.5, 91)
        a.hist(model[:, 0], bins, density=True, histtype="step", label="model (reverse KL)")
        a.hist(chain[:, 0], bins, density=True, histtype="step", label="+ VAE Monte Carlo")
        a.set_xlim(-4.5, 4.5)
        a.set_yscale(scale)
        a.set_xlabel("x₁")
    ax[1].set_ylim(1e-4, 2)
    ax[0].legend(fontsize=8)
    fig.suptitle("double well at β = 1, trained without data (seed 003)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="folder for the checkpoint, log, plots")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--latent", type=int, default=1)
    ap.add_argument("--prior-components", type=int, default=1, help="K > 1: a learned mixture prior")
    ap.add_argument("--samples", type=int, default=1000, help="J, samples per step (the paper: 1000)")
    ap.add_argument("--dbeta-max", type=float, default=1e-3, help="the paper: 1e-3")
    ap.add_argument("--steps-per-beta", type=int, default=10)
    ap.add_argument("--final-steps", type=int, default=500)
    ap.add_argument("--entropy-samples", type=int, default=0,
                    help="k > 0: the importance-weighted bound on ln q(x) with k extra encoder draws")
    ap.add_argument("--calibrate", type=int, default=0, metavar="N",
                    help="after training, set the mixture weights by importance sampling with N balanced draws "
                         "(GaussianVAE.calibrate_mixture; needs --prior-components > 1)")
    ap.add_argument("--chains", type=int, default=20000)
    ap.add_argument("--moves", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="smoke test: a short schedule, few samples and chains")
    a = ap.parse_args()
    if a.quick:
        a.prior_components, a.samples, a.dbeta_max, a.steps_per_beta, a.final_steps = 2, 200, 0.05, 2, 20
        a.calibrate, a.chains, a.moves = 2000, 1000, 10
    params = TemperingParams(samples=a.samples, dbeta_max=a.dbeta_max, steps_per_beta=a.steps_per_beta,
                             final_steps=a.final_steps, log_every=100, checkpoint_every=1000,
                             entropy_samples=a.entropy_samples)
    with torch_threads(1):
        t0 = time.process_time()
        vae, summary = train(params, a.seed, a.hidden, a.latent, a.out, a.prior_components)
        cpu = time.process_time() - t0
        with torch.no_grad():
            model = vae.generate(200_000, torch.Generator().manual_seed(a.seed + 1), batch=1)[0][0].numpy()
        calibrated = None
        if a.calibrate:
            t1 = time.process_time()
            weights = vae.calibrate_mixture(lambda x: -double_well_energy(x) - double_well_box_wall(x), a.calibrate,
                                            torch.Generator().manual_seed(a.seed + 3))
            with torch.no_grad():
                x = vae.generate(200_000, torch.Generator().manual_seed(a.seed + 4), batch=1)[0][0].numpy()
            calibrated = {**moments(x), "weights": weights, "cpu_seconds": round(time.process_time() - t1, 1)}
        chain, acceptance = chains(vae, a.chains, a.moves, a.seed + 2)
    exact, grid, cdf = double_well_quadrature()
    if a.out is not None:
        figure(a.out / "double_well.png", grid, cdf, model, chain)
    print(json.dumps({"benchmark": "double_well_reverse_kl", "exact": exact.__dict__, "model": moments(model),
                      "model_calibrated": calibrated,
                      "vae_mc": moments(chain), "vae_mc_acceptance": acceptance, "moves": a.moves,
                      "train_cpu_seconds": round(cpu, 1), "steps": summary["steps"], "rollbacks": summary["rollbacks"],
                      "params": params.model_dump(exclude_none=True), "hidden": a.hidden, "latent": a.latent,
                      "prior_components": a.prior_components}))


if __name__ == "__main__":
    main()
