"""LLaVA-OneVision-1.5 (RICE ViT + 2x2 patch merger + Qwen3, 1-D RoPE): merging of video frames.

The model is new in transformers 5.25 (``LlavaOnevision15ForConditionalGeneration``, model type
``llava_onevision1_5``). Its vision side is Qwen2-VL-like: the Qwen2-VL image / video processors
cut every frame into 14 px patches in 2x2 merge order (no temporal patch: one grid step per
frame), the RICE tower prepends one CLS token per frame and drops it again before the merger
(LayerNorm -> 2x2 concat -> fc1 -> GELU -> fc2), and the merged tokens are scattered into the
``<|video_pad|>`` / ``<|image_pad|>`` placeholders. The language model is a plain Qwen3Model
with 1-D positions (``arange`` over the prompt), so the decoder driver serves it as it serves
LLaVA-OneVision's Qwen2: pruned survivors keep their original positions, nothing else to do.

Merging follows the LLaVA-OneVision rule: per video frame, on the merged (post-merger) tokens,
each frame keeping ``merged_token_count`` of its (h/2)*(w/2) tokens; the processor emits that
many placeholders per frame. Images go through the stock path unmerged (their visual tokens can
be pruned). There is no newline token.

Nothing here imports the model classes: the project imports on releases without them, and
:meth:`OneVision15Adapter.check_installed` refuses such a checkpoint with the release it needs.
"""

from __future__ import annotations

import functools
from typing import List, Optional, Tuple

import torch

from llava.aim.merge import merged_token_count
from llava.errors import AIMConfigError, UnsupportedModelError
from llava.model.families.base import (
    BenchScale,
    FamilyAdapter,
    Reference,
    VisualTokens,
    reduce_tokens,
    set_instance_attr,
    text_bench_dims,
)
from llava.model.families.qwen2_vl import set_pixel_limits

MIN_TRANSFORMERS = "5.25"  # the first release with models/llava_onevision1_5
MODEL_PACKAGE = "llava_onevision1_5"  # transformers/models/<this>: the family's modeling code


