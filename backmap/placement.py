"""A stand-in for a second device on a CPU-only machine: finds the tensors a GPU run would have put
on the wrong device, without a GPU.

While :class:`PlacementCheck` is active, the CPU is named twice: ``cpu:0`` is the *stage's device*
(what :func:`backmap.devices.resolve_device` returns for ``cpu`` during the check) and plain ``cpu``
is the *host*. Every tensor made in the check is tagged with the device a GPU run would have given
it — a factory call without ``device=`` takes the default device (``with torch.device(...)``),
``torch.from_numpy`` and ``.cpu()`` give host tensors, ``.to(device)`` the device's; an operation's
result lives where its operands live. Recorded as violations, each with the backmap source line
(or a plugin's) that made the call:

- an operation mixing device and host tensors (host 0-dim tensors are allowed, as CUDA allows
  them; so are index tensors, ``copy_`` and ``.to``);
- ``.numpy()`` / ``np.asarray`` of a device tensor (CUDA needs ``.cpu()`` first);
- a random draw on the device from a ``torch.Generator`` (backmap's generators are CPU generators:
  draw on the host, then move);
- a parameter used on the device that was never moved there (``module.to(device)`` forgotten).

A limit: ``device=x.device`` reads ``cpu`` for tensors of either side here; inside a stage a
``torch.device`` passed to a factory is taken as the stage's device (the idiom is right on a GPU),
only the string ``"cpu"`` as the host's.

Tensors the check never saw made (before it started, or by ``from_numpy`` or a file reader) are
host tensors, as they would be on a GPU machine. Use::

    with PlacementCheck() as check:
        run_stage(device="cpu")
    assert not check.violations, check.report()
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

import e3nn
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

#: the stage's device during a check (differs from the host ``cpu`` by its index)
CHECK_DEVICE = torch.device("cpu", 0)
_REPO = Path(__file__).resolve().parent.parent
# library code a violation is never blamed on: the frame that called into it is
_LIBRARIES = tuple(str(Path(m.__file__).resolve().parent) for m in (torch, e3nn)) + (str(Path(__file__).resolve()),)
_STDLIB = str(Path(contextlib.__file__).resolve().parent)
_HOST, _DEVICE = "host", "device"
# operations that may take operands on both sides (they move data, or take host indices)
_MIXING = {torch.Tensor.copy_, torch.Tensor.to, torch.Tensor.__getitem__, torch.Tensor.__setitem__,
           torch.Tensor.index_select, torch.index_select, torch.Tensor.new_tensor,
           torch._has_compatible_shallow_copy_type}
_TO_NUMPY = {torch.Tensor.numpy, torch.Tensor.__array__}
_ATTRIBUTES_DATA = torch._C.TensorBase.__dict__["data"]
_ATTRIBUTES = {torch._C.TensorBase.__dict__[name] for name in ("data", "grad")}


@dataclass(frozen=True)
class Violation:
    what: str
    where: str  # "path:line in function" of the innermost frame outside the libraries

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def _caller() -> str:
    """The innermost frame on the stack outside torch, e3nn and the standard library: the line of
    backmap's (or a plugin's) own code that made the call."""
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        library = path.startswith(_LIBRARIES) or (path.startswith(_STDLIB) and "site-packages" not in path)
        if not library and not path.startswith("<"):
            shown = Path(path).relative_to(_REPO) if Path(path).is_relative_to(_REPO) else Path(path)
            return f"{shown}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back
    return "(unknown)"


class PlacementCheck(TorchFunctionMode):
    """Tags tensors with the device a GPU run would give them and records misplacements (see the
    module's docstring). ``violations`` holds each distinct (what, where) once."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.storage_tags: dict[int, str] = {}  # parameters wrap a factory's storage in a new object
        self.violations: list[Violation] = []
        self._seen: set[tuple[str, str]] = set()

    # ---------------------------------------------------------------- entering / leaving
    def __enter__(self):
        from backmap import devices

        self._saved_cpu = devices.CPU
        devices.CPU = CHECK_DEVICE
        return super().__enter__()

    def __exit__(self, *exc):
        from backmap import devices

        devices.CPU = self._saved_cpu
        return super().__exit__(*exc)

    def report(self) -> str:
        return "\n".join(str(v) for v in self.violations) or "no misplaced tensors"

    # ---------------------------------------------------------------- tags
    def _violate(self, what: str) -> None:
        where = _caller()
        key = (what.split(" (shape")[0], where)
        if key not in self._seen:
            self._seen.add(key)
            self.violations.append(Violation(what, where))

    def _tag_of(self, t: torch.Tensor) -> str:
        """Where ``t`` would live: its own tag; else that of its storage (a parameter wraps a
        factory's tensor in a new object); else the host (made before the check, or by a path that
        is not a torch function — ``from_numpy``, loading a file — on a GPU machine it is a CPU tensor)."""
        tag = self.tags.get(t)
        if tag is None:
            try:
                tag = self.storage_tags.get(t.untyped_storage().data_ptr(), _HOST)
            except (RuntimeError, NotImplementedError):
                tag = _HOST
        return tag

    def _tag(self, t, tag: str) -> None:
        if isinstance(t, torch.Tensor):
            self.tags[t] = tag
            if t.device.type != "meta":
                try:
                    self.storage_tags[t.untyped_storage().data_ptr()] = tag
                except RuntimeError:
                    pass

    @staticmethod
    def _device_tag(device) -> str:
        """A factory's ``device=``: none, the default device; a string, what it says (``"cpu"``
        is the host); a ``torch.device`` read off a tensor (``device=x.device``) reads ``cpu`` for
        tensors of either side here, and is taken as the stage's device inside a stage (the idiom
        is right on a GPU), as the host's outside."""
        from backmap.devices import STAGES

        in_stage = bool(STAGES) and STAGES[-1] == CHECK_DEVICE
        if device is None:
            return _DEVICE if in_stage else _HOST
        if isinstance(device, torch.device) and device.type == "cpu" and device.index is None:
            return _DEVICE if in_stage else _HOST
        return _DEVICE if torch.device(device) == CHECK_DEVICE else _HOST

    # ---------------------------------------------------------------- the hook
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__self__", None) in _ATTRIBUTES and func.__name__ == "__set__":
            out = func(*args, **kwargs)  # param.data = tensor: the parameter now lives where the tensor does
            if args[1] is not None and getattr(func, "__self__") is _ATTRIBUTES_DATA:
                self._tag(args[0], self._tag_of(args[1]))
            return out
        checked = args[:1] if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) else args
        inputs = [t for t in tree_flatten((checked, kwargs))[0] if isinstance(t, torch.Tensor)]
        tags = [self._tag_of(t) for t in inputs]
        on_device = _DEVICE in tags
        if func in _TO_NUMPY:
            if on_device:
                self._violate("numpy of a tensor on the device (move it with .cpu() first)")
            return func(*args, **kwargs)
        if on_device and func not in _MIXING:
            host = [t for t, tag in zip(inputs, tags) if tag == _HOST and t.dim() > 0]
            if host:
                kind = "a parameter never moved to the device" if any(
                    isinstance(t, torch.nn.Parameter) for t in host) else "a host tensor"
                self._violate(f"{getattr(func, '__name__', func)} mixes tensors on the device with {kind} "
                              f"(shape {tuple(host[0].shape)})")
        out = func(*args, **kwargs)
        tag = self._result_tag(func, args, kwargs, inputs, tags)
        if kwargs.get("generator") is not None and (tag == _DEVICE or on_device):
            self._violate("a random draw on the device from a CPU torch.Generator (draw on the host, then move)")
        if func in (torch.Tensor.cpu, torch.Tensor.to) and tag == _HOST and out is args[0] \
                and not isinstance(out, torch.nn.Parameter):
            out = out.view_as(out)  # on a GPU this would be a new host tensor: tag a new object
        for t in tree_flatten(out)[0]:
            self._tag(t, tag)
        return out

    def _result_tag(self, func, args, kwargs, inputs, tags) -> str:
        if func is torch.from_numpy:
            return _HOST
        if func is torch.Tensor.cpu:
            return _HOST
        if func is torch.Tensor.to:
            target = kwargs.get("device")
            for a in args[1:]:
                if isinstance(a, (torch.device, str)):
                    target = a
                elif isinstance(a, torch.Tensor):
                    return self._tag_of(a)
            return tags[0] if target is None else self._device_tag(target)
        if func is torch.Tensor.cuda:
            return _DEVICE
        if not inputs:  # a factory: the device it names, else the default device
            return self._device_tag(kwargs.get("device"))
        if func in (torch.Tensor.new_zeros, torch.Tensor.new_ones, torch.Tensor.new_empty,
                    torch.Tensor.new_full, torch.Tensor.new_tensor) and "device" in kwargs:
            return self._device_tag(kwargs["device"])
        return _DEVICE if _DEVICE in tags else _HOST
