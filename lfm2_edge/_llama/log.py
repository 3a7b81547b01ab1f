"""llama.cpp's one process-wide thing: its log sink (and mtmd's two).

Importing this module points llama.cpp's and mtmd's log at one callback that writes to
stderr when the ``llama-cpp-python`` logger lets the level through, and quiets that
logger to errors unless the app configured it. :func:`set_verbose` shows everything.

The callback never raises: an exception raised inside a ctypes callback cannot reach
the caller (ctypes prints "Exception ignored on calling ctypes callback function" and
drops it), and llama.cpp calls it from inside long C calls (the vision encoder), which
is exactly where a Ctrl-C's ``KeyboardInterrupt`` would land. Stopping work on Ctrl-C
is done by checking a flag between chunks (see :class:`lfm2_edge.hub.progress.Activity`).
"""

from __future__ import annotations

import ctypes
import logging
import sys

import llama_cpp
import llama_cpp.mtmd_cpp as mtmd

__all__ = ["set_verbose"]

_LOGGER = logging.getLogger("llama-cpp-python")

# ggml_log_level in the llama.cpp this wraps (ggml.h): NONE 0, DEBUG 1, INFO 2, WARN 3,
# ERROR 4, CONT 5 (continues the last line). llama-cpp-python 0.3.36's own callback still
# maps an older order (INFO 1, WARN 2, ERROR 3, DEBUG 4), so it shows every warning as an
# error: a quiet run on a CUDA build printed llama.cpp's warnings. This one replaces it.
_LEVELS = {0: logging.CRITICAL, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_last_level = logging.CRITICAL


@llama_cpp.llama_log_callback
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    global _last_level
    try:
        lv = _LEVELS.get(level, _last_level)
        _last_level = lv
        if _LOGGER.level <= lv:
            sys.stderr.write(text.decode("utf-8", "replace"))
            sys.stderr.flush()
    except BaseException:  # nothing may escape a ctypes callback (see above)
        pass


llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
# mtmd has its own log sinks; send them where llama.cpp's go.
mtmd.mtmd_log_set(_log_callback, ctypes.c_void_p(0))
mtmd.mtmd_helper_log_set(_log_callback, ctypes.c_void_p(0))
if _LOGGER.level == logging.NOTSET:  # respect an app that configured it already
    _LOGGER.setLevel(logging.ERROR)


def set_verbose(verbose: bool) -> None:
    """Show llama.cpp's and mtmd's own log on stderr, or only their errors."""
    _LOGGER.setLevel(logging.DEBUG if verbose else logging.ERROR)
