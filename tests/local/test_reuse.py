"""Conversation state reuse and the image-embedding cache.

Every reuse is checked against a fresh context (a model with both caches off): reuse
must never change a greedy answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lfm2_edge import VisionModel
from lfm2_edge._llama.caches import ByteLRU
from lfm2_edge.chat.session import ChatSession
from tests.helpers import noise_image

GREEDY: dict[str, Any] = {"temperature": 0, "repetition_penalty": 1.0, "max_tokens": 12}


@pytest.fixture(scope="module", params=["F16", "Q4_0"])
def pair(request: pytest.FixtureRequest, tiny: dict[str, Path]) -> Iterator[tuple[VisionModel, VisionModel]]:
    """(a model that reuses state, a fresh one that never does) on the same files."""
    quant = request.param
    reuse = VisionModel(tiny[quant], tiny["mmproj"])
    fresh = VisionModel(tiny[quant], tiny["mmproj"], state_cache_mb=0, embedding_cache_mb=0)
    yield reuse, fresh
    reuse.close()
    fresh.close()


def fresh_answer(fresh: VisionModel, messages: list[dict[str, Any]]) -> str:
    fresh.reset()
    return fresh.chat(messages, **GREEDY).text


def image_turn(image: Any, text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}


def test_multi_turn_reuses_state_and_matches_a_fresh_context(pair: tuple[VisionModel, VisionModel]) -> None:
    vm, fresh = pair
    vm.reset()
    session = ChatSession(vm)
    photo = noise_image(320, 240, seed=7)
    first = session.send("What is in this image?", [photo], **GREEDY)
    assert (first.usage.image_encodes, first.usage.cached_tokens) == (1, 0)
    assert first.text == fresh_answer(fresh, session.messages[:-1])
    previous = first
    for question in ("What colour is it?", "And the background?"):
        answer = session.send(question, **GREEDY)
        # turn N continues from the state saved at the end of turn N-1's prompt:
        # the image is not encoded again, only the new tokens are evaluated
        assert answer.usage.image_encodes == 0
        assert answer.usage.cached_tokens == previous.usage.prompt_tokens
        assert answer.text == fresh_answer(fresh, session.messages[:-1])
        previous = answer


def test_an_edited_earlier_turn_starts_clean(pair: tuple[VisionModel, VisionModel]) -> None:
    vm, fresh = pair
    vm.reset()
    photo = noise_image(320, 240, seed=8)
    turn1 = [image_turn(photo, "Describe it.")]
    a1 = vm.chat(turn1, **GREEDY)
    edited = [{"role": "user", "content": "Something else entirely."}, {"role": "assistant", "content": a1.text}]
    edited.append({"role": "user", "content": "Go on."})
    result = vm.chat(edited, **GREEDY)
    prompt = str(vm.prepare(vm.check_call(edited)).prompt)
    system = len(vm._runtime.tokenize(prompt[: prompt.index("<|im_start|>user")]))
    assert result.usage.cached_tokens == system  # nothing past the system prompt was reusable
    assert result.text == fresh_answer(fresh, edited)


def test_a_new_conversation_continues_from_its_system_prompt_exactly(pair: tuple[VisionModel, VisionModel]) -> None:
    """The state after the system prompt is saved by one conversation and loaded by another
    whose first message after it differs (an assistant greeting, not a user question):
    both cut their batches there, so the logits are a fresh context's, bit for bit."""
    vm, fresh = pair
    vm.reset()
    system = {"role": "system", "content": "You are a helpful assistant. " * 20}  # long: its batch shape shows
    vm.chat([system, {"role": "user", "content": "Tell me about cats."}], **GREEDY)
    greeting = {"role": "assistant", "content": "Hello! How can I help you today? " * 5}
    other = [system, greeting, {"role": "user", "content": "And dogs?"}]
    result = vm.chat(other, logprobs=0, **GREEDY)
    prompt = str(vm.prepare(vm.check_call(other)).prompt)
    assert result.usage.cached_tokens == len(vm._runtime.tokenize(prompt[: prompt.index("<|im_start|>assistant")]))
    fresh.reset()
    alone = fresh.chat(other, logprobs=0, **GREEDY)
    assert result.logprobs is not None and alone.logprobs is not None
    assert [e.logprob for e in result.logprobs] == [e.logprob for e in alone.logprobs]


