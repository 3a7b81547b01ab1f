"""``lfm2-edge bench``: load, encode, prefill, decode and RSS, next to the peer and the bare loop."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from lfm2_edge.cli._common import (
    DeviceOpt,
    GpuLayersOpt,
    MmprojOpt,
    _emit_json,
    _hub,
    err,
    fail,
    user_errors,
)
from lfm2_edge.errors import ModelFileError


def bench(
    models: Annotated[
        Optional[list[str]],
        typer.Argument(
            metavar="[MODEL]...",
            help="Model references or .gguf files [default: the synthetic 450M-shaped F16, Q8_0, Q4_0].",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        Optional[list[str]], typer.Option("--model", "-m", help="Same as MODEL (repeatable).", show_default=False)
    ] = None,
    mmproj: MmprojOpt = None,
    repeat: Annotated[int, typer.Option(min=1, help="Runs per figure; the median is reported.")] = 3,
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads [default: physical cores].")] = None,
    batch: Annotated[int, typer.Option(min=32, help="Prompt batch size (n_batch = n_ubatch).")] = 512,
    flash_attn: Annotated[str, typer.Option(help="Flash attention: auto, on or off.")] = "auto",
    peer: Annotated[bool, typer.Option(help="Also run llama-cpp-python's MTMDChatHandler and report ratios.")] = True,
    gpu_layers: GpuLayersOpt = None,
    device: DeviceOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Measure load, image encode, prefill, decode, time to first token and peak RSS,
    next to llama-cpp-python's generic handler and a bare llama.cpp decode loop."""
    from rich.table import Table

    from lfm2_edge.local.bench import DEFAULT_MODEL_DIR, GET_MODELS, BenchConfig, BenchTarget, run_bench

    if flash_attn not in ("auto", "on", "off"):
        fail(f"--flash-attn must be auto, on or off (got {flash_attn!r})")
    models = [*(models or []), *(model or [])]
    refs = models or [str(DEFAULT_MODEL_DIR / f"model-{q}.gguf") for q in ("F16", "Q8_0", "Q4_0")]
    if not models and not all(Path(r).is_file() for r in refs):
        fail(f"no benchmark models in {DEFAULT_MODEL_DIR}; {GET_MODELS}")
    config = BenchConfig(
        repeat=repeat,
        n_threads=threads,
        n_batch=batch,
        flash_attn={"auto": None, "on": True, "off": False}[flash_attn],
        peer=peer,
        n_gpu_layers=gpu_layers,
        device=device,
    )
    with user_errors():
        targets = []
        for ref in refs:
            if ref.lower().endswith(".gguf") and not Path(ref).is_file():
                raise ModelFileError(f"{ref} not found; {GET_MODELS}")
            resolved = _hub().resolve(ref, mmproj=mmproj)
            name = Path(ref).name if resolved.ref.is_local else resolved.ref.display
            targets.append(BenchTarget(name, resolved.model_path, resolved.mmproj_path))
        status = err.status("benchmarking…", spinner="dots") if err.is_terminal else contextlib.nullcontext()
        with status as shown:
            results = run_bench(targets, config, on_step=shown.update if shown is not None else None)
    failed = [r for r in results if "error" in r]
    if as_json:
        _emit_json({"repeat": repeat, "config": {"batch": batch, "flash_attn": flash_attn}, "results": results})
    else:
        ok = [_flatten(r) for r in results if "error" not in r]
        table = Table("figure", *(r["model"] for r in ok), title=f"lfm2-edge bench (median of {repeat})")
        for key in [k for k in (ok[0] if ok else {}) if k not in ("model", "model_path")]:
            table.add_row(key, *(str(r.get(key)) for r in ok))
        Console().print(table)
    if failed:
        fail("; ".join(f"{r['model']}: {r['error']}" for r in failed))


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
