"""The Python API as a desktop app embeds it: types seen by the app's mypy, images in
every shape an app holds them, the projector found next to the model, sampling options
checked at the call, ``python -m lfm2_edge``, ``help(lfm2_edge)`` and the defaults."""

from __future__ import annotations

import inspect
import io
import os
import pydoc
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lfm2_edge
from lfm2_edge import (
    ImageError,
    InvalidParameterError,
    Lfm2EdgeError,
    ModelFileError,
    Sampling,
    VisionModel,
)
from lfm2_edge.chat.images import load_image
from lfm2_edge.chat.messages import normalize_messages
from tests.helpers import noise_image, png_bytes

PACKAGE = Path(lfm2_edge.__file__).parent
GREEDY = {"temperature": 0.0, "max_tokens": 8}

# -- the types an app's mypy sees ------------------------------------------------------

DESKTOP_APP = '''
from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lfm2_edge import (
    AsyncChatStream,
    ChatResult,
    ChatStream,
    HubError,
    InvalidParameterError,
    Lfm2EdgeError,
    RemoteModel,
    Sampling,
    TextModel,
    VisionModel,
)


class Bar:
    """A GUI's download bar, in the shape from_pretrained(progress=...) documents."""

    def __init__(self, *, desc: str = "", total: int | None = None, initial: int = 0, **_: Any) -> None:
        self.done = initial

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: int = 1) -> None:
        self.done += n


def load() -> VisionModel:
    try:
        return VisionModel.from_pretrained("LFM2-VL-450M:Q8_0", progress=Bar, n_ctx=4096)
    except HubError as exc:
        raise SystemExit(str(exc)) from None


async def describe(model: VisionModel, frame: npt.NDArray[np.uint8]) -> str:
    result: ChatResult = await model.achat("What is in this frame?", images=frame, temperature=0.2)
    tokens: int = result.usage.completion_tokens + result.usage.prompt_tokens
    first_ms: float = result.timings.first_token_ms
    reason: str = result.finish_reason
    print(tokens, first_ms, reason)
    return result.text


async def live(model: VisionModel | TextModel | RemoteModel, shown: list[str]) -> ChatResult | None:
    stream: AsyncChatStream = model.achat("Describe it.", images=Path("cat.jpg"), stream=True, max_tokens=64)
    async with stream:
        async for piece in stream:
            shown.append(piece)
            if len(shown) > 10:
                await stream.aclose()
    return stream.result


async def app(model: VisionModel) -> None:
    frame = np.zeros((480, 640, 3), dtype=np.uint8)
    task: asyncio.Task[str] = asyncio.create_task(describe(model, frame))
    task.cancel()
    shown: list[str] = []
    partial = await live(model, shown)
    if partial is not None:
        print(partial.text, partial.usage.total_tokens)
    with open("cat.jpg", "rb") as fh:
        blocking: ChatResult = model.chat("Again?", images=fh)
    sync_stream: ChatStream = model.chat("More.", images=[io.BytesIO(b"...")], stream=True)
    for piece in sync_stream:
        print(piece, end="")
    print(blocking.text, sync_stream.result)


def main() -> None:
    sampling = Sampling(temperature=0.3).updated(top_p=0.9)
    try:
        with load() as model:
            model.sampling = sampling
            asyncio.run(app(model))
    except InvalidParameterError as exc:
        print("bad option:", exc)
    except Lfm2EdgeError as exc:
        print(exc)
'''

WRONG_APP = """
from __future__ import annotations

from lfm2_edge import VisionModel


async def wrong(model: VisionModel) -> None:
    result = await model.achat("hi")
    print(result.txt)
    stream = model.achat("hi", stream=True)
    print(stream.text)
    n: str = result.usage.completion_tokens
"""


