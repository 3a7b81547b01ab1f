"""``VisionModel`` and ``TextModel``: the typed surface an app embeds to chat with a
local LFM2-VL or LFM2 model.

Each instance owns its llama.cpp model, context and (for VL) projector; two instances in
one process do not share state. Calls on one instance are serialised by its own lock.
"""

from __future__ import annotations

import codecs
import os
import threading
import time
from collections.abc import Generator, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar, cast, overload

from lfm2_edge._llama.context import Runtime
from lfm2_edge.caches import StateCache
from lfm2_edge.catalog import TEXT_SAMPLING, VL_SAMPLING
from lfm2_edge.errors import ModelFileError, ModelMismatchError
from lfm2_edge.holdback import HoldBack
from lfm2_edge.images import load_image
from lfm2_edge.prefill import prefill
from lfm2_edge.prompt import (
    DEFAULT_TEXT_SYSTEM_PROMPT,
    DEFAULT_VL_SYSTEM_PROMPT,
    MessageInput,
    conversation_images,
    normalize_messages,
    render_prompt,
)
from lfm2_edge.results import ChatResult, ChatStream, StreamClosed, Timings, Usage
from lfm2_edge.sampling import Sampling
from lfm2_edge.tools import ToolCall, parse_answer
from lfm2_edge.tools import tool_plan as _tool_plan

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from lfm2_edge.hub import Hub, ResolvedModel

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


class LoadOptions(TypedDict, total=False):
    """Where and how a model runs; the same for :class:`VisionModel` and :class:`TextModel`."""

    n_threads: int | None  # default: the physical cores
    n_gpu_layers: int | str  # 0 (CPU), -1 (all), a count, or "auto"
    device: str | None  # a ggml device name (`lfm2-edge info`)
    n_ctx: int  # 4096
    n_batch: int  # 512
    use_mmap: bool  # True
    use_mlock: bool  # False
    flash_attn: bool | None  # None: llama.cpp decides
    state_cache_mb: float  # 64: saved conversation states
    verbose: bool  # False: llama.cpp's log shows errors only


