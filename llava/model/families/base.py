"""What a model family adapter says, and the helpers every adapter shares.

An adapter is the whole difference between one family of transformers multimodal models and
another, as far as AIM is concerned:

* which checkpoints it serves (``config.model_type``) and which classes load them;
* where merging hooks in (``install_merging``) and how the processor counts placeholders
  after it (``patch_processor``);
* how positions are built (``install_positions``; nothing to do for 1-D RoPE, where the
  decoder driver keeps each survivor's original position; 3-D M-RoPE families place merged
  tokens and hand the driver plain (3, batch, length) position ids);
* the official pruning schedule, where the official code has one (``official_layers``), and
  what merging's similarity is computed on (``merge_metrics``, ``official_merge_metric``);
* related checkpoints it refuses, and why (``refused_model_types``);
* for ``llava-aim visualize``, the image each merged unit is drawn over where the processor's
  pixel values are not one image per unit (``merge_unit_images``);
* what the family adds to the hidden states after given decoder layers (Qwen3-VL's DeepStack
  features on the visual rows): its adapter hands the decoder driver a :class:`LayerAdditions`
  under the language model keyword ``aim_layer_additions`` (``LAYER_ADDITIONS_KWARG``), and the
  driver applies it after each layer to the rows still present;
* for the tools: its lmms-eval plugin model (``plugin_model``, ``plugin_class``, its own
  model_args and processor inputs), the paper's checkpoint (``default_checkpoint``) and run
  (``paper_eval_args``), and hub names loading as their transformers conversion
  (``checkpoint_aliases``): llava.eval, the loader, the CLI help and the eval scripts read them
  here and repeat none of them.

The decoder driver's assumptions are part of the contract, checked by ``check_model`` (through
:func:`check_decoder`) before anything is patched whenever pruning runs: the language model is
``embed_tokens -> rotary_emb -> layers -> norm``; each layer's ``forward`` takes
``position_embeddings`` and the KV cache under the keyword language_model/compat.py resolves;
each layer's attention (``self_attn``) has a ``scaling`` and dispatches through transformers'
attention-function table (``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``).

The runtime, the statistics and the decoder driver (llava/model/runtime.py,
language_model/) know nothing about families. Adding a family = one module here that
subclasses :class:`FamilyAdapter`, listed in ``families/__init__.py``, and a tiny model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch

from llava.errors import AIMConfigError, UnsupportedModelError



@dataclass
class LayerAdditions:
    """What the stock decoder loop adds to the hidden states after some layers, for the driver.

    rows_by_layer[j] (N, C) is added, after layer j, to the N rows of ``mask`` (B, L) over the
    prompt's original tokens, in the row-major order of ``mask``'s True entries (Qwen3-VL's
    ``_deepstack_process``). ``stock_kwargs``: the language model keywords these stand for, handed
    back to the stock forward when the driver runs it unchanged.
    """

    mask: torch.Tensor
    rows_by_layer: Dict[int, torch.Tensor]
    stock_kwargs: Dict[str, Any] = field(default_factory=dict)

    def apply(self, layer: int, hidden: torch.Tensor, slot: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        """``hidden`` (B, S, C) after ``layer``, whose slot i of sample b holds the original token
        ``slot[b, i]``: the rows of this layer added to the live slots that hold a masked token
        (tokens pruned earlier are simply absent; on the rest, the stock addition bit for bit).
        Device-side only (no host sync)."""
        rows = self.rows_by_layer.get(layer)
        if rows is None:
            return hidden
        mask = self.mask.to(hidden.device)
        row_of = (mask.reshape(-1).long().cumsum(0) - 1).clamp_min(0)  # each token's row (masked ones)
        full = rows.to(hidden.device, hidden.dtype).index_select(0, row_of).reshape(mask.shape + (rows.shape[-1],))
        added = full.gather(1, slot[..., None].expand(-1, -1, hidden.shape[-1]))
        where = (mask.gather(1, slot) & alive)[..., None]
        return torch.where(where, hidden + added, hidden)


class FamilyAdapter:
    name: str = ""  # short id, e.g. "onevision"
    title: str = ""  # for messages, e.g. "LLaVA-OneVision"
    model_types: Tuple[str, ...] = ()  # config.model_type values served
    model_classes: Tuple[str, ...] = ()  # transformers classes apply_aim accepts (top-level first)
    processor_class: str = ""
    media: Tuple[str, ...] = ()  # "video", "image": what the family's prompts may hold
    merged_media: Tuple[str, ...] = ()  # the media whose tokens AIM merges
    tiny_models: Tuple[str, ...] = ()  # built-in names (folders in llava/model/tiny/)
    processor_methods: Tuple[str, ...] = ()  # processor attributes patch_processor sets
    merge_metrics: Tuple[str, ...] = ("tokens",)  # AIMConfig.merge_metric values supported
    official_merge_metric: str = "tokens"  # what merge_metric="auto" resolves to
    # Whether the LLaVA-PruMerge baselines are implemented for this family, and whether PruMerge+
    # adds its spatial samples here, as the official code runs it.
    supports_prumerge: bool = False
    prumerge_spatial_samples: bool = True
    # The stages (llava.aim.registry.STAGES) at which the family runs a registered "video"
    # reduction (llava.aim.frames), and those at which it gives it the vision tower's attention.
    reduction_stages: Tuple[str, ...] = ()
    vision_attention_stages: Tuple[str, ...] = ()
    # config.model_type of related checkpoints AIM cannot serve correctly -> why (the message)
    refused_model_types: Dict[str, str] = {}

    # The oldest transformers release the family is tested on; None: the project's floor. On an
    # older release the family is not served: its checkpoints and built-in names are refused,
    # naming the release they need (llava.model.families.UNAVAILABLE).
    min_transformers: Optional[str] = None

    # -- which transformers ----------------------------------------------------------------
    def installed(self) -> bool:
        """Whether the installed transformers serves this family (read from its metadata: importing
        transformers here would make every import of the families pay for it)."""
        if self.min_transformers is None:
            return True
        from importlib.metadata import version

        from packaging.version import Version

        return Version(version("transformers")) >= Version(self.min_transformers)

    def missing_reason(self) -> str:
        from importlib.metadata import version

        return (f"{self.title} needs transformers >= {self.min_transformers} (the oldest release it is tested on); "
                f"transformers {version('transformers')} is installed: pip install 'transformers>={self.min_transformers}' "
                "(within llava-aim's tested range, e.g. -c constraints/lock.txt)")

    def check_installed(self) -> None:
        if not self.installed():
            raise UnsupportedModelError(self.missing_reason())

    # -- which model ----------------------------------------------------------------------
    @property
    def merged_media_text(self) -> str:
        """The media AIM merges, as messages name them (e.g. "video frames")."""
        return merged_media_text(self.merged_media)

    @property
    def load_class(self) -> str:
        """The transformers class that ``from_pretrained`` loads a checkpoint of this family with."""
        return self.model_classes[0]

    def inner(self, model):
        """The multimodal model under the LM head (``model.model``), or the model itself."""
        return model.model if hasattr(model, "lm_head") else model

    def language_model(self, model):
        """The decoder stack (embed -> rotary -> layers -> norm) AIM drives."""
        return self.inner(model).language_model

    def visual_token_ids(self, config) -> Sequence[int]:
        """Placeholder ids of the visual tokens in input_ids (what pruning may remove)."""
        return [i for i in (getattr(config, "image_token_id", None), getattr(config, "video_token_id", None))
                if i is not None]

    def official_layers(self, num_layers: int) -> Optional[Tuple[int, int]]:
        """The official code's (l1, l2) for this family at this depth; None: the paper's scaled rule."""
        return None

    # -- tools: plugin, checkpoints, CLI --------------------------------------------------
    # What llava.eval (the lmms-eval plugin and its registry), the loader's hub aliases, the CLI
    # help and the eval scripts read; nothing outside this module repeats them.
    plugin_model: str = ""  # lmms-eval model id, e.g. "llava_onevision_aim"
    plugin_class: str = ""  # its class's name in llava.eval.lmms_model, e.g. "LlavaOneVisionAIM"
    default_checkpoint: str = ""  # the paper's checkpoint: the plugin's and the eval scripts' default
    # Checkpoint names the loader accepts for their transformers-format conversion (e.g. a
    # LLaVA-NeXT name -> its llava-hf repository, which holds the same weights).
    checkpoint_aliases: Dict[str, str] = {}
    # model_args the plugin model takes besides the loader and AIM settings (validated by
    # llava.eval.args.plugin_args before loading, applied by plugin_setup after).
    plugin_model_args: Tuple[str, ...] = ()
    # model_args of the paper's benchmark run of this family (the eval scripts' defaults; each
    # is overridden by the environment variable of its name in capitals, e.g. MAX_PIXELS).
    paper_eval_args: Dict[str, object] = {}
    # Whether the processor resizes every image to one size (an image's token count is then
    # the same whatever its size: images of any size share a batch).
    fixed_image_size: bool = False
    # Whether the plugin may batch several requests in one generate (False: per-request inputs).
    plugin_batches: bool = True

    @property
    def plugin_video(self) -> bool:
        """Whether the plugin model answers video tasks."""
        return "video" in self.media

    def plugin_setup(self, processor, args: Dict[str, object]) -> None:
        """Apply the plugin's own model_args (``plugin_model_args``, validated) to the loaded
        processor."""

    def plugin_input_kwargs(self, kind: str, raw: Sequence[object], media, say) -> Dict[str, object]:
        """Extra keyword arguments of the processor call for one request of the plugin model
        (``raw``: what the task gave, e.g. video paths; ``say(message)`` warns)."""
        return {}

    # -- what AIM patches -----------------------------------------------------------------
    def check_model(self, model, cfg) -> None:
        """Raise UnsupportedModelError if this loaded model cannot take AIM with ``cfg`` (before
        anything is patched). Here: the decoder driver's assumptions (:func:`check_decoder`),
        where ``cfg`` prunes; an adapter adds its own checks and calls this one."""
        if cfg.pruning or cfg.prumerging or cfg.video_reducing:  # the driver runs the LM only then
            check_decoder(self.language_model(model))

    def install_merging(self, inner, runtime) -> None:
        raise NotImplementedError

    def install_positions(self, inner, runtime) -> None:
        """Position handling beyond the driver's (1-D RoPE needs none)."""

    def patch_processor(self, processor, cfg, runtime) -> None:
        raise NotImplementedError

    def check_processor(self, processor) -> None:
        if type(processor).__name__ != self.processor_class:
            raise UnsupportedModelError(
                f"the model needs a {self.processor_class} (its placeholder count must follow merging), "
                f"got {type(processor).__name__}"
            )

    def merge_unit_images(self, processor, inputs, media, kind: str):
        """(F, H, W, 3) uint8: the image each merged unit (frame, image) is drawn over by
        ``llava-aim visualize``; None: the processor's pixel values hold one image per unit."""
        return None

    def unpatch_processor(self, processor) -> None:
        for name in self.processor_methods:
            processor.__dict__.pop(name, None)

    # -- geometry, for the analyzer and bench
    # The reference checkpoints the tools know by name (hub id -> Reference): their configs ship
    # as package data (configs/<hub id with "/" as "--">.json), read like any model's config.
    references: Dict[str, "Reference"] = {}
    frames_per_unit: int = 1  # frames that make one merged unit (a temporal group of 2 frames: 2)
    # visual_tokens' keyword limits (e.g. "max_pixels") and whether the frame size matters: the
    # family's tokens depend on the input's resolution (the analyzer's --max-pixels / --frame-size)
    pixel_limits: Tuple[str, ...] = ()
    newline_tokens: int = 0  # tokens the model appends after a video's frames (bench's prompt)
    # resolution-dependent families: the square frame side (px) the tools assume when no frame size
    # is given; None: the side of a square of max_pixels
    default_frame_side: Optional[int] = None
    mrope_positions: bool = False  # the decoder takes (3, batch, length) M-RoPE ids (bench's LLM-only prompt)

    def reference_config(self, checkpoint: str):
        """The config of a reference checkpoint (a transformers config object, defaults filled)."""
        return read_reference_config(checkpoint)

    def text_config(self, config):
        """The decoder's config inside the model's config."""
        return _field(config, "text_config") or config

    def vision_shape(self, config, name: str):
        """The analyzer's VisionShape of the model's tower and projector (llava.analysis.shapes)."""
        raise NotImplementedError

    def visual_tokens(self, config, frames: int, height: Optional[int] = None, width: Optional[int] = None,
                      **pixel_limits) -> "VisualTokens":
        """The merged units of ``frames`` frames and the visual tokens each gives the language
        model before merging, as the family's processor and model produce them."""
        raise NotImplementedError

    def visual_additions(self, config) -> int:
        """Decoder layers after which the model adds rows to the visual tokens' hidden states (the
        LayerAdditions above: Qwen3-VL's DeepStack); 0: none. One H-wide add per visual token each."""
        return 0

    def checked_frame_input(self, frames, height, width, max_pixels, min_pixels, factor: int):
        """(height, width, max_pixels, min_pixels) of a resolution-dependent family's input: the
        family's defaults where not given (``default_frame_side``, ``default_max_pixels``,
        ``video_min_pixels``), each value checked (AIMConfigError naming it) before the processor's
        resize rule is applied with the side multiple ``factor``."""
        max_pixels = self.default_max_pixels if max_pixels is None else max_pixels
        min_pixels = self.video_min_pixels if min_pixels is None else min_pixels
        for what, value in (("frames", frames), ("max_pixels", max_pixels), ("min_pixels", min_pixels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AIMConfigError(f"{what} must be a positive integer, got {value!r}")
        if max_pixels < factor ** 2 or max_pixels < min_pixels:
            raise AIMConfigError(f"max_pixels must be at least {factor ** 2} and min_pixels ({min_pixels}), "
                                 f"got {max_pixels}")
        if (height is None) != (width is None):
            raise AIMConfigError("give the frame height and width together")
        if height is None:
            height = width = self.default_frame_side
        if height < 1 or width < 1:
            raise AIMConfigError(f"frame size must be positive, got {height} x {width}")
        return height, width, max_pixels, min_pixels

    def input_note(self, tokens: "VisualTokens") -> Optional[str]:
        """One line describing the input geometry where units are not frames; None: nothing to say."""
        return None

    def bench_dims(self, config, scale) -> Tuple[Dict[str, object], Dict[str, object]]:
        """(text config fields, vision config fields) for a bench model of this family: ``scale``
        is a ``BenchScale`` (the generic small sizes) or a reference config (the full sizes)."""
        raise NotImplementedError


class Reference(NamedTuple):
    """A reference checkpoint: the analyzer's names of its language model and its vision tower,
    and bench's name of its full-size architecture."""

    llm_names: Tuple[str, ...]
    tower: str
    bench_name: str = ""


class VisualTokens(NamedTuple):
    """What ``visual_tokens`` counts: ``units`` merged units (frames, images, or temporal groups)
    of ``tokens_per_unit`` tokens each, laid out ``grid`` (rows, cols); ``frame_size`` the frames'
    pixels after the processor's resize and ``pixel_limits`` the limits used (resolution-dependent
    families)."""

    frames: int
    units: int
    tokens_per_unit: int
    grid: Tuple[int, int]
    frame_size: Optional[Tuple[int, int]] = None
    pixel_limits: Optional[Dict[str, int]] = None


class BenchScale(NamedTuple):
    """The generic sizes of a small bench model (decoder and vision tower)."""

    hidden: int = 256
    intermediate: int = 1024
    layers: int = 8
    heads: int = 8
    kv_heads: int = 2
    vision_hidden: int = 128
    vision_intermediate: int = 512
    vision_layers: int = 2
    vision_heads: int = 2


SMALL = BenchScale()
CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def reference_config_file(checkpoint: str) -> str:
    return os.path.join(CONFIG_DIR, checkpoint.replace("/", "--") + ".json")


def read_reference_config(checkpoint: str):
    with open(reference_config_file(checkpoint), encoding="utf-8") as fh:
        return config_with_defaults(json.load(fh))


def config_with_defaults(data: Dict[str, object]):
    """A parsed config.json as a transformers config, the fields it leaves out at the model type's
    defaults (multimodal config.json files often store only the text config's differences). The
    plain dict where transformers does not know the model type."""
    if "model_type" not in data:
        return data
    try:
        from transformers import AutoConfig

        kwargs = {k: v for k, v in data.items() if k not in ("model_type", "transformers_version")}
        return AutoConfig.for_model(data["model_type"], **kwargs)
    except Exception:  # unknown model type or an incompatible field: read the raw dict
        return data


def _field(cfg, key: str, default=None):
    value = cfg.get(key) if isinstance(cfg, Mapping) else getattr(cfg, key, None)
    return default if value is None else value


def vit_shape(vision, name: str, class_token: bool):
    """The VisionShape of a CLIP/SigLIP-style tower config (square images, one token per patch)."""
    from llava.analysis.shapes import VisionShape

    side = _field(vision, "image_size") // _field(vision, "patch_size")
    return VisionShape(name, _field(vision, "num_hidden_layers"), _field(vision, "hidden_size"),
                       _field(vision, "intermediate_size"), _field(vision, "num_attention_heads"),
                       side * side + int(class_token), class_token=class_token,
                       patch_size=_field(vision, "patch_size"))


def vit_bench_dims(scale) -> Dict[str, object]:
    """The vision fields of a CLIP/SigLIP-style tower at ``scale`` (BenchScale or a reference config)."""
    if isinstance(scale, BenchScale):
        return dict(hidden_size=scale.vision_hidden, intermediate_size=scale.vision_intermediate,
                    num_hidden_layers=scale.vision_layers, num_attention_heads=scale.vision_heads)
    vision = _field(scale, "vision_config")
    return {k: _field(vision, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                            "num_attention_heads")}


TEXT_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "vocab_size")


def text_bench_dims(adapter, scale) -> Dict[str, object]:
    """The decoder fields at ``scale``: the generic small sizes, or the reference's (its vocabulary
    included)."""
    if isinstance(scale, BenchScale):
        return dict(hidden_size=scale.hidden, intermediate_size=scale.intermediate, num_hidden_layers=scale.layers,
                    num_attention_heads=scale.heads, num_key_value_heads=scale.kv_heads,
                    head_dim=scale.hidden // scale.heads)
    text = adapter.text_config(scale)
    dims = {k: _field(text, k) for k in TEXT_FIELDS}
    dims["head_dim"] = _field(text, "head_dim", dims["hidden_size"] // dims["num_attention_heads"])
    dims["rope_parameters"] = _field(text, "rope_parameters")
    return {k: v for k, v in dims.items() if v is not None}


def check_decoder(lm) -> None:
    """The decoder driver's (llava/model/language_model/driver.py) assumptions about the LM it
    runs, or UnsupportedModelError naming every one that does not hold:

    * the LM is ``embed_tokens -> rotary_emb -> layers -> norm`` (the driver replaces the loop
      over ``layers`` and calls the other three itself);
    * each decoder layer's ``forward`` takes ``position_embeddings`` (the rotary (cos, sin)) and
      the KV cache under the keyword llava/model/language_model/compat.py resolves;
    * each layer's attention (``self_attn``) has a ``scaling`` and dispatches through the
      attention-function table (transformers' ALL_ATTENTION_FUNCTIONS, keyed by
      ``config._attn_implementation``), where AIM registers its scoring backends.
    """
    import inspect
    import sys

    from llava.model.language_model import compat

    missing = [f"{name} (the {role})" for name, role in (
        ("embed_tokens", "token embedding"), ("rotary_emb", "rotary embedding"), ("layers", "decoder layers"),
        ("norm", "final norm")) if getattr(lm, name, None) is None]
    if not hasattr(getattr(lm, "config", None), "_attn_implementation"):
        missing.append("config._attn_implementation (the attention-function table's key)")
    for layer in list(getattr(lm, "layers", None) or [])[:1]:  # the layers of one stack share a class
        kind = type(layer).__name__
        params = inspect.signature(layer.forward).parameters
        if "position_embeddings" not in params:
            missing.append(f"{kind}.forward(position_embeddings=...)")
        if not any(name in params for name in compat.CACHE_NAMES):
            missing.append(f"{kind}.forward({' or '.join(compat.CACHE_NAMES)}=...)")
        attention = getattr(layer, "self_attn", None)
        if attention is None:
            missing.append(f"{kind}.self_attn (the attention module)")
            continue
        if not hasattr(attention, "scaling"):
            missing.append(f"{type(attention).__name__}.scaling")
        source = sys.modules.get(type(attention).__module__)
        if "ALL_ATTENTION_FUNCTIONS" not in vars(source or object()):
            missing.append(f"{type(attention).__name__} dispatching through ALL_ATTENTION_FUNCTIONS")
    if missing:
        raise UnsupportedModelError(
            f"AIM's pruning cannot drive {type(lm).__name__}: it lacks {'; '.join(missing)}. The driver needs "
            "embed_tokens -> rotary_emb -> layers -> norm, layers taking position_embeddings and the KV cache, and "
            "attention with a `scaling` dispatched through the attention-function table; disable pruning "
            "(l1=None, l2=None) to merge only"
        )


def merged_media_text(media) -> str:
    """How messages name the media AIM merges: "video frames", "images", "video frames and images"."""
    return " and ".join(m + " frames" if m == "video" else m + "s" for m in media)


def set_instance_attr(obj, name, value, runtime) -> None:
    """Set ``obj.name`` on the instance and register the undo with the runtime."""
    had = name in obj.__dict__
    old = obj.__dict__.get(name)
    setattr(obj, name, value)

    def undo():
        if had:
            setattr(obj, name, old)
        else:
            obj.__dict__.pop(name, None)

    runtime.restore.append(undo)


def prumerge_plus_samples(family, cfg) -> bool:
    """Whether ``cfg``'s PruMerge adds spatial samples on this family (PruMerge+ where the
    official code keeps them)."""
    return cfg.method == "prumerge_plus" and family.prumerge_spatial_samples


class CapturedProjections:
    """Forward hooks keeping the outputs of one vision layer's q_proj and k_proj (the official
    PruMerge code reads the last layer's query and key projections the same way)."""

    def __init__(self, attention, runtime):
        self.outputs = {}
        for name in ("q_proj", "k_proj"):
            module = getattr(attention, name)
            runtime.handles.append(module.register_forward_hook(self._keep(name)))

    def _keep(self, name):
        def hook(module, args, output):
            self.outputs[name] = output
        return hook

    def take(self, frames: int):
        q, k = self.outputs.pop("q_proj", None), self.outputs.pop("k_proj", None)
        if q is None or k is None or q.shape[0] != frames:
            raise UnsupportedModelError(
                "PruMerge found no vision-tower queries/keys for these features (the vision layer it reads did "
                "not run); this model's vision tower is not supported by method prumerge"
            )
        return q, k


def vision_encoder_layers(inner, default_layer: int, who: str, tower_kind: str, hint: str = ""):
    """(the vision tower's encoder layers, the index of the hidden state LLaVA selects its
    features from: vision_feature_layer modulo embeddings + layers), or UnsupportedModelError
    naming ``who`` needs it; ``hint`` ends both messages."""
    selected = getattr(inner.config, "vision_feature_layer", default_layer)
    tower = inner.vision_tower
    try:  # CLIPVisionModel holds the encoder directly in recent transformers, under vision_model before
        layers = getattr(tower, "vision_model", tower).encoder.layers
    except AttributeError:
        raise UnsupportedModelError(
            f"{who} needs a {tower_kind} vision tower (encoder.layers), got {type(tower).__name__}{hint}"
        ) from None
    if isinstance(selected, bool) or not isinstance(selected, int):
        raise UnsupportedModelError(f"{who} needs one selected vision layer, got vision_feature_layer={selected!r}{hint}")
    return layers, selected % (len(layers) + 1)  # hidden_states holds the embeddings + one entry per layer


def reduce_tokens(runtime, features, metric=None, grid=None, track_destinations=False):
    """The pre-LLM reduction of the runtime's config: AIM's merging (its similarity computed on
    ``metric`` when given), or the pooling control.

    ``grid``: (rows, cols) of the frames' tokens where they are not square."""
    from llava.aim.reduce import reduce_frames

    return reduce_frames(features, runtime.cfg, track_sources=runtime.track_sources, metric=metric, grid=grid,
                         track_destinations=track_destinations)
