"""Is the machine quiet enough to trust a timing? (pyperf's system checks are the model.)

`SystemLoad` wraps a timed region and reports the 1-minute load average before and after, the cores this
process may use, the share of the machine's CPU time that *other* processes used meanwhile (from /proc/stat,
minus this process's own CPU time), and, for a CPU-bound region, the share of its threads' time this process
got. `noise_columns` turns that and the timing spread into the rows' noise columns.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

SPREAD_LIMIT = 1.10  # p80 / p20 above this: the repeats disagree by more than 10%
BUSY_LIMIT = 0.10  # other processes used more than 10% of the machine while timing
STARVED_LIMIT = 0.5  # the region got less than half the CPU time its threads could have used


def _busy_seconds() -> tuple[float, int] | None:
    """(CPU-seconds spent busy by all CPUs since boot, number of CPUs) from /proc/stat; None off Linux."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    fields = [int(v) for v in lines[0].split()[1:]]  # user nice system idle iowait irq softirq steal ...
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - idle) / hz, cpus


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class LoadReport:
    load_before: float
    load_after: float
    usable_cores: int
    other_cpu: float | None  # share of all CPUs' time used by other processes; None where unknown
    own_share: float | None = None  # this process's CPU time / (wall time x its threads); None when not asked

    def columns(self) -> dict:
        return {"load_before": round(self.load_before, 2), "load_after": round(self.load_after, 2),
                "usable_cores": self.usable_cores,
                "other_cpu": None if self.other_cpu is None else round(self.other_cpu, 3)}


class SystemLoad:
    """with SystemLoad() as load: timed_region()  ->  load.report. threads: the CPU threads a CPU-bound region
    keeps busy (torch's intra-op threads); given, the report says what share of their time the process got (a
    stopped or starved process gets little, whatever the load measure sees of other processes)."""

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def __enter__(self) -> "SystemLoad":
        self._load = os.getloadavg()[0]
        self._busy = _busy_seconds()
        self._own = _own_cpu_seconds()
        self._wall = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.monotonic() - self._wall
        busy, own = _busy_seconds(), _own_cpu_seconds() - self._own
        other = None
        if busy is not None and self._busy is not None and wall > 0:
            other = max(0.0, (busy[0] - self._busy[0] - own) / (wall * busy[1]))
        cores = len(os.sched_getaffinity(0))
        share = own / (wall * min(self.threads, cores)) if self.threads and wall > 0 else None
        self.report = LoadReport(self._load, os.getloadavg()[0], cores, other, share)


def noise_columns(report: LoadReport, p20: float | None = None, p80: float | None = None,
                  host_bound: bool = False) -> dict:
    """The rows' noise columns; `noisy` says why a timing (or a training under a seconds budget) is suspect ('' when
    the repeats' spread is within 10%, the machine was otherwise idle and the GPU was not waiting for launches)."""
    flags = []
    if p20 is not None and p80 is not None and p20 > 0 and p80 / p20 > SPREAD_LIMIT:
        flags.append(f"spread p80/p20 {p80 / p20:.2f}")
    if report.other_cpu is not None and report.other_cpu > BUSY_LIMIT:
        flags.append(f"busy: other processes used {report.other_cpu:.0%} of the CPU")
    if report.own_share is not None and report.own_share < STARVED_LIMIT:
        flags.append(f"starved: the cell got {report.own_share:.0%} of its threads' CPU time (stopped, or crowded "
                     "out by a process the load measure does not see)")
    if host_bound:
        flags.append("host-bound: the GPU waited for kernel launches")
    return dict(report.columns(), noisy="; ".join(flags))


def excess(p20: float | None, p80: float | None, other_cpu: float | None) -> float:
    """How far past its limit a flagged timing is: the larger of the spread's excess (p80/p20 - 1) and other
    processes' CPU share, each over its limit (1 = at the limit; a flag without a number, such as host-bound,
    counts as 1)."""
    ratios = [1.0]
    if p20 and p80 and p20 > 0:
        ratios.append((p80 / p20 - 1) / (SPREAD_LIMIT - 1))
    if other_cpu is not None and other_cpu == other_cpu:  # NaN (a CSV's empty cell) is unknown
        ratios.append(other_cpu / BUSY_LIMIT)
    return max(ratios)
