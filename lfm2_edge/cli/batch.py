"""``lfm2-edge batch``: a folder (or a manifest, or an OpenAI Batch file) of images in,
one answer per item out, resumable.

Exit codes: 0 every item answered (or done by an earlier run); 1 the run finished but
some items are error records (or ``--fail-fast`` stopped at the first); 2 a mistake in
the command (a missing input, a bad schema, an output of other columns), nothing run;
130 Ctrl-C: every finished answer is kept, rerun the same command to resume.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

import lfm2_edge
from lfm2_edge.chat.images import DEFAULT_MAX_PIXELS, read_file
from lfm2_edge.cli._common import (
    DeviceOpt,
    GpuLayersOpt,
    MlockOpt,
    MmprojOpt,
    ModelOpt,
    RepackOpt,
    ThreadsOpt,
    _emit_json,
    _hub,
    _placement,
    err,
    fail,
    read_schema,
    user_errors,
)
from lfm2_edge.cli.activity import Activity
from lfm2_edge.jobs import ray as jobs_ray
from lfm2_edge.jobs.batch import (
    DEFAULT_PROMPT,
    BatchOptions,
    Interrupted,
    LocalBackend,
    RemoteBackend,
    Runner,
    Summary,
)
from lfm2_edge.jobs.inputs import collect
from lfm2_edge.jobs.outputs import make_writer

EXIT_ITEMS_FAILED = 1
EXIT_INTERRUPTED = 130


def _split(args: list[str], model: str | None, remote: bool) -> tuple[str | None, list[str]]:
    """MODEL and the INPUTs: the first argument is the model unless --model or
    --endpoint gave one, or it is an existing input (a file that is not .gguf, a folder)."""
    if model is not None or remote or not args:
        return model, args
    first = Path(args[0])
    if len(args) == 1 or (first.exists() and first.suffix.lower() != ".gguf") or any(c in args[0] for c in "*?["):
        return None, args
    return args[0], args[1:]


def batch(
    args: Annotated[
        list[str],
        typer.Argument(
            metavar="[MODEL] INPUT...",
            help="The model (as for chat), then image files, folders, globs, a CSV/JSONL manifest "
            "(id, image or images, prompt) or an OpenAI Batch input file.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Output file: JSONL, or CSV by a .csv name; appended to.")
    ] = None,
    sidecar: Annotated[
        Optional[str], typer.Option(help="Write txt or json beside each image (photo.jpg -> photo.txt).")
    ] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help=f"[default: {DEFAULT_PROMPT!r}]")] = None,
    prompt_file: Annotated[Optional[Path], typer.Option(help="Read the prompt from this file.")] = None,
    system: Annotated[Optional[str], typer.Option(help="System prompt [default: the model card's].")] = None,
    schema: Annotated[
        Optional[Path], typer.Option(help="JSON schema file: each answer is JSON that follows it (validated).")
    ] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Folders: include sub-folders.")] = False,
    model: ModelOpt = None,
    mmproj: MmprojOpt = None,
    slots: Annotated[
        Optional[int], typer.Option(min=1, help="Items answered at once [default: 2 per core, 2 to 8].")
    ] = None,
    readers: Annotated[int, typer.Option(min=1, help="Threads reading and decoding images ahead.")] = 2,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    device: DeviceOpt = None,
    mlock: MlockOpt = False,
    repack: RepackOpt = True,
    ctx: Annotated[int, typer.Option(min=64, help="Context size in tokens, per slot.")] = 4096,
    max_tokens: Annotated[int, typer.Option(min=1, help="Most tokens to generate per item.")] = 256,
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
    max_pixels: Annotated[
        int, typer.Option(min=1, help="Larger images are error records (decompression bombs, scans).")
    ] = DEFAULT_MAX_PIXELS,
    endpoint: Annotated[
        Optional[list[str]],
        typer.Option(help="Send the items to this OpenAI-compatible server instead; repeat for several."),
    ] = None,
    endpoint_concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight per --endpoint.")] = 4,
    retries: Annotated[int, typer.Option(min=0, help="Retries of a failed --endpoint request (backoff).")] = 4,
    api_key: Annotated[Optional[str], typer.Option(envvar="LFM2_EDGE_API_KEY", help="API key for --endpoint.")] = None,
    ray: Annotated[bool, typer.Option("--ray", help="Run on a Ray cluster: one model per Ray actor.")] = False,
    ray_address: Annotated[
        Optional[str], typer.Option(help="The Ray cluster to join (ray start --head's address) [default: local].")
    ] = None,
    ray_actors: Annotated[Optional[int], typer.Option(min=1, help="Ray actors [default: CPUs / threads].")] = None,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first item that fails.")] = False,
    retry_errors: Annotated[bool, typer.Option("--retry-errors", help="Answer earlier error records again.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="-vv: llama.cpp's log too.")] = 0,
) -> None:
    """Answer a prompt about every image of a folder, glob or manifest, one record each.

    Resumable: a rerun with the same --out skips what is done (a changed image is done
    again). Exit codes: 0 all answered, 1 some items failed (error records), 2 a mistake
    in the command, 130 interrupted (finished answers kept; rerun to resume).
    """
    if prompt is not None and prompt_file is not None:
        fail("give the prompt once: --prompt or --prompt-file")
    if min_image_tokens and max_image_tokens and min_image_tokens > max_image_tokens:
        fail(f"--image-min-tokens ({min_image_tokens}) is larger than --image-max-tokens ({max_image_tokens})")
    if ray and endpoint:
        fail("--ray runs models on the cluster; --endpoint sends to servers: choose one")
    ref, inputs = _split(args, model, bool(endpoint))
    if not inputs:
        fail("give the inputs: image files, folders, globs or a manifest")
    with user_errors():
        if prompt_file is not None:
            prompt = read_file(prompt_file, "a prompt", 1 << 20).decode("utf-8", "replace").strip()
            if not prompt:
                fail(f"--prompt-file {prompt_file} is empty")
        schema_obj = _schema(schema) if schema is not None else None
        job = collect(inputs, recursive=recursive)
        writer = make_writer(out, kind=job.kind, schema=schema_obj, sidecar=sidecar)
    options: dict[str, Any] = {
        k: v
        for k, v in {
            "temperature": temperature,
            "top_p": top_p,
            "top_k": top_k,
            "min_p": min_p,
            "repetition_penalty": repetition_penalty,
            "seed": seed,
            "max_tokens": max_tokens,
        }.items()
        if v is not None
    }
    opts = BatchOptions(
        prompt=prompt or DEFAULT_PROMPT,
        system=system,
        schema=schema_obj,
        options=options,
        readers=readers,
        fail_fast=fail_fast,
        retry_errors=retry_errors,
        max_pixels=max_pixels,
    )
    loads: dict[str, Any] = {
        k: v for k, v in {"image_min_tokens": min_image_tokens, "image_max_tokens": max_image_tokens}.items() if v
    } | {"repack": repack}
    try:
        if ray:
            summary = _run_ray(ref, mmproj, job, writer, opts, ray_address, ray_actors, slots, threads, ctx, loads)
        elif endpoint:
            backend = RemoteBackend(
                endpoint,
                model=ref,
                api_key=api_key,
                system_prompt=system,
                per_endpoint=endpoint_concurrency,
                retries=retries,
            )
            opts.model_name = ref or "lfm2-edge"
            try:
                summary = _run(backend, job, writer, opts, backend.label)
            finally:
                backend.close()
        else:
            summary = _run_local(
                ref, mmproj, job, writer, opts, slots, threads, gpu_layers, device, mlock, ctx, loads, verbose
            )
    finally:
        writer.close()
    summary.out = str(writer.path) if writer.path else (f"sidecar .{sidecar} files" if sidecar else None)
    _report(summary, as_json)
    if summary.stopped == "interrupted":
        raise typer.Exit(EXIT_INTERRUPTED)
    if summary.failed:
        raise typer.Exit(EXIT_ITEMS_FAILED)


def _run_local(
    ref: str | None,
    mmproj: Path | None,
    job: Any,
    writer: Any,
    opts: BatchOptions,
    slots: int | None,
    threads: int | None,
    gpu_layers: str | None,
    device: str | None,
    mlock: bool,
    ctx: int,
    loads: dict[str, Any],
    verbose: int,
) -> Summary:
    n_slots = slots or _default_slots(threads)
    with user_errors():
        resolved = _hub().resolve(ref, mmproj=mmproj)
        if resolved.mmproj_path is None:
            fail(f"{resolved.ref.display} has no vision projector: give --mmproj, or use an LFM2-VL model")
        with Activity(err, show=err.is_terminal) as loading:
            loading.say(f"loading {resolved.ref.display} with {n_slots} slot(s)…")
            vm = lfm2_edge.VisionModel.from_resolved(
                resolved,
                **_placement(threads, gpu_layers, device, mlock, ctx * n_slots, verbose >= 2) | loads,
                n_seq_max=n_slots,
            )
            if loading.interrupted:
                vm.close()
                raise typer.Exit(EXIT_INTERRUPTED)
        opts.model_name = str(resolved.ref.display)
        with vm:
            backend = LocalBackend(vm, str(resolved.ref.display))
            return _run(backend, job, writer, opts, backend.label, model=vm)


def _default_slots(threads: int | None) -> int:
    return max(2, min(8, threads or os.cpu_count() or 2))


def _run(backend: Any, job: Any, writer: Any, opts: BatchOptions, label: str, model: Any = None) -> Summary:
    """Run the job with a progress bar on a terminal; Ctrl-C stops it cleanly (a second
    Ctrl-C too, without waiting for the answers in flight)."""
    runner = Runner(backend, opts, kind=job.kind, writer=writer)
    if model is not None:  # Ctrl-C between image tiles, not only between tokens

        def check(stage: str, done: int, total: int) -> None:
            if runner.summary.stopped:
                raise Interrupted()

        model.on_progress = check
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: Any) -> None:
        if runner.summary.stopped == "interrupted":
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        runner.stop("interrupted")

    signal.signal(signal.SIGINT, on_sigint)
    try:
        if err.is_terminal:
            _with_progress(runner, job.items, label)
        else:
            for _ in runner.run(job.items):
                pass
    except KeyboardInterrupt:
        runner.summary.stopped = "interrupted"
    finally:
        signal.signal(signal.SIGINT, previous)
    return runner.summary


def _with_progress(runner: Runner, items: list[Any], label: str) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    t0 = time.perf_counter()
    with Progress(
        TextColumn("[bold]batch[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[errors]}"),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=len(items), rate="", errors="")
        for _ in runner.run(items):
            s = runner.summary
            n = s.answered + s.failed
            rate = n / (time.perf_counter() - t0)
            bar.update(
                task,
                completed=n + s.skipped,
                rate=f"{rate:.2f} img/s",
                errors=f"[red]{s.failed} error(s)[/]" if s.failed else "",
            )


def _run_ray(
    ref: str | None,
    mmproj: Path | None,
    job: Any,
    writer: Any,
    opts: BatchOptions,
    address: str | None,
    actors: int | None,
    slots: int | None,
    threads: int | None,
    ctx: int,
    loads: dict[str, Any],
) -> Summary:
    with user_errors():
        resolved = _hub().resolve(ref, mmproj=mmproj)
        if resolved.mmproj_path is None:
            fail(f"{resolved.ref.display} has no vision projector: give --mmproj, or use an LFM2-VL model")
        n_slots = slots or 2
        model_kwargs = {
            **resolved.model_kwargs(),
            "mmproj_path": str(resolved.mmproj_path),
            "n_ctx": ctx * n_slots,
            "n_seq_max": n_slots,
            "n_threads": threads,
            **loads,
        }
        opts.model_name = str(resolved.ref.display)
        try:
            return jobs_ray.run(
                str(resolved.model_path), model_kwargs, job, writer, opts, address=address, actors=actors
            )
        except jobs_ray.RayMissing as exc:
            fail(str(exc))


def _report(summary: Summary, as_json: bool) -> None:
    s = summary
    if as_json:
        _emit_json(s.as_dict())
    where = f" -> {s.out}" if s.out else ""
    line = (
        f"batch: {s.answered} answered, {s.failed} failed, {s.skipped} done before, of {s.total}, "
        f"in {s.seconds:.1f}s ({s.images_per_s:.2f} images/s){where}"
    )
    err.print(line, markup=False, highlight=False)
    if s.stopped == "interrupted":
        err.print(
            f"interrupted: every finished answer is kept; {s.interrupted} item(s) not done. "
            "Run the same command again to resume.",
            markup=False,
        )
    elif s.stopped == "fail-fast":
        err.print(f"stopped at the first failed item (--fail-fast); {s.interrupted} item(s) not done.", markup=False)


def _schema(path: Path) -> Any:
    """The --schema file's JSON schema object (:func:`read_schema`), checked (jsonschema)
    before anything runs."""
    data = read_schema(path)
    try:
        import jsonschema
    except ImportError:
        fail("--schema needs the jsonschema package: pip install jsonschema")
    try:
        jsonschema.validators.validator_for(data).check_schema(data)
    except jsonschema.SchemaError as exc:
        fail(f"--schema {path} is not a valid JSON schema: {exc.message}")
    return data
