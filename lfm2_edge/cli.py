"""The ``lfm2-edge`` command line.

``chat`` (about images, locally or through ``--endpoint``), ``serve`` (an OpenAI-compatible
server), ``pull``, ``models`` and ``rm`` (the hub cache), ``info`` (llama.cpp's backends
and devices), ``doctor`` (this device, and the model that fits it) and ``bench``.

Every user mistake ends in one line on stderr and exit code 2; ``--json`` gives one
JSON object on stdout for scripts.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from lfm2_edge import __version__
from lfm2_edge.answer import answer_once
from lfm2_edge.cli_cache import list_models, pull, remove
from lfm2_edge.cli_common import (
    DeviceOpt,
    GpuLayersOpt,
    MlockOpt,
    MmprojOpt,
    ModelOpt,
    RefArg,
    ThreadsOpt,
    _either,
    _emit_json,
    _hub,
    _model_ref,
    _placement,
    app,
    err,
    fail,
    user_errors,
)
from lfm2_edge.cli_serve import exposure_warning as exposure_warning  # imported from here by callers
from lfm2_edge.cli_serve import serve
from lfm2_edge.errors import Lfm2EdgeError, ModelFileError
from lfm2_edge.progress import Activity
from lfm2_edge.repl import interactive as _interactive


@app.command()
def chat(
    ref: RefArg = None,
    model: ModelOpt = None,
    mmproj: MmprojOpt = None,
    image: Annotated[
        Optional[list[str]],
        typer.Option("--image", "-i", help="Image path, data: URI or http(s) URL; repeat for more."),
    ] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="Answer this once and exit.")] = None,
    system: Annotated[Optional[str], typer.Option(help="System prompt [default: the model card's].")] = None,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    device: DeviceOpt = None,
    mlock: MlockOpt = False,
    ctx: Annotated[int, typer.Option(min=64, help="Context size in tokens.")] = 4096,
    max_tokens: Annotated[int, typer.Option(min=1, help="Most tokens to generate.")] = 512,
    temperature: Annotated[
        Optional[float], typer.Option(min=0.0, help="[default: the card's, 0.1 VL / 0.3 text]")
    ] = None,
    top_p: Annotated[Optional[float], typer.Option(min=0.0, max=1.0)] = None,
    top_k: Annotated[Optional[int], typer.Option(min=0)] = None,
    min_p: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="[default: 0.15]")] = None,
    repetition_penalty: Annotated[
        Optional[float], typer.Option("--repetition-penalty", min=0.0, help="[default: 1.05]")
    ] = None,
    seed: Annotated[Optional[int], typer.Option(help="Sampling seed, for repeatable answers.")] = None,
    min_image_tokens: Annotated[
        Optional[int], typer.Option("--image-min-tokens", min=1, help="Fewest tokens an image is given [64].")
    ] = None,
    max_image_tokens: Annotated[
        Optional[int], typer.Option("--image-max-tokens", min=1, help="Most tokens an image tile is given [256].")
    ] = None,
    # the old spellings, still accepted
    repeat_penalty: Annotated[Optional[float], typer.Option("--repeat-penalty", min=0.0, hidden=True)] = None,
    old_min_image_tokens: Annotated[Optional[int], typer.Option("--min-image-tokens", min=1, hidden=True)] = None,
    old_max_image_tokens: Annotated[Optional[int], typer.Option("--max-image-tokens", min=1, hidden=True)] = None,
    schema: Annotated[
        Optional[Path], typer.Option(help="JSON schema file: the answer is JSON that follows it (grammar-constrained).")
    ] = None,
    endpoint: Annotated[
        Optional[str], typer.Option(help="Send the chat to this OpenAI-compatible server (vLLM, lfm2-edge serve).")
    ] = None,
    api_key: Annotated[Optional[str], typer.Option(envvar="LFM2_EDGE_API_KEY", help="API key for --endpoint.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (needs --prompt).")] = False,
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose",
            "-v",
            count=True,
            help="Per-answer figures on stderr (durations, tokens/s, image tiles); twice (-vv): llama.cpp's log too.",
        ),
    ] = 0,
) -> None:
    """Chat about images: answer --prompt once, or open an interactive session.

    The model is downloaded into the hub cache on first use and runs from there after,
    also offline.
    """
    from lfm2_edge._llama.log import set_verbose
    from lfm2_edge.images import load_image
    from lfm2_edge.model import VisionModel

    if as_json and prompt is None:
        fail("--json needs --prompt (the interactive session has no single answer to print)")
    if prompt == "-":  # the prompt is stdin's text
        prompt = sys.stdin.read().strip()
        if not prompt:
            fail("-p - read an empty prompt from stdin")
    repetition_penalty = _either(repetition_penalty, repeat_penalty)
    min_image_tokens = _either(min_image_tokens, old_min_image_tokens)
    max_image_tokens = _either(max_image_tokens, old_max_image_tokens)
    if min_image_tokens and max_image_tokens and min_image_tokens > max_image_tokens:
        fail(f"--image-min-tokens ({min_image_tokens}) is larger than --image-max-tokens ({max_image_tokens})")
    set_verbose(verbose >= 2)
    sampling: dict[str, Any] = {
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "min_p": min_p,
        "repetition_penalty": repetition_penalty,
        "seed": seed,
        "max_tokens": max_tokens,
    }
    if schema is not None:
        sampling["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": schema.stem, "schema": _schema(schema)},
        }
    overrides = {
        "system_prompt": system,
        "image_min_tokens": min_image_tokens,
        "image_max_tokens": max_image_tokens,
    }
    with user_errors():
        images = [load_image(ref, allow_private=True) for ref in image or []]  # the user's own URLs
        if endpoint is not None:
            from lfm2_edge.remote import RemoteModel

            with RemoteModel(endpoint, model=_model_ref(ref, model), api_key=api_key, system_prompt=system) as remote:
                label = _model_ref(ref, model) or remote.endpoint
                if prompt is not None:
                    code = answer_once(remote, label, prompt, images, sampling, as_json, verbose=verbose > 0)
                    if code:
                        raise typer.Exit(code)
                else:
                    _interactive(remote, images, sampling, label=label, verbose=verbose > 0)
            return
        resolved = _hub().resolve(_model_ref(ref, model), mmproj=mmproj)
        label = _label(resolved)
        if images and resolved.mmproj_path is None:
            fail(
                f"{resolved.ref.display} has no vision projector: give --mmproj, the mmproj GGUF that "
                "belongs to the model, or use an LFM2-VL model"
            )
        t_load = time.perf_counter()
        with Activity(err, show=err.is_terminal) as loading:
            loading.say(f"loading {label}…")
            vm = VisionModel.from_resolved(
                resolved,
                **_placement(threads, gpu_layers, device, mlock, ctx, verbose >= 2),
                **{k: v for k, v in overrides.items() if v is not None},
            )
            if loading.interrupted:  # Ctrl-C while loading: llama.cpp's load cannot stop midway
                vm.close()
                raise typer.Exit(130)
        load_s = time.perf_counter() - t_load
        if vm.gpu_notice and gpu_layers is not None:  # said only to who asked for a GPU
            err.print(f"note: {vm.gpu_notice}")
        with vm:
            if prompt is not None:
                code = answer_once(
                    vm, label, prompt, images, sampling, as_json, verbose=verbose > 0, load_s=load_s, schema=schema
                )
                if code:
                    raise typer.Exit(code)
            else:
                _interactive(vm, images, sampling, label=label, verbose=verbose > 0, load_s=load_s)


def _label(resolved: Any) -> str:
    """The model as the user named it: ``NAME:QUANT``, ``REPO:QUANT`` or the file's path."""
    ref = resolved.ref
    if ref.is_local:
        return str(ref.text)
    base = ref.entry.name if ref.entry else ref.repo
    return f"{base}:{resolved.quant}" if resolved.quant else str(ref.display)


