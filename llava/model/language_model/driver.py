"""The decoder driver: runs the stock decoder layers and prunes visual tokens between them.

One driver serves Qwen2Model (LLaVA-OneVision) and LlamaModel (LLaVA-1.5): both are
``embed -> rotary_emb -> layers -> norm`` with identical layer signatures. The driver replaces
only the loop. After each pruning layer j (docs/method.md) it scores the present tokens with the
importance computed inside layer j's attention (see attention.py), keeps every text token and
the schedule's number of visual tokens, and either

* "remove": gathers the survivors (hidden states, RoPE cos/sin, visual flags), so every later
  layer, its KV cache and its attention really shrink; or
* "mask": keeps every token but hides the pruned ones as keys (the official code's behaviour,
  used as the reference in tests and benchmarks).

Survivors keep their order and their original RoPE positions. Rows of a batch with different
survivor counts are left-padded with dead slots; each layer's "alive" key mask is kept on the
KV cache so decoding sees exactly the tokens each layer kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch
from transformers.cache_utils import DynamicCache

from llava.aim.config import AIMConfig
from llava.aim.importance import (
    attention_importance,
    compact_left,
    last_token_attention,
    log_first_step_attention,
    pagerank_importance,
    random_scores,
    select_survivors,
    tie_counts,
)
from llava.aim.policy import score_of
from llava.aim.schedule import policy_visual_tokens
from llava.errors import CacheIntegrityError, UnsupportedUsageError
from llava.model.language_model import compat
from llava.model.language_model.attention import stock_backend_name

_UNSUPPORTED_KWARGS = ("output_attentions", "output_hidden_states")
# What a family adds to the hidden states after some layers (families/base.py LayerAdditions:
# ``.apply(layer, h, slot, alive)`` and the ``.stock_kwargs`` it stands for).
LAYER_ADDITIONS_KWARG = "aim_layer_additions"


@dataclass
class PrunedCacheState:
    """What decoding needs to know about a pruned prefill, stored on the KV cache."""

    alive: List[torch.Tensor]  # per layer, (B, kv_len_j) bool: keys this layer may attend
    seen_tokens: int  # original (unpruned) sequence length so far: next RoPE position
    # (B,) filler placeholders dropped before layer 0 (PruMerge); positions skip them, as in
    # the official variable-length splice. None when there were none.
    position_offset: Optional[torch.Tensor] = None


@dataclass
class PrefillRecord:
    layer_seq_lens: List[int] = field(default_factory=list)
    layer_seq_lens_per_sample: List[List[int]] = field(default_factory=list)
    visual_tokens_per_layer: List[List[int]] = field(default_factory=list)
    # Only when the runtime tracks sources (else None, no cost): per layer, per sample, the
    # original sequence positions of the visual tokens entering that layer.
    visual_positions: Optional[List[List[torch.Tensor]]] = None
    # One entry per ranked pruning layer: how many visual scores were exactly 0 and how many
    # survivors a tie decided (per sample), and which rule broke the ties.
    score_ties: List[dict] = field(default_factory=list)


ATTENTION_SCORES = ("pagerank", "attention", "last_token")  # need the layer's q/k (a probe)


class ImportanceProbe:
    """Receives (query, key) inside one layer's attention and scores the present tokens
    with the policy's score (llava.aim.policy.score_of)."""

    def __init__(self, cfg: AIMConfig, valid: torch.Tensor):
        self.cfg = cfg
        self.valid = valid
        self.scores: Optional[torch.Tensor] = None
        self._qk = None  # (query, key, scaling), kept only for the log-domain tie-break

    def observe(self, module, query: torch.Tensor, key: torch.Tensor) -> None:
        budget = self.cfg.importance_memory_mb << 20
        score = score_of(self.cfg)
        if self.cfg.tie_break == "log_attention":
            self._qk = (query, key, module.scaling)
        if score == "pagerank":
            self.scores = pagerank_importance(
                query, key, self.valid, module.scaling, self.cfg.pagerank_tau, self.cfg.pagerank_iters, budget
            )
        elif score == "last_token":
            self.scores = last_token_attention(query, key, self.valid, module.scaling)
        else:
            self.scores = attention_importance(query, key, self.valid, module.scaling, budget)

    def tie_scores(self) -> Optional[torch.Tensor]:
        """The tie-break key of AIMConfig.tie_break "log_attention" (None without one)."""
        if self._qk is None:
            return None
        query, key, scaling = self._qk
        tau = self.cfg.pagerank_tau if score_of(self.cfg) == "pagerank" else 1.0
        return log_first_step_attention(query, key, self.valid, scaling, tau, self.cfg.importance_memory_mb << 20)


