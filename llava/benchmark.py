"""``llava-aim bench``: measured prefill of AIM next to the analyzer's prediction.

Two measurements on the same input (a video prompt: frames x tokens-per-frame visual tokens,
one newline token, text tokens around them), each configuration timed in interleaved rounds
(round-robin, so machine noise hits all alike) after a warm-up; medians are reported:

* language model alone: the decoder gets the token sequence the LLM would receive (merged
  length for the merging configurations) with the visual positions marked;
* end to end: a LLaVA-OneVision model (vision tower, projector, 2x2 pooling, merging, LLM),
  from the preprocessed pixels to the prefill's last-token logits.

Configurations: baseline (no AIM), the official-style mask mode, merging only, and the default
AIM setting (removal). Per configuration: median time, peak memory growth during the prefill,
KV-cache bytes. AIM's own overhead (merging, importance) is measured separately in
instrumented runs, so it never perturbs the timed ones.

CPU: random weights, a small Qwen2 (8 layers, hidden 256, 8/2 heads) and a 2-layer SigLIP at
the real geometry (384 px, patch 14) with the paper's token counts. CUDA: the
LLaVA-OneVision-7B architecture (SigLIP-so400m + Qwen2-7B) with random bf16 weights.

``--layerwise`` instead measures AIM's overhead at the Qwen2-7B shape where the whole model does
not fit (float32 on CPU): one decoder layer timed at every token count of the schedule,
importance and merging at that shape, summed (``measure_layerwise``). AIM's relative overhead
depends on the shape (importance ~ N^2 x hidden per scoring layer, a decoder layer ~ N x
hidden^2), so the small model overstates it about 20-fold.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch

from llava.aim.config import AIMConfig
from llava.aim.merge import merge_frames, merged_token_count
from llava.aim.policy import PRUMERGE_METHODS, STEP_METHODS, aim_default_layers
from llava.aim.prumerge import nominal_tokens
from llava.aim.schedule import policy_visual_tokens
from llava.errors import AIMConfigError

VISUAL_ID = 5  # any id: the LM-only benchmark marks visual positions itself
SPEEDUP_GOAL = {"cpu": 0.7, "cuda": 0.8}  # measured / predicted, default AIM vs baseline
OVERHEAD_GOAL = 0.03  # merging + importance, fraction of the AIM prefill


# --- configurations ---------------------------------------------------------------------------


@dataclass
class PrefillCase:
    name: str
    cfg: Optional[AIMConfig]  # None: the stock model
    visual_tokens: int  # entering the LLM
    text_tokens: int
    tokens_per_layer: List[int] = field(default_factory=list)
    times_s: List[float] = field(default_factory=list)
    kv_cache_bytes: int = 0
    peak_memory_bytes: Optional[int] = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    def to_dict(self, baseline: "PrefillCase") -> Dict[str, Any]:
        return {
            "name": self.name, "aim": self.cfg.to_dict() if self.cfg else None,
            "llm_input_tokens": self.visual_tokens + self.text_tokens,
            "tokens_per_layer": self.tokens_per_layer, "sum_tokens": sum(self.tokens_per_layer),
            "median_ms": 1e3 * self.median_s, "times_ms": [1e3 * t for t in self.times_s],
            "speedup": baseline.median_s / self.median_s,
            "kv_cache_bytes": self.kv_cache_bytes, "peak_memory_bytes": self.peak_memory_bytes,
        }


def default_cases(frames: int, tokens_per_frame: int, text: int, num_layers: int, retention: float = 0.25,
                  l1: Optional[int] = None, l2: Optional[int] = None, newline: int = 1,
                  pruning_only: bool = False) -> List[PrefillCase]:
    """Baseline first (speed-ups are relative to it); the default AIM setting is named "aim"."""
    if l1 is None:
        l1, l2 = aim_default_layers(num_layers)
    full = frames * tokens_per_frame + newline
    merged = frames * merged_token_count(tokens_per_frame, retention, AIMConfig().merge_count) + newline
    cases = [
        PrefillCase("baseline", None, full, text),
        PrefillCase("mask", AIMConfig(retention=retention, l1=l1, l2=l2, pruning_mode="mask"), merged, text),
        PrefillCase("merge-only", AIMConfig(retention=retention, l1=None, l2=None), merged, text),
        PrefillCase("aim", AIMConfig(retention=retention, l1=l1, l2=l2), merged, text),
    ]
    if pruning_only:
        cases.append(PrefillCase("prune-only", AIMConfig(retention=1.0, l1=l1, l2=l2), full, text))
    return cases


def method_case(method: str, frames: int, tokens_per_frame: int, text: int, num_layers: int,
                retention: float = 0.25, l1: Optional[int] = None, l2: Optional[int] = None,
                drop_layers=None, drop_ratio=None, newline: int = 1, seed: int = 0) -> PrefillCase:
    """One case for a baseline or control of llava.aim.policy, named after the method. FastV,
    VTW and PyramidDrop run as published (no merging); random and pool take AIM's setting."""
    if method in PRUMERGE_METHODS:  # adaptive count: the LLM-only case counts the official ratio's
        cfg = AIMConfig.for_method(method)
        return PrefillCase(method, cfg, frames * prumerge_kept(tokens_per_frame) + newline, text)
    if method in STEP_METHODS:
        cfg = AIMConfig.for_method(method, drop_layers=drop_layers, drop_ratio=drop_ratio)
    else:
        if l1 is None:
            l1, l2 = aim_default_layers(num_layers)
        cfg = AIMConfig(method=method, retention=retention, l1=l1, l2=l2, seed=seed)
    cfg.check_against_model(num_layers)
    visual = frames * merged_token_count(tokens_per_frame, cfg.retention, cfg.merge_count) + newline
    return PrefillCase(method, cfg, visual, text)


