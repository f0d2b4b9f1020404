"""Wiring AIM into stock transformers multimodal models: ``apply_aim(model, processor, cfg)``.

Nothing is copied from transformers and nothing installed is edited: AIM wraps a few bound
methods / hooks of the *instances* it is given. This module is family-free: the runtime, the
statistics, the pruning installation. What differs between model families (where merging
hooks in, how the processor counts placeholders, how positions are built) lives in one
adapter per family, llava/model/families/.

If pruning is configured, the language model's forward is replaced by the decoder driver
(language_model/driver.py) and its attention by the AIM wrapper of the same backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch

from llava.aim.config import AIMConfig
from llava.aim.policy import family_refusal, video_reduction
from llava.aim.registry import entry_stages, run_stage
from llava.errors import AIMConfigError, UnsupportedModelError, UnsupportedUsageError
from llava.model.families import FAMILIES, family_of
from llava.model.language_model.attention import aim_backend_name, stock_backend_name
from llava.model.language_model.driver import DecoderDriver


@dataclass
class AIMStats:
    """What AIM did in the last forward / generate call (sums over the batch).

    visual_tokens_before_merge / after_merge: visual tokens the LLM would receive without
    merging / does receive (video: frames*T + 1 newline per video). layer_seq_lens: prefill
    length entering each decoder layer (largest over the batch; per sample in
    layer_seq_lens_per_sample). visual_tokens_per_layer: per layer, per sample. kv_cache_lens:
    tokens held by each layer's KV cache after the call.

    Only with ``apply_aim(..., track_sources=True)`` (else None; nothing is tracked):
    merge_sources (F, T): for every frame and original (pooled) patch, the merged token it
    went into. layer_survivors: per decoder layer, (F, k) bool, whether each merged token is
    among the visual tokens entering that layer (needs pruning on). ``merge_groups()`` and
    ``survivors(layer)`` map both onto the (frame, row, column) grid of the patches.
    merge_grid: (rows, cols) of each frame's patch grid where the family knows it (Qwen2-VL:
    any aspect ratio); None means square.
    """

    visual_tokens_before_merge: int = 0
    visual_tokens_after_merge: int = 0
    frames: int = 0
    tokens_per_frame_before_merge: int = 0
    tokens_per_frame_after_merge: int = 0
    merge_sources: Optional[torch.Tensor] = None
    merge_grid: Optional[Tuple[int, int]] = None
    layer_survivors: Optional[List[torch.Tensor]] = None
    layer_seq_lens: List[int] = field(default_factory=list)
    layer_seq_lens_per_sample: List[List[int]] = field(default_factory=list)
    visual_tokens_per_layer: List[List[int]] = field(default_factory=list)
    kv_cache_lens: List[int] = field(default_factory=list)
    score_ties: List[dict] = field(default_factory=list)
    tokens_kept_per_frame: List[int] = field(default_factory=list)
    l1: Optional[int] = None
    l2: Optional[int] = None

    def to_dict(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("merge_sources", "layer_survivors", "merge_grid")}

    def merge_groups(self) -> torch.Tensor:
        """(F, H, W) long: the merged token each patch of each frame went into."""
        if self.merge_sources is None:
            raise UnsupportedUsageError("no merge sources recorded: apply_aim(..., track_sources=True), then run the model")
        return patch_grid(self.merge_sources, self.merge_grid)

    def survivors(self, layer: int) -> torch.Tensor:
        """(F, H, W) bool: whether each patch's merged token is present entering ``layer``."""
        if self.layer_survivors is None:
            raise UnsupportedUsageError(
                "no survivors recorded: apply_aim(..., track_sources=True) with pruning on, then run the model"
            )
        return patch_grid(self.layer_survivors[layer].gather(1, self.merge_sources), self.merge_grid)


