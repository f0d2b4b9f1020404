"""Matched budgets for the baselines: the parameter of FastV / VTW / PyramidDrop that spends at
most a given LLM prefill FLOPs (``llava-aim plan --method``, scripts/make_comparison_table.py).

Each baseline keeps its paper's structure and tunes its one free knob, as its paper does:
FastV keeps K and varies the ratio R; PyramidDrop keeps its layers and varies lambda; VTW
varies the withdrawal layer K. Among the values that fit the budget, the one that leaves the
LLM the most visual token-layers wins (the planner's rule). AIM and its controls (random,
pool) use the AIM planner: their FLOPs are AIM's for the same schedule.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from llava.aim.policy import drop_layers_for
from llava.analysis.roofline import Analysis, analyze
from llava.analysis.shapes import get_llm
from llava.errors import AIMConfigError

RATIO_STEPS = 100  # R / lambda tried in steps of 1/100


def baseline_candidates(method: str, num_layers: int, drop_layers: Optional[Sequence[int]] = None
                        ) -> List[Dict[str, Any]]:
    """The analyze() settings a baseline's knob can take."""
    if method == "vtw":
        return [dict(method="vtw", drop_layers=(k,)) for k in range(1, num_layers)]
    if method in ("fastv", "pdrop"):
        layers = drop_layers_for(method, None if drop_layers is None else tuple(drop_layers), num_layers)
        top = RATIO_STEPS if method == "fastv" else RATIO_STEPS - 1  # pdrop: lambda < 1
        return [dict(method=method, drop_layers=layers, drop_ratio=i / RATIO_STEPS) for i in range(1, top + 1)]
    raise AIMConfigError(f"budget matching by knob is for fastv, vtw, pdrop; {method} uses the AIM planner")


def match_budget(method: str, budget_flops: Optional[float] = None, drop_layers: Optional[Sequence[int]] = None,
                 max_time_s: Optional[float] = None, **inputs: Any) -> Optional[Analysis]:
    """The cheapest-enough setting of ``method``: prefill FLOPs <= ``budget_flops`` (and roofline
    time <= ``max_time_s`` when given) with the most visual token-layers (ties: the first
    candidate). None when no value fits. ``inputs`` are analyze()'s model, input and hardware
    arguments (llm, frames, tokens_per_frame, ...)."""
    num_layers = get_llm(inputs.get("llm", "qwen2-7b")).layers
    inputs.setdefault("retention", 1.0)  # the baselines as published: no merging
    best: Optional[Analysis] = None
    for setting in baseline_candidates(method, num_layers, drop_layers):
        result = analyze(**setting, **inputs)
        if budget_flops is not None and result.prefill_flops > budget_flops:
            continue
        if max_time_s is not None and result.prefill_time_s > max_time_s:
            continue
        if best is None or sum(result.visual_tokens_per_layer) > sum(best.visual_tokens_per_layer):
            best = result
    return best
