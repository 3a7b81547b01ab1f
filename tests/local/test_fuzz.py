"""Hundreds of corrupted GGUF files and images, each run in a child process: every one
must end in a clear error (or still work), and none may crash the process."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz import run, write_cases

pytestmark = pytest.mark.slow  # `pytest -m 'not slow'` skips this module


def test_corrupted_models_and_images_never_crash(tiny: dict[str, Path], tmp_path: Path) -> None:
    cases = write_cases(tiny["Q4_0"], tiny["mmproj"], tmp_path, n_model=200, n_mmproj=200, n_image=200, seed=7)
    report = run(tiny["Q4_0"], tiny["mmproj"], cases, tmp_path)
    print(report.summary())  # shown with pytest -s; also `python -m tests.fuzz MODEL MMPROJ`
    assert report.total == 600, report.summary()
    assert report.crashes == [], report.summary() + "\n" + "\n".join(report.crashes)
    assert report.odd_errors == [], report.odd_errors  # every error is one short line
    assert report.outcomes["error"] > 300  # most corruptions are caught, not silently loaded
