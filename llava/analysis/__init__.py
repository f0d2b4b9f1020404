"""Roofline FLOPs / prefill-time model of the language model (docs/efficiency_model.md).

``analyze(...)`` is the entry point; ``llava-aim flops`` its command line.
"""

from llava.analysis.hardware import HARDWARE, Hardware, get_hardware
from llava.analysis.roofline import (
    Analysis,
    ComponentCost,
    LayerCost,
    OpCost,
    RooflineOptions,
    StepCost,
    analyze,
    decode_step_cost,
    kv_cache_bytes_per_layer,
    layer_ops,
    lm_head_op,
    prefill_cost,
    prompt_tokens_per_layer,
    reduction_figures,
    roofline_time,
    vision_encoder_cost,
)
from llava.analysis.shapes import BUILTIN_LLMS, BUILTIN_VISION, LLMShape, VisionShape, get_llm, get_vision

__all__ = [
    "Analysis", "BUILTIN_LLMS", "BUILTIN_VISION", "ComponentCost", "HARDWARE", "Hardware", "LLMShape",
    "LayerCost", "OpCost", "RooflineOptions", "StepCost", "VisionShape", "analyze", "decode_step_cost",
    "get_hardware", "get_llm", "get_vision", "kv_cache_bytes_per_layer", "layer_ops", "lm_head_op",
    "prefill_cost", "prompt_tokens_per_layer", "reduction_figures", "roofline_time",
    "vision_encoder_cost",
]
