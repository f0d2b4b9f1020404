"""HoliTom (Shao et al., "Holistic Token Merging for Fast Video Large Language Models",
arXiv 2505.21334, NeurIPS 2025): pure functions of its two stages.

Read from the official code, cokeshao/HoliTom at commit e9b2972f6895c9e7d7fe74eb8c3a2ecaab8056e0
(``holitom/llava_arch.py``: the stage before the LLM; ``holitom/modeling_qwen2.py``: the merge
inside it; ``scripts/eval_ov-7b_holitom.sh``: the settings it was evaluated with). In our words:

**Before the LLM**, on one video's per-frame tokens after the projector and the 2x2 pooling
(``x``: (F, T, C)) and the vision tower's attention pooled the same way (``attention``: (F, T)):

1. *Global temporal segmentation.* ``sim[f, t]`` is the cosine similarity of token t in
   frames f and f+1. A token is *static* over a window of frames [s, e] when every step of it
   is above ``tau``; merging it saves ``e - s`` tokens. A dynamic programme over the frames
   picks the split into consecutive windows (at most ``max_window`` frames each) that saves the
   most, ties kept by the shorter window (:func:`segment_frames`).
2. The budget ``retention`` is the fraction of the video's F*T tokens that reach the LLM; the
   saving of step 1 raises the per-token ratio applied afterwards to
   ``min(retention / ((F*T - saved) / (F*T)), 1)`` (:func:`ratio_after_static`).
3. *Temporal merge.* In each window of two or more frames, a static token becomes the mean of
   its copies over the window's frames.
4. *Spatial merge.* The static tokens of a window go through DPC-KNN (density peaks over k
   nearest neighbours, :func:`dpc_knn_centers`) to ``round(S * ratio)`` centres, each of
   which absorbs the tokens nearest to it: ``beta * centre + (1 - beta) * mean(members)``
   (:func:`merge_into_centers`). Each frame's dynamic tokens keep ``round(ceil(D_f * ratio) *
   (1 - d))`` tokens by attention ("dominant") and DPC-KNN-merge the rest into
   ``ceil(D_f * ratio) - dominant`` "contextual" tokens (the official ``D`` = d, default 0:
   only dominant tokens).
5. Order: per window, its static tokens (by position), then each frame's dominant then
   contextual tokens (by position).

**Inside the LLM** (HoliTom's "M"): at layer K, the top ``round(V * (1 - r))`` visual tokens by
the attention the last prompt token pays them at layer K-1 (mean over heads) stay; every
other visual token is folded into the kept token whose hidden state is most cosine-similar,
in index order, each fold averaging the two: ``kept = (kept + dropped) / 2``
(:func:`fold_weights`, :func:`fold_dropped_into_kept`). The official sequential averaging
gives a kept token that absorbed ``m`` dropped tokens the weight ``2**-m`` and the i-th of
them (by index) ``2**-(m - i + 1)``; we compute that closed form in one batched step.

Defaults, with their source (cokeshao/HoliTom @ e9b2972):

* ``tau`` 0.80 and ``retention`` 0.15-0.25, ``tau`` 0.65 at ``retention`` 0.10:
  scripts/eval_ov-7b_holitom.sh lines 2, 12, 22, 32 (RETAIN_RATIO, T); code default T=0.8,
  holitom/llava_arch.py line 350.
* K = 18 and r = 0.5 for LLaVA-OneVision-7B and LLaVA-Video-7B (28 layers):
  scripts/eval_ov-7b_holitom.sh line 2, scripts/eval_vid-7b_holitom.sh line 2 (HOLITOM_k,
  HOLITOM_r).
* ``beta`` 0.6, ``d`` 0, DPC-KNN ``k`` 7, ``max_window`` 1024 (no limit at 32-64 frames):
  holitom/llava_arch.py lines 352-355 (BETA, D, K, MAX_WINDOW_SIZE); the scripts never set
  them. The centre weighting with ``beta`` is taken: the branch at line 137 reads NO_BETA with
  default "0" (the log line at 356-357 prints a default "1", which nothing reads).

Deliberate differences, each documented in docs/methods/holitom.md:

* DPC-KNN adds ``1e-6 * rand`` to the densities so that no two are equal; we break exact
  ties by index instead (lower index counts as denser), so a run is reproducible. Centre and
  attention ties go to the lower index (``torch.topk`` leaves them unspecified).
* The official inner merge reads one image span of the first sample of a batch; ours ranks
  and folds each sample's visual tokens separately (batch > 1 equals one at a time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch

# Official defaults (see the module docstring for the lines they come from).
DEFAULT_TAU = 0.80
DEFAULT_BETA = 0.6
DEFAULT_DOMINANT_SHARE_OFF = 0.0  # the official "D": share of a frame's budget given to contextual tokens
DEFAULT_KNN = 7
DEFAULT_MAX_WINDOW = 1024
DEFAULT_LAYER = 18  # HOLITOM_k, of LLaVA-OneVision-7B's 28 layers
DEFAULT_LAYER_REFERENCE = 28
DEFAULT_INNER_RATIO = 0.5  # HOLITOM_r: fraction of the visual tokens folded away at layer K


def default_tau(retention: float) -> float:
    """The official scripts' similarity threshold at a budget: 0.65 at 10% of the tokens (and
    below), 0.80 from 15% on (scripts/eval_ov-7b_holitom.sh lines 2, 12, 22, 32)."""
    return 0.65 if retention <= 0.10 + 1e-9 else DEFAULT_TAU


# -- stage 1: global temporal segmentation ---------------------------------------------------
def frame_similarity(x: torch.Tensor) -> torch.Tensor:
    """(F-1, T) cosine similarity of each token with the same position in the next frame."""
    xn = torch.nn.functional.normalize(x.float(), p=2, dim=-1)
    return torch.nn.functional.cosine_similarity(xn[:-1], xn[1:], dim=-1)


def window_savings(sim: torch.Tensor, tau: float) -> torch.Tensor:
    """(F, F) long: ``saved[s, e]`` = (e - s) * the tokens static over every step of [s, e]
    (zero for e <= s). A token is static over [s, e] when ``sim[f] > tau`` for s <= f < e."""
    steps, _ = sim.shape
    frames = steps + 1
    moving = (sim <= tau).to(torch.long)
    # moved_before[f, t]: how many of the steps 0..f-1 token t moved; constant over [s, e] iff static
    moved_before = torch.cat([moving.new_zeros(1, moving.shape[1]), moving.cumsum(dim=0)])
    static = (moved_before[None, :, :] == moved_before[:, None, :]).sum(dim=-1)  # (s, e)
    length = (torch.arange(frames, device=sim.device)[None, :] - torch.arange(frames, device=sim.device)[:, None])
    return static * length.clamp(min=0)


def segment_frames(saved: Sequence[Sequence[float]], max_window: int = DEFAULT_MAX_WINDOW) -> Tuple[List[Tuple[int, int]], float]:
    """The split of the frames into consecutive windows [s, e] that saves the most tokens.

    ``saved``: the host copy of :func:`window_savings`. Windows hold at most ``max_window``
    frames; a longer window replaces the best so far only when it saves strictly more (the
    official rule, so ties keep single frames and shorter windows). Returns (windows in order,
    tokens saved)."""
    frames = len(saved)
    best = [0.0] * frames
    start = [0] * frames
    for i in range(frames):
        value, first = (best[i - 1] if i > 0 else 0.0), i
        for size in range(2, min(i + 1, max_window) + 1):
            j = i - size  # the window is [j + 1, i]
            candidate = (best[j] if j >= 0 else 0.0) + saved[j + 1][i]
            if candidate > value:
                value, first = candidate, j + 1
        best[i], start[i] = value, first
    windows, i = [], frames - 1
    while i >= 0:
        windows.append((start[i], i))
        i = start[i] - 1
    return windows[::-1], (best[-1] if frames else 0.0)


def ratio_after_static(retention: float, tokens: int, saved: float) -> float:
    """The per-token ratio applied after the temporal merge so that about ``retention`` of the
    video's ``tokens`` remain overall (the official formula, floats as there)."""
    return min(retention / ((tokens - saved) / tokens), 1)


