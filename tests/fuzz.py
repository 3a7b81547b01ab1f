"""A fuzz harness: corrupted GGUF files and images, each tried in a child process.

llama.cpp aborts the whole process on some malformed files, so an in-process test could
not tell "a clear error" from "the test runner died". Here a worker process takes the
cases one by one, announcing each before it starts; when the worker dies, the parent
records the case it was on as a crash and starts a new worker at the next case.

Every case must end as ``ok`` (the file still works: a flipped byte in tensor data
loads and answers) or ``error`` (an :class:`lfm2_edge.Lfm2EdgeError` with a one-line
message). Anything else (another exception, a signal, a non-zero exit) is a crash.

Run by hand: ``python -m tests.fuzz MODEL MMPROJ [--cases N]`` prints the report.
"""

from __future__ import annotations

import io
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image


@dataclass
class Case:
    kind: str  # "model", "mmproj" or "image"
    mutation: str
    path: str


@dataclass
class Report:
    outcomes: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    crashes: list[str] = field(default_factory=list)
    odd_errors: list[str] = field(default_factory=list)  # errors that are not one short line

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    def summary(self) -> str:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.by_kind.items()))
        return (
            f"{self.total} cases ({kinds}): {self.outcomes['ok']} ok, {self.outcomes['error']} clear errors, "
            f"{len(self.crashes)} crashes"
        )


# -- mutations --------------------------------------------------------------------------


def _header_end(data: bytes) -> int:
    """Where tensor data starts: mutations of the header aim before it."""
    from lfm2_edge.hub.gguf import _parse

    return _parse(data).data_start


def gguf_mutations(data: bytes, rng: random.Random, n: int) -> list[tuple[str, bytes]]:
    head = _header_end(data)
    out: list[tuple[str, bytes]] = []
    absurd = [0, 1, 2**31 - 1, 2**32 - 1, 2**40, 2**63, 2**64 - 1]
    for i in range(n):
        b = bytearray(data)
        kind = ("truncate", "flip-header", "absurd-u64", "absurd-u32", "flip-data", "zero-run")[i % 6]
        if kind == "truncate":
            cut = rng.choice([rng.randrange(0, 64), rng.randrange(0, head), rng.randrange(0, len(b))])
            b = b[:cut]
        elif kind == "flip-header":
            for _ in range(rng.randint(1, 6)):
                b[rng.randrange(4, head)] ^= 1 << rng.randrange(8)
        elif kind == "absurd-u64":
            at = rng.randrange(8, head - 8)
            b[at : at + 8] = struct.pack("<Q", rng.choice(absurd))
        elif kind == "absurd-u32":
            at = rng.randrange(4, head - 4)
            b[at : at + 4] = struct.pack("<I", rng.choice(absurd) & 0xFFFFFFFF)
        elif kind == "flip-data":
            for _ in range(rng.randint(1, 16)):
                b[rng.randrange(head, len(b))] ^= 0xFF
        else:
            at = rng.randrange(0, head)
            b[at : at + rng.randint(1, 256)] = bytes(min(256, len(b) - at))
        out.append((kind, bytes(b)))
    return out


