"""VisionModel on the tiny synthetic pair, through the real llama.cpp / mtmd pipeline."""

from __future__ import annotations

import base64
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from lfm2_edge import ContextOverflowError, ImageError, InvalidParameterError, VisionModel
from lfm2_edge.local.doctor import repack_plan
from tests.helpers import noise_image, png_bytes

GREEDY = {"temperature": 0, "max_tokens": 12}


def test_answer_reports_usage_and_is_repeatable(vm: VisionModel, noise: Image.Image) -> None:
    vm.reset()  # another test may have left this very prompt's state: the first answer must evaluate it
    first = vm.chat("What is in this image?", images=[noise], **GREEDY)
    second = vm.chat("What is in this image?", images=[noise], **GREEDY)
    assert first.text == second.text and first.text
    assert first.usage.image_tokens == 80  # 320x240 -> 20x15 patches of 16 -> 10x8 after unshuffle
    assert first.usage.completion_tokens == 12 and first.finish_reason == "length"
    assert first.usage.prompt_tokens > first.usage.image_tokens
    assert first.timings.image_ms > 0 and first.timings.prompt_ms >= first.timings.image_ms


def test_answer_depends_on_prompt_and_on_image(vm: VisionModel, noise: Image.Image, red: Image.Image) -> None:
    a = vm.chat("What is in this image?", images=[noise], **GREEDY).text
    b = vm.chat("Describe the colors.", images=[noise], **GREEDY).text
    c = vm.chat("What is in this image?", images=[red], **GREEDY).text
    assert a != b
    assert a != c


def test_image_goes_before_text_whatever_the_part_order(vm: VisionModel, noise: Image.Image) -> None:
    text_first = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "What is in this image?"}, {"type": "image", "image": noise}],
        }
    ]
    image_first = [
        {
            "role": "user",
            "content": [{"type": "image", "image": noise}, {"type": "text", "text": "What is in this image?"}],
        }
    ]
    assert vm.chat(text_first, **GREEDY).text == vm.chat(image_first, **GREEDY).text


def test_stream_yields_the_same_text(vm: VisionModel, noise: Image.Image) -> None:
    whole = vm.chat("Describe.", images=[noise], **GREEDY)
    stream = vm.chat("Describe.", images=[noise], stream=True, **GREEDY)
    pieces = list(stream)
    assert len(pieces) > 1
    assert "".join(pieces) == whole.text
    assert stream.result is not None
    usage = stream.result.usage
    assert (usage.prompt_tokens, usage.image_tokens, usage.completion_tokens) == (
        whole.usage.prompt_tokens,
        whole.usage.image_tokens,
        whole.usage.completion_tokens,
    )
    assert (usage.image_encodes, usage.cached_tokens > 0) == (0, True)  # the same prompt again: reused


def test_stop_string_cuts_the_answer(vm: VisionModel, noise: Image.Image) -> None:
    full = vm.chat("Describe.", images=[noise], temperature=0, max_tokens=24).text
    stop = full[5:9]
    cut = vm.chat("Describe.", images=[noise], temperature=0, max_tokens=24, stop=[stop])
    assert cut.text == full[: full.index(stop)]
    assert cut.finish_reason == "stop"
    streamed = "".join(vm.chat("Describe.", images=[noise], temperature=0, max_tokens=24, stop=stop, stream=True))
    assert streamed == cut.text


def test_several_images_per_turn_and_across_turns(vm: VisionModel, noise: Image.Image, red: Image.Image) -> None:
    conversation = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": noise},
                {"type": "image", "image": red},
                {"type": "text", "text": "Compare."},
            ],
        },
        {"role": "assistant", "content": "They differ."},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": noise_image(512, 512, seed=3)},
                {"type": "text", "text": "And this one?"},
            ],
        },
    ]
    result = vm.chat(conversation, **GREEDY)
    assert result.usage.image_tokens == 80 + 80 + 256


def test_large_image_is_tiled(vm: VisionModel) -> None:
    result = vm.chat("Describe.", images=[noise_image(1024, 768)], **GREEDY)
    # 2x2 (or wider) grid of 512px tiles at 256 tokens each, plus a thumbnail
    assert result.usage.image_tokens > 4 * 256


def test_image_token_budget_is_passed_to_mtmd(vm: VisionModel, tiny: dict[str, Path]) -> None:
    def tokens(model: VisionModel, w: int, h: int) -> int:
        return model.chat("Describe.", images=[noise_image(w, h)], max_tokens=1).usage.image_tokens

    # defaults 64..256: a small image is scaled up to 64 tokens, 320x240 keeps its 80
    assert (tokens(vm, 64, 64), tokens(vm, 320, 240)) == (64, 80)
    with VisionModel(tiny["F16"], tiny["mmproj"], image_min_tokens=16, image_max_tokens=64) as small:
        # the minimum lets the small image stay small, the maximum scales 320x240 down
        assert (tokens(small, 64, 64), tokens(small, 320, 240)) == (16, 54)


