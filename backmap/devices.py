"""Where computations can run: the torch devices and OpenMM platforms this machine offers, and the
``--device`` / recipe ``device`` setting resolved to one of them with a clear error when it is not
there (e.g. ``cuda`` under a CPU build of torch).

``auto`` is the first GPU when torch sees one, else the CPU; ``cpu``; ``cuda`` (= ``cuda:0``) or
``cuda:N``. Models are written device-independent (every tensor moved to the CPU), so a model
trained on one loads on the other. torch and OpenMM are imported on first use."""
from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING, Any, Iterator

from backmap.errors import BackmapError

if TYPE_CHECKING:
    import torch

#: what ``--device`` accepts
DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"
#: the OpenMM platforms a GPU device maps onto, in order of preference
GPU_PLATFORMS = ("CUDA", "OpenCL")
#: the torch device ``cpu`` resolves to (``backmap.placement.PlacementCheck`` renames it ``cpu:0``
#: while it runs, so that the stage's device and the host differ)
CPU: Any = "cpu"
#: the devices of the stages running now, innermost last (:func:`on_device`)
STAGES: list[Any] = []


def check_device_name(value: str) -> str:
    """``value`` if it is a device name ``--device`` accepts (for pydantic validators)."""
    if not isinstance(value, str) or not re.fullmatch(DEVICE_PATTERN, value.strip().lower()):
        raise ValueError(f"{value!r} is not a device: expected auto, cpu, cuda or cuda:N")
    return value.strip().lower()


def _torch_build() -> str:
    import torch

    cuda = torch.version.cuda
    return f"torch {torch.__version__} ({'CUDA ' + cuda if cuda else 'a CPU-only build'})"


def resolve_device(name: str = "auto", where: str = "--device") -> "torch.device":
    """The torch device ``name`` designates on this machine; an error naming ``where`` when it is
    not there."""
    import torch

    try:
        name = check_device_name(name)
    except ValueError as exc:
        raise BackmapError(f"{where}: {exc}") from None
    if name == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device(CPU)
    if name == "cpu":
        return torch.device(CPU)
    index = int(name.partition(":")[2] or 0)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= count:
        seen = f"{count} CUDA device{'s' if count != 1 else ''}" if count else "no CUDA device"
        raise BackmapError(f"{where} {name}: {_torch_build()} sees {seen}; use --device cpu (or auto)")
    return torch.device(f"cuda:{index}")


def torch_devices() -> list[str]:
    """The torch devices this machine offers: ``cpu`` and each visible ``cuda:N`` with its name."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{k} ({torch.cuda.get_device_name(k)})" for k in range(torch.cuda.device_count())]
    return found


def openmm_platforms() -> list[str]:
    """The OpenMM platforms installed (Reference, CPU, and CUDA/OpenCL where their plugins load)."""
    try:
        import openmm as mm
    except ImportError:
        return []
    return [mm.Platform.getPlatform(k).getName() for k in range(mm.Platform.getNumPlatforms())]


def openmm_platform_for(choice: str, device: "str | torch.device" = "auto", where: str = "platform"
                        ) -> tuple[str, dict[str, str]]:
    """The OpenMM platform name and properties for a refiner's ``platform`` choice: ``auto``
    follows ``device`` (a GPU: CUDA, else OpenCL, in mixed precision on its index; the CPU: the CPU
    platform); a named platform must be installed."""
    import torch

    installed = openmm_platforms()
    if choice == "auto":
        torch_device = device if isinstance(device, torch.device) else resolve_device(device, where)
        if torch_device.type == "cuda":
            for name in GPU_PLATFORMS:
                if name in installed:
                    index = str(torch_device.index or 0)
                    return name, {"Precision": "mixed", ("CudaDeviceIndex" if name == "CUDA" else "OpenCLDeviceIndex"):
                                  index}
        return "CPU", {}
    if choice not in installed:
        raise BackmapError(f"{where}: OpenMM platform {choice!r} is not installed here (installed: "
                           f"{', '.join(installed) or 'none'})")
    return choice, {"Precision": "mixed"} if choice in GPU_PLATFORMS else {}


@contextlib.contextmanager
def on_device(device: "torch.device | str") -> Iterator["torch.device"]:
    """Run a stage on ``device``: torch factory calls without ``device=`` make their tensors there
    (``with torch.device(...)``). On the plain CPU nothing is entered (no per-call overhead, and the
    output is what it was before devices existed)."""
    import torch

    device = torch.device(device)
    STAGES.append(device)
    try:
        if device == torch.device("cpu"):
            yield device
        else:
            with torch.device(device):
                yield device
    finally:
        STAGES.pop()


def to_host(t: "torch.Tensor") -> "Any":
    """A tensor's values as a NumPy array, from any device (detached)."""
    return t.detach().cpu().numpy()


def move_tensors(value: Any, device: "torch.device", _seen: set[int] | None = None) -> Any:
    """``value`` with every tensor and ``torch.nn.Module`` in it on ``device``: in lists, tuples and
    dicts, and in the attributes of backmap's own objects (core and built-in plugins; objects of
    other libraries are left as they are). Modules and objects are changed in place; a container
    is returned anew only if something in it moved."""
    import torch

    seen = set() if _seen is None else _seen
    if isinstance(value, (torch.nn.Module, torch.Tensor)):
        return value.to(device)
    if id(value) in seen:
        return value
    seen.add(id(value))
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        items = [move_tensors(v, device, seen) for v in value]
        if all(a is b for a, b in zip(items, value)):
            return value  # nothing moved: the same container (shared references stay shared)
        return type(value)(items)
    if isinstance(value, dict):
        moved = {k: move_tensors(v, device, seen) for k, v in value.items()}
        return value if all(moved[k] is v for k, v in value.items()) else moved
    module = type(value).__module__ or ""
    if hasattr(value, "__dict__") and not isinstance(value, type) and module.split(".")[0].startswith("backmap"):
        for key, item in list(vars(value).items()):
            moved = move_tensors(item, device, seen)
            if moved is not item:
                object.__setattr__(value, key, moved)
    return value


def host_random(fn: Any, *args: Any, generator: "torch.Generator", **kwargs: Any) -> "torch.Tensor":
    """``fn(*args, generator=generator, **kwargs)`` (``torch.randn``, ``torch.rand``,
    ``torch.multinomial``, …) drawn on the host from backmap's CPU generators and moved to the
    stage's device: a seed gives the same numbers on every device, and a CUDA kernel never meets a
    CPU generator. Tensor arguments are read on the host."""
    import torch

    if any(isinstance(a, torch.Tensor) for a in args):
        args = tuple(a.cpu() if isinstance(a, torch.Tensor) else a for a in args)
    else:
        kwargs["device"] = "cpu"
    out = fn(*args, generator=generator, **kwargs)
    device = torch.get_default_device()
    return out if device == out.device else out.to(device)  # one op less per draw on the host
