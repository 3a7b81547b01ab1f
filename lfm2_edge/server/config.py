"""How ``serve`` answers: :class:`ServerConfig` (the limits of a request, its key, its
queue, its browser origins), given to :func:`lfm2_edge.server.app.create_app`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lfm2_edge.openai import RequestLimits

__all__ = ["ServerConfig"]


@dataclass
class ServerConfig(RequestLimits):
    """How a server answers; the model(s) it answers with are given to :func:`create_app`.

    ``model_names``: the first is the id /v1/models reports; all are accepted.
    ``max_images``: vLLM's --limit-mm-per-prompt '{"image": N}'.
    ``default_max_tokens``: for requests without max_tokens (None: until the context is full).
    ``allowed_origins``: browser origins allowed besides localhost ones ("*": any).
    ``context_size``: taken from the models' ``n_ctx`` when not given.
    """

    api_key: str | None = None
    max_queue: int = 64  # requests waiting or running; more get 429
    max_body_bytes: int = 32 * 1024 * 1024
    allow_private_image_urls: bool = False
    max_image_pixels: int = 16_000_000  # per image, read from its header before decoding
    max_request_pixels: int = 32_000_000  # all of a request's images together
    image_fetch_timeout_s: float = 20.0  # a remote image URL, fetched whole, redirects included
    allowed_origins: Sequence[str] = ()
