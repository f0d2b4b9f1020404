"""Qwen3-VL and Qwen3-VL-MoE (ViT with DeepStack mergers + 2x2 patch merger + Qwen3 / Qwen3-MoE
with interleaved 3-D rotary positions). docs/qwen3_vl.md tells the whole story.

What differs from Qwen2-VL (qwen2_vl.py, whose machinery this module reuses):

* DeepStack: the vision tower also returns, for a few of its blocks, one tensor with a row per
  merged-patch token; the text model adds tensor k to the hidden states of the visual rows after
  decoder layer k. Merging merges every DeepStack tensor with exactly the groups and weights of
  the main features (they are stacked beside the main features along the channels, and the
  matching sees the main features only), so row i of each tensor still belongs to merged token i.
* A video is split per temporal patch by timestamp text, ``<t seconds><|vision_start|>
  pads<|vision_end|>``; the stock ``get_rope_index`` numbers each of those runs as an item of
  its own with grid (1, h, w). The merge log therefore holds one item per temporal group, and
  the video grids are split the same way before the positions are computed. Timestamps and
  each frame's vision_start/end are text and stay as they are.
* The processor: each run of placeholders of the stock replacement (a video's frames, an
  image) is cut to the merged count; the rest of the stock text is kept, so whatever wrapper
  the installed release emits (5.24 keeps an outer vision_start/end around a video, 5.25 drops
  it) stays exactly as stock.

Positions ("original"): merged tokens keep their destination patch's stock (t, h, w), text keeps
its stock positions; decoding continues at the stock next position (qwen2_vl.py).

Pruning: the decoder driver runs the layer loop, so the DeepStack additions are handed to it as
:class:`LayerAdditions` (the text model's ``visual_pos_masks`` / ``deepstack_visual_embeds``,
taken out of its keywords by a pre-hook). The driver adds them after each layer to the visual
tokens still present, so any pruning layer is correct (rows of pruned tokens are dropped with
them); the default (l1, l2) still starts pruning after the DeepStack layers, where no addition
is left to slice.
"""

from __future__ import annotations

import functools
import re
from typing import List, Optional, Sequence, Tuple

import torch

from llava.aim.policy import aim_default_layers
from llava.errors import AIMConfigError
from llava.model.families.base import BenchScale, LayerAdditions, Reference, VisualTokens, set_instance_attr
from llava.model.families.qwen2_vl import (
    GRID_ARGS,
    IMAGE,
    PIXEL_ARGS,
    VIDEO,
    MergedItem,
    MergeLog,
    _log,
    _QwenVLAdapter,
    _record_stats,
    install_merged_rope_index,
    item_tokens,
    merge_item,
    sampled_clip_metadata,
    mrope_section,
)

# The released Qwen3-VL checkpoints add DeepStack features after decoder layers 0, 1 and 2.
CHECKPOINT_DEEPSTACK_LAYERS = 3
DEEPSTACK_KWARGS = ("visual_pos_masks", "deepstack_visual_embeds")  # Qwen3-VL text model keywords


def per_frame_grids(video_grid_thw):
    """Each video's grid (t, h, w) as t grids (1, h, w): the runs the stock get_rope_index numbers."""
    if video_grid_thw is None:
        return None
    split = torch.repeat_interleave(video_grid_thw, video_grid_thw[:, 0], dim=0)
    split[:, 0] = 1
    return split


def merge_item_with_deepstack(features: torch.Tensor, deepstack: Sequence[torch.Tensor], grid, merge: int,
                              runtime) -> Tuple[torch.Tensor, List[torch.Tensor], MergedItem]:
    """One item's merged main features and DeepStack rows: the similarity (the groups) comes from
    the main features, and every DeepStack tensor is averaged with the same groups and weights."""
    widths = [features.shape[-1]] + [d.shape[-1] for d in deepstack]
    stacked = torch.cat([features, *deepstack], dim=-1) if deepstack else features
    merged, item = merge_item(stacked, grid, merge, runtime, similarity_channels=widths[0])
    main, *levels = torch.split(merged, widths, dim=-1)
    return main, levels, item


