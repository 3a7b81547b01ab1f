"""llama.cpp's and ggml's log: one callback, the levels of the llama.cpp it wraps."""

from __future__ import annotations

import ctypes

import pytest

from lfm2_edge._llama import log

# ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5
DEBUG, INFO, WARN, ERROR, CONT = 1, 2, 3, 4, 5


def emit(level: int, text: str) -> None:
    log._log_callback(level, text.encode(), ctypes.c_void_p(0))


def test_quiet_shows_errors_only(capsys: pytest.CaptureFixture[str]) -> None:
    log.set_verbose(False)
    for level, text in ((DEBUG, "d\n"), (INFO, "i\n"), (WARN, "w\n"), (ERROR, "e"), (CONT, "e continued\n")):
        emit(level, text)
    assert capsys.readouterr().err == "ee continued\n"


def test_verbose_shows_everything(capsys: pytest.CaptureFixture[str]) -> None:
    log.set_verbose(True)
    try:
        for level, text in ((DEBUG, "d\n"), (INFO, "i\n"), (WARN, "w\n"), (ERROR, "e\n")):
            emit(level, text)
    finally:
        log.set_verbose(False)
    assert capsys.readouterr().err == "d\ni\nw\ne\n"
