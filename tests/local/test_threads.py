"""The default thread count on a shared CPU (lfm2_edge._llama.threads): the physical
cores less those other programs keep busy, overridden by --threads and the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from lfm2_edge._llama.ggml import default_threads
from lfm2_edge._llama.threads import ENV_THREADS, Busy, busy_cpus, choose_threads, threads_for
from lfm2_edge.errors import InvalidParameterError


def test_threads_are_the_cores_others_leave_free(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lfm2_edge._llama.threads.default_threads", lambda: 4)
    assert threads_for(Busy(4, 0.0, "/proc/stat")) == 4  # idle: every core, the old default
    assert threads_for(Busy(4, 0.4, "/proc/stat")) == 4  # a little background: still all
    assert threads_for(Busy(4, 1.0, "/proc/stat")) == 3  # one busy process: its core is left to it
    assert threads_for(Busy(4, 1.3, "/proc/stat")) == 3
    assert threads_for(Busy(4, 4.0, "/proc/stat")) == 1  # never fewer than one
    assert threads_for(Busy(8, 2.0, "/proc/stat")) == 3  # SMT: 8 logical CPUs on 4 cores, 2 busy = 1 core


def test_the_environment_overrides_and_a_bad_value_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_THREADS, "3")
    assert choose_threads(Busy(2, 2.0, "/proc/stat")) == 3
    monkeypatch.setenv(ENV_THREADS, "many")
    with pytest.raises(InvalidParameterError, match=r"\$LFM2_EDGE_THREADS must be a whole number"):
        choose_threads()
    monkeypatch.delenv(ENV_THREADS)
    assert 1 <= choose_threads() <= default_threads()


def test_the_probe_reads_proc_stat_and_leaves_this_process_out() -> None:
    busy = busy_cpus(0.1)
    assert 0.0 <= busy.busy <= busy.cpus
    assert busy.source in ("/proc/stat", "loadavg")


def test_a_model_loaded_without_threads_records_what_it_saw(
    tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lfm2_edge import VisionModel

    monkeypatch.delenv(ENV_THREADS, raising=False)
    with VisionModel(tiny["F16"], None) as vm:
        busy = vm._runtime.busy
        assert busy is not None and vm.n_threads == threads_for(busy)
    with VisionModel(tiny["F16"], None, n_threads=1) as vm:  # --threads: taken as given, no probe
        assert vm.n_threads == 1 and vm._runtime.busy is None
    monkeypatch.setenv(ENV_THREADS, "2")
    with VisionModel(tiny["F16"], None) as vm:
        assert vm.n_threads == 2 and vm._runtime.busy is None
