"""``lfm2-edge chat``: one answer (``--prompt``) or the interactive session, locally or
through ``--endpoint``."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from lfm2_edge.chat.images import load_image
from lfm2_edge.cli._common import (
    DeviceOpt,
    GpuLayersOpt,
    ImageMaxTokensOpt,
    ImageMinTokensOpt,
    MlockOpt,
    MmprojOpt,
    ModelOpt,
    RefArg,
    RepackOpt,
    ThreadsOpt,
    _check_image_budget,
    _either,
    _hub,
    _model_ref,
    _placement,
    err,
    fail,
    read_schema,
    user_errors,
)
from lfm2_edge.cli.activity import Activity
from lfm2_edge.cli.answer import answer_once
from lfm2_edge.cli.repl import interactive as _interactive
from lfm2_edge.errors import UnknownModelError


def chat(
    ref: RefArg = None,
    model: ModelOpt = None,
    mmproj: MmprojOpt = None,
    image: Annotated[
        Optional[list[str]],
        typer.Option("--image", "-i", help="Image path, data: URI or http(s) URL; repeat for more."),
    ] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="Answer this once and exit.")] = None,
    system: Annotated[
        Optional[str], typer.Option(help="System prompt [default: the model card's]; '' for none.")
    ] = None,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    device: DeviceOpt = None,
    mlock: MlockOpt = False,
    repack: RepackOpt = True,
    ctx: Annotated[int, typer.Option(min=64, help="Context size in tokens.")] = 4096,
    max_tokens: Annotated[int, typer.Option(min=1, help="Most tokens to generate.")] = 512,
    temperature: Annotated[
        Optional[float], typer.Option(min=0.0, help="[default: the card's, 0.1 VL / 0.3 text]")
    ] = None,
    top_p: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="[default: 1.0, off]")] = None,
    top_k: Annotated[Optional[int], typer.Option(min=0, help="[default: 0, off]")] = None,
    min_p: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="[default: 0.15]")] = None,
    repetition_penalty: Annotated[
        Optional[float], typer.Option("--repetition-penalty", min=0.0, help="[default: 1.05]")
    ] = None,
    seed: Annotated[
        Optional[int], typer.Option(help="Sampling seed, for repeatable answers [default: a new one each answer].")
    ] = None,
    min_image_tokens: ImageMinTokensOpt = None,
    max_image_tokens: ImageMaxTokensOpt = None,
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
    hide_thinking: Annotated[
        bool,
        typer.Option("--hide-thinking", help="Leave out a thinking model's reasoning (shown dimmed on stderr)."),
    ] = False,
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
    from lfm2_edge.local.model import VisionModel

    if as_json and prompt is None:
        fail("--json needs --prompt (the interactive session has no single answer to print)")
    if ref is not None and prompt is None and len(ref.split()) > 1 and not Path(ref).expanduser().exists():
        # `lfm2-edge chat "What is in this image?"`, as ollama and llm take a prompt
        fail(f"{ref!r} is not a model name; to ask it, give it with -p: lfm2-edge chat -p {shlex.quote(ref)}")
    if prompt == "-":  # the prompt is stdin's text
        prompt = sys.stdin.read().strip()
        if not prompt:
            fail("-p - read an empty prompt from stdin")
    repetition_penalty = _either(repetition_penalty, repeat_penalty)
    min_image_tokens = _either(min_image_tokens, old_min_image_tokens)
    max_image_tokens = _either(max_image_tokens, old_max_image_tokens)
    if min_image_tokens and max_image_tokens and min_image_tokens > max_image_tokens:  # before any download
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
            "json_schema": {"name": schema.stem, "schema": read_schema(schema)},
        }
    # the card's system prompt unless --system is given; --system '': no system message at all
    overrides: dict[str, Any] = {} if system is None else {"system_prompt": system or None}
    with user_errors():
        images = [load_image(ref, allow_private=True) for ref in image or []]  # the user's own URLs
        if endpoint is not None:
            from lfm2_edge.openai.client import RemoteModel

            with RemoteModel(endpoint, model=_model_ref(ref, model), api_key=api_key, system_prompt=system) as remote:
                label = _model_ref(ref, model) or remote.endpoint
                if prompt is not None:
                    code = answer_once(
                        remote,
                        label,
                        prompt,
                        images,
                        sampling,
                        as_json,
                        verbose=verbose > 0,
                        hide_thinking=hide_thinking,
                        schema=schema,
                    )
                    if code:
                        raise typer.Exit(code)
                else:
                    _interactive(
                        remote, images, sampling, label=label, verbose=verbose > 0, hide_thinking=hide_thinking
                    )
            return
        try:
            resolved = _hub().resolve(_model_ref(ref, model), mmproj=mmproj)
        except UnknownModelError as exc:
            if prompt is None and ref is not None and "did you mean" not in str(exc):
                fail(f"{exc} (a question goes after -p: lfm2-edge chat -p {shlex.quote(ref)})")
            raise
        label = _label(resolved)
        if images and resolved.mmproj_path is None:
            fail(
                f"{resolved.ref.display} has no vision projector: give --mmproj, the mmproj GGUF that "
                "belongs to the model, or use an LFM2-VL model"
            )
        overrides.update(_check_image_budget(resolved, min_image_tokens, max_image_tokens))
        t_load = time.perf_counter()
        with Activity(err, show=err.is_terminal) as loading:
            loading.say(f"loading {label}…")
            vm = VisionModel.from_resolved(
                resolved,
                **_placement(threads, gpu_layers, device, mlock, ctx, verbose >= 2, repack=repack),
                **overrides,
            )
            if loading.interrupted:  # Ctrl-C while loading: llama.cpp's load cannot stop midway
                vm.close()
                raise typer.Exit(130)
        load_s = time.perf_counter() - t_load
        if getattr(vm, "n_ctx", ctx) != ctx:  # llama.cpp sizes the context in blocks: say so, not silently
            err.print(f"note: --ctx {ctx} is rounded up to {vm.n_ctx} tokens (llama.cpp's context grows in blocks)")
        if vm.gpu_notice and gpu_layers is not None:  # said only to who asked for a GPU
            err.print(f"note: {vm.gpu_notice}")
        with vm:
            if prompt is not None:
                code = answer_once(
                    vm,
                    label,
                    prompt,
                    images,
                    sampling,
                    as_json,
                    verbose=verbose > 0,
                    load_s=load_s,
                    schema=schema,
                    hide_thinking=hide_thinking,
                )
                if code:
                    raise typer.Exit(code)
            else:
                _interactive(
                    vm, images, sampling, label=label, verbose=verbose > 0, load_s=load_s, hide_thinking=hide_thinking
                )


def _label(resolved: Any) -> str:
    """The model as the user named it: ``NAME:QUANT``, ``REPO:QUANT`` or the file's path."""
    ref = resolved.ref
    if ref.is_local:
        return str(ref.text)
    base = ref.entry.name if ref.entry else ref.repo
    return f"{base}:{resolved.quant}" if resolved.quant else str(ref.display)
