"""lfm2-edge: run Liquid AI's LFM2-VL vision-language models on laptops, phones and Pis."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "ChatResult",
    "ChatStream",
    "ContextOverflowError",
    "ImageError",
    "Lfm2EdgeError",
    "ModelFileError",
    "ModelMismatchError",
    "Sampling",
    "TextModel",
    "Usage",
    "VisionModel",
    "__version__",
]

from lfm2_edge.errors import (
    ContextOverflowError,
    ImageError,
    Lfm2EdgeError,
    ModelFileError,
    ModelMismatchError,
)

if TYPE_CHECKING:
    from lfm2_edge.model import ChatResult, ChatStream, Sampling, TextModel, Usage, VisionModel


def __getattr__(name: str) -> Any:
    # The model classes load llama.cpp's shared libraries; import them on first use
    # so that `lfm2-edge --help` and the error types stay cheap.
    if name in ("ChatResult", "ChatStream", "Sampling", "TextModel", "Usage", "VisionModel"):
        from lfm2_edge import model

        return getattr(model, name)
    raise AttributeError(f"module 'lfm2_edge' has no attribute {name!r}")
