"""The ``prepare`` step: (CG, AA) training pairs, cached by a hash of the inputs."""
from __future__ import annotations

import json
import time

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from backmap.api import BackmapError, Step
from backmap.api.io import write_text
from backmap.api.system import (
    PairSet,
    count_frames,
    file_digest,
    pair_folder_frames,
    pairs_from_folders,
    pairs_from_trajectory,
    select_frames,
    split_frames,
)


class PrepareParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cache: bool = Field(True, description="reuse pairs made earlier from identical inputs")


class PrepareStep(Step):
    name = "prepare"
    summary = "build (CG, AA) training pairs from the recipe's data section"
    Params = PrepareParams

    def run(self, ctx) -> dict:
        contexts = ctx.training_contexts()
        if len(contexts) == 1 and contexts[0] is ctx:
            return self._prepare(ctx)
        summary: dict = {}
        markdown = []
        for ts, sub in zip(ctx.recipe.training_systems, contexts):  # chemical transfer: each system its pairs
            ctx.console.print(f"prepare: training system {ts.name}")
            part = self._prepare(sub)
            rel = sub.workdir.relative_to(ctx.workdir)
            body = part.pop("markdown", "").replace("](pairs/", f"]({rel}/pairs/")
            summary.update({f"{ts.name}: {k}": v for k, v in part.items()})
            markdown.append(f"**{ts.name}**\n\n{body}")
        summary["markdown"] = "\n\n".join(markdown)
        return summary

    def _prepare(self, ctx) -> dict:
        spec = ctx.recipe.data
        if spec is None:
            raise BackmapError("data: the prepare step needs a 'data' section", source=ctx.recipe.path.name)
        cg_top = ctx.cg_topology
        t0 = time.perf_counter()
        if spec.trajectory is not None:
            frames = select_frames(spec.frames, spec.skip_frames, count_frames(spec.trajectory),
                                   f"{ctx.recipe.path.name}: data")
            inputs = [spec.trajectory]
        else:
            frames = np.array([n for n in pair_folder_frames(spec.pairs) if n not in spec.skip_frames])
            inputs = [p for n in frames for p in (spec.pairs / "aa" / f"{n}.gro", spec.pairs / "cg" / f"{n}.gro")]
        if len(frames) == 0:
            raise BackmapError("data: no frames selected", source=ctx.recipe.path.name)
        key = file_digest([ctx.recipe.system.topology, *ctx.mapping_files, *inputs],
                          {"frames": frames.tolist()})
        cache = ctx.path("pairs", f"pairs-{key}.npz")
        pairs, hit = None, False
        if self.params.cache and cache.is_file():
            try:  # the file carries a hash of its arrays: a damaged or altered cache is rebuilt, never trusted
                pairs, hit = PairSet.load(cache), True
                ctx.console.print(f"reusing cached pairs {cache.name}")
            except BackmapError as exc:
                ctx.console.print(f"rebuilding cached pairs: {exc}", markup=False, highlight=False, soft_wrap=True)
        if pairs is None:
            if spec.trajectory is not None:
                pairs = pairs_from_trajectory(cg_top, spec.trajectory, frames)
            else:
                pairs = pairs_from_folders(cg_top, spec.pairs, frames.tolist())
            pairs.save(cache)
        s = spec.split
        is_test = split_frames(pairs.frames, s.test_fraction, s.mode, s.test_frames, ctx.seed)
        pointer = ctx.path("pairs", "current.json")
        write_text(pointer, json.dumps(
            {"file": cache.name, "key": key, "test_frames": pairs.frames[is_test].tolist()}, indent=1))
        ctx.outputs.declare("prepare", pairs=pointer)
        summary = {
            "frames": len(pairs), "train frames": int((~is_test).sum()), "test frames": int(is_test.sum()),
            "atoms per frame": pairs.aa.shape[1], "beads per frame": pairs.cg.shape[1],
            "cache": f"reused {cache.name}" if hit else f"wrote {cache.name}",
            "seconds": round(time.perf_counter() - t0, 2),
        }
        for k in ("cg_vs_mapping_max_nm", "cg_vs_mapping_rms_nm"):
            if k in pairs.info:
                summary[k.replace("_", " ")] = pairs.info[k]
        table = cg_bond_table(cg_top, pairs)
        figure = plot_cg_distributions(cg_top, pairs, ctx.path("pairs", "cg_distributions.png"))
        summary["markdown"] = table + (f"\n\n![CG distributions](pairs/{figure.name})" if figure else "")
        return summary


def cg_bond_table(cg_top, pairs: PairSet) -> str:
    """Mean ± s.d. of CG bond lengths per bead-type pair: a quick look at the mapped data."""
    bonds = cg_top.bonds
    if len(bonds) == 0:
        return ""
    d = np.linalg.norm(pairs.cg[:, bonds[:, 1]] - pairs.cg[:, bonds[:, 0]], axis=-1)
    types = cg_top.bead_types
    keys = np.array(["-".join(sorted((types[i], types[j]))) for i, j in bonds])
    lines = ["| CG bond | count per frame | mean (nm) | s.d. (nm) |", "|---|---|---|---|"]
    for k in sorted(set(keys)):
        v = d[:, keys == k]
        lines.append(f"| {k} | {v.shape[1]} | {v.mean():.4f} | {v.std():.4f} |")
    return "\n".join(lines)


def plot_cg_distributions(cg_top, pairs: PairSet, path):
    """Histograms of CG bond lengths and angles per bead-type tuple over all frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = cg_top.bead_types
    panels = []
    bonds = cg_top.bonds
    if len(bonds):
        d = np.linalg.norm(pairs.cg[:, bonds[:, 1]] - pairs.cg[:, bonds[:, 0]], axis=-1)
        keys = np.array(["-".join(sorted((types[i], types[j]))) for i, j in bonds])
        panels += [("bond " + k, d[:, keys == k].ravel(), "length (nm)") for k in sorted(set(keys))]
    angles = cg_top.angles
    if len(angles):
        a = pairs.cg[:, angles[:, 0]] - pairs.cg[:, angles[:, 1]]
        b = pairs.cg[:, angles[:, 2]] - pairs.cg[:, angles[:, 1]]
        cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
        theta = np.degrees(np.arccos(np.clip(cos, -1, 1)))
        keys = np.array(["-".join((types[i], types[j], types[k])) for i, j, k in angles])
        panels += [("angle " + k, theta[:, keys == k].ravel(), "angle (deg)") for k in sorted(set(keys))]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.6), squeeze=False)
    for ax, (title, values, unit) in zip(axes[0], panels):
        ax.hist(values, bins=60, density=True, color="tab:blue", alpha=0.8)
        ax.set_title(f"{title} (n={values.size})", fontsize=9)
        ax.set_xlabel(unit)
    axes[0][0].set_ylabel("density")
    fig.tight_layout()
    from backmap.api.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
