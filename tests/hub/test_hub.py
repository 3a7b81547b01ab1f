"""Catalog, pull, cache and offline use, against a hub stand-in on 127.0.0.1.

The real ``huggingface_hub`` client code runs: file lists, metadata (etag = sha256, size)
and ranged downloads all go over HTTP to :mod:`tests.hubstub`.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lfm2_edge.errors import (
    AccessDeniedError,
    DownloadError,
    HubUnavailableError,
    ModelFileError,
    UnknownModelError,
    UnknownQuantError,
)
from lfm2_edge.hub.catalog import CATALOG, TEXT_SAMPLING, VL_SAMPLING, choose_files, parse_ref, quant_of
from lfm2_edge.hub.download import Hub
from tests.helpers import noise_image, run_cli
from tests.hubstub import HubStub

REPO = "LiquidAI/LFM2-VL-450M-GGUF"
TEXT_REPO = "LiquidAI/LFM2-350M-GGUF"


@pytest.fixture(scope="session")
def repo_files(tiny: dict[str, Path]) -> dict[str, bytes]:
    """The tiny synthetic pair under the real repo's file names."""
    files = {f"LFM2-VL-450M-{q}.gguf": tiny[q].read_bytes() for q in ("F16", "Q8_0", "Q4_0")}
    files["mmproj-LFM2-VL-450M-F16.gguf"] = tiny["mmproj"].read_bytes()
    return files


@pytest.fixture
def stub(repo_files: dict[str, bytes], tiny: dict[str, Path]) -> Iterator[HubStub]:
    hub = HubStub()
    hub.add_repo(REPO, repo_files)
    hub.add_repo(TEXT_REPO, {"LFM2-350M-Q4_0.gguf": tiny["Q4_0"].read_bytes()})
    hub.start()
    yield hub
    hub.stop()


@pytest.fixture
def hub(stub: HubStub, tmp_path: Path) -> Hub:
    return Hub(cache_dir=tmp_path / "cache", endpoint=stub.url, token=None, offline=False)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if p.name.endswith(".incomplete"))


# -- catalog ---------------------------------------------------------------------------


def test_catalog_has_the_four_vl_models_and_text_models_with_card_presets() -> None:
    names = {e.name: e for e in CATALOG}
    for name in ("LFM2-VL-450M", "LFM2-VL-1.6B", "LFM2.5-VL-450M", "LFM2.5-VL-1.6B"):
        entry = names[name]
        assert entry.repo == f"LiquidAI/{name}-GGUF"
        assert (entry.family, entry.sampling, entry.image_min_tokens, entry.image_max_tokens) == (
            "vl",
            VL_SAMPLING,
            32 if name == "LFM2.5-VL-450M" else 64,  # the LFM2.5-VL-450M card's floor
            256,
        )
    text = [e for e in CATALOG if e.family == "text"]
    assert {e.name for e in text} >= {"LFM2-350M", "LFM2-700M", "LFM2-1.2B", "LFM2.5-1.2B-Instruct"}
    # the LFM2 cards' text sampling; the LFM2.5 cards' own and the Nanos' greedy one: test_catalog.CARDS
    lfm2 = [e for e in text if e.name in ("LFM2-350M", "LFM2-700M", "LFM2-1.2B", "LFM2-2.6B", "LFM2-8B-A1B")]
    assert len(lfm2) == 5 and all(e.sampling.temperature == 0.3 and e.sampling.min_p == 0.15 for e in lfm2)


def test_references_parse() -> None:
    ref = parse_ref("lfm2-vl-450m:q8_0")
    assert (ref.repo, ref.quant, ref.entry and ref.entry.name) == (REPO, "Q8_0", "LFM2-VL-450M")
    default = parse_ref(None)
    assert (default.repo, default.quant) == (REPO, "Q4_0")
    other = parse_ref("someone/Other-GGUF:Q5_K_M")
    assert (other.repo, other.quant, other.entry) == ("someone/Other-GGUF", "Q5_K_M", None)
    assert parse_ref("./x/model.gguf").is_local
    with pytest.raises(UnknownModelError, match=r"unknown model 'LFM9'.*LFM2-VL-450M"):
        parse_ref("LFM9")


