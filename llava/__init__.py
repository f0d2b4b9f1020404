"""llava-aim: AIM token merging and progressive pruning for multimodal LLMs (llava.model.families) on transformers.

Public API::

    from llava import AIMConfig, apply_aim, load_pretrained_model, remove_aim
"""

from llava.aim.config import AIMConfig
from llava.errors import AIMError

__version__ = "0.1.0"
__all__ = ["AIMConfig", "AIMError", "apply_aim", "load_pretrained_model", "remove_aim", "__version__"]


def __getattr__(name):
    # transformers is heavy: import the integration only when it is asked for.
    if name in ("apply_aim", "remove_aim"):
        from llava.model import runtime

        return getattr(runtime, name)
    if name == "load_pretrained_model":
        from llava.model.builder import load_pretrained_model

        return load_pretrained_model
    raise AttributeError(f"module 'llava' has no attribute {name!r}")
