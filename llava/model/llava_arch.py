"""Wiring AIM into stock transformers LLaVA models: ``apply_aim(model, processor, cfg)``.

Nothing is copied from transformers and nothing installed is edited: AIM wraps a few bound
methods / hooks of the *instances* it is given.

* LLaVA-OneVision, video: each frame's tokens are merged right after the 2x2 pooling and
  before the newline token (wrapping ``apply_pooling``); the processor emits frames*k+1
  placeholders instead of frames*196+1.
* LLaVA-1.5, image: each image's projected tokens are merged (forward hook on the
  projector); the processor emits k placeholders per image instead of 576.
* Both: if pruning is configured, the language model's forward is replaced by the decoder
  driver and its attention by the AIM wrapper of the same backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

import torch

from llava.aim.config import AIMConfig
from llava.aim.merge import merged_token_count
from llava.aim.reduce import reduce_frames
from llava.errors import AIMConfigError, UnsupportedModelError, UnsupportedUsageError
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
    """

    visual_tokens_before_merge: int = 0
    visual_tokens_after_merge: int = 0
    frames: int = 0
    tokens_per_frame_before_merge: int = 0
    tokens_per_frame_after_merge: int = 0
    merge_sources: Optional[torch.Tensor] = None
    layer_survivors: Optional[List[torch.Tensor]] = None
    layer_seq_lens: List[int] = field(default_factory=list)
    layer_seq_lens_per_sample: List[List[int]] = field(default_factory=list)
    visual_tokens_per_layer: List[List[int]] = field(default_factory=list)
    kv_cache_lens: List[int] = field(default_factory=list)

    def to_dict(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("merge_sources", "layer_survivors")}

    def merge_groups(self) -> torch.Tensor:
        """(F, H, W) long: the merged token each patch of each frame went into."""
        if self.merge_sources is None:
            raise UnsupportedUsageError("no merge sources recorded: apply_aim(..., track_sources=True), then run the model")
        return patch_grid(self.merge_sources)

    def survivors(self, layer: int) -> torch.Tensor:
        """(F, H, W) bool: whether each patch's merged token is present entering ``layer``."""
        if self.layer_survivors is None:
            raise UnsupportedUsageError(
                "no survivors recorded: apply_aim(..., track_sources=True) with pruning on, then run the model"
            )
        return patch_grid(self.layer_survivors[layer].gather(1, self.merge_sources))


def patch_grid(per_patch: torch.Tensor) -> torch.Tensor:
    """(F, T) values per patch -> (F, H, W) on the square patch grid (row-major, H = W)."""
    frames, t = per_patch.shape
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
        self.handles = []
        self.restore = []

    # visual-token mask: set by a pre-hook on the multimodal model, consumed by the driver
    def set_visual_mask(self, input_ids: Optional[torch.Tensor]) -> None:
        if input_ids is None:
            self._visual_mask = None
            return
        mask = torch.zeros_like(input_ids, dtype=torch.bool)
        for token_id in self.image_token_ids:
            mask |= input_ids == token_id
        self._visual_mask = mask

    def take_visual_mask(self) -> Optional[torch.Tensor]:
        mask, self._visual_mask = self._visual_mask, None
        return mask

    def record_merge(self, frames: int, before: int, after: int, newline_tokens: int, sources=None) -> None:
        s = self.stats
        s.frames = frames
        s.tokens_per_frame_before_merge = before
        s.tokens_per_frame_after_merge = after
        s.visual_tokens_before_merge = frames * before + newline_tokens
        s.visual_tokens_after_merge = frames * after + newline_tokens
        s.merge_sources = sources
        s.layer_survivors = None

    def record_prefill(self, record, cache) -> None:
        s = self.stats
        s.layer_seq_lens = record.layer_seq_lens
        s.layer_seq_lens_per_sample = record.layer_seq_lens_per_sample
        s.visual_tokens_per_layer = record.visual_tokens_per_layer
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


def _model_kind(model) -> str:
    name = type(model).__name__
    if name in ("LlavaOnevisionForConditionalGeneration", "LlavaOnevisionModel"):
        return "onevision"
    if name in ("LlavaForConditionalGeneration", "LlavaModel"):
        return "llava"
    raise UnsupportedModelError(
        f"AIM supports LlavaOnevisionForConditionalGeneration and LlavaForConditionalGeneration "
        f"(transformers), got {name}"
    )


def _inner(model):
    return model.model if hasattr(model, "lm_head") else model


def apply_aim(model, processor=None, cfg: Optional[AIMConfig] = None, track_sources: bool = False):
    """Enable AIM on a loaded transformers LLaVA-OneVision / LLaVA(-1.5) model and its processor.

    Returns (model, processor), both patched in place. Calling it again replaces the previous
    setting. ``AIMConfig.disabled()`` restores the stock behaviour exactly. After each call
    ``model.aim_stats`` holds what AIM did.
    """
    cfg = AIMConfig() if cfg is None else cfg
    if not isinstance(cfg, AIMConfig):
        raise AIMConfigError(f"cfg must be an AIMConfig, got {type(cfg).__name__}")
    kind = _model_kind(model)
    inner = _inner(model)
    lm = inner.language_model
    cfg.check_against_model(len(lm.layers))
    if processor is not None:
        _check_processor(processor, kind)  # before touching anything: no half-patched model
    remove_aim(model, processor)

    config = model.config
    token_ids = [getattr(config, "image_token_id", None), getattr(config, "video_token_id", None)]
    runtime = AIMRuntime(cfg, token_ids, track_sources=track_sources)

    if cfg.merging or track_sources:
        if kind == "onevision":
            _wrap_onevision_video(inner, runtime)
        else:
            _hook_llava_projector(inner, runtime)
    if cfg.pruning:
        _install_pruning(inner, lm, runtime)
    if processor is not None:
        _patch_processor(processor, kind, cfg, runtime)

    model.aim_config = cfg
    model._aim_runtime = runtime
    return model, processor


