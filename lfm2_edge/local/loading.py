"""How a local model class is loaded: :class:`LoadOptions` (where and how it runs) and
:class:`Pretrained`, the ``from_pretrained`` / ``from_resolved`` constructors that
:class:`~lfm2_edge.VisionModel` and :class:`~lfm2_edge.TextModel` share (a reference
resolved through the hub, the card's presets as defaults)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar

from lfm2_edge.errors import ModelFileError, ModelMismatchError
from lfm2_edge.hub.download import Hub, RichProgress

if TYPE_CHECKING:
    from lfm2_edge.hub.download import Hub, ProgressFactory, ResolvedModel

__all__ = ["LoadOptions", "Pretrained"]

_M = TypeVar("_M", bound="Pretrained")


class LoadOptions(TypedDict, total=False):
    """Where and how a model runs; the same for :class:`VisionModel` and :class:`TextModel`."""

    n_threads: int | None  # default: the physical cores
    n_gpu_layers: int | str | None  # None (default): $LFM2_EDGE_GPU_LAYERS, else "auto" (all on a GPU
    # when llama.cpp has one, else the CPU); "auto", 0 (CPU), -1 (all) or a count
    device: str | None  # a ggml device name (`lfm2-edge info`)
    n_ctx: int  # 4096
    n_batch: int  # 512
    use_mmap: bool  # True
    use_mlock: bool  # False
    flash_attn: bool | None  # None: llama.cpp decides
    repack: bool  # True: llama.cpp's repacked CPU kernels where it has them (a copy of those weights)
    state_cache_mb: float  # 64: saved conversation states
    verbose: bool  # False: llama.cpp's log shows errors only
    n_seq_max: int  # 1: sequences in the context, for the batched engine (lfm2_edge.local.engine)


class Pretrained:
    """The constructors by reference; a subclass's ``__init__`` takes the model path first,
    and its ``_resolved_kwargs`` the rest of what resolved files give."""

    @classmethod
    def from_pretrained(
        cls: type[_M],
        ref: str | None = None,
        *,
        mmproj: str | os.PathLike[str] | None = None,
        hub: Hub | None = None,
        progress: ProgressFactory | None = None,
        **kwargs: Any,
    ) -> _M:
        """Load a model by reference, downloading it into the hub cache on first use.

        ``ref`` is ``NAME[:QUANT]`` (``"LFM2-VL-450M:Q8_0"``), ``REPO[:QUANT]`` or a local
        ``.gguf`` path; ``None`` is the default model (LFM2-VL-450M at Q4_0). The card's
        sampling, system prompt and image-token budget are the defaults; ``kwargs``
        override them. A cached model loads without any network request.

        ``progress`` draws the download: a factory called once per file as
        ``progress(desc=filename, total=bytes or None, initial=bytes_already_there)``
        that returns a context manager with ``update(n_bytes)`` (``tqdm.tqdm``'s shape,
        so ``tqdm.tqdm`` itself works); the default draws rich bars on stderr. It is
        ignored when ``hub`` is given (pass ``Hub(progress=...)`` instead).
        """

        hub = hub or Hub(progress=progress or RichProgress())
        return cls.from_resolved(hub.resolve(ref, mmproj=mmproj), **kwargs)

    @classmethod
    def from_resolved(cls: type[_M], resolved: ResolvedModel, **kwargs: Any) -> _M:
        """Load files :meth:`lfm2_edge.hub.download.Hub.resolve` found, with the card's presets."""
        try:
            new: Callable[..., _M] = cls  # the subclass's __init__
            return new(resolved.model_path, **{**cls._resolved_kwargs(resolved), **kwargs})
        except ModelMismatchError:
            raise
        except ModelFileError as exc:
            if resolved.ref.is_local:
                raise
            raise ModelFileError(
                f"the cached copy of {resolved.ref.display} is damaged ({exc}); "
                f"`lfm2-edge pull {resolved.ref.display}` downloads it again"
            ) from None

    @classmethod
    def _resolved_kwargs(cls, resolved: ResolvedModel) -> dict[str, Any]:
        """The constructor arguments (besides the model path) that resolved files give."""
        return resolved.model_kwargs()
