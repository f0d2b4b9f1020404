"""LLaVA-OneVision (SigLIP + Qwen2): merging of video frames.

Each frame's tokens are merged right after the 2x2 bilinear pooling and before the newline
token is appended (``apply_pooling`` is wrapped), so the LLM receives frames * k + 1 tokens;
the processor emits that many placeholders instead of frames * 196 + 1. Images go through
the stock any-resolution path unmerged (only their visual tokens can be pruned).

LLaVA-PruMerge (AIMConfig.method "prumerge" / "prumerge_plus") runs as the official code runs
it on LLaVA-OneVision: on each frame's 729 UNPOOLED SigLIP features before the projector
(the official setting mm_spatial_pool_mode=identity: no 2x2 pooling, and no AIM merging),
with the CLS query taken as the mean of the queries of the vision layer that produced the
features, and that layer's keys. The official code's PruMerge+ on SigLIP leaves the spatial
samples out (commented out there: they "introduce way many tokens"), so here both methods are
the adaptive selection + merging. The processor reserves
:func:`llava.aim.prumerge.token_bound` placeholders per frame (183 of 729) and the unused
ones are dropped before the LLM's first layer.
"""

from __future__ import annotations

import math

import torch

from llava.aim.merge import merged_token_count
from llava.aim.prumerge import cls_attention, prumerge_frames, token_bound
from llava.errors import UnsupportedModelError
from llava.model.families.base import Reference, VisualTokens, text_bench_dims, vit_bench_dims, vit_shape
from llava.model.families.base import (
    CapturedProjections,
    FamilyAdapter,
    prumerge_plus_samples,
    reduce_tokens,
    set_instance_attr,
    vision_encoder_layers,
)


