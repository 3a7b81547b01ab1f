"""Catalog names resolve to the official repos' real file names, through the hub stand-in."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lfm2_edge.hub.catalog import find_entry, presets
from lfm2_edge.hub.download import Hub
from tests.helpers import run_cli
from tests.hubstub import HubStub

pytestmark = pytest.mark.slow  # the command line in child processes: `pytest -m 'not slow'` skips it


def official_repos(tiny: dict[str, Path]) -> dict[str, dict[str, bytes]]:
    """The official repos' file names (LFM2.5 projectors are lowercase), tiny bytes."""
    lm, proj = tiny["Q4_0"].read_bytes(), tiny["mmproj"].read_bytes()
    repos: dict[str, dict[str, bytes]] = {}
    for name in ("LFM2-VL-450M", "LFM2-VL-1.6B"):
        files = {f"{name}-{q}.gguf": lm for q in ("F16", "Q8_0", "Q4_0")}
        files[f"mmproj-{name}-F16.gguf"] = proj
        files[f"mmproj-{name}-Q8_0.gguf"] = proj
        repos[f"LiquidAI/{name}-GGUF"] = files
    for name, lower in (("LFM2.5-VL-450M", "LFM2.5-VL-450m"), ("LFM2.5-VL-1.6B", "LFM2.5-VL-1.6b")):
        files = {f"{name}-{q}.gguf": lm for q in ("BF16", "Q8_0", "Q4_0")}
        files[f"mmproj-{lower}-Q8_0.gguf"] = proj
        files[f"mmproj-{lower}-BF16.gguf"] = proj
        repos[f"LiquidAI/{name}-GGUF"] = files
    for name in ("LFM2-350M", "LFM2-700M", "LFM2-1.2B", "LFM2.5-1.2B-Instruct"):
        repos[f"LiquidAI/{name}-GGUF"] = {f"{name}-{q}.gguf": lm for q in ("F16", "Q8_0", "Q4_0")}
    # the family added since (docs/models.md): the LFM2 GGUF repos' six quants, the LFM2.5
    # ones' seven (BF16 too), the VL-3B pair's projector in F16 and Q8_0 as the 1.6B's
    lfm2 = ("Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "F16")
    nanos = ("LFM2-1.2B-Extract", "LFM2-350M-Extract", "LFM2-1.2B-RAG", "LFM2-1.2B-Tool")
    for name in ("LFM2-2.6B", "LFM2-8B-A1B", *nanos):
        repos[f"LiquidAI/{name}-GGUF"] = {f"{name}-{q}.gguf": lm for q in lfm2}
    for name in ("LFM2.5-230M", "LFM2.5-350M", "LFM2.5-1.2B-JP", "LFM2.5-1.2B-Thinking", "LFM2.5-8B-A1B"):
        repos[f"LiquidAI/{name}-GGUF"] = {f"{name}-{q}.gguf": lm for q in (*lfm2, "BF16")}
    files = {f"LFM2-VL-3B-{q}.gguf": lm for q in ("F16", "Q8_0", "Q4_0")}
    files |= {"mmproj-LFM2-VL-3B-F16.gguf": proj, "mmproj-LFM2-VL-3B-Q8_0.gguf": proj}
    repos["LiquidAI/LFM2-VL-3B-GGUF"] = files
    return repos


@pytest.fixture
def stub(tiny: dict[str, Path]) -> Iterator[HubStub]:
    hub = HubStub()
    for repo, files in official_repos(tiny).items():
        hub.add_repo(repo, files)
    hub.start()
    yield hub
    hub.stop()


@pytest.fixture
def hub(stub: HubStub, tmp_path: Path) -> Hub:
    return Hub(cache_dir=tmp_path / "cache", endpoint=stub.url, token=None, offline=False)


@pytest.mark.parametrize(
    ("ref", "model", "mmproj"),
    [
        ("LFM2-VL-450M", "LFM2-VL-450M-Q4_0.gguf", "mmproj-LFM2-VL-450M-Q8_0.gguf"),
        ("lfm2-vl-450m:f16", "LFM2-VL-450M-F16.gguf", "mmproj-LFM2-VL-450M-F16.gguf"),
        ("LFM2-VL-1.6B:Q8_0", "LFM2-VL-1.6B-Q8_0.gguf", "mmproj-LFM2-VL-1.6B-Q8_0.gguf"),
        ("LFM2.5-VL-450M", "LFM2.5-VL-450M-Q4_0.gguf", "mmproj-LFM2.5-VL-450m-Q8_0.gguf"),
        ("lfm2.5-vl-450m:bf16", "LFM2.5-VL-450M-BF16.gguf", "mmproj-LFM2.5-VL-450m-BF16.gguf"),
        ("LFM2.5-VL-1.6B:Q8_0", "LFM2.5-VL-1.6B-Q8_0.gguf", "mmproj-LFM2.5-VL-1.6b-Q8_0.gguf"),
        ("LiquidAI/LFM2.5-VL-1.6B-GGUF:Q4_0", "LFM2.5-VL-1.6B-Q4_0.gguf", "mmproj-LFM2.5-VL-1.6b-Q8_0.gguf"),
        ("LFM2-350M", "LFM2-350M-Q4_0.gguf", None),
        ("LFM2.5-1.2B-Instruct:Q8_0", "LFM2.5-1.2B-Instruct-Q8_0.gguf", None),
        ("LFM2-VL-3B", "LFM2-VL-3B-Q4_0.gguf", "mmproj-LFM2-VL-3B-Q8_0.gguf"),
        ("LFM2.5-1.2B-Thinking:Q4_K_M", "LFM2.5-1.2B-Thinking-Q4_K_M.gguf", None),
        ("lfm2.5-8b-a1b", "LFM2.5-8B-A1B-Q4_0.gguf", None),
        ("LFM2-8B-A1B:q6_k", "LFM2-8B-A1B-Q6_K.gguf", None),
    ],
)
def test_catalog_names_resolve_the_official_file_names(hub: Hub, ref: str, model: str, mmproj: str | None) -> None:
    resolved = hub.pull(ref)
    assert resolved.model_path.name == model
    assert (resolved.mmproj_path.name if resolved.mmproj_path else None) == mmproj
    assert resolved.model_path.is_file()


def test_every_catalog_model_has_a_stand_in_repo(tiny: dict[str, Path]) -> None:
    from lfm2_edge.hub.catalog import CATALOG

    assert {e.repo for e in CATALOG} <= set(official_repos(tiny))


def test_image_budgets_are_per_model_and_from_pretrained_applies_them(hub: Hub) -> None:
    assert presets(find_entry("LFM2.5-VL-450M"), True)["image_min_tokens"] == 32
    assert presets(find_entry("LFM2-VL-450M"), True)["image_min_tokens"] == 64
    for name in ("LFM2-VL-450M", "LFM2-VL-1.6B", "LFM2.5-VL-450M", "LFM2.5-VL-1.6B"):
        assert presets(find_entry(name), True)["image_max_tokens"] == 256
    resolved = hub.resolve("LFM2.5-VL-450M")
    assert resolved.model_kwargs()["image_min_tokens"] == 32
    seen: dict[str, Any] = {}

    from lfm2_edge import VisionModel

    class Spy(VisionModel):
        def __init__(self, model_path: Any, mmproj_path: Any = None, **kw: Any) -> None:
            seen.update(kw, mmproj_path=mmproj_path)

    Spy.from_pretrained("LFM2.5-VL-450M", hub=hub)
    assert (seen["image_min_tokens"], seen["image_max_tokens"]) == (32, 256)
    assert seen["mmproj_path"].name == "mmproj-LFM2.5-VL-450m-Q8_0.gguf"


def test_cli_info_by_catalog_name_shows_files_and_presets(stub: HubStub, tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_HOME")},
        "HF_ENDPOINT": stub.url,
        "HF_HUB_CACHE": str(tmp_path / "hub"),
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env=env, timeout=120)  # type: ignore[no-any-return]

    pulled = cli("pull", "LFM2.5-VL-450M")
    assert pulled.returncode == 0, pulled.stderr
    out = cli("info", "LFM2.5-VL-450M", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["model"]["path"].endswith("LFM2.5-VL-450M-Q4_0.gguf")
    assert info["mmproj"]["path"].endswith("mmproj-LFM2.5-VL-450m-Q8_0.gguf")
    assert (info["catalog"]["image_min_tokens"], info["catalog"]["image_max_tokens"]) == (32, 256)
    assert info["model"]["chat_template"]["present"] and info["check"] == "ok"
    text = cli("info", "LFM2.5-VL-450M")
    assert text.returncode == 0, text.stderr
    for needle in ("architecture: lfm2", "chat template:", "sha256", "projector: lfm2", "image tokens 32..256"):
        assert needle in text.stdout
    plain = cli("info")  # without MODEL: the build and devices, as before
    assert plain.returncode == 0 and "llama_cpp_python" in plain.stdout
