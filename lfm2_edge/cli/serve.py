"""``lfm2-edge serve``: its options, the models it serves (one, or several loaded on
demand: :mod:`lfm2_edge.server.pool`) and the names they answer to. Registered on
:data:`lfm2_edge.cli._common.app` by :mod:`lfm2_edge.cli`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from lfm2_edge.cli._common import (
    DeviceOpt,
    GpuLayersOpt,
    ImageMaxTokensOpt,
    ImageMinTokensOpt,
    MlockOpt,
    MmprojOpt,
    ModelOpt,
    RepackOpt,
    ThreadsOpt,
    _check_image_budget,
    _hub,
    _placement,
    err,
    fail,
    user_errors,
)

__all__ = ["DEFAULT_KEEP_ALIVE", "exposure_warning", "serve"]

#: ``--keep-alive``'s default, Ollama's: an idle model's memory is given back after five
#: minutes (a camera that asks twice an hour, a second model asked now and then), and the
#: next request pays a reload, from the page cache when it was recent (docs/deploy.md has
#: the measured figures); ``doctor`` says what it buys on a device.
DEFAULT_KEEP_ALIVE = "5m"


def serve(
    refs: Annotated[
        Optional[list[str]],
        typer.Argument(
            metavar="[MODEL]...",
            help="NAME[:QUANT], ORG/REPO[:QUANT] or a .gguf path [default: LFM2-VL-450M:Q4_0]; several: "
            "one server for all, each loaded when a request names it.",
            show_default=False,
        ),
    ] = None,
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
    image_min_tokens: ImageMinTokensOpt = None,
    image_max_tokens: ImageMaxTokensOpt = None,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    device: DeviceOpt = None,
    mlock: MlockOpt = False,
    repack: RepackOpt = True,
    ctx: Annotated[int, typer.Option(min=64, help="Context size in tokens, per slot.")] = 4096,
    keep_alive: Annotated[
        str,
        typer.Option(
            envvar="LFM2_EDGE_KEEP_ALIVE",
            help="How long a model stays loaded after its last request, as Ollama's keep_alive ('5m', '30s'; "
            "0: unload after each request; -1: never); a request's keep_alive overrides it.",
        ),
    ] = DEFAULT_KEEP_ALIVE,
    models_max: Annotated[
        Optional[int],
        typer.Option(min=1, help="Most models loaded at once; the least recently used idle one is unloaded first."),
    ] = None,
    memory_budget: Annotated[
        Optional[float],
        typer.Option(
            min=0,
            help="MB the loaded models may hold together, by doctor's estimate [default: the RAM free at start, "
            "less doctor's reserve]; 0: no budget.",
            show_default=False,
        ),
    ] = None,
    max_tokens: Annotated[
        Optional[int],
        typer.Option(min=1, help="Answer length for requests without max_tokens [default: until the context is full]."),
    ] = None,
    allowed_origins: Annotated[
        Optional[list[str]],
        typer.Option(help="Browser origin allowed to call the API besides localhost pages (repeatable; '*': any)."),
    ] = None,
    metrics: Annotated[
        bool,
        typer.Option(
            help="Serve Prometheus metrics on /metrics (llama-server's names; needs the API key when one is set; "
            "pip install 'lfm2-edge[metrics]')."
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show llama.cpp's log and each request.")] = False,
) -> None:
    """Serve the OpenAI chat-completions API (/v1/chat/completions, /v1/models, /health)
    and Ollama's (/api/chat, /api/generate, /api/tags, ...) on one port.

    Once it accepts connections it writes one JSON line on stdout:
    {"event": "ready", "url": "http://127.0.0.1:PORT/v1", "port": PORT, "pid": PID}.
    """
    from lfm2_edge._llama.log import set_verbose
    from lfm2_edge.local.model import VisionModel
    from lfm2_edge.local.placement import default_slots
    from lfm2_edge.server import (
        Pool,
        Served,
        ServerConfig,
        create_app,
        default_budget,
        parse_duration,
        run_server,
        size_of,
    )

    if metrics and importlib.util.find_spec("prometheus_client") is None:
        fail("--metrics needs prometheus_client: pip install 'lfm2-edge\\[metrics]'")  # rich markup: \\[ is a bracket
    try:
        limits = json.loads(limit_mm_per_prompt)
        max_images = int(limits.get("image", 1))
        if max_images < 0:
            raise ValueError
    except (ValueError, TypeError, AttributeError):
        fail(f"--limit-mm-per-prompt must look like '{{\"image\": 2}}' (got {limit_mm_per_prompt!r})")
    try:
        keep = parse_duration(keep_alive)
    except ValueError as exc:
        fail(f"--keep-alive must be {exc}")
    refs = list(refs or [])
    if model is not None:
        if refs and refs != [model]:
            fail(f"give the model once: as MODEL ({' '.join(refs)}) or as --model ({model})")
        refs = [model]
    if len(refs) > 1 and mmproj is not None:
        fail("--mmproj names one model's projector: serve a single model with it, or let each model find its own")
    if len(refs) > 1 and served_model_name:
        fail("--served-model-name renames one model: with several, each answers to its own names")
    set_verbose(verbose)
    with user_errors():
        hub = _hub()
        n_slots = slots or default_slots(threads)
        place = _placement(threads, gpu_layers, device, mlock, ctx * n_slots, verbose, repack=repack)
        served: list[Served] = []
        wanted: list[str | None] = [*refs] or [None]  # None: the default model
        for one in wanted:
            resolved = hub.resolve(one, mmproj=mmproj)
            budget = _check_image_budget(resolved, image_min_tokens, image_max_tokens)

            def load(resolved: Any = resolved, budget: dict[str, int] = budget) -> list[Any]:
                return [
                    VisionModel.from_resolved(
                        resolved,
                        **place,
                        n_seq_max=n_slots,
                        system_prompt=None,  # as vLLM and transformers: no system message the request did not send
                        allow_remote_images=allow_remote_images,
                        allow_private_urls=allow_private_image_urls,
                        embedding_cache_mb=embedding_cache_mb,
                        state_cache_mb=state_cache_mb,
                        **budget,
                    )
                    for _ in range(n_parallel)
                ]

            served.append(
                Served(
                    tuple(served_model_name or _model_names(resolved)),
                    str(resolved.model_path),
                    str(resolved.mmproj_path) if resolved.mmproj_path else None,
                    load=load,
                    size=size_of(resolved.model_path, resolved.mmproj_path, n_ctx=ctx * n_slots, replicas=n_parallel),
                    sampling=resolved.model_kwargs().get("sampling"),
                    n_ctx_per_seq=ctx,
                )
            )
        if memory_budget is None:
            budget_bytes: int | None = default_budget()
        else:
            budget_bytes = int(memory_budget * 2**20) if memory_budget > 0 else None
        try:
            pool = Pool(served, keep_alive=keep, models_max=models_max, memory_budget=budget_bytes)
        except ValueError as exc:
            fail(str(exc))
        pool.load_now(served[0])  # the first model at start: a broken file fails here, not at the first request
    models = served[0].models
    if models[0].n_ctx != ctx * n_slots:  # llama.cpp sizes the context in blocks: say so
        err.print(f"note: --ctx {ctx} is rounded to {models[0].n_ctx // n_slots} tokens per slot (llama.cpp's blocks)")
    if models[0].gpu_notice and gpu_layers is not None:
        err.print(f"note: {models[0].gpu_notice}")
    names = pool.names
    config = ServerConfig(
        model_names=names,
        api_key=api_key,
        max_images=max_images,
        allow_remote_images=allow_remote_images,
        max_queue=max_queue,
        default_max_tokens=max_tokens,
        allowed_origins=tuple(allowed_origins or ()),
        metrics=metrics,
    )
    if warning := exposure_warning(host, api_key):
        err.print(f"[yellow]warning:[/] {warning}")
    if "*" in (allowed_origins or ()) and not api_key:
        err.print(
            "[yellow]warning:[/] --allowed-origins '*' without --api-key: any web page you open can use the model"
        )

    app_ = create_app(pool, config)

    with user_errors():
        capacity = f"{n_parallel} x {n_slots} slot(s)"
        if len(served) > 1:
            capacity += f" per model, {len(served)} models"
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