def prumerge_kept(tokens_per_frame: int) -> int:
    """PruMerge's nominal tokens per frame for LLaVA-OneVision's geometry: the unpooled SigLIP
    grid (2 * 14 - 1 = 27 per side for 196 pooled tokens) at the official ratio 1/8, no spatial
    samples (as the official SigLIP code): 92 of 729."""
    side = 2 * math.isqrt(tokens_per_frame) - 1
    return nominal_tokens(side * side, plus=False)


CASE_LABELS = {
    "baseline": "baseline (no AIM)",
    "mask": "AIM, official-style mask",
    "merge-only": "merging only",
    "aim": "AIM default (removal)",
    "prune-only": "pruning only (removal)",
}


# --- models with random weights ---------------------------------------------------------------


def small_qwen2_config(num_layers: int = 8, attn: str = "sdpa", vocab_size: int = 1024):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size, hidden_size=256, intermediate_size=1024, num_hidden_layers=num_layers,
        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=32768,
        attn_implementation=attn,
    )


def qwen2_7b_config(attn: str = "sdpa", vocab_size: int = 152064):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
        rope_theta=1000000.0, attn_implementation=attn,
    )


def small_siglip_config() -> Dict[str, Any]:
    return dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2)


def siglip_so400m_config() -> Dict[str, Any]:
    return dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16)


def build_lm(config, device="cpu", dtype=torch.float32):
    from transformers import AutoModel

    torch.manual_seed(0)
    with torch.device(device):
        lm = AutoModel.from_config(config, dtype=dtype)
    return lm.eval()


def build_onevision(text_config, vision_dims: Dict[str, Any], device="cpu", dtype=torch.float32):
    """A random LLaVA-OneVision with the tiny model's processor geometry and these sizes."""
    from transformers import AutoConfig, AutoProcessor, LlavaOnevisionForConditionalGeneration

    from llava.model.builder import resolve_checkpoint

    path = resolve_checkpoint("tiny-llava-onevision")
    config = AutoConfig.from_pretrained(path)
    tc = config.text_config
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "rope_parameters"):
        setattr(tc, key, getattr(text_config, key))
    tc.layer_types = ["full_attention"] * tc.num_hidden_layers
    for key, value in vision_dims.items():
        setattr(config.vision_config, key, value)
    config.text_config._attn_implementation = text_config._attn_implementation
    config.vision_config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaOnevisionForConditionalGeneration._from_config(config, dtype=dtype)
    return model.eval(), AutoProcessor.from_pretrained(path)


# --- measuring --------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory growth during a block: CUDA allocator peak, or on Linux the process's
    resident high-water mark (VmHWM, reset through /proc/self/clear_refs after returning
    freed heap pages with malloc_trim). None where neither is available."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak: Optional[int] = None

    @staticmethod
    def _status_kib(field_name: str) -> Optional[int]:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(field_name + ":"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        self._start = None
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak resident set size to the current one
            self._start = self._status_kib("VmRSS")
        except OSError:
            self._start = None
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._start
        elif self._start is not None:
            hwm = self._status_kib("VmHWM")
            self.peak = None if hwm is None else max(0, hwm - self._start) * 1024
        return False


@contextlib.contextmanager
def timed_importance(device: torch.device):
    """Collect the wall time of every importance computation inside the block.

    An instrument for separate runs only (it synchronizes the device around each score).
    """
    from llava.model.language_model import driver

    original = driver.ImportanceProbe.observe
    spent: List[float] = []

    def observe(self, *args, **kwargs):
        _sync(device)
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            _sync(device)
            spent.append(time.perf_counter() - t0)

    driver.ImportanceProbe.observe = observe
    try:
        yield spent
    finally:
        driver.ImportanceProbe.observe = original


def _kv_bytes(output) -> int:
    """Bytes of keys and values held by a model output's KV cache."""
    from llava.model.language_model import compat

    cache = compat.output_cache(output)
    return sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in cache.layers)


def _prompt(visual: int, text: int, device):
    """System text, then the visual block, then the question: [t/2 text][visual][t - t/2 text]."""
    head = text // 2
    ids = torch.full((1, visual + text), 7, dtype=torch.long, device=device)
    ids[0, head : head + visual] = VISUAL_ID
    return ids


def _interleaved(cases: List[PrefillCase], once: Callable[[PrefillCase], float], repeats: int, warmup: int,
                 progress=None) -> None:
    for _ in range(warmup):
        for case in cases:
            once(case)
    for r in range(repeats):
        for case in cases:
            case.times_s.append(once(case))
        if progress is not None:
            progress(r + 1, repeats)


