"""One chat contract: every model class takes exactly the keywords of ``ChatModel.chat``,
in ``chat()`` and ``achat()`` and every overload of them, and a remote model carries
each of them to the server (logprobs, grammar, parallel_tool_calls included)."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import lfm2_edge
from lfm2_edge import ChatModel, InvalidParameterError, RemoteModel, TextModel, VisionModel
from lfm2_edge.server.config import ServerConfig
from tests.helpers import TOOLS, Running, post, start_server

MODEL_CLASSES = [VisionModel, TextModel, RemoteModel]


def keywords(fn: Any) -> list[tuple[str, Any]]:
    return [(n, p.kind) for n, p in inspect.signature(fn).parameters.items() if n != "self"]


def test_every_model_class_takes_the_same_keywords_in_chat_and_achat() -> None:
    reference = keywords(ChatModel.chat)
    assert [n for n, _ in reference][:3] == ["prompt_or_messages", "images", "stream"]
    for cls in MODEL_CLASSES:
        for name in ("chat", "achat"):
            assert keywords(getattr(cls, name)) == reference, f"{cls.__name__}.{name}"
            for overload in typing.get_overloads(getattr(ChatModel, name)):
                assert [n for n, _ in keywords(overload)] == [n for n, _ in reference]


def test_the_walk_fails_on_a_drifted_class() -> None:
    class Drifted(RemoteModel):
        def chat(self, prompt_or_messages: Any, images: Any = None, *, stream: bool = False, **sampling: Any) -> Any:
            return None

    assert keywords(Drifted.chat) != keywords(ChatModel.chat)


@pytest.fixture(scope="module")
def remote(tiny: dict[str, Path]) -> Iterator[tuple[VisionModel, RemoteModel, str]]:
    model = VisionModel(tiny["F16"], tiny["mmproj"], n_ctx=2048, system_prompt=None)
    running: Running = start_server([model], ServerConfig(model_names=["tiny"]))
    client = RemoteModel(running.url, model="tiny", system_prompt=None)
    yield model, client, running.url
    client.close()
    running.stop()
    model.close()


def test_a_remote_model_takes_logprobs_grammar_and_parallel_tool_calls(remote: Any) -> None:
    model, client, _ = remote
    options: dict[str, Any] = {"temperature": 0, "max_tokens": 6, "stop": []}
    local, far = model.chat("Hello.", logprobs=2, **options), client.chat("Hello.", logprobs=2, **options)
    assert far.text == local.text and far.logprobs is not None and len(far.logprobs) == far.usage.completion_tokens
    assert [e.token for e in far.logprobs] == [e.token for e in local.logprobs or ()]
    assert all(len(e.top_logprobs) == 2 for e in far.logprobs)
    assert client.chat("Hello.", grammar='root ::= "yes" | "no"', **options).text in ("yes", "no")
    calls = client.chat("Weather?", tools=TOOLS, tool_choice="required", parallel_tool_calls=False, **options)
    assert calls.finish_reason in ("tool_calls", "length")


def test_errors_name_their_parameter(remote: Any) -> None:
    model, _, url = remote
    with pytest.raises(InvalidParameterError) as caught:
        model.chat("hi", temperature=-1)
    assert caught.value.param == "temperature"
    bad_tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": 3}}}
    cases = [
        ({"tools": [bad_tool], "tool_choice": "required"}, "tools"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}}}, "response_format"),
        ({"logit_bias": {"999999": 1}}, "logit_bias"),
    ]
    for extra, param in cases:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **extra}
        answer = post(url, body)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param, (extra, answer.text)


def test_the_public_names_are_pinned() -> None:
    assert lfm2_edge.__all__ == [
        "AccessDeniedError",
        "AsyncChatStream",
        "ChatModel",
        "ChatResult",
        "ChatSession",
        "ChatStream",
        "ContextOverflowError",
        "CpuMismatchError",
        "DownloadError",
        "GenerationError",
        "HubError",
        "HubUnavailableError",
        "ImageError",
        "InvalidParameterError",
        "Lfm2EdgeError",
        "Lfm2VlChatHandler",
        "ModelClosedError",
        "ModelFileError",
        "ModelMismatchError",
        "RemoteError",
        "RemoteModel",
        "Sampling",
        "TextModel",
        "Timings",
        "TokenLogprob",
        "ToolCall",
        "UnknownModelError",
        "UnknownQuantError",
        "Usage",
        "VisionModel",
        "__version__",
    ]
    for name in lfm2_edge.__all__:
        value = getattr(lfm2_edge, name)
        if name != "__version__":
            assert value.__module__.startswith("lfm2_edge."), name
