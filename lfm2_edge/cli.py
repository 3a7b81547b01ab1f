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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console
from rich.filesize import decimal as _size
from rich.markup import escape

from lfm2_edge import __version__
from lfm2_edge.answer import answer_once
from lfm2_edge.errors import Lfm2EdgeError, ModelFileError
from lfm2_edge.progress import Activity
from lfm2_edge.repl import interactive as _interactive

app = typer.Typer(
    name="lfm2-edge",
    help="Run Liquid AI's LFM2-VL vision-language models on your own machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "[default: 0.15]" is text, not a markup tag
)
err = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_USER_ERROR = 2


def fail(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", markup=True)
    raise typer.Exit(EXIT_USER_ERROR)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn lfm2-edge's typed errors into one line and exit code 2."""
    try:
        yield
    except Lfm2EdgeError as exc:
        fail(str(exc))


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
    sys.stdout.flush()


RefArg = Annotated[
    Optional[str],
    typer.Argument(
        metavar="[MODEL]",
        help="NAME[:QUANT] (LFM2-VL-450M:Q8_0), ORG/REPO[:QUANT] or a .gguf path [default: LFM2-VL-450M:Q4_0].",
        show_default=False,
    ),
]
ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="Same as MODEL.", show_default=False)]


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"lfm2-edge {__version__}\n")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    """Run Liquid AI's LFM2-VL vision-language models on your own machine."""


MmprojOpt = Annotated[
    Optional[Path], typer.Option("--mmproj", help="Vision projector GGUF [default: the model's own].")
]


# Where a model runs: the same options on chat and serve.
ThreadsOpt = Annotated[Optional[int], typer.Option(min=1, help="CPU threads [default: physical cores].")]
GpuLayersOpt = Annotated[
    Optional[str],
    typer.Option(help="Layers to offload: auto (all when a GPU backend is present), -1 (all) or N. [default: auto]"),
]
DeviceOpt = Annotated[Optional[str], typer.Option(help="The GPU device to use (names: `lfm2-edge info`).")]
MlockOpt = Annotated[bool, typer.Option(help="Lock the weights in RAM (no paging; needs RLIMIT_MEMLOCK).")]


def _placement(
    threads: int | None, gpu_layers: str | None, device: str | None, mlock: bool, ctx: int, verbose: bool
) -> dict[str, Any]:
    """VisionModel arguments for where and how a model runs (chat and serve alike)."""
    return {
        "n_threads": threads,
        "n_gpu_layers": gpu_layers,  # None: $LFM2_EDGE_GPU_LAYERS, else auto
        "device": device,
        "use_mlock": mlock,
        "n_ctx": ctx,
        "verbose": verbose,
    }


def _hub() -> Any:
    from lfm2_edge.hub import Hub, RichProgress

    return Hub(progress=RichProgress(err))


def _model_ref(ref: str | None, model: str | None) -> str | None:
    if ref is not None and model is not None and ref != model:
        fail(f"give the model once: as MODEL ({ref}) or as --model ({model})")
    return ref or model


def _either(value: Any, old_spelling: Any) -> Any:
    """An option's value, from its current name or its old (hidden) one."""
    return value if value is not None else old_spelling


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


