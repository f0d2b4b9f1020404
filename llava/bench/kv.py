"""KV-cache size: bytes actually held by a cache after a forward or generate call."""

from __future__ import annotations


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
    from llava.model.language_model import compat  # imports transformers: not at CLI start-up

    return cache_bytes(compat.output_cache(output))

