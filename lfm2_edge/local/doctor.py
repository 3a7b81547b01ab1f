"""``lfm2-edge doctor``: what this device has, and which model fits it.

The models it may recommend, their order and their shapes are the catalog's
(:mod:`lfm2_edge.hub.catalog`). The memory arithmetic is its own function,
:func:`estimate_memory`, checked in the tests against the measured peak RSS of the
synthetic models. A one-image chat holds:

* the language model's weights (memory-mapped: the file's size), plus, for Q4_0 on a CPU
  whose llama.cpp repacks them (AVX2; NEON with dotprod or i8mm, which repacks Q8_0 and the K-quants too;
  not a Pi 4: :func:`~lfm2_edge.local.device.repacked_quants`), a copy of its matrices;
* the KV cache of the 6 attention layers: ``n_ctx x kv_dim x 2 (K, V) x 2 bytes``; the
  10 short-convolution layers keep only a few columns of recurrent state;
* llama.cpp's compute buffer, dominated by a batch of logits (``n_batch x n_vocab``);
* the projector file and the vision encoder's compute buffer for one 512x512 tile;
* the interpreter, the libraries and a chat's buffers (``RUNTIME_BYTES``).
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lfm2_edge._llama import cpu
from lfm2_edge._llama.ggml import default_threads, list_devices, simd_features
from lfm2_edge._llama.threads import busy_cpus, threads_for
from lfm2_edge.errors import Lfm2EdgeError, ModelFileError, UnknownQuantError
from lfm2_edge.hub import catalog
from lfm2_edge.hub.catalog import Arch, CatalogEntry, parse_ref
from lfm2_edge.hub.gguf import read_summary
from lfm2_edge.local.device import (
    copy_rate,
    describe_device,
    device_from,
    image_budget,
    memory_bandwidth,
    native_features,
    ram_of,
    read_cpuinfo,
    repacked_quants,
)

__all__ = [
    "MemoryEstimate",
    "estimate_memory",
    "estimate_spec",
    "expected_tok_s",
    "fit_together",
    "keep_alive_report",
    "measure_peak_rss",
    "memory_bandwidth",
    "model_estimate",
    "preference",
    "recommend",
    "report_lines",
    "reserve_bytes",
    "system_report",
]

MIB = 2**20
RUNTIME_BYTES = 80 * MIB  # Python, numpy, Pillow, llama.cpp's code, a chat's buffers (measured: 46 MiB at import)
LOGITS_RESIDENT = 0.65  # share of the logits buffer a prompt batch touches (measured on the 450M shape)
GGML_TYPES = {2: "Q4_0", 8: "Q8_0", 10: "Q2_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 20: "IQ4_NL", 39: "MXFP4"}
Repack = bool | frozenset[str] | None  # True: Q4_0 (x86's AVX2 rule); a set: those quants; None: this CPU's


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a one-image chat needs, by part."""

    weights: int
    repacked: int
    projector: int
    kv_cache: int
    recurrent: int
    lm_compute: int
    vision_compute: int
    runtime: int

    @property
    def total(self) -> int:
        return sum(asdict(self).values())

    def to_dict(self) -> dict[str, float]:
        return {k: round(v / MIB, 1) for k, v in {**asdict(self), "total": self.total}.items()}


def _kv(n_attn: int, kv_dim: int, n_ctx: int) -> int:
    return n_attn * n_ctx * kv_dim * 2 * 2  # K and V, f16


def _lm_compute(n_batch: int, n_vocab: int, n_embd: int) -> int:
    return int(LOGITS_RESIDENT * n_batch * n_vocab * 4) + n_batch * n_embd * 4 * 4


def _vision_compute(n_patches: int, n_ff: int) -> int:
    return int(n_patches * n_ff * 4 * 1.75)


def repack_plan(simd: list[str] | None, repack: bool = True) -> tuple[frozenset[str], str]:
    """The quants llama.cpp repacks for its CPU kernels (a copy in RAM), and why: this one's
    (``simd`` None: ``REPACK = 1`` alone does not say it, the CPU features it was built with
    do), or one built on a device with these SIMD names; none with ``repack=False``."""
    if not repack:
        return frozenset(), "none: --no-repack"
    if simd is None:
        return repacked_quants(simd_features())
    quants, basis = repacked_quants(native_features(simd))
    return quants, f"{basis} (as a llama.cpp built on that device: pip builds for its own CPU)"


