"""Qwen2-VL and Qwen2.5-VL (ViT + 2x2 patch merger + Qwen2 with 3-D rotary positions, M-RoPE).

Merging: each image or video is merged per temporal group (a video's 2 frames per temporal
patch; an image is one group) right after the patch merger, in ``get_image_features`` /
``get_video_features``. A group of an item with grid (t, h, w) holds (h/2) x (w/2) tokens in
raster order, at any aspect ratio; the processor emits t * k placeholders per item instead of
t * (h/2) * (w/2) (``replace_image_token`` / ``replace_video_token``).

Positions (AIMConfig.positions):

* "original": every merged token takes the stock (t, h, w) position of the patch it stands in
  for (MergeResult.dest_index, its destination). Text tokens keep exactly the positions the
  stock model gives the unmerged prompt, and rope_deltas is the stock one plus the tokens
  merging removed, so decoding continues at the stock model's next position. Both come from the
  stock ``get_rope_index`` itself, run on the prompt with each item expanded back to its
  unmerged length; whatever rule the installed transformers uses, the merged prompt follows it.
* "official": the official code's shrunken grid. At retention 1/s^2 each group keeps exactly
  (h/2 // s) * (w/2 // s) tokens (merging, then extra steps down to that count, as the official
  code does at 1/4), and the stock ``get_rope_index`` runs on the merged prompt with h and w
  of each grid shrunk to match; the text after an item moves up.

generate() builds position ids before the vision tower runs (5.24: even before the features
are computed), so the wrapped ``get_rope_index`` can only place the text then; a pre-hook on the
language model puts each merged token at its destination's position in the prefill that
consumes the features. Decoding appends last + 1 as for the stock model.

Pruning: the decoder driver gathers survivors' cos/sin like for Qwen2; the pre-hook hands it
plain (3, batch, length) ids. Refused: sliding-window layers (the driver builds full causal
masks), and a forward on a pruned cache whose positions cannot be known: the language model
called alone without position ids, or a cache whose length no longer counts the unpruned
tokens while neither position ids nor an attention mask say where the new tokens go (the
stock forward derives them from the cache length; layer 0, which it reads, is never pruned).
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from llava.aim.merge import merge_frames, merged_token_count
from llava.errors import AIMConfigError, UnsupportedModelError, UnsupportedUsageError
from llava.model.families.base import (
    BenchScale,
    FamilyAdapter,
    Reference,
    VisualTokens,
    reduce_tokens,
    set_instance_attr,
    text_bench_dims,
)

TEXT, IMAGE, VIDEO = 0, 1, 2  # mm_token_type_ids values of the Qwen-VL processors
GRID_ARGS = {IMAGE: "image_grid_thw", VIDEO: "video_grid_thw"}
PIXEL_ARGS = {IMAGE: "pixel_values", VIDEO: "pixel_values_videos"}
_ROPE_CORE_ARGS = ("self", "input_ids", "mm_token_type_ids", "image_grid_thw", "video_grid_thw", "attention_mask",
                   "kwargs")

QWEN35_REFUSAL = (
    "Qwen3.5 is not supported by AIM: most of its decoder layers are linear attention (Gated DeltaNet) "
    "whose recurrent state runs over every token, so pruned tokens cannot be removed from them; use "
    "Qwen2-VL, Qwen2.5-VL or Qwen3-VL"
)


# -- counts ---------------------------------------------------------------------------------
def group_tokens(rows: int, cols: int, cfg) -> int:
    """Merged tokens of one temporal group of rows x cols patch-merger tokens."""
    if cfg.positions == "official":
        s = cfg.grid_shrink
        n = (rows // s) * (cols // s)
        if n == 0:
            raise AIMConfigError(
                f"positions='official' at retention {cfg.retention:g} shrinks each side of the grid {s}-fold, but this "
                f"item's grid is {rows} x {cols} merged patches: no grid is left; use positions='original' or a "
                "larger input (max_pixels / min_pixels)"
            )
        return n
    return merged_token_count(rows * cols, cfg.retention, cfg.merge_count)


def item_tokens(grid, merge: int, cfg) -> int:
    """Placeholders one item with ``grid`` (t, h, w) patches gets after merging."""
    t, h, w = (int(v) for v in grid)
    return t * group_tokens(h // merge, w // merge, cfg)


# -- merging one item -----------------------------------------------------------------------
@dataclass
class MergedItem:
    """One image or video after merging: its grid (t, h, w) in patches, and for each merged
    token (t * k of them, group by group) the index of its destination patch in the item's
    (t, h/2, w/2) raster order."""

    grid: Tuple[int, int, int]
    dest: torch.Tensor
    sources: Optional[torch.Tensor] = None  # (t, h/2 * w/2): merged token of each patch


def merge_item(features: torch.Tensor, grid, merge: int, runtime,
               similarity_channels: Optional[int] = None) -> Tuple[torch.Tensor, MergedItem]:
    """Merge one item's patch-merger output (t * h/2 * w/2, C), each temporal group alone.

    ``similarity_channels``: the matching sees only the first that many channels, the others are
    merged along with the same groups and weights (Qwen3-VL's DeepStack rows stacked beside the
    main features); None: all channels."""
    cfg = runtime.cfg
    t, h, w = (int(v) for v in grid)
    rows, cols = h // merge, w // merge
    x = features.reshape(t, rows * cols, features.shape[-1])
    target = group_tokens(rows, cols, cfg)

    def metric_of(tokens):
        return None if similarity_channels is None else tokens[..., :similarity_channels]

    result = reduce_tokens(runtime, x, metric=metric_of(x), grid=(rows, cols), track_destinations=True)
    tokens, dest, sources = result.tokens, result.dest_index, result.source_index
    if tokens.shape[1] > target:  # official grid: extra steps down to (rows // s) * (cols // s)
        # the extra steps remove exactly what is left over (as many as a step can, the last just enough)
        extra = merge_frames(tokens, target / tokens.shape[1], cfg.merge_weighting, cfg.merge_order,
                             track_sources=sources is not None, track_destinations=True, merge_count="exact",
                             metric=metric_of(tokens))
        tokens, dest = extra.tokens, dest.gather(1, extra.dest_index)
        sources = None if sources is None else extra.source_index.gather(1, sources)
    if tokens.shape[1] != target:  # the processor emitted `target` placeholders per group
        raise RuntimeError(f"merging gave {tokens.shape[1]} tokens per group, the processor counted {target}")
    offsets = torch.arange(t, device=dest.device).unsqueeze(1) * (rows * cols)
    item = MergedItem(grid=(t, h, w), dest=(dest + offsets).reshape(-1), sources=sources)
    return tokens.reshape(t * target, -1), item


# -- positions ------------------------------------------------------------------------------
def _runs(types: Sequence[int]):
    """(type, start, end) of each run of equal token types, as the stock get_rope_index groups."""
    out, start = [], 0
    for key, group in itertools.groupby(types):
        n = len(list(group))
        out.append((key, start, start + n))
        start += n
    return out


def _numbered_runs(types: Sequence[int], counters: Dict[int, int]):
    """(type, start, end, i) of each run, i the visual item's number over the batch (its
    modality's count in ``counters``, advanced here), None for text."""
    for key, start, end in _runs(types):
        i = None
        if key != TEXT:
            i = counters[key]
            counters[key] += 1
        yield key, start, end, i


