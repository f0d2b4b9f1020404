"""Model shapes the efficiency analyzer needs (docs/efficiency_model.md, "Inputs").

:class:`LLMShape` is the language model's shape (hidden, intermediate, layers, heads, key/value
heads, head_dim, vocabulary). It comes from a transformers config object (a text config, or a
multimodal config with ``.text_config``), from a local ``config.json`` or model directory, or
from a built-in name: the language model of a reference checkpoint that a family adapter
declares (``Reference.llm_names`` in llava.model.families; ``llava-aim flops --help`` lists
them), read from the checkpoint's config shipped with the package. The formulas
never hard-code a model: they read these fields.

:class:`VisionShape` is a ViT vision tower plus its projector, used only for the separately
reported encoder cost; the family adapter reads it from the model's config
(``vision_shape``), as it counts the visual tokens a clip gives (``visual_tokens``: units,
tokens per unit; for resolution-dependent families from the frame size and pixel limits).
"""

from __future__ import annotations

import json
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
    # Mixture-of-experts MLP (every layer; 0 = a dense MLP of ``intermediate``): a router over
    # ``experts`` experts, each token through ``experts_per_token`` of them, each expert a gated
    # MLP of ``expert_intermediate`` (config num_experts / num_experts_per_tok / moe_intermediate_size).
    experts: int = 0
    experts_per_token: int = 0
    expert_intermediate: int = 0

    def __post_init__(self) -> None:
        for field in ("hidden", "intermediate", "layers", "heads", "kv_heads", "head_dim", "vocab"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AIMConfigError(f"LLM shape field {field} must be a positive integer, got {value!r}")
        moe = (self.experts, self.experts_per_token, self.expert_intermediate)
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in moe):
            raise AIMConfigError(f"LLM shape expert fields must be non-negative integers, got {moe}")
        if self.experts and not (0 < self.experts_per_token <= self.experts and self.expert_intermediate > 0):
            raise AIMConfigError(
                f"a mixture-of-experts shape needs 1 <= experts_per_token <= experts ({self.experts}) and "
                f"expert_intermediate > 0, got {self.experts_per_token} and {self.expert_intermediate}"
            )

    @property
    def moe(self) -> bool:
        return self.experts > 0
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
        mlp = (f"I={self.intermediate}" if not self.moe else
               f"{self.experts_per_token} of {self.experts} experts, I={self.expert_intermediate}")
        return (
            f"{self.name} (H={self.hidden}, {mlp}, L={self.layers}, "
            f"heads {self.heads}/{self.kv_heads} kv, d={self.head_dim}, V={self.vocab})"
        )

    @classmethod
    def from_config(cls, cfg: Any, name: Optional[str] = None) -> "LLMShape":
        """From a transformers config (or a plain dict such as a parsed config.json).

        A multimodal config is read through its ``text_config``.
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
        experts = int(_get(cfg, "num_experts") or 0)
        return cls(
            hidden=int(hidden),
            intermediate=int(fields["intermediate_size"]),
            layers=int(fields["num_hidden_layers"]),
            heads=int(heads),
            kv_heads=int(kv_heads),
            head_dim=int(head_dim),
            vocab=int(fields["vocab_size"]),
            name=str(name),
            experts=experts,
            experts_per_token=int(_get(cfg, "num_experts_per_tok") or 0) if experts else 0,
            expert_intermediate=int(_get(cfg, "moe_intermediate_size") or 0) if experts else 0,
        )

    @classmethod
    def from_pretrained(cls, path: Union[str, os.PathLike]) -> "LLMShape":
        """From a local ``config.json`` file or a model directory holding one (no network)."""
        data = load_config_dict(path)
        return cls.from_config(_with_defaults(data), name=os.path.basename(os.path.normpath(str(path))))


# The built-in names are the reference checkpoints' (each family adapter declares its own,
# llava.model.families): their language models and vision towers, read from their configs.
def reference_names() -> Dict[str, Tuple[Any, str, Any]]:
    """{built-in language-model name: (family adapter, reference checkpoint, Reference)}."""
    from llava.model.families import FAMILIES

    return {name: (fam, checkpoint, ref) for fam in FAMILIES for checkpoint, ref in fam.references.items()
            for name in ref.llm_names}


def tower_names() -> Dict[str, Tuple[Any, str, Any]]:
    """{built-in vision-tower name: (family adapter, reference checkpoint, Reference)}."""
    from llava.model.families import FAMILIES

    return {ref.tower: (fam, checkpoint, ref) for fam in FAMILIES for checkpoint, ref in fam.references.items()}


@dataclass(frozen=True)
class ModelGeometry:
    """What ``--llm`` names, resolved: the family adapter that reads its config (None for a bare
    language-model config), the config, the names the analyzer reports, and the checkpoint
    ``run --model`` loads (None: only a language-model config)."""

    family: Any
    config: Any
    llm_name: str
    tower: str
    checkpoint: Optional[str]


def resolve_model(spec: Union[str, os.PathLike]) -> ModelGeometry:
    """A built-in name, a reference checkpoint's hub id, or a local config.json / model folder."""
    from llava.errors import UnsupportedModelError
    from llava.model.families import family_for_model_type

    key = str(spec)
    refs = reference_names()
    hub = {checkpoint.lower(): (fam, checkpoint, ref) for fam, checkpoint, ref in refs.values()}
    known = refs.get(key.lower()) or (None if os.path.exists(key) else hub.get(key.lower()))
    if known is not None:
        fam, checkpoint, ref = known
        name = key.lower() if key.lower() in refs else ref.llm_names[0]
        return ModelGeometry(fam, fam.reference_config(checkpoint), name, ref.tower, checkpoint)
    if not os.path.exists(key):
        raise AIMConfigError(
            f"unknown language model {key!r}: use one of {sorted(refs)}, a reference checkpoint "
            f"({', '.join(sorted({c for _, c, _ in refs.values()}))}) or a local path to a config.json or a model "
            "directory"
        )
    data = load_config_dict(key)
    name = os.path.basename(os.path.normpath(key))
    try:
        fam = family_for_model_type(data.get("model_type"))
    except UnsupportedModelError:  # a bare language model (or a family AIM does not serve)
        fam = None
    checkpoint = key if fam is not None and os.path.isdir(key) else None
    return ModelGeometry(fam, _with_defaults(data), name, f"{name} vision tower", checkpoint)


