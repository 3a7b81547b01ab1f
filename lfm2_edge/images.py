"""Images from wherever an app has them, decoded by Pillow into the RGB mtmd wants.

mtmd can decode files itself (stb_image), but lfm2-edge decodes with Pillow first:
it applies EXIF orientation, takes the first frame of an animation, converts CMYK,
palette, 16-bit and alpha images to RGB, and refuses decompression bombs and
unreadable data with one clear line instead of a crash inside C code.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from PIL import Image, ImageOps

from lfm2_edge.errors import ImageError

__all__ = ["DEFAULT_MAX_PIXELS", "ImageInput", "LoadedImage", "load_image"]

ImageInput = Union[str, os.PathLike, bytes, bytearray, Image.Image]

DEFAULT_MAX_PIXELS = 64_000_000  # 8000x8000; larger is a decompression bomb, not a photo
REMOTE_TIMEOUT_S = 20.0
REMOTE_MAX_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class LoadedImage:
    """Decoded RGB pixels (row-major, 3 bytes a pixel) and a digest that identifies them."""

    width: int
    height: int
    rgb: bytes
    digest: str

    @classmethod
    def from_pil(cls, image: Image.Image, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
        try:
            if getattr(image, "is_animated", False):
                image.seek(0)
            image = ImageOps.exif_transpose(image)
            if image.width < 1 or image.height < 1:
                raise ImageError("the image has no pixels")
            if image.width * image.height > max_pixels:
                raise ImageError(
                    f"the image is {image.width}x{image.height}, over the {max_pixels:,}-pixel "
                    "limit; downscale it first"
                )
            if image.mode != "RGB":
                if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                    image = image.convert("RGBA")
                    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
                    image = Image.alpha_composite(background, image)
                elif image.mode in ("I;16", "I;16B", "I;16L", "I"):
                    image = image.point(lambda v: v / 256).convert("L")
                image = image.convert("RGB")
            rgb = image.tobytes()
        except ImageError:
            raise
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageError(f"the image could not be decoded: {exc}") from None
        digest = hashlib.sha256(b"%dx%d:" % (image.width, image.height) + rgb).hexdigest()
        return cls(image.width, image.height, rgb, digest)


def _decode(data: bytes, what: str, max_pixels: int) -> LoadedImage:
    if not data:
        raise ImageError(f"{what} is empty (0 bytes); send a JPEG, PNG, WebP or GIF image")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(f"{what} declares too many pixels (decompression bomb); refusing it") from None
        except (OSError, ValueError, SyntaxError) as exc:
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


def _from_url(url: str, max_pixels: int) -> LoadedImage:
    request = urllib.request.Request(url, headers={"User-Agent": "lfm2-edge"})
    try:
        with urllib.request.urlopen(request, timeout=REMOTE_TIMEOUT_S) as response:
            data = response.read(REMOTE_MAX_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ImageError(f"could not fetch {url}: {reason}") from None
    if len(data) > REMOTE_MAX_BYTES:
        raise ImageError(f"{url} is larger than {REMOTE_MAX_BYTES // 2**20} MiB")
    return _decode(data, url, max_pixels)


def load_image(
    source: ImageInput | LoadedImage | Any,
    *,
    allow_remote: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> LoadedImage:
    """Read an image from a path, bytes, a PIL image, a ``data:`` URI or an http(s) URL."""
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
            return _from_url(source, max_pixels)
        if "://" in source:
            scheme = source.split("://", 1)[0]
            raise ImageError(f"{scheme}:// image URLs are not supported; use a path, a data: URI or http(s)")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ImageError(f"image file not found: {path}") from None
        except IsADirectoryError:
            raise ImageError(f"{path} is a directory, not an image file") from None
        except OSError as exc:
            raise ImageError(f"cannot read image {path}: {exc.strerror or exc}") from None
        return _decode(data, f"{path}", max_pixels)
    raise ImageError(f"cannot use a {type(source).__name__} as an image; pass a path, bytes or a PIL image")
