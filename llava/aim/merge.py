"""Stage 1 of AIM: per-frame token merging by iterative bipartite soft matching.

Pure torch. Every function works on a batch of frames ``x`` of shape (F, T, C) at once; the
only Python loop is over merge steps (a handful: 196 -> 98 -> 49 for retention 1/4).

One step on t tokens (docs/method.md): cosine similarity between A = even positions (sources)
and B = odd positions (destinations); each source picks its most similar destination; the r
most similar sources are merged into their destinations, the rest are kept. Ties are broken
by index, so the result is deterministic. The similarity is computed on the tokens
themselves, or on a separate ``metric`` (LLaVA-1.5's official path: the vision tower's keys),
which is then merged alongside the tokens with the same matching.

How many tokens each step removes is :func:`merge_schedule`, the one place the merged count
is derived (the processor's placeholder count, the analyzer and the benchmark all call it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, NamedTuple, Optional

import torch

from llava.aim.config import MERGE_COUNTS, MERGE_ORDERS, MERGE_WEIGHTINGS


def _halvings(retention: float) -> Optional[int]:
    """K when ``retention`` is exactly 1/2^K (K >= 0), else None."""
    mantissa, exponent = math.frexp(retention)
    return 1 - exponent if mantissa == 0.5 else None


def _floor_count(num_tokens: int, retention: float) -> int:
    # The product is formed in floating point; values like 196 * 0.25 are exact, and a tiny
    # epsilon guards against products such as 0.29 * 100 = 28.999999999999996.
    return max(1, min(num_tokens, int(num_tokens * retention + 1e-9)))


def merge_schedule(num_tokens: int, retention: float, merge_count: str = "official") -> List[int]:
    """Tokens removed by each bipartite step when one frame of ``num_tokens`` is merged.

    merge_count "official" (the official code): at retention 1/2^K, step k = 1..K removes
    ``num_tokens // 2^k`` tokens, a share of the frame's ORIGINAL count (196: 98, 49, 24, 12,
    6, 3 removed, so 98, 49, 25, 13, 7, 4 kept at 1/2 .. 1/64); a step that would remove none
    ends the schedule (tiny frames). Any other retention targets
    ``max(1, floor(num_tokens * retention))`` with the same step sizes, the last step removing
    just enough (576 at 0.4375: 288, then 36, so 252 kept).

    merge_count "exact": ``max(1, floor(num_tokens * retention))`` tokens kept, each step removing as
    many as it can (at most half), the last just enough (196 at 1/8: 98, 49, 24, 1, so 24).

    One step never removes more than half of its input (a bipartite matching cannot).
    """
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1:
        raise ValueError(f"a frame needs at least one token, got {num_tokens!r}")
    if not (0.0 < retention <= 1.0):
        raise ValueError(f"retention must be in (0, 1], got {retention}")
    if merge_count not in MERGE_COUNTS:
        raise ValueError(f"merge_count must be one of {MERGE_COUNTS}, got {merge_count!r}")
    steps: List[int] = []
    t = num_tokens
    halvings = _halvings(retention) if merge_count == "official" else None
    if halvings is not None:
        for k in range(1, halvings + 1):
            r = min(num_tokens >> k, t // 2)
            if r <= 0:
                break
            steps.append(r)
            t -= r
        return steps
    target = _floor_count(num_tokens, retention)
    k = 1
    while t > target:
        share = max(1, num_tokens >> k) if merge_count == "official" else t
        r = min(share, t // 2, t - target)
        steps.append(r)
        t -= r
        k += 1
    return steps


def merged_token_count(num_tokens: int, retention: float, merge_count: str = "official") -> int:
    """Tokens a frame of ``num_tokens`` keeps after merging under ``merge_count`` (:func:`merge_schedule`)."""
    return num_tokens - sum(merge_schedule(num_tokens, retention, merge_count))


@dataclass
class MergeResult:
    """Merged tokens of a batch of frames.

    tokens: (F, k, C) merged tokens.
    sizes: (F, k) number of original tokens each merged token stands for.
    source_index: (F, T) for every original token, the index (0..k-1) of the merged token it
        ended up in; only filled when asked for (``track_sources=True``), else None.
    dest_index: (F, k) for every merged token, the original token whose place it takes: the
        destination it was last merged into (a token never merged away is its own); only
        filled when asked for (``track_destinations=True``), else None. Models with
        positions per patch (M-RoPE) give the merged token that patch's position.
    """

    tokens: torch.Tensor
    sizes: torch.Tensor
    source_index: Optional[torch.Tensor] = None
    dest_index: Optional[torch.Tensor] = None


class MergeStep(NamedTuple):
    """One step's output: merged tokens (F, t-r, C), sizes (F, t-r), where each input token
    went (F, t), and the merged metric (F, t-r, Cm), or None when the tokens are their own metric."""

    tokens: torch.Tensor
    sizes: torch.Tensor
    new_index: torch.Tensor
    metric: Optional[torch.Tensor] = None


def merge_frames(
    x: torch.Tensor,
    retention: float,
    weighting: str = "mean",
    order: str = "paper",
    track_sources: bool = False,
    merge_count: str = "official",
    metric: Optional[torch.Tensor] = None,
    track_destinations: bool = False,
) -> MergeResult:
    """Merge each frame of ``x`` (F, T, C) down to ``merged_token_count(T, retention, merge_count)`` tokens.

    ``metric`` (F, T, Cm): what the similarity is computed on instead of ``x`` (LLaVA-1.5's
    official path: the vision tower's keys); it is merged alongside ``x`` at every step, so
    each step's similarity comes from the merged metric of the step before.
    """
    if x.dim() != 3:
        raise ValueError(f"expected frames of shape (F, T, C), got {tuple(x.shape)}")
    if metric is not None and (metric.dim() != 3 or metric.shape[:2] != x.shape[:2]):
        raise ValueError(f"metric must be (F, T, Cm) for tokens {tuple(x.shape)}, got {tuple(metric.shape)}")
    if weighting not in MERGE_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {MERGE_WEIGHTINGS}, got {weighting!r}")
    if order not in MERGE_ORDERS:
        raise ValueError(f"order must be one of {MERGE_ORDERS}, got {order!r}")
    frames, t, _ = x.shape
    steps = merge_schedule(t, retention, merge_count)
    # Sizes are counts: float32 holds them exactly (bfloat16 would not beyond 256).
    sizes = torch.ones(frames, t, dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
    source_index = None
    if track_sources:
        source_index = torch.arange(t, device=x.device).expand(frames, t).clone()
    dest_index = torch.arange(t, device=x.device).expand(frames, t).clone() if track_destinations else None
    for r in steps:
        x, sizes, new_index, metric = bipartite_merge_step(x, sizes, r, weighting, order, metric=metric)
        if source_index is not None:
            source_index = new_index.gather(1, source_index)
        if dest_index is not None:
            dest_index = dest_index.gather(1, slot_destinations(new_index, x.shape[1]))
    return MergeResult(tokens=x, sizes=sizes, source_index=source_index, dest_index=dest_index)


def slot_destinations(new_index: torch.Tensor, slots: int) -> torch.Tensor:
    """(F, slots): for each output slot of one step, the input token whose place it takes.

    ``new_index`` (F, t) maps every input token to its slot. A kept source (even index) is
    alone in its slot; a destination (odd index) shares its slot with the sources merged into
    it and is the one the slot stands for. So the odd inputs are written last, over the even.
    """
    frames, t = new_index.shape
    out = torch.empty(frames, slots, dtype=torch.long, device=new_index.device)
    index = torch.arange(t, device=new_index.device).expand(frames, t)
    out.scatter_(1, new_index[:, ::2], index[:, ::2])
    out.scatter_(1, new_index[:, 1::2], index[:, 1::2])
    return out


def bipartite_merge_step(
    x: torch.Tensor,
    sizes: torch.Tensor,
    r: int,
    weighting: str = "mean",
    order: str = "paper",
    metric: Optional[torch.Tensor] = None,
) -> MergeStep:
    """Remove ``r`` tokens from every frame of ``x`` (F, t, C) with one matching step.

    The matching is computed on ``metric`` (F, t, Cm) when given, else on ``x``; the metric is
    merged with the same matching and weighting. ``new_index[f, i]`` is the output slot that
    input token i of frame f went to.
    """
    frames, t, _ = x.shape
    if not 0 <= r <= t // 2:
        raise ValueError(f"one step removes between 0 and floor(t/2)={t // 2} tokens, got r={r}")
    merged_src, kept_src, dst_of_merged = _match(x if metric is None else metric, r)
    out_x, out_size, new_index = _combine(x, sizes, merged_src, kept_src, dst_of_merged, weighting, order)
    out_metric = None
    if metric is not None:
        out_metric = _combine(metric, sizes, merged_src, kept_src, dst_of_merged, weighting, order)[0]
    return MergeStep(out_x, out_size, new_index, out_metric)


def _match(metric: torch.Tensor, r: int):
    """(merged sources (F, r), kept sources (F, ta-r), destination of each merged source (F, r))."""
    # Cosine similarity as dot / (|a| |b|) in at least float32 (a float16 dot of unnormalized
    # features can overflow); scaling the small (ta, tb) matrix is cheaper than normalizing x.
    acc = torch.promote_types(metric.dtype, torch.float32)
    mf = metric.to(acc)
    inv_norm = mf.norm(dim=-1).clamp_min(torch.finfo(acc).tiny).reciprocal()
    scores = mf[:, ::2] @ mf[:, 1::2].transpose(1, 2)  # (F, ta, tb)
    scores.mul_(inv_norm[:, ::2, None]).mul_(inv_norm[:, None, 1::2])
    # torch.max returns the first maximal index: ties go to the lower destination index.
    best_sim, best_dst = scores.max(dim=-1)  # (F, ta)
    # Stable descending sort: ties among sources go to the lower source index.
    ranked = torch.sort(best_sim, dim=-1, descending=True, stable=True).indices  # (F, ta)
    merged_src = ranked[:, :r]  # (F, r) sources merged away
    kept_src = ranked[:, r:]  # (F, ta-r) kept, in descending-similarity order
    return merged_src, kept_src, best_dst.gather(1, merged_src)


def _combine(x, sizes, merged_src, kept_src, dst_of_merged, weighting, order):
    """Apply one matching to ``x``: (merged x, merged sizes, new_index)."""
    frames, t, _ = x.shape
    device = x.device
    acc = torch.promote_types(x.dtype, torch.float32)
    src_x, dst_x = x[:, ::2], x[:, 1::2]
    src_size, dst_size = sizes[:, ::2], sizes[:, 1::2]
    tb = dst_x.shape[1]

    moving = _take_rows(src_x, merged_src)  # (F, r, C)
    moving_size = src_size.gather(1, merged_src)
    new_dst_size = dst_size.scatter_add(1, dst_of_merged, moving_size)
    # Sums in at least float32 (a bfloat16 running sum would round at every addition).
    if weighting == "mean":
        # Plain mean of the destination and the sources merged into it in this step.
        summed = _add_rows(dst_x.to(acc), dst_of_merged, moving.to(acc))
        count = torch.ones_like(dst_size, dtype=acc).scatter_add_(
            1, dst_of_merged, torch.ones_like(moving_size, dtype=acc)
        )
        new_dst = summed.div_(count.unsqueeze(-1)).to(x.dtype)
    else:
        # Size-weighted mean across steps (ToMe): sum of size * value over the group.
        summed = _add_rows(
            dst_x.to(acc) * dst_size.to(acc).unsqueeze(-1), dst_of_merged, moving.to(acc) * moving_size.to(acc).unsqueeze(-1)
        )
        new_dst = summed.div_(new_dst_size.to(acc).unsqueeze(-1)).to(x.dtype)

    kept_x = _take_rows(src_x, kept_src)
    kept_size = src_size.gather(1, kept_src)
    out_x = torch.cat([kept_x, new_dst], dim=1)
    out_size = torch.cat([kept_size, new_dst_size], dim=1)
    # Original positions (within this step's input) of the output slots, and where each
    # input token went: kept sources stay themselves, merged sources go to their destination.
    out_pos = torch.cat([2 * kept_src, 2 * torch.arange(tb, device=device).expand(frames, tb) + 1], dim=1)
    if order == "spatial":
        perm = torch.argsort(out_pos, dim=1)
        out_x = _take_rows(out_x, perm)
        out_size = out_size.gather(1, perm)
        out_pos = out_pos.gather(1, perm)
    new_index = torch.empty(frames, t, dtype=torch.long, device=device)
    slots = torch.arange(out_pos.shape[1], device=device).expand(frames, -1)
    new_index.scatter_(1, out_pos, slots)
    merged_into = new_index.gather(1, 2 * dst_of_merged + 1)
    new_index.scatter_(1, 2 * merged_src, merged_into)
    return out_x, out_size, new_index


# Row gathers and scatter-adds on the flattened (F * t, C) view: index_select / index_add_
# are several times faster on CPU than gather / scatter_reduce with a channel-expanded index.


def _flat_index(index: torch.Tensor, rows_per_frame: int) -> torch.Tensor:
    offsets = torch.arange(index.shape[0], device=index.device).unsqueeze(-1) * rows_per_frame
    return (index + offsets).reshape(-1)


def _take_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[f, index[f, j]]`` for every frame f: (F, t, C), (F, m) -> (F, m, C)."""
    frames, t, c = x.shape
    return x.reshape(frames * t, c).index_select(0, _flat_index(index, t)).reshape(frames, -1, c)


def _add_rows(base: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """A copy of ``base`` (F, t, C) with ``rows[f, j]`` added to row ``index[f, j]`` of frame f."""
    frames, t, c = base.shape
    out = base.reshape(frames * t, c).clone()
    out.index_add_(0, _flat_index(index, t), rows.reshape(-1, c))
    return out.reshape(frames, t, c)