def static_mask(sim: torch.Tensor, start: int, end: int, tau: float) -> torch.Tensor:
    """(T,) bool: tokens static over every step of the window [start, end] (end > start)."""
    return (sim[start:end] > tau).all(dim=0)


# -- stage 2: DPC-KNN ----------------------------------------------------------------------------
def dpc_knn_centers(x: torch.Tensor, centers: int, knn: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Density-peak centres of the rows of ``x`` (N, C): (sorted centre indices (centers,),
    the (N, N) distance matrix).

    Distance: Euclidean / sqrt(C). Density: exp(-mean squared distance to the ``knn`` nearest
    rows, the row itself included), in float64. Each row's separation: its distance to the nearest denser
    row (exact density ties: the lower index counts as denser; the densest row: the largest
    distance of the matrix). Centres: the ``centers`` largest density * separation, ties by index.
    """
    n, c = x.shape
    # float64: close tokens have densities exp(-m) with m ~ 1e-6 (e.g. a small model's
    # projected features), which float32 rounds into ties the official random noise would break
    xf = x.double()
    dist = torch.cdist(xf[None], xf[None])[0] / (c ** 0.5)
    nearest = torch.topk(dist, knn, dim=-1, largest=False).values
    density = (-(nearest ** 2).mean(dim=-1)).exp()
    index = torch.arange(n, device=x.device)
    denser = (density[None, :] > density[:, None]) | ((density[None, :] == density[:, None]) & (index[None, :] < index[:, None]))
    separation = torch.where(denser, dist, dist.max()).min(dim=-1).values
    score = separation * density
    order = torch.sort(score, descending=True, stable=True).indices
    return torch.sort(order[:centers]).values, dist


def assign_to_centers(dist: torch.Tensor, center_index: torch.Tensor) -> torch.Tensor:
    """(N,) long: each row's nearest centre (position in ``center_index``; ties: the first);
    centres are their own."""
    owner = dist[:, center_index].argmin(dim=-1)
    owner[center_index] = torch.arange(center_index.shape[0], device=dist.device)
    return owner


def merge_into_centers(x: torch.Tensor, center_index: torch.Tensor, owner: torch.Tensor, beta: float = DEFAULT_BETA) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each centre absorbs the non-centre rows it owns: ``beta * centre + (1 - beta) *
    mean(members)``, the centre alone when it owns none. Returns (merged (M, C), weights (N,)):
    merged[m] == sum over rows i owned by m of weights[i] * x[i]."""
    n = x.shape[0]
    m = center_index.shape[0]
    is_center = torch.zeros(n, dtype=torch.bool, device=x.device)
    is_center[center_index] = True
    members = torch.zeros(m, dtype=torch.float64, device=x.device).index_add_(0, owner, (~is_center).double())
    member_weight = (1.0 - beta) / members.clamp(min=1)
    center_weight = torch.where(members > 0, torch.full_like(members, beta), torch.ones_like(members))
    weights = torch.where(is_center, center_weight[owner], member_weight[owner])
    merged = torch.zeros(m, x.shape[1], dtype=torch.float64, device=x.device).index_add_(0, owner, x.double() * weights[:, None])
    return merged.to(x.dtype), weights


def attention_dominant(attention: torch.Tensor, count: int) -> torch.Tensor:
    """(count,) sorted indices of the rows with the most attention (ties: the lower index)."""
    order = torch.sort(attention.float(), descending=True, stable=True).indices
    return torch.sort(order[:count]).values


def frame_budget(dynamic: int, ratio: float, contextual_share: float) -> Tuple[int, int]:
    """(dominant, contextual) tokens a frame with ``dynamic`` dynamic tokens keeps (official:
    ``round(ceil(n * ratio) * (1 - D))`` dominant, the rest of ``ceil(n * ratio)`` contextual)."""
    total = math.ceil(dynamic * ratio)
    dominant = round(total * (1 - contextual_share))
    return dominant, total - dominant


# -- the whole stage before the LLM --------------------------------------------------------------
@dataclass
class HoliTomOut:
    tokens: torch.Tensor  # (U, C) in the order the LLM receives them
    origin: torch.Tensor  # (U,) long: flat index f*T + t each output stands for (a centre's first frame)
    sources: torch.Tensor  # (F*T,) long: the output each input went into (every input goes somewhere)
    weights: torch.Tensor  # (F*T,) float: tokens[u] == sum_{sources == u} weights * x
    windows: List[Tuple[int, int]]
    ratio: float  # the per-token ratio after the temporal merge


def holitom_frames(x: torch.Tensor, attention: torch.Tensor, retention: float, tau: float = DEFAULT_TAU,
                   beta: float = DEFAULT_BETA, contextual_share: float = DEFAULT_DOMINANT_SHARE_OFF,
                   knn: int = DEFAULT_KNN, max_window: int = DEFAULT_MAX_WINDOW) -> HoliTomOut:
    """HoliTom before the LLM on one video: ``x`` (F, T, C) pooled projected frame tokens,
    ``attention`` (F, T) the attention each receives (pooled like ``x``)."""
    frames, per_frame, channels = x.shape
    device = x.device
    sim = frame_similarity(x) if frames > 1 else x.new_zeros(0, per_frame, dtype=torch.float32)
    saved_table = window_savings(sim, tau).tolist() if frames > 1 else [[0]]
    windows, saved = segment_frames(saved_table, max_window)
    ratio = ratio_after_static(retention, frames * per_frame, saved)
    pieces, origins, sources, weights = [], [], torch.full((frames * per_frame,), -1, dtype=torch.long, device=device), torch.zeros(frames * per_frame, dtype=torch.float32, device=device)
    emitted = 0
    positions = torch.arange(per_frame, device=device)

    def emit(tokens, origin_flat, member_flat, member_owner, member_weight):
        nonlocal emitted
        pieces.append(tokens.to(x.dtype))
        origins.append(origin_flat)
        sources[member_flat] = member_owner + emitted
        weights[member_flat] = member_weight.to(weights.dtype)
        emitted += tokens.shape[0]

    def spatial(tokens, flat, count):
        """DPC-KNN ``tokens`` (n, C) standing for input rows ``flat`` (n, W) with weight 1/W each."""
        if count <= 0:
            return
        centers, dist = dpc_knn_centers(tokens, count, min(knn, count))
        owner = assign_to_centers(dist, centers)
        merged, w = merge_into_centers(tokens, centers, owner, beta)
        width = flat.shape[1]
        emit(merged, flat[centers, 0], flat.reshape(-1), owner.repeat_interleave(width), (w / width).repeat_interleave(width))

    for start, end in windows:
        span = end - start + 1
        if span > 1:
            static = static_mask(sim, start, end, tau)
            static_pos = positions[static]
            flat = (torch.arange(start, end + 1, device=device)[None, :] * per_frame + static_pos[:, None])  # (S, W)
            static_tokens = x[start:end + 1, static].double().mean(dim=0)  # merged in float64, handed back in x's dtype
            spatial(static_tokens, flat, round(static_tokens.shape[0] * ratio))
        else:
            static = torch.zeros(per_frame, dtype=torch.bool, device=device)
        dynamic_pos = positions[~static]
        dominant, contextual = frame_budget(dynamic_pos.shape[0], ratio, contextual_share)
        for f in range(start, end + 1):
            feats, attn = x[f, dynamic_pos], attention[f, dynamic_pos]
            flat = f * per_frame + dynamic_pos
            keep = attention_dominant(attn, dominant) if dominant > 0 else positions.new_zeros(0)
            if dominant > 0:
                emit(feats[keep], flat[keep], flat[keep], torch.arange(dominant, device=device), torch.ones(dominant, device=device))
            rest = torch.ones(dynamic_pos.shape[0], dtype=torch.bool, device=device)
            rest[keep] = False
            spatial(feats[rest], flat[rest][:, None], contextual)
    tokens = torch.cat(pieces) if pieces else x.new_zeros(0, channels)
    origin = torch.cat(origins) if origins else positions.new_zeros(0)
    return HoliTomOut(tokens, origin, sources, weights, windows, ratio)


def holitom_bound(frames: int, per_frame: int, retention: float) -> int:
    """The most tokens HoliTom can give a video of ``frames`` x ``per_frame`` tokens.

    Each window keeps round(S * ratio) of its S static tokens and each frame ceil(D * ratio) of
    its D dynamic ones, with ratio * (tokens left after the temporal merge) <= retention * F*T
    (the ratio is the budget divided by what is left, capped at 1). Rounding adds less than one
    token per frame (ceil) and at most half a token per window of two or more frames (round)."""
    tokens = frames * per_frame
    return min(tokens, math.ceil(retention * tokens) + frames + (frames + 1) // 2)


def holitom_nominal(frames: int, per_frame: int, retention: float) -> int:
    """The analyzer's count: the budget, ``retention`` of the video's tokens (rounded up)."""
    return min(frames * per_frame, math.ceil(retention * frames * per_frame - 1e-9))


def holitom_video(x):
    """The registry entry's function (llava.aim.frames): FramesIn -> FramesOut, HoliTom on one
    video at the budget ``cfg.retention`` with ``cfg.holitom_tau`` (None: :func:`default_tau`)."""
    from llava.aim.frames import FramesOut

    cfg = x.cfg
    tau = cfg.holitom_tau if cfg.holitom_tau is not None else default_tau(cfg.retention)
    out = holitom_frames(x.tokens, x.attention, cfg.retention, tau=tau)
    return FramesOut(out.tokens, out.origin, out.sources, out.weights)


# -- inside the LLM: the fold at layer K --------------------------------------------------------
def fold_weights(owner: torch.Tensor, dropped: torch.Tensor, kept_slots: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The official sequential averaging in closed form.

    owner: (B, D) long, each dropped slot's kept slot (0..kept_slots-1); dropped: (B, D) bool,
    the live dropped slots, in index order. Returns (kept weight (B, K), dropped weight (B, D)):
    a kept token that absorbs m dropped tokens keeps 2**-m of itself and the i-th of them (by
    index) weighs 2**-(m - i + 1)."""
    onehot = torch.zeros(*owner.shape, kept_slots, dtype=torch.float32, device=owner.device)
    onehot.scatter_(2, owner[..., None], dropped[..., None].float())
    later = onehot.flip(1).cumsum(dim=1).flip(1)  # dropped tokens at or after each, per owner
    dropped_weight = torch.exp2(-(later * onehot).sum(dim=-1)) * dropped
    kept_weight = torch.exp2(-onehot.sum(dim=1))
    return kept_weight, dropped_weight


def fold_dropped_into_kept(h: torch.Tensor, candidates: torch.Tensor, keep: torch.Tensor,
                           kept_width: int, dropped_width: int) -> torch.Tensor:
    """HoliTom's inner merge on the device: (B, N, C) hidden states with every dropped visual
    token folded into its most cosine-similar kept visual token (see :func:`fold_weights`).

    candidates: (B, N) bool present visual tokens; keep: (B, N) bool the survivors. The widths
    (most kept / dropped visual tokens of any row) come from the host-side schedule, so no
    shape depends on the device's data."""
    from llava.aim.importance import compact_left

    if dropped_width == 0 or kept_width == 0:
        return h
    kept_index, kept_alive = compact_left(candidates & keep, kept_width)
    drop_index, drop_alive = compact_left(candidates & ~keep, dropped_width)
    channels = h.shape[-1]
    hk = h.gather(1, kept_index[..., None].expand(-1, -1, channels)).float()
    hd = h.gather(1, drop_index[..., None].expand(-1, -1, channels)).float()
    sim = torch.nn.functional.normalize(hd, dim=-1) @ torch.nn.functional.normalize(hk, dim=-1).transpose(1, 2)
    sim = sim.masked_fill(~kept_alive[:, None, :], float("-inf"))
    owner = sim.argmax(dim=-1)  # (B, D): the first of equally similar kept tokens, as torch.max
    kept_weight, dropped_weight = fold_weights(owner, drop_alive, kept_width)
    folded = hk * kept_weight[..., None]
    folded = folded.scatter_add(1, owner[..., None].expand(-1, -1, channels), hd * dropped_weight[..., None])
    folded = torch.where(kept_alive[..., None], folded, hk)
    return h.scatter(1, kept_index[..., None].expand(-1, -1, channels), folded.to(h.dtype))
