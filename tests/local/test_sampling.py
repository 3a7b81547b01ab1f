"""Presence / frequency penalties, logit bias and logprobs on the tiny random model."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from lfm2_edge import Sampling, TokenLogprob, VisionModel
from lfm2_edge.errors import Lfm2EdgeError
from tests.helpers import evaluate

GREEDY = {"temperature": 0, "repetition_penalty": 1.0, "max_tokens": 48}


def tokens_of(vm: VisionModel, **kwargs: object) -> list[int]:
    """The token ids of a greedy answer (through logprobs' exact bytes)."""
    result = vm.chat("Tell me a story.", logprobs=0, **{**GREEDY, **kwargs})  # type: ignore[arg-type]
    assert result.logprobs is not None
    rt = vm._runtime
    by_bytes = {rt.token_bytes(t): t for t in range(rt.n_vocab)}
    return [by_bytes[bytes(e.bytes)] if e.bytes else -1 for e in result.logprobs]


def repeats(vm: VisionModel, **kwargs: object) -> int:
    """How many tokens of a greedy answer of 96 tokens repeat an earlier one."""
    toks = tokens_of(vm, max_tokens=96, **kwargs)
    return len(toks) - len(set(toks))


def test_penalties_move_repeats_in_their_direction(vm: VisionModel) -> None:
    plain = repeats(vm)
    many = repeats(vm, frequency_penalty=-2.0)  # a negative penalty rewards repeats
    assert many > plain + 10
    assert repeats(vm, presence_penalty=-2.0) > plain + 10
    assert repeats(vm, frequency_penalty=2.0) <= plain and repeats(vm, presence_penalty=2.0) <= plain
    # against a pull to repeat, a positive penalty pushes back
    pulled = repeats(vm, frequency_penalty=-1.0)
    assert repeats(vm, frequency_penalty=-1.0, presence_penalty=2.0) < pulled


def test_zero_penalties_change_nothing(vm: VisionModel) -> None:
    assert tokens_of(vm, frequency_penalty=0.0, presence_penalty=0.0) == tokens_of(vm)


def test_logit_bias_forces_and_bans(vm: VisionModel) -> None:
    plain = tokens_of(vm, max_tokens=8)
    top = Counter(plain).most_common(1)[0][0]
    banned = tokens_of(vm, max_tokens=8, logit_bias={top: -100})
    assert top not in banned
    forced = next(t for t in range(300, 400) if t not in plain)
    assert tokens_of(vm, max_tokens=8, logit_bias={str(forced): 100}) == [forced] * 8  # JSON keys are strings


def test_bad_sampling_values_are_clear_errors(vm: VisionModel) -> None:
    with pytest.raises(Lfm2EdgeError, match="presence_penalty must be between -2 and 2"):
        vm.chat("x", presence_penalty=2.5)
    with pytest.raises(Lfm2EdgeError, match="frequency_penalty"):
        Sampling(frequency_penalty=-3)
    with pytest.raises(Lfm2EdgeError, match="from -100 to 100"):
        vm.chat("x", logit_bias={5: 101})
    with pytest.raises(Lfm2EdgeError, match="token ids"):
        vm.chat("x", logit_bias={"nope": 1})
    with pytest.raises(Lfm2EdgeError, match=r"outside this model's vocabulary \(ids 0 to 1023\)"):
        vm.chat("x", logit_bias={1024: 5}, stream=True)  # refused before the stream starts
    with pytest.raises(Lfm2EdgeError, match="logprobs"):
        vm.chat("x", logprobs=-1)
    assert Sampling(logit_bias={3: 1, "1": -100}).logit_bias == ((1, -100.0), (3, 1.0))


def test_logprobs_of_a_greedy_answer(vm: VisionModel) -> None:
    result = vm.chat("Tell me a story.", logprobs=5, **GREEDY)  # type: ignore[arg-type]
    assert result.logprobs is not None and len(result.logprobs) == result.usage.completion_tokens
    for entry in result.logprobs:
        assert isinstance(entry, TokenLogprob) and entry.logprob <= 0
        assert len(entry.top_logprobs) == 5
        assert entry.top_logprobs[0] == (entry.token, entry.logprob)  # greedy: the chosen one is the likeliest
        values = [lp for _, lp in entry.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert entry.token == bytes(entry.bytes).decode("utf-8", "replace")
    assert vm.chat("Tell me a story.", **GREEDY).logprobs is None  # type: ignore[arg-type]


def test_logprobs_are_the_model_s_whole_distribution(vm: VisionModel) -> None:
    n_vocab = vm._runtime.n_vocab
    result = vm.chat("Hi", logprobs=n_vocab, **{**GREEDY, "max_tokens": 1})  # type: ignore[arg-type]
    assert result.logprobs is not None
    (entry,) = result.logprobs
    assert len(entry.top_logprobs) == n_vocab
    assert math.isclose(sum(math.exp(lp) for _, lp in entry.top_logprobs), 1.0, rel_tol=1e-6)
    # the same position computed directly: the prompt's last logits, log-softmaxed
    rt = vm._runtime
    from lfm2_edge.chat.messages import normalize_messages
    from lfm2_edge.prompt.chatml import render_prompt

    prompt = render_prompt(normalize_messages("Hi"), system_prompt=vm.system_prompt)
    import ctypes

    import llama_cpp

    with vm.engine.lock:  # the engine is idle; its context is ours for a moment
        evaluate(rt, rt.tokenize(prompt))
        ptr = llama_cpp.llama_get_logits_ith(rt.ctx, -1)
        logits = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,)).astype(float)
        rt.reset()
    expected = logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
    assert math.isclose(entry.logprob, float(expected.max()), abs_tol=1e-4)


