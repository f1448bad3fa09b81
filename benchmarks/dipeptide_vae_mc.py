"""VAE Monte Carlo of alanine dipeptide in vacuum (Monroe & Shen 2022, Table 2 and Fig. 8).

    .venv/bin/python benchmarks/dipeptide_vae_mc.py [--quick] [--latents 1 20] [--epochs 30]
        [--hidden 256] [--chains 1000] [--moves 1000] [--temperatures 300 400 200] [--reuse]

Trains a :class:`backmap_vae.molecule.MoleculeVAE` (BAT coordinates, autoregressive decoder with
von Mises mixtures for torsions) per latent size on the 100 ns MD cache (``data/dipeptide``, made
by ``scripts/make_dipeptide_data.sh``: 100 000 frames at 1 ps; 5 % held out for validation), then
runs exact VAE Monte Carlo (``backmap.refinement.latent_moves.vae_move``, eq. 9) with many parallel
chains started from random MD frames, target ln π(q) = −βU(x(q)) + ln J(q) (U: backmap's
ForceField, equal to OpenMM NoCutoff). Reports per latent size and temperature: validation loss
(−ELBO, reconstruction, KL), acceptance f_acc, Jensen–Shannon divergences (bits) of the φ, ψ and
(φ, ψ) histograms (36 bins per angle) of the chains and of the raw model against MD, with noise
floors, and ⟨U⟩. Temperatures other than 300 K reuse the 300 K model (Fig. 8); they are compared
with MD at that temperature when ``data/dipeptide-<T>K/traj.xtc`` exists (``scripts/dipeptide_md.py
md --temperature T``), otherwise only acceptance and ⟨U⟩ are reported.

One JSON line per (latent, temperature), a markdown table, figures docs/figures/vae-dipeptide-*.png.
``--quick``: the committed 2 ns data, small model, few chains and moves (a smoke test, ~20 CPU-s),
ending with one JSON line of the acceptances.
Models are saved to ``--out`` (runs/ is not committed); ``--reuse`` loads them instead of training.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from backmap.constants import BOLTZMANN as K_B  # kJ/mol/K

REPO = Path(__file__).resolve().parent.parent
PAPER = {1: {"f_acc": 0.14, "loss": -52.3, "recon": -53.3, "kl": 1.0},
         20: {"f_acc": 0.12, "loss": -52.0, "recon": -58.2, "kl": 6.2}}
BINS = 36


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ histograms
def hist1(a: np.ndarray) -> np.ndarray:
    return np.histogram(a, BINS, (-math.pi, math.pi))[0].astype(float)


def hist2(phi: np.ndarray, psi: np.ndarray) -> np.ndarray:
    return np.histogram2d(phi, psi, BINS, [[-math.pi, math.pi]] * 2)[0].astype(float)


def jsd(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon divergence (bits) of two histograms (any shape, unnormalized)."""
    p, q = p.ravel() / p.sum(), q.ravel() / q.sum()
    m = 0.5 * (p + q)

    def kl(a):
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / m[nz])).sum())

    return 0.5 * kl(p) + 0.5 * kl(q)


