"""``VisionModel`` and ``TextModel``: the typed surface an app embeds to chat with a
local LFM2-VL or LFM2 model.

Each instance owns its llama.cpp model, context and (for VL) projector, and the
:class:`~lfm2_edge.local.engine.Engine` thread that runs every chat on them (the same
engine ``serve`` drives); two instances in one process do not share state.

One conversation at a time per model (a context of one sequence, unless ``n_seq_max``
gave it more): threads calling :meth:`chat` without ``stream`` wait their turn and each
gets its own whole answer. A new :meth:`chat` ends an unfinished stream of the same
model: that stream yields nothing more and its ``result`` holds the text the engine
had generated (``finish_reason`` ``"stop"`` when it was cut short). :meth:`close` ends
any stream the same way, makes a ``chat()`` in progress raise
:class:`~lfm2_edge.errors.ModelClosedError`, and frees llama.cpp's memory; afterwards
every call that needs the model raises it too.
"""

from __future__ import annotations

import os
import queue
import threading
import weakref
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from lfm2_edge._llama.caches import StateCache
from lfm2_edge._llama.context import Runtime
from lfm2_edge.chat.contract import ChatCall, ChatModel
from lfm2_edge.chat.events import Cancelled, Done, Event, Failed, Logprobs, Piece, Reasoning
from lfm2_edge.chat.images import load_image
from lfm2_edge.chat.messages import Message, conversation_images
from lfm2_edge.chat.results import ChatResult, ChatStream, StreamClosed, Thought, Timings, TokenLogprob, Usage
from lfm2_edge.chat.sampling import Sampling
from lfm2_edge.errors import ContextOverflowError, ModelClosedError, ModelFileError
from lfm2_edge.hub.catalog import DEFAULT_TEXT_SYSTEM_PROMPT, DEFAULT_VL_SYSTEM_PROMPT, TEXT_SAMPLING, VL_SAMPLING
from lfm2_edge.hub.download import find_mmproj
from lfm2_edge.hub.validate import check_model_files
from lfm2_edge.local.engine import Engine, Job, Progress
from lfm2_edge.local.loading import LoadOptions, Pretrained
from lfm2_edge.local.placement import choose_gpu_layers
from lfm2_edge.local.transcript import PreparedChat
from lfm2_edge.prompt.chatml import render_prompt
from lfm2_edge.prompt.reasoning import prompt_opens_thinking
from lfm2_edge.prompt.template import template_of
from lfm2_edge.prompt.tools import tool_plan

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from lfm2_edge.hub.download import ResolvedModel

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


