"""Option spellings: one name each, the old ones still accepted but hidden; and what
`bench` says when it has no models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import lfm2_edge
from lfm2_edge import cli
from lfm2_edge.cli import chat as chat_cli

runner = CliRunner()


class _Model:
    gpu_notice = None
    model_path = "model.gguf"

    def __enter__(self) -> _Model:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What `chat` would build the model with and sample with, without loading it."""
    from lfm2_edge.local.model import VisionModel

    seen: dict[str, Any] = {}

    def from_resolved(cls: Any, resolved: Any, **kwargs: Any) -> Any:
        seen["model"] = kwargs
        return _Model()

    monkeypatch.setattr(VisionModel, "from_resolved", classmethod(from_resolved))
    return seen


@pytest.mark.parametrize(
    "args",
    [
        ["--repetition-penalty", "1.3", "--image-min-tokens", "32", "--image-max-tokens", "128"],
        ["--repeat-penalty", "1.3", "--min-image-tokens", "32", "--max-image-tokens", "128"],
    ],
)
def test_new_and_old_spellings_give_the_same_settings(
    tiny: dict[str, Path], captured: dict[str, Any], monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    sampling: dict[str, Any] = {}
    monkeypatch.setattr(
        chat_cli, "answer_once", lambda vm, label, prompt, images, s, as_json, **kw: sampling.update(s) or 0
    )
    result = runner.invoke(cli.app, ["chat", str(tiny["Q4_0"]), "--mmproj", str(tiny["mmproj"]), "-p", "hi", *args])
    assert result.exit_code == 0, result.output
    assert (captured["model"]["image_min_tokens"], captured["model"]["image_max_tokens"]) == (32, 128)
    assert sampling["repetition_penalty"] == 1.3


def test_old_spellings_are_hidden_and_checked_alike() -> None:
    help_text = runner.invoke(cli.app, ["chat", "--help"], env={"TERMINAL_WIDTH": "240", "COLUMNS": "240"}).output
    assert "--repetition-penalty" in help_text and "--image-min-tokens" in help_text
    assert "--repeat-penalty" not in help_text and "--min-image-tokens" not in help_text
    for low, high in (("--image-min-tokens", "--image-max-tokens"), ("--min-image-tokens", "--max-image-tokens")):
        result = runner.invoke(cli.app, ["chat", "-p", "hi", low, "300", high, "100"])
        assert (
            result.exit_code == 2
            and "--image-min-tokens (300) is larger than --image-max-tokens (100)" in result.output
        )


def test_bench_outside_the_checkout_says_how_to_get_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lfm2_edge.local import bench

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench, "DEFAULT_MODEL_DIR", tmp_path / "checkout" / "models" / "lfm2-vl-450m")
    result = runner.invoke(cli.app, ["bench"], terminal_width=400)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "make models" in lines[0] and "python -m lfm2_edge.testing" in lines[0], lines
    assert bench.DEFAULT_MODEL_DIR.is_absolute()


def test_the_default_bench_models_live_in_the_checkout() -> None:
    from lfm2_edge.local.bench import DEFAULT_MODEL_DIR

    checkout = Path(lfm2_edge.__file__).resolve().parent.parent
    assert checkout / "models" / "lfm2-vl-450m" == DEFAULT_MODEL_DIR