def jsds(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    return {"phi": jsd(hist1(a[0]), hist1(b[0])), "psi": jsd(hist1(a[1]), hist1(b[1])),
            "phi_psi": jsd(hist2(*a), hist2(*b))}


def iid_floor(ref: tuple[np.ndarray, np.ndarray], n: int, rng: np.random.Generator, repeats: int = 5
              ) -> dict[str, dict[str, float]]:
    """Finite-sample JSDs for n independent draws from the reference histograms: two such sets
    against each other ("two_sets") and one against the reference ("vs_ref"), mean of repeats."""
    h2 = hist2(*ref)
    p2 = h2.ravel() / h2.sum()
    out = {"two_sets": {"phi": [], "psi": [], "phi_psi": []}, "vs_ref": {"phi": [], "psi": [], "phi_psi": []}}
    for _ in range(repeats):
        a, b = (rng.multinomial(n, p2).reshape(h2.shape).astype(float) for _ in range(2))
        for key, x, y in (("two_sets", a, b), ("vs_ref", a, h2)):
            out[key]["phi"].append(jsd(x.sum(1), y.sum(1)))
            out[key]["psi"].append(jsd(x.sum(0), y.sum(0)))
            out[key]["phi_psi"].append(jsd(x, y))
    return {k: {kk: float(np.mean(vv)) for kk, vv in v.items()} for k, v in out.items()}


def basin(phi: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """0 C7eq/PII, 1 C5, 2 alphaR, 3 phi > 0, 4 other (scripts/dipeptide_md.py's partition)."""
    ph, ps = np.degrees(phi), np.degrees(psi)
    ph = np.where(ph >= 120, ph - 360, ph)
    lab = np.full(ph.shape, 4)
    left = ph < 0
    lab[left & (ps >= 0)] = 0
    lab[left & (ph < -120) & ((ps >= 120) | (ps < -150))] = 1
    lab[left & (ps < 0) & (ps >= -120)] = 2
    lab[~left] = 3
    return lab


def block_sem(a: np.ndarray, blocks: int = 50) -> float:
    """Standard error of the mean of a correlated series from block averages."""
    m = np.array([b.mean() for b in np.array_split(a, blocks)])
    return float(m.std(ddof=1) / math.sqrt(blocks))


# ------------------------------------------------------------------------------ system
class System:
    def __init__(self, top_path: Path):
        from backmap.engine.loaders import load_topology
        from backmap.forcefield import ForceField
        from backmap.forcefield.settings import NonbondedSettings
        from backmap_vae.molecule import ZMatrix

        self.topology = load_topology(top_path)
        (self.moltype,) = self.topology.moltypes.values()
        self.zmatrix = ZMatrix.from_topology(self.moltype)
        self.ff = ForceField(self.topology, NonbondedSettings(rvdw=2.0, rcoulomb=2.0, coulomb="reaction-field",
                                                              epsilon_rf=1, vdw_modifier="none"), dtype=torch.float64)
        find = self.moltype.find_atom
        self.dihedral_atoms = {"phi": [find(1, "ACE", "C"), find(2, "ALA", "N"), find(2, "ALA", "CA"),
                                       find(2, "ALA", "C")],
                               "psi": [find(2, "ALA", "N"), find(2, "ALA", "CA"), find(2, "ALA", "C"),
                                       find(3, "NME", "N")]}
        self._all = torch.arange(self.moltype.n_atoms)[None]

    def energy(self, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """U (M,) kJ/mol of Cartesian (M, N, 3): the whole molecule as one group of
        ForceField.group_energies (vectorized over configurations; = ForceField.energy, checked
        by :meth:`check_energy`)."""
        return torch.cat([self.ff.group_energies(x[s:s + chunk], None, self._all)[:, 0].detach()
                          for s in range(0, len(x), chunk)])

    def check_energy(self, x: torch.Tensor) -> float:
        ref = self.ff.energy(x, None).total
        return float((self.energy(x) - ref).abs().max())

    def phi_psi(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        from backmap_vae.molecule import dihedral

        out = []
        for key in ("phi", "psi"):
            a = self.dihedral_atoms[key]
            out.append(dihedral(*(x[..., i, :] for i in a)).numpy())
        return out[0], out[1]


def run_chains(system, model, q0: torch.Tensor, beta: float, moves: int, save_every: int, seed: int) -> dict:
    from backmap.refinement.latent_moves import vae_move
    from backmap_vae.molecule import MoleculeTarget

    B = len(q0)
    gen = torch.Generator().manual_seed(seed)
    target = MoleculeTarget(system.zmatrix, system.energy, beta, memory=True)
    chains = model.for_chains(B)
    state = q0.clone()
    accepted = invalid = neg_inf = 0
    saved = []
    t0 = time.perf_counter()
    for m in range(moves):
        res = vae_move(chains, state, target, gen)
        accepted += int(res.accepted.sum())
        invalid += int(res.invalid.sum())
        neg_inf += int(torch.isneginf(res.log_ratio).sum())
        state = res.x
        if (m + 1) % save_every == 0:
            saved.append(state.clone())
        if (m + 1) % max(1, moves // 10) == 0:
            log(f"    move {m + 1}/{moves}: f_acc {accepted / ((m + 1) * B):.4f}  {time.perf_counter() - t0:.0f} s")
    seconds = time.perf_counter() - t0
    traj = torch.stack(saved, 1)  # (B, S, D)
    x = system.zmatrix.x_from_q(traj.reshape(-1, traj.shape[-1]))
    u = system.energy(x).reshape(B, -1).numpy()
    phi, psi = system.phi_psi(x)
    return {"f_acc": accepted / (moves * B), "invalid": invalid, "out_of_domain": neg_inf, "seconds": seconds,
            "phi": phi.reshape(B, -1), "psi": psi.reshape(B, -1), "U": u, "attempts": moves * B, "q": traj}


def model_samples(system, model, n: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    us, phis, psis = [], [], []
    for s in range(0, n, 5000):
        q, _ = model.generate(min(5000, n - s), gen)
        x = system.zmatrix.x_from_q(q[0])
        r, th, _ = system.zmatrix.unpack(q[0])
        ok = torch.isfinite(system.zmatrix.log_jacobian(r, th))
        us.append(system.energy(x)[ok].numpy())
        ph, ps = system.phi_psi(x)
        phis.append(ph)
        psis.append(ps)
    return {"phi": np.concatenate(phis), "psi": np.concatenate(psis), "U": np.concatenate(us)}


# ------------------------------------------------------------------------------ figures
def free_energy_2d(phi, psi):
    h = hist2(phi, psi)
    with np.errstate(divide="ignore"):
        f = -np.log(h / h.sum())
    return f - f[np.isfinite(f)].min()


def plot_fes(panels: list[tuple[str, tuple[np.ndarray, np.ndarray]]], path: Path, title: str, cols: int = 3) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(panels)
    cols = min(n, cols)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols + 0.8, 3.6 * rows), squeeze=False)
    fig.subplots_adjust(hspace=0.4, wspace=0.4)
    ext = [-180, 180, -180, 180]
    im = None
    for ax, (name, (phi, psi)) in zip(axes.flat, panels):
        f = free_energy_2d(phi, psi)
        im = ax.imshow(np.where(np.isfinite(f), f, np.nan).T, origin="lower", extent=ext, vmin=0, vmax=10,
                       cmap="viridis", aspect="equal")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("φ (deg)")
        ax.set_ylabel("ψ (deg)")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), label="F / kT")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_hist(curves: list[tuple[str, tuple[np.ndarray, np.ndarray], dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    centres = np.degrees(np.linspace(-math.pi, math.pi, BINS + 1)[:-1] + math.pi / BINS)
    for name, (phi, psi), style in curves:
        for ax, a in zip(axes, (phi, psi)):
            h = hist1(a)
            with np.errstate(divide="ignore"):
                f = -np.log(h / h.sum())
            ax.plot(centres, f - np.nanmin(f[np.isfinite(f)]), label=name, **style)
    for ax, lab in zip(axes, ("φ", "ψ")):
        ax.set_xlabel(f"{lab} (deg)")
        ax.set_ylabel("F / kT")
        ax.set_xlim(-180, 180)
        ax.set_ylim(0, 12)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_training(histories: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, (latent, h) in enumerate(histories.items()):
        ep = h["epoch"]
        ax.plot(ep, h["train_loss"], color=f"C{i}", lw=1, ls=":", label=f"D_l={latent} train (KL annealed)")
        ax.plot(ep, [v.get("loss", np.nan) for v in h["val"]], color=f"C{i}", lw=1.5, label=f"D_l={latent} validation")
    lo = min(min(v.get("loss", np.inf) for v in h["val"]) for h in histories.values())
    ax.set_ylim(lo - 2, lo + 15)
    ax.set_xlabel("epoch")
    ax.set_ylabel("−ELBO (nats per configuration, nm/rad)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------ main
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--latents", type=int, nargs="+", default=[1, 20])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--components", type=int, default=4, help="von Mises components per torsion (paper: 1)")
    ap.add_argument("--no-skip", action="store_true", help="ablation: no linear skip connection q_<i -> outputs")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--train-frames", type=int, default=100000, help="MD frames used (evenly spaced)")
    ap.add_argument("--chains", type=int, default=1000)
    ap.add_argument("--moves", type=int, default=1000)
    ap.add_argument("--save-every", type=int, default=10)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[300.0, 400.0, 200.0])
    ap.add_argument("--other-moves", type=int, default=None, help="moves at T != 300 K (default: --moves)")
    ap.add_argument("--other-latents", type=int, nargs="*", default=[1], help="latent sizes run at T != 300 K")
    ap.add_argument("--model-samples", type=int, default=100000)
    ap.add_argument("--start", choices=["md-300", "md-T"], default="md-300",
                    help="chains at T != 300 K start from 300 K MD frames (the paper) or MD frames at T")
    ap.add_argument("--tag", default="", help="suffix of the figure names (e.g. for a second run)")
    ap.add_argument("--md-dir", default=str(REPO / "data" / "dipeptide"))
    ap.add_argument("--out", default=str(REPO / "runs" / "dipeptide-vae"))
    ap.add_argument("--figures", default=str(REPO / "docs" / "figures"))
    ap.add_argument("--reuse", action="store_true", help="load saved models instead of training")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from backmap.system.io import read_frames
    from backmap_vae.molecule import MoleculeVAE

    md_dir = Path(args.md_dir)
    if args.quick:
        md_dir = REPO / "tests" / "data" / "dipeptide"
        args.hidden, args.epochs, args.chains, args.moves = 64, 15, 100, 40
        args.save_every, args.model_samples, args.other_moves = 4, 2000, 20
        args.out = args.out + "-quick"
        args.figures = args.out
    out, figs = Path(args.out), Path(args.figures)
    out.mkdir(parents=True, exist_ok=True)
    figs.mkdir(parents=True, exist_ok=True)
    system = System(REPO / "tests" / "data" / "dipeptide" / "topol.top")
    zm = system.zmatrix

    t0 = time.perf_counter()
    x_md = torch.as_tensor(np.stack([f.positions for f in read_frames(md_dir / "traj.xtc")]))
    e_md = np.loadtxt(md_dir / "energies.csv", delimiter=",", skiprows=1)[:, 1]
    log(f"read {len(x_md)} MD frames in {time.perf_counter() - t0:.1f} s")
    err = system.check_energy(x_md[:: max(1, len(x_md) // 200)][:200])
    log(f"group_energies vs ForceField.energy: max |Δ| {err:.2e} kJ/mol")
    if err > 1e-8:
        raise SystemExit("energy check failed")
    q_md = zm.q_from_x(x_md)
    ref = system.phi_psi(x_md)
    rng = np.random.default_rng(args.seed)
    half = len(x_md) // 2
    md_stats = {"frames": len(x_md), "U_mean": float(e_md.mean()), "U_sem": block_sem(e_md),
                "halves_jsd": jsds((ref[0][:half], ref[1][:half]), (ref[0][half:], ref[1][half:])),
                "basins": np.bincount(basin(*ref), minlength=5).tolist()}
    # the energy of the frames as stored (xtc precision, H bonds at b0 after the round trip)
    u_rt = system.energy(zm.x_from_q(q_md[:: max(1, len(q_md) // 5000)])).numpy()
    md_stats["U_mean_roundtrip_xtc"] = float(u_rt.mean())
    log(f"MD: <U> {md_stats['U_mean']:.2f} ± {md_stats['U_sem']:.2f} (OpenMM, full precision); "
        f"{md_stats['U_mean_roundtrip_xtc']:.2f} from xtc frames; halves JSD {md_stats['halves_jsd']}")
    train_idx = np.linspace(0, len(q_md) - 1, min(args.train_frames, len(q_md))).round().astype(int)

    results, chains_out, samples_out = [], {}, {}
    models = {}
    for latent in args.latents:
        path = out / f"model-latent{latent}.pt"
        torch.manual_seed(args.seed + latent)
        model = MoleculeVAE(zm, latent=latent, hidden=args.hidden, components=args.components, skip=not args.no_skip)
        if args.reuse and path.exists():
            state = torch.load(path)
            model.load_state_dict(state["model"])
            hist = state["history"]
            log(f"latent {latent}: loaded {path}")
        else:
            log(f"latent {latent}: training on {len(train_idx)} frames, {args.epochs} epochs")
            hist = model.fit(q_md[train_idx], epochs=args.epochs, batch=args.batch, lr=args.lr, seed=args.seed,
                             log=lambda s: log("  " + s))
            torch.save({"model": model.state_dict(), "history": hist, "args": vars(args)}, path)
        models[latent] = (model, hist)

    for latent, (model, hist) in models.items():
        for T in args.temperatures:
            if T != 300.0 and latent not in args.other_latents:
                continue
            moves = args.moves if T == 300.0 else (args.other_moves or args.moves)
            beta = 1.0 / (K_B * T)
            tdir = md_dir.parent / f"{md_dir.name}-{T:g}K"
            md_t = None
            if T != 300.0 and (tdir / "traj.xtc").exists():
                md_t = torch.as_tensor(np.stack([f.positions for f in read_frames(tdir / "traj.xtc")]))
            pool = zm.q_from_x(md_t) if (args.start == "md-T" and md_t is not None) else q_md
            start = torch.as_tensor(rng.choice(len(pool), args.chains, replace=False))
            log(f"latent {latent}, {T:g} K: {args.chains} chains x {moves} moves, from "
                f"{'MD at this temperature' if pool is not q_md else 'MD at 300 K'}")
            mc = run_chains(system, model, pool[start], beta, moves, args.save_every, args.seed + 7 * latent + int(T))
            row = {"latent": latent, "temperature": T, "chains": args.chains, "moves": moves,
                   "start": "MD 300 K" if pool is q_md else f"MD {T:g} K",
                   "attempts": mc["attempts"], "f_acc": mc["f_acc"], "invalid": mc["invalid"],
                   "out_of_domain": mc["out_of_domain"], "mc_seconds": round(mc["seconds"], 1),
                   "paper_f_acc": PAPER.get(latent, {}).get("f_acc") if T == 300.0 else None,
                   "train": {"epochs": len(hist["epoch"]), "n_train": hist["n_train"], "n_val": hist["n_val"],
                             "seconds": round(hist["seconds"][-1], 1), **hist.get("final_val", {}),
                             # the paper's BAT lengths are in Å: ln p(Å) = ln p(nm) − ln 10 per free bond
                             "loss_angstrom_units": hist.get("final_val", {}).get("loss", math.nan)
                             + len(zm.free_bonds) * math.log(10),
                             "paper": PAPER.get(latent)}}
            np.savez_compressed(out / f"chains-latent{latent}-{T:g}K{'-' + args.tag if args.tag else ''}.npz", q=mc["q"].numpy().astype(np.float32),
                                U=mc["U"], start=start.numpy())
            mc_pp = (mc["phi"].ravel(), mc["psi"].ravel())
            # drift: <U> over the first and the last fifth of the saved states of every chain
            S = mc["U"].shape[1]
            row["U_mc_first_fifth"] = float(mc["U"][:, :max(1, S // 5)].mean())
            row["U_mc_last_fifth"] = float(mc["U"][:, -max(1, S // 5):].mean())
            n = len(mc_pp[0])
            row["mc_samples"] = n
            row["U_mc"] = float(mc["U"].mean())
            row["U_mc_sem"] = float(mc["U"].mean(1).std(ddof=1) / math.sqrt(len(mc["U"])))
            lab = basin(mc["phi"], mc["psi"])
            row["mc_basin_changes_per_save"] = float((np.diff(lab, axis=1) != 0).mean())
            row["mc_basins"] = np.bincount(lab.ravel(), minlength=5).tolist()
            if T == 300.0:
                raw = model_samples(system, model, args.model_samples, args.seed + 11 * latent)
                samples_out[latent] = raw
                chains_out[latent] = mc_pp
                row["U_model"] = float(raw["U"].mean())
                row["U_model_median"] = float(np.median(raw["U"]))
                row["U_md_median"] = float(np.median(e_md))
                row["U_mc_median"] = float(np.median(mc["U"]))
                row["U_md"], row["U_md_sem"] = md_stats["U_mean"], md_stats["U_sem"]
                row["jsd_mc_vs_md"] = jsds(mc_pp, ref)
                row["jsd_model_vs_md"] = jsds((raw["phi"], raw["psi"]), ref)
                row["jsd_md_halves"] = md_stats["halves_jsd"]
                row["jsd_iid_floor"] = iid_floor(ref, n, rng)
                row["md_basin_changes_per_10ps"] = float((np.diff(basin(*ref)[::args.save_every]) != 0).mean())
            else:
                if md_t is not None:
                    xt = md_t
                    et = np.loadtxt(tdir / "energies.csv", delimiter=",", skiprows=1)[:, 1]
                    ref_t = system.phi_psi(xt)
                    h = len(xt) // 2
                    row["md_T_frames"] = len(xt)
                    row["U_md"], row["U_md_sem"] = float(et.mean()), block_sem(et)
                    row["jsd_mc_vs_md"] = jsds(mc_pp, ref_t)
                    row["jsd_md_halves"] = jsds((ref_t[0][:h], ref_t[1][:h]), (ref_t[0][h:], ref_t[1][h:]))
                    row["jsd_iid_floor"] = iid_floor(ref_t, n, rng)
                    row["jsd_md300_vs_mdT"] = jsds(ref, ref_t)
                    chains_out[(latent, T)] = (mc_pp, ref_t)
                else:
                    chains_out[(latent, T)] = (mc_pp, None)
            print(json.dumps(row), flush=True)
            results.append(row)

    # ---------------------------------------------------------------- table
    print("\n| D_l | T (K) | f_acc (paper) | val loss / recon / KL (nats, nm) | loss in Å units (paper) | "
          "JSD φ / ψ / (φ,ψ) MC vs MD | raw model vs MD | iid floor (n vs MD) | MD halves | ⟨U⟩ MC | ⟨U⟩ MD | "
          "⟨U⟩ raw model |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")

    def f3(d):
        return " / ".join(f"{d[k]:.4f}" for k in ("phi", "psi", "phi_psi")) if d else "–"

    for r in results:
        tr = r["train"]
        pap = r["train"]["paper"] or {}
        print(f"| {r['latent']} | {r['temperature']:g} | {r['f_acc']:.3f}"
              + (f" ({r['paper_f_acc']})" if r["paper_f_acc"] else "") + " | "
              + f"{tr.get('loss', math.nan):.1f} / {tr.get('recon', math.nan):.1f} / {tr.get('kl', math.nan):.2f} | "
              + f"{tr['loss_angstrom_units']:.1f} ({pap.get('loss', '–')}) | {f3(r.get('jsd_mc_vs_md'))} | "
              + f"{f3(r.get('jsd_model_vs_md'))} | {f3((r.get('jsd_iid_floor') or {}).get('vs_ref'))} | "
              + f"{f3(r.get('jsd_md_halves'))} | {r['U_mc']:.2f} ± {r['U_mc_sem']:.2f} | "
              + (f"{r['U_md']:.2f} ± {r['U_md_sem']:.2f}" if "U_md" in r else "–") + " | "
              + (f"{r['U_model']:.1f} (median {r['U_model_median']:.1f})" if "U_model" in r else "–") + " |")

    # ---------------------------------------------------------------- figures
    prefix = "vae-dipeptide" + (f"-{args.tag}" if args.tag else "")
    panels = [("MD 300 K (reference)", ref)]
    for latent in models:
        if latent in chains_out:
            panels.append((f"VAE-MC, D_l = {latent}", chains_out[latent]))
            panels.append((f"raw model, D_l = {latent} (no MC)", (samples_out[latent]["phi"],
                                                                 samples_out[latent]["psi"])))
    # MD, then per latent MC and raw side by side: MD | MC 1 | raw 1 ; (MD) | MC 20 | raw 20
    if len(models) > 1:
        panels = panels[:3] + [("MD 300 K (reference)", ref)] + panels[3:]
    plot_fes(panels, figs / f"{prefix}-fes.png", "alanine dipeptide, vacuum, 300 K: free energy in (φ, ψ)")
    styles = [{"color": "C1"}, {"color": "C2"}, {"color": "C3"}, {"color": "C4"}]
    curves = [("MD 100 ns" if not args.quick else "MD 2 ns", ref, {"color": "k", "lw": 2, "ls": "--"})]
    for i, latent in enumerate(models):
        if latent in chains_out:
            curves.append((f"VAE-MC D_l={latent}", chains_out[latent], styles[i % 4] | {"lw": 1.5}))
            curves.append((f"raw model D_l={latent}", (samples_out[latent]["phi"], samples_out[latent]["psi"]),
                           styles[i % 4] | {"lw": 1, "ls": ":"}))
    plot_hist(curves, figs / f"{prefix}-hist.png", "φ and ψ free energies, 300 K")
    t_panels = []
    for key, val in chains_out.items():
        if isinstance(key, tuple):
            (latent, T), (mc_pp, ref_t) = key, val
            if ref_t is not None:
                t_panels.append((f"MD {T:g} K", ref_t))
            t_panels.append((f"VAE-MC {T:g} K, D_l = {latent} (trained at 300 K)", mc_pp))
    if t_panels:
        plot_fes(t_panels, figs / f"{prefix}-temperatures.png", "the 300 K model at other temperatures",
                 cols=2 if any(p[0].startswith("MD") for p in t_panels) else 3)
    plot_training({k: v[1] for k, v in models.items()}, figs / f"{prefix}-training.png")
    log(f"figures in {figs}")
    if args.quick:  # the smoke test ends with one JSON line (the table above is for reading)
        print(json.dumps({"benchmark": "dipeptide_vae_mc", "quick": True,
                          "f_acc": {f"{r['latent']}@{r['temperature']:g}K": round(r["f_acc"], 4) for r in results}}))


if __name__ == "__main__":
    main()
