"""The pages ``serve`` answers ``GET /`` with: a chat page (``/``) and a live-camera page
(``/camera``), plain files inside the package (``server/web/``: no CDN, no build step),
and ``/web/config.json``, the model's name and its card's defaults for the settings.

Every answer here carries a Content-Security-Policy that lets the pages load and call
nothing but this server: model output is rendered by the page's own escaping Markdown
renderer, and even a mistake there could run no script nor reach another origin.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from lfm2_edge.hub.catalog import FAMILIES
from lfm2_edge.openai import ApiError
from lfm2_edge.server.config import ServerConfig
from lfm2_edge.server.middleware import error_response, key_matches
from lfm2_edge.server.pool import Pool

__all__ = ["CSP", "PAGE_FILES", "router"]

# self only; images shown from the page's own data:/blob: URLs (dropped files, camera frames)
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data: blob:; media-src 'self' blob:; manifest-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# what the pages are made of; nothing else under web/ is served
PAGE_FILES = ("index.html", "camera.html", "app.js", "camera.js", "common.js", "md.js", "style.css", "icon.svg")


def _read(name: str) -> bytes:
    return resources.files("lfm2_edge.server").joinpath("web").joinpath(name).read_bytes()


def router(pool: Pool, config: ServerConfig) -> APIRouter:
    """The pages' routes, for the first of ``pool``'s models, served with ``config``."""
    web = APIRouter()
    files = {name: _read(name) for name in PAGE_FILES}  # read once: a broken install fails at start

    def page(name: str) -> Response:
        suffix = name[name.rindex(".") :]
        return Response(files[name], media_type=_TYPES[suffix], headers=_HEADERS)

    @web.get("/", include_in_schema=False)
    async def index() -> Response:
        return page("index.html")

    @web.get("/camera", include_in_schema=False)
    async def camera() -> Response:
        return page("camera.html")

    @web.get("/web/config.json", include_in_schema=False)
    async def settings(request: Request) -> Response:
        if config.api_key is not None and not key_matches(request.headers.get("authorization", "").encode(), config):
            return error_response(
                ApiError(401, "a valid API key is required (Authorization: Bearer KEY)", code="invalid_api_key")
            )
        first = pool.served[0]
        return JSONResponse(page_config(first.models[0] if first.models else first, config), headers=_HEADERS)

    @web.get("/web/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in files or name.endswith(".html"):
            return error_response(ApiError(404, f"GET /web/{name} is not one of the page's files", code="not_found"))
        return page(name)

    return web


def page_config(model: Any, config: ServerConfig) -> dict[str, Any]:
    """What the settings panel shows: the model (loaded, or its pool entry), its card's
    defaults, the server's limits."""
    vision = getattr(model, "mmproj_path", None) is not None
    card = FAMILIES["vl" if vision else "text"]
    sampling = getattr(model, "sampling", None) or card.sampling
    defaults = {k: v for k, v in dataclasses.asdict(sampling).items() if k in _SAMPLING}
    if config.default_max_tokens is not None:
        defaults["max_tokens"] = config.default_max_tokens
    return {
        "model": config.model_names[0],
        "vision": vision,
        "max_images": config.max_images if vision else 0,
        "context_size": config.context_size,
        "defaults": {
            "system_prompt": card.system_prompt,
            **defaults,
            "image_min_tokens": card.image_min_tokens if vision else None,
            "image_max_tokens": card.image_max_tokens if vision else None,
        },
    }


_SAMPLING = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_tokens")
