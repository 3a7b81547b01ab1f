"""Hostile requests through a real server: none crashes it, exhausts its memory, or holds
the model while a normal request waits."""

from __future__ import annotations

import base64
import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lfm2_edge import VisionModel
from lfm2_edge.server.config import ServerConfig
from tests.helpers import Running, cli_server, png_claiming, post, recipe_messages, start_server

pytestmark = pytest.mark.slow

NORMAL = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
LONG = {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "array", "minItems": 5000}}}


@pytest.fixture(scope="module")
def served(tiny: dict[str, Path]) -> Iterator[Running]:
    model = VisionModel(tiny["F16"], tiny["mmproj"], n_ctx=4096)
    config = ServerConfig(model_names=["m"], allow_remote_images=True, allow_private_image_urls=True)
    config.image_fetch_timeout_s = 3
    running = start_server([model], config)
    yield running
    running.stop()
    model.close()


def answered_quickly(url: str, limit_s: float = 10.0) -> float:
    """A normal request is answered while an attack runs (the old failure modes took 82-88 s;
    the bound is loose because a 2-core CI machine is noisy)."""
    t0 = time.monotonic()
    response = httpx.post(f"{url}/v1/chat/completions", json=NORMAL, timeout=30)
    assert response.status_code == 200, response.text
    elapsed = time.monotonic() - t0
    assert elapsed < limit_s, f"a normal request took {elapsed:.1f} s"
    return elapsed


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ('{"model": "m", "messages": ' + "[" * 10_000 + "]" * 10_000 + "}", "nests deeper"),
        ('{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}', "surrogate"),
        ('{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "not valid JSON"),
        ('{"model": "m", "messages": [{"role": "user", "content": "hi"}], "top_p": 1e308}', "'top_p' must be"),
        ('{"model": "m", "messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}', "not valid JSON"),
        (
            json.dumps({**NORMAL, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"x": 5}}),
            "'tool_choice' must be",
        ),
        (
            json.dumps({"model": "m", "messages": [{"role": "assistant", "tool_calls": [1, "x", None]}]}),
            "tool_calls must be",
        ),
        (json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}] * 60_000}), "at most 4096"),
    ],
)
def test_malformed_bodies_get_400_not_500(served: Running, body: str, fragment: str) -> None:
    t0 = time.monotonic()
    response = post(served, body)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]["message"]
    assert time.monotonic() - t0 < 5
    answered_quickly(served.url)


def test_developer_role_and_top_k_minus_one_are_accepted(served: Running) -> None:
    body = {**NORMAL, "messages": [{"role": "developer", "content": "Be brief."}, *NORMAL["messages"]], "top_k": -1}
    assert post(served, body).status_code == 200


def test_unknown_routes_get_openai_error_bodies(served: Running) -> None:
    missing = httpx.post(f"{served.url}/v1/embeddings", json={"input": "x"})
    assert missing.status_code == 404 and missing.json()["error"]["message"]
    wrong = httpx.get(f"{served.url}/v1/chat/completions")
    assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "invalid_request_error"


def test_a_slow_remote_image_does_not_hold_the_model(served: Running) -> None:
    class Drip(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            try:
                for _ in range(40):  # one byte every half second: each read is "in time"
                    self.wfile.write(b"\x89")
                    self.wfile.flush()
                    time.sleep(0.5)
            except OSError:
                pass

    drip = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    threading.Thread(target=drip.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{drip.server_address[1]}/slow.png"
    outcome: dict[str, Any] = {}

    def attack() -> None:
        t0 = time.monotonic()
        outcome["response"] = post(served, {"model": "m", "messages": recipe_messages(url), "max_tokens": 2})
        outcome["seconds"] = time.monotonic() - t0

    thread = threading.Thread(target=attack)
    thread.start()
    time.sleep(0.5)
    answered_quickly(served.url)  # while the image drips in
    thread.join(timeout=30)
    drip.shutdown()
    assert outcome["response"].status_code == 400 and "in time" in outcome["response"].json()["error"]["message"]
    assert outcome["seconds"] < 6  # the 3 s deadline for the whole fetch, not per read


def test_clients_that_leave_early_cost_no_generation(served: Running) -> None:
    """Queued, non-streaming and not-yet-started streaming requests whose clients
    disconnect are cancelled, not generated."""
    before = httpx.get(f"{served.url}/health").json()
    body = json.dumps({**NORMAL, "max_tokens": 3000, "response_format": LONG}).encode()
    port = int(served.url.rsplit(":", 1)[1])
    socks = []
    for stream in (False, False, True, False):
        data = json.loads(body)
        data["stream"] = stream
        payload = json.dumps(data).encode()
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        socks.append(s)
    time.sleep(0.3)
    for s in socks:
        s.close()
    deadline = time.monotonic() + 20
    while True:
        health = httpx.get(f"{served.url}/health").json()
        if health["cancelled"] - before["cancelled"] == 4 and health["queued"] == 0:
            break
        assert time.monotonic() < deadline, health
        time.sleep(0.05)
    assert health["served"] == before["served"]
    answered_quickly(served.url)


def test_a_full_queue_answers_429_before_reading_the_body(tiny: dict[str, Path]) -> None:
    model = VisionModel(tiny["F16"], tiny["mmproj"], n_ctx=4096)
    running = start_server([model], ServerConfig(model_names=["m"], max_queue=1))
    try:
        busy = threading.Thread(
            target=post, args=(running, {**NORMAL, "max_tokens": 1500, "response_format": LONG}), daemon=True
        )
        busy.start()
        deadline = time.monotonic() + 10
        while httpx.get(f"{running.url}/health").json()["queued"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)

        # A chunked body that has only begun: a server that read bodies first would wait for the rest
        port = int(running.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            part = b'{"model": "m", "messages": ['
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(part) + part + b"\r\n"
            )
            head = ""
            while "rate_limit_error" not in head and (data := sock.recv(65536)):
                head += data.decode("latin-1")
        assert head.startswith("HTTP/1.1 429"), head
        assert "retry-after: 1" in head.lower() and "rate_limit_error" in head
    finally:
        running.stop()
        model.close()


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_one_hostile_request_cannot_exhaust_the_server_memory(tiny: dict[str, Path]) -> None:
    with cli_server(tiny, "--limit-mm-per-prompt", '{"image": 8}') as (proc, url):
        answered_quickly(url, 30)
        base = vm_hwm_mib(proc.pid)

        def chunked() -> Iterator[bytes]:  # 64 MiB with no Content-Length
            for _ in range(64):
                yield b" " * 2**20

        response = httpx.post(
            f"{url}/v1/chat/completions", content=chunked(), headers={"content-type": "application/json"}, timeout=60
        )
        assert response.status_code == 413
        bomb = "data:image/png;base64," + base64.b64encode(png_claiming(8000, 8000)).decode()
        parts = [{"type": "image_url", "image_url": {"url": bomb}}] * 8
        response = post(url, {"model": "m", "messages": [{"role": "user", "content": parts}]})
        assert response.status_code == 400 and "pixel limit" in response.json()["error"]["message"]
        many = {"model": "m", "messages": [{"role": "user", "content": "hello"}] * 4000}
        t0 = time.monotonic()
        response = post(url, many)
        assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"
        assert time.monotonic() - t0 < 5
        answered_quickly(url)
        growth = vm_hwm_mib(proc.pid) - base
        assert growth < 100, f"peak RSS grew {growth:.0f} MiB"
