"""``VisionModel``: the typed surface an app embeds to chat with an LFM2-VL model.

Each instance owns its llama.cpp model, context and projector; two instances in one
process do not share state. Calls on one instance are serialised by its own lock.
"""

from __future__ import annotations

import codecs
import os
import threading
import time
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, overload

from lfm2_edge.caches import Item, StateCache
from lfm2_edge.errors import GenerationError, Lfm2EdgeError, ModelFileError, ModelMismatchError
from lfm2_edge.images import load_image
from lfm2_edge.results import ChatResult, ChatStream, StreamClosed, Timings, Usage
from lfm2_edge.prompt import (
    DEFAULT_TEXT_SYSTEM_PROMPT,
    DEFAULT_VL_SYSTEM_PROMPT,
    MessageInput,
    conversation_images,
    normalize_messages,
    render_prompt,
)
from lfm2_edge.runtime import Runtime, SavedState
from lfm2_edge.sampling import TEXT_SAMPLING, VL_SAMPLING, Sampling
from lfm2_edge.tools import ToolCall, call_grammar, parse_answer, schema_grammar, tool_functions

if TYPE_CHECKING:
    from lfm2_edge.hub import Hub, ResolvedModel
    from lfm2_edge.remote import RemoteBackend

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


class _StopScanner:
    """Holds back text that could be the start of a stop string, so a stream never
    shows a stop string it is about to cut."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.text = ""
        self.emitted = 0

    def feed(self, piece: str) -> tuple[str, bool]:
        self.text += piece
        for stop in self.stops:
            at = self.text.find(stop, max(0, self.emitted - len(stop)))
            if at != -1:
                self.text = self.text[:at]
                return self._flush(len(self.text)), True
        return self._flush(len(self.text) - self.hold), False

    def finish(self) -> str:
        return self._flush(len(self.text))

    def _flush(self, upto: int) -> str:
        if upto <= self.emitted:
            return ""
        out = self.text[self.emitted : upto]
        self.emitted = upto
        return out


_M = TypeVar("_M", bound="VisionModel")


def _tool_plan(
    tools: Sequence[Mapping[str, Any]] | None,
    tool_choice: str | Mapping[str, Any] | None,
    response_format: Mapping[str, Any] | None,
    grammar: str | None,
) -> tuple[list[dict[str, Any]], Literal["auto", "forced"] | None, str | None]:
    """(functions for the prompt, how to read calls in the answer, grammar) of a request."""
    functions = tool_functions(tools) if tools else []
    mode: Literal["auto", "forced"] | None = "auto" if functions else None
    if response_format is not None:
        if grammar is not None:
            raise Lfm2EdgeError("give response_format or grammar, not both")
        grammar = schema_grammar(response_format)
    if tool_choice in (None, "auto") or not functions:
        return functions, mode, grammar
    if tool_choice == "none":
        return [], None, grammar
    if isinstance(tool_choice, Mapping):
        name = (tool_choice.get("function") or {}).get("name")
        chosen = [f for f in functions if f["name"] == name]
        if not chosen:
            raise Lfm2EdgeError(f"tool_choice names {name!r}, which is not among the tools")
        if grammar is not None:
            raise Lfm2EdgeError("a named tool_choice cannot be combined with response_format or grammar")
        return functions, "forced", call_grammar(chosen[0])
    raise Lfm2EdgeError(f"tool_choice must be 'auto', 'none' or {{'type': 'function', ...}}, not {tool_choice!r}")


class VisionModel:
    """An LFM2-VL model (GGUF language model + mmproj projector) ready to chat.

    >>> model = VisionModel("model-Q4_0.gguf", "mmproj-F16.gguf")
    >>> model.chat("What is in this image?", images=["cat.jpg"]).text
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        mmproj_path: str | os.PathLike[str] | None = None,
        *,
        endpoint: str | None = None,
        api_key: str | None = None,
        remote_model: str | None = None,
        n_threads: int | None = None,
        n_gpu_layers: int | str = 0,
        device: str | None = None,
        n_ctx: int = 4096,
        n_batch: int = 512,
        image_min_tokens: int | None = 64,
        image_max_tokens: int | None = 256,
        system_prompt: str | None = DEFAULT_VL_SYSTEM_PROMPT,
        sampling: Sampling = VL_SAMPLING,
        allow_remote_images: bool = True,
        allow_private_urls: bool = False,
        use_mmap: bool = True,
        use_mlock: bool = False,
        flash_attn: bool | None = None,
        embedding_cache_mb: float = 32,
        state_cache_mb: float = 64,
        verbose: bool = False,
    ) -> None:
        """Load a local model, or (with ``endpoint``) talk to an OpenAI-compatible server.

        With ``endpoint="http://host:8000/v1"`` nothing is loaded: :meth:`chat` sends
        the conversation to that server (vLLM, or another ``lfm2-edge serve``) as
        ``remote_model`` (default: the server's first model), with ``api_key`` if given,
        and returns the same result types. The system prompt and sampling defaults
        still come from here, so a local and a remote model answer the same request.
        """
        from lfm2_edge.validate import check_model_files

        self.system_prompt = system_prompt
        self.sampling = sampling
        self.allow_remote_images = allow_remote_images
        self.allow_private_urls = allow_private_urls
        self._lock = threading.Lock()
        # States saved after a prompt's last image and at its end: see _restore_prefix.
        self._states = StateCache(int(state_cache_mb * 2**20))
        self._remote: RemoteBackend | None = None
        self._runtime: Runtime | None = None
        self.gpu_notice: str | None = None
        self.device = "remote" if endpoint is not None else "CPU"
        self.model_path = Path(model_path) if model_path is not None else None
        self.mmproj_path = Path(mmproj_path) if mmproj_path is not None else None
        if endpoint is not None:
            from lfm2_edge.remote import RemoteBackend

            self._remote = RemoteBackend(endpoint, api_key=api_key, model=remote_model)
            return
        if model_path is None:
            raise ModelFileError("give a model file (or endpoint= for a remote server)")
        check_model_files(model_path, mmproj_path)
        from lfm2_edge.backends import choose_gpu_layers

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
            return cls(resolved.model_path, mmproj_path=resolved.mmproj_path, **{**resolved.model_kwargs(), **kwargs})
        except ModelMismatchError:
            raise
        except ModelFileError as exc:
            if resolved.ref.is_local:
                raise
            raise ModelFileError(
                f"the cached copy of {resolved.ref.display} is damaged ({exc}); "
                f"`lfm2-edge pull {resolved.ref.display}` downloads it again"
            ) from None

    # -- lifecycle ---------------------------------------------------------------

    @property
    def endpoint(self) -> str | None:
        """The server's URL when this model is remote."""
        return self._remote.base_url if self._remote else None

    def _local(self) -> Runtime:
        if self._runtime is None:
            raise GenerationError("this model is remote; it has no local runtime")
        return self._runtime

    def close(self) -> None:
        with self._lock:
            if self._runtime is not None:
                self._runtime.close()
            if self._remote is not None:
                self._remote.close()

    def __enter__(self) -> VisionModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset(self) -> None:
        """Forget every conversation state (the context and the saved states).

        Answers never depend on it: state is reused only when a prompt extends it exactly.
        It frees memory, and gives a clean slate after :meth:`chat` raised.
        """
        with self._lock:
            if self._runtime is not None:
                self._runtime.reset()
            self._states.clear()

    @property
    def image_encodes(self) -> int:
        """How many image tiles the vision encoder has run on so far."""
        projector = self._runtime.projector if self._runtime else None
        return projector.encodes if projector else 0

    @property
    def n_ctx(self) -> int:
        return self._runtime.n_ctx if self._runtime else 0

    @property
    def n_threads(self) -> int:
        return self._runtime.n_threads if self._runtime else 0

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
        if self._remote is not None:
            extra = {"tools": tools, "tool_choice": tool_choice, "response_format": response_format}
            steps = self._remote.chat(messages, loaded, params, self.system_prompt, extra)
        else:
            prompt = render_prompt(messages, system_prompt=self.system_prompt, tools=functions)
            steps = self._generate(prompt, loaded, params, grammar, tools_mode)
        stream_obj = ChatStream(steps)
        if stream:
            return stream_obj
        for _ in stream_obj:
            pass
        assert stream_obj.result is not None
        return stream_obj.result

    def _restore_prefix(self, items: list[Item]) -> tuple[int, SavedState | None]:
        """Load the saved state that covers the longest part of ``items``.

        Returns how many leading items the context now holds (0: it was cleared) and,
        when that is all of them, the state whose saved logits the first token is
        sampled from. LFM2's short-conv state cannot be rolled back, so only a state
        whose whole history is a prefix of the new prompt can be continued; states are
        saved at :meth:`Runtime.save_points` (after a prompt's last image, and at its
        end), which the next turn, a regenerated answer and a new question about the
        same image all extend.
        """
        rt = self._local()
        saved = self._states.longest_prefix_of(items)
        if saved is not None:
            key, state = saved
            if rt.load_state(state, rt.positions(key)):
                return len(key), (state if len(key) == len(items) else None)
        rt.reset()
        return 0, None

    def _generate(
        self,
        prompt: str,
        images: list[Any],
        params: Sampling,
        grammar: str | None = None,
        tools_mode: Literal["auto", "forced"] | None = None,
    ) -> Generator[str, None, ChatResult]:
        with self._lock:
            rt = self._local()
            t_start = time.perf_counter()
            encodes_before = self.image_encodes
            chunks = rt.tokenize_prompt(prompt, images)
            try:
                items = rt.prompt_items(chunks, [im.digest for im in images])
                rt.check_fits(chunks.n_pos, len(images), chunks.n_image_tokens)
                start, resumed = self._restore_prefix(items)
                cached_tokens = rt.positions(items[:start])
                image_s = 0.0
                done = start
                for point in rt.save_points(items):
                    if point <= done:
                        continue
                    image_s += rt.eval_items(chunks, items, done, point)
                    done = point
                    if self._states.max_bytes:
                        state = rt.save_state(with_logits=point == len(items))
                        self._states.put(tuple(items[:point]), state, state.nbytes)
            except BaseException:
                rt.reset()
                raise
            finally:
                chunks.free()
            t_prompt = time.perf_counter()
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            scanner = _StopScanner(params.stop)
            n_out = 0
            finish: Literal["stop", "length"] = "length"
            hit_stop_string = closed = False
            t_first = t_prompt
            with rt.sampler(
                temperature=params.temperature,
                top_k=params.top_k,
                top_p=params.top_p,
                min_p=params.min_p,
                repetition_penalty=params.repetition_penalty,
                seed=params.seed,
                grammar=grammar,
            ) as chain:
                first_logits = resumed.logits if resumed is not None else None
                while n_out < params.max_tokens and rt.n_past < rt.n_ctx:
                    token = rt.sample(chain, first_logits)
                    first_logits = None
                    if n_out == 0:
                        t_first = time.perf_counter()
                    if rt.is_end(token):
                        finish = "stop"
                        break
                    n_out += 1
                    piece, hit_stop_string = scanner.feed(decoder.decode(rt.token_bytes(token)))
                    if piece:
                        try:
                            yield piece
                        except StreamClosed:
                            finish, closed = "stop", True
                            break
                    if hit_stop_string:
                        finish = "stop"
                        break
                    if n_out < params.max_tokens:
                        rt.eval_one(token)
            if not hit_stop_string:
                piece, _ = scanner.feed(decoder.decode(b"", final=True))
                tail = piece + scanner.finish()
                if tail and not closed:
                    try:
                        yield tail
                    except StreamClosed:
                        pass
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
                    chunks.n_pos,
                    chunks.n_image_tokens,
                    n_out,
                    cached_tokens=cached_tokens,
                    image_encodes=self.image_encodes - encodes_before,
                ),
                timings=Timings(
                    prompt_ms=(t_prompt - t_start) * 1000,
                    image_ms=image_s * 1000,
                    first_token_ms=(t_first - t_start) * 1000,
                    decode_ms=(t_end - t_first) * 1000,
                ),
            )


class TextModel(VisionModel):
    """An LFM2 text model (LFM2-350M / 700M / 1.2B, LFM2.5-1.2B-Instruct): the same API
    without a projector, with the text card's defaults (temperature 0.3, min_p 0.15,
    repetition penalty 1.05, its system prompt).

    >>> model = TextModel("LFM2-1.2B-Q4_0.gguf")
    >>> TextModel.from_pretrained("LFM2-1.2B").chat("What is C. elegans?").text
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        system_prompt: str | None = DEFAULT_TEXT_SYSTEM_PROMPT,
        sampling: Sampling = TEXT_SAMPLING,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("mmproj_path", None)
        super().__init__(model_path, None, system_prompt=system_prompt, sampling=sampling, **kwargs)
