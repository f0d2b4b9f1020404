"""LLaVA-OneVision (SigLIP + Qwen2): merging of video frames.

Each frame's tokens are merged right after the 2x2 bilinear pooling and before the newline
token is appended (``apply_pooling`` is wrapped), so the LLM receives frames * k + 1 tokens;
the processor emits that many placeholders instead of frames * 196 + 1. Images go through
the stock any-resolution path unmerged (only their visual tokens can be pruned).
"""

from __future__ import annotations

from llava.aim.merge import merged_token_count
from llava.model.families.base import FamilyAdapter, reduce_tokens, set_instance_attr


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

    def install_merging(self, inner, runtime) -> None:
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

    def patch_processor(self, processor, cfg, runtime) -> None:
        stock = processor.replace_video_token

        def replace_video_token(video_inputs, video_idx, **kwargs):
            text = stock(video_inputs, video_idx, **kwargs)
            total = text.count(processor.video_token)
            frames = len(video_inputs["pixel_values_videos"][video_idx])
            per_frame = (total - 1) // frames  # stock: frames * T + 1 newline
            kept = merged_token_count(per_frame, cfg.retention, cfg.merge_count)
            return processor.video_token * (frames * kept + 1)

        processor.replace_video_token = replace_video_token
