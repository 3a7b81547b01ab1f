"""A bounded load run against `lfm2-edge serve` in its own process: 32 concurrent clients.

Every request is answered with its own correct answer or refused cleanly with 429 when
the queue is full; the server's memory stays flat across the run.
"""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from lfm2_edge import VisionModel
from tests.helpers import cli_server, noise_image, png_bytes

pytestmark = pytest.mark.slow  # `pytest -m 'not slow'` skips this module

CLIENTS, ROUNDS = 32, 4


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_32_concurrent_clients_are_answered_or_refused_cleanly(tiny: dict[str, Path]) -> None:
    uris = [
        "data:image/png;base64," + base64.b64encode(png_bytes(noise_image(48, 48, seed=i))).decode()
        for i in range(CLIENTS)
    ]

    def messages(i: int) -> list[dict[str, Any]]:
        image = {"type": "image_url", "image_url": {"url": uris[i]}}
        return [{"role": "user", "content": [image, {"type": "text", "text": f"Client {i}?"}]}]

    greedy = {"temperature": 0, "max_tokens": 8}
    with VisionModel(tiny["F16"], tiny["mmproj"]) as local:
        expected = [local.chat(messages(i), **greedy).text for i in range(CLIENTS)]

    with cli_server(tiny, "--max-queue", "12") as (proc, url):

        def ask(i: int) -> tuple[int, int, str]:
            body = {"model": "m", "messages": messages(i), **greedy}
            r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
            text = r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else r.json()["error"]["type"]
            return i, r.status_code, text

        assert ask(0)[1] == 200
        with ThreadPoolExecutor(CLIENTS) as pool:
            outcomes = list(pool.map(ask, range(CLIENTS)))  # a first round fills the caches
            rss_first = rss_kib(proc.pid)  # growth after it would be a leak
            for _ in range(ROUNDS):
                outcomes += list(pool.map(ask, range(CLIENTS)))
        rss_after = rss_kib(proc.pid)
        answered = [(i, text) for i, status, text in outcomes if status == 200]
        refused = [(status, text) for _, status, text in outcomes if status != 200]
        assert all(text == expected[i] for i, text in answered)  # nobody got another's answer
        assert all(r == (429, "rate_limit_error") for r in refused), refused[:3]
        assert len(answered) >= CLIENTS  # the queue kept serving
        assert refused, "max-queue 12 against 32 clients should refuse some"
        assert rss_after <= rss_first * 1.10, (rss_first, rss_after)
        health = httpx.get(f"{url}/health").json()
        assert health["queued"] == 0 and health["served"] == len(answered) + 1
        summary = f"{len(outcomes)} requests: {len(answered)} answered, {len(refused)} refused"
        print(f"{summary}; RSS {rss_first} -> {rss_after} KiB")
        proc.terminate()
        assert proc.wait(timeout=60) == 0