def remove_aim(model, processor=None) -> None:
    """Undo ``apply_aim`` (no-op on a model without AIM)."""
    runtime = getattr(model, "_aim_runtime", None)
    if runtime is not None:
        runtime.uninstall()
        del model._aim_runtime
        model.aim_config = AIMConfig.disabled()
    if processor is not None:
        for name in ("replace_video_token", "replace_image_token"):
            processor.__dict__.pop(name, None)


def _aim_stats(self):
    runtime = getattr(self, "_aim_runtime", None)
    return runtime.stats if runtime is not None else AIMStats()


# Read-only view for every model class AIM patches (instances only gain data when patched).
for _cls_name in ("LlavaOnevisionForConditionalGeneration", "LlavaForConditionalGeneration"):
    import transformers as _tf

    _cls = getattr(_tf, _cls_name)
    if not hasattr(_cls, "aim_stats"):
        _cls.aim_stats = property(_aim_stats)


# -- merging ------------------------------------------------------------------------------
def _set_instance_attr(obj, name, value, runtime) -> None:
    had = name in obj.__dict__
    old = obj.__dict__.get(name)
    setattr(obj, name, value)

    def undo():
        if had:
            setattr(obj, name, old)
        else:
            obj.__dict__.pop(name, None)

    runtime.restore.append(undo)


def _merge(runtime: AIMRuntime, features: torch.Tensor):
    # AIM's merging, or spatial pooling for the "pool" control (llava.aim.policy)
    return reduce_frames(features, runtime.cfg, track_sources=runtime.track_sources)


def _wrap_onevision_video(inner, runtime: AIMRuntime) -> None:
    stock_pooling = inner.apply_pooling
    stock_video_features = inner.get_video_features
    videos_in_call = {"n": 0}

    def get_video_features(pixel_values_videos, *args, **kwargs):
        videos_in_call["n"] = pixel_values_videos.shape[0]
        return stock_video_features(pixel_values_videos, *args, **kwargs)

    def apply_pooling(image_features):
        pooled = stock_pooling(image_features)  # (videos*frames, T, C), T = 196 at 384 px
        result = _merge(runtime, pooled)
        runtime.record_merge(
            frames=pooled.shape[0], before=pooled.shape[1], after=result.tokens.shape[1],
            newline_tokens=videos_in_call["n"], sources=result.source_index,
        )
        return result.tokens

    _set_instance_attr(inner, "get_video_features", get_video_features, runtime)
    _set_instance_attr(inner, "apply_pooling", apply_pooling, runtime)


def _hook_llava_projector(inner, runtime: AIMRuntime) -> None:
    def merge_projected(module, args, output):
        result = _merge(runtime, output)  # (images, 576, C) -> (images, k, C)
        runtime.record_merge(
            frames=output.shape[0], before=output.shape[1], after=result.tokens.shape[1],
            newline_tokens=0, sources=result.source_index,
        )
        return result.tokens

    runtime.handles.append(inner.multi_modal_projector.register_forward_hook(merge_projected))


# -- pruning ------------------------------------------------------------------------------
def _install_pruning(inner, lm, runtime: AIMRuntime) -> None:
    def remember_visual_tokens(module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        runtime.set_visual_mask(input_ids)
        if input_ids is None and kwargs.get("inputs_embeds") is not None:
            runtime.set_visual_mask(_visual_mask_from_embeds(module, kwargs["inputs_embeds"], runtime))

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


def _visual_mask_from_embeds(inner, inputs_embeds, runtime: AIMRuntime):
    # As the stock model does without input_ids: placeholders equal the token's embedding.
    table = inner.get_input_embeddings()
    ids = torch.tensor(runtime.image_token_ids, device=inputs_embeds.device)
    placeholder = table(ids)  # (k, C)
    return (inputs_embeds[:, :, None, :] == placeholder[None, None]).all(-1).any(-1)


# -- processors ---------------------------------------------------------------------------
def _check_processor(processor, kind: str) -> None:
    expected = {"onevision": "LlavaOnevisionProcessor", "llava": "LlavaProcessor"}[kind]
    if type(processor).__name__ != expected:
        raise UnsupportedModelError(
            f"the model needs a {expected} (its placeholder count must follow merging), got {type(processor).__name__}"
        )


def _patch_processor(processor, kind: str, cfg: AIMConfig, runtime: AIMRuntime) -> None:
    if not cfg.merging:
        return
    if kind == "onevision":
        stock = processor.replace_video_token

        def replace_video_token(video_inputs, video_idx, **kwargs):
            text = stock(video_inputs, video_idx, **kwargs)
            total = text.count(processor.video_token)
            video = video_inputs["pixel_values_videos"][video_idx]
            frames = len(video)
            per_frame = (total - 1) // frames  # stock: frames * T + 1 newline
            return processor.video_token * (frames * merged_token_count(per_frame, cfg.retention) + 1)

        processor.replace_video_token = replace_video_token
    else:
        stock = processor.replace_image_token

        def replace_image_token(image_inputs, image_idx, **kwargs):
            text = stock(image_inputs, image_idx, **kwargs)
            return processor.image_token * merged_token_count(text.count(processor.image_token), cfg.retention)

        processor.replace_image_token = replace_image_token
