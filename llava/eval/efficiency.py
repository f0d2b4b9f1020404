"""Efficiency measured inside every evaluation, per sample, with llava.bench's timers, memory and
KV code, reported through lmms-eval's own channels.

For each generate (or loglikelihood forward) the plugin records: the visual tokens before and
after merging, the sum over decoder layers of the tokens entering them, the prefill time (the
model's first forward: vision tower, projector, merging and the LLM prefill; CUDA events on GPU,
perf_counter on CPU), the time to the first token, the decode rate, peak memory growth and the
KV cache after the prefill.

Channels (lmms-eval 0.7.3):

* per sample: a :class:`EfficiencyCounts` (a ``TokenCounts`` whose ``to_dict`` also carries
  the figures) in ``GenerationResult.token_counts``; lmms-eval writes it into each sample's
  ``token_counts`` in the samples log, and sums its input/output tokens into
  ``results["efficiency"]``;
* per batch: ``gen_metrics.log_metrics(...)`` with the figures as additional metrics;
  lmms-eval averages them into ``results["throughput"]`` (``avg_prefill_ms`` ...).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Dict, List, Optional

import torch
from lmms_eval.api.instance import TokenCounts

from llava.bench.kv import output_cache_bytes
from llava.bench.memory import PeakMemory
from llava.bench.timers import Clock


@dataclass
class EfficiencyCounts(TokenCounts):
    """lmms-eval's per-request token counts plus this project's efficiency figures."""

    visual_tokens_before_merge: Optional[int] = None
    visual_tokens_after_merge: Optional[int] = None
    sum_tokens_over_layers: Optional[int] = None
    prefill_ms: Optional[float] = None
    time_to_first_token_ms: Optional[float] = None
    decode_tokens_per_s: Optional[float] = None
    peak_memory_bytes: Optional[int] = None
    kv_cache_bytes: Optional[int] = None
    batch_size: Optional[int] = None
    from_resume_journal: Optional[bool] = None

    def to_dict(self) -> Dict[str, object]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, values: Dict[str, object]) -> "EfficiencyCounts":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


class ForwardProbe:
    """Times one ``generate()`` or forward call of a model and records its memory.

    Points: ``start`` (entering the block), ``prefill_start`` / ``prefill_end`` (the model's
    first forward), ``first_token`` (the second forward begins: the first new token has been
    sampled), ``end`` (leaving the block). Hooks on the top-level model; no host
    synchronization inside the block on GPU (CUDA events).
    """

    def __init__(self, model, device) -> None:
        self.model = model
        self.clock = Clock(device)
        self.memory = PeakMemory(device)
        self.forwards = 0
        self.kv_cache_bytes: Optional[int] = None
        self._handles = []

    def _pre(self, module, args, kwargs):
        self.clock.mark("prefill_start" if self.forwards == 0 else "first_token")
        self.forwards += 1

    def _post(self, module, args, kwargs, output):
        if self.forwards == 1:
            self.clock.mark("prefill_end")
            self.kv_cache_bytes = output_cache_bytes(output)

    def __enter__(self) -> "ForwardProbe":
        self._handles = [self.model.register_forward_pre_hook(self._pre, with_kwargs=True),
                         self.model.register_forward_hook(self._post, with_kwargs=True)]
        self.memory.__enter__()
        self.clock.mark("start")
        return self

    def __exit__(self, *exc) -> bool:
        self.clock.mark("end")
        self.memory.__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        return False

    # -- figures ---------------------------------------------------------------------------
    @property
    def prefill_ms(self) -> Optional[float]:
        return self.clock.ms("prefill_start", "prefill_end") if self.clock.has("prefill_end") else None

    @property
    def time_to_first_token_ms(self) -> float:
        return self.clock.ms("start", "first_token" if self.clock.has("first_token") else "end")

    @property
    def decode_ms(self) -> float:
        return self.clock.ms("first_token", "end") if self.clock.has("first_token") else 0.0

    @property
    def total_s(self) -> float:
        return self.clock.ms("start", "end") / 1e3


def visual_counts(model, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> Dict[str, List[int]]:
    """Per sample: visual tokens before / after merging, and the tokens summed over layers."""
    from llava.model.builder import num_decoder_layers
    from llava.model.families import family_of

    ids = input_ids.detach()
    visual = torch.zeros_like(ids, dtype=torch.bool)
    for token in family_of(model).visual_token_ids(model.config):
        visual |= ids == token
    after = visual.sum(dim=1).tolist()  # the processor already emitted the merged count
    lengths = (attention_mask.sum(dim=1) if attention_mask is not None
               else torch.full((ids.shape[0],), ids.shape[1])).tolist()
    batch = ids.shape[0]
    cfg = getattr(model, "aim_config", None)
    stats = getattr(model, "aim_stats", None)
    before = list(after)
    if any(after) and cfg is not None and cfg.enabled and cfg.merging and stats is not None \
            and stats.visual_tokens_before_merge:
        # AIMStats sums over the batch; the plugin batches only inputs of one geometry
        removed = (stats.visual_tokens_before_merge - stats.visual_tokens_after_merge) // batch
        before = [a + removed if a else 0 for a in after]
    layers = num_decoder_layers(model)
    # a prompt without visual tokens runs the stock decoder (and leaves the stats untouched)
    removal = (any(after) and cfg is not None and cfg.enabled and cfg.pruning and cfg.pruning_mode == "remove"
               and stats is not None and len(stats.layer_seq_lens_per_sample) == layers
               and len(stats.layer_seq_lens_per_sample[0]) == batch)
    if removal:
        summed = [sum(layer[b] for layer in stats.layer_seq_lens_per_sample) for b in range(batch)]
    else:  # every token enters every layer (stock model, merging only, mask mode)
        summed = [int(n) * layers for n in lengths]
    return {"before": [int(v) for v in before], "after": [int(v) for v in after], "summed": summed,
            "lengths": [int(n) for n in lengths]}


def generation_counts(model, inputs, new_token_counts: List[int], probe: ForwardProbe) -> List[EfficiencyCounts]:
    """One :class:`EfficiencyCounts` per sample of a generate call measured by ``probe``."""
    counts = visual_counts(model, inputs["input_ids"], inputs.get("attention_mask"))
    batch = len(new_token_counts)
    decode_s = probe.decode_ms / 1e3
    out = []
    for b, new in enumerate(new_token_counts):
        out.append(EfficiencyCounts(
            input_tokens=counts["lengths"][b], output_tokens=int(new),
            visual_tokens_before_merge=counts["before"][b], visual_tokens_after_merge=counts["after"][b],
            sum_tokens_over_layers=counts["summed"][b], prefill_ms=probe.prefill_ms,
            time_to_first_token_ms=probe.time_to_first_token_ms,
            decode_tokens_per_s=(new - 1) / decode_s if new > 1 and decode_s > 0 else None,
            peak_memory_bytes=probe.memory.peak, kv_cache_bytes=probe.kv_cache_bytes, batch_size=batch,
        ))
    return out


def forward_counts(model, inputs, probe: ForwardProbe) -> EfficiencyCounts:
    """Figures of one scoring forward (loglikelihood): no decode, no first token."""
    counts = visual_counts(model, inputs["input_ids"], inputs.get("attention_mask"))
    return EfficiencyCounts(
        input_tokens=counts["lengths"][0], output_tokens=0,
        visual_tokens_before_merge=counts["before"][0], visual_tokens_after_merge=counts["after"][0],
        sum_tokens_over_layers=counts["summed"][0], prefill_ms=probe.prefill_ms,
        peak_memory_bytes=probe.memory.peak, kv_cache_bytes=probe.kv_cache_bytes, batch_size=1,
    )


def log_batch(samples: List[EfficiencyCounts], probe: ForwardProbe) -> None:
    """One entry of lmms-eval's throughput log for a generate call (results["throughput"])."""
    from lmms_eval.models.model_utils.gen_metrics import log_metrics

    tokens = sum(s.output_tokens or 0 for s in samples)
    elapsed = probe.total_s
    first = samples[0]
    extra = {"num_requests": len(samples), "batch_size": len(samples),
             "prefill_ms": first.prefill_ms, "time_to_first_token_ms": first.time_to_first_token_ms,
             "visual_tokens_before_merge": _mean(s.visual_tokens_before_merge for s in samples),
             "visual_tokens_after_merge": _mean(s.visual_tokens_after_merge for s in samples),
             "sum_tokens_over_layers": _mean(s.sum_tokens_over_layers for s in samples),
             "peak_memory_mib": None if first.peak_memory_bytes is None else first.peak_memory_bytes / 2**20,
             "kv_cache_mib": None if first.kv_cache_bytes is None else first.kv_cache_bytes / 2**20}
    decode = probe.decode_ms / 1e3
    decoded = sum(max(0, (s.output_tokens or 0) - 1) for s in samples)
    if decode > 0 and decoded:
        extra["decode_tokens_per_s"] = decoded / decode
    log_metrics(total_elapsed_time=elapsed, total_gen_tokens=tokens,
                avg_speed=tokens / elapsed if elapsed > 0 else 0.0,
                additional_metrics={k: v for k, v in extra.items() if v is not None})


def _mean(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None
