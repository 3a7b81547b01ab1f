"""The client matrix: popular OpenAI clients, with their defaults, against a real
``lfm2-edge serve`` (the tiny synthetic model, offline). ``make interop`` installs them
(``pip install -e '.[interop]'``); a client that is absent is skipped.

Rows marked "needs schema-bound tool calls" check that a forced tool call's arguments
satisfy the function's schema, which the model side's tool-call grammar provides.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from tests.helpers import cli_server, data_uri

pytestmark = pytest.mark.slow  # `pytest -m 'not slow'` skips this module

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
IMAGE = [{"type": "text", "text": "What is in this image?"}, {"type": "image_url", "image_url": {"url": data_uri()}}]


class Pet(BaseModel):
    animal: Literal["cat", "dog"]
    count: int


def get_weather(city: str) -> str:
    """Get the weather in a city."""
    return f"sunny in {city}"


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def url(tiny: dict[str, Path]) -> Iterator[str]:
    """``lfm2-edge serve`` in its own process, as model "m", with a small context so
    answers without max_tokens end quickly."""
    with cli_server(tiny, "--ctx", "1024") as (_, base):
        yield f"{base}/v1"


# -- openai-python ----------------------------------------------------------------------


def test_openai_sync(url: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
    response = client.chat.completions.create(model="m", messages=[{"role": "user", "content": IMAGE}])
    assert response.choices[0].message.content is not None and response.usage is not None
    assert response.choices[0].finish_reason in ("stop", "length")


def test_openai_async_stream(url: str) -> None:
    openai = pytest.importorskip("openai")

    async def main() -> str:
        client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=16
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    assert isinstance(asyncio.run(main()), str)


def test_openai_parse_with_a_pydantic_model(url: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
    completion = client.chat.completions.parse(
        model="m", messages=[{"role": "user", "content": IMAGE}], response_format=Pet
    )
    assert isinstance(completion.choices[0].message.parsed, Pet)


def test_openai_tools_round_trip(url: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(
        model="m",
        messages=messages,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    (call,) = first.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments), dict)
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    final = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER], max_tokens=16)
    assert final.choices[0].message.content is not None


def test_openai_pydantic_function_tool_parse(url: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
    completion = client.chat.completions.parse(
        model="m",
        messages=[{"role": "user", "content": "Two cats."}],
        tools=[openai.pydantic_function_tool(Pet)],
        tool_choice={"type": "function", "function": {"name": "Pet"}},
    )
    (call,) = completion.choices[0].message.tool_calls or []
    assert isinstance(call.function.parsed_arguments, Pet)


# -- LiteLLM ----------------------------------------------------------------------------


def test_litellm_completion_stream_and_overflow(url: str) -> None:
    litellm = pytest.importorskip("litellm")
    common = {"model": "openai/m", "api_base": url, "api_key": "x"}
    response = litellm.completion(messages=[{"role": "user", "content": "hi"}], **common)
    assert response.choices[0].message.content is not None
    pieces = [
        c.choices[0].delta.content or ""
        for c in litellm.completion(messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=16, **common)
    ]
    assert isinstance("".join(pieces), str)
    with pytest.raises(litellm.ContextWindowExceededError):
        litellm.completion(messages=[{"role": "user", "content": "hi " * 3000}], **common)
    with pytest.raises(litellm.ContextWindowExceededError):
        litellm.completion(messages=[{"role": "user", "content": "hi"}], max_tokens=1020, **common)


# -- langchain-openai -------------------------------------------------------------------


def _chat(url: str) -> Any:
    lc = pytest.importorskip("langchain_openai")
    return lc.ChatOpenAI(base_url=url, api_key="x", model="m", max_retries=0)


def test_langchain_image(url: str) -> None:
    from_messages = pytest.importorskip("langchain_core.messages")
    answer = _chat(url).invoke([from_messages.HumanMessage(content=IMAGE)])
    assert isinstance(answer.content, str)


def test_langchain_bind_tools(url: str) -> None:
    answer = _chat(url).bind_tools([get_weather], tool_choice="get_weather").invoke("Weather in Paris?")
    assert [c["name"] for c in answer.tool_calls] == ["get_weather"]


def test_langchain_structured_output_json_schema(url: str) -> None:
    pet = _chat(url).with_structured_output(Pet, method="json_schema").invoke("Two cats.")
    assert isinstance(pet, Pet)


def test_langchain_structured_output_function_calling(url: str) -> None:
    pet = _chat(url).with_structured_output(Pet, method="function_calling").invoke("Two cats.")
    assert isinstance(pet, Pet)


# -- instructor -------------------------------------------------------------------------


def test_instructor_default_mode(url: str) -> None:  # Mode.TOOLS: a forced tool call
    instructor = pytest.importorskip("instructor")
    openai = pytest.importorskip("openai")
    client = instructor.from_openai(openai.OpenAI(base_url=url, api_key="x", max_retries=0))
    pet = client.chat.completions.create(
        model="m", response_model=Pet, messages=[{"role": "user", "content": "Two cats."}], max_retries=0
    )
    assert isinstance(pet, Pet)


def test_instructor_json_schema_mode(url: str) -> None:
    instructor = pytest.importorskip("instructor")
    openai = pytest.importorskip("openai")
    client = instructor.from_openai(
        openai.OpenAI(base_url=url, api_key="x", max_retries=0), mode=instructor.Mode.JSON_SCHEMA
    )
    pet = client.chat.completions.create(
        model="m", response_model=Pet, messages=[{"role": "user", "content": "Two cats."}], max_retries=0
    )
    assert isinstance(pet, Pet)


# -- the OpenAI Agents SDK (its default model class: the Responses API) -----------------


def test_agents_sdk(url: str) -> None:
    agents = pytest.importorskip("agents")
    openai = pytest.importorskip("openai")
    client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
    agents.set_default_openai_client(client, use_for_tracing=False)
    agents.set_tracing_disabled(True)
    # greedy: the random-weight model's sampled answer may run until the context is full,
    # which the Responses API reports as incomplete and the SDK raises on; its greedy
    # answer to this prompt ends well inside the context, every time
    settings = agents.ModelSettings(temperature=0)
    agent = agents.Agent(name="a", instructions="Answer briefly.", model="m", model_settings=settings)

    async def main() -> tuple[Any, Any]:
        result = await agents.Runner.run(agent, "hi")
        run = agents.Runner.run_streamed(agent, "hi")
        async for _ in run.stream_events():
            pass
        return result.final_output, run.final_output

    plain, streamed = asyncio.run(main())
    assert isinstance(plain, str) and isinstance(streamed, str)


# -- the llm CLI ------------------------------------------------------------------------


def test_llm_cli_with_an_attachment(url: str, tmp_path: Path) -> None:
    pytest.importorskip("llm")
    from tests.helpers import noise_image

    (tmp_path / "extra-openai-models.yaml").write_text(
        f"- model_id: lfm\n  model_name: m\n  api_base: {url}\n  vision: true\n  api_key_name: lfm\n"
    )
    (tmp_path / "keys.json").write_text(json.dumps({"lfm": "x"}))
    image = tmp_path / "cat.png"
    noise_image(96, 64).save(image)
    done = subprocess.run(
        [sys.executable, "-m", "llm", "-m", "lfm", "-a", str(image), "What is in this image?"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "LLM_USER_PATH": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr


# -- ollama-python (Ollama's native API on the same port; Home Assistant's client) -----------


def test_ollama_client_against_serve(url: str, tmp_path: Path) -> None:
    ollama = pytest.importorskip("ollama")
    from tests.helpers import noise_image

    image = tmp_path / "cat.png"
    noise_image(96, 64).save(image)
    client = ollama.Client(host=url.removesuffix("/v1"))
    assert [m.model for m in client.list().models] == ["m:latest"]
    whole = client.chat(model="m", messages=[{"role": "user", "content": "What is this?", "images": [str(image)]}])
    assert whole.done and whole.eval_count > 0 and isinstance(whole.message.content, str)
    chunks = list(client.chat(model="m", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert chunks[-1].done and chunks[-1].done_reason in ("stop", "length")
    assert "vision" in (client.show("m").capabilities or []) and client.ps().models
