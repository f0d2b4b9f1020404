"""Device timers: one definition of "how long did this take", for `llava-aim bench` and for the
per-sample figures the lmms-eval plugin records.

On CUDA, times come from CUDA events recorded on the current stream (no host
synchronization inside the timed region; one synchronize when the figures are read). On
CPU, from ``time.perf_counter``. ``median_ms`` is the benchmark's warm-up-then-median rule.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, List, Optional

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Named time points on one device; differences in milliseconds.

    ``mark(name)`` records a CUDA event (GPU) or reads perf_counter (CPU); ``ms(a, b)`` waits
    for point ``b`` (GPU) and returns the time from point ``a`` to point ``b``. A point
    marked again keeps its first time (a hook that fires more often than expected cannot
    move it).
    """

    def __init__(self, device) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._points: Dict[str, Any] = {}

    def mark(self, name: str) -> None:
        if name in self._points:
            return
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
            self._points[name] = event
        else:
            self._points[name] = time.perf_counter()

    def has(self, name: str) -> bool:
        return name in self._points

    def ms(self, start: str, end: str) -> float:
        a, b = self._points[start], self._points[end]
        if self.cuda:
            b.synchronize()  # each call: b may be later than the point an earlier call waited for
            return float(a.elapsed_time(b))
        return 1e3 * (b - a)


def time_call(fn: Callable[[], Any], device) -> float:
    """Seconds one call of ``fn`` takes on ``device`` (its queued work included)."""
    clock = Clock(device)
    sync(clock.device)  # start from an idle device: earlier work is not charged to fn
    clock.mark("start")
    fn()
    clock.mark("end")
    return clock.ms("start", "end") / 1e3


def median_ms(fn: Callable[[], Any], device, repeats: int, warmup: int = 1) -> float:
    """Median of ``repeats`` timed calls of ``fn`` after ``warmup`` untimed ones, in ms."""
    for _ in range(warmup):
        fn()
    return 1e3 * statistics.median(time_call(fn, device) for _ in range(repeats))


def interleaved(cases: List[Any], once: Callable[[Any], float], repeats: int, warmup: int,
                progress: Optional[Callable[[int, int], None]] = None) -> None:
    """Round-robin timing: every round runs each case once, so machine noise hits all alike.
    ``once(case)`` returns seconds and the times go to ``case.times_s``."""
    for _ in range(warmup):
        for case in cases:
            once(case)
    for r in range(repeats):
        for case in cases:
            case.times_s.append(once(case))
        if progress is not None:
            progress(r + 1, repeats)
