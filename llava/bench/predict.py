"""The analyzer's prediction for exactly the shapes `llava-aim bench` measured."""

from __future__ import annotations

import time
from typing import Dict, List

import torch

from llava.aim.config import AIMConfig
from llava.aim.policy import reduction_of, spec
from llava.aim.registry import lookup
from llava.bench.cases import PrefillCase


def calibrate_cpu(seconds: float = 0.5):
    """Measured dense fp32 matmul throughput and copy bandwidth of this CPU, as roofline hardware."""
    from llava.analysis.hardware import Hardware

    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    flops = 2 * n**3 / best
    src = torch.empty(32 << 20, dtype=torch.float32)  # 128 MiB
    dst = torch.empty_like(src)
    dst.copy_(src)
    copy = min(_timed(lambda: dst.copy_(src)) for _ in range(3))
    return Hardware(f"this CPU (measured: {flops / 1e9:.0f} GFLOP/s fp32, {2 * src.nbytes / copy / 1e9:.1f} GB/s)",
                    flops, 2 * src.nbytes / copy)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def cuda_hardware(device: torch.device):
    """The analyzer's table entry for this GPU (A100 40 GB when the name is not known)."""
    from llava.analysis.hardware import HARDWARE

    name = torch.cuda.get_device_name(device).upper()
    for key, table in (("H200", "nvidia_H200"), ("H100", "nvidia_H100"), ("A100", "nvidia_A100_80G")):
        if key in name:
            return HARDWARE[table]
    return HARDWARE["nvidia_A100"]


def predict(lm_config, cases: List[PrefillCase], frames: int, tokens_per_frame: int, hardware, dtype_bytes: float,
            flash: bool) -> Dict[str, Dict[str, float]]:
    """The analyzer's LLM prefill for each case, on the same shapes as the measurement.

    ``flash``: the run's attention keeps no N x N matrix in memory (SDPA / FlashAttention); a
    case on eager attention (the official configuration) is always priced without it.
    """
    from llava.analysis.roofline import analyze

    out = {}
    for case in cases:
        cfg = case.cfg or AIMConfig.disabled()
        pruning = cfg.pruning and cfg.pruning_mode == "remove"
        before_llm = spec(cfg.method).schedule == "none"  # a reduction before the LLM only: its own count
        adaptive = lookup(reduction_of(cfg), "reduction").bound is not None
        setting = dict(retention=cfg.retention, merge_count=cfg.merge_count, l1=cfg.l1 if pruning else None,
                       l2=cfg.l2 if pruning else None, method=cfg.method if pruning or before_llm else "aim",
                       drop_layers=cfg.drop_layers if pruning else None, drop_ratio=cfg.drop_ratio if pruning else None,
                       kept_tokens=(case.visual_tokens - case.newline_tokens) // frames if adaptive else None,
                       hardware=hardware, weight_bytes=dtype_bytes, act_bytes=dtype_bytes, kv_bytes=dtype_bytes,
                       flash_attention=flash and case.attn != "eager")
        shape = dict(frames=frames, tokens_per_frame=tokens_per_frame, text_tokens=case.text_tokens)
        a = analyze(lm_config, newline_tokens=0, **shape, **setting)
        extra = case.visual_tokens - a.settings["visual_tokens"]  # the newline: what was measured, exactly
        if extra:
            a = analyze(lm_config, newline_tokens=extra, **shape, **setting)
        out[case.name] = {"prefill_tflops": a.prefill_tflops, "prefill_ms": a.prefill_ms,
                          "tokens_per_layer": a.tokens_per_layer,
                          # AIM's own work (merging, importance), reported apart from the prefill
                          "overhead_ms": a.aim_overhead.time_s * 1e3,
                          "overhead_fraction": a.aim_overhead.time_s / a.prefill_time_s,
                          "overhead_flops_fraction": a.aim_overhead.flops / a.prefill_flops}
    base = out[cases[0].name]["prefill_ms"]
    for values in out.values():
        values["speedup"] = base / values["prefill_ms"]
    return out
