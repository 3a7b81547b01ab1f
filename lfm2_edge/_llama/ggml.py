"""What the loaded llama.cpp can run on: its ggml backends and devices, the CPU
features it was built with, and how many threads to give it.

llama-cpp-python does not wrap ggml's device registry, so this module reads it with
ctypes from the ``libggml`` llama-cpp-python ships, loaded and typed once per process.
The registry is the truth: a wheel built with ``GGML_CUDA=on`` on a machine without a
GPU registers no CUDA device.
"""

from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass
from pathlib import Path

from lfm2_edge._llama._private import load_shared_library
from lfm2_edge._llama.cpu import CpuCheck, check

__all__ = [
    "BuildInfo",
    "Device",
    "build_info",
    "default_threads",
    "list_backends",
    "list_devices",
    "simd_features",
]

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


@functools.cache
def _ggml() -> ctypes.CDLL:
    """libggml with the signatures of the registry functions used here."""
    import llama_cpp

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
    """Every device the backends registered, with its memory (read now)."""
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


def _big_cores(cpus: list[int]) -> list[int]:
    """On a big.LITTLE SoC (a phone, an RK3588), the CPUs whose ``cpu_capacity`` is over
    half the largest: a thread on a little core holds the others back at every barrier
    of a decode step. All of ``cpus`` where the kernel gives no capacities, or one."""
    caps = {}
    for cpu in cpus:
        try:
            caps[cpu] = int(Path(f"/sys/devices/system/cpu/cpu{cpu}/cpu_capacity").read_text())
        except (OSError, ValueError):
            return cpus
    top = max(caps.values(), default=0)
    return [cpu for cpu in cpus if caps[cpu] * 2 > top] or cpus


def default_threads() -> int:
    """Physical cores available to this process, the big ones only on a big.LITTLE SoC:
    llama.cpp gains nothing from SMT siblings and loses on little cores."""
    try:
        cpus = _big_cores(sorted(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, (os.cpu_count() or 2) // 2)
    cores: set[tuple[str, str]] = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topo / "physical_package_id").read_text().strip()
            core = (topo / "core_id").read_text().strip()
        except OSError:
            return max(1, len(cpus))
        cores.add((package, core))
    return max(1, len(cores))


@dataclass(frozen=True)
class BuildInfo:
    """What the llama.cpp inside llama-cpp-python was built with."""

    llama_cpp_python: str
    system_info: str
    gpu_offload: bool
    default_threads: int
    cpu: CpuCheck  # the CPU features the libraries were built for, against this CPU's


def build_info() -> BuildInfo:
    import llama_cpp

    return BuildInfo(
        llama_cpp_python=llama_cpp.__version__,
        system_info=llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
        gpu_offload=bool(llama_cpp.llama_supports_gpu_offload()),
        default_threads=default_threads(),
        cpu=check(),
    )
