"""Decode and prefill speed on a shared CPU: idle, and with N busy-looping processes.

    python scripts/bench_contention.py --model /tmp/m450/model-Q4_0.gguf --contend 1 --repeat 3 --out r.json

Each configuration runs in a fresh child process (so that the OpenMP environment is read
anew, and so that the default threads are chosen at load, with the busy processes
already running), interleaved with the others round by round (the order rotated each
round), so that a change in the machine's other load shifts every configuration alike. Configurations:

* ``default``: no ``--threads`` (lfm2-edge's policy: the cores others leave free);
* ``threads1``: ``n_threads=1``;
* ``all``: ``n_threads`` = the physical cores (the old default);
* ``passive``: all cores with ``OMP_WAIT_POLICY=PASSIVE``;
* ``spin<N>``: all cores with ``GOMP_SPINCOUNT=N`` (``--spin N``, repeatable).

The JSON gives each figure's median and, per condition, ``default`` over the best of
``threads1`` and ``all`` (decode and prefill), and the machine's load average at the
start and end. Busy loops are plain ``while True: pass`` processes (nice 0).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CHILD = r"""
import json, sys, time
from lfm2_edge.local.model import VisionModel
model, threads = sys.argv[1], int(sys.argv[2]) or None
greedy = {"temperature": 0.0, "repetition_penalty": 1.0}
t0 = time.perf_counter()
with VisionModel(model, None, n_threads=threads, n_ctx=2048) as vm:
    load = time.perf_counter() - t0
    vm.chat("warm up", max_tokens=2, **greedy)
    words = "the quick brown fox jumps over a lazy dog " * 22
    p = vm.chat(f"{time.time()}: {words}", max_tokens=1, **greedy)
    d = vm.chat(f"Tell me story {time.time()}.", max_tokens=int(sys.argv[3]), **greedy)
    busy = getattr(vm._runtime, "busy", None)
    print(json.dumps({
        "threads": vm.n_threads,
        "busy_at_load": busy.busy if busy is not None else None,
        "load_s": round(load, 2),
        "prefill_tok_s": p.timings.prompt_tok_s(p.usage),
        "decode_tok_s": d.timings.decode_tok_s(d.usage),
    }))
"""


def _spin() -> None:
    while True:
        pass


def _cores() -> int:
    from lfm2_edge._llama.ggml import default_threads

    return default_threads()


def _configs(spins: list[int]) -> dict[str, tuple[int, dict[str, str]]]:
    all_cores = _cores()
    configs = {
        "default": (0, {}),
        "threads1": (1, {}),
        "all": (all_cores, {}),
        "passive": (all_cores, {"OMP_WAIT_POLICY": "PASSIVE"}),
    }
    for n in spins:
        configs[f"spin{n}"] = (all_cores, {"GOMP_SPINCOUNT": str(n)})
    return configs


def _run(model: str, threads: int, env: dict[str, str], decode: int) -> dict[str, Any]:
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "LFM2_EDGE_THREADS")}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, model, str(threads), str(decode)],
        capture_output=True,
        text=True,
        env={**base, **env},
        timeout=600,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return dict(json.loads(lines[-1]))


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
    return round(statistics.median(values), 1) if values else None


def condition(
    model: str, busy: int, configs: dict[str, tuple[int, dict[str, str]]], repeat: int, decode: int
) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    spinners = [ctx.Process(target=_spin, daemon=True) for _ in range(busy)]
    for s in spinners:
        s.start()
    try:
        time.sleep(1.0 if busy else 0.0)  # let the scheduler and /proc/stat see them
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
        names = list(configs)
        for r in range(repeat):
            # rotated each round: no configuration always runs first (after a lull) or last
            for name in names[r % len(names) :] + names[: r % len(names)]:
                threads, env = configs[name]
                result = _run(model, threads, env, decode)
                runs[name].append(result)
                print(f"busy={busy} round {r + 1}/{repeat} {name}: {result}", file=sys.stderr, flush=True)
    finally:
        for s in spinners:
            s.terminate()
        for s in spinners:
            s.join()
    out: dict[str, Any] = {"busy_processes": busy, "configs": {}}
    for name, rs in runs.items():
        out["configs"][name] = {
            "threads": sorted({r["threads"] for r in rs if "threads" in r}),
            "busy_at_load": [r.get("busy_at_load") for r in rs],
            "decode_tok_s": _median(rs, "decode_tok_s"),
            "prefill_tok_s": _median(rs, "prefill_tok_s"),
            "decode_runs": [r.get("decode_tok_s") for r in rs],
            "prefill_runs": [r.get("prefill_tok_s") for r in rs],
            "errors": [r["error"] for r in rs if "error" in r],
        }
    c = out["configs"]
    for fig in ("decode_tok_s", "prefill_tok_s"):
        best = max((c[n][fig] or 0.0) for n in ("threads1", "all"))
        out[f"default_over_best_fixed_{fig}"] = round((c["default"][fig] or 0.0) / best, 3) if best else None
        out[f"default_over_all_{fig}"] = round((c["default"][fig] or 0.0) / (c["all"][fig] or 1.0), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="/tmp/m450/model-Q4_0.gguf")
    ap.add_argument("--contend", type=int, action="append", help="busy processes (repeatable) [1]")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--decode", type=int, default=64, help="tokens to decode")
    ap.add_argument("--spin", type=int, action="append", default=[], help="also run GOMP_SPINCOUNT=N, all cores")
    ap.add_argument("--no-idle", action="store_true", help="skip the idle condition")
    ap.add_argument("--out", type=Path, help="write the JSON here too")
    args = ap.parse_args()
    if not Path(args.model).is_file():
        sys.exit(f"error: {args.model} not found; python -m lfm2_edge.testing --shape lfm2-vl-450m --out /tmp/m450")
    configs = _configs(args.spin)
    result: dict[str, Any] = {
        "model": args.model,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "physical_cores": _cores(),
        "repeat": args.repeat,
        "loadavg_start": os.getloadavg(),
        "conditions": [],
    }
    for busy in ([] if args.no_idle else [0]) + (args.contend or [1]):
        result["conditions"].append(condition(args.model, busy, configs, args.repeat, args.decode))
    result["loadavg_end"] = os.getloadavg()
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
