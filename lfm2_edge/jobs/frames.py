"""What a live source hands the watcher: :class:`Frame` (decoded only when it is looked
at), :class:`Notice` (an error or a reconnect, never lost behind frames), the cheap
perceptual change measure (:func:`change`), and :func:`split_images`, which cuts a byte
stream of concatenated JPEG / PNG files (``watch -``, MJPEG parts without a length) into
images.

The change measure: both frames as 32x32 RGB thumbnails, their mean absolute difference
over pixels and channels as a fraction of full scale (colour counts: a red car that
leaves a green lawn of the same brightness is a change). 0 is the same picture; 1 is black against white. Sensor
noise and compression artefacts of a still scene stay under about 0.01 at that size (a
thumbnail pixel averages hundreds of camera pixels); a light switched on or a person
walking into a doorway's view is 0.05-0.3; a cut to another scene is usually over 0.15.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from lfm2_edge.chat.images import DEFAULT_MAX_PIXELS, LoadedImage, check_size, load_image
from lfm2_edge.errors import ImageError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["MAX_FRAME_BYTES", "THUMB", "Frame", "Notice", "change", "probe", "split_images"]

THUMB = 32  # the change measure's thumbnail side
MAX_FRAME_BYTES = 50 * 1024 * 1024  # one encoded frame; as a remote image (chat/images.py)
_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"


@dataclass
class Notice:
    """Something a source says besides frames: ``error`` (a frame it could not use, the
    run goes on), ``reconnecting`` / ``connected`` (a live source that dropped), ``fatal``."""

    kind: str
    message: str
    at: float = field(default_factory=time.time)


@dataclass
class Frame:
    """One captured frame: ``captured`` (wall clock, seconds since the epoch), ``clock``
    (the source's clock in seconds: a file's timestamp, else ``time.monotonic()`` at
    capture; ``--every`` and cooldowns count on it), ``pts`` (a video's own timestamp),
    ``index`` (its number in the source). ``payload`` is encoded bytes, a PIL image or a
    PyAV frame; it is decoded to RGB only if the frame is answered."""

    payload: Any
    captured: float
    clock: float
    index: int
    pts: float | None = None
    name: str | None = None  # the file it came from (a folder's)

    def image(self, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
        p = self.payload
        if isinstance(p, (bytes, Image.Image)):
            return load_image(p, max_pixels=max_pixels)
        check_size(p.width, p.height, max_pixels)  # a PyAV frame
        return LoadedImage.from_pil(p.to_image(), max_pixels=max_pixels)

    def thumbnail(self) -> np.ndarray:
        """The frame as a THUMBxTHUMBx3 RGB float array (0-255), decoded as cheaply as the
        format allows (a JPEG at 1/8 scale, a video frame through swscale)."""
        p = self.payload
        try:
            if isinstance(p, bytes):
                image = Image.open(io.BytesIO(p))
                check_size(image.width, image.height, DEFAULT_MAX_PIXELS)
                image.draft("RGB", (THUMB * 2, THUMB * 2))  # JPEG: decoded at 1/2..1/8 scale
                small = image.convert("RGB").resize((THUMB, THUMB), Image.Resampling.BILINEAR)
            elif isinstance(p, Image.Image):
                small = p.convert("RGB").resize((THUMB, THUMB), Image.Resampling.BILINEAR)
            else:
                small = p.reformat(width=THUMB, height=THUMB, format="rgb24").to_image()
        except ImageError:
            raise
        except Exception as exc:  # Pillow and PyAV raise many types on hostile data
            raise ImageError(f"frame {self.index} could not be decoded: {type(exc).__name__}: {exc}") from None
        import numpy as np  # here: `lfm2-edge --help` does not load numpy

        return np.asarray(small, dtype=np.float32)


def change(a: np.ndarray, b: np.ndarray) -> float:
    """The perceptual distance of two thumbnails: mean absolute difference, 0-1."""
    return float(abs(a - b).mean() / 255.0)


def probe(data: bytes, what: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Refuse encoded bytes that are no image, or whose header declares too many pixels,
    without decoding them (cheap enough for every frame a source delivers)."""
    if not data.startswith((_JPEG, _PNG, b"RIFF", b"GIF8", b"BM")):
        raise ImageError(f"{what} is not a JPEG, PNG, WebP, GIF or BMP image ({len(data)} bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ImageError(f"{what} declares too many pixels (over {max_pixels:,}); refusing it") from None
    except Exception as exc:
        raise ImageError(f"{what} is not an image Pillow can read ({type(exc).__name__})") from None
    try:
        check_size(image.width, image.height, max_pixels)
    except ImageError as exc:
        raise ImageError(f"{what}: {exc}") from None


def _jpeg_end(buf: bytearray, start: int) -> int | None:
    """The index just past the JPEG starting at ``start``, None while it is incomplete;
    ValueError when the bytes are not JPEG markers. Entropy-coded data is scanned for the
    first marker that is neither a stuffed 0xFF00 nor a restart marker."""
    i, n = start + 2, len(buf)
    while True:
        if i + 2 > n:
            return None
        if buf[i] != 0xFF:
            raise ValueError("not a JPEG marker")
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:
            return i + 2
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if i + 4 > n:
            return None
        i += 2 + ((buf[i + 2] << 8) | buf[i + 3])
        if marker != 0xDA:
            continue
        while True:  # the scan's data, up to the next real marker
            j = buf.find(b"\xff", i)
            if j < 0 or j + 1 >= n:
                return None
            following = buf[j + 1]
            if following == 0 or 0xD0 <= following <= 0xD7:
                i = j + 2
            elif following == 0xFF:
                i = j + 1
            else:
                i = j
                break


def _png_end(buf: bytearray, start: int) -> int | None:
    i, n = start + 8, len(buf)
    while True:
        if i + 8 > n:
            return None
        length = int.from_bytes(buf[i : i + 4], "big")
        kind = bytes(buf[i + 4 : i + 8])
        if length > MAX_FRAME_BYTES or not kind.isalpha():
            raise ValueError("not a PNG chunk")
        i += 12 + length
        if kind == b"IEND":
            return i if i <= n else None


def split_images(
    read: Callable[[int], bytes], max_bytes: int = MAX_FRAME_BYTES, chunk: int = 64 * 1024
) -> Iterator[bytes | Notice]:
    """The JPEG and PNG files in a byte stream, one after the other. Bytes between them
    that start no image are one ``error`` notice per run of them; an image that grows
    past ``max_bytes`` is one notice, and the stream is searched for the next image."""
    buf = bytearray()
    garbage = 0
    quiet = False  # the tail of an oversized frame is not news of garbage
    eof = False
    while True:
        start = min((i for i in (buf.find(_JPEG), buf.find(_PNG)) if i >= 0), default=-1)
        if start < 0:
            keep = min(len(buf), len(_PNG) - 1)
            garbage += len(buf) - keep
            del buf[: len(buf) - keep]
        else:
            garbage += start
            del buf[:start]
            if garbage and not quiet:
                yield Notice("error", f"skipped {garbage} bytes of the stream that were no JPEG or PNG image")
            garbage, quiet = 0, False
            try:
                end = _jpeg_end(buf, 0) if buf.startswith(_JPEG) else _png_end(buf, 0)
            except ValueError:
                end, buf[:1] = None, b""  # a false start: search on from the next byte
                garbage += 1
                continue
            if end is not None:
                yield bytes(buf[:end])
                del buf[:end]
                continue
            if len(buf) > max_bytes:
                yield Notice("error", f"a frame of the stream is over {max_bytes // 2**20} MiB; skipped it")
                del buf[:1]
                quiet = True
                continue
        if eof:
            if (garbage and not quiet) or buf.strip(b"\x00\r\n \t"):
                yield Notice("error", "the stream ended inside an image or in bytes that were no image")
            return
        data = read(chunk)
        if not data:
            eof = True
        buf += data
