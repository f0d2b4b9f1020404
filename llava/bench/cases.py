"""The configurations `llava-aim bench` times, each a :class:`PrefillCase`."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from llava.aim.config import AIMConfig
from llava.aim.merge import merged_token_count
from llava.aim.policy import aim_default_layers, reduction_of, spec
from llava.aim.prumerge import nominal_tokens
from llava.aim.registry import lookup
from llava.errors import AIMConfigError

# The official AIM code prunes by masking under eager attention; "official" reproduces that
# in the same run as the baseline and this project's removal on SDPA.
OFFICIAL_ATTENTION = "eager"
DECODE_STEPS = 16  # one-token steps timed after each LM-only prefill, on its KV cache


@dataclass
class PrefillCase:
    name: str
    cfg: Optional[AIMConfig]  # None: the stock model
    visual_tokens: int  # entering the LLM
    text_tokens: int
    attn: Optional[str] = None  # attention backend for this case; None: the run's --attn
    tokens_per_layer: List[int] = field(default_factory=list)
    times_s: List[float] = field(default_factory=list)
    kv_cache_bytes: int = 0
    peak_memory_bytes: Optional[int] = None
    decode_times_s: List[float] = field(default_factory=list)  # LM only: DECODE_STEPS steps after a prefill
    newline_tokens: int = 0  # of visual_tokens, the newline token(s) after the frames (not reduced)

    @property
    def decode_tokens_per_s(self) -> Optional[float]:
        """Median decode speed over the rounds (None where decoding was not timed)."""
        return DECODE_STEPS / statistics.median(self.decode_times_s) if self.decode_times_s else None

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    def to_dict(self, baseline: "PrefillCase") -> Dict[str, Any]:
        return {
            "name": self.name, "aim": self.cfg.to_dict() if self.cfg else None, "attn": self.attn,
            "llm_input_tokens": self.visual_tokens + self.text_tokens,
            "tokens_per_layer": self.tokens_per_layer, "sum_tokens": sum(self.tokens_per_layer),
            "median_ms": 1e3 * self.median_s, "times_ms": [1e3 * t for t in self.times_s],
            "speedup": baseline.median_s / self.median_s,
            "kv_cache_bytes": self.kv_cache_bytes, "peak_memory_bytes": self.peak_memory_bytes,
            "decode_tokens_per_s": self.decode_tokens_per_s,
        }


def default_cases(frames: int, tokens_per_frame: int, text: int, num_layers: int, retention: float = 0.25,
                  l1: Optional[int] = None, l2: Optional[int] = None, newline: int = 1,
                  pruning_only: bool = False, attn: str = "sdpa") -> List[PrefillCase]:
    """Baseline first (speed-ups are relative to it); the default AIM setting is named "aim";
    "official" is the official code's way of running the same setting (mask, eager)."""
    if l1 is None:
        l1, l2 = aim_default_layers(num_layers)
    full = frames * tokens_per_frame + newline
    merged = frames * merged_token_count(tokens_per_frame, retention, AIMConfig().merge_count) + newline
    mask = AIMConfig(retention=retention, l1=l1, l2=l2, pruning_mode="mask")
    cases = [
        PrefillCase("baseline", None, full, text, attn),
        PrefillCase("official", mask, merged, text, OFFICIAL_ATTENTION),
        PrefillCase("mask", mask, merged, text, attn),
        PrefillCase("merge-only", AIMConfig(retention=retention, l1=None, l2=None), merged, text, attn),
        PrefillCase("aim", AIMConfig(retention=retention, l1=l1, l2=l2), merged, text, attn),
    ]
    if pruning_only:
        cases.append(PrefillCase("prune-only", AIMConfig(retention=1.0, l1=l1, l2=l2), full, text, attn))
    for case in cases:
        case.newline_tokens = newline
    return cases


def method_case(method: str, frames: int, tokens_per_frame: int, text: int, num_layers: int,
                retention: float = 0.25, l1: Optional[int] = None, l2: Optional[int] = None,
                drop_layers=None, drop_ratio=None, newline: int = 1, seed: int = 0,
                attn: str = "sdpa") -> PrefillCase:
    """One case for any registered method (llava.aim.policy.SPECS), named after it: FastV, VTW and
    PyramidDrop run as published (no merging); a method that reduces before the LLM only runs at
    ``retention`` where that is its budget (its own count otherwise, as PruMerge); the others take
    AIM's setting. Its tokens entering the LLM are its registry entry's nominal count."""
    schedule = spec(method).schedule
    if schedule == "steps":
        cfg = AIMConfig.for_method(method, drop_layers=drop_layers, drop_ratio=drop_ratio)
    elif schedule == "none":
        cfg = budget_config(method, retention)
    else:
        if l1 is None:
            l1, l2 = aim_default_layers(num_layers)
        cfg = AIMConfig(method=method, retention=retention, l1=l1, l2=l2, seed=seed)
    cfg.check_against_model(num_layers)
    return PrefillCase(method, cfg, llm_visual_tokens(cfg, frames, tokens_per_frame) + newline, text, attn,
                       newline_tokens=newline)


def budget_config(method: str, retention: float) -> AIMConfig:
    """A before-the-LLM method at ``retention`` (its budget), or at its own count where it takes none."""
    own = AIMConfig.for_method(method, l1=None, l2=None)
    try:
        return AIMConfig.for_method(method, l1=None, l2=None, retention=retention)
    except AIMConfigError:  # its count is its own (PruMerge refuses a budget): the report names the setting
        return own


@dataclass(frozen=True)
class _SigLIPTower:
    """The vision stage of the LM-only cases: LLaVA-OneVision's unpooled SigLIP grid, no CLS token."""

    patches: int
    class_token: bool = False


def llm_visual_tokens(cfg: AIMConfig, frames: int, tokens_per_frame: int) -> int:
    """The tokens ``cfg``'s reduction gives the LLM for ``frames`` frames of ``tokens_per_frame``
    (its registry entry's ``nominal``; a "vision"-stage entry reads the unpooled grid)."""
    entry = lookup(reduction_of(cfg), "reduction")
    if entry.stage == "vision":
        side = 2 * math.isqrt(tokens_per_frame) - 1  # 27 per side for 196 pooled tokens
        tower = _SigLIPTower(side * side)
        return entry.nominal(frames, tower.patches, cfg, vision=tower)
    return entry.nominal(frames, tokens_per_frame, cfg)


def prumerge_kept(tokens_per_frame: int) -> int:
    """PruMerge's nominal tokens per frame for LLaVA-OneVision's geometry: the unpooled SigLIP
    grid (2 * 14 - 1 = 27 per side for 196 pooled tokens) at the official ratio 1/8, no spatial
    samples (as the official SigLIP code): 92 of 729."""
    side = 2 * math.isqrt(tokens_per_frame) - 1
    return nominal_tokens(side * side, plus=False)


CASE_LABELS = {
    "baseline": "baseline (no AIM)",
    "official": "official code (mask, eager)",
    "mask": "AIM, official-style mask",
    "merge-only": "merging only",
    "aim": "AIM default (removal)",
    "prune-only": "pruning only (removal)",
}
