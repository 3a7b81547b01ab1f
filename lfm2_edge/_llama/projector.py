"""The mtmd side of a VL model: its projector, and prompts tokenized into chunks.

An image is cut the way transformers' ``Lfm2VlImageProcessor`` cuts it
(:mod:`lfm2_edge.prompt.vision`: one piece, or 512x512 tiles of the image stretched to its
grid and a thumbnail), by lfm2-edge, before mtmd sees it: each piece goes to mtmd as its own
bitmap at its final size, a multiple of 32 px within the limits the mtmd context is given,
so mtmd neither resizes nor tiles it again (its own LFM2 path rounds sizes with C++
``std::round`` and letterboxes tiles; transformers stretches them). The markers between the
pieces (``<|image_start|>``, ``<|img_row_R_col_C|>``, ``<|img_thumbnail|>``,
``<|image_end|>``) are written here, as the processor writes them.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import llama_cpp.mtmd_cpp as mtmd

from lfm2_edge._llama import log as _log  # noqa: F401  (routes mtmd's log sinks on import)
from lfm2_edge._llama.caches import ByteLRU, EmbeddingCache, EmbeddingKey, Item
from lfm2_edge._llama.vocab import tokenize as _tokenize
from lfm2_edge.chat.images import LoadedImage, image_pieces
from lfm2_edge.errors import GenerationError, InvalidParameterError, ModelFileError
from lfm2_edge.prompt.tokens import IMAGE_END, IMAGE_MARKER, IMAGE_START
from lfm2_edge.prompt.vision import ImagePlan, ImageProcessing, plan_image

__all__ = ["ChunkInfo", "Projector", "PromptChunks"]

PIECE_CACHE_BYTES = 24 * 2**20  # a 4x2-tile photo's pieces are 6.6 MB


@dataclass(frozen=True)
class ChunkInfo:
    is_image: bool
    n_tokens: int
    n_pos: int


class PromptChunks:
    """A tokenized prompt: runs of text tokens and image chunks, in order.

    Text runs are tokenized by lfm2-edge (control tokens only where the template put
    them), the image markers included; each piece of an image is one image chunk, made by
    mtmd from that piece alone. ``pieces`` names each image chunk's image (its pixels'
    digest) and its place in that image's plan. A context manager, like mtmd's own
    ``input_chunks_ptr``: ``with rt.tokenize_prompt(...) as chunks:`` frees mtmd's chunks
    at the end of the block.
    """

    def __init__(self) -> None:
        self.info: list[ChunkInfo] = []
        self.pieces: dict[int, tuple[str, int]] = {}  # image chunk index -> (digest, piece index)
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

    def add_image_chunk(self, handle: int, digest: str, piece: int) -> ChunkInfo:
        """Append the one image chunk of an ``mtmd_input_chunks*`` (freed with this
        object): piece ``piece`` of the image ``digest``. mtmd's own marker text around
        it is left out (the caller writes the markers)."""
        self._handles.append(handle)
        images = [
            chunk
            for i in range(mtmd.mtmd_input_chunks_size(handle))
            if mtmd.mtmd_input_chunk_get_type(chunk := mtmd.mtmd_input_chunks_get(handle, i))
            != mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT
        ]
        if len(images) != 1:
            raise GenerationError(f"mtmd made {len(images)} image chunks of one image piece; expected 1")
        chunk = images[0]
        info = ChunkInfo(True, mtmd.mtmd_input_chunk_get_n_tokens(chunk), mtmd.mtmd_input_chunk_get_n_pos(chunk))
        self.pieces[len(self.info)] = (digest, piece)
        self._parts.append(chunk)
        self.info.append(info)
        return info

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
    the digest of their pixels, placed where the prompt has :data:`IMAGE_MARKER`, cut as
    transformers' processor cuts them (``image_min_tokens`` / ``image_max_tokens``: its
    token budget, default 64..256; ``use_thumbnail``, ``max_pixels_tolerance``: its
    settings of those names, see :class:`lfm2_edge.prompt.vision.ImageProcessing`).
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
        use_thumbnail: bool = True,
        max_pixels_tolerance: float = 2.0,
        embedding_cache_mb: float = 0,
        verbose: bool = False,
    ) -> None:
        self.path = Path(mmproj_path)
        defaults = ImageProcessing()
        self.processing = ImageProcessing(
            min_image_tokens=image_min_tokens if image_min_tokens is not None else defaults.min_image_tokens,
            max_image_tokens=image_max_tokens if image_max_tokens is not None else defaults.max_image_tokens,
            use_thumbnail=use_thumbnail,
            max_pixels_tolerance=max_pixels_tolerance,
        )
        low, high = self.processing.min_image_tokens, self.processing.max_image_tokens
        if not 0 < low <= high:
            raise InvalidParameterError(
                f"image_min_tokens ({low}) is larger than image_max_tokens ({high}): "
                "an image's token budget must run from the smaller to the larger"
                if low > high
                else f"image_min_tokens must be at least 1, not {low}",
                param="image_min_tokens",
            )
        self.budget = (low, high)
        # the largest piece mtmd is set up for: a 512 px tile, or a one-piece image at the budget
        tile = self.processing.tile_size // (self.processing.encoder_patch_size * self.processing.downsample_factor)
        self.max_piece_tokens = max(tile * tile, high)
        self.n_embd = llama_cpp.llama_model_n_embd_inp(model)
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self._marker_ids: dict[str, list[int]] = {}
        # the pixels of the last images' pieces: a conversation about one photo cuts it once
        self._pieces: ByteLRU[tuple[str, ImagePlan], list[LoadedImage]] = ByteLRU(PIECE_CACHE_BYTES)
        self.embeddings = EmbeddingCache(int(embedding_cache_mb * 2**20))
        self.encodes = 0  # vision-encoder runs, for tests and the benchmark
        self._no_callback = mtmd.mtmd_helper_post_decode_callback()  # a NULL function pointer
        p = mtmd.mtmd_context_params_default()
        p.use_gpu = use_gpu
        p.print_timings = verbose
        p.n_threads = n_threads
        p.media_marker = IMAGE_MARKER.encode()
        p.flash_attn_type = flash_attn_type
        # Pieces arrive at their final size: mtmd's limits only have to let every one
        # through unchanged (from one 32x32 block up to the largest piece).
        p.image_min_tokens = 1
        p.image_max_tokens = self.max_piece_tokens
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

    @property
    def min_image_tokens(self) -> int:
        """A lower bound of the tokens one image takes: the budget's minimum, or a quarter
        of its maximum less one (a side floored to whole 32 px blocks loses under half)."""
        p = self.processing
        return max(1, min(p.min_image_tokens, p.max_image_tokens // 4 - 1))

    def plan(self, image: LoadedImage) -> ImagePlan:
        """How ``image`` is cut (:func:`lfm2_edge.prompt.vision.plan_image`); an image with
        a piece larger than the vision encoder is set up for raises ImageError."""
        return plan_image(image.width, image.height, self.processing, max_piece_tokens=self.max_piece_tokens)

    def _markers(self, text: str) -> list[int]:
        ids = self._marker_ids.get(text)
        if ids is None:
            ids = self._marker_ids[text] = _tokenize(self._vocab, text, special=True) if text else []
        return ids

    def tokenize(self, runs: Sequence[list[int]], images: Sequence[LoadedImage]) -> PromptChunks:
        """The prompt's chunks: ``runs`` are its text tokens cut at the image markers
        (one more than there are images); each image becomes its markers and pieces."""
        if not self.handle:
            raise GenerationError("the projector has been closed")
        if len(runs) != len(images) + 1:
            raise GenerationError(
                f"the prompt has {len(runs) - 1} image markers for {len(images)} images; they must match"
            )
        plans = [self.plan(image) for image in images]  # an image refused here refuses the prompt first
        out = PromptChunks()
        try:
            out.add_text(runs[0])
            for image, plan, run in zip(images, plans, runs[1:], strict=True):
                self._add_image(out, image, plan)
                out.add_text(run)
        except BaseException:
            out.close()
            raise
        return out

    def _add_image(self, out: PromptChunks, image: LoadedImage, plan: ImagePlan) -> None:
        key = (image.digest, plan)
        pieces = self._pieces.get(key)
        if pieces is None:
            pieces = image_pieces(image, plan.canvas, [(p.width, p.height, p.box) for p in plan.pieces])
            self._pieces.put(key, pieces, sum(len(p.rgb) for p in pieces))
        out.add_text(self._markers(IMAGE_START))
        for index, (spec, piece) in enumerate(zip(plan.pieces, pieces, strict=True)):
            out.add_text(self._markers(spec.marker))
            info = out.add_image_chunk(self._tokenize_piece(piece), image.digest, index)
            if info.n_tokens != spec.n_tokens:
                raise GenerationError(
                    f"mtmd made {info.n_tokens} tokens of a {spec.width}x{spec.height} image piece, "
                    f"not {spec.n_tokens}: {self.path.name} is not an LFM2-VL projector of 16 px patches "
                    "merged 2x2"
                )
        out.add_text(self._markers(IMAGE_END))

    def _tokenize_piece(self, piece: LoadedImage) -> int:
        """An ``mtmd_input_chunks*`` holding one image piece (and mtmd's markers around it)."""
        data = ctypes.cast(ctypes.c_char_p(piece.rgb), ctypes.POINTER(ctypes.c_uint8))  # no copy: mtmd copies
        bitmap = mtmd.mtmd_bitmap_init(piece.width, piece.height, data)
        if not bitmap:
            raise GenerationError("mtmd could not create a bitmap for an image")
        try:
            mtmd.mtmd_bitmap_set_id(bitmap, piece.digest.encode())
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

    def prompt_items(self, chunks: PromptChunks, digests: Sequence[str] = ()) -> list[Item]:
        """The prompt as a flat list: a token id per text token, ``("img", digest, piece,
        n_pos)`` per image piece (see :meth:`lfm2_edge._llama.context.Runtime.prompt_items`).
        The chunks know their images' digests; ``digests`` is not needed."""
        items: list[Item] = []
        for i, info in enumerate(chunks.info):
            if info.is_image:
                digest, piece = chunks.pieces[i]
                items.append(("img", digest, piece, info.n_pos))
            else:
                items.extend(chunks.text_tokens(i))
        return items

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