class OneVision15Adapter(FamilyAdapter):
    name = "onevision15"
    title = "LLaVA-OneVision-1.5"
    model_types = ("llava_onevision1_5",)
    model_classes = ("LlavaOnevision15ForConditionalGeneration", "LlavaOnevision15Model")
    processor_class = "Exaone4_5_Processor"  # what AutoProcessor maps llava_onevision1_5 to
    media = ("video", "image")
    merged_media = ("video",)
    tiny_models = ("tiny-llava-onevision-1.5",)
    processor_methods = ("replace_video_token",)
    # tools: plugin, checkpoints, CLI. Its image / video processors are Qwen2-VL's: each frame /
    # image is resized to a multiple of 28 px (14 px patches, 2x2 merge) within
    # min_pixels <= h * w <= max_pixels (model_args).
    plugin_model = "llava_onevision1_5_aim"
    plugin_class = "LlavaOneVision15AIM"
    default_checkpoint = "Deep-VLM/LLaVA-OneVision-1.5-4B-Instruct-hf"  # transformers conversion
    plugin_model_args = ("max_pixels", "min_pixels")

    def plugin_setup(self, processor, args) -> None:
        set_pixel_limits(processor, args)

    min_transformers = MIN_TRANSFORMERS

    # The shipped config is in transformers' format (model type llava_onevision1_5), its sizes the 8B's.
    references = {"lmms-lab/LLaVA-OneVision-1.5-8B-Instruct": Reference(("llava-onevision-1.5-8b",), "rice-vit-l",
                                                                         "llava-onevision-1.5-8b")}

    # -- geometry, for the analyzer and bench
    frames_per_unit = 1  # no temporal patch: each frame is one grid step, merged alone
    pixel_limits = ("max_pixels", "min_pixels")
    # The checkpoint's video processor limits (per frame; the tiny model's processor ships them)
    default_max_pixels = 12845056
    video_min_pixels = 3136
    default_frame_side = 448  # the analyzer's default square frame

    def vision_shape(self, config, name: str):
        from llava.analysis.shapes import VisionShape

        v = config.vision_config
        side = self.default_frame_side // v.patch_size  # the analyzer sets it from the input
        return VisionShape(name, v.depth, v.hidden_size, v.intermediate_size, v.num_heads, side * side + 1,
                           class_token=True, patch_size=v.patch_size, channels=v.in_channels,
                           spatial_merge=v.spatial_merge_size)

    def visual_tokens(self, config, frames: int, height=None, width=None, max_pixels=None,
                      min_pixels=None) -> VisualTokens:
        """Each frame resized as the Qwen2-VL video processor does (``smart_resize`` per frame: sides
        multiples of patch x merge = 28 px, min_pixels <= h * w <= max_pixels, the aspect kept);
        without a frame size, 448 x 448 px frames. Each frame is one unit of (h/28) x (w/28) tokens
        (the tower's per-frame CLS token is dropped before the merger)."""
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        v = config.vision_config
        factor = v.patch_size * v.spatial_merge_size
        height, width, max_pixels, min_pixels = self.checked_frame_input(frames, height, width, max_pixels, min_pixels,
                                                                         factor)
        try:
            h, w = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
        except ValueError as exc:  # an aspect ratio beyond 200:1
            raise AIMConfigError(f"frame size {height} x {width}: {exc}") from None
        rows, cols = h // factor, w // factor
        return VisualTokens(frames, frames, rows * cols, (rows, cols), (h, w),
                            {"max_pixels": max_pixels, "min_pixels": min_pixels})

    def input_note(self, tokens: VisualTokens) -> Optional[str]:
        (rows, cols), (h, w) = tokens.grid, tokens.frame_size
        return (f"{self.title} input: {tokens.frames} frames, each {rows} x {cols} = {tokens.tokens_per_unit} tokens "
                f"after the 2x2 patch merger (frames resized to {h} x {w} px, max_pixels "
                f"{tokens.pixel_limits['max_pixels']} per frame)")

    def bench_tower_widths(self, vision_dims):
        """bench's memory estimate counts the RICE tower's blocks at its config widths, RMSNorm and
        a gated MLP assumed (the larger of the two MLP forms)."""
        return vision_dims["hidden_size"], vision_dims["intermediate_size"], False, True

    def bench_dims(self, config, scale):
        text = text_bench_dims(self, scale)
        if isinstance(scale, BenchScale):
            text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1000000.0}
            vision = dict(depth=scale.vision_layers, hidden_size=scale.vision_hidden,
                          intermediate_size=scale.vision_intermediate, num_heads=scale.vision_heads)
        else:
            v = scale.vision_config
            vision = {k: getattr(v, k) for k in ("depth", "hidden_size", "intermediate_size", "num_heads")}
        vision["out_hidden_size"] = text["hidden_size"]  # the merger's output is the decoder's width
        return text, vision

    # -- which transformers ----------------------------------------------------------------
    def installed(self) -> bool:
        """Whether the installed transformers has the model's package, read from the installed
        files: importing transformers here would make every import of the families (lmms-eval's
        entry point included) pay for it."""
        import importlib.util
        import os

        spec = importlib.util.find_spec("transformers")
        return spec is not None and any(os.path.isdir(os.path.join(root, "models", MODEL_PACKAGE))
                                        for root in spec.submodule_search_locations or ())

    # -- merging -----------------------------------------------------------------------------
    def install_merging(self, inner, runtime) -> None:
        merge = inner.config.vision_config.spatial_merge_size
        stock = inner.get_video_features

        @functools.wraps(stock)  # keeps the signature generate() may read
        def get_video_features(pixel_values_videos, video_grid_thw=None, *args, **kwargs):
            want_tuple = kwargs.get("return_dict", True) is False
            kwargs["return_dict"] = True
            out = stock(pixel_values_videos, video_grid_thw, *args, **kwargs)
            merged, records = [], []
            for features, grid in zip(out.pooler_output, video_grid_thw.tolist()):
                tokens, record = merge_video(features, grid, merge, runtime)
                merged.append(tokens)
                records.append(record)
            out.pooler_output = tuple(merged)
            _record(runtime, records)
            return out.to_tuple() if want_tuple else out

        set_instance_attr(inner, "get_video_features", get_video_features, runtime)

    def merge_unit_images(self, processor, inputs, media, kind: str):
        """The pixel values are flattened patches: each frame (one grid step, no temporal patch) is
        drawn resized as the processor resized it (grid h x w patches of patch_size px)."""
        import numpy as np
        from PIL import Image

        sub = processor.video_processor if kind == "video" else processor.image_processor
        t, h, w = (int(v) for v in inputs[f"{kind}_grid_thw"][0])
        step = getattr(sub, "temporal_patch_size", 1) or 1
        frames = ([np.asarray(media[min(g * step, len(media) - 1)]) for g in range(t)] if kind == "video"
                  else [np.asarray(media.convert("RGB"))])
        size = (w * sub.patch_size, h * sub.patch_size)
        return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BICUBIC)) for f in frames])

    # -- processor ---------------------------------------------------------------------------
    def patch_processor(self, processor, cfg, runtime) -> None:
        stock = processor.replace_video_token
        merge = processor.video_processor.merge_size

        def replace_video_token(video_inputs, video_idx, **kwargs):
            text = stock(video_inputs, video_idx, **kwargs)
            frames, per_frame = frame_tokens(video_inputs["video_grid_thw"][video_idx], merge)
            if text.count(processor.video_token) != frames * per_frame:
                raise UnsupportedModelError(
                    f"the stock processor emitted {text.count(processor.video_token)} video placeholders for "
                    f"{frames} frames of {per_frame} tokens; this {type(processor).__name__} is not the one AIM knows"
                )
            return processor.video_token * (frames * merged_token_count(per_frame, cfg.retention, cfg.merge_count))

        processor.replace_video_token = replace_video_token


def frame_tokens(grid, merge: int) -> Tuple[int, int]:
    """(frames, merged tokens per frame) of a video grid (t, h, w) in patches."""
    t, h, w = (int(v) for v in grid)
    return t, (h // merge) * (w // merge)


def merge_video(features: torch.Tensor, grid, merge: int, runtime):
    """One video's merged tokens (frames * kept, C), each frame merged on its own, and what to record."""
    t, h, w = (int(v) for v in grid)
    rows, cols = h // merge, w // merge
    frames = features.reshape(t, rows * cols, features.shape[-1])
    result = reduce_tokens(runtime, frames, grid=(rows, cols))
    record = (t, rows * cols, result.tokens.shape[1], (rows, cols), result.source_index)
    return result.tokens.reshape(-1, features.shape[-1]), record


def _record(runtime, records: List[tuple]) -> None:
    """The merge statistics of one call's videos; frames of different sizes are recorded as totals."""
    frames = sum(r[0] for r in records)
    before = sum(r[0] * r[1] for r in records)
    after = sum(r[0] * r[2] for r in records)
    grids = {r[3] for r in records}
    if len(grids) == 1:
        sources: Optional[torch.Tensor] = None
        if all(r[4] is not None for r in records):
            sources = torch.cat([r[4] for r in records])
        runtime.record_merge(frames=frames, before=records[0][1], after=records[0][2], newline_tokens=0,
                             sources=sources, grid=records[0][3])
    else:
        runtime.record_merge(frames=frames, before=0, after=0, newline_tokens=0, totals=(before, after))
