"""Getting models from the Hugging Face hub into the shared hub cache, and back out of it.

Files land in the standard hub cache (``HF_HUB_CACHE``, or ``HF_HOME/hub``), in the same
``models--ORG--NAME/{blobs,snapshots,refs}`` layout ``huggingface_hub`` writes, so other
tools see them and ``huggingface_hub`` reads them. lfm2-edge does the transfer itself,
with ``huggingface_hub``'s metadata and ``http_get``, for two things the stock
``hf_hub_download`` does not do:

* an interrupted download resumes in the next run: the partial data is kept as
  ``blobs/<sha256>.incomplete``, never under the name of a complete file;
* every downloaded file is checked against the sha256 the hub reports before it is
  given its final name.

The cache is read first: a model already there is used without any request, and with
``HF_HUB_OFFLINE=1`` nothing is ever requested.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.filesize import decimal

from lfm2_edge.errors import (
    AccessDeniedError,
    DownloadError,
    HubError,
    HubUnavailableError,
    Lfm2EdgeError,
    UnknownModelError,
)
from lfm2_edge.hub.cache import REVISION, CachedFile, HubCache, atomic_write_text, is_sha256, sha256_file
from lfm2_edge.hub.catalog import (
    CatalogEntry,
    GgufChoice,
    ModelRef,
    choose_files,
    choose_mmproj,
    is_mmproj,
    parse_ref,
    presets,
    quant_of,
)
from lfm2_edge.hub.progress import RichProgress

__all__ = ["CachedFile", "Hub", "ResolvedModel", "RichProgress", "find_mmproj"]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ResolvedModel:
    """Local files for a reference, and what the catalog says about them."""

    ref: ModelRef
    model_path: Path
    mmproj_path: Path | None
    quant: str | None
    entry: CatalogEntry | None
    downloaded: bool = False

    def model_kwargs(self) -> dict[str, Any]:
        """The card's presets (sampling, system prompt, image tokens) for a model class."""

        return presets(self.entry, self.mmproj_path is not None)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


ProgressFactory = Callable[..., Any]


