"""The decoder driver: runs the stock decoder layers and prunes visual tokens between them.

One driver serves Qwen2Model (LLaVA-OneVision) and LlamaModel (LLaVA-1.5): both are
``embed -> rotary_emb -> layers -> norm`` with identical layer signatures. The driver replaces
only the loop. After each pruning layer j (docs/method.md) it scores the present tokens (with
layer j's q/k where the score needs them, see attention.py), keeps every text token and
the schedule's number of visual tokens, and either

* "remove": gathers the survivors (hidden states, RoPE cos/sin, visual flags), so every later
  layer, its KV cache and its attention really shrink; or
* "mask": keeps every token but hides the pruned ones as keys (the official code's behaviour,
  used as the reference in tests and benchmarks).

Survivors keep their order and their original RoPE positions. Rows of a batch with different
survivor counts are left-padded with dead slots; each layer's "alive" key mask is kept on the
KV cache so decoding sees exactly the tokens each layer kept.

The score is the config's entry of llava.aim.registry (a probe in the attention when it needs
q/k). The host reads the device once before the layer loop (the prompt's counts: with the
schedule they give every shape and decision, :class:`PrefillPlan`) and once after it (the
statistics, :class:`DeviceStats`); never inside the loop nor in a decode step.

A method with a decode selection (a registry entry of kind "decode", e.g. DyCoke's dynamic KV
pruning) keeps the whole cache; in each decode step the selector ranks the prefill's visual keys
by the step token's attention in layer ``layer - 1`` and layers ``>= layer`` attend only the
visual keys it allows (a per-step key mask, :class:`DecodeRun`), decided on the device. A method
with a registered fold (HoliTom) merges each dropped visual token's hidden state into the kept
ones after the selection, before the gather (both modes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from transformers.cache_utils import DynamicCache

from llava.aim.config import AIMConfig
from llava.aim.importance import (
    compact_left,
    has_nan,
    log_first_step_attention,
    select_survivors,
    step_token_attention,
    tie_count_tensors,
)
from llava.aim.policy import fold_of, score_of, spec
from llava.aim.registry import Entry, FoldInputs, ScoreInputs, lookup
from llava.aim.schedule import policy_visual_tokens
from llava.errors import CacheIntegrityError, UnsupportedUsageError
from llava.model.language_model import compat
from llava.model.language_model.attention import stock_backend_name

_UNSUPPORTED_KWARGS = ("output_attentions", "output_hidden_states")
# What a family adds to the hidden states after some layers (families/base.py LayerAdditions:
# ``.apply(layer, h, slot, alive)`` and the ``.stock_kwargs`` it stands for).
LAYER_ADDITIONS_KWARG = "aim_layer_additions"


class StepProbe:
    """Receives (query, key) of one decode step's layer: the step token's attention."""

    def __init__(self):
        self.seen = None

    def observe(self, module, query: torch.Tensor, key: torch.Tensor) -> None:
        self.seen = (query, key, module.scaling)


@dataclass
class DecodeRun:
    """A decode selection over a prefill's keys (llava.aim.registry kind "decode")."""

    selector: object  # the entry's selector: .layer, .budget(n), .select(attention, visual, kept, state)
    visual: torch.Tensor  # (B, W) bool: the prefill's visual keys (layers >= layer - 1 share them)
    kept: torch.Tensor  # (B,) long: visual keys each sample attends in a decode step
    state: object = None  # what the previous step's select returned
    allowed: Optional[torch.Tensor] = None  # (B, W) bool: this step's attended visual keys

    def key_mask(self, alive: torch.Tensor) -> torch.Tensor:
        """``alive`` (B, K >= W) less the visual keys this step leaves out."""
        width = self.visual.shape[1]
        return torch.cat([alive[:, :width] & (~self.visual | self.allowed), alive[:, width:]], dim=1)

    def observe(self, probe: StepProbe, alive: torch.Tensor) -> None:
        query, key, scaling = probe.seen
        attention = step_token_attention(query, key, alive, scaling)[:, : self.visual.shape[1]]
        self.allowed, self.state = self.selector.select(attention, self.visual, self.kept, self.state)


