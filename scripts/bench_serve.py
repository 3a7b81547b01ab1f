"""Load-test `lfm2-edge serve` (and optionally llama.cpp's llama-server on the same files).

Starts the server in a child process, then for each K in --clients runs K concurrent
streaming clients (greedy, --max-tokens each, text or one 320x240 image each) and
reports aggregate decode tok/s, TTFT p50/p95, per-client decode tok/s, the server's RSS
after each round and whether every answer equals the one that prompt gets alone.

    python scripts/bench_serve.py MODEL.gguf --mmproj MMPROJ.gguf --clients 1,4,8 \\
        --threads 2 --slots 4 [--images] [--peer-llama-server PATH]

With --peer-llama-server (built by scripts/build_llama_server.sh) the same load runs
against `llama-server -np SLOTS -c CTX*SLOTS -t THREADS` in the same run, and the
ratios lfm2-edge / llama-server are printed.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def image_uri(seed: int) -> str:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


TOPICS = ["the sea", "mountains", "a city at night", "rain", "bread", "trains", "music", "winter", "bees", "rivers"]


def messages(i: int, images: bool) -> list[dict[str, Any]]:
    text = f"Write a short story about {TOPICS[i % len(TOPICS)]} (#{i})."
    if not images:
        return [{"role": "user", "content": text}]
    return [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": image_uri(i)}}, {"type": "text", "text": text}],
        }
    ]


def one_request(url: str, i: int, args: argparse.Namespace, out: dict[int, dict[str, Any]]) -> None:
    body = {
        "model": "m",
        "messages": messages(i, args.images),
        "temperature": 0,
        "max_tokens": args.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first = last = None
    pieces: list[str] = []
    n_chunks = 0
    usage = None
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                if content := (choice.get("delta") or {}).get("content"):
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    n_chunks += 1
                    pieces.append(content)
    n = usage["completion_tokens"] if usage else n_chunks
    first = first or time.perf_counter()
    last = last or first
    out[i] = {
        "ttft": first - t0,
        "tokens": n,
        "decode_tok_s": (n - 1) / (last - first) if n > 1 and last > first else 0.0,
        "end": last,
        "start": t0,
        "text": "".join(pieces),
    }


def run_round(url: str, k: int, args: argparse.Namespace, first: int = 0) -> dict[str, Any]:
    """K concurrent clients, prompts ``first`` .. ``first + k - 1``."""
    out: dict[int, dict[str, Any]] = {}
    ids = range(first, first + k)
    threads = [threading.Thread(target=one_request, args=(url, i, args, out)) for i in ids]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if len(out) != k:
        raise SystemExit(f"{k - len(out)} of {k} requests failed")
    rs = [out[i] for i in ids]
    ttfts = sorted(r["ttft"] for r in rs)
    # aggregate decode: tokens after each first token, over the span from the first first
    # token to the last token of any client
    span = max(r["end"] for r in rs) - min(r["start"] + r["ttft"] for r in rs)
    return {
        "clients": k,
        "answered": len(rs),
        "tokens": sum(r["tokens"] for r in rs),
        "aggregate_tok_s": sum(r["tokens"] for r in rs) / wall,
        "aggregate_decode_tok_s": sum(r["tokens"] - 1 for r in rs) / span if span > 0 else 0.0,
        "ttft_p50_ms": 1000 * statistics.median(ttfts),
        "ttft_p95_ms": 1000 * ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))],
        "client_decode_tok_s": statistics.median(r["decode_tok_s"] for r in rs),
        "texts": [r["text"] for r in rs],
    }


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def start(cmd: list[str], url: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[0]} exited with {proc.returncode}: {' '.join(cmd)}")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{cmd[0]} did not answer /health")


def bench(name: str, cmd: list[str], url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    proc = start(cmd, url)
    rows = []
    try:
        run_round(url, 1, args, first=10_000)  # warm-up, on a prompt no round uses
        # Every round gets prompts never sent before, so neither server answers from a
        # prompt cache; with --check-alone each is then sent again on its own.
        first = 0
        for k in args.clients:
            for r in range(args.rounds):
                row = run_round(url, k, args, first)
                row["server"], row["round"], row["rss_mib"] = name, r, rss_mib(proc.pid)
                alone = []
                for i in range(first, first + k) if args.check_alone else ():
                    out: dict[int, dict[str, Any]] = {}
                    one_request(url, i, args, out)
                    alone.append(out[i]["text"])
                row["same_as_alone"] = row["texts"] == alone if args.check_alone else None
                if args.check_alone:
                    # how many answers equal their prompt's answer alone, and where the others part
                    row["equal_to_alone"] = sum(a == b for a, b in zip(row["texts"], alone, strict=True))
                    row["first_difference_at_char"] = [
                        next((j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
                        for a, b in zip(row["texts"], alone, strict=True)
                        if a != b
                    ]
                first += k
                rows.append(row)
                print(
                    f"{name:13s} K={k:2d} round {r}: aggregate {row['aggregate_tok_s']:6.1f} tok/s "
                    f"(decode {row['aggregate_decode_tok_s']:6.1f}), TTFT p50 {row['ttft_p50_ms']:7.0f} ms "
                    f"p95 {row['ttft_p95_ms']:7.0f} ms, per-client {row['client_decode_tok_s']:5.1f} tok/s, "
                    f"{row['tokens']} tokens, RSS {row['rss_mib']:.0f} MiB"
                    + (
                        f", equal to alone: {row['equal_to_alone']}/{k}"
                        f" (others part at characters {row['first_difference_at_char']})"
                        if args.check_alone
                        else ""
                    ),
                    flush=True,
                )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--mmproj")
    p.add_argument("--clients", default="1,4,8", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--ctx", type=int, default=2048, help="tokens per slot")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--images", action="store_true", help="one 320x240 image per request")
    p.add_argument("--check-alone", action="store_true", help="compare each answer with the prompt's answer alone")
    p.add_argument("--peer-llama-server", help="path to llama.cpp's llama-server, run on the same files")
    p.add_argument("--json", help="write all rows here")
    args = p.parse_args()

    port = free_port()
    ours = [sys.executable, "-m", "lfm2_edge.cli", "serve", args.model, "--port", str(port)]
    ours += ["--served-model-name", "m", "--threads", str(args.threads), "--slots", str(args.slots)]
    ours += ["--ctx", str(args.ctx), "--state-cache-mb", "0"]
    if args.mmproj:
        ours += ["--mmproj", args.mmproj]
    rows = bench("lfm2-edge", ours, f"http://127.0.0.1:{port}", args)
    if args.peer_llama_server:
        port = free_port()
        peer = [args.peer_llama_server, "-m", args.model, "--port", str(port), "-np", str(args.slots)]
        peer += ["-c", str(args.ctx * args.slots), "-t", str(args.threads), "-tb", str(args.threads), "--no-webui"]
        peer += ["--cache-ram", "0"] if "--cache-ram" in _help(args.peer_llama_server) else []
        if args.mmproj:
            peer += ["--mmproj", args.mmproj]
        rows += bench("llama-server", peer, f"http://127.0.0.1:{port}", args)
        print("\nratios lfm2-edge / llama-server (same run):")
        for k in args.clients:
            a = next(r for r in rows if r["server"] == "lfm2-edge" and r["clients"] == k)
            b = next(r for r in rows if r["server"] == "llama-server" and r["clients"] == k)
            print(
                f"  K={k:2d}: aggregate {a['aggregate_tok_s'] / b['aggregate_tok_s']:.2f}x, "
                f"aggregate decode {a['aggregate_decode_tok_s'] / b['aggregate_decode_tok_s']:.2f}x, "
                f"TTFT p50 {a['ttft_p50_ms'] / b['ttft_p50_ms']:.2f}x, "
                f"per-client decode {a['client_decode_tok_s'] / b['client_decode_tok_s']:.2f}x"
            )
    if args.json:
        Path(args.json).write_text(json.dumps([{k: v for k, v in r.items() if k != "texts"} for r in rows], indent=1))


def _help(binary: str) -> str:
    try:
        return subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
