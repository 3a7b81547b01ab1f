"""Images/s of `lfm2-edge batch` against llama-server -np K driven by a concurrent client
doing the same job, and against a one-at-a-time loop, in one run; peak RSS.

    python scripts/bench_batch.py MODEL.gguf --mmproj MMPROJ.gguf --images 100 --slots 4 \\
        --threads 2 --max-tokens 16 [--peer-llama-server PATH] [--json bench-batch.json]

The images are made here (noise and gradients of mixed sizes, PNG). Every contender gets
the same images, prompt, max tokens (greedy) and threads; `lfm2-edge batch` and the loop
(`--slots 1`) run as child processes whose RSS is sampled, and images/s is taken over the
answering (the summary's seconds, model load excluded); llama-server's wall time runs from
the first request to the last answer (its load is excluded too). The RSS of `batch` is
its peak over the first 100 answers and over the whole run (the "within 10 %" check for
--images 1000; a sample taken as the process ends would see the model freed).
llama-server comes from scripts/build_llama_server.sh.
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

PROMPT = "Describe this image in one sentence."


def make_images(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    sizes = [(320, 240), (512, 384), (640, 480), (400, 400), (768, 512)]
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        if i % 2:
            pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        else:
            x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
            y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
            base = rng.integers(0, 255, 3).astype(np.float32)[None, None, :]
            pixels = ((x * 0.6 + y * 0.4 + base) % 256).astype(np.uint8)
            pixels = np.broadcast_to(pixels, (h, w, 3)).copy()
        path = folder / f"img{i:05d}.png"
        Image.fromarray(pixels).save(path)
        out.append(path)
    return out


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_batch(args: argparse.Namespace, folder: Path, slots: int) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp()) / "out.jsonl"
    cmd = [sys.executable, "-m", "lfm2_edge.cli", "batch", args.model, str(folder), "--out", str(out)]
    cmd += ["--slots", str(slots), "--threads", str(args.threads), "--ctx", str(args.ctx)]
    cmd += ["--max-tokens", str(args.max_tokens), "--temperature", "0", "--json", "-p", PROMPT]
    if args.mmproj:
        cmd += ["--mmproj", args.mmproj]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = at_100 = 0.0  # the peak RSS over the whole run, and over its first 100 answers
    first_100 = True  # the output is read only until it holds 100 answers
    while proc.poll() is None:
        rss = rss_mib(proc.pid)
        peak = max(peak, rss)
        if first_100:
            first_100 = (out.read_bytes().count(b"\n") if out.exists() else 0) <= 100
            if first_100:
                at_100 = max(at_100, rss)
        time.sleep(0.2)
    summary = json.loads(proc.stdout.read() if proc.stdout else "{}")
    return {
        "slots": slots,
        "images_per_s": summary.get("images_per_s"),
        "seconds": summary.get("seconds"),
        "answered": summary.get("answered"),
        "peak_rss_mib": round(peak, 1),
        "rss_at_100_mib": round(at_100, 1),
        "rss_at_end_mib": round(peak, 1),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_llama_server(args: argparse.Namespace, images: list[Path]) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [args.peer_llama_server, "-m", args.model, "--port", str(port), "-np", str(args.slots)]
    cmd += ["-c", str(args.ctx * args.slots), "-t", str(args.threads), "-tb", str(args.threads), "--no-webui"]
    if args.mmproj:
        cmd += ["--mmproj", args.mmproj]
    cmd += args.peer_arg
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("llama-server did not start")
            time.sleep(0.2)
        todo = list(images)
        lock = threading.Lock()
        errors = [0]
        peak = [0.0]

        def client() -> None:
            with httpx.Client(timeout=600) as http:
                while True:
                    with lock:
                        if not todo:
                            return
                        path = todo.pop(0)
                    uri = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
                    body = {
                        "messages": [
                            {
                                "role": "user",
                                "content": [
                                    {"type": "image_url", "image_url": {"url": uri}},
                                    {"type": "text", "text": PROMPT},
                                ],
                            }
                        ],
                        "max_tokens": args.max_tokens,
                        "temperature": 0,
                    }
                    if http.post(f"{url}/v1/chat/completions", json=body).status_code != 200:
                        errors[0] += 1
                    peak[0] = max(peak[0], rss_mib(proc.pid))

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.slots)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        return {
            "slots": args.slots,
            "images_per_s": round(len(images) / seconds, 3),
            "seconds": seconds,
            "errors": errors[0],
            "peak_rss_mib": round(peak[0], 1),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--mmproj")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ctx", type=int, default=4096, help="per slot")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--peer-llama-server", help="llama.cpp's llama-server (scripts/build_llama_server.sh)")
    p.add_argument("--peer-arg", action="append", default=[], help="an extra llama-server argument")
    p.add_argument("--no-loop", action="store_true", help="skip the one-at-a-time loop")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        images = make_images(Path(tmp), args.images)
        result: dict[str, Any] = {"images": args.images, "threads": args.threads, "max_tokens": args.max_tokens}
        result["lfm2_edge_batch"] = run_batch(args, Path(tmp), args.slots)
        if not args.no_loop:
            result["one_at_a_time"] = run_batch(args, Path(tmp), 1)
        if args.peer_llama_server:
            result["llama_server"] = run_llama_server(args, images)
    ours = result["lfm2_edge_batch"]["images_per_s"] or 0
    for peer in ("one_at_a_time", "llama_server"):
        theirs = (result.get(peer) or {}).get("images_per_s")
        if theirs:
            result[f"ratio_vs_{peer}"] = round(ours / theirs, 3)
    a, b = result["lfm2_edge_batch"]["rss_at_100_mib"], result["lfm2_edge_batch"]["rss_at_end_mib"]
    if a:
        result["rss_end_over_100"] = round(b / a, 3)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
