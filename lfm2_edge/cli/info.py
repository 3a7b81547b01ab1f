"""``lfm2-edge info``: the version, llama.cpp's build, backends and devices; with MODEL, its files."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console

from lfm2_edge import __version__
from lfm2_edge.cli._common import (
    MmprojOpt,
    ModelOpt,
    _emit_json,
    _hub,
    _model_ref,
    user_errors,
)
from lfm2_edge.hub.info import describe, report_lines


def info(
    ref: Annotated[
        Optional[str],
        typer.Argument(
            metavar="[MODEL]",
            help="Describe this model's files from their headers (no weights loaded): NAME[:QUANT], "
            "ORG/REPO[:QUANT] or a .gguf path.",
            show_default=False,
        ),
    ] = None,
    model: ModelOpt = None,
    mmproj: MmprojOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the version, llama.cpp's build, its backends and devices, and the thread count;
    with MODEL, what its files are: architecture, layer pattern, quant types, vocabulary,
    chat template (and its hash), projector layout, the catalog's presets."""
    ref = _model_ref(ref, model)
    if ref is not None:
        with user_errors():
            resolved = _hub().resolve(ref, mmproj=mmproj)
            described = describe(
                resolved.model_path, resolved.mmproj_path, entry=resolved.entry, ref=resolved.ref.display
            )
        if as_json:
            _emit_json(described)
        else:
            Console(highlight=False, soft_wrap=True).print("\n".join(report_lines(described)), markup=False)
        return
    from lfm2_edge._llama.ggml import build_info, list_backends, list_devices

    b = build_info()
    cpu = b.cpu
    devices = list_devices()
    data = {
        "lfm2_edge": __version__,
        "llama_cpp_python": b.llama_cpp_python,
        "gpu_offload": b.gpu_offload,
        "backends": list_backends(),
        "devices": [
            {"name": d.name, "type": d.type, "description": d.description, "memory_total": d.memory_total}
            for d in devices
        ],
        "threads": b.default_threads,
        "system_info": b.system_info,
        "cpu_check": cpu.to_dict(),
    }
    if as_json:
        _emit_json(data)
        return
    out = Console(highlight=False)
    for key, value in data.items():
        if key == "cpu_check":
            have = " ".join(cpu.cpu_has) if cpu.cpu_has is not None else f"unknown ({cpu.source})"
            value = f"built for {' '.join(cpu.built_for) or 'no CPU feature'}; this CPU has {have}" + (
                f"; MISSING {' '.join(cpu.missing)}: llama.cpp would stop with SIGILL here" if cpu.missing else ""
            )
        elif key == "devices":
            value = "; ".join(f"{d.name} ({d.type}, {d.description}, {d.memory_total // 2**20} MiB)" for d in devices)
        elif isinstance(value, list):
            value = ", ".join(value)
        out.print(f"[bold]{key}[/]: {value}")
