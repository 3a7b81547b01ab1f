"""The CPU features llama.cpp's libraries were built for, against the ones this CPU has.

llama.cpp's CPU backend is compiled for a target (``-march``): a ``libggml-cpu`` built on
a Raspberry Pi 5 (Cortex-A76: ``dotprod``, ``fp16``) loads on a Pi 4 (Cortex-A72: neither)
and reports its features, then dies of SIGILL at its first dot-product instruction, with
no word. :func:`require` compares the two before llama.cpp computes anything and raises
one line that says how to rebuild; ``info`` and ``doctor`` show both sides.

What the build needs is what llama.cpp reports it was compiled with
(``llama_print_system_info``: ``NEON = 1 | DOTPROD = 1 | ...``, compile-time on ARM and
x86). What the CPU has comes from the kernel: ``getauxval(AT_HWCAP)`` /
``AT_HWCAP2`` on ARM (through ctypes: also right under qemu-user, whose
``/proc/cpuinfo`` may describe the host), the ``Features``/``flags`` line of
``/proc/cpuinfo`` where that is not there, and on x86 the ``flags`` line.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform
from dataclasses import dataclass, field
from pathlib import Path

from lfm2_edge.errors import CpuMismatchError

__all__ = [
    "CpuCheck",
    "build_features",
    "check",
    "cpu_features",
    "hwcap_simd",
    "parse_cpuinfo_features",
    "require",
]

AT_HWCAP = 16
AT_HWCAP2 = 26

# llama.cpp's feature name -> (auxv word, bit, the kernel's name for it in /proc/cpuinfo).
# Bits from the kernel's arch/arm64/include/uapi/asm/hwcap.h.
ARM_FEATURES: dict[str, tuple[int, int, str]] = {
    "NEON": (AT_HWCAP, 1, "asimd"),
    "ARM_FMA": (AT_HWCAP, 1, "asimd"),  # fused multiply-add is part of AdvSIMD on ARMv8
    "FP16_VA": (AT_HWCAP, 10, "asimdhp"),
    "DOTPROD": (AT_HWCAP, 20, "asimddp"),
    "SVE": (AT_HWCAP, 22, "sve"),
    "MATMUL_INT8": (AT_HWCAP2, 13, "i8mm"),
    "SME": (AT_HWCAP2, 23, "sme"),
}
# llama.cpp's x86 feature name -> the kernel's flag in /proc/cpuinfo.
X86_FEATURES: dict[str, str] = {
    "SSE3": "pni",
    "SSSE3": "ssse3",
    "AVX": "avx",
    "AVX2": "avx2",
    "F16C": "f16c",
    "FMA": "fma",
    "BMI2": "bmi2",
    "AVX_VNNI": "avx_vnni",
    "AVX512": "avx512f",
    "AVX512_VBMI": "avx512vbmi",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
    "AMX_INT8": "amx_int8",
}


# The SIMD the kernel names in the auxiliary vector (the ones that matter to llama.cpp).
_HWCAP_SIMD = {"asimd": (AT_HWCAP, 1), "asimdhp": (AT_HWCAP, 10), "asimddp": (AT_HWCAP, 20), "sve": (AT_HWCAP, 22)}
_HWCAP_SIMD |= {"sve2": (AT_HWCAP2, 1), "i8mm": (AT_HWCAP2, 13), "bf16": (AT_HWCAP2, 14), "sme": (AT_HWCAP2, 23)}


def hwcap_simd() -> list[str] | None:
    """This ARM CPU's SIMD features by the kernel's names, from the auxiliary vector (what
    qemu-user models too), or None off ARM Linux."""
    if not _is_arm(platform.machine()) or platform.system() != "Linux" or not (caps := _auxv()):
        return None
    words = {AT_HWCAP: caps[0], AT_HWCAP2: caps[1]}
    return [name for name, (word, bit) in _HWCAP_SIMD.items() if words[word] >> bit & 1]


@dataclass(frozen=True)
class CpuCheck:
    """The features the libraries need, those this CPU has among them, and what is missing.

    ``cpu_has`` is ``None`` where the CPU cannot be read (an OS without auxv or
    /proc/cpuinfo): then nothing is refused."""

    machine: str
    built_for: list[str]
    cpu_has: list[str] | None
    source: str
    cpu_flags: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[str]:
        if self.cpu_has is None:
            return []
        return [f for f in self.built_for if f not in self.cpu_has]

    @property
    def ok(self) -> bool:
        return not self.missing

    @property
    def amx_runs(self) -> bool:
        """Whether ggml's AMX kernels would run: built in, and this CPU has AMX."""
        return "AMX_INT8" in (self.cpu_has or [])

    def to_dict(self) -> dict[str, object]:
        return {
            "machine": self.machine,
            "built_for": self.built_for,
            "cpu_has": self.cpu_has,
            "missing": self.missing,
            "source": self.source,
        }

    def message(self) -> str:
        """The one line :func:`require` raises."""
        return (
            f"this CPU lacks {', '.join(self.missing)}, which llama.cpp's libraries here were built for "
            f"(built for {' '.join(self.built_for)}; this CPU has {' '.join(self.cpu_has or []) or 'none of them'}): "
            "rebuild them on this machine with `pip install --no-cache-dir --force-reinstall --no-deps "
            "--no-binary llama-cpp-python llama-cpp-python==0.3.36` (or `make install`), or install libraries "
            "built without -march (any 64-bit Raspberry Pi runs those)"
        )