def merged_rope_index(stock, input_ids, mm_token_type_ids, image_grid_thw, video_grid_thw, attention_mask,
                      cfg, merge: int, dest_of=None, **extra):
    """(position_ids (3, B, S), rope_deltas (B, 1)) of a merged prompt, from the stock get_rope_index.

    ``dest_of(modality, i)``: the destination patches of the i-th item of that modality (over
    the batch, in order), or None when merging has not run yet (generate prepares positions
    before the vision tower): the visual positions are then provisional (each group's first
    patches) and only the text positions are final.
    """
    grids = {IMAGE: image_grid_thw, VIDEO: video_grid_thw}
    if cfg.positions == "official":
        shrunk = {m: _shrunken(g, merge, cfg.grid_shrink) for m, g in grids.items()}
        _check_counts(mm_token_type_ids, attention_mask, grids, merge, cfg)
        return stock(input_ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=shrunk[IMAGE],
                     video_grid_thw=shrunk[VIDEO], attention_mask=attention_mask, **extra)
    bsz, seq = input_ids.shape
    device = input_ids.device
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    counters = {IMAGE: 0, VIDEO: 0}
    rows = []  # per sample: expanded ids, expanded types, expanded index of each merged token
    for b in range(bsz):
        ids, types = input_ids[b][valid[b]], mm_token_type_ids[b][valid[b]]
        id_parts, type_parts, where, length = [], [], [], 0
        for key, start, end, i in _numbered_runs(types.tolist(), counters):
            n = end - start
            if key == TEXT:
                id_parts.append(ids[start:end])
                type_parts.append(types[start:end])
                where.append(torch.arange(length, length + n, device=device))
                length += n
                continue
            grid = _grid(grids, key, i)
            full = int(grid.prod()) // merge**2
            _check_item(n, grid, merge, cfg, key, i)
            dest = dest_of(key, i) if dest_of is not None else None
            if dest is None:
                dest = _provisional_dest(grid, merge, n // int(grid[0]), device)
            id_parts.append(ids[start:start + 1].expand(full))
            type_parts.append(types[start:start + 1].expand(full))
            where.append(length + dest.to(device))
            length += full
        rows.append((torch.cat(id_parts), torch.cat(type_parts), torch.cat(where), length))
    width = max(r[3] for r in rows)
    ex_ids = torch.zeros(bsz, width, dtype=input_ids.dtype, device=device)
    ex_types = torch.zeros(bsz, width, dtype=mm_token_type_ids.dtype, device=device)
    ex_mask = torch.zeros(bsz, width, dtype=torch.long, device=device)
    for b, (ids, types, _, length) in enumerate(rows):  # left-padded, as the processor pads
        ex_ids[b, width - length:], ex_types[b, width - length:], ex_mask[b, width - length:] = ids, types, 1
    full_pos, full_deltas = stock(ex_ids, mm_token_type_ids=ex_types, image_grid_thw=image_grid_thw,
                                  video_grid_thw=video_grid_thw, attention_mask=ex_mask, **extra)
    position_ids = torch.zeros(3, bsz, seq, dtype=full_pos.dtype, device=device)
    deltas = full_deltas.clone()
    for b, (_, _, where, length) in enumerate(rows):
        position_ids[:, b, valid[b]] = full_pos[:, b, width - length + where]
        deltas[b] += length - int(valid[b].sum())  # the tokens merging removed from this sample
    return position_ids, deltas


def _grid(grids, key: int, i: int) -> torch.Tensor:
    g = grids[key]
    if g is None or i >= len(g):
        raise UnsupportedUsageError(
            f"the prompt holds more {'image' if key == IMAGE else 'video'} items than "
            f"{GRID_ARGS[key]} describes ({0 if g is None else len(g)}); pass the processor's output unchanged"
        )
    return g[i]


def _check_item(n: int, grid, merge: int, cfg, key: int, i: int) -> None:
    expected = item_tokens(grid, merge, cfg)
    if n != expected:
        kind = "image" if key == IMAGE else "video"
        raise UnsupportedUsageError(
            f"{kind} {i} (grid {tuple(int(v) for v in grid)}) has {n} placeholder tokens but AIM merges it to "
            f"{expected}: build the inputs with the processor that apply_aim(model, processor, cfg) patched"
        )


def _check_counts(mm_token_type_ids, attention_mask, grids, merge, cfg) -> None:
    counters = {IMAGE: 0, VIDEO: 0}
    for b in range(mm_token_type_ids.shape[0]):
        types = mm_token_type_ids[b] if attention_mask is None else mm_token_type_ids[b][attention_mask[b].bool()]
        for key, start, end, i in _numbered_runs(types.tolist(), counters):
            if key != TEXT:
                _check_item(end - start, _grid(grids, key, i), merge, cfg, key, i)


def _shrunken(grid_thw, merge: int, s: int):
    """The official code's RoPE grid: each side of the merged grid divided by s (in patches)."""
    if grid_thw is None:
        return None
    g = grid_thw.clone()
    g[:, 1:] = (g[:, 1:] // merge // s) * merge
    return g


def _provisional_dest(grid, merge: int, per_group: int, device) -> torch.Tensor:
    t, h, w = (int(v) for v in grid)
    area = (h // merge) * (w // merge)
    return (torch.arange(t, device=device)[:, None] * area + torch.arange(per_group, device=device)).reshape(-1)


# -- per-model state ------------------------------------------------------------------------
@dataclass
class MergeLog:
    """What the last merging produced, until the prefill that consumes it places its tokens.

    items: per modality, the merged items of the call in order. placed: their positions are
    already in the ids (built after merging, by the stock forward's compute_3d_position_ids).
    call: the rope-index inputs of the current multimodal forward (its pre-hook records them).
    """

    items: Dict[int, List[MergedItem]] = field(default_factory=lambda: {IMAGE: [], VIDEO: []})
    pending: bool = False
    placed: bool = False
    call: Dict[str, object] = field(default_factory=dict)

    def clear(self) -> None:
        self.items = {IMAGE: [], VIDEO: []}
        self.pending = self.placed = False

    def reuse(self) -> None:
        """A forward that embeds the merged features again (generate(use_cache=False) hands
        every step the features it encoded once): its prefill places them again."""
        if not self.pending and any(self.items.values()):
            self.pending, self.placed = True, False

    def dest_of(self, key: int, i: int):
        items = self.items[key]
        return items[i].dest if self.pending and i < len(items) else None


def _log(runtime) -> MergeLog:
    return runtime.family_state.setdefault("qwen_merge_log", MergeLog())


def _record_stats(runtime, log: MergeLog, merge: int) -> None:
    items = log.items[IMAGE] + log.items[VIDEO]
    frames = sum(it.grid[0] for it in items)
    areas = {(it.grid[1] // merge, it.grid[2] // merge) for it in items}
    per_group = {it.dest.numel() // it.grid[0] for it in items}
    before = sum(it.grid[0] * (it.grid[1] // merge) * (it.grid[2] // merge) for it in items)
    after = sum(it.dest.numel() for it in items)
    one_shape = len(areas) == 1 and len(per_group) == 1 and bool(log.items[IMAGE]) != bool(log.items[VIDEO])
    if one_shape:
        (rows, cols), k = areas.pop(), per_group.pop()
        sources = None
        if all(it.sources is not None for it in items):
            sources = torch.cat([it.sources for it in items])
        runtime.record_merge(frames=frames, before=rows * cols, after=k, newline_tokens=0, sources=sources,
                             grid=(rows, cols))
    else:  # groups of different sizes (or images next to videos): totals only
        runtime.record_merge(frames=frames, before=0, after=0, newline_tokens=0, totals=(before, after))


def set_pixel_limits(processor, args) -> None:
    """The plugin's ``min_pixels`` / ``max_pixels`` model_args as the image and video processors'
    size bounds (``shortest_edge`` / ``longest_edge``: pixels per image or frame)."""
    for sub in (processor.image_processor, processor.video_processor):
        size = {"shortest_edge": sub.size["shortest_edge"], "longest_edge": sub.size["longest_edge"]}
        if "min_pixels" in args:
            size["shortest_edge"] = args["min_pixels"]
        if "max_pixels" in args:
            size["longest_edge"] = args["max_pixels"]
        sub.size = size


def sampled_clip_metadata(model: str, raw, media, say) -> List[dict]:
    """Per clip, the sampled frames as the processors' video metadata: ``len(frames)`` frames spread
    over the clip's duration (its container header), i.e. a rate of frames / seconds; a clip
    of unknown duration (or no file: ``None``, e.g. bench's synthetic clip) is taken as 24
    frames per second (the processors' own fallback)."""
    from llava.video import video_duration_s

    metadata = []
    for path, frames in zip(raw, media):
        seconds = video_duration_s(path) if path is not None else None
        if not seconds:
            say(f"{model}: a clip's duration is unknown; its frames are taken as 24 per second")
            seconds = len(frames) / 24.0
        metadata.append({"total_num_frames": len(frames), "fps": len(frames) / seconds})
    return metadata


# -- the adapter ----------------------------------------------------------------------------
def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def install_merged_rope_index(inner, runtime, log: "MergeLog", merge: int, video_grids=None) -> None:
    """Wrap the model's ``get_rope_index`` so that it places a merged prompt (merged_rope_index):
    the stock function on the prompt, each merged token at its destination's (t, h, w).
    ``video_grids``: how the stock rule itemizes the videos' grids (default: as given; Qwen3-VL
    numbers each frame as an item, qwen3_vl.per_frame_grids)."""
    stock_rope = inner.get_rope_index
    rope_signature = inspect.signature(stock_rope)  # read once: this runs at every prefill
    log.call["rope_extra_names"] = [p for p in rope_signature.parameters if p not in _ROPE_CORE_ARGS]
    itemized = video_grids or (lambda grids: grids)

    @functools.wraps(stock_rope)
    def get_rope_index(input_ids, *args, **kwargs):
        bound = rope_signature.bind(input_ids, *args, **kwargs).arguments
        passthrough = {k: v for k, v in bound.items() if k not in _ROPE_CORE_ARGS}
        passthrough.update(bound.get("kwargs", {}))
        result = merged_rope_index(
            stock_rope, input_ids, bound.get("mm_token_type_ids"), bound.get("image_grid_thw"),
            itemized(bound.get("video_grid_thw")), bound.get("attention_mask"), runtime.cfg, merge,
            dest_of=log.dest_of, **passthrough,
        )
        if log.pending:  # merged tokens were placed at their destinations in these ids
            log.placed = True
        return result

    set_instance_attr(inner, "get_rope_index", get_rope_index, runtime)
    runtime.family_state["qwen_stock_rope"] = stock_rope


# model_args of lmms-eval's qwen2_vl / qwen2_5_vl models, as their plugin models take them
# (FamilyAdapter.stock_model_args)
QWEN_VL_STOCK_ARGS = (
    ("use_cache", (True,), "generation always decodes with the KV cache", None),
    ("max_num_frames", None, "frames per video (max_frames_num)", "max_frames_num"),
    ("max_length", None, "unused by lmms-eval's Qwen-VL generation as well", None),
    ("system_prompt", ("You are a helpful assistant.",),
     "the checkpoint's chat template adds its default system prompt, 'You are a helpful assistant.'", None),
    ("interleave_visuals", (False,), "the visuals come first, then the task's text", None),
    ("reasoning_prompt", (None,), "the task's text is sent unchanged", None),
)


class _QwenVLAdapter(FamilyAdapter):
    media = ("video", "image")
    merged_media = ("video", "image")
    processor_methods = ("replace_image_token", "replace_video_token")
    # tools: plugin, checkpoints, CLI. The processors resize each frame / image to a multiple of
    # 28 px with min_pixels <= h * w <= max_pixels (model_args; the official Qwen2-VL run:
    # max_pixels=200704, i.e. at most 16 x 16 merged tokens per 2 frames).
    plugin_model_args = ("max_pixels", "min_pixels")
    plugin_batches = False  # per-request processor inputs (video_metadata)
    time_positions = False  # whether the temporal positions count seconds (second_per_grid_ts)

    def plugin_setup(self, processor, args) -> None:
        set_pixel_limits(processor, args)

    def plugin_input_kwargs(self, kind, raw, media, say):
        """Where the temporal positions count seconds, the processor is told the sampled frames'
        rate from each clip's duration, instead of assuming 24 frames per second."""
        if kind != "video" or not self.time_positions:
            return {}
        return {"video_metadata": sampled_clip_metadata(self.plugin_model, raw, media, say)}

    def check_model(self, model, cfg) -> None:
        super().check_model(model, cfg)
        text = self.language_model(model).config
        sliding = [i for i, kind in enumerate(getattr(text, "layer_types", None) or []) if kind == "sliding_attention"]
        if cfg.pruning and sliding:
            raise UnsupportedModelError(
                f"{type(model).__name__} has sliding-window attention in decoder layers {sliding}: AIM's pruning builds "
                "full causal masks, so those layers would attend too far; load it with use_sliding_window=False, or "
                "disable pruning (l1=None, l2=None)"
            )

    # merging --------------------------------------------------------------------------
    def install_merging(self, inner, runtime) -> None:
        log = _log(runtime)
        merge = inner.config.vision_config.spatial_merge_size
        for key in (IMAGE, VIDEO):
            name = f"get_{'image' if key == IMAGE else 'video'}_features"
            set_instance_attr(inner, name, _merging_features(getattr(inner, name), key, merge, runtime, log), runtime)
        install_merged_rope_index(inner, runtime, log, merge)

    # positions ------------------------------------------------------------------------
    def install_positions(self, inner, runtime) -> None:
        merging = runtime.cfg.merging or runtime.track_sources
        pruning = runtime.cfg.pruning
        if not (merging or pruning):
            return  # AIM off: the stock model, untouched
        log = _log(runtime)
        merge = inner.config.vision_config.spatial_merge_size
        lm = inner.language_model

        def before_model(module, args, kwargs):
            if pruning:
                _check_pruned_cache_positions(module, kwargs)
            if not merging:
                return None
            if any(kwargs.get(PIXEL_ARGS[k]) is not None for k in (IMAGE, VIDEO)):
                log.clear()  # this forward computes (and merges) the features itself
            elif _embeds_encoded_features(kwargs):
                log.reuse()  # the last merged features, encoded before this forward
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            log.call.update(input_ids=input_ids, mm_token_type_ids=kwargs.get("mm_token_type_ids"),
                            attention_mask=kwargs.get("attention_mask"),
                            extra={k: kwargs[k] for k in log.call.get("rope_extra_names", []) if k in kwargs})
            return None

        def before_language_model(module, args, kwargs):
            position_ids = kwargs.get("position_ids")
            if merging and log.pending:
                if not log.placed:
                    position_ids = _place_merged(position_ids, log, runtime, merge)
                log.pending = False
            if pruning:
                from llava.model.language_model import compat  # imports transformers: not at module import

                position_ids = _driver_positions(position_ids, compat.peek_cache(kwargs))
            if position_ids is not None or "position_ids" in kwargs:
                kwargs["position_ids"] = position_ids
            return args, kwargs

        runtime.handles.append(inner.register_forward_pre_hook(before_model, with_kwargs=True))
        runtime.handles.append(lm.register_forward_pre_hook(before_language_model, with_kwargs=True))

    def merge_unit_images(self, processor, inputs, media, kind: str):
        # The pixel values are flattened patches; each temporal group is drawn over its first
        # frame, resized as the processor resized it (grid h x w patches of patch_size px).
        import numpy as np
        from PIL import Image

        sub = processor.video_processor if kind == "video" else processor.image_processor
        t, h, w = (int(v) for v in inputs[f"{kind}_grid_thw"][0])
        if kind == "video":
            frames = [np.asarray(media[min(g * sub.temporal_patch_size, len(media) - 1)]) for g in range(t)]
        else:
            frames = [np.asarray(media.convert("RGB"))]
        size = (w * sub.patch_size, h * sub.patch_size)
        return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BICUBIC)) for f in frames])

    # processor ------------------------------------------------------------------------
    def patch_processor(self, processor, cfg, runtime) -> None:
        # The stock methods return the placeholder repeated grid.prod() // merge**2 times.
        def replace_image_token(image_inputs, image_idx, **kwargs):
            grid = image_inputs["image_grid_thw"][image_idx]
            return processor.image_token * item_tokens(grid, processor.image_processor.merge_size, cfg)

        def replace_video_token(video_inputs, video_idx, **kwargs):
            grid = video_inputs["video_grid_thw"][video_idx]
            return processor.video_token * item_tokens(grid, processor.video_processor.merge_size, cfg)

        processor.replace_image_token = replace_image_token
        processor.replace_video_token = replace_video_token

    # -- geometry, for the analyzer and bench
    frames_per_unit = 2  # a temporal patch of 2 frames (an image: 1)
    mrope_positions = True
    pixel_limits = ("max_pixels", "min_pixels")
    default_max_pixels = 200704  # the official AIM Qwen2-VL run (448 x 448 px, 16 x 16 tokens per group)
    video_min_pixels = 128 * 28 * 28  # the video processors' default

    def vision_shape(self, config, name: str):
        from llava.analysis.shapes import VisionShape

        v = config.vision_config
        merge, patch = v.spatial_merge_size, v.patch_size
        tokens = (448 // patch) ** 2  # at 448 x 448 px; the analyzer sets it from the input
        channels = getattr(v, "in_chans", None) or v.in_channels
        if self.name == "qwen2_vl":
            return VisionShape(name, v.depth, v.embed_dim, int(v.embed_dim * v.mlp_ratio), v.num_heads, tokens,
                               patch_size=patch, channels=channels * v.temporal_patch_size, spatial_merge=merge)
        return VisionShape(name, v.depth, v.hidden_size, v.intermediate_size, v.num_heads, tokens, patch_size=patch,
                           channels=channels * v.temporal_patch_size, spatial_merge=merge, mlp="swiglu",
                           window_tokens=(v.window_size // patch) ** 2,
                           full_attention_layers=len(v.fullatt_block_indexes))

    def visual_tokens(self, config, frames: int, height=None, width=None, max_pixels=None,
                      min_pixels=None) -> VisualTokens:
        """Frames are resized as the processors do (transformers' ``smart_resize``: sides multiples
        of patch x merge = 28 px, min_pixels <= h * w <= max_pixels, the aspect kept); without a
        frame size, square frames large enough to be capped by max_pixels. Two frames make one
        temporal group (an odd count repeats the last frame); one image is one group."""
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        factor = config.vision_config.patch_size * config.vision_config.spatial_merge_size
        cap = self.default_max_pixels if max_pixels is None else max_pixels
        if height is None and width is None and self.default_frame_side is None and _positive_int(cap):
            height = width = math.isqrt(cap)  # no frame size: a square frame of max_pixels
        height, width, max_pixels, min_pixels = self.checked_frame_input(frames, height, width, max_pixels, min_pixels,
                                                                         factor)
        try:
            h, w = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
        except ValueError as exc:  # an aspect ratio beyond 200:1
            raise AIMConfigError(f"frame size {height} x {width}: {exc}") from None
        return self.grouped_tokens(frames, h, w, factor, max_pixels, min_pixels)

    def grouped_tokens(self, frames: int, h: int, w: int, factor: int, max_pixels: int, min_pixels: int,
                       per_group: Optional[int] = None) -> VisualTokens:
        """The VisualTokens of ``frames`` frames resized to h x w px: temporal groups of
        ``per_group`` frames (default ``frames_per_unit``; a partial group counts whole),
        (h / factor) x (w / factor) tokens each after the 2x2 patch merger."""
        rows, cols = h // factor, w // factor
        groups = -(-frames // (per_group or self.frames_per_unit))
        return VisualTokens(frames, groups, rows * cols, (rows, cols), (h, w),
                            {"max_pixels": max_pixels, "min_pixels": min_pixels})

    # how the input note words the resize: its pixel limits, and what it adds after them
    resize_note = "frames resized to {h} x {w} px, max_pixels {max_pixels}"
    input_note_tail = ""

    def input_note(self, tokens: VisualTokens) -> Optional[str]:
        (rows, cols), (h, w) = tokens.grid, tokens.frame_size
        resized = self.resize_note.format(h=h, w=w, max_pixels=tokens.pixel_limits["max_pixels"])
        return (f"{self.title} input: {tokens.frames} frames = {tokens.units} temporal groups of "
                f"{self.frames_per_unit} frames (the 'frames' above), each {rows} x {cols} = {tokens.tokens_per_unit} "
                f"tokens after the 2x2 patch merger ({resized}){self.input_note_tail}")

    def bench_tower_widths(self, vision_dims):
        """Qwen2.5-VL's tower: RMSNorm, a SwiGLU MLP (gate, up, down)."""
        return vision_dims["hidden_size"], vision_dims["intermediate_size"], False, True

    def bench_dims(self, config, scale):
        text = text_bench_dims(self, scale)
        head_dim = text["hidden_size"] // text["num_attention_heads"]
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1000000.0,
                                   "mrope_section": list(mrope_section(head_dim))}
        if isinstance(scale, BenchScale):  # the small tower's sizes at the real geometry
            if self.name == "qwen2_vl":
                vision = dict(depth=scale.vision_layers, embed_dim=scale.vision_hidden,
                              mlp_ratio=scale.vision_intermediate // scale.vision_hidden, num_heads=scale.vision_heads)
            else:  # 112 px windows in block 0, full attention in the last block
                vision = dict(depth=scale.vision_layers, hidden_size=scale.vision_hidden,
                              intermediate_size=scale.vision_intermediate, num_heads=scale.vision_heads,
                              window_size=112, fullatt_block_indexes=[scale.vision_layers - 1])
        else:
            v = scale.vision_config
            keys = (("depth", "embed_dim", "mlp_ratio", "num_heads") if self.name == "qwen2_vl" else
                    ("depth", "hidden_size", "intermediate_size", "num_heads", "window_size", "fullatt_block_indexes",
                     "tokens_per_second"))
            vision = {k: getattr(v, k) for k in keys}
        # the merger's output is the decoder's width
        vision["hidden_size" if self.name == "qwen2_vl" else "out_hidden_size"] = text["hidden_size"]
        return text, vision


# The 7B models' M-RoPE split of the 64 rotary frequency pairs (temporal, height, width).
MROPE_7B = (16, 24, 24)


def mrope_section(head_dim: int) -> Tuple[int, int, int]:
    """(temporal, height, width) rotary frequency pairs for ``head_dim``: the 7B models'
    (16, 24, 24) of 64 pairs, scaled (head_dim 32 -> (4, 6, 6))."""
    pairs = head_dim // 2
    t = pairs * MROPE_7B[0] // sum(MROPE_7B)
    h = (pairs - t) // 2
    return (t, h, pairs - t - h)


def _embeds_encoded_features(kwargs) -> bool:
    """Whether a multimodal forward embeds visual features encoded before it (``mm_encoder_outputs``,
    which generate() computes once and passes to every step that re-runs the whole prompt) into
    visual tokens of its input."""
    encoded = kwargs.get("mm_encoder_outputs") or {}
    types = kwargs.get("mm_token_type_ids")
    return any(v is not None for v in encoded.values()) and types is not None and bool((types != TEXT).any())


def _merging_features(stock, key: int, merge: int, runtime, log: MergeLog):
    """``get_image_features`` / ``get_video_features`` whose pooler_output is merged per item."""
    pixel_name, grid_name = PIXEL_ARGS[key], GRID_ARGS[key]

    @functools.wraps(stock)  # keeps the signature generate() reads to call it
    def features(*args, **kwargs):
        pixels = args[0] if args else kwargs.pop(pixel_name)
        grid = args[1] if len(args) > 1 else kwargs.pop(grid_name, None)
        want_tuple = kwargs.pop("return_dict", True) is False
        out = stock(pixels, grid, *args[2:], return_dict=True, **kwargs)
        merged, items = [], []
        for feats, item_grid in zip(out.pooler_output, grid):
            tokens, item = merge_item(feats, item_grid, merge, runtime)
            merged.append(tokens)
            items.append(item)
        out.pooler_output = tuple(merged)
        if not log.pending or log.items[key]:
            log.clear()  # the first features of a new call
        log.items[key] = items
        log.pending, log.placed = True, False
        _record_stats(runtime, log, merge)
        return out.to_tuple() if want_tuple else out

    return features


def _place_merged(position_ids, log: MergeLog, runtime, merge: int):
    """``position_ids`` with every merged visual token at its destination patch's position."""
    call = log.call
    input_ids, types = call.get("input_ids"), call.get("mm_token_type_ids")
    if input_ids is None or types is None or position_ids is None:
        raise UnsupportedUsageError(
            "merged visual tokens need input_ids and mm_token_type_ids (the processor's output) to be placed at "
            "their M-RoPE positions; inputs_embeds alone is not supported with AIM merging on Qwen-VL"
        )
    items = _items_per_row(log, input_ids, types, call.get("attention_mask"))
    grids = {k: torch.tensor([it.grid for it in items[k]], device=input_ids.device) if items[k] else None
             for k in (IMAGE, VIDEO)}
    placed, _ = merged_rope_index(
        runtime.family_state["qwen_stock_rope"], input_ids, types, grids[IMAGE], grids[VIDEO],
        call.get("attention_mask"), runtime.cfg, merge, dest_of=lambda key, i: items[key][i].dest,
        **call.get("extra", {}),
    )
    if position_ids.dim() == 2:
        position_ids = position_ids[None].expand(3, -1, -1)
    position_ids = position_ids.clone()
    visual = types != TEXT
    if call.get("attention_mask") is not None:
        visual &= call["attention_mask"].bool()
    spatial = position_ids[-3:]  # a 4-row tensor (generate) carries the text positions in row 0
    spatial[:, visual] = placed[:, visual].to(spatial.dtype)
    return position_ids


def _items_per_row(log: MergeLog, input_ids, types, attention_mask) -> Dict[int, List[MergedItem]]:
    """The merged items in the order the prompt's rows hold them.

    generate(num_return_sequences=k) may repeat each sample k times after the features were
    computed once (transformers 5.24 encodes before expanding): the rows then come in blocks
    of k identical rows, each holding its sample's items again."""
    valid = torch.ones_like(types, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    per_row = [[key for key, _, _ in _runs(types[b][valid[b]].tolist()) if key != TEXT] for b in range(types.shape[0])]
    counts = {k: sum(row.count(k) for row in per_row) for k in (IMAGE, VIDEO)}
    if all(counts[k] == len(log.items[k]) for k in (IMAGE, VIDEO)):
        return log.items
    factors = {counts[k] // len(log.items[k]) for k in (IMAGE, VIDEO) if log.items[k]}
    rows = types.shape[0]
    factor = factors.pop() if len(factors) == 1 else 0
    if not factor or rows % factor or any(counts[k] != factor * len(log.items[k]) for k in (IMAGE, VIDEO)) or not all(
            torch.equal(input_ids[b], input_ids[b - b % factor]) for b in range(rows)):
        raise UnsupportedUsageError(
            f"the prompt holds {counts[IMAGE]} images and {counts[VIDEO]} videos but {len(log.items[IMAGE])} and "
            f"{len(log.items[VIDEO])} were merged for it; pass the processor's output with its pixel values unchanged"
        )
    items: Dict[int, List[MergedItem]] = {IMAGE: [], VIDEO: []}
    taken = {IMAGE: 0, VIDEO: 0}
    for b in range(0, rows, factor):
        for key in (IMAGE, VIDEO):
            n = per_row[b].count(key)
            items[key] += log.items[key][taken[key]:taken[key] + n] * factor
            taken[key] += n
    return items


def _check_pruned_cache_positions(module, kwargs) -> None:
    """Without position ids and attention mask the stock forward places new tokens at the
    cache length (layer 0's) + rope_deltas. The driver never prunes layer 0, so that length is
    the unpruned one; should it ever differ, the positions would be wrong: refuse."""
    from llava.model.language_model import compat  # imports transformers: not at module import

    cache = compat.peek_cache(kwargs)
    state = getattr(cache, "aim_state", None)
    if state is None or kwargs.get("position_ids") is not None or kwargs.get("attention_mask") is not None:
        return
    if cache.get_seq_length() != state.seen_tokens:
        raise UnsupportedUsageError(
            f"a forward on an AIM-pruned cache without position_ids or attention_mask: {type(module).__name__} would "
            f"place the new tokens after the cache length {cache.get_seq_length()}, but the prompt so far holds "
            f"{state.seen_tokens} tokens; pass the attention_mask (generate() does) or the position_ids"
        )


def _driver_positions(position_ids, cache):
    """Plain (3, B, S) M-RoPE ids for the decoder driver (which drops the stock text model's
    row of packing positions and needs real positions once a cache was pruned)."""
    if position_ids is None:
        if getattr(cache, "aim_state", None) is not None:
            raise UnsupportedUsageError(
                "decoding on an AIM-pruned cache needs the M-RoPE position ids (Qwen-VL offsets text after visual "
                "items): call the full model with the attention mask (generate() does), not the language model alone"
            )
        return None
    if position_ids.dim() == 2:
        return position_ids[None].expand(3, -1, -1)
    if position_ids.shape[0] == 4:
        return position_ids[1:]
    return position_ids


class Qwen2VLAdapter(_QwenVLAdapter):
    name = "qwen2_vl"
    title = "Qwen2-VL"
    model_types = ("qwen2_vl",)
    model_classes = ("Qwen2VLForConditionalGeneration", "Qwen2VLModel")
    processor_class = "Qwen2VLProcessor"
    tiny_models = ("tiny-qwen2-vl",)
    references = {"Qwen/Qwen2-VL-7B-Instruct": Reference(("qwen2-vl-7b",), "qwen2-vl-vit", "qwen2-vl-7b")}
    plugin_model = "qwen2_vl_aim"
    plugin_class = "Qwen2VLAIM"
    default_checkpoint = "Qwen/Qwen2-VL-7B-Instruct"
    # the official AIM code's run: 32 frames, max_pixels 200704, the shrunken M-RoPE grid
    paper_eval_args = {"max_pixels": 200704, "positions": "official"}
    stock_model_args = QWEN_VL_STOCK_ARGS + (
        ("use_flash_attention_2", None, "attn_implementation=flash_attention_2 when true", "flash_attention_2"),
    )

    def bench_tower_widths(self, vision_dims):
        """Qwen2-VL's tower: LayerNorm, an fc1/fc2 MLP of mlp_ratio times the width."""
        return vision_dims["embed_dim"], vision_dims["embed_dim"] * vision_dims["mlp_ratio"], True, False
    refused_model_types = {"qwen3_5": QWEN35_REFUSAL, "qwen3_5_moe": QWEN35_REFUSAL}


class Qwen2_5_VLAdapter(_QwenVLAdapter):
    name = "qwen2_5_vl"
    title = "Qwen2.5-VL"
    model_types = ("qwen2_5_vl",)
    model_classes = ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLModel")
    processor_class = "Qwen2_5_VLProcessor"
    tiny_models = ("tiny-qwen2.5-vl",)
    references = {"Qwen/Qwen2.5-VL-7B-Instruct": Reference(("qwen2.5-vl-7b",), "qwen2.5-vl-vit", "qwen2.5-vl-7b")}
    plugin_model = "qwen2_5_vl_aim"
    plugin_class = "Qwen2_5_VLAIM"
    default_checkpoint = "Qwen/Qwen2.5-VL-7B-Instruct"
    paper_eval_args = {"max_pixels": 200704, "positions": "original"}
    stock_model_args = QWEN_VL_STOCK_ARGS + (
        ("fps", (None,), "frames are sampled by count (max_num_frames), not by rate", None),
    )
    time_positions = True  # second_per_grid_ts