def test_image_sources_give_the_same_answer(vm: VisionModel, noise: Image.Image, tmp_path: Path) -> None:
    data = png_bytes(noise)
    path = tmp_path / "noise.png"
    path.write_bytes(data)
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    with _serve(tmp_path) as base:
        sources = [noise, data, str(path), path, uri]
        answers = {vm.chat("What is this?", images=[s], **GREEDY).text for s in sources}
        url = f"{base}/noise.png"
        with pytest.raises(ImageError, match=r"refusing to fetch .*loopback"):  # SSRF: local URLs need opting in
            vm.chat("What is this?", images=[url])
        vm.allow_private_urls = True
        try:
            answers.add(vm.chat("What is this?", images=[url], **GREEDY).text)
        finally:
            vm.allow_private_urls = False
    assert len(answers) == 1


def test_two_models_in_one_process_do_not_interfere(
    tiny: dict[str, Path], noise: Image.Image, red: Image.Image
) -> None:
    with VisionModel(tiny["F16"], tiny["mmproj"]) as a, VisionModel(tiny["Q8_0"], tiny["mmproj"]) as b:
        alone_a = a.chat("Describe.", images=[noise], **GREEDY).text
        alone_b = b.chat("Describe.", images=[red], **GREEDY).text
        sa = a.chat("Describe.", images=[noise], stream=True, **GREEDY)
        sb = b.chat("Describe.", images=[red], stream=True, **GREEDY)
        pieces_a, pieces_b = [], []
        for pa, pb in zip(sa, sb, strict=False):  # interleave the two generations token by token
            pieces_a.append(pa)
            pieces_b.append(pb)
        pieces_a += list(sa)
        pieces_b += list(sb)
    assert "".join(pieces_a) == alone_a
    assert "".join(pieces_b) == alone_b


def test_quantized_models_run(tiny: dict[str, Path], noise: Image.Image) -> None:
    # What a random-weight model says depends on the CPU's kernels (x86's AVX2 ones, ARM's
    # repacked dotprod ones round differently, so greedy decoding may stop elsewhere): the
    # check is the answer's shape, and that a fresh load on this machine answers the same.
    for quant in ("Q8_0", "Q4_0"):
        answers = []
        for _ in range(2):
            with VisionModel(tiny[quant], tiny["mmproj"]) as model:
                answers.append(model.chat("Describe.", images=[noise], **GREEDY))
        first, again = answers
        n = first.usage.completion_tokens
        assert (
            1 <= n <= 12
            and first.finish_reason in ("stop", "length")
            and (n == 12) == (first.finish_reason == "length")
        )
        assert first.usage.image_tokens > 0 and isinstance(first.text, str)
        assert (again.text, again.usage.completion_tokens, again.finish_reason) == (first.text, n, first.finish_reason)


def test_no_repack_runs_without_llama_cpps_repacked_copy(
    tiny: dict[str, Path], noise: Image.Image, tmp_path: Path
) -> None:
    # --no-repack: no CPU_REPACK buffer (llama.cpp's plain block kernels), and the API's
    # repack=False answers the same; by default the copy is there exactly where this
    # llama.cpp repacks Q4_0 (doctor's repack_plan(), which its estimate counts).
    image = tmp_path / "noise.png"
    noise.save(image)

    def chat(*flags: str) -> tuple[dict, bool]:
        args = ["chat", str(tiny["Q4_0"]), "--mmproj", str(tiny["mmproj"]), "-i", str(image), "-p", "Describe."]
        args += ["--temperature", "0", "--max-tokens", "12", "--json", "-vv", *flags]
        proc = subprocess.run(
            [sys.executable, "-m", "lfm2_edge.cli", *args],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout), "CPU_REPACK model buffer size" in proc.stderr

    plain, plain_has_copy = chat("--no-repack")
    _, has_copy = chat()
    assert not plain_has_copy
    assert has_copy == ("Q4_0" in repack_plan(None)[0])
    with VisionModel(tiny["Q4_0"], tiny["mmproj"], repack=False) as model:
        again = model.chat("Describe.", images=[image], **GREEDY)
    assert (again.text, again.usage.completion_tokens) == (plain["text"], plain["usage"]["completion_tokens"])


def test_prompt_larger_than_context_is_refused(tiny: dict[str, Path]) -> None:
    with VisionModel(tiny["F16"], tiny["mmproj"], n_ctx=512) as model:
        with pytest.raises(
            ContextOverflowError, match=r"needs \d+ tokens \(\d+ of them for 1 image\(s\)\) but the context holds 512"
        ):
            model.chat("Describe.", images=[noise_image(1024, 768)])
        # the model is still usable afterwards
        assert model.chat("Describe.", images=[noise_image(64, 64)], **GREEDY).text


def test_sampling_with_seed_is_repeatable(vm: VisionModel, noise: Image.Image) -> None:
    kw = {"temperature": 1.0, "min_p": 0.0, "max_tokens": 16}
    a = vm.chat("Tell a story.", images=[noise], seed=42, **kw).text
    b = vm.chat("Tell a story.", images=[noise], seed=42, **kw).text
    assert a == b


def test_unknown_sampling_option_is_an_invalid_parameter_error(vm: VisionModel) -> None:
    with pytest.raises(InvalidParameterError, match="unknown sampling option 'temprature'; did you mean"):
        vm.chat("hi", temprature=0)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def _serve(directory: Path) -> Iterator[str]:
    handler = lambda *a, **k: _Quiet(*a, directory=str(directory), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