def _features_in(system_info: str) -> list[str]:
    parts = [part.split(":")[-1] for part in system_info.split("|")]  # "CPU : NEON = 1" -> "NEON = 1"
    return [part.split("=")[0].strip() for part in parts if part.strip().endswith("= 1")]


def build_features(system_info: str | None = None, machine: str | None = None) -> list[str]:
    """The CPU features the loaded llama.cpp was compiled for that a CPU must have to run
    it (``REPACK``, ``OPENMP``, ``LLAMAFILE`` and the like are not CPU features)."""
    if system_info is None:
        import llama_cpp

        system_info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    known = ARM_FEATURES if _is_arm(machine or platform.machine()) else X86_FEATURES
    return [f for f in dict.fromkeys(_features_in(system_info)) if f in known]


def _is_arm(machine: str) -> bool:
    return machine.lower() in ("aarch64", "arm64", "armv8l", "armv8b")


def parse_cpuinfo_features(text: str) -> list[str]:
    """The kernel's feature names of the first CPU in a /proc/cpuinfo text (``Features``
    on ARM, ``flags`` on x86); every CPU of a big.LITTLE SoC reports the same set."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("features", "flags"):
            return value.split()
    return []


def _auxv() -> tuple[int, int] | None:
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name)
        getauxval = libc.getauxval
    except (OSError, AttributeError, TypeError):
        return None
    getauxval.argtypes = [ctypes.c_ulong]
    getauxval.restype = ctypes.c_ulong
    return int(getauxval(AT_HWCAP)), int(getauxval(AT_HWCAP2))


def cpu_features(
    built_for: list[str],
    *,
    machine: str,
    hwcaps: tuple[int, int] | None = None,
    cpuinfo: str | None = None,
) -> tuple[list[str] | None, str]:
    """Which of ``built_for`` this CPU has, and where that was read: the auxiliary vector
    on ARM Linux (``hwcaps``), else the /proc/cpuinfo text."""
    if _is_arm(machine):
        if hwcaps is not None and hwcaps != (0, 0):
            words = {AT_HWCAP: hwcaps[0], AT_HWCAP2: hwcaps[1]}
            has = [f for f in built_for if words[ARM_FEATURES[f][0]] >> ARM_FEATURES[f][1] & 1]
            return has, "getauxval(AT_HWCAP, AT_HWCAP2)"
        flags = parse_cpuinfo_features(cpuinfo or "")
        if not flags:
            return None, "unknown (no auxiliary vector, no Features line in /proc/cpuinfo)"
        return [f for f in built_for if ARM_FEATURES[f][2] in flags], "/proc/cpuinfo Features"
    flags = parse_cpuinfo_features(cpuinfo or "")
    if not flags:
        return None, "unknown (no flags line in /proc/cpuinfo)"
    return [f for f in built_for if X86_FEATURES[f] in flags], "/proc/cpuinfo flags"


def _read_cpuinfo() -> str | None:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None


def check(
    *,
    system_info: str | None = None,
    machine: str | None = None,
    hwcaps: tuple[int, int] | None = None,
    cpuinfo: str | None = None,
) -> CpuCheck:
    """Compare the loaded libraries with this CPU (or with the ``cpuinfo``/``hwcaps`` given)."""
    machine = machine or platform.machine()
    built = build_features(system_info, machine)
    if cpuinfo is None and hwcaps is None:
        cpuinfo = _read_cpuinfo()
        if _is_arm(machine) and platform.system() == "Linux":
            hwcaps = _auxv()
    has, source = cpu_features(built, machine=machine, hwcaps=hwcaps, cpuinfo=cpuinfo)
    return CpuCheck(machine, built, has, source, parse_cpuinfo_features(cpuinfo or ""))


@functools.cache
def _this_cpu() -> CpuCheck:
    return check()


#: The flags that build llama.cpp without ggml's AMX kernels (``make install`` sets them on x86-64).
NO_AMX_FLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def require() -> None:
    """Raise :class:`~lfm2_edge.errors.CpuMismatchError` (one line, exit 2 in the CLI)
    when this ARM CPU lacks a feature the libraries were built for, or when ggml's AMX
    kernels would run (they segfault on the first Q4_0 or Q8_0 product: llama.cpp
    #20824, seen on a Sapphire Rapids Xeon); a no-op otherwise. Called before llama.cpp
    loads a model, so it refuses instead of dying of SIGILL or SIGSEGV."""
    result = _this_cpu()
    if result.amx_runs:
        raise CpuMismatchError(
            "llama.cpp's libraries here were built with ggml's AMX kernels, which crash on quantized models "
            "on this CPU (llama.cpp issue 20824): rebuild them without AMX with `make install`, or "
            f'`CFLAGS="{NO_AMX_FLAGS}" CXXFLAGS="{NO_AMX_FLAGS}" pip install --no-cache-dir --force-reinstall '
            "--no-deps llama-cpp-python==0.3.36`"
        )
    # On x86 the comparison is shown, never enforced: a kernel older than a feature
    # prints no flag for it although the CPU has it (avx_vnni before 5.x).
    if not result.ok and _is_arm(result.machine):
        raise CpuMismatchError(result.message())
