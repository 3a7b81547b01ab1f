"""The models lfm2-edge knows by name, and how a model reference is read.

A reference is one of:

* ``NAME[:QUANT]`` — a catalog name such as ``LFM2-VL-450M:Q4_0``;
* ``REPO[:QUANT]`` — any GGUF repo on the hub, such as ``LiquidAI/LFM2-VL-450M-GGUF:Q8_0``;
* a path to a local ``.gguf`` file.

The catalog is the one table of per-model facts: name, family, repo, what the model card
recommends (sampling, system prompt, image-token budget, default quant) and the published
shapes ``doctor`` estimates memory from. Family-level card defaults (:data:`VL`,
:data:`TEXT`) live here too; adding a model is one :data:`CATALOG` line. It does not carry
file names. Those are read from the repo's file list (or the
cache), so a renamed or newly added quant still resolves.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lfm2_edge.chat.sampling import Sampling
from lfm2_edge.errors import UnknownModelError, UnknownQuantError

__all__ = [
    "CATALOG",
    "DEFAULT_REF",
    "DEFAULT_TEXT_SYSTEM_PROMPT",
    "DEFAULT_VL_SYSTEM_PROMPT",
    "FAMILIES",
    "LFM25_TEXT_SAMPLING",
    "TEXT",
    "TEXT_SAMPLING",
    "VL",
    "VL_SAMPLING",
    "Arch",
    "CatalogEntry",
    "FamilyDefaults",
    "GgufChoice",
    "ModelRef",
    "catalog_entry",
    "choose_files",
    "find_entry",
    "parse_ref",
    "presets",
    "quant_of",
    "text_model",
    "vl_model",
]

Family = Literal["vl", "text"]

# Preference when no quant is named: Q4_0 is the fastest on CPU and the card's pick.
QUANT_PREFERENCE = ("Q4_0", "Q4_K_M", "Q8_0", "F16", "BF16", "F32")
# A projector for a model quant: the same quant, else the closest of these.
MMPROJ_PREFERENCE = ("Q8_0", "F16", "BF16", "F32")


@dataclass(frozen=True)
class FamilyDefaults:
    """What the model cards of a family share: sampling, system prompt, image-token budget."""

    family: Family
    sampling: Sampling
    system_prompt: str
    image_min_tokens: int | None = None
    image_max_tokens: int | None = None
    # Lfm2VlImageProcessor's use_thumbnail and max_pixels_tolerance (processor_config.json)
    image_thumbnail: bool = True
    image_max_pixels_tolerance: float = 2.0


# The LFM2-VL cards: low temperature, min_p 0.15, 64 to 256 tokens per image tile; the
# image processor's defaults (a thumbnail with tiles; tiles past twice the budget).
VL = FamilyDefaults(
    "vl",
    Sampling(),  # Sampling's own defaults are the LFM2-VL card's
    "You are a helpful multimodal assistant by Liquid AI.",
    image_min_tokens=64,
    image_max_tokens=256,
)
# The LFM2 text cards: a little more temperature than the VL card.
TEXT = FamilyDefaults("text", VL.sampling.updated(temperature=0.3), "You are a helpful assistant trained by Liquid AI.")
FAMILIES: dict[Family, FamilyDefaults] = {"vl": VL, "text": TEXT}

# The LFM2.5 text cards sample otherwise: top_k 50 and no min_p. Each model's own card
# is in its entry below; docs/models.md lists every source.
#   LFM2.5-1.2B-Instruct card, and Liquid's docs ("Recommended settings ... for LFM2.5 text
#   models"): temperature 0.1, top_k 50, top_p 0.1, repetition_penalty 1.05
LFM25_TEXT_SAMPLING = TEXT.sampling.updated(temperature=0.1, top_k=50, top_p=0.1, min_p=0.0)
_GREEDY = TEXT.sampling.updated(temperature=0.0)  # the Liquid Nanos' recipe (Extract, RAG, Tool)

VL_SAMPLING, TEXT_SAMPLING = VL.sampling, TEXT.sampling
DEFAULT_VL_SYSTEM_PROMPT, DEFAULT_TEXT_SYSTEM_PROMPT = VL.system_prompt, TEXT.system_prompt


@dataclass(frozen=True)
class Arch:
    """A model's published shapes: what ``doctor`` estimates memory from without its files."""

    lm_params: float  # language-model parameters
    n_embd: int
    n_attn: int  # attention layers (the rest are short convolutions)
    n_layer: int
    kv_dim: int  # K (and V) width of one attention layer
    n_vocab: int
    vision_params: float = 0.0  # 0: no vision tower
    vision_ff: int = 0
    vision_patch: int = 16
    active_params: float = 0.0  # a mixture of experts: the weights one token reads; 0: all of them

    @property
    def read_per_token(self) -> float:
        """The language-model weights a decode step reads (all of them, unless experts)."""
        return self.active_params or self.lm_params


