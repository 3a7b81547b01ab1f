"""The x86 peer and the emulated ARM runs compared (scripts/arm64-check.sh).

    python scripts/arm64_compare.py ids|chat DIR LABEL NAME required|reported
    python scripts/arm64_compare.py follow DIR LABEL NAME BOUND

The runs are x86, pi4@cortex-a72, pi5@cortex-a76 and pi4@cortex-a76; one line per ARM run,
then (ids, chat) one on whether the Pi 4 libraries answer alike on both CPUs.

* ``ids``: DIR/NAME-RUN.txt, the ``ids: ...`` line of scripts/arm64_greedy.c; ``chat``:
  DIR/NAME-RUN.json, ``lfm2-edge chat --json``. The greedy answers against x86's: exit 1
  when the Pi 4 libraries answer differently on the two CPUs, or an ARM run parts from x86
  and equality is ``required``; ``reported`` says where they part and exits 0.
* ``follow``: DIR/NAME-follow-RUN.txt, arm64_greedy's ``--follow`` logits along x86's greedy
  answer. Exit 1 when a run's logits are further from x86's, at some step, than BOUND times
  the largest |logit| of x86's there; also says at how many steps the run's own choice was
  x86's. Equal greedy answers follow only where no two candidates are closer than twice
  that distance.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RUNS = ["x86", "pi4@cortex-a72", "pi5@cortex-a76", "pi4@cortex-a76"]  # x86 and arm64-check.sh's ARM_RUNS


def answer(kind: str, path: Path) -> tuple[list[str], int]:
    """(what is compared item by item, its length in tokens)."""
    if kind == "ids":
        ids = path.read_text().split("ids:")[1].split()
        return ids, len(ids)
    got = json.loads(path.read_text())
    return list(got["text"]), got["usage"]["completion_tokens"]


def compare_answers(kind: str, folder: Path, label: str, name: str, need: str) -> bool:
    unit = "token ids" if kind == "ids" else "characters"
    suffix = ".txt" if kind == "ids" else ".json"
    got = {run: answer(kind, folder / f"{name}-{run}{suffix}") for run in RUNS}
    ok = all(items for items, _ in got.values())
    base, base_n = got["x86"]
    for run in RUNS[1:]:
        items, n = got[run]
        if (items, n) == (base, base_n):
            print(f"{label}: {run} equal to x86 ({n} tokens)")
            continue
        at = next((i for i, (a, b) in enumerate(zip(base, items, strict=False)) if a != b), min(len(base), len(items)))
        note = "" if need == "required" else " (reported, not required)"
        print(f"{label}: {run} parts from x86 after {at} of {len(base)} {unit}{note}")
        ok = ok and need != "required"
    same = got["pi4@cortex-a72"] == got["pi4@cortex-a76"]
    alike = "the same" if same else "DIFFERENTLY"
    print(f"{label}: the Pi 4 libraries answer {alike} on a Cortex-A72 and a Cortex-A76")
    return ok and same


def steps(path: Path) -> list[tuple[int, list[float]]]:
    """(the token decoded next, the logits before it) per ``logits TOKEN: ...`` line."""
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("logits "):
            head, values = line.split(":", 1)
            out.append((int(head.split()[1]), [float(v) for v in values.split()]))
    return out


def compare_logits(folder: Path, label: str, name: str, bound: float) -> bool:
    base = steps(folder / f"{name}-follow-x86.txt")
    ok = bool(base)
    for run in RUNS[1:]:
        got = steps(folder / f"{name}-follow-{run}.txt")
        if len(got) != len(base) or not got:
            print(f"{label}: {run} gave {len(got)} steps, x86 {len(base)}")
            ok = False
            continue
        worst = worst_abs = 0.0
        chose = 0
        for (token, a), (_, b) in zip(base, got, strict=True):
            diff = max(abs(x - y) for x, y in zip(a, b, strict=True))
            worst = max(worst, diff / max(abs(x) for x in a))
            worst_abs = max(worst_abs, diff)
            chose += max(range(len(b)), key=b.__getitem__) == token
        fits = worst <= bound
        print(
            f"{label}: {run} within {worst:.2e} of x86's logit scale (at most {worst_abs:.3g}; bound {bound:g}): "
            f"{'ok' if fits else 'TOO FAR'}; its own choice was x86's at {chose} of {len(base)} steps"
        )
        ok = ok and fits
    return ok


def main(argv: list[str]) -> int:
    kind, folder, label, name, last = argv
    if kind == "follow":
        return 0 if compare_logits(Path(folder), label, name, float(last)) else 1
    return 0 if compare_answers(kind, Path(folder), label, name, last) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
