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
        "image_thumbnail": True,
        "image_max_pixels_tolerance": 2.0,
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


# What the model cards (and Liquid's docs) say where they differ from the family's
# defaults; every source is in docs/models.md. An entry not listed here has its family's.
CARDS: dict[str, dict[str, object]] = {
    "LFM2.5-VL-450M": {"image_min_tokens": 32},
    "LFM2.5-230M": {"temperature": 0.1, "top_k": 50, "top_p": 0.1, "min_p": 0.0},
    "LFM2.5-350M": {"temperature": 0.1, "top_k": 50, "top_p": 1.0, "min_p": 0.0},
    "LFM2.5-1.2B-Instruct": {"temperature": 0.1, "top_k": 50, "top_p": 0.1, "min_p": 0.0},
    "LFM2.5-1.2B-JP": {"temperature": 0.1, "top_k": 50, "top_p": 0.1, "min_p": 0.0},
    "LFM2.5-1.2B-Thinking": {"temperature": 0.05, "top_k": 50, "top_p": 1.0, "min_p": 0.0, "thinking": True},
    "LFM2.5-8B-A1B": {"temperature": 0.2, "top_k": 80, "top_p": 1.0, "min_p": 0.0, "thinking": True},
    "LFM2-1.2B-Extract": {"temperature": 0.0, "system_prompt": None},
    "LFM2-350M-Extract": {"temperature": 0.0, "system_prompt": None},
    "LFM2-1.2B-RAG": {"temperature": 0.0, "system_prompt": None},
    "LFM2-1.2B-Tool": {"temperature": 0.0},
}
SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "min_p")


def test_family_defaults_are_stated_once_and_the_cards_differences_are_exact() -> None:
    assert VL_SAMPLING is VL.sampling and TEXT_SAMPLING is TEXT.sampling
    assert TEXT.sampling.temperature == 0.3 and VL.sampling.temperature == 0.1
    assert set(CARDS) <= {e.name for e in catalog.CATALOG}
    for entry in catalog.CATALOG:
        family = catalog.FAMILIES[entry.family]
        card = CARDS.get(entry.name, {})
        want = {f: card.get(f, getattr(family.sampling, f)) for f in SAMPLING_FIELDS}
        assert {f: getattr(entry.sampling, f) for f in SAMPLING_FIELDS} == want, entry.name
        # the rest of the sampling (repetition_penalty 1.05 on every card) is the family's
        rest = entry.sampling.updated(**{f: getattr(family.sampling, f) for f in SAMPLING_FIELDS})
        assert rest == family.sampling, entry.name
        assert entry.system_prompt == card.get("system_prompt", family.system_prompt), entry.name
        assert entry.thinking is card.get("thinking", False), entry.name
        own_min = card.get("image_min_tokens", family.image_min_tokens)
        assert (entry.image_min_tokens, entry.image_max_tokens) == (own_min, family.image_max_tokens)
        assert entry.arch is not None, entry.name  # doctor estimates every catalog model without its files
        # the processor settings are per model too (their processor_config.json)
        own_thumbnail = {"LFM2-VL-450M": False}.get(entry.name, family.image_thumbnail)
        own_tolerance = {"LFM2-VL-1.6B": 1.5}.get(entry.name, family.image_max_pixels_tolerance)
        assert (entry.image_thumbnail, entry.image_max_pixels_tolerance) == (own_thumbnail, own_tolerance)
    assert find_entry("LFM2-VL-450M") is not None and find_entry("LFM2-VL-450M").arch is not None  # type: ignore[union-attr]


def test_the_family_in_the_catalog() -> None:
    names = {e.name for e in catalog.CATALOG}
    assert names >= {
        "LFM2-2.6B", "LFM2-8B-A1B", "LFM2-VL-3B", "LFM2.5-350M", "LFM2.5-1.2B-Thinking", "LFM2.5-1.2B-JP",
        "LFM2.5-8B-A1B",
    }  # fmt: skip
    assert find_entry("LFM2-VL-3B").family == "vl"  # type: ignore[union-attr]
    assert find_entry("lfm2.5-8b-a1b").repo == "LiquidAI/LFM2.5-8B-A1B-GGUF"  # type: ignore[union-attr]
    moe = find_entry("LFM2.5-8B-A1B").arch  # type: ignore[union-attr]
    assert moe is not None and moe.read_per_token == 1.5e9 and moe.lm_params == 8.3e9 and moe.n_vocab == 128000
    dense = find_entry("LFM2-2.6B").arch  # type: ignore[union-attr]
    assert dense is not None and dense.read_per_token == dense.lm_params and (dense.n_layer, dense.n_attn) == (30, 8)
    # decode reads the active experts only: the 8B mixture decodes like a 1.5B model, not an 8B one
    fast = doctor.expected_tok_s(moe, "Q4_0", 10e9)
    assert fast == pytest.approx(doctor.expected_tok_s(dense, "Q4_0", 10e9) * dense.lm_params / 1.5e9)


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
