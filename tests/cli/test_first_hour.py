"""What a new user hits in the first hour (issue 23): each mistake is one clear line, run
as a user runs it, in a process of its own."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lfm2_edge.errors import InvalidParameterError
from tests.helpers import cli_server, noise_image, run_cli
from tests.hubstub import HubStub

pytestmark = pytest.mark.slow

run = run_cli
NO_HUB = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "1"}


def one_error_line(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize("quant", ["Q3_K", "Q5_K_M"])
def test_doctor_with_an_unknown_quant_is_one_line(quant: str, tmp_path: Path) -> None:
    line = one_error_line(run("doctor", f"LFM2.5-VL-1.6B:{quant}", env={**NO_HUB, "HF_HUB_CACHE": str(tmp_path)}))
    assert f"unknown quant {quant} for LFM2.5-VL-1.6B" in line and "F16, Q8_0, Q4_0" in line


def test_an_image_budget_outside_the_card_is_one_line_not_the_projector(tiny: dict[str, Path]) -> None:
    base = [str(tiny["F16"]), "--mmproj", str(tiny["mmproj"])]
    low = one_error_line(run("chat", *base, "-p", "hi", "--image-max-tokens", "32"))
    assert "--image-max-tokens 32 is below" in low and "64 to 256" in low and "mmproj" not in low
    high = one_error_line(run("chat", *base, "-p", "hi", "--image-min-tokens", "300"))
    assert "--image-min-tokens 300 is above" in high and "64 to 256" in high and "projector" not in high
    served = one_error_line(run("serve", *base, "--port", "0", "--image-min-tokens", "300"))
    assert "--image-min-tokens 300 is above" in served
    # inside the card's range both ways: accepted
    ok = run("chat", *base, "-p", "hi", "--image-min-tokens", "16", "--image-max-tokens", "32", "--max-tokens", "2")
    assert ok.returncode == 0, ok.stderr


def test_the_api_refuses_a_floor_above_the_ceiling_before_mtmd(tiny: dict[str, Path]) -> None:
    from lfm2_edge import VisionModel

    with pytest.raises(InvalidParameterError, match=r"image_min_tokens \(64\) is larger than image_max_tokens \(32\)"):
        VisionModel(tiny["F16"], tiny["mmproj"], image_max_tokens=32)


def test_a_schema_answer_cut_short_through_an_endpoint_exits_1(tiny: dict[str, Path], tmp_path: Path) -> None:
    schema = tmp_path / "s.json"
    schema.write_text('{"type": "array", "items": {"type": "integer"}, "minItems": 50}')
    with cli_server(tiny) as (_proc, url):
        result = run("chat", "m", "--endpoint", f"{url}/v1", "--schema", str(schema), "--max-tokens", "5", "-p", "n")
    assert result.returncode == 1, result.stderr
    assert "reached --max-tokens (5) before its JSON ended, so it is not valid JSON" in result.stderr


def test_the_overflow_advice_says_what_works(tiny: dict[str, Path], tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    noise_image(1024, 768).save(big)
    line = one_error_line(
        run("chat", str(tiny["F16"]), "--mmproj", str(tiny["mmproj"]), "-i", str(big), "--ctx", "512", "-p", "hi")
    )
    assert "raise --ctx above" in line and "512x512 tiles" in line
    assert "image-tokens" not in line  # no hidden alias, no advice that barely helps a tiled image


def test_a_question_as_the_model_gets_the_p_hint_and_a_near_miss_a_suggestion(tmp_path: Path) -> None:
    env = {**NO_HUB, "HF_HUB_CACHE": str(tmp_path)}
    line = one_error_line(run("chat", "What is in this image?", env=env))
    assert "is not a model name" in line and "lfm2-edge chat -p 'What is in this image?'" in line
    word = one_error_line(run("chat", "describe", env=env))
    assert "unknown model 'describe'" in word and "-p" in word
    near = one_error_line(run("chat", "LFM2-VL-450", "-p", "hi", env=env))
    assert "did you mean LFM2-VL-450M?" in near


def test_help_info_ctx_and_verbose(tiny: dict[str, Path]) -> None:
    short = run("chat", "-h")
    assert short.returncode == 0 and "--top-p" in short.stdout
    helps = " ".join(short.stdout.split())
    for shown in ("--top-p <float range> [default: 1.0, off]", "--top-k <int range> [default: 0, off]"):
        assert shown in helps, shown
    assert re.search(r"--seed <int> .*\[default: a new one each answer\]", helps)
    info = run("info", "-m", str(tiny["F16"]))
    assert info.returncode == 0 and "architecture: lfm2" in info.stdout, info.stderr
    answer = run("chat", str(tiny["F16"]), "-p", "hi", "--max-tokens", "3", "--ctx", "400", "-v")
    assert answer.returncode == 0, answer.stderr
    assert "note: --ctx 400 is rounded up to 512 tokens" in answer.stderr
    figures = dict(re.findall(r"^(total duration|load duration):\s+([\d.]+)s$", answer.stderr, re.MULTILINE))
    assert float(figures["total duration"]) >= float(figures["load duration"])  # as ollama's, it includes the load


def _pty_run(args: list[str], env: dict[str, str]) -> str:
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lfm2_edge.cli", *args], stdin=slave, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=60)
    os.close(master)
    return out.decode("utf-8", "replace")


def test_models_reads_at_80_columns(tmp_path: Path, tiny: dict[str, Path]) -> None:
    repo = tmp_path / "models--LiquidAI--LFM2-VL-450M-GGUF"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    for name, src in (("LFM2-VL-450M-Q8_0.gguf", "F16"), ("mmproj-LFM2-VL-450M-F16.gguf", "mmproj")):
        (snap / name).write_bytes(tiny[src].read_bytes())
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "COLUMNS": "80", "TERM": "xterm"}
    screen = re.sub(r"\x1b\[[0-9;]*m", "", _pty_run(["models"], env))
    lines = [line for line in screen.splitlines() if line.strip()]
    row = next(line for line in lines if line.startswith("LFM2-VL-450M:Q8_0"))
    assert len(row) <= 80 and "+ mmproj-LFM2-VL-450M-F16.gguf" in row, screen
    assert str(snap / "LFM2-VL-450M-Q8_0.gguf") in screen.replace("\r\n", "").replace("\n", "")
    assert "…" not in screen and "┃" not in screen  # no table squeezed into slivers


def test_ctrl_c_during_pull_says_how_to_resume(tiny: dict[str, Path], tmp_path: Path) -> None:
    stub = HubStub()
    files = {"LFM2-VL-450M-Q4_0.gguf": tiny["Q4_0"].read_bytes(), "mmproj-LFM2-VL-450M-F16.gguf": b"x"}
    repo = stub.add_repo("LiquidAI/LFM2-VL-450M-GGUF", files)
    for f in repo.files.values():
        f.stall_after = 1000
    stub.start()
    try:
        env = {**os.environ, "HF_ENDPOINT": stub.url, "HF_HUB_CACHE": str(tmp_path / "hub"), "PYTHONUNBUFFERED": "1"}
        env.pop("HF_HUB_OFFLINE", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "lfm2_edge.cli", "pull", "LFM2-VL-450M:Q4_0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 60
        while not list((tmp_path / "hub").rglob("*.incomplete")):  # the download has started
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _out, errs = proc.communicate(timeout=60)
    finally:
        stub.stop()
    assert proc.returncode == 130, errs
    assert "pull stopped; `lfm2-edge pull LFM2-VL-450M:Q4_0` again resumes it" in errs
    assert "Traceback" not in errs


def test_the_hub_stand_in_recipe_says_what_it_does_at_once(tmp_path: Path, tiny: dict[str, Path]) -> None:
    (tmp_path / "model-Q4_0.gguf").write_bytes(tiny["Q4_0"].read_bytes())
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.hubstub", str(tmp_path), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("reading and hashing 1 files")
        assert proc.stdout.readline().startswith("serving LiquidAI/LFM2-VL-450M-GGUF")
    finally:
        proc.kill()
        proc.wait()
    stub = HubStub()
    f = stub.add_repo("r/x", {"a.gguf": b"abc"}).files["a.gguf"]
    assert f.sha256 == f.sha256 and f._digest is not None  # hashed once, then remembered
    f.data = b"abd"
    assert f.sha256 == __import__("hashlib").sha256(b"abd").hexdigest()  # a new content is hashed anew


def test_json_of_doctor_says_whether_the_device_is_busy() -> None:
    result = run("doctor", "--json")
    assert result.returncode == 0, result.stderr
    load = json.loads(result.stdout)["load"]
    assert set(load) >= {"cpus", "busy_cpus", "threads"} and load["threads"] >= 1
