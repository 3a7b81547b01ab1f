"""The hub cache on disk: where a repo's files are, what is cached, and removing it.

The layout is ``huggingface_hub``'s (``models--ORG--NAME/{blobs,snapshots,refs}``), and
listing and removal go through its ``scan_cache_dir`` and delete strategies; what it
lacks (a one-line error for a cache that cannot be written, a sha256 check of a cached
blob, atomic ref writes by concurrent writers) is here. :class:`lfm2_edge.hub.download.Hub`
downloads into it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lfm2_edge.errors import DownloadError, HubError, Lfm2EdgeError, UnknownModelError, UnknownQuantError
from lfm2_edge.hub.catalog import ModelRef, available_quants, find_entry, is_mmproj, parse_ref, quant_of

__all__ = ["REVISION", "CachedFile", "HubCache", "atomic_write_text", "is_sha256", "sha256_file"]

REVISION = "main"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


def is_sha256(name: str) -> bool:
    """Whether a blob name (or an ETag) is a sha256: an LFS file's, checkable."""
    return bool(_SHA256_RE.match(name))


@dataclass(frozen=True)
class CachedFile:
    """One GGUF file in the hub cache."""

    repo: str
    filename: str
    quant: str | None
    is_mmproj: bool
    size: int
    path: Path

    @property
    def name(self) -> str:
        entry = find_entry(self.repo)
        return entry.name if entry else self.repo


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