@dataclass
class PrunedCacheState:
    """What decoding needs to know about a pruned prefill, stored on the KV cache."""

    alive: List[torch.Tensor]  # per layer, (B, kv_len_j) bool: keys this layer may attend
    seen_tokens: int  # original (unpruned) sequence length so far: next RoPE position
    # (B,) filler placeholders dropped before layer 0 (PruMerge); positions skip them, as in
    # the official variable-length splice. None when there were none.
    position_offset: Optional[torch.Tensor] = None
    # per layer, whether every key of the prefill is alive (known on the host: decode steps
    # build their masks without reading the device). None: read from ``alive``.
    full: Optional[List[bool]] = None
    decode: Optional[DecodeRun] = None  # the method's decode selection, None without one


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


def score_entry(cfg: AIMConfig) -> Entry:
    """The registered score of ``cfg`` (llava.aim.registry); an unregistered name raises."""
    return lookup(score_of(cfg), "score")


class ImportanceProbe:
    """Receives (query, key) inside one layer's attention and scores the present tokens with
    the config's registered score, which also sees the layer's visual and text masks."""

    def __init__(self, cfg: AIMConfig, inputs: ScoreInputs):
        self.cfg = cfg
        self.inputs = inputs
        self.scores: Optional[torch.Tensor] = None
        self._qk = None  # (query, key, scaling), kept only for the log-domain tie-break

    def observe(self, module, query: torch.Tensor, key: torch.Tensor) -> None:
        entry = score_entry(self.cfg)
        if self.cfg.tie_break == "log_attention":
            self._qk = (query, key, module.scaling)
        self.scores = entry.fn(dataclasses.replace(self.inputs, query=query, key=key, scaling=module.scaling))

    def tie_scores(self) -> Optional[torch.Tensor]:
        """The tie-break key of AIMConfig.tie_break "log_attention" (None without one)."""
        if self._qk is None:
            return None
        query, key, scaling = self._qk
        tau = self.cfg.pagerank_tau if score_of(self.cfg) == "pagerank" else 1.0
        return log_first_step_attention(query, key, self.inputs.valid, scaling, tau,
                                        self.cfg.importance_memory_mb << 20, all_valid=self.inputs.all_valid,
                                        voters=self.inputs.voters)


@dataclass
class Prompt:
    """The prompt's masks (device) and the counts the driver reads from them, once (host)."""

    alive: torch.Tensor  # (B, S) bool: present tokens (not padding, not PruMerge filler)
    visual: torch.Tensor  # (B, S) bool: present visual tokens
    fillers: Optional[torch.Tensor]  # (B, S) bool filler placeholders, None without any
    any_visual: bool  # any visual placeholder at all (padding and filler included)
    visual_counts: List[int]  # per sample, present visual tokens
    alive_counts: List[int]  # per sample, present tokens
    any_filler: bool
    visual_index: torch.Tensor  # (B, S) each token's index among its sample's visual tokens


def read_prompt(visual: torch.Tensor, attention_mask, arrived: Optional[torch.Tensor]) -> Prompt:
    """The prompt's masks and, in ONE host read, their counts: every later shape and every
    "does this layer prune" decision follows from these counts and the schedule."""
    alive = torch.ones(visual.shape, dtype=torch.bool, device=visual.device)
    if attention_mask is not None and not isinstance(attention_mask, dict) and attention_mask.dim() == 2:
        alive = attention_mask.to(device=visual.device, dtype=torch.bool)
    fillers = None
    if arrived is not None:
        # Filler placeholders of a data-dependent reduction (PruMerge) never enter: later
        # tokens take contiguous positions, as if the prompt had been spliced without them.
        fillers = alive & ~arrived.to(visual.device)
        alive = alive & ~fillers
    present = visual & alive
    rows = [visual.sum(dim=1), present.sum(dim=1), alive.sum(dim=1)]
    if fillers is not None:
        rows.append(fillers.sum(dim=1))
    counts = torch.stack(rows).tolist()  # the one host sync before the layer loop
    return Prompt(alive, present, fillers, sum(counts[0]) > 0, counts[1], counts[2],
                  fillers is not None and sum(counts[3]) > 0, present.cumsum(dim=1) - 1)


