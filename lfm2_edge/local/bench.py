"""``lfm2-edge bench``: what a user waits for, next to the peer and llama.cpp itself.

For each model it measures load time, image encode time (one 512x512 tile and a tiled
1024x768 image), prefill and decode speed, time to first token for turn 1 and turn 2 of
a conversation about one image, and peak RSS. The same conversation then runs through
llama-cpp-python's generic ``MTMDChatHandler`` (the peer), and decode speed is compared
with the bare llama.cpp decode loop (:meth:`Runtime.generate` alone) on the same context. Ratios come from one run.

Each side runs in a child process of its own, so that peak RSS is its own. Every figure
is the median of ``repeat`` runs; every run uses a new image or text, so no cache turns a
cold figure into a warm one by accident.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import Any

from lfm2_edge._llama.batch import bare_decode
from lfm2_edge._llama.ggml import default_threads
from lfm2_edge.chat.images import load_image
from lfm2_edge.chat.sampling import Sampling
from lfm2_edge.errors import ModelFileError
from lfm2_edge.local.model import VisionModel
from lfm2_edge.local.placement import choose_gpu_layers

__all__ = ["DEFAULT_MODEL_DIR", "GET_MODELS", "BenchConfig", "BenchTarget", "run_bench"]

# `make models` writes the benchmark's default models into the checkout (not the CWD).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "lfm2-vl-450m"
GET_MODELS = (
    "run `make models` in a checkout, or `python -m lfm2_edge.testing --shape lfm2-vl-450m --out DIR` "
    "and pass DIR/model-Q4_0.gguf as MODEL"
)
# 512x512 is one tile; 1024x768 is tiled (2x2 tiles + a thumbnail at the card's budget).
IMAGE_SIZES = ((512, 512), (1024, 768))
PREFILL_WORDS = 200
GREEDY: dict[str, Any] = {"temperature": 0.0, "repetition_penalty": 1.0}
# Turn 2 of the conversation: a short answer and a follow-up question about the image.
ANSWER, FOLLOW_UP = "A red square.", "What colour is it?"


@dataclass(frozen=True)
class BenchTarget:
    """One model to measure: its GGUF and its projector."""

    name: str
    model: Path
    mmproj: Path | None  # None: a text model (no image figures; the conversation is text)


@dataclass(frozen=True)
class BenchConfig:
    repeat: int = 3
    n_threads: int | None = None
    n_batch: int = 512
    flash_attn: bool | None = None
    decode_tokens: int = 64
    n_ctx: int = 4096
    peer: bool = True
    n_gpu_layers: int | str | None = None  # as --gpu-layers; None: $LFM2_EDGE_GPU_LAYERS, else auto
    device: str | None = None  # as --device


def _image(width: int, height: int, seed: int) -> Any:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed * 7919 + width * height)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def _median(values: Sequence[float]) -> float:
    return round(statistics.median(values), 2)


def _peak_rss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / 2**20 if sys.platform == "darwin" else rss / 1024, 1)


def _turn1(photo: Any | None) -> list[dict[str, Any]]:
    if photo is None:
        return [{"role": "user", "content": "What is a short-convolution layer?"}]
    text = {"type": "text", "text": "What is in this image?"}
    return [{"role": "user", "content": [{"type": "image", "image": photo}, text]}]


def _turn2(turn1: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [*turn1, {"role": "assistant", "content": ANSWER}, {"role": "user", "content": FOLLOW_UP}]


def bench_ours(target: BenchTarget, config: BenchConfig) -> dict[str, Any]:
    """Measure lfm2-edge's ``VisionModel`` on one model, in this process."""

    t0 = time.perf_counter()
    vm = VisionModel(
        target.model,
        target.mmproj,
        n_threads=config.n_threads,
        n_ctx=config.n_ctx,
        n_batch=config.n_batch,
        flash_attn=config.flash_attn,
        n_gpu_layers=config.n_gpu_layers,
        device=config.device,
    )
    out: dict[str, Any] = {
        "load_ms": round((time.perf_counter() - t0) * 1000, 1),
        "threads": vm.n_threads,
        "device": vm.device,
    }
    reps = range(config.repeat)
    with vm:
        vm.chat("warm up", max_tokens=2, **GREEDY)
        for w, h in IMAGE_SIZES if target.mmproj else ():
            runs = [vm.chat("hi", images=[_image(w, h, seed=r)], max_tokens=1).timings.image_ms for r in reps]
            out[f"image_{w}x{h}_ms"] = _median(runs)
        words = "the quick brown fox jumps over a lazy dog " * (PREFILL_WORDS // 9)
        prefill = [vm.chat(f"{r}: {words}", max_tokens=1) for r in reps]
        out["prefill_tok_s"] = _median([p.timings.prompt_tok_s(p.usage) for p in prefill])
        decode = [vm.chat(f"Tell me story {r}.", max_tokens=config.decode_tokens, **GREEDY) for r in reps]
        out["decode_tok_s"] = _median([d.timings.decode_tok_s(d.usage) for d in decode])
        out["llama_cpp_decode_tok_s"] = _median([_llama_cpp_decode(vm, config.decode_tokens) for _ in reps])
        turn1, turn2 = [], []
        for r in reps:
            conversation = _turn1(_image(320, 240, seed=100 + r) if target.mmproj else None)
            if not target.mmproj:
                conversation[0]["content"] += f" ({r})"
            turn1.append(vm.chat(conversation, max_tokens=1, **GREEDY))
            turn2.append(vm.chat(_turn2(conversation), max_tokens=1, **GREEDY))
        out["ttft_turn1_ms"] = _median([t.timings.first_token_ms for t in turn1])
        out["ttft_turn2_ms"] = _median([t.timings.first_token_ms for t in turn2])
        last = turn2[-1].usage
        out["turn2_image_encodes"] = last.image_encodes
        out["turn2_evaluated_tokens"] = last.prompt_tokens - last.cached_tokens
        out["turn2_prompt_tokens"] = last.prompt_tokens
    out["peak_rss_mib"] = _peak_rss_mib()
    return out


def _llama_cpp_decode(vm: Any, n: int) -> float:
    """Tokens/s of the bare llama.cpp decode loop on the model's own context
    (:func:`lfm2_edge._llama.batch.bare_decode`: sample greedily, decode one token),
    without the engine's per-token work (its thread, detokenizing, the stop-string scan,
    the events). Counted as :meth:`Timings.decode_tok_s` counts: the tokens after the
    first, over the time since it was sampled. The ceiling ``VisionModel.chat`` is held to."""

    rt = vm._runtime
    prompt = rt.tokenize("<|startoftext|><|im_start|>user\nTell me a story.<|im_end|>\n<|im_start|>assistant\n")
    greedy = Sampling(temperature=0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)

    def loop() -> tuple[int, float]:
        with rt.sampler(greedy) as sampler:
            return bare_decode(rt, prompt, sampler, n)

    n_after, elapsed = vm.engine.call(loop)  # on the engine's own thread, as its decoding runs
    return n_after / elapsed if n_after and elapsed > 0 else 0.0


def bench_peer(target: BenchTarget, config: BenchConfig) -> dict[str, Any]:
    """The same conversation through llama-cpp-python's generic ``MTMDChatHandler``."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import MTMDChatHandler

    t0 = time.perf_counter()

    placement = choose_gpu_layers(config.n_gpu_layers, config.device)  # the same as ours
    use_gpu = placement.n_gpu_layers != 0
    llm = Llama(
        str(target.model),
        chat_handler=MTMDChatHandler(str(target.mmproj), verbose=False, use_gpu=use_gpu) if target.mmproj else None,
        n_gpu_layers=placement.n_gpu_layers,
        n_ctx=config.n_ctx,
        n_batch=config.n_batch,
        n_threads=config.n_threads or default_threads(),
        verbose=False,
    )
    out: dict[str, Any] = {"load_ms": round((time.perf_counter() - t0) * 1000, 1)}

    def ask(messages: list[dict[str, Any]], max_tokens: int) -> tuple[float, float, int]:
        """(ms to the first token, decode tok/s, tokens) of one streamed answer."""
        start = time.perf_counter()
        first = end = 0.0
        n = 0
        request: Any = messages
        stream: Any = llm.create_chat_completion(
            messages=request, max_tokens=max_tokens, stream=True, temperature=0.0, repeat_penalty=1.0
        )
        for chunk in stream:
            if chunk["choices"][0]["delta"].get("content") is not None:
                n += 1
                end = time.perf_counter()
                first = first or end
        rate = (n - 1) / (end - first) if n > 1 and end > first else 0.0
        return (first - start) * 1000, rate, n

    def as_url(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for m in messages:
            if isinstance(m["content"], list):
                parts = [
                    {"type": "image_url", "image_url": {"url": load_image(p["image"]).data_uri()}}
                    if p["type"] == "image"
                    else p
                    for p in m["content"]
                ]
                m = {**m, "content": parts}
            out.append(m)
        return out

    reps = range(config.repeat)
    ask([{"role": "user", "content": "warm up"}], 2)
    decode = [ask([{"role": "user", "content": f"Tell me story {r}."}], config.decode_tokens)[1] for r in reps]
    out["decode_tok_s"] = _median(decode)
    t1, t2 = [], []
    for r in reps:
        conversation = _turn1(_image(320, 240, seed=100 + r) if target.mmproj else None)
        if not target.mmproj:
            conversation[0]["content"] += f" ({r})"
        t1.append(ask(as_url(conversation), 1)[0])
        t2.append(ask(as_url(_turn2(conversation)), 1)[0])
    out["ttft_turn1_ms"] = _median(t1)
    out["ttft_turn2_ms"] = _median(t2)
    out["peak_rss_mib"] = _peak_rss_mib()
    llm.close()
    return out


def _child(fn: Callable[[BenchTarget, BenchConfig], dict[str, Any]], target: Any, config: Any, queue: Any) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)  # llama.cpp and mtmd print to fds 1 and 2
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    try:
        queue.put(fn(target, config))
    except Exception as exc:  # reported by the parent as one line
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def _in_child(
    fn: Callable[[BenchTarget, BenchConfig], dict[str, Any]], target: BenchTarget, config: BenchConfig
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, target, config, queue))
    proc.start()
    result: dict[str, Any] | None = None
    while result is None and (proc.is_alive() or not queue.empty()):
        try:
            result = queue.get(timeout=1.0)
        except Empty:
            continue
    proc.join()
    return result or {"error": f"crashed (exit code {proc.exitcode})"}


def _ratio(a: Any, b: Any) -> float | None:
    return round(a / b, 3) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def run_bench(
    targets: Sequence[BenchTarget], config: BenchConfig, on_step: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """Measure each model (and the peer on it) in fresh child processes; ``on_step`` is
    told what starts (a progress display)."""
    for t in targets:
        for path in (t.model, t.mmproj):
            if path is not None and not Path(path).is_file():
                raise ModelFileError(f"{path} not found; {GET_MODELS}")
    results = []
    for i, t in enumerate(targets, 1):
        if on_step is not None:
            on_step(f"benchmarking {t.name} ({i} of {len(targets)}): lfm2-edge, {config.repeat} run(s) per figure")
        ours = _in_child(bench_ours, t, config)
        result: dict[str, Any] = {"model": t.name, "model_path": str(t.model), **ours}
        if config.peer and "error" not in ours:
            if on_step is not None:
                on_step(f"benchmarking {t.name} ({i} of {len(targets)}): llama-cpp-python's MTMDChatHandler")
            peer = _in_child(bench_peer, t, config)
            result["peer"] = peer
            result["ratios"] = {
                "turn2_over_turn1_ttft": _ratio(ours["ttft_turn2_ms"], ours["ttft_turn1_ms"]),
                "peer_turn2_over_ours": _ratio(peer.get("ttft_turn2_ms"), ours["ttft_turn2_ms"]),
                "peer_turn1_over_ours": _ratio(peer.get("ttft_turn1_ms"), ours["ttft_turn1_ms"]),
                "decode_over_llama_cpp": _ratio(ours["decode_tok_s"], ours["llama_cpp_decode_tok_s"]),
                "decode_over_peer": _ratio(ours["decode_tok_s"], peer.get("decode_tok_s")),
            }
        results.append(result)
    return results
