"""The server's ASGI middlewares: :class:`BrowserGuard` (CORS for allowed origins, 403
for others, 415 for a POST that is not JSON), :class:`KeyCheck` (the API key on
``/v1/*``, Ollama's ``/api/*``, ``/metrics`` and ``/slots``) and :class:`RequestId`
(``x-request-id`` on every response), and :func:`error_response`, an :class:`ApiError`
as a JSON response (in Ollama's ``{"error": "..."}`` shape under ``/api/``)."""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from fastapi.responses import JSONResponse, Response

from lfm2_edge.openai import ApiError
from lfm2_edge.server.config import ServerConfig

__all__ = [
    "LOCAL_ORIGIN",
    "BrowserGuard",
    "KeyCheck",
    "RequestId",
    "error_response",
    "is_json_type",
    "key_matches",
    "origin_matcher",
    "refusal",
    "same_origin",
]


def error_response(err: ApiError, path: str = "") -> JSONResponse:
    headers = {"Retry-After": "1"} if err.status == 429 else None
    body = {"error": err.message} if path.startswith("/api/") else err.body()  # Ollama's shape there
    return JSONResponse(body, status_code=err.status, headers=headers)


# Pages served from this machine, on any port, over http or https (as Ollama allows).
LOCAL_ORIGIN = re.compile(r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d{1,5})?", re.IGNORECASE)


def origin_matcher(allowed: Sequence[str]) -> Callable[[str], bool]:
    """Whether a browser ``Origin`` may call the API: a localhost one, one of ``allowed``
    (exact, without a trailing slash), or any when ``allowed`` holds "*"."""
    exact = {o.strip().rstrip("/").lower() for o in allowed}
    if "*" in exact:
        return lambda origin: True
    return lambda origin: bool(LOCAL_ORIGIN.fullmatch(origin)) or origin.lower() in exact


def same_origin(origin: str, scheme: str, host: str | None) -> bool:
    """Whether ``origin`` is the server's own (a page it served: ``GET /``) as reached by
    an IP address, e.g. ``http://192.168.1.5:8000`` on a LAN. Only IP literals: a name
    could be an attacker's, rebound by DNS to this machine (add it with --allowed-origins)."""
    if not host:
        return False
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return origin.lower() == f"{scheme}://{host}".lower()


def refusal(origin: str) -> ApiError:
    """The 403 for a page whose origin may not call the API."""
    if origin == "null":
        message = (
            "requests from the web origin 'null' (a page opened as a file://, or a sandboxed frame) are not "
            "allowed; start the server with --allowed-origins null to allow them (then any local file or "
            "sandboxed page you open can use the model: pair it with --api-key)"
        )
    else:
        message = (
            f"requests from the web origin {origin!r} are not allowed; start the server with "
            f"--allowed-origins {origin} to allow it"
        )
    return ApiError(403, message, type="permission_error", code="origin_not_allowed")


def is_json_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class BrowserGuard:
    """ASGI middleware: CORS for allowed origins (preflights answered here), 403 for a
    request from any other origin, and 415 for a POST that is not JSON, so that no page
    can start a generation with a request the browser sends without a preflight."""

    def __init__(self, app: Any, origins: Callable[[str], bool]) -> None:
        self.app, self.allowed = app, origins

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        method = scope["method"]
        cors: dict[str, str] = {}
        if origin is not None:
            if not (self.allowed(origin) or same_origin(origin, scope.get("scheme", "http"), headers.get("host"))):
                await self._refuse(scope, receive, send, refusal(origin), {"Vary": "Origin"})
                return
            cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
            if method == "OPTIONS" and "access-control-request-method" in headers:
                preflight = {
                    **cors,
                    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                    "Access-Control-Allow-Headers": headers.get("access-control-request-headers")
                    or "Authorization, Content-Type",
                    "Access-Control-Max-Age": "600",
                }
                await Response(status_code=204, headers=preflight)(scope, receive, send)
                return
        if method == "POST" and not is_json_type(headers.get("content-type", "")):
            given = headers.get("content-type")
            await self._refuse(
                scope,
                receive,
                send,
                ApiError(
                    415,
                    "the request body must be JSON (Content-Type: application/json), "
                    + (f"not {given!r}" if given else "and this one declares no Content-Type"),
                    code="unsupported_media_type",
                ),
                cors,
            )
            return
        if not cors:
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_raw_headers(cors)]}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    @staticmethod
    async def _refuse(scope: Any, receive: Any, send: Any, err: ApiError, headers: dict[str, str]) -> None:
        response = error_response(err, scope["path"])
        response.headers.update(headers)
        await response(scope, receive, send)


def _raw_headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


# What the API key guards: the two APIs, and the views of the server's load.
GUARDED = ("/v1/", "/api/", "/metrics", "/slots")


class KeyCheck:
    """ASGI middleware: the paths in :data:`GUARDED` need the API key."""

    def __init__(self, app: Any, config: ServerConfig) -> None:
        self.app, self.config = app, config

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith(GUARDED) and not self._authorized(scope):
            response = error_response(
                ApiError(
                    401,
                    "a valid API key is required (Authorization: Bearer KEY)",
                    type="authentication_error",
                    code="invalid_api_key",
                ),
                scope["path"],
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Any) -> bool:
        raw = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        return _key_matches(raw, self.config.api_key or "")


def key_matches(raw: bytes, config: ServerConfig) -> bool:
    """Whether an ``Authorization`` header's value carries ``config``'s key."""
    return _key_matches(raw, config.api_key or "")


def _key_matches(raw: bytes, api_key: str) -> bool:
    """``Bearer KEY`` as sent (bytes), the scheme in any case, the key in UTF-8 or Latin-1."""
    scheme, _, token = raw.strip().partition(b" ")
    keys = [api_key.encode("utf-8")]
    with contextlib.suppress(UnicodeEncodeError):
        keys.append(api_key.encode("latin-1"))
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(token.strip(), key)
    return scheme.lower() == b"bearer" and ok


class RequestId:
    """ASGI middleware: every response carries ``x-request-id``: the client's own (a
    short printable one), else a new one, so a log line and a client's report meet."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        rid = given if 0 < len(given) <= 128 and _PRINTABLE.fullmatch(given) else uuid.uuid4().hex.encode()

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", rid)]}
            await send(message)

        await self.app(scope, receive, send_with_id)


_PRINTABLE = re.compile(rb"[A-Za-z0-9._:/+=-]+")