def _schema(path: Path) -> Any:
    """The --schema file's JSON object: a regular file of at most 1 MiB (never a device or FIFO)."""
    from lfm2_edge.images import read_file

    try:
        data = json.loads(read_file(path, "a JSON schema", 1 << 20).decode("utf-8"))
    except Lfm2EdgeError as exc:
        fail(f"--schema: {exc}")
    except (ValueError, UnicodeDecodeError) as exc:
        fail(f"--schema {path} is not JSON ({exc})")
    if not isinstance(data, dict):
        fail(f"--schema {path} must hold a JSON schema object")
    return data


@app.command()
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
    mmproj: MmprojOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the version, llama.cpp's build, its backends and devices, and the thread count;
    with MODEL, what its files are: architecture, layer pattern, quant types, vocabulary,
    chat template (and its hash), projector layout, the catalog's presets."""
    if ref is not None:
        from lfm2_edge.fileinfo import describe, report_lines

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
    }
    if as_json:
        _emit_json(data)
        return
    out = Console(highlight=False)
    for key, value in data.items():
        if key == "devices":
            value = "; ".join(f"{d.name} ({d.type}, {d.description}, {d.memory_total // 2**20} MiB)" for d in devices)
        elif isinstance(value, list):
            value = ", ".join(value)
        out.print(f"[bold]{key}[/]: {value}")


