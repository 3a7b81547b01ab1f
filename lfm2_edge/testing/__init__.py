"""The test kit: random-weight LFM2-VL GGUF pairs that the real llama.cpp loads and runs.

Not needed to run models; the tests, ``make models`` and ``lfm2-edge bench`` use it.
``python -m lfm2_edge.testing --shape lfm2-vl-450m --out models/lfm2-vl-450m`` writes the
pair the benchmark runs by default.
"""

from __future__ import annotations

from lfm2_edge.testing.synthetic import (
    CHAT_TEMPLATE,
    LAYOUTS,
    LFM2_TOOLS_TEMPLATE,
    LFM2_VL_TEMPLATE,
    SHAPES,
    SPECIAL_TOKENS,
    LmShape,
    SyntheticShape,
    VisionShape,
    build_vocab,
    make_synthetic_model,
    quantize,
)

__all__ = [
    "CHAT_TEMPLATE",
    "LAYOUTS",
    "LFM2_TOOLS_TEMPLATE",
    "LFM2_VL_TEMPLATE",
    "SHAPES",
    "SPECIAL_TOKENS",
    "LmShape",
    "SyntheticShape",
    "VisionShape",
    "build_vocab",
    "make_synthetic_model",
    "quantize",
]
