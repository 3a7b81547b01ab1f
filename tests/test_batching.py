"""The batched engine: sequences decoding together answer as they do alone, keep their
short-conv and KV state to themselves, and reuse saved conversation states exactly."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import pytest

from lfm2_edge import VisionModel
from lfm2_edge._llama.batch import Sequences, plan_units
from lfm2_edge._llama.context import Runtime
from lfm2_edge.batching import Job, Scheduler
from tests.conftest import noise_image

pytestmark = pytest.mark.slow  # `pytest -m 'not slow'` skips this module

PROMPTS = [f"Question {i}: tell me about {w}?" for i, w in enumerate(["cats", "dogs", "the sea", "rain", "stars", "a"])]
TEXT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


def run_all(sch: Scheduler, model: VisionModel, requests: list[tuple[Any, dict[str, Any]]]) -> list[Any]:
    """Submit every request at once; their results (ChatResult, or (kind, value))."""
    results: dict[int, Any] = {}
    done = threading.Event()

    def emitter(i: int) -> Any:
        def emit(kind: str, value: Any) -> None:
            if kind in ("done", "error", "cancelled"):
                results[i] = value if kind == "done" else (kind, value)
                if len(results) == len(requests):
                    done.set()

        return emit

    for i, (messages, options) in enumerate(requests):
        sch.submit(Job(model.prepare(messages, **options), emitter(i)))
    assert done.wait(120)
    return [results[i] for i in range(len(requests))]


def image_question(image: Any, text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def batched(tiny: dict[str, Path]) -> Iterator[tuple[VisionModel, Scheduler]]:
    model = VisionModel(tiny["F16"], tiny["mmproj"], n_ctx=4 * 2048, n_seq_max=4)
    sch = Scheduler(model)
    yield model, sch
    sch.shutdown()
    model.close()


def test_text_sequences_decoding_together_answer_as_alone(vm: VisionModel, batched: Any) -> None:
    model, sch = batched
    alone = [vm.chat(p, temperature=0, max_tokens=24).text for p in PROMPTS]
    steps = sch.steps
    together = run_all(sch, model, [(p, {"temperature": 0, "max_tokens": 24}) for p in PROMPTS])
    assert [r.text for r in together] == alone
    assert sch.max_batch == 4 and sch.steps - steps < 6 * 24  # steps were shared
    assert sch.busy == 0


def test_image_sequences_decoding_together_answer_as_alone(vm: VisionModel, batched: Any) -> None:
    model, sch = batched
    requests = [
        (image_question(noise_image(320, 240, seed=s), "What is it?"), {"temperature": 0, "max_tokens": 16})
        for s in range(6)
    ]
    alone = [vm.chat(m, **o).text for m, o in requests]
    together = run_all(sch, model, requests)
    assert [r.text for r in together] == alone
    assert all(r.usage.image_tokens > 0 for r in together)


@pytest.mark.parametrize("quant", ["F16", "Q8_0", "Q4_0"])
def test_interleaved_conversations_reuse_their_states_exactly(tiny: dict[str, Path], quant: str) -> None:
    fresh = VisionModel(tiny[quant], tiny["mmproj"], state_cache_mb=0)
    model = VisionModel(tiny[quant], tiny["mmproj"], n_ctx=4 * 2048, n_seq_max=3)
    sch = Scheduler(model)
    try:
        convs: list[list[dict[str, Any]]] = [
            image_question(noise_image(160, 120, seed=9), "Describe it."),
            [{"role": "user", "content": "Hello, who are you?"}],
            [{"role": "user", "content": "Name three colours."}],
        ]
        opts = {"temperature": 0, "max_tokens": 12}
        for turn in range(3):
            results = run_all(sch, model, [(c, opts) for c in convs])
            for conv, result in zip(convs, results, strict=True):
                assert result.text == fresh.chat(conv, **opts).text
                if turn:
                    assert result.usage.cached_tokens > 0  # continued from the saved state
                conv += [{"role": "assistant", "content": result.text}, {"role": "user", "content": f"And {turn}?"}]
    finally:
        sch.shutdown()
        model.close()
        fresh.close()


def _logits(rt: Runtime, row: int) -> np.ndarray:
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(rt.ctx, row), shape=(rt.n_vocab,)).copy()


def _prefill(rt: Runtime, seqs: Sequences, text: str, seq: int) -> int:
    with rt.tokenize_prompt(TEXT.format(text), []) as chunks:
        items = rt.prompt_items(chunks, [])
        pos = 0
        for unit in plan_units(rt, chunks, items, 0, len(items)):
            pos, _ = seqs.eval_unit(chunks, items, unit, seq, pos)
    return pos


@pytest.mark.parametrize("quant", ["F16", "Q8_0", "Q4_0"])
def test_short_conv_and_kv_state_stay_in_their_sequence(tiny: dict[str, Path], quant: str) -> None:
    """Sequence 0's logits, decoded in a batch of 3, are bit-for-bit the same whatever the
    other two sequences hold: nothing of theirs (KV cells, conv state) reaches it. And
    equal to decoding alone: exactly for Q8_0 / Q4_0; F16 rows differ by float rounding
    only (ggml's F16 matmul takes another kernel for more than one row)."""
    steps = [5, 6, 7, 8, 9, 10]
    runs = []
    for others in (["what is the weather", "x"], ["a much longer question about the sea and the sky", "hi"]):
        rt = Runtime(tiny[quant], n_ctx=3 * 512, n_seq_max=3)
        seqs = Sequences(rt)
        pos = [_prefill(rt, seqs, t, s) for s, t in enumerate(["hello there friend", *others])]
        rows = []
        for k, token in enumerate(steps):
            seqs.decode_step([(s, pos[s] + k, token) for s in range(3)])
            rows.append(_logits(rt, 0))
        runs.append(rows)
        seqs.close()
        rt.close()
    assert all(np.array_equal(a, b) for a, b in zip(*runs, strict=True))
    rt = Runtime(tiny[quant], n_ctx=512)
    rt.eval_tokens(rt.tokenize(TEXT.format("hello there friend")))
    alone = []
    for token in steps:
        rt.eval_one(token)
        alone.append(_logits(rt, -1))
    rt.close()
    diff = max(float(np.abs(a - b).max()) for a, b in zip(alone, runs[0], strict=True))
    assert diff == 0.0 if quant != "F16" else diff < 1e-3


def test_a_cancelled_request_frees_its_sequence(batched: Any) -> None:
    model, sch = batched
    results: list[Any] = []
    done = threading.Event()
    job = Job(model.prepare("Count to a thousand.", temperature=0, max_tokens=4000, stop=[]), lambda k, v: (
        results.append(k), done.set() if k in ("done", "cancelled", "error") else None))
    sch.submit(job)
    while "piece" not in results:
        assert not done.wait(0.01)
    job.cancel.set()
    assert done.wait(30) and results[-1] in ("cancelled", "done")
    assert sch.busy == 0


def test_a_job_that_does_not_stream_hears_only_its_end(batched: Any) -> None:
    model, sch = batched
    events: dict[bool, list[tuple[str, Any]]] = {True: [], False: []}
    ended = threading.Semaphore(0)
    for stream in (True, False):

        def emit(kind: str, value: Any, log: list[tuple[str, Any]] = events[stream]) -> None:
            log.append((kind, value))
            if kind in ("done", "error", "cancelled"):
                ended.release()

        chat = model.prepare(PROMPTS[0], temperature=0, max_tokens=24, logprobs=1)
        sch.submit(Job(chat, emit, stream=stream))
        # one after the other: decoded alongside each other, F16 rows round differently
        assert ended.acquire(timeout=120)
    streamed, whole = events[True], events[False]
    assert [k for k, _ in whole] == ["done"]
    assert {k for k, _ in streamed[:-1]} == {"piece", "logprobs"} and streamed[-1][0] == "done"
    assert whole[0][1].text == streamed[-1][1].text == "".join(v for k, v in streamed if k == "piece")
    assert whole[0][1].logprobs == streamed[-1][1].logprobs and len(whole[0][1].logprobs) == 24
