"""LLaVA-1.5 (CLIP ViT-L/336 + Llama): merging of each image's tokens.

Two places merging can hook in (AIMConfig.merge_metric):

* "keys" (the official code, the default): the CLIP features LLaVA selects (the
  penultimate layer's output, CLS dropped: 576 x 1024) are merged BEFORE the projector (a
  forward pre-hook on it). The similarity is the cosine of the attention keys that the next
  CLIP layer (layer 23 of 24) computes from those same features, read with a forward hook on
  that layer's k_proj (its CLS row dropped as the features' is); the keys are merged alongside
  the features at every step.
* "tokens": the projected tokens the LLM receives are merged after the projector (a forward
  hook on it), their own cosine as the similarity.

Either way the LLM receives k tokens per image instead of 576; the processor emits k placeholders.

LLaVA-PruMerge / PruMerge+ (AIMConfig.method) read the same CLIP layer's query and key
projections: the CLS query's attention over the 577 keys (CLS column dropped after the
softmax) selects, the keys (CLS dropped) match, and the selected features are merged before
the projector (llava.aim.prumerge). The count is data-dependent: the processor reserves
:func:`llava.aim.prumerge.token_bound` placeholders per image and the unused ones are dropped
before the LLM's first layer.

A registered "video" reduction (llava.aim.frames; VisionZip) runs on each image as a one-frame
video, on the selected features before the projector, from its registry entry alone, with the
attention, keys and CLS feature of the CLIP layer that produced the features where it needs
"vision_attention"; the count is reserved and spliced as PruMerge's.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

from llava.aim.frames import head_mean_keys, received_attention, reduce_videos
from llava.aim.merge import merged_token_count
from llava.aim.policy import LLAVA15_OFFICIAL_LAYERS, video_reduction
from llava.aim.prumerge import cls_attention, prumerge_frames, token_bound
from llava.errors import UnsupportedModelError
from llava.model.families.base import Reference, VisualTokens, text_bench_dims, vit_bench_dims, vit_shape
from llava.model.families.base import (
    CapturedProjections,
    FamilyAdapter,
    prumerge_plus_samples,
    reduce_tokens,
    vision_encoder_layers,
)


class Llava15Adapter(FamilyAdapter):
    name = "llava15"
    title = "LLaVA-1.5"
    model_types = ("llava",)
    model_classes = ("LlavaForConditionalGeneration", "LlavaModel")
    processor_class = "LlavaProcessor"
    media = ("image",)
    merged_media = ("image",)
    tiny_models = ("tiny-llava-1.5",)
    processor_methods = ("replace_image_token",)
    supports_prumerge = True
    # registered video reductions (llava.aim.frames), each image a one-frame video: on the 576
    # selected CLIP features before the projector, with the feature layer's CLS attention
    reduction_stages = ("vision",)
    vision_attention_stages = ("vision",)
    merge_metrics = ("keys", "tokens")
    official_merge_metric = "keys"
    # tools: plugin, checkpoints, CLI
    plugin_model = "llava_aim"
    plugin_class = "LlavaAIM"
    default_checkpoint = "liuhaotian/llava-v1.5-7b"
    checkpoint_aliases = {
        "liuhaotian/llava-v1.5-7b": "llava-hf/llava-1.5-7b-hf",
        "liuhaotian/llava-v1.5-13b": "llava-hf/llava-1.5-13b-hf",
    }
    fixed_image_size = True  # CLIP's processor resizes and crops every image to 336 x 336 (576 tokens)

    def official_layers(self, num_layers: int) -> Optional[Tuple[int, int]]:
        return LLAVA15_OFFICIAL_LAYERS.get(num_layers)

    def check_model(self, model, cfg) -> None:
        super().check_model(model, cfg)
        inner = self.inner(model)
        if (cfg.merging and cfg.merge_metric == "keys") or cfg.prumerging:
            key_layer(inner)
        if (cfg.prumerging or cfg.video_reducing) and \
                getattr(inner.config, "vision_feature_select_strategy", "default") != "default":
            raise UnsupportedModelError(
                f"{cfg.method} needs CLIP's CLS token out of the features (vision_feature_select_strategy "
                f"'default'), got {inner.config.vision_feature_select_strategy!r}"
            )
        if cfg.video_reducing:
            feature_layer(inner, cfg.method)

    def install_merging(self, inner, runtime) -> None:
        if runtime.cfg.prumerging:
            self._install_prumerge(inner, runtime)
            return
        if runtime.cfg.video_reducing:
            self._install_video_reduction(inner, runtime)
            return
        if runtime.cfg.merging and runtime.cfg.merge_metric == "keys":
            self._install_key_merging(inner, runtime)
            return

        def merge_projected(module, args, output):
            result = reduce_tokens(runtime, output)  # (images, 576, C) -> (images, k, C)
            runtime.record_merge(
                frames=output.shape[0], before=output.shape[1], after=result.tokens.shape[1],
                newline_tokens=0, sources=result.source_index,
            )
            return result.tokens

        runtime.handles.append(inner.multi_modal_projector.register_forward_hook(merge_projected))

    def _install_key_merging(self, inner, runtime) -> None:
        captured = {}

        def keep_keys(module, args, output):
            captured["keys"] = output  # (images, 577, D): k_proj of the layer after the selected one

        def merge_features(module, args):
            features = args[0]  # (images, 576, D): the selected CLIP features, CLS dropped
            keys = captured.pop("keys", None)
            if keys is None or keys.shape[0] != features.shape[0]:
                raise UnsupportedModelError(
                    "merge_metric='keys' found no CLIP keys for these features (the vision tower did not run "
                    "the layer after the selected one); use merge_metric='tokens'"
                )
            metric = keys[:, keys.shape[1] - features.shape[1]:]  # drop CLS as the features did
            result = reduce_tokens(runtime, features, metric=metric)
            runtime.record_merge(
                frames=features.shape[0], before=features.shape[1], after=result.tokens.shape[1],
                newline_tokens=0, sources=result.source_index,
            )
            return (result.tokens,) + tuple(args[1:])

        k_proj = key_layer(inner).self_attn.k_proj
        runtime.handles.append(k_proj.register_forward_hook(keep_keys))
        runtime.handles.append(inner.multi_modal_projector.register_forward_pre_hook(merge_features))

    def _install_prumerge(self, inner, runtime) -> None:
        projections = CapturedProjections(key_layer(inner).self_attn, runtime)
        plus = prumerge_plus_samples(self, runtime.cfg)
        image_token = inner.config.image_token_id

        def prumerge_features(module, args):
            features = args[0]  # (images, 576, D), CLS dropped
            q, k = projections.take(features.shape[0])  # (images, 577, D), CLS first
            attn = cls_attention(q[:, 0], k, drop_first=True)
            result = prumerge_frames(features, k[:, 1:], attn, plus)
            runtime.record_arrival(image_token, result.real)
            runtime.record_merge(frames=features.shape[0], before=features.shape[1], after=result.tokens.shape[1],
                                 newline_tokens=0, kept_per_frame=result.counts.tolist())
            return (result.tokens,) + tuple(args[1:])

        runtime.handles.append(inner.multi_modal_projector.register_forward_pre_hook(prumerge_features))

    def _install_video_reduction(self, inner, runtime) -> None:
        """The method's registered reduction (llava.aim.frames) on each image as a one-frame video,
        on the selected features before the projector (a projector pre-hook), with the attention
        and keys of the CLIP layer that produced them and that layer's CLS feature; each output
        padded to the entry's bound, the filler dropped before the LLM's first layer."""
        cfg = runtime.cfg
        entry = video_reduction(cfg.method)
        layer = feature_layer(inner, cfg.method)
        needs_attention = "vision_attention" in entry.needs
        projections = CapturedProjections(layer.self_attn, runtime) if needs_attention else None
        image_token = inner.config.image_token_id
        captured = {}

        def keep_cls(module, args, output):
            captured["cls"] = (output[0] if isinstance(output, tuple) else output)[:, 0]

        def reduce_features(module, args):
            features = args[0]  # (images, 576, D), CLS dropped
            side = math.isqrt(features.shape[1])
            attention = keys = cls = None
            if projections is not None:
                q, k = projections.take(features.shape[0])  # (images, 577, D), CLS first
                heads = layer.self_attn.num_heads
                attention = received_attention(q, k, heads, cls_index=0)[:, 1:]  # softmax over all 577
                keys = head_mean_keys(k, heads)[:, 1:]
                cls = captured.pop("cls")
            reduced = reduce_videos(entry, cfg, features, 1, (side, side), attention, keys, cls)
            runtime.record_arrival(image_token, reduced.real)
            runtime.record_merge(frames=features.shape[0], before=features.shape[1], after=0, newline_tokens=0,
                                 kept_per_frame=reduced.kept_per_frame,
                                 totals=(features.shape[0] * features.shape[1], int(reduced.real.sum())))
            return (reduced.tokens,) + tuple(args[1:])

        if needs_attention:
            runtime.handles.append(layer.register_forward_hook(keep_cls))
        runtime.handles.append(inner.multi_modal_projector.register_forward_pre_hook(reduce_features))

    def patch_processor(self, processor, cfg, runtime) -> None:
        stock = processor.replace_image_token
        plus = prumerge_plus_samples(self, cfg)
        entry = video_reduction(cfg.method)

        def replace_image_token(image_inputs, image_idx, **kwargs):
            text = stock(image_inputs, image_idx, **kwargs)
            patches = text.count(processor.image_token)
            if cfg.prumerging:  # the most PruMerge can give; unused ones are dropped before layer 0
                return processor.image_token * token_bound(patches, plus)
            if entry is not None:  # the most the method can give an image (one frame)
                return processor.image_token * int(entry.bound(1, patches, cfg))
            return processor.image_token * merged_token_count(patches, cfg.retention, cfg.merge_count)

        processor.replace_image_token = replace_image_token

    # -- geometry, for the analyzer and bench
    references = {"llava-hf/llava-1.5-7b-hf": Reference(("vicuna-7b", "llama-7b"), "clip-vit-l-336", "llava-1.5-7b")}

    def vision_shape(self, config, name: str):
        return vit_shape(config.vision_config, name, class_token=True)

    def visual_tokens(self, config, frames: int, height=None, width=None, **pixel_limits) -> VisualTokens:
        # every image is resized to the tower's size; "default" selection drops the class token
        side = config.vision_config.image_size // config.vision_config.patch_size
        extra = int(getattr(config, "vision_feature_select_strategy", "default") == "full")
        return VisualTokens(frames, frames, side * side + extra, (side, side))

    def bench_dims(self, config, scale):
        return text_bench_dims(self, scale), vit_bench_dims(scale)


def feature_layer(inner, who: str):
    """The CLIP encoder layer that produces the features LLaVA selects (hidden_states[s] is the
    output of layers[s - 1]: layer 22 of 24 for vision_feature_layer = -2), whose attention and
    keys a video reduction with "vision_attention" reads (VisionZip's attentions[-2])."""
    layers, state = vision_encoder_layers(inner, -2, who, "CLIP")
    if state < 1:
        raise UnsupportedModelError(f"{who} needs features from an encoder layer, not the patch embeddings")
    return layers[state - 1]


def key_layer(inner):
    """The CLIP encoder layer whose keys are merging's similarity: the one right after the
    layer LLaVA selects its features from (hidden_states[s] is the input of layers[s]), i.e.
    layer 23 of 24 for LLaVA-1.5's vision_feature_layer = -2."""
    layers, index = vision_encoder_layers(inner, -2, "merge_metric='keys'", "CLIP", "; use merge_metric='tokens'")
    if index >= len(layers):
        selected = getattr(inner.config, "vision_feature_layer", -2)
        raise UnsupportedModelError(
            f"merge_metric='keys' uses the keys of the CLIP layer after the selected one, but "
            f"vision_feature_layer={selected} is the last layer's output; use merge_metric='tokens'"
        )
    return layers[index]
