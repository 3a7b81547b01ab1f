"""A batch job's settings (:class:`BatchOptions`), its figures (:class:`Summary`), and
the records items end as: resume keys and one-line error records."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lfm2_edge.chat.images import DEFAULT_MAX_PIXELS, FILE_MAX_BYTES, read_file
from lfm2_edge.errors import Lfm2EdgeError
from lfm2_edge.jobs.inputs import Item, content_key
from lfm2_edge.jobs.outputs import Record
from lfm2_edge.openai import ApiError, api_error

__all__ = ["DEFAULT_PROMPT", "BatchOptions", "Summary", "error_record", "item_key"]

DEFAULT_PROMPT = "Describe this image in one sentence."


@dataclass
class BatchOptions:
    """What every item is asked: the prompt (an item's own wins), system prompt, JSON
    schema, the chat keywords (sampling, ``max_tokens``), and how the run behaves."""

    prompt: str = DEFAULT_PROMPT
    system: str | None = None
    schema: Mapping[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    readers: int = 2
    read_ahead: int = 0  # decoded items waiting for a slot (0: twice the slots)
    fail_fast: bool = False
    retry_errors: bool = False  # a rerun answers error records again (default: done is done)
    max_pixels: int = DEFAULT_MAX_PIXELS
    model_name: str = "lfm2-edge"  # the ``model`` of OpenAI Batch output bodies

    def extra_key(self) -> str:
        """What the job asks, for the resume key: a changed prompt or schema redoes all."""
        return json.dumps([self.prompt, self.system, self.schema], sort_keys=True, ensure_ascii=False)

    def max_tokens(self) -> int:
        return int(self.options.get("max_tokens") or 512)


@dataclass
class Summary:
    """The run's figures, as ``--json`` prints them."""

    total: int = 0
    answered: int = 0
    failed: int = 0
    skipped: int = 0  # done by an earlier run
    interrupted: int = 0  # in flight or not started when the run stopped
    seconds: float = 0.0
    image_encodes: int = 0
    stopped: str | None = None  # "interrupted", "fail-fast"
    out: str | None = None

    @property
    def images_per_s(self) -> float:
        n = self.answered + self.failed
        return n / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "images_per_s": round(self.images_per_s, 3)}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


def record_base(item: Item, key: str) -> Record:
    record: Record = {"id": item.id, "key": key, "source": item.source}
    if len(item.images) > 1:
        record["images"] = list(item.images)
    return record


def error_record(item: Item, key: str, exc: BaseException, attempts: int = 1) -> Record:
    record = record_base(item, key)
    if isinstance(exc, ApiError):
        message = " ".join(exc.message.split())
        record.update(error=message, error_type="ApiError", status=exc.status, error_code=exc.code)
    else:
        record.update(error=_one_line(exc), error_type=type(exc).__name__)
        if isinstance(exc, Lfm2EdgeError):
            api = api_error(exc)
            record.update(status=api.status, error_code=api.code)
        else:
            record.update(status=500, error_code="internal_error")
    record["attempts"] = attempts
    return record


def read_blobs(item: Item) -> tuple[list[bytes], BaseException | None]:
    """The bytes of an item's image files (a URL stands for itself), and the first
    failure to read one (then that file's path stands for it)."""
    blobs: list[bytes] = []
    failure: BaseException | None = None
    for ref in item.images:
        if ref.startswith(("http://", "https://", "data:")):
            blobs.append(ref.encode("utf-8"))
            continue
        try:
            blobs.append(read_file(Path(ref), "an image", FILE_MAX_BYTES))
        except Lfm2EdgeError as exc:
            failure = failure or exc
            blobs.append(ref.encode("utf-8"))
    return blobs, failure


def item_key(item: Item, opts: BatchOptions) -> str:
    """An item's resume key, as the runner computes it (its files are read)."""
    return content_key(item, read_blobs(item)[0], opts.extra_key())
