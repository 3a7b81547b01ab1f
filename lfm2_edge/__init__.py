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
    "Timings",
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
from lfm2_edge.results import ChatResult, ChatStream, Timings, Usage
from lfm2_edge.sampling import Sampling

if TYPE_CHECKING:
    from lfm2_edge.model import TextModel, VisionModel


def __getattr__(name: str) -> Any:
    # The model classes load llama.cpp's shared libraries; import them on first use
    # so that `lfm2-edge --help` and the error types stay cheap.
    if name in ("TextModel", "VisionModel"):
        from lfm2_edge import model

        return getattr(model, name)
    raise AttributeError(f"module 'lfm2_edge' has no attribute {name!r}")