def _measure_peak_memory(cases: List[PrefillCase], once, device: torch.device) -> None:
    """One extra, untimed run per case inside :class:`PeakMemory`."""
    for case in cases:
        memory = PeakMemory(device)
        once(case, memory)
        case.peak_memory_bytes = memory.peak


def run_prefill_benchmark(lm, cases: List[PrefillCase], repeats: int = 5, warmup: int = 1, progress=None,
                          measure_memory: bool = True) -> List[PrefillCase]:
    """Language model alone: time the prefill of each case; medians over interleaved rounds."""
    from llava.model.llava_arch import AIMRuntime, install_pruning

    device = next(lm.parameters()).device
    num_layers = len(lm.layers)
    runtimes: Dict[str, AIMRuntime] = {}
    for case in cases:
        pruning = case.cfg is not None and case.cfg.pruning
        if pruning:
            runtimes[case.name] = AIMRuntime(case.cfg, [VISUAL_ID])
        counts = (policy_visual_tokens(case.cfg, case.visual_tokens, num_layers) if pruning
                  else [case.visual_tokens] * num_layers)
        if pruning and case.cfg.pruning_mode == "mask":
            counts = [case.visual_tokens] * num_layers  # masked tokens are still computed
        case.tokens_per_layer = [case.text_tokens + c for c in counts]

    def once(case: PrefillCase, memory: Optional[PeakMemory] = None) -> float:
        runtime = runtimes.get(case.name)
        ids = _prompt(case.visual_tokens, case.text_tokens, device)
        if runtime is not None:
            install_pruning(lm, runtime)
            runtime.set_visual_mask(ids)
        try:
            with memory or contextlib.nullcontext():
                _sync(device)
                t0 = time.perf_counter()
                with torch.inference_mode():
                    out = lm(input_ids=ids, use_cache=True)
                _sync(device)
                elapsed = time.perf_counter() - t0
            case.kv_cache_bytes = _kv_bytes(out)
            return elapsed
        finally:
            if runtime is not None:
                runtime.uninstall()  # also restores the stock attention implementation

    _interleaved(cases, once, repeats, warmup, progress)
    if measure_memory:
        _measure_peak_memory(cases, once, device)
    return cases


def measure_lm_overhead(lm, case: PrefillCase, frames: int, tokens_per_frame: int, repeats: int = 3) -> Dict[str, float]:
    """AIM's own cost for one case: importance inside instrumented prefills (median total per
    prefill) and merging of frames x tokens_per_frame features of the LM's width (median)."""
    from llava.model.llava_arch import AIMRuntime, install_pruning

    device = next(lm.parameters()).device
    dtype = next(lm.parameters()).dtype
    importance = []
    if case.cfg.pruning:
        runtime = AIMRuntime(case.cfg, [VISUAL_ID])
        ids = _prompt(case.visual_tokens, case.text_tokens, device)
        for _ in range(repeats):
            install_pruning(lm, runtime)
            runtime.set_visual_mask(ids)
            try:
                with timed_importance(device) as spent, torch.inference_mode():
                    lm(input_ids=ids, use_cache=True)
            finally:
                runtime.uninstall()
            importance.append(sum(spent))
    return {
        "importance_ms": 1e3 * statistics.median(importance) if importance else 0.0,
        "merging_ms": _merging_ms(case.cfg, frames, tokens_per_frame, lm.config.hidden_size, device, dtype, repeats),
    }


