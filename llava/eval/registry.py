"""lmms-eval entry point (group "lmms_eval.models"): the models this package adds.

lmms-eval loads every entry point of the group when it starts; one that raises hides the
ones after it. So this module imports nothing heavy at import time and the callable never
raises: if lmms-eval's manifest type cannot be imported it registers nothing.
"""

from __future__ import annotations

# model id -> class path; the classes live in llava.eval.lmms_model and llava.eval.qwen_vl
# (imported only when used)
MODELS = {
    "llava_onevision_aim": "llava.eval.lmms_model.LlavaOneVisionAIM",
    "llava_aim": "llava.eval.lmms_model.LlavaAIM",
    "qwen2_vl_aim": "llava.eval.qwen_vl.Qwen2VLAIM",
    "qwen2_5_vl_aim": "llava.eval.qwen_vl.Qwen2_5_VLAIM",
    "llava_onevision1_5_aim": "llava.eval.qwen_vl.LlavaOneVision15AIM",
}


def model_manifests():
    """The ModelManifest list lmms-eval registers; empty if lmms-eval's API is not there."""
    try:
        from lmms_eval.models.registry_v2 import ModelManifest
    except Exception:  # never raise inside lmms-eval's registry loading
        return []
    return [ModelManifest(model_id=name, simple_class_path=path) for name, path in MODELS.items()]
