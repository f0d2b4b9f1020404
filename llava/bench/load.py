"""Whether the machine was free enough for a benchmark's timings to mean anything.

A timing taken while other work holds the cores measures the contention, not the code, so
``llava-aim bench`` samples the load before and after its measurements and, when other work
took cores the benchmark needed, reports that the figures are not usable instead of judging
them against the goals.

Other work is estimated from the 1-minute load average (``os.getloadavg``: runnable threads of
the whole machine, smoothed over a minute) minus this process's own share, its CPU time over
the wall time between the two samples. It is compared with the cores this process may run on
less the threads the benchmark itself uses.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional

#: Other work above the cores the benchmark leaves free, in cores, that is still ignored: a
#: daemon's blip, the load-average's smoothing of this process's own start.
BUSY_TOLERANCE_CORES = 0.5


@dataclass(frozen=True)
class LoadSample:
    loadavg: Optional[float]  # 1-minute load average; None where the OS has none
    cpu_s: float  # this process's CPU time so far (user + system, all threads)
    wall_s: float  # a monotonic clock


def sample() -> LoadSample:
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    return LoadSample(load, time.process_time(), time.perf_counter())


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def assess(before: LoadSample, after: LoadSample, threads: int, cores: Optional[int] = None) -> Dict[str, Any]:
    """The load around a measurement: ``busy`` is True when other work held more than the
    ``cores - threads`` the benchmark left free (plus :data:`BUSY_TOLERANCE_CORES`), False
    when it did not, None when the OS gives no load average."""
    cores = cores or usable_cores()
    wall = after.wall_s - before.wall_s
    own = max(0.0, (after.cpu_s - before.cpu_s) / wall) if wall > 0 else 0.0
    out: Dict[str, Any] = {"cores": cores, "threads": threads, "wall_s": wall, "own_cores": own,
                           "loadavg_before": before.loadavg, "loadavg_after": after.loadavg,
                           "other_cores": None, "busy": None}
    if before.loadavg is None or after.loadavg is None:
        return out
    # before: this process had barely started; after: its own share is taken out
    other = max(before.loadavg, after.loadavg - own, 0.0)
    out["other_cores"] = other
    out["busy"] = other > max(0, cores - threads) + BUSY_TOLERANCE_CORES
    return out


def describe(load: Dict[str, Any]) -> str:
    """One line on the load; for a busy machine it says the figures are not usable."""
    if load.get("busy") is None:
        return "machine load: unknown (no load average on this OS): judge the figures yourself"
    text = (f"load average {load['loadavg_before']:.1f} before, {load['loadavg_after']:.1f} after, on "
            f"{load['cores']} cores; this run used {load['own_cores']:.1f} cores on average "
            f"({load['threads']} threads): other work held about {load['other_cores']:.1f} cores")
    if load["busy"]:
        return (f"MACHINE BUSY: {text}. The timings measure that contention, so these figures are NOT USABLE "
                f"and are not judged against the goals; rerun on an idle machine")
    return f"machine load: {text} (idle enough)"


def judged(met: bool, load: Dict[str, Any]) -> Optional[bool]:
    """A goal's verdict, or None (not judged) when the machine was busy."""
    return None if load.get("busy") else met


def verdict(met: Optional[bool]) -> str:
    return "not judged: machine busy" if met is None else ("met" if met else "NOT met")