def test_file_names_come_from_the_file_list() -> None:
    assert [quant_of(f) for f in ("A-Q4_0.gguf", "mmproj-A-F16.gguf", "a.Q5_K_M.gguf", "plain.gguf")] == [
        "Q4_0",
        "F16",
        "Q5_K_M",
        None,
    ]
    files = ["README.md", "X-Q4_0.gguf", "X-Q8_0.gguf", "X-IQ4_XS.gguf", "mmproj-X-F16.gguf", "mmproj-X-Q8_0.gguf"]
    ref = parse_ref("LFM2-VL-450M")
    pick = choose_files(ref, files)
    assert (pick.quant, pick.model, pick.mmproj) == ("Q4_0", "X-Q4_0.gguf", "mmproj-X-Q8_0.gguf")
    assert choose_files(parse_ref("LFM2-VL-450M:IQ4_XS"), files).model == "X-IQ4_XS.gguf"  # a quant not in any list
    with pytest.raises(UnknownQuantError, match=r"no quant Q2_K .*available: Q4_0, Q8_0, IQ4_XS"):
        choose_files(parse_ref("LFM2-VL-450M:Q2_K"), files)


# -- pull, cache, resume, verification -------------------------------------------------


def test_first_pull_downloads_and_the_second_makes_no_request(
    hub: Hub, stub: HubStub, repo_files: dict[str, bytes]
) -> None:
    got = hub.pull("LFM2-VL-450M:Q4_0")
    assert got.downloaded
    assert got.model_path.name == "LFM2-VL-450M-Q4_0.gguf"
    assert got.mmproj_path is not None and got.mmproj_path.name == "mmproj-LFM2-VL-450M-F16.gguf"
    assert sha(got.model_path.read_bytes()) == sha(repo_files["LFM2-VL-450M-Q4_0.gguf"])
    assert got.model_path.resolve().name == sha(repo_files["LFM2-VL-450M-Q4_0.gguf"])  # blob named by sha256
    methods = [(e["method"], e["path"].rsplit("/", 1)[-1]) for e in stub.log]
    assert methods == [
        ("GET", "main"),
        ("HEAD", "LFM2-VL-450M-Q4_0.gguf"),
        ("GET", "LFM2-VL-450M-Q4_0.gguf"),
        ("HEAD", "mmproj-LFM2-VL-450M-F16.gguf"),
        ("GET", "mmproj-LFM2-VL-450M-F16.gguf"),
    ]
    stub.log.clear()
    again = hub.pull("LFM2-VL-450M:Q4_0")
    assert (again.model_path, again.downloaded, stub.log) == (got.model_path, False, [])
    # huggingface_hub itself reads the same cache
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(REPO, "LFM2-VL-450M-Q4_0.gguf", cache_dir=hub.cache_dir)
    assert found == str(got.model_path)


@pytest.mark.slow
def test_a_dropped_connection_is_resumed(hub: Hub, stub: HubStub, repo_files: dict[str, bytes]) -> None:
    name = "LFM2-VL-450M-Q8_0.gguf"
    stub.repos[REPO].files[name].drop_after = 50_000
    got = hub.pull("LFM2-VL-450M:Q8_0")
    assert sha(got.model_path.read_bytes()) == sha(repo_files[name])
    assert [e["method"] for e in stub.log if e["path"].endswith(name)] == ["HEAD", "GET", "GET"]
    assert leftovers(hub.cache_dir) == []


def test_an_interrupted_download_resumes_in_the_next_run(hub: Hub, stub: HubStub, repo_files: dict[str, bytes]) -> None:
    name = "LFM2-VL-450M-Q4_0.gguf"
    data = repo_files[name]
    blobs = hub.cache_dir / "models--LiquidAI--LFM2-VL-450M-GGUF" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{sha(data)}.incomplete").write_bytes(data[:100_000])  # what a killed run left
    got = hub.pull("LFM2-VL-450M:Q4_0")
    assert got.model_path.read_bytes() == data
    ranges = [e["range"] for e in stub.log if e["method"] == "GET" and e["path"].endswith(name)]
    assert ranges == ["bytes=100000-"]
    assert leftovers(hub.cache_dir) == []


