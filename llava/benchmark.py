"""Moved to the llava.bench package (timers, memory, kv, cases, models, measure, predict,
report, cli); these names stay importable from here for existing callers."""

from llava.bench.cases import CASE_LABELS, PrefillCase, default_cases, method_case  # noqa: F401
from llava.bench.cli import add_bench_command, bench_command  # noqa: F401
from llava.bench.measure import (  # noqa: F401
    measure_layerwise,
    measure_lm_overhead,
    run_end_to_end_benchmark,
    run_prefill_benchmark,
)
from llava.bench.memory import PeakMemory  # noqa: F401
from llava.bench.models import (  # noqa: F401
    build_lm,
    build_onevision,
    qwen2_7b_config,
    siglip_so400m_config,
    small_qwen2_config,
    small_siglip_config,
)
from llava.bench.predict import calibrate_cpu, cuda_hardware, predict  # noqa: F401
from llava.bench.cases import prumerge_kept  # noqa: F401
