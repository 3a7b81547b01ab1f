"""The same chat, sent to an OpenAI-compatible server instead of a local model.

An app that outgrows one device points ``VisionModel(endpoint=...)`` (or the CLI's
``--endpoint``) at vLLM serving ``LiquidAI/LFM2.5-VL-450M``, or at another
``lfm2-edge serve``, and keeps its code: the call signature and the result types are
those of the local model. Images travel as PNG ``data:`` URIs (lossless, so a server
decoding them sees the pixels the local model would). The answer is always streamed
from the server, so time to first token is measured the same way as locally.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Generator, Sequence
from typing import Any, Literal

from lfm2_edge.errors import ContextOverflowError, ImageError, Lfm2EdgeError
from lfm2_edge.images import LoadedImage
from lfm2_edge.prompt import Message

__all__ = ["RemoteBackend", "RemoteError", "data_uri"]


class RemoteError(Lfm2EdgeError):
    """The server could not be reached, or refused the request; the message says which."""


def data_uri(image: LoadedImage) -> str:
    """A lossless PNG ``data:`` URI of decoded pixels."""
    from PIL import Image

    buf = io.BytesIO()
    Image.frombytes("RGB", (image.width, image.height), image.rgb).save(buf, "PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def to_openai_messages(
    messages: Sequence[Message], images: Sequence[LoadedImage], system_prompt: str | None
) -> list[dict[str, Any]]:
    """OpenAI chat messages for a conversation, each turn's images before its text."""
    out: list[dict[str, Any]] = []
    if system_prompt is not None and (not messages or messages[0].role != "system"):
        out.append({"role": "system", "content": system_prompt})
    it = iter(images)
    for m in messages:
        if not m.images:
            out.append({"role": m.role, "content": m.text})
            continue
        parts: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": data_uri(next(it))}} for _ in m.images
        ]
        parts.append({"type": "text", "text": m.text})
        out.append({"role": m.role, "content": parts})
    return out


class RemoteBackend:
    """An OpenAI-compatible ``/v1/chat/completions`` endpoint used as a model."""

    def __init__(self, endpoint: str, *, api_key: str | None = None, model: str | None = None, timeout: float = 600):
        import httpx

        base = endpoint.rstrip("/")
        self.base_url = base if base.endswith("/v1") else f"{base}/v1"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout, connect=10))
        self._model = model

    @property
    def model(self) -> str:
        """The model id requests name: the one given, else the server's first."""
        if self._model is None:
            data = self._request("GET", "/models").json()
            try:
                self._model = str(data["data"][0]["id"])
            except (KeyError, IndexError, TypeError):
                raise RemoteError(f"{self.base_url}/models lists no model; pass the model name") from None
        return self._model

    def close(self) -> None:
        self._client.close()

    def _request(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            response = self._client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise RemoteError(f"cannot reach {self.base_url} ({type(exc).__name__}: {exc})") from None
        if response.status_code >= 400:
            raise _server_error(self.base_url, response.status_code, response.content)
        return response

    def chat(
        self,
        messages: Sequence[Message],
        images: Sequence[LoadedImage],
        params: Any,
        system_prompt: str | None,
        extra: dict[str, Any] | None = None,
    ) -> Generator[str, None, Any]:
        """Stream the answer's text pieces, then return the :class:`ChatResult`."""
        import httpx

        from lfm2_edge.results import ChatResult, Timings, Usage
        from lfm2_edge.tools import ToolCall

        body: dict[str, Any] = {
            "model": self.model,
            "messages": to_openai_messages(messages, images, system_prompt),
            "temperature": params.temperature,
            "top_p": params.top_p,
            "min_p": params.min_p,
            "repetition_penalty": params.repetition_penalty,
            "max_tokens": params.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if params.top_k > 0:
            body["top_k"] = params.top_k
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        body.update({k: v for k, v in (extra or {}).items() if v is not None})
        t_start = time.perf_counter()
        t_first: float | None = None
        text: list[str] = []
        finish: Literal["stop", "length", "tool_calls"] = "stop"
        usage: dict[str, Any] = {}
        calls: dict[int, dict[str, str]] = {}
        try:
            with self._client.stream("POST", "/chat/completions", json=body) as response:
                if response.status_code >= 400:
                    raise _server_error(self.base_url, response.status_code, response.read())
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise RemoteError(f"{self.base_url}: {chunk['error'].get('message', chunk['error'])}")
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        for call in (choice.get("delta") or {}).get("tool_calls") or []:
                            slot = calls.setdefault(int(call.get("index", 0)), {"id": "", "name": "", "arguments": ""})
                            fn = call.get("function") or {}
                            slot["id"] = call.get("id") or slot["id"]
                            slot["name"] += fn.get("name") or ""
                            slot["arguments"] += fn.get("arguments") or ""
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            t_first = t_first or time.perf_counter()
                            text.append(piece)
                            yield piece
                        if choice.get("finish_reason") in ("stop", "length", "tool_calls"):
                            finish = choice["finish_reason"]
        except httpx.HTTPError as exc:
            raise RemoteError(f"cannot reach {self.base_url} ({type(exc).__name__}: {exc})") from None
        t_end = time.perf_counter()
        t_first = t_first or t_end
        details = usage.get("prompt_tokens_details") or {}
        tool_calls = tuple(
            ToolCall(c["name"], _json_object(c["arguments"]), id=c["id"]) for _, c in sorted(calls.items())
        )
        return ChatResult(
            text="".join(text),
            finish_reason=finish,
            tool_calls=tool_calls,
            usage=Usage(
                int(usage.get("prompt_tokens", 0)),
                0,  # the OpenAI usage has no image-token count
                int(usage.get("completion_tokens", len(text))),
                cached_tokens=int(details.get("cached_tokens") or 0),
            ),
            timings=Timings(
                prompt_ms=(t_first - t_start) * 1000,
                image_ms=0.0,
                first_token_ms=(t_first - t_start) * 1000,
                decode_ms=(t_end - t_first) * 1000,
            ),
        )


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"_value": value}


def _server_error(base_url: str, status: int, content: bytes) -> Lfm2EdgeError:
    try:
        error = json.loads(content).get("error") or {}
        message = error.get("message") if isinstance(error, dict) else str(error)
        code = error.get("code") if isinstance(error, dict) else None
    except (ValueError, AttributeError):
        message, code = content[:200].decode("utf-8", "replace"), None
    text = f"{base_url} answered {status}: {message}"
    if code == "context_length_exceeded":
        return ContextOverflowError(text)
    if code == "invalid_image":
        return ImageError(text)
    return RemoteError(text)
