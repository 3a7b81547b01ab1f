"""/metrics (Prometheus text, read back with prometheus_client's own parser): its
counters move by exactly the tokens and requests of a known run; /slots agrees with
/health; x-request-id on every answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lfm2_edge import VisionModel
from lfm2_edge.server.config import ServerConfig
from tests.helpers import Running, data_uri, post, recipe_messages, start_server

parser = pytest.importorskip("prometheus_client.parser")


@pytest.fixture(scope="module")
def model(tiny: dict[str, Path]) -> Iterator[VisionModel]:
    m = VisionModel(tiny["Q4_0"], tiny["mmproj"], n_ctx=2048, n_seq_max=2)
    yield m
    m.close()


@pytest.fixture(scope="module")
def served(model: VisionModel) -> Iterator[Running]:
    running = start_server([model], ServerConfig(model_names=["m"], metrics=True))
    yield running
    running.stop()


def scrape(served: Running) -> dict[str, float]:
    response = httpx.get(f"{served.url}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples: dict[str, float] = {}
    for family in parser.text_string_to_metric_families(response.text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


def test_counters_move_by_exactly_the_tokens_and_requests_of_a_run(served: Running) -> None:
    before = scrape(served)
    usages = []
    for body in (
        {"model": "m", "messages": recipe_messages(data_uri(seed=7)), "max_tokens": 5, "temperature": 0},
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ):
        response = post(served, body)
        assert response.status_code == 200
        if body.get("stream"):
            import json

            chunks = [json.loads(x[6:]) for x in response.text.split("\n\n") if x.startswith("data: {")]
            usages.append(chunks[-1]["usage"])
        else:
            usages.append(response.json()["usage"])
    ollama = httpx.post(
        f"{served.url}/api/chat",
        json={
            "model": "m",
            "messages": [{"role": "user", "content": "yo"}],
            "stream": False,
            "options": {"num_predict": 4},
        },
    ).json()
    after = scrape(served)

    def moved(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    prompt = sum(u["prompt_tokens"] for u in usages) + ollama["prompt_eval_count"]
    cached = sum(u["prompt_tokens_details"]["cached_tokens"] for u in usages)
    predicted = sum(u["completion_tokens"] for u in usages) + ollama["eval_count"]
    assert moved("llamacpp:tokens_predicted_total") == predicted
    # evaluated + cached = the prompts' positions (the Ollama answer's cached share is counted in the cached total)
    assert moved("llamacpp:prompt_tokens_total") + moved("lfm2_edge_prompt_tokens_cached_total") == prompt
    assert moved("lfm2_edge_prompt_tokens_cached_total") >= cached
    assert moved("lfm2_edge_requests_total{outcome=served}") == 3
    assert moved("lfm2_edge_time_to_first_token_seconds_count") == 3
    assert moved("lfm2_edge_image_encodes_total") >= 1 and moved("lfm2_edge_image_tokens_total") > 0
    assert moved("llamacpp:prompt_seconds_total") > 0 and moved("llamacpp:tokens_predicted_seconds_total") > 0
    assert after["llamacpp:requests_processing"] == 0 and after["llamacpp:requests_deferred"] == 0
    assert after["lfm2_edge_slots_total"] == 2
    assert after["llamacpp:predicted_tokens_seconds"] > 0  # the bucket of the answers since the last scrape
    assert scrape(served)["llamacpp:predicted_tokens_seconds"] == 0  # emptied by that scrape, as llama-server's


def test_a_full_queue_is_counted(model: VisionModel) -> None:
    running = start_server([model], ServerConfig(model_names=["m"], metrics=True, max_queue=1))
    try:
        import threading

        slow = threading.Thread(
            target=post,
            args=(
                running,
                {
                    "model": "m",
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 400,
                    "temperature": 1.0,
                    # it cannot end before the others come
                    "logit_bias": {str(t): -100 for t in range(model._runtime.n_vocab) if model._runtime.is_end(t)},
                },
            ),
        )
        slow.start()
        import time

        deadline = time.monotonic() + 60  # the slow request is admitted (a loaded machine takes seconds)
        while httpx.get(f"{running.url}/health").json()["queued"] == 0 and time.monotonic() < deadline:
            threading.Event().wait(0.01)
        refused = post(running, {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        ollama = httpx.post(f"{running.url}/api/generate", json={"model": "m", "prompt": "x", "stream": False})
        slow.join()
        assert refused.status_code == 429 and ollama.status_code == 503 and ollama.json()["error"]
        assert scrape(running)["lfm2_edge_requests_rejected_total"] == 2
    finally:
        running.stop()


def test_slots_match_health(served: Running) -> None:
    slots = httpx.get(f"{served.url}/slots").json()
    health = httpx.get(f"{served.url}/health").json()["slots"]
    assert len(slots) == health["total"] == 2
    assert sum(s["is_processing"] for s in slots) == health["busy"]
    assert [s["id"] for s in slots] == [0, 1] and all(s["n_ctx"] == 1024 for s in slots)
    assert {"id", "id_task", "n_ctx", "speculative", "is_processing"} <= set(slots[0])


def test_metrics_are_off_by_default_and_guarded_by_the_key(model: VisionModel) -> None:
    plain = start_server([model], ServerConfig(model_names=["m"]))
    keyed = start_server([model], ServerConfig(model_names=["m"], api_key="k", metrics=True))
    try:
        assert httpx.get(f"{plain.url}/metrics").status_code == 404
        assert httpx.get(f"{keyed.url}/metrics").status_code == 401
        assert httpx.get(f"{keyed.url}/metrics", headers={"Authorization": "Bearer k"}).status_code == 200
    finally:
        plain.stop()
        keyed.stop()


def test_every_answer_has_an_x_request_id(served: Running) -> None:
    answers = [
        httpx.get(f"{served.url}/health"),
        httpx.get(f"{served.url}/nowhere"),
        post(served, "{"),
        httpx.post(f"{served.url}/v1/chat/completions", content=b"x", headers={"content-type": "text/plain"}),
        httpx.get(f"{served.url}/v1/models", headers={"Origin": "https://evil.example"}),
    ]
    ids = [a.headers.get("x-request-id") for a in answers]
    assert all(ids) and len(set(ids)) == len(ids), ids
    echoed = httpx.get(f"{served.url}/health", headers={"x-request-id": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    unsafe = httpx.get(f"{served.url}/health", headers={"x-request-id": "a b<script>"})
    assert unsafe.headers["x-request-id"] != "a b<script>"
