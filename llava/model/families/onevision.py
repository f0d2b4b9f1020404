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

A registered "video" reduction (llava.aim.frames: VisionZip, DyCoke, ...) runs per video from
its registry entry alone: at stage "projected" on the pooled frames, at stage "vision" on the
unpooled features before the projector (pooling made the identity, as for PruMerge), with the
feature layer's attention and keys where the entry needs "vision_attention"; the processor
reserves the entry's bound per video (+ the newline), the filler dropped as PruMerge's.
"""

from __future__ import annotations

import math

import torch

from llava.aim.frames import head_mean_keys, received_attention, reduce_videos
from llava.aim.merge import merged_token_count
from llava.aim.policy import video_reduction
from llava.aim.prumerge import cls_attention, prumerge_frames, token_bound
from llava.aim.registry import run_stage
from llava.errors import UnsupportedModelError
from llava.model.families.llava15 import LLAVA_NEXT_STOCK_ARGS
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
    # registered video reductions (llava.aim.frames): after the 2x2 pooling (196 tokens per frame
    # at 384 px) or on the 729 unpooled SigLIP features before the projector, with the feature
    # layer's attention there (at the projected stage pooled as the features are)
    reduction_stages = ("projected", "vision")
    vision_attention_stages = ("vision", "projected")
    # tools: plugin, checkpoints, CLI
    plugin_model = "llava_onevision_aim"
    plugin_class = "LlavaOneVisionAIM"
    default_checkpoint = "lmms-lab/llava-onevision-qwen2-7b-ov"
    # lmms-eval's own llava_onevision model_args the plugin takes (llava.eval.args.STOCK_ARGS)
    stock_model_args = LLAVA_NEXT_STOCK_ARGS + (
        ("conv_template", ("qwen_1_5",),
         "the prompt is built with the checkpoint's own chat template (Qwen2's, as LLaVA-NeXT's qwen_1_5)", None),
        ("mm_spatial_pool_stride", (2,),
         "transformers' LLaVA-OneVision pools each video frame's grid by 2 (27x27 -> 14x14), always", None),
        ("mm_spatial_pool_mode", ("bilinear",),
         "transformers' LLaVA-OneVision pools video frames bilinearly, always", None),
        ("token_strategy", ("single",), "one video placeholder per video", None),
    )
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
        entry = video_reduction(cfg.method)
        if entry is not None and "vision_attention" in entry.needs:
            feature_layer(self.inner(model), cfg.method)

    def install_merging(self, inner, runtime) -> None:
        if runtime.cfg.prumerging:
            self._install_prumerge(inner, runtime)
            return
        if runtime.cfg.video_reducing:
            self._install_video_reduction(inner, runtime)
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

    def _install_video_reduction(self, inner, runtime) -> None:
        """The method's registered video reduction (llava.aim.frames) on each video: at stage
        "projected" on the pooled frames (wrapping ``apply_pooling``), at stage "vision" on the
        unpooled features before the projector (a projector pre-hook; the pooling is then the
        identity). Each video's output is padded to the entry's bound, laid out as the stock code
        expects (frames rows of ceil(bound / frames) tokens), and cut back to the bound after."""
        cfg = runtime.cfg
        entry = video_reduction(cfg.method)
        stage = run_stage(entry, self.reduction_stages)
        attention_layer = feature_layer(inner, cfg.method) if "vision_attention" in entry.needs else None
        projections = None if attention_layer is None else CapturedProjections(attention_layer.self_attn, runtime)
        stock_pooling = inner.apply_pooling
        stock_video_features = inner.get_video_features
        video_token = inner.config.video_token_id
        call = {"videos": 0, "frames": 0, "reduced": None, "laid": 0}

        def reduce(features, before: int):
            videos, frames = call["videos"], call["frames"]
            side = math.isqrt(features.shape[1])
            attention = keys = None
            if projections is not None:
                q, k = projections.take(features.shape[0])
                heads = attention_layer.self_attn.num_heads
                attention, keys = received_attention(q, k, heads), head_mean_keys(k, heads)
                if stage == "projected":  # per pooled token: pooled as the features (bilinear 2x2)
                    attention = stock_pooling(attention[..., None])[..., 0]
                    keys = stock_pooling(keys)
            reduced = reduce_videos(entry, cfg, features, frames, (side, side), attention, keys)
            call["reduced"] = reduced
            call["laid"] = frames * -(-reduced.tokens.shape[1] // frames)
            runtime.record_merge(frames=videos * frames, before=before, after=0, newline_tokens=videos,
                                 kept_per_frame=reduced.kept_per_frame,
                                 totals=(videos * (frames * before + 1), int(reduced.real.sum()) + videos))
            rows = -(-reduced.tokens.shape[1] // frames)  # the stock code reshapes frames rows per video
            laid = reduced.tokens.new_zeros(videos, frames * rows, reduced.tokens.shape[-1])
            laid[:, : reduced.tokens.shape[1]] = reduced.tokens
            return laid.reshape(videos * frames, rows, -1)

        def get_video_features(pixel_values_videos, *args, **kwargs):
            call["videos"], call["frames"] = pixel_values_videos.shape[:2]
            try:
                out = stock_video_features(pixel_values_videos, *args, **kwargs)
                reduced, laid = call["reduced"], call["laid"]
            finally:
                call.update(videos=0, frames=0, reduced=None, laid=0)
            # (videos, frames * rows [+ 1]): the padded outputs laid out in rows, then the newline where
            # this transformers appends it here (>= 5.24; before, the forward appends it afterwards)
            features = out.pooler_output
            bound = reduced.tokens.shape[1]
            out.pooler_output = torch.cat([features[:, :bound], features[:, laid:]], dim=1)
            newline = torch.ones(reduced.real.shape[0], 1, dtype=torch.bool, device=reduced.real.device)
            runtime.record_arrival(video_token, torch.cat([reduced.real, newline], dim=1))
            return out

        def apply_pooling(image_features):
            if not call["videos"]:
                return stock_pooling(image_features)
            if stage == "vision":
                return image_features  # reduced before the projector: no pooling, as PruMerge runs
            pooled = stock_pooling(image_features)  # (videos * frames, T, C), T = 196 at 384 px
            return reduce(pooled, pooled.shape[1])

        def reduce_before_projector(module, args):
            if not call["videos"]:
                return None  # an image: the stock path
            features = args[0]  # (videos * frames, 729, D), unpooled
            side = math.isqrt(features.shape[1])
            return (reduce(features, ((side + 1) // 2) ** 2),) + tuple(args[1:])  # before: the stock pooled count

        if stage == "vision":
            runtime.handles.append(inner.multi_modal_projector.register_forward_pre_hook(reduce_before_projector))
        set_instance_attr(inner, "get_video_features", get_video_features, runtime)
        set_instance_attr(inner, "apply_pooling", apply_pooling, runtime)

    def patch_processor(self, processor, cfg, runtime) -> None:
        stock = processor.replace_video_token
        plus = prumerge_plus_samples(self, cfg)
        bound = token_bound(unpooled_patches(processor), plus) if cfg.prumerging else None
        entry = video_reduction(cfg.method)

        def replace_video_token(video_inputs, video_idx, **kwargs):
            text = stock(video_inputs, video_idx, **kwargs)
            total = text.count(processor.video_token)
            frames = len(video_inputs["pixel_values_videos"][video_idx])
            per_frame = (total - 1) // frames  # stock: frames * T + 1 newline
            if cfg.prumerging:  # unpooled patches; the most PruMerge can give each frame
                return processor.video_token * (frames * bound + 1)
            if entry is not None:  # the most the method can give this video, then the newline
                vision = run_stage(entry, self.reduction_stages) == "vision"
                t = unpooled_patches(processor, cfg.method) if vision else per_frame
                return processor.video_token * (int(entry.bound(frames, t, cfg)) + 1)
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


def unpooled_patches(processor, who: str = "PruMerge") -> int:
    """Patches per frame before the 2x2 pooling (729 at 384 px), as the processor counts them."""
    patches = getattr(processor, "num_image_tokens", None)
    if not patches:
        raise UnsupportedModelError(
            f"{who} needs the processor's per-frame patch count (num_image_tokens); {type(processor).__name__} has none"
        )
    return int(patches) - (1 if getattr(processor, "vision_feature_select_strategy", "full") == "default" else 0)


def feature_layer(inner, who: str = "PruMerge"):
    """The SigLIP layer that produces the features LLaVA-OneVision selects (its output is
    hidden_states[vision_feature_layer]): PruMerge reads its query and key projections, as
    the official code hooks the last layer of its truncated tower; so do video reductions that
    need "vision_attention"."""
    layers, state = vision_encoder_layers(inner, -1, who, "SigLIP/CLIP-style")
    index = state - 1  # hidden_states[s] is the output of layers[s - 1]
    if index < 0:
        raise UnsupportedModelError(f"{who} needs features from an encoder layer, not the patch embeddings")
    return layers[index]
