"""``lfm2-edge watch [MODEL] SOURCE --prompt TEXT``: a camera, a video file, a stream,
a folder or stdin in; one event per answer out (JSONL on stdout or ``--out``, plain
lines on a terminal). SIGTERM and Ctrl-C stop it cleanly (the answer in progress is
cut, the actions queued so far run); exit 0, or 130 after Ctrl-C."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from lfm2_edge.cli._common import (
    DeviceOpt,
    GpuLayersOpt,
    MlockOpt,
    MmprojOpt,
    ModelOpt,
    RepackOpt,
    ThreadsOpt,
    _hub,
    _model_ref,
    _placement,
    err,
    fail,
    read_schema,
    user_errors,
)
from lfm2_edge.jobs.sources import open_source
from lfm2_edge.jobs.watch import Actions, Condition
from lfm2_edge.jobs.watch import watch as run_watch

__all__ = ["watch"]


def watch(
    args: Annotated[
        list[str],
        typer.Argument(
            metavar="[MODEL] SOURCE",
            help="SOURCE: /dev/video0 or a camera index, a video file, rtsp:// or http(s):// (MJPEG stream or "
            "snapshot URL), a folder that fills, or - (JPEG/PNG files on stdin). MODEL as for chat.",
            show_default=False,
        ),
    ],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="What to ask about each answered frame.")],
    model: ModelOpt = None,
    mmproj: MmprojOpt = None,
    every: Annotated[
        float, typer.Option(min=0.0, help="Seconds between answers, at least (0: as fast as it goes).")
    ] = 0.0,
    min_change: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Answer a frame only when it differs this much from the last answered one: the mean absolute "
            "difference of 32x32 RGB thumbnails, 0 (same) to 1 (black vs white); still-scene noise stays "
            "under 0.01, a person walking in is 0.05-0.3. 0: every frame the model has time for.",
        ),
    ] = 0.05,
    schema: Annotated[
        Optional[Path], typer.Option(help="JSON schema file: each answer is JSON that follows it (in 'data').")
    ] = None,
    when: Annotated[
        Optional[str],
        typer.Option(
            help="Fire --exec/--webhook when the answer matches this regex (or, with --schema, this "
            "boolean property is true)."
        ),
    ] = None,
    exec_cmd: Annotated[
        Optional[str],
        typer.Option(
            "--exec", help="Command run (no shell) on a match: the answer on stdin, the event in $LFM2_EDGE_EVENT."
        ),
    ] = None,
    webhook: Annotated[Optional[str], typer.Option(help="POST the event as JSON to this URL on a match.")] = None,
    cooldown: Annotated[float, typer.Option(min=0.0, help="Seconds between two firings, at least.")] = 60.0,
    out: Annotated[
        Optional[Path], typer.Option(help="Append the events (JSONL) to this file instead of stdout.")
    ] = None,
    realtime: Annotated[
        bool, typer.Option(help="Video files: frames at their own timestamps (--no-realtime: every frame, fast).")
    ] = True,
    poll: Annotated[float, typer.Option(min=0.05, help="Seconds between two GETs of a snapshot URL.")] = 1.0,
    allow_private_urls: Annotated[
        bool, typer.Option(help="Let URLs (source, webhook) reach loopback and private addresses (a LAN camera).")
    ] = False,
    max_tokens: Annotated[int, typer.Option(min=1, help="Most tokens per answer.")] = 128,
    temperature: Annotated[Optional[float], typer.Option(min=0.0, help="[default: the card's]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Sampling seed.")] = None,
    max_image_tokens: Annotated[
        Optional[int], typer.Option("--image-max-tokens", min=1, help="Most tokens an image tile is given [256].")
    ] = None,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    device: DeviceOpt = None,
    mlock: MlockOpt = False,
    repack: RepackOpt = True,
    ctx: Annotated[int, typer.Option(min=64, help="Context size in tokens.")] = 4096,
) -> None:
    """Watch a camera, video or stream: answer --prompt about its frames as they change.

    The latest frame wins: frames that arrive while the model answers replace the one
    waiting (each event counts them in 'skipped'). Network streams reconnect when they drop.
    """
    from lfm2_edge.local.model import VisionModel

    if len(args) > 2:
        fail(f"give at most MODEL and SOURCE, not {len(args)} arguments")
    ref, spec = (args[0], args[1]) if len(args) == 2 else (None, args[0])
    if (exec_cmd or webhook) and when is None:
        fail("--exec and --webhook fire on --when: give the condition (a regex, or a --schema property)")
    schema_obj = read_schema(schema) if schema is not None else None
    with user_errors():
        source = open_source(spec, realtime=realtime, allow_private=allow_private_urls, poll=poll)
        condition = Condition(when, schema_obj) if when is not None else None
        actions = (
            Actions(exec_cmd, webhook, cooldown=cooldown, allow_private=allow_private_urls)
            if (exec_cmd or webhook)
            else None
        )
        sink = _Sink(out)
        resolved = _hub().resolve(_model_ref(ref, model), mmproj=mmproj)
        if resolved.mmproj_path is None:
            fail(f"{resolved.ref.display} has no vision projector: give --mmproj, or use an LFM2-VL model")
        extra = {"image_max_tokens": max_image_tokens} if max_image_tokens else {}
        place = _placement(threads, gpu_layers, device, mlock, ctx, False, repack=repack)
        vm = VisionModel.from_resolved(resolved, **place, **extra)
    stop = threading.Event()
    interrupted = []

    def on_signal(signum: int, _frame: Any) -> None:
        interrupted.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    options: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature, "seed": seed}
    try:
        with vm, user_errors():
            for event in run_watch(
                vm,
                source,
                prompt,
                every=every,
                min_change=min_change,
                schema=schema_obj,
                when=condition,
                actions=actions,
                stop=stop,
                **{k: v for k, v in options.items() if v is not None},
            ):
                sink.write(event)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if actions is not None:
            actions.close()
            for problem in actions.problems:  # firings that failed after the last event
                err.print(f"error: {problem}", markup=False)
        sink.close()
    if signal.SIGINT in interrupted:
        raise typer.Exit(130)


class _Sink:
    """Where events go: JSONL to --out (appended, one write per line) or to stdout;
    plain lines when stdout is a terminal."""

    def __init__(self, out: Path | None) -> None:
        self.file = None
        if out is not None:
            try:
                self.file = out.open("a", encoding="utf-8")
            except OSError as exc:
                fail(f"cannot write --out {out}: {exc.strerror or exc}")
        self.plain = self.file is None and sys.stdout.isatty()

    def write(self, event: Any) -> None:
        line = event.line() if self.plain else json.dumps(event.to_dict(), ensure_ascii=False)
        target = self.file or sys.stdout
        target.write(line + "\n")
        target.flush()
        if self.file is not None and event.event in ("error", "reconnecting"):
            err.print(event.line(), markup=False)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
