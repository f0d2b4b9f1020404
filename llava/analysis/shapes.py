"""Model shapes the efficiency analyzer needs (docs/efficiency_model.md, "Inputs").

:class:`LLMShape` is the language model's shape (hidden, intermediate, layers, heads, key/value
heads, head_dim, vocabulary). It comes from a transformers config object (a text config, or a
multimodal config with ``.text_config``), from a local ``config.json`` or model directory, or
from a built-in name ("qwen2-7b", "llama-7b", "vicuna-7b"). The formulas never hard-code a
model: they read these fields.

:class:`VisionShape` is a ViT vision tower plus the 2-layer MLP projector, used only for the
separately reported encoder cost (SigLIP-so400m of LLaVA-OneVision, CLIP ViT-L/336 of LLaVA-1.5).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional, Union

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
}


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
    token: 577 -> 576). ``patch_size`` and ``channels`` give the patch embedding.
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
        if key not in BUILTIN_LLMS and os.path.exists(str(llm_spec)):
            try:
                vision = load_config_dict(llm_spec).get("vision_config") or {}
            except AIMConfigError:
                vision = {}
            if "clip" in str(vision.get("model_type", "")).lower():
                return BUILTIN_VISION["clip-vit-l-336"]
    return BUILTIN_VISION["siglip-so400m"]
