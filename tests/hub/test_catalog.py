"""The catalog is the one table of model facts: a new model is one entry, and every part
of lfm2-edge that names models (references, presets, doctor, the hub) picks it up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lfm2_edge.hub import catalog
from lfm2_edge.hub.catalog import TEXT, TEXT_SAMPLING, VL, VL_SAMPLING, Arch, find_entry, parse_ref, presets, vl_model
from lfm2_edge.hub.download import Hub
from lfm2_edge.local import doctor
from lfm2_edge.local.doctor import MIB, estimate_spec, recommend
from tests.hubstub import HubStub

NEW = vl_model(
    "LFM2.5-VL-3B",
    arch=Arch(2.6e9, 2048, 6, 30, 512, 65536, 400e6, 4304),
    recommend=("Q8_0", "Q4_0"),
)


@pytest.fixture
def with_new_model(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(catalog, "CATALOG", (*catalog.CATALOG, NEW))
    yield


def test_a_new_model_is_one_entry(with_new_model: None, tiny: dict[str, Path], tmp_path: Path) -> None:
    ref = parse_ref("lfm2.5-vl-3b:q8_0")
    assert (ref.entry, ref.repo, ref.quant, ref.display) == (
        NEW,
        "LiquidAI/LFM2.5-VL-3B-GGUF",
        "Q8_0",
        "LFM2.5-VL-3B:Q8_0",
    )
    assert presets(NEW, True) == {
        "sampling": VL.sampling,
        "system_prompt": VL.system_prompt,
        "image_min_tokens": 64,
        "image_max_tokens": 256,
    }

    # doctor: ranked first (the largest recommended model), estimated from the entry's shapes
    assert doctor.preference()[:2] == [(NEW, "Q8_0"), (NEW, "Q4_0")]
    best = recommend(64 * 1024 * MIB)
    assert NEW.arch is not None and best["model"] == "LFM2.5-VL-3B:Q8_0"
    assert best["estimate_mib"] == estimate_spec(NEW.arch, "Q8_0").to_dict()
    assert recommend(2 * 1024 * MIB)["model"] == "LFM2.5-VL-1.6B:Q4_0"  # the others keep their order

    # the hub: the repo follows from the name, the quant from the entry's default
    stub = HubStub()
    stub.add_repo(
        NEW.repo,
        {
            "LFM2.5-VL-3B-Q4_0.gguf": tiny["Q4_0"].read_bytes(),
            "mmproj-LFM2.5-VL-3B-F16.gguf": tiny["mmproj"].read_bytes(),
        },
    )
    stub.start()
    try:
        resolved = Hub(cache_dir=tmp_path / "cache", endpoint=stub.url, token=None, offline=False).resolve(
            "LFM2.5-VL-3B"
        )
    finally:
        stub.stop()
    assert (resolved.entry, resolved.quant, resolved.ref.display) == (NEW, "Q4_0", "LFM2.5-VL-3B:Q4_0")
    assert resolved.model_path.name == "LFM2.5-VL-3B-Q4_0.gguf" and resolved.mmproj_path is not None
    assert resolved.model_kwargs() == presets(NEW, True)
    assert {p.name for p in (tmp_path / "cache").rglob("*.gguf")} == {
        "LFM2.5-VL-3B-Q4_0.gguf",
        "mmproj-LFM2.5-VL-3B-F16.gguf",
    }


def test_family_defaults_are_stated_once() -> None:
    assert VL_SAMPLING is VL.sampling and TEXT_SAMPLING is TEXT.sampling
    assert TEXT.sampling.temperature == 0.3 and VL.sampling.temperature == 0.1
    for entry in catalog.CATALOG:
        family = catalog.FAMILIES[entry.family]
        assert (entry.sampling, entry.system_prompt) == (family.sampling, family.system_prompt)
        # the image-token budget is per model: the family's, unless the card says otherwise
        own_min = {"LFM2.5-VL-450M": 32}.get(entry.name, family.image_min_tokens)
        assert (entry.image_min_tokens, entry.image_max_tokens) == (own_min, family.image_max_tokens)
    assert find_entry("LFM2-VL-450M") is not None and find_entry("LFM2-VL-450M").arch is not None  # type: ignore[union-attr]


def test_the_handler_and_the_synthetic_template_use_the_catalog() -> None:
    import inspect

    from lfm2_edge.local.handler import Lfm2VlChatHandler
    from lfm2_edge.testing import CHAT_TEMPLATE

    init = inspect.signature(Lfm2VlChatHandler.__init__).parameters
    assert (init["system_prompt"].default, init["image_min_tokens"].default, init["image_max_tokens"].default) == (
        VL.system_prompt,
        64,
        256,
    )
    call = inspect.signature(Lfm2VlChatHandler.__call__).parameters
    assert (call["temperature"].default, call["min_p"].default, call["repeat_penalty"].default) == (0.1, 0.15, 1.05)
    assert VL.system_prompt in CHAT_TEMPLATE
