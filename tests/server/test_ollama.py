"""Ollama's native API, driven by the official ``ollama`` Python client at its defaults
(and by the bodies Home Assistant's Ollama integration sends), against a real server on
the tiny synthetic model."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from lfm2_edge import VisionModel
from lfm2_edge.server.config import ServerConfig
from tests.helpers import TOOLS, Running, noise_image, png_bytes, start_server

ollama = pytest.importorskip("ollama")

HI = [{"role": "user", "content": "hi"}]
PET = {
    "type": "object",
    "properties": {
        "animal": {"type": "string", "enum": ["cat", "dog"]},
        "count": {"type": "integer", "enum": [1, 2, 3]},
    },
    "required": ["animal", "count"],
}


@pytest.fixture(scope="module")
def model(tiny: dict[str, Path]) -> Iterator[VisionModel]:
    m = VisionModel(tiny["Q4_0"], tiny["mmproj"], n_ctx=2048, n_seq_max=2)
    yield m
    m.close()


@pytest.fixture(scope="module")
def served(model: VisionModel) -> Iterator[Running]:
    running = start_server([model], ServerConfig(model_names=["m"], default_max_tokens=64))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(served: Running) -> Any:
    return ollama.Client(host=served.url)


@pytest.fixture(scope="module")
def image_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "noise.png"
    path.write_bytes(png_bytes(noise_image(96, 64, seed=3)))
    return path


def _figures(response: Any) -> None:
    """The final chunk's figures: counts, and durations in nanoseconds."""
    assert response.done is True and response.done_reason in ("stop", "length")
    assert response.prompt_eval_count > 0 and response.eval_count > 0
    assert response.total_duration >= response.prompt_eval_duration > 0
    assert response.total_duration >= response.eval_duration > 0
    assert response.total_duration > 1_000_000  # ns: a tiny model's answer takes more than a millisecond
    assert response.load_duration == 0


def test_chat_with_an_image_path_whole_and_streamed_alike(client: Any, image_path: Path) -> None:
    messages = [{"role": "user", "content": "What is in this image?", "images": [str(image_path)]}]
    options = {"temperature": 0, "num_predict": 6}
    whole = client.chat(model="m", messages=messages, options=options)
    assert whole.model == "m" and whole.message.role == "assistant"
    assert isinstance(whole.message.content, str) and whole.eval_count <= 6
    _figures(whole)
    assert whole.prompt_eval_count > 64  # the image's tokens are in the prompt
    chunks = list(client.chat(model="m:latest", messages=messages, options=options, stream=True))
    assert all(not c.done for c in chunks[:-1]) and chunks[-1].done
    assert "".join(c.message.content or "" for c in chunks) == whole.message.content
    assert chunks[-1].eval_count == whole.eval_count
    _figures(chunks[-1])


def test_chat_with_image_bytes_is_the_same_image(client: Any, image_path: Path) -> None:
    options = {"temperature": 0, "num_predict": 6}
    by_path = client.chat(
        model="m", messages=[{"role": "user", "content": "?", "images": [image_path]}], options=options
    )
    data = image_path.read_bytes()
    by_bytes = client.chat(model="m", messages=[{"role": "user", "content": "?", "images": [data]}], options=options)
    assert by_bytes.message.content == by_path.message.content
    assert by_bytes.prompt_eval_count == by_path.prompt_eval_count


def test_format_schema_answers_parse_and_validate(client: Any) -> None:
    response = client.chat(model="m", messages=HI, format=PET, options={"num_predict": 200, "seed": 2})
    assert response.done_reason == "stop", response
    jsonschema.validate(json.loads(response.message.content), PET)
    as_json = client.generate(model="m", prompt="a pet?", format="json", options={"num_predict": 200, "seed": 2})
    assert as_json.done_reason == "stop" and isinstance(json.loads(as_json.response), dict)


def test_a_tool_call_round_trip(client: Any) -> None:
    tools = copy.deepcopy(TOOLS)
    tools[0]["function"]["parameters"]["properties"]["candidate_id"]["maxLength"] = 12
    messages: list[Any] = [{"role": "user", "content": "What is the status of candidate 12345?"}]
    # Random weights never choose a call by themselves: lfm2-edge's options.tool_choice forces one.
    options = {"tool_choice": "get_candidate_status", "num_predict": 120, "seed": 1}
    response = client.chat(model="m", messages=messages, tools=tools, options=options)
    (call,) = response.message.tool_calls or []
    assert call.function.name == "get_candidate_status"
    assert set(call.function.arguments) == {"candidate_id"} and isinstance(call.function.arguments["candidate_id"], str)
    streamed = list(client.chat(model="m", messages=messages, tools=tools, options=options, stream=True))
    calls = [c for chunk in streamed for c in (chunk.message.tool_calls or [])]
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        (call.function.name, dict(call.function.arguments))
    ]
    assert not "".join(chunk.message.content or "" for chunk in streamed)
    messages.append(response.message)
    messages.append({"role": "tool", "content": '{"status": "Interview Scheduled"}', "tool_name": call.function.name})
    final = client.chat(model="m", messages=messages, tools=tools, options={"num_predict": 8})
    assert isinstance(final.message.content, str) and final.done


