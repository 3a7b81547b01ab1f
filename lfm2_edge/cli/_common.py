"""What the ``lfm2-edge`` commands share: the Typer :data:`app`, the one-line error exit
(:func:`fail`, :func:`user_errors`), ``--json`` output, and the options several commands
take. The commands themselves are in :mod:`lfm2_edge.cli` (which registers them all, in
help order), :mod:`lfm2_edge.cli.serve` and :mod:`lfm2_edge.cli.cache`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console

from lfm2_edge import __version__
from lfm2_edge.chat.images import read_file
from lfm2_edge.errors import Lfm2EdgeError
from lfm2_edge.hub.catalog import presets
from lfm2_edge.hub.download import Hub, RichProgress

app = typer.Typer(
    name="lfm2-edge",
    help="Run Liquid AI's LFM2-VL vision-language models on your own machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "[default: 0.15]" is text, not a markup tag
    context_settings={"help_option_names": ["-h", "--help"]},
)
err = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_USER_ERROR = 2


def fail(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", markup=True)
    raise typer.Exit(EXIT_USER_ERROR)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn lfm2-edge's typed errors into one line and exit code 2."""
    try:
        yield
    except Lfm2EdgeError as exc:
        fail(str(exc))


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
    sys.stdout.flush()


RefArg = Annotated[
    Optional[str],
    typer.Argument(
        metavar="[MODEL]",
        help="NAME[:QUANT] (LFM2-VL-450M:Q8_0), ORG/REPO[:QUANT] or a .gguf path [default: LFM2-VL-450M:Q4_0].",
        show_default=False,
    ),
]
ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="Same as MODEL.", show_default=False)]


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"lfm2-edge {__version__}\n")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    """Run Liquid AI's LFM2-VL vision-language models on your own machine."""


MmprojOpt = Annotated[
    Optional[Path], typer.Option("--mmproj", help="Vision projector GGUF [default: the model's own].")
]


# Where a model runs: the same options on chat and serve.
ThreadsOpt = Annotated[
    Optional[int],
    typer.Option(
        min=1,
        help="CPU threads [default: $LFM2_EDGE_THREADS, else the physical cores other programs leave free at load].",
    ),
]
GpuLayersOpt = Annotated[
    Optional[str],
    typer.Option(help="Layers to offload: auto (all when a GPU backend is present), -1 (all) or N. [default: auto]"),
]
DeviceOpt = Annotated[Optional[str], typer.Option(help="The GPU device to use (names: `lfm2-edge info`).")]
MlockOpt = Annotated[bool, typer.Option(help="Lock the weights in RAM (no paging; needs RLIMIT_MEMLOCK).")]
RepackOpt = Annotated[
    bool,
    typer.Option(
        help="llama.cpp's repacked CPU kernels for Q4_0 (and Q8_0 and the K-quants with dotprod/i8mm): faster, "
        "with a copy of those weights in RAM. --no-repack: no copy (less RAM; `doctor --no-repack` plans so), "
        "slower prompts where the CPU repacks.",
    ),
]
# The image-token budget: the same options on chat and serve.
ImageMinTokensOpt = Annotated[
    Optional[int],
    typer.Option("--image-min-tokens", min=1, help="Fewest tokens an image is given [default: the card's, 64]."),
]
ImageMaxTokensOpt = Annotated[
    Optional[int],
    typer.Option("--image-max-tokens", min=1, help="Most tokens an image tile is given [default: the card's, 256]."),
]


def _check_image_budget(resolved: Any, min_tokens: int | None, max_tokens: int | None) -> dict[str, int]:
    """The image-token options, checked against the model card's range before the
    projector loads (mtmd refuses a floor above the ceiling with three log lines, which
    would read as a broken projector); returns the VisionModel arguments given."""
    card = presets(resolved.ref.entry, resolved.mmproj_path is not None)
    lo, hi = card.get("image_min_tokens") or 64, card.get("image_max_tokens") or 256
    whose = f"{resolved.ref.entry.name}'s card" if resolved.ref.entry is not None else "the LFM2-VL card"
    if min_tokens is not None and max_tokens is not None and min_tokens > max_tokens:
        fail(f"--image-min-tokens ({min_tokens}) is larger than --image-max-tokens ({max_tokens})")
    if max_tokens is not None and min_tokens is None and max_tokens < lo:
        fail(
            f"--image-max-tokens {max_tokens} is below the fewest tokens an image is given, {lo} "
            f"({whose}: {lo} to {hi}); give {lo} or more, or lower --image-min-tokens too"
        )
    if min_tokens is not None and max_tokens is None and min_tokens > hi:
        fail(
            f"--image-min-tokens {min_tokens} is above the most tokens an image tile is given, {hi} "
            f"({whose}: {lo} to {hi}); give {hi} or less, or raise --image-max-tokens too"
        )
    given = {"image_min_tokens": min_tokens, "image_max_tokens": max_tokens}
    return {k: v for k, v in given.items() if v is not None}


def _placement(
    threads: int | None,
    gpu_layers: str | None,
    device: str | None,
    mlock: bool,
    ctx: int,
    verbose: bool,
    *,
    repack: bool = True,
) -> dict[str, Any]:
    """VisionModel arguments for where and how a model runs (chat and serve alike)."""
    return {
        "n_threads": threads,
        "n_gpu_layers": gpu_layers,  # None: $LFM2_EDGE_GPU_LAYERS, else auto
        "device": device,
        "use_mlock": mlock,
        "repack": repack,
        "n_ctx": ctx,
        "verbose": verbose,
    }


def _hub() -> Any:

    return Hub(progress=RichProgress(err))


def _model_ref(ref: str | None, model: str | None) -> str | None:
    if ref is not None and model is not None and ref != model:
        fail(f"give the model once: as MODEL ({ref}) or as --model ({model})")
    return ref or model


def _either(value: Any, old_spelling: Any) -> Any:
    """An option's value, from its current name or its old (hidden) one."""
    return value if value is not None else old_spelling


def read_schema(path: Path) -> Any:
    """The --schema file's JSON object: a regular file of at most 1 MiB (never a device or FIFO)."""
    try:
        data = json.loads(read_file(path, "a JSON schema", 1 << 20).decode("utf-8"))
    except Lfm2EdgeError as exc:
        fail(f"--schema: {exc}")
    except (ValueError, UnicodeDecodeError) as exc:
        fail(f"--schema {path} is not JSON ({exc})")
    if not isinstance(data, dict):
        fail(f"--schema {path} must hold a JSON schema object")
    return data
