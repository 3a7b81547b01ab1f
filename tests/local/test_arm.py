"""ARM boards: doctor on real /proc/cpuinfo texts, and the CPU checked against the build.

The texts in tests/data/cpuinfo are real boards' (their sources: SOURCES.md there). The
check of a Pi 5 build on a Pi 4 CPU runs for real in scripts/arm64-check.sh (qemu's
Cortex-A72); here it is the same comparison on the texts, plus this machine's own
libraries against this machine's CPU, which must pass (the suite runs on them).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from lfm2_edge._llama import cpu
from lfm2_edge.errors import CpuMismatchError
from lfm2_edge.local.device import describe_device, parse_meminfo

DATA = Path(__file__).parent.parent / "data" / "cpuinfo"
PI5_BUILD = "CPU : NEON = 1 | ARM_FMA = 1 | FP16_VA = 1 | DOTPROD = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
PI4_BUILD = "CPU : NEON = 1 | ARM_FMA = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "


def text(name: str) -> str:
    return (DATA / f"{name}.txt").read_text()


@pytest.mark.parametrize(
    ("name", "board", "cores", "simd", "threads"),
    [
        ("raspberry-pi4", "Raspberry Pi 4 Model B Rev 1.1, 4 GB", "4x Cortex-A72", ["asimd"], 4),
        ("raspberry-pi5", "Raspberry Pi 5 Model B Rev 1.0, 8 GB", "4x Cortex-A76", ["asimd", "asimdhp", "asimddp"], 4),
        (
            "raspberry-pi5-bcm2835",
            "Raspberry Pi 5 Model B Rev 1.0, 8 GB",
            "4x Cortex-A76",
            ["asimd", "asimdhp", "asimddp"],
            4,
        ),
        ("jetson-orin-nano", "NVIDIA Jetson Orin (Tegra234)", "6x Cortex-A78AE", ["asimd", "asimdhp", "asimddp"], 6),
        (
            "android-sm8350",
            "Qualcomm Technologies, Inc SM8350",
            "3x Cortex-A78 + 1x Cortex-X1 + 4x Cortex-A55",
            ["asimd", "asimdhp", "asimddp"],
            4,
        ),
    ],
)
def test_boards_are_named_by_model_or_core(name: str, board: str, cores: str, simd: list[str], threads: int) -> None:
    dev = describe_device(text(name))
    assert (dev.board, dev.core_summary, dev.simd, dev.threads) == (board, cores, simd, threads)
    assert "BCM2835" not in (dev.board or "") and "ARMv8 Processor" not in dev.core_summary


def test_big_little_threads_are_the_big_cores_by_capacity_where_the_kernel_gives_it() -> None:
    # SM8350's capacities as its kernel reports them: A55 x4, A78 x3, X1
    dev = describe_device(text("android-sm8350"), capacities=[325] * 4 + [801] * 3 + [1024])
    assert dev.threads == 4 and "cpu_capacity" in dev.threads_basis
    assert describe_device(text("raspberry-pi4"), capacities=[1024] * 4).threads == 4


def test_meminfo_of_real_boards() -> None:
    assert parse_meminfo((DATA / "raspberry-pi5.meminfo.txt").read_text()) == (8252368 * 1024, 6126208 * 1024)
    assert parse_meminfo((DATA / "jetson-orin-nano.meminfo.txt").read_text()) == (7802736 * 1024, 6245596 * 1024)


def test_pi5_libraries_on_a_pi4_are_refused_with_one_line() -> None:
    result = cpu.check(system_info=PI5_BUILD, machine="aarch64", cpuinfo=text("raspberry-pi4"))
    assert result.built_for == ["NEON", "ARM_FMA", "FP16_VA", "DOTPROD"]
    assert result.missing == ["FP16_VA", "DOTPROD"] and not result.ok
    message = result.message()
    assert "\n" not in message and "pip install" in message and "without -march" in message
    assert cpu.check(system_info=PI5_BUILD, machine="aarch64", cpuinfo=text("raspberry-pi5")).ok
    # the baseline build (no -march) runs on both boards
    for board in ("raspberry-pi4", "raspberry-pi5", "jetson-orin-nano", "android-sm8350"):
        assert cpu.check(system_info=PI4_BUILD, machine="aarch64", cpuinfo=text(board)).ok


def test_the_auxiliary_vector_wins_over_a_cpuinfo_of_another_machine() -> None:
    # qemu-user's Cortex-A72: its hwcaps (fp asimd aes pmull sha1 sha2 crc32 cpuid), and the host's x86 cpuinfo
    a72 = (0x8FB, 0)
    x86_text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse avx2\n"
    result = cpu.check(system_info=PI5_BUILD, machine="aarch64", hwcaps=a72, cpuinfo=x86_text)
    assert result.missing == ["FP16_VA", "DOTPROD"] and result.source.startswith("getauxval")
    a76 = (0x8FB | 1 << 8 | 1 << 9 | 1 << 10 | 1 << 12 | 1 << 15 | 1 << 16 | 1 << 20, 0)
    assert cpu.check(system_info=PI5_BUILD, machine="aarch64", hwcaps=a76, cpuinfo=x86_text).ok


def test_this_machines_libraries_run_on_this_cpu() -> None:
    result = cpu.check()
    assert result.ok, result.message()
    assert result.built_for, "llama.cpp reported no CPU feature"
    cpu.require()  # no exception


SPR_FLAGS = "processor\t: 0\nflags\t\t: fpu sse avx2 fma f16c avx512f avx512_vnni avx_vnni amx_tile amx_int8 amx_bf16\n"


def test_amx_kernels_on_an_amx_cpu_are_refused_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # ggml's AMX kernels segfault on the first Q4_0/Q8_0 product on a Sapphire Rapids Xeon
    # (seen here; llama.cpp #20824): a build with them is refused there, not elsewhere.
    amx_build = (
        "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 |"
    )
    plain_build = amx_build.replace(" AMX_INT8 = 1 |", "")
    on_spr = cpu.check(system_info=amx_build, machine="x86_64", cpuinfo=SPR_FLAGS)
    assert on_spr.amx_runs
    assert not cpu.check(system_info=plain_build, machine="x86_64", cpuinfo=SPR_FLAGS).amx_runs
    no_amx_cpu = SPR_FLAGS.replace(" amx_tile amx_int8 amx_bf16", "")
    assert not cpu.check(system_info=amx_build, machine="x86_64", cpuinfo=no_amx_cpu).amx_runs
    monkeypatch.setattr(cpu, "_this_cpu", lambda: on_spr)
    with pytest.raises(CpuMismatchError) as refused:
        cpu.require()
    message = str(refused.value)
    assert "\n" not in message and "AMX" in message and cpu.NO_AMX_FLAGS in message


def test_cpu_mismatch_is_a_user_error() -> None:
    from lfm2_edge.errors import Lfm2EdgeError

    assert issubclass(CpuMismatchError, Lfm2EdgeError)


def doctor_json(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "lfm2_edge.cli", "doctor", *args, "--json"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize(
    ("name", "board", "threads", "repack"),
    [
        ("raspberry-pi4", "Raspberry Pi 4 Model B Rev 1.1, 4 GB", 4, False),
        ("raspberry-pi5", "Raspberry Pi 5 Model B Rev 1.0, 8 GB", 4, True),
        ("jetson-orin-nano", "NVIDIA Jetson Orin (Tegra234)", 6, True),
        ("android-sm8350", "Qualcomm Technologies, Inc SM8350", 4, True),
    ],
)
def test_doctor_plans_for_a_board_from_its_texts(
    tmp_path: Path, name: str, board: str, threads: int, repack: bool
) -> None:
    meminfo = DATA / f"{name}.meminfo.txt"
    if not meminfo.exists():  # no public meminfo of these two: a 4 GB Pi 4's and a 12 GB phone's figures
        meminfo = tmp_path / "meminfo"
        kib = {"raspberry-pi4": (3884328, 3301204), "android-sm8350": (11554056, 5012340)}[name]
        meminfo.write_text(f"MemTotal:       {kib[0]} kB\nMemFree:        1000000 kB\nMemAvailable:   {kib[1]} kB\n")
    report = doctor_json("--cpuinfo", str(DATA / f"{name}.txt"), "--meminfo", str(meminfo))
    dev = report["device"]
    assert (dev["board"], dev["threads"]) == (board, threads)
    assert report["recommendation"]["threads"] == threads
    # llama.cpp repacks Q4_0 and Q8_0 only with dotprod or i8mm (ggml-cpu's repack selection)
    assert report["repack"]["basis"] and (
        report["repack"]["quants"] == [] if not repack else {"Q4_0", "Q8_0"} <= set(report["repack"]["quants"])
    )
    rec = report["recommendation"]
    assert rec["model"].startswith("LFM2.5-VL-") and "not measured" in rec["speed_basis"] and rec["expected_tok_s"] > 0
    assert (
        rec["image_max_tokens"] in (64, 128, 256) and f"--image-max-tokens {rec['image_max_tokens']}" in rec["command"]
    )
    total, available = parse_meminfo(meminfo.read_text())
    assert (report["ram_total_mib"], report["ram_available_mib"]) == (total // 2**20, available // 2**20)
    assert report["planned_from_texts"]
    check = report["build_check"]  # these libraries against that board: x86 ones (None), or this ARM build's
    if platform.machine() != "aarch64":
        assert check is None
    else:
        assert check["missing"] == [f for f in check["built_for"] if f not in check["cpu_has"]]
        assert ("DOTPROD" in check["missing"]) == ("DOTPROD" in check["built_for"] and name == "raspberry-pi4")


@pytest.mark.parametrize("quant", ["Q4_0", "Q8_0"])
def test_doctor_on_a_pi4_counts_no_repacked_copy_and_on_a_pi5_does(quant: str) -> None:
    spec = [f"LFM2.5-VL-1.6B:{quant}"]
    pi4 = doctor_json(*spec, "--cpuinfo", str(DATA / "raspberry-pi4.txt"))  # RAM from its revision code
    pi5 = doctor_json(*spec, "--cpuinfo", str(DATA / "raspberry-pi5.txt"))
    assert pi4["model"]["estimate_mib"]["repacked"] == 0
    assert pi5["model"]["estimate_mib"]["repacked"] > 0
    assert pi5["model"]["estimate_mib"]["total"] - pi4["model"]["estimate_mib"]["total"] == pytest.approx(
        pi5["model"]["estimate_mib"]["repacked"], abs=0.2
    )
    assert pi4["ram_total_mib"] == 4096  # Revision c03111: a 4 GB board
    plain = doctor_json(*spec, "--cpuinfo", str(DATA / "raspberry-pi5.txt"), "--no-repack")  # a Pi 5, no copy
    assert plain["repack"] == {"quants": [], "basis": "none: --no-repack"}
    assert plain["model"]["estimate_mib"] == pi4["model"]["estimate_mib"]


def test_doctor_refuses_texts_it_cannot_plan_from(tmp_path: Path) -> None:
    no_ram = tmp_path / "cpuinfo"
    no_ram.write_text(text("android-sm8350"))
    for args, message in [
        (["--cpuinfo", str(no_ram)], "give that device's /proc/meminfo with --meminfo"),
        (["--meminfo", str(DATA / "raspberry-pi5.meminfo.txt")], "give its --cpuinfo too"),
        (["--cpuinfo", str(tmp_path / "nope.txt")], "cannot read --cpuinfo"),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", "lfm2_edge.cli", "doctor", *args], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_the_arm64_checks_comparator_passes_equal_runs_and_fails_wrong_ones(tmp_path: Path) -> None:
    # scripts/arm64_compare.py, which decides the arm64 check's greedy and logit stages
    script = Path(__file__).parents[2] / "scripts" / "arm64_compare.py"
    runs = ["x86", "pi4@cortex-a72", "pi5@cortex-a76", "pi4@cortex-a76"]

    def compare(*args: str) -> tuple[int, str]:
        proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=60)
        return proc.returncode, proc.stdout

    def write(name: str, per_run: dict[str, str]) -> None:
        for run in runs:
            (tmp_path / f"{name}-{run}.txt").write_text(per_run.get(run, per_run["x86"]))

    write("same", {"x86": "prompt_tokens: 9\nids: 5 6 7\n"})
    assert compare("ids", str(tmp_path), "same", "same", "required") == (
        0,
        "".join(f"same: {run} equal to x86 (3 tokens)\n" for run in runs[1:])
        + "same: the Pi 4 libraries answer the same on a Cortex-A72 and a Cortex-A76\n",
    )
    write("parts", {"x86": "ids: 5 6 7\n", "pi5@cortex-a76": "ids: 5 6 8\n"})
    rc, out = compare("ids", str(tmp_path), "parts", "parts", "required")
    assert rc == 1 and "pi5@cortex-a76 parts from x86 after 2 of 3 token ids\n" in out
    rc, out = compare("ids", str(tmp_path), "parts", "parts", "reported")
    assert rc == 0 and "after 2 of 3 token ids (reported, not required)" in out
    write("pi4", {"x86": "ids: 5 6 7\n", "pi4@cortex-a76": "ids: 5 9 7\n"})  # one set, two answers
    assert compare("ids", str(tmp_path), "pi4", "pi4", "reported")[0] == 1

    write("near-follow", {"x86": "logits 1: 0.5 2.0 -1.0\n", "pi4@cortex-a72": "logits 1: 0.52 1.99 -1.0\n"})
    rc, out = compare("follow", str(tmp_path), "near", "near", "0.0625")
    assert rc == 0 and "pi4@cortex-a72 within 1.00e-02 of x86's logit scale (at most 0.02; bound 0.0625): ok" in out
    write("far-follow", {"x86": "logits 1: 0.5 2.0 -1.0\n", "pi5@cortex-a76": "logits 1: 2.5 0.5 -1.0\n"})
    rc, out = compare("follow", str(tmp_path), "far", "far", "0.0625")
    assert rc == 1 and "TOO FAR; its own choice was x86's at 0 of 1 steps" in out
