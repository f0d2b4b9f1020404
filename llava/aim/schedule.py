"""How many visual tokens enter each decoder layer: the ONE place this is derived.

The runtime, the efficiency analyzer and the tests all call :func:`visual_tokens_per_layer`.
Integer arithmetic only, so the counts are exact and identical everywhere.
"""

from __future__ import annotations

from typing import List, Optional

from llava.aim.policy import drop_steps, method_drop_settings, spec

CONVENTIONS = ("runtime", "paper")


def visual_tokens_per_layer(
    v0: int,
    num_layers: int,
    l1: Optional[int],
    l2: Optional[int],
    convention: str = "runtime",
) -> List[int]:
    """Visual tokens entering each of ``num_layers`` decoder layers.

    runtime (what the model executes): v0 for j <= l1, floor(v0*(l2-j)/(l2-l1)) for
    l1 < j < l2, 0 for j >= l2. Pruning thus happens after layers l1 .. l2-1.

    paper (the paper's FLOPs script, the same schedule one layer earlier): v0 for j < l1,
    floor(v0*(l2-1-j)/(l2-l1)) for l1 <= j < l2-1, 0 from l2-1.

    ``l1=None`` (and ``l2=None``) disables pruning: v0 everywhere.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if isinstance(v0, bool) or not isinstance(v0, int) or v0 < 0:
        raise ValueError(f"v0 must be a non-negative integer, got {v0!r}")
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
    if l1 is None or l2 is None:
        if (l1 is None) != (l2 is None):
            raise ValueError("l1 and l2 must both be set or both be None")
        return [v0] * num_layers
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (l1, l2)) or l1 < 0 or l2 <= l1:
        raise ValueError(f"need integers 0 <= l1 < l2, got l1={l1!r}, l2={l2!r}")

    span = l2 - l1
    shift = 0 if convention == "runtime" else 1
    counts = []
    for j in range(num_layers):
        k = j + shift  # the paper counts every layer as if it were one layer later
        if k <= l1:
            counts.append(v0)
        elif k < l2:
            counts.append((v0 * (l2 - k)) // span)
        else:
            counts.append(0)
    return counts


def pruning_layers(counts: List[int]) -> List[int]:
    """Layers after which the runtime drops tokens: j with counts[j+1] < counts[j].

    With few visual tokens the floor can leave a count unchanged from one layer to the next;
    no importance needs computing there.
    """
    return [j for j in range(len(counts) - 1) if counts[j + 1] < counts[j]]


def scoring_layers(counts: List[int]) -> List[int]:
    """Pruning layers that need an importance score: those keeping some visual tokens.

    Where the next layer keeps none, every visual token goes and no ranking is computed.
    """
    return [j for j in pruning_layers(counts) if counts[j + 1] > 0]


def kept_count(n: int, keep: float) -> int:
    """``floor(n * keep)`` for a kept fraction in [0, 1], guarded against float products such as
    0.29 * 100 = 28.999999999999996 (the same guard as merging's count)."""
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"kept fraction must be in [0, 1], got {keep!r}")
    return max(0, min(n, int(n * keep + 1e-9)))


def stepwise_visual_tokens(v0: int, num_layers: int, steps) -> List[int]:
    """Visual tokens entering each layer under drop steps ((K, keep), ...): layers before the
    first K see v0; from each K on, ``kept_count(previous, keep)`` (FastV, VTW, PyramidDrop).

    The runtime scores in layer K-1 and drops after it, so K >= 1; a K beyond the model never
    takes effect.
    """
    if isinstance(v0, bool) or not isinstance(v0, int) or v0 < 0:
        raise ValueError(f"v0 must be a non-negative integer, got {v0!r}")
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
    layers = [k for k, _ in steps]
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in layers) or layers != sorted(set(layers)):
        raise ValueError(f"drop layers must be strictly increasing integers >= 1, got {layers}")
    counts, current, pending = [], v0, list(steps)
    for j in range(num_layers):
        while pending and pending[0][0] == j:
            current = kept_count(current, pending.pop(0)[1])
        counts.append(current)
    return counts


def policy_visual_tokens(cfg, v0: int, num_layers: int, convention: str = "runtime") -> List[int]:
    """Visual tokens entering each layer for an AIMConfig of any method (llava.aim.policy).

    AIM and its controls use the linear (l1, l2) schedule in either convention; FastV, VTW and
    PyramidDrop use their drop steps, counted as the runtime executes them (the "paper"
    convention describes AIM's own FLOPs script and does not apply to them).
    """
    if spec(cfg.method).schedule == "none":  # PruMerge: reduced before the LLM, nothing pruned inside
        return visual_tokens_per_layer(v0, num_layers, None, None, convention)
    if spec(cfg.method).schedule == "linear":
        if cfg.layers_auto:  # apply_aim resolves per family; elsewhere the paper's scaled rule
            cfg = cfg.resolve_layers(num_layers)
        return visual_tokens_per_layer(v0, num_layers, cfg.l1, cfg.l2, convention)
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if convention != "runtime":
        raise ValueError(f"the paper convention is AIM's FLOPs script; {cfg.method} is counted as executed (runtime)")
    return stepwise_visual_tokens(v0, num_layers, drop_steps(cfg.method, *method_drop_settings(cfg), num_layers))