def test_stream_logprobs_grow_with_the_pieces(vm: VisionModel) -> None:
    stream = vm.chat("Tell me a story.", stream=True, logprobs=1, **GREEDY)  # type: ignore[arg-type]
    assert stream.logprobs == []
    text = ""
    for piece in stream:
        text += piece
        assert stream.logprobs
        covered = b"".join(bytes(e.bytes) for e in stream.logprobs).decode("utf-8", "replace")
        assert covered.startswith(text) or text.startswith(covered[: len(text)])
    assert stream.result is not None and stream.result.logprobs == tuple(stream.logprobs)
    assert len(stream.logprobs) == stream.result.usage.completion_tokens


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 0, "repetition_penalty": 1.3},
        {"temperature": 0, "repetition_penalty": 0.6},  # below 1 it rewards repeats
        {"temperature": 0.9, "top_k": 0, "min_p": 0.02, "repetition_penalty": 1.3, "seed": 7},
    ],
)
def test_the_local_penalty_and_greedy_pick_what_llama_cpp_s_chain_picks(vm: VisionModel, params: dict) -> None:
    """:class:`Sampler` applies the repetition penalty (and picks greedily) with numpy;
    a zero logit bias changes no logit but hands both back to llama.cpp's own chain."""
    with (
        vm._runtime.sampler(Sampling(**params)) as local,
        vm._runtime.sampler(Sampling(logit_bias={5: 0}, **params)) as ref,
    ):
        assert local.penalty is not None and local.greedy == (params["temperature"] == 0)
        assert ref.penalty is None and not ref.greedy
    ours = tokens_of(vm, max_tokens=96, **params)
    assert ours == tokens_of(vm, max_tokens=96, logit_bias={5: 0}, **params)
    assert ours != tokens_of(vm, max_tokens=96, **{**params, "repetition_penalty": 1.0})  # the penalty bit


def test_a_nan_logit_is_skipped_as_llama_cpp_s_greedy_skips_it(vm: VisionModel) -> None:
    """numpy's argmax would pick a NaN; llama.cpp's greedy compares with ``>`` and never
    does (after index 0). The same for a penalty too large for a float32 (1e39)."""
    import ctypes

    rt = vm._runtime
    for penalty in (1.0, 1e39):
        logits = np.random.default_rng(0).normal(size=rt.n_vocab).astype(np.float32)
        logits[3] = np.nan
        saved = (ctypes.c_float * rt.n_vocab)(*logits)
        picks = []
        for bias in ({}, {5: 0}):
            with rt.sampler(Sampling(temperature=0, repetition_penalty=penalty, logit_bias=bias)) as sampler:
                picks.append(sampler.sample_saved(saved))
        assert picks[0] == picks[1] == int(np.nanargmax(logits))
        assert np.isnan(saved[3])  # saved logits stay as they are