def __getattr__(attr: str):
    # BUILTIN_LLMS / BUILTIN_VISION: the reference checkpoints' shapes, read when first asked for
    if attr == "BUILTIN_LLMS":
        return {name: get_llm(name) for name in reference_names()}
    if attr == "BUILTIN_VISION":
        return {name: get_vision(name) for name in tower_names()}
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def get_llm(spec: Union[str, os.PathLike, LLMShape, Any]) -> LLMShape:
    """An :class:`LLMShape` from a built-in name, a local path, a shape, or a config object."""
    if isinstance(spec, LLMShape):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        model = resolve_model(spec)
        text = model.config if model.family is None else model.family.text_config(model.config)
        return LLMShape.from_config(text, name=model.llm_name)
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
    """Fill fields a config.json leaves at the model type's defaults, through transformers."""
    from llava.model.families.base import config_with_defaults

    return config_with_defaults(data)


def _get(cfg: Any, key: str) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key)
    return getattr(cfg, key, None)


# --- vision towers -------------------------------------------------------------------------


@dataclass(frozen=True)
class VisionShape:
    """A ViT vision tower and its 2-layer MLP projector (in -> H -> H), per frame/image.

    ``tokens`` is the encoder's sequence length per frame, class token included when
    ``class_token``; the projector maps the patch tokens only (a class token is dropped: 577 ->
    576). ``patch_size`` and ``channels`` give the patch embedding (a tower over temporal
    patches: 3 colours x 2 frames).

    Patch-merger towers: ``spatial_merge`` 2 = the projector is the patch merger, an MLP over
    each 2x2 block of patches concatenated (4D -> 4D -> H on tokens / 4); ``mlp`` "swiglu" (gate,
    up, down) instead of "gelu" (fc1, fc2); ``window_tokens`` > 0 = all but
    ``full_attention_layers`` layers attend within windows of that many patches (e.g. 112 px =
    8 x 8 patches). Each family adapter's ``vision_shape`` says which of these its tower has.
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
    # patch mergers beyond the projector, each run on its own encoder layer's output (DeepStack:
    # one per deepstack_visual_indexes entry, same shape as the main merger)
    extra_mergers: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def patches(self) -> int:
        """Patch tokens per frame (what the projector maps)."""
        return self.tokens - int(self.class_token)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def get_vision(spec: Union[str, VisionShape, None], llm_spec: Any = None) -> VisionShape:
    """A vision tower by name (a reference checkpoint's); ``None``: the tower of the model
    ``llm_spec`` names, read from its config by its family adapter. A bare language model (no
    multimodal config) gets the first family's reference tower (the video setting)."""
    if isinstance(spec, VisionShape):
        return spec
    if spec is not None:
        towers = tower_names()
        key = str(spec).lower()
        if key not in towers:
            raise AIMConfigError(f"unknown vision tower {spec!r}: use one of {sorted(towers)}")
        fam, checkpoint, ref = towers[key]
        return fam.vision_shape(fam.reference_config(checkpoint), ref.tower)
    if isinstance(llm_spec, LLMShape):
        llm_spec = llm_spec.name
    model = None
    if isinstance(llm_spec, (str, os.PathLike)):
        try:
            model = resolve_model(llm_spec)
        except AIMConfigError:
            model = None
    if model is None or model.family is None:
        return get_vision(next(iter(tower_names())))
    return model.family.vision_shape(model.config, model.tower)


def model_visual_tokens(llm_spec: Any, frames: int, height: Optional[int] = None, width: Optional[int] = None,
                        **pixel_limits):
    """(the family adapter or None, its VisualTokens) of ``frames`` frames for the model
    ``llm_spec`` names; a bare language model counts as the first family's reference."""
    model = resolve_model(llm_spec) if isinstance(llm_spec, (str, os.PathLike)) else None
    if model is None or model.family is None:
        fam, checkpoint, _ = next(iter(tower_names().values()))
        return None, fam.visual_tokens(fam.reference_config(checkpoint), frames)
    return model.family, model.family.visual_tokens(model.config, frames, height, width, **pixel_limits)
