from __future__ import annotations

import pytest

from lfm2_edge.chat.messages import Message, conversation_images, normalize_messages
from lfm2_edge.errors import Lfm2EdgeError
from lfm2_edge.hub.catalog import DEFAULT_VL_SYSTEM_PROMPT
from lfm2_edge.prompt.chatml import render_prompt


def test_conversation_renders_exact_chatml_in_the_order_given() -> None:
    # as transformers' Lfm2VlProcessor and llama-server: text then images stays so
    messages = normalize_messages(
        [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare these."},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
                    {"type": "image", "image": "b.jpg"},
                ],
            },
            {"role": "assistant", "content": "A cat and a dog."},
            {"role": "user", "content": "Which is bigger?"},
        ]
    )
    assert render_prompt(messages) == (
        "<|startoftext|><|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nCompare these.<image><image><|im_end|>\n"
        "<|im_start|>assistant\nA cat and a dog.<|im_end|>\n"
        "<|im_start|>user\nWhich is bigger?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert conversation_images(messages) == ["data:image/png;base64,AAA", "b.jpg"]


def test_the_card_system_prompt_and_a_single_prompt() -> None:
    messages = normalize_messages("Describe this image.", images=["cat.jpg"])
    assert render_prompt(messages) == (
        "<|startoftext|><|im_start|>user\n<image>Describe this image.<|im_end|>\n<|im_start|>assistant\n"
    )  # as transformers' template: no system turn unless one is given
    assert render_prompt(messages, system_prompt=DEFAULT_VL_SYSTEM_PROMPT) == (
        "<|startoftext|><|im_start|>system\n"
        "You are a helpful multimodal assistant by Liquid AI.<|im_end|>\n"
        "<|im_start|>user\n<image>Describe this image.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_no_system_prompt_when_none() -> None:
    assert render_prompt([Message("user", "hi")], system_prompt=None) == (
        "<|startoftext|><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_images_beside_messages_join_the_last_user_turn() -> None:
    messages = normalize_messages(
        [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "second"},
        ],
        images=["x.png"],
    )
    assert [m.images for m in messages] == [[], [], ["x.png"]]


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([{"role": "robot", "content": "hi"}], "role must be one of"),
        ([{"role": "assistant", "content": [{"type": "image", "image": "a.png"}]}], "only be sent in user turns"),
        ([{"role": "user", "content": [{"type": "audio"}]}], "unsupported content part type 'audio'"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "needs a 'url'"),
        ([], "conversation is empty"),
    ],
)
def test_bad_messages_raise_one_clear_error(messages: list, message: str) -> None:
    with pytest.raises(Lfm2EdgeError, match=message):
        normalize_messages(messages)


def test_parts_interleave_and_extra_images_go_first() -> None:
    messages = normalize_messages(
        [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": "a.jpg"},
                    {"type": "text", "text": "this one, "},
                    {"type": "image", "image": "b.jpg"},
                    {"type": "text", "text": "and that one"},
                ],
            }
        ],
        images=["c.jpg"],  # beside the messages: at the start of the turn, after its own leading images
    )
    assert render_prompt(messages) == (
        "<|startoftext|><|im_start|>user\n<image><image>this one, <image>and that one<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert conversation_images(messages) == ["a.jpg", "c.jpg", "b.jpg"]
    assert messages[0].text == "this one, and that one"
    # a message of text and images without an order: images first (the CLI's -i ... -p ...)
    assert render_prompt([Message("user", "hi", ["x.jpg"])]) == (
        "<|startoftext|><|im_start|>user\n<image>hi<|im_end|>\n<|im_start|>assistant\n"
    )