@pytest.mark.slow
def test_mypy_sees_the_packages_types(tmp_path: Path) -> None:
    """With py.typed the package's annotations reach an app's mypy: a correct desktop
    script passes --strict, a wrong one is flagged (not silently Any)."""
    site = tmp_path / "site"  # the package as an installed one (not a source path): py.typed decides
    site.mkdir()
    (site / "lfm2_edge").symlink_to(PACKAGE, target_is_directory=True)
    (tmp_path / "desktop_app.py").write_text(DESKTOP_APP)
    (tmp_path / "wrong_app.py").write_text(WRONG_APP)
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("MYPYPATH", None)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--hide-error-context",
         "--cache-dir", str(tmp_path / ".mypy_cache"), "--python-version", "3.10",
         "desktop_app.py", "wrong_app.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert "desktop_app.py" not in out, out
    assert re.search(r'wrong_app.py:9: error: "ChatResult" has no attribute "txt"', out), out
    assert re.search(r'wrong_app.py:11: error: "AsyncChatStream" has no attribute "text"', out), out
    assert re.search(r"wrong_app.py:12: error: Incompatible types in assignment", out), out
    assert "py.typed" not in out, out


def test_py_typed_ships_with_the_package() -> None:
    assert (PACKAGE / "py.typed").is_file()
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    assert re.search(r'\[tool\.setuptools\.package-data\]\s*lfm2_edge = \[[^\]]*"py\.typed"', pyproject)


# -- images in every shape -------------------------------------------------------------


def test_a_single_image_is_one_image_not_its_letters(tmp_path: Path) -> None:
    path = tmp_path / "cat.png"
    noise_image(32, 24).save(path)
    pil = noise_image(16, 16)
    array = np.zeros((8, 8, 3), dtype=np.uint8)
    for one in (str(path), path, path.read_bytes(), pil, array, io.BytesIO(path.read_bytes())):
        (message,) = normalize_messages("What is it?", one)
        assert len(message.images) == 1 and message.images[0] is one
    (message,) = normalize_messages("Both?", [str(path), pil])
    assert len(message.images) == 2
    (message,) = normalize_messages("From a generator?", (p for p in [path, path]))
    assert len(message.images) == 2


@pytest.mark.parametrize(
    "shape",
    [(24, 32, 3), (24, 32), (24, 32, 4), (24, 32, 1)],
    ids=["rgb", "gray", "rgba", "gray-1-channel"],
)
def test_numpy_arrays_load(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 255, shape, dtype=np.uint8)
    image = load_image(array)
    assert (image.width, image.height) == (32, 24)
    if len(shape) == 3 and shape[2] == 3:
        assert image.rgb == array.tobytes()
    # a non-contiguous view (a crop, a channel flip) loads as its pixels
    if len(shape) == 3 and shape[2] == 3:
        flipped = array[:, :, ::-1]
        assert load_image(flipped).rgb == np.ascontiguousarray(flipped).tobytes()


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.zeros((24, 32, 3), dtype=np.float32), "must be uint8"),
        (np.zeros((24, 32, 3), dtype=np.uint16), "must be uint8"),
        (np.zeros((24, 32, 2), dtype=np.uint8), "HxWx3"),
        (np.zeros((32,), dtype=np.uint8), "HxWx3"),
        (np.zeros((2, 24, 32, 3), dtype=np.uint8), "HxWx3"),
        (np.zeros((0, 32, 3), dtype=np.uint8), "no pixels"),
    ],
)
def test_other_arrays_are_one_clear_image_error(array: np.ndarray, words: str) -> None:
    with pytest.raises(ImageError, match=words):
        load_image(array)


def test_binary_file_objects_load(tmp_path: Path) -> None:
    data = png_bytes(noise_image(40, 30))
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    with path.open("rb") as fh:
        assert (load_image(fh).width, load_image(io.BytesIO(data)).height) == (40, 30)
    with path.open("r", encoding="latin-1") as text, pytest.raises(ImageError, match='open\\(path, "rb"\\)'):
        load_image(text)
    with pytest.raises(ImageError, match="is empty"):
        load_image(io.BytesIO(b""))


