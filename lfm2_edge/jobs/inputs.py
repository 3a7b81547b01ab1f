"""What a batch job reads: image files, folders, globs, a CSV / JSONL manifest, or an
OpenAI Batch input file, each turned into :class:`Item` objects.

* a file with an image extension, or any file that is none of the below: one item;
* a folder: its image files (by extension; ``recursive`` for sub-folders), sorted;
* a glob (``photos/*.jpg``, ``**`` with ``recursive``): the files it matches;
* ``*.csv`` / ``*.jsonl`` manifest: one item a row, with ``id`` (default: the row's
  image), ``image`` (or ``images``: a JSON list or ``;``-separated, or columns
  ``image_1``, ``image_2``...) and an optional ``prompt``; relative paths are relative
  to the manifest;
* a ``*.jsonl`` whose lines have ``custom_id`` and ``body``: an OpenAI Batch input
  file (``method``/``url``/``body`` as ``vllm run-batch`` reads), answered in the Batch
  output format.

A mistake in the inputs themselves (a missing path, a malformed manifest, two items
with one id) is :class:`InputError`: one line, exit code 2, before anything runs. An
item that turns out unreadable later is an error record, not an :class:`InputError`.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lfm2_edge.errors import Lfm2EdgeError

__all__ = ["IMAGE_SUFFIXES", "InputError", "Inputs", "Item", "collect", "items_of"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
MANIFEST_MAX_BYTES = 512 * 2**20


class InputError(Lfm2EdgeError):
    """The job's inputs are wrong as given (a user's mistake: exit code 2)."""


@dataclass
class Item:
    """One unit of work: an id, its images (paths or URLs), and optionally its own
    prompt, or (from an OpenAI Batch file) its whole chat-completions ``body``."""

    id: str
    images: list[str] = field(default_factory=list)
    prompt: str | None = None
    body: Mapping[str, Any] | None = None
    source: str = ""  # where it came from, for the record (the image's path, the manifest row)

    @property
    def first_image(self) -> str | None:
        return self.images[0] if self.images else None


@dataclass
class Inputs:
    """The items of a job and its kind: ``"images"`` (files, folders, globs, manifests)
    or ``"openai"`` (an OpenAI Batch input file: the output is Batch output lines)."""

    items: list[Item]
    kind: Literal["images", "openai"] = "images"


def items_of(values: Iterable[Any]) -> list[Item]:
    """Items from what an app passes to :func:`lfm2_edge.jobs.batch.batch`: paths,
    ``Item`` objects, or mappings with ``id``/``image``/``images``/``prompt``."""
    out: list[Item] = []
    for i, value in enumerate(values):
        if isinstance(value, Item):
            out.append(value)
        elif isinstance(value, Mapping):
            out.append(_row_item(value, i, Path.cwd(), "items"))
        else:
            out.append(Item(str(value), [str(value)], source=str(value)))
    _check_unique(out)
    return out


def collect(values: Sequence[str], *, recursive: bool = False) -> Inputs:
    """The items of the command line's INPUT arguments, in order; ids unique."""
    items: list[Item] = []
    kinds: set[str] = set()
    for value in values:
        path = Path(value)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            files = sorted(p for p in path.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not files:
                raise InputError(f"{value} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            items.extend(_file_item(p, path) for p in files)
            kinds.add("images")
        elif path.is_file():
            suffix = path.suffix.lower()
            if suffix == ".csv":
                items.extend(_csv_items(path))
                kinds.add("images")
            elif suffix in (".jsonl", ".json", ".ndjson"):
                kind, found = _jsonl_items(path)
                items.extend(found)
                kinds.add(kind)
            else:
                items.append(_file_item(path, None))
                kinds.add("images")
        elif any(ch in value for ch in "*?["):
            matches = sorted(glob.glob(value, recursive=recursive))
            files = [Path(m) for m in matches if Path(m).is_file()]
            if not files:
                raise InputError(f"no file matches {value}")
            items.extend(_file_item(p, None) for p in files)
            kinds.add("images")
        elif path.exists():
            raise InputError(f"{value} is not a regular file or folder")
        else:
            raise InputError(f"{value} does not exist")
    if not items:
        raise InputError("no inputs: give image files, folders, globs or a manifest")
    if "openai" in kinds and len(kinds) > 1:
        raise InputError("an OpenAI Batch input file cannot be mixed with other inputs in one job")
    _check_unique(items)
    return Inputs(items, "openai" if "openai" in kinds else "images")


def _check_unique(items: Sequence[Item]) -> None:
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise InputError(f"two items have the id {item.id!r}; ids must be unique (they key the output)")
        seen.add(item.id)


def _file_item(path: Path, root: Path | None) -> Item:
    ident = path.relative_to(root).as_posix() if root is not None else path.as_posix()
    return Item(ident, [str(path)], source=str(path))


def _read_text(path: Path) -> str:
    if path.stat().st_size > MANIFEST_MAX_BYTES:
        raise InputError(f"{path} is larger than {MANIFEST_MAX_BYTES // 2**20} MiB")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None


def _resolve(ref: str, base: Path) -> str:
    if ref.startswith(("http://", "https://", "data:")):
        return ref
    p = Path(ref).expanduser()
    return str(p if p.is_absolute() else base / p)


def _row_images(row: Mapping[str, Any], where: str) -> list[str]:
    images: list[str] = []
    value = row.get("images", row.get("image"))
    if isinstance(value, list):
        images = [str(v) for v in value if str(v).strip()]
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except ValueError:
                raise InputError(f"{where}: images {text[:60]!r} is not a JSON list") from None
            images = [str(v) for v in parsed] if isinstance(parsed, list) else []
        else:
            images = [part.strip() for part in text.split(";") if part.strip()]
    elif value is not None and not isinstance(value, str):
        raise InputError(f"{where}: image must be a path or a list of paths, not {type(value).__name__}")
    numbered = sorted((k for k in row if k.startswith("image_") and k[6:].isdigit()), key=lambda k: int(k[6:]))
    images += [str(row[k]).strip() for k in numbered if row[k] is not None and str(row[k]).strip()]
    return images


def _row_item(row: Mapping[str, Any], index: int, base: Path, where: str) -> Item:
    where = f"{where} row {index + 1}"
    images = [_resolve(ref, base) for ref in _row_images(row, where)]
    prompt = row.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise InputError(f"{where}: prompt must be text, not {type(prompt).__name__}")
    if not images and not prompt:
        raise InputError(f"{where} has neither an image nor a prompt")
    ident = row.get("id")
    if ident is None or str(ident).strip() == "":
        ident = _row_images(row, where)[0] if images else f"row-{index + 1}"
    return Item(str(ident), images, prompt or None, source=images[0] if images else where)


def _csv_items(path: Path) -> list[Item]:
    text = _read_text(path)
    try:
        rows = list(csv.DictReader(text.splitlines()))
    except csv.Error as exc:
        raise InputError(f"{path} is not a readable CSV file ({exc})") from None
    if not rows:
        raise InputError(f"{path} has no rows")
    header = set(rows[0])
    if not header & {"image", "images", "prompt"} and not any(k.startswith("image_") for k in header):
        raise InputError(f"{path} needs an 'image' (or 'images') column; it has {', '.join(sorted(header))}")
    return [_row_item(row, i, path.parent, str(path)) for i, row in enumerate(rows)]


def _jsonl_items(path: Path) -> tuple[Literal["images", "openai"], list[Item]]:
    rows: list[tuple[int, Any]] = []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((n, json.loads(line)))
        except ValueError as exc:
            raise InputError(f"{path} line {n} is not JSON ({exc})") from None
    if not rows:
        raise InputError(f"{path} has no lines")
    for n, row in rows:
        if not isinstance(row, dict):
            raise InputError(f"{path} line {n} must be a JSON object")
    if all("custom_id" in row for _, row in rows):
        return "openai", [_openai_item(row, n, path) for n, row in rows]
    return "images", [_row_item(row, i, path.parent, str(path)) for i, (_, row) in enumerate(rows)]


def _openai_item(row: Mapping[str, Any], n: int, path: Path) -> Item:
    """One line of an OpenAI Batch input file: ``custom_id``, ``method`` (POST), ``url``
    (``/v1/chat/completions``) and ``body`` (a chat-completions request)."""
    where = f"{path} line {n}"
    custom_id = row.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise InputError(f"{where}: custom_id must be a non-empty string")
    method = str(row.get("method", "POST")).upper()
    url = str(row.get("url", "/v1/chat/completions"))
    if method != "POST" or url.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
        raise InputError(f"{where}: only POST /v1/chat/completions is supported, not {method} {url}")
    body = row.get("body")
    if not isinstance(body, dict):
        raise InputError(f"{where}: body must be a chat-completions request object")
    return Item(custom_id, [], body=body, source=where)


def content_key(item: Item, blobs: Sequence[bytes], extra: str) -> str:
    """The resume key of an item's content: its images' bytes, its own prompt or body,
    and ``extra`` (the job's prompt, system prompt and schema). A changed image, prompt
    or schema gives a new key, so a rerun answers it again."""
    h = hashlib.sha256()
    for blob in blobs:
        h.update(b"%d:" % len(blob))
        h.update(blob)
    h.update(json.dumps([item.prompt, item.body, extra], sort_keys=True, ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()[:32]
