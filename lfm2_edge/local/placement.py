"""Where a model goes (``--gpu-layers auto``, ``--device``), chosen from the devices
ggml registered (:mod:`lfm2_edge._llama.ggml` reads the registry).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from lfm2_edge._llama.ggml import Device, default_threads, list_devices
from lfm2_edge.errors import Lfm2EdgeError

__all__ = ["GpuChoice", "choose_gpu_layers", "default_slots"]


@dataclass(frozen=True)
class GpuChoice:
    """Where a model goes: how many layers to offload, to which device, and why."""

    n_gpu_layers: int
    device: Device | None
    notice: str | None = None  # one line for the user when the wish could not be met


GPU_LAYERS_ENV = "LFM2_EDGE_GPU_LAYERS"


def choose_gpu_layers(gpu_layers: str | int | None, device: str | None = None) -> GpuChoice:
    """Turn ``--gpu-layers`` (``auto``, ``-1`` for all, or a count) and ``--device`` into a choice.

    ``auto`` offloads everything when a GPU device is registered and stays on the CPU
    with a notice when none is. ``None`` (nothing asked) is ``$LFM2_EDGE_GPU_LAYERS``
    when set, else ``auto`` without the notice. ``--device`` must name a registered device.
    """
    if gpu_layers is None:
        from_env = os.environ.get(GPU_LAYERS_ENV, "").strip()
        choice = choose_gpu_layers(from_env or "auto", device)
        return GpuChoice(choice.n_gpu_layers, choice.device) if not from_env else choice
    devices = list_devices()
    gpus = [d for d in devices if d.is_gpu]
    chosen = None
    if device is not None:
        named = [d for d in devices if d.name.lower() == device.lower()]
        if not named:
            known = ", ".join(d.name for d in devices) or "none"
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


def default_slots(n_cores: int | None = None, available_bytes: int | None = None) -> int:
    """``serve``'s default ``--slots``: two sequences per physical core (a CPU decode step
    reads the weights once for the whole batch, so more sequences keep the cores busy
    until compute, not memory bandwidth, is the limit), between 2 and 8, and at most one
    per 256 MiB of available memory (a slot's KV stream, conv state and saved states)."""
    cores = n_cores or default_threads()
    if available_bytes is None:
        try:
            available_bytes = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available_bytes = 2**31
    return max(1, min(8, max(2, 2 * cores), available_bytes // 2**28))
