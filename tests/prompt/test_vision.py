"""Images cut as transformers' Lfm2VlImageProcessor cuts them (lfm2_edge.prompt.vision), and
fed to mtmd piece by piece (lfm2_edge._llama.projector). The plan's equality with the
processor itself over many sizes is tests/reference/ (it needs torch); here: the numbers
that processor gives, spelled out, and the projector keeping to the plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lfm2_edge.chat.images import image_pieces, load_image, resize_like_transformers
from lfm2_edge.errors import ImageError
from lfm2_edge.prompt.tokens import IMAGE_END, IMAGE_START, IMAGE_THUMBNAIL, tile_token
from lfm2_edge.prompt.vision import ImageProcessing, grid_layout, plan_image, smart_resize
from tests.helpers import noise_image

CARD = ImageProcessing()


@pytest.mark.parametrize(
    ("size", "resized", "tokens"),
    [
        ((336, 336), (320, 320), 100),  # 336/32 = 10.5 rounds to even 10 (C++ std::round: 11, 121 tokens)
        ((400, 300), (384, 288), 108),  # 12.5 -> 12 (mtmd: 13, 117 tokens)
        ((80, 1200), (64, 1216), 76),  # 2.5 -> 2 -> under the minimum: scaled up from there
        ((256, 256), (256, 256), 64),
        ((320, 240), (320, 256), 80),
        ((16, 16), (256, 256), 64),  # scaled up to the 64-token floor
    ],
)
def test_one_piece_sizes_round_half_to_even(size: tuple[int, int], resized: tuple[int, int], tokens: int) -> None:
    plan = plan_image(*size, CARD)
    assert (plan.grid, plan.canvas) == ((1, 1), None)
    assert [(p.width, p.height, p.n_tokens, p.marker, p.box) for p in plan.pieces] == [(*resized, tokens, "", None)]
    assert smart_resize(size[1], size[0], CARD) == resized


def test_a_large_image_is_a_stretched_grid_of_tiles_and_a_thumbnail() -> None:
    plan = plan_image(1024, 768, CARD)
    assert (plan.grid, plan.canvas) == ((3, 2), (1536, 1024))  # 3:2 is closest to 4:3 within 10 tiles
    markers = [p.marker for p in plan.pieces]
    assert markers == [tile_token(r, c) for r in (1, 2) for c in (1, 2, 3)] + [IMAGE_THUMBNAIL]
    assert [p.box for p in plan.pieces[:3]] == [(0, 0, 512, 512), (512, 0, 1024, 512), (1024, 0, 1536, 512)]
    thumb = plan.pieces[-1]
    assert (thumb.width, thumb.height, thumb.n_tokens) == (576, 416, 234)  # sqrt(3) smaller, floored
    assert plan.n_tokens == 6 * 256 + 234
    text = plan.text()
    assert text.startswith(IMAGE_START + tile_token(1, 1) + "<image>") and text.endswith("<image>" + IMAGE_END)
    assert text.count("<image>") == plan.n_tokens


def test_model_settings_change_the_plan() -> None:
    no_thumb = plan_image(1024, 768, ImageProcessing(use_thumbnail=False))  # LFM2-VL-450M's processor
    assert [p.marker for p in no_thumb.pieces][-1] == tile_token(2, 3) and no_thumb.n_tokens == 6 * 256
    # 1.6B's tolerance 1.5: 700x700 (rounded 704x704 = 484 blocks) is tiled, at 2.0 it is not
    assert plan_image(700, 700, CARD).tiled is False
    assert plan_image(700, 700, ImageProcessing(max_pixels_tolerance=1.5)).grid == (2, 2)
    # a budget of 64..128: tiles stay 256 tokens, the one piece and the thumbnail shrink
    small = ImageProcessing(min_image_tokens=64, max_image_tokens=128)
    assert plan_image(400, 300, small).n_tokens == 108
    assert plan_image(500, 500, small).n_tokens == 121 and not plan_image(500, 500, small).tiled
    tiled = plan_image(600, 600, small)  # over twice the smaller budget: tiled, 2x2
    assert (tiled.grid, tiled.pieces[0].n_tokens, tiled.pieces[-1].n_tokens) == ((2, 2), 256, 121)
    assert plan_image(1024, 768, small).pieces[-1].n_tokens == 117
    assert plan_image(4000, 4000, ImageProcessing(do_image_splitting=False)).grid == (1, 1)


def test_grid_ties_follow_the_processor() -> None:
    # 2:1 and 4:2 have the same aspect; the larger grid wins when the image covers more
    # than half its area
    assert grid_layout(600, 1200, CARD) == (2, 1)
    assert grid_layout(1000, 2000, CARD) == (4, 2)


def test_an_extreme_strip_is_refused_where_it_cannot_be_encoded_as_the_processor_does() -> None:
    assert plan_image(20, 2000, CARD).n_tokens == 80  # 100:1 is one thin piece, as in transformers
    with pytest.raises(ImageError, match="too narrow for the vision encoder"):
        plan_image(10, 60000, CARD, max_piece_tokens=256)


# torchvision's resize(antialias=True) of a 7x5 uint8 ramp, bilinear (transformers 5.24,
# torch 2.14.1, torchvision 0.29.1); tests/reference/ checks many more sizes against torch itself
GOLDEN = {
    (4, 3): "3e577ca3436884a9497095ae4c658ab1517692b7577ea3bc537398735f84a079658caa7e",
    (7, 2): "092e53789dc2e70c31567ba0c5ea0f34597ea3c8ed1b40658aafd4a81e43688db2d7ab21466b90b5daae",
    (5, 18): (  # where Pillow's bilinear filter differs
        "254a6fad43687c72687ca137759abf254a6fad43687c72687ca137759abf274c71af456a7e746a7ea339779cc1294e73b1476c80"
        "766c80a53b799ec32c5176b44a6f83796f83a83e7ca1c62e5378b64c71857b7185aa407ea3c831567bb94f74887e7488ad4381a6"
        "cb33587dbb51768a80768aaf4583a8cd365b80be54798d83798db24886abd0385d82c0567b8f857b8fb44a88add23b6085c3597e"
        "92887e92b74d8bb0d53d6287c55b80948a8094b94f8db2d740658ac85e83978d8397bc5290b5da42678ca760858e8485999b5492"
        "b7b2456a8f8163888379889c755795ba85476c915c658a786e8a9e505997bc58496e9342678c71678ca0365b99be38496e934267"
        "8c71678ca0365b99be38"
    ),
}


def test_resizing_is_torchvisions_bit_for_bit() -> None:
    ramp = (np.arange(7 * 5 * 3) * 37 % 256).astype(np.uint8).reshape(5, 7, 3)
    for (w, h), hexbytes in GOLDEN.items():
        assert resize_like_transformers(ramp, w, h).tobytes().hex() == hexbytes
    assert resize_like_transformers(ramp, 7, 5).tobytes() == ramp.tobytes()
    # Pillow's bilinear filter (what mtmd's own resize copies) is not it
    pil = np.asarray(Image.fromarray(ramp).resize((5, 18), Image.Resampling.BILINEAR))
    assert pil.tobytes().hex() != GOLDEN[(5, 18)]


def test_pieces_are_the_stretched_canvas_cut_and_the_resized_thumbnail() -> None:
    source = noise_image(1024, 768)
    loaded = load_image(source)
    plan = plan_image(1024, 768, CARD)
    pieces = image_pieces(loaded, plan.canvas, [(p.width, p.height, p.box) for p in plan.pieces])
    assert plan.canvas is not None
    pixels = np.asarray(source.convert("RGB"))
    canvas = resize_like_transformers(pixels, *plan.canvas)
    assert pieces[4].rgb == canvas[512:1024, 512:1024].tobytes()
    assert pieces[-1].rgb == resize_like_transformers(pixels, 576, 416).tobytes()
    assert {p.digest for p in pieces} == {loaded.digest}


def test_the_projector_feeds_mtmd_the_plan(tiny: dict[str, Path]) -> None:
    from lfm2_edge._llama.context import Runtime

    rt = Runtime(tiny["F16"], tiny["mmproj"], n_ctx=4096, image_thumbnail=False)
    try:
        assert rt.projector is not None
        for size in ((336, 336), (400, 300), (1024, 768), (20, 2000)):
            image = load_image(noise_image(*size))
            plan = rt.projector.plan(image)
            with rt.tokenize_prompt("<image>", [image]) as chunks:
                assert chunks.n_image_tokens == plan.n_tokens
                assert [c.n_tokens for c in chunks.info if c.is_image] == [p.n_tokens for p in plan.pieces]
                text = [
                    rt.token_bytes(t)
                    for i, c in enumerate(chunks.info)
                    if not c.is_image
                    for t in chunks.text_tokens(i)
                ]
                items = rt.prompt_items(chunks, [image.digest])
            # the markers as the processor writes them, as control tokens
            expected = [IMAGE_START] + ([p.marker for p in plan.pieces if p.marker]) + [IMAGE_END]
            assert [rt.tokenize(m) for m in expected] == [[t] for t in _ids(rt, expected)]
            assert len(text) == len(expected)
            assert [it for it in items if not isinstance(it, int)] == [
                ("img", image.digest, i, p.n_tokens) for i, p in enumerate(plan.pieces)
            ]
        with pytest.raises(ImageError, match="too narrow"):
            rt.tokenize_prompt("<image>", [load_image(Image.new("RGB", (10, 30000)))])  # one 32x28032 piece
    finally:
        rt.close()


def _ids(rt: object, markers: list[str]) -> list[int]:
    out = []
    for m in markers:
        ids = rt.tokenize(m)  # type: ignore[attr-defined]
        assert len(ids) == 1, m
        out.append(ids[0])
    return out
