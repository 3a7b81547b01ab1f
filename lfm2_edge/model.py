"""``VisionModel`` and ``TextModel``: the typed surface an app embeds to chat with a
local LFM2-VL or LFM2 model.

Each instance owns its llama.cpp model, context and (for VL) projector; two instances in
one process do not share state.

One conversation at a time per model: calls on one instance are serialised by its own
lock, taken per step (the prompt's evaluation, then each token) and never held across
a ``yield``. Threads calling :meth:`chat` without ``stream`` wait for each other and
each gets its own whole answer. A new :meth:`chat` ends an unfinished stream of the
same model: that stream yields nothing more and its ``result`` holds the text so far
(``finish_reason`` ``"stop"``). :meth:`close` waits for the token step in progress,
ends any stream, and frees llama.cpp's memory; afterwards every call that needs the
model raises :class:`~lfm2_edge.errors.ModelClosedError`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, overload

from lfm2_edge._llama.context import Runtime
from lfm2_edge.aio import AsyncChatMixin
from lfm2_edge.caches import StateCache
from lfm2_edge.catalog import TEXT_SAMPLING, VL_SAMPLING
from lfm2_edge.errors import ContextOverflowError, InvalidParameterError, ModelFileError
from lfm2_edge.generation import PreparedChat, Run, Turns, answer
from lfm2_edge.images import ImagesArg, load_image
from lfm2_edge.loading import LoadOptions, Pretrained
from lfm2_edge.prompt import (
    DEFAULT_TEXT_SYSTEM_PROMPT,
    DEFAULT_VL_SYSTEM_PROMPT,
    Message,
    MessageInput,
    conversation_images,
    normalize_messages,
    render_prompt,
)
from lfm2_edge.results import ChatResult, ChatStream, Timings, TokenLogprob, Usage
from lfm2_edge.sampling import Sampling
from lfm2_edge.tools import tool_plan as _tool_plan

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from lfm2_edge.hub import ResolvedModel

__all__ = [
    "TEXT_SAMPLING",
    "VL_SAMPLING",
    "ChatResult",
    "ChatStream",
    "Sampling",
    "TextModel",
    "Timings",
    "Usage",
    "VisionModel",
]


_M = TypeVar("_M", bound="_LocalModel")


class _LocalModel(AsyncChatMixin, Pretrained):
    """What :class:`VisionModel` and :class:`TextModel` share: a llama.cpp runtime, its
    saved conversation states, and chat."""

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        mmproj_path: str | os.PathLike[str] | None,
        *,
        system_prompt: str | None,
        sampling: Sampling,
        n_threads: int | None = None,
        n_gpu_layers: int | str | None = None,
        device: str | None = None,
        n_ctx: int = 4096,
        n_batch: int = 512,
        use_mmap: bool = True,
        use_mlock: bool = False,
        flash_attn: bool | None = None,
        state_cache_mb: float = 64,
        verbose: bool = False,
        image_min_tokens: int | None = None,
        image_max_tokens: int | None = None,
        embedding_cache_mb: float = 0,
        allow_remote_images: bool = True,
        allow_private_urls: bool = False,
        n_seq_max: int = 1,
    ) -> None:
        from lfm2_edge.backends import choose_gpu_layers
        from lfm2_edge.template import template_of
        from lfm2_edge.validate import check_model_files

        self.system_prompt = system_prompt
        self.sampling = sampling
        self.allow_remote_images = allow_remote_images
        self.allow_private_urls = allow_private_urls
        # Taken per llama.cpp step, never across a yield (see the module's docstring).
        self._turns = Turns()
        # on_progress(stage, i, n): before each image tile ("image") and prompt batch
        # ("prefill") is evaluated; raising from it stops the prompt there.
        self.on_progress: Callable[[str, int, int], None] | None = None
        # States saved after a prompt's last image and at its end: see lfm2_edge.prefill.
        self._states = StateCache(int(state_cache_mb * 2**20))
        self.model_path = Path(model_path)
        header, _ = check_model_files(model_path, mmproj_path)
        self.chat_template = template_of(header, verbose=verbose)  # the file's own, else built-in ChatML
        gpu = choose_gpu_layers(n_gpu_layers, device)
        self.gpu_notice = gpu.notice  # one line for the user when a GPU was asked for but is absent
        self.device = gpu.device.name if gpu.device else "CPU"
        self._runtime = Runtime(
            model_path,
            mmproj_path,
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_threads=n_threads,
            n_gpu_layers=gpu.n_gpu_layers,
            device=gpu.device.handle if gpu.device and gpu.device.is_gpu else None,
            use_mmap=use_mmap,
            use_mlock=use_mlock,
            image_min_tokens=image_min_tokens,
            image_max_tokens=image_max_tokens,
            flash_attn=flash_attn,
            embedding_cache_mb=embedding_cache_mb,
            verbose=verbose,
            n_seq_max=n_seq_max,
        )

    # -- lifecycle ---------------------------------------------------------------

    def close(self) -> None:
        """Free the model. Safe to call twice, and from another thread while a stream
        runs: it waits for the token step in progress and ends the stream (which keeps
        its text so far); a ``chat()`` in progress raises :class:`ModelClosedError`."""
        self._turns.close(self._runtime.close)

    @property
    def closed(self) -> bool:
        return self._turns.closed

    def __enter__(self: _M) -> _M:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset(self) -> None:
        """Forget every conversation state (the context and the saved states).

        Answers never depend on it: state is reused only when a prompt extends it exactly.
        It frees memory, and gives a clean slate after :meth:`chat` raised. An
        unfinished stream is ended, as by a new chat.
        """
        with self._turns.cond:
            self._turns.wait_turn()
            self._turns.end_owner()
            self._runtime.reset()
            self._states.clear()

    @property
    def image_encodes(self) -> int:
        """How many image tiles the vision encoder has run on so far."""
        projector = self._runtime.projector
        return projector.encodes if projector else 0

    @property
    def n_ctx(self) -> int:
        return self._runtime.n_ctx

    @property
    def step_lock(self) -> threading.Lock:
        """The lock held for each llama.cpp step on this model; the batched server
        (:mod:`lfm2_edge.batching`) takes it for each of its steps too."""
        return self._turns.lock

    @property
    def n_ctx_per_seq(self) -> int:
        """The context of one sequence (of ``n_seq_max``): what one conversation can fill."""
        return self._runtime.n_ctx_seq

    @property
    def n_threads(self) -> int:
        return self._runtime.n_threads

    # -- chat --------------------------------------------------------------------

    @overload
    def chat(
        self,
        prompt_or_messages: str | Sequence[MessageInput],
        images: ImagesArg | None = ...,
        *,
        stream: Literal[False] = ...,
        tools: Sequence[Mapping[str, Any]] | None = ...,
        tool_choice: str | Mapping[str, Any] | None = ...,
        parallel_tool_calls: bool | None = ...,
        response_format: Mapping[str, Any] | None = ...,
        grammar: str | None = ...,
        logprobs: int | None = ...,
        **sampling: Any,
    ) -> ChatResult: ...

    @overload
    def chat(
        self,
        prompt_or_messages: str | Sequence[MessageInput],
        images: ImagesArg | None = ...,
        *,
        stream: Literal[True],
        tools: Sequence[Mapping[str, Any]] | None = ...,
        tool_choice: str | Mapping[str, Any] | None = ...,
        parallel_tool_calls: bool | None = ...,
        response_format: Mapping[str, Any] | None = ...,
        grammar: str | None = ...,
        logprobs: int | None = ...,
        **sampling: Any,
    ) -> ChatStream: ...

    def chat(
        self,
        prompt_or_messages: str | Sequence[MessageInput],
        images: ImagesArg | None = None,
        *,
        stream: bool = False,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
        response_format: Mapping[str, Any] | None = None,
        grammar: str | None = None,
        logprobs: int | None = None,
        **sampling: Any,
    ) -> ChatResult | ChatStream:
        """Answer a prompt or a conversation, with images before the text of their turn.

        ``images`` (paths, bytes, PIL images, ``data:`` URIs, http(s) URLs) join the
        last user turn. Sampling options (``temperature``, ``top_p``, ``top_k``,
        ``min_p``, ``repetition_penalty``, ``presence_penalty``, ``frequency_penalty``,
        ``logit_bias``, ``seed``, ``max_tokens``, ``stop``: see :class:`Sampling`)
        override the model card's defaults for this call.

        ``tools`` (OpenAI function tools) are written into the system turn in LFM2's
        format; the model's calls come back as ``result.tool_calls``. ``tool_choice``
        is ``"auto"`` (default), ``"none"``, ``"required"`` (a call of one of the tools,
        or several unless ``parallel_tool_calls`` is false) or ``{"type": "function",
        "function": {"name": ...}}`` (one call of that one); forced calls follow their
        function's JSON schema, by a grammar. ``response_format``
        (``{"type": "json_object"}`` or ``{"type": "json_schema", "json_schema":
        {"schema": ...}}``) and ``grammar`` (GBNF) constrain the answer's shape.

        One conversation at a time: a new chat ends an unfinished stream of this model
        (see the module's docstring). Raises :class:`ModelClosedError` once closed.

        ``logprobs``: ``None`` (default) for none, else each generated token's
        log-probability and that many likeliest alternatives (``0``: none) in
        ``result.logprobs`` (and ``stream.logprobs`` as it goes): see
        :class:`~lfm2_edge.results.TokenLogprob`.
        """
        chat = self.prepare(
            prompt_or_messages,
            images,
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls,
            response_format=response_format,
            grammar=grammar,
            logprobs=logprobs,
            **sampling,
        )
        run, sink = Run(), (cast("list[TokenLogprob]", []) if logprobs is not None else None)
        steps = answer(self._turns, self._runtime, self._states, run, chat, sink, on_progress=self.on_progress)
        stream_obj = ChatStream(steps, sink)
        if stream:
            return stream_obj
        with self._turns.pin(run):
            for _ in stream_obj:
                pass
        assert stream_obj.result is not None
        return stream_obj.result

    def prepare(
        self,
        prompt_or_messages: str | Sequence[MessageInput],
        images: ImagesArg | None = None,
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
        response_format: Mapping[str, Any] | None = None,
        grammar: str | None = None,
        logprobs: int | None = None,
        **sampling: Any,
    ) -> PreparedChat:
        """What :meth:`chat` evaluates, checked and rendered, nothing evaluated yet: the
        sampling, the tool plan, a cheap context check, the loaded images and the prompt.
        The batched server (:mod:`lfm2_edge.batching`) starts from here too."""
        self._turns.check_open()
        params = self.sampling.updated(**sampling)
        params.check_vocabulary(self._runtime.n_vocab)
        if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int) or logprobs < 0):
            raise InvalidParameterError(f"logprobs must be None or a number of alternatives from 0, not {logprobs!r}")
        messages = normalize_messages(prompt_or_messages, images)
        plan = _tool_plan(tools, tool_choice, response_format, grammar, parallel_tool_calls=parallel_tool_calls)
        if self._runtime.projector is None and any(m.images for m in messages):
            raise ModelFileError(
                f"{self.model_path.name} was loaded without a vision projector; pass mmproj_path= "
                "(the mmproj GGUF from the model's repo) to send images"
            )
        self._check_lower_bound(messages)
        loaded = [
            load_image(img, allow_remote=self.allow_remote_images, allow_private=self.allow_private_urls)
            for img in conversation_images(messages)
        ]
        prompt = render_prompt(
            messages, system_prompt=self.system_prompt, tools=plan.functions, chat_template=self.chat_template
        )
        return PreparedChat(prompt, loaded, params, plan, logprobs)

    def _check_lower_bound(self, messages: Sequence[Message]) -> None:
        """Refuse a conversation that cannot fit, before rendering or tokenizing it.

        A cheap lower bound of its tokens: each message takes ``<|im_start|>``,
        ``<|im_end|>`` and the newline after it, and its ``role\\ntext`` at least its
        bytes over the vocabulary's longest token; each image at least the projector's
        minimum image tokens.
        """
        rt = self._runtime
        n_bytes = sum(len(m.role) + 1 + len(m.text.encode("utf-8", "replace")) for m in messages)
        n_images = sum(len(m.images) for m in messages)
        low = 3 * len(messages) + -(-n_bytes // rt.max_token_bytes) + n_images * rt.min_image_tokens
        if low >= rt.n_ctx_seq:
            raise ContextOverflowError(
                f"the prompt needs at least {low} tokens ({len(messages)} messages, {n_images} image(s)) "
                f"but the context holds {rt.n_ctx_seq}; raise --ctx or shorten the conversation",
                context_tokens=rt.n_ctx_seq,
            )


class VisionModel(_LocalModel):
    """An LFM2-VL model (GGUF language model + mmproj projector) ready to chat.

    Without ``mmproj_path``, an ``mmproj*.gguf`` next to the model file is used (the
    one matching the model's quant, else F16), as the CLI does; with none there it chats
    in text only (a request with images is refused).

    >>> model = VisionModel("model-Q4_0.gguf", "mmproj-F16.gguf")
    >>> model.chat("What is in this image?", images=["cat.jpg"]).text
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        mmproj_path: str | os.PathLike[str] | None = None,
        *,
        image_min_tokens: int | None = 64,
        image_max_tokens: int | None = 256,
        system_prompt: str | None = DEFAULT_VL_SYSTEM_PROMPT,
        sampling: Sampling = VL_SAMPLING,
        allow_remote_images: bool = True,
        allow_private_urls: bool = False,
        embedding_cache_mb: float = 32,
        **options: Unpack[LoadOptions],
    ) -> None:
        if mmproj_path is None:
            from lfm2_edge.hub import find_mmproj

            mmproj_path = find_mmproj(Path(model_path))
        self.mmproj_path = Path(mmproj_path) if mmproj_path is not None else None
        super().__init__(
            model_path,
            mmproj_path,
            system_prompt=system_prompt,
            sampling=sampling,
            image_min_tokens=image_min_tokens,
            image_max_tokens=image_max_tokens,
            embedding_cache_mb=embedding_cache_mb,
            allow_remote_images=allow_remote_images,
            allow_private_urls=allow_private_urls,
            **options,
        )

    @classmethod
    def _resolved_kwargs(cls, resolved: ResolvedModel) -> dict[str, Any]:
        return {"mmproj_path": resolved.mmproj_path, **resolved.model_kwargs()}


class TextModel(_LocalModel):
    """An LFM2 text model (LFM2-350M / 700M / 1.2B, LFM2.5-1.2B-Instruct): the same API
    without a projector, with the text card's defaults (temperature 0.3, min_p 0.15,
    repetition penalty 1.05, its system prompt).

    >>> model = TextModel("LFM2-1.2B-Q4_0.gguf")
    >>> TextModel.from_pretrained("LFM2-1.2B").chat("What is C. elegans?").text
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        system_prompt: str | None = DEFAULT_TEXT_SYSTEM_PROMPT,
        sampling: Sampling = TEXT_SAMPLING,
        **options: Unpack[LoadOptions],
    ) -> None:
        super().__init__(model_path, None, system_prompt=system_prompt, sampling=sampling, **options)

    @classmethod
    def _resolved_kwargs(cls, resolved: ResolvedModel) -> dict[str, Any]:
        """The card's sampling and system prompt; a VL card's projector and image budget
        do not apply to its language model alone."""
        return {k: v for k, v in resolved.model_kwargs().items() if k in ("sampling", "system_prompt")}
