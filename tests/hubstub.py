"""A stand-in for the Hugging Face hub on 127.0.0.1, for tests without the internet.

It answers the endpoints ``huggingface_hub`` calls: the repo tree
(``/api/models/ORG/NAME/tree/REV``), file metadata (``HEAD .../resolve/REV/FILE`` with
``X-Repo-Commit``, ``X-Linked-Etag`` = sha256 and ``X-Linked-Size``) and downloads with
``Range`` support. Faults are switched on per file: a connection dropped after N bytes,
a flipped byte, an advertised size that does not fit on any disk; repos can be gated.
Every request is logged, so a test can assert that none was made.

Run by hand: ``python -m tests.hubstub DIR [--port N]`` serves the ``*.gguf`` files of DIR
as ``LiquidAI/LFM2-VL-450M-GGUF``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class StubFile:
    data: bytes
    drop_after: int | None = None  # close the connection after this many bytes, once
    corrupt: bool = False  # flip one byte of what is sent
    fake_size: int | None = None  # advertise this size instead
    stall_after: int | None = None  # send this many bytes, then hold the connection (a slow link)

    _digest: tuple[bytes, str] | None = field(default=None, repr=False, compare=False)

    @property
    def sha256(self) -> str:
        """Hashed once per content (a 1.4 GB set of files took seconds per request)."""
        if self._digest is None or self._digest[0] is not self.data:
            self._digest = (self.data, hashlib.sha256(self.data).hexdigest())
        return self._digest[1]


@dataclass
class StubRepo:
    files: dict[str, StubFile]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    gated_token: str | None = None  # requests need "Authorization: Bearer <this>"


@dataclass
class HubStub:
    repos: dict[str, StubRepo] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def add_repo(self, repo: str, files: dict[str, bytes], **kw: Any) -> StubRepo:
        self.repos[repo] = StubRepo({name: StubFile(data) for name, data in files.items()}, **kw)
        return self.repos[repo]

    def start(self, port: int = 0) -> HubStub:
        stub = self

        class Handler(_Handler):
            hub = stub

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


_TREE = re.compile(r"^/api/models/([^/]+/[^/]+)/tree/([^/?]+)")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


class _Handler(BaseHTTPRequestHandler):
    hub: HubStub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _error(self, status: int, code: str) -> None:
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _repo(self, name: str) -> StubRepo | None:
        repo = self.hub.repos.get(name)
        if repo is None:
            self._error(404, "RepoNotFound")
            return None
        if repo.gated_token and self.headers.get("Authorization") != f"Bearer {repo.gated_token}":
            self._error(401, "GatedRepo")
            return None
        return repo

    def _serve(self, body: bool) -> None:
        path = self.path.split("?")[0]
        self.hub.log.append({"method": self.command, "path": path, "range": self.headers.get("Range")})
        if m := _TREE.match(path):
            repo = self._repo(m.group(1))
            if repo is None:
                return
            entries = [
                {
                    "type": "file",
                    "path": name,
                    "size": len(f.data),
                    "oid": hashlib.sha1(f.data).hexdigest(),
                    "lfs": {"oid": f.sha256, "size": len(f.data), "pointerSize": 134},
                }
                for name, f in repo.files.items()
            ]
            self._send(200, json.dumps(entries).encode(), {"Content-Type": "application/json"}, body)
            return
        if m := _RESOLVE.match(path):
            repo = self._repo(m.group(1))
            if repo is None:
                return
            f = repo.files.get(m.group(3))
            if f is None:
                self._error(404, "EntryNotFound")
                return
            self._send_file(repo, f, body)
            return
        self._error(404, "RepoNotFound")

    def _send_file(self, repo: StubRepo, f: StubFile, body: bool) -> None:
        size = len(f.data)
        headers = {
            "X-Repo-Commit": repo.commit,
            "X-Linked-Etag": f'"{f.sha256}"',
            "X-Linked-Size": str(f.fake_size or size),
            "ETag": f'"{f.sha256}"',
            "Accept-Ranges": "bytes",
        }
        start = 0
        status = 200
        rng = self.headers.get("Range")
        if body and rng and (m := re.match(r"bytes=(\d+)-", rng)):
            start = int(m.group(1))
            status = 206
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        data = bytearray(f.data[start:])
        if f.corrupt and data:
            data[len(data) // 2] ^= 0xFF
        if not body:
            headers["Content-Length"] = str(size)
            self._send(200, b"", headers, body=False)
            return
        if f.stall_after is not None:
            headers["Content-Length"] = str(len(data))
            self._head(status, headers)
            self.wfile.write(bytes(data[: f.stall_after]))
            self.wfile.flush()
            time.sleep(60)
            self.close_connection = True
            return
        if f.drop_after is not None and f.drop_after > start:
            cut = f.drop_after - start
            f.drop_after = None
            headers["Content-Length"] = str(len(data))
            self._head(status, headers)
            self.wfile.write(bytes(data[:cut]))
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self._send(status, bytes(data), headers, body=True)

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def _send(self, status: int, payload: bytes, headers: dict[str, str], body: bool) -> None:
        headers = {"Content-Length": str(len(payload)), **headers}
        self._head(status, headers)
        if body:
            self.wfile.write(payload)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="directory with model-*.gguf and mmproj-F16.gguf (make models)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--repo", default="LiquidAI/LFM2-VL-450M-GGUF")
    args = parser.parse_args()
    name = args.repo.split("/")[1].removesuffix("-GGUF")
    files = {}
    paths = sorted(args.dir.glob("*.gguf"))
    size = sum(p.stat().st_size for p in paths)
    print(f"reading and hashing {len(paths)} files ({size / 1e9:.1f} GB) from {args.dir}…", flush=True)
    for path in paths:
        stem = path.stem  # model-Q4_0 / mmproj-F16
        kind, quant = stem.split("-", 1)
        files[f"{name}-{quant}.gguf" if kind == "model" else f"mmproj-{name}-{quant}.gguf"] = path.read_bytes()
    stub = HubStub()
    repo = stub.add_repo(args.repo, files)
    for f in repo.files.values():
        f.sha256  # noqa: B018  (hashed now, not at the first request)
    stub.start(args.port)
    print(f"serving {args.repo} ({', '.join(files)}) at {stub.url}; HF_ENDPOINT={stub.url}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