def scores_without_attention(cfg: AIMConfig, visual_index: torch.Tensor, layer: int) -> torch.Tensor:
    """Scores that need no attention: the random control's hash; VTW's none (all dropped)."""
    if score_of(cfg) == "random":
        return random_scores(visual_index, cfg.seed, layer)
    return torch.zeros(visual_index.shape, dtype=torch.float32, device=visual_index.device)


def layer_attention_mask(backend: str, alive: torch.Tensor, q_len: int, dtype: torch.dtype):
    """Mask for one layer: causal over the layer's keys, restricted to ``alive`` keys.

    alive: (B, K) bool over the layer's keys (cache included); the queries are the last q_len.
    Every query also sees itself, so no row is empty (padding rows, masked-out tokens).
    """
    backend = stock_backend_name(backend)
    all_alive = bool(alive.all())
    if backend.startswith("flash"):
        return None if all_alive else alive.to(torch.int32)
    k_len = alive.shape[1]
    if backend == "sdpa" and all_alive and (q_len == 1 or q_len == k_len):
        return None  # SDPA's own is_causal path (or full attention for one new token)
    q_pos = torch.arange(k_len - q_len, k_len, device=alive.device)[:, None]
    k_pos = torch.arange(k_len, device=alive.device)[None, :]
    allowed = ((k_pos <= q_pos) & alive[:, None, :]) | (k_pos == q_pos)  # (B, Q, K)
    allowed = allowed[:, None]
    if backend == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=alive.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min
    )


def kv_length(cache, layer: int) -> int:
    """Tokens held by one layer's KV cache (0 for a layer the cache has not seen yet)."""
    layers = getattr(cache, "layers", None)
    if layers is None or layer >= len(layers):
        return 0
    return int(layers[layer].get_seq_length())


def check_kv_length(cache, layer: int, expected: int, when: str) -> None:
    """Refuse to go on when a layer did not write exactly the tokens it processed.

    A layer that ignores the cache (e.g. an upstream keyword rename) would otherwise make
    generate() decode every new token without context: a silently wrong answer.
    """
    found = kv_length(cache, layer)
    if found != expected:
        raise CacheIntegrityError(
            f"after the {when}, layer {layer}'s KV cache holds {found} tokens but {expected} entered it: "
            f"this transformers ({compat.TRANSFORMERS_VERSION}) did not write the cache as llava-aim expects; "
            "install the tested versions (make install, or pip install -c constraints/lock.txt -e .) "
            "and report the release at the project's issue tracker"
        )