def _median_ms(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median wall time of ``repeats`` device-synchronized calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _merging_ms(cfg: AIMConfig, frames: int, tokens_per_frame: int, width: int, device: torch.device,
                dtype: torch.dtype, repeats: int) -> float:
    """Merging of frames x tokens_per_frame random features of the given width (0 without merging)."""
    if not cfg.merging:
        return 0.0
    gen = torch.Generator(device="cpu").manual_seed(0)
    feats = torch.randn(frames, tokens_per_frame, width, generator=gen).to(device, dtype)
    return _median_ms(lambda: merge_frames(feats, cfg.retention, cfg.merge_weighting, cfg.merge_order),
                      device, repeats)


def measure_layerwise(text_config, cfg: AIMConfig, frames: int, tokens_per_frame: int, text_tokens: int,
                      device, dtype, repeats: int = 3, newline: int = 1, progress=None) -> Dict[str, Any]:
    """AIM's overhead at a model shape too large to run whole here (Qwen2-7B in float32 needs
    ~30 GB), measured part by part.

    One decoder layer of ``text_config`` (random weights) is timed at every distinct token
    count N_j of the AIM schedule; PageRank importance (the function the driver calls) on
    random post-RoPE queries and keys of that layer's shape at every scoring layer's N_j;
    merging on frames x tokens_per_frame features of the model's width. Every part is the
    median of ``repeats`` timed calls after one warm-up. The AIM prefill is the sum over the
    layers of its layer time plus its importance. Costs do not depend on the weights' values;
    left out: embeddings, final norm, lm_head (one token), and the KV-cache writes.
    """
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RotaryEmbedding

    from llava.aim.importance import pagerank_importance
    from llava.aim.schedule import scoring_layers

    device = torch.device(device)
    num_layers = text_config.num_hidden_layers
    cfg.check_against_model(num_layers)
    visual = frames * merged_token_count(tokens_per_frame, cfg.retention, cfg.merge_count) + newline
    visual_per_layer = policy_visual_tokens(cfg, visual, num_layers) if cfg.pruning else [visual] * num_layers
    tokens = [text_tokens + v for v in visual_per_layer]
    scoring = scoring_layers(visual_per_layer) if cfg.pruning else []
    heads, kv_heads = text_config.num_attention_heads, text_config.num_key_value_heads
    head_dim = text_config.hidden_size // heads
    distinct = sorted(set(tokens), reverse=True)
    total_steps = len(distinct) + len(scoring) + 1
    torch.manual_seed(0)
    with torch.device(device):
        layer = Qwen2DecoderLayer(text_config, layer_idx=0).to(dtype).eval()
        rotary = Qwen2RotaryEmbedding(text_config)

    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total_steps)

    layer_ms: Dict[int, float] = {}
    for n in distinct:
        hidden = torch.randn(1, n, text_config.hidden_size, device=device, dtype=dtype)
        position_ids = torch.arange(n, device=device)[None]
        with torch.inference_mode():
            cos_sin = rotary(hidden, position_ids)
            layer_ms[n] = _median_ms(lambda: layer(hidden, attention_mask=None, position_ids=position_ids,
                                                   position_embeddings=cos_sin), device, repeats)
        step()
    importance_ms: Dict[int, float] = {}
    for j in scoring:
        n = tokens[j]
        gen = torch.Generator(device="cpu").manual_seed(j)
        q = torch.randn(1, heads, n, head_dim, generator=gen).to(device, dtype)
        k = torch.randn(1, kv_heads, n, head_dim, generator=gen).to(device, dtype)
        valid = torch.ones(1, n, dtype=torch.bool, device=device)
        importance_ms[j] = _median_ms(lambda: pagerank_importance(q, k, valid, head_dim**-0.5, cfg.pagerank_tau,
                                                                  cfg.pagerank_iters, cfg.importance_memory_mb << 20),
                                      device, repeats)
        step()
    merging_ms = _merging_ms(cfg, frames, tokens_per_frame, text_config.hidden_size, device, dtype, repeats)
    step()
    layers_ms = sum(layer_ms[n] for n in tokens)
    overhead_ms = sum(importance_ms.values()) + merging_ms
    aim_prefill_ms = layers_ms + sum(importance_ms.values())
    return {
        "tokens_per_layer": tokens, "scoring_layers": list(scoring),
        "layer_ms": {str(n): ms for n, ms in layer_ms.items()},
        "importance_ms": {str(j): ms for j, ms in importance_ms.items()},
        "merging_ms": merging_ms, "layers_ms": layers_ms, "aim_prefill_ms": aim_prefill_ms,
        "overhead_ms": overhead_ms,
        # same definition as the whole-model measurement: (importance + merging) / (prefill + merging)
        "fraction": overhead_ms / (aim_prefill_ms + merging_ms),
        "repeats": repeats,
    }


def run_end_to_end_benchmark(model, processor, cases: List[PrefillCase], video, text: str, repeats: int = 5,
                             warmup: int = 1, progress=None, measure_memory: bool = True) -> List[PrefillCase]:
    """Whole model from preprocessed pixels to the prefill's last-token logits, per case.

    The processor runs outside the timed region (once per case, with that case's AIM patch,
    since merging changes the number of placeholders).
    """
    from llava.model.llava_arch import apply_aim, remove_aim

    device = next(model.parameters()).device
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs: Dict[str, Any] = {}
    for case in cases:
        if case.cfg is not None:
            apply_aim(model, processor, case.cfg)
        try:
            batch = processor(text=prompt, videos=[video], return_tensors="pt").to(device)
        finally:
            if case.cfg is not None:
                remove_aim(model, processor)
        batch["pixel_values_videos"] = batch["pixel_values_videos"].to(model.dtype)
        inputs[case.name] = batch
        case.text_tokens = int(batch["input_ids"].shape[1]) - case.visual_tokens

    def once(case: PrefillCase, memory: Optional[PeakMemory] = None) -> float:
        if case.cfg is not None:
            apply_aim(model, processor, case.cfg)
        try:
            with memory or contextlib.nullcontext():
                _sync(device)
                t0 = time.perf_counter()
                with torch.inference_mode():
                    out = model(**inputs[case.name], use_cache=True, logits_to_keep=1)
                _sync(device)
                elapsed = time.perf_counter() - t0
            case.kv_cache_bytes = _kv_bytes(out)
            if case.cfg is not None and case.cfg.pruning_mode == "remove" and model.aim_stats.layer_seq_lens:
                case.tokens_per_layer = list(model.aim_stats.layer_seq_lens)
            return elapsed
        finally:
            if case.cfg is not None:
                remove_aim(model, processor)

    _interleaved(cases, once, repeats, warmup, progress)
    num_layers = model.config.text_config.num_hidden_layers
    for case in cases:
        if not case.tokens_per_layer:  # stock forward or mask mode: every token in every layer
            case.tokens_per_layer = [case.visual_tokens + case.text_tokens] * num_layers
    if measure_memory:
        _measure_peak_memory(cases, once, device)
    return cases


