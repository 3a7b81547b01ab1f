"""A llama-cpp-python chat handler for LFM2-VL, for apps that already use ``llama_cpp.Llama``.

llama-cpp-python's generic ``MTMDChatHandler`` renders the GGUF's chat template, which
keeps the image where the client put it (often after the text) and uses mtmd's
default media marker. This handler renders the same template (:mod:`lfm2_edge.prompt.template`,
or the built-in LFM2 ChatML when the file has none) with every image first in its turn
and message text kept as content, decodes images with Pillow, and stops at ``<|im_end|>``::

    from llama_cpp import Llama
    from lfm2_edge.local.handler import Lfm2VlChatHandler

    llm = Llama("model-Q4_0.gguf", chat_handler=Lfm2VlChatHandler("mmproj-F16.gguf"), n_ctx=4096)
    llm.create_chat_completion(messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}},
    ]}])

:class:`lfm2_edge.VisionModel` is the leaner path; this one returns llama-cpp-python's
own response dicts and streams.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp import llama_types

from lfm2_edge._llama._private import (
    clear_llama_memory,
    convert_completion_to_chat,
    llama_context_ptr,
    llama_exit_stack,
)
from lfm2_edge._llama.projector import Projector
from lfm2_edge._llama.segments import MarkerTable, token_runs
from lfm2_edge.chat.images import load_image
from lfm2_edge.chat.messages import conversation_images, normalize_messages
from lfm2_edge.errors import ModelFileError
from lfm2_edge.hub.catalog import VL
from lfm2_edge.prompt.chatml import render_prompt
from lfm2_edge.prompt.template import ChatTemplate, template_of
from lfm2_edge.prompt.tokens import IM_END

__all__ = ["Lfm2VlChatHandler"]


class Lfm2VlChatHandler:
    """Callable with llama-cpp-python's chat-handler signature.

    The projector is loaded on the first call against the ``Llama`` it is given and
    freed with that ``Llama``. One handler serves one ``Llama``. The defaults (system
    prompt, image-token budget, sampling) are the LFM2-VL card's, from
    :data:`lfm2_edge.hub.catalog.VL`.

    The call takes llama-cpp-python's keyword names: the repetition penalty is
    ``repeat_penalty`` here because ``Llama.create_chat_completion`` passes it under that
    name; everywhere else in lfm2-edge (CLI, API, server) it is ``repetition_penalty``.
    A missing projector file raises :class:`~lfm2_edge.errors.ModelFileError`.
    """

    def __init__(
        self,
        clip_model_path: str | os.PathLike[str],
        *,
        system_prompt: str | None = VL.system_prompt,
        image_min_tokens: int | None = VL.image_min_tokens,
        image_max_tokens: int | None = VL.image_max_tokens,
        use_gpu: bool = False,
        allow_remote_images: bool = True,
    ) -> None:
        self.clip_model_path = Path(clip_model_path)
        if not self.clip_model_path.is_file():
            raise ModelFileError(f"mmproj file not found: {self.clip_model_path}")
        self.system_prompt = system_prompt
        self.image_min_tokens = image_min_tokens
        self.image_max_tokens = image_max_tokens
        self.use_gpu = use_gpu
        self.allow_remote_images = allow_remote_images
        self._projector: Projector | None = None
        self._markers: MarkerTable | None = None
        self.last_prompt: str | None = None  # the exact text sent, for inspection
        self.chat_template: ChatTemplate | None = None  # the Llama's file's, read on the first call

    def _projector_for(self, llama: llama_cpp.Llama) -> Projector:
        if self._projector is None:
            projector = Projector(
                self.clip_model_path,
                llama.model,
                n_threads=llama.n_threads,
                use_gpu=self.use_gpu,
                flash_attn_type=llama.context_params.flash_attn_type,
                image_min_tokens=self.image_min_tokens,
                image_max_tokens=self.image_max_tokens,
                verbose=llama.verbose,
            )
            llama_exit_stack(llama).callback(projector.close)
            self._projector = projector
        return self._projector

    def _markers_for(self, llama: llama_cpp.Llama) -> MarkerTable:
        if self._markers is None:
            self._markers = MarkerTable(lambda m: ids[0] if len(ids := _tokens(llama, m, special=True)) == 1 else None)
        return self._markers

    def render(self, messages: list[Any]) -> tuple[str, list[Any]]:
        """The prompt text and the images it refers to, in marker order."""
        msgs = normalize_messages(messages)
        prompt = render_prompt(msgs, system_prompt=self.system_prompt, chat_template=self.chat_template)
        return prompt, conversation_images(msgs)

    def __call__(
        self,
        *,
        llama: llama_cpp.Llama,
        messages: list[Any],
        temperature: float = VL.sampling.temperature,
        top_p: float = VL.sampling.top_p,
        top_k: int = VL.sampling.top_k,
        min_p: float = VL.sampling.min_p,
        typical_p: float = 1.0,
        stream: bool = False,
        stop: str | list[str] | None = None,
        seed: int | None = None,
        max_tokens: int | None = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repeat_penalty: float = VL.sampling.repetition_penalty,
        logits_processor: Any = None,
        grammar: Any = None,
        logit_bias: dict[int, float] | None = None,
        model: str | None = None,
        **_unused: Any,
    ) -> llama_types.CreateChatCompletionResponse | Iterator[llama_types.CreateChatCompletionStreamResponse]:
        projector = self._projector_for(llama)
        if self.chat_template is None:
            self.chat_template = template_of(llama.metadata, verbose=llama.verbose)
        prompt, image_refs = self.render(messages)
        self.last_prompt = prompt
        images = [load_image(ref, allow_remote=self.allow_remote_images) for ref in image_refs]
        runs = token_runs(prompt, self._markers_for(llama), lambda text: _tokens(llama, text, special=False))
        with projector.tokenize(runs, images) as chunks:
            if chunks.n_pos >= llama.n_ctx():
                raise ValueError(f"Prompt exceeds n_ctx: {chunks.n_pos} > {llama.n_ctx()}")
            llama.reset()
            clear_llama_memory(llama)
            for i, info in enumerate(chunks.info):
                if info.is_image:
                    llama.n_tokens = projector.eval_chunk(
                        chunks, i, llama_context_ptr(llama), llama.n_tokens, llama.n_batch, logits_last=False
                    )
                else:
                    # through Llama.eval, so llama-cpp-python's own bookkeeping stays right
                    llama.eval(chunks.text_tokens(i))
            prompt_tokens = llama.input_ids[: llama.n_tokens].tolist()

        im_end = llama.tokenize(IM_END.encode(), add_bos=False, special=True)
        stopping = llama_cpp.StoppingCriteriaList([lambda ids, _logits: len(im_end) == 1 and int(ids[-1]) == im_end[0]])
        completion = llama.create_completion(
            prompt=prompt_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            min_p=min_p,
            typical_p=typical_p,
            stream=stream,
            stop=stop,
            seed=seed,
            max_tokens=max_tokens,
            presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty,
            repeat_penalty=repeat_penalty,
            logits_processor=logits_processor,
            stopping_criteria=stopping,
            grammar=grammar,
            logit_bias=logit_bias,
            model=model,
        )
        return convert_completion_to_chat(completion, stream=stream)


def _tokens(llama: llama_cpp.Llama, text: str, *, special: bool) -> list[int]:
    return list(llama.tokenize(text.encode("utf-8"), add_bos=False, special=special))