def _encoded(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def image_mutations(rng: random.Random, n: int) -> list[tuple[str, bytes]]:
    base = Image.frombytes("RGB", (48, 32), bytes(rng.randrange(256) for _ in range(48 * 32 * 3)))
    frames = [base, base.rotate(90, expand=True)]
    sources = {
        "png": _encoded(base, "PNG"),
        "jpeg": _encoded(base, "JPEG"),
        "gif": _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "webp": _encoded(base, "WEBP"),
        "png-rgba16": _encoded(Image.new("I;16", (40, 40), 1000), "PNG"),
        "tiff-cmyk": _encoded(base.convert("CMYK"), "TIFF"),
    }
    out: list[tuple[str, bytes]] = []
    names = sorted(sources)
    for i in range(n):
        name = names[i % len(names)]
        b = bytearray(sources[name])
        kind = ("truncate", "flip", "absurd-size", "random", "empty-ish")[i % 5]
        if kind == "truncate":
            b = b[: rng.randrange(0, len(b))]
        elif kind == "flip":
            for _ in range(rng.randint(1, 12)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif kind == "absurd-size":
            if name.startswith("png"):  # IHDR width and height
                b[16:24] = struct.pack(">II", rng.choice([1, 65535, 2**31 - 1]), rng.choice([1, 65535, 2**31 - 1]))
            else:
                at = rng.randrange(0, min(64, len(b) - 4))
                b[at : at + 4] = b"\xff\xff\xff\x7f"
        elif kind == "random":
            b = bytearray(rng.randbytes(rng.randrange(1, 2048)))
        else:
            b = b[: rng.choice([0, 1, 4, 8])]
        out.append((f"{name}/{kind}", bytes(b)))
    return out


def write_cases(
    model: Path, mmproj: Path, directory: Path, n_model: int, n_mmproj: int, n_image: int, seed: int = 0
) -> list[Case]:
    rng = random.Random(seed)
    cases: list[Case] = []
    for kind, source, n in (("model", model, n_model), ("mmproj", mmproj, n_mmproj)):
        for i, (mutation, data) in enumerate(gguf_mutations(source.read_bytes(), rng, n)):
            path = directory / f"{kind}-{i}.gguf"
            path.write_bytes(data)
            cases.append(Case(kind, mutation, str(path)))
    for i, (mutation, data) in enumerate(image_mutations(rng, n_image)):
        path = directory / f"image-{i}.bin"
        path.write_bytes(data)
        cases.append(Case("image", mutation, str(path)))
    return cases


# -- the worker (child process) ---------------------------------------------------------


def worker(model: str, mmproj: str, case_file: str, start: int) -> None:
    """Run cases from ``start`` on; one line per case on stdout."""
    from lfm2_edge import Lfm2EdgeError, VisionModel
    from lfm2_edge.chat.images import load_image

    cases = [Case(**c) for c in json.loads(Path(case_file).read_text())]
    small = Image.new("RGB", (32, 32), (200, 10, 10))
    good: VisionModel | None = None
    for index in range(start, len(cases)):
        case = cases[index]
        print(f"FUZZ START {index}", flush=True)
        try:
            if case.kind == "image":
                image = load_image(Path(case.path).read_bytes())
                if good is None:
                    good = VisionModel(model, mmproj, n_ctx=1024)
                good.chat("What is it?", images=[image], max_tokens=2)
            else:
                paths = (case.path, mmproj) if case.kind == "model" else (model, case.path)
                with VisionModel(*paths, n_ctx=512) as vm:
                    vm.chat("What is it?", images=[small], max_tokens=2)
            print(f"FUZZ OK {index}", flush=True)
        except Lfm2EdgeError as exc:
            print(f"FUZZ ERR {index} {json.dumps(str(exc))}", flush=True)
    if good is not None:
        good.close()


def run(model: Path, mmproj: Path, cases: list[Case], workdir: Path, timeout: float = 60) -> Report:
    case_file = workdir / "cases.json"
    case_file.write_text(json.dumps([c.__dict__ for c in cases]))
    report = Report()
    start = 0
    env = {**os.environ, "PYTHONFAULTHANDLER": ""}
    while start < len(cases):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fuzz", "--worker", str(model), str(mmproj), str(case_file), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        current = None
        for line in proc.stdout:
            if not line.startswith("FUZZ "):
                continue  # llama.cpp's own output (a backtrace before an abort, say)
            word, _, rest = line.strip()[5:].partition(" ")
            if word == "START":
                current = int(rest)
                continue
            index = int(rest.split(" ", 1)[0])
            case = cases[index]
            report.by_kind[case.kind] += 1
            if word == "OK":
                report.outcomes["ok"] += 1
            else:
                message = json.loads(rest.split(" ", 1)[1])
                report.outcomes["error"] += 1
                if "\n" in message or len(message) > 400:
                    report.odd_errors.append(f"{case.kind}/{case.mutation}: {message[:200]!r}")
            current = None
            start = index + 1
        code = proc.wait(timeout=timeout)
        if current is not None:  # the worker died on this case
            case = cases[current]
            report.by_kind[case.kind] += 1
            report.outcomes["crash"] += 1
            report.crashes.append(f"{case.kind}/{case.mutation} {case.path} (exit {code})")
            start = current + 1
        elif code != 0 and start < len(cases):
            report.crashes.append(f"worker exited {code} between cases")
            start += 1
    return report


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        model, mmproj, case_file, start = sys.argv[2:6]
        worker(model, mmproj, case_file, int(start))
        return
    import argparse

    parser = argparse.ArgumentParser(description="Fuzz lfm2-edge with corrupted GGUF files and images.")
    parser.add_argument("model", type=Path)
    parser.add_argument("mmproj", type=Path)
    parser.add_argument("--cases", type=int, default=300, help="cases per kind (model, mmproj, image)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cases = write_cases(args.model, args.mmproj, Path(tmp), args.cases, args.cases, args.cases, args.seed)
        report = run(args.model, args.mmproj, cases, Path(tmp))
    print(report.summary())
    for crash in report.crashes:
        print("crash:", crash)
    for odd in report.odd_errors:
        print("not one line:", odd)
    sys.exit(1 if report.crashes else 0)


if __name__ == "__main__":
    main()
