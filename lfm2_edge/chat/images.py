"""Images from wherever an app has them, decoded by Pillow into the RGB mtmd wants.

mtmd can decode files itself (stb_image), but lfm2-edge decodes with Pillow first:
it applies EXIF orientation, takes the first frame of an animation, converts CMYK,
palette, 16-bit and alpha images to RGB (an alpha channel is dropped, the stored colour
kept, as transformers' ``load_image`` does), and refuses decompression bombs and
unreadable data with one clear line instead of a crash inside C code.

:func:`image_pieces` makes the pixels of the pieces an image is cut into
(:mod:`lfm2_edge.prompt.vision` says which), so that mtmd gets each at its final size.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http.client
import io
import ipaddress
import math
import os
import socket
import ssl
import stat
import time
import urllib.parse
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Union

from PIL import Image, ImageOps

from lfm2_edge.errors import ImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageInput",
    "ImagesArg",
    "LoadedImage",
    "image_pieces",
    "is_single_image",
    "load_image",
    "pinned_connection",
    "resize_like_transformers",
    "resolve_checked",
]

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

# One image: a path or URL, encoded bytes, a PIL image, a numpy array of pixels
# (HxWx3 / HxWx4 / HxW, uint8), or a binary file object (``open(path, "rb")``, BytesIO).
ImageInput = Union[
    str, "os.PathLike[str]", bytes, bytearray, memoryview, Image.Image, "npt.NDArray[np.uint8]", IO[bytes]
]
# What ``chat(images=...)`` takes: one image, or a sequence of them.
ImagesArg = Union[ImageInput, Sequence[Any]]

DEFAULT_MAX_PIXELS = 64_000_000  # 8000x8000; larger is a decompression bomb, not a photo
REMOTE_TIMEOUT_S = 20.0  # for the whole fetch, redirects included, not per read
REMOTE_MAX_BYTES = 50 * 1024 * 1024
FILE_MAX_BYTES = 256 * 1024 * 1024  # a larger "image" file is not a photo


@dataclass(frozen=True)
class LoadedImage:
    """Decoded RGB pixels (row-major, 3 bytes a pixel) and a digest that identifies them."""

    width: int
    height: int
    rgb: bytes
    digest: str

    def data_uri(self) -> str:
        """A lossless PNG ``data:`` URI of the pixels (how they travel to a server)."""
        buf = io.BytesIO()
        Image.frombytes("RGB", (self.width, self.height), self.rgb).save(buf, "PNG", compress_level=1)
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")

    @classmethod
    def from_pil(cls, image: Image.Image, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
        try:
            if getattr(image, "is_animated", False):
                image.seek(0)
            image = ImageOps.exif_transpose(image)
            check_size(image.width, image.height, max_pixels)
            if image.mode != "RGB":
                # transparency is dropped, the stored colour kept: what transformers'
                # load_image (``convert("RGB")``) gives the processor
                if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                    image = image.point(lambda v: v / 256).convert("L")
                image = image.convert("RGB")
            rgb = image.tobytes()
        except ImageError:
            raise
        except Exception as exc:  # Pillow raises many types on hostile data (IndexError, EOFError, ...)
            raise ImageError(f"the image could not be decoded: {type(exc).__name__}: {exc}") from None
        digest = hashlib.sha256(b"%dx%d:" % (image.width, image.height) + rgb).hexdigest()
        return cls(image.width, image.height, rgb, digest)


def check_size(width: int, height: int, max_pixels: int) -> None:
    """Refuse an image by its dimensions alone (read from its header before decoding).

    Any aspect ratio passes here, as in transformers: a strip too narrow for the vision
    encoder is refused where it is cut (:func:`lfm2_edge.prompt.vision.plan_image`)."""
    if width < 1 or height < 1:
        raise ImageError("the image has no pixels")
    if width * height > max_pixels:
        raise ImageError(f"the image is {width}x{height}, over the {max_pixels:,}-pixel limit; downscale it first")


PieceShape = tuple[int, int, "tuple[int, int, int, int] | None"]


def _axis_weights(n_in: int, n_out: int) -> tuple[Any, Any, int]:
    """The taps of an antialiased bilinear resample of one axis, as torch computes them
    for uint8 images: for each output index its first input index, its int16 weights
    (the float weights normalised, then scaled by ``2**precision`` and rounded), and
    the precision (the most bits that keep the largest weight under 2**15)."""
    import numpy as np

    scale = n_in / n_out
    support = scale if scale >= 1.0 else 1.0  # the triangle filter's reach, widened when shrinking
    taps = math.ceil(support) * 2 + 1
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    center = scale * (np.arange(n_out, dtype=np.float64) + 0.5)
    first = np.maximum((center - support + 0.5).astype(np.int64), 0)  # truncated, as a C cast
    count = np.clip(np.minimum((center + support + 0.5).astype(np.int64), n_in) - first, 0, taps)
    j = np.arange(taps, dtype=np.float64)
    w = np.maximum(0.0, 1.0 - np.abs((j[None, :] + first[:, None] - center[:, None] + 0.5) * invscale))
    w[j[None, :] >= count[:, None]] = 0.0
    total = w.sum(axis=1, keepdims=True)
    w = np.divide(w, total, out=np.zeros_like(w), where=total != 0.0)
    largest = float(w.max())
    precision = 0
    while precision < 22 and int(0.5 + largest * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    return first, np.trunc(0.5 + w * (1 << precision)).astype(np.int32), precision


def _resample_rows(a: Any, n_out: int) -> Any:
    """Resample axis 0 of a uint8 array to ``n_out``: integer sums of int16 weights times
    pixels, rounded by adding half of ``2**precision``, shifted back, clipped to 0..255."""
    import numpy as np

    n_in = a.shape[0]
    first, weights, precision = _axis_weights(n_in, n_out)
    flat = a.reshape(n_in, -1)
    acc = np.full((n_out, flat.shape[1]), 1 << (precision - 1), dtype=np.int32)
    term = np.empty_like(acc)
    for k in range(weights.shape[1]):
        column = weights[:, k]
        if column.any():
            np.multiply(flat[np.minimum(first + k, n_in - 1)], column[:, None], out=term)
            acc += term
    np.right_shift(acc, precision, out=acc)
    np.clip(acc, 0, 255, out=acc)
    return acc.astype(np.uint8).reshape((n_out, *a.shape[1:]))


def resize_like_transformers(pixels: Any, width: int, height: int) -> Any:
    """An (H, W, 3) uint8 array resized to ``width`` x ``height`` as transformers'
    ``Lfm2VlImageProcessor`` resizes it: torchvision's antialiased bilinear ``resize`` of a
    uint8 tensor (torch's integer kernel: the width first, then the height, uint8 in
    between), bit for bit. Pillow's bilinear filter is the same triangle with 22-bit
    weights; torch's 15-bit ones round differently, by a grey level here and there, and
    that moved the reference model's first-token log-probabilities by up to 0.017
    (docs/fidelity.md)."""
    import numpy as np

    a = pixels
    if a.shape[1] != width:
        a = _resample_rows(np.ascontiguousarray(a.transpose(1, 0, 2)), width).transpose(1, 0, 2)
    if a.shape[0] != height:
        a = _resample_rows(np.ascontiguousarray(a), height)
    return np.ascontiguousarray(a)


def image_pieces(image: LoadedImage, canvas: tuple[int, int] | None, shapes: Sequence[PieceShape]) -> list[LoadedImage]:
    """The pixels of an image's pieces, ``(width, height, box)`` each: a piece with a
    ``box`` is cut from the image stretched to ``canvas`` (its tile grid), one without is
    the whole image resized to ``width`` x ``height`` (:func:`resize_like_transformers`).
    Each keeps the image's digest."""
    import numpy as np

    pixels = np.frombuffer(image.rgb, dtype=np.uint8).reshape(image.height, image.width, 3)
    stretched = None
    out = []
    for width, height, box in shapes:
        if box is not None:
            if stretched is None:
                assert canvas is not None, "a tile needs the canvas it is cut from"
                stretched = resize_like_transformers(pixels, *canvas)
            left, top, right, bottom = box
            piece = stretched[top:bottom, left:right]
        else:
            piece = resize_like_transformers(pixels, width, height)
        assert piece.shape == (height, width, 3), (piece.shape, width, height)
        out.append(LoadedImage(width, height, piece.tobytes(), image.digest))
    return out