# The published shapes (model cards' parameter counts and layer splits, the configs'
# widths: 8 KV heads of 64 everywhere, so kv_dim 512). Sources: docs/models.md.
_LFM2_350M = Arch(354_483_968, 1024, 6, 16, 512, 65536)
_LFM2_700M = Arch(742_489_344, 1536, 6, 16, 512, 65536)
_LFM2_1_2B = Arch(1_170_340_608, 2048, 6, 16, 512, 65536)
_LFM2_2_6B = Arch(2_569_272_320, 2048, 8, 30, 512, 65536)  # 30 layers: 22 conv + 8 attention
_LFM2_8B_A1B = Arch(8.3e9, 2048, 6, 24, 512, 65536, active_params=1.5e9)  # 18 conv + 6 attention, 32 experts
_LFM25_230M = Arch(230e6, 1024, 6, 14, 512, 65536)  # 14 layers: 8 conv + 6 attention
_LFM25_8B_A1B = Arch(8.3e9, 2048, 6, 24, 512, 128000, active_params=1.5e9)  # a 128K vocabulary
_LFM2_VL_450M = Arch(354e6, 1024, 6, 16, 512, 65536, 86e6, 3072)
_LFM2_VL_1_6B = Arch(1.17e9, 2048, 6, 16, 512, 65536, 400e6, 4304)
_LFM2_VL_3B = Arch(2_569_272_320, 2048, 8, 30, 512, 65536, 400e6, 4304)  # LFM2-2.6B + the 1.6B's tower


@dataclass(frozen=True)
class CatalogEntry:
    """A model lfm2-edge knows by name: its repo, its card's recommendations and its shapes.

    ``recommend`` lists the quants ``doctor`` may recommend, better first (it ranks models
    by ``arch.lm_params``, larger first); empty: never recommended.
    """

    name: str
    family: Family
    sampling: Sampling
    system_prompt: str | None  # None: no system message unless the caller gives one
    image_min_tokens: int | None = None
    image_max_tokens: int | None = None
    image_thumbnail: bool = True
    image_max_pixels_tolerance: float = 2.0
    default_quant: str = "Q4_0"
    arch: Arch | None = None
    recommend: tuple[str, ...] = ()
    repo_id: str | None = None  # default: LiquidAI/NAME-GGUF
    # a thinking model: its answers open with a <think> block (prompt/reasoning.py splits it off)
    thinking: bool = False

    @property
    def repo(self) -> str:
        return self.repo_id or f"LiquidAI/{self.name}-GGUF"


def catalog_entry(name: str, family: Family, **facts: Any) -> CatalogEntry:
    """A catalog entry with its family's card defaults, overridden by ``facts``."""
    defaults = FAMILIES[family]
    base: dict[str, Any] = {
        "sampling": defaults.sampling,
        "system_prompt": defaults.system_prompt,
        "image_min_tokens": defaults.image_min_tokens,
        "image_max_tokens": defaults.image_max_tokens,
        "image_thumbnail": defaults.image_thumbnail,
        "image_max_pixels_tolerance": defaults.image_max_pixels_tolerance,
    }
    return CatalogEntry(name, family, **{**base, **facts})


def vl_model(name: str, **facts: Any) -> CatalogEntry:
    """A VL model's entry: the VL card defaults plus ``facts``."""
    return catalog_entry(name, "vl", **facts)


def text_model(name: str, **facts: Any) -> CatalogEntry:
    """A text model's entry: the text card defaults plus ``facts``."""
    return catalog_entry(name, "text", **facts)