def _quants(repack: Repack) -> frozenset[str]:
    if repack is None:
        return repack_plan(None)[0]
    if isinstance(repack, bool):
        return frozenset({"Q4_0"}) if repack else frozenset()
    return repack


def estimate_memory(
    model_path: str | os.PathLike[str],
    mmproj_path: str | os.PathLike[str] | None,
    *,
    n_ctx: int = 4096,
    n_batch: int = 512,
    repack: Repack = None,
) -> MemoryEstimate:
    """Estimate the peak RSS of a one-image chat with these files at ``n_ctx``."""

    lm = read_summary(model_path, "model")
    arch = lm.architecture
    n_embd = int(lm.get(f"{arch}.embedding_length") or 0)
    n_vocab = int(lm.get("tokenizer.ggml.tokens") or lm.get(f"{arch}.vocab_size") or 0)
    attn = [t.shape for name, t in lm.tensors.items() if name.endswith(".attn_k.weight")]
    kv_dim = attn[0][1] if attn and len(attn[0]) == 2 else n_embd
    l_cache = int(lm.get(f"{arch}.shortconv.l_cache") or 3)
    n_layer = int(lm.get(f"{arch}.block_count") or 0)
    quants = _quants(repack)  # the tied output counts too: llama.cpp repacks token_embd for the output product
    repacked = sum(t.nbytes for t in lm.tensors.values() if GGML_TYPES.get(t.ggml_type) in quants)
    projector = vision = 0
    if mmproj_path is not None:
        proj = read_summary(mmproj_path, "mmproj")
        projector = proj.path.stat().st_size
        patches = (512 // int(proj.get("clip.vision.patch_size") or 16)) ** 2
        vision = _vision_compute(patches, int(proj.get("clip.vision.feed_forward_length") or 0))
    return MemoryEstimate(
        weights=lm.path.stat().st_size,
        repacked=repacked,
        projector=projector,
        kv_cache=_kv(len(attn), kv_dim, n_ctx),
        recurrent=(n_layer - len(attn)) * n_embd * 3 * (l_cache - 1) * 4,
        lm_compute=_lm_compute(n_batch, n_vocab, n_embd),
        vision_compute=vision,
        runtime=RUNTIME_BYTES,
    )


_BYTES_PER_WEIGHT = {"F16": 2.0, "Q8_0": 1.0625, "Q4_0": 0.5625}


def estimate_spec(
    arch: Arch, quant: str, *, n_ctx: int = 4096, n_batch: int = 512, repack: Repack = False
) -> MemoryEstimate:
    """Estimate a one-image chat from a catalog model's published shapes (no files needed)."""
    embd = arch.n_vocab * arch.n_embd
    vision = arch.vision_params > 0
    return MemoryEstimate(
        weights=int(arch.lm_params * _BYTES_PER_WEIGHT[quant]),
        repacked=int((arch.lm_params - embd) * _BYTES_PER_WEIGHT[quant]) if quant in _quants(repack) else 0,
        # the projector: F16 with an F16 model, the Q8_0 one otherwise
        projector=int(arch.vision_params * (2.0 if quant == "F16" else 1.0625)),
        kv_cache=_kv(arch.n_attn, arch.kv_dim, n_ctx),
        recurrent=(arch.n_layer - arch.n_attn) * arch.n_embd * 3 * 2 * 4,
        lm_compute=_lm_compute(n_batch, arch.n_vocab, arch.n_embd),
        vision_compute=_vision_compute((512 // arch.vision_patch) ** 2, arch.vision_ff) if vision else 0,
        runtime=RUNTIME_BYTES,
    )


def preference() -> list[tuple[CatalogEntry, str]]:
    """The catalog models ``doctor`` may recommend, better first: the larger model before
    the smaller, and each model's quants in its entry's ``recommend`` order."""
    ranked = sorted(
        (e for e in catalog.CATALOG if e.recommend and e.arch is not None),
        key=lambda e: -e.arch.lm_params if e.arch else 0.0,
    )
    return [(e, quant) for e in ranked for quant in e.recommend]


# Share of a plain memory copy's bandwidth llama.cpp's decode reaches reading the weights.
DECODE_EFFICIENCY = 0.6
MIN_TOK_S = 8.0  # slower than this feels stuck in a chat: prefer a faster choice that fits


def expected_tok_s(arch: Arch, quant: str, bandwidth: float) -> float:
    """Decode tokens/s to expect: the weights read once per token at the device's bandwidth
    (of a mixture of experts, the active ones only)."""
    return DECODE_EFFICIENCY * bandwidth / (arch.read_per_token * _BYTES_PER_WEIGHT[quant])


def recommend(
    available: int,
    *,
    n_ctx: int = 4096,
    repack: Repack = False,
    cpu_only: bool = False,
    bandwidth: float | None = None,
) -> dict[str, Any]:
    """The best catalog model and quant whose estimate fits ``available`` bytes with a
    reserve (a quarter of it, at least 512 MiB, is left to the rest of the system).

    On a CPU (``cpu_only``) Q4_0 comes before Q8_0: it reads half the bytes per token and
    llama.cpp repacks it for the CPU's SIMD. With ``bandwidth`` (bytes/s) the choice must
    also be expected to decode at :data:`MIN_TOK_S` or more; when none fits that, the
    fastest that fits is chosen."""
    reserve = reserve_bytes(available)
    choices = preference()
    if cpu_only:
        order = {q: i for i, q in enumerate(("Q4_0", "Q8_0", "F16"))}
        models = list(dict.fromkeys(e.name for e, _ in choices))
        choices = sorted(choices, key=lambda c: (models.index(c[0].name), order.get(c[1], 9)))
    fits = []
    for entry, quant in choices:
        assert entry.arch is not None
        est = estimate_spec(entry.arch, quant, n_ctx=n_ctx, repack=repack)
        if est.total + reserve <= available:
            speed = expected_tok_s(entry.arch, quant, bandwidth) if bandwidth else None
            fits.append((entry, quant, est, speed))
    if fits:
        fast = [f for f in fits if f[3] is None or f[3] >= MIN_TOK_S]
        entry, quant, est, speed = fast[0] if fast else max(fits, key=lambda f: f[3] or 0.0)
        out = {
            "model": f"{entry.name}:{quant}",
            "estimate_mib": est.to_dict(),
            "reserve_mib": reserve // MIB,
            "headroom_mib": reserve // MIB,  # the old name of reserve_mib
            "command": f"lfm2-edge chat {entry.name}:{quant}",
        }
        if speed is not None:
            out["expected_tok_s"] = round(speed, 1)
        return out
    smallest, quant = choices[-1]
    assert smallest.arch is not None
    estimate = estimate_spec(smallest.arch, quant, n_ctx=min(n_ctx, 1024), repack=repack)
    return {
        "model": f"{smallest.name}:{quant}",
        "n_ctx": min(n_ctx, 1024),
        "estimate_mib": estimate.to_dict(),
        "reserve_mib": reserve // MIB,
        "headroom_mib": reserve // MIB,
        "command": f"lfm2-edge chat {smallest.name}:{quant} --ctx {min(n_ctx, 1024)}",
        "warning": "even the smallest model leaves little room here; close other programs or lower --ctx",
    }


# Linux: this process's own peak (VmHWM); ru_maxrss would start from the parent's peak, which a
# child spawned by vfork inherits through execve.
_MEASURE = """
import resource, sys
from PIL import Image
from lfm2_edge.local.model import VisionModel
def peak():
    if sys.platform == "darwin":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(peak())  # after the imports
model, mmproj, n_ctx, repack = sys.argv[1], sys.argv[2] or None, int(sys.argv[3]), sys.argv[4] == "1"
with VisionModel(model, mmproj, n_ctx=n_ctx, repack=repack) as vm:
    images = [Image.new("RGB", (512, 512), (120, 60, 30))] if mmproj else []
    vm.chat("What is in this image?", images=images, max_tokens=8)
print(peak())
"""


def measure_peak_rss(
    model_path: str | os.PathLike[str],
    mmproj_path: str | os.PathLike[str] | None,
    *,
    n_ctx: int = 4096,
    repack: bool = True,
) -> tuple[int, int]:
    """(peak RSS, RSS after the imports), in bytes, of a fresh interpreter that loads the
    files and answers one question about one 512x512 image: what :func:`estimate_memory`
    predicts. The second figure is the interpreter and libraries alone, which
    :data:`RUNTIME_BYTES` stands for; it moves by tens of MiB with the state of the page
    cache and transparent huge pages, so small models are compared above it."""
    import subprocess
    import sys

    args = [sys.executable, "-c", _MEASURE, str(model_path), str(mmproj_path or ""), str(n_ctx), str(int(repack))]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.strip().splitlines() if line.isdigit()]
    if proc.returncode != 0 or len(lines) < 2:
        reason = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise Lfm2EdgeError(f"could not measure: {reason}")
    return int(lines[-1]), int(lines[0])


def busy_report() -> dict[str, Any]:
    """How busy other programs keep this device's CPUs now (a short /proc/stat probe), and
    the threads lfm2-edge would take for it (:mod:`lfm2_edge._llama.threads`)."""
    busy = busy_cpus()
    return {"cpus": busy.cpus, "busy_cpus": busy.busy, "source": busy.source, "threads": threads_for(busy)}


def busy_line(load: dict[str, Any], cores: int) -> tuple[str, str] | None:
    """doctor's "the device is busy" line, when others hold a quarter of a core or more."""
    if load["busy_cpus"] < 0.25:
        return None
    return (
        "busy",
        f"the device is busy: other programs keep {load['busy_cpus']:.1f} of {load['cpus']} CPUs busy now, so a "
        f"model loaded now takes {load['threads']} of {cores} threads (--threads or $LFM2_EDGE_THREADS sets it)",
    )


def system_report(
    *, n_ctx: int = 4096, cpuinfo: str | None = None, meminfo: str | None = None, repack: bool = True
) -> dict[str, Any]:
    """CPU, SIMD, RAM, GPUs, cache and disk, and the recommendation for them: of this
    device, or of the one a ``cpuinfo`` (and ``meminfo``) text describes, to plan for a
    board from its kernel's texts (``ssh pi cat /proc/cpuinfo``); ``repack=False``
    plans for ``--no-repack`` (no repacked copy)."""
    from huggingface_hub import constants

    here = cpuinfo is None
    dev, emulated = device_from(cpuinfo)
    machine, text = dev.machine, read_cpuinfo() if cpuinfo is None else cpuinfo
    total, available = ram_of(dev, meminfo, here=here)
    cache = Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)
    probe = cache if cache.exists() else next((p for p in cache.parents if p.exists()), Path("/"))
    gpus = [d for d in list_devices() if d.is_gpu] if here else []
    check: cpu.CpuCheck | None
    if here:
        check = cpu.check()
    else:
        same_arch = cpu.build_features(machine=machine) and machine == platform.machine()
        check = cpu.check(machine=machine, cpuinfo=text, hwcaps=None) if same_arch else None
    repacked, repack_basis = repack_plan(None if here else dev.simd, repack)
    bandwidth, speed_basis = copy_rate(dev, here=here, emulated=emulated, gpu=bool(gpus))
    rec = recommend(available, n_ctx=n_ctx, repack=repacked, cpu_only=not gpus, bandwidth=bandwidth)
    rec["threads"] = default_threads() if here else dev.threads
    rec["speed_basis"] = (
        f"decode reads every weight once a token at {DECODE_EFFICIENCY:g} of the copy rate; {speed_basis}"
    )
    entry = catalog.find_entry(rec["model"].split(":")[0])
    if entry is not None and entry.arch is not None and entry.arch.vision_params and "asimd" in dev.simd:
        rec["image_max_tokens"], rec["image_basis"] = image_budget(dev, entry.arch.vision_params)
        rec["command"] += f" --image-max-tokens {rec['image_max_tokens']}"
    return {
        "cpu": dev.display_name(platform.processor()),
        "machine": machine,
        "cores_logical": os.cpu_count() if here else len(dev.cores),
        "cores_physical": default_threads() if here else dev.threads,
        "simd": simd_features() if here else native_features(dev.simd),
        "cpu_simd": dev.simd,
        "device": dev.to_dict(),
        "build_check": check.to_dict() if check is not None else None,
        "repack": {"quants": sorted(repacked), "basis": repack_basis},
        "ram_total_mib": total // MIB,
        "ram_available_mib": available // MIB,
        "gpus": [
            {"name": d.name, "description": d.description, "memory_total_mib": d.memory_total // MIB} for d in gpus
        ],
        "cache": str(cache),
        "disk_free_mib": shutil.disk_usage(probe).free // MIB,
        "n_ctx": n_ctx,
        "planned_from_texts": not here,
        "recommendation": rec,
        **({"load": busy_report()} if here else {}),
    }


def reserve_bytes(available: int) -> int:
    """What :func:`recommend` and :func:`fit_together` leave free of ``available`` bytes."""
    return max(available // 4, 512 * MIB)


def keep_alive_report(models: list[dict[str, Any]], default: str) -> dict[str, Any]:
    """What ``serve --keep-alive`` buys for each of ``models`` (:func:`model_estimate`'s
    dicts): the memory an idle unload gives back, and what its next request reads again
    (the files: from the page cache when they were read recently, else from storage)."""
    out = []
    for m in models:
        est = m["estimate_mib"]
        out.append(
            {
                "name": m["name"],
                "frees_mib": round(est["total"] - est["runtime"], 1),
                "reload_reads_mib": round(est["weights"] + est["projector"], 1),
            }
        )
    return {"default": default, "models": out}


def fit_together(models: list[dict[str, Any]], available: int) -> dict[str, Any]:
    """Whether the models (:func:`model_estimate`'s dicts) fit in ``available`` bytes at
    once, as one ``serve`` holds them: one process, so the runtime is counted once, and
    the reserve :func:`recommend` keeps. ``models_max`` is the most of them that fit
    whichever are loaded (the largest ones together), the ``--models-max`` to give
    ``serve`` when not all of them do."""
    reserve = reserve_bytes(available)
    runtime = RUNTIME_BYTES / MIB
    sizes = sorted((m["estimate_mib"]["total"] for m in models), reverse=True)

    def total(n: int) -> float:
        return sum(sizes[:n]) - runtime * max(n - 1, 0)

    models_max = max((n for n in range(len(sizes) + 1) if total(n) * MIB + reserve <= available), default=0)
    return {
        "models": [m["name"] for m in models],
        "total_mib": round(total(len(sizes)), 1),
        "available_mib": available // MIB,
        "reserve_mib": reserve // MIB,
        "fit": models_max == len(sizes),
        "models_max": models_max,
    }


def report_lines(report: dict[str, Any], ctx: int) -> list[tuple[str, str]]:
    """``doctor``'s report as (label, text) lines for a terminal."""
    rec = report["recommendation"]
    gpus = ", ".join(f"{g['name']} ({g['memory_total_mib']} MiB)" for g in report["gpus"]) or "none"
    dev, check = report["device"], report["build_check"]
    where = "there" if report["planned_from_texts"] else "here"
    lines = [
        ("CPU", f"{report['cpu']} ({report['machine']}), {report['cores_logical']} cores"),
        ("threads", f"{dev['threads']}: {dev['threads_basis']}"),
        (
            "SIMD",
            f"this CPU: {' '.join(report['cpu_simd']) or 'none'}; llama.cpp built with: {' '.join(report['simd'])}",
        ),
        *(
            [("build", "runs on this CPU" if not check["missing"] else f"MISSING {' '.join(check['missing'])}")]
            if check
            else []
        ),
        ("repack", report["repack"]["basis"]),
        ("RAM", f"{report['ram_available_mib']} MiB available of {report['ram_total_mib']} MiB"),
        ("GPUs", gpus),
        ("cache", f"{report['cache']} ({report['disk_free_mib']} MiB free)"),
        (
            "recommended",
            f"{rec['model']} with {rec['threads']} threads and --ctx {rec.get('n_ctx', ctx)}: "
            f"~{rec['estimate_mib']['total']:.0f} MiB"
            + (f", about {rec['expected_tok_s']:g} tokens/s {where}" if "expected_tok_s" in rec else "")
            + f" ({rec['reserve_mib']} MiB of RAM kept in reserve for the rest of the system)",
        ),
        ("basis", rec["speed_basis"] + (f"; image: {rec['image_basis']}" if "image_basis" in rec else "")),
        ("try", rec["command"] + " -i photo.jpg"),
    ]
    lines += [("note", note) for note in dev["notes"]]
    if "warning" in rec:
        lines.append(("warning", rec["warning"]))
    if "load" in report and (busy := busy_line(report["load"], report["cores_physical"])) is not None:
        lines.append(busy)
    for m in report.get("models") or ([report["model"]] if "model" in report else []):
        text = f"~{m['estimate_mib']['total']:.0f} MiB estimated at --ctx {ctx} ({m['source']})"
        if "measured_peak_rss_mib" in m:
            text += f", {m['measured_peak_rss_mib']:.0f} MiB measured ({m['estimate_error_pct']:+.1f}%)"
        lines.append((m["name"], text))
    if "together" in report:
        t = report["together"]
        text = f"~{t['total_mib']:.0f} MiB for all {len(t['models'])} in one serve"
        text += f", of {t['available_mib']} MiB available"
        if t["fit"]:
            text += f": they fit together ({t['reserve_mib']} MiB kept in reserve)"
        elif t["models_max"]:
            text += f": not all at once; serve them with --models-max {t['models_max']} (any {t['models_max']} fit)"
        else:
            text += ": not even the largest one fits beside the reserve; lower --ctx or pick smaller quants"
        lines.append(("together", text))
    if "keep_alive" in report:
        k = report["keep_alive"]
        frees = ", ".join(f"~{m['frees_mib']:.0f} MiB for {m['name']}" for m in k["models"])
        reads = ", ".join(f"~{m['reload_reads_mib']:.0f} MiB" for m in k["models"])
        lines.append(
            (
                "keep-alive",
                f"serve --keep-alive {k['default']} (the default) unloads a model idle that long: it frees {frees}; "
                f"its next request reloads {reads} of files (from the page cache when recent, else from storage). "
                "-1 keeps them loaded where the RAM allows; 0 suits a model asked rarely",
            )
        )
    return lines


def _check_estimable(name: str, quant: str) -> None:
    """An :class:`UnknownQuantError` for a quant the catalog's shapes cannot size."""
    if quant not in _BYTES_PER_WEIGHT:
        known = ", ".join(_BYTES_PER_WEIGHT)
        raise UnknownQuantError(
            f"unknown quant {quant} for {name}: doctor estimates {known} "
            f"(or `lfm2-edge pull {name}:{quant}`, if the repo has it, and doctor reads its files)"
        )


def model_estimate(
    hub: Any,
    ref: str,
    mmproj: Path | None,
    ctx: int,
    *,
    download: bool,
    cpuinfo: str | None = None,
    repack: bool = True,
) -> dict[str, Any]:
    """The memory estimate for ``ref``: from its files when they are here (or ``download``),
    else from the catalog's published shapes, without a download; for the CPU a ``cpuinfo``
    text describes (its llama.cpp's Q4_0 repack) where one is given, else for this one;
    ``repack=False``: without the repacked copy (``--no-repack``)."""
    quants = repack_plan(None if cpuinfo is None else describe_device(cpuinfo).simd, repack)[0]

    parsed = parse_ref(ref)
    cached = parsed.is_local or hub._cached_choice(parsed) is not None
    if cached or download or parsed.entry is None or parsed.entry.arch is None:
        if not (cached or download):
            raise ModelFileError(
                f"{parsed.display} is not in the cache and the catalog has no shapes for it; "
                f"`lfm2-edge pull {parsed.display}` first, or add --measure"
            )
        resolved = hub.resolve(parsed, mmproj=mmproj)
        est = estimate_memory(resolved.model_path, resolved.mmproj_path, n_ctx=ctx, repack=quants)
        return {"name": resolved.ref.display, "estimate_mib": est.to_dict(), "source": "from its files"}
    quant = parsed.quant or parsed.entry.default_quant
    _check_estimable(parsed.entry.name, quant)
    est = estimate_spec(parsed.entry.arch, quant, n_ctx=ctx, repack=quants)
    return {
        "name": f"{parsed.entry.name}:{quant}",
        "estimate_mib": est.to_dict(),
        "source": "from the catalog's shapes; not downloaded",
    }
