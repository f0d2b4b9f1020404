"""Reduction of each frame before the LLM: AIM's merging or the spatial-pooling control.

Both give a frame of T tokens exactly ``merged_token_count(T, retention, rule)`` tokens, so the
processor's placeholder count, the schedule and the FLOPs are the same; only *which* tokens
are averaged differs. Pure torch.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from llava.aim.merge import MergeResult, merged_token_count
from llava.aim.policy import reduction_of
from llava.aim.registry import lookup
from llava.errors import UnsupportedUsageError


def token_grid(num_tokens: int) -> Tuple[int, int]:
    """(rows, cols) of a frame's tokens in raster order: square when T is, else one row."""
    side = math.isqrt(num_tokens)
    return (side, side) if side * side == num_tokens else (1, num_tokens)


def pooled_grid(rows: int, cols: int, target: int) -> Optional[Tuple[int, int]]:
    """An output grid (gr, gc) with gr * gc == target that fits in (rows, cols), its aspect as
    close as possible to the input's (ties: fewer rows); None when no factor pair fits."""
    best = None
    for gr in range(1, min(rows, target) + 1):
        if target % gr or target // gr > cols:
            continue
        gc = target // gr
        distance = abs(math.log(gr / gc) - math.log(rows / cols))
        if best is None or distance < best[0] - 1e-12:
            best = (distance, gr, gc)
    return (best[1], best[2]) if best else None


def pool_slots(rows: int, cols: int, out_rows: int, out_cols: int, device=None) -> torch.Tensor:
    """Output slot of every input token (raster order): the grid is cut into out_rows x out_cols
    blocks of near-equal size (row r goes to block floor(r * out_rows / rows)); blocks never
    overlap, so each token lands in exactly one slot."""
    r = torch.arange(rows, device=device) * out_rows // rows
    c = torch.arange(cols, device=device) * out_cols // cols
    return (r[:, None] * out_cols + c[None, :]).reshape(-1)


def pool_frames(x: torch.Tensor, retention: float, track_sources: bool = False, merge_count: str = "official",
                grid: Optional[Tuple[int, int]] = None, track_destinations: bool = False) -> MergeResult:
    """Average-pool each frame of ``x`` (F, T, C) over spatial blocks to ``merged_token_count(T,
    retention, merge_count)`` tokens, in raster order. With T = 196 (14 x 14) and 49 tokens this is 2x2
    average pooling. ``grid`` (rows, cols) gives the frame's token grid; without it a T that is
    not a square is pooled as one row. A pooled token's destination (``dest_index``) is the
    first token of its block in raster order."""
    if x.dim() != 3:
        raise ValueError(f"expected frames of shape (F, T, C), got {tuple(x.shape)}")
    frames, t, c = x.shape
    target = merged_token_count(t, retention, merge_count)
    if grid is not None and grid[0] * grid[1] != t:
        raise ValueError(f"a {grid[0]} x {grid[1]} grid does not hold {t} tokens")
    rows, cols = token_grid(t) if grid is None else grid
    grid = pooled_grid(rows, cols, target)
    if grid is None:  # no block grid of that size: pool runs of the raster order instead
        rows, cols, grid = 1, t, (1, target)
    out_rows, out_cols = grid
    slots = pool_slots(rows, cols, out_rows, out_cols, x.device)  # (T,)
    acc = torch.promote_types(x.dtype, torch.float32)  # sums in at least float32
    sums = torch.zeros(frames, target, c, dtype=acc, device=x.device).index_add_(1, slots, x.to(acc))
    sizes = torch.zeros(target, dtype=acc, device=x.device).index_add_(0, slots, torch.ones(t, dtype=acc, device=x.device))
    tokens = (sums / sizes[None, :, None]).to(x.dtype)
    source_index = slots.expand(frames, t).clone() if track_sources else None
    dest_index = None
    if track_destinations:  # the lowest raster index landing in each slot
        first = torch.full((target,), t, dtype=torch.long, device=x.device)
        first.scatter_reduce_(0, slots, torch.arange(t, device=x.device), reduce="amin")
        dest_index = first.expand(frames, target).clone()
    return MergeResult(tokens=tokens, sizes=sizes.expand(frames, target).clone(), source_index=source_index,
                       dest_index=dest_index)


def reduce_frames(x: torch.Tensor, cfg, track_sources: bool = False, metric: Optional[torch.Tensor] = None,
                  grid: Optional[Tuple[int, int]] = None, track_destinations: bool = False) -> MergeResult:
    """The pre-LLM reduction of ``cfg`` (an AIMConfig): merging (similarity on ``metric`` when
    given), or pooling for method "pool" (which has no similarity).

    ``grid``: the frames' token grid (rows, cols), for pooling; merging needs none. The
    function is the registered reduction's (llava.aim.registry)."""
    entry = lookup(reduction_of(cfg), "reduction")
    if entry.needs != {"frames"}:
        raise UnsupportedUsageError(f"reduction {entry.name!r} needs {sorted(entry.needs)}: it runs in the "
                                    "family's vision-tower hook, not on the frames alone")
    return entry.fn(x, cfg, track_sources=track_sources, metric=metric, grid=grid,
                    track_destinations=track_destinations)
