"""One loaded model: a llama.cpp model, its context and (for VL models) its projector.

Everything here is owned by a :class:`Runtime` instance, never by the module, so an
app can hold two models at once. Evaluation and decoding are
:class:`lfm2_edge._llama.batch.Sequences`' (driven by the one engine,
:mod:`lfm2_edge.local.engine`).
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager, suppress
from pathlib import Path

import llama_cpp

from lfm2_edge._llama import cpu
from lfm2_edge._llama.caches import Item
from lfm2_edge._llama.cuts import PromptCuts
from lfm2_edge._llama.projector import Projector, PromptChunks
from lfm2_edge._llama.sampler import Sampler, sampler_chain, token_logprobs
from lfm2_edge._llama.segments import MarkerTable, token_runs
from lfm2_edge._llama.state import SavedState
from lfm2_edge._llama.threads import Busy, BusyProbe, env_threads, threads_for
from lfm2_edge._llama.vocab import longest_token_bytes, partial_utf8_tokens, token_piece, tokenize
from lfm2_edge.chat.images import LoadedImage
from lfm2_edge.chat.sampling import Sampling
from lfm2_edge.errors import ModelClosedError, ModelFileError
from lfm2_edge.prompt.tokens import IM_END, IM_START, IMAGE_MARKER, SPECIAL_TOOL_TOKENS

__all__ = ["Runtime", "SavedState"]


class Runtime:
    """A llama.cpp model + context (+ mtmd projector): loading, the vocabulary, the
    prompt's chunks and items, samplers. Not thread-safe: its engine's thread uses it.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        mmproj_path: str | os.PathLike[str] | None = None,
        *,
        n_ctx: int = 4096,
        n_batch: int = 512,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        device: int | None = None,
        use_mmap: bool = True,
        use_mlock: bool = False,
        flash_attn: bool | None = None,
        repack: bool = True,
        image_min_tokens: int | None = None,
        image_max_tokens: int | None = None,
        image_thumbnail: bool = True,
        image_max_pixels_tolerance: float = 2.0,
        embedding_cache_mb: float = 0,
        verbose: bool = False,
        n_seq_max: int = 1,
    ) -> None:
        self.model_path = Path(model_path)
        self.mmproj_path = Path(mmproj_path) if mmproj_path is not None else None
        # the default threads: the cores others leave free, probed while the model loads
        self.n_threads = n_threads or env_threads() or 0
        self.busy: Busy | None = None
        self._probe = BusyProbe() if not self.n_threads else None
        self.n_batch = n_batch
        self.verbose = verbose
        self._model: int | None = None
        self._ctx: int | None = None
        self._vocab: int | None = None  # points into the model: dropped when it is freed
        self._projector: Projector | None = None
        # a NULL-terminated device list for llama_model_params.devices; kept alive with the model
        self._devices = (ctypes.c_void_p * 2)(device, None) if device else None
        cpu.require()  # a CPU without the build's instructions: one line here, not a SIGILL later
        llama_cpp.llama_backend_init()
        try:
            self._load(
                n_ctx=n_ctx,
                n_gpu_layers=n_gpu_layers,
                use_mmap=use_mmap,
                use_mlock=use_mlock,
                flash_attn=flash_attn,
                repack=repack,
                image_min_tokens=image_min_tokens,
                image_max_tokens=image_max_tokens,
                image_thumbnail=image_thumbnail,
                image_max_pixels_tolerance=image_max_pixels_tolerance,
                embedding_cache_mb=embedding_cache_mb,
                n_seq_max=n_seq_max,
            )
        except BaseException:
            self.close()
            raise
        self._piece_buf = ctypes.create_string_buffer(256)
        self._piece_lock = threading.Lock()
        self._pieces: dict[int, bytes] = {}
        self._ends: dict[int, bool] = {}
        self.im_end = self.token_id(IM_END)
        self._partial_utf8: list[int] | None = None
        self._markers: MarkerTable | None = None
        self._shown_specials = {t for mark in SPECIAL_TOOL_TOKENS if (t := self.token_id(mark)) is not None}
        headers = self.tokenize(f"{IM_START}assistant\n"), self.tokenize(f"{IM_START}system\n")
        self.cuts = PromptCuts(*headers, self.im_end, self.token_id("\n"))
        self.max_token_bytes = longest_token_bytes(self.vocab, self.n_vocab)

    # -- loading -----------------------------------------------------------------

    def _load(
        self,
        *,
        n_ctx: int,
        n_gpu_layers: int,
        use_mmap: bool,
        use_mlock: bool,
        flash_attn: bool | None,
        repack: bool,
        image_min_tokens: int | None,
        image_max_tokens: int | None,
        embedding_cache_mb: float,
        image_thumbnail: bool = True,
        image_max_pixels_tolerance: float = 2.0,
        n_seq_max: int = 1,
    ) -> None:
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        if self._devices is not None:
            mparams.devices = ctypes.cast(self._devices, ctypes.c_void_p)
        mode = {(True, False): 1, (False, True): 2, (True, True): 3, (False, False): 0}
        mparams.load_mode = mode[(use_mmap, use_mlock)]
        # llama.cpp's repacked CPU layouts (a copy of the Q4_0 weights, more with dotprod/i8mm):
        # faster prompts; off, no copy in RAM (doctor's estimate follows the same choice)
        mparams.use_extra_bufts = repack
        model = llama_cpp.llama_model_load_from_file(str(self.model_path).encode(), mparams)
        if not model:
            raise ModelFileError(
                f"llama.cpp could not load {self.model_path}; check that it is a complete "
                "LFM2 GGUF file (run with --verbose for llama.cpp's reason)"
            )
        self._model = model
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        if self._probe is not None:
            self.busy = self._probe.result()
            self.n_threads = threads_for(self.busy)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)

        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = cparams.n_ubatch = self.n_batch
        cparams.n_threads = self.n_threads
        cparams.n_threads_batch = self.n_threads
        cparams.no_perf = False
        cparams.flash_attn_type = {None: -1, False: 0, True: 1}[flash_attn]
        # Sequences for the batched engine (lfm2_edge._llama.batch): each has its own KV
        # stream of n_ctx / n_seq_max cells and its own recurrent (short-conv) state.
        cparams.n_seq_max = n_seq_max
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            raise ModelFileError(
                f"llama.cpp could not create a context of {n_ctx} tokens for {self.model_path}; "
                "lower --ctx or free some memory"
            )
        self._ctx = ctx
        self.n_ctx = llama_cpp.llama_n_ctx(ctx)
        self.n_seq_max = n_seq_max
        self.n_ctx_seq = llama_cpp.llama_n_ctx_seq(ctx)  # what one sequence holds

        if self.mmproj_path is not None:
            self._projector = Projector(
                self.mmproj_path,
                model,
                n_threads=self.n_threads,
                use_gpu=n_gpu_layers != 0,
                flash_attn_type=cparams.flash_attn_type,
                image_min_tokens=image_min_tokens,
                image_max_tokens=image_max_tokens,
                use_thumbnail=image_thumbnail,
                max_pixels_tolerance=image_max_pixels_tolerance,
                embedding_cache_mb=embedding_cache_mb,
                verbose=self.verbose,
            )

    def close(self) -> None:
        """Free the projector, context and model; safe to call twice. Afterwards every
        method that needs them raises :class:`ModelClosedError`."""
        self._vocab = None
        if self._projector is not None:
            self._projector.close()
            self._projector = None
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:  # last resort; the model's close() is the normal path
        with suppress(Exception):  # interpreter shutdown may have torn down llama_cpp
            self.close()

    @property
    def closed(self) -> bool:
        return not self._ctx

    @property
    def ctx(self) -> int:
        if not self._ctx:
            raise ModelClosedError("the model has been closed; load it again to chat")
        return self._ctx

    @property
    def vocab(self) -> int:
        if not self._vocab:
            raise ModelClosedError("the model has been closed; load it again to chat")
        return self._vocab

    # -- vocabulary --------------------------------------------------------------

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return tokenize(self.vocab, text, special=special)

    def token_id(self, text: str) -> int | None:
        """The id of a single special token, or None if the vocabulary lacks it."""
        ids = self.tokenize(text)
        return ids[0] if len(ids) == 1 else None

    def token_bytes(self, token: int) -> bytes:
        """The text of a token; control tokens are empty, except the tool-call markers.
        Kept once read: the decode loops ask for every token they sample."""
        if (piece := self._pieces.get(token)) is None:
            with self._piece_lock:  # the buffer is shared
                special = token in self._shown_specials
                piece = self._pieces[token] = token_piece(self.vocab, token, self._piece_buf, special=special)
        return piece

    @property
    def min_image_tokens(self) -> int:
        """A lower bound of the positions one image takes (see Projector.min_image_tokens)."""
        return self._projector.min_image_tokens if self._projector is not None else 1

    def _partial_utf8_tokens(self) -> list[int]:
        """Tokens whose text is not valid UTF-8 on its own (byte-level pieces); cached."""
        if self._partial_utf8 is None:
            self._partial_utf8 = partial_utf8_tokens(self.token_bytes, self.n_vocab)
        return self._partial_utf8

    def is_end(self, token: int) -> bool:
        if (end := self._ends.get(token)) is None:
            end = self._ends[token] = bool(llama_cpp.llama_vocab_is_eog(self.vocab, token)) or token == self.im_end
        return end

    # -- evaluation --------------------------------------------------------------

    def tokenize_prompt(self, prompt: str, images: Sequence[LoadedImage]) -> PromptChunks:
        """Split ``prompt`` at its image markers into text and image chunks (a context
        manager: ``with rt.tokenize_prompt(...) as chunks:``). Only the template parts of
        a :class:`lfm2_edge.prompt.tokens.Prompt` may spell control tokens (see
        :mod:`lfm2_edge._llama.segments`)."""
        self.ctx  # noqa: B018 -- a closed model raises ModelClosedError, not "no mmproj"
        if self._projector is None and images:
            raise ModelFileError("this model was loaded without an mmproj; pass --mmproj to send images")
        if self._markers is None:
            self._markers = MarkerTable(self.token_id)
        runs = token_runs(prompt, self._markers, lambda text: self.tokenize(text, special=False))
        if self._projector is not None:
            return self._projector.tokenize(runs, images)
        if len(runs) > 1:
            raise ModelFileError("this model was loaded without an mmproj; pass --mmproj to send images")
        chunks = PromptChunks()
        chunks.add_text(runs[0])
        return chunks

    @property
    def projector(self) -> Projector | None:
        return self._projector

    def prompt_items(self, chunks: PromptChunks, digests: Sequence[str]) -> list[Item]:
        """The prompt as a flat list: a token id per text token, a tuple per image tile.

        Two prompts evaluate to the same state exactly when their item lists are equal,
        which is what state reuse compares.
        """
        if chunks.tokens is not None:
            return list(chunks.tokens)
        assert self._projector is not None
        return self._projector.prompt_items(chunks, digests)

    @staticmethod
    def positions(items: Sequence[Item]) -> int:
        return sum(1 if isinstance(it, int) else it[3] for it in items)

    def reset(self) -> None:
        """Forget everything evaluated in every sequence: KV cache and recurrent conv state alike."""
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)

    # -- sampling ----------------------------------------------------------------

    def sampler(
        self, params: Sampling, *, grammar: str | None = None, items: Sequence[Item] = ()
    ) -> AbstractContextManager[Sampler]:
        """A :class:`Sampler` for ``params`` on this model (see :func:`lfm2_edge._llama.sampler.sampler_chain`),
        its repetition penalty counting the prompt ``items`` (:meth:`prompt_items`) as
        transformers counts its ``input_ids``: each text token, each image position as
        the ``<image>`` token."""
        params.check_vocabulary(self.n_vocab)
        prompt: list[int] = []
        if params.repetition_penalty != 1.0:
            image = self.token_id(IMAGE_MARKER)
            for it in items:
                if isinstance(it, int):
                    prompt.append(it)
                elif image is not None:
                    prompt.append(image)  # one is enough: the penalty counts presence
        return sampler_chain(
            self.vocab, self.n_vocab, self._partial_utf8_tokens, params, grammar=grammar, prompt=prompt
        )

    def logprobs(
        self, token: int, n_top: int, logits: ctypes.Array[ctypes.c_float] | None = None
    ) -> tuple[float, list[tuple[int, float]]]:
        """``token``'s log-probability and the ``n_top`` likeliest tokens' under the raw
        logits it was sampled from: saved ones, else the last evaluated position's (ask
        before :meth:`generate` is asked for the next token, which evaluates this one)."""
        return token_logprobs(
            logits if logits is not None else llama_cpp.llama_get_logits_ith(self.ctx, -1), self.n_vocab, token, n_top
        )
