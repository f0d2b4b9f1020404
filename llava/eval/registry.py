"""lmms-eval entry point (group "lmms_eval.models"): the models this package adds, one per
model family (``FamilyAdapter.plugin_model`` -> ``llava.eval.lmms_model.<plugin_class>``).

lmms-eval loads every entry point of the group when it starts; one that raises hides the
ones after it. So this module imports nothing heavy at import time and the callable never
raises: if lmms-eval's manifest type or the family adapters cannot be imported it registers
nothing.
"""

from __future__ import annotations

from typing import Dict


def plugin_models() -> Dict[str, str]:
    """lmms-eval model id -> class path, from the family adapters (imported here, on use)."""
    from llava.model.families import FAMILIES

    return {f.plugin_model: f"llava.eval.lmms_model.{f.plugin_class}" for f in FAMILIES if f.plugin_model}


def __getattr__(name: str):
    if name == "MODELS":  # the table under its former name (model id -> class path)
        return plugin_models()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def model_manifests():
    """The ModelManifest list lmms-eval registers; empty if lmms-eval's API or the adapters are not there."""
    try:
        from lmms_eval.models.registry_v2 import ModelManifest

        return [ModelManifest(model_id=name, simple_class_path=path) for name, path in plugin_models().items()]
    except Exception:  # never raise inside lmms-eval's registry loading
        return []
