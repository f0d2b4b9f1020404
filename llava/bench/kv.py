"""KV-cache size: bytes actually held by a cache after a forward or generate call."""

from __future__ import annotations

from typing import Optional

from llava.model.language_model import compat


def cache_bytes(cache) -> int:
    """Bytes of keys and values held by a transformers cache (0 for None or an empty cache).

    Layers of a pruned prefill hold different lengths, so each layer is counted on its own.
    """
    if cache is None:
        return 0
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if tensor is not None and hasattr(tensor, "numel"):
                total += tensor.numel() * tensor.element_size()
    return total


def output_cache_bytes(output) -> int:
    """Bytes held by a model output's KV cache, whatever the installed field name."""
    return cache_bytes(compat.output_cache(output))


def cache_lengths(cache) -> Optional[list]:
    """Tokens held by each layer of a cache (None without one)."""
    if cache is None:
        return None
    return [int(layer.get_seq_length()) for layer in getattr(cache, "layers", [])]
