"""Lfm2VlChatHandler inside llama-cpp-python's own Llama, on the tiny synthetic pair."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from llama_cpp import Llama
from PIL import Image

from lfm2_edge import VisionModel
from lfm2_edge.errors import ModelFileError
from lfm2_edge.local.handler import Lfm2VlChatHandler
from lfm2_edge.local.placement import choose_gpu_layers
from tests.helpers import png_bytes


@pytest.fixture(scope="module")
def llm(tiny: dict[str, Path]):
    placement = choose_gpu_layers(None)  # as VisionModel places its model and projector
    handler = Lfm2VlChatHandler(tiny["mmproj"], use_gpu=placement.n_gpu_layers != 0)
    llama = Llama(
        str(tiny["F16"]),
        chat_handler=handler,
        n_ctx=4096,
        n_threads=2,
        n_gpu_layers=placement.n_gpu_layers,
        verbose=False,
    )
    yield llama, handler
    llama.close()


def _uri(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def test_handler_sends_lfm2_chatml_and_matches_vision_model(
    llm, vm: VisionModel, noise: Image.Image, red: Image.Image
) -> None:
    llama, handler = llm
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare."},
                {"type": "image_url", "image_url": {"url": _uri(noise)}},
                {"type": "image_url", "image_url": {"url": _uri(red)}},
            ],
        },
        {"role": "assistant", "content": "They differ."},
        {"role": "user", "content": "How?"},
    ]
    # no penalty: llama-cpp-python's counts the last 64 tokens, VisionModel's the prompt and the
    # answer (as transformers); the claim here is the prompt and the greedy pipeline
    response = llama.create_chat_completion(messages=messages, temperature=0, max_tokens=10, repeat_penalty=1.0)
    assert handler.last_prompt == (
        "<|startoftext|><|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<image><image>Compare.<|im_end|>\n"
        "<|im_start|>assistant\nThey differ.<|im_end|>\n"
        "<|im_start|>user\nHow?<|im_end|>\n<|im_start|>assistant\n"
    )
    ours = vm.chat(messages, temperature=0, max_tokens=10, repetition_penalty=1.0)
    assert response["usage"]["prompt_tokens"] == ours.usage.prompt_tokens
    assert response["usage"]["completion_tokens"] == 10
    # llama-cpp-python drops undecodable bytes where VisionModel shows U+FFFD
    assert response["choices"][0]["message"]["content"] == ours.text.replace("\ufffd", "")


def test_handler_streams(llm, noise: Image.Image) -> None:
    llama, _ = llm
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": _uri(noise)}},
                {"type": "text", "text": "Describe."},
            ],
        }
    ]
    whole = llama.create_chat_completion(messages=messages, temperature=0, max_tokens=8)
    chunks = list(llama.create_chat_completion(messages=messages, temperature=0, max_tokens=8, stream=True))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]


def test_handler_needs_an_existing_mmproj(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="mmproj file not found"):
        Lfm2VlChatHandler(tmp_path / "missing.gguf")
