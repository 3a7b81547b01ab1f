from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

from lfm2_edge.testing import SHAPES, SPECIAL_TOKENS, make_synthetic_model


def _field(reader: gguf.GGUFReader, key: str):
    f = reader.fields[key]
    if f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode()
    if f.types[0] == gguf.GGUFValueType.ARRAY:
        if f.types[1] == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode() for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    return f.parts[f.data[0]].tolist()[0]


def test_model_metadata_is_lfm2(tiny: dict[str, Path]) -> None:
    r = gguf.GGUFReader(tiny["F16"])
    assert _field(r, "general.architecture") == "lfm2"
    lm = SHAPES["tiny"].lm
    assert _field(r, "lfm2.attention.head_count_kv") == [lm.n_head_kv if t == "attn" else 0 for t in lm.layer_types]
    assert {"conv", "attn"} == set(lm.layer_types)
    tokens = _field(r, "tokenizer.ggml.tokens")
    for special in (
        "<|startoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<image>",
        "<|image_start|>",
        "<|image_end|>",
        "<|img_row_2_col_3|>",
        "<|img_thumbnail|>",
        "<|tool_call_start|>",
    ):
        assert special in tokens
    assert tokens[_field(r, "tokenizer.ggml.eos_token_id")] == "<|im_end|>"
    assert "<|im_start|>" in _field(r, "tokenizer.chat_template")
    names = {t.name for t in r.tensors}
    assert "blk.0.shortconv.in_proj.weight" in names and "blk.2.attn_q.weight" in names


def test_mmproj_metadata_is_lfm2_projector(tiny: dict[str, Path]) -> None:
    r = gguf.GGUFReader(tiny["mmproj"])
    assert _field(r, "general.architecture") == "clip"
    assert _field(r, "clip.projector_type") == "lfm2"
    assert _field(r, "clip.vision.projector.scale_factor") == 2
    assert _field(r, "clip.vision.projection_dim") == SHAPES["tiny"].lm.n_embd
    names = {t.name for t in r.tensors}
    assert {"mm.1.weight", "mm.2.weight", "v.patch_embd.weight", "v.position_embd.weight"} <= names


def test_generation_is_deterministic(tmp_path: Path, tiny: dict[str, Path]) -> None:
    again = make_synthetic_model(tmp_path, "tiny", quants=[])
    for key in ("F16", "mmproj"):
        assert hashlib.sha256(again[key].read_bytes()).digest() == hashlib.sha256(tiny[key].read_bytes()).digest()
    assert not list(tmp_path.glob("*.partial"))


def test_other_seed_gives_other_weights(tmp_path: Path, tiny: dict[str, Path]) -> None:
    other = make_synthetic_model(tmp_path, "tiny", seed=7, quants=[])
    assert other["F16"].read_bytes() != tiny["F16"].read_bytes()


def test_quantized_files_are_smaller_and_typed(tiny: dict[str, Path]) -> None:
    assert tiny["Q4_0"].stat().st_size < tiny["Q8_0"].stat().st_size < tiny["F16"].stat().st_size
    types = {t.tensor_type for t in gguf.GGUFReader(tiny["Q4_0"]).tensors}
    assert gguf.GGMLQuantizationType.Q4_0 in types


def test_450m_shape_has_the_real_dimensions() -> None:
    spec = SHAPES["lfm2-vl-450m"]
    lm, v = spec.lm, spec.vision
    assert (lm.n_embd, lm.n_ff, lm.n_head, lm.n_head_kv, lm.n_vocab) == (1024, 4608, 16, 8, 65536)
    assert len(lm.layer_types) == 16
    assert lm.layer_types.count("conv") == 10 and lm.layer_types.count("attn") == 6
    assert (v.n_embd, v.n_layer, v.patch_size, v.scale_factor) == (768, 12, 16, 2)
    assert spec.quants == ("Q8_0", "Q4_0")
    assert len(SPECIAL_TOKENS) < lm.n_vocab


def test_unknown_shape_is_a_clear_error(tmp_path: Path) -> None:
    from lfm2_edge.errors import Lfm2EdgeError

    with pytest.raises(Lfm2EdgeError, match="unknown shape 'huge'"):
        make_synthetic_model(tmp_path, "huge")


def test_quantize_then_load_in_one_fresh_process(tmp_path: Path) -> None:
    """The sequence a CUDA build was reported to crash on: write and quantize the
    synthetic models, then load one and chat, all in one new process."""
    script = (
        "import sys\n"
        "from lfm2_edge.testing import make_synthetic_model\n"
        "from lfm2_edge import VisionModel\n"
        f"paths = make_synthetic_model({str(tmp_path)!r}, 'tiny', quants=['Q4_0'])\n"
        "with VisionModel(paths['Q4_0'], paths['mmproj']) as vm:\n"
        "    print(vm.chat('hi', max_tokens=2, temperature=0).usage.completion_tokens)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() in ("0", "1", "2")
    assert done.stderr == ""  # the quantizer's warnings are routed like llama.cpp's log: silent
