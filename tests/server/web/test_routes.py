"""The pages' routes without a browser: their files, headers and size, the settings
JSON, the figures the page shows (``timings``), and the origin rules the page relies on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest

from lfm2_edge.server.config import ServerConfig
from lfm2_edge.server.web import CSP, PAGE_FILES
from tests.helpers import data_uri, recipe_messages, start_server

BUDGET = 150 * 1024  # the whole page: HTML, JS, CSS, uncompressed


@pytest.fixture(scope="module")
def served(vm: Any) -> Iterator[str]:
    running = start_server([vm], ServerConfig(model_names=["m"], max_images=2))
    yield running.url
    running.stop()


def test_the_pages_fit_the_size_budget() -> None:
    web = resources.files("lfm2_edge.server").joinpath("web")
    shipped = sorted(p.name for p in web.iterdir() if p.is_file())
    assert shipped == sorted(PAGE_FILES)  # every file is served, nothing else lies there
    total = sum(len(web.joinpath(name).read_bytes()) for name in PAGE_FILES)
    assert total <= BUDGET, f"the pages weigh {total} bytes, over the {BUDGET} budget"


@pytest.mark.parametrize(
    ("path", "kind"),
    [("/", "text/html"), ("/camera", "text/html"), ("/web/app.js", "text/javascript"), ("/web/style.css", "text/css")],
)
def test_pages_carry_a_self_only_policy(served: str, path: str, kind: str) -> None:
    r = httpx.get(served + path)
    assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
    assert r.headers["content-security-policy"] == CSP
    assert "default-src 'none'" in CSP and "script-src 'self';" in CSP and "connect-src 'self';" in CSP
    assert "unsafe" not in CSP and "http" not in CSP
    assert r.headers["x-content-type-options"] == "nosniff"


def test_pages_reference_only_their_own_files(served: str) -> None:
    for path in ("/", "/camera"):
        html = httpx.get(served + path).text
        assert "http://" not in html and "https://" not in html and "<script>" not in html and " style=" not in html


def test_unknown_files_and_routes(served: str) -> None:
    r = httpx.get(served + "/web/secret.py")
    assert r.status_code == 404 and "not one of the page's files" in r.json()["error"]["message"]
    assert httpx.get(served + "/web/index.html").status_code == 404  # pages only at / and /camera
    r = httpx.get(served + "/nope")
    assert r.status_code == 404 and "GET / (chat) and GET /camera" in r.json()["error"]["message"]


def test_settings_are_the_cards_defaults(served: str) -> None:
    body = httpx.get(served + "/web/config.json").json()
    assert body["model"] == "m" and body["vision"] is True and body["max_images"] == 2
    d = body["defaults"]
    assert d["system_prompt"] == "You are a helpful multimodal assistant by Liquid AI."
    assert (d["temperature"], d["min_p"], d["repetition_penalty"]) == (0.1, 0.15, 1.05)
    assert (d["image_min_tokens"], d["image_max_tokens"]) == (64, 256)
    assert body["context_size"] == 4096


def test_the_key_guards_the_settings(tiny: dict[str, Path]) -> None:
    from lfm2_edge import VisionModel

    # its own model: a server's shutdown closes the models it served
    running = start_server([VisionModel(tiny["F16"], tiny["mmproj"], n_ctx=512)], ServerConfig(["m"], api_key="k"))
    try:
        assert httpx.get(running.url + "/").status_code == 200  # the page itself asks for the key
        assert httpx.get(running.url + "/web/config.json").status_code == 401
        ok = httpx.get(running.url + "/web/config.json", headers={"Authorization": "Bearer k"})
        assert ok.status_code == 200 and ok.json()["model"] == "m"
    finally:
        running.stop()


def test_answers_carry_the_figures_the_page_shows(served: str) -> None:
    body = {"model": "m", "messages": recipe_messages(data_uri(seed=11)), "max_tokens": 4, "temperature": 0}
    plain = httpx.post(served + "/v1/chat/completions", json=body, timeout=60).json()
    assert "timings" in plain, plain
    t = plain["timings"]
    assert t["image_encodes"] >= 1 and t["image_tokens"] > 0 and t["first_token_ms"] > 0
    assert set(t) == {
        "queue_ms",
        "load_ms",
        "prompt_ms",
        "image_ms",
        "first_token_ms",
        "decode_ms",
        "prompt_tok_s",
        "decode_tok_s",
        "image_tokens",
        "image_encodes",
    }
    stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", served + "/v1/chat/completions", json=stream, timeout=60) as r:
        chunks = [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data: {")]
    last = chunks[-1]
    assert last["choices"] == [] and last["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    assert last["timings"]["image_encodes"] == 0  # the same image again: the saved state served it
    assert all("timings" not in c for c in chunks[:-1])


def test_a_file_page_is_told_which_flag_allows_it(served: str) -> None:
    r = httpx.post(served + "/v1/chat/completions", json={}, headers={"Origin": "null"})
    message = r.json()["error"]["message"]
    assert r.status_code == 403 and "--allowed-origins null" in message and "--api-key" in message
    assert "\n" not in message
    other = httpx.get(served + "/v1/models", headers={"Origin": "https://evil.example"}).json()["error"]["message"]
    assert "--allowed-origins https://evil.example" in other


@pytest.mark.parametrize(
    ("host", "origin", "allowed"),
    [
        ("192.168.1.5:8000", "http://192.168.1.5:8000", True),  # the page on a LAN, by address
        ("[fd00::5]:8000", "http://[fd00::5]:8000", True),
        ("192.168.1.5:8000", "http://192.168.1.6:8000", False),  # another machine's page
        ("192.168.1.5:8000", "https://192.168.1.5:8000", False),
        ("evil.example:8000", "http://evil.example:8000", False),  # a name could be DNS-rebound
    ],
)
def test_the_page_on_a_lan_may_call_its_own_server(served: str, host: str, origin: str, allowed: bool) -> None:
    r = httpx.get(served + "/v1/models", headers={"Host": host, "Origin": origin})
    assert (r.status_code == 200) is allowed, r.text
    if allowed:
        assert r.headers["access-control-allow-origin"] == origin
