"""The server's OpenAI surface beyond the basics: answer length without max_tokens, the
context-overflow 400, CORS and JSON-only POSTs, OpenAI-shaped errors everywhere,
tool_choice "required", logprobs / penalties / logit_bias, and /v1/responses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from openai import OpenAI

from lfm2_edge import VisionModel
from lfm2_edge.chat.results import ChatResult, Timings, Usage
from lfm2_edge.openai import ApiError, ChunkEvents, RequestLimits, chunk_body, completion_body, parse_chat_request, sse
from lfm2_edge.prompt.tools import tool_plan
from lfm2_edge.server.config import ServerConfig
from tests.helpers import Running, data_uri, post, recipe_messages, start_server

N_CTX = 1024
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def model(tiny: dict[str, Path]) -> Iterator[VisionModel]:
    m = VisionModel(tiny["Q4_0"], tiny["mmproj"], n_ctx=N_CTX, allow_remote_images=False)
    yield m
    m.close()


@pytest.fixture(scope="module")
def served(model: VisionModel) -> Iterator[Running]:
    running = start_server([model], ServerConfig(model_names=["m"]))
    yield running
    running.stop()


@pytest.mark.slow
def test_no_max_tokens_means_until_the_answer_ends_or_the_context_is_full(served: Running) -> None:
    body = post(served, {"model": "m", "messages": HI, "temperature": 1.0, "seed": 4}).json()
    usage, finish = body["usage"], body["choices"][0]["finish_reason"]
    if finish == "length":  # cut by the context, not by a hidden cap
        assert usage["total_tokens"] >= N_CTX - 1, usage
        assert usage["completion_tokens"] > 512
    else:
        assert finish == "stop"


def test_serve_max_tokens_sets_the_default(model: VisionModel) -> None:
    running = start_server([model], ServerConfig(model_names=["m"], default_max_tokens=3))
    try:
        body = post(running, {"model": "m", "messages": HI, "temperature": 1.0}).json()
        assert body["usage"]["completion_tokens"] <= 3
        explicit = post(running, {"model": "m", "messages": HI, "max_tokens": 6, "temperature": 1.0}).json()
        assert explicit["usage"]["completion_tokens"] <= 6
    finally:
        running.stop()


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True])
def test_prompt_plus_max_tokens_over_the_context_is_openais_400(served: Running, stream: bool) -> None:
    response = post(served, {"model": "m", "messages": HI, "max_tokens": N_CTX - 3, "stream": stream})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["type"] == "invalid_request_error", error
    prompt = int(error["message"].split("(")[1].split(" ")[0])
    assert error["message"] == (
        f"This model's maximum context length is {N_CTX} tokens. However, you requested {prompt + N_CTX - 3} tokens "
        f"({prompt} in the messages, {N_CTX - 3} in the completion). "
        "Please reduce the length of the messages or completion."
    )
    fits = post(served, {"model": "m", "messages": HI, "max_tokens": N_CTX - prompt, "temperature": 1.0})
    assert fits.status_code == 200, fits.text


def test_a_prompt_over_the_context_alone_is_openais_400(served: Running) -> None:
    response = post(served, {"model": "m", "messages": [{"role": "user", "content": "hi " * 3000}]})
    error = response.json()["error"]
    assert response.status_code == 400 and error["code"] == "context_length_exceeded"
    assert error["message"].startswith(f"This model's maximum context length is {N_CTX} tokens. However, you requested")
    assert "in the messages, 1 in the completion" in error["message"]


def _preflight(url: str, origin: str) -> httpx.Response:
    return httpx.options(
        f"{url}/v1/chat/completions",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization",
        },
    )


def test_cors_lets_localhost_pages_through_and_nothing_else(served: Running) -> None:
    for origin in ("http://localhost:5173", "https://127.0.0.1:8443", "http://[::1]:3000", "http://localhost"):
        ok = _preflight(served.url, origin)
        assert ok.status_code in (200, 204), (origin, ok.text)
        assert ok.headers["access-control-allow-origin"] == origin
        assert "POST" in ok.headers["access-control-allow-methods"]
        assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    for origin in ("https://example.com", "http://localhost.example.com", "http://127.0.0.1.nip.io", "null"):
        refused = _preflight(served.url, origin)
        assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
        assert refused.json()["error"]["code"] == "origin_not_allowed"
    answer = post(served, {"model": "m", "messages": HI, "max_tokens": 2}, {"Origin": "http://localhost:5173"})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "http://localhost:5173"
    elsewhere = post(served, {"model": "m", "messages": HI, "max_tokens": 2}, {"Origin": "https://example.com"})
    assert elsewhere.status_code == 403


def test_allowed_origins_adds_origins_and_star_allows_any(model: VisionModel) -> None:
    for allowed, origin, passes in (
        (("https://app.example",), "https://app.example", True),
        (("https://app.example",), "https://evil.example", False),
        (("https://app.example",), "http://localhost:5173", True),
        (("*",), "https://anything.example", True),
    ):
        running = start_server([model], ServerConfig(model_names=["m"], allowed_origins=allowed))
        try:
            response = _preflight(running.url, origin)
            assert (response.status_code in (200, 204)) == passes, (allowed, origin)
        finally:
            running.stop()


def test_a_post_that_is_not_json_runs_no_generation(served: Running) -> None:
    before = httpx.get(f"{served.url}/health").json()["served"]
    body = json.dumps({"model": "m", "messages": HI, "max_tokens": 2})
    for headers in ({"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"}, {}):
        for origin in ({}, {"Origin": "http://localhost:5173"}):
            response = httpx.post(f"{served.url}/v1/chat/completions", content=body, headers={**headers, **origin})
            assert response.status_code == 415, response.text
            assert response.json()["error"]["code"] == "unsupported_media_type"
    charset = post(served, body, {"content-type": "application/json; charset=utf-8"})
    assert charset.status_code == 200
    assert httpx.get(f"{served.url}/health").json()["served"] == before + 1


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v1/embeddings", 404),
        ("GET", "/nope", 404),
        ("GET", "/v1/chat/completions", 405),
        ("DELETE", "/v1/models", 405),
        ("PUT", "/v1/responses", 405),
    ],
)
def test_every_error_is_openai_shaped(served: Running, method: str, path: str, status: int) -> None:
    response = httpx.request(method, f"{served.url}{path}", json={"input": "x"})
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert path in error["message"] and error["type"] == "invalid_request_error" and error["code"]


def test_model_layer_errors_name_their_field(served: Running) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    choice = {"type": "function", "function": {"name": "g"}}
    body = {"model": "m", "messages": HI, "tools": tools, "tool_choice": choice}
    error = post(served, body).json()["error"]
    assert error["param"] == "tool_choice" and "'g'" in error["message"]
    bad_format = {"model": "m", "messages": HI, "response_format": {"type": "xml"}}
    assert post(served, bad_format).json()["error"]["param"] == "response_format"


# -- request parsing (wire/request.py) --------------------------------------------------

LIMITS = RequestLimits(model_names=["m"], context_size=4096)


def parse(**fields: Any) -> Any:
    return parse_chat_request({"messages": HI, **fields}, LIMITS)


def test_max_tokens_defaults() -> None:
    assert parse().options["max_tokens"] == 4096 and parse().max_tokens is None
    assert parse(max_tokens=7).options["max_tokens"] == 7 and parse(max_tokens=7).max_tokens == 7
    assert parse(max_completion_tokens=9).max_tokens == 9
    with_default = parse_chat_request({"messages": HI}, RequestLimits(model_names=["m"], default_max_tokens=100))
    assert with_default.options["max_tokens"] == 100 and with_default.max_tokens is None


def test_tool_choice_required_and_parallel_tool_calls_reach_the_model() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    req = parse(tools=tools, tool_choice="required", parallel_tool_calls=False)
    assert req.options["tool_choice"] == "required" and req.options["parallel_tool_calls"] is False
    assert tool_plan(req.options["tools"], req.options["tool_choice"], None, None).mode == "forced"
    with pytest.raises(ApiError) as bad:
        parse(parallel_tool_calls="yes")
    assert bad.value.param == "parallel_tool_calls"


def test_logprobs_penalties_and_logit_bias_are_parsed_as_model_keywords() -> None:
    assert "logprobs" not in parse().options and "logprobs" not in parse(logprobs=False).options
    assert parse(logprobs=True).options["logprobs"] == 0
    assert parse(logprobs=True, top_logprobs=5).options["logprobs"] == 5
    opts = parse(presence_penalty=0.5, frequency_penalty=-1, logit_bias={"42": -100, "7": 3.5}).options
    assert opts["presence_penalty"] == 0.5 and opts["frequency_penalty"] == -1.0
    assert opts["logit_bias"] == {42: -100.0, 7: 3.5}
    neutral = parse(presence_penalty=0, frequency_penalty=0.0, logit_bias={}).options
    assert not {"presence_penalty", "frequency_penalty", "logit_bias"} & set(neutral)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": 1}, "logprobs"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -2.01}, "frequency_penalty"),
        ({"logit_bias": {"12": 101}}, "logit_bias"),
        ({"logit_bias": {"hello": 1}}, "logit_bias"),
        ({"logit_bias": [1, 2]}, "logit_bias"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"temperature": 3}, "temperature"),
    ],
)
def test_out_of_range_fields_are_400s_naming_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as bad:
        parse(**fields)
    assert bad.value.status == 400 and bad.value.param == param


def _result_with_logprobs() -> Any:
    entry = SimpleNamespace(token="Hi", logprob=-0.25, bytes=[72, 105], top_logprobs=(("Hi", -0.25), ("Hey", -1.5)))
    base = ChatResult("Hi", "stop", Usage(3, 0, 1), Timings(1, 0, 1, 1))
    return SimpleNamespace(
        **{f: getattr(base, f) for f in ("text", "finish_reason", "usage", "tool_calls")}, logprobs=(entry,)
    )


def test_logprobs_shapes() -> None:
    body = completion_body(_result_with_logprobs(), "id", "m", 0)
    logprobs = body["choices"][0]["logprobs"]
    assert logprobs["content"] == [
        {
            "token": "Hi",
            "logprob": -0.25,
            "bytes": [72, 105],
            "top_logprobs": [
                {"token": "Hi", "logprob": -0.25, "bytes": [72, 105]},
                {"token": "Hey", "logprob": -1.5, "bytes": [72, 101, 121]},
            ],
        }
    ]
    plain = ChatResult("Hi", "stop", Usage(3, 0, 1), Timings(1, 0, 1, 1))
    assert completion_body(plain, "id", "m", 0)["choices"][0]["logprobs"] is None
    chunk = chunk_body("id", "m", 0, {"content": "Hi"}, logprobs=_result_with_logprobs().logprobs)
    assert chunk["choices"][0]["logprobs"]["content"][0]["token"] == "Hi"
    assert "logprobs" not in chunk_body("id", "m", 0, {"content": "Hi"})["choices"][0]
    # the openai client reads them back
    from openai.types.chat import ChatCompletion

    parsed = ChatCompletion.model_validate(body)
    assert parsed.choices[0].logprobs and parsed.choices[0].logprobs.content[0].top_logprobs[1].token == "Hey"


# -- /v1/responses ----------------------------------------------------------------------


def test_responses_text_image_instructions_and_usage(served: Running) -> None:
    client = OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0)
    response = client.responses.create(
        model="m",
        instructions="Answer in one word.",
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_image", "image_url": data_uri()},
                    {"type": "input_text", "text": "What is in this image?"},
                ],
            }
        ],
        max_output_tokens=8,
        temperature=0,
    )
    assert response.status in ("completed", "incomplete") and response.output_text
    assert response.usage is not None and response.usage.input_tokens > 64 and 0 < response.usage.output_tokens <= 8
    assert response.instructions == "Answer in one word."

    text = client.responses.create(model="m", input="hi", max_output_tokens=8, temperature=0)
    streamed = client.responses.create(model="m", input="hi", max_output_tokens=8, temperature=0, stream=True)
    kinds, deltas, final = [], [], None
    for event in streamed:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        if event.type in ("response.completed", "response.incomplete"):
            final = event.response
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_item.added" in kinds and "response.output_text.done" in kinds
    assert final is not None and final.output_text == "".join(deltas) == text.output_text
    assert final.usage is not None and final.usage.output_tokens == text.usage.output_tokens  # type: ignore[union-attr]


def test_responses_errors_are_openai_shaped(served: Running) -> None:
    url = f"{served.url}/v1/responses"
    bad = httpx.post(url, json={"model": "m", "input": [{"type": "input_file", "file_id": "f"}]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"
    stored = httpx.post(url, json={"model": "m", "input": "hi", "previous_response_id": "resp_1"})
    assert stored.status_code == 400 and stored.json()["error"]["param"] == "previous_response_id"
    overflow = httpx.post(url, json={"model": "m", "input": "hi", "max_output_tokens": N_CTX - 2})
    assert overflow.status_code == 400 and overflow.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.slow
def test_recipe_image_request_still_works_without_max_tokens(served: Running) -> None:
    response = post(served, {"model": "m", "messages": recipe_messages(data_uri()), "temperature": 0.1})
    assert response.status_code == 200 and response.json()["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("model", ["m", 'a "quoted" \uffff lfm2-edge content \uffff model', ChunkEvents._MARK])
def test_a_text_delta_event_is_the_chunk_body_s_bytes(model: str) -> None:
    events = ChunkEvents("chatcmpl-1", model, 1700000000)
    for text in ["hi", "", 'say "no"\n\t\\', "é 猫 🐱", "\x00\x1f</script>", "\uffff lfm2-edge content \uffff"]:
        assert events.content(text) == sse(chunk_body("chatcmpl-1", model, 1700000000, {"content": text}))
