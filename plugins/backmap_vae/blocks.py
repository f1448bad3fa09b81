"""Exact VAE Monte Carlo moves of a block of consecutive beads (``vae_mc``'s ``blocks``).

Whole-bead moves are independence proposals: a bead that the model would rarely draw where its
neighbours now stand keeps its start (on sPS the last two monomers of the voxel GAN's chains,
acceptance 0.004; docs/vae.md). A block move redraws several beads of one molecule together, one
after the other in plan order as the forward pass builds them: bead s of the block is drawn from
P(z_s | env_s) P(x_s | z_s, env_s), where env_s shows the block's beads before s at their new
places and hides the block's later beads. The block's proposal density is the product of its
beads' terms, so on the pairs (x, z₁…z_S) the move is an independence proposal with importance
weight

    ln w = ln π(x) − Σ_s [ln P(z_s | env_s) + ln P(x_s | z_s, env_s) − ln q(z_s | x_s, env_s)]

(eq. 9 of Monroe & Shen, term by term), and ln r = ln w(new) − ln w(current): exact whatever the
model. The current state's terms are evaluated with the same visibility (its own earlier beads
where they are, later ones hidden).

Acceptance depends on whether the env_s are contexts the model was trained on. A model trained
with the blocks in its ``blocks`` parameter (the ``block`` training context) has seen exactly
them; without, a block of the last steps of the plan still sees what the forward pass showed those
beads (sPS S8+S9 at the reference: 0.81 with 32 trials), while a block of early steps (sPS chain
ends: the plan starts at S10) sees what neither the forward pass nor a Gibbs sweep shows: ≈ 0
(docs/vae.md).

The blocks of a molecule type move in colour groups: no block of a group sees another's atoms,
so no proposal depends on another block's state; blocks that do interact are decided one after
the other with the energy changes of those accepted before
(:func:`~backmap.refinement.latent_moves.decide_sequentially`) — the same target as the unit
moves, hard wall included.
"""
from __future__ import annotations

import networkx as nx
import numpy as np
import torch

from backmap.api import BackmapError
from backmap.api.refinement import MoveResult, decide_sequentially
from backmap.api.sampling import Block, EnvironmentBatch, UnitGroup
from backmap.api.system import box_dimensions, minimum_image


def merge_groups(groups: list[UnitGroup], moltype: str, step: int, rows: np.ndarray | None = None) -> UnitGroup:
    """The units of one plan step of every molecule (or of the molecules ``rows`` of them, in
    molecule order), from the frame's colour groups."""
    parts = [g for g in groups if g.moltype == moltype and g.step == step]
    molecules = np.concatenate([g.molecules for g in parts])
    order = np.argsort(molecules, kind="stable")
    if rows is not None:
        order = order[rows]

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(g, name) for g in parts])[order]

    return UnitGroup(moltype, step, parts[0].meta, molecules[order], cat("atoms"), cat("bead"), cat("predecessor"),
                     cat("frame"))


def step_groups(groups: list[UnitGroup]) -> list[UnitGroup]:
    """Each plan step's units of every molecule as one group, in plan order: units that share no
    bead or bonded term (they lie in different molecules) but may interact."""
    return [merge_groups(groups, moltype, step) for moltype, step in dict.fromkeys((g.moltype, g.step) for g in groups)]


def bead_distances(targets, beads: np.ndarray) -> np.ndarray:
    """(B, B) smallest nearest-image distance (nm) between any bead of block i and any of block j,
    for the blocks' global bead indices ``beads`` (B, S) in the frame the sampler holds."""
    builder = targets.sampler.builder
    pos = builder.beads[beads]  # (B, S, 3)
    d = minimum_image(pos[:, None, :, None] - pos[None, :, None, :], box_dimensions(builder.box))
    return np.linalg.norm(d, axis=-1).min((-1, -2))


def colour_apart(targets, beads: np.ndarray, separation: float) -> list[np.ndarray]:
    """Rows of ``beads`` (B, S: global bead indices of B clusters) split into groups in which no
    bead of one cluster lies within ``separation`` of a bead of another (greedy colouring)."""
    return [np.array(rows) for rows in colours(bead_distances(targets, beads) < separation)]


