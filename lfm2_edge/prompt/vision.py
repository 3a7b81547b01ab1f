"""How LFM2-VL cuts an image, as transformers' ``Lfm2VlImageProcessor`` does: pure arithmetic.

An image becomes one piece (resized to a multiple of 32 px within the token budget) or,
when it is too large for one, a grid of 512x512 tiles cut from the image stretched to the
grid, plus a thumbnail (where the model's processor adds one). Each piece is handed to mtmd
at exactly its final size, so mtmd encodes it as it is. The marker text around the pieces is
the processor's: ``<|image_start|>``, ``<|img_row_R_col_C|>`` before each tile,
``<|img_thumbnail|>`` before the thumbnail, ``<|image_end|>``.

Every rounding here is Python's, as in transformers (``round`` is half-to-even, ``math.sqrt``
and the divisions are float64), so the sizes, the grid and the token counts are the
processor's own for any image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from lfm2_edge.errors import ImageError
from lfm2_edge.prompt.tokens import IMAGE_END, IMAGE_MARKER, IMAGE_START, IMAGE_THUMBNAIL, MAX_TILE_GRID, tile_token

__all__ = ["ImagePlan", "ImageProcessing", "Piece", "grid_layout", "plan_image", "smart_resize"]


@dataclass(frozen=True)
class ImageProcessing:
    """``Lfm2VlImageProcessor``'s settings (a model's ``processor_config.json``); the
    defaults are the processor's own."""

    min_image_tokens: int = 64
    max_image_tokens: int = 256
    do_image_splitting: bool = True
    min_tiles: int = 2
    max_tiles: int = 10
    use_thumbnail: bool = True
    tile_size: int = 512
    encoder_patch_size: int = 16
    downsample_factor: int = 2
    max_pixels_tolerance: float = 2.0


@dataclass(frozen=True)
class Piece:
    """One image chunk mtmd encodes: ``width`` x ``height`` pixels, ``n_tokens`` tokens.

    ``marker`` is the marker text written before it (a tile's row/column marker, the
    thumbnail marker; empty for a lone image). ``box`` is a tile's (left, top, right,
    bottom) in the stretched canvas; ``None`` for a piece resized from the whole image."""

    width: int
    height: int
    n_tokens: int
    marker: str = ""
    box: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class ImagePlan:
    width: int
    height: int
    grid: tuple[int, int]  # (columns, rows); (1, 1): one piece
    canvas: tuple[int, int] | None  # the size the image is stretched to before it is cut
    pieces: tuple[Piece, ...]

    @property
    def n_tokens(self) -> int:
        return sum(p.n_tokens for p in self.pieces)

    @property
    def tiled(self) -> bool:
        return self.canvas is not None

    def text(self) -> str:
        """The processor's expansion of one ``<image>``: markers and image tokens."""
        body = "".join(p.marker + IMAGE_MARKER * p.n_tokens for p in self.pieces)
        return IMAGE_START + body + IMAGE_END


def _round_by_factor(number: float, factor: int) -> int:
    return round(number / factor) * factor


