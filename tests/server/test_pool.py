"""Several models behind one ``serve`` (issue: operations), through the real CLI in its own
process: loaded on demand, ``--models-max`` evicting the least recently used idle one,
``--keep-alive`` unloading an idle model (its memory given back: the process's RSS read
from /proc), llama-server's ``/models/load`` and ``/models/unload``, Ollama's
``keep_alive`` and ``/api/ps``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from lfm2_edge.server.pool import FOREVER, parse_duration
from lfm2_edge.testing import make_synthetic_model
from tests.helpers import data_uri, free_port, serve_cli

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")

TEXT = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A vision model with a 27 MB projector (vl/vl-F16.gguf + its mmproj) and a text
    model (text/text-F16.gguf, no projector beside it): names apart, sizes apart."""
    root = tmp_path_factory.mktemp("pool")
    made = make_synthetic_model(root / "made", "lfm2.5-vl-1.6b-tower")
    (root / "vl").mkdir()
    shutil.copy(made["F16"], root / "vl" / "vl-F16.gguf")
    shutil.copy(made["mmproj"], root / "vl" / made["mmproj"].name)
    tiny = make_synthetic_model(root / "tiny", "tiny")
    (root / "text").mkdir()
    shutil.copy(tiny["F16"], root / "text" / "text-F16.gguf")
    return {"vl": root / "vl" / "vl-F16.gguf", "text": root / "text" / "text-F16.gguf"}


@contextmanager
def serving(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    with serve_cli(*args, "--slots", "2", "--ctx", "1024", start_s=90) as out:
        yield out


def rss(proc: subprocess.Popen[str]) -> int:
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def chat(url: str, model: str, *, image: bool = False, **extra: Any) -> dict[str, Any]:
    content: Any = "hi"
    if image:
        content = [{"type": "image_url", "image_url": {"url": data_uri(3)}}, {"type": "text", "text": "What is it?"}]
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0}
    # generous: under emulation (scripts/arm64-check.sh) a 512x512 image takes minutes
    answer = httpx.post(f"{url}/v1/chat/completions", json={**body, **extra}, timeout=600)
    assert answer.status_code == 200, answer.text
    return answer.json()


def states(url: str) -> dict[str, str]:
    """Each model's state by /health, named by its first name (a local file's: its file
    name) less the ".gguf"."""
    models = httpx.get(f"{url}/health").json()["models"]
    return {m["id"].removesuffix(".gguf"): m["status"]["value"] for m in models}


