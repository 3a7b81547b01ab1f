"""``lfm2-edge batch``: a folder with bad files in it, Ctrl-C and kill -9 then a rerun,
--schema to CSV, an OpenAI Batch file round trip, --endpoint with a dead server, and
the Python entry; on the tiny synthetic model, through the real CLI in a child process."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from PIL import Image

from lfm2_edge import VisionModel
from lfm2_edge.jobs.batch import batch
from lfm2_edge.jobs.outputs import make_writer
from tests.helpers import data_uri, free_port, noise_image, run_cli, start_server

pytestmark = pytest.mark.slow

FAST = ["--slots", "2", "--ctx", "2048", "--max-tokens", "3", "--temperature", "0", "--readers", "2"]


def model_args(tiny: dict[str, Path]) -> list[str]:
    return [str(tiny["F16"]), "--mmproj", str(tiny["mmproj"])]


def photos(folder: Path, n: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        path = folder / f"p{i:03d}.png"
        noise_image(40 + (i % 5) * 8, 32 + (i % 3) * 8, seed=i).save(path)
        out.append(path)
    return out


def lines(path: Path) -> list[dict[str, Any]]:
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), "the last line is torn"
    return [json.loads(line) for line in raw.decode().splitlines()]


def test_a_folder_with_bad_files_gives_35_answers_and_5_error_records(tiny: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    good = photos(folder, 34)
    shutil.copy(good[0], folder / "z-duplicate.png")
    (folder / "c1-truncated.png").write_bytes(good[1].read_bytes()[:120])
    (folder / "c2-garbage.png").write_bytes(os.urandom(3000))
    (folder / "c3-empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is a text file named .jpg\n")
    Image.new("RGB", (8000, 8000), (20, 120, 40)).save(folder / "huge.png")
    out = tmp_path / "out.jsonl"
    proc = run_cli("batch", *model_args(tiny), str(folder), "--out", str(out), *FAST, "--json")
    assert proc.returncode == 1, proc.stderr  # documented: 1 when some items are error records
    records = lines(out)
    assert len(records) == 40 and len({r["id"] for r in records}) == 40
    errors = {r["id"]: r["error"] for r in records if r["error"]}
    assert set(errors) == {"c1-truncated.png", "c2-garbage.png", "c3-empty.jpg", "notes.jpg", "huge.png"}
    assert all("\n" not in e and e for e in errors.values())
    assert "not an image" in errors["notes.jpg"] and "empty" in errors["c3-empty.jpg"]
    assert "8000" not in errors["huge.png"] or "tokens" in errors["huge.png"]
    answers = {r["id"]: r for r in records if not r["error"]}
    assert len(answers) == 35
    # the duplicate's tiles were encoded once: one of the pair ran the encoder, the other none
    pair = [answers["p000.png"]["usage"]["image_encodes"], answers["z-duplicate.png"]["usage"]["image_encodes"]]
    assert sorted(pair)[0] == 0 and sorted(pair)[1] >= 1
    assert answers["p000.png"]["answer"] == answers["z-duplicate.png"]["answer"]
    summary = json.loads(proc.stdout)
    assert (summary["answered"], summary["failed"], summary["skipped"]) == (35, 5, 0)
    # a rerun: nothing to do, nothing written, the file not truncated
    size = out.stat().st_size
    again = run_cli("batch", *model_args(tiny), str(folder), "--out", str(out), *FAST, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["skipped"] == 40 and out.stat().st_size == size


def _start(tiny: dict[str, Path], folder: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lfm2_edge.cli", "batch", *model_args(tiny), str(folder), "--out", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _wait_lines(out: Path, n: int, proc: subprocess.Popen[str], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.exists() and out.read_bytes().count(b"\n") >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the batch wrote too few lines")


@pytest.mark.parametrize("how", ["sigint", "kill"])
def test_an_interrupted_run_resumes_every_item_exactly_once(tiny: dict[str, Path], tmp_path: Path, how: str) -> None:
    folder = tmp_path / "imgs"
    photos(folder, 14)
    out = tmp_path / "out.jsonl"
    slow = ["--slots", "2", "--ctx", "2048", "--max-tokens", "24", "--temperature", "0"]
    proc = _start(tiny, folder, out, *slow)
    _wait_lines(out, 3, proc)
    proc.send_signal(signal.SIGINT if how == "sigint" else signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    first = lines(out)
    if how == "sigint":
        assert proc.returncode == 130, stderr
        assert "resume" in stderr and "Traceback" not in stderr
    else:
        assert proc.returncode == -signal.SIGKILL
    assert 3 <= len(first) < 14
    again = run_cli("batch", *model_args(tiny), str(folder), "--out", str(out), *slow, "--json")
    assert again.returncode == 0, again.stderr
    records = lines(out)
    ids = [r["id"] for r in records]
    assert sorted(ids) == sorted(f"p{i:03d}.png" for i in range(14))  # each exactly once
    assert records[: len(first)] == first  # what the first run finished was kept, untouched
    assert json.loads(again.stdout)["skipped"] == len(first)


SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"type": "string", "enum": ["red", "green", "blue"]},
        "outdoor": {"type": "boolean"},
        "label": {"type": "string", "maxLength": 6},
    },
    "required": ["color", "outdoor", "label"],
    "additionalProperties": False,
}


def test_a_schema_job_validates_every_answer_and_the_csv_reads_back(tiny: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    photos(folder, 20)
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    out = tmp_path / "out.csv"
    args = ["--slots", "2", "--ctx", "2048", "--max-tokens", "60", "--temperature", "1", "--seed", "3"]
    proc = run_cli(
        "batch", *model_args(tiny), str(folder), "--schema", str(schema), "--out", str(out), "--sidecar", "json", *args
    )
    assert proc.returncode == 0, proc.stderr
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "source", "color", "outdoor", "label", "error", "key"]
    assert len(rows) == 20 and all(r["error"] == "" for r in rows)
    for row in rows:
        sidecar = json.loads((folder / row["id"]).with_suffix(".json").read_text())
        jsonschema.validate(sidecar["json"], SCHEMA)
        assert row["color"] == sidecar["json"]["color"] and row["label"] == sidecar["json"]["label"]


def test_an_answer_cut_by_max_tokens_is_retried_once_then_an_error(vm: VisionModel, tmp_path: Path) -> None:
    paths = photos(tmp_path, 2)
    long_schema = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
    records = list(batch(vm, [str(p) for p in paths], schema=long_schema, max_tokens=4, temperature=0))
    assert len(records) == 2
    for r in records:
        assert r["attempts"] == 2 and "cut at max_tokens=16" in r["error"]


def test_an_openai_batch_file_round_trips_into_batch_output(tiny: dict[str, Path], tmp_path: Path) -> None:
    from openai.types import BatchError
    from openai.types.chat import ChatCompletion

    def line(custom_id: str, url: str) -> str:
        body = {
            "model": "LFM2-VL-450M",
            "max_tokens": 4,
            "temperature": 0,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What?"}],
                }
            ],
        }
        return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})

    src = tmp_path / "requests.jsonl"
    bad = "data:image/png;base64,aGVsbG8="
    src.write_text("\n".join([line("a", data_uri(1)), line("b", data_uri(2)), line("c", bad)]) + "\n")
    out = tmp_path / "results.jsonl"
    proc = run_cli("batch", *model_args(tiny), str(src), "--out", str(out), "--slots", "2", "--ctx", "2048")
    assert proc.returncode == 1, proc.stderr
    results = {r["custom_id"]: r for r in lines(out)}
    assert set(results) == {"a", "b", "c"}
    for cid in ("a", "b"):
        r = results[cid]
        assert r["error"] is None and r["response"]["status_code"] == 200 and r["id"].startswith("batch_req_")
        completion = ChatCompletion.model_validate(r["response"]["body"])
        assert completion.choices[0].message.role == "assistant" and completion.usage is not None
        assert completion.usage.completion_tokens <= 4
    failed = results["c"]
    assert failed["response"]["status_code"] == 400
    error = BatchError.model_validate(failed["error"])
    assert error.code == "invalid_image" and error.message


def test_endpoints_share_the_job_and_a_dead_one_is_retried_around(vm: VisionModel, tmp_path: Path) -> None:
    from lfm2_edge.jobs.backends import RemoteBackend
    from lfm2_edge.jobs.batch import BatchOptions, Runner
    from lfm2_edge.jobs.inputs import items_of
    from lfm2_edge.server.config import ServerConfig

    paths = [str(p) for p in photos(tmp_path, 4)]
    local = {r["id"]: r["answer"] for r in batch(vm, paths, prompt="What?", max_tokens=3, temperature=0)}
    model = VisionModel(vm.model_path, vm.mmproj_path, n_ctx=2 * 2048, n_seq_max=2)  # the server closes it
    served = start_server([model], ServerConfig(model_names=["m"]))
    try:
        dead = f"http://127.0.0.1:{free_port()}"
        backend = RemoteBackend([served.url, dead], model="m", per_endpoint=2, retries=3, backoff_s=0.05)
        opts = BatchOptions(prompt="What?", options={"max_tokens": 3, "temperature": 0})
        records = list(Runner(backend, opts).run(items_of(paths)))
        backend.close()
    finally:
        served.stop()
        model.close()
    assert sorted(r["id"] for r in records) == sorted(paths)
    assert all(r["error"] is None for r in records), [r["error"] for r in records]
    assert {r["id"]: r["answer"] for r in records} == local


def test_the_python_entry_resumes_with_a_writer_and_redoes_a_changed_image(vm: VisionModel, tmp_path: Path) -> None:
    paths = photos(tmp_path / "imgs", 3)
    out = tmp_path / "out.jsonl"

    def run() -> list[dict[str, Any]]:
        writer = make_writer(out, kind="images", schema=None, sidecar=None)
        try:
            return list(batch(vm, [str(p) for p in paths], prompt="What?", writer=writer, max_tokens=3, temperature=0))
        finally:
            writer.close()

    assert len(run()) == 3
    assert run() == []  # all done
    noise_image(48, 40, seed=99).save(paths[1])  # a changed image is answered again
    redone = run()
    assert [r["id"] for r in redone] == [str(paths[1])]
    assert [r["id"] for r in lines(out)].count(str(paths[1])) == 2


def test_input_mistakes_are_one_line_and_exit_2(tiny: dict[str, Path], tmp_path: Path) -> None:
    missing = run_cli("batch", *model_args(tiny), str(tmp_path / "nope"), "--out", str(tmp_path / "o.jsonl"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "m.csv").write_text("id,image\na,x.png\na,y.png\n")
    dup = run_cli("batch", *model_args(tiny), str(tmp_path / "m.csv"), "--out", str(tmp_path / "o.jsonl"))
    assert dup.returncode == 2 and "two items have the id 'a'" in dup.stderr
    (tmp_path / "s.json").write_text('{"type": "nope"}')
    bad = run_cli(
        "batch", *model_args(tiny), str(tmp_path / "m.csv"), "--schema", str(tmp_path / "s.json"), "--out", "o.csv"
    )
    assert bad.returncode == 2 and "not a valid JSON schema" in bad.stderr
