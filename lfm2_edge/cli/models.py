"""``lfm2-edge models``: what the hub cache holds."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.filesize import decimal as _size

from lfm2_edge.cli._common import _emit_json, err
from lfm2_edge.hub.download import Hub


def list_models(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the models in the cache: NAME:QUANT, size (with its projector) and path."""

    hub = Hub()
    files = hub.cached()
    if as_json:
        _emit_json(
            [
                {
                    "name": f.name,
                    "repo": f.repo,
                    "file": f.filename,
                    "quant": f.quant,
                    "kind": "mmproj" if f.is_mmproj else "model",
                    "bytes": f.size,
                    "path": str(f.path),
                }
                for f in files
            ]
        )
        return
    if not files:
        err.print(f"no models in {hub.cache_dir}; `lfm2-edge pull LFM2-VL-450M` fetches the default one")
        return
    rows = []
    for f in (f for f in files if not f.is_mmproj):
        proj = [p for p in files if p.is_mmproj and p.repo == f.repo]
        size = f.size + (proj[0].size if proj else 0)
        vision = f"+ {Path(proj[0].filename).name}" if proj else "text only"
        rows.append((f"{f.name}:{f.quant}" if f.quant else f.name, _size(size), vision, str(f.path)))
    if not sys.stdout.isatty():  # for scripts and pipes: whole values, tab-separated
        for row in rows:
            sys.stdout.write("\t".join(row) + "\n")
        return
    # at a terminal: one line per model (name, size, projector in aligned columns) and its
    # path on the next, whole, so that the table reads at 80 columns and a path copies whole
    out = Console(highlight=False, soft_wrap=True)
    out.print(f"[bold]models in {hub.cache_dir}[/]")
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    for label, shown_size, vision, path in rows:
        out.print(f"{label:<{width[0]}}  {shown_size:>{width[1]}}  {vision}", markup=False)
        out.print(f"  {path}", markup=False)