@dataclass
class PrefillPlan:
    """Host side of one prefill: the schedule's per-sample visual counts give every tensor
    width, every "all alive" flag and every pruning decision, with no device read."""

    counts: List[List[int]]  # per sample, visual tokens entering each layer
    text: List[int]  # per sample, present non-visual tokens (all survive)
    widths: List[int]  # slots entering each layer (padding and dead slots included)
    full: List[bool]  # every slot entering the layer is alive
    start_width: int  # slots after the fillers leave (remove mode), before layer 0
    kept: Optional[torch.Tensor] = None  # (B, L) the counts on the device, copied once before the loop

    @classmethod
    def of(cls, cfg: AIMConfig, prompt: Prompt, num_layers: int, seq_len: int) -> "PrefillPlan":
        counts = [policy_visual_tokens(cfg, v, num_layers) for v in prompt.visual_counts]
        text = [n - v for n, v in zip(prompt.alive_counts, prompt.visual_counts)]
        remove = cfg.pruning_mode == "remove"
        plan = cls(counts, text, [], [], seq_len, torch.tensor(counts, dtype=torch.long, device=prompt.alive.device))
        width = plan.start_width = max(plan.present(0)) if remove and prompt.any_filler else seq_len
        for j in range(num_layers):
            plan.widths.append(width)
            plan.full.append(all(n == width for n in plan.present(j)))
            if remove and plan.prunes(j):
                width = max(plan.present(j + 1))
        return plan

    def present(self, j: int) -> List[int]:
        """Per sample, tokens present entering layer j: every text token and the schedule's visual."""
        return [t + c[j] for t, c in zip(self.text, self.counts)]

    def prunes(self, j: int) -> bool:
        return any(j + 1 < len(c) and c[j + 1] < c[j] for c in self.counts)

    def fold_widths(self, j: int):
        """(most visual tokens any row keeps, most any row drops) at the drop after layer j."""
        return (max(c[j + 1] for c in self.counts), max(c[j] - c[j + 1] for c in self.counts))

    def ranked(self, j: int) -> bool:
        """Pruning that keeps some visual token needs a ranking (dropping them all needs none)."""
        return self.prunes(j) and any(c[j + 1] > 0 for c in self.counts)


@dataclass
class Tokens:
    """The tokens entering a layer, one row per sample, left-padded with dead slots."""

    h: torch.Tensor  # (B, N, C) hidden states
    cos: torch.Tensor  # (B, N, d) RoPE of each token's original position
    sin: torch.Tensor
    alive: torch.Tensor  # (B, N) bool
    visual: torch.Tensor  # (B, N) bool, present visual tokens
    slot: torch.Tensor  # (B, N) long: each token's index in the original sequence

    def compact(self, keep: torch.Tensor, width: int) -> "Tokens":
        """Only the ``keep`` tokens, gathered left-padded into ``width`` slots (the one gather)."""
        index, alive = compact_left(keep, width)
        rows = [t.gather(1, index[..., None].expand(-1, -1, t.shape[-1])) for t in (self.h, self.cos, self.sin)]
        return Tokens(*rows, alive, self.visual.gather(1, index) & alive, self.slot.gather(1, index))