def _decode(data: bytes, what: str, max_pixels: int) -> LoadedImage:
    if not data:
        raise ImageError(f"{what} is empty (0 bytes); send a JPEG, PNG, WebP or GIF image")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            check_size(image.width, image.height, max_pixels)  # from the header, before decoding
            image.load()
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(f"{what} declares too many pixels (decompression bomb); refusing it") from None
        except Exception as exc:  # Pillow raises many types on hostile data
            reason = (
                "is not an image Pillow can read"
                if isinstance(exc, Image.UnidentifiedImageError)
                else f"could not be decoded ({exc})"
            )
            raise ImageError(f"{what} {reason}; send a JPEG, PNG, WebP or GIF image") from None
    return LoadedImage.from_pil(image, max_pixels=max_pixels)


def _from_data_uri(uri: str, max_pixels: int) -> LoadedImage:
    header, sep, payload = uri.partition(",")
    if not sep or ";base64" not in header:
        raise ImageError("a data: URI must look like data:image/png;base64,<base64 data>")
    try:
        data = base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError):
        raise ImageError("the data: URI does not hold valid base64") from None
    return _decode(data, "the data: URI image", max_pixels)


def _check_address(host: str, ip: str, url: str) -> None:
    address = ipaddress.ip_address(ip.split("%")[0])
    if not address.is_global or address.is_multicast:
        raise ImageError(
            f"refusing to fetch {url}: {host} is a private, loopback or link-local address "
            f"({address}); only public hosts are fetched"
        )