class Hub:
    """The hub endpoint, token and cache one model lookup uses.

    Settings default to the environment at construction time (``HF_ENDPOINT``,
    ``HF_TOKEN``, ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` / ``HF_HOME``), so two ``Hub``
    objects in one process can point at different caches.
    """

    def __init__(
        self,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        endpoint: str | None = None,
        token: str | None = None,
        offline: bool | None = None,
        progress: ProgressFactory | None = None,
    ) -> None:
        from huggingface_hub import constants

        if cache_dir is None:
            env_cache = os.environ.get("HF_HUB_CACHE")
            env_home = os.environ.get("HF_HOME")
            cache_dir = env_cache or (Path(env_home) / "hub" if env_home else constants.HF_HUB_CACHE)
        self.cache_dir = Path(cache_dir).expanduser()
        self.cache = HubCache(self.cache_dir)
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
        self.token = token if token is not None else (os.environ.get("HF_TOKEN") or None)
        self.offline = _env_flag("HF_HUB_OFFLINE") if offline is None else offline
        self.progress = progress

    # -- resolving -----------------------------------------------------------------

    def resolve(self, ref: str | ModelRef | None, *, mmproj: str | os.PathLike[str] | None = None) -> ResolvedModel:
        """Local files for ``ref``: from the cache when there, else downloaded."""
        parsed = ref if isinstance(ref, ModelRef) else parse_ref(ref)
        if parsed.path is not None:
            path = parsed.path
            proj = Path(mmproj) if mmproj is not None else find_mmproj(path)
            return ResolvedModel(parsed, path, proj, quant_of(path.name), None)
        assert parsed.repo is not None
        cached = self._cached_choice(parsed)
        if cached is not None:
            return self._resolved(parsed, cached, mmproj)
        if self.offline:
            have = self.cached_quants(parsed.repo)
            hint = f" (cached: {', '.join(have)})" if have else ""
            raise HubUnavailableError(
                f"{parsed.display} is not in the cache at {self.cache_dir}{hint} and HF_HUB_OFFLINE is set; "
                f"run `lfm2-edge pull {parsed.display}` while online"
            )
        try:
            files = self.list_files(parsed.repo)
        except HubUnavailableError as exc:
            have = self.cached_quants(parsed.repo)
            if not have:
                raise
            raise HubUnavailableError(f"{exc}; cached quants of {parsed.repo}: {', '.join(have)}") from None
        choice = choose_files(parsed, files, where=f"{parsed.repo} on the hub")
        for filename in (choice.model, choice.mmproj):
            if filename is not None:
                self.download(parsed.repo, filename)
        return self._resolved(parsed, choice, mmproj, downloaded=True)

    def pull(self, ref: str | ModelRef | None) -> ResolvedModel:
        """Make sure ``ref`` is in the cache and intact: cached files are re-hashed, a
        damaged one is deleted and downloaded again."""
        resolved = self.resolve(ref)
        if resolved.ref.is_local or resolved.downloaded:
            return resolved
        damaged = [p for p in (resolved.model_path, resolved.mmproj_path) if p is not None and not self.verify(p)]
        if not damaged:
            return resolved
        self.cache.unlink(*damaged)
        return self.resolve(resolved.ref)

    def _resolved(
        self, ref: ModelRef, choice: GgufChoice, mmproj: str | os.PathLike[str] | None, downloaded: bool = False
    ) -> ResolvedModel:
        assert ref.repo is not None
        snap = self.cache.snapshot_dir(ref.repo)
        assert snap is not None
        proj = Path(mmproj) if mmproj is not None else (snap / choice.mmproj if choice.mmproj else None)
        full = ModelRef(ref.text, repo=ref.repo, quant=choice.quant, entry=ref.entry)
        return ResolvedModel(full, snap / choice.model, proj, choice.quant, ref.entry, downloaded)

    def _cached_choice(self, ref: ModelRef) -> GgufChoice | None:
        assert ref.repo is not None
        snap = self.cache.snapshot_dir(ref.repo)
        if snap is None:
            return None
        try:
            choice = choose_files(ref, self.cache.snapshot_files(snap), where="the cache")
        except UnknownModelError:
            return None
        needed = [f for f in (choice.model, choice.mmproj) if f is not None]
        return choice if all((snap / f).is_file() for f in needed) else None

    # -- the hub -------------------------------------------------------------------

    def list_files(self, repo: str) -> list[str]:
        """The repo's file names, from the hub's tree API.

        A refused connection fails at once (``HfApi.list_repo_files`` retries it for half
        a minute); busy answers (429, 5xx) are still retried.
        """
        from urllib.parse import quote

        from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_backoff

        url: str | None = f"{self.endpoint}/api/models/{repo}/tree/{quote(REVISION, safe='')}"
        params: dict[str, Any] | None = {"recursive": True, "expand": False}
        files: list[str] = []
        with self._errors(repo, repo):
            while url:
                response = http_backoff(
                    "GET",
                    url,
                    params=params,
                    headers=build_hf_headers(token=self.token),
                    retry_on_exceptions=(),
                    timeout=_timeout(),  # huggingface_hub's client has none: a silent hub would hang for good
                )
                hf_raise_for_status(response)
                files += [e["path"] for e in response.json() if e.get("type") == "file"]
                url, params = response.links.get("next", {}).get("url"), None
        return files

    def download(self, repo: str, filename: str) -> Path:
        """Download one file into the cache (resuming a partial one) and return its path."""
        from filelock import FileLock
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        url = hf_hub_url(repo, filename, revision=REVISION, endpoint=self.endpoint)
        with self._errors(repo, filename):
            meta = get_hf_file_metadata(url, token=self.token, endpoint=self.endpoint, timeout=_timeout())
        if not meta.commit_hash or not meta.etag:
            raise HubError(f"the hub at {self.endpoint} gave no commit or etag for {repo}/{filename}")
        repo_dir = self.cache.repo_dir(repo)
        blob = repo_dir / "blobs" / meta.etag
        pointer = repo_dir / "snapshots" / meta.commit_hash / filename
        lock_path = self.cache_dir / ".locks" / repo_dir.name / f"{meta.etag}.lock"
        with self.cache.writing():
            blob.parent.mkdir(parents=True, exist_ok=True)
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(lock_path)):
                if not (blob.is_file() and (meta.size is None or blob.stat().st_size == meta.size)):
                    self._fetch(url if meta.location is None else meta.location, blob, filename, meta.size, meta.etag)
                self._link(repo_dir, meta.commit_hash, blob, pointer)
        return pointer

    def _fetch(self, url: str, blob: Path, filename: str, size: int | None, etag: str) -> None:
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers

        partial = blob.with_name(blob.name + ".incomplete")
        have = partial.stat().st_size if partial.exists() else 0
        if size is not None and have > size:
            partial.unlink()
            have = 0
        if size is not None:
            free = shutil.disk_usage(blob.parent).free
            if free < size - have:
                raise DownloadError(
                    f"not enough disk space for {filename}: it needs {decimal(size - have)} and "
                    f"{decimal(free)} is free in {self.cache_dir}; free some space or point HF_HOME at a larger disk"
                )
        with partial.open("ab") as fh, self._errors(blob.parent.parent.name, filename):
            http_get(
                url,
                fh,
                resume_size=have,
                headers=build_hf_headers(token=self.token),
                expected_size=size,
                displayed_filename=filename,
                tqdm_class=self.progress,  # type: ignore[arg-type]  # any callable is accepted
            )
        if is_sha256(etag):
            actual = sha256_file(partial)
            if actual != etag:
                partial.unlink()
                raise DownloadError(
                    f"{filename} failed its sha256 check (got {actual[:12]}…, the hub says {etag[:12]}…); "
                    "the damaged download was deleted, run the command again"
                )
        os.replace(partial, blob)

    def _link(self, repo_dir: Path, commit: str, blob: Path, pointer: Path) -> None:
        pointer.parent.mkdir(parents=True, exist_ok=True)
        if pointer.is_symlink() or pointer.exists():
            pointer.unlink()
        try:
            pointer.symlink_to(os.path.relpath(blob, pointer.parent))
        except OSError:  # no symlinks (some Windows setups): keep a copy, as huggingface_hub does
            shutil.copyfile(blob, pointer)
        self._write_ref(repo_dir, commit)

    @staticmethod
    def _write_ref(repo_dir: Path, commit: str) -> None:
        """Point ``refs/main`` at ``commit``; readers see the old commit or the new one, never a part."""
        ref_file = repo_dir / "refs" / REVISION
        ref_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(ref_file, commit)

    @contextmanager
    def _errors(self, repo: str, what: str) -> Iterator[None]:
        """Turn huggingface_hub's and the network's exceptions into one-line errors."""
        from huggingface_hub import errors as hf

        offline_hint = (
            f"could not get {what}; models already pulled run without it (HF_HUB_OFFLINE=1 skips the hub), "
            "and so does a local .gguf path (lfm2-edge chat ./model.gguf --mmproj ./mmproj.gguf)"
        )
        try:
            yield
        except Lfm2EdgeError:
            raise
        except hf.OfflineModeIsEnabled:
            raise HubUnavailableError(
                f"{what} is not in the cache at {self.cache_dir} and HF_HUB_OFFLINE is set; pull it while online"
            ) from None
        except hf.GatedRepoError:
            how = "your HF_TOKEN has no access" if self.token else "set HF_TOKEN to a token that has access"
            raise AccessDeniedError(f"{repo} is gated: accept its terms on the hub, and {how}") from None
        except hf.RepositoryNotFoundError:
            hint = "" if self.token else " (if it is private, set HF_TOKEN)"
            raise UnknownModelError(f"repo {repo} was not found on the hub at {self.endpoint}{hint}") from None
        except (hf.RevisionNotFoundError, hf.EntryNotFoundError):
            raise UnknownModelError(f"{what} was not found in {repo} on the hub") from None
        except hf.HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "an error"
            raise HubError(f"the hub at {self.endpoint} answered {status} for {what}; try again later") from None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DownloadError(
                    f"the disk holding {self.cache_dir} filled up while downloading {what}; free some space "
                    "and run the command again to resume"
                ) from None
            if exc.filename is not None:  # a file, not the network: writing the partial download
                raise self.cache.error(exc) from None
            if "Consistency check failed" in str(exc):
                raise DownloadError(f"the download of {what} was cut short; run the command again to resume") from None
            raise HubUnavailableError(f"cannot reach the hub at {self.endpoint} ({exc}); {offline_hint}") from None
        except Exception as exc:
            if "Timeout" in type(exc).__name__:
                raise HubUnavailableError(
                    f"the hub at {self.endpoint} did not answer within {_timeout():g} s "
                    f"(HF_HUB_ETAG_TIMEOUT sets the wait); {offline_hint}"
                ) from None
            if type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "h11"):
                raise HubUnavailableError(
                    f"cannot reach the hub at {self.endpoint} ({type(exc).__name__}: {exc}); check the network; "
                    f"{offline_hint}"
                ) from None
            raise

    # -- the cache (lfm2_edge.hub.cache) -------------------------------------------------

    def cached(self) -> list[CachedFile]:
        """Every GGUF file in the cache, by repo and file name."""
        return self.cache.cached()

    def cached_quants(self, repo: str) -> list[str]:
        return self.cache.cached_quants(repo)

    def verify(self, path: Path) -> bool:
        """Whether a cached file still matches the sha256 it was stored under."""
        return self.cache.verify(path)

    def remove(self, ref: str | ModelRef) -> list[CachedFile]:
        """Delete a cached model (one quant, or the whole repo when no quant is named)."""
        return self.cache.remove(ref)


def _timeout() -> float:
    """Seconds to wait for the hub to connect or to answer a request (downloads use
    huggingface_hub's HF_HUB_DOWNLOAD_TIMEOUT between chunks)."""
    try:
        return max(0.1, float(os.environ.get("HF_HUB_ETAG_TIMEOUT", "10")))
    except ValueError:
        return 10.0


def find_mmproj(model_path: Path) -> Path | None:
    """A projector next to a local model file (``mmproj*.gguf``), if there is one to pick."""
    if not model_path.parent.is_dir():
        return None
    candidates = [p.name for p in model_path.parent.glob("*.gguf") if is_mmproj(p.name) and p != model_path]
    quant = quant_of(model_path.name)
    chosen = choose_mmproj(candidates, quant or "F16")
    return model_path.parent / chosen if chosen else None
