"""Every official file layout, written by the synthetic generator, checks and chats.

The layouts (``lfm2_edge.testing.LAYOUTS``) are small but laid out as the official GGUFs
are: head_count_kv an array with 0 for short-conv blocks, the official special-token ids,
tied output, Q6_K token_embd in Q4_0; LFM2-VL projectors with mm.input_norm, LFM2.5-VL
ones without, and the 1.6B vision tower's widths in Q8_0 as the converter types them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lfm2_edge import TextModel, VisionModel
from lfm2_edge.hub.gguf import read_summary
from lfm2_edge.hub.info import describe
from lfm2_edge.hub.validate import check_model_files
from lfm2_edge.testing import LAYOUTS, make_synthetic_model
from tests.helpers import noise_image

Q6_K, Q8_0, F16, F32 = 14, 8, 1, 0


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def layout(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Path]]:
    name = request.param
    return name, make_synthetic_model(tmp_path_factory.mktemp(name), name)


def test_the_check_accepts_every_file_of_the_layout(layout: tuple[str, dict[str, Path]]) -> None:
    _, paths = layout
    for quant in ("F16", "Q4_0"):
        _model, proj = check_model_files(paths[quant], paths["mmproj"])
        assert proj is not None
    assert check_model_files(paths["Q4_0"], None)[1] is None  # the LM alone, as a text model


def test_the_headers_are_laid_out_as_the_official_files(layout: tuple[str, dict[str, Path]]) -> None:
    name, paths = layout
    lm = read_summary(paths["Q4_0"])
    assert lm.arrays["lfm2.attention.head_count_kv"] == (0, 0, 8, 0, 0, 8, 0, 0, 8, 0, 8, 0, 8, 0, 8, 0)
    ids = (lm.get("tokenizer.ggml.bos_token_id"), lm.get("tokenizer.ggml.eos_token_id"))
    assert (*ids, lm.get("tokenizer.ggml.padding_token_id")) == (1, 7, 0)
    assert lm.get("tokenizer.ggml.pre") == "lfm2" and lm.get("lfm2.context_length") == 128000
    assert "output.weight" not in lm.tensors and "token_embd_norm.weight" in lm.tensors
    assert lm.tensors["token_embd.weight"].ggml_type == Q6_K  # llama.cpp's Q4_0 of a tied embedding
    proj = read_summary(paths["mmproj"])
    assert ("mm.input_norm.weight" in proj.tensors) == (name == "lfm2-vl")
    assert proj.get("clip.vision.image_size") == 256 and proj.get("clip.vision.projector.scale_factor") == 2
    if LAYOUTS[name].vision.quant == "Q8_0":
        t = proj.tensors
        assert t["v.patch_embd.weight"].ggml_type == F32 and t["v.blk.0.attn_q.weight"].ggml_type == Q8_0
    if name == "lfm2.5-vl-1.6b-tower":
        assert (proj.get("clip.vision.embedding_length"), proj.get("clip.vision.feed_forward_length")) == (1152, 4304)
        assert proj.get("clip.vision.attention.head_count") == 16
        assert proj.tensors["v.blk.0.ffn_down.weight"].ggml_type == F16  # 4304 is no whole number of Q8_0 blocks


def test_the_vocabulary_has_the_official_special_ids(layout: tuple[str, dict[str, Path]]) -> None:
    import gguf

    _, paths = layout
    field = gguf.GGUFReader(paths["F16"]).fields["tokenizer.ggml.tokens"]
    tokens = [bytes(field.parts[i]).decode() for i in field.data[:500]]
    assert (tokens[0], tokens[1], tokens[7], tokens[396]) == ("<|pad|>", "<|startoftext|>", "<|im_end|>", "<image>")


def test_info_describes_the_layout(layout: tuple[str, dict[str, Path]]) -> None:
    name, paths = layout
    info = describe(paths["Q4_0"], paths["mmproj"])
    assert info["check"] == "ok"
    m, p = info["model"], info["mmproj"]
    assert m["layer_pattern"] == "CCACCACCACACACAC" and m["token_embd_type"] == "Q6_K" and m["tied_output"]
    assert m["chat_template"]["present"] and len(m["chat_template"]["sha256"]) == 64
    assert p["input_norm"] == (name == "lfm2-vl")
    assert p["layout"].startswith("LFM2-VL" if name == "lfm2-vl" else "LFM2.5-VL")


def test_chat_runs_with_the_files_own_template(layout: tuple[str, dict[str, Path]]) -> None:
    _, paths = layout
    with VisionModel(paths["Q4_0"], paths["mmproj"], n_ctx=2048) as vm:
        assert vm.chat_template.usable
        answer = vm.chat("Describe this.", images=[noise_image(200, 140)], max_tokens=4, temperature=0)
        assert answer.usage.image_tokens > 0 and answer.usage.completion_tokens >= 1


def test_the_language_model_alone_chats_as_a_text_model(layout: tuple[str, dict[str, Path]]) -> None:
    name, paths = layout
    if name != "lfm2.5-vl":
        pytest.skip("one text run is enough: the LM files of the layouts are alike")
    with TextModel(paths["Q4_0"], n_ctx=1024) as tm:
        assert tm.chat("Hello", max_tokens=3, temperature=0).usage.completion_tokens >= 1