class _LocalModel:
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
        n_gpu_layers: int | str = 0,
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
    ) -> None:
        from lfm2_edge.backends import choose_gpu_layers
        from lfm2_edge.template import template_of
        from lfm2_edge.validate import check_model_files

        self.system_prompt = system_prompt
        self.sampling = sampling
        self.allow_remote_images = allow_remote_images
        self.allow_private_urls = allow_private_urls
        self._lock = threading.Lock()
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
        )

    @classmethod
    def from_pretrained(
        cls: type[_M],
        ref: str | None = None,
        *,
        mmproj: str | os.PathLike[str] | None = None,
        hub: Hub | None = None,
        **kwargs: Any,
    ) -> _M:
        """Load a model by reference, downloading it into the hub cache on first use.

        ``ref`` is ``NAME[:QUANT]`` (``"LFM2-VL-450M:Q8_0"``), ``REPO[:QUANT]`` or a local
        ``.gguf`` path; ``None`` is the default model (LFM2-VL-450M at Q4_0). The card's
        sampling, system prompt and image-token budget are the defaults; ``kwargs``
        override them. A cached model loads without any network request.
        """
        from lfm2_edge.hub import Hub, RichProgress

        return cls.from_resolved((hub or Hub(progress=RichProgress())).resolve(ref, mmproj=mmproj), **kwargs)

    @classmethod
    def from_resolved(cls: type[_M], resolved: ResolvedModel, **kwargs: Any) -> _M:
        """Load files :meth:`lfm2_edge.hub.Hub.resolve` found, with the card's presets."""
        try:
            return cls(resolved.model_path, **{**cls._resolved_kwargs(resolved), **kwargs})
        except ModelMismatchError:
            raise
        except ModelFileError as exc:
            if resolved.ref.is_local:
                raise
            raise ModelFileError(
                f"the cached copy of {resolved.ref.display} is damaged ({exc}); "
                f"`lfm2-edge pull {resolved.ref.display}` downloads it again"
            ) from None

    @classmethod
    def _resolved_kwargs(cls, resolved: ResolvedModel) -> dict[str, Any]:
        """The constructor arguments (besides the model path) that resolved files give."""
        return resolved.model_kwargs()

    # -- lifecycle ---------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._runtime.close()

    def __enter__(self: _M) -> _M:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset(self) -> None:
        """Forget every conversation state (the context and the saved states).

        Answers never depend on it: state is reused only when a prompt extends it exactly.
        It frees memory, and gives a clean slate after :meth:`chat` raised.
        """
        with self._lock:
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
    def n_threads(self) -> int:
        return self._runtime.n_threads

    # -- chat --------------------------------------------------------------------

    @overload
    def chat(
        self,
        prompt_or_messages: str | Sequence[MessageInput],
        images: Sequence[Any] | None = ...,
        *,
        stream: Literal[False] = ...,
        tools: Sequence[Mapping[str, Any]] | None = ...,
        tool_choice: str | Mapping[str, Any] | None = ...,
        response_format: Mapping[str, Any] | None = ...,
        grammar: str | None = ...,
        **sampling: Any,
    ) -> ChatResult: ...

    @overload
    def chat(
        self,
        prompt_or_messages: str | Sequence[MessageInput],
        images: Sequence[Any] | None = ...,
        *,
        stream: Literal[True],
        tools: Sequence[Mapping[str, Any]] | None = ...,
        tool_choice: str | Mapping[str, Any] | None = ...,
        response_format: Mapping[str, Any] | None = ...,
        grammar: str | None = ...,
        **sampling: Any,
    ) -> ChatStream: ...

    def chat(
        self,
        prompt_or_messages: str | Sequence[MessageInput],
        images: Sequence[Any] | None = None,
        *,
        stream: bool = False,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        response_format: Mapping[str, Any] | None = None,
        grammar: str | None = None,
        **sampling: Any,
    ) -> ChatResult | ChatStream:
        """Answer a prompt or a conversation, with images before the text of their turn.

        ``images`` (paths, bytes, PIL images, ``data:`` URIs, http(s) URLs) join the
        last user turn. Sampling options (``temperature``, ``top_p``, ``top_k``,
        ``min_p``, ``repetition_penalty``, ``seed``, ``max_tokens``, ``stop``)
        override the model card's defaults for this call.

        ``tools`` (OpenAI function tools) are written into the system turn in LFM2's
        format; the model's calls come back as ``result.tool_calls``. ``tool_choice``
        is ``"auto"`` (default), ``"none"`` or ``{"type": "function", "function":
        {"name": ...}}``, which forces that call with a grammar. ``response_format``
        (``{"type": "json_object"}`` or ``{"type": "json_schema", "json_schema":
        {"schema": ...}}``) and ``grammar`` (GBNF) constrain the answer's shape.
        """
        params = self.sampling.updated(**sampling)
        messages = normalize_messages(prompt_or_messages, images)
        functions, tools_mode, grammar = _tool_plan(tools, tool_choice, response_format, grammar)
        loaded = [
            load_image(img, allow_remote=self.allow_remote_images, allow_private=self.allow_private_urls)
            for img in conversation_images(messages)
        ]
        prompt = render_prompt(
            messages, system_prompt=self.system_prompt, tools=functions, chat_template=self.chat_template
        )
        stream_obj = ChatStream(self._generate(prompt, loaded, params, grammar, tools_mode))
        if stream:
            return stream_obj
        for _ in stream_obj:
            pass
        assert stream_obj.result is not None
        return stream_obj.result

    def _generate(
        self,
        prompt: str,
        images: list[Any],
        params: Sampling,
        grammar: str | None = None,
        tools_mode: Literal["auto", "forced"] | None = None,
    ) -> Generator[str, None, ChatResult]:
        with self._lock:
            rt = self._runtime
            t_start = time.perf_counter()
            encodes_before = self.image_encodes
            pre = prefill(rt, self._states, prompt, images)
            t_prompt = time.perf_counter()
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            scanner = HoldBack(stops=params.stop)
            n_out = 0
            finish: Literal["stop", "length"] = "stop"
            hit_stop_string = closed = False
            t_first = t_prompt
            with rt.sampler(params, grammar=grammar) as chain:
                first_logits = pre.resumed.logits if pre.resumed is not None else None
                for token in rt.generate(chain, max_tokens=params.max_tokens, first_logits=first_logits):
                    if n_out == 0:
                        t_first = time.perf_counter()
                    n_out += 1
                    piece, hit_stop_string = scanner.feed(decoder.decode(rt.token_bytes(token)))
                    if piece:
                        try:
                            yield piece
                        except StreamClosed:
                            closed = True
                            break
                    if hit_stop_string:
                        break
                else:  # the loop ended by itself: at an end token, at max_tokens or the context's end
                    if n_out >= params.max_tokens or rt.n_past >= rt.n_ctx:
                        finish = "length"
                    if n_out == 0 and finish == "stop":  # the first token sampled was an end token
                        t_first = time.perf_counter()
            if not hit_stop_string:
                piece, _ = scanner.feed(decoder.decode(b"", final=True))
                tail = piece + scanner.finish()
                if tail and not closed:
                    with suppress(StreamClosed):
                        yield tail
            t_end = time.perf_counter()
            text, calls = scanner.text, cast("tuple[ToolCall, ...]", ())
            if tools_mode is not None:
                parsed = parse_answer(text, bare=tools_mode == "forced")
                text, calls = (parsed.content, parsed.tool_calls) if parsed.tool_calls else (text, ())
            return ChatResult(
                text=text,
                finish_reason="tool_calls" if calls else finish,
                tool_calls=calls,
                usage=Usage(
                    pre.n_prompt,
                    pre.n_image_tokens,
                    n_out,
                    cached_tokens=pre.cached_tokens,
                    image_encodes=self.image_encodes - encodes_before,
                ),
                timings=Timings(
                    prompt_ms=(t_prompt - t_start) * 1000,
                    image_ms=pre.image_s * 1000,
                    first_token_ms=(t_first - t_start) * 1000,
                    decode_ms=(t_end - t_first) * 1000,
                ),
            )


class VisionModel(_LocalModel):
    """An LFM2-VL model (GGUF language model + mmproj projector) ready to chat.

    Without ``mmproj_path`` it chats in text only (a request with images is refused).

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
