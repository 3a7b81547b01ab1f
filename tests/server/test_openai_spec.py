"""The OpenAI surface checked against the official OpenAPI description's schemas
(fragments in tests/server/openai_schemas.py): each body below once broke one of them."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from openai import NotFoundError, OpenAI

from lfm2_edge import VisionModel
from lfm2_edge.server.config import ServerConfig
from tests.helpers import TOOLS, Running, post, start_server
from tests.server import openai_schemas as spec

HI = [{"role": "user", "content": "hi"}]
FORCE = {"type": "function", "function": {"name": "get_candidate_status"}}


@pytest.fixture(scope="module")
def served(tiny: dict[str, Path]) -> Iterator[Running]:
    model = VisionModel(tiny["Q4_0"], tiny["mmproj"], n_ctx=1024)
    running = start_server([model], ServerConfig(model_names=["m", "alias"]))
    yield running
    running.stop()
    model.close()


def _responses(served: Running, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{served.url}/v1/responses", json={"model": "m", **body}, timeout=60)


def _events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def test_models_retrieve(served: Running) -> None:
    client = OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0)
    model = client.models.retrieve("alias")
    assert model.id == "alias" and model.object == "model"
    jsonschema.validate(httpx.get(f"{served.url}/v1/models/m").json(), spec.MODEL)
    with pytest.raises(NotFoundError):
        client.models.retrieve("other")


def test_a_chat_message_has_refusal(served: Running) -> None:
    body = post(served, {"model": "m", "messages": HI, "max_tokens": 2}).json()
    jsonschema.validate(body["choices"][0]["message"], spec.CHAT_COMPLETION_RESPONSE_MESSAGE)


def test_top_logprobs_bytes_of_a_partial_utf8_token_are_its_own(served: Running) -> None:
    body = {"model": "m", "messages": HI, "max_tokens": 24, "logprobs": True, "top_logprobs": 20, "seed": 3}
    content = post(served, {**body, "temperature": 1.0}).json()["choices"][0]["logprobs"]["content"]
    partial = 0
    for entry in content:
        jsonschema.validate(entry, spec.CHAT_COMPLETION_TOKEN_LOGPROB)
        for alt in entry["top_logprobs"]:
            raw = bytes(alt["bytes"])
            assert raw.decode("utf-8", "replace") == alt["token"]
            if "\ufffd" in alt["token"]:
                partial += 1
                assert b"\xef\xbf\xbd" not in raw, alt  # the token's bytes, not the replacement character's
    assert partial > 0  # the byte-level vocabulary has a token for every byte: some are partial


def test_function_call_arguments_done_names_the_function(served: Running) -> None:
    tools = copy.deepcopy(TOOLS)
    tools[0]["function"]["parameters"]["properties"]["candidate_id"]["maxLength"] = 12
    flat = [{"type": "function", **tools[0]["function"]}]
    body = {
        "input": "status of 12345?",
        "tools": flat,
        "tool_choice": {"type": "function", "name": FORCE["function"]["name"]},
    }
    response = _responses(served, {**body, "stream": True, "max_output_tokens": 120, "seed": 1})
    (done,) = [e for e in _events(response.text) if e["type"] == "response.function_call_arguments.done"]
    jsonschema.validate(done, spec.FUNCTION_CALL_ARGUMENTS_DONE)
    assert done["name"] == "get_candidate_status"


@pytest.mark.parametrize("stream", [False, True])
def test_a_cut_response_has_an_incomplete_message_and_full_usage(served: Running, stream: bool) -> None:
    response = _responses(served, {"input": "hi", "max_output_tokens": 2, "temperature": 1.0, "stream": stream})
    body = response.json() if not stream else _events(response.text)[-1]["response"]
    assert body["status"] == "incomplete"
    (message,) = body["output"]
    jsonschema.validate(message, spec.OUTPUT_MESSAGE)
    assert message["status"] == "incomplete"
    jsonschema.validate(body["usage"], spec.RESPONSE_USAGE)


def test_a_forced_tool_call_cut_by_max_tokens_is_no_raw_text(served: Running) -> None:
    body = post(
        served,
        {"model": "m", "messages": HI, "tools": TOOLS, "tool_choice": FORCE, "max_tokens": 4, "seed": 1},
    ).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert not choice["message"]["content"]  # before: the call's raw start, such as '[get_candidate_status(ca'
    jsonschema.validate(choice["message"], spec.CHAT_COMPLETION_RESPONSE_MESSAGE)
