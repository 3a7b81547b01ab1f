"""The lfm2-edge command, run as a user runs it: a separate process."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lfm2_edge.testing import SHAPES, make_synthetic_model
from tests.helpers import noise_image, run_cli

pytestmark = pytest.mark.slow  # the command line in child processes: `pytest -m 'not slow'` skips it

run = run_cli  # `lfm2-edge ARGS` in a process of its own (tests/helpers.py)


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "x.jpg"
    noise_image(320, 240).save(path)
    return path


def chat_args(tiny: dict[str, Path], photo: Path, *extra: str) -> list[str]:
    return ["chat", "--model", str(tiny["F16"]), "--mmproj", str(tiny["mmproj"]), "--image", str(photo), *extra]


def test_json_answer_has_usage_and_is_repeatable(tiny: dict[str, Path], photo: Path) -> None:
    args = chat_args(
        tiny, photo, "--prompt", "What is in this image?", "--max-tokens", "16", "--temperature", "0", "--json"
    )
    first, second = run(*args), run(*args)
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    assert data["usage"]["image_tokens"] == 80
    assert data["usage"]["completion_tokens"] == 16
    assert data["text"] and data["text"] == json.loads(second.stdout)["text"]
    assert data["timings"]["decode_tok_s"] > 0
    assert first.stderr == ""  # llama.cpp's log is silenced without --verbose


def test_prompt_streams_plain_text(tiny: dict[str, Path], photo: Path) -> None:
    plain = run(
        *chat_args(tiny, photo, "--prompt", "What is in this image?", "--max-tokens", "16", "--temperature", "0")
    )
    as_json = run(
        *chat_args(
            tiny, photo, "--prompt", "What is in this image?", "--max-tokens", "16", "--temperature", "0", "--json"
        )
    )
    assert plain.returncode == 0
    assert plain.stdout == json.loads(as_json.stdout)["text"] + "\n"


def test_verbose_shows_llama_cpp_log(tiny: dict[str, Path], photo: Path) -> None:
    result = run(*chat_args(tiny, photo, "--prompt", "hi", "--max-tokens", "2", "-vv"))
    assert result.returncode == 0
    assert "llama_model_loader" in result.stderr


def test_verbose_shows_the_answer_figures(tiny: dict[str, Path], photo: Path) -> None:
    result = run(*chat_args(tiny, photo, "--prompt", "hi", "--max-tokens", "4", "--verbose"))
    assert result.returncode == 0, result.stderr
    assert "llama_model_loader" not in result.stderr
    for figure in ("total duration:", "load duration:", "prompt eval rate:", "image encode:", "eval rate:"):
        assert figure in result.stderr, figure


def test_json_names_the_model_as_typed_with_rounded_timings(tiny: dict[str, Path], photo: Path) -> None:
    result = run(*chat_args(tiny, photo, "--prompt", "hi", "--max-tokens", "4", "--json"))
    data = json.loads(result.stdout)
    assert data["model"] == str(tiny["F16"])
    assert data["device"] == "CPU"  # where it ran (this machine has no GPU backend)
    assert data["timings"]["load_ms"] > 0
    for key, value in data["timings"].items():
        assert round(value, 2) == value, (key, value)


def test_a_schema_answer_cut_short_is_an_error(tiny: dict[str, Path], tmp_path: Path) -> None:
    schema = tmp_path / "long.json"
    schema.write_text('{"type": "array", "items": {"type": "integer"}, "minItems": 50}')
    result = run("chat", str(tiny["F16"]), "-p", "numbers", "--schema", str(schema), "--max-tokens", "8")
    assert result.returncode == 1
    assert "reached --max-tokens (8) before its JSON ended" in result.stderr


def test_version_help_and_usage_errors() -> None:
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("lfm2-edge ")
    usage = run("chat", "--temperature", "warm")
    assert usage.returncode == 2
    assert usage.stderr.count("\n") == 1 and usage.stderr.startswith("error: "), usage.stderr
    assert "--temperature" in usage.stderr and "--help" in usage.stderr
    helps = run("chat", "--help").stdout
    for shown in ("[default: 0.15]", "[default: 1.05]", "[default: the card's", "[default: LFM2-VL-450M:Q4_0]"):
        assert shown in " ".join(helps.split()), shown
    assert not re.search(r"\S \.$", helps, re.MULTILINE)  # no help ends in " ." (an eaten "[default]")


def test_info_json() -> None:
    result = run("info", "--json")
    assert result.returncode == 0
    data = json.loads(result.stdout)
    assert data["llama_cpp_python"] == "0.3.36"
    assert data["gpu_offload"] in (True, False) and data["threads"] >= 1
    assert "CPU" in data["system_info"]


@pytest.fixture(scope="module")
def wide_mmproj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An mmproj made for a 128-wide model: it does not belong to the tiny model."""
    tiny = SHAPES["tiny"]
    shape = dataclasses.replace(tiny, name="tiny-wide", lm=dataclasses.replace(tiny.lm, n_embd=128))
    return make_synthetic_model(tmp_path_factory.mktemp("wide"), shape, quants=[])["mmproj"]


