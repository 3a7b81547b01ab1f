"""Soak ``lfm2-edge watch``: a live feed for --minutes, the watcher's RSS sampled all along.

A camera-like feed is made here (640x480 JPEGs at --fps, sensor noise, a shape that
moves every frame and a scene change every 10 s) and written, paced in real time, to
``lfm2-edge watch MODEL - --min-change 0`` (the CLI in a process of its own, frames on
stdin: every frame the model has time for). Its VmRSS is read every --sample-s seconds.
The RSS is "flat" when every sample after the warm-up (--warmup-min: the first answers,
while the caches fill) stays within ±5 % of the warm-up's last sample.

    python scripts/soak_watch.py MODEL.gguf --mmproj MMPROJ.gguf --threads 2 \\
        --minutes 30 --out soak_watch.json

Exit 0 when the watcher ran the whole feed, ended cleanly and its RSS stayed flat.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench_batch import rss_mib  # scripts/ is on the path when run as a script

PROMPT = "Describe what you see in one short sentence."
COLORS = [(200, 30, 30), (30, 40, 200), (240, 240, 240), (30, 160, 40), (10, 10, 10), (220, 210, 40)]


def feed(sink: Any, seconds: float, fps: float, stop: threading.Event) -> int:
    """Write JPEG frames to ``sink`` at ``fps`` for ``seconds``; the frames written."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    w, h = 640, 480
    start = time.monotonic()
    n = 0
    while not stop.is_set():
        t = n / fps
        if t >= seconds:
            break
        scene = int(t // 10)
        pixels = np.full((h, w, 3), COLORS[scene % len(COLORS)], dtype=np.int16)
        x = (n * 7) % (w - w // 4)
        pixels[h // 4 : h // 2, x : x + w // 4] = 128  # a shape that moves
        pixels = np.clip(pixels + rng.integers(-6, 7, (h, w, 1)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=80)
        delay = start + t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            sink.write(buf.getvalue())
            sink.flush()
        except (BrokenPipeError, ValueError):
            break
        n += 1
    sink.close()
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--mmproj")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--fps", type=float, default=5.0)
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--warmup-min", type=float, default=3.0)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--out", help="write the results (JSON) here")
    args = ap.parse_args()

    seconds = args.minutes * 60
    events = Path(tempfile.mkdtemp()) / "events.jsonl"
    cmd = [sys.executable, "-m", "lfm2_edge.cli", "watch", args.model, "-", "-p", PROMPT, "--min-change", "0"]
    cmd += ["--threads", str(args.threads), "--max-tokens", str(args.max_tokens), "--temperature", "0"]
    cmd += ["--out", str(events)]
    if args.mmproj:
        cmd += ["--mmproj", args.mmproj]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    stop = threading.Event()
    written: list[int] = []
    feeder = threading.Thread(target=lambda: written.append(feed(proc.stdin, seconds, args.fps, stop)), daemon=True)
    start = time.monotonic()
    feeder.start()
    samples: list[tuple[float, float]] = []  # (minutes since start, RSS MiB)
    try:
        while proc.poll() is None:
            rss = rss_mib(proc.pid)
            if rss > 0 and feeder.is_alive():  # 0: the process has gone
                samples.append((round((time.monotonic() - start) / 60, 2), round(rss, 1)))
            time.sleep(args.sample_s)
    except KeyboardInterrupt:
        stop.set()
        proc.terminate()
    feeder.join(timeout=10)
    code = proc.wait(timeout=120)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""

    answers = errors = 0
    if events.exists():
        for line in events.read_text().splitlines():
            kind = json.loads(line).get("event")
            answers += kind == "answer"
            errors += kind == "error"
    after = [rss for minute, rss in samples if minute >= args.warmup_min]
    warm = [rss for minute, rss in samples if minute < args.warmup_min]
    result: dict[str, Any] = {
        "minutes": args.minutes,
        "fps": args.fps,
        "threads": args.threads,
        "frames_written": written[0] if written else 0,
        "answers": answers,
        "errors": errors,
        "exit_code": code,
        "rss_samples_mib": samples,
    }
    if warm and after:
        base = warm[-1]
        result.update(
            rss_at_warmup_mib=base,
            rss_min_after_mib=min(after),
            rss_max_after_mib=max(after),
            rss_median_after_mib=round(statistics.median(after), 1),
            rss_last_mib=after[-1],
            max_deviation_pct=round(max(abs(r - base) for r in after) / base * 100, 2),
        )
        result["flat_within_5pct"] = result["max_deviation_pct"] <= 5.0
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rss_samples_mib"}, indent=1))
    if code != 0:
        print(f"watch exited {code}: {err.strip().splitlines()[-1:] or ''}", file=sys.stderr)
    return 0 if code == 0 and result.get("flat_within_5pct") else 1


if __name__ == "__main__":
    sys.exit(main())
