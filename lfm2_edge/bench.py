"""``lfm2-edge bench``: load time, image encode, prefill, decode, time to first token, peak RSS.

Each model file is measured in a child process of its own, so that its peak RSS is
its own and not the largest model's. Figures are medians of ``repeat`` runs.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import Any

from lfm2_edge.errors import ModelFileError

__all__ = ["DEFAULT_MODEL_DIR", "BenchConfig", "bench_model", "run_bench"]

DEFAULT_MODEL_DIR = Path("models/lfm2-vl-450m")
# Sized so 1024x768 is tiled (2x2 tiles + thumbnail) and 512x512 is one tile.
IMAGE_SIZES = ((512, 512), (1024, 768))
PREFILL_WORDS = 200


@dataclass(frozen=True)
class BenchConfig:
    mmproj: Path
    repeat: int = 3
    n_threads: int | None = None
    decode_tokens: int = 64
    n_ctx: int = 4096


def _image(width: int, height: int) -> Any:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(width * height)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def _median(runs: int, measure: Callable[[], float]) -> float:
    return round(statistics.median(measure() for _ in range(runs)), 2)


def bench_model(model_path: Path, config: BenchConfig) -> dict[str, Any]:
    """Measure one model file in this process."""
    from lfm2_edge.model import VisionModel

    t0 = time.perf_counter()
    vm = VisionModel(model_path, config.mmproj, n_threads=config.n_threads, n_ctx=config.n_ctx)
    load_ms = (time.perf_counter() - t0) * 1000
    greedy: dict[str, Any] = {"temperature": 0.0, "repetition_penalty": 1.0}
    with vm:
        vm.chat("warm up", max_tokens=2, **greedy)
        result: dict[str, Any] = {
            "model": str(model_path),
            "threads": vm.n_threads,
            "load_ms": round(load_ms, 1),
        }

        def encode(image: Any) -> float:
            return vm.chat("hi", images=[image], max_tokens=1).timings.image_ms

        for w, h in IMAGE_SIZES:
            image = _image(w, h)
            result[f"image_{w}x{h}_ms"] = _median(config.repeat, lambda: encode(image))  # noqa: B023
        text = " ".join(["the quick brown fox jumps over a lazy dog"] * (PREFILL_WORDS // 9))

        def prefill() -> float:
            r = vm.chat(text, max_tokens=1)
            return r.timings.prompt_tok_s(r.usage)

        def decode() -> float:
            r = vm.chat("Tell me a story.", max_tokens=config.decode_tokens, **greedy)
            return r.timings.decode_tok_s(r.usage)

        result["prefill_tok_s"] = _median(config.repeat, prefill)
        result["decode_tok_s"] = _median(config.repeat, decode)
        photo = _image(320, 240)
        turn1 = [
            {
                "role": "user",
                "content": [{"type": "image", "image": photo}, {"type": "text", "text": "What is in this image?"}],
            }
        ]

        def conversation() -> tuple[float, float]:
            """Time to first token of turn 1 and of the turn 2 that follows it."""
            first = vm.chat(turn1, max_tokens=16, **greedy)
            turn2 = [
                *turn1,
                {"role": "assistant", "content": first.text},
                {"role": "user", "content": "What colour is it?"},
            ]
            second = vm.chat(turn2, max_tokens=1, **greedy)
            return first.timings.first_token_ms, second.timings.first_token_ms

        runs = [conversation() for _ in range(config.repeat)]
        result["ttft_turn1_ms"] = round(statistics.median(r[0] for r in runs), 2)
        result["ttft_turn2_ms"] = round(statistics.median(r[1] for r in runs), 2)
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["peak_rss_mib"] = round(rss_kib / 1024 if sys.platform != "darwin" else rss_kib / 2**20, 1)
    return result


def _child(model_path: Path, config: BenchConfig, queue: Any) -> None:
    try:
        queue.put(bench_model(model_path, config))
    except Exception as exc:  # reported by the parent as one line
        queue.put({"model": str(model_path), "error": str(exc)})


def run_bench(models: Sequence[Path], config: BenchConfig) -> list[dict[str, Any]]:
    """Measure each model in a fresh child process; returns one dict per model."""
    for path in [*models, config.mmproj]:
        if not Path(path).is_file():
            raise ModelFileError(f"{path} not found; run `make models` to write the synthetic benchmark models")
    ctx = mp.get_context("spawn")
    results = []
    for path in models:
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(Path(path), config, queue))
        proc.start()
        result: dict[str, Any] | None = None
        while result is None and (proc.is_alive() or not queue.empty()):
            try:
                result = queue.get(timeout=1.0)
            except Empty:
                continue
        proc.join()
        results.append(result or {"model": str(path), "error": f"crashed (exit code {proc.exitcode})"})
    return results
