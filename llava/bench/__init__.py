"""Measured figures: timers (CUDA events / perf_counter), peak memory, KV-cache bytes, and
`llava-aim bench` built on them. The lmms-eval plugin's per-sample efficiency figures use the
same timers, memory and KV code (llava.eval.efficiency).

    timers.py   Clock, time_call, median_ms, interleaved      memory.py  PeakMemory, fit estimates
    kv.py       cache_bytes, output_cache_bytes               cases.py   PrefillCase, default_cases
    models.py   random-weight models, synthetic video         measure.py the timed runs
    predict.py  the analyzer for the measured shapes          report.py  JSON report, tables
    cli.py      the `llava-aim bench` command
"""

from llava.bench.cases import CASE_LABELS, PrefillCase, default_cases, method_case
from llava.bench.kv import cache_bytes, output_cache_bytes
from llava.bench.memory import PeakMemory, available_bytes
from llava.bench.timers import Clock, median_ms, time_call

__all__ = [
    "CASE_LABELS", "Clock", "PeakMemory", "PrefillCase", "available_bytes", "cache_bytes", "default_cases",
    "median_ms", "method_case", "output_cache_bytes", "time_call",
]
