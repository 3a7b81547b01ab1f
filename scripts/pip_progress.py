"""Run ``pip install ARGS`` and show that it is alive: pip is silent for the minutes
llama-cpp-python compiles llama.cpp, which looks hung.

    python scripts/pip_progress.py .venv/bin/pip install "llama-cpp-python==0.3.36"

It runs pip with ``-v``, keeps the whole output in ``$PIP_LOG`` (default
``.venv/pip-install.log``), and prints one line when the compile moves on by 10% (CMake's
``[ 45%] Building ...`` lines) and a heartbeat every 30 s otherwise, with the time
spent. On failure it prints the last 40 lines of the log and exits with pip's status.
No dependencies: it runs on the interpreter that creates the venv.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

HEARTBEAT_S = 30.0
STARTED = re.compile(r"Building wheel for (\S+) \(pyproject\.toml\): started")
PERCENT = re.compile(r"\[\s*(\d+)%\]\s+(Building|Linking)\s+\S+\s+(?:object\s+)?(\S+)")


NINJA = re.compile(r"\[(\d+)/(\d+)\]\s")
SOURCE = re.compile(r"\s-c\s+(\S+)|\s-o\s+(\S+)")


def _step(line: str) -> tuple[int, str] | None:
    """(percent done, file) from a CMake/Make ``[ 45%] Building ...`` line or a Ninja
    ``[12/136] g++ ... -c file.cpp`` line (pip -v may put a timestamp before either)."""
    if m := PERCENT.search(line):
        return int(m.group(1)), Path(m.group(3)).name
    if m := NINJA.search(line):
        done, total = int(m.group(1)), int(m.group(2))
        src = SOURCE.search(line)
        name = Path(src.group(1) or src.group(2)).name if src else ""
        return (100 * done // max(1, total)), f"{done}/{total} {name}".strip()
    return None


def main() -> int:
    cmd = sys.argv[1:]
    if not cmd:
        print(__doc__)
        return 2
    log_path = Path(os.environ.get("PIP_LOG", ".venv/pip-install.log"))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    state = {"last_print": start, "percent": -10, "what": "resolving and downloading"}
    lock = threading.Lock()

    def say(text: str) -> None:
        with lock:
            mins, secs = divmod(int(time.monotonic() - start), 60)
            print(f"  [{mins:2d}m{secs:02d}s] {text}", flush=True)
            state["last_print"] = time.monotonic()

    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(5.0):
            if time.monotonic() - state["last_print"] >= HEARTBEAT_S:
                say(f"still working: {state['what']} (full log: {log_path})")

    threading.Thread(target=heartbeat, daemon=True).start()
    tail: list[str] = []
    with log_path.open("w") as log:
        proc = subprocess.Popen([*cmd, "-v"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            tail = [*tail[-39:], line.rstrip("\n")]
            step = _step(line)
            if step is not None:
                percent, what = step
                state["what"] = f"compiling llama.cpp, {percent}%"
                if percent >= int(state["percent"]) + 10:
                    state["percent"] = percent
                    say(f"compiling llama.cpp: {percent}% ({what})")
            elif m := STARTED.search(line):
                state["what"] = f"building {m.group(1)}"
                say(f"building {m.group(1)} (compiling llama.cpp takes minutes; see the README)")
            elif line.startswith(("Successfully installed", "Successfully built")):
                say(line.strip()[:160])
        code = proc.wait()
    done.set()
    if code != 0:
        print("\n".join(tail), file=sys.stderr)
        print(f"pip failed (exit {code}); the whole log is {log_path}", file=sys.stderr)
    else:
        say("done")
    return code


if __name__ == "__main__":
    sys.exit(main())
