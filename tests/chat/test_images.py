from __future__ import annotations

import base64
import http.server
import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from PIL import Image

from lfm2_edge.chat.images import load_image
from lfm2_edge.errors import ImageError
from tests.helpers import png_bytes, png_claiming


def _encode(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def test_modes_are_converted_to_rgb() -> None:
    base = Image.new("RGB", (8, 6), (10, 20, 30))
    for image in (
        base.convert("CMYK"),
        base.convert("P"),
        base.convert("L"),
        base.convert("RGBA"),
        Image.new("I;16", (8, 6), 40000),
    ):
        loaded = load_image(image)
        assert (loaded.width, loaded.height) == (8, 6)
        assert len(loaded.rgb) == 8 * 6 * 3


def test_transparency_is_dropped_keeping_the_stored_colour() -> None:
    # as transformers' load_image (convert("RGB")) hands the image to Lfm2VlProcessor
    loaded = load_image(Image.new("RGBA", (2, 2), (10, 20, 30, 0)))
    assert loaded.rgb == bytes((10, 20, 30)) * 4
    la = load_image(Image.new("LA", (1, 1), (77, 0)))
    assert la.rgb == bytes((77, 77, 77))
    pal = Image.new("P", (1, 1), 0)
    pal.putpalette([200, 100, 50] * 256)
    pal.info["transparency"] = 0
    assert load_image(pal).rgb == bytes((200, 100, 50))


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (1, 2, 3))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    loaded = load_image(_encode(image, "JPEG", exif=exif.tobytes()))
    assert (loaded.width, loaded.height) == (20, 40)


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    loaded = load_image(data)
    assert loaded.rgb[:3] == bytes((255, 0, 0))


def test_same_pixels_same_digest_from_any_source(tmp_path: Path) -> None:
    image = Image.new("RGB", (5, 5), (9, 8, 7))
    data = png_bytes(image)
    (tmp_path / "a.png").write_bytes(data)
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    digests = {load_image(s).digest for s in (image, data, tmp_path / "a.png", str(tmp_path / "a.png"), uri)}
    assert len(digests) == 1


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (b"", "is empty"),
        (b"not an image at all", "is not an image Pillow can read"),
        ("data:image/png;base64", "must look like data:image/png;base64"),
        ("file:///etc/passwd", "file:// image URLs are not supported"),
        ("/definitely/missing.png", "image file not found"),
        (12, "cannot use a int as an image"),
    ],
)
def test_bad_sources_raise_image_error(source: object, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        load_image(source)


def test_truncated_file_is_an_error() -> None:
    data = _encode(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")
    with pytest.raises(ImageError, match=r"could not be decoded|not an image"):
        load_image(data[: len(data) // 2])


def test_pixel_cap_refuses_huge_images() -> None:
    with pytest.raises(ImageError, match="over the 100-pixel limit"):
        load_image(Image.new("RGB", (20, 20)), max_pixels=100)


def test_remote_urls_can_be_disabled() -> None:
    with pytest.raises(ImageError, match="remote image URLs are disabled"):
        load_image("http://127.0.0.1:9/x.png", allow_remote=False)


class _Counting(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []
    redirect_to = ""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", type(self).redirect_to)
            self.end_headers()
            return
        body = _encode(Image.new("RGB", (32, 32), (9, 9, 9)), "PNG")
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def local_server() -> Iterator[str]:
    _Counting.hits = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_private_and_loopback_urls_are_refused_without_a_request(local_server: str) -> None:
    port = local_server.rsplit(":", 1)[1]
    for url in (f"{local_server}/cat.png", f"http://localhost:{port}/cat.png", f"http://[::1]:{port}/cat.png"):
        with pytest.raises(ImageError, match=r"refusing to fetch .*private, loopback or link-local"):
            load_image(url)
    assert _Counting.hits == []  # nothing was requested
    assert load_image(f"{local_server}/cat.png", allow_private=True).width == 32  # opting in works
    _Counting.redirect_to = "file:///etc/passwd"
    with pytest.raises(ImageError, match="only http\\(s\\) URLs"):
        load_image(f"{local_server}/redirect", allow_private=True)


@pytest.mark.parametrize(
    "ip",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.10", "169.254.169.254", "::1", "fe80::1", "fc00::1", "0.0.0.0"],
)
def test_non_public_addresses_are_refused(ip: str) -> None:
    from lfm2_edge.chat.images import _check_address

    with pytest.raises(ImageError, match="refusing"):
        _check_address("host", ip, "http://host/x.png")
    _check_address("host", "93.184.216.34", "http://host/x.png")  # a public address passes


def test_other_schemes_are_never_opened() -> None:
    for url in ("file:///etc/passwd", "ftp://example.com/x.png", "gopher://x/"):
        with pytest.raises(ImageError, match="not supported"):
            load_image(url)


def test_any_aspect_ratio_loads() -> None:
    # as in transformers; a strip too narrow for the vision encoder is refused where it is
    # cut (tests/test_vision.py)
    assert load_image(Image.new("RGB", (3300, 100))).width == 3300
    assert load_image(Image.new("RGB", (1, 4000))).height == 4000


def test_devices_and_fifos_are_refused_without_reading(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    for source in ("/dev/zero", str(fifo)):
        with pytest.raises(ImageError, match="not a regular file"):
            load_image(source)


def test_an_image_over_the_pixel_limit_is_refused_from_its_header() -> None:
    # Only the header is read: the claimed 8000x8000 pixels are never decoded (decoding
    # this file would fail with another error).
    with pytest.raises(ImageError, match="pixel limit"):
        load_image(png_claiming(8000, 8000), max_pixels=16_000_000)