class DeviceStats:
    """The prefill's statistics, kept as device tensors during the layer loop and read to the
    host once after it (:meth:`materialize`)."""

    def __init__(self, track_positions: bool):
        self.entering: List[torch.Tensor] = []  # per layer (2, B): present, visual
        self.widths: List[int] = []  # per layer, slots entering it (a shape: known on the host)
        self.ties: List[tuple] = []  # (layer, may re-rank, (3, B) candidates/zero/decided)
        self.nan: List[torch.Tensor] = []
        self.masks: Optional[List[tuple]] = [] if track_positions else None  # per layer (slot, visual)

    def enter(self, t: Tokens) -> None:
        self.entering.append(torch.stack([t.alive.sum(dim=1), t.visual.sum(dim=1)]))
        self.widths.append(t.h.shape[1])
        if self.masks is not None:
            self.masks.append((t.slot, t.visual))

    def selection(self, layer: int, t: Tokens, scores, keep, tie_scores, may_rerank: bool) -> None:
        zero, decided = tie_count_tensors(scores, t.visual, t.alive, keep)
        self.ties.append((layer, may_rerank, torch.stack([(t.visual & t.alive).sum(dim=1), zero, decided])))
        self.nan.append(has_nan(scores, tie_scores))

    def materialize(self, cfg: AIMConfig, plan: PrefillPlan) -> PrefillRecord:
        pieces = self.entering + [stats for _, _, stats in self.ties] + [n.reshape(1) for n in self.nan]
        flat = torch.cat([p.reshape(-1).to(torch.long) for p in pieces]).tolist()  # the one sync after the loop
        bsz, layers = len(plan.text), len(self.entering)
        rows = [flat[i : i + bsz] for i in range(0, len(flat) - len(self.nan), bsz)]
        if any(flat[len(flat) - len(self.nan):]):
            raise FloatingPointError("importance scores contain NaN; refusing a NaN-driven selection")
        record = PrefillRecord(visual_positions=None)
        for j in range(layers):
            present, visual = rows[2 * j], rows[2 * j + 1]
            if present != plan.present(j) or visual != [c[j] for c in plan.counts] or self.widths[j] != plan.widths[j]:
                raise RuntimeError(f"layer {j} saw {present} tokens ({visual} visual) in {self.widths[j]} slots, the "
                                   f"schedule says {plan.present(j)} in {plan.widths[j]}: the pruning went wrong")
            record.layer_seq_lens.append(max(present))
            record.layer_seq_lens_per_sample.append(present)
            record.visual_tokens_per_layer.append(visual)
        for i, (layer, may_rerank, _) in enumerate(self.ties):
            candidates, zero, decided = rows[2 * layers + 3 * i : 2 * layers + 3 * i + 3]
            rule = cfg.tie_break if may_rerank and any(decided) else "index"
            record.score_ties.append({"layer": layer, "candidates": candidates, "zero_scores": zero,
                                      "tie_decided": decided, "tie_rule": rule})
        if self.masks is not None:  # only with track_sources: per-layer reads, after the loop
            record.visual_positions = [[slot[b][visual[b]] for b in range(bsz)] for slot, visual in self.masks]
        return record