def _bad_inputs(tiny: dict[str, Path], photo: Path, tmp: Path, wide_mmproj: Path) -> dict[str, tuple[list[str], str]]:
    not_gguf = tmp / "notes.gguf"
    not_gguf.write_text("hello")
    not_image = tmp / "notes.jpg"
    not_image.write_text("hello")
    truncated = tmp / "truncated.gguf"
    truncated.write_bytes(tiny["F16"].read_bytes()[:4096])
    big = tmp / "big.png"
    noise_image(1024, 768).save(big)
    m, p = str(tiny["F16"]), str(tiny["mmproj"])
    alone = tmp / "alone" / "model-F16.gguf"  # no mmproj next to it to be found
    alone.parent.mkdir()
    alone.write_bytes(tiny["F16"].read_bytes())
    return {
        "missing model": (["--model", str(tmp / "nope.gguf"), "--mmproj", p], "model file not found"),
        "missing mmproj": (["--model", m, "--mmproj", str(tmp / "nope.gguf")], "mmproj file not found"),
        "not gguf": (["--model", str(not_gguf), "--mmproj", p], "is not a GGUF file"),
        "truncated": (["--model", str(truncated), "--mmproj", p], "damaged or truncated GGUF"),
        "mmproj as model": (["--model", p, "--mmproj", p], "is a vision projector (mmproj)"),
        "model as mmproj": (["--model", m, "--mmproj", m], "not a vision projector"),
        "mismatched mmproj": (["--model", m, "--mmproj", str(wide_mmproj)], "projects to 128 dims but"),
        "not an image": (["--model", m, "--mmproj", p, "--image", str(not_image)], "is not an image"),
        "missing image": (["--model", m, "--mmproj", p, "--image", str(tmp / "none.jpg")], "image file not found"),
        "image without mmproj": (
            ["--model", str(alone), "--image", str(photo)],
            "has no vision projector: give --mmproj",
        ),
        "too many image tokens": (
            ["--model", m, "--mmproj", p, "--image", str(big), "--ctx", "512"],
            "but the context holds 512",
        ),
        "json without prompt": (["--model", m, "--json"], "--json needs --prompt"),
    }


