"""How ``serve`` answers: :class:`ServerConfig` (the limits of a request, its key, its
queue, its browser origins), given to :func:`lfm2_edge.server.app.create_app`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from lfm2_edge.openai import ApiError, ChatRequest, RequestLimits
from lfm2_edge.server.admission import Admission
from lfm2_edge.server.pool import Pool

__all__ = ["ServerConfig", "Serving"]


@dataclass
class ServerConfig(RequestLimits):
    """How a server answers; the model(s) it answers with are given to :func:`create_app`.

    ``model_names``: the names of a model given loaded (the first is the default); with a
    :class:`~lfm2_edge.server.pool.Pool`, ``create_app`` sets them from it.
    ``max_images``: vLLM's --limit-mm-per-prompt '{"image": N}'.
    ``default_max_tokens``: for requests without max_tokens (None: until the context is full).
    ``allowed_origins``: browser origins allowed besides localhost ones ("*": any).
    ``context_size``: taken from the models' ``n_ctx`` when not given.
    ``metrics``: serve ``/metrics`` (``serve --metrics``, as llama-server; off by default).
    """

    api_key: str | None = None
    max_queue: int = 64  # requests waiting or running; more get 429
    max_body_bytes: int = 32 * 1024 * 1024
    allow_private_image_urls: bool = False
    max_image_pixels: int = 16_000_000  # per image, read from its header before decoding
    max_request_pixels: int = 32_000_000  # all of a request's images together
    image_fetch_timeout_s: float = 20.0  # a remote image URL, fetched whole, redirects included
    allowed_origins: Sequence[str] = ()
    metrics: bool = False


@dataclass(frozen=True)
class Serving:
    """What a route module (:mod:`lfm2_edge.server.ollama_routes`, :mod:`lfm2_edge.server.metrics`)
    takes from :func:`lfm2_edge.server.app.create_app`: the admission in front of the
    engines, the served models' pool, the config, and the app's own steps of a request (the body read
    within its limit, images loaded off the worker, a disconnect watched, an error in
    OpenAI's terms), so that every API serves a request the same way."""

    admission: Admission
    pool: Pool
    config: ServerConfig
    read_body: Callable[[Any, int], Awaitable[bytes]]
    load_images: Callable[[ChatRequest, ServerConfig], Awaitable[None]]
    watch_disconnect: Callable[[Any, Any], Coroutine[Any, Any, None]]
    as_api_error: Callable[[Exception, ChatRequest | None, ServerConfig], ApiError]
