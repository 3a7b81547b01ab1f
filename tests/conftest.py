"""Shared fixtures: the tiny synthetic LFM2-VL pair, written once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from lfm2_edge.local.placement import GPU_LAYERS_ENV
from lfm2_edge.testing import make_synthetic_model
from tests.helpers import noise_image

# Where the suite's models run: the CPU, unless LFM2_EDGE_TEST_GPU_LAYERS says otherwise
# (`auto`: everything on the GPU of a CUDA / Metal / Vulkan build; scripts/gpu-check.sh).
# Set for the whole process, so the CLI and servers the tests start place models the
# same way as the API calls they are compared with.
os.environ[GPU_LAYERS_ENV] = os.environ.get("LFM2_EDGE_TEST_GPU_LAYERS", "0")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """model-F16.gguf, mmproj-F16.gguf and Q8_0 / Q4_0 quants of the tiny shape."""
    return make_synthetic_model(tmp_path_factory.mktemp("tiny"), "tiny", quants=["Q8_0", "Q4_0"])


@pytest.fixture(scope="session")
def vm(tiny: dict[str, Path]):
    from lfm2_edge import VisionModel

    model = VisionModel(tiny["F16"], tiny["mmproj"], n_ctx=4096)
    yield model
    model.close()


@pytest.fixture
def red() -> Image.Image:
    return Image.new("RGB", (320, 240), (200, 30, 30))


@pytest.fixture
def noise() -> Image.Image:
    return noise_image(320, 240)