# Adding a model is one line here. Every entry's facts are its model card's (sources in
# docs/models.md); the architectures are ones the vendored llama.cpp knows (lfm2,
# lfm2moe; projector lfm2).
CATALOG: tuple[CatalogEntry, ...] = (
    # the image settings are the repos' processor_config.json (transformers reads them;
    # llama.cpp always adds a thumbnail and tiles past 2x): the 450M without a thumbnail,
    # the 1.6B tiling past 1.5x the budget
    vl_model("LFM2-VL-450M", arch=_LFM2_VL_450M, image_thumbnail=False),
    vl_model("LFM2-VL-1.6B", arch=_LFM2_VL_1_6B, image_max_pixels_tolerance=1.5),
    vl_model("LFM2-VL-3B", arch=_LFM2_VL_3B),  # the card: the VL family's sampling and 64..256 image tokens
    # the LFM2.5-VL-450M card lowers the image-token floor to 32 (llama.cpp hard-codes 64..256)
    vl_model("LFM2.5-VL-450M", arch=_LFM2_VL_450M, recommend=("Q8_0", "Q4_0"), image_min_tokens=32),
    vl_model("LFM2.5-VL-1.6B", arch=_LFM2_VL_1_6B, recommend=("Q8_0", "Q4_0")),
    text_model("LFM2-350M", arch=_LFM2_350M),
    text_model("LFM2-700M", arch=_LFM2_700M),
    text_model("LFM2-1.2B", arch=_LFM2_1_2B),
    text_model("LFM2-2.6B", arch=_LFM2_2_6B),
    text_model("LFM2-8B-A1B", arch=_LFM2_8B_A1B),  # lfm2moe: 8.3B weights, 1.5B read per token
    # Liquid Nanos: the docs' recipes are greedy decoding and the task's own system prompt
    # (a schema, documents, tools), so none is set here
    text_model("LFM2-1.2B-Extract", arch=_LFM2_1_2B, sampling=_GREEDY, system_prompt=None),
    text_model("LFM2-350M-Extract", arch=_LFM2_350M, sampling=_GREEDY, system_prompt=None),
    text_model("LFM2-1.2B-RAG", arch=_LFM2_1_2B, sampling=_GREEDY, system_prompt=None),
    text_model("LFM2-1.2B-Tool", arch=_LFM2_1_2B, sampling=_GREEDY),
    text_model("LFM2.5-230M", arch=_LFM25_230M, sampling=LFM25_TEXT_SAMPLING),
    # the LFM2.5-350M card: temperature 0.1, top_k 50, repetition_penalty 1.05
    text_model("LFM2.5-350M", arch=_LFM2_350M, sampling=LFM25_TEXT_SAMPLING.updated(top_p=1.0)),
    text_model("LFM2.5-1.2B-Instruct", arch=_LFM2_1_2B, sampling=LFM25_TEXT_SAMPLING),
    text_model("LFM2.5-1.2B-JP", arch=_LFM2_1_2B, sampling=LFM25_TEXT_SAMPLING),
    # the LFM2.5-1.2B-Thinking card: temperature 0.05, top_k 50, repetition_penalty 1.05
    text_model(
        "LFM2.5-1.2B-Thinking",
        arch=_LFM2_1_2B,
        sampling=LFM25_TEXT_SAMPLING.updated(temperature=0.05, top_p=1.0),
        thinking=True,
    ),
    # the LFM2.5-8B-A1B card: a reasoning-only model; temperature 0.2, top_k 80, repetition_penalty 1.05
    text_model(
        "LFM2.5-8B-A1B",
        arch=_LFM25_8B_A1B,
        sampling=LFM25_TEXT_SAMPLING.updated(temperature=0.2, top_k=80, top_p=1.0),
        thinking=True,
    ),
)

DEFAULT_REF = "LFM2-VL-450M:Q4_0"


def presets(entry: CatalogEntry | None, has_mmproj: bool) -> dict[str, Any]:
    """Constructor defaults for a model: its card's, or those of its family when it is
    not in the catalog (a model with a projector is taken for a VL model)."""
    if entry is None:
        entry = vl_model("") if has_mmproj else text_model("")
    out: dict[str, Any] = {"sampling": entry.sampling, "system_prompt": entry.system_prompt}
    if entry.family == "vl":
        out.update(
            image_min_tokens=entry.image_min_tokens,
            image_max_tokens=entry.image_max_tokens,
            image_thumbnail=entry.image_thumbnail,
            image_max_pixels_tolerance=entry.image_max_pixels_tolerance,
        )
    return out


