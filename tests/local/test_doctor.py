"""`doctor`'s memory arithmetic against measured peak RSS, and the GPU/device choice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lfm2_edge._llama.ggml import list_backends, list_devices, simd_features
from lfm2_edge.errors import Lfm2EdgeError
from lfm2_edge.hub.catalog import find_entry
from lfm2_edge.local.doctor import (
    MIB,
    RUNTIME_BYTES,
    estimate_memory,
    estimate_spec,
    measure_peak_rss,
    recommend,
)
from lfm2_edge.local.placement import choose_gpu_layers
from tests.helpers import emulated, run_cli

pytestmark = pytest.mark.slow  # the command line in child processes: `pytest -m 'not slow'` skips it

CHAT_BYTES = 16 * MIB  # a chat's own buffers above the imports (PIL image, tokens, sampler)
# Under qemu-user a process's RSS holds the emulator and its translated code too: the
# model's memory cannot be read from it (scripts/arm64-check.sh compares llama.cpp's own
# buffer sizes instead).
not_emulated = pytest.mark.skipif(emulated() is not None, reason=f"RSS includes the emulator: {emulated()}")


@not_emulated
@pytest.mark.parametrize(("quant", "n_ctx"), [("F16", 4096), ("Q4_0", 8192)])
def test_the_estimate_is_within_20_percent_of_measured_peak_rss(tiny: dict[str, Path], quant: str, n_ctx: int) -> None:
    estimate = estimate_memory(tiny[quant], tiny["mmproj"], n_ctx=n_ctx)
    measured, imported = measure_peak_rss(tiny[quant], tiny["mmproj"], n_ctx=n_ctx)
    # The tiny model is a few MiB, so the interpreter dominates its RSS, and that moves with
    # the page cache (tens of MiB from one run to the next). Compare with this run's own
    # interpreter figure in place of the RUNTIME_BYTES constant, which stands for it.
    predicted = estimate.total - RUNTIME_BYTES + imported + CHAT_BYTES
    assert abs(predicted - measured) / measured < 0.20, (estimate.to_dict(), measured / MIB, imported / MIB)


def test_the_parts_follow_the_shapes(tiny: dict[str, Path]) -> None:
    small = estimate_memory(tiny["Q4_0"], tiny["mmproj"], n_ctx=1024, repack=False)
    large = estimate_memory(tiny["Q4_0"], tiny["mmproj"], n_ctx=4096, repack=True)
    # tiny: 2 attention layers with 2 KV heads of 16 dims: 2 x 32 x (K, V) x 2 bytes per token
    assert small.kv_cache == 1024 * 2 * 32 * 2 * 2 and large.kv_cache == 4 * small.kv_cache
    assert small.repacked == 0 < large.repacked < large.weights
    assert small.weights == tiny["Q4_0"].stat().st_size and small.projector == tiny["mmproj"].stat().st_size
    text_only = estimate_memory(tiny["Q4_0"], None)
    assert text_only.projector == text_only.vision_compute == 0


def test_recommendations_fit_the_ram() -> None:
    assert recommend(16 * 1024 * MIB)["model"] == "LFM2.5-VL-1.6B:Q8_0"
    assert recommend(2 * 1024 * MIB)["model"] == "LFM2.5-VL-1.6B:Q4_0"
    assert recommend(1200 * MIB)["model"] == "LFM2.5-VL-450M:Q8_0"
    tight = recommend(900 * MIB)
    assert tight["model"] == "LFM2.5-VL-450M:Q4_0" and "warning" in tight
    spec = find_entry("LFM2-VL-450M").arch
    assert spec is not None
    assert estimate_spec(spec, "Q4_0").total < estimate_spec(spec, "Q8_0").total < estimate_spec(spec, "F16").total


def test_doctor_reports_the_device_as_json(tiny: dict[str, Path]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lfm2_edge.cli", "doctor", str(tiny["Q4_0"]), "--measure", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["cores_physical"] >= 1 and report["ram_total_mib"] > 0 and report["simd"]
    assert report["recommendation"]["model"].startswith("LFM2.5-VL-") and report["recommendation"]["threads"] >= 1
    if emulated() is None:
        assert abs(report["model"]["estimate_error_pct"]) < 20
    else:  # said so, and no speed guessed from an emulated CPU
        assert (
            any("emulation" in n for n in report["device"]["notes"])
            and "expected_tok_s" not in report["recommendation"]
        )


def test_gpu_layers_auto_falls_back_to_the_cpu_with_a_notice() -> None:
    gpus = [d for d in list_devices() if d.is_gpu]
    choice = choose_gpu_layers("auto")
    if gpus:
        assert choice.n_gpu_layers == -1 and choice.device in gpus and choice.notice is None
    else:
        assert (choice.n_gpu_layers, choice.device) == (0, None) and "running on the CPU" in (choice.notice or "")
        assert choose_gpu_layers("-1").notice is not None
    assert choose_gpu_layers(0) == choose_gpu_layers("0")
    assert choose_gpu_layers("0", device="CPU").n_gpu_layers == 0
    with pytest.raises(Lfm2EdgeError, match="must be auto"):
        choose_gpu_layers("many")
    with pytest.raises(Lfm2EdgeError, match="no device named 'NOPE0'"):
        choose_gpu_layers("auto", device="NOPE0")


def test_info_lists_backends_and_devices() -> None:
    assert "CPU" in list_backends() and any(d.type == "cpu" for d in list_devices())
    assert all(" " not in f and ":" not in f for f in simd_features())
    proc = subprocess.run([sys.executable, "-m", "lfm2_edge.cli", "info", "--json"], capture_output=True, text=True)
    data = json.loads(proc.stdout)
    assert "CPU" in data["backends"] and data["devices"]


def test_cli_gpu_layers_auto_on_a_cpu_build_is_one_notice(tiny: dict[str, Path]) -> None:
    if any(d.is_gpu for d in list_devices()):
        pytest.skip("this llama.cpp has a GPU backend")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lfm2_edge.cli",
            "chat",
            str(tiny["F16"]),
            "-p",
            "hi",
            "--max-tokens",
            "2",
            "--gpu-layers",
            "auto",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0
    assert proc.stderr.strip().splitlines() == ["note: no GPU backend in this llama.cpp build: running on the CPU"]


def test_fit_together_counts_one_runtime_and_the_largest_models_for_models_max() -> None:
    from lfm2_edge.local.doctor import RUNTIME_BYTES, fit_together

    runtime = RUNTIME_BYTES / MIB
    models = [{"name": n, "estimate_mib": {"total": t}} for n, t in (("a", 400.0), ("b", 1000.0), ("c", 600.0))]
    together = 2000 - 2 * runtime  # one process: the runtime once
    roomy = fit_together(models, 3000 * MIB)  # reserve 750 MiB: 2250 MiB for models
    assert (roomy["total_mib"], roomy["fit"], roomy["models_max"], roomy["reserve_mib"]) == (together, True, 3, 750)
    tight = fit_together(models, 2400 * MIB)  # 1800 MiB for models: the two largest (1520), not all three
    assert (tight["fit"], tight["models_max"]) == (False, 2)
    assert fit_together(models, 1000 * MIB)["models_max"] == 0  # the 512 MiB reserve leaves 488 MiB
    assert roomy["models"] == ["a", "b", "c"]


def test_doctor_with_several_models_says_whether_they_fit_together(tmp_path: Path) -> None:
    from lfm2_edge.local.doctor import fit_together

    env = {"HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}  # the catalog's shapes: nothing is downloaded
    names = ["LFM2.5-VL-1.6B", "LFM2.5-1.2B-Thinking:Q8_0", "LFM2.5-8B-A1B"]
    proc = run_cli("doctor", *names, "--json", env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    want = ["LFM2.5-VL-1.6B:Q4_0", "LFM2.5-1.2B-Thinking:Q8_0", "LFM2.5-8B-A1B:Q4_0"]
    assert [m["name"] for m in report["models"]] == want
    assert report["together"] == fit_together(report["models"], report["ram_available_mib"] * MIB)
    text = run_cli("doctor", *names, env=env, timeout=120)
    assert text.returncode == 0 and "together: " in text.stdout and "in one serve" in text.stdout
    bad = run_cli("doctor", *names[:2], "--measure", env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "take one MODEL" in bad.stderr
