"""``lfm2-edge pull``: a model and its projector into the hub cache (or the cached copy checked)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.filesize import decimal as _size

from lfm2_edge.cli._common import ModelOpt, RefArg, _emit_json, _hub, _model_ref, err, user_errors


def pull(
    ref: RefArg = None,
    model: ModelOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Download a model and its vision projector into the hub cache (or check the cached copy)."""
    name = _model_ref(ref, model)
    with user_errors():
        try:
            resolved = _hub().pull(name)
        except KeyboardInterrupt:
            err.print(
                f"\npull stopped; `lfm2-edge pull {name or ''}`".rstrip()
                + " again resumes it (what arrived is kept in the cache)"
            )
            raise typer.Exit(130) from None
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
