"""``lfm2-edge doctor``: this device, and the model that fits it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from lfm2_edge.cli._common import (
    MmprojOpt,
    ModelOpt,
    _emit_json,
    _hub,
    _model_ref,
    fail,
    user_errors,
)


def doctor(
    ref: Annotated[
        Optional[str],
        typer.Argument(
            metavar="[MODEL]",
            help="Also estimate this model's memory (from the catalog or the cache: nothing is downloaded).",
        ),
    ] = None,
    model: ModelOpt = None,
    mmproj: MmprojOpt = None,
    ctx: Annotated[int, typer.Option(min=64, help="Context size to plan for.")] = 4096,
    measure: Annotated[bool, typer.Option(help="Run one image chat with MODEL and report its peak RSS.")] = False,
    cpuinfo: Annotated[
        Optional[Path],
        typer.Option(
            "--cpuinfo",
            help="Plan for the device this /proc/cpuinfo text comes from (`ssh pi cat /proc/cpuinfo > pi.txt`) "
            "instead of this one.",
            dir_okay=False,
        ),
    ] = None,
    meminfo: Annotated[
        Optional[Path],
        typer.Option("--meminfo", help="That device's /proc/meminfo text (with --cpuinfo).", dir_okay=False),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check this device (CPU, SIMD, RAM, GPUs, disk) and recommend the model that fits."""
    from lfm2_edge.local.doctor import measure_peak_rss, model_estimate, report_lines, system_report

    ref = _model_ref(ref, model)
    if meminfo is not None and cpuinfo is None:
        fail("--meminfo describes another device: give its --cpuinfo too")
    if measure and cpuinfo is not None:
        fail("--measure runs here: it cannot measure the device --cpuinfo describes")
    texts: dict[str, str] = {}
    for name, path in (("cpuinfo", cpuinfo), ("meminfo", meminfo)):
        if path is not None:
            try:
                texts[name] = path.read_text(errors="replace")
            except OSError as exc:
                fail(f"cannot read --{name} {path}: {exc.strerror or exc}")
    if measure and ref is None:
        fail("--measure needs a MODEL to run (lfm2-edge doctor LFM2-VL-450M --measure)")
    checked: dict[str, Any] | None = None
    if ref is not None:
        with user_errors():
            checked = model_estimate(_hub(), ref, mmproj, ctx, download=measure, cpuinfo=texts.get("cpuinfo"))
            if measure:  # before system_report: a child inherits the bandwidth probe's peak RSS
                resolved = _hub().resolve(ref, mmproj=mmproj)
                est_total = checked["estimate_mib"]["total"] * 2**20
                rss, _ = measure_peak_rss(resolved.model_path, resolved.mmproj_path, n_ctx=ctx)
                checked["measured_peak_rss_mib"] = round(rss / 2**20, 1)
                checked["estimate_error_pct"] = round(100 * (est_total - rss) / rss, 1)
    with user_errors():
        report = system_report(n_ctx=ctx, **texts)
    if checked is not None:
        report["model"] = checked
    if as_json:
        _emit_json(report)
        return
    out = Console(highlight=False, soft_wrap=True)
    for key, value in report_lines(report, ctx):
        out.print(f"[bold]{key}[/]: {value}")
