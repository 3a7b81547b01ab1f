"""``lfm2-edge doctor``: this device, and the model that fits it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from lfm2_edge.cli._common import (
    MmprojOpt,
    ModelOpt,
    RepackOpt,
    _emit_json,
    _hub,
    fail,
    user_errors,
)
from lfm2_edge.cli.serve import DEFAULT_KEEP_ALIVE


def doctor(
    refs: Annotated[
        Optional[list[str]],
        typer.Argument(
            metavar="[MODEL]...",
            help="Also estimate these models' memory (from the catalog or the cache: nothing is downloaded); "
            "several: whether one serve can hold them together.",
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
    repack: RepackOpt = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check this device (CPU, SIMD, RAM, GPUs, disk) and recommend the model that fits."""
    from lfm2_edge.local.doctor import (
        MIB,
        fit_together,
        keep_alive_report,
        measure_peak_rss,
        model_estimate,
        report_lines,
        system_report,
    )

    names = list(refs or [])
    if model is not None and model not in names:
        names.insert(0, model)
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
    if measure and not names:
        fail("--measure needs a MODEL to run (lfm2-edge doctor LFM2-VL-450M --measure)")
    if len(names) > 1 and (measure or mmproj is not None):
        fail("--measure and --mmproj take one MODEL; several models are estimated from the catalog or the cache")
    checked: list[dict[str, Any]] = []
    with user_errors():
        for ref in names:
            one = model_estimate(
                _hub(), ref, mmproj, ctx, download=measure, cpuinfo=texts.get("cpuinfo"), repack=repack
            )
            if measure:  # in a child, which measures its own peak (VmHWM)
                resolved = _hub().resolve(ref, mmproj=mmproj)
                est_total = one["estimate_mib"]["total"] * 2**20
                rss, _ = measure_peak_rss(resolved.model_path, resolved.mmproj_path, n_ctx=ctx, repack=repack)
                one["measured_peak_rss_mib"] = round(rss / 2**20, 1)
                one["estimate_error_pct"] = round(100 * (est_total - rss) / rss, 1)
            checked.append(one)
    with user_errors():
        report = system_report(n_ctx=ctx, repack=repack, **texts)
    if len(checked) == 1:
        report["model"] = checked[0]
    elif checked:
        report["models"] = checked
        report["together"] = fit_together(checked, report["ram_available_mib"] * MIB)
    if checked:
        report["keep_alive"] = keep_alive_report(checked, DEFAULT_KEEP_ALIVE)
    if as_json:
        _emit_json(report)
        return
    out = Console(highlight=False, soft_wrap=True)
    for key, value in report_lines(report, ctx):
        out.print(f"[bold]{key}[/]: {value}")