def _resolve(host: str, port: int, url: str, allow_private: bool) -> str:
    """The address to connect to: resolved once, checked, and then used (no DNS rebinding)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ImageError(f"could not fetch {url}: cannot resolve {host} ({exc.strerror or exc})") from None
    ip = str(infos[0][4][0])
    if not allow_private:
        for info in infos:
            _check_address(host, str(info[4][0]), url)
    return ip


class _PinnedHTTPConnection(http.client.HTTPConnection):
    pinned_ip = ""

    def connect(self) -> None:
        self.sock = socket.create_connection((self.pinned_ip, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    pinned_ip = ""

    def connect(self) -> None:
        sock = socket.create_connection((self.pinned_ip, self.port), self.timeout)
        context = ssl.create_default_context()
        self.sock = context.wrap_socket(sock, server_hostname=self.host)


def pinned_connection(url: str, allow_private: bool, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    """A connection to ``url``'s host (not yet opened) and the path to request: the host
    resolved once and checked (never loopback, private or link-local unless
    ``allow_private``), and that address used (no DNS rebinding). What fetch_url and the
    live sources of :mod:`lfm2_edge.jobs.sources` connect through."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ImageError(f"refusing to fetch {url}: only http(s) URLs with a host are fetched")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    ip = _resolve(parts.hostname, port, url, allow_private)
    cls = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
    conn = cls(parts.hostname, port, timeout=timeout)
    conn.pinned_ip = ip
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    return conn, path


def resolve_checked(host: str, port: int, url: str, allow_private: bool) -> str:
    """``host``'s address, checked as :func:`pinned_connection` checks it (for rtsp://)."""
    return _resolve(host, port, url, allow_private)


def fetch_url(url: str, allow_private: bool, hops: int = 5, deadline: float | None = None) -> bytes:
    """GET ``url`` (and up to ``hops`` redirects), each hop's host checked before connecting.

    The whole fetch, redirects included, must end within :data:`REMOTE_TIMEOUT_S`: a
    server that drips one byte at a time is cut off, not waited for.
    """
    deadline = deadline if deadline is not None else time.monotonic() + REMOTE_TIMEOUT_S
    conn, path = pinned_connection(url, allow_private, max(0.1, deadline - time.monotonic()))
    try:
        conn.request("GET", path, headers={"User-Agent": "lfm2-edge", "Accept": "image/*"})
        response = conn.getresponse()
        if response.status in (301, 302, 303, 307, 308):
            target = response.getheader("Location")
            if not target or hops <= 0:
                raise ImageError(f"could not fetch {url}: too many or empty redirects")
            return fetch_url(urllib.parse.urljoin(url, target), allow_private, hops - 1, deadline)
        if response.status != 200:
            raise ImageError(f"could not fetch {url}: HTTP {response.status}")
        data = _read_until(response, deadline, url)
    except (OSError, http.client.HTTPException) as exc:
        raise ImageError(f"could not fetch {url}: {exc}") from None
    finally:
        conn.close()
    if len(data) > REMOTE_MAX_BYTES:
        raise ImageError(f"{url} is larger than {REMOTE_MAX_BYTES // 2**20} MiB")
    return data


def _read_until(response: http.client.HTTPResponse, deadline: float, url: str) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while total <= REMOTE_MAX_BYTES:
        if time.monotonic() > deadline:
            raise ImageError(f"could not fetch {url}: it did not arrive in time")
        chunk = response.read1(64 * 1024)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _from_url(url: str, max_pixels: int, allow_private: bool, timeout: float) -> LoadedImage:
    return _decode(fetch_url(url, allow_private, deadline=time.monotonic() + timeout), url, max_pixels)


