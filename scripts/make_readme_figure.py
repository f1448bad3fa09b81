"""The README's picture: one frame of the shipped sPS melt (tests/data/sps, 568 K), CG beads and the
atoms the shipped equivariant model puts back, in a 1.2 nm slab.

    .venv/bin/python scripts/make_readme_figure.py    # -> docs/figures/sps-cg-to-aa.png (~20 s)

Deterministic: frame 0, seed 1, the model's own sampling settings."""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from backmap.engine.models import load_model  # noqa: E402
from backmap.system.pbc import Unwrapper  # noqa: E402
from backmap.engine.loaders import load_mapping, load_topology  # noqa: E402
from backmap.system.io import read_frames  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "sps"
OUT = REPO / "docs" / "figures" / "sps-cg-to-aa.png"
SLAB = 0.6  # nm either side of the box's middle plane


def main() -> None:
    model = load_model("sps-equivariant")
    topo = load_topology(model.topology)
    cg_top = load_mapping(model.mapping, topo).cg_topology(topo)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "aa.gro"
        subprocess.run([str(Path(sys.executable).parent / "backmap"), "apply", "--model", "sps-equivariant", "--cg",
                        str(DATA / "cg.gro"), "--traj", str(DATA / "cg.xtc"), "--frames", "0", "--seed", "1",
                        "--out", str(out)], check=True, capture_output=True)
        aa = next(iter(read_frames(out, topo.n_atoms)))
    cg = next(iter(read_frames(DATA / "cg.xtc", cg_top.n_beads, [0])))
    x = Unwrapper(topo)(aa.positions, aa.dimensions)
    box = aa.dimensions[:3] / 10 if aa.dimensions[0] > 20 else aa.dimensions[:3]
    mid = box[2] / 2
    wrap = lambda p: p - np.floor(p / box) * box  # noqa: E731
    xa, xc = wrap(x), wrap(cg.positions)
    fig, axes = plt.subplots(2, 1, figsize=(9, 2 * 9 * box[1] / box[0] + 1.4), dpi=85)
    types = np.asarray(cg_top.bead_types)
    keep = np.abs(xc[:, 2] - mid) < SLAB
    for t, colour in zip(sorted(set(types)), ("#d62728", "#1f77b4", "#2ca02c", "#9467bd")):
        m = keep & (types == t)
        axes[0].scatter(xc[m, 0], xc[m, 1], s=60, c=colour, label=f"bead {t}", edgecolors="k", linewidths=0.3)
    elements = np.concatenate([np.tile(b.moltype.elements, b.count) for b in topo.blocks]).astype(str)
    inside = np.abs(xa[:, 2] - mid) < SLAB
    for block in topo.blocks:
        bonds = block.global_rows(block.moltype.bonds)
        for i, j in bonds:
            if inside[i] and inside[j] and np.linalg.norm(xa[i, :2] - xa[j, :2]) < 0.3:
                axes[1].plot(xa[[i, j], 0], xa[[i, j], 1], c="0.35", lw=0.6, zorder=1)
    for element, colour, size in (("C", "0.2", 6), ("H", "0.75", 2)):
        m = inside & (elements == element)
        axes[1].scatter(xa[m, 0], xa[m, 1], s=size, c=colour, zorder=2, label=element)
    for ax, title in zip(axes, ("CG input: a backbone bead (B) and a ring bead (S) per monomer",
                                  "backmapped by the shipped equivariant model (generator alone)")):
        ax.set_xlim(0, box[0])
        ax.set_ylim(0, box[1])
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("y (nm)")
    axes[1].set_xlabel(f"x (nm); atoms and beads within {SLAB} nm of the box's middle plane")
    axes[0].legend(fontsize=7, loc="upper right")
    fig.suptitle("syndiotactic polystyrene melt, 568 K: CG → AA without minimization", fontsize=11)
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
