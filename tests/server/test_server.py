"""``lfm2-edge serve`` against the official ``openai`` client, and the remote backend.

The server runs in this process (uvicorn on 127.0.0.1, a free port) over the tiny
synthetic model; clients talk to it over real HTTP.
"""

from __future__ import annotations

import copy
import json
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from lfm2_edge import VisionModel
from lfm2_edge.errors import ContextOverflowError
from lfm2_edge.openai.client import RemoteModel
from lfm2_edge.server.config import ServerConfig
from tests.helpers import TOOLS, Running, cli_server, data_uri, noise_image, post, recipe_messages, start_server

NAME = "LiquidAI/LFM2.5-VL-450M"


@pytest.fixture(scope="module")
def served(tiny: dict[str, Path]) -> Iterator[Running]:
    model = VisionModel(tiny["F16"], tiny["mmproj"], n_ctx=4096, allow_remote_images=False)
    running = start_server([model], ServerConfig(model_names=[NAME, "tiny"], max_images=2))
    yield running
    running.stop()
    model.close()


@pytest.fixture(scope="module")
def client(served: Running) -> OpenAI:
    return OpenAI(base_url=f"{served.url}/v1", api_key="EMPTY", max_retries=0)


def test_the_vllm_recipe_client_code_works(client: OpenAI) -> None:
    response = client.chat.completions.create(
        model=NAME,
        messages=recipe_messages(data_uri()),  # type: ignore[arg-type]
        temperature=0.1,
        max_tokens=16,
        extra_body={"min_p": 0.15, "repetition_penalty": 1.05},
    )
    choice = response.choices[0]
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason in ("stop", "length") and choice.message.role == "assistant"
    assert response.model == NAME
    assert response.usage is not None and response.usage.completion_tokens <= 16
    assert response.usage.prompt_tokens > 64  # the image's tokens are counted


def test_streaming_gives_the_same_text_and_usage(client: OpenAI) -> None:
    kwargs: dict[str, Any] = {"model": NAME, "temperature": 0, "max_tokens": 20, "seed": 3}
    messages = recipe_messages(data_uri(seed=5), "Describe it.")
    whole = client.chat.completions.create(messages=messages, **kwargs)  # type: ignore[arg-type]
    chunks = list(
        client.chat.completions.create(
            messages=messages,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
            **kwargs,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    usage = chunks[-1].usage
    assert usage is not None and whole.usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (whole.usage.prompt_tokens, whole.usage.completion_tokens)


def test_models_and_health(client: OpenAI, served: Running) -> None:
    assert [m.id for m in client.models.list().data] == [NAME, "tiny"]
    health = httpx.get(f"{served.url}/health").json()
    assert health["status"] == "ok" and health["queued"] == 0


def test_remote_visionmodel_gives_the_local_greedy_answer(served: Running, vm: VisionModel) -> None:
    photo = noise_image(120, 80, seed=21)
    greedy: dict[str, Any] = {"temperature": 0, "max_tokens": 24}
    local = vm.chat("What is in this image?", images=[photo], **greedy)
    with RemoteModel(served.url, model="tiny") as remote:
        answer = remote.chat("What is in this image?", images=[photo], **greedy)
        streamed = remote.chat("What is in this image?", images=[photo], stream=True, **greedy)
        pieces = list(streamed)
    assert answer.text == local.text and answer.finish_reason == local.finish_reason
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (
        local.usage.prompt_tokens,
        local.usage.completion_tokens,
    )
    assert "".join(pieces) == local.text and streamed.result is not None
    assert streamed.result.timings.first_token_ms > 0


@pytest.mark.slow
def test_sixteen_concurrent_clients_get_their_own_complete_answers(
    client: OpenAI, vm: VisionModel, served: Running
) -> None:
    prompts = [f"Question number {i}: what do you see?" for i in range(16)]
    uris = [data_uri(seed=100 + i, size=(64, 64)) for i in range(16)]
    greedy: dict[str, Any] = {"temperature": 0, "max_tokens": 12}
    expected = []
    for prompt, uri in zip(prompts, uris, strict=True):
        expected.append(vm.chat(recipe_messages(uri, prompt), **greedy).text)

    def ask(i: int) -> str:
        r = client.chat.completions.create(model=NAME, messages=recipe_messages(uris[i], prompts[i]), **greedy)  # type: ignore[arg-type]
        return r.choices[0].message.content or ""

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(16)))
    assert answers == expected
    assert httpx.get(f"{served.url}/health").json()["queued"] == 0


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        ({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, 404, "not served here"),
        ({"model": NAME, "messages": []}, 400, "non-empty list"),
        ({"model": NAME, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "role must be"),
        (
            {
                "model": NAME,
                "messages": recipe_messages(data_uri(1)) + recipe_messages(data_uri(2)) + recipe_messages(data_uri(3)),
            },
            400,
            "at most 2 per prompt",
        ),
        ({"model": NAME, "messages": recipe_messages("data:image/png;base64,bm90IGFuIGltYWdl")}, 400, "not an image"),
        ({"model": NAME, "messages": recipe_messages("file:///etc/passwd")}, 400, "data: URI or an http(s) URL"),
        ({"model": NAME, "messages": recipe_messages("http://127.0.0.1:9/cat.jpg")}, 400, "does not fetch image URLs"),
        ({"model": NAME, "messages": [{"role": "user", "content": "hi " * 6000}]}, 400, "maximum context length"),
        ({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "'temperature'"),
        ({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n=1"),
    ],
)
def test_bad_requests_get_openai_errors_and_the_server_stays_up(
    served: Running, client: OpenAI, body: Any, status: int, fragment: str
) -> None:
    for stream in (False, True):
        if isinstance(body, dict):
            body = {**body, "stream": stream}
        response = post(served, body)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert fragment in error["message"] and error["type"]
    ok = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "still there?"}], max_tokens=2
    )
    assert ok.choices[0].message.content is not None


