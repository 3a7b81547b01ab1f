"""One answer at the terminal (``lfm2-edge chat --prompt``), and the figures
``--verbose`` prints after each answer (``ollama run --verbose``'s).

A thinking model's reasoning is drawn dimmed on stderr as it comes, framed as
``ollama run`` frames it ("Thinking..." / "...done thinking."), so stdout carries the
answer alone; ``--hide-thinking`` leaves it out, ``--json`` puts it in ``"reasoning"``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from lfm2_edge.cli.activity import Activity

__all__ = ["ThoughtBlock", "answer_once", "answer_stats"]


def answer_stats(result: Any, wall_s: float, load_s: float | None = None) -> str:
    """``ollama run --verbose``'s figures for one answer; as ollama's, the total
    duration includes the load when ``load_s`` is given (the first answer)."""
    u, t = result.usage, result.timings
    rows: list[tuple[str, str]] = [("total duration", f"{wall_s + (load_s or 0.0):.2f}s")]
    if load_s is not None:
        rows.append(("load duration", f"{load_s:.2f}s"))
    evaluated = u.prompt_tokens - u.cached_tokens
    detail = f" ({u.image_tokens} image, {u.cached_tokens} cached)" if u.image_tokens or u.cached_tokens else ""
    rows += [
        ("prompt eval count", f"{u.prompt_tokens} token(s){detail}"),
        ("prompt eval duration", f"{t.prompt_ms / 1000:.2f}s"),
        (
            "prompt eval rate",
            f"{evaluated / (t.prompt_ms / 1000):.2f} tokens/s" if t.prompt_ms > 0 and evaluated else "-",
        ),
    ]
    if u.image_tokens:
        rows.append(("image encode", f"{u.image_encodes} tile(s) encoded, {t.image_ms / 1000:.2f}s"))
    rows += [
        ("eval count", f"{u.completion_tokens} token(s)"),
        ("eval duration", f"{t.decode_ms / 1000:.2f}s"),
        ("eval rate", f"{t.decode_tok_s(u):.2f} tokens/s"),
    ]
    return "\n".join(f"{k + ':':<22}{v}" for k, v in rows)


class ThoughtBlock:
    """Draws a stream's reasoning (:attr:`ChatStream.on_thought`) dimmed on ``console``
    (stderr): a header before the first piece, a footer once the answer begins."""

    def __init__(self, console: Console, activity: Activity | None = None, *, show: bool = True) -> None:
        self.console, self.activity, self.show = console, activity, show
        self.open = False

    def write(self, text: str) -> None:
        if self.activity is not None:
            self.activity.done()
            self.activity.check()  # Ctrl-C while it thinks
        if not self.show:
            return
        if not self.open:
            self.console.print("Thinking...", style="dim", markup=False, highlight=False)
            self.open = True
        # the model's text is data: no markup, no highlighting
        self.console.print(text, style="dim", end="", markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.open:
            self.console.print("\n...done thinking.\n", style="dim", markup=False, highlight=False)
            self.open = False


def answer_once(
    vm: Any,
    label: str,
    prompt: str,
    images: list[Any],
    sampling: dict[str, Any],
    as_json: bool,
    *,
    verbose: bool = False,
    load_s: float | None = None,
    schema: Path | None = None,
    hide_thinking: bool = False,
) -> int:
    """Answer ``prompt`` once (``lfm2-edge chat --prompt``): streamed to stdout, or as
    one JSON object. Returns the exit code: 130 when Ctrl-C stopped the answer (also while
    an image is encoded or the model thinks), 1 when a ``schema`` answer was cut short (not
    valid JSON). A thinking model's reasoning goes to stderr, dimmed, unless ``hide_thinking``."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    activity = Activity(err, show=err.is_terminal)
    if hasattr(vm, "on_progress"):
        vm.on_progress = activity.on_progress
    start = time.perf_counter()
    stream = None
    stopped = False
    with activity:
        activity.say("thinking…")
        thought = ThoughtBlock(err, activity, show=not (hide_thinking or as_json))
        try:
            stream = vm.chat(prompt, images=images, stream=True, **sampling)
            stream.on_thought = thought.write
            for piece in stream:
                activity.done()
                thought.close()
                if not as_json:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
                activity.check()
        except KeyboardInterrupt:
            stopped = True
            if stream is not None:
                stream.close()
        thought.close()  # an answer that was all thought (cut short by --max-tokens or Ctrl-C)
    result = stream.result if stream is not None else None
    if not as_json and (result is not None or stopped):
        sys.stdout.write("\n")
        sys.stdout.flush()
    if stopped:
        err.print("[dim](stopped)[/]")
        return 130
    assert result is not None
    if as_json:
        model_path = getattr(vm, "model_path", None)
        where = {"model_path": str(model_path)} if model_path is not None else {}
        where["device"] = getattr(vm, "device", None) or "remote"  # which device ran it (CPU, CUDA0, ...)
        sys.stdout.write(json.dumps({"model": label, **where, **_result_json(result, load_s)}, ensure_ascii=False))
        sys.stdout.write("\n")
        sys.stdout.flush()
    elif verbose:
        err.print(answer_stats(result, time.perf_counter() - start, load_s), markup=False, highlight=False)
    if schema is not None and result.finish_reason == "length":
        err.print(
            f"[bold red]error:[/] the answer reached --max-tokens ({sampling['max_tokens']}) before its JSON "
            "ended, so it is not valid JSON; give a larger --max-tokens"
        )
        return 1
    return 0


def _result_json(result: Any, load_s: float | None) -> dict[str, Any]:
    """``ChatResult.to_dict()`` with times rounded to 0.1 ms and the load time added."""
    data = result.to_dict()
    timings = {k: round(v, 1) if k.endswith("_ms") else v for k, v in data["timings"].items()}
    if load_s is not None:  # the model's load before the call (the call's own wait for one is none here)
        timings = {**timings, "load_ms": round(load_s * 1000, 1)}
    data["timings"] = timings
    return dict(data)
