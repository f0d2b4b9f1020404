"""The measurements of `llava-aim bench`: language-model prefill, end-to-end prefill, AIM's own
overhead, and the layer-by-layer overhead at a shape too large to run whole.

Every timed call goes through :mod:`llava.bench.timers` (CUDA events / perf_counter), every
memory figure through :class:`~llava.bench.memory.PeakMemory` and every KV figure through
:mod:`llava.bench.kv`: the same code the lmms-eval plugin uses for its per-sample figures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import statistics
from typing import Any, Callable, Dict, List, Optional

import torch

from llava.aim.config import AIMConfig
from llava.aim.merge import merged_token_count
from llava.aim.policy import reduction_of
from llava.aim.reduce import reduce_frames
from llava.aim.schedule import policy_visual_tokens
from llava.bench.cases import DECODE_STEPS, PrefillCase
from llava.bench.kv import output_cache_bytes
from llava.bench.memory import PeakMemory
from llava.bench.models import attention_backend
from llava.bench.timers import Clock, interleaved, median_ms, sync, time_call

VISUAL_ID = 5  # any id: the LM-only benchmark marks visual positions itself


def time_decode(lm, prefill_output, device, steps: int = DECODE_STEPS,
                prompt_positions: Optional[torch.Tensor] = None) -> float:
    """Seconds for ``steps`` one-token decode steps on the KV cache a prefill returned (the
    same token each step: the cost of a step does not depend on which). ``prompt_positions``:
    the prompt's M-RoPE ids (3, 1, S), continued by one per step; None: the decoder's own."""
    from llava.model.language_model.compat import cache_kwargs, output_cache

    cache = cache_kwargs(lm, output_cache(prefill_output))
    token = torch.full((1, 1), 7, dtype=torch.long, device=device)

    def decode():
        with torch.inference_mode():
            for i in range(steps):
                extra = {} if prompt_positions is None else {"position_ids": prompt_positions[..., -1:] + 1 + i}
                lm(input_ids=token, use_cache=True, **cache, **extra)

    return time_call(decode, device)


@contextlib.contextmanager
def timed_importance(device: torch.device):
    """Collect the wall time of every importance computation inside the block.

    An instrument for separate runs only (it synchronizes the device around each score).
    """
    from llava.model.language_model import driver

    original = driver.ImportanceProbe.observe
    spent: List[float] = []

    def observe(self, *args, **kwargs):
        sync(device)
        clock = Clock(device)
        clock.mark("start")
        try:
            return original(self, *args, **kwargs)
        finally:
            clock.mark("end")
            spent.append(clock.ms("start", "end") / 1e3)

    driver.ImportanceProbe.observe = observe
    try:
        yield spent
    finally:
        driver.ImportanceProbe.observe = original


def prompt_ids(visual: int, text: int, device):
    """System text, then the visual block, then the question: [t/2 text][visual][t - t/2 text]."""
    head = text // 2
    ids = torch.full((1, visual + text), 7, dtype=torch.long, device=device)
    ids[0, head : head + visual] = VISUAL_ID
    return ids


def mrope_prompt_positions(text: int, groups: int, per_group: int, cols: int, device) -> torch.Tensor:
    """(3, 1, S) M-RoPE position ids (temporal, row, column) for :func:`prompt_ids`' layout with
    a video of ``groups`` temporal groups of ``per_group`` tokens on a grid ``cols`` wide.

    As the stock M-RoPE ``get_rope_index`` places an unmerged video: text before it counts
    0, 1, ... in all three rows; the token at cell i of group g sits at start + (g, i // cols,
    i % cols); the text after it continues past the largest visual position. A merged group of
    k tokens takes its grid's first k cells (the placement the M-RoPE adapters use before they
    know the merge destinations). Rotary embeddings cost the same whatever the values, so
    these stand in for the destination positions a real run computes.
    """
    head = text // 2
    cell = torch.arange(per_group).repeat(groups)
    group = torch.arange(groups).repeat_interleave(per_group)
    visual = torch.stack([group, cell // cols, cell % cols]) + head
    after = int(visual.max()) + 1 if visual.numel() else head
    before = torch.arange(head).expand(3, -1)
    tail = torch.arange(after, after + text - head).expand(3, -1)
    return torch.cat([before, visual, tail], dim=1)[:, None].to(device)


PositionsFn = Callable[[PrefillCase], Optional[torch.Tensor]]


def _measure_peak_memory(cases: List[PrefillCase], once, device: torch.device) -> None:
    """One extra, untimed run per case inside :class:`PeakMemory`."""
    for case in cases:
        memory = PeakMemory(device)
        once(case, memory)
        case.peak_memory_bytes = memory.peak


def _backend(case: PrefillCase, lm):
    """The case's attention backend for the block (the model's own when the case names none)."""
    if case.attn is None or case.attn == lm.config._attn_implementation:
        return contextlib.nullcontext()
    return attention_backend(lm, case.attn)


def run_prefill_benchmark(lm, cases: List[PrefillCase], repeats: int = 5, warmup: int = 1, progress=None,
                          measure_memory: bool = True, positions: Optional[PositionsFn] = None) -> List[PrefillCase]:
    """Language model alone: time the prefill of each case; medians over interleaved rounds.

    ``positions(case)``: the position ids to pass (M-RoPE models: (3, 1, S)); None: the
    decoder's own. A removal case's tokens per layer are those the runtime recorded."""
    from llava.model.runtime import AIMRuntime, install_pruning

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
        ids = prompt_ids(case.visual_tokens, case.text_tokens, device)
        extra = _position_kwargs(positions, case)
        outputs = []
        with _backend(case, lm):
            if runtime is not None:
                install_pruning(lm, runtime)
                runtime.set_visual_mask(ids)
            try:
                def prefill():
                    with torch.inference_mode():
                        outputs.append(lm(input_ids=ids, use_cache=True, **extra))

                with memory or contextlib.nullcontext():
                    elapsed = time_call(prefill, device)
                case.kv_cache_bytes = output_cache_bytes(outputs[0])
                if memory is None:  # decoding after this prefill, on its (pruned) KV cache
                    case.decode_times_s.append(time_decode(lm, outputs[0], device,
                                                           prompt_positions=extra.get("position_ids")))
                if runtime is not None and case.cfg.pruning_mode == "remove" and runtime.stats.layer_seq_lens:
                    case.tokens_per_layer = [int(n) for n in runtime.stats.layer_seq_lens]
                return elapsed
            finally:
                if runtime is not None:
                    runtime.uninstall()  # also restores the stock attention implementation

    interleaved(cases, once, repeats, warmup, progress)
    for case in cases:
        case.decode_times_s = case.decode_times_s[warmup:]  # the warm-up rounds decoded too
    if measure_memory:
        _measure_peak_memory(cases, once, device)
    return cases


def _position_kwargs(positions: Optional[PositionsFn], case: PrefillCase) -> Dict[str, torch.Tensor]:
    ids = positions(case) if positions is not None else None
    return {} if ids is None else {"position_ids": ids}


def measure_lm_overhead(lm, case: PrefillCase, frames: int, tokens_per_frame: int, repeats: int = 3,
                        positions: Optional[PositionsFn] = None) -> Dict[str, float]:
    """AIM's own cost for one case: importance inside instrumented prefills (median total per
    prefill) and merging of frames x tokens_per_frame features of the LM's width (median;
    for a family merging temporal groups, frames are those groups, each merged alone as the adapter does)."""
    from llava.model.runtime import AIMRuntime, install_pruning

    device = next(lm.parameters()).device
    dtype = next(lm.parameters()).dtype
    importance = []
    if case.cfg.pruning:
        runtime = AIMRuntime(case.cfg, [VISUAL_ID])
        ids = prompt_ids(case.visual_tokens, case.text_tokens, device)
        extra = _position_kwargs(positions, case)
        for _ in range(repeats):
            install_pruning(lm, runtime)
            runtime.set_visual_mask(ids)
            try:
                with timed_importance(device) as spent, torch.inference_mode():
                    lm(input_ids=ids, use_cache=True, **extra)
            finally:
                runtime.uninstall()
            importance.append(sum(spent))
    return {
        "importance_ms": 1e3 * statistics.median(importance) if importance else 0.0,
        "merging_ms": merging_ms(case.cfg, frames, tokens_per_frame, lm.config.hidden_size, device, dtype, repeats),
    }


def merging_ms(cfg: AIMConfig, frames: int, tokens_per_frame: int, width: int, device: torch.device,
               dtype: torch.dtype, repeats: int) -> float:
    """Merging of frames x tokens_per_frame random features of the given width (0 without merging)."""
    if not cfg.merging:
        return 0.0
    gen = torch.Generator(device="cpu").manual_seed(0)
    feats = torch.randn(frames, tokens_per_frame, width, generator=gen).to(device, dtype)
    return median_ms(lambda: reduce_frames(feats, cfg), device, repeats)  # the runtime's own call, count rule included


def measure_method_overhead(lm, case: PrefillCase, frames: int, tokens_per_frame: int, repeats: int = 3,
                            positions: Optional[PositionsFn] = None) -> Dict[str, Optional[float]]:
    """A method's own cost, measured apart from its timed prefills: its score inside instrumented
    prefills (as AIM's importance) and its reduction before the LLM on random frames
    (:func:`reduction_ms`; None where the reduction cannot run on frames alone)."""
    device, dtype = next(lm.parameters()).device, next(lm.parameters()).dtype
    importance = 0.0
    if case.cfg.pruning:  # the score alone: the reduction is timed below, on its own inputs
        scored = dataclasses.replace(case, cfg=case.cfg.replace(retention=1.0))
        importance = measure_lm_overhead(lm, scored, frames, tokens_per_frame, repeats, positions)["importance_ms"]
    return {"importance_ms": importance,
            "reduction_ms": reduction_ms(case.cfg, frames, tokens_per_frame, lm.config.hidden_size, device, dtype,
                                         repeats)}


def reduction_ms(cfg: AIMConfig, frames: int, tokens_per_frame: int, width: int, device: torch.device,
                 dtype: torch.dtype, repeats: int) -> Optional[float]:
    """The registered reduction of ``cfg`` on frames x tokens_per_frame random features (median ms):
    a frames-only reduction through reduce_frames (the runtime's call); one that takes a FramesIn
    (llava.aim.frames: one argument) with the random vision attention and keys it needs. 0 when it
    keeps every token; None when it runs only inside a vision tower's hook (PruMerge: the tower's
    CLS attention and keys)."""
    from llava.aim.registry import lookup
    from llava.bench.cases import llm_visual_tokens

    if llm_visual_tokens(cfg, frames, tokens_per_frame) >= frames * tokens_per_frame:
        return 0.0
    entry = lookup(reduction_of(cfg), "reduction")
    gen = torch.Generator(device="cpu").manual_seed(0)
    feats = torch.randn(frames, tokens_per_frame, width, generator=gen).to(device, dtype)
    params = [p for p in inspect.signature(entry.fn).parameters.values()
              if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(params) == 1:  # fn(FramesIn) -> FramesOut
        frames_in = _frames_in(cfg, entry, feats, gen)
        return median_ms(lambda: entry.fn(frames_in), device, repeats)
    if entry.needs == {"frames"}:
        return median_ms(lambda: reduce_frames(feats, cfg), device, repeats)
    return None


def _frames_in(cfg: AIMConfig, entry, feats: torch.Tensor, gen: torch.Generator):
    from llava.aim.frames import FramesIn  # the pre-LLM stage's input (the contract of issue 21)

    f, t, _ = feats.shape
    side = math.isqrt(t)
    extra = {}
    if "vision_attention" in entry.needs:
        extra = dict(attention=torch.rand(f, t, generator=gen).softmax(-1).to(feats.device),
                     keys=torch.randn(f, t, 64, generator=gen).to(feats.device, feats.dtype))
    return FramesIn(cfg=cfg, tokens=feats, grid=(side, t // side) if side * (t // side) == t else (1, t), **extra)


def measure_layerwise(text_config, cfg: AIMConfig, frames: int, tokens_per_frame: int, text_tokens: int,
                      device, dtype, repeats: int = 3, newline: int = 1, progress=None) -> Dict[str, Any]:
    """AIM's overhead at a model shape too large to run whole here (a 7B decoder in float32 needs
    ~30 GB), measured part by part.

    One decoder layer of ``text_config`` (random weights; an M-RoPE family: its own layer and
    M-RoPE embedding, ``frames`` its temporal groups) is timed at every distinct token
    count N_j of the AIM schedule; PageRank importance (the function the driver calls) on
    random post-RoPE queries and keys of that layer's shape at every scoring layer's N_j;
    merging on frames x tokens_per_frame features of the model's width. Every part is the
    median of ``repeats`` timed calls after one warm-up. The AIM prefill is the sum over the
    layers of its layer time plus its importance. Costs do not depend on the weights' values;
    left out: embeddings, final norm, lm_head (one token), and the KV-cache writes.
    """
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
    layer_cls, rotary_cls, mrope = decoder_layer_classes(text_config)
    torch.manual_seed(0)
    with torch.device(device):
        layer = layer_cls(text_config, layer_idx=0).to(dtype).eval()
        rotary = rotary_cls(text_config)

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
        if mrope:  # (3, 1, n): the layer's cost does not depend on the values
            position_ids = position_ids[None].expand(3, -1, -1)
        with torch.inference_mode():
            cos_sin = rotary(hidden, position_ids)
            # M-RoPE layers take no position ids (their text model passes None for unpacked ids)
            layer_positions = None if mrope else position_ids
            layer_ms[n] = median_ms(lambda: layer(hidden, attention_mask=None, position_ids=layer_positions,
                                                  position_embeddings=cos_sin), device, repeats)
        step()
    importance_ms: Dict[int, float] = {}
    for j in scoring:
        n = tokens[j]
        gen = torch.Generator(device="cpu").manual_seed(j)
        q = torch.randn(1, heads, n, head_dim, generator=gen).to(device, dtype)
        k = torch.randn(1, kv_heads, n, head_dim, generator=gen).to(device, dtype)
        valid = torch.ones(1, n, dtype=torch.bool, device=device)
        importance_ms[j] = median_ms(lambda: pagerank_importance(q, k, valid, head_dim**-0.5, cfg.pagerank_tau,
                                                                 cfg.pagerank_iters, cfg.importance_memory_mb << 20),
                                     device, repeats)
        step()
    merge_ms = merging_ms(cfg, frames, tokens_per_frame, text_config.hidden_size, device, dtype, repeats)
    step()
    layers_ms = sum(layer_ms[n] for n in tokens)
    overhead_ms = sum(importance_ms.values()) + merge_ms
    aim_prefill_ms = layers_ms + sum(importance_ms.values())
    return {
        "tokens_per_layer": tokens, "scoring_layers": list(scoring),
        "layer_ms": {str(n): ms for n, ms in layer_ms.items()},
        "importance_ms": {str(j): ms for j, ms in importance_ms.items()},
        "merging_ms": merge_ms, "layers_ms": layers_ms, "aim_prefill_ms": aim_prefill_ms,
        "overhead_ms": overhead_ms,
        # same definition as the whole-model measurement: (importance + merging) / (prefill + merging)
        "fraction": overhead_ms / (aim_prefill_ms + merge_ms),
        "repeats": repeats,
    }


def decoder_layer_classes(text_config):
    """(decoder layer class, rotary embedding class, whether positions are 3-D M-RoPE (3, B, S))
    of a decoder config: the classes of the transformers model ``AutoModel`` builds for it (its
    decoder layer, and the rotary embedding of the same modeling module)."""
    import sys

    from transformers import AutoModel

    model_cls = AutoModel._model_mapping[type(text_config)]
    module = sys.modules[model_cls.__module__]
    layer_name = next(n for n in model_cls._no_split_modules if n.endswith("DecoderLayer"))
    rotary = getattr(module, layer_name[: -len("DecoderLayer")] + "RotaryEmbedding")
    rope = getattr(text_config, "rope_parameters", None) or {}
    return getattr(module, layer_name), rotary, "mrope_section" in rope


def end_to_end_inputs(model, processor, cases: List[PrefillCase], video, text: str,
                      processor_kwargs: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """{case name: the processor's batch} for the video prompt, each made with that case's AIM
    patch (merging changes the number of placeholders); ``processor_kwargs``: what the family's
    processor needs beside the pre-sampled frames (the adapter's ``plugin_input_kwargs``, as run
    and the plugin pass it). Sets each case's ``text_tokens``."""
    from llava.model.runtime import apply_aim, remove_aim

    device = next(model.parameters()).device
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs: Dict[str, Any] = {}
    for case in cases:
        if case.cfg is not None:
            apply_aim(model, processor, case.cfg)
        try:
            batch = processor(text=prompt, videos=[video], return_tensors="pt", **(processor_kwargs or {})).to(device)
        finally:
            if case.cfg is not None:
                remove_aim(model, processor)
        batch["pixel_values_videos"] = batch["pixel_values_videos"].to(model.dtype)
        inputs[case.name] = batch
        case.text_tokens = int(batch["input_ids"].shape[1]) - case.visual_tokens
    return inputs


def run_end_to_end_benchmark(model, processor, cases: List[PrefillCase], video, text: str, repeats: int = 5,
                             warmup: int = 1, progress=None, measure_memory: bool = True,
                             processor_kwargs: Optional[Dict[str, Any]] = None) -> List[PrefillCase]:
    """Whole model from preprocessed pixels to the prefill's last-token logits, per case.

    The processor runs outside the timed region (:func:`end_to_end_inputs`).
    """
    from llava.model.families import family_of
    from llava.model.runtime import apply_aim, remove_aim

    device = next(model.parameters()).device
    lm = family_of(model).inner(model).language_model
    inputs = end_to_end_inputs(model, processor, cases, video, text, processor_kwargs)

    def once(case: PrefillCase, memory: Optional[PeakMemory] = None) -> float:
        outputs = []
        with _backend(case, lm):
            if case.cfg is not None:
                apply_aim(model, processor, case.cfg)
            try:
                def prefill():
                    with torch.inference_mode():
                        outputs.append(model(**inputs[case.name], use_cache=True, logits_to_keep=1))

                with memory or contextlib.nullcontext():
                    elapsed = time_call(prefill, device)
                case.kv_cache_bytes = output_cache_bytes(outputs[0])
                if case.cfg is not None and case.cfg.pruning_mode == "remove" and model.aim_stats.layer_seq_lens:
                    case.tokens_per_layer = list(model.aim_stats.layer_seq_lens)
                return elapsed
            finally:
                if case.cfg is not None:
                    remove_aim(model, processor)

    interleaved(cases, once, repeats, warmup, progress)
    num_layers = model.config.text_config.num_hidden_layers
    for case in cases:
        if not case.tokens_per_layer:  # stock forward or mask mode: every token in every layer
            case.tokens_per_layer = [case.visual_tokens + case.text_tokens] * num_layers
    if measure_memory:
        _measure_peak_memory(cases, once, device)
    return cases