def test_a_corrupted_download_is_detected_and_not_kept(hub: Hub, stub: HubStub) -> None:
    stub.repos[REPO].files["LFM2-VL-450M-Q4_0.gguf"].corrupt = True
    with pytest.raises(DownloadError, match=r"LFM2-VL-450M-Q4_0.gguf failed its sha256 check"):
        hub.pull("LFM2-VL-450M:Q4_0")
    repo_dir = hub.cache_dir / "models--LiquidAI--LFM2-VL-450M-GGUF"
    assert list(repo_dir.glob("snapshots/*/*")) == []
    assert [p.name for p in (repo_dir / "blobs").iterdir()] == []
    stub.repos[REPO].files["LFM2-VL-450M-Q4_0.gguf"].corrupt = False
    assert hub.pull("LFM2-VL-450M:Q4_0").downloaded


def test_a_damaged_cached_file_is_not_loaded_and_pull_repairs_it(hub: Hub, stub: HubStub) -> None:
    from lfm2_edge import VisionModel

    got = hub.pull("LFM2-VL-450M:Q4_0")
    blob = got.model_path.resolve()
    blob.write_bytes(blob.read_bytes()[:-4096])  # truncated on disk
    with pytest.raises(ModelFileError, match=r"cached copy of LFM2-VL-450M:Q4_0 is damaged.*lfm2-edge pull"):
        VisionModel.from_pretrained("LFM2-VL-450M:Q4_0", hub=hub)
    stub.log.clear()
    repaired = hub.pull("LFM2-VL-450M:Q4_0")
    assert repaired.downloaded and [e["method"] for e in stub.log].count("GET") == 2  # tree + the one file
    with VisionModel.from_pretrained("LFM2-VL-450M:Q4_0", hub=hub) as vm:
        assert vm.chat("hi", max_tokens=2).usage.completion_tokens >= 1


def test_offline_runs_from_the_cache_and_fails_clearly_when_not_cached(hub: Hub, stub: HubStub) -> None:
    from lfm2_edge import VisionModel

    hub.pull("LFM2-VL-450M:Q4_0")
    stub.log.clear()
    offline = Hub(cache_dir=hub.cache_dir, endpoint=stub.url, offline=True)
    with VisionModel.from_pretrained("LFM2-VL-450M:Q4_0", hub=offline) as vm:
        result = vm.chat("What is this?", images=[noise_image(64, 64)], max_tokens=3)
        assert result.usage.image_tokens > 0
        assert (vm.sampling, vm.system_prompt) == (VL_SAMPLING, "You are a helpful multimodal assistant by Liquid AI.")
    assert stub.log == []
    with pytest.raises(
        HubUnavailableError, match=r"LFM2-VL-450M:Q8_0 is not in the cache .*cached: Q4_0.*HF_HUB_OFFLINE"
    ):
        offline.resolve("LFM2-VL-450M:Q8_0")
    assert stub.log == []


def test_no_network_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    hub = Hub(cache_dir=tmp_path, endpoint=f"http://127.0.0.1:{port}", offline=False)
    with pytest.raises(
        HubUnavailableError,
        match=r"cannot reach the hub at http://127\.0\.0\.1:\d+ .*models already pulled run without it",
    ):
        hub.resolve("LFM2-VL-450M")


def test_unknown_repo_and_unknown_quant(hub: Hub) -> None:
    with pytest.raises(UnknownModelError, match="repo nobody/Nothing-GGUF was not found"):
        hub.resolve("nobody/Nothing-GGUF")
    with pytest.raises(UnknownQuantError, match=r"LFM2-VL-450M has no quant Q5_K_M .*available: Q4_0, Q8_0, F16"):
        hub.resolve("LFM2-VL-450M:Q5_K_M")


def test_gated_repo_needs_a_token(hub: Hub, stub: HubStub) -> None:
    stub.repos[REPO].gated_token = "hf_secret"
    with pytest.raises(AccessDeniedError, match=r"is gated.*set HF_TOKEN"):
        hub.resolve("LFM2-VL-450M:Q4_0")
    authed = Hub(cache_dir=hub.cache_dir, endpoint=stub.url, token="hf_secret", offline=False)
    assert authed.pull("LFM2-VL-450M:Q4_0").downloaded


def test_a_file_larger_than_the_free_disk_is_refused_before_downloading(hub: Hub, stub: HubStub) -> None:
    stub.repos[REPO].files["LFM2-VL-450M-Q4_0.gguf"].fake_size = 10**18
    with pytest.raises(DownloadError, match=r"not enough disk space for LFM2-VL-450M-Q4_0.gguf"):
        hub.pull("LFM2-VL-450M:Q4_0")
    assert not [e for e in stub.log if e["method"] == "GET" and e["path"].endswith(".gguf")]
    assert list(hub.cache_dir.rglob("*.gguf")) == []


