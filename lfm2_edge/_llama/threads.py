"""How many CPU threads llama.cpp gets, on a CPU that other programs may be using.

llama.cpp splits every matrix product across its threads and waits at a barrier after
each one, dozens of times per token. When another program holds one of those cores, the
thread that runs there is descheduled for whole time slices and every other thread waits
for it at each barrier: with one busy process on a 2-core machine, 2 threads decoded at
8-31 tokens/s where 1 thread gave 60-82 (docs/benchmarks.md, "A shared CPU"). So the
default is the physical cores this process may use *minus the cores other programs are
busy on*, measured at load from ``/proc/stat`` over a short window (this process's own
CPU time taken out), or from the load average where there is no ``/proc/stat``:

* an idle machine gets every physical core (what was the default before);
* a machine where others keep ``k`` cores busy gets ``cores - k`` threads, at least 1.

``--threads N`` (``n_threads=``) and ``$LFM2_EDGE_THREADS`` override it, in that order.
:func:`busy_cpus` is also what ``doctor`` reports as "the device is busy".
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from lfm2_edge._llama.ggml import default_threads
from lfm2_edge.errors import InvalidParameterError

__all__ = ["ENV_THREADS", "Busy", "BusyProbe", "busy_cpus", "choose_threads", "env_threads", "threads_for"]

ENV_THREADS = "LFM2_EDGE_THREADS"
PROBE_S = 0.2  # how long the probe at load watches /proc/stat
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Busy:
    """What other programs are doing to the CPUs this process may use."""

    cpus: int  # logical CPUs this process may run on
    busy: float  # of them, how many other programs kept busy (0.0 .. cpus)
    source: str  # "/proc/stat" or "loadavg"

    @property
    def free(self) -> float:
        return max(0.0, self.cpus - self.busy)


def _affinity() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return list(range(os.cpu_count() or 1))


def _cpu_ticks(cpus: list[int]) -> tuple[int, int] | None:
    """(busy, total) jiffies summed over ``cpus`` since boot, from ``/proc/stat``.

    Busy is user + system + irq + softirq + steal (guest time is inside user); niced
    time counts too: a ``nice`` busy loop still takes its share of every time slice."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cpus}
    busy = total = 0
    seen = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if name not in wanted:
            continue
        v = [int(x) for x in rest.split()]
        # user nice system idle iowait irq softirq steal [guest guest_nice]
        user, nice, system, idle, iowait, irq, softirq, steal = (v + [0] * 8)[:8]
        busy += user + nice + system + irq + softirq + steal
        total += user + nice + system + idle + iowait + irq + softirq + steal
        seen += 1
    return (busy, total) if seen else None


def _own_ticks() -> int | None:
    """This process's CPU time (all its threads), in jiffies."""
    try:
        fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
        return int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, IndexError, ValueError):
        return None


class BusyProbe:
    """:func:`busy_cpus` in two halves, so that the window can overlap other work (the
    model's load): the first sample at construction, the answer from :meth:`result`,
    which sleeps only what is left of ``window``. This process's own CPU time (the load)
    is left out of the figure."""

    def __init__(self, window: float = PROBE_S) -> None:
        self.window = window
        self.cpus = _affinity()
        self.t0 = time.perf_counter()
        self.before, self.own_before = _cpu_ticks(self.cpus), _own_ticks()

    def result(self) -> Busy:
        cpus = self.cpus
        if self.before is not None and self.own_before is not None and self.window > 0:
            left = self.window - (time.perf_counter() - self.t0)
            if left > 0:
                time.sleep(left)
            after, own_after = _cpu_ticks(cpus), _own_ticks()
            elapsed = time.perf_counter() - self.t0
            if after is not None and own_after is not None and after[1] > self.before[1]:
                share = (after[0] - self.before[0]) / (after[1] - self.before[1])  # of all of `cpus`, 0..1
                own = (own_after - self.own_before) / (_TICK * elapsed)  # cores this process used
                busy = share * len(cpus) - own
                return Busy(len(cpus), round(min(len(cpus), max(0.0, busy)), 2), "/proc/stat")
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
        return Busy(len(cpus), round(min(float(len(cpus)), load), 2), "loadavg")


def busy_cpus(window: float = PROBE_S) -> Busy:
    """How many of this process's CPUs other programs keep busy: measured over ``window``
    seconds from ``/proc/stat`` (this process's own time left out), else the 1-minute
    load average (macOS), else 0."""
    return BusyProbe(window).result()


def env_threads() -> int | None:
    """``$LFM2_EDGE_THREADS`` as a count, None when unset; a bad value is one clear error."""
    env = os.environ.get(ENV_THREADS, "").strip()
    if not env:
        return None
    if not env.isdigit() or int(env) < 1:
        raise InvalidParameterError(f"${ENV_THREADS} must be a whole number of threads, 1 or more (got {env!r})")
    return int(env)


def choose_threads(busy: Busy | None = None) -> int:
    """The default thread count: ``$LFM2_EDGE_THREADS`` when set, else the physical cores
    this process may use less the cores others keep busy (rounded, at least 1); ``busy``
    is measured now (:func:`busy_cpus`) when not given.

    On SMT machines the busy logical CPUs are scaled to physical cores."""
    n = env_threads()
    if n is not None:
        return n
    return threads_for(busy if busy is not None else busy_cpus())


def threads_for(busy: Busy) -> int:
    """Physical cores less the cores ``busy`` says others hold, rounded, at least 1."""
    cores = default_threads()
    busy_cores = busy.busy * cores / max(1, busy.cpus)
    return max(1, min(cores, int(cores - busy_cores + 0.5)))