def read_file(path: Path, what: str, max_bytes: int) -> bytes:
    """A regular file's bytes, at most ``max_bytes``: never a device, FIFO or directory."""
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise ImageError(f"{path} is a directory, not {what}")
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"{path} is not a regular file (a device, pipe or socket); give {what} file")
        if info.st_size > max_bytes:
            raise ImageError(f"{path} is larger than {max_bytes // 2**20} MiB; that is not {what}")
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise ImageError(f"{what} file not found: {path}") from None
    except OSError as exc:
        raise ImageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise ImageError(f"{path} is larger than {max_bytes // 2**20} MiB; that is not {what}")
    return data


def load_image(
    source: ImageInput | LoadedImage | Any,
    *,
    allow_remote: bool = True,
    allow_private: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    timeout: float = REMOTE_TIMEOUT_S,
) -> LoadedImage:
    """Read an image from a path, bytes, a PIL image, a numpy array (HxWx3 / HxWx4 / HxW
    uint8), a binary file object, a ``data:`` URI or an http(s) URL.

    URLs are fetched only with ``allow_remote``, and then never from loopback, private
    or link-local addresses (also after a redirect) unless ``allow_private``; the whole
    fetch must end within ``timeout`` seconds.
    """
    if isinstance(source, LoadedImage):
        return source
    if isinstance(source, Image.Image):
        return LoadedImage.from_pil(source, max_pixels=max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(bytes(source), "the image data", max_pixels)
    if isinstance(source, str):
        if source.startswith("data:"):
            return _from_data_uri(source, max_pixels)
        if source.startswith(("http://", "https://")):
            if not allow_remote:
                raise ImageError("remote image URLs are disabled here; send the image as a data: URI")
            return _from_url(source, max_pixels, allow_private, timeout)
        if "://" in source:
            scheme = source.split("://", 1)[0]
            raise ImageError(f"{scheme}:// image URLs are not supported; use a path, a data: URI or http(s)")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        return _decode(read_file(path, "an image", FILE_MAX_BYTES), f"{path}", max_pixels)
    if _is_array(source):
        return LoadedImage.from_pil(_array_image(source, max_pixels), max_pixels=max_pixels)
    if callable(getattr(source, "read", None)):
        return _decode(_read_stream(source), "the image file object", max_pixels)
    raise ImageError(
        f"cannot use a {type(source).__name__} as an image; pass a path, bytes, a PIL image, "
        "a numpy array or a binary file object"
    )


def is_single_image(value: Any) -> bool:
    """Whether ``value`` is one image rather than a sequence of them (``images="cat.jpg"``
    is one path, not nine one-letter paths)."""
    return isinstance(value, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image, LoadedImage)) or (
        _is_array(value) or callable(getattr(value, "read", None))
    )


def _is_array(value: Any) -> bool:
    return hasattr(value, "__array_interface__") and hasattr(value, "dtype") and hasattr(value, "shape")


def _array_image(array: Any, max_pixels: int) -> Image.Image:
    """A PIL image of an HxW (gray), HxWx3 (RGB) or HxWx4 (RGBA) uint8 array."""
    import numpy as np

    shape = tuple(array.shape)
    if str(array.dtype) != "uint8":
        raise ImageError(
            f"a numpy image must be uint8 (0-255), not {array.dtype}; "
            "convert it with (array * 255).clip(0, 255).astype('uint8') or .astype('uint8')"
        )
    if len(shape) == 3 and shape[2] == 1:
        array, shape = array[:, :, 0], shape[:2]
    if not (len(shape) == 2 or (len(shape) == 3 and shape[2] in (3, 4))):
        raise ImageError(f"a numpy image must be HxW (gray), HxWx3 (RGB) or HxWx4 (RGBA), not of shape {shape}")
    check_size(shape[1], shape[0], max_pixels)
    return Image.fromarray(np.ascontiguousarray(array))  # uint8: L, RGB or RGBA by shape


def _read_stream(stream: Any) -> bytes:
    """The bytes of a binary file object, from where it stands, at most :data:`FILE_MAX_BYTES`."""
    try:
        data = stream.read(FILE_MAX_BYTES + 1)
    except OSError as exc:
        raise ImageError(f"cannot read the image file object: {exc.strerror or exc}") from None
    except Exception as exc:  # e.g. io.UnsupportedOperation on a write-only file
        raise ImageError(f"cannot read the image file object: {type(exc).__name__}: {exc}") from None
    if isinstance(data, str):
        raise ImageError('the image file object is open in text mode; open it with open(path, "rb")')
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError(f"the image file object's read() returned a {type(data).__name__}, not bytes")
    if len(data) > FILE_MAX_BYTES:
        raise ImageError(f"the image file object holds more than {FILE_MAX_BYTES // 2**20} MiB; that is not an image")
    return bytes(data)
