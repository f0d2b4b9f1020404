"""Attention wrappers that let AIM read a layer's post-RoPE queries and keys.

transformers dispatches attention through ``AttentionInterface`` by the config's
``_attn_implementation`` name. AIM registers "aim_<name>" for each supported backend: a thin
wrapper that, when the decoder driver passes an ``aim_probe`` keyword (only at pruning
layers), hands (query, key) to the probe and then runs the stock function unchanged. The
main attention therefore stays on SDPA / FlashAttention; no eager attention is needed.
"""

from __future__ import annotations

import sys
from typing import Callable

from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from llava.errors import UnsupportedModelError

SUPPORTED_BACKENDS = ("sdpa", "eager", "flash_attention_2")
PREFIX = "aim_"


def _eager_for(module) -> Callable:
    # Each model file defines its own eager_attention_forward; use the module's own.
    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:  # pragma: no cover - every supported model defines it
        raise UnsupportedModelError(f"{type(module).__name__} has no eager_attention_forward")
    return fn


def _make_wrapper(backend: str) -> Callable:
    def aim_attention(module, query, key, value, attention_mask, **kwargs):
        probe = kwargs.pop("aim_probe", None)
        if probe is not None:
            probe.observe(module, query, key)
        stock = _eager_for(module) if backend == "eager" else ALL_ATTENTION_FUNCTIONS[backend]
        return stock(module, query, key, value, attention_mask, **kwargs)

    aim_attention.__name__ = f"aim_{backend}_attention"
    return aim_attention


def aim_backend_name(backend: str) -> str:
    """Register (once) and return the AIM wrapper's name for a stock backend."""
    if backend.startswith(PREFIX):
        backend = backend[len(PREFIX) :]
    if backend not in SUPPORTED_BACKENDS:
        raise UnsupportedModelError(
            f"attention implementation {backend!r} is not supported with AIM pruning; "
            f"use one of {list(SUPPORTED_BACKENDS)}"
        )
    name = PREFIX + backend
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _make_wrapper(backend))
        # Without a mask builder under the same name create_causal_mask silently returns None.
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[backend])
    return name


def stock_backend_name(name: str) -> str:
    return name[len(PREFIX) :] if name.startswith(PREFIX) else name