def find_entry(name_or_repo: str) -> CatalogEntry | None:
    """The catalog entry for a name or its repo id (case-insensitive), if any."""
    key = name_or_repo.lower()
    return next((e for e in CATALOG if key in (e.name.lower(), e.repo.lower())), None)


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference: a hub repo (with an optional quant) or a local file."""

    text: str
    repo: str | None = None
    quant: str | None = None
    path: Path | None = None
    entry: CatalogEntry | None = None

    @property
    def is_local(self) -> bool:
        return self.path is not None

    @property
    def display(self) -> str:
        """``NAME:QUANT`` for catalog models, ``REPO:QUANT`` otherwise."""
        base = self.entry.name if self.entry else (self.repo or str(self.path))
        return f"{base}:{self.quant}" if self.quant else base


_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def parse_ref(text: str | None) -> ModelRef:
    """Read ``NAME[:QUANT]``, ``REPO[:QUANT]`` or a local path; ``None`` is the default model."""
    text = (text or DEFAULT_REF).strip()
    as_path = Path(text).expanduser()
    if text.lower().endswith(".gguf") or as_path.exists() or text.startswith((".", "/", "~")):
        return ModelRef(text, path=as_path)
    name, _, quant = text.partition(":")
    quant = quant.strip().upper() or ""
    entry = find_entry(name)
    if entry is not None:
        return ModelRef(text, repo=entry.repo, quant=quant or None, entry=entry)
    if _REPO_RE.match(name):
        return ModelRef(text, repo=name, quant=quant or None)
    known = ", ".join(e.name for e in CATALOG)
    close = did_you_mean(name)
    hint = f" (did you mean {close}?)" if close else ""
    raise UnknownModelError(
        f"unknown model {name!r}{hint}: give a catalog name ({known}), a hub repo (ORG/NAME-GGUF) or a .gguf path"
    )


def did_you_mean(name: str) -> str | None:
    """The catalog name closest to a mistyped ``name`` (``LFM2-VL-450`` → ``LFM2-VL-450M``), if any is close."""
    names = {e.name.lower(): e.name for e in CATALOG}
    close = difflib.get_close_matches(name.strip().lower(), list(names), n=1, cutoff=0.75)
    return names[close[0]] if close else None


_QUANT_RE = re.compile(r"(?:^|[-_.])((?:I?Q\d+(?:_[A-Z0-9]+)*)|BF16|F16|F32)$", re.IGNORECASE)


def quant_of(filename: str) -> str | None:
    """The quant named at the end of a GGUF file name (``LFM2-VL-450M-Q4_0.gguf`` → ``Q4_0``)."""
    stem = Path(filename).name
    if stem.lower().endswith(".gguf"):
        stem = stem[: -len(".gguf")]
    match = _QUANT_RE.search(stem)
    return match.group(1).upper() if match else None


def is_mmproj(filename: str) -> bool:
    return "mmproj" in Path(filename).name.lower()


@dataclass(frozen=True)
class GgufChoice:
    """The files chosen from a repo for one quant."""

    quant: str
    model: str
    mmproj: str | None


def available_quants(files: Iterable[str]) -> list[str]:
    quants = {q for f in files if f.lower().endswith(".gguf") and not is_mmproj(f) and (q := quant_of(f))}
    return sorted(quants, key=_quant_order)


def _quant_order(quant: str) -> tuple[int, str]:
    return (QUANT_PREFERENCE.index(quant) if quant in QUANT_PREFERENCE else len(QUANT_PREFERENCE), quant)


def choose_files(
    ref: ModelRef, files: Sequence[str], *, default_quant: str | None = None, where: str = "the repo"
) -> GgufChoice:
    """Pick the model file for the wanted quant and its projector from a repo's file list.

    Raises :class:`UnknownQuantError` listing the quants that exist.
    """
    ggufs = [f for f in files if f.lower().endswith(".gguf")]
    models = [f for f in ggufs if not is_mmproj(f)]
    projectors = [f for f in ggufs if is_mmproj(f)]
    available = available_quants(models)
    name = ref.display.split(":")[0]
    if not available:
        raise UnknownModelError(f"{name} has no GGUF model files in {where}")
    quant = ref.quant or default_quant or (ref.entry.default_quant if ref.entry else None)
    if quant is None or (ref.quant is None and quant not in available):
        quant = available[0]
    if quant not in available:
        raise UnknownQuantError(f"{name} has no quant {quant} in {where}; available: {', '.join(available)}")
    model = sorted((f for f in models if quant_of(f) == quant), key=len)[0]
    mmproj = choose_mmproj(projectors, quant)
    if ref.entry is not None and ref.entry.family == "vl" and mmproj is None:
        raise UnknownModelError(f"{name} has no mmproj (vision projector) file in {where}")
    return GgufChoice(quant, model, mmproj)


def choose_mmproj(projectors: Sequence[str], quant: str) -> str | None:
    if not projectors:
        return None
    by_quant = {quant_of(p): p for p in sorted(projectors, key=len, reverse=True)}
    for want in (quant, *MMPROJ_PREFERENCE):
        if want in by_quant:
            return by_quant[want]
    return sorted(projectors)[0]
