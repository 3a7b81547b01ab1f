"""``lfm2-edge rm``: a model's files out of the hub cache."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.filesize import decimal as _size

from lfm2_edge.cli._common import ModelOpt, _model_ref, err, fail, user_errors
from lfm2_edge.hub.download import Hub


def remove(
    ref: Annotated[
        Optional[str], typer.Argument(metavar="MODEL", help="NAME[:QUANT] or ORG/REPO[:QUANT]; no quant: all.")
    ] = None,
    model: ModelOpt = None,
) -> None:
    """Remove a cached model (one quant, or every file of the model when no quant is named)."""

    ref = _model_ref(ref, model)
    if ref is None:
        fail("rm needs a MODEL (lfm2-edge models lists them)")
    with user_errors():
        removed = Hub().remove(ref)
    for f in removed:
        err.print(f"removed {f.filename} ({_size(f.size)})")
