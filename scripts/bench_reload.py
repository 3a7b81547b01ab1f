"""What ``serve --keep-alive`` trades: the memory an unloaded model gives back, and the
reload the next request pays.

Starts ``lfm2-edge serve MODEL --mmproj MMPROJ`` twice on 127.0.0.1: with ``--keep-alive
0`` (every answer unloads the model, so every request reloads it from the page cache),
then with ``--keep-alive -1`` (loaded for good). Each sends ``--requests`` chat
completions of 4 tokens, ``--gap`` seconds apart, and records the server's ``VmRSS``
before each request and ``--settle`` seconds after its answer, and the answer's
``timings.load_ms`` and ``first_token_ms`` (each request's text differs, so the kept
model reuses the system prompt's cached prefix only, as a camera's next question would).
Writes one JSON object.

    python scripts/bench_reload.py MODEL.gguf --mmproj MMPROJ.gguf [--requests 8] \\
        [--out bench_reload.json]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def run(args: argparse.Namespace, keep_alive: str) -> dict[str, Any]:
    port = _free_port()
    exe = Path(sys.executable).with_name("lfm2-edge")
    cmd = [str(exe), "serve", args.model, "--port", str(port), "--keep-alive", keep_alive]
    if args.mmproj:
        cmd += ["--mmproj", args.mmproj]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"serve did not start ({' '.join(cmd)})")
            time.sleep(0.2)
        name = httpx.get(f"{url}/v1/models", timeout=5).json()["data"][0]["id"]
        for i in range(args.requests):
            time.sleep(args.gap)
            before = _rss_mib(server.pid)
            body = {"model": name, "messages": [{"role": "user", "content": f"Request {i}: say hi."}], "max_tokens": 4}
            answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
            answer.raise_for_status()
            timings = answer.json()["timings"]
            time.sleep(args.settle)
            rows.append(
                {
                    "rss_before_mib": before,
                    "rss_after_mib": _rss_mib(server.pid),
                    "load_ms": timings["load_ms"],
                    "first_token_ms": timings["first_token_ms"],
                }
            )
    finally:
        server.terminate()
        server.wait(timeout=60)
    return {
        "keep_alive": keep_alive,
        "requests": rows,
        "load_ms_median": statistics.median(r["load_ms"] for r in rows),
        "first_token_ms_median": statistics.median(r["first_token_ms"] for r in rows),
        "rss_idle_mib_max": max(r["rss_after_mib"] for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--mmproj")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--gap", type=float, default=1.5, help="seconds between requests")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds after an answer before RSS is read")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    unloading, kept = run(args, "0"), run(args, "-1")
    out = {
        "model": args.model,
        "mmproj": args.mmproj,
        "unload_after_each": unloading,
        "kept_loaded": kept,
        "rss_freed_mib": kept["rss_idle_mib_max"] - unloading["rss_idle_mib_max"],
        "reload_cost_ms": unloading["first_token_ms_median"] - kept["first_token_ms_median"],
    }
    text = json.dumps(out, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