def test_context_overflow_maps_to_the_typed_error_remotely(served: Running) -> None:
    with RemoteModel(served.url) as remote, pytest.raises(ContextOverflowError, match="maximum context length"):
        remote.chat("hi " * 6000)


def test_api_key(tiny: dict[str, Path]) -> None:
    model = VisionModel(tiny["Q4_0"], tiny["mmproj"], n_ctx=512)
    running = start_server([model], ServerConfig(model_names=["m"], api_key="s3cret"))
    try:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert post(running, body).status_code == 401
        wrong = post(running, body, {"authorization": "Bearer s3cre"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        assert post(running, body, {"authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(f"{running.url}/v1/models").status_code == 401
        assert httpx.get(f"{running.url}/health").status_code == 200  # for load balancers
        keyed = OpenAI(base_url=f"{running.url}/v1", api_key="s3cret", max_retries=0)
        assert keyed.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    finally:
        running.stop()
        model.close()


LONG_ARRAY = {"type": "array", "items": {"type": "integer"}, "minItems": 5000}


def test_a_client_that_disconnects_mid_stream_stops_its_generation(served: Running, client: OpenAI) -> None:
    before = httpx.get(f"{served.url}/health").json()
    body = {
        "model": NAME,
        "messages": [{"role": "user", "content": "Go on forever."}],
        "max_tokens": 3500,
        "stream": True,
        # a grammar that wants thousands of numbers keeps the answer going until it is cut
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": LONG_ARRAY}},
    }
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data:")
    # the connection is closed: the generation stops at its next token and frees the model
    deadline = time.monotonic() + 20
    while (health := httpx.get(f"{served.url}/health").json())["cancelled"] == before["cancelled"]:
        assert time.monotonic() < deadline, health
        time.sleep(0.05)
    assert health["queued"] == 0
    ok = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "next"}], max_tokens=2)
    assert ok.choices[0].message.content is not None


@pytest.mark.slow
def test_cli_serve_finishes_in_flight_answers_on_sigterm(tiny: dict[str, Path]) -> None:
    with cli_server(tiny) as (proc, url):
        body = {"model": "m", "messages": [{"role": "user", "content": "Go on."}], "max_tokens": 2000, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data:")
            proc.send_signal(signal.SIGTERM)  # while the answer is still streaming
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"  # the in-flight answer was finished
        finish = [json.loads(x[5:])["choices"][0]["finish_reason"] for x in rest if x.startswith("data: {")]
        assert finish[-1] in ("stop", "length")
        assert proc.wait(timeout=60) == 0
        stderr = proc.stderr.read() if proc.stderr else ""
    assert "serving m at http://127.0.0.1" in stderr and "Traceback" not in stderr


FORCE = {"type": "function", "function": {"name": "get_candidate_status"}}


def test_the_openai_tool_calling_example_works(client: OpenAI) -> None:
    # Random weights never end a free string: bound the id so the forced call closes.
    tools = copy.deepcopy(TOOLS)
    tools[0]["function"]["parameters"]["properties"]["candidate_id"]["maxLength"] = 12
    messages: list[Any] = [{"role": "user", "content": "What is the current status of candidate ID 12345?"}]
    response = client.chat.completions.create(
        model=NAME,
        messages=messages,
        tools=tools,
        tool_choice=FORCE,
        max_tokens=120,
        seed=1,  # type: ignore[arg-type]
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_candidate_status"
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"candidate_id"}  # required, so always there
    assert isinstance(arguments["candidate_id"], str) and len(arguments["candidate_id"]) <= 12
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": '{"status": "Interview Scheduled"}'})
    final = client.chat.completions.create(model=NAME, messages=messages, tools=TOOLS, max_tokens=8)  # type: ignore[arg-type]
    assert final.choices[0].message.content is not None

    streamed = client.chat.completions.create(
        model=NAME,
        messages=messages[:1],
        tools=tools,
        tool_choice=FORCE,
        max_tokens=120,
        seed=1,
        stream=True,  # type: ignore[arg-type]
    )
    deltas = [c.choices[0].delta for c in streamed if c.choices]
    calls = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert [tc.function.name for tc in calls if tc.function] == ["get_candidate_status"]
    assert json.loads(calls[0].function.arguments or "") == arguments  # same seed, same call
    assert not "".join(d.content or "" for d in deltas)  # a forced call is not text


def test_structured_output_through_the_server(client: OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"animal": {"enum": ["cat", "dog"]}, "count": {"type": "integer"}},
        "required": ["animal", "count"],
        "additionalProperties": False,
    }
    for seed in range(3):
        response = client.chat.completions.create(
            model=NAME,
            messages=recipe_messages(data_uri(seed)),  # type: ignore[arg-type]
            response_format={"type": "json_schema", "json_schema": {"name": "pets", "schema": schema}},
            temperature=1.0,
            seed=seed,
            max_tokens=100,
        )
        data = json.loads(response.choices[0].message.content or "")
        assert data["animal"] in ("cat", "dog") and isinstance(data["count"], int)


def test_remote_image_urls_never_reach_private_hosts(tiny: dict[str, Path]) -> None:
    import http.server

    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

    images = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=images.serve_forever, daemon=True).start()
    model = VisionModel(tiny["Q4_0"], tiny["mmproj"], n_ctx=512, allow_remote_images=True)
    running = start_server([model], ServerConfig(model_names=["m"], allow_remote_images=True))
    try:
        for url in (f"http://127.0.0.1:{images.server_address[1]}/cat.jpg", "http://169.254.169.254/latest/meta-data"):
            response = post(running, {"model": "m", "messages": recipe_messages(url)})
            assert response.status_code == 400 and "refusing to fetch" in response.json()["error"]["message"]
        response = post(running, {"model": "m", "messages": recipe_messages("file:///etc/passwd")})
        assert response.status_code == 400
        assert hits == []  # never opened
    finally:
        running.stop()
        model.close()
        images.shutdown()
        images.server_close()