class DecoderDriver:
    """Replaces ``forward`` of a Qwen2Model / LlamaModel instance (see ``install``)."""

    def __init__(self, lm, cfg: AIMConfig, runtime):
        self.lm = lm
        self.cfg = cfg
        self.runtime = runtime  # holds the visual-token mask of the current call and the stats
        self.stock_forward = lm.forward

    def install(self) -> None:
        self.lm.forward = self.forward

    def uninstall(self) -> None:
        if self.lm.__dict__.get("forward") == self.forward:
            del self.lm.forward

    # ------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        use_cache=None,
        **kwargs,
    ):
        cache = compat.pop_cache(kwargs)  # callers spell it cache= or past_key_values=
        additions = kwargs.pop(LAYER_ADDITIONS_KWARG, None)
        visual = self.runtime.take_visual_mask()
        if use_cache is None:
            use_cache = self.lm.config.use_cache  # as the stock forward's config defaults
        state = getattr(cache, "aim_state", None) if cache is not None else None
        has_visual = visual is not None and bool(visual.any())
        if state is None and not has_visual:
            # No visual token and no pruned cache: exactly the stock model.
            return self.stock_forward(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                inputs_embeds=inputs_embeds, use_cache=use_cache, **compat.cache_kwargs(self.lm, cache), **kwargs,
                **(additions.stock_kwargs if additions is not None else {}),
            )
        for name in _UNSUPPORTED_KWARGS:
            if kwargs.get(name):
                raise UnsupportedUsageError(f"{name}=True is not supported while AIM prunes tokens")
        if inputs_embeds is None:
            inputs_embeds = self.lm.embed_tokens(input_ids)
        if isinstance(attention_mask, dict) or (attention_mask is not None and attention_mask.dim() != 2):
            raise UnsupportedUsageError(
                "AIM pruning needs a 2D padding mask (batch, length); prepared 4D masks are not supported"
            )
        if state is not None:
            if has_visual:
                raise UnsupportedUsageError(
                    "visual tokens after a pruned prefill (chunked prefill or a second image in a later turn) "
                    "are not supported: AIM prunes the whole prompt at once; start a new cache"
                )
            return self._decode(inputs_embeds, position_ids, cache, state, use_cache, kwargs)
        if cache is not None and cache.get_seq_length() > 0:
            raise UnsupportedUsageError(
                "chunked prefill (a prompt with visual tokens on top of a non-empty cache) is not supported "
                "with AIM pruning; pass the whole prompt at once"
            )
        return self._prefill(inputs_embeds, attention_mask, position_ids, cache, use_cache, visual, kwargs, additions)

    # ------------------------------------------------------------------------------------
    def _prefill(self, h, attention_mask, position_ids, cache, use_cache, visual, kwargs, additions=None):
        lm, cfg = self.lm, self.cfg
        bsz, seq_len, _ = h.shape
        num_layers = len(lm.layers)
        backend = lm.config._attn_implementation
        if use_cache and cache is None:
            cache = DynamicCache(config=lm.config)
        alive = torch.ones(bsz, seq_len, dtype=torch.bool, device=h.device)
        if attention_mask is not None:
            alive = attention_mask.to(device=h.device, dtype=torch.bool)
        visual = visual.to(h.device) & alive
        if position_ids is None:
            position_ids = torch.arange(seq_len, device=h.device).unsqueeze(0)
        offset = None
        arrived = self.runtime.take_arrival_mask()
        if arrived is not None:
            # Filler placeholders of a data-dependent reduction (PruMerge) never enter: later
            # tokens take contiguous positions, as if the prompt had been spliced without them.
            fillers = alive & ~arrived.to(h.device)
            alive, visual = alive & ~fillers, visual & ~fillers
            position_ids = position_ids - fillers.cumsum(dim=1)
            offset = fillers.sum(dim=1)
        cos, sin = lm.rotary_emb(h, position_ids)
        cos, sin = cos.expand(bsz, -1, -1), sin.expand(bsz, -1, -1)

        v0 = visual.sum(dim=1).tolist()
        schedule = [policy_visual_tokens(cfg, int(v), num_layers) for v in v0]
        counts = torch.tensor(schedule, dtype=torch.long, device=h.device)  # (B, L)
        slot = torch.arange(seq_len, device=h.device).expand(bsz, -1)  # original index of each slot
        visual_index = visual.cumsum(dim=1) - 1  # index among the sample's visual tokens (random control)
        needs_probe = score_of(cfg) in ATTENTION_SCORES
        record = PrefillRecord(visual_positions=[] if getattr(self.runtime, "track_sources", False) else None)
        if offset is not None and cfg.pruning_mode == "remove" and bool(offset.any()):
            index, alive = compact_left(alive)  # the fillers leave before layer 0
            h = h.gather(1, index[..., None].expand(-1, -1, h.shape[-1]))
            cos = cos.gather(1, index[..., None].expand(-1, -1, cos.shape[-1]))
            sin = sin.gather(1, index[..., None].expand(-1, -1, sin.shape[-1]))
            visual = visual.gather(1, index) & alive
            slot = slot.gather(1, index)
        layer_alive: List[torch.Tensor] = []
        for j, layer in enumerate(lm.layers):
            per_sample = alive.sum(dim=1).tolist()
            record.layer_seq_lens.append(int(max(per_sample)))
            record.layer_seq_lens_per_sample.append([int(n) for n in per_sample])
            record.visual_tokens_per_layer.append([int(n) for n in visual.sum(dim=1).tolist()])
            if record.visual_positions is not None:
                record.visual_positions.append([slot[b][visual[b]] for b in range(bsz)])
            layer_alive.append(alive)
            prune = j + 1 < num_layers and bool((counts[:, j + 1] < counts[:, j]).any())
            # Dropping every remaining visual token needs no ranking: skip the score there.
            ranked = prune and bool((counts[:, j + 1] > 0).any())
            probe = ImportanceProbe(cfg, alive) if ranked and needs_probe else None
            extra = {"aim_probe": probe} if probe is not None else {}
            h = layer(
                h,
                attention_mask=layer_attention_mask(backend, alive, h.shape[1], h.dtype),
                position_embeddings=(cos, sin),
                position_ids=None,  # gapped positions would look like packed sequences
                use_cache=use_cache,
                **compat.cache_kwargs(layer, cache),
                **kwargs,
                **extra,
            )
            if use_cache:
                check_kv_length(cache, j, h.shape[1], "prefill")
            if additions is not None:  # e.g. Qwen3-VL's DeepStack rows, on the visual tokens still present
                h = additions.apply(j, h, slot, alive)
            if not prune:
                continue
            if not ranked:
                scores = torch.zeros(alive.shape, dtype=torch.float32, device=alive.device)
            elif probe is None:
                scores = scores_without_attention(cfg, visual_index.gather(1, slot), j)
            elif probe.scores is None:
                raise RuntimeError(f"layer {j} did not run the AIM attention wrapper; was apply_aim bypassed?")
            else:
                scores = probe.scores
            keep = select_survivors(scores, visual, alive, counts[:, j + 1])
            if ranked:
                zero, decided = tie_counts(scores, visual, alive, keep)
                rule = "index"
                if any(decided) and probe is not None and cfg.tie_break != "index":
                    keep = select_survivors(scores, visual, alive, counts[:, j + 1], probe.tie_scores())
                    rule = cfg.tie_break
                record.score_ties.append({"layer": j, "candidates": (visual & alive).sum(dim=1).tolist(),
                                          "zero_scores": zero, "tie_decided": decided, "tie_rule": rule})
            if cfg.pruning_mode == "mask":
                alive, visual = keep, visual & keep
                continue
            index, alive = compact_left(keep)
            h = h.gather(1, index[..., None].expand(-1, -1, h.shape[-1]))
            cos = cos.gather(1, index[..., None].expand(-1, -1, cos.shape[-1]))
            sin = sin.gather(1, index[..., None].expand(-1, -1, sin.shape[-1]))
            visual = visual.gather(1, index) & alive
            slot = slot.gather(1, index)

        h = lm.norm(h)
        # Back to the original length; pruned positions get zero hidden states (their logits
        # are not meaningful: those tokens left the computation).
        out = h.new_zeros(bsz, seq_len + 1, h.shape[-1])
        target = torch.where(alive, slot, torch.full_like(slot, seq_len))
        out.scatter_(1, target[..., None].expand(-1, -1, h.shape[-1]), h)
        out = out[:, :seq_len]
        if use_cache:
            cache.aim_state = PrunedCacheState(alive=layer_alive, seen_tokens=seq_len, position_offset=offset)
        self.runtime.record_prefill(record, cache if use_cache else None)
        return compat.model_output(out, cache if use_cache else None)

    def _decode(self, h, position_ids, cache, state: PrunedCacheState, use_cache, kwargs):
        lm = self.lm
        bsz, q_len, _ = h.shape
        if q_len != 1:
            raise UnsupportedUsageError(
                "after a pruned prefill AIM decodes one token per step; assisted/speculative decoding "
                "and multi-token continuation are not supported"
            )
        if not use_cache:
            raise UnsupportedUsageError("decoding after a pruned prefill needs use_cache=True")
        backend = lm.config._attn_implementation
        if position_ids is None:
            position_ids = torch.arange(q_len, device=h.device).unsqueeze(0) + state.seen_tokens
        if state.position_offset is not None:
            position_ids = position_ids - state.position_offset.to(position_ids.device)[:, None]
        cos, sin = lm.rotary_emb(h, position_ids)
        new = torch.ones(bsz, q_len, dtype=torch.bool, device=h.device)
        for j, layer in enumerate(lm.layers):
            before = state.alive[j].shape[1]
            state.alive[j] = torch.cat([state.alive[j], new], dim=1)
            h = layer(
                h,
                attention_mask=layer_attention_mask(backend, state.alive[j], q_len, h.dtype),
                position_embeddings=(cos, sin),
                position_ids=None,
                use_cache=True,
                **compat.cache_kwargs(layer, cache),
                **kwargs,
            )
            check_kv_length(cache, j, before + q_len, "decode step")
        state.seen_tokens += q_len
        self.runtime.record_decode(cache)
        return compat.model_output(lm.norm(h), cache)
