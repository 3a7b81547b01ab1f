"""Build a small random LFM2-VL in transformers and convert it with llama.cpp's converter.

Runs in the reference venv (torch, torchvision, transformers 5, gguf), never in lfm2-edge's:

    /work/ref-venv/bin/python scripts/reference/build_model.py OUT_DIR [--variant lfm2-vl|lfm2.5-vl]

Writes ``OUT_DIR/hf`` (config, safetensors in the published checkpoints' layout, tokenizer,
processor, chat template) and ``OUT_DIR/model-F32.gguf`` + ``OUT_DIR/mmproj-F32.gguf``, made
by the ``convert_hf_to_gguf.py`` of the llama-cpp-python 0.3.36 sdist (``--converter``, or
the ``LFM2_REF_CONVERTER`` environment variable). The converter is not edited: the random
tokenizer's pre-tokenizer hash is registered by wrapping ``get_vocab_base_pre`` before its
``main()`` runs (see ``convert.py``).

The model is random but not flat: weights are drawn with a gain that makes the next-token
distribution peaked (a flat one makes greedy decoding a coin toss on rounding noise).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Lfm2VlConfig,
    Lfm2VlForConditionalGeneration,
    Lfm2VlImageProcessor,
    Lfm2VlProcessor,
    PreTrainedTokenizerFast,
)

HERE = Path(__file__).resolve().parent

# The chat template of the official LFM2-VL files (tokenizer.chat_template, 434 bytes):
# content parts in the order given, images as <image>.
LFM2_VL_TEMPLATE = (
    "{{bos_token}}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<image>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\\n' }}{% endif %}"
)

# LFM2's pre-tokenizer (llama.cpp's "lfm2" = its llama3 regex; byte-level BPE after it).
LFM2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

N_VOCAB = 1024
IMAGE_ID = 396


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def specials() -> list[str]:
    """LFM2's special tokens at the official ids: chat and tool markers 0..13, reserved up
    to <image> at 396, then the 100 tile markers, the thumbnail, image start and end."""
    chat = [
        "<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|fim_pre|>", "<|fim_mid|>", "<|fim_suf|>",
        "<|im_start|>", "<|im_end|>", "<|tool_list_start|>", "<|tool_list_end|>",
        "<|tool_call_start|>", "<|tool_call_end|>", "<|tool_response_start|>", "<|tool_response_end|>",
    ]  # fmt: skip
    reserved = [f"<|reserved_{i}|>" for i in range(IMAGE_ID - len(chat))]
    image = ["<image>", *(f"<|img_row_{r}_col_{c}|>" for r in range(1, 11) for c in range(1, 11))]
    return chat + reserved + image + ["<|img_thumbnail|>", "<|image_start|>", "<|image_end|>"]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE of N_VOCAB tokens: the specials, every byte, then letter pairs."""
    special = specials()
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(special)}
    b2u = _bytes_to_unicode()
    for ch in b2u.values():
        vocab[ch] = len(vocab)
    merges: list[tuple[str, str]] = []
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    for a in [b2u[ord(" ")], *letters]:
        for b in letters:
            if len(vocab) >= N_VOCAB:
                break
            merges.append((a, b))
            vocab[a + b] = len(vocab)
    assert len(vocab) == N_VOCAB, len(vocab)
    model = models.BPE(vocab=vocab, merges=merges, ignore_merges=True)
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LFM2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        model_max_length=128000,
    )