def layer_attention_mask(backend: str, alive: torch.Tensor, q_len: int, dtype: torch.dtype,
                         all_alive: Optional[bool] = None):
    """Mask for one layer: causal over the layer's keys, restricted to ``alive`` keys.

    alive: (B, K) bool over the layer's keys (cache included); the queries are the last q_len.
    Every query also sees itself, so no row is empty (padding rows, masked-out tokens).
    ``all_alive``: whether every key is alive, when the caller knows it (no device read).
    """
    backend = stock_backend_name(backend)
    if all_alive is None:
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
        arrived = self.runtime.take_arrival_mask()
        if use_cache is None:
            use_cache = self.lm.config.use_cache  # as the stock forward's config defaults
        state = getattr(cache, "aim_state", None) if cache is not None else None
        given = input_ids if input_ids is not None else inputs_embeds
        # One new token on a filled cache is a decode step: a generated token, text whatever its
        # id (the vision side fills placeholders at prefill only), so nothing is read here.
        stepping = given is not None and given.shape[1] == 1 and cache is not None and cache.get_seq_length() > 0
        prompt = None
        if visual is not None and not stepping:
            device = inputs_embeds.device if inputs_embeds is not None else self.lm.embed_tokens.weight.device
            prompt = read_prompt(visual.to(device), attention_mask, arrived)
        has_visual = prompt is not None and prompt.any_visual
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
        return self._prefill(inputs_embeds, prompt, position_ids, cache, use_cache, kwargs, additions)

    # ------------------------------------------------------------------------------------
    def _prefill(self, h, prompt: Prompt, position_ids, cache, use_cache, kwargs, additions=None):
        lm, cfg = self.lm, self.cfg
        bsz, seq_len, _ = h.shape
        plan = PrefillPlan.of(cfg, prompt, len(lm.layers), seq_len)  # host side: no device read from here on
        if use_cache and cache is None:
            cache = DynamicCache(config=lm.config)
        if position_ids is None:
            position_ids = torch.arange(seq_len, device=h.device).unsqueeze(0)
        if prompt.fillers is not None:
            position_ids = position_ids - prompt.fillers.cumsum(dim=1)  # later tokens close the gap
        cos, sin = (x.expand(bsz, -1, -1) for x in lm.rotary_emb(h, position_ids))
        slot = torch.arange(seq_len, device=h.device).expand(bsz, -1)  # original index of each slot
        t = Tokens(h, cos, sin, prompt.alive, prompt.visual, slot)
        if prompt.any_filler and cfg.pruning_mode == "remove":
            t = t.compact(t.alive, plan.start_width)  # the fillers leave before layer 0
        stats = DeviceStats(track_positions=getattr(self.runtime, "track_sources", False))
        score = score_entry(cfg)
        # Without a cache, generate() re-runs the prefill on prompt + generated tokens: only the
        # first prefill's tokens (slots < vote_limit, a device scalar) vote, so the same tokens
        # survive as there (causal: their hidden states ignore the later tokens).
        limit_of = getattr(self.runtime, "prefill_vote_limit", None)
        vote_limit = limit_of(seq_len, remember=not use_cache) if limit_of is not None else None
        if vote_limit is not None:
            vote_limit = vote_limit.to(h.device)
        layer_alive: List[torch.Tensor] = []
        decode = self._decode_selector(plan, len(lm.layers))
        decode_visual = None
        for j, layer in enumerate(lm.layers):
            stats.enter(t)
            layer_alive.append(t.alive)
            if decode is not None and j == decode.layer - 1:
                decode_visual = t.visual  # the keys the decode steps rank (no pruning from here on)
            inputs = ScoreInputs(cfg, j, t.alive, t.visual, t.alive & ~t.visual,
                                 prompt.visual_index.gather(1, t.slot), plan.full[j],
                                 voters=None if vote_limit is None else t.alive & (t.slot < vote_limit),
                                 ) if plan.ranked(j) else None
            probe = ImportanceProbe(cfg, inputs) if inputs is not None and "qk" in score.needs else None
            t.h = layer(
                t.h,
                attention_mask=layer_attention_mask(lm.config._attn_implementation, t.alive, t.h.shape[1], h.dtype,
                                                    plan.full[j]),
                position_embeddings=(t.cos, t.sin),
                position_ids=None,  # gapped positions would look like packed sequences
                use_cache=use_cache,
                **compat.cache_kwargs(layer, cache),
                **kwargs,
                **({"aim_probe": probe} if probe is not None else {}),
            )
            if use_cache:
                check_kv_length(cache, j, t.h.shape[1], "prefill")
            if additions is not None:  # e.g. Qwen3-VL's DeepStack rows, on the visual tokens still present
                t.h = additions.apply(j, t.h, t.slot, t.alive)
            if plan.prunes(j):
                t = self._prune(t, plan, j, self._scores(t, j, score, inputs, probe), probe, stats)
        record = stats.materialize(cfg, plan)
        # Back to the original length; pruned positions get zero hidden states (their logits
        # are not meaningful: those tokens left the computation).
        out = h.new_zeros(bsz, seq_len + 1, h.shape[-1])
        target = torch.where(t.alive, t.slot, torch.full_like(t.slot, seq_len))
        out.scatter_(1, target[..., None].expand(-1, -1, h.shape[-1]), lm.norm(t.h))
        offset = prompt.fillers.sum(dim=1) if prompt.fillers is not None else None
        if use_cache:
            run = None
            if decode is not None:
                kept = [decode.budget(c[decode.layer - 1]) for c in plan.counts]
                run = DecodeRun(decode, decode_visual, torch.tensor(kept, dtype=torch.long, device=h.device))
            cache.aim_state = PrunedCacheState(layer_alive, seq_len, offset, full=list(plan.full), decode=run)
        self.runtime.record_prefill(record, cache if use_cache else None)
        return compat.model_output(out[:, :seq_len], cache if use_cache else None)

    def _decode_selector(self, plan: PrefillPlan, num_layers: int):
        """The method's decode selector (None without one); the prefill must leave the keys of
        layers >= its layer - 1 alike (no in-LLM pruning there), a host-side check."""
        name = spec(self.cfg.method).decode
        if name is None:
            return None
        selector = lookup(name, "decode").fn(self.cfg, num_layers)
        if any(plan.prunes(j) for j in range(selector.layer - 1, num_layers)):
            raise UnsupportedUsageError(
                f"the decode selection {name!r} ranks layer {selector.layer - 1}'s keys for every later layer; "
                "in-LLM pruning at or after that layer would give those layers other keys"
            )
        return selector

    @staticmethod
    def _scores(t: Tokens, j: int, score: Entry, inputs: Optional[ScoreInputs], probe) -> torch.Tensor:
        """Layer j's scores: the probe's (a score that needs q/k), the score's own, or none
        where every remaining visual token goes (``inputs`` None: nothing to rank)."""
        if inputs is None:
            return torch.zeros(t.alive.shape, dtype=torch.float32, device=t.alive.device)
        if probe is None:
            return score.fn(inputs)
        if probe.scores is None:
            raise RuntimeError(f"layer {j} did not run the AIM attention wrapper; was apply_aim bypassed?")
        return probe.scores

    def _prune(self, t: Tokens, plan: PrefillPlan, j: int, scores, probe, stats: DeviceStats) -> Tokens:
        """The survivors of layer j: every text token and the schedule's visual tokens."""
        cfg = self.cfg
        kept = plan.kept[:, j + 1]  # a host-to-device copy here would wait for the device
        keep = select_survivors(scores, t.visual, t.alive, kept, check_nan=False)
        if plan.ranked(j):
            # A tie key re-ranks only exactly equal scores, so it changes nothing where no tie
            # straddles the cut: re-selecting unconditionally equals re-selecting on a tie.
            tie_scores = probe.tie_scores() if probe is not None and cfg.tie_break != "index" else None
            stats.selection(j, t, scores, keep, tie_scores, tie_scores is not None)
            if tie_scores is not None:
                keep = select_survivors(scores, t.visual, t.alive, kept, tie_scores, check_nan=False)
        fold = fold_of(cfg)
        if fold is not None:  # the method merges the dropped tokens into the kept ones (device side)
            kept_width, dropped_width = plan.fold_widths(j)
            t.h = lookup(fold, "fold").fn(FoldInputs(cfg, j, t.h, t.visual & t.alive, keep, scores,
                                                     kept_width, dropped_width))
        if cfg.pruning_mode == "mask":
            return dataclasses.replace(t, alive=keep, visual=t.visual & keep)
        return t.compact(keep, plan.widths[j + 1])

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
        full = state.full or [None] * len(lm.layers)  # new tokens are alive: the prefill's flags hold
        if position_ids is None:
            position_ids = torch.arange(q_len, device=h.device).unsqueeze(0) + state.seen_tokens
        if state.position_offset is not None:
            position_ids = position_ids - state.position_offset.to(position_ids.device)[:, None]
        cos, sin = lm.rotary_emb(h, position_ids)
        new = torch.ones(bsz, q_len, dtype=torch.bool, device=h.device)
        run = state.decode
        for j, layer in enumerate(lm.layers):
            before = state.alive[j].shape[1]
            state.alive[j] = torch.cat([state.alive[j], new], dim=1)
            keys, all_alive = state.alive[j], full[j]
            if run is not None and j >= run.selector.layer:
                keys, all_alive = run.key_mask(keys), False  # this step's visual keys only
            probe = StepProbe() if run is not None and j == run.selector.layer - 1 else None
            h = layer(
                h,
                attention_mask=layer_attention_mask(backend, keys, q_len, h.dtype, all_alive),
                position_embeddings=(cos, sin),
                position_ids=None,
                use_cache=True,
                **compat.cache_kwargs(layer, cache),
                **kwargs,
                **({"aim_probe": probe} if probe is not None else {}),
            )
            check_kv_length(cache, j, before + q_len, "decode step")
            if probe is not None:
                run.observe(probe, state.alive[j])
        state.seen_tokens += q_len
        self.runtime.record_decode(cache)
        return compat.model_output(lm.norm(h), cache)
