"""The training log: one row every few iterations (losses, Wasserstein estimate, regularizer terms,
energies of generated vs reference atoms), written as CSV and plotted for the run report."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from backmap.system.io import atomic_path


class TrainingLog:
    """Rows of floats keyed by column name; missing entries are left empty in the CSV."""

    def __init__(self, rows: list[dict[str, float]] | None = None):
        self.rows: list[dict[str, float]] = list(rows or [])

    def add(self, row: dict[str, float]) -> None:
        self.rows.append(dict(row))

    def columns(self) -> list[str]:
        cols: list[str] = []
        for r in self.rows:
            cols += [k for k in r if k not in cols]
        return cols

    def write_csv(self, path: Path) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns())
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        with atomic_path(path) as tmp:
            tmp.write_text(buf.getvalue())

    def plot(self, path: Path) -> bool:
        """Losses, the Wasserstein estimate and energy terms against iterations; False if empty."""
        if not self.rows:
            return False
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        it = [r["iteration"] for r in self.rows]

        def series(key):
            pts = [(r["iteration"], r[key]) for r in self.rows if key in r]
            return zip(*pts) if pts else ((), ())

        energy = sorted({k[4:] for r in self.rows for k in r if k.startswith("gen_")})
        fig, axes = plt.subplots(1, 3 if energy else 2, figsize=(15 if energy else 10, 3.8))
        ax = axes[0]
        ax.plot(*series("wasserstein"), label="Wasserstein estimate")
        ax.plot(*series("critic_loss"), label="critic loss", alpha=0.7)
        ax.plot(*series("gp"), label="gradient penalty", alpha=0.7)
        ax.set_xlabel("iteration")
        ax.legend(fontsize=8)
        ax.set_title("critic")
        ax = axes[1]
        ax.plot(*series("generator_loss"), label="adversarial")
        regs = sorted({k for r in self.rows for k in r if k.startswith("reg_")})
        for k in regs:
            ax.plot(*series(k), label=k[4:])
        ax.set_xlabel("iteration")
        ax.legend(fontsize=8)
        ax.set_title("generator")
        if energy:
            ax = axes[2]
            for k, colour in zip(energy, plt.rcParams["axes.prop_cycle"].by_key()["color"]):
                x, y = series(f"gen_{k}")
                ax.plot(x, y, color=colour, label=f"{k} generated")
                x, y = series(f"ref_{k}")
                ax.plot(x, y, color=colour, ls="--", alpha=0.6, label=f"{k} reference")
            ax.set_yscale("symlog", linthresh=10)
            ax.set_xlabel("iteration")
            ax.set_ylabel("kJ/mol per bead")
            ax.legend(fontsize=7, ncol=2)
            ax.set_title("energies of the generated atoms")
        fig.suptitle(f"voxel GAN training ({int(it[-1])} iterations)")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
        plt.close(fig)
        return True