def wait_for(predicate: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_durations_read_as_ollama_reads_them() -> None:
    assert parse_duration("5m") == 300 and parse_duration("1h30m") == 5400 and parse_duration("250ms") == 0.25
    assert parse_duration(0) == 0 and parse_duration("30") == 30 and parse_duration(2.5) == 2.5
    assert parse_duration(-1) is FOREVER and parse_duration("-1m") is FOREVER
    for bad in ("soon", "5 m", "m", "", True, None, float("nan"), "1e400", "5x"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_two_models_interleaved_from_four_clients(pair: dict[str, Path]) -> None:
    with serving(str(pair["vl"]), str(pair["text"])) as (_, url):
        listed = httpx.get(f"{url}/v1/models").json()["data"]
        status = {m["id"]: m["status"]["value"] for m in listed}
        assert status["vl-F16"] == "loaded" and status["text-F16"] == "unloaded"  # the first loads at start
        tags = [m["name"] for m in httpx.get(f"{url}/api/tags").json()["models"]]
        assert tags == ["vl-F16.gguf:latest", "text-F16.gguf:latest"]
        answers: list[tuple[str, dict[str, Any]]] = []
        errors: list[BaseException] = []

        def client(i: int) -> None:
            try:
                for j in range(3):
                    name = ("vl-F16", "text-F16")[(i + j) % 2]
                    answers.append((name, chat(url, name, image=name == "vl-F16")))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors, errors
        assert len(answers) == 12 and all(a["model"] == name for name, a in answers)
        vision = [a for name, a in answers if name == "vl-F16"]
        assert all(a["usage"]["prompt_tokens"] > 32 for a in vision)  # the image's tokens are in its prompt
        loads = [a["timings"]["load_ms"] for name, a in answers if name == "text-F16"]
        assert max(loads) > 0  # the requests that waited for the text model's load say so
        assert states(url) == {"vl-F16": "loaded", "text-F16": "loaded"}
        ps = httpx.get(f"{url}/api/ps").json()["models"]
        assert sorted(m["name"] for m in ps) == ["text-F16.gguf:latest", "vl-F16.gguf:latest"]


def test_models_max_one_swaps_them_and_gives_the_memory_back(pair: dict[str, Path]) -> None:
    with serving(str(pair["text"]), str(pair["vl"]), "--models-max", "1") as (proc, url):
        chat(url, "text-F16")
        alone = rss(proc)
        chat(url, "vl-F16", image=True)  # evicts the text model, loads the vision one
        assert states(url) == {"text-F16": "unloaded", "vl-F16": "loaded"}
        with_vision = rss(proc)
        assert with_vision > alone + 15 * 2**20  # the projector's 27 MB
        # one request during the other's load: both answered, in turn
        both: dict[str, dict[str, Any]] = {}
        threads = [
            threading.Thread(target=lambda n=n: both.__setitem__(n, chat(url, n, image=n == "vl-F16")))
            for n in ("text-F16", "vl-F16")
        ]
        for t in threads:
            t.start()
            time.sleep(0.05)
        for t in threads:
            t.join(timeout=120)
        assert set(both) == {"text-F16", "vl-F16"}
        chat(url, "text-F16")
        assert states(url) == {"text-F16": "loaded", "vl-F16": "unloaded"}
        assert rss(proc) < with_vision - 15 * 2**20  # the eviction gave the projector's memory back


def test_keep_alive_unloads_an_idle_model_and_the_next_request_reloads_it(pair: dict[str, Path]) -> None:
    with serving(str(pair["vl"]), "--keep-alive", "2s") as (proc, url):
        chat(url, "vl-F16", image=True)
        loaded = rss(proc)
        model = httpx.get(f"{url}/health").json()["models"][0]
        assert model["status"]["value"] == "loaded" and model["status"]["expires_at"] > time.time()
        assert httpx.get(f"{url}/api/ps").json()["models"][0]["expires_at"] < "2318"
        time.sleep(3)
        wait_for(lambda: states(url) == {"vl-F16": "unloaded"}, timeout=5)
        assert rss(proc) < loaded - 20 * 2**20  # about the model's 41 MB
        assert httpx.get(f"{url}/api/ps").json()["models"] == []
        again = chat(url, "vl-F16", image=True)
        assert again["timings"]["load_ms"] > 0 and states(url) == {"vl-F16": "loaded"}


def test_load_and_unload_by_hand_as_llama_server_and_ollama_do(pair: dict[str, Path]) -> None:
    with serving(str(pair["vl"]), str(pair["text"]), "--keep-alive", "-1") as (_, url):
        loaded = httpx.post(f"{url}/models/load", json={"model": "text-F16"})
        assert loaded.status_code == 200 and loaded.json()["success"] is True
        assert states(url) == {"vl-F16": "loaded", "text-F16": "loaded"}
        assert httpx.get(f"{url}/api/ps").json()["models"][0]["expires_at"] == "2318-11-29T00:00:00Z"
        unloaded = httpx.post(f"{url}/models/unload", json={"model": "vl-F16"})
        assert unloaded.status_code == 200 and states(url)["vl-F16"] == "unloaded"
        unknown = httpx.post(f"{url}/models/load", json={"model": "nope"})
        assert unknown.status_code == 404 and "nope" in unknown.json()["error"]["message"]
        assert httpx.post(f"{url}/models/load", json={}).status_code == 400
        # Ollama: an empty generate loads, keep_alive 0 unloads; a request's keep_alive is its model's
        answer = httpx.post(f"{url}/api/generate", json={"model": "vl-F16.gguf"}).json()
        assert answer["done_reason"] == "load" and states(url)["vl-F16"] == "loaded"
        answer = httpx.post(f"{url}/api/generate", json={"model": "vl-F16.gguf", "keep_alive": 0}).json()
        assert answer["done_reason"] == "unload" and states(url)["vl-F16"] == "unloaded"
        body = {"model": "text-F16.gguf", "messages": TEXT, "stream": False, "keep_alive": "1s",
                "options": {"num_predict": 3}}  # fmt: skip
        done = httpx.post(f"{url}/api/chat", json=body, timeout=60).json()
        assert done["done"] is True
        wait_for(lambda: states(url)["text-F16"] == "unloaded", timeout=5)
        bad = httpx.post(f"{url}/api/chat", json={**body, "keep_alive": "soon"})
        assert bad.status_code == 400 and "keep_alive" in bad.json()["error"]


def test_keep_alive_0_sent_while_the_model_answers_unloads_it_when_the_answer_ends(pair: dict[str, Path]) -> None:
    # As Ollama's scheduler: the unload waits for the request in flight, whose own
    # keep-alive (the server's hour) does not undo it.
    with serving(str(pair["vl"]), "--keep-alive", "1h") as (_, url):
        chat(url, "vl-F16")
        health = lambda: httpx.get(f"{url}/health").json()["models"][0]["status"]  # noqa: E731
        assert health()["expires_at"] is not None  # idle: an hour from now
        answered: list[dict[str, Any]] = []
        big = {"type": "image_url", "image_url": {"url": data_uri(5, (512, 512))}}
        messages = [{"role": "user", "content": [big, {"type": "text", "text": "What is it?"}]}]
        worker = threading.Thread(target=lambda: answered.append(chat(url, "vl-F16", messages=messages, max_tokens=64)))
        worker.start()
        wait_for(lambda: health()["expires_at"] is None, timeout=30)  # held by the request
        answer = httpx.post(f"{url}/api/generate", json={"model": "vl-F16", "keep_alive": 0}).json()
        assert answer["done_reason"] == "unload"
        assert states(url) == {"vl-F16": "loaded"}  # still answering
        worker.join(timeout=600)
        assert answered and answered[0]["choices"][0]["message"]["content"] is not None
        wait_for(lambda: states(url) == {"vl-F16": "unloaded"}, timeout=5)


def test_serve_refuses_what_cannot_be_served_together(pair: dict[str, Path], tmp_path: Path) -> None:
    twin = tmp_path / "text-F16.gguf"
    shutil.copy(pair["text"], twin)
    for args, words in (
        ([str(pair["text"]), str(twin)], "two served models answer to"),
        ([str(pair["vl"]), str(pair["text"]), "--served-model-name", "x"], "--served-model-name"),
        ([str(pair["vl"]), "--keep-alive", "soon"], "--keep-alive"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "lfm2_edge.cli", "serve", *args, "--port", str(free_port())],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert words in proc.stderr and "Traceback" not in proc.stderr
