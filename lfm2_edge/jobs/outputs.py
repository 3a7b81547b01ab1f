"""Where a batch job's records go: a JSONL file, a CSV file, OpenAI Batch output lines,
or a sidecar file beside each image.

Every writer appends whole lines: a record is formatted first, then written with one
``os.write`` on a file opened ``O_APPEND`` and ``fsync``'d, so a Ctrl-C or a ``kill -9``
never leaves half a line, and an earlier run's lines are never truncated or rewritten.
A rerun with the same output reads back what is done (:meth:`Writer.done`: id -> the
content key it was answered for) and skips it; an item whose image (or prompt, or
schema) changed has a new key and is answered again, its new line appended after the
old one (the last line of an id is its answer).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lfm2_edge.jobs.inputs import InputError

__all__ = ["CsvWriter", "JsonlWriter", "OpenAIBatchWriter", "SidecarWriter", "Writer", "make_writer"]

Record = dict[str, Any]
_KEY = re.compile(r"^[0-9a-f]{32}$")


class Writer:
    """An output: :meth:`done` (what a previous run finished), :meth:`write` (one
    record, whole and synced), :meth:`close`."""

    path: Path | None = None

    def done(self) -> dict[str, str]:
        return {}

    def write(self, record: Record) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _AppendFile:
    """A file opened for appending whole lines (created if absent, never truncated)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
        # a line cut by a crash of an older version, or an editor: the next line starts fresh
        size = os.fstat(self.fd).st_size
        if size:
            with path.open("rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    self.append(b"\n")

    def append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise InputError(f"cannot read {path} to resume: {exc.strerror or exc}") from None


class JsonlWriter(Writer):
    """One JSON object a line: ``id``, ``key``, ``source``, ``answer`` (text) or ``json``
    (the parsed answer, with ``--schema``), ``finish_reason``, ``usage``, ``timings``,
    ``error`` (one line, or null) and ``error_type``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._done = _jsonl_done(path, lambda r: (r.get("id"), r.get("key")))
        self._file = _AppendFile(path)

    def done(self) -> dict[str, str]:
        return dict(self._done)

    def write(self, record: Record) -> None:
        self._file.append((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))

    def close(self) -> None:
        self._file.close()


def _jsonl_done(path: Path, pick: Any) -> dict[str, str]:
    done: dict[str, str] = {}
    for line in _lines(path):
        try:
            row = json.loads(line)
        except ValueError:
            continue  # not a record (a line cut by a crash): the item is answered again
        if not isinstance(row, dict):
            continue
        ident, key = pick(row)
        if isinstance(ident, str) and isinstance(key, str) and _KEY.match(key):
            done[ident] = key
    return done


class OpenAIBatchWriter(Writer):
    """OpenAI Batch output lines: ``{"id": "batch_req_<key>", "custom_id", "response":
    {"status_code", "request_id", "body"}, "error"}`` (``body`` a ``chat.completion``;
    a failed request has ``error`` ``{"code", "message"}`` and a 4xx/5xx response)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._done = _jsonl_done(path, lambda r: (r.get("custom_id"), str(r.get("id", ""))[len("batch_req_") :]))
        self._file = _AppendFile(path)

    def done(self) -> dict[str, str]:
        return dict(self._done)

    def write(self, record: Record) -> None:
        self._file.append((json.dumps(openai_line(record), ensure_ascii=False) + "\n").encode("utf-8"))

    def close(self) -> None:
        self._file.close()


def openai_line(record: Record) -> dict[str, Any]:
    key = record["key"]
    request_id = f"req_{key}"
    if record.get("error") is None:
        response = {"status_code": 200, "request_id": request_id, "body": record["completion"]}
        return {"id": f"batch_req_{key}", "custom_id": record["id"], "response": response, "error": None}
    status = int(record.get("status") or 400)
    code = record.get("error_code") or record.get("error_type") or "error"
    error_body = {"error": {"message": record["error"], "type": "invalid_request_error", "param": None, "code": code}}
    return {
        "id": f"batch_req_{key}",
        "custom_id": record["id"],
        "response": {"status_code": status, "request_id": request_id, "body": error_body},
        "error": {"code": code, "message": record["error"]},
    }


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return value


class CsvWriter(Writer):
    """A CSV file with a header: ``id``, ``source``, then one column per top-level
    property of the schema (nested values as JSON text), or ``answer`` without one,
    then ``error`` and ``key``. Opens in a spreadsheet and in ``pandas.read_csv``."""

    def __init__(self, path: Path, schema: Mapping[str, Any] | None) -> None:
        self.path = path
        props = list((schema or {}).get("properties", {}) or {}) if schema else []
        self.fields = props or ["answer"]
        self.columns = ["id", "source", *self.fields, "error", "key"]
        reserved = {"id", "source", "error", "key"} & set(props)
        if reserved:
            raise InputError(f"the schema's properties {sorted(reserved)} clash with the CSV's own columns")
        self._done: dict[str, str] = {}
        lines = _lines(path)
        if lines:
            rows = list(csv.reader(lines))
            if rows and rows[0] != self.columns:
                raise InputError(
                    f"{path} has the columns {','.join(rows[0])}, not this job's {','.join(self.columns)}; "
                    "write to another --out"
                )
            for row in rows[1:]:
                if len(row) == len(self.columns) and _KEY.match(row[-1]):
                    self._done[row[0]] = row[-1]
        self._file = _AppendFile(path)
        if not lines:
            self._file.append(self._row(self.columns))

    @staticmethod
    def _row(values: Sequence[Any]) -> bytes:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(values)
        return buf.getvalue().encode("utf-8")

    def done(self) -> dict[str, str]:
        return dict(self._done)

    def write(self, record: Record) -> None:
        if record.get("error") is None:
            data = record.get("json")
            if isinstance(data, dict) and self.fields != ["answer"]:
                values = [_cell(data.get(f)) for f in self.fields]
            else:
                values = [_cell(record.get("answer"))] + [""] * (len(self.fields) - 1)
        else:
            values = [""] * len(self.fields)
        self._file.append(
            self._row([record["id"], record.get("source", ""), *values, record.get("error") or "", record["key"]])
        )

    def close(self) -> None:
        self._file.close()


class SidecarWriter(Writer):
    """A file beside each item's first image (``photo.jpg`` -> ``photo.txt`` /
    ``photo.json``), as captioning tools expect, written whole (a temporary file, then
    ``os.replace``). Error records write no sidecar (so a rerun tries them again);
    ``log``, when given, gets every record too and resumes as a JSONL output does."""

    def __init__(self, kind: str, log: Writer | None = None) -> None:
        if kind not in ("txt", "json"):
            raise InputError(f"--sidecar takes txt or json, not {kind!r}")
        self.kind = kind
        self.log = log
        self.path = log.path if log else None

    def target(self, image: str) -> Path:
        return Path(image).with_suffix(f".{self.kind}")

    def done_for(self, image: str, key: str) -> bool:
        """Whether the sidecar for ``image`` is there and current."""
        target = self.target(image)
        try:
            if self.kind == "json":
                return json.loads(target.read_text(encoding="utf-8")).get("key") == key
            return target.stat().st_mtime >= Path(image).stat().st_mtime
        except (OSError, ValueError, AttributeError):
            return False

    def done(self) -> dict[str, str]:
        return self.log.done() if self.log else {}

    def write(self, record: Record) -> None:
        image = record.get("source")
        if record.get("error") is None and image and not str(image).startswith(("http://", "https://", "data:")):
            target = self.target(str(image))
            if self.kind == "txt":
                data = (record.get("answer") or "").rstrip("\n") + "\n"
            else:
                data = json.dumps(record, ensure_ascii=False, indent=2) + "\n"
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            with tmp.open("w", encoding="utf-8") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        if self.log:
            self.log.write(record)

    def close(self) -> None:
        if self.log:
            self.log.close()


def make_writer(
    out: Path | None, *, kind: str, schema: Mapping[str, Any] | None, sidecar: str | None, fmt: str | None = None
) -> Writer:
    """The writer for ``--out`` (JSONL, or CSV by ``.csv`` / ``fmt``), the OpenAI Batch
    output for an OpenAI Batch input, a sidecar writer (with ``out`` as its log)."""
    log: Writer | None = None
    if out is not None:
        fmt = fmt or ("csv" if out.suffix.lower() == ".csv" else "jsonl")
        if kind == "openai":
            if fmt == "csv":
                raise InputError("an OpenAI Batch input is answered in the Batch output format (JSONL), not CSV")
            log = OpenAIBatchWriter(out)
        elif fmt == "csv":
            log = CsvWriter(out, schema)
        else:
            log = JsonlWriter(out)
    if sidecar is not None:
        if kind == "openai":
            raise InputError("--sidecar needs image inputs, not an OpenAI Batch file")
        return SidecarWriter(sidecar, log)
    if log is None:
        raise InputError("give --out FILE (JSONL or .csv) or --sidecar txt|json")
    return log
