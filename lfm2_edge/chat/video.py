"""Frames of a short video, as the images of one chat turn (``serve``'s ``video_url``
content part, as vLLM and llama-server take it).

A video is sampled at ``fps`` frames a second (default 1), at most ``max_frames`` frames
(default 8, and never more than the request's image places); a longer video is sampled
evenly over its whole length instead. The bytes come from a ``data:`` URI or, where the
server allows remote images, an http(s) URL fetched with the same SSRF rules and size
limit as an image (:func:`lfm2_edge.chat.images.fetch_url`); each frame is held to the
image pixel limits. Decoding needs PyAV (the ``video`` extra).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import time
from typing import Any

from lfm2_edge.chat.images import (
    DEFAULT_MAX_PIXELS,
    REMOTE_MAX_BYTES,
    REMOTE_TIMEOUT_S,
    LoadedImage,
    check_size,
    fetch_url,
)
from lfm2_edge.errors import ImageError

__all__ = ["DEFAULT_VIDEO_FPS", "DEFAULT_VIDEO_FRAMES", "MAX_DECODED_FRAMES", "video_frames"]

DEFAULT_VIDEO_FPS = 1.0
DEFAULT_VIDEO_FRAMES = 8
MAX_DECODED_FRAMES = 18_000  # 10 minutes at 30 fps: a longer clip is no short video


def _video_bytes(url: str, allow_remote: bool, allow_private: bool, timeout: float) -> bytes:
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep or ";base64" not in header:
            raise ImageError("a video data: URI must look like data:video/mp4;base64,<base64 data>")
        try:
            data = base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError):
            raise ImageError("the video data: URI does not hold valid base64") from None
        if len(data) > REMOTE_MAX_BYTES:
            raise ImageError(f"the video is larger than {REMOTE_MAX_BYTES // 2**20} MiB")
        return data
    if url.startswith(("http://", "https://")):
        if not allow_remote:
            raise ImageError("remote video URLs are disabled here; send the video as a data: URI")
        return fetch_url(url, allow_private, deadline=time.monotonic() + timeout)
    raise ImageError("a video_url must be a data: URI or an http(s) URL")


def video_frames(
    url: str,
    *,
    fps: float = DEFAULT_VIDEO_FPS,
    max_frames: int = DEFAULT_VIDEO_FRAMES,
    allow_remote: bool = False,
    allow_private: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    timeout: float = REMOTE_TIMEOUT_S,
) -> list[LoadedImage]:
    """The sampled frames of the video at ``url``, in order, as RGB images."""
    data = _video_bytes(url, allow_remote, allow_private, timeout)
    try:
        import av
    except ImportError:
        raise ImageError("video_url needs PyAV on the server: pip install 'lfm2-edge[video]'") from None
    frames: list[LoadedImage] = []
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise ImageError("the video_url holds no video stream")
            stream = container.streams.video[0]
            duration = _duration(container, stream)
            targets = _targets(duration, fps, max_frames)
            for decoded, frame in enumerate(container.decode(stream)):
                if decoded >= MAX_DECODED_FRAMES:
                    raise ImageError(f"the video has over {MAX_DECODED_FRAMES} frames; send a shorter clip")
                t = float(frame.time) if frame.time is not None else decoded / float(stream.average_rate or 30)
                if targets is not None and (len(frames) >= len(targets) or t + 1e-6 < targets[len(frames)]):
                    continue
                if targets is None and frames and t + 1e-6 < len(frames) / fps:
                    continue
                check_size(frame.width, frame.height, max_pixels)
                frames.append(LoadedImage.from_pil(frame.to_image(), max_pixels=max_pixels))
                if len(frames) >= max_frames:
                    break
    except ImageError:
        raise
    except Exception as exc:  # PyAV's errors on data that is no video
        raise ImageError(f"the video_url could not be decoded: {type(exc).__name__}: {exc}") from None
    if not frames:
        raise ImageError("the video_url has no frames")
    return frames


def _duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / 1_000_000
    return None


def _targets(duration: float | None, fps: float, max_frames: int) -> list[float] | None:
    """The timestamps to sample: every 1/fps s, or ``max_frames`` spread evenly over a
    longer video; None when the length is unknown (then every 1/fps s, up to the most)."""
    if duration is None or duration <= 0:
        return None
    n = max(1, math.ceil(duration * fps - 1e-9))
    if n <= max_frames:
        return [i / fps for i in range(n)]
    return [i * duration / max_frames for i in range(max_frames)]
