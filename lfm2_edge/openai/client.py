"""``RemoteModel``: the same chat, sent to an OpenAI-compatible server.

An app that outgrows one device points :class:`RemoteModel` (or the CLI's
``--endpoint``) at vLLM serving ``LiquidAI/LFM2.5-VL-450M``, or at another
``lfm2-edge serve``, and keeps its code: ``chat()`` and ``achat()`` are the same
contract (:class:`lfm2_edge.chat.contract.ChatModel`) as a local model's, with the same
keywords and result types (``grammar`` travels as llama-server's ``grammar`` field). Images travel as
PNG ``data:`` URIs (lossless, so a server decoding them sees the pixels the local model
would). The answer is always streamed from the server, so time to first token is
measured the same way as locally.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from typing import Any

from lfm2_edge.chat.contract import ChatCall, ChatModel
from lfm2_edge.chat.images import LoadedImage, load_image
from lfm2_edge.chat.messages import Message, conversation_images
from lfm2_edge.chat.results import ChatResult, ChatStream, StreamClosed, Timings, TokenLogprob
from lfm2_edge.chat.sampling import Sampling
from lfm2_edge.errors import RemoteError
from lfm2_edge.hub.catalog import find_entry, presets
from lfm2_edge.openai import StreamReader, error_from_response, request_body

__all__ = ["RemoteModel"]


def to_openai_messages(
    messages: Sequence[Message], images: Sequence[LoadedImage], system_prompt: str | None
) -> list[dict[str, Any]]:
    """OpenAI chat messages for a conversation, each turn's images before its text."""
    out: list[dict[str, Any]] = []
    if system_prompt is not None and (not messages or messages[0].role != "system"):
        out.append({"role": "system", "content": system_prompt})
    it = iter(images)
    for m in messages:
        extra = {"tool_calls": list(m.tool_calls)} if m.tool_calls else {}
        if not m.images:
            out.append({"role": m.role, "content": m.text, **extra})
            continue
        parts: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": next(it).data_uri()}} for _ in m.images
        ]
        parts.append({"type": "text", "text": m.text})
        out.append({"role": m.role, "content": parts, **extra})
    return out


class RemoteModel(ChatModel):
    """An OpenAI-compatible ``/v1/chat/completions`` endpoint, used like a local model.

    >>> model = RemoteModel("http://gpu-box:8000/v1", model="LiquidAI/LFM2.5-VL-450M")
    >>> model.chat("What is in this image?", images=["cat.jpg"]).text

    ``model`` is the id requests name (default: the server's first model). The system
    prompt and sampling defaults are the catalog card's for that model (a VL card when
    the model is not in the catalog), so a local and a remote model answer the same
    request the same way. ``chat()`` and ``achat()`` are :class:`~lfm2_edge.chat.contract.ChatModel`'s,
    as for a local model; ``achat()`` sends concurrent requests.
    """

    _serial = False  # the server takes concurrent requests

    def __init__(
        self,
        endpoint: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        system_prompt: str | None = None,
        sampling: Sampling | None = None,
        allow_remote_images: bool = True,
        allow_private_urls: bool = False,
        timeout: float = 600,
    ) -> None:
        import httpx

        base = endpoint.rstrip("/")
        self.endpoint = base if base.endswith("/v1") else f"{base}/v1"
        card = presets(find_entry(model.split(":")[0]) if model else None, has_mmproj=True)
        self.system_prompt = system_prompt if system_prompt is not None else card["system_prompt"]
        self.sampling = sampling or card["sampling"]
        self.allow_remote_images = allow_remote_images
        self.allow_private_urls = allow_private_urls
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=self.endpoint, headers=headers, timeout=httpx.Timeout(timeout, connect=10))
        self._model = model

    @property
    def model(self) -> str:
        """The model id requests name: the one given, else the server's first."""
        if self._model is None:
            data = self._request("GET", "/models").json()
            try:
                self._model = str(data["data"][0]["id"])
            except (KeyError, IndexError, TypeError):
                raise RemoteError(f"{self.endpoint}/models lists no model; pass the model name") from None
        return self._model

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RemoteModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            response = self._client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise RemoteError(f"cannot reach {self.endpoint} ({type(exc).__name__}: {exc})") from None
        if response.status_code >= 400:
            raise error_from_response(self.endpoint, response.status_code, response.content)
        return response

    def _open(self, call: ChatCall, *, stream: bool) -> ChatStream:
        """Send ``call`` to the server (always streamed, so time to first token is
        measured as locally); the arguments and results are those of
        :meth:`lfm2_edge.VisionModel.chat`."""
        loaded = [
            load_image(img, allow_remote=self.allow_remote_images, allow_private=self.allow_private_urls)
            for img in conversation_images(call.messages)
        ]
        extra = {
            "tools": call.tools,
            "tool_choice": call.tool_choice,
            "parallel_tool_calls": call.parallel_tool_calls,
            "response_format": call.response_format,
            "grammar": call.grammar,
        }
        messages = to_openai_messages(call.messages, loaded, self.system_prompt)
        body = request_body(self.model, messages, call.params, extra, logprobs=call.logprobs)
        sink: list[TokenLogprob] | None = [] if call.logprobs is not None else None
        return ChatStream(self._stream(body, sink), sink)

    def _stream(self, body: dict[str, Any], sink: list[TokenLogprob] | None) -> Generator[str, None, ChatResult]:
        import httpx

        t_start = time.perf_counter()
        t_first: float | None = None
        reader = StreamReader(self.endpoint, sink)
        try:
            with self._client.stream("POST", "/chat/completions", json=body) as response:
                if response.status_code >= 400:
                    raise error_from_response(self.endpoint, response.status_code, response.read())
                for line in response.iter_lines():
                    piece = reader.feed_line(line)
                    if piece:
                        t_first = t_first or time.perf_counter()
                        try:
                            yield piece
                        except StreamClosed:
                            break
                    if reader.done:
                        break
        except httpx.HTTPError as exc:
            raise RemoteError(f"cannot reach {self.endpoint} ({type(exc).__name__}: {exc})") from None
        t_end = time.perf_counter()
        t_first = t_first or t_end
        return reader.result(
            Timings(
                prompt_ms=(t_first - t_start) * 1000,
                image_ms=0.0,
                first_token_ms=(t_first - t_start) * 1000,
                decode_ms=(t_end - t_first) * 1000,
            )
        )
