"""The lfm2-edge command, run as a user runs it: a separate process."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lfm2_edge.testing import SHAPES, make_synthetic_model
from tests.conftest import noise_image


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lfm2_edge.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


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
    result = run(*chat_args(tiny, photo, "--prompt", "hi", "--max-tokens", "2", "--verbose"))
    assert result.returncode == 0
    assert "llama_model_loader" in result.stderr


def test_interactive_session(tiny: dict[str, Path], photo: Path) -> None:
    script = f"hello\n/image {photo}\nwhat is it?\n/image /missing.png\n/reset\n/bogus\n/exit\n"
    result = run(
        "chat",
        "--model",
        str(tiny["F16"]),
        "--mmproj",
        str(tiny["mmproj"]),
        "--max-tokens",
        "4",
        "--temperature",
        "0",
        stdin=script,
    )
    assert result.returncode == 0, result.stderr
    assert "image added (1 waiting" in result.stdout
    assert "conversation cleared" in result.stdout
    assert "unknown command /bogus" in result.stdout
    assert "image file not found: /missing.png" in result.stderr
    assert "Traceback" not in result.stderr


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


def _interrupt_an_answer(tiny: dict[str, Path], tmp: Path) -> tuple[int, str, str]:
    """Start a session, ask for a long answer, press Ctrl-C while it streams, ask again, exit.

    The random model ends its answers after a few hundred tokens (a few ms); a schema that
    wants 5000 numbers keeps it writing for seconds, so Ctrl-C lands mid-answer.
    """
    import signal

    schema = tmp / "long.json"
    schema.write_text('{"type": "array", "items": {"type": "integer"}, "minItems": 5000}')
    args = ["chat", "--model", str(tiny["F16"]), "--ctx", "4096", "--max-tokens", "2000", "--temperature", "0"]
    args += ["--schema", str(schema)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lfm2_edge.cli", *args, "--threads", "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # a shell's background job ignores SIGINT, and Python keeps an ignored SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdin is not None and proc.stdout is not None
    assert proc.stdout.readline().startswith("Commands:")  # the session is up
    proc.stdin.write("tell me everything\n")
    proc.stdin.flush()
    assert proc.stdout.read(2) == "> "
    proc.stdout.read(8)  # the answer has started streaming
    proc.send_signal(signal.SIGINT)
    out, errs = proc.communicate("and now?\n/exit\n", timeout=120)
    return proc.returncode, out, errs


def test_ctrl_c_stops_the_answer_not_the_session(tiny: dict[str, Path], tmp_path: Path) -> None:
    # Should the answer still end before the signal lands (then Ctrl-C ends the session at
    # its prompt, as it should), the run says nothing about stopping an answer: try again.
    for _ in range(3):
        code, out, errs = _interrupt_an_answer(tiny, tmp_path)
        assert code == 0 and "Traceback" not in errs, errs
        if "(stopped)" in out:
            break
    assert "(stopped)" in out, (out[:300], out[-300:], errs[-300:])
    _, after = out.split("(stopped)")
    # the session went on: a prompt, a second answer, and the prompt /exit answered
    assert after.lstrip("\n").startswith("> ") and after.endswith("\n> ")
    assert len(after) > 100


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
