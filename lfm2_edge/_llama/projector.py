"""The mtmd side of a VL model: its projector, and prompts tokenized into chunks."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import llama_cpp.mtmd_cpp as mtmd

from lfm2_edge._llama import log as _log  # noqa: F401  (routes mtmd's log sinks on import)
from lfm2_edge._llama.caches import EmbeddingCache, EmbeddingKey, Item
from lfm2_edge.chat.images import LoadedImage
from lfm2_edge.errors import GenerationError, InvalidParameterError, ModelFileError
from lfm2_edge.prompt.tokens import IMAGE_MARKER

__all__ = ["ChunkInfo", "Projector", "PromptChunks"]


@dataclass(frozen=True)
class ChunkInfo:
    is_image: bool
    n_tokens: int
    n_pos: int


class PromptChunks:
    """A tokenized prompt: runs of text tokens and image chunks, in order.

    Text runs are tokenized by lfm2-edge (control tokens only where the template put
    them); each image is tokenized by mtmd on its own, so its chunks (the image tiles and
    the markers around them) are exactly mtmd's. A context manager, like mtmd's own
    ``input_chunks_ptr``: ``with rt.tokenize_prompt(...) as chunks:`` frees mtmd's chunks
    at the end of the block.
    """

    def __init__(self) -> None:
        self.info: list[ChunkInfo] = []
        self._parts: list[list[int] | int] = []  # a text run's tokens, or an mtmd_input_chunk*
        self._handles: list[int] = []  # mtmd_input_chunks* to free

    def add_text(self, tokens: list[int]) -> None:
        """Append text tokens (joining the text run before them, as mtmd does)."""
        if not tokens:
            return
        if self.info and not self.info[-1].is_image:
            run = self._parts[-1]
            assert isinstance(run, list)
            run.extend(tokens)
            self.info[-1] = ChunkInfo(False, len(run), len(run))
        else:
            self._parts.append(list(tokens))
            self.info.append(ChunkInfo(False, len(tokens), len(tokens)))

    def add_mtmd(self, handle: int) -> None:
        """Append the chunks of an ``mtmd_input_chunks*`` (freed with this object)."""
        self._handles.append(handle)
        for i in range(mtmd.mtmd_input_chunks_size(handle)):
            chunk = mtmd.mtmd_input_chunks_get(handle, i)
            if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t()
                ptr = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                self.add_text([ptr[j] for j in range(n.value)] if ptr else [])
            else:
                self._parts.append(chunk)
                n_tokens = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
                self.info.append(ChunkInfo(True, n_tokens, mtmd.mtmd_input_chunk_get_n_pos(chunk)))

    def text_tokens(self, index: int) -> list[int]:
        """The token ids of a text chunk."""
        run = self._parts[index]
        assert isinstance(run, list)
        return run

    def chunk(self, index: int) -> int:
        """The ``mtmd_input_chunk*`` of an image chunk."""
        ptr = self._parts[index]
        assert isinstance(ptr, int) and self._handles, "the chunks have been freed"
        return ptr

    @property
    def tokens(self) -> list[int] | None:
        """All the prompt's tokens when it holds no image, else None."""
        if any(c.is_image for c in self.info):
            return None
        return [t for part in self._parts if isinstance(part, list) for t in part]

    @property
    def n_pos(self) -> int:
        return sum(c.n_pos for c in self.info)

    @property
    def n_image_tokens(self) -> int:
        return sum(c.n_tokens for c in self.info if c.is_image)

    def close(self) -> None:
        """Free mtmd's chunks; the counts above stay readable."""
        for handle in self._handles:
            mtmd.mtmd_input_chunks_free(handle)
        self._handles.clear()

    def __enter__(self) -> PromptChunks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Projector:
    """An mtmd context: the vision encoder and projector bound to one language model.

    Shared by :class:`Runtime` and :class:`lfm2_edge.local.handler.Lfm2VlChatHandler`, so
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
        if image_min_tokens is not None and image_max_tokens is not None and image_min_tokens > image_max_tokens:
            # mtmd refuses it with log lines that read as a broken projector: say what it is
            raise InvalidParameterError(
                f"image_min_tokens ({image_min_tokens}) is larger than image_max_tokens ({image_max_tokens}): "
                "an image's token budget must run from the smaller to the larger",
                param="image_min_tokens",
            )
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

    def tokenize(self, runs: Sequence[list[int]], images: Sequence[LoadedImage]) -> PromptChunks:
        """The prompt's chunks: ``runs`` are its text tokens cut at the image markers
        (one more than there are images); each image becomes mtmd's chunks for it."""
        if not self.handle:
            raise GenerationError("the projector has been closed")
        if len(runs) != len(images) + 1:
            raise GenerationError(
                f"the prompt has {len(runs) - 1} image markers for {len(images)} images; they must match"
            )
        out = PromptChunks()
        try:
            out.add_text(runs[0])
            for image, run in zip(images, runs[1:], strict=True):
                out.add_mtmd(self._tokenize_image(image))
                out.add_text(run)
        except BaseException:
            out.close()
            raise
        return out

    def _tokenize_image(self, image: LoadedImage) -> int:
        """An ``mtmd_input_chunks*`` holding one image (and mtmd's markers around it)."""
        data = ctypes.cast(ctypes.c_char_p(image.rgb), ctypes.POINTER(ctypes.c_uint8))  # no copy: mtmd copies
        bitmap = mtmd.mtmd_bitmap_init(image.width, image.height, data)
        if not bitmap:
            raise GenerationError("mtmd could not create a bitmap for an image")
        try:
            mtmd.mtmd_bitmap_set_id(bitmap, image.digest.encode())
            text = mtmd.mtmd_input_text()
            raw = IMAGE_MARKER.encode()
            text.text = raw
            text.text_len = len(raw)
            text.add_special = False
            text.parse_special = True
            chunks = mtmd.mtmd_input_chunks_init()
            arr = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
            rc = mtmd.mtmd_tokenize(self.handle, chunks, ctypes.byref(text), arr, 1)
        finally:
            mtmd.mtmd_bitmap_free(bitmap)
        if rc != 0:
            mtmd.mtmd_input_chunks_free(chunks)
            why = {2: "an image could not be preprocessed"}.get(rc, f"code {rc}")
            raise GenerationError(f"mtmd could not tokenize an image: {why}")
        return int(chunks)

    def prompt_items(self, chunks: PromptChunks, digests: Sequence[str]) -> list[Item]:
        """The prompt as a flat list: a token id per text token, a tuple per image tile
        (see :meth:`lfm2_edge._llama.context.Runtime.prompt_items`)."""
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
                items.extend(chunks.text_tokens(i))
        return items

    @staticmethod
    def _chunk_id(chunks: PromptChunks, index: int) -> str:
        raw = mtmd.mtmd_input_chunk_get_id(chunks.chunk(index))
        return (raw or b"").decode("ascii", "replace")

    def eval_image(
        self,
        chunks: PromptChunks,
        index: int,
        key: EmbeddingKey,
        ctx: int,
        n_past: int,
        n_batch: int,
        seq_id: int = 0,
    ) -> int:
        """Decode one image chunk into sequence ``seq_id`` of ``ctx`` at ``n_past``;
        returns the new ``n_past``.

        The vision encoder runs only when the embedding cache has no entry for ``key``.
        """
        chunk = chunks.chunk(index)
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
            self.handle, ctx, chunk, embd, n_past, seq_id, n_batch, ctypes.byref(new_n_past), self._no_callback, None
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
        chunk = chunks.chunk(index)
        # text chunks add onto *new_n_past; image chunks set it: start it at n_past
        new_n_past = llama_cpp.llama_pos(n_past)
        rc = mtmd.mtmd_helper_eval_chunk_single(
            self.handle, ctx, chunk, n_past, 0, n_batch, logits_last, ctypes.byref(new_n_past)
        )
        if rc != 0:
            raise GenerationError(f"llama.cpp failed to evaluate the prompt (code {rc})")
        return int(new_n_past.value)