def frame_items(item: MergedItem, merge: int) -> List[MergedItem]:
    """A video item as one item per temporal group: grid (1, h, w), destinations within the group."""
    t, h, w = item.grid
    area = (h // merge) * (w // merge)
    dest = item.dest.reshape(t, -1)
    return [MergedItem(grid=(1, h, w), dest=dest[g] - g * area,
                       sources=None if item.sources is None else item.sources[g:g + 1]) for g in range(t)]


def _merging_features(stock, stock_image, key: int, merge: int, runtime, log: MergeLog):
    """``get_image_features`` / ``get_video_features`` whose pooler_output and DeepStack features
    are merged per item. Both call the stock image path (the stock video one calls
    ``self.get_image_features``, which is the patched image method on this instance)."""
    pixel_name, grid_name = PIXEL_ARGS[key], GRID_ARGS[key]

    @functools.wraps(stock)  # keeps the signature generate() reads to call it
    def features(*args, **kwargs):
        pixels = args[0] if args else kwargs.pop(pixel_name)
        grid = args[1] if len(args) > 1 else kwargs.pop(grid_name, None)
        want_tuple = kwargs.pop("return_dict", True) is False
        out = stock_image(pixels, grid, *args[2:], return_dict=True, **kwargs)
        levels = out.deepstack_features or []
        merged, merged_levels, items = [], [[] for _ in levels], []
        for i, (feats, item_grid) in enumerate(zip(out.pooler_output, grid)):
            tokens, rows, item = merge_item_with_deepstack(feats, [level[i] for level in levels], item_grid, merge,
                                                           runtime)
            merged.append(tokens)
            for kept, level_rows in zip(merged_levels, rows):
                kept.append(level_rows)
            items.extend(frame_items(item, merge) if key == VIDEO else [item])
        out.pooler_output = tuple(merged)
        if out.deepstack_features is not None:
            out.deepstack_features = [tuple(level) for level in merged_levels]
        if not log.pending or log.items[key]:
            log.clear()  # the first features of a new call
        log.items[key] = items
        log.pending, log.placed = True, False
        _record_stats(runtime, log, merge)
        return out.to_tuple() if want_tuple else out

    return features


def deepstack_additions(kwargs) -> Optional[LayerAdditions]:
    """The text model's DeepStack keywords (taken out of ``kwargs``) as the driver's LayerAdditions;
    None when the call carries none."""
    stock = {name: kwargs.pop(name) for name in DEEPSTACK_KWARGS if name in kwargs}
    mask, embeds = stock.get("visual_pos_masks"), stock.get("deepstack_visual_embeds")
    if mask is None or embeds is None:
        return None
    return LayerAdditions(mask=mask, rows_by_layer=dict(enumerate(embeds)), stock_kwargs=stock)


class Qwen3VLAdapter(_QwenVLAdapter):
    name = "qwen3_vl"
    title = "Qwen3-VL"
    model_types = ("qwen3_vl",)
    model_classes = ("Qwen3VLForConditionalGeneration", "Qwen3VLModel")
    processor_class = "Qwen3VLProcessor"
    tiny_models = ("tiny-qwen3-vl",)
    # The oldest release tested: 5.17's Qwen3-VL hands its DeepStack features to the model in
    # another form (merging them fails there), and the releases in between were never tested.
    min_transformers = "5.24"
    # tools: plugin, checkpoints, CLI. The processors resize each frame / image to a multiple of
    # 32 px (16 px patches, 2x2 merge) within min_pixels <= h * w <= max_pixels (model_args).
    plugin_model = "qwen3_vl_aim"
    plugin_class = "Qwen3VLAIM"
    default_checkpoint = "Qwen/Qwen3-VL-8B-Instruct"
    # Our run (the paper has no Qwen3-VL): 32 frames (the scripts' FRAMES), at most 262144 px per
    # frame = 16 x 16 merged tokens of 32 px per 2 frames, the visual-token count of the paper's
    # Qwen2-VL run (200704 px = 16 x 16 of 28 px) -- docs/qwen3_vl.md says why.
    paper_eval_args = {"max_pixels": 262144, "positions": "original"}

    def plugin_input_kwargs(self, kind, raw, media, say):
        """A video's frames reach the processor already sampled: it must not sample again, and
        its timestamp text needs their times, from each clip's duration (Qwen2.5-VL's rule)."""
        if kind != "video":
            return {}
        metadata = sampled_clip_metadata(self.plugin_model, raw, media, say)
        for clip, frames in zip(metadata, media):
            clip["frames_indices"] = list(range(len(frames)))  # frame i at i / fps seconds
        return {"video_metadata": metadata, "do_sample_frames": False}

    references = {"Qwen/Qwen3-VL-8B-Instruct": Reference(("qwen3-vl-8b",), "qwen3-vl-vit", "qwen3-vl-8b")}

    # -- geometry, for the analyzer and bench
    # The video processor's limits bound the whole clip (frames x height x width), not one frame:
    # its class defaults (size longest_edge / shortest_edge) are the analyzer's.
    default_frame_side = 448  # the analyzer's default square frame (the official AIM Qwen-VL input)

    @property
    def default_max_pixels(self) -> int:
        return _video_processor_size()["longest_edge"]

    @property
    def video_min_pixels(self) -> int:
        return _video_processor_size()["shortest_edge"]

    def vision_shape(self, config, name: str):
        from llava.analysis.shapes import VisionShape

        v = config.vision_config
        side = self.default_frame_side // v.patch_size  # the analyzer sets it from the input
        return VisionShape(name, v.depth, v.hidden_size, v.intermediate_size, v.num_heads, side * side,
                           patch_size=v.patch_size, channels=v.in_channels * v.temporal_patch_size,
                           spatial_merge=v.spatial_merge_size, extra_mergers=len(v.deepstack_visual_indexes or ()))

    def visual_additions(self, config) -> int:
        """DeepStack: the visual rows are added to the hidden states after this many decoder layers."""
        return len(config.vision_config.deepstack_visual_indexes or ())

    def visual_tokens(self, config, frames: int, height=None, width=None, max_pixels=None,
                      min_pixels=None) -> VisualTokens:
        """As the Qwen3-VL video processor resizes (its ``smart_resize``: sides multiples of patch x
        merge = 32 px, min_pixels <= frames x h x w <= max_pixels over the whole clip, the aspect
        kept); without a frame size, 448 x 448 px frames. Two frames make one temporal group; fewer
        frames than a temporal patch count as one group (the frame repeated, as the processor
        pads). Timestamps and the per-group vision_start/end tokens are text, not counted here."""
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize

        v = config.vision_config
        factor, temporal = v.patch_size * v.spatial_merge_size, v.temporal_patch_size
        height, width, max_pixels, min_pixels = self.checked_frame_input(frames, height, width, max_pixels, min_pixels,
                                                                         factor)
        try:
            h, w = smart_resize(max(frames, temporal), height, width, temporal_factor=temporal, factor=factor,
                                min_pixels=min_pixels, max_pixels=max_pixels)
        except ValueError as exc:  # an aspect ratio beyond 200:1
            raise AIMConfigError(f"frame size {height} x {width}: {exc}") from None
        return self.grouped_tokens(frames, h, w, factor, max_pixels, min_pixels, per_group=temporal)

    resize_note = "frames resized to {h} x {w} px; max_pixels {max_pixels} over the clip"
    input_note_tail = "; timestamps are text"

    def bench_dims(self, config, scale):
        from llava.model.families.base import text_bench_dims

        text = text_bench_dims(self, scale)
        head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
        if isinstance(scale, BenchScale):
            text["rope_parameters"] = {"rope_type": "default", "rope_theta": 5000000.0,
                                       "mrope_section": list(mrope_section(head_dim)), "mrope_interleaved": True}
            depth = max(scale.vision_layers, 2)
            vision = dict(depth=depth, hidden_size=scale.vision_hidden, intermediate_size=scale.vision_intermediate,
                          num_heads=scale.vision_heads, deepstack_visual_indexes=list(range(depth - 1)))
        else:
            v = scale.vision_config
            vision = {k: getattr(v, k) for k in ("depth", "hidden_size", "intermediate_size", "num_heads",
                                                   "deepstack_visual_indexes", "num_position_embeddings")}
        text.update(self._bench_moe_dims(scale))
        vision["out_hidden_size"] = text["hidden_size"]  # the merger's output is the decoder's width
        return text, vision

    def _bench_moe_dims(self, scale):
        return {}

    def official_layers(self, num_layers: int) -> Optional[Tuple[int, int]]:
        """The paper's scaled (l1, l2), with pruning starting no earlier than after the DeepStack
        layers (the official Qwen3-VL has no AIM schedule)."""
        l1, l2 = aim_default_layers(num_layers)
        l1 = min(max(l1, CHECKPOINT_DEEPSTACK_LAYERS), num_layers - 1)
        return l1, max(l2, l1 + 1)

    # merging --------------------------------------------------------------------------
    def install_merging(self, inner, runtime) -> None:
        log = _log(runtime)
        merge = inner.config.vision_config.spatial_merge_size
        stock_image = inner.get_image_features
        for key in (IMAGE, VIDEO):
            name = f"get_{'image' if key == IMAGE else 'video'}_features"
            features = _merging_features(getattr(inner, name), stock_image, key, merge, runtime, log)
            set_instance_attr(inner, name, features, runtime)
        # one item per video frame run, as the stock rule (and the merge log) count them
        install_merged_rope_index(inner, runtime, log, merge, video_grids=per_frame_grids)

    # positions and DeepStack ----------------------------------------------------------
    def install_positions(self, inner, runtime) -> None:
        super().install_positions(inner, runtime)
        if not runtime.cfg.pruning:
            return  # the stock layer loop adds the (merged) DeepStack rows itself

        def deepstack_to_driver(module, args, kwargs):
            additions = deepstack_additions(kwargs)
            if additions is not None:
                from llava.model.language_model.driver import LAYER_ADDITIONS_KWARG  # imports transformers

                kwargs[LAYER_ADDITIONS_KWARG] = additions
            return args, kwargs

        # registered after the positions' pre-hook: runs after it
        runtime.handles.append(inner.language_model.register_forward_pre_hook(deepstack_to_driver,
                                                                               with_kwargs=True))

    # processor ------------------------------------------------------------------------
    def patch_processor(self, processor, cfg, runtime) -> None:
        # The stock methods' text, with each run of placeholders cut to the merged count.
        stock_image, stock_video = type(processor).replace_image_token, type(processor).replace_video_token

        def replace_image_token(image_inputs, image_idx, **kwargs):
            grid = image_inputs["image_grid_thw"][image_idx]
            text = stock_image(processor, image_inputs, image_idx, **kwargs)
            return _cut_runs(text, processor.image_token, [grid], processor.image_processor.merge_size, cfg)

        def replace_video_token(video_inputs, video_idx, **kwargs):
            grid = video_inputs["video_grid_thw"][video_idx]
            text = stock_video(processor, video_inputs, video_idx, **kwargs)
            return _cut_runs(text, processor.video_token, per_frame_grids(torch.as_tensor(grid)[None]),
                             processor.video_processor.merge_size, cfg)

        processor.replace_image_token = replace_image_token
        processor.replace_video_token = replace_video_token


def _cut_runs(text: str, token: str, grids, merge: int, cfg) -> str:
    """``text`` with its i-th run of ``token`` (grid ``grids[i]``, stock length h*w/merge^2) cut
    to the merged count; the number and lengths of the runs are checked against the grids."""
    runs = list(re.finditer(f"(?:{re.escape(token)})+", text))
    if len(runs) != len(grids):
        raise RuntimeError(f"the stock processor emitted {len(runs)} runs of {token} for {len(grids)} groups")
    out, end = [], 0
    for run, grid in zip(runs, grids):
        full = int(torch.as_tensor(grid).prod()) // merge**2
        if (run.end() - run.start()) != full * len(token):
            raise RuntimeError(f"the stock processor emitted a run of {(run.end() - run.start()) // len(token)} "
                               f"{token} for a group of {full} tokens")
        out += [text[end:run.start()], token * item_tokens(grid, merge, cfg)]
        end = run.end()
    return "".join(out) + text[end:]


class Qwen3VLMoeAdapter(Qwen3VLAdapter):
    name = "qwen3_vl_moe"
    title = "Qwen3-VL-MoE"
    model_types = ("qwen3_vl_moe",)
    model_classes = ("Qwen3VLMoeForConditionalGeneration", "Qwen3VLMoeModel")
    tiny_models = ("tiny-qwen3-vl-moe",)
    plugin_model = "qwen3_vl_moe_aim"
    plugin_class = "Qwen3VLMoeAIM"
    default_checkpoint = "Qwen/Qwen3-VL-30B-A3B-Instruct"

    references = {"Qwen/Qwen3-VL-30B-A3B-Instruct": Reference(("qwen3-vl-30b-a3b",), "qwen3-vl-moe-vit",
                                                              "qwen3-vl-30b-a3b")}

    def _bench_moe_dims(self, scale):
        if isinstance(scale, BenchScale):  # 8 experts, 2 per token, each a quarter of the dense MLP
            return dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=scale.intermediate // 4)
        text = self.text_config(scale)
        return {k: getattr(text, k) for k in ("num_experts", "num_experts_per_tok", "moe_intermediate_size")}


def _video_processor_size():
    """The installed Qwen3-VL video processor's default pixel limits (over a whole clip)."""
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    size = Qwen3VLVideoProcessor.size
    return {"longest_edge": int(size["longest_edge"]), "shortest_edge": int(size["shortest_edge"])}
