"""One loaded model: a llama.cpp model, its context and (for VL models) its mtmd projector.

Everything here is owned by a :class:`Runtime` instance, never by the module, so an
app can hold two models at once. The one process-wide thing llama.cpp has is its log
sink; :func:`set_verbose` routes it (and mtmd's) through the ``llama-cpp-python``
logger, quiet unless asked.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import llama_cpp.mtmd_cpp as mtmd
from llama_cpp._logger import llama_log_callback

from lfm2_edge.caches import EmbeddingCache, EmbeddingKey, Item
from lfm2_edge.errors import ContextOverflowError, GenerationError, ModelFileError
from lfm2_edge.images import LoadedImage
from lfm2_edge.prompt import IM_END, IM_START, IMAGE_MARKER
from lfm2_edge.tools import SPECIAL_TOOL_TOKENS

__all__ = [
    "BuildInfo",
    "Projector",
    "PromptChunks",
    "Runtime",
    "SavedState",
    "build_info",
    "default_threads",
    "set_verbose",
]

_LOGGER = logging.getLogger("llama-cpp-python")

# mtmd has its own log sinks; send them where llama.cpp's go.
mtmd.mtmd_log_set(llama_log_callback, ctypes.c_void_p(0))
mtmd.mtmd_helper_log_set(llama_log_callback, ctypes.c_void_p(0))
if _LOGGER.level == logging.NOTSET:  # respect an app that configured it already
    _LOGGER.setLevel(logging.ERROR)


def set_verbose(verbose: bool) -> None:
    """Show llama.cpp's and mtmd's own log on stderr, or only their errors."""
    _LOGGER.setLevel(logging.DEBUG if verbose else logging.ERROR)


def default_threads() -> int:
    """Physical cores available to this process: llama.cpp gains nothing from SMT siblings."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return max(1, (os.cpu_count() or 2) // 2)
    cores: set[tuple[str, str]] = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topo / "physical_package_id").read_text().strip()
            core = (topo / "core_id").read_text().strip()
        except OSError:
            return max(1, len(cpus))
        cores.add((package, core))
    return max(1, len(cores))


@dataclass(frozen=True)
class BuildInfo:
    """What the llama.cpp inside llama-cpp-python was built with."""

    llama_cpp_python: str
    system_info: str
    gpu_offload: bool
    default_threads: int


def build_info() -> BuildInfo:
    return BuildInfo(
        llama_cpp_python=llama_cpp.__version__,
        system_info=llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
        gpu_offload=bool(llama_cpp.llama_supports_gpu_offload()),
        default_threads=default_threads(),
    )


@dataclass(frozen=True)
class SavedState:
    """A sequence's state copied out of a context, and optionally its last logits."""

    data: ctypes.Array[ctypes.c_uint8]
    size: int
    logits: ctypes.Array[ctypes.c_float] | None = None

    @property
    def nbytes(self) -> int:
        return self.size + (ctypes.sizeof(self.logits) if self.logits is not None else 0)


@dataclass(frozen=True)
class ChunkInfo:
    is_image: bool
    n_tokens: int
    n_pos: int


class PromptChunks:
    """A tokenized prompt: text runs and image embeddings, as mtmd split them."""

    def __init__(self, handle: int, info: list[ChunkInfo], tokens: list[int] | None = None) -> None:
        self.handle = handle  # mtmd_input_chunks*, or 0 for a text-only model
        self.info = info
        self.tokens = tokens  # the whole prompt's tokens when there is no projector

    @property
    def n_pos(self) -> int:
        return sum(c.n_pos for c in self.info)

    @property
    def n_image_tokens(self) -> int:
        return sum(c.n_tokens for c in self.info if c.is_image)

    def free(self) -> None:
        if self.handle:
            mtmd.mtmd_input_chunks_free(self.handle)
            self.handle = 0