def test_models_lists_and_rm_removes(hub: Hub) -> None:
    hub.pull("LFM2-VL-450M:Q4_0")
    hub.pull("LFM2-VL-450M:Q8_0")
    listed = {(f.name, f.quant, f.is_mmproj) for f in hub.cached()}
    assert listed == {("LFM2-VL-450M", "Q4_0", False), ("LFM2-VL-450M", "Q8_0", False), ("LFM2-VL-450M", "F16", True)}
    assert [f.filename for f in hub.remove("LFM2-VL-450M:Q4_0")] == ["LFM2-VL-450M-Q4_0.gguf"]
    removed = {f.filename for f in hub.remove("LFM2-VL-450M:Q8_0")}  # the projector goes with the last quant
    assert removed == {"LFM2-VL-450M-Q8_0.gguf", "mmproj-LFM2-VL-450M-F16.gguf"}
    assert hub.cached() == []
    assert [p for p in hub.cache_dir.rglob("*") if p.is_file() and p.parent.name == "blobs"] == []
    with pytest.raises(UnknownModelError, match="not in the cache"):
        hub.remove("LFM2-VL-450M")


def test_text_model_from_the_hub_gets_the_text_presets(hub: Hub) -> None:
    from lfm2_edge import VisionModel
    from lfm2_edge.hub.catalog import DEFAULT_TEXT_SYSTEM_PROMPT

    with VisionModel.from_pretrained("LFM2-350M", hub=hub) as vm:
        assert vm.mmproj_path is None
        assert (vm.sampling, vm.system_prompt) == (TEXT_SAMPLING, DEFAULT_TEXT_SYSTEM_PROMPT)
        assert vm.chat("Hello", max_tokens=2).usage.image_tokens == 0


# -- the CLI, end to end ---------------------------------------------------------------


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env, drop=("HF_HUB_OFFLINE", "HF_TOKEN", "HF_HOME"))  # type: ignore[no-any-return]


