"""Loading checkpoints: hub ids, local folders, and the built-in tiny models.

``load_pretrained_model`` returns (model, processor) for LLaVA-OneVision or LLaVA(-1.5)
checkpoints in transformers format, optionally with AIM applied. The built-in names
"tiny-llava-onevision" and "tiny-llava-1.5" are folders shipped in this package (random
weights from a fixed seed; see scripts/make_tiny_models.py), loaded through the very same
``from_pretrained`` calls as a real checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional, Tuple

from llava.aim.config import AIMConfig
from llava.errors import ModelLoadError, UnsupportedModelError

logger = logging.getLogger(__name__)

TINY_ROOT = Path(__file__).resolve().parent / "tiny"
BUILTIN_MODELS = {
    "tiny-llava-onevision": TINY_ROOT / "tiny-llava-onevision",
    "tiny-llava-1.5": TINY_ROOT / "tiny-llava-1.5",
}
# The paper used the original LLaVA-NeXT-format checkpoints; transformers loads their
# llava-hf conversions (same weights, transformers layout).
CHECKPOINT_ALIASES = {
    "lmms-lab/llava-onevision-qwen2-7b-ov": "llava-hf/llava-onevision-qwen2-7b-ov-hf",
    "lmms-lab/llava-onevision-qwen2-0.5b-ov": "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
    "lmms-lab/llava-onevision-qwen2-72b-ov": "llava-hf/llava-onevision-qwen2-72b-ov-hf",
    "lmms-lab/llava-onevision-qwen2-7b-si": "llava-hf/llava-onevision-qwen2-7b-si-hf",
    "liuhaotian/llava-v1.5-7b": "llava-hf/llava-1.5-7b-hf",
    "liuhaotian/llava-v1.5-13b": "llava-hf/llava-1.5-13b-hf",
}
_MODEL_CLASSES = {
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "llava": "LlavaForConditionalGeneration",
}


def is_builtin(name_or_path: str) -> bool:
    return str(name_or_path) in BUILTIN_MODELS


def resolve_checkpoint(name_or_path: str) -> str:
    """Map built-in names and original LLaVA-NeXT names to something from_pretrained loads."""
    name = str(name_or_path)
    if name in BUILTIN_MODELS:
        return str(BUILTIN_MODELS[name])
    if name in CHECKPOINT_ALIASES:
        target = CHECKPOINT_ALIASES[name]
        logger.warning("%s is a LLaVA-NeXT-format checkpoint; loading its transformers conversion %s", name, target)
        return target
    return name


def _read_model_type(source: str) -> str:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        hint = (
            "the folder has no usable config.json"
            if os.path.isdir(source)
            else "not a local folder and not reachable on the Hugging Face hub (offline? set HF_HOME to a pre-fetched cache)"
        )
        raise ModelLoadError(f"cannot load checkpoint {source!r}: {hint} ({exc.__class__.__name__})") from exc
    model_type = getattr(config, "model_type", None)
    if model_type not in _MODEL_CLASSES:
        raise UnsupportedModelError(
            f"checkpoint {source!r} is a {model_type!r} model; AIM supports {sorted(_MODEL_CLASSES)} "
            "(LLaVA-OneVision and LLaVA-1.5 in transformers format, e.g. llava-hf/...)"
        )
    return model_type


def load_pretrained_model(
    name_or_path: str,
    aim: Optional[AIMConfig] = None,
    torch_dtype="auto",
    device_map=None,
    attn_implementation: str = "sdpa",
    track_sources: bool = False,
    **model_kwargs,
) -> Tuple[object, object]:
    """Load (model, processor); apply AIM when ``aim`` is given (None: the stock model)."""
    import transformers
    from transformers import AutoProcessor

    source = resolve_checkpoint(name_or_path)
    if os.path.sep in str(name_or_path) and not os.path.exists(source) and not is_builtin(name_or_path):
        raise ModelLoadError(f"checkpoint folder {name_or_path!r} does not exist")
    model_type = _read_model_type(source)
    model_cls = getattr(transformers, _MODEL_CLASSES[model_type])
    try:
        model = model_cls.from_pretrained(
            source, dtype=torch_dtype, device_map=device_map, attn_implementation=attn_implementation, **model_kwargs
        )
        processor = AutoProcessor.from_pretrained(source)
    except (OSError, ValueError, ImportError) as exc:
        raise ModelLoadError(f"cannot load {source!r}: {exc}") from exc
    model.eval()
    if aim is not None:
        from llava.model.llava_arch import apply_aim

        model, processor = apply_aim(model, processor, aim, track_sources=track_sources)
    return model, processor


def num_decoder_layers(model) -> int:
    return len(model.model.language_model.layers)


def describe_builtin(name: str) -> dict:
    with open(BUILTIN_MODELS[name] / "config.json") as fh:
        return json.load(fh)