def colours(conflicts: np.ndarray) -> list[list[int]]:
    """Greedy colouring of a (R, R) conflict matrix: lists of rows no two of which conflict, in
    row order."""
    graph = nx.Graph()
    graph.add_nodes_from(range(len(conflicts)))
    graph.add_edges_from(zip(*np.nonzero(np.triu(conflicts, 1))))
    colour = nx.greedy_color(graph, strategy="largest_first")
    return [sorted(k for k, c in colour.items() if c == col) for col in sorted(set(colour.values()))]


def block_moves(targets, block: Block, groups: list[UnitGroup], temperature: float) -> list["BlockMove"]:
    """The moves of a block for a frame, one per colour group of molecules: blocks in one group
    have no bead within the environment cut-off plus the wall of another's (none sees another's
    atoms, so each proposal depends on its own block only); they may still interact."""
    beads = np.stack([merge_groups(groups, block.moltype, s).bead for s in block.steps], 1)  # (B, S)
    return [BlockMove(targets, block, groups, temperature, rows)
            for rows in colour_apart(targets, beads, targets.separation(interacting=True))]


class BlockMove:
    """Moves of one :class:`Block` for a frame: its units (one merged group per plan step, the same
    molecules in the same order) against the restrained target of :class:`UnitTargets`."""

    def __init__(self, targets, block: Block, groups: list[UnitGroup], temperature: float,
                 rows: np.ndarray | None = None):
        self.targets, self.block, self.temperature = targets, block, temperature
        self.steps = [merge_groups(groups, block.moltype, s, rows) for s in block.steps]
        self.atoms = [torch.as_tensor(g.atoms) for g in self.steps]
        if any(bool((a < 0).any()) for a in self.atoms):
            raise BackmapError(f"vae_mc: block {block.label}: units with padding slots cannot be moved as a block")
        self.block_atoms = torch.cat(self.atoms, 1)  # (B, A)
        # the target's tables: the block's atoms as one unit (restraint, springs, local energies)
        flat = UnitGroup(block.moltype, -1 - block.steps[0], {**self.steps[0].meta, "block": block.label},
                         self.steps[0].molecules, self.block_atoms.numpy(), self.steps[0].bead,
                         self.steps[0].predecessor, self.steps[0].frame)
        self.tables = {**targets.tables(flat), "label": block.label}
        # blocks that may interact (sequential decisions), and what each unit sees, once per frame
        self.near = bead_distances(targets, np.stack([g.bead for g in self.steps], 1)) < targets.interaction_range()
        self.seen = [self._visible(targets.ff.n_atoms, s) for s in range(len(self.steps))]

    @property
    def label(self) -> str:
        return self.block.label

    def _visible(self, n_atoms: int, step: int) -> torch.Tensor:
        """(B, N): what unit ``step`` of each block sees — everything but its own block's units
        from ``step`` on (the ``block`` training context)."""
        B = len(self.block_atoms)
        seen = torch.ones(B, n_atoms, dtype=torch.bool)
        rows = torch.arange(B)[:, None]
        for t in range(step, len(self.atoms)):
            seen[rows, self.atoms[t]] = False
        return seen

    def _log_target(self, configs: torch.Tensor, cg: torch.Tensor, vectors: np.ndarray,
                    outside: torch.Tensor) -> torch.Tensor:
        """ln π (C − 1, B) of configurations 1… of ``configs`` (C, N, 3) for each block, the other
        blocks as in configuration 0; −inf where a unit atom lies beyond the wall (``outside``)."""
        ff, bias = self.targets.energies(configs, self.tables, cg, vectors)
        logp = -self.targets.beta * (ff[1:] + bias[1:])
        return torch.where(outside, torch.full_like(logp, -torch.inf), logp)

    def log_density(self, pos: torch.Tensor, generator: torch.Generator, latents: list[torch.Tensor] | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """The model's terms Σ_s ln P̃_s (B,) of the blocks at ``pos`` (N, 3): each unit with
        z ~ q(z | x_s, env_s) (or the given ``latents``, one (B, D) per unit) in the environment it
        is drawn in (:meth:`draw`); also whether a unit atom lies beyond the wall (B,) and the z."""
        g, sampler = self.targets.generator, self.targets.sampler
        total = torch.zeros(len(self.block_atoms), dtype=torch.float64)
        outside = torch.zeros(len(self.block_atoms), dtype=torch.bool)
        zs = []
        for s, (group, atoms) in enumerate(zip(self.steps, self.atoms)):
            env = sampler.environment(group, pos.to(torch.float32), self.seen[s])
            local = (pos[atoms] - env.centre.double()[:, None]) @ env.rotation.double().transpose(1, 2)
            model = g.latent_model(env, self.temperature)
            z = model.encode(local, generator) if latents is None else latents[s]
            total += model.log_joint(local[:, None], z[:, None]).model[:, 0]
            outside |= _beyond(local, self.targets.extent)
            zs.append(z)
        return total, outside, zs

    def draw(self, pos: torch.Tensor, trials: int, generator: torch.Generator
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """``trials`` proposals of every block from ``pos`` (N, 3): positions (M, N, 3) with each
        trial's blocks in place, Σ_s ln P̃_s (M, B), beyond-the-wall flags (M, B) and the latents
        (one (M, B, D) per unit). Unit s of trial m is drawn seeing trial m's earlier units: the
        M·B environments of a step go to the network as one batch."""
        g, sampler = self.targets.generator, self.targets.sampler
        N, B, M = len(pos), len(self.block_atoms), trials
        total = torch.zeros(M, B, dtype=torch.float64)
        outside = torch.zeros(M, B, dtype=torch.bool)
        trial_pos = pos.expand(M, N, 3).clone()
        zs = []
        for s, (group, atoms) in enumerate(zip(self.steps, self.atoms)):
            env = EnvironmentBatch.concatenate([sampler.environment(group, trial_pos[m].to(torch.float32), self.seen[s])
                                                for m in range(M)])
            env.meta = group.meta
            model = g.latent_model(env, self.temperature)
            x, z = model.generate(1, generator)
            total += model.log_joint(x, z).model[:, 0].view(M, B)
            x = x[:, 0].double()
            outside |= _beyond(x, self.targets.extent).view(M, B)
            lab = x @ env.rotation.double() + env.centre.double()[:, None]
            trial_pos[:, atoms] = lab.view(M, B, *lab.shape[1:])
            zs.append(z[:, 0].view(M, B, -1))
        return trial_pos, total, outside, zs

    def move(self, pos: torch.Tensor, cg: torch.Tensor, vectors: np.ndarray, generator: torch.Generator,
             trials: int) -> MoveResult:
        """One move of every molecule's block from positions ``pos`` (N, 3, float64); the result's
        ``x`` are the blocks' new lab positions (B, A, 3)."""
        model1, out1, _ = self.log_density(pos, generator)
        trial_pos, model2, out2, _ = self.draw(pos, trials, generator)
        # configuration 0 holds every block where it is; then the current state, then the trials
        configs = torch.cat([pos[None], pos[None], trial_pos])
        target = self._log_target(configs, cg, vectors, torch.cat([out1[None], out2]))  # (1 + M, B)
        trials_lab = trial_pos[:, self.block_atoms].transpose(0, 1)  # (B, M, A, 3)
        return decide_sequentially(pos[self.block_atoms], target[0], model1, trials_lab, target[1:].T, model2.T,
                                   self._coupling(vectors), generator)

    def _coupling(self, vectors: np.ndarray):
        """ln π changes of block k's states when blocks moved before it in the scan stand at their
        new places (blocks of different molecules share no bonded term); blocks whose beads are
        all farther apart than the cut-off plus two wall radii cannot interact and are skipped."""
        atoms = self.block_atoms.numpy()
        box = None if vectors is None else np.asarray(vectors, np.float64).reshape(3, 3)

        def coupling(k: int, moved: dict, states: torch.Tensor) -> torch.Tensor:
            near = [j for j in moved if self.near[k, j]]
            if not near:
                return torch.zeros(len(states), dtype=torch.float64)
            old, new = (torch.cat([moved[j][i] for j in near]) for i in (0, 1))
            return self.targets.interaction_change(states, atoms[k], old, new, np.concatenate([atoms[j] for j in near]),
                                                   box)

        return coupling


def _beyond(local: torch.Tensor, extent: float) -> torch.Tensor:
    """Whether any atom of each placement (…, U, 3; local frame) lies beyond the wall."""
    return (local.double().norm(dim=-1) > extent).any(-1)