@pytest.mark.slow
def test_cli_pull_then_chat_with_the_network_gone(stub: HubStub, tmp_path: Path) -> None:
    env = {"HF_ENDPOINT": stub.url, "HF_HUB_CACHE": str(tmp_path / "hub")}
    pulled = cli("pull", "LFM2-VL-450M:Q4_0", env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert "LFM2-VL-450M-Q4_0.gguf" in pulled.stderr and "mmproj-LFM2-VL-450M-F16.gguf" in pulled.stderr
    assert "━" in pulled.stderr  # the progress bar
    stub.stop()  # the network is gone
    image = tmp_path / "x.jpg"
    noise_image(96, 64).save(image)
    answer = cli(
        "chat", "LFM2-VL-450M:Q4_0", "--image", str(image), "--prompt", "hi", "--json", "--max-tokens", "3", env=env
    )
    assert answer.returncode == 0, answer.stderr
    data = json.loads(answer.stdout)
    assert data["usage"]["image_tokens"] > 0 and data["model_path"].endswith("LFM2-VL-450M-Q4_0.gguf")
    listed = json.loads(cli("models", "--json", env=env).stdout)
    assert {(m["name"], m["quant"], m["kind"]) for m in listed} == {
        ("LFM2-VL-450M", "Q4_0", "model"),
        ("LFM2-VL-450M", "F16", "mmproj"),
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["pull", "LFM2-VL-450M:Q5_K"],
            "has no quant Q5_K in LiquidAI/LFM2-VL-450M-GGUF on the hub; available: Q4_0, Q8_0, F16",
        ),
        (["pull", "LFM2-VL-9B"], "unknown model 'LFM2-VL-9B'"),
        (["rm", "LFM2-VL-450M:Q4_0"], "not in the cache"),
        (["chat", "LFM2-VL-450M", "--model", "other.gguf", "--prompt", "x"], "give the model once"),
        (["chat", "LFM2-350M", "--image", "missing.png", "--prompt", "x"], "missing.png"),
    ],
)
def test_cli_hub_errors_are_one_line(stub: HubStub, tmp_path: Path, args: list[str], message: str) -> None:
    env = {"HF_ENDPOINT": stub.url, "HF_HUB_CACHE": str(tmp_path / "hub")}
    proc = cli(*args, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


# -- a cache that cannot be written ----------------------------------------------------


def _one_error_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_cli_pull_into_a_cache_under_a_file_is_one_line(stub: HubStub, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cache = blocker / "hub"
    proc = cli("pull", "LFM2-VL-450M:Q4_0", env={"HF_ENDPOINT": stub.url, "HF_HUB_CACHE": str(cache)})
    _one_error_line(proc, str(cache), "HF_HUB_CACHE", "Not a directory")


@pytest.mark.slow
def test_cli_rm_and_pull_with_the_cache_path_a_file_is_one_line(stub: HubStub, tmp_path: Path) -> None:
    cache = tmp_path / "a-file"
    cache.write_text("not a directory")
    env = {"HF_ENDPOINT": stub.url, "HF_HUB_CACHE": str(cache)}
    _one_error_line(cli("rm", "LFM2-VL-450M:Q4_0", env=env), str(cache), "HF_HUB_CACHE", "not a directory")
    _one_error_line(cli("pull", "LFM2-VL-450M:Q4_0", env=env), str(cache), "HF_HUB_CACHE")


# A read-only cache, also as root (where permission bits do not bind): an audit hook in
# the CLI process refuses every write under the cache, as a read-only mount does.
_READ_ONLY = """
import errno, os, runpy, sys
root = os.path.realpath(os.environ["HF_HUB_CACHE"])
WRITES = {"os.remove", "os.rmdir", "os.rename", "os.replace", "os.mkdir", "os.symlink", "os.link", "shutil.rmtree",
          "os.truncate", "os.chmod"}
def hook(event, args):
    if event == "open":
        path, flags = args[0], args[2]
        if not flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC):
            return
    elif event in WRITES:
        path = args[0]
    else:
        return
    if isinstance(path, (str, bytes, os.PathLike)) and not isinstance(path, int):
        full = os.path.realpath(os.fsdecode(path))
        if full == root or full.startswith(root + os.sep):
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
sys.addaudithook(hook)
sys.argv[0] = "lfm2-edge"
runpy.run_module("lfm2_edge.cli", run_name="__main__")
"""


@pytest.mark.slow
def test_cli_rm_and_pull_in_a_read_only_cache_are_one_line(stub: HubStub, tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    Hub(cache_dir=cache, endpoint=stub.url, token=None, offline=False).pull("LFM2-VL-450M:Q4_0")
    before = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*"))
    env = {"HF_ENDPOINT": stub.url, "HF_HUB_CACHE": str(cache)}
    full_env = {**{k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_HOME")}, **env}

    def read_only(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", _READ_ONLY, *args], capture_output=True, text=True, timeout=300, env=full_env
        )

    assert read_only("models").returncode == 0  # reading is fine
    _one_error_line(read_only("rm", "LFM2-VL-450M:Q4_0"), str(cache), "HF_HUB_CACHE", "Permission denied")
    _one_error_line(read_only("rm", "LFM2-VL-450M"), str(cache), "HF_HUB_CACHE", "Permission denied")
    _one_error_line(read_only("pull", "LFM2-VL-450M:Q8_0"), str(cache), "HF_HUB_CACHE", "Permission denied")
    assert sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*")) == before


@pytest.mark.slow
def test_concurrent_ref_writers_never_fail_and_readers_never_see_a_partial_ref(tmp_path: Path) -> None:
    import threading

    hub = Hub(cache_dir=tmp_path / "cache", offline=True)
    repo_dir = hub.cache.repo_dir(REPO)
    ref_file = repo_dir / "refs" / "main"
    commits = [f"{i:040x}" for i in range(8)]
    hub._write_ref(repo_dir, commits[0])
    errors: list[BaseException] = []
    seen: set[str] = set()
    writing = threading.Event()

    def writer(commit: str) -> None:
        try:
            for _ in range(200):
                hub._write_ref(repo_dir, commit)
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            while writing.is_set():
                seen.add(ref_file.read_text())
        except BaseException as exc:
            errors.append(exc)

    writing.set()
    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(c,)) for c in commits]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    writing.clear()
    for t in readers:
        t.join()
    assert errors == []
    assert seen <= set(commits) and seen, seen
    assert ref_file.read_text() in commits
    assert sorted(p.name for p in ref_file.parent.iterdir()) == ["main"]  # no temp file left behind