@app.command()
def doctor(
    ref: Annotated[
        Optional[str],
        typer.Argument(
            metavar="[MODEL]",
            help="Also estimate this model's memory (from the catalog or the cache: nothing is downloaded).",
        ),
    ] = None,
    model: ModelOpt = None,
    mmproj: MmprojOpt = None,
    ctx: Annotated[int, typer.Option(min=64, help="Context size to plan for.")] = 4096,
    measure: Annotated[bool, typer.Option(help="Run one image chat with MODEL and report its peak RSS.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check this device (CPU, SIMD, RAM, GPUs, disk) and recommend the model that fits."""
    from lfm2_edge.doctor import measure_peak_rss, model_estimate, report_lines, system_report

    ref = _model_ref(ref, model)
    if measure and ref is None:
        fail("--measure needs a MODEL to run (lfm2-edge doctor LFM2-VL-450M --measure)")
    checked: dict[str, Any] | None = None
    if ref is not None:
        with user_errors():
            checked = model_estimate(_hub(), ref, mmproj, ctx, download=measure)
            if measure:  # before system_report: a child inherits the bandwidth probe's peak RSS
                resolved = _hub().resolve(ref, mmproj=mmproj)
                est_total = checked["estimate_mib"]["total"] * 2**20
                rss, _ = measure_peak_rss(resolved.model_path, resolved.mmproj_path, n_ctx=ctx)
                checked["measured_peak_rss_mib"] = round(rss / 2**20, 1)
                checked["estimate_error_pct"] = round(100 * (est_total - rss) / rss, 1)
    report = system_report(n_ctx=ctx)
    if checked is not None:
        report["model"] = checked
    if as_json:
        _emit_json(report)
        return
    out = Console(highlight=False, soft_wrap=True)
    for key, value in report_lines(report, ctx):
        out.print(f"[bold]{key}[/]: {value}")


# Defined beside this module, registered here so that --help lists every command in this order.
app.command()(serve)
app.command()(pull)
app.command("models")(list_models)
app.command("rm")(remove)


@app.command()
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

    from lfm2_edge.bench import DEFAULT_MODEL_DIR, GET_MODELS, BenchConfig, BenchTarget, run_bench

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


def main() -> None:
    """The entry point: usage errors are one line on stderr and exit code 2."""
    # typer vendors click; its exceptions live there (and are click's own in older typers)
    try:
        import typer._click.exceptions as click_errors
    except ImportError:  # pragma: no cover
        import click.exceptions as click_errors  # type: ignore[no-redef]

    try:
        code = app(standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:  # `lfm2-edge` alone: the help
        sys.stdout.write(exc.ctx.get_help() + "\n")
        code = 0
    except click_errors.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "lfm2-edge"
        err.print(f"[bold red]error:[/] {escape(exc.format_message())} (see {where} --help)")
        code = exc.exit_code
    except typer.Abort:  # Ctrl-C outside an answer
        sys.stderr.write("\n")
        code = 130
    except click_errors.ClickException as exc:
        err.print(f"[bold red]error:[/] {escape(exc.format_message())}")
        code = exc.exit_code
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
