"""llama.cpp's one process-wide thing: its log sink (and mtmd's two).

Importing this module routes mtmd's log through the ``llama-cpp-python`` logger, where
llama-cpp-python already sends llama.cpp's, and quiets that logger to errors unless the
app configured it. :func:`set_verbose` shows everything.
"""

from __future__ import annotations

import ctypes
import logging

import llama_cpp.mtmd_cpp as mtmd

from lfm2_edge._llama._private import llama_log_callback

__all__ = ["set_verbose"]

_LOGGER = logging.getLogger("llama-cpp-python")

# mtmd has its own log sinks; send them where llama.cpp's go.
mtmd.mtmd_log_set(llama_log_callback, ctypes.c_void_p(0))
mtmd.mtmd_helper_log_set(llama_log_callback, ctypes.c_void_p(0))
if _LOGGER.level == logging.NOTSET:  # respect an app that configured it already
    _LOGGER.setLevel(logging.ERROR)


def set_verbose(verbose: bool) -> None:
    """Show llama.cpp's and mtmd's own log on stderr, or only their errors."""
    _LOGGER.setLevel(logging.DEBUG if verbose else logging.ERROR)
