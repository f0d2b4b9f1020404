"""Model shapes the efficiency analyzer needs (docs/efficiency_model.md, "Inputs").

:class:`LLMShape` is the language model's shape (hidden, intermediate, layers, heads, key/value
heads, head_dim, vocabulary). It comes from a transformers config object (a text config, or a
multimodal config with ``.text_config``), from a local ``config.json`` or model directory, or
from a built-in name ("qwen2-7b", "llama-7b", "vicuna-7b", "qwen2-vl-7b", "qwen2.5-vl-7b"). The
formulas never hard-code a model: they read these fields.

:class:`VisionShape` is a ViT vision tower plus the 2-layer MLP projector, used only for the
separately reported encoder cost (SigLIP-so400m of LLaVA-OneVision, CLIP ViT-L/336 of LLaVA-1.5,
the Qwen2-VL / Qwen2.5-VL towers with their 2x2 patch merger).

Qwen2-VL and Qwen2.5-VL take frames at any resolution: :func:`qwen_vl_visual_tokens` gives the
temporal groups and tokens per group of a clip from its frames and pixel limits (32 frames at
max_pixels 200704 -> 16 groups x 256 tokens), as the models' processors compute them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from llava.errors import AIMConfigError


@dataclass(frozen=True)
class LLMShape:
    """Shape of a decoder-only language model (batch 1, no biases counted).

    ``head_dim`` is usually ``hidden // heads``; a config may set it explicitly, in which case
    the q/o projections are (hidden, heads*head_dim) and k/v (hidden, kv_heads*head_dim). With
    ``head_dim = hidden/heads`` these are exactly docs/efficiency_model.md's (H, H) and
    (H, H*nkv/nh).
    """

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    name: str = "custom"

    def __post_init__(self) -> None:
        for field in ("hidden", "intermediate", "layers", "heads", "kv_heads", "head_dim", "vocab"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AIMConfigError(f"LLM shape field {field} must be a positive integer, got {value!r}")
        if self.heads % self.kv_heads:
            raise AIMConfigError(
                f"attention heads ({self.heads}) must be a multiple of key/value heads ({self.kv_heads})"
            )

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"{self.name} (H={self.hidden}, I={self.intermediate}, L={self.layers}, "
            f"heads {self.heads}/{self.kv_heads} kv, d={self.head_dim}, V={self.vocab})"
        )

    @classmethod
    def from_config(cls, cfg: Any, name: Optional[str] = None) -> "LLMShape":
        """From a transformers config (or a plain dict such as a parsed config.json).

        A multimodal config (LLaVA, LLaVA-OneVision) is read through its ``text_config``.
        """
        text = _get(cfg, "text_config")
        if text is not None:
            cfg = text
        hidden = _get(cfg, "hidden_size")
        heads = _get(cfg, "num_attention_heads")
        fields = {
            "hidden_size": hidden,
            "intermediate_size": _get(cfg, "intermediate_size"),
            "num_hidden_layers": _get(cfg, "num_hidden_layers"),
            "num_attention_heads": heads,
            "vocab_size": _get(cfg, "vocab_size"),
        }
        missing = [k for k, v in fields.items() if v is None]
        if missing:
            raise AIMConfigError(
                f"the model config lacks {', '.join(missing)}; pass a decoder (text) config or "
                "a multimodal config with a text_config"
            )
        kv_heads = _get(cfg, "num_key_value_heads") or heads
        head_dim = _get(cfg, "head_dim")
        if head_dim is None:
            if hidden % heads:
                raise AIMConfigError(f"hidden_size {hidden} is not divisible by num_attention_heads {heads}")
            head_dim = hidden // heads
        if name is None:
            name = _get(cfg, "_name_or_path") or _get(cfg, "model_type") or "custom"
        return cls(
            hidden=int(hidden),
            intermediate=int(fields["intermediate_size"]),
            layers=int(fields["num_hidden_layers"]),
            heads=int(heads),
            kv_heads=int(kv_heads),
            head_dim=int(head_dim),
            vocab=int(fields["vocab_size"]),
            name=str(name),
        )

    @classmethod
    def from_pretrained(cls, path: Union[str, os.PathLike]) -> "LLMShape":
        """From a local ``config.json`` file or a model directory holding one (no network)."""
        data = load_config_dict(path)
        return cls.from_config(_with_defaults(data), name=os.path.basename(os.path.normpath(str(path))))


# The built-in language models (docs/efficiency_model.md, "Inputs").
BUILTIN_LLMS: Dict[str, LLMShape] = {
    "qwen2-7b": LLMShape(3584, 18944, 28, 28, 4, 128, 152064, name="qwen2-7b"),
    "llama-7b": LLMShape(4096, 11008, 32, 32, 32, 128, 32000, name="llama-7b"),
    "vicuna-7b": LLMShape(4096, 11008, 32, 32, 32, 128, 32000, name="vicuna-7b"),
    # Qwen2-VL-7B-Instruct and Qwen2.5-VL-7B-Instruct: the Qwen2-7B decoder shape (config.json).
    "qwen2-vl-7b": LLMShape(3584, 18944, 28, 28, 4, 128, 152064, name="qwen2-vl-7b"),
    "qwen2.5-vl-7b": LLMShape(3584, 18944, 28, 28, 4, 128, 152064, name="qwen2.5-vl-7b"),
}
# config.model_type of the Qwen-VL checkpoints, and the built-in names of their decoders.
QWEN_VL_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")
QWEN_VL_LLMS = {"qwen2-vl-7b": "qwen2-vl-vit", "qwen2.5-vl-7b": "qwen2.5-vl-vit"}


def get_llm(spec: Union[str, os.PathLike, LLMShape, Any]) -> LLMShape:
    """An :class:`LLMShape` from a built-in name, a local path, a shape, or a config object."""
    if isinstance(spec, LLMShape):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        key = str(spec)
        if key.lower() in BUILTIN_LLMS:
            return BUILTIN_LLMS[key.lower()]
        if os.path.exists(key):
            return LLMShape.from_pretrained(key)
        raise AIMConfigError(
            f"unknown language model {key!r}: use one of {sorted(BUILTIN_LLMS)} or a local path to "
            "a config.json or a model directory"
        )
    return LLMShape.from_config(spec)


def load_config_dict(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The parsed ``config.json`` at ``path`` (a file, or a directory holding config.json)."""
    path = str(path)
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    try:
        with open(file, "r", encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise AIMConfigError(f"no config.json at {path!r}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AIMConfigError(f"cannot read model config {file!r}: {exc}") from None
    if not isinstance(data, dict):
        raise AIMConfigError(f"model config {file!r} is not a JSON object")
    return data


def _with_defaults(data: Dict[str, Any]) -> Any:
    """Fill fields a config.json leaves at the model type's defaults, through transformers.

    Multimodal config.json files often store only the text config's differences from the
    default (e.g. LLaVA-1.5's ``text_config`` is little more than ``model_type: llama``).
    ``AutoConfig.for_model`` restores the defaults. If transformers does not know the model
    type, the plain dict is used as is.
    """
    if "model_type" not in data:
        return data
    try:
        from transformers import AutoConfig

        kwargs = {k: v for k, v in data.items() if k not in ("model_type", "transformers_version")}
        return AutoConfig.for_model(data["model_type"], **kwargs)
    except Exception:  # unknown model type or an incompatible field: read the raw dict
        return data


def _get(cfg: Any, key: str) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key)
    return getattr(cfg, key, None)


# --- vision towers -------------------------------------------------------------------------


@dataclass(frozen=True)
class VisionShape:
    """A ViT vision tower and its 2-layer MLP projector (in -> H -> H), per frame/image.

    ``tokens`` is the encoder's sequence length per frame, class token included when
    ``class_token``; the projector maps the patch tokens only (LLaVA-1.5 drops CLIP's class
    token: 577 -> 576). ``patch_size`` and ``channels`` give the patch embedding (Qwen-VL: 3
    colours x 2 frames per temporal patch).

    Qwen-VL towers: ``spatial_merge`` 2 = the projector is the patch merger, an MLP over each
    2x2 block of patches concatenated (4D -> 4D -> H on tokens / 4); ``mlp`` "swiglu" (Qwen2.5-VL:
    gate, up, down) instead of "gelu" (fc1, fc2); ``window_tokens`` > 0 = all but
    ``full_attention_layers`` layers attend within windows of that many patches (Qwen2.5-VL:
    112 px = 8 x 8 patches).
    """

    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    tokens: int
    class_token: bool = False
    patch_size: int = 14
    channels: int = 3
    spatial_merge: int = 1
    mlp: str = "gelu"
    window_tokens: int = 0
    full_attention_layers: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def patches(self) -> int:
        """Patch tokens per frame (what the projector maps)."""
        return self.tokens - int(self.class_token)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


BUILTIN_VISION: Dict[str, VisionShape] = {
    # LLaVA-OneVision: SigLIP-so400m at 384 px, 27x27 patches, no class token.
    "siglip-so400m": VisionShape("siglip-so400m", 27, 1152, 4304, 16, 729, class_token=False),
    # LLaVA-1.5: CLIP ViT-L/14 at 336 px, 24x24 patches + class token.
    "clip-vit-l-336": VisionShape("clip-vit-l-336", 24, 1024, 4096, 16, 577, class_token=True),
    # Qwen2-VL: 32 blocks, width 1280, MLP 5120 (quick GELU), full attention; tokens per
    # temporal group (2 frames) here at 448 x 448 px (32 x 32 patches; set from the input).
    "qwen2-vl-vit": VisionShape("qwen2-vl-vit", 32, 1280, 5120, 16, 1024, channels=6, spatial_merge=2),
    # Qwen2.5-VL: 32 blocks, width 1280, SwiGLU MLP 3420, 8 x 8-patch windows except 4 full blocks.
    "qwen2.5-vl-vit": VisionShape("qwen2.5-vl-vit", 32, 1280, 3420, 16, 1024, channels=6, spatial_merge=2,
                                  mlp="swiglu", window_tokens=64, full_attention_layers=4),
}


def get_vision(spec: Union[str, VisionShape, None], llm_spec: Any = None) -> VisionShape:
    """A vision tower by name; ``None`` picks the one paired with the language model.

    qwen2-7b (LLaVA-OneVision) -> SigLIP-so400m; llama-7b / vicuna-7b (LLaVA-1.5) -> CLIP
    ViT-L/336. For a config path, the config's ``vision_config.model_type`` decides (clip ->
    CLIP, otherwise SigLIP, the video setting).
    """
    if isinstance(spec, VisionShape):
        return spec
    if spec is not None:
        key = str(spec).lower()
        if key not in BUILTIN_VISION:
            raise AIMConfigError(f"unknown vision tower {spec!r}: use one of {sorted(BUILTIN_VISION)}")
        return BUILTIN_VISION[key]
    if isinstance(llm_spec, LLMShape):
        llm_spec = llm_spec.name
    if isinstance(llm_spec, (str, os.PathLike)):
        key = str(llm_spec).lower()
        if key in ("llama-7b", "vicuna-7b"):
            return BUILTIN_VISION["clip-vit-l-336"]
        kind = qwen_vl_kind(llm_spec)  # built-in Qwen-VL names and local Qwen-VL configs
        if kind is not None:
            return BUILTIN_VISION["qwen2-vl-vit" if kind == "qwen2_vl" else "qwen2.5-vl-vit"]
        if key not in BUILTIN_LLMS and os.path.exists(str(llm_spec)):
            try:
                vision = load_config_dict(llm_spec).get("vision_config") or {}
            except AIMConfigError:
                vision = {}
            if "clip" in str(vision.get("model_type", "")).lower():
                return BUILTIN_VISION["clip-vit-l-336"]
    return BUILTIN_VISION["siglip-so400m"]


# --- Qwen2-VL / Qwen2.5-VL inputs ----------------------------------------------------------
QWEN_VL_MAX_PIXELS = 200704  # the official AIM Qwen2-VL run (448 x 448 px, 16 x 16 tokens per group)
QWEN_VL_VIDEO_MIN_PIXELS = 128 * 28 * 28  # the Qwen-VL video processors' default
QWEN_VL_FACTOR = 28  # patch 14 x merger 2: frame sides are multiples of this


def qwen_vl_kind(spec: Any) -> Optional[str]:
    """"qwen2_vl" / "qwen2_5_vl" for a Qwen-VL decoder (built-in name, local config, config
    object), else None."""
    if isinstance(spec, LLMShape):
        spec = spec.name
    if isinstance(spec, (str, os.PathLike)):
        key = str(spec).lower()
        if key in QWEN_VL_LLMS:
            return "qwen2_vl" if key == "qwen2-vl-7b" else "qwen2_5_vl"
        if key in BUILTIN_LLMS or not os.path.exists(str(spec)):
            return None
        try:
            kind = load_config_dict(spec).get("model_type")
        except AIMConfigError:
            return None
    else:
        kind = _get(spec, "model_type")
    return kind if kind in QWEN_VL_MODEL_TYPES else None


def qwen_vl_visual_tokens(frames: int, height: Optional[int] = None, width: Optional[int] = None,
                          max_pixels: int = QWEN_VL_MAX_PIXELS,
                          min_pixels: int = QWEN_VL_VIDEO_MIN_PIXELS) -> Tuple[int, int, Tuple[int, int]]:
    """(temporal groups, tokens per group, (rows, cols) of merged tokens) of a clip for Qwen-VL.

    Frames are resized as the processors do (transformers' ``smart_resize``: sides multiples of
    28 px, min_pixels <= h * w <= max_pixels, the aspect kept); without a frame size, square
    frames large enough to be capped by max_pixels. Two frames make one temporal group (an odd
    count repeats the last frame); one image is one group (frames=1).
    """
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    for name, value in (("frames", frames), ("max_pixels", max_pixels), ("min_pixels", min_pixels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AIMConfigError(f"{name} must be a positive integer, got {value!r}")
    if max_pixels < QWEN_VL_FACTOR ** 2 or max_pixels < min_pixels:
        raise AIMConfigError(f"max_pixels must be at least {QWEN_VL_FACTOR ** 2} and min_pixels ({min_pixels}), "
                             f"got {max_pixels}")
    if (height is None) != (width is None):
        raise AIMConfigError("give the frame height and width together")
    if height is None:
        height = width = math.isqrt(max_pixels)
    if height < 1 or width < 1:
        raise AIMConfigError(f"frame size must be positive, got {height} x {width}")
    try:
        h, w = smart_resize(height, width, factor=QWEN_VL_FACTOR, min_pixels=min_pixels, max_pixels=max_pixels)
    except ValueError as exc:  # an aspect ratio beyond 200:1
        raise AIMConfigError(f"frame size {height} x {width}: {exc}") from None
    rows, cols = h // QWEN_VL_FACTOR, w // QWEN_VL_FACTOR
    groups = (frames + 1) // 2  # temporal patches of 2 frames (an image: 1)
    return groups, rows * cols, (rows, cols)