# --- prediction -------------------------------------------------------------------------------


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
    from llava.analysis.hardware import HARDWARE

    name = torch.cuda.get_device_name(device).upper()
    for key, table in (("H200", "nvidia_H200"), ("H100", "nvidia_H100"), ("A100", "nvidia_A100_80G")):
        if key in name:
            return HARDWARE[table]
    return HARDWARE["nvidia_A100"]


def predict(lm_config, cases: List[PrefillCase], frames: int, tokens_per_frame: int, hardware, dtype_bytes: float,
            flash: bool) -> Dict[str, Dict[str, float]]:
    """The analyzer's LLM prefill for each case, on the same shapes as the measurement."""
    from llava.analysis.roofline import analyze

    out = {}
    for case in cases:
        cfg = case.cfg
        retention = cfg.retention if cfg else 1.0
        rule = cfg.merge_count if cfg else "official"
        pruning = cfg is not None and cfg.pruning and cfg.pruning_mode == "remove"
        if cfg is not None and cfg.prumerging:
            kept = prumerge_kept(tokens_per_frame)
            a = analyze(lm_config, frames=frames, tokens_per_frame=tokens_per_frame, text_tokens=case.text_tokens,
                        newline_tokens=case.visual_tokens - frames * kept, method=cfg.method, kept_tokens=kept,
                        hardware=hardware, weight_bytes=dtype_bytes, act_bytes=dtype_bytes, kv_bytes=dtype_bytes,
                        flash_attention=flash)
            out[case.name] = {"prefill_tflops": a.prefill_tflops, "prefill_ms": a.prefill_ms,
                              "tokens_per_layer": a.tokens_per_layer, "overhead_ms": a.aim_overhead.time_s * 1e3,
                              "overhead_fraction": a.aim_overhead.time_s / a.prefill_time_s,
                              "overhead_flops_fraction": a.aim_overhead.flops / a.prefill_flops}
            continue
        a = analyze(lm_config, frames=frames, tokens_per_frame=tokens_per_frame, text_tokens=case.text_tokens,
                    newline_tokens=case.visual_tokens - frames * merged_token_count(tokens_per_frame, retention, rule),
                    retention=retention, merge_count=rule, l1=cfg.l1 if pruning else None, l2=cfg.l2 if pruning else None,
                    method=cfg.method if pruning else "aim", drop_layers=cfg.drop_layers if pruning else None,
                    drop_ratio=cfg.drop_ratio if pruning else None,
                    hardware=hardware, weight_bytes=dtype_bytes, act_bytes=dtype_bytes, kv_bytes=dtype_bytes,
                    flash_attention=flash)
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


# --- the command ------------------------------------------------------------------------------


def add_bench_command(subparsers) -> None:
    p = subparsers.add_parser("bench", help="measured prefill time, memory and KV cache, next to the prediction",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--model", choices=["auto", "small", "onevision-7b"], default="auto",
                   help="random-weight architecture: small (CPU default) or LLaVA-OneVision-7B (CUDA default)")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--tokens-per-frame", type=int, default=196,
                   help="LLM-only measurement: visual tokens per frame before merging (end to end: the model's 196)")
    p.add_argument("--text-tokens", type=int, default=100, help="LLM-only measurement: text tokens")
    p.add_argument("--retention", type=float, default=0.25)
    p.add_argument("--l1", type=int, help="default: the paper's (14, 22) of 28 layers scaled to the model")
    p.add_argument("--l2", type=int)
    p.add_argument("--repeats", type=int, default=None,
                   help="timed rounds after one warm-up round (median; default 5, with --layerwise 2)")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    p.add_argument("--lm-only", action="store_true", help="skip the end-to-end measurement")
    p.add_argument("--pruning-only", action="store_true", help="also time pruning without merging")
    p.add_argument("--layerwise", action="store_true",
                   help="instead: AIM's overhead measured layer by layer at the Qwen2-7B shape (the LLaVA-OneVision-7B "
                        "LLM), which does not fit whole in CPU memory; about 80 s on 2 CPU cores, ~2 GB")
    from llava.analysis.cli import add_method_options

    add_method_options(p)  # --method X adds a case "X" (a baseline or control) next to AIM's
    p.add_argument("--json", action="store_true", help="print one JSON object and nothing else")
    p.set_defaults(func=bench_command)