@app.command()
def serve(
    ref: RefArg = None,
    model: ModelOpt = None,
    mmproj: MmprojOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind; keep 127.0.0.1 unless clients are remote.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="0: any free port (see the ready line).")] = 8000,
    parent_pid: Annotated[
        Optional[int], typer.Option(help="Exit when this process ends (for an app that runs serve as a sidecar).")
    ] = None,
    api_key: Annotated[
        Optional[str], typer.Option(envvar="LFM2_EDGE_API_KEY", help="Require Authorization: Bearer KEY on /v1.")
    ] = None,
    served_model_name: Annotated[
        Optional[list[str]], typer.Option(help="Model id(s) clients may ask for [default: the model's names].")
    ] = None,
    limit_mm_per_prompt: Annotated[str, typer.Option(help="Most images per request, as vLLM: '{\"image\": N}'.")] = (
        '{"image": 1}'
    ),
    allow_remote_images: Annotated[bool, typer.Option(help="Fetch http(s) image URLs (off: data: URIs only).")] = False,
    allow_private_image_urls: Annotated[
        bool, typer.Option(help="With --allow-remote-images, also fetch from loopback and private addresses.")
    ] = False,
    slots: Annotated[
        Optional[int],
        typer.Option(
            min=1,
            help="Requests decoded together in one context, one sequence each [default: 2 per core, 2-8, "
            "memory permitting].",
        ),
    ] = None,
    n_parallel: Annotated[
        int, typer.Option(min=1, help="Replicas of the batched model (weights shared); each has --slots.")
    ] = 1,
    max_queue: Annotated[int, typer.Option(min=1, help="Requests waiting or running before new ones get 429.")] = 64,
    embedding_cache_mb: Annotated[
        float, typer.Option(min=0, help="Image embeddings kept per instance (LRU, MB; 0: none).")
    ] = 32,
    state_cache_mb: Annotated[
        float, typer.Option(min=0, help="Conversation states kept per instance (LRU, MB; 0: none).")
    ] = 64,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    device: DeviceOpt = None,
    mlock: MlockOpt = False,
    ctx: Annotated[int, typer.Option(min=64, help="Context size in tokens, per slot.")] = 4096,
    max_tokens: Annotated[
        Optional[int],
        typer.Option(min=1, help="Answer length for requests without max_tokens [default: until the context is full]."),
    ] = None,
    allowed_origins: Annotated[
        Optional[list[str]],
        typer.Option(help="Browser origin allowed to call the API besides localhost pages (repeatable; '*': any)."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show llama.cpp's log and each request.")] = False,
) -> None:
    """Serve the OpenAI chat-completions API (/v1/chat/completions, /v1/models, /health).

    Once it accepts connections it writes one JSON line on stdout:
    {"event": "ready", "url": "http://127.0.0.1:PORT/v1", "port": PORT, "pid": PID}.
    """
    from lfm2_edge._llama.log import set_verbose
    from lfm2_edge.batching import default_slots
    from lfm2_edge.model import VisionModel
    from lfm2_edge.server import ServerConfig, create_app

    try:
        limits = json.loads(limit_mm_per_prompt)
        max_images = int(limits.get("image", 1))
        if max_images < 0:
            raise ValueError
    except (ValueError, TypeError, AttributeError):
        fail(f"--limit-mm-per-prompt must look like '{{\"image\": 2}}' (got {limit_mm_per_prompt!r})")
    set_verbose(verbose)
    with user_errors():
        resolved = _hub().resolve(_model_ref(ref, model), mmproj=mmproj)
        n_slots = slots or default_slots(threads)
        models = [
            VisionModel.from_resolved(
                resolved,
                **_placement(threads, gpu_layers, device, mlock, ctx * n_slots, verbose),
                n_seq_max=n_slots,
                allow_remote_images=allow_remote_images,
                allow_private_urls=allow_private_image_urls,
                embedding_cache_mb=embedding_cache_mb,
                state_cache_mb=state_cache_mb,
            )
            for _ in range(n_parallel)
        ]
    if models[0].gpu_notice and gpu_layers is not None:
        err.print(f"note: {models[0].gpu_notice}")
    names = served_model_name or _model_names(resolved)
    config = ServerConfig(
        model_names=names,
        api_key=api_key,
        max_images=max_images,
        allow_remote_images=allow_remote_images,
        max_queue=max_queue,
        default_max_tokens=max_tokens,
        allowed_origins=tuple(allowed_origins or ()),
    )
    if warning := exposure_warning(host, api_key):
        err.print(f"[yellow]warning:[/] {warning}")
    if "*" in (allowed_origins or ()) and not api_key:
        err.print(
            "[yellow]warning:[/] --allowed-origins '*' without --api-key: any web page you open can use the model"
        )

    def close_models() -> None:
        for m in models:
            m.close()

    app_ = create_app(models, config, on_shutdown=close_models)
    from lfm2_edge.sidecar import run_server

    with user_errors():
        capacity = f"{n_parallel} x {n_slots} slot(s)"
        run_server(app_, host, port, names[0], capacity, verbose=verbose, parent_pid=parent_pid)


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The warning for a server reachable beyond this machine without a key."""
    if api_key or host in ("127.0.0.1", "localhost", "::1") or host.startswith("127."):
        return None
    return f"serving on {host} without --api-key: anyone who can reach this port can use the model"


def _model_names(resolved: Any) -> list[str]:
    """The ids a served model answers to: its reference, its catalog name, its repos."""
    ref = resolved.ref
    if ref.is_local:
        return [Path(ref.text).name, Path(ref.text).stem]
    names = [ref.display]
    if resolved.entry is not None:
        names += [resolved.entry.name, f"LiquidAI/{resolved.entry.name}"]
    if ref.repo:
        names += [ref.repo, ref.repo.removesuffix("-GGUF")]
    return list(dict.fromkeys(names))


@app.command()
def pull(
    ref: RefArg = None,
    model: ModelOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Download a model and its vision projector into the hub cache (or check the cached copy)."""
    with user_errors():
        resolved = _hub().pull(_model_ref(ref, model))
    files = [p for p in (resolved.model_path, resolved.mmproj_path) if p is not None]
    if as_json:
        _emit_json(
            {
                "model": resolved.ref.display,
                "repo": resolved.ref.repo,
                "quant": resolved.quant,
                "model_path": str(resolved.model_path),
                "mmproj_path": str(resolved.mmproj_path) if resolved.mmproj_path else None,
                "downloaded": resolved.downloaded,
                "bytes": sum(p.stat().st_size for p in files),
            }
        )
        return
    state = "downloaded" if resolved.downloaded else "already in the cache, checked"
    err.print(f"{resolved.ref.display}: {state}")
    for path in files:
        err.print(f"  {path} ({_size(path.stat().st_size)})")


@app.command("models")
def list_models(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the models in the cache: NAME:QUANT, size (with its projector) and path."""
    from lfm2_edge.hub import Hub

    hub = Hub()
    files = hub.cached()
    if as_json:
        _emit_json(
            [
                {
                    "name": f.name,
                    "repo": f.repo,
                    "file": f.filename,
                    "quant": f.quant,
                    "kind": "mmproj" if f.is_mmproj else "model",
                    "bytes": f.size,
                    "path": str(f.path),
                }
                for f in files
            ]
        )
        return
    if not files:
        err.print(f"no models in {hub.cache_dir}; `lfm2-edge pull LFM2-VL-450M` fetches the default one")
        return
    rows = []
    for f in (f for f in files if not f.is_mmproj):
        proj = [p for p in files if p.is_mmproj and p.repo == f.repo]
        size = f.size + (proj[0].size if proj else 0)
        vision = f"+ {Path(proj[0].filename).name}" if proj else "text only"
        rows.append((f"{f.name}:{f.quant}" if f.quant else f.name, _size(size), vision, str(f.path)))
    if not sys.stdout.isatty():  # for scripts and pipes: whole values, tab-separated
        for row in rows:
            sys.stdout.write("\t".join(row) + "\n")
        return
    from rich.table import Table

    table = Table("model", "size", "projector", "path", title=f"models in {hub.cache_dir}")
    for row in rows:
        table.add_row(*row)
    for column in table.columns:
        column.overflow = "fold"  # never "…": a path is copied from here
    Console(highlight=False).print(table)


@app.command("rm")
def remove(
    ref: Annotated[
        Optional[str], typer.Argument(metavar="MODEL", help="NAME[:QUANT] or ORG/REPO[:QUANT]; no quant: all.")
    ] = None,
    model: ModelOpt = None,
) -> None:
    """Remove a cached model (one quant, or every file of the model when no quant is named)."""
    from lfm2_edge.hub import Hub

    ref = _model_ref(ref, model)
    if ref is None:
        fail("rm needs a MODEL (lfm2-edge models lists them)")
    with user_errors():
        removed = Hub().remove(ref)
    for f in removed:
        err.print(f"removed {f.filename} ({_size(f.size)})")


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