def test_two_interleaved_sessions_both_reuse_and_stay_correct(pair: tuple[VisionModel, VisionModel]) -> None:
    vm, fresh = pair
    vm.reset()
    a, b = ChatSession(vm), ChatSession(vm)
    a.send("What is this?", [noise_image(320, 240, seed=1)], **GREEDY)
    b.send("And this one?", [noise_image(320, 240, seed=2)], **GREEDY)
    for session in (a, b, a, b):
        result = session.send("Tell me more.", **GREEDY)
        assert result.usage.image_encodes == 0 and result.usage.cached_tokens > 0
        assert result.text == fresh_answer(fresh, session.messages[:-1])


def test_the_same_prompt_again_evaluates_nothing_and_answers_the_same(pair: tuple[VisionModel, VisionModel]) -> None:
    vm, fresh = pair
    vm.reset()
    conversation = [image_turn(noise_image(320, 240, seed=11), "What is it?")]
    first = vm.chat(conversation, **GREEDY)
    again = vm.chat(conversation, **GREEDY)
    assert again.usage.cached_tokens == again.usage.prompt_tokens  # state and logits saved at the prompt's end
    assert again.text == first.text == fresh_answer(fresh, conversation)
    sampled = {vm.chat(conversation, temperature=1.0, seed=s, max_tokens=8).text for s in range(4)}
    assert len(sampled) > 1  # saved logits feed the sampler, not a saved answer


def test_reset_forgets_the_state(pair: tuple[VisionModel, VisionModel]) -> None:
    vm, _ = pair
    photo = noise_image(320, 240, seed=9)
    vm.chat([image_turn(photo, "Hi.")], **GREEDY)
    vm.reset()
    again = vm.chat([image_turn(photo, "Hi.")], **GREEDY)
    assert again.usage.cached_tokens == 0


def test_same_image_in_a_new_conversation_skips_the_encoder(pair: tuple[VisionModel, VisionModel]) -> None:
    vm, fresh = pair
    vm.reset()
    photo = noise_image(1024, 768, seed=3)  # tiled: several encoder runs
    first = vm.chat([image_turn(photo, "What is this?")], **GREEDY)
    assert first.usage.image_encodes > 1
    other = [image_turn(photo, "Count the squares.")]
    second = vm.chat(other, **GREEDY)
    assert second.usage.image_encodes == 0
    # the state saved after the image is reused: only the new question is evaluated
    assert second.usage.cached_tokens >= second.usage.image_tokens
    assert second.text == fresh_answer(fresh, other)
    vm.reset()  # the context's states go; the embedding cache stays
    third = vm.chat(other, **GREEDY)
    assert (third.usage.image_encodes, third.usage.cached_tokens, third.text) == (0, 0, second.text)


def test_the_embedding_cache_off_encodes_every_time(tiny: dict[str, Path]) -> None:
    with VisionModel(tiny["F16"], tiny["mmproj"], embedding_cache_mb=0, state_cache_mb=0) as vm:
        photo = noise_image(320, 240, seed=4)
        counts = [vm.chat([image_turn(photo, "Hi.")], **GREEDY).usage.image_encodes for _ in range(2)]
        assert counts == [1, 1] and vm.image_encodes == 2


def test_byte_lru_evicts_the_least_recently_used() -> None:
    lru: ByteLRU[str, bytes] = ByteLRU(max_bytes=10)
    lru.put("a", b"aaaa", 4)
    lru.put("b", b"bbbb", 4)
    assert lru.get("a") == b"aaaa"  # a is now the most recent
    lru.put("c", b"cccc", 4)  # 12 > 10: b goes
    assert (lru.get("b"), lru.get("a"), lru.get("c"), lru.nbytes) == (None, b"aaaa", b"cccc", 8)
    lru.put("huge", b"x" * 11, 11)  # larger than the cache: not stored, nothing evicted
    assert (lru.get("huge"), len(lru)) == (None, 2)