def test_exposing_the_server_without_a_key_warns() -> None:
    from lfm2_edge.cli.serve import exposure_warning

    assert "without --api-key" in (exposure_warning("0.0.0.0", None) or "")
    assert "without --api-key" in (exposure_warning("192.168.1.20", None) or "")
    assert exposure_warning("0.0.0.0", "key") is None
    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("localhost", None) is None


@pytest.mark.slow
def test_n_parallel_instances_answer_at_once_and_correctly(tiny: dict[str, Path], vm: VisionModel) -> None:
    models = [VisionModel(tiny["F16"], tiny["mmproj"]) for _ in range(2)]
    running = start_server(models, ServerConfig(model_names=["m"]))
    try:
        client = OpenAI(base_url=f"{running.url}/v1", api_key="EMPTY", max_retries=0)
        prompts = [f"Question {i}?" for i in range(8)]
        expected = [vm.chat(p, temperature=0, max_tokens=10).text for p in prompts]

        def ask(prompt: str) -> str:
            messages: Any = [{"role": "user", "content": prompt}]
            r = client.chat.completions.create(model="m", messages=messages, temperature=0, max_tokens=10)
            return r.choices[0].message.content or ""

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(ask, prompts)) == expected
        assert all(len(m._states) > 0 for m in models)  # both instances answered
        assert httpx.get(f"{running.url}/health").json()["served"] == 8
    finally:
        running.stop()
        for m in models:
            m.close()