def patch_grid(per_patch: torch.Tensor, grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """(F, T) values per patch -> (F, H, W) on the patch grid (row-major): ``grid`` (H, W) when
    given, else square (H = W)."""
    frames, t = per_patch.shape
    if grid is not None:
        if grid[0] * grid[1] != t:
            raise UnsupportedUsageError(f"{t} patches per frame do not form the recorded {grid[0]} x {grid[1]} grid")
        return per_patch.reshape(frames, grid[0], grid[1])
    side = math.isqrt(t)
    if side * side != t:
        raise UnsupportedUsageError(f"{t} patches per frame do not form a square grid")
    return per_patch.reshape(frames, side, side)


def presence_by_frame(initial, entering, frames: int, tokens_per_frame: int, videos: int) -> Optional[torch.Tensor]:
    """(F, k) bool: which merged tokens are among the visual tokens ``entering`` a layer.

    initial / entering: per sample, the sequence positions of the visual tokens entering the
    first layer / this layer. The visual tokens are, in order over the batch, each frame's k
    merged tokens, each video followed by its newline token (``videos`` of them; 0 for
    images). None when the prompt holds other visual tokens (e.g. images next to a video).
    """
    present = torch.cat([torch.isin(first, now) for first, now in zip(initial, entering)])
    if present.numel() != frames * tokens_per_frame + videos:
        return None
    if videos:
        present = present.view(videos, -1)[:, :-1]  # drop each video's newline token
    return present.reshape(frames, tokens_per_frame)


class AIMRuntime:
    """Per-model AIM state: the config, the pending visual mask, the statistics."""

    def __init__(self, cfg: AIMConfig, image_token_ids, track_sources: bool = False):
        self.cfg = cfg
        self.image_token_ids = tuple(i for i in image_token_ids if i is not None)
        self.track_sources = track_sources
        self.stats = AIMStats()
        self._visual_mask: Optional[torch.Tensor] = None
        self._token_masks = {}  # placeholder id -> (B, L) bool, of the current call
        self._arrivals = {}  # placeholder id -> flat bool over its placeholders: False = filler
        self.handles = []
        self.restore = []
        self.family_state: dict = {}  # whatever a family adapter keeps between its own hooks
        self._call_ids: Optional[torch.Tensor] = None  # input ids of the current call (None: embeds)
        # (input ids, vote limit) of the last prefill run without a cache (prefill_vote_limit)
        self._last_uncached: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    # visual-token mask: set by a pre-hook on the multimodal model, consumed by the driver
    def set_visual_mask(self, input_ids: Optional[torch.Tensor]) -> None:
        self._call_ids = input_ids
        if input_ids is None:
            self.set_token_masks(None)
            return
        self.set_token_masks({token_id: input_ids == token_id for token_id in self.image_token_ids})

    def set_token_masks(self, masks) -> None:
        """Per placeholder id, where its tokens sit in this call's prompt (None: no prompt)."""
        # (no reset of the arrivals here: generate() may encode the media before this pre-hook runs)
        self._token_masks = masks or {}
        if masks is None:
            self._visual_mask = None
            return
        mask = None
        for m in masks.values():
            mask = m.clone() if mask is None else mask | m
        self._visual_mask = mask

    def take_visual_mask(self) -> Optional[torch.Tensor]:
        mask, self._visual_mask = self._visual_mask, None
        return mask

    def prefill_vote_limit(self, seq_len: int, remember: bool) -> Optional[torch.Tensor]:
        """Which slots of this prefill may vote in the importance scores: slots < the returned
        0-dim long device tensor (None: every present token).

        ``remember`` (a prefill without a cache): a prefill whose batch size matches the last
        uncached one, which is longer and whose leading ids equal that one's is its continuation
        (generate(use_cache=False) re-runs prompt + generated tokens; left padding stays the
        same layout): it inherits that prefill's limit, so only the first prompt votes. Decided
        on the device (a where, no host read); any other prompt is scored afresh.
        """
        ids, self._call_ids = self._call_ids, None
        last, self._last_uncached = self._last_uncached, None
        if not remember or ids is None or ids.dim() != 2 or ids.shape[1] != seq_len:
            return None
        limit = torch.full((), seq_len, dtype=torch.long, device=ids.device)
        if last is not None and last[0].shape[0] == ids.shape[0] and last[0].shape[1] < seq_len:
            old_ids, old_limit = last
            same = (ids[:, : old_ids.shape[1]] == old_ids).all()
            limit = torch.where(same, old_limit, limit)
        self._last_uncached = (ids, limit)
        return limit

    def record_arrival(self, token_id: int, real: torch.Tensor) -> None:
        """Which of ``token_id``'s placeholders (in prompt order over the batch) hold real tokens;
        the others are filler of a data-dependent reduction (PruMerge), dropped before layer 0."""
        self._arrivals[token_id] = real.reshape(-1)

    def take_arrival_mask(self) -> Optional[torch.Tensor]:
        """(B, L) bool, False at filler placeholders, or None when there is none."""
        arrivals, self._arrivals = self._arrivals, {}
        if not arrivals:
            return None
        arrived = None
        for token_id, real in arrivals.items():
            where = self._token_masks.get(token_id)
            if where is None or int(where.sum()) != real.numel():
                raise UnsupportedUsageError(
                    f"the prompt holds {0 if where is None else int(where.sum())} placeholders of token {token_id} "
                    f"but the vision side produced {real.numel()}; build the inputs with the processor AIM patched"
                )
            if arrived is None:
                arrived = torch.ones_like(where)
            arrived[where] = real.to(where.device)
        return arrived

    def record_merge(self, frames: int, before: int, after: int, newline_tokens: int, sources=None,
                     kept_per_frame: Optional[List[int]] = None, totals: Optional[Tuple[int, int]] = None,
                     grid: Optional[Tuple[int, int]] = None) -> None:
        """What merging did in this call. ``kept_per_frame``: tokens each frame kept where that
        depends on the content (PruMerge); ``totals`` (visual tokens before, after) where frames
        differ in size (then ``before`` / ``after`` are 0); ``grid``: the frames' patch grid."""
        s = self.stats
        kept = list(kept_per_frame) if kept_per_frame is not None else [after] * frames
        s.frames = frames
        s.tokens_per_frame_before_merge = before
        s.tokens_per_frame_after_merge = max(kept) if kept else after
        s.tokens_kept_per_frame = kept
        s.visual_tokens_before_merge = frames * before + newline_tokens
        s.visual_tokens_after_merge = sum(kept) + newline_tokens
        if totals is not None:
            s.visual_tokens_before_merge, s.visual_tokens_after_merge = totals
        s.merge_sources = sources
        s.merge_grid = grid
        s.layer_survivors = None

    def record_prefill(self, record, cache) -> None:
        s = self.stats
        s.layer_seq_lens = record.layer_seq_lens
        s.layer_seq_lens_per_sample = record.layer_seq_lens_per_sample
        s.visual_tokens_per_layer = record.visual_tokens_per_layer
        s.score_ties = record.score_ties
        s.layer_survivors = None
        positions = getattr(record, "visual_positions", None)
        if positions is not None and s.merge_sources is not None:
            videos = s.visual_tokens_after_merge - s.frames * s.tokens_per_frame_after_merge
            present = [
                presence_by_frame(positions[0], now, s.frames, s.tokens_per_frame_after_merge, videos)
                for now in positions
            ]
            s.layer_survivors = None if present[0] is None else present
        self.record_decode(cache)

    def uninstall(self) -> None:
        """Remove every hook and restore every patched attribute (safe to call twice)."""
        for handle in self.handles:
            handle.remove()
        for undo in reversed(self.restore):
            undo()
        self.handles.clear()
        self.restore.clear()

    def record_decode(self, cache) -> None:
        if cache is not None:
            self.stats.kv_cache_lens = [layer.get_seq_length() for layer in cache.layers]


def apply_aim(model, processor=None, cfg: Optional[AIMConfig] = None, track_sources: bool = False):
    """Enable AIM on a loaded transformers model of a supported family and its processor.

    Returns (model, processor), both patched in place. Calling it again replaces the previous
    setting. ``AIMConfig.disabled()`` restores the stock behaviour exactly. "auto" pruning
    layers and merge metric are resolved here against the model (``model.aim_config`` and
    ``aim_stats`` hold the resolved ones). After each forward / generate call ``model.aim_stats``
    holds what AIM did. ``remove_aim(model, processor)`` undoes all of it.
    """
    cfg = AIMConfig() if cfg is None else cfg
    if not isinstance(cfg, AIMConfig):
        raise AIMConfigError(f"cfg must be an AIMConfig, got {type(cfg).__name__}")
    family = family_of(model)
    inner = family.inner(model)
    lm = inner.language_model
    num_layers = len(lm.layers)
    cfg = cfg.resolve_layers(num_layers, family.official_layers(num_layers))
    cfg = cfg.resolve_merge_metric(family.official_merge_metric, family.merge_metrics, family.title)
    if cfg.prumerging and not family.supports_prumerge:
        raise UnsupportedModelError(
            f"method {cfg.method!r} (LLaVA-PruMerge) is implemented for "
            f"{' and '.join(f.title for f in FAMILIES if f.supports_prumerge)}, not {family.title}; "
            "use another method"
        )
    refusal = family_refusal(cfg.method, family.name, getattr(model.config, "model_type", ""))
    if refusal is not None:
        raise UnsupportedModelError(refusal)
    _check_video_reduction(cfg, family)
    family.check_model(model, cfg)
    if processor is not None:
        family.check_processor(processor)  # before touching anything: no half-patched model
    remove_aim(model, processor)

    runtime = AIMRuntime(cfg, family.visual_token_ids(model.config), track_sources=track_sources)
    runtime.stats.l1, runtime.stats.l2 = (cfg.l1, cfg.l2) if isinstance(cfg.l1, int) else (None, None)

    # a data-dependent count before the LLM (PruMerge, video reductions): its filler placeholders
    # are dropped by the driver
    adaptive = cfg.prumerging or cfg.video_reducing
    if cfg.merging or track_sources or adaptive:
        family.install_merging(inner, runtime)
    family.install_positions(inner, runtime)
    # the driver drops the filler placeholders and runs a decode selection
    if cfg.pruning or adaptive or cfg.decode_selecting:
        _install_pruning(inner, lm, runtime)
    if processor is not None and (cfg.merging or adaptive):
        family.patch_processor(processor, cfg, runtime)

    model.aim_config = cfg
    model.aim_stats = runtime.stats  # updated in place by every forward / generate call
    model._aim_runtime = runtime
    model._aim_family = family
    return model, processor


def _check_video_reduction(cfg: AIMConfig, family) -> None:
    """A "video" reduction runs where the family offers its stage (FamilyAdapter.reduction_stages)."""
    entry = video_reduction(cfg.method)
    if entry is None:
        return
    stage = run_stage(entry, family.reduction_stages)
    if stage is None:
        offered = (f"it offers the stages {list(family.reduction_stages)}" if family.reduction_stages
                   else "it runs no video reduction")
        raise UnsupportedModelError(
            f"method {cfg.method!r} reduces at the {' or '.join(map(repr, entry_stages(entry)))} stage, which "
            f"{family.title} does not offer ({offered}); use another method"
        )
    if "vision_attention" in entry.needs and not family.vision_attention_stages:
        raise UnsupportedModelError(f"method {cfg.method!r} needs the vision tower's attention, which {family.title} "
                                    "does not capture; use another method")
    if "vision_attention" in entry.needs and stage not in family.vision_attention_stages:
        raise UnsupportedModelError(
            f"method {cfg.method!r} needs the vision tower's attention at the {stage!r} stage; {family.title} "
            f"gives it at {list(family.vision_attention_stages)} only (the attention is per vision-tower patch)"
        )


def remove_aim(model, processor=None):
    """Undo ``apply_aim``; returns (model, processor) like it (a no-op on a model without AIM).

    Every hook and patched method is restored, and the attributes apply_aim added to the
    instance go with them: afterwards ``model.aim_stats`` and ``model.aim_config`` raise
    AttributeError, exactly as on a model AIM never touched (``hasattr(model, "aim_stats")``
    tells whether AIM is on). Statistics of earlier calls kept by the caller stay valid.
    """
    runtime = model.__dict__.get("_aim_runtime")
    if runtime is not None:
        runtime.uninstall()
    for name in _INSTANCE_ATTRIBUTES:
        model.__dict__.pop(name, None)
    if processor is not None:
        for family in FAMILIES:
            family.unpatch_processor(processor)
    return model, processor


# What apply_aim adds to a model instance (and remove_aim takes away).
_INSTANCE_ATTRIBUTES = ("aim_stats", "aim_config", "_aim_runtime", "_aim_family")


# -- pruning ------------------------------------------------------------------------------
def _install_pruning(inner, lm, runtime: AIMRuntime) -> None:
    def remember_visual_tokens(module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        runtime.set_visual_mask(input_ids)
        if input_ids is None and kwargs.get("inputs_embeds") is not None:
            runtime.set_token_masks(_token_masks_from_embeds(module, kwargs["inputs_embeds"], runtime))

    runtime.handles.append(inner.register_forward_pre_hook(remember_visual_tokens, with_kwargs=True))
    install_pruning(lm, runtime)


def install_pruning(lm, runtime: AIMRuntime) -> None:
    """Drive a bare Qwen2Model / LlamaModel with AIM pruning.

    The caller sets the visual-token mask before each prefill (``runtime.set_visual_mask``);
    ``apply_aim`` does that from input_ids with a pre-hook on the multimodal model.
    """
    stock_name = stock_backend_name(lm.config._attn_implementation or "sdpa")
    aim_name = aim_backend_name(stock_name)
    lm.config._attn_implementation = aim_name
    runtime.restore.append(lambda: setattr(lm.config, "_attn_implementation", stock_name))
    driver = DecoderDriver(lm, runtime.cfg, runtime)
    driver.install()
    runtime.restore.append(driver.uninstall)


def _token_masks_from_embeds(inner, inputs_embeds, runtime: AIMRuntime):
    # As the stock model does without input_ids: placeholders equal the token's embedding.
    table = inner.get_input_embeddings()
    ids = torch.tensor(runtime.image_token_ids, device=inputs_embeds.device)
    placeholder = table(ids)  # (k, C)
    equal = (inputs_embeds[:, :, None, :] == placeholder[None, None]).all(-1)  # (B, L, k)
    return {token_id: equal[..., i] for i, token_id in enumerate(runtime.image_token_ids)}
