"""Request fragments several use cases share: non-bonded settings, a restrained refiner, where the
frames run. A request inherits the fragments it needs, so each option is declared here once."""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Iterator, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from backmap.errors import BackmapError
from backmap.fields import KeyValues, error_reason, given_value, option
from backmap.forcefield.settings import NonbondedSettings
from backmap.parallel import ClusterOptions


class Request(BaseModel):
    """A use case's input: validated on construction; the fields the caller set are
    ``model_fields_set`` (a model's recommended settings fill the others)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    #: the path fields naming what the use case writes; every other path field names a file it reads
    WRITES: ClassVar[tuple[str, ...]] = ("out",)

    def read_paths(self) -> list[tuple[str, Path]]:
        """Every file the request reads, labelled with its option (``--cg``): what its outputs are
        checked against (:func:`backmap.system.claim.check_outputs`)."""
        return [(label, p) for name, label, p in _paths(self) if name not in self.WRITES]

    def written_paths(self) -> list[tuple[str, Path]]:
        """The files the request names as outputs, labelled with their options."""
        return [(label, p) for name, label, p in _paths(self) if name in self.WRITES]


def _paths(model: BaseModel) -> Iterator[tuple[str, str, Path]]:
    """(field, option, path) of every path a model's fields hold, nested settings included."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        label = str(extra.get("cli_name") or "--" + name.replace("_", "-"))
        if isinstance(value, BaseModel):
            yield from _paths(value)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, Path):
                yield name, label, item


class DeviceField(BaseModel):
    device: str = option("auto", "Where the torch work (and OpenMM's, platform auto) runs: auto (the first GPU "
                                 "torch sees, else the CPU), cpu, cuda or cuda:N.")

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        from backmap.devices import check_device_name

        return check_device_name(value)


class Seeded(BaseModel):
    seed: int = option(0, "Seed of every random stream (each frame draws from its own).")


class FrameSelection(BaseModel):
    frames: str | None = option(None, "'start:stop:step' or '0,5,9'.")


class NonbondedOptions(BaseModel):
    """Cut-offs and electrostatics of the commands that compute energies."""

    mdp: Path | None = option(None, "Take cut-offs and Coulomb settings from a GROMACS .mdp file.")
    cutoff: float | None = option(None, "LJ and Coulomb cut-off in nm (default 1.0).", gt=0)
    coulomb: Literal["reaction-field", "cutoff", "none"] | None = option(
        None, "Coulomb treatment (default reaction-field; cutoff = GROMACS Verlet plain cut-off).")
    epsilon_rf: float | None = option(None, "Reaction-field dielectric (0 = infinity; else ≥ epsilon-r, as GROMACS "
                                            "requires).", ge=0)
    lj_shift: bool | None = option(None, "Shift LJ to zero at the cut-off (GROMACS Verlet default: on).")

    def nonbonded(self) -> NonbondedSettings:
        """The .mdp's settings (or the defaults), changed by the options given."""
        base = NonbondedSettings.from_mdp(self.mdp) if self.mdp else NonbondedSettings()
        changes: dict[str, Any] = {}
        if self.cutoff is not None:
            changes |= {"rvdw": self.cutoff, "rcoulomb": self.cutoff}
        if self.coulomb is not None:
            changes["coulomb"] = self.coulomb
        if self.epsilon_rf is not None:
            changes["epsilon_rf"] = self.epsilon_rf
        if self.lj_shift is not None:
            changes["vdw_modifier"] = "potential-shift" if self.lj_shift else "none"
        try:
            return NonbondedSettings.model_validate(base.model_dump() | changes)
        except ValueError as exc:
            raise BackmapError(f"--epsilon-rf: {exc.errors()[0]['msg'].removeprefix('Value error, ')}"
                               if hasattr(exc, "errors") else str(exc)) from None


class RefinerOptions(BaseModel):
    """The restrained refiner's parameters (unset: the refiner's defaults)."""

    temperature: float | None = option(None, "The system's temperature in K: the refiner's (default 300) and, "
                                             "for apply, the generator's (a model whose card records its "
                                             "training temperature draws its bond angles as wide as at this one).")
    n_steps: int | None = option(None, "Steps per frame (default 1000).", name="--steps")
    restraint: float | None = option(None, "k of ½k|M(x) − R|² per bead, kJ/mol/nm² (default 2e5: RMS ≈ √(3kT/k)).")
    constraints: Literal["none", "h-bonds", "all-bonds"] | None = option(
        None, "Bond constraints (default: the .mdp's 'constraints', without --mdp h-bonds; sPS: all-bonds).")
    timestep: float | None = option(None, "Time step in ps (default 0.001).")
    friction: float | None = option(None, "Langevin friction in 1/ps (default 10).")
    param: KeyValues = option(default_factory=dict, metavar="KEY=VALUE",
                              description="Other refiner parameter as key=value (repeatable), e.g. threads=2, "
                                          "minimize_steps=N (default 100).")

    def refiner_params(self, seed: int, minimize_steps: int | None = None) -> dict[str, Any]:
        params = dict(temperature=self.temperature, steps=self.n_steps, restraint=self.restraint,
                      constraints=self.constraints, timestep=self.timestep, friction=self.friction,
                      minimize_steps=minimize_steps, seed=seed)
        return {k: v for k, v in params.items() if v is not None} | self.param

    def make_refiner(self, name: str, seed: int, minimize_steps: int | None = None) -> Any:
        """The refiner plugin ``name`` with these parameters, validated (errors name ``--refiner NAME``)."""
        from backmap.engine.loaders import make_plugin

        return make_plugin("refiner", name, self.refiner_params(seed, minimize_steps), where=f"--refiner {name}")


class ClusterFields(BaseModel):
    """Where the frames run (backmap.parallel): this process, a local Dask cluster, or a running one."""

    workers: int | None = option(None, "Run frames on a local Dask cluster of N worker processes (or N batch jobs "
                                       "with --scheduler slurm/pbs/lsf).")
    scheduler: str | None = option(None, "A running Dask scheduler (tcp://host:8786 or a scheduler .json file), or "
                                         "slurm/pbs/lsf/sge/htcondor for a dask-jobqueue cluster (docs/scale-out.md).")
    threads_per_worker: int = option(1, "torch/OpenMM threads of each worker process.")
    frames_per_task: int = option(1, "Frames per Dask task (more: less scheduling overhead per frame).")

    def cluster(self) -> ClusterOptions:
        from pydantic import ValidationError

        try:
            return ClusterOptions(workers=self.workers, scheduler=self.scheduler,
                                  threads_per_worker=self.threads_per_worker, frames_per_task=self.frames_per_task)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "--workers/--scheduler"
            raise BackmapError(f"{key}{given_value(err) if err['loc'] else ''}: {error_reason(err)}") from None


def skip_list(text: str | None, key: str = "--skip-frames") -> list[int]:
    """``"9,19,41"`` -> ``[9, 19, 41]``."""
    try:
        return [int(s) for s in text.split(",") if s.strip()] if text else []
    except ValueError:
        raise BackmapError(f"{key}: cannot parse {text!r}; use e.g. 9,19,41") from None
