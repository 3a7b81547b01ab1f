"""What several test modules share: images, servers on 127.0.0.1, request builders, the CLI runner."""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from PIL import Image

from lfm2_edge.server.app import create_app
from lfm2_edge.server.config import ServerConfig


def emulated() -> str | None:
    """Why this process runs under emulation (qemu-user: an aarch64 process on an x86 host,
    whose /proc/cpuinfo is the host's), or None on real hardware."""
    import platform

    from lfm2_edge.local.device import describe_device, read_cpuinfo

    notes = describe_device(read_cpuinfo(), machine=platform.machine()).notes
    return next((n for n in notes if "emulation" in n), None)


def noise_image(width: int, height: int, seed: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def run_cli(
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    drop: tuple[str, ...] = (),
) -> Any:
    """``lfm2-edge ARGS`` in its own process, as a user runs it: this environment plus
    ``env``, less the variables named in ``drop``."""
    return subprocess.run(
        [sys.executable, "-m", "lfm2_edge.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**{k: v for k, v in os.environ.items() if k not in drop}, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


@dataclass
class Running:
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_server(models: list[Any], config: ServerConfig) -> Running:
    server = uvicorn.Server(uvicorn.Config(create_app(models, config), host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    return Running(f"http://127.0.0.1:{port}", server, thread)


def data_uri(seed: int = 1, size: tuple[int, int] = (96, 64)) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(noise_image(*size, seed=seed))).decode()


def recipe_messages(uri: str, text: str = "What is in this image?") -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": text}]}
    ]


def post(served: Running | str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    """POST a chat-completions body (an object, or raw text) to a server or its base URL."""
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    url = served if isinstance(served, str) else served.url
    return httpx.post(
        f"{url}/v1/chat/completions",
        content=content,
        headers={"content-type": "application/json", **(headers or {})},
        timeout=60,
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_cli(*args: str, start_s: float = 60) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`lfm2-edge serve ARGS` in its own process on a free port, once /health answers;
    yields (process, url) and stops it after."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lfm2_edge.cli", "serve", *args, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_s
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)


@contextmanager
def cli_server(tiny: dict[str, Path], *extra: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`lfm2-edge serve` on the tiny model in its own process, as model "m"; yields (process, url)."""
    with serve_cli(str(tiny["F16"]), "--mmproj", str(tiny["mmproj"]), "--served-model-name", "m", *extra) as out:
        yield out


def png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims ``width`` x ``height``: decoding it would fail."""
    data = png_bytes(Image.new("RGB", (1, 1)))
    ihdr = struct.pack(">II", width, height) + data[24:29]
    return data[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + data[33:]


# The model card's tool-calling example.
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_candidate_status",
            "description": "Retrieves the current status of a candidate in the recruitment process",
            "parameters": {
                "type": "object",
                "properties": {
                    "candidate_id": {"type": "string", "description": "Unique identifier for the candidate"}
                },
                "required": ["candidate_id"],
            },
        },
    }
]


def evaluate(rt: Any, tokens: list[int]) -> None:
    """Evaluate ``tokens`` from nothing into sequence 0 of ``rt``'s context, in one
    ``llama_decode`` (hold the model's ``engine.lock``); the last one's logits are then
    the context's."""
    import llama_cpp

    rt.reset()
    arr = (llama_cpp.llama_token * len(tokens))(*tokens)
    assert llama_cpp.llama_decode(rt.ctx, llama_cpp.llama_batch_get_one(arr, len(tokens))) == 0
