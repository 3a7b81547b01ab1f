"""Typed errors, each carrying one line that says what is wrong and what to do.

Everything a user can get wrong (a missing file, a model that is not GGUF, a
projector that does not belong to the model, an image that does not decode, a
prompt larger than the context) raises a subclass of :class:`Lfm2EdgeError`. The
CLI prints ``str(error)`` and exits with code 2; an embedding app can catch the
base class and show the message as is.
"""

from __future__ import annotations

__all__ = [
    "AccessDeniedError",
    "ContextOverflowError",
    "CpuMismatchError",
    "DownloadError",
    "GenerationError",
    "HubError",
    "HubUnavailableError",
    "ImageError",
    "InvalidParameterError",
    "Lfm2EdgeError",
    "ModelClosedError",
    "ModelFileError",
    "ModelMismatchError",
    "RemoteError",
    "UnknownModelError",
    "UnknownQuantError",
]


class Lfm2EdgeError(Exception):
    """Base class: the message is a single line, fit to show a user.

    ``param`` names the request field the error is about (``"tools"``,
    ``"messages"``, ``"temperature"``...), where it is about one: the server reports it
    as the OpenAI error's ``param``. A subclass may give a default.
    """

    param: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        if param is not None:
            self.param = param


class ModelClosedError(Lfm2EdgeError):
    """The model was closed (``close()``, or the end of its ``with`` block); load it again."""


class CpuMismatchError(Lfm2EdgeError):
    """This CPU lacks an instruction set llama.cpp's libraries were built for (a Pi 5
    build on a Pi 4: ``dotprod``); raised before llama.cpp runs, instead of a SIGILL."""


class ModelFileError(Lfm2EdgeError):
    """A model or projector file is missing, unreadable, not GGUF, or of the wrong kind."""


class ModelMismatchError(ModelFileError):
    """The projector (mmproj) was made for a different language model."""


class InvalidParameterError(Lfm2EdgeError, ValueError):
    """An argument is unknown, of the wrong type or out of range (``temprature=``,
    ``max_tokens="10"``, ``top_p=5``); the message names it and what it accepts."""


class ImageError(Lfm2EdgeError):
    """An image could not be read, decoded or accepted."""

    param = "messages"


class ContextOverflowError(Lfm2EdgeError):
    """The prompt (text plus image tokens), or the prompt and the answer asked for, does
    not fit in the context window. ``prompt_tokens`` and ``context_tokens`` say by how
    much, where they are known (a cheap lower bound does not count the prompt)."""

    param = "messages"

    def __init__(self, message: str, *, prompt_tokens: int | None = None, context_tokens: int | None = None) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.context_tokens = context_tokens


class GenerationError(Lfm2EdgeError):
    """llama.cpp reported a failure while evaluating or sampling."""


class UnknownModelError(Lfm2EdgeError):
    """A model reference names no catalog model, hub repo or local file."""


class UnknownQuantError(UnknownModelError):
    """The repo has no file for the quant asked for; the message lists those it has."""


class HubError(Lfm2EdgeError):
    """Getting a model from the Hugging Face hub failed."""


class HubUnavailableError(HubError):
    """The hub cannot be reached (no network, or offline mode) and the cache cannot help."""


class AccessDeniedError(HubError):
    """The repo is gated or private and the token is missing or not allowed."""


class DownloadError(HubError):
    """A download failed: a full disk, or a file whose sha256 does not match the hub's."""


class RemoteError(Lfm2EdgeError):
    """An OpenAI-compatible server (``--endpoint``) could not be reached or answered with an error."""
