"""Measured language-model prefill: baseline vs the official-style mask mode vs removal.

Builds a decoder LLM with random weights from a transformers config (a small Qwen2 on CPU,
the Qwen2-7B shape on CUDA), feeds the same prompt (text tokens around a block of visual
tokens) to each configuration, and reports the median wall time of the prefill after warm-up,
next to the sequence-length-weighted work ratio. Timings are medians of runs interleaved
round-robin, so machine noise hits every configuration alike.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from llava.aim.config import AIMConfig
from llava.aim.merge import merged_token_count
from llava.aim.schedule import visual_tokens_per_layer

VISUAL_ID = 5  # any id: the benchmark marks visual positions itself


@dataclass
class PrefillCase:
    name: str
    cfg: Optional[AIMConfig]  # None: the stock model
    visual_tokens: int
    text_tokens: int
    tokens_per_layer: List[int] = field(default_factory=list)
    times_s: List[float] = field(default_factory=list)
    kv_cache_bytes: int = 0

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)


def small_qwen2_config(num_layers: int = 8, attn: str = "sdpa"):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=1024, hidden_size=256, intermediate_size=1024, num_hidden_layers=num_layers,
        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=32768,
        attn_implementation=attn,
    )


def qwen2_7b_config(attn: str = "sdpa"):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
        rope_theta=1000000.0, attn_implementation=attn,
    )


def build_lm(config, device="cpu", dtype=torch.float32):
    from transformers import AutoModel

    torch.manual_seed(0)
    with torch.device(device):
        lm = AutoModel.from_config(config, dtype=dtype)
    return lm.eval()


def _prompt(visual: int, text: int, device):
    """System text, then the visual block, then the question: [t/2 text][visual][t - t/2 text]."""
    head = text // 2
    ids = torch.full((1, visual + text), 7, dtype=torch.long, device=device)
    ids[0, head : head + visual] = VISUAL_ID
    return ids


def default_cases(frames: int, tokens_per_frame: int, text: int, num_layers: int, retention=0.25, newline=1):
    l1, l2 = round(14 * num_layers / 28), round(22 * num_layers / 28)
    full = frames * tokens_per_frame + newline
    merged = frames * merged_token_count(tokens_per_frame, retention) + newline
    return [
        PrefillCase("baseline (no AIM)", None, full, text),
        PrefillCase("merging only", None, merged, text),
        PrefillCase("AIM, official-style mask", AIMConfig(retention=retention, l1=l1, l2=l2, pruning_mode="mask"), merged, text),
        PrefillCase("AIM, removal (default)", AIMConfig(retention=retention, l1=l1, l2=l2), merged, text),
        PrefillCase("pruning only, mask", AIMConfig(retention=1.0, l1=l1, l2=l2, pruning_mode="mask"), full, text),
        PrefillCase("pruning only, removal", AIMConfig(retention=1.0, l1=l1, l2=l2), full, text),
    ]


def run_prefill_benchmark(lm, cases: List[PrefillCase], repeats: int = 5, warmup: int = 1, progress=None) -> List[PrefillCase]:
    """Time the prefill of each case; medians over ``repeats`` interleaved rounds."""
    from llava.model.llava_arch import AIMRuntime, install_pruning

    device = next(lm.parameters()).device
    num_layers = len(lm.layers)
    runtimes: Dict[str, Optional[AIMRuntime]] = {}
    for case in cases:
        if case.cfg is not None and case.cfg.pruning:
            runtimes[case.name] = AIMRuntime(case.cfg, [VISUAL_ID])
        counts = visual_tokens_per_layer(
            case.visual_tokens, num_layers, case.cfg.l1 if case.cfg else None, case.cfg.l2 if case.cfg else None
        )
        if case.cfg is not None and case.cfg.pruning_mode == "mask":
            counts = [case.visual_tokens] * num_layers  # masked tokens are still computed
        case.tokens_per_layer = [case.text_tokens + c for c in counts]

    def once(case: PrefillCase) -> float:
        runtime = runtimes.get(case.name)
        ids = _prompt(case.visual_tokens, case.text_tokens, device)
        if runtime is not None:
            install_pruning(lm, runtime)
            runtime.set_visual_mask(ids)
        try:
            _sync(device)
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = lm(input_ids=ids, use_cache=True)
            _sync(device)
            elapsed = time.perf_counter() - t0
            case.kv_cache_bytes = sum(
                layer.keys.numel() * layer.keys.element_size() * 2 for layer in out.past_key_values.layers
            )
            return elapsed
        finally:
            if runtime is not None:
                runtime.uninstall()  # also restores the stock attention implementation

    for _ in range(warmup):
        for case in cases:
            once(case)
    for r in range(repeats):
        for case in cases:
            case.times_s.append(once(case))
        if progress is not None:
            progress(r + 1, repeats)
    return cases


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_table(cases: List[PrefillCase]) -> str:
    base = cases[0]
    lines = [
        f"{'configuration':<28} {'LLM input':>9} {'sum N_j':>9} {'work ratio':>10} {'median ms':>10} "
        f"{'speed-up':>8} {'KV MiB':>7}",
    ]
    for c in cases:
        work = sum(base.tokens_per_layer) / sum(c.tokens_per_layer)
        lines.append(
            f"{c.name:<28} {c.visual_tokens + c.text_tokens:>9} {sum(c.tokens_per_layer):>9} {work:>9.2f}x "
            f"{1000 * c.median_s:>10.1f} {base.median_s / c.median_s:>7.2f}x {c.kv_cache_bytes / 2**20:>7.1f}"
        )
    return "\n".join(lines)