def smart_resize(height: int, width: int, p: ImageProcessing) -> tuple[int, int]:
    """(width, height) of the one-piece image (or thumbnail): sides multiples of
    patch x downsample, the pixel count within the token budget, the aspect kept."""
    total_factor = p.encoder_patch_size * p.downsample_factor
    min_pixels = p.min_image_tokens * p.encoder_patch_size**2 * p.downsample_factor**2
    max_pixels = p.max_image_tokens * p.encoder_patch_size**2 * p.downsample_factor**2
    h_bar = max(total_factor, _round_by_factor(height, total_factor))
    w_bar = max(total_factor, _round_by_factor(width, total_factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(total_factor, math.floor(height / beta / total_factor) * total_factor)
        w_bar = max(total_factor, math.floor(width / beta / total_factor) * total_factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / total_factor) * total_factor
        w_bar = math.ceil(width * beta / total_factor) * total_factor
    return w_bar, h_bar


def is_image_too_large(height: int, width: int, p: ImageProcessing) -> bool:
    total_factor = p.encoder_patch_size * p.downsample_factor
    h_bar = max(p.encoder_patch_size, _round_by_factor(height, total_factor))
    w_bar = max(p.encoder_patch_size, _round_by_factor(width, total_factor))
    limit = p.max_image_tokens * p.encoder_patch_size**2 * p.downsample_factor**2 * p.max_pixels_tolerance
    return h_bar * w_bar > limit


@lru_cache(maxsize=64)
def target_ratios(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    """The grids to choose from, in the processor's order (by tile count; within a count,
    the order of CPython's set of int pairs, which is fixed)."""
    ratios = [
        (w, h)
        for n in range(min_tiles, max_tiles + 1)
        for w in range(1, n + 1)
        for h in range(1, n + 1)
        if min_tiles <= w * h <= max_tiles
    ]
    return tuple(sorted(set(ratios), key=lambda x: x[0] * x[1]))


def grid_layout(height: int, width: int, p: ImageProcessing) -> tuple[int, int]:
    """(columns, rows): the grid whose aspect is closest to the image's; on a tie, the
    later one when the image covers more than half of its area."""
    aspect_ratio = width / height
    best_ratio_diff = float("inf")
    best = (1, 1)
    area = width * height
    for ratio in target_ratios(p.min_tiles, p.max_tiles):
        ratio_diff = abs(aspect_ratio - ratio[0] / ratio[1])
        if ratio_diff < best_ratio_diff:
            best_ratio_diff = ratio_diff
            best = ratio
        elif ratio_diff == best_ratio_diff and area > 0.5 * (p.tile_size * p.tile_size * ratio[0] * ratio[1]):
            best = ratio
    return best


def _tokens(width: int, height: int, p: ImageProcessing) -> int:
    return math.ceil((height // p.encoder_patch_size) / p.downsample_factor) * math.ceil(
        (width // p.encoder_patch_size) / p.downsample_factor
    )


def plan_image(width: int, height: int, p: ImageProcessing, *, max_piece_tokens: int | None = None) -> ImagePlan:
    """How the processor cuts a ``width`` x ``height`` image.

    ``max_piece_tokens``: the most tokens one piece may take (what the vision encoder is
    set up for); an image whose plan has a larger piece (an extreme strip, hundreds of
    times longer than wide) is refused with :class:`ImageError` rather than cut otherwise.
    """
    if width < 1 or height < 1:
        raise ImageError("the image has no pixels")
    plan = _plan(width, height, p)
    if max_piece_tokens is not None and (big := max(pc.n_tokens for pc in plan.pieces)) > max_piece_tokens:
        raise ImageError(
            f"the image is {width}x{height}, too narrow for the vision encoder (one piece would take "
            f"{big} tokens, over its {max_piece_tokens}); crop it"
        )
    return plan


def _plan(width: int, height: int, p: ImageProcessing) -> ImagePlan:
    min_tiles, max_tiles = (p.min_tiles, p.max_tiles) if p.do_image_splitting else (1, 1)
    splitting = not min_tiles == max_tiles == 1
    new_w, new_h = smart_resize(height, width, p)
    if splitting and is_image_too_large(height, width, p):
        cols, rows = grid_layout(height, width, p)
        if cols > MAX_TILE_GRID or rows > MAX_TILE_GRID:  # max_tiles over 10: no marker token for it
            raise ImageError(f"a {cols}x{rows} tile grid has no row/column markers (at most {MAX_TILE_GRID})")
        t = p.tile_size
        per_tile = _tokens(t, t, p)
        pieces = [
            Piece(t, t, per_tile, tile_token(r + 1, c + 1), (c * t, r * t, (c + 1) * t, (r + 1) * t))
            for r in range(rows)
            for c in range(cols)
        ]
        if p.use_thumbnail and cols * rows != 1:
            pieces.append(Piece(new_w, new_h, _tokens(new_w, new_h, p), IMAGE_THUMBNAIL))
        return ImagePlan(width, height, (cols, rows), (cols * t, rows * t), tuple(pieces))
    return ImagePlan(width, height, (1, 1), None, (Piece(new_w, new_h, _tokens(new_w, new_h, p)),))