def build_config(variant: str) -> Lfm2VlConfig:
    layer_types = ["conv", "conv", "full_attention", "conv", "full_attention", "conv"]
    text = {
        "model_type": "lfm2",
        "vocab_size": N_VOCAB,
        "hidden_size": 128,
        "intermediate_size": 384,  # block_auto_adjust_ff_dim: int(2*384/3) = 256
        "block_multiple_of": 32,
        "block_ffn_dim_multiplier": 1.0,
        "block_auto_adjust_ff_dim": True,
        "num_hidden_layers": len(layer_types),
        "layer_types": layer_types,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128000,
        "conv_L_cache": 3,
        "norm_eps": 1e-5,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 7,
        "architectures": ["Lfm2ForCausalLM"],
    }
    vision = {
        "model_type": "siglip2_vision_model",
        "hidden_size": 64,
        "intermediate_size": 128,
        # at least 3: the converter maps multi_modal_projector.linear_{bid} by block index
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_channels": 3,
        "patch_size": 16,
        "num_patches": 256,
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu_pytorch_tanh",
        "vision_use_head": False,
    }
    return Lfm2VlConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=IMAGE_ID,
        projector_hidden_size=128,
        projector_hidden_act="gelu",
        projector_bias=True,
        projector_use_layernorm=(variant == "lfm2-vl"),
        downsample_factor=2,
        tie_word_embeddings=True,
    )


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Gain-scaled random weights: std = 1.5/sqrt(fan_in) for matrices, 1 for the (tied)
    embeddings, small noise on norms and biases. With these the greedy answers are varied
    (20+ distinct tokens in 24) and the top-1 margin is about a nat: rounding noise does not
    flip a token, a different input does."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                std = 1.0 if "embed_tokens" in name else 1.5 / fan_in**0.5
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif "norm" in name and "weight" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
        # the special tokens (ids below the first byte token) get short embeddings, so the
        # tied output rarely picks one: answers are byte-level text, comparable by bytes
        emb = model.get_input_embeddings().weight
        emb[: len(specials())] *= 0.1


def to_published_layout(hf_dir: Path) -> None:
    """transformers 5 saves the vision tower without the ``vision_model.`` level; the
    published checkpoints (and the converter's tensor map) have it."""
    path = hf_dir / "model.safetensors"
    tensors = load_file(path)
    out = {}
    for name, t in tensors.items():
        prefix = "model.vision_tower."
        if name.startswith(prefix) and not name.startswith(prefix + "vision_model."):
            name = prefix + "vision_model." + name[len(prefix) :]
        out[name] = t.contiguous()
    save_file(out, path, metadata={"format": "pt"})
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg["text_config"]["architectures"] = ["Lfm2ForCausalLM"]
    (hf_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--variant", choices=("lfm2-vl", "lfm2.5-vl"), default="lfm2-vl")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--converter", default=os.environ.get("LFM2_REF_CONVERTER"))
    args = ap.parse_args()
    hf_dir = args.out / "hf"
    hf_dir.mkdir(parents=True, exist_ok=True)

    config = build_config(args.variant)
    torch.manual_seed(args.seed)
    model = Lfm2VlForConditionalGeneration(config)
    randomize(model, args.seed)
    model.eval()
    model.save_pretrained(hf_dir, safe_serialization=True)
    to_published_layout(hf_dir)

    tokenizer = build_tokenizer()
    image_processor = Lfm2VlImageProcessor(
        min_image_tokens=64, max_image_tokens=256, do_image_splitting=True, use_thumbnail=True
    )
    processor = Lfm2VlProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=LFM2_VL_TEMPLATE)
    processor.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    # the converter reads the template from tokenizer_config.json or chat_template.jinja
    (hf_dir / "chat_template.jinja").write_text(LFM2_VL_TEMPLATE)

    # the saved checkpoint must load back to the same model
    back = Lfm2VlForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 6, 500, 600, 700, 7]])
    with torch.no_grad():
        a = model(input_ids=ids).logits
        b = back(input_ids=ids).logits
    assert torch.equal(a, b), "the published-layout checkpoint does not load back"
    sd_back = back.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd_back[k]), k

    if args.converter:
        for mmproj in (False, True):
            out = args.out / ("mmproj-F32.gguf" if mmproj else "model-F32.gguf")
            cmd = [sys.executable, str(HERE / "convert.py"), args.converter, str(hf_dir), "--outtype", "f32"]
            cmd += ["--outfile", str(out)] + (["--mmproj"] if mmproj else [])
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            print(out)


if __name__ == "__main__":
    main()
