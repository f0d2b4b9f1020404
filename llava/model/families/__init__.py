"""Model families AIM supports, one adapter module each (see base.py for what an adapter says)."""

from __future__ import annotations

from typing import Dict, Tuple

from llava.errors import UnsupportedModelError
from llava.model.families.base import FamilyAdapter
from llava.model.families.llava15 import Llava15Adapter
from llava.model.families.onevision import OneVisionAdapter
from llava.model.families.onevision15 import OneVision15Adapter
from llava.model.families.qwen2_vl import Qwen2_5_VLAdapter, Qwen2VLAdapter
from llava.model.families.qwen3_vl import Qwen3VLAdapter, Qwen3VLMoeAdapter

# Every family; those whose classes or tested behaviour only newer releases in the tested range
# have (FamilyAdapter.min_transformers) are served where the installed transformers is new enough
# and refused, naming the release they need, where it is not.
_ALL: Tuple[FamilyAdapter, ...] = (OneVisionAdapter(), Llava15Adapter(), Qwen2VLAdapter(), Qwen2_5_VLAdapter(),
                                   Qwen3VLAdapter(), Qwen3VLMoeAdapter(), OneVision15Adapter())
FAMILIES: Tuple[FamilyAdapter, ...] = tuple(fam for fam in _ALL if fam.installed())
# Adapters this transformers cannot serve (their checkpoints and built-in names are refused).
UNAVAILABLE: Tuple[FamilyAdapter, ...] = tuple(fam for fam in _ALL if not fam.installed())
_BY_CLASS: Dict[str, FamilyAdapter] = {cls: fam for fam in FAMILIES for cls in fam.model_classes}
_BY_MODEL_TYPE: Dict[str, FamilyAdapter] = {t: fam for fam in FAMILIES for t in fam.model_types}
# Related checkpoints an adapter refuses, with the reason (config.model_type -> message).
_REFUSED: Dict[str, str] = {t: why for fam in FAMILIES for t, why in fam.refused_model_types.items()}
_REFUSED.update({t: fam.missing_reason() for fam in UNAVAILABLE for t in fam.model_types})


def supported_classes() -> Tuple[str, ...]:
    return tuple(fam.load_class for fam in FAMILIES)


def supported_model_types() -> Tuple[str, ...]:
    return tuple(sorted(_BY_MODEL_TYPE))


def family_of(model) -> FamilyAdapter:
    """The adapter of a loaded transformers model, or UnsupportedModelError."""
    name = type(model).__name__
    refused = _REFUSED.get(getattr(getattr(model, "config", None), "model_type", None))
    if name not in _BY_CLASS and refused:
        raise UnsupportedModelError(f"{name}: {refused}")
    if name not in _BY_CLASS:
        raise UnsupportedModelError(
            f"AIM supports {', '.join(supported_classes())} (transformers), got {name}"
        )
    return _BY_CLASS[name]


def family_for_model_type(model_type) -> FamilyAdapter:
    """The adapter serving checkpoints whose config.model_type is ``model_type``."""
    if model_type in _REFUSED:
        raise UnsupportedModelError(f"a {model_type!r} checkpoint: {_REFUSED[model_type]}")
    if model_type not in _BY_MODEL_TYPE:
        raise UnsupportedModelError(
            f"a {model_type!r} checkpoint is not supported; AIM supports model types "
            f"{list(supported_model_types())} ({', '.join(f.title for f in FAMILIES)} in transformers format)"
        )
    return _BY_MODEL_TYPE[model_type]