class HubCache:
    """One hub cache directory."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir

    def error(self, exc: OSError) -> HubError:
        """One line for a failed write to the cache: where, why, and how to point elsewhere."""
        if exc.errno == errno.ENOSPC:
            return DownloadError(
                f"the disk holding the hub cache at {self.cache_dir} is full; free some space, or set "
                "HF_HUB_CACHE to a directory on a larger disk"
            )
        where = f" ({exc.filename})" if exc.filename is not None else ""
        return HubError(
            f"cannot write to the hub cache at {self.cache_dir}: {exc.strerror or exc}{where}; "
            "set HF_HUB_CACHE to a directory you can write"
        )

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Turn an ``OSError`` from writing the cache (read-only, a file in the way, full) into a HubError."""
        try:
            yield
        except Lfm2EdgeError:
            raise
        except OSError as exc:
            raise self.error(exc) from None

    def repo_dir(self, repo: str) -> Path:
        return self.cache_dir / ("models--" + repo.replace("/", "--"))

    def snapshot_dir(self, repo: str) -> Path | None:
        repo_dir = self.repo_dir(repo)
        ref_file = repo_dir / "refs" / REVISION
        if ref_file.is_file():
            snap = repo_dir / "snapshots" / ref_file.read_text().strip()
            if snap.is_dir():
                return snap
        snaps = [p for p in (repo_dir / "snapshots").glob("*") if p.is_dir()]
        return max(snaps, key=lambda p: p.stat().st_mtime) if snaps else None

    @staticmethod
    def snapshot_files(snap: Path) -> list[str]:
        return sorted(p.relative_to(snap).as_posix() for p in snap.rglob("*.gguf"))

    def cached_quants(self, repo: str) -> list[str]:
        snap = self.snapshot_dir(repo)
        return available_quants(self.snapshot_files(snap)) if snap else []

    def scan(self) -> Any:
        """huggingface_hub's view of the cache (``HFCacheInfo``), or None when there is none."""
        from huggingface_hub import CacheNotFound, scan_cache_dir

        try:
            return scan_cache_dir(self.cache_dir)
        except CacheNotFound:
            return None
        except ValueError:  # "expects a directory but found a file"
            raise HubError(
                f"the hub cache at {self.cache_dir} is not a directory; set HF_HUB_CACHE to a directory"
            ) from None

    def scanned_files(self) -> list[tuple[str, Any, Any]]:
        """(repo id, revision, file) for every cached model file."""
        info = self.scan()
        repos = [r for r in info.repos if r.repo_type == "model"] if info else []
        return [(r.repo_id, rev, f) for r in repos for rev in r.revisions for f in rev.files]

    def cached(self) -> list[CachedFile]:
        """Every GGUF file in the cache, by repo and file name (``huggingface_hub.scan_cache_dir``)."""
        out = []
        for repo, revision, f in self.scanned_files():
            name = f.file_path.relative_to(revision.snapshot_path).as_posix()
            if name.lower().endswith(".gguf"):
                out.append(CachedFile(repo, name, quant_of(name), is_mmproj(name), f.size_on_disk, f.file_path))
        return sorted(out, key=lambda f: (f.repo, f.path))

    def verify(self, path: Path) -> bool:
        """Whether a cached file still matches the sha256 it was stored under."""
        blob = path.resolve()
        if not is_sha256(blob.name):
            return True  # not an LFS file: no hash to compare with
        return sha256_file(blob) == blob.name

    def remove(self, ref: str | ModelRef) -> list[CachedFile]:
        """Delete a cached model (one quant, or the whole repo when no quant is named).

        The projector goes with the last quant that used it.
        """
        parsed = ref if isinstance(ref, ModelRef) else parse_ref(ref)
        if parsed.repo is None:
            raise UnknownModelError(f"{parsed.text} is a local file, not a cached model; delete it yourself")
        files = [f for f in self.cached() if f.repo.lower() == parsed.repo.lower()]
        if not files:
            raise UnknownModelError(f"{parsed.display} is not in the cache at {self.cache_dir}")
        if parsed.quant is None:
            self.delete_repo(files[0].repo)
            return files
        targets = [f for f in files if not f.is_mmproj and f.quant == parsed.quant]
        if not targets:
            have = sorted({f.quant for f in files if not f.is_mmproj and f.quant})
            raise UnknownQuantError(f"{parsed.display} is not in the cache; cached quants: {', '.join(have) or 'none'}")
        if all(f.is_mmproj or f in targets for f in files):
            targets = files
        self.unlink(*(f.path for f in targets))
        return targets

    def delete_repo(self, repo_id: str) -> None:
        """Remove every revision of a repo (``HFCacheInfo.delete_revisions``)."""
        revisions = {rev.commit_hash for repo, rev, _ in self.scanned_files() if repo == repo_id}
        repo_dir = self.repo_dir(repo_id)
        with self.writing():
            if revisions:
                _execute(self.scan().delete_revisions(*revisions))
            if repo_dir.exists():  # partial downloads, a repo scan_cache_dir skips; what it could not delete
                shutil.rmtree(repo_dir)

    def unlink(self, *pointers: Path) -> None:
        """Remove snapshot entries, and each blob no other entry uses (``HFCacheInfo.delete_files``)."""
        wanted = {p.parent.resolve() / p.name for p in pointers}  # the scan's paths are resolved
        files = [f for _, _, f in self.scanned_files() if f.file_path.parent.resolve() / f.file_path.name in wanted]
        if files:
            with self.writing():
                _execute(self.scan().delete_files(*files))
                for f in files:  # huggingface_hub logs a refused delete and goes on: the error, here
                    if os.path.lexists(f.file_path):
                        os.unlink(f.file_path)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path``'s content in one step, through a temp file of this writer's own.

    Concurrent writers each get a unique temp name next to ``path`` (a shared name lets
    one writer truncate the file another is about to rename), and a reader sees the old
    content or the new, never an empty or half-written file.
    """
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    ) as fh:
        tmp = Path(fh.name)
        try:
            fh.write(text)
        except BaseException:
            fh.close()
            tmp.unlink(missing_ok=True)
            raise
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _execute(strategy: Any) -> None:
    """Run a ``DeleteCacheStrategy`` without its warnings (a path it could not delete is checked after)."""
    import logging

    logger = logging.getLogger("huggingface_hub.utils._cache_manager")
    was = logger.disabled
    logger.disabled = True
    try:
        strategy.execute()
    finally:
        logger.disabled = was
