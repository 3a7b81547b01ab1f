"""What the loaded llama.cpp can run on: its ggml backends and devices, and the choice
of where a model goes (``--gpu-layers auto``, ``--device``).

llama-cpp-python does not wrap ggml's device registry, so this module reads it with
ctypes from the ``libggml`` llama-cpp-python ships. The registry is the truth: a wheel
built with ``GGML_CUDA=on`` on a machine without a GPU registers no CUDA device.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

from lfm2_edge.errors import Lfm2EdgeError

__all__ = ["Device", "GpuChoice", "choose_gpu_layers", "list_backends", "list_devices", "simd_features"]

_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}


@dataclass(frozen=True)
class Device:
    """A ggml device: ``name`` is what ``--device`` takes."""

    name: str
    description: str
    type: str  # cpu, gpu, igpu or accel
    memory_free: int
    memory_total: int
    handle: int = 0

    @property
    def is_gpu(self) -> bool:
        return self.type in ("gpu", "igpu")


def _ggml() -> ctypes.CDLL:
    import llama_cpp
    from llama_cpp._ctypes_extensions import load_shared_library

    lib = load_shared_library("ggml", Path(llama_cpp.__file__).parent / "lib")
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_reg_count.restype = ctypes.c_size_t
    lib.ggml_backend_reg_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_reg_get.restype = ctypes.c_void_p
    lib.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_reg_name.restype = ctypes.c_char_p
    for fn in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(lib, fn).argtypes = [ctypes.c_void_p]
        getattr(lib, fn).restype = ctypes.c_char_p
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_memory.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_size_t),
        ctypes.POINTER(ctypes.c_size_t),
    ]
    return lib


def list_backends() -> list[str]:
    """The registered ggml backends (``CPU``, ``CUDA``, ``Metal``, ``Vulkan``...)."""
    lib = _ggml()
    return [
        lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i)).decode() for i in range(lib.ggml_backend_reg_count())
    ]


def list_devices() -> list[Device]:
    """Every device the backends registered, with its memory."""
    lib = _ggml()
    out = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        out.append(
            Device(
                name=lib.ggml_backend_dev_name(dev).decode(),
                description=(lib.ggml_backend_dev_description(dev) or b"").decode(),
                type=_TYPES.get(lib.ggml_backend_dev_type(dev), "other"),
                memory_free=int(free.value),
                memory_total=int(total.value),
                handle=int(dev),
            )
        )
    return out


def simd_features() -> list[str]:
    """The CPU features llama.cpp was built with and found (``AVX2``, ``NEON``...)."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    parts = [part.split(":")[-1] for part in info.split("|")]  # "CPU : SSE3 = 1" -> "SSE3 = 1"
    return [part.split("=")[0].strip() for part in parts if part.strip().endswith("= 1")]


@dataclass(frozen=True)
class GpuChoice:
    """Where a model goes: how many layers to offload, to which device, and why."""

    n_gpu_layers: int
    device: Device | None
    notice: str | None = None  # one line for the user when the wish could not be met


def choose_gpu_layers(gpu_layers: str | int, device: str | None = None) -> GpuChoice:
    """Turn ``--gpu-layers`` (``auto``, ``-1`` for all, or a count) and ``--device`` into a choice.

    ``auto`` offloads everything when a GPU device is registered and stays on the CPU
    with a notice when none is. ``--device`` must name a registered device.
    """
    gpus = [d for d in list_devices() if d.is_gpu]
    chosen = None
    if device is not None:
        named = [d for d in list_devices() if d.name.lower() == device.lower()]
        if not named:
            known = ", ".join(d.name for d in list_devices()) or "none"
            raise Lfm2EdgeError(f"no device named {device!r}; this llama.cpp has: {known} (see `lfm2-edge info`)")
        chosen = named[0]
        if not chosen.is_gpu:
            return GpuChoice(0, chosen)
    if isinstance(gpu_layers, str):
        if gpu_layers.strip().lower() != "auto":
            try:
                gpu_layers = int(gpu_layers)
            except ValueError:
                raise Lfm2EdgeError(f"--gpu-layers must be auto, -1 (all) or a count, not {gpu_layers!r}") from None
        elif gpus:
            return GpuChoice(-1, chosen or gpus[0])
        else:
            return GpuChoice(0, None, "no GPU backend in this llama.cpp build: running on the CPU")
    if gpu_layers != 0 and not gpus:
        return GpuChoice(0, None, "no GPU backend in this llama.cpp build: running on the CPU")
    return GpuChoice(int(gpu_layers), chosen or (gpus[0] if gpu_layers else None))