def test_bad_input_exits_2_with_one_line(tiny: dict[str, Path], photo: Path, tmp_path: Path, wide_mmproj: Path) -> None:
    for name, (args, message) in _bad_inputs(tiny, photo, tmp_path, wide_mmproj).items():
        extra = [] if "--json" in args else ["--prompt", "hi"]
        result = run("chat", *args, *extra)
        assert result.returncode == 2, (name, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (name, result.stderr)
        assert lines[0].startswith("error: ") and message in lines[0], (name, lines[0])
        assert result.stdout == "", name


def test_bench_json_on_the_tiny_model(tiny: dict[str, Path]) -> None:
    result = run("bench", str(tiny["Q4_0"]), "--mmproj", str(tiny["mmproj"]), "--repeat", "1", "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["results"]
    for key in (
        "load_ms",
        "image_512x512_ms",
        "image_1024x768_ms",
        "prefill_tok_s",
        "decode_tok_s",
        "ttft_turn1_ms",
        "ttft_turn2_ms",
        "peak_rss_mib",
    ):
        assert row[key] > 0, key
    # turn 2 of the conversation: no image encoded, only the new tokens evaluated
    assert row["turn2_image_encodes"] == 0
    assert 0 < row["turn2_evaluated_tokens"] < row["turn2_prompt_tokens"] / 2
    peer = row["peer"]
    assert peer["ttft_turn1_ms"] > 0 and peer["ttft_turn2_ms"] > 0 and peer["decode_tok_s"] > 0
    assert set(row["ratios"]) == {
        "turn2_over_turn1_ttft",
        "peer_turn2_over_ours",
        "peer_turn1_over_ours",
        "decode_over_llama_cpp",
        "decode_over_peer",
    }


def test_bench_without_models_says_how_to_make_them(tmp_path: Path) -> None:
    result = run("bench", str(tmp_path / "model-Q4_0.gguf"))
    assert result.returncode == 2
    assert "run `make models`" in result.stderr


@pytest.mark.parametrize("kind", ["/dev/zero", "fifo", "directory", "too large"])
def test_schema_that_is_not_a_small_regular_file_is_one_line_at_once(tmp_path: Path, kind: str) -> None:
    """--schema is read with a bound, and never from a device, FIFO or directory (no hang, no endless read)."""
    if kind == "/dev/zero":
        schema, message = Path("/dev/zero"), "not a regular file"
    elif kind == "fifo":
        schema, message = tmp_path / "schema.json", "not a regular file"
        os.mkfifo(schema)  # nobody writes it: opening it for reading would block forever
    elif kind == "directory":
        schema, message = tmp_path, "is a directory"
    else:
        schema, message = tmp_path / "big.json", "larger than 1 MiB"
        schema.write_text('{"description": "' + "x" * (1 << 20) + '"}')
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = ["chat", "--model", str(tmp_path / "never-read.gguf"), "--prompt", "hi", "--schema", str(schema)]
    result = subprocess.run(
        [sys.executable, "-m", "lfm2_edge.cli", *args], capture_output=True, text=True, timeout=30, env=env
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "--schema" in lines[0] and str(schema) in lines[0], lines[0]


def test_a_hub_that_never_answers_times_out_with_a_way_out(tmp_path: Path) -> None:
    import socket

    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        env = {
            **os.environ,
            "HF_ENDPOINT": f"http://127.0.0.1:{silent.getsockname()[1]}",
            "HF_HUB_CACHE": str(tmp_path),
            "HF_HUB_ETAG_TIMEOUT": "1",
        }
        env.pop("HF_HUB_OFFLINE", None)
        result = subprocess.run(
            [sys.executable, "-m", "lfm2_edge.cli", "chat", "LFM2-VL-450M", "-p", "hi"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "did not answer within 1 s" in line and "LiquidAI/LFM2-VL-450M-GGUF" in line
    assert "HF_HUB_OFFLINE=1" in line and ".gguf path" in line


def test_doctor_estimates_a_model_without_downloading_it(tmp_path: Path) -> None:
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path)}  # no hub at all
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run(
        [sys.executable, "-m", "lfm2_edge.cli", "doctor", "--model", "LFM2.5-VL-1.6B", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["model"]["name"] == "LFM2.5-VL-1.6B:Q4_0" and "not downloaded" in data["model"]["source"]
    rec = data["recommendation"]
    assert rec["command"].startswith("lfm2-edge chat LFM2") and "reserve_mib" in rec
    if not data["gpus"]:  # a CPU: the speed is estimated, and Q4_0 is the fast quant there
        assert rec["expected_tok_s"] > 0 and rec["model"].endswith(":Q4_0")
    assert not any(tmp_path.iterdir())  # nothing downloaded
    text = run("doctor").stdout
    assert "left over" not in text and "kept in reserve" in text and "try: lfm2-edge chat " in text


def test_every_model_command_takes_model_as_an_option(tmp_path: Path) -> None:
    measure = run("doctor", "--measure")
    assert measure.returncode == 2 and "--measure needs a MODEL" in measure.stderr
    for args in (["pull", "--model", str(tmp_path / "x.gguf")], ["rm", "--model", "LFM2-VL-450M:Q8_0"]):
        result = run(*args)
        assert "No such option" not in result.stderr, (args, result.stderr)
    bench = run("bench", "--model", str(tmp_path / "model-Q4_0.gguf"))
    assert bench.returncode == 2 and "run `make models`" in bench.stderr


def test_models_lists_one_row_per_quant_with_whole_paths_when_piped(tmp_path: Path, tiny: dict[str, Path]) -> None:
    repo = tmp_path / "models--LiquidAI--LFM2-VL-450M-GGUF"
    snap = repo / "snapshots" / ("a" * 40) / "a-rather-long-directory-name-so-that-a-table-would-cut-it"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    for name, src in (("LFM2-VL-450M-Q8_0.gguf", "F16"), ("mmproj-LFM2-VL-450M-F16.gguf", "mmproj")):
        (snap / name).write_bytes(tiny[src].read_bytes())
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "COLUMNS": "60"}
    result = subprocess.run(
        [sys.executable, "-m", "lfm2_edge.cli", "models"], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()  # the mmproj is not a row of its own
    name, _size, projector, path = line.split("\t")
    assert name == "LFM2-VL-450M:Q8_0" and projector == "+ mmproj-LFM2-VL-450M-F16.gguf"
    assert path == str(snap / "LFM2-VL-450M-Q8_0.gguf") and "…" not in result.stdout


def test_serve_as_a_sidecar_port_0_ready_line_and_parent_pid(tiny: dict[str, Path]) -> None:
    import time
    import urllib.request

    parent = subprocess.Popen(["sleep", "60"])
    args = ["serve", str(tiny["F16"]), "--mmproj", str(tiny["mmproj"]), "--port", "0", "--parent-pid", str(parent.pid)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lfm2_edge.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "ready" and ready["port"] > 0 and ready["pid"] == proc.pid
        assert ready["url"] == f"http://127.0.0.1:{ready['port']}/v1"
        with urllib.request.urlopen(ready["url"].removesuffix("/v1") + "/health", timeout=10) as r:
            assert r.status == 200
        parent.kill()
        parent.wait()
        t0 = time.monotonic()
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - t0 < 10
    finally:
        parent.kill()
        proc.kill()


def test_bench_takes_the_placement_and_reports_the_device(tiny: dict[str, Path]) -> None:
    result = run(
        "bench",
        str(tiny["Q4_0"]),
        "--mmproj",
        str(tiny["mmproj"]),
        "--repeat",
        "1",
        "--no-peer",
        "--gpu-layers",
        "0",
        "--device",
        "CPU",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["results"]
    assert row["device"] == "CPU"


def test_system_empty_sends_no_system_message(tmp_path_factory: pytest.TempPathFactory, photo: Path) -> None:
    # the published LFM2-VL template adds no system turn of its own: what the CLI sends shows
    files = make_synthetic_model(tmp_path_factory.mktemp("lfm2-vl"), "lfm2-vl", quants=[])
    from lfm2_edge import VisionModel

    with VisionModel(files["F16"], files["mmproj"], system_prompt=None) as vm:
        bare = vm.chat("hi", images=[str(photo)], max_tokens=1).usage.prompt_tokens

    def prompt_tokens(*extra: str) -> int:
        args = ["chat", str(files["F16"]), "--mmproj", str(files["mmproj"]), "-i", str(photo), "-p", "hi"]
        result = run(*args, "--max-tokens", "1", "--json", *extra)
        assert result.returncode == 0, result.stderr
        return int(json.loads(result.stdout)["usage"]["prompt_tokens"])

    assert prompt_tokens("--system", "") == bare < prompt_tokens()  # the card's system prompt by default
