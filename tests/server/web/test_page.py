"""The chat and camera pages in a real browser: Debian's headless Chromium driven by
Playwright (never `playwright install`: `apt-get install chromium`), against a real
`lfm2-edge serve` on the tiny synthetic model in its own process.

The run also writes the screenshots docs/img/chat-desktop.png, chat-phone.png and
camera.png that the README shows.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.helpers import cli_server, noise_image, png_bytes

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the browser tests need playwright (pip install playwright)"
)
CHROMIUM = os.environ.get("LFM2_EDGE_TEST_CHROMIUM", "/usr/bin/chromium")
if not shutil.which(CHROMIUM):
    pytest.skip(f"the browser tests need {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

pytestmark = pytest.mark.slow
DOCS_IMG = Path(__file__).resolve().parents[3] / "docs" / "img"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
XSS = "Here: <img src=x onerror=alert(1)> and [x](javascript:alert(1)) and [ok](https://example.org/a)\n\n```py\nprint('<b>')\n```"


def write_y4m(path: Path, frames: int = 30, size: tuple[int, int] = (320, 240)) -> None:
    """A YUV4MPEG2 4:2:0 video of moving noise: what Chromium's fake camera plays."""
    w, h = size
    rng = np.random.default_rng(7)
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F10:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n")
            f.write(rng.integers(0, 255, w * h, dtype=np.uint8).tobytes())
            f.write(np.full(2 * (w // 2) * (h // 2), 128, dtype=np.uint8).tobytes())


class Watch:
    """A page's console errors, uncaught exceptions, dialogs and the hosts it asked."""

    def __init__(self, page: Any, base: str) -> None:
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.foreign: list[str] = []
        self.base = base
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.on("request", self._request)

    def _request(self, request: Any) -> None:
        url = request.url
        if not url.startswith(("data:", "blob:")) and not url.startswith(self.base + "/"):
            self.foreign.append(url)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    work = tmp_path_factory.mktemp("chromium")
    video = work / "camera.y4m"
    write_y4m(video)
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(work / "profile"),  # a fresh user-data-dir
            executable_path=CHROMIUM,
            headless=True,
            args=[*FLAGS, f"--use-file-for-fake-video-capture={video}"],
            viewport={"width": 1280, "height": 800},
            permissions=["camera"],
        )

        def outside(route: Any) -> None:  # nothing may leave 127.0.0.1; Watch records any attempt
            if route.request.url.startswith("http://127.0.0.1:"):
                route.continue_()
            else:
                route.abort()

        context.route("**/*", outside)
        yield context
        context.close()


@pytest.fixture(scope="module")
def served(tiny: dict[str, Path]) -> Iterator[str]:
    with cli_server(tiny, "--slots", "2", "--ctx", "2048") as (_, url):
        yield url


def open_page(browser: Any, url: str, path: str = "/") -> tuple[Any, Watch]:
    page = browser.new_page()
    watch = Watch(page, url)
    page.goto(url + path)
    page.wait_for_selector("body[data-ready='1']", timeout=20_000)
    return page, watch


def drop_image(page: Any, seed: int = 3) -> None:
    data = base64.b64encode(png_bytes(noise_image(160, 120, seed=seed))).decode()
    transfer = page.evaluate_handle(
        """(b64) => {
            const bin = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bin], "noise.png", { type: "image/png" }));
            return dt;
        }""",
        data,
    )
    page.dispatch_event("#messages", "drop", {"dataTransfer": transfer})
    page.wait_for_selector("#attached .chip img")


def set_settings(page: Any, **values: str) -> None:
    page.click("#settings-open")
    for field, value in values.items():
        page.fill(f"#s-{field}", value)
    page.click("#s-close")


def answers(page: Any) -> list[dict[str, Any]]:
    return page.eval_on_selector_all(
        ".msg.assistant",
        """(nodes) => nodes.map((n) => ({
            text: n.querySelector('.body').textContent,
            figures: n.querySelector('.figures').textContent,
            cached: n.querySelector('.figures').dataset.cached,
            encodes: n.querySelector('.figures').dataset.encodes,
        }))""",
    )


def test_chat_streams_stops_keeps_and_reuses_the_image(browser: Any, served: str) -> None:
    page, watch = open_page(browser, served)
    assert page.inner_text("#model") == "m"
    drop_image(page)
    # a long answer, to be stopped while it streams in: greedy, so its length is known
    # (603 tokens on the tiny model for this prompt and image), not a sampled one that may end at once
    set_settings(page, **{"max-tokens": "1500", "temperature": "0"})
    page.fill("#input", "Describe it.")
    page.click("#send")
    page.wait_for_selector("#stop:not([hidden])")
    page.wait_for_function("() => document.querySelector('.msg.assistant .body').textContent.length > 20")
    streamed = page.inner_text(".msg.assistant .body")
    page.click("#stop")
    page.wait_for_selector("#send:not([hidden])")
    first = answers(page)
    assert len(first) == 1 and first[0]["figures"].startswith("stopped")
    assert first[0]["text"].startswith(streamed[:10])
    health = httpx.get(served + "/health").json()
    deadline = time.monotonic() + 10
    while health["cancelled"] < 1 and time.monotonic() < deadline:  # the server notices the client left
        time.sleep(0.1)
        health = httpx.get(served + "/health").json()
    assert health["cancelled"] >= 1

    # reload: the conversation is still there, image and all
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    assert page.inner_text(".msg.user .body") == "Describe it."
    assert page.locator(".msg.user img.thumb").count() == 1
    assert answers(page)[0]["text"] == first[0]["text"]
    assert page.locator("#convs li").count() == 1

    # a second question on the same image: its tokens come from the saved state, no image encode
    set_settings(page, **{"max-tokens": "24"})
    page.fill("#input", "And the colours?")
    page.press("#input", "Enter")
    page.wait_for_function("() => document.querySelectorAll('.msg.assistant .figures[data-encodes]').length === 1")
    second = answers(page)[1]
    assert int(second["cached"]) > 0, second
    assert second["encodes"] == "0", second
    assert "tok/s" in second["figures"] and "first token" in second["figures"]
    assert "0 image encodes" in second["figures"]

    # the settings show the card's defaults, fetched from the server
    page.click("#settings-open")
    assert "card: 0.1" in page.inner_text("small[data-for='temperature']")
    assert "Liquid AI" in page.inner_text("small[data-for='system_prompt']")
    page.click("#s-close")

    # screenshots for the docs, desktop and phone width
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(DOCS_IMG / "chat-desktop.png"))
    page.set_viewport_size({"width": 390, "height": 780})
    page.wait_for_function("() => document.getElementById('side').getBoundingClientRect().right <= 0")  # slid away
    page.screenshot(path=str(DOCS_IMG / "chat-phone.png"))
    page.set_viewport_size({"width": 1280, "height": 800})

    # new and delete
    page.click("#new")
    assert page.locator(".msg").count() == 0
    page.click("#convs li .del")
    assert page.locator("#convs li").count() == 0
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator("#convs li").count() == 0
    assert watch.errors == [] and watch.dialogs == [] and watch.foreign == []
    page.close()


def test_untrusted_markdown_stays_text(browser: Any, served: str) -> None:
    page, watch = open_page(browser, served)
    stored = [
        {
            "id": "x1",
            "title": "<b>title</b>",
            "updated": 1,
            "messages": [
                {"role": "user", "text": "<script>alert(2)</script>", "images": ["javascript:alert(3)"]},
                {"role": "assistant", "text": XSS, "figures": None},
            ],
        }
    ]
    page.evaluate(
        "(c) => { localStorage.setItem('lfm2-edge.conversations', c); "
        "localStorage.setItem('lfm2-edge.current', 'x1'); }",
        json.dumps(stored),
    )
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    body = page.locator(".msg.assistant .body")
    assert "<img src=x onerror=alert(1)>" in body.inner_text()
    assert "[x](javascript:alert(1))" in body.inner_text()
    assert page.locator("#messages img").count() == 0  # the user's "image" was no data: image either
    assert page.locator("#messages script").count() == 0
    links = page.eval_on_selector_all("#messages a", "(as) => as.map((a) => [a.href, a.rel, a.textContent])")
    assert links == [["https://example.org/a", "noopener noreferrer nofollow", "ok"]]
    assert page.inner_text(".msg.assistant pre code") == "print('<b>')"
    assert page.inner_text("#convs .conv") == "<b>title</b>"
    # the renderer alone, on the same string
    html = page.evaluate(
        "(t) => { const d = document.createElement('div'); d.appendChild(MD.render(t)); return d.innerHTML; }", XSS
    )
    assert "<img" not in html and "javascript:" not in html.replace("[x](javascript:alert(1))", "")
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    # copy works on plain http too (execCommand), without an error
    page.click(".code .copy")
    page.wait_for_function("() => document.querySelector('.code .copy').textContent === 'copied'")
    assert watch.dialogs == [] and watch.errors == [] and watch.foreign == []
    page.close()


def test_camera_page_answers_one_frame_at_a_time(browser: Any, served: str) -> None:
    page, watch = open_page(browser, served, "/camera")
    done: list[Any] = []  # the API requests, ended; their spans say whether two overlapped

    def ended(request: Any) -> None:
        if request.url.endswith("/v1/chat/completions"):
            done.append(request)

    page.on("requestfinished", ended)
    page.on("requestfailed", ended)
    page.fill("#interval", "0")
    page.fill("#frame-side", "256")
    page.fill("#max-tokens", "4")
    page.click("#toggle")
    try:
        page.wait_for_function("() => Number(document.body.dataset.answers || 0) >= 3", timeout=15_000)
    except sync_api.TimeoutError:
        state = page.evaluate("() => [document.body.dataset.answers, document.getElementById('error').textContent]")
        raise AssertionError(f"fewer than 3 answers in 15 s: {state}, {watch.errors}") from None
    assert page.inner_text("#latency").endswith("ms")
    assert page.inner_text("#answer") not in ("", "Start the camera, or choose a video file.")
    page.screenshot(path=str(DOCS_IMG / "camera.png"))
    page.click("#toggle")
    # the browser's own timing of each request (start, and the end of its response body):
    # the next one starts only once the last one's answer has been read to its end. Chromium
    # stamps a chunked response's end a few ms after the page's reader has seen it (measured:
    # up to 4 ms here); a second request while an answer is still generating would overlap by
    # an answer's time (40 ms and more on this model), which the 15 ms tolerance still catches
    spans = sorted(
        (r.timing["startTime"], r.timing["startTime"] + r.timing["responseEnd"])
        for r in done
        if r.timing["responseEnd"] >= 0
    )
    assert len(spans) >= 3
    assert all(b[0] >= a[1] - 15 for a, b in itertools.pairwise(spans)), spans
    assert watch.errors == [] and watch.foreign == []
    page.close()


def test_api_key_asked_once_and_kept_for_the_session(browser: Any, tiny: dict[str, Path]) -> None:
    with cli_server(tiny, "--api-key", "s3cret", "--ctx", "1024") as (_, url):
        page = browser.new_page()
        watch = Watch(page, url)
        page.goto(url + "/")
        page.wait_for_selector("#key-dialog:not([hidden])")
        assert page.inner_text("#error") == "This server needs its API key (serve --api-key): enter it to continue."
        page.fill("#key-input", "wrong")
        page.click("#key-form button")
        page.wait_for_selector("#key-dialog:not([hidden])")
        assert "refused" in page.inner_text("#key-reason")
        page.fill("#key-input", "s3cret")
        page.click("#key-form button")
        page.wait_for_selector("body[data-ready='1']")
        assert page.is_hidden("#error")
        page.fill("#input", "Hello?")
        set_settings(page, **{"max-tokens": "8"})
        page.click("#send")
        page.wait_for_selector(".msg.assistant .figures[data-encodes]")
        page.reload()  # the session keeps the key: no second question
        page.wait_for_selector("body[data-ready='1']")
        assert page.is_hidden("#key-dialog")
        # the browser logs each 401 as a failed resource load: those two, nothing else
        assert [e for e in watch.errors if "401" not in e] == [] and len(watch.errors) == 2
        assert watch.foreign == []
        page.close()


def test_server_errors_are_one_readable_line(browser: Any, served: str) -> None:
    page, watch = open_page(browser, served)
    page.click("#new")
    set_settings(page, **{"max-tokens": "100000"})
    page.fill("#input", "hi")
    page.click("#send")
    page.wait_for_selector("#error:not([hidden])")
    line = page.inner_text("#error")
    assert "maximum context length is 2048 tokens" in line and "Start a new conversation" in line
    assert "\n" not in line
    assert page.input_value("#input") == "hi"  # the question is back in the box, not kept as a turn
    assert page.locator(".msg").count() == 0
    assert [e for e in watch.errors if "400" not in e] == []
    page.close()