def test_chat_takes_one_image_array_or_file(vm: VisionModel, tmp_path: Path) -> None:
    pixels = np.asarray(noise_image(64, 48))
    path = tmp_path / "frame.png"
    Image.fromarray(pixels).save(path)
    expected = vm.chat("What is it?", images=[str(path)], **GREEDY)
    assert expected.usage.image_tokens > 0
    for one in (str(path), path, pixels):
        result = vm.chat("What is it?", images=one, **GREEDY)
        assert (result.text, result.usage.image_tokens) == (expected.text, expected.usage.image_tokens)
    with path.open("rb") as fh:
        assert vm.chat("What is it?", images=fh, **GREEDY).text == expected.text
    with pytest.raises(ImageError, match="HxWx3"):
        vm.chat("What is it?", images=np.zeros((4, 4, 5), dtype=np.uint8))


# -- the projector next to the model ---------------------------------------------------


def test_vision_model_finds_the_mmproj_next_to_the_model(tiny: dict[str, Path]) -> None:
    with VisionModel(tiny["Q8_0"], n_ctx=2048) as model:
        assert model.mmproj_path == tiny["mmproj"]
        result = model.chat("What is it?", images=noise_image(64, 48), **GREEDY)
        assert result.usage.image_tokens > 0


def test_without_a_projector_the_error_names_the_python_argument(tiny: dict[str, Path], tmp_path: Path) -> None:
    alone = tmp_path / "model-F16.gguf"
    alone.symlink_to(tiny["F16"])
    with VisionModel(alone, n_ctx=2048) as model:
        assert model.mmproj_path is None
        assert model.chat("hi", **GREEDY).text is not None  # text only still works
        with pytest.raises(ModelFileError, match="pass mmproj_path=") as info:
            model.chat("What is it?", images=noise_image(64, 48))
        assert "--mmproj" not in str(info.value)


# -- sampling options checked at the call ----------------------------------------------


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"temprature": 0.5}, "unknown sampling option 'temprature'; did you mean 'temperature'?"),
        ({"max_token": 5}, "did you mean 'max_tokens'"),
        ({"frobnicate": 1}, "unknown sampling option 'frobnicate'; the options are temperature"),
        ({"max_tokens": "10"}, "max_tokens must be an integer at least 1, not '10' \\(str\\)"),
        ({"max_tokens": 0}, "max_tokens must be at least 1, not 0"),
        ({"max_tokens": 2.5}, "max_tokens must be an integer"),
        ({"max_tokens": True}, "max_tokens must be an integer"),
        ({"temperature": -1}, "temperature must be between 0 and 2, not -1.0"),
        ({"temperature": 2.5}, "temperature must be between 0 and 2"),
        ({"temperature": float("nan")}, "temperature must be a number"),
        ({"temperature": "hot"}, "temperature must be a number between 0 and 2, not 'hot' \\(str\\)"),
        ({"top_p": 5}, "top_p must be between 0 and 1, not 5.0"),
        ({"min_p": -0.1}, "min_p must be between 0 and 1"),
        ({"top_k": -1}, "top_k must be 0 \\(off\\) or more"),
        ({"repetition_penalty": 0}, "repetition_penalty must be above 0"),
        ({"seed": "42"}, "seed must be an integer or None"),
        ({"stop": 3}, "stop must be a string or a list of strings"),
        ({"stop": ["ok", 3]}, "stop must be a string or a list of strings"),
    ],
)
def test_bad_sampling_options_are_one_clear_error(options: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidParameterError, match=words) as info:
        Sampling().updated(**options)
    assert isinstance(info.value, Lfm2EdgeError) and isinstance(info.value, ValueError)


def test_sampling_checks_construction_too_and_normalises() -> None:
    with pytest.raises(InvalidParameterError, match="top_p"):
        Sampling(top_p=5)
    s = Sampling().updated(temperature=1, max_tokens=10.0, stop="END", seed=None)
    assert (s.temperature, type(s.temperature), s.max_tokens, s.stop, s.seed) == (1.0, float, 10, ("END",), None)
    assert Sampling(stop=["a", "b"]).stop == ("a", "b")  # type: ignore[arg-type]
    assert Sampling().updated(temperature=0, top_p=1, min_p=0, top_k=0, repetition_penalty=1, max_tokens=1)


