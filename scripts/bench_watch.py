"""Benchmark ``watch`` against the webcam-demo way of driving llama-server, in one run.

Writes a 30 fps test video with a scene change every 2 s (640x480, sensor noise) and a
static 60 s video, then for each image-token budget (the card's, and --image-max-tokens
64):

- lfm2-edge watch (in process, ``--min-change 0``: every frame the model has time for,
  as the demo does): answers/s and capture-to-answer latency p50/p95, over the video
  played in real time; the same with the default ``--min-change`` (answers per scene);
- encoder runs on the static video (``--no-realtime``; the default --min-change);
- with --llama-server PATH: the same video through llama-server the way the SmolVLM
  real-time webcam demo drives it: every 100 ms, unless a request is in flight, the
  latest frame as a JPEG (quality 0.8) data URI in one chat-completions POST; latency
  from the frame's capture to the answer;
- lfm2-edge's RSS before and after the watch run.

    python scripts/bench_watch.py [MODEL.gguf --mmproj MMPROJ.gguf] --threads 2 \\
        [--seconds 30] [--llama-server PATH] [--out bench_watch.json]

Without MODEL it writes (once, into --work) the synthetic LFM2-VL-450M-shaped pair and
uses its Q4_0. Run it on a quiet machine: the answers/s are CPU-bound.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

PROMPT = "Describe what you see in one short sentence."
COLORS = [(200, 30, 30), (30, 40, 200), (240, 240, 240), (30, 160, 40), (10, 10, 10), (220, 210, 40)]


def write_video(path: Path, seconds: float, scene_s: float | None, size: tuple[int, int] = (640, 480)) -> Path:
    import av
    import numpy as np

    if path.exists():
        return path
    rng = np.random.default_rng(0)
    w, h = size
    part = path.with_name(path.name + ".part.mp4")  # renamed when whole: a killed run leaves no video to reuse
    with av.open(str(part), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(round(seconds * 30)):
            scene = int(i / 30 / scene_s) if scene_s else 3  # the static video: a scene of its own
            base = np.full((h, w, 3), COLORS[scene % len(COLORS)], dtype=np.int16)
            base[h // 4 : h // 2, (scene * 37) % (w // 2) : (scene * 37) % (w // 2) + w // 4] = (
                128  # a shape that moves
            )
            pixels = np.clip(base + rng.integers(-6, 7, (h, w, 1)), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    part.replace(path)
    return path


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 4)


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def summary(latencies: list[float], seconds: float, **extra: Any) -> dict[str, Any]:
    return {
        "answers": len(latencies),
        "answers_per_s": round(len(latencies) / seconds, 4),
        "latency_p50_s": pct(latencies, 0.5),
        "latency_p95_s": pct(latencies, 0.95),
        **extra,
    }


def bench_lfm2(
    model: Path,
    mmproj: Path,
    threads: int,
    budget: int | None,
    scenes: Path,
    static: Path,
    seconds: float,
    max_tokens: int,
) -> dict[str, Any]:
    from lfm2_edge import VisionModel
    from lfm2_edge.jobs.watch import watch

    extra = {"image_max_tokens": budget} if budget else {}
    vm = VisionModel(model, mmproj, n_threads=threads, n_ctx=4096, **extra)
    opts = {"max_tokens": max_tokens, "temperature": 0.0}
    try:
        vm.chat(PROMPT, images=[first_frame(scenes)], **opts)  # warm-up, not counted
        rss0 = rss_mb()
        t0 = time.monotonic()
        events = list(watch(vm, str(scenes), PROMPT, min_change=0.0, **opts))
        wall = time.monotonic() - t0
        rss1 = rss_mb()
        lat = [e.latency_s for e in events if e.event == "answer"]
        skipped = sum(e.skipped or 0 for e in events if e.event == "answer")
        every_frame = summary(lat, wall, skipped_frames=skipped, rss_start_mb=rss0, rss_end_mb=rss1)
        t0 = time.monotonic()
        gated = [e for e in watch(vm, str(scenes), PROMPT, **opts) if e.event == "answer"]
        per_scene = summary([e.latency_s for e in gated], time.monotonic() - t0, scenes=int(seconds // 2))
        before = vm.image_encodes
        static_events = [e for e in watch(vm, str(static), PROMPT, realtime=False, **opts) if e.event == "answer"]
        return {
            "min_change_0": every_frame,
            "min_change_default": per_scene,
            "static_60s": {"answers": len(static_events), "encoder_runs": vm.image_encodes - before},
        }
    finally:
        vm.close()


def first_frame(video: Path) -> Any:
    """The video's first frame, as a PIL image."""
    import av

    with av.open(str(video)) as c:
        return next(c.decode(video=0)).to_image()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_llama_server(
    binary: str, model: Path, mmproj: Path, threads: int, budget: int | None, scenes: Path, max_tokens: int
) -> dict[str, Any]:
    """The webcam demo's loop against llama-server: the latest frame every 100 ms, skipped while in flight."""
    import av

    port = free_port()
    args = [
        binary,
        "-m",
        str(model),
        "--mmproj",
        str(mmproj),
        "-t",
        str(threads),
        "-c",
        "4096",
        "--port",
        str(port),
        "-np",
        "1",
    ]
    if budget:
        args += ["--image-max-tokens", str(budget)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                return {"error": "llama-server did not start"}
            time.sleep(0.5)
        latest: list[Any] = [None]  # (captured, jpeg data URI)
        done = threading.Event()

        def play() -> None:  # the camera: frames at their timestamps, as a <video> element plays them
            with av.open(str(scenes)) as c:
                start = time.monotonic()
                for frame in c.decode(video=0):
                    delay = start + float(frame.time or 0) - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    captured = time.time()
                    buf = io.BytesIO()
                    frame.to_image().save(buf, "JPEG", quality=80)  # canvas.toDataURL('image/jpeg', 0.8)
                    latest[0] = (captured, "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode())
            done.set()

        def post(uri: str) -> None:
            body = {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": PROMPT}],
                    }
                ],
                "max_tokens": max_tokens,
                "temperature": 0.0,
            }
            httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300).raise_for_status()

        with av.open(str(scenes)) as c:  # warm-up, not counted
            buf = io.BytesIO()
            next(c.decode(video=0)).to_image().save(buf, "JPEG", quality=80)
            post("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode())
        player = threading.Thread(target=play, daemon=True)
        t0 = time.monotonic()
        player.start()
        latencies: list[float] = []
        sent = None
        while not done.is_set():
            item = latest[0]
            if item is None or item is sent:
                time.sleep(0.1)
                continue
            sent = item
            post(item[1])  # in flight: the 100 ms ticks meanwhile are skipped
            latencies.append(time.time() - item[0])
            time.sleep(0.1 - (time.monotonic() - t0) % 0.1)  # the next tick
        wall = time.monotonic() - t0
        return summary(latencies, wall)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", type=Path)
    parser.add_argument("--mmproj", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--budgets", default="card,64", help="image-token budgets: card and/or numbers")
    parser.add_argument("--llama-server", help="a llama-server binary (scripts/build_llama_server.sh)")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "bench_watch")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        from lfm2_edge.testing import make_synthetic_model

        pair = args.work / "lfm2-vl-450m"
        if not (pair / "model-Q4_0.gguf").exists():
            make_synthetic_model(pair, "lfm2-vl-450m", quants=["Q4_0"])
        args.model, args.mmproj = pair / "model-Q4_0.gguf", pair / "mmproj-F16.gguf"
    scenes = write_video(args.work / f"scenes-{args.seconds:g}s.mp4", args.seconds, 2.0)
    static = write_video(args.work / "static-60s.mp4", 60.0, None)
    report: dict[str, Any] = {
        "model": str(args.model),
        "threads": args.threads,
        "video": {"seconds": args.seconds, "fps": 30, "scene_change_every_s": 2, "size": "640x480"},
        "max_tokens": args.max_tokens,
        "load_avg_start": os.getloadavg(),
        "runs": {},
    }
    for name in args.budgets.split(","):
        budget = None if name == "card" else int(name)
        run: dict[str, Any] = {
            "lfm2_edge": bench_lfm2(
                args.model, args.mmproj, args.threads, budget, scenes, static, args.seconds, args.max_tokens
            )
        }
        if args.llama_server:
            peer = bench_llama_server(
                args.llama_server, args.model, args.mmproj, args.threads, budget, scenes, args.max_tokens
            )
            run["llama_server_webcam_demo"] = peer
            ours = run["lfm2_edge"]["min_change_0"]
            if peer.get("latency_p50_s") and ours.get("latency_p50_s"):
                run["latency_p50_ratio"] = round(ours["latency_p50_s"] / peer["latency_p50_s"], 3)
                run["answers_per_s_ratio"] = round(ours["answers_per_s"] / max(peer["answers_per_s"], 1e-9), 3)
        else:
            run["llama_server_webcam_demo"] = "not run: give --llama-server PATH"
        report["runs"][name] = run
        sys.stderr.write(f"{name}: {json.dumps(run)}\n")  # each budget as it ends (a long run on a slow box)
    report["load_avg_end"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    sys.stdout.write(text + "\n")
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