def test_list_show_ps_and_version(client: Any, served: Running, model: VisionModel) -> None:
    (listed,) = client.list().models
    assert listed.model == "m:latest" and listed.details.format == "gguf" and listed.details.family == "lfm2"
    assert listed.size == model.model_path.stat().st_size + model.mmproj_path.stat().st_size  # type: ignore[union-attr]
    assert listed.details.quantization_level == "Q4_0"
    shown = client.show("m:latest")
    assert {"completion", "vision", "tools"} <= set(shown.capabilities)
    assert shown.modelinfo["lfm2.context_length"] == model.n_ctx_per_seq
    assert "im_start" in shown.template
    (running,) = client.ps().models
    assert running.model == "m:latest" and running.context_length == model.n_ctx_per_seq
    assert httpx.get(f"{served.url}/api/version").json()["version"]


def test_errors_are_ollamas(client: Any, served: Running) -> None:
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="nope", messages=HI)
    assert missing.value.status_code == 404 and missing.value.error == "model 'nope' not found"
    # think is accepted (a thinking answer is in tests/test_reasoning.py); this answer does not think
    thought = client.chat(model="m", messages=HI, think=True, options={"num_predict": 3, "temperature": 0})
    assert thought.message.thinking is None and thought.done
    bad = httpx.post(f"{served.url}/api/chat", json={"model": "m", "messages": HI, "options": {"temperature": "hot"}})
    assert bad.status_code == 400 and bad.json() == {"error": "'options.temperature' must be a number"}
    raw = httpx.post(f"{served.url}/api/generate", json={"model": "m", "prompt": "x", "raw": True})
    assert raw.status_code == 400 and set(raw.json()) == {"error"}
    not_json = httpx.post(f"{served.url}/api/chat", content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and set(not_json.json()) == {"error"}
    with pytest.raises(ollama.ResponseError) as show:
        client.show("other")
    assert show.value.status_code == 404


def test_an_empty_request_loads_the_model_as_ollama_answers_it(served: Running) -> None:
    for path, body in (("chat", {"model": "m", "messages": []}), ("generate", {"model": "m", "keep_alive": 0})):
        answer = httpx.post(f"{served.url}/api/{path}", json=body).json()
        assert answer["done"] is True and answer["done_reason"] == "load"
    bad = httpx.post(f"{served.url}/api/generate", json={"model": "m", "keep_alive": "soon"})
    assert bad.status_code == 400


def test_what_home_assistant_sends(served: Running, image_path: Path) -> None:
    """The body of homeassistant/components/ollama's entity: streamed, tools, keep_alive
    as "Ns" or -1, options.num_ctx, think and format null, a system prompt first; and
    the ps() / list() its coordinator polls."""
    client = ollama.AsyncClient(host=served.url)
    ha_tool = {
        "type": "function",
        "function": {
            "name": "HassTurnOn",
            "parameters": {"type": "object", "properties": {"name": {"type": "string"}}, "required": []},
            "description": "Turns on a device",
        },
    }

    async def converse(keep_alive: Any) -> list[Any]:
        stream = await client.chat(
            model="m:latest",
            messages=[
                {"role": "system", "content": "You are a voice assistant for Home Assistant."},
                {"role": "user", "content": "What is on the camera?", "images": [str(image_path)]},
            ],
            tools=[ha_tool],
            stream=True,
            keep_alive=keep_alive,
            options={"num_ctx": 8192, "num_predict": 6},
            think=None,
            format=None,
        )
        return [chunk async for chunk in stream]

    async def main() -> None:
        for keep_alive in ("300s", -1):
            chunks = await converse(keep_alive)
            assert chunks[-1].done and chunks[-1].done_reason in ("stop", "length")
            assert chunks[0].message.role == "assistant"
        installed, loaded = await client.list(), await client.ps()
        assert [m.model for m in installed.models] == ["m:latest"] == [m.model for m in loaded.models]

    import asyncio

    asyncio.run(main())


def test_the_api_key_guards_the_ollama_api(model: VisionModel) -> None:
    running = start_server([model], ServerConfig(model_names=["m"], api_key="k"))
    try:
        with pytest.raises(ollama.ResponseError) as refused:
            ollama.Client(host=running.url).list()
        assert refused.value.status_code == 401 and "API key" in refused.value.error
        keyed = ollama.Client(host=running.url, headers={"Authorization": "Bearer k"})
        assert [m.model for m in keyed.list().models] == ["m:latest"]
        for path in ("/slots", "/api/ps"):
            assert httpx.get(f"{running.url}{path}").status_code == 401
    finally:
        running.stop()
