"""The async API: ``await model.achat(...)``, ``async for piece in model.achat(..., stream=True)``,
``aclose()`` and task cancellation, on local and remote models."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lfm2_edge import AsyncChatStream, ChatResult, ImageError, InvalidParameterError, RemoteModel, VisionModel
from tests.helpers import noise_image

GREEDY = {"temperature": 0.0, "max_tokens": 12}
# With this seed the tiny model talks until max_tokens: a stop is visible in the count.
LONG = {"temperature": 1.0, "min_p": 0.0, "seed": 1, "max_tokens": 400}


def _workers() -> list[threading.Thread]:
    """The achat worker threads still running half a second on (a worker that has handed
    over its end exits at once; one still generating 400 tokens takes seconds)."""
    workers = [t for t in threading.enumerate() if t.name == "lfm2-edge-achat"]
    for t in workers:
        t.join(0.5)
    return [t for t in workers if t.is_alive()]


def test_await_achat_gives_the_chat_result(vm: VisionModel) -> None:
    image = noise_image(64, 48)
    expected = vm.chat("What is it?", images=[image], **GREEDY)

    async def main() -> ChatResult:
        return await vm.achat("What is it?", images=image, **GREEDY)

    result = asyncio.run(main())
    assert isinstance(result, ChatResult)
    assert (result.text, result.usage.completion_tokens) == (expected.text, expected.usage.completion_tokens)


def test_async_stream_yields_the_pieces_and_keeps_the_result(vm: VisionModel) -> None:
    expected = vm.chat("Tell a story.", **GREEDY)

    async def main() -> tuple[list[str], AsyncChatStream]:
        stream = vm.achat("Tell a story.", stream=True, **GREEDY)
        pieces = [piece async for piece in stream]
        return pieces, stream

    pieces, stream = asyncio.run(main())
    assert stream.result is not None and stream.closed
    assert "".join(pieces) == stream.result.text == expected.text


def test_aclose_stops_generation_and_keeps_the_partial_result(vm: VisionModel) -> None:
    async def main() -> tuple[str, AsyncChatStream]:
        async with vm.achat("Tell a story.", stream=True, **LONG) as stream:
            first = await stream.__anext__()
            await stream.aclose()
            assert [p async for p in stream] == []  # nothing after the close
        return first, stream

    first, stream = asyncio.run(main())
    assert stream.result is not None
    assert stream.result.text.startswith(first)
    assert stream.result.finish_reason == "stop"
    assert 1 <= stream.result.usage.completion_tokens < 50
    assert not _workers()
    assert vm.chat("hi", **GREEDY).text is not None  # the model is free


def test_aclose_before_the_first_piece_starts_nothing(vm: VisionModel) -> None:
    async def main() -> AsyncChatStream:
        stream = vm.achat("hi", stream=True, **GREEDY)
        await stream.aclose()
        assert [p async for p in stream] == []
        return stream

    stream = asyncio.run(main())
    assert stream.result is None and stream.closed


def test_cancelling_the_task_stops_generation_and_the_model_stays_usable(vm: VisionModel) -> None:
    async def main() -> tuple[AsyncChatStream, ChatResult]:
        stream = vm.achat("Tell a story.", stream=True, **LONG)
        started = asyncio.Event()

        async def consume() -> None:
            async for _ in stream:
                started.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(started.wait(), 120)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert stream.result is not None  # the generation had stopped when the cancel came through
        assert not _workers()
        # an awaited achat() cancelled too, mid-answer
        # it cannot end by itself before the cancel comes (every end token biased off)
        never_ends = {t: -100.0 for t in range(vm._runtime.n_vocab) if vm._runtime.is_end(t)}
        long_task = asyncio.create_task(
            vm.achat("Tell a story.", **{**LONG, "max_tokens": 4000}, logit_bias=never_ends)
        )
        await asyncio.sleep(0.3)
        long_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await long_task
        assert not _workers()
        return stream, await vm.achat("hi", **GREEDY)

    stream, after = asyncio.run(main())
    assert stream.result is not None and stream.result.usage.completion_tokens < 50
    assert after.text == vm.chat("hi", **GREEDY).text


def test_two_models_answer_concurrently_and_the_loop_stays_free(vm: VisionModel, tiny: dict[str, Path]) -> None:
    image = noise_image(64, 48)
    with VisionModel(tiny["Q8_0"], tiny["mmproj"], n_ctx=2048) as other:
        expected = (vm.chat("Describe.", images=[image], **GREEDY).text, other.chat("Hi?", **GREEDY).text)

        async def main() -> tuple[tuple[ChatResult, ChatResult, list[str]], int]:
            ticks = 0
            done = False

            async def ticker() -> None:
                nonlocal ticks
                while not done:
                    ticks += 1
                    await asyncio.sleep(0.001)

            tick_task = asyncio.create_task(ticker())

            async def streamed() -> list[str]:
                return [p async for p in other.achat("Hi?", stream=True, **GREEDY)]

            results = await asyncio.gather(
                vm.achat("Describe.", images=image, **GREEDY), other.achat("Hi?", **GREEDY), streamed()
            )
            done = True
            await tick_task
            return results, ticks

        (a, b, pieces), ticks = asyncio.run(main())
    assert (a.text, b.text, "".join(pieces)) == (*expected, expected[1])
    assert ticks > 1  # the event loop ran while the models worked


def test_concurrent_achat_on_one_model_each_get_the_whole_answer(vm: VisionModel) -> None:
    expected = [vm.chat(q, **GREEDY).text for q in ("One?", "Two?", "Three?")]

    async def main() -> list[ChatResult]:
        return list(await asyncio.gather(*(vm.achat(q, **GREEDY) for q in ("One?", "Two?", "Three?"))))

    assert [r.text for r in asyncio.run(main())] == expected


def test_errors_reach_the_awaiting_task(vm: VisionModel, tmp_path: Path) -> None:
    async def main() -> None:
        with pytest.raises(ImageError, match="not found"):
            await vm.achat("hi", images=tmp_path / "missing.png")
        with pytest.raises(ImageError, match="not found"):
            async for _ in vm.achat("hi", images=str(tmp_path / "missing.png"), stream=True):
                pass
        with pytest.raises(InvalidParameterError, match="did you mean 'temperature'"):
            vm.achat("hi", stream=True, temprature=0)  # checked at the call, not at the first piece
        assert (await vm.achat("hi", **GREEDY)).text is not None

    asyncio.run(main())


# -- RemoteModel: the same achat, requests in flight together ---------------------------


def _sse_answer(text: str) -> Iterator[bytes]:
    for word in text.split(" "):
        chunk = {"choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]}
        yield f"data: {json.dumps(chunk)}\n\n".encode()
    end = {
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }
    yield f"data: {json.dumps(end)}\n\n".encode()
    yield b"data: [DONE]\n\n"


def test_remote_model_achat_sends_requests_concurrently() -> None:
    both_in_flight = threading.Barrier(2, timeout=30)

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        both_in_flight.wait()  # each request waits for the other: serial requests would time out
        question = body["messages"][-1]["content"]
        return httpx.Response(200, content=_sse_answer(f"answer to {question}"))

    model = RemoteModel("http://remote.test/v1", model="LFM2-VL-450M")
    model._client = httpx.Client(base_url=model.endpoint, transport=httpx.MockTransport(handler))

    async def main() -> tuple[ChatResult, list[str]]:
        async def streamed() -> list[str]:
            return [p async for p in model.achat("two", stream=True)]

        a, pieces = await asyncio.gather(model.achat("one"), streamed())
        return a, pieces

    t0 = time.monotonic()
    with model:
        a, pieces = asyncio.run(main())
    assert a.text.strip() == "answer to one" and "".join(pieces).strip() == "answer to two"
    assert time.monotonic() - t0 < 30


def test_achat_takes_chats_own_keywords_and_still_checks_sampling(vm: VisionModel) -> None:
    """logprobs (and grammar, parallel_tool_calls) are chat's own arguments, not sampling
    options: achat passes them on; a misspelled sampling option still fails at the call."""
    result = asyncio.run(vm.achat("hi", max_tokens=3, logprobs=2, temperature=0))
    assert result.logprobs is not None and len(result.logprobs) == result.usage.completion_tokens
    with pytest.raises(InvalidParameterError, match="did you mean 'temperature'"):
        vm.achat("hi", temprature=0)