class Projector:
    """An mtmd context: the vision encoder and projector bound to one language model.

    Shared by :class:`Runtime` and :class:`lfm2_edge.handler.Lfm2VlChatHandler`, so
    both write images into the prompt the same way: decoded by Pillow, identified by
    the digest of their pixels, placed where the prompt has :data:`IMAGE_MARKER`.
    """

    def __init__(
        self,
        mmproj_path: str | os.PathLike[str],
        model: int,
        *,
        n_threads: int,
        use_gpu: bool = False,
        flash_attn_type: int = -1,
        image_min_tokens: int | None = None,
        image_max_tokens: int | None = None,
        embedding_cache_mb: float = 0,
        verbose: bool = False,
    ) -> None:
        self.path = Path(mmproj_path)
        self.budget = (image_min_tokens, image_max_tokens)
        self.n_embd = llama_cpp.llama_model_n_embd_inp(model)
        self.embeddings = EmbeddingCache(int(embedding_cache_mb * 2**20))
        self.encodes = 0  # vision-encoder runs, for tests and the benchmark
        self._no_callback = mtmd.mtmd_helper_post_decode_callback()  # a NULL function pointer
        p = mtmd.mtmd_context_params_default()
        p.use_gpu = use_gpu
        p.print_timings = verbose
        p.n_threads = n_threads
        p.media_marker = IMAGE_MARKER.encode()
        p.flash_attn_type = flash_attn_type
        if image_min_tokens is not None:
            p.image_min_tokens = image_min_tokens
        if image_max_tokens is not None:
            p.image_max_tokens = image_max_tokens
        handle = mtmd.mtmd_init_from_file(str(self.path).encode(), model, p)
        if not handle:
            raise ModelFileError(
                f"mtmd could not load the projector {self.path}; check that it is an "
                "LFM2-VL mmproj GGUF made for this model (run with --verbose for details)"
            )
        self.handle: int | None = handle
        if not mtmd.mtmd_support_vision(handle):
            self.close()
            raise ModelFileError(f"{self.path} has no vision encoder")

    def close(self) -> None:
        if self.handle:
            mtmd.mtmd_free(self.handle)
            self.handle = None

    def tokenize(self, prompt: str, images: Sequence[LoadedImage]) -> PromptChunks:
        """Split ``prompt`` at its image markers into text and image chunks."""
        if not self.handle:
            raise GenerationError("the projector has been closed")
        bitmaps = []
        try:
            for image in images:
                data = (ctypes.c_uint8 * len(image.rgb)).from_buffer_copy(image.rgb)
                bitmap = mtmd.mtmd_bitmap_init(image.width, image.height, data)
                if not bitmap:
                    raise GenerationError("mtmd could not create a bitmap for an image")
                bitmaps.append(bitmap)
                mtmd.mtmd_bitmap_set_id(bitmap, image.digest.encode())
            text = mtmd.mtmd_input_text()
            raw = prompt.encode("utf-8")
            text.text = raw
            text.text_len = len(raw)
            text.add_special = False  # the prompt carries <|startoftext|> itself
            text.parse_special = True
            chunks = mtmd.mtmd_input_chunks_init()
            arr = (mtmd.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            rc = mtmd.mtmd_tokenize(self.handle, chunks, ctypes.byref(text), arr, len(bitmaps))
            if rc != 0:
                mtmd.mtmd_input_chunks_free(chunks)
                why = {
                    1: "the number of images does not match the image markers",
                    2: "an image could not be preprocessed",
                }.get(rc, f"code {rc}")
                raise GenerationError(f"mtmd could not tokenize the prompt: {why}")
        finally:
            for bitmap in bitmaps:
                mtmd.mtmd_bitmap_free(bitmap)
        info = []
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            kind = mtmd.mtmd_input_chunk_get_type(chunk)
            info.append(
                ChunkInfo(
                    is_image=kind != mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT,
                    n_tokens=mtmd.mtmd_input_chunk_get_n_tokens(chunk),
                    n_pos=mtmd.mtmd_input_chunk_get_n_pos(chunk),
                )
            )
        return PromptChunks(chunks, info)

    def text_tokens(self, chunks: PromptChunks, index: int) -> list[int]:
        """The token ids of a text chunk."""
        chunk = mtmd.mtmd_input_chunks_get(chunks.handle, index)
        n = ctypes.c_size_t()
        ptr = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
        return [ptr[j] for j in range(n.value)] if ptr else []

    def eval_image(
        self, chunks: PromptChunks, index: int, key: EmbeddingKey, ctx: int, n_past: int, n_batch: int
    ) -> int:
        """Decode one image chunk into ``ctx`` at ``n_past``; returns the new ``n_past``.

        The vision encoder runs only when the embedding cache has no entry for ``key``.
        """
        chunk = mtmd.mtmd_input_chunks_get(chunks.handle, index)
        embd = self.embeddings.get(key)
        if embd is None:
            if mtmd.mtmd_encode_chunk(self.handle, chunk) != 0:
                raise GenerationError("the vision encoder failed on an image")
            self.encodes += 1
            n = key.n_tokens * self.n_embd
            out = mtmd.mtmd_get_output_embd(self.handle)
            if self.embeddings.max_bytes >= n * 4:
                embd = (ctypes.c_float * n)()
                ctypes.memmove(embd, out, n * 4)
                self.embeddings.put(key, embd, n * 4)
            else:
                embd = out
        new_n_past = llama_cpp.llama_pos(n_past)
        rc = mtmd.mtmd_helper_decode_image_chunk(
            self.handle, ctx, chunk, embd, n_past, 0, n_batch, ctypes.byref(new_n_past), self._no_callback, None
        )
        if rc != 0:
            raise GenerationError(f"llama.cpp failed to decode an image (code {rc})")
        return int(new_n_past.value)

    def eval_chunk(
        self,
        chunks: PromptChunks,
        index: int,
        ctx: int,
        n_past: int,
        n_batch: int,
        *,
        logits_last: bool,
    ) -> int:
        """Evaluate one chunk into ``ctx`` at ``n_past``; returns the new ``n_past``.

        An image chunk runs the vision encoder and then decodes its embeddings.
        """
        chunk = mtmd.mtmd_input_chunks_get(chunks.handle, index)
        # text chunks add onto *new_n_past; image chunks set it: start it at n_past
        new_n_past = llama_cpp.llama_pos(n_past)
        rc = mtmd.mtmd_helper_eval_chunk_single(
            self.handle, ctx, chunk, n_past, 0, n_batch, logits_last, ctypes.byref(new_n_past)
        )
        if rc != 0:
            raise GenerationError(f"llama.cpp failed to evaluate the prompt (code {rc})")
        return int(new_n_past.value)


class Runtime:
    """A llama.cpp model + context (+ mtmd projector) that evaluates prompts and tokens.

    The runtime tracks ``n_past``, the number of positions already evaluated in its
    sequence; callers decide what to evaluate next. It is not thread-safe: one runtime
    serves one conversation at a time.
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
        image_min_tokens: int | None = None,
        image_max_tokens: int | None = None,
        embedding_cache_mb: float = 0,
        verbose: bool = False,
    ) -> None:
        self.model_path = Path(model_path)
        self.mmproj_path = Path(mmproj_path) if mmproj_path is not None else None
        self.n_threads = n_threads or default_threads()
        self.n_batch = n_batch
        self.verbose = verbose
        self._model: int | None = None
        self._ctx: int | None = None
        self._projector: Projector | None = None
        self.n_past = 0
        # a NULL-terminated device list for llama_model_params.devices; kept alive with the model
        self._devices = (ctypes.c_void_p * 2)(device, None) if device else None
        llama_cpp.llama_backend_init()
        try:
            self._load(
                n_ctx=n_ctx,
                n_gpu_layers=n_gpu_layers,
                use_mmap=use_mmap,
                use_mlock=use_mlock,
                flash_attn=flash_attn,
                image_min_tokens=image_min_tokens,
                image_max_tokens=image_max_tokens,
                embedding_cache_mb=embedding_cache_mb,
            )
        except BaseException:
            self.close()
            raise
        self._one_token = (llama_cpp.llama_token * 1)()
        self._piece_buf = ctypes.create_string_buffer(256)
        self.im_end = self.token_id(IM_END)
        self.im_start = self.token_id(IM_START)
        self._partial_utf8: list[int] | None = None
        self._shown_specials = {t for mark in SPECIAL_TOOL_TOKENS if (t := self.token_id(mark)) is not None}
        self._assistant_header = self.tokenize(f"{IM_START}assistant\n")

    # -- loading -----------------------------------------------------------------

    def _load(
        self,
        *,
        n_ctx: int,
        n_gpu_layers: int,
        use_mmap: bool,
        use_mlock: bool,
        flash_attn: bool | None,
        image_min_tokens: int | None,
        image_max_tokens: int | None,
        embedding_cache_mb: float,
    ) -> None:
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        if self._devices is not None:
            mparams.devices = ctypes.cast(self._devices, ctypes.c_void_p)
        mode = {(True, False): 1, (False, True): 2, (True, True): 3, (False, False): 0}
        mparams.load_mode = mode[(use_mmap, use_mlock)]
        model = llama_cpp.llama_model_load_from_file(str(self.model_path).encode(), mparams)
        if not model:
            raise ModelFileError(
                f"llama.cpp could not load {self.model_path}; check that it is a complete "
                "LFM2 GGUF file (run with --verbose for llama.cpp's reason)"
            )
        self._model = model
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)

        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = cparams.n_ubatch = self.n_batch
        cparams.n_threads = self.n_threads
        cparams.n_threads_batch = self.n_threads
        cparams.no_perf = False
        cparams.flash_attn_type = {None: -1, False: 0, True: 1}[flash_attn]
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            raise ModelFileError(
                f"llama.cpp could not create a context of {n_ctx} tokens for {self.model_path}; "
                "lower --ctx or free some memory"
            )
        self._ctx = ctx
        self.n_ctx = llama_cpp.llama_n_ctx(ctx)

        if self.mmproj_path is not None:
            self._projector = Projector(
                self.mmproj_path,
                model,
                n_threads=self.n_threads,
                use_gpu=n_gpu_layers != 0,
                flash_attn_type=cparams.flash_attn_type,
                image_min_tokens=image_min_tokens,
                image_max_tokens=image_max_tokens,
                embedding_cache_mb=embedding_cache_mb,
                verbose=self.verbose,
            )

    def close(self) -> None:
        """Free the projector, context and model; safe to call twice."""
        if self._projector is not None:
            self._projector.close()
            self._projector = None
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:  # last resort; VisionModel.close() is the normal path
        with suppress(Exception):  # interpreter shutdown may have torn down llama_cpp
            self.close()

    @property
    def has_vision(self) -> bool:
        return self._projector is not None

    @property
    def ctx(self) -> int:
        if not self._ctx:
            raise GenerationError("the model has been closed")
        return self._ctx

    # -- vocabulary --------------------------------------------------------------

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        n_max = len(data) + 8
        buf = (llama_cpp.llama_token * n_max)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, n_max, False, special)
        if n < 0:
            raise GenerationError(f"could not tokenize {len(data)} bytes of text")
        return list(buf[:n])

    def token_id(self, text: str) -> int | None:
        """The id of a single special token, or None if the vocabulary lacks it."""
        ids = self.tokenize(text)
        return ids[0] if len(ids) == 1 else None

    def token_bytes(self, token: int) -> bytes:
        """The text of a token; control tokens are empty, except the tool-call markers."""
        special = token in self._shown_specials
        n = llama_cpp.llama_token_to_piece(self.vocab, token, self._piece_buf, 256, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
            return buf.raw[:n]
        return self._piece_buf.raw[:n]

    def _partial_utf8_tokens(self) -> list[int]:
        """Tokens whose text is not valid UTF-8 on its own (byte-level pieces); cached."""
        if self._partial_utf8 is None:
            bad = []
            for t in range(self.n_vocab):
                try:
                    self.token_bytes(t).decode("utf-8")
                except UnicodeDecodeError:
                    bad.append(t)
            self._partial_utf8 = bad
        return self._partial_utf8

    def is_end(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token)) or token == self.im_end

    # -- evaluation --------------------------------------------------------------

    def tokenize_prompt(self, prompt: str, images: Sequence[LoadedImage]) -> PromptChunks:
        """Split ``prompt`` at its image markers into text and image chunks."""
        if self._projector is None:
            if images:
                raise ModelFileError("this model was loaded without an mmproj; pass --mmproj to send images")
            return self._text_only_chunks(prompt)
        return self._projector.tokenize(prompt, images)

    def _text_only_chunks(self, prompt: str) -> PromptChunks:
        tokens = self.tokenize(prompt)
        return PromptChunks(0, [ChunkInfo(False, len(tokens), len(tokens))], tokens)

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
        occurrences = {d: digests.count(d) for d in digests}
        ids = {i: self._chunk_id(chunks, i) for i, info in enumerate(chunks.info) if info.is_image}
        per_id: dict[str, int] = {}
        for cid in ids.values():
            per_id[cid] = per_id.get(cid, 0) + 1
        seen: dict[str, int] = {}
        items: list[Item] = []
        for i, info in enumerate(chunks.info):
            if info.is_image:
                cid = ids[i]
                tiles = max(1, per_id[cid] // max(1, occurrences.get(cid, 1)))
                tile = seen.get(cid, 0) % tiles
                seen[cid] = seen.get(cid, 0) + 1
                items.append(("img", cid, tile, info.n_pos))
            else:
                items.extend(self._projector.text_tokens(chunks, i))
        return items

    @staticmethod
    def _chunk_id(chunks: PromptChunks, index: int) -> str:
        raw = mtmd.mtmd_input_chunk_get_id(mtmd.mtmd_input_chunks_get(chunks.handle, index))
        return (raw or b"").decode("ascii", "replace")

    @staticmethod
    def positions(items: Sequence[Item]) -> int:
        return sum(1 if isinstance(it, int) else it[3] for it in items)

    def eval_items(self, chunks: PromptChunks, items: Sequence[Item], start: int, end: int) -> float:
        """Evaluate ``items[start:end]`` of a tokenized prompt after ``n_past``.

        Text is cut into batches after every ``<|im_start|>assistant\\n`` header (and every
        ``n_batch`` tokens after that). llama.cpp's quantized CPU kernels round
        differently for different batch shapes, so batches must depend on the prompt's
        content only: then a state saved at the end of a prompt (which ends with that
        header) and continued gives bit-for-bit the logits a fresh context gives.
        Returns the seconds spent on image tiles.
        """
        image_s = 0.0
        if chunks.tokens is not None or self._projector is None:
            self._eval_text([t for t in items if isinstance(t, int)], start, end)
            return image_s
        lo = 0
        for i, info in enumerate(chunks.info):
            hi = lo + (1 if info.is_image else info.n_tokens)
            if hi > start and lo < end:
                if info.is_image:
                    item = items[lo]
                    assert not isinstance(item, int)
                    key = EmbeddingKey(
                        item[1], item[2], info.n_tokens, str(self._projector.path), self._projector.budget
                    )
                    t0 = time.perf_counter()
                    self.n_past = self._projector.eval_image(chunks, i, key, self.ctx, self.n_past, self.n_batch)
                    image_s += time.perf_counter() - t0
                else:
                    text = [t for t in items[lo:hi] if isinstance(t, int)]  # the chunk's tokens, read once
                    self._eval_text(text, max(0, start - lo), end - lo)
            lo = hi
        return image_s

    def _eval_text(self, tokens: list[int], start: int, end: int) -> None:
        """Evaluate ``tokens[start:end]``, cut after each assistant header (see :meth:`eval_items`)."""
        cut = start
        for j in range(start + 1, min(end, len(tokens))):
            if self._ends_assistant_header(tokens, j):
                self.eval_tokens(tokens[cut:j])
                cut = j
        self.eval_tokens(tokens[cut:end])

    def _ends_assistant_header(self, items: Sequence[Item], j: int) -> bool:
        """Whether ``items[:j]`` ends with ``<|im_start|>assistant\\n``."""
        n = len(self._assistant_header)
        return (
            j >= n and items[j - 1] == self._assistant_header[-1] and list(items[j - n : j]) == self._assistant_header
        )

    def save_points(self, items: Sequence[Item]) -> list[int]:
        """Where a saved state is worth having: after the prompt's last image (a new
        question about the same image continues from there) and at its end (the next
        turn and a regenerated answer continue from there). Both are batch boundaries,
        so continuing from them is exact."""
        points = {len(items)}
        for j in range(len(items) - 1, -1, -1):
            if not isinstance(items[j], int):
                points.add(j + 1)
                break
        return sorted(p for p in points if 0 < p <= len(items))

    def save_state(self, *, with_logits: bool = False) -> SavedState:
        """Copy sequence 0's state (KV cache and recurrent state) out of the context,
        and the last position's logits when asked (to answer the same prompt again
        without evaluating anything)."""
        size = llama_cpp.llama_state_seq_get_size(self.ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(self.ctx, buf, size, 0)
        if written == 0:
            raise GenerationError("llama.cpp could not save the sequence state")
        logits = None
        if with_logits:
            logits = (ctypes.c_float * self.n_vocab)()
            ctypes.memmove(logits, llama_cpp.llama_get_logits_ith(self.ctx, -1), self.n_vocab * 4)
        return SavedState(buf, written, logits)

    def load_state(self, state: SavedState, n_past: int) -> bool:
        """Replace the context's state with a saved one; False when llama.cpp refuses it."""
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        if llama_cpp.llama_state_seq_set_data(self.ctx, state.data, state.size, 0) == 0:
            self.reset()
            return False
        self.n_past = n_past
        return True

    def check_fits(self, n_prompt: int, n_images: int, n_image_tokens: int) -> None:
        """Refuse a prompt that leaves no room to answer, before anything is evaluated."""
        needed = n_prompt
        if needed >= self.n_ctx:
            detail = f" ({n_image_tokens} of them for {n_images} image(s))" if n_images else ""
            fix = "raise --ctx" + (" or lower --max-image-tokens" if n_images else " or shorten the prompt")
            raise ContextOverflowError(
                f"the prompt needs {needed} tokens{detail} but the context holds {self.n_ctx}; {fix}"
            )

    def eval_tokens(self, tokens: Sequence[int]) -> None:
        """Evaluate text tokens after ``n_past`` in batches; logits for the last one."""
        for start in range(0, len(tokens), self.n_batch):
            part = tokens[start : start + self.n_batch]
            arr = (llama_cpp.llama_token * len(part))(*part)
            self._decode(llama_cpp.llama_batch_get_one(arr, len(part)))
            self.n_past += len(part)

    def eval_one(self, token: int) -> None:
        """Evaluate one sampled token: the decode loop's hot path."""
        self._one_token[0] = token
        self._decode(llama_cpp.llama_batch_get_one(self._one_token, 1))
        self.n_past += 1

    def _decode(self, batch: llama_cpp.llama_batch) -> None:
        rc = llama_cpp.llama_decode(self.ctx, batch)
        if rc != 0:
            if rc == 1:
                raise ContextOverflowError(
                    f"the context of {self.n_ctx} tokens is full; raise --ctx or lower --max-tokens"
                )
            raise GenerationError(f"llama_decode failed (code {rc})")

    def reset(self) -> None:
        """Forget everything evaluated: KV cache and recurrent conv state alike."""
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        self.n_past = 0

    # -- sampling ----------------------------------------------------------------

    @contextmanager
    def sampler(
        self,
        *,
        temperature: float,
        top_k: int,
        top_p: float,
        min_p: float,
        repetition_penalty: float,
        seed: int | None,
        penalty_last_n: int = 64,
        grammar: str | None = None,
    ) -> Iterator[int]:
        """A llama.cpp sampler chain in the order llama.cpp's own tools use; a GBNF
        ``grammar`` (rule ``root``) comes first, so only tokens it allows survive."""
        params = llama_cpp.llama_sampler_chain_default_params()
        params.no_perf = True
        chain = llama_cpp.llama_sampler_chain_init(params)
        add = llama_cpp.llama_sampler_chain_add
        try:
            if grammar is not None:
                # llama.cpp's grammar does not check UTF-8 continuation bytes, so byte-level
                # tokens could spell invalid UTF-8 (and control characters) inside a JSON
                # string; tokens that are not whole UTF-8 text are banned while it runs.
                banned = self._partial_utf8_tokens()
                biases = (llama_cpp.llama_logit_bias * len(banned))(
                    *(llama_cpp.llama_logit_bias(t, float("-inf")) for t in banned)
                )
                add(chain, llama_cpp.llama_sampler_init_logit_bias(self.n_vocab, len(banned), biases))
                constraint = llama_cpp.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
                if not constraint:
                    raise GenerationError("llama.cpp rejected the grammar (run with --verbose for its reason)")
                add(chain, constraint)
            if repetition_penalty != 1.0:
                add(
                    chain,
                    llama_cpp.llama_sampler_init_penalties(self.n_vocab, penalty_last_n, repetition_penalty, 0.0, 0.0),
                )
            if temperature <= 0:
                add(chain, llama_cpp.llama_sampler_init_greedy())
            else:
                if top_k > 0:
                    add(chain, llama_cpp.llama_sampler_init_top_k(top_k))
                if top_p < 1.0:
                    add(chain, llama_cpp.llama_sampler_init_top_p(top_p, 1))
                if min_p > 0:
                    add(chain, llama_cpp.llama_sampler_init_min_p(min_p, 1))
                add(chain, llama_cpp.llama_sampler_init_temp(temperature))
                add(chain, llama_cpp.llama_sampler_init_dist(0xFFFFFFFF if seed is None else seed & 0xFFFFFFFF))
            yield chain
        finally:
            llama_cpp.llama_sampler_free(chain)

    def sample(self, chain: int, logits: ctypes.Array[ctypes.c_float] | None = None) -> int:
        """Sample from the last evaluated position's logits, or from saved ones (and
        accept the token), as ``llama_sampler_sample`` does."""
        if logits is None:
            return llama_cpp.llama_sampler_sample(chain, self.ctx, -1)
        import numpy as np

        n = self.n_vocab
        data = (llama_cpp.llama_token_data * n)()
        view = np.frombuffer(memoryview(data), dtype=np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")]))
        view["id"] = np.arange(n, dtype=np.int32)
        view["logit"] = np.frombuffer(memoryview(logits), dtype=np.float32, count=n)
        cur = llama_cpp.llama_token_data_array(data=data, size=n, selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(chain, ctypes.byref(cur))
        if not 0 <= cur.selected < cur.size:
            raise GenerationError("the sampler selected no token")
        token = int(data[cur.selected].id)
        llama_cpp.llama_sampler_accept(chain, token)
        return token