def _check_args(args) -> torch.device:
    if args.repeats is None:
        args.repeats = 2 if getattr(args, "layerwise", False) else 5
    if args.repeats < 1:
        raise AIMConfigError(f"--repeats must be at least 1, got {args.repeats}")
    if args.frames < 1 or args.tokens_per_frame < 1 or args.text_tokens < 2:
        raise AIMConfigError("--frames and --tokens-per-frame must be >= 1 and --text-tokens >= 2")
    if (args.l1 is None) != (args.l2 is None):
        raise AIMConfigError("give both --l1 and --l2, or neither for the paper's schedule scaled to the model")
    AIMConfig(retention=args.retention, l1=args.l1, l2=args.l2)
    method = getattr(args, "method", "aim")
    if method in PRUMERGE_METHODS and (args.drop_layers is not None or args.drop_ratio is not None
                                       or getattr(args, "kept_tokens", None) is not None):
        raise AIMConfigError(f"--drop-layers/--drop-ratio/--kept-tokens do not apply to bench --method {method}")
    if method in STEP_METHODS:
        AIMConfig.for_method(method, drop_layers=args.drop_layers, drop_ratio=args.drop_ratio)
    elif getattr(args, "drop_layers", None) is not None or getattr(args, "drop_ratio", None) is not None:
        raise AIMConfigError(f"--drop-layers/--drop-ratio apply to {', '.join(STEP_METHODS)}, not --method {method}")
    if getattr(args, "layerwise", False) and method != "aim":
        raise AIMConfigError(f"--layerwise measures the default AIM method only, not --method {method}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise AIMConfigError(f"--device must be cpu or cuda[:N], got {args.device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AIMConfigError("--device cuda asked for, but no CUDA device is available; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise AIMConfigError(f"--device must be cpu or cuda[:N], got {args.device!r}")
    return device


def bench_command(args) -> int:
    import transformers

    device = _check_args(args)
    big = args.model == "onevision-7b" or (args.model == "auto" and device.type == "cuda")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    text_config = qwen2_7b_config(args.attn) if big else small_qwen2_config(attn=args.attn)
    num_layers = text_config.num_hidden_layers
    if args.l1 is not None:
        AIMConfig(retention=args.retention, l1=args.l1, l2=args.l2).check_against_model(num_layers)
    say = (lambda msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    bar = _progress_bar(args.json)

    if args.layerwise:
        big = args.model != "small"
        return layerwise_command(args, device, dtype, qwen2_7b_config(args.attn) if big else small_qwen2_config(attn=args.attn))

    say(f"llava-aim bench: {'Qwen2-7B' if big else 'small Qwen2'} language model, random weights, "
        f"{str(dtype).replace('torch.', '')}, {args.attn}, on {device}")
    lm = build_lm(text_config, device, dtype)
    lm_cases = default_cases(args.frames, args.tokens_per_frame, args.text_tokens, num_layers, args.retention,
                             args.l1, args.l2, pruning_only=args.pruning_only)
    if args.method != "aim":
        lm_cases.append(method_case(args.method, args.frames, args.tokens_per_frame, args.text_tokens, num_layers,
                                    args.retention, args.l1, args.l2, args.drop_layers, args.drop_ratio))
    run_prefill_benchmark(lm, lm_cases, repeats=args.repeats, progress=bar("LLM prefill", args.repeats))
    aim_case = next(c for c in lm_cases if c.name == "aim")
    overhead = measure_lm_overhead(lm, aim_case, args.frames, args.tokens_per_frame)
    del lm
    hardware = cuda_hardware(device) if device.type == "cuda" else calibrate_cpu()
    flash = args.attn == "flash_attention_2" or args.attn == "sdpa"  # fused kernels: no N x N in memory
    predicted = predict(text_config, lm_cases, args.frames, args.tokens_per_frame, hardware,
                        torch.finfo(dtype).bits / 8, flash)

    e2e_cases: List[PrefillCase] = []
    if not args.lm_only:
        say("end to end: LLaVA-OneVision (vision tower + projector + merging + LLM)")
        model, processor = build_onevision(text_config, siglip_so400m_config() if big else small_siglip_config(),
                                           device, dtype)
        e2e_cases = default_cases(args.frames, 196, 0, num_layers, args.retention, args.l1, args.l2,
                                  pruning_only=args.pruning_only)
        if args.method != "aim":
            e2e_cases.append(method_case(args.method, args.frames, 196, 0, num_layers, args.retention, args.l1,
                                         args.l2, args.drop_layers, args.drop_ratio))
        video = _synthetic_video(args.frames, 384)
        run_end_to_end_benchmark(model, processor, e2e_cases, video, "What happens in this video?",
                                 repeats=args.repeats, progress=bar("end to end", args.repeats))
        del model

    result = bench_report(args, device, dtype, text_config, lm_cases, e2e_cases, predicted, overhead, hardware,
                          transformers.__version__)
    if args.json:
        print(json.dumps(result))
    else:
        print(format_bench(result))
    return 0


def layerwise_command(args, device: torch.device, dtype: torch.dtype, text_config) -> int:
    import transformers

    num_layers = text_config.num_hidden_layers
    if args.l1 is None:
        args.l1, args.l2 = aim_default_layers(num_layers)
    cfg = AIMConfig(retention=args.retention, l1=args.l1, l2=args.l2)
    cfg.check_against_model(num_layers)
    if not args.json:
        print(f"llava-aim bench --layerwise: one random {text_config.hidden_size}-wide Qwen2 decoder layer, "
              f"{str(dtype).replace('torch.', '')}, {args.attn}, on {device}", file=sys.stderr, flush=True)
    bar = _progress_bar(args.json)("layer-by-layer", 1, unit="part")
    result = measure_layerwise(text_config, cfg, args.frames, args.tokens_per_frame, args.text_tokens, device, dtype,
                               repeats=args.repeats, progress=bar)
    report = {
        "date": datetime.date.today().isoformat(), **_machine(device),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "dtype": str(dtype).replace("torch.", ""), "attn": args.attn,
        "language_model": _lm_summary(text_config),
        "input": {"frames": args.frames, "tokens_per_frame": args.tokens_per_frame, "text_tokens": args.text_tokens,
                  "newline_tokens": 1},
        "aim": cfg.to_dict(),
        "layerwise": result,
        "goals": {"overhead_max": OVERHEAD_GOAL, "overhead_met": result["fraction"] < OVERHEAD_GOAL},
    }
    print(json.dumps(report) if args.json else format_layerwise(report))
    return 0


def format_layerwise(r: Dict[str, Any]) -> str:
    lmc, i, lw = r["language_model"], r["input"], r["layerwise"]
    tokens = lw["tokens_per_layer"]
    lines = [
        f"llava-aim bench --layerwise  {r['date']}  {r['device']} ({r['threads']} threads)  torch "
        f"{r['versions']['torch']}, transformers {r['versions']['transformers']}  {r['dtype']}, {r['attn']}",
        f"decoder layer: hidden {lmc['hidden']}, intermediate {lmc['intermediate']}, {lmc['heads']}/{lmc['kv_heads']} "
        f"heads, random weights; the model has {lmc['layers']} layers",
        f"input: {i['frames']} frames x {i['tokens_per_frame']} tokens + 1 newline + {i['text_tokens']} text tokens; "
        f"AIM: retention {r['aim']['retention']:g}, l1={r['aim']['l1']}, l2={r['aim']['l2']}",
        "",
        f"  {'tokens N_j':>10} {'layers':>6} {'layer ms':>10}",
    ]
    for n, ms in lw["layer_ms"].items():
        lines.append(f"  {n:>10} {tokens.count(int(n)):>6} {ms:>10.1f}")
    imp = lw["importance_ms"]
    lines += [
        "",
        "importance (PageRank) at the scoring layers: "
        + (", ".join(f"layer {j} ({tokens[int(j)]} tokens) {ms:.1f} ms" for j, ms in imp.items()) or "none"),
        f"merging: {lw['merging_ms']:.1f} ms",
        f"AIM prefill (sum over the {len(tokens)} layers, importance included): {lw['aim_prefill_ms']:.0f} ms",
        f"AIM overhead: {lw['overhead_ms']:.1f} ms = {100 * lw['fraction']:.2f}% of the AIM prefill "
        f"(goal < {100 * r['goals']['overhead_max']:.0f}%: {'met' if r['goals']['overhead_met'] else 'NOT met'})",
        "left out: embeddings, final norm, lm_head, KV-cache writes (the same in every configuration)",
    ]
    return "\n".join(lines)


def _progress_bar(quiet: bool):
    def make(desc: str, total: int, unit: str = "round"):
        if quiet:
            return None
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr)

        def update(done: int, n: int) -> None:
            bar.total = n  # callers that learn the total late
            bar.update(done - bar.n)
            if done == n:
                bar.close()

        return update

    return make


def _synthetic_video(frames: int, size: int):
    """Frames with structure (gradients and a moving square), so merging has something to merge."""
    import numpy as np

    y, x = np.mgrid[0:size, 0:size]
    video = np.zeros((frames, size, size, 3), dtype=np.uint8)
    for f in range(frames):
        video[f, ..., 0] = (x * 255 // size).astype(np.uint8)
        video[f, ..., 1] = (y * 255 // size).astype(np.uint8)
        video[f, ..., 2] = 80
        x0 = (f * size // max(frames, 1)) % (size - size // 4)
        video[f, size // 3 : size // 3 + size // 4, x0 : x0 + size // 4] = (250, 30, 30)
    return video


def _machine(device: torch.device) -> Dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {"device": name, "threads": torch.get_num_threads()}


def _lm_summary(text_config) -> Dict[str, int]:
    return {"layers": text_config.num_hidden_layers, "hidden": text_config.hidden_size,
            "intermediate": text_config.intermediate_size,
            "heads": text_config.num_attention_heads, "kv_heads": text_config.num_key_value_heads}


def bench_report(args, device, dtype, text_config, lm_cases, e2e_cases, predicted, overhead, hardware,
                 transformers_version) -> Dict[str, Any]:
    lm_base = lm_cases[0]
    aim = next(c for c in lm_cases if c.name == "aim")
    measured = lm_base.median_s / aim.median_s
    predicted_speedup = predicted["aim"]["speedup"]
    aim_ms = 1e3 * aim.median_s
    overhead_ms = overhead["importance_ms"] + overhead["merging_ms"]
    kind = device.type
    report = {
        "date": datetime.date.today().isoformat(), **_machine(device),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers_version},
        "dtype": str(dtype).replace("torch.", ""), "attn": args.attn,
        "language_model": _lm_summary(text_config),
        "input": {"frames": args.frames, "tokens_per_frame": args.tokens_per_frame, "text_tokens": args.text_tokens,
                  "newline_tokens": 1},
        "aim": aim.cfg.to_dict(),
        "repeats": args.repeats,
        "measured_speedup": measured,
        "predicted_speedup": predicted_speedup,
        "measured_over_predicted": measured / predicted_speedup,
        # the same prediction with AIM's own work (merging, importance) added to the AIM prefill
        "predicted_speedup_with_overhead": predicted["baseline"]["prefill_ms"]
        / (predicted["aim"]["prefill_ms"] + predicted["aim"]["overhead_ms"]),
        "prediction_hardware": hardware.to_dict(),
        "language_model_prefill": [c.to_dict(lm_base) for c in lm_cases],
        "predicted": predicted,
        "overhead": {**overhead, "total_ms": overhead_ms, "aim_prefill_ms": aim_ms,
                     "fraction": overhead_ms / (aim_ms + overhead["merging_ms"])},
        "end_to_end_prefill": [c.to_dict(e2e_cases[0]) for c in e2e_cases] if e2e_cases else [],
    }
    if e2e_cases:
        e2e_aim = next(c for c in e2e_cases if c.name == "aim")
        report["end_to_end_speedup"] = e2e_cases[0].median_s / e2e_aim.median_s
    report["goals"] = {
        "speedup_ratio_min": SPEEDUP_GOAL[kind],
        "speedup_ratio_met": report["measured_over_predicted"] >= SPEEDUP_GOAL[kind],
        "overhead_max": OVERHEAD_GOAL,
        "overhead_met": report["overhead"]["fraction"] < OVERHEAD_GOAL,
    }
    return report


def _table(rows: List[Dict[str, Any]], predicted: Optional[Dict[str, Dict[str, float]]] = None) -> List[str]:
    head = f"  {'configuration':<26} {'LLM input':>9} {'sum N_j':>8} {'median ms':>10} {'speed-up':>8}"
    head += f" {'predicted':>9}" if predicted else ""
    head += f" {'peak MiB':>9} {'KV MiB':>7}"
    lines = [head]
    for r in rows:
        peak = "n/a" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**20:.1f}"
        line = (f"  {CASE_LABELS.get(r['name'], r['name']):<26} {r['llm_input_tokens']:>9} {r['sum_tokens']:>8} "
                f"{r['median_ms']:>10.1f} {r['speedup']:>7.2f}x")
        if predicted:
            line += f" {predicted[r['name']]['speedup']:>8.2f}x"
        lines.append(line + f" {peak:>9} {r['kv_cache_bytes'] / 2**20:>7.1f}")
    return lines


def format_bench(r: Dict[str, Any]) -> str:
    lmc = r["language_model"]
    i = r["input"]
    o = r["overhead"]
    g = r["goals"]
    lines = [
        f"llava-aim bench  {r['date']}  {r['device']} ({r['threads']} threads)  torch {r['versions']['torch']}, "
        f"transformers {r['versions']['transformers']}  {r['dtype']}, {r['attn']}",
        f"language model: {lmc['layers']} layers, hidden {lmc['hidden']}, {lmc['heads']}/{lmc['kv_heads']} heads, "
        "random weights",
        f"input: {i['frames']} frames x {i['tokens_per_frame']} tokens + 1 newline + {i['text_tokens']} text tokens; "
        f"AIM: retention {r['aim']['retention']:g}, l1={r['aim']['l1']}, l2={r['aim']['l2']}",
        "",
        "language-model prefill (median of interleaved rounds):",
        *_table(r["language_model_prefill"], r["predicted"]),
        "",
        f"default AIM vs baseline: measured {r['measured_speedup']:.2f}x, predicted {r['predicted_speedup']:.2f}x "
        f"(roofline on {r['prediction_hardware']['name']}): measured/predicted = {r['measured_over_predicted']:.2f} "
        f"(goal >= {g['speedup_ratio_min']}: {'met' if g['speedup_ratio_met'] else 'NOT met'}); "
        f"predicted with AIM's overhead added: {r['predicted_speedup_with_overhead']:.2f}x "
        f"(measured/predicted = {r['measured_speedup'] / r['predicted_speedup_with_overhead']:.2f})",
        f"AIM overhead: importance {o['importance_ms']:.1f} ms + merging {o['merging_ms']:.1f} ms = "
        f"{100 * o['fraction']:.1f}% of the AIM prefill (goal < {100 * g['overhead_max']:.0f}%: "
        f"{'met' if g['overhead_met'] else 'NOT met'}); the analyzer predicts "
        f"{100 * r['predicted']['aim']['overhead_fraction']:.1f}% of the time "
        f"({100 * r['predicted']['aim']['overhead_flops_fraction']:.2f}% of the FLOPs) for this model",
    ]
    if r["language_model"]["hidden"] < 1024:
        lines.append("  (a narrow model overstates it: importance grows as N^2 x hidden, a layer as N x hidden^2; "
                     "`llava-aim bench --layerwise` measures it at the Qwen2-7B shape)")
    if r["end_to_end_prefill"]:
        lines += ["", "end to end (vision tower + projector + merging + LLM prefill, last-token logits):",
                  *_table(r["end_to_end_prefill"]),
                  f"default AIM vs baseline end to end: {r['end_to_end_speedup']:.2f}x"]
    lines.append("peak MiB: memory growth during one prefill (CUDA allocator peak; on CPU the resident high-water mark)")
    return "\n".join(lines)
