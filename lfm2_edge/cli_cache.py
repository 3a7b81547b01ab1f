"""``lfm2-edge pull``, ``models`` and ``rm``: the hub cache at the terminal.
Registered on :data:`lfm2_edge.cli_common.app` by :mod:`lfm2_edge.cli`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.filesize import decimal as _size

from lfm2_edge.cli_common import ModelOpt, RefArg, _emit_json, _hub, _model_ref, err, fail, user_errors

__all__ = ["list_models", "pull", "remove"]


def pull(
    ref: RefArg = None,
    model: ModelOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Download a model and its vision projector into the hub cache (or check the cached copy)."""
    with user_errors():
        resolved = _hub().pull(_model_ref(ref, model))
    files = [p for p in (resolved.model_path, resolved.mmproj_path) if p is not None]
    if as_json:
        _emit_json(
            {
                "model": resolved.ref.display,
                "repo": resolved.ref.repo,
                "quant": resolved.quant,
                "model_path": str(resolved.model_path),
                "mmproj_path": str(resolved.mmproj_path) if resolved.mmproj_path else None,
                "downloaded": resolved.downloaded,
                "bytes": sum(p.stat().st_size for p in files),
            }
        )
        return
    state = "downloaded" if resolved.downloaded else "already in the cache, checked"
    err.print(f"{resolved.ref.display}: {state}")
    for path in files:
        err.print(f"  {path} ({_size(path.stat().st_size)})")


def list_models(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the models in the cache: NAME:QUANT, size (with its projector) and path."""
    from lfm2_edge.hub import Hub

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
    from rich.table import Table

    table = Table("model", "size", "projector", "path", title=f"models in {hub.cache_dir}")
    for row in rows:
        table.add_row(*row)
    for column in table.columns:
        column.overflow = "fold"  # never "…": a path is copied from here
    Console(highlight=False).print(table)


def remove(
    ref: Annotated[
        Optional[str], typer.Argument(metavar="MODEL", help="NAME[:QUANT] or ORG/REPO[:QUANT]; no quant: all.")
    ] = None,
    model: ModelOpt = None,
) -> None:
    """Remove a cached model (one quant, or every file of the model when no quant is named)."""
    from lfm2_edge.hub import Hub

    ref = _model_ref(ref, model)
    if ref is None:
        fail("rm needs a MODEL (lfm2-edge models lists them)")
    with user_errors():
        removed = Hub().remove(ref)
    for f in removed:
        err.print(f"removed {f.filename} ({_size(f.size)})")

