"""What kind of device this is, from the kernel's own texts: ``/proc/cpuinfo``,
``/proc/meminfo``, the device tree's model and the CPUs' capacities.

An ARM board names itself badly in ``/proc/cpuinfo``: a 64-bit Raspberry Pi 4 or Pi 5
prints ``Hardware : BCM2835`` (or nothing) and a Jetson ``ARMv8 Processor rev 1 (v8l)``;
the core is only a part number (``CPU part : 0xd08``). This module turns those into a
board (``Raspberry Pi 4 Model B Rev 1.1, 4 GB``), its cores (``4x Cortex-A72``), its
SIMD and the threads llama.cpp should get (the big cores only on a big.LITTLE SoC: a
thread on a little core holds every other one back at each barrier).
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from lfm2_edge._llama.cpu import hwcap_simd
from lfm2_edge.errors import Lfm2EdgeError

__all__ = [
    "ARM_CORES",
    "DeviceInfo",
    "copy_rate",
    "describe_device",
    "device_from",
    "image_budget",
    "memory_bandwidth",
    "native_features",
    "parse_meminfo",
    "published_bandwidth",
    "ram_here",
    "ram_of",
    "read_capacities",
    "read_cpuinfo",
    "read_dt_model",
    "repacked_quants",
]

# (implementer, part) -> core, from the kernel's arch/arm64/include/asm/cputype.h and
# the vendors' manuals. The little (efficiency) cores are in LITTLE.
ARM_CORES: dict[tuple[int, int], str] = {
    (0x41, 0xD03): "Cortex-A53",
    (0x41, 0xD04): "Cortex-A35",
    (0x41, 0xD05): "Cortex-A55",
    (0x41, 0xD07): "Cortex-A57",
    (0x41, 0xD08): "Cortex-A72",
    (0x41, 0xD09): "Cortex-A73",
    (0x41, 0xD0A): "Cortex-A75",
    (0x41, 0xD0B): "Cortex-A76",
    (0x41, 0xD0C): "Neoverse-N1",
    (0x41, 0xD0D): "Cortex-A77",
    (0x41, 0xD40): "Neoverse-V1",
    (0x41, 0xD41): "Cortex-A78",
    (0x41, 0xD42): "Cortex-A78AE",
    (0x41, 0xD44): "Cortex-X1",
    (0x41, 0xD46): "Cortex-A510",
    (0x41, 0xD47): "Cortex-A710",
    (0x41, 0xD48): "Cortex-X2",
    (0x41, 0xD49): "Neoverse-N2",
    (0x41, 0xD4B): "Cortex-A78C",
    (0x41, 0xD4D): "Cortex-A715",
    (0x41, 0xD4E): "Cortex-X3",
    (0x41, 0xD4F): "Neoverse-V2",
    (0x41, 0xD80): "Cortex-A520",
    (0x41, 0xD81): "Cortex-A720",
    (0x41, 0xD82): "Cortex-X4",
    (0x41, 0xD85): "Cortex-X925",
    (0x41, 0xD87): "Cortex-A725",
    (0x4E, 0x003): "NVIDIA Denver 2",
    (0x4E, 0x004): "NVIDIA Carmel",
    (0x51, 0x800): "Kryo 2xx Gold",
    (0x51, 0x801): "Kryo 2xx Silver",
    (0x51, 0x802): "Kryo 3xx Gold",
    (0x51, 0x803): "Kryo 3xx Silver",
    (0x51, 0x804): "Kryo 4xx Gold",
    (0x51, 0x805): "Kryo 4xx Silver",
    (0x51, 0x001): "Qualcomm Oryon",
}
LITTLE = {
    "Cortex-A35",
    "Cortex-A53",
    "Cortex-A55",
    "Cortex-A510",
    "Cortex-A520",
    "Kryo 2xx Silver",
    "Kryo 3xx Silver",
    "Kryo 4xx Silver",
}

# The SoC a core implies when nothing else names the board (a Jetson prints no model).
_SOC_BY_CORE = {"Cortex-A78AE": "NVIDIA Jetson Orin (Tegra234)", "NVIDIA Carmel": "NVIDIA Jetson Xavier (Tegra194)"}

# Raspberry Pi revision codes (new style, bit 23): the processor and the RAM size.
_PI_SOC = {0: "BCM2835", 1: "BCM2836", 2: "BCM2837", 3: "BCM2711", 4: "BCM2712"}
_PI_RAM_MIB = {0: 256, 1: 512, 2: 1024, 3: 2048, 4: 4096, 5: 8192, 6: 16384}

# SIMD names the kernel prints that matter to llama.cpp, in a stable order.
SIMD = ("asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2", "sme")


@dataclass(frozen=True)
class DeviceInfo:
    """A device, as its kernel describes it."""

    machine: str  # aarch64, x86_64 ...
    board: str | None  # "Raspberry Pi 5 Model B Rev 1.0", "Qualcomm Technologies, Inc SM8350"
    soc: str | None  # "BCM2712"
    cores: list[str]  # one name per logical CPU, in order
    simd: list[str]  # the SIMD features of SIMD this CPU has
    threads: int  # what llama.cpp should use: the big cores on a big.LITTLE SoC
    threads_basis: str
    ram_mib_board: int | None = None  # from a Raspberry Pi's revision code
    notes: list[str] = field(default_factory=list)

    @property
    def core_summary(self) -> str:
        """``4x Cortex-A72`` or ``1x Cortex-X1 + 3x Cortex-A78 + 4x Cortex-A55``."""
        counts: dict[str, int] = {}
        for core in self.cores:
            counts[core] = counts.get(core, 0) + 1
        order = sorted(counts, key=lambda c: (c in LITTLE, -counts[c]))
        return " + ".join(f"{counts[c]}x {c}" for c in order)

    @property
    def big_little(self) -> bool:
        return any(c in LITTLE for c in self.cores) and any(c not in LITTLE for c in self.cores)

    def display_name(self, fallback: str = "") -> str:
        """``Raspberry Pi 5 Model B Rev 1.0, 8 GB (BCM2712, 4x Cortex-A76)``, or the cores."""
        inside = ", ".join(x for x in (self.soc, self.core_summary) if x)
        if self.board:
            return f"{self.board} ({inside})" if inside else self.board
        return self.core_summary or fallback or self.machine

    def to_dict(self) -> dict[str, object]:
        return {
            "machine": self.machine,
            "board": self.board,
            "soc": self.soc,
            "cores": self.core_summary,
            "big_little": self.big_little,
            "simd": self.simd,
            "threads": self.threads,
            "threads_basis": self.threads_basis,
            "ram_mib_board": self.ram_mib_board,
            "notes": self.notes,
        }


def _blocks(text: str) -> tuple[list[dict[str, str]], dict[str, str]]:
    """The per-CPU blocks of a /proc/cpuinfo text, and the fields outside them."""
    cpus: list[dict[str, str]] = []
    tail: dict[str, str] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            current = None
            continue
        key, value = key.strip().lower(), value.strip()
        if key == "processor" and value.isdigit():
            current = {}
            cpus.append(current)
        elif current is not None:
            current[key] = value
        else:
            tail[key] = value
    return cpus, tail


def _int(value: str | None) -> int | None:
    try:
        return int(value, 0) if value else None
    except ValueError:
        return None


def _core_name(cpu: dict[str, str]) -> str:
    imp, part = _int(cpu.get("cpu implementer")), _int(cpu.get("cpu part"))
    if imp is not None and part is not None:
        return ARM_CORES.get((imp, part), f"ARM core 0x{imp:02x}:0x{part:03x}")
    return cpu.get("model name") or "unknown core"


def _pi(revision: str | None) -> tuple[str | None, int | None]:
    rev = _int(f"0x{revision}") if revision and re.fullmatch(r"[0-9a-fA-F]+", revision) else None
    if rev is None or not rev & (1 << 23):
        return None, None
    return _PI_SOC.get(rev >> 12 & 0xF), _PI_RAM_MIB.get(rev >> 20 & 0x7)


def describe_device(
    cpuinfo: str,
    *,
    machine: str = "aarch64",
    dt_model: str | None = None,
    capacities: list[int] | None = None,
) -> DeviceInfo:
    """The device a /proc/cpuinfo text (and, where known, the device tree's model and the
    CPUs' ``cpu_capacity``) describes."""
    cpus, tail = _blocks(cpuinfo)
    notes: list[str] = []
    arm = bool(cpus) and all("cpu part" in c for c in cpus)
    emulated = machine in ("aarch64", "arm64") and bool(cpus) and not arm
    if emulated:
        notes.append(
            "/proc/cpuinfo describes another CPU than this aarch64 process runs on: emulation (qemu-user); "
            "speeds measured here say nothing about a board"
        )
    if arm:
        cores = [_core_name(c) for c in cpus]
        flags = cpus[0].get("features", "").split()
        simd = [f for f in SIMD if f in flags]
    else:
        cores = [c.get("model name") or "unknown core" for c in cpus]
        flags = cpus[0].get("flags", "").split() if cpus else []
        simd = [f for f in ("sse3", "ssse3", "avx", "avx2", "fma", "f16c", "avx512f", "avx_vnni") if f in flags]
    model = (dt_model or "").strip("\0 \n") or tail.get("model")
    hardware = tail.get("hardware")
    soc, ram = _pi(tail.get("revision")) if model and model.startswith("Raspberry Pi") else (None, None)
    board = model or ("qemu-user, emulating an aarch64 CPU on this host's" if emulated else None)
    if board is None and hardware and not hardware.startswith("BCM2835"):
        board = hardware  # Android kernels print the SoC here: "Qualcomm Technologies, Inc SM8350"
    if board is None and arm and cores:
        board = _SOC_BY_CORE.get(cores[0])
        if board:
            notes.append(f"board named by its cores ({cores[0]}): its kernel prints no model")
    if board and ram:
        board = f"{board}, {ram // 1024} GB" if ram >= 1024 else f"{board}, {ram} MB"
    # threads: big cores only on big.LITTLE (by capacity where the kernel gives it, else by core name)
    n = len(cores) or 1
    basis = f"{n} cores, all of one kind"
    threads = n
    if capacities and len(capacities) == len(cores) and len(set(capacities)) > 1:
        top = max(capacities)
        threads = sum(1 for c in capacities if c * 2 > top)
        basis = f"the {threads} of {n} cores whose cpu_capacity is over half the largest ({top})"
    elif any(c in LITTLE for c in cores) and any(c not in LITTLE for c in cores):
        threads = sum(1 for c in cores if c not in LITTLE)
        little = sorted({c for c in cores if c in LITTLE})
        basis = f"the {threads} big cores of {n}: a thread on a little core ({', '.join(little)}) slows every step"
    return DeviceInfo(
        machine=machine,
        board=board,
        soc=soc or (hardware if hardware and hardware.startswith("BCM27") else None),
        cores=cores,
        simd=simd,
        threads=max(1, threads),
        threads_basis=basis,
        ram_mib_board=ram,
        notes=notes,
    )


def parse_meminfo(text: str) -> tuple[int, int]:
    """(total, available) bytes from a /proc/meminfo text."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.split():
            fields[key.strip()] = int(value.split()[0]) * 1024
    total = fields["MemTotal"]
    return total, fields.get("MemAvailable", fields.get("MemFree", total // 2))


def read_capacities() -> list[int] | None:
    """The CPUs' ``cpu_capacity`` (ARM big.LITTLE kernels), or None."""
    out = []
    for path in sorted(
        Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpu_capacity"), key=lambda p: int(p.parent.name[3:])
    ):
        try:
            out.append(int(path.read_text()))
        except (OSError, ValueError):
            return None
    return out or None


def read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def read_dt_model() -> str | None:
    for path in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        try:
            return Path(path).read_text(errors="replace").strip("\0 \n") or None
        except OSError:
            continue
    return None


# -- what llama.cpp does on such a CPU ----------------------------------------------------

# The kernel's feature names -> llama.cpp's, for a build made on that CPU (pip's default).
_NATIVE = {
    "asimd": "NEON",
    "asimdhp": "FP16_VA",
    "asimddp": "DOTPROD",
    "i8mm": "MATMUL_INT8",
    "sve": "SVE",
    "avx2": "AVX2",
}


def native_features(flags: list[str]) -> list[str]:
    """The llama.cpp features a build made on a CPU with these kernel flags has."""
    return [name for flag, name in _NATIVE.items() if flag in flags] + ["REPACK"]


# The quantized types ggml-cpu's ``ggml_repack_get_optimal_repack_type`` repacks into
# interleaved blocks (a second copy of those matrices in RAM), by what the CPU backend has.
_REPACKED_X86 = frozenset({"Q4_0", "Q4_K", "IQ4_NL", "MXFP4"})  # AVX2 (Q2_K too with AVX512)
_REPACKED_ARM = frozenset({"Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "IQ4_NL", "MXFP4"})  # NEON + dotprod or i8mm


def repacked_quants(features: list[str]) -> tuple[frozenset[str], str]:
    """The quant types llama.cpp's CPU backend keeps a repacked copy of, and why: with
    AVX2, or NEON with dotprod or i8mm (then Q8_0 too); none on a CPU with neither (a
    Pi 4's Cortex-A72 runs Q4_0 and Q8_0 from the file's own blocks)."""
    have = set(features)
    if "REPACK" not in have:
        return frozenset(), "this llama.cpp was built without its repack buffers (GGML_CPU_REPACK off)"
    if "AVX2" in have:
        quants = _REPACKED_X86 | ({"Q2_K"} if "AVX512" in have else set())
        return frozenset(quants), "AVX2: llama.cpp repacks Q4_0 (8x8 blocks; also Q4_K, IQ4_NL) into a copy in RAM"
    if "NEON" in have and ({"DOTPROD", "MATMUL_INT8"} & have):
        how = "i8mm" if "MATMUL_INT8" in have else "dotprod"
        return _REPACKED_ARM, f"NEON + {how}: llama.cpp repacks Q4_0 and Q8_0 (and K-quants) into a copy in RAM"
    return frozenset(), "no AVX2, dotprod or i8mm: llama.cpp runs Q4_0 and Q8_0 from the file's blocks, no copy"


def memory_bandwidth() -> float:
    """Bytes per second this device copies memory at (the best of a few 64 MiB copies):
    what a decode step, which reads every weight once, is bound by on a CPU."""
    import time

    import numpy as np

    src = np.ones(8 * 2**20, dtype=np.float64)  # 64 MiB: past the caches, little for a Pi
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


# Published memory of boards doctor can plan for from their texts: (what, peak bytes/s).
_MEMORY = {
    "BCM2711": ("a Pi 4's LPDDR4-3200, 32-bit", 12.8e9),
    "BCM2712": ("a Pi 5's LPDDR4X-4267, 32-bit", 17.1e9),
    "Cortex-A78AE": ("a Jetson Orin Nano 8 GB's LPDDR5, 128-bit", 68e9),
    "SM8350": ("a Snapdragon 888's LPDDR5-6400, 64-bit", 51.2e9),
}
COPY_SHARE = 0.4  # share of the published peak a plain 64 MiB copy reaches on such boards


def published_bandwidth(dev: DeviceInfo) -> tuple[float, str] | None:
    """(bytes/s a copy reaches, its basis) from the board's published memory, or None."""
    for key in (dev.soc, *(dev.cores[:1]), *((dev.board or "").split())):
        if key in _MEMORY:
            what, peak = _MEMORY[key]
            return (
                peak * COPY_SHARE,
                f"{what}: {peak / 1e9:g} GB/s peak, {COPY_SHARE:g} of it for a copy (not measured)",
            )
    return None


# FP32 multiply-adds per cycle per core a Cortex core issues with NEON (2 x 128-bit FMA
# pipes: 16 FLOP), its usual clock on these boards, and the share llama.cpp reaches.
_CLOCK_GHZ = {"Cortex-A72": 1.8, "Cortex-A76": 2.4, "Cortex-A78AE": 1.5, "Cortex-A78": 2.4, "Cortex-X1": 2.8}
FLOP_PER_CYCLE = 16
MATMUL_SHARE = 0.25


def image_budget(dev: DeviceInfo, vision_params: float, *, seconds: float = 10.0) -> tuple[int, str]:
    """Image tokens per 512x512 tile (``--image-max-tokens``) whose vision encode stays
    under ``seconds`` by a compute estimate: 2 x vision parameters FLOPs per patch, 4
    patches per image token, the big cores at their usual clock x 16 FLOP/cycle x 0.25
    (twice that with fp16 arithmetic, ``asimdhp``)."""
    ghz = max((_CLOCK_GHZ.get(c, 0.0) for c in dev.cores), default=0.0) or 2.0
    rate = dev.threads * ghz * 1e9 * FLOP_PER_CYCLE * MATMUL_SHARE * (2 if "asimdhp" in dev.simd else 1)
    for tokens in (256, 128, 64):
        took = 2 * vision_params * 4 * tokens / rate
        if took <= seconds or tokens == 64:
            break
    basis = (
        f"vision encode ~{took:.0f} s a tile at {tokens} tokens: {vision_params / 1e6:.0f}M vision parameters, "
        f"{dev.threads} cores x {ghz:g} GHz x {FLOP_PER_CYCLE} FLOP/cycle x {MATMUL_SHARE:g}"
        + (" x 2 (fp16)" if "asimdhp" in dev.simd else "")
        + f"; at most {seconds:g} s"
    )
    return tokens, basis


def device_from(cpuinfo: str | None) -> tuple[DeviceInfo, bool]:
    """(the device, whether it is emulated): this one (``cpuinfo`` None: its /proc/cpuinfo,
    device tree, capacities, and SIMD from the auxiliary vector, right under qemu-user
    too), or the one a /proc/cpuinfo text describes."""
    if cpuinfo is None:
        dev = describe_device(
            read_cpuinfo(), machine=platform.machine(), dt_model=read_dt_model(), capacities=read_capacities()
        )
        if (auxv := hwcap_simd()) is not None:
            dev = replace(dev, simd=auxv)
    else:
        dev = describe_device(cpuinfo, machine="aarch64" if "CPU part" in cpuinfo else "x86_64")
    return dev, any("emulation" in note for note in dev.notes)


def ram_here() -> tuple[int, int]:
    """(total, available) bytes of this machine's RAM, now."""
    try:
        return parse_meminfo(Path("/proc/meminfo").read_text())
    except (OSError, KeyError, ValueError):
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return pages * size, pages * size // 2  # macOS: no cheap "available"; assume half


def ram_of(dev: DeviceInfo, meminfo: str | None, *, here: bool) -> tuple[int, int]:
    """(total, available) bytes: from a /proc/meminfo text, this device's, or a Pi's
    revision code (a fifth left to its OS)."""
    if meminfo is not None or here:
        return parse_meminfo(meminfo) if meminfo is not None else ram_here()
    if dev.ram_mib_board:
        return dev.ram_mib_board * 2**20, dev.ram_mib_board * 2**20 * 4 // 5
    raise Lfm2EdgeError("this cpuinfo names no RAM size: give that device's /proc/meminfo with --meminfo")


def copy_rate(dev: DeviceInfo, *, here: bool, emulated: bool, gpu: bool) -> tuple[float | None, str]:
    """(bytes/s a memory copy reaches, its basis) for the decode-speed estimate: measured
    on this device, the board's published figure when planning, none on a GPU or under
    emulation."""
    if gpu:
        return None, "a GPU: no CPU-bandwidth estimate"
    if emulated:
        return None, "emulated CPU: no speed estimate means anything here"
    if here:
        rate = memory_bandwidth()
        return rate, f"this device copies memory at {rate / 1e9:.1f} GB/s (measured now, 64 MiB)"
    return published_bandwidth(dev) or (None, "no published memory figure for this board")