def test_chat_refuses_bad_options_before_any_work(vm: VisionModel) -> None:
    before = vm.image_encodes
    for bad in ({"temprature": 0}, {"max_tokens": "10"}, {"top_p": 5}, {"temperature": -1}):
        with pytest.raises(InvalidParameterError):
            vm.chat("hi", images=noise_image(64, 48), **bad)
        with pytest.raises(InvalidParameterError):
            vm.chat("hi", stream=True, **bad)
    assert vm.image_encodes == before


def test_the_validation_is_one_table_new_fields_slot_in() -> None:
    from lfm2_edge.chat.sampling import RULES

    assert set(RULES) == {f for f in Sampling.__dataclass_fields__}


# -- the package's surface -------------------------------------------------------------


def test_python_dash_m_runs_the_cli() -> None:
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    proc = subprocess.run(
        [sys.executable, "-m", "lfm2_edge", "--help"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "chat" in proc.stdout and "serve" in proc.stdout


def test_help_lists_the_api_not_only_the_errors() -> None:
    text = pydoc.render_doc(lfm2_edge, renderer=pydoc.plaintext)
    for name in ("VisionModel", "TextModel", "RemoteModel", "ChatResult", "AsyncChatStream", "Sampling"):
        assert f"class {name}" in text, name
    assert "achat(" in text and "progress" in text


def test_every_error_an_app_catches_is_exported() -> None:
    from lfm2_edge import errors

    for name in errors.__all__:
        assert getattr(lfm2_edge, name) is getattr(errors, name)
        assert name in lfm2_edge.__all__
    for name in ("HubError", "HubUnavailableError", "AccessDeniedError", "DownloadError", "InvalidParameterError"):
        assert issubclass(getattr(lfm2_edge, name), Lfm2EdgeError)


def test_the_api_places_models_like_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the API nor the CLI without --gpu-layers picks a placement of its own: both
    leave it to LFM2_EDGE_GPU_LAYERS, else auto (the CPU here, which has no GPU)."""
    from lfm2_edge.cli import _common as cli
    from lfm2_edge.local.model import _LocalModel
    from lfm2_edge.local.placement import choose_gpu_layers

    assert inspect.signature(_LocalModel.__init__).parameters["n_gpu_layers"].default is None
    assert cli._placement(None, None, None, False, 4096, False)["n_gpu_layers"] is None
    monkeypatch.delenv("LFM2_EDGE_GPU_LAYERS", raising=False)
    auto = choose_gpu_layers(None)
    assert (auto.n_gpu_layers, auto.notice) == (choose_gpu_layers("auto").n_gpu_layers, None)  # said only if asked
    monkeypatch.setenv("LFM2_EDGE_GPU_LAYERS", "0")
    assert choose_gpu_layers(None).n_gpu_layers == 0


def test_from_pretrained_takes_a_progress_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    from lfm2_edge.hub import download as hub_module

    seen: list[object] = []

    class Stop(Exception):
        pass

    def resolve(self: hub_module.Hub, ref: object, *, mmproj: object = None) -> object:
        seen.append(self.progress)
        raise Stop

    class Bar:
        pass

    monkeypatch.setattr(hub_module.Hub, "resolve", resolve)
    with pytest.raises(Stop):
        VisionModel.from_pretrained("LFM2-VL-450M", progress=Bar)
    assert seen == [Bar]
    assert "progress" in inspect.signature(VisionModel.from_pretrained).parameters


def test_a_projector_given_as_the_model_names_no_cli_flag(tiny: dict[str, Path]) -> None:
    with pytest.raises(ModelFileError, match="is a vision projector") as info:
        VisionModel(tiny["mmproj"])
    assert "--" not in str(info.value)
