"""Load-test `lfm2-edge serve` (and optionally llama.cpp's llama-server on the same files).

Starts the server in a child process, then for each K in --clients runs K concurrent
streaming clients (greedy, --max-tokens each, text or one 320x240 image each), --rounds
times, and reports per round and as medians over the rounds:

- aggregate tok/s: completion tokens of all clients / the round's wall time (vLLM's
  "output token throughput");
- TTFT p50 / p95;
- per-client decode tok/s: the median over clients of (tokens - 1) / (last token - first
  token), i.e. 1 / time per output token;
- decode-span tok/s: tokens after each client's first / the span from the earliest first
  token to the last token (a server that streams each prompt's first token as soon as
  that prompt is evaluated, before the next prompt, starts this span earlier);
- the server's RSS after each round, and (--check-alone) whether every answer equals the
  answer its prompt gets alone.

--no-stream asks for whole answers instead (what a client that does not stream sees):
then only the aggregate is meaningful, and the TTFT columns hold the latency.

    python scripts/bench_serve.py MODEL.gguf --mmproj MMPROJ.gguf --clients 1,4,8 \\
        --threads 2 --slots 4 [--images] [--rounds 3] [--peer-llama-server PATH]

With --peer-llama-server (built by scripts/build_llama_server.sh) both servers run side
by side, each at its defaults (`llama-server -np SLOTS -c CTX*SLOTS -t THREADS`), rounds
alternate between them (same prompts, the order flipped every round, so drift on a shared
machine falls on both), and the ratios lfm2-edge / llama-server of the medians are printed.
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
    if args.no_stream:  # the whole answer at once: only its latency is seen
        r = httpx.post(f"{url}/v1/chat/completions", json={**body, "stream": False}, timeout=600)
        r.raise_for_status()
        now, data = time.perf_counter(), r.json()
        n = data["usage"]["completion_tokens"]
        text = data["choices"][0]["message"]["content"] or ""
        out[i] = {"ttft": now - t0, "tokens": n, "decode_tok_s": float("nan"), "end": now, "start": t0, "text": text}
        return
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
    span = max(r["end"] for r in rs) - min(r["start"] + r["ttft"] for r in rs)
    return {
        "clients": k,
        "answered": len(rs),
        "tokens": sum(r["tokens"] for r in rs),
        "aggregate_tok_s": sum(r["tokens"] for r in rs) / wall,
        "ttft_p50_ms": 1000 * statistics.median(ttfts),
        "ttft_p95_ms": 1000 * ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))],
        "client_decode_tok_s": statistics.median(r["decode_tok_s"] for r in rs),
        "decode_span_tok_s": sum(r["tokens"] - 1 for r in rs) / span
        if span > 0 and not args.no_stream
        else float("nan"),
        "texts": [r["text"] for r in rs],
    }


METRICS = {  # name in the ratio line: row key
    "aggregate": "aggregate_tok_s",
    "TTFT p50": "ttft_p50_ms",
    "per-client decode": "client_decode_tok_s",
    "decode-span": "decode_span_tok_s",
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


def bench(servers: dict[str, tuple[list[str], str]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Start every server, then run each round on each of them in turn."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    rows = []
    try:
        for name, (cmd, url) in servers.items():
            procs[name] = start(cmd, url)
            run_round(url, 1, args, first=10_000)  # warm-up, on a prompt no round uses
        # Every round gets prompts never sent before, so neither server answers from a
        # prompt cache (beyond the shared system prompt); with --check-alone each is then
        # sent again on its own.
        first = 0
        names = list(servers)
        for k in args.clients:
            for r in range(args.rounds):
                for name in names if r % 2 == 0 else names[::-1]:
                    rows.append(_round(name, servers[name][1], procs[name].pid, k, r, first, args))
                first += k
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return rows


def _round(name: str, url: str, pid: int, k: int, r: int, first: int, args: argparse.Namespace) -> dict[str, Any]:
    row = run_round(url, k, args, first)
    row["server"], row["round"], row["rss_mib"] = name, r, rss_mib(pid)
    if args.check_alone:
        alone = []
        for i in range(first, first + k):
            out: dict[int, dict[str, Any]] = {}
            one_request(url, i, args, out)
            alone.append(out[i]["text"])
        # how many answers equal their prompt's answer alone, and where the others part
        row["equal_to_alone"] = sum(a == b for a, b in zip(row["texts"], alone, strict=True))
        row["first_difference_at_char"] = [
            next((j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            for a, b in zip(row["texts"], alone, strict=True)
            if a != b
        ]
    print(
        f"{name:13s} K={k:2d} round {r}: aggregate {row['aggregate_tok_s']:6.1f} tok/s, "
        f"TTFT p50 {row['ttft_p50_ms']:6.0f} ms p95 {row['ttft_p95_ms']:6.0f} ms, "
        f"per-client decode {row['client_decode_tok_s']:5.1f} tok/s, "
        f"decode-span {row['decode_span_tok_s']:6.1f} tok/s, "
        f"{row['tokens']} tokens, RSS {row['rss_mib']:.0f} MiB"
        + (
            f", equal to alone: {row['equal_to_alone']}/{k}"
            + (
                f" (others part at characters {row['first_difference_at_char']})"
                if row["first_difference_at_char"]
                else ""
            )
            if args.check_alone
            else ""
        ),
        flush=True,
    )
    return row


def medians(rows: list[dict[str, Any]], server: str, k: int) -> dict[str, float]:
    mine = [r for r in rows if r["server"] == server and r["clients"] == k]
    return {key: statistics.median(r[key] for r in mine) for key in METRICS.values()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--mmproj")
    p.add_argument("--clients", default="1,4,8", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--ctx", type=int, default=2048, help="tokens per slot")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", action="store_true", help="one 320x240 image per request")
    p.add_argument("--no-stream", action="store_true", help="ask for whole answers (TTFT is then the latency)")
    p.add_argument("--check-alone", action="store_true", help="compare each answer with the prompt's answer alone")
    p.add_argument("--peer-llama-server", help="path to llama.cpp's llama-server, run on the same files")
    p.add_argument("--serve-arg", action="append", default=[], help="an extra lfm2-edge serve argument (repeatable)")
    p.add_argument("--json", help="write all rows here")
    args = p.parse_args()

    port = free_port()
    ours = [sys.executable, "-m", "lfm2_edge.cli", "serve", args.model, "--port", str(port)]
    ours += ["--served-model-name", "m", "--threads", str(args.threads), "--slots", str(args.slots)]
    ours += ["--ctx", str(args.ctx), *args.serve_arg]
    if args.mmproj:
        ours += ["--mmproj", args.mmproj]
    servers = {"lfm2-edge": (ours, f"http://127.0.0.1:{port}")}
    if args.peer_llama_server:
        port = free_port()
        peer = [args.peer_llama_server, "-m", args.model, "--port", str(port), "-np", str(args.slots)]
        peer += ["-c", str(args.ctx * args.slots), "-t", str(args.threads), "-tb", str(args.threads), "--no-webui"]
        if args.mmproj:
            peer += ["--mmproj", args.mmproj]
        servers["llama-server"] = (peer, f"http://127.0.0.1:{port}")
    rows = bench(servers, args)
    print(f"\nmedians over {args.rounds} round(s):")
    for k in args.clients:
        for name in servers:
            m = medians(rows, name, k)
            print(
                f"  {name:13s} K={k:2d}: aggregate {m['aggregate_tok_s']:6.1f} tok/s, "
                f"TTFT p50 {m['ttft_p50_ms']:6.0f} ms, per-client decode {m['client_decode_tok_s']:5.1f} tok/s, "
                f"decode-span {m['decode_span_tok_s']:6.1f} tok/s"
            )
    if args.peer_llama_server:
        print("ratios lfm2-edge / llama-server (medians, same run):")
        for k in args.clients:
            a, b = medians(rows, "lfm2-edge", k), medians(rows, "llama-server", k)
            print(f"  K={k:2d}: " + ", ".join(f"{label} {a[key] / b[key]:.2f}x" for label, key in METRICS.items()))
    if args.json:
        Path(args.json).write_text(json.dumps([{k: v for k, v in r.items() if k != "texts"} for r in rows], indent=1))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