class OneVisionAdapter(FamilyAdapter):
    name = "onevision"
    title = "LLaVA-OneVision"
    model_types = ("llava_onevision",)
    model_classes = ("LlavaOnevisionForConditionalGeneration", "LlavaOnevisionModel")
    processor_class = "LlavaOnevisionProcessor"
    media = ("video", "image")
    merged_media = ("video",)
    tiny_models = ("tiny-llava-onevision",)
    processor_methods = ("replace_video_token",)
    supports_prumerge = True
    prumerge_spatial_samples = False  # the official SigLIP PruMerge+ has them commented out
    # tools: plugin, checkpoints, CLI
    plugin_model = "llava_onevision_aim"
    plugin_class = "LlavaOneVisionAIM"
    default_checkpoint = "lmms-lab/llava-onevision-qwen2-7b-ov"
    checkpoint_aliases = {
        "lmms-lab/llava-onevision-qwen2-7b-ov": "llava-hf/llava-onevision-qwen2-7b-ov-hf",
        "lmms-lab/llava-onevision-qwen2-0.5b-ov": "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
        "lmms-lab/llava-onevision-qwen2-72b-ov": "llava-hf/llava-onevision-qwen2-72b-ov-hf",
        "lmms-lab/llava-onevision-qwen2-7b-si": "llava-hf/llava-onevision-qwen2-7b-si-hf",
    }

    def check_model(self, model, cfg) -> None:
        super().check_model(model, cfg)
        if cfg.prumerging:
            feature_layer(self.inner(model))

    def install_merging(self, inner, runtime) -> None:
        if runtime.cfg.prumerging:
            self._install_prumerge(inner, runtime)
            return
        stock_pooling = inner.apply_pooling
        stock_video_features = inner.get_video_features
        videos_in_call = {"n": 0}

        def get_video_features(pixel_values_videos, *args, **kwargs):
            videos_in_call["n"] = pixel_values_videos.shape[0]
            return stock_video_features(pixel_values_videos, *args, **kwargs)

        def apply_pooling(image_features):
            pooled = stock_pooling(image_features)  # (videos*frames, T, C), T = 196 at 384 px
            result = reduce_tokens(runtime, pooled)
            runtime.record_merge(
                frames=pooled.shape[0], before=pooled.shape[1], after=result.tokens.shape[1],
                newline_tokens=videos_in_call["n"], sources=result.source_index,
            )
            return result.tokens

        set_instance_attr(inner, "get_video_features", get_video_features, runtime)
        set_instance_attr(inner, "apply_pooling", apply_pooling, runtime)

    def _install_prumerge(self, inner, runtime) -> None:
        projections = CapturedProjections(feature_layer(inner).self_attn, runtime)
        plus = prumerge_plus_samples(self, runtime.cfg)
        stock_video_features = inner.get_video_features
        video_token = inner.config.video_token_id
        call = {"videos": 0, "real": None}

        def get_video_features(pixel_values_videos, *args, **kwargs):
            call["videos"] = pixel_values_videos.shape[0]
            try:
                out = stock_video_features(pixel_values_videos, *args, **kwargs)
            finally:
                call["videos"] = 0
            real = call.pop("real")  # (videos * frames, U) from the projector hook below
            per_video = real.reshape(pixel_values_videos.shape[0], -1)
            newline = torch.ones(per_video.shape[0], 1, dtype=torch.bool, device=per_video.device)
            runtime.record_arrival(video_token, torch.cat([per_video, newline], dim=1))
            return out

        def prumerge_features(module, args):
            if not call["videos"]:
                return None  # an image: the stock path
            features = args[0]  # (videos * frames, 729, D), unpooled
            q, k = projections.take(features.shape[0])
            attn = cls_attention(q.mean(dim=1), k)  # SigLIP has no CLS: the mean query
            result = prumerge_frames(features, k, attn, plus)
            call["real"] = result.real
            side = math.isqrt(features.shape[1])  # "before": what the stock model gives, after its 2x2 pooling
            runtime.record_merge(frames=features.shape[0], before=((side + 1) // 2) ** 2, after=result.tokens.shape[1],
                                 newline_tokens=call["videos"], kept_per_frame=result.counts.tolist())
            return (result.tokens,) + tuple(args[1:])

        def apply_pooling(image_features):
            return image_features  # mm_spatial_pool_mode=identity, as the official PruMerge runs

        runtime.handles.append(inner.multi_modal_projector.register_forward_pre_hook(prumerge_features))
        set_instance_attr(inner, "get_video_features", get_video_features, runtime)
        set_instance_attr(inner, "apply_pooling", apply_pooling, runtime)

    def patch_processor(self, processor, cfg, runtime) -> None:
        stock = processor.replace_video_token
        plus = prumerge_plus_samples(self, cfg)
        bound = token_bound(unpooled_patches(processor), plus) if cfg.prumerging else None

        def replace_video_token(video_inputs, video_idx, **kwargs):
            text = stock(video_inputs, video_idx, **kwargs)
            total = text.count(processor.video_token)
            frames = len(video_inputs["pixel_values_videos"][video_idx])
            per_frame = (total - 1) // frames  # stock: frames * T + 1 newline
            if cfg.prumerging:  # unpooled patches; the most PruMerge can give each frame
                return processor.video_token * (frames * bound + 1)
            kept = merged_token_count(per_frame, cfg.retention, cfg.merge_count)
            return processor.video_token * (frames * kept + 1)

        processor.replace_video_token = replace_video_token

    # -- geometry, for the analyzer and bench
    newline_tokens = 1  # the image_newline after a video
    references = {"llava-hf/llava-onevision-qwen2-7b-ov-hf": Reference(("qwen2-7b",), "siglip-so400m", "onevision-7b")}

    def vision_shape(self, config, name: str):
        return vit_shape(config.vision_config, name, class_token=False)

    def visual_tokens(self, config, frames: int, height=None, width=None, **pixel_limits) -> VisualTokens:
        # a video frame's patches are pooled 2 x 2 (bilinear, sides rounded up): 27 x 27 -> 14 x 14
        side = math.ceil(config.vision_config.image_size // config.vision_config.patch_size / 2)
        return VisualTokens(frames, frames, side * side, (side, side))

    def bench_dims(self, config, scale):
        return text_bench_dims(self, scale), vit_bench_dims(scale)


def unpooled_patches(processor) -> int:
    """Patches per frame before the 2x2 pooling (729 at 384 px), as the processor counts them."""
    patches = getattr(processor, "num_image_tokens", None)
    if not patches:
        raise UnsupportedModelError(
            f"PruMerge needs the processor's per-frame patch count (num_image_tokens); {type(processor).__name__} has none"
        )
    return int(patches) - (1 if getattr(processor, "vision_feature_select_strategy", "full") == "default" else 0)


def feature_layer(inner):
    """The SigLIP layer that produces the features LLaVA-OneVision selects (its output is
    hidden_states[vision_feature_layer]): PruMerge reads its query and key projections, as
    the official code hooks the last layer of its truncated tower."""
    layers, state = vision_encoder_layers(inner, -1, "PruMerge", "SigLIP/CLIP-style")
    index = state - 1  # hidden_states[s] is the output of layers[s - 1]
    if index < 0:
        raise UnsupportedModelError("PruMerge needs features from an encoder layer, not the patch embeddings")
    return layers[index]