class _LocalModel(ChatModel, Pretrained):
    """What :class:`VisionModel` and :class:`TextModel` share: a llama.cpp runtime, its
    saved conversation states, the engine that runs chats on them, and the chat contract
    (:class:`~lfm2_edge.chat.contract.ChatModel`)."""

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
        repack: bool = True,
        state_cache_mb: float = 64,
        verbose: bool = False,
        image_min_tokens: int | None = None,
        image_max_tokens: int | None = None,
        image_thumbnail: bool = True,
        image_max_pixels_tolerance: float = 2.0,
        embedding_cache_mb: float = 0,
        allow_remote_images: bool = True,
        allow_private_urls: bool = False,
        n_seq_max: int = 1,
    ) -> None:

        self.system_prompt = system_prompt
        self.sampling = sampling
        self.allow_remote_images = allow_remote_images
        self.allow_private_urls = allow_private_urls
        # on_progress(stage, i, n): before each image tile ("image") and prompt batch
        # ("prefill") is evaluated, on the engine's thread; raising from it stops the
        # prompt there (the chat raises what it raised).
        self.on_progress: Progress | None = None
        # States saved at the prompts' save points: see lfm2_edge.local.engine.
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
            image_thumbnail=image_thumbnail,
            image_max_pixels_tolerance=image_max_pixels_tolerance,
            flash_attn=flash_attn,
            repack=repack,
            embedding_cache_mb=embedding_cache_mb,
            verbose=verbose,
            n_seq_max=n_seq_max,
        )
        try:
            self.engine = Engine(self._runtime, self._states)
        except BaseException:
            self._runtime.close()
            raise
        self._close_lock = threading.Lock()
        self._closed = False
        # the library's unfinished streams: a new chat ends them (see the module's docstring)
        self._streams: weakref.WeakSet[Job] = weakref.WeakSet()

    # -- lifecycle ---------------------------------------------------------------

    def close(self) -> None:
        """Free the model. Safe to call twice, and from another thread while a stream
        runs: the stream ends at its next token (keeping its text so far); a ``chat()``
        in progress raises :class:`ModelClosedError`."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self.engine.close()
            self._runtime.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self: _M) -> _M:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset(self) -> None:
        """Forget every saved conversation state.

        Answers never depend on it: state is reused only when a prompt extends it exactly.
        It frees memory, and gives a clean slate after :meth:`chat` raised. An
        unfinished stream is ended, as by a new chat.
        """
        self._check_open()
        self._end_streams()
        with self.engine.lock:
            self._states.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise ModelClosedError("the model has been closed; load it again to chat")

    @property
    def image_encodes(self) -> int:
        """How many image tiles the vision encoder has run on so far."""
        projector = self._runtime.projector
        return projector.encodes if projector else 0

    @property
    def n_ctx(self) -> int:
        return self._runtime.n_ctx

    @property
    def n_ctx_per_seq(self) -> int:
        """The context of one sequence (of ``n_seq_max``): what one conversation can fill."""
        return self._runtime.n_ctx_seq

    @property
    def n_threads(self) -> int:
        return self._runtime.n_threads

    # -- chat --------------------------------------------------------------------

    def _open(self, call: ChatCall, *, stream: bool) -> ChatStream:
        chat = self._prepare(call)  # at the call: a bad image or option raises here
        sink: list[TokenLogprob] | None = [] if call.logprobs is not None else None
        return ChatStream(self._answer(chat, stream, sink), sink)

    def _answer(
        self, chat: PreparedChat, stream: bool, sink: list[TokenLogprob] | None
    ) -> Generator[str, None, ChatResult | None]:
        """The generator behind a library stream: post the chat to the engine at the
        first ``next()``, hand its events out, return its result."""
        self._check_open()
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        job = Job(chat, events.put, stream=stream, on_progress=self.on_progress)
        self._end_streams()
        if stream:
            self._streams.add(job)
        self.engine.submit(job)
        stopped = False
        try:
            while True:
                event = events.get()
                if isinstance(event, (Piece, Reasoning)):
                    if job.stopping.is_set():  # ended by a newer chat or close(): nothing more
                        continue
                    try:
                        yield event.text if isinstance(event, Piece) else Thought(event.text)
                    except StreamClosed:
                        stopped = True
                        job.stop()
                elif isinstance(event, Logprobs):
                    if sink is not None:
                        sink.extend(event.entries)
                elif isinstance(event, Done):
                    if sink is not None:  # the entries of a piece not handed out
                        sink[:] = event.result.logprobs or ()
                    return event.result
                elif isinstance(event, Failed):
                    raise event.error
                elif isinstance(event, Cancelled):
                    return None
        finally:
            self._streams.discard(job)
            if not stopped:
                job.stop()  # dropped half-way (GeneratorExit, Ctrl-C): free the sequence

    def _end_streams(self) -> None:
        """End the unfinished library streams, when the engine has no sequence to spare
        for a new chat (with one sequence: always, even when the engine has finished a
        stream's answer and only its reader has not)."""
        if self.engine.n_slots == 1 or self.engine.busy >= self.engine.n_slots:
            for job in list(self._streams):
                job.stop()

    def prepare(self, call: ChatCall) -> PreparedChat:
        """What the engine evaluates for ``call``, checked and rendered, nothing evaluated
        yet: a cheap context check, the tool plan, the loaded images and the prompt.
        ``serve`` posts its requests to :attr:`engine` from here."""
        return self._prepare(call)

    def _prepare(self, call: ChatCall) -> PreparedChat:
        self._check_open()
        call.params.check_vocabulary(self._runtime.n_vocab)
        messages = call.messages
        plan = tool_plan(
            call.tools,
            call.tool_choice,
            call.response_format,
            call.grammar,
            parallel_tool_calls=call.parallel_tool_calls,
        )
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
        return PreparedChat(prompt, loaded, call.params, plan, call.logprobs, prompt_opens_thinking(prompt))

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
                f"but the context holds {rt.n_ctx_seq}; raise --ctx above {low} or shorten the conversation"
                + (" or send fewer images" if n_images else ""),
                context_tokens=rt.n_ctx_seq,
            )


class VisionModel(_LocalModel):
    """An LFM2-VL model (GGUF language model + mmproj projector) ready to chat.

    Without ``mmproj_path``, an ``mmproj*.gguf`` next to the model file is used (the
    one matching the model's quant, else F16), as the CLI does; with none there it chats
    in text only (a request with images is refused).

    Images are cut as transformers' ``Lfm2VlImageProcessor`` cuts them: ``image_min_tokens``
    / ``image_max_tokens`` are its token budget, ``image_thumbnail`` and
    ``image_max_pixels_tolerance`` its ``use_thumbnail`` and ``max_pixels_tolerance``
    (``from_pretrained`` takes all four from the model's processor config, see the catalog).

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
        image_thumbnail: bool = True,
        image_max_pixels_tolerance: float = 2.0,
        system_prompt: str | None = DEFAULT_VL_SYSTEM_PROMPT,
        sampling: Sampling = VL_SAMPLING,
        allow_remote_images: bool = True,
        allow_private_urls: bool = False,
        embedding_cache_mb: float = 32,
        **options: Unpack[LoadOptions],
    ) -> None:
        if mmproj_path is None:
            mmproj_path = find_mmproj(Path(model_path))
        self.mmproj_path = Path(mmproj_path) if mmproj_path is not None else None
        super().__init__(
            model_path,
            mmproj_path,
            system_prompt=system_prompt,
            sampling=sampling,
            image_min_tokens=image_min_tokens,
            image_max_tokens=image_max_tokens,
            image_thumbnail=image_thumbnail,
            image_max_pixels_tolerance=image_max_pixels_tolerance,
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
