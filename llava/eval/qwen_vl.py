"""Former home of two plugin model classes, kept so that their old class paths
(``llava.eval.qwen_vl.<class>``) still resolve: every plugin class is now derived from its family
adapter in :mod:`llava.eval.lmms_model` (``PLUGIN_CLASSES``), and this module hands out the same
class objects by name."""

from __future__ import annotations


def __getattr__(name: str):
    from llava.eval import lmms_model

    cls = getattr(lmms_model, name, None)
    if name.startswith("_") or cls not in lmms_model.PLUGIN_CLASSES.values():
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return cls
