"""FastVID (Shen et al., "FastVID: Dynamic Density Pruning for Fast Video Large Language Models",
NeurIPS 2025, arXiv 2503.11187): pruning and merging of a video's tokens before the LLM. Pure torch.

Read from the official code, LunarShen/FastVID at commit a40a109cb8df20e8c2c17c6850f8269717369990:
the LLaVA-OneVision port, ``fastvid_llavaonevision/LLaVA-NeXT/llava/model/language_model/
modeling_qwen2.py`` (``Qwen2Model.forward``, the block marked FastVID), its inputs in
``.../llava/model/llava_arch.py`` (``encode_images``, ``get_attn_2dPool``) and
``.../multimodal_encoder/siglip_encoder.py`` (``SigLipVisionAbstract``); defaults from
``fastvid_llavaonevision/scripts/eval.sh`` lines 6-11. docs/methods/fastvid.md has the full account.

A video of F frames, each T tokens x (F, T, C) as the LLM would receive them (after the
family's projector and pooling), with a salience s (F, T) and a per-frame global feature
g (F, D):

1. Dynamic temporal segmentation (DySeg). sim_i = cos(g_i, g_{i+1}) for i < F - 1. A cut follows
   frame i when i is among the ``segments - 1`` lowest sim_i, or when sim_i < ``tau``. So a
   video has at least ``segments`` segments (when it has that many frames).
2. Per-frame budget: R = int(T * retention) tokens, of which S = R - int(R * context_share)
   salient and Cn = R - S contextual.
3. Salient tokens (ATS): the S tokens of each frame with the highest salience, kept as they are.
4. Anchor distribution: in a segment of L frames, the frames L-1, L-1-p, L-1-2p, ...
   (p = ``anchor_stride``, counted back from the segment's last frame) are anchor frames, each
   with Cn * L // ceil(L / p) anchors; the other frames get none. A segment's anchor total is
   at most Cn * L, so a video gives at most F * R tokens.
5. Density peaks (DPC) on each frame's N = T - S non-salient tokens: d_ij = |x_i - x_j| / sqrt(C);
   density rho_i = exp(-mean of d^2 over the 4 nearest, itself included); delta_i = min d_ij over
   the j of higher density (the frame's largest d where there is none); score = rho * delta.
   A frame's anchors are its highest-scoring non-salient tokens.
6. Merge (DTM): each token of the merge pool goes to its most cosine-similar anchor; an anchor
   with n members (itself usually among them) becomes w * x_anchor + (1 - w) * mean(members),
   w = max(1 / (n + 1), ``anchor_weight``). The pool of a frame with exactly Cn anchors is its
   own non-salient tokens; the pool of a frame with more is the non-salient tokens of every
   frame of its segment (each anchor frame of a segment merges the whole segment's pool).
7. Salient and anchor tokens are emitted in their original order.

Deliberate differences from the official code (each documented and tested):
- Ties are broken by index (lowest first) in every top-k, and no noise is added to the density
  (the official adds uniform noise of 1e-6 to break ties at random, so it is not reproducible).
- A token's distance to itself is exactly 0 (the matrix-product cdist leaves a rounding
  residue there); scores and merges run in float32 (float64 for float64 input; the official
  merges in the model's dtype), the result is cast back to the input's dtype.
- Counts the official code cannot run are capped instead of raising: the ``segments - 1``
  lowest similarities at F - 1 (videos shorter than ``segments`` frames get one segment per
  frame), the 4 nearest at N, and a frame's anchors at N.
- Inputs: the official OneVision port computes s and g with SigLIP's attention-pooling head,
  loaded from the separate google/siglip-so400m-patch14-384 checkpoint (the head is not part
  of LLaVA-OneVision). That head is not available in the harness; the registry entry passes the
  salience and global feature it has (see docs/methods/fastvid.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

# Official defaults: fastvid_llavaonevision/scripts/eval.sh lines 6-11 (also the defaults of
# fastvid_llavaonevision/lmms-eval/lmms_eval/models/llava_onevision.py lines 88-93).
OFFICIAL_RETENTION = 0.10  # fastvid_retention_ratio
OFFICIAL_SEGMENTS = 8  # fastvid_DySeg_c: the least number of segments
OFFICIAL_TAU = 0.9  # fastvid_DySeg_tau: cut where consecutive frames' cosine is below
OFFICIAL_CONTEXT_SHARE = 0.4  # fastvid_STPrune_d: share of a frame's budget left to anchors
OFFICIAL_ANCHOR_STRIDE = 4  # fastvid_DTM_p: one anchor frame every p frames of a segment
OFFICIAL_ANCHOR_WEIGHT = 0.6  # fastvid_DTM_beta: least weight of the anchor in its merge
DENSITY_NEIGHBOURS = 4  # the official topk(k=4) of the density


@dataclass(frozen=True)
class FastVIDParams:
    retention: float = OFFICIAL_RETENTION
    segments: int = OFFICIAL_SEGMENTS
    tau: float = OFFICIAL_TAU
    context_share: float = OFFICIAL_CONTEXT_SHARE
    anchor_stride: int = OFFICIAL_ANCHOR_STRIDE
    anchor_weight: float = OFFICIAL_ANCHOR_WEIGHT


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k highest along the last dim, highest first, ties to the lower index."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    return order[..., :k]


def frame_similarities(frame_features: torch.Tensor) -> torch.Tensor:
    """Cosine of each frame's global feature with the next one's: (F, D) -> (F - 1,)."""
    g = frame_features.to(_work_dtype(frame_features.dtype))
    g = g / g.norm(dim=-1, keepdim=True)
    return (g[:-1] * g[1:]).sum(dim=-1)


def segment_sizes(similarity: Sequence[float], segments: int, tau: float) -> List[int]:
    """DySeg: the frame counts of the segments, in order. A cut follows frame i when sim_i is
    among the ``segments - 1`` lowest (ties: lower i) or below ``tau``."""
    sim = torch.as_tensor(similarity, dtype=torch.float64).flatten()
    frames = sim.numel() + 1
    lowest = torch.sort(sim, stable=True).indices[: max(0, min(segments - 1, frames - 1))]
    cuts = sorted(set(lowest.tolist()) | set(torch.nonzero(sim < tau).flatten().tolist()))
    bounds = [-1] + cuts + [frames - 1]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:])]


def frame_budget(tokens_per_frame: int, retention: float, context_share: float) -> Tuple[int, int]:
    """(salient, context) tokens per frame, with the official int() truncations."""
    retain = int(tokens_per_frame * retention)
    salient = retain - int(retain * context_share)
    return salient, retain - salient


def anchor_counts(sizes: Sequence[int], context: int, stride: int) -> List[int]:
    """Anchors of each frame: in a segment of L frames, frames L-1, L-1-p, ... get
    context * L // ceil(L / p) each, the others 0."""
    counts: List[int] = []
    for length in sizes:
        anchor_frames = -(-length // stride)
        per_anchor_frame = context * length // anchor_frames
        counts += [per_anchor_frame if (length - 1 - j) % stride == 0 else 0 for j in range(length)]
    return counts


def density_scores(x: torch.Tensor) -> torch.Tensor:
    """DPC score rho * delta of each token among its frame's tokens: (B, N, C) -> (B, N)."""
    x = x.to(_work_dtype(x.dtype))
    n = x.shape[-2]
    if n == 0:
        return x.new_zeros(x.shape[:-1])
    dist = torch.cdist(x, x) / x.shape[-1] ** 0.5  # the matrix-product form, as the official
    dist = dist * (1 - torch.eye(n, dtype=dist.dtype, device=dist.device))  # exact 0 to itself
    nearest = torch.sort(dist, dim=-1).values[..., : min(DENSITY_NEIGHBOURS, n)]
    density = torch.exp(-(nearest**2).mean(dim=-1))
    denser = density[..., None, :] > density[..., :, None]  # [b, i, j]: rho_j > rho_i
    dist_max = dist.flatten(-2).max(dim=-1).values[..., None, None]
    delta = torch.where(denser, dist, dist_max.expand_as(dist)).min(dim=-1).values
    return delta * density


def merge_into_anchors(pool: torch.Tensor, anchors: torch.Tensor, anchor_weight: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """DTM: every pool token joins its most cosine-similar anchor (ties: the earlier anchor);
    an anchor with n members becomes w * anchor + (1 - w) * mean(members), w = max(1/(n+1), beta).
    pool (B, M, C), anchors (B, K, C) -> merged (B, K, C) and the assignment (B, M)."""
    wd = _work_dtype(pool.dtype)
    p, a = pool.to(wd), anchors.to(wd)
    sim = (p / p.norm(dim=-1, keepdim=True)) @ (a / a.norm(dim=-1, keepdim=True)).transpose(-1, -2)
    assign = sim.argmax(dim=-1)  # first maximum
    one_hot = torch.nn.functional.one_hot(assign, a.shape[-2]).to(wd)  # (B, M, K)
    members = one_hot.sum(dim=-2).unsqueeze(-1)  # (B, K, 1)
    weight = (1 / (members + 1)).clamp(min=anchor_weight)
    mean = one_hot.transpose(-1, -2) @ p / members.clamp(min=1)
    return weight * a + (1 - weight) * mean, assign


@dataclass
class FastVIDResult:
    tokens: torch.Tensor  # (U, C) in the input's dtype, in original order
    origin: torch.Tensor  # (U,) long: flat index f*T + t of the salient / anchor token
    sources: torch.Tensor  # (F*T,) long: the output holding each input, -1 none (see fastvid_video)
    segments: List[int]  # DySeg's segment sizes


def fastvid_video(tokens: torch.Tensor, salience: torch.Tensor, frame_features: torch.Tensor,
                  params: FastVIDParams = FastVIDParams()) -> FastVIDResult:
    """FastVID on one video: tokens (F, T, C), salience (F, T), frame_features (F, D).

    ``sources``: a salient token is its own output; a merged token points at the anchor it
    joined in its own frame's merge when it has one, else in the merge of its segment's last
    frame (a token of a long segment joins one anchor per anchor frame; this records one).
    """
    frames, per_frame, channels = tokens.shape
    device = tokens.device
    sizes = segment_sizes(frame_similarities(frame_features).cpu(), params.segments, params.tau)
    salient_n, context_n = frame_budget(per_frame, params.retention, params.context_share)
    counts = anchor_counts(sizes, context_n, params.anchor_stride)

    salient = top_indices(salience.to(_work_dtype(salience.dtype)), salient_n)  # (F, S)
    keep = torch.ones(frames, per_frame, dtype=torch.bool, device=device)
    keep.scatter_(1, salient, False)
    rest = torch.nonzero(keep)[:, 1].view(frames, per_frame - salient_n)  # ascending per frame
    rest_n = rest.shape[1]
    rest_x = torch.gather(tokens, 1, rest[..., None].expand(-1, -1, channels))  # (F, N, C)
    score = density_scores(rest_x) if rest_n and any(counts) else None

    frame_base = torch.arange(frames, device=device)[:, None] * per_frame
    out_tokens = [tokens.gather(1, salient[..., None].expand(-1, -1, channels)).reshape(-1, channels)]
    out_origin = [(salient + frame_base).reshape(-1)]
    assigned: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]] = []  # (pool origins, anchor origins, assign, frame)

    def merge(frame_ids: List[int], pool_frames: Optional[List[int]], k: int) -> None:
        """Anchors of ``frame_ids`` absorb their own frame's pool (None) or ``pool_frames``'."""
        ids = torch.tensor(frame_ids, device=device)
        anchor_idx = top_indices(score[ids], k)  # (B, k) into each frame's rest
        anchors = torch.gather(rest_x[ids], 1, anchor_idx[..., None].expand(-1, -1, channels))
        if pool_frames is None:  # each frame merges its own non-salient tokens
            pool, pool_origin = rest_x[ids], (rest[ids] + frame_base[ids])
        else:  # one shared pool: every non-salient token of the segment
            pids = torch.tensor(pool_frames, device=device)
            pool = rest_x[pids].reshape(1, -1, channels).expand(len(frame_ids), -1, -1)
            pool_origin = (rest[pids] + frame_base[pids]).reshape(1, -1).expand(len(frame_ids), -1)
        merged, assign = merge_into_anchors(pool, anchors, params.anchor_weight)
        anchor_origin = torch.gather(rest[ids], 1, anchor_idx) + frame_base[ids]
        out_tokens.append(merged.to(tokens.dtype).reshape(-1, channels))
        out_origin.append(anchor_origin.reshape(-1))
        for b in range(len(frame_ids)):
            assigned.append((pool_origin[b], anchor_origin[b], assign[b], frame_ids[b]))

    if score is not None:
        own = [f for f, c in enumerate(counts) if c == context_n and c > 0]
        if own:
            merge(own, None, min(context_n, rest_n))
        start = 0
        for length in sizes:
            seg = list(range(start, start + length))
            wide = [f for f in seg if counts[f] > context_n]
            if wide:
                merge(wide, seg, min(counts[wide[-1]], rest_n))
            start += length

    origin = torch.cat(out_origin)
    order = torch.argsort(origin)
    origin = origin[order]
    out = torch.cat(out_tokens)[order]
    sources = _sources(frames * per_frame, origin, out_origin[0], assigned, sizes, device)
    return FastVIDResult(tokens=out, origin=origin, sources=sources, segments=sizes)


def _sources(total: int, origin: torch.Tensor, salient_origin: torch.Tensor, assigned, sizes, device) -> torch.Tensor:
    """Each input's output index: salient -> itself; merged -> its own frame's merge if any,
    else the last merge that covered it (a segment's merges run from its first anchor frame to
    its last, so that is the segment's last frame)."""
    position = torch.full((total,), -1, dtype=torch.long, device=device)
    position[origin] = torch.arange(origin.numel(), device=device)
    sources = torch.full((total,), -1, dtype=torch.long, device=device)
    sources[salient_origin] = position[salient_origin]
    per_frame = total // max(1, sum(sizes))
    own_done = torch.zeros(total, dtype=torch.bool, device=device)
    for pool_origin, anchor_origin, assign, frame in assigned:
        target = position[anchor_origin[assign]]
        own = (pool_origin // per_frame) == frame
        free = ~own_done[pool_origin]
        write = own | free
        sources[pool_origin[write]] = target[write]
        own_done[pool_origin[own]] = True
    return sources


def token_bound(frames: int, tokens_per_frame: int, retention: float) -> int:
    """The most tokens FastVID can give a video: F * int(T * retention) (a segment's anchor
    total is at most its frames' context share; capping anchors only lowers it)."""
    return frames * int(tokens_per_frame * retention)


def nominal_tokens(frames: int, tokens_per_frame: int, params: FastVIDParams = FastVIDParams()) -> int:
    """Tokens into the LLM for a video split into the least number of segments DySeg makes
    (``segments`` segments as equal as possible): the analyzer's planning figure."""
    salient_n, context_n = frame_budget(tokens_per_frame, params.retention, params.context_share)
    sizes = nominal_segment_sizes(frames, params.segments)
    rest_n = tokens_per_frame - salient_n
    counts = anchor_counts(sizes, context_n, params.anchor_stride)
    return frames * salient_n + sum(min(c, rest_n) for c in counts)


def nominal_segment_sizes(frames: int, segments: int) -> List[int]:
    """The least segmentation DySeg makes: ``segments`` segments (at most one per frame), as
    equal as possible, the longer first."""
    n_seg = max(1, min(segments, frames))
    return [frames // n_seg + (1 if i < frames % n_seg else 0) for i in range(n_seg)]


def pool_salience(attention: torch.Tensor, grid: Tuple[int, int], out_grid: Tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of per-frame attention maps (F, H*W) -> (F, h*w), as the official
    ``get_attn_2dPool`` brings SigLIP's 27x27 map to the 14x14 pooled grid (align_corners=False)."""
    f = attention.shape[0]
    maps = attention.to(_work_dtype(attention.dtype)).reshape(f, 1, *grid)
    return torch.nn.functional.interpolate(maps, size=tuple(out_grid), mode="bilinear").reshape(f, -1)


# -- the registry entry's side (llava.aim.frames): cfg -> params, FramesIn -> FramesOut ----------
PARAM_FIELDS = {  # AIMConfig field -> FastVIDParams field (None in the config: the official default)
    "fastvid_segments": "segments",
    "fastvid_tau": "tau",
    "fastvid_context_share": "context_share",
    "fastvid_anchor_stride": "anchor_stride",
    "fastvid_anchor_weight": "anchor_weight",
}


def params_of(cfg) -> FastVIDParams:
    """The FastVIDParams of an AIMConfig: its retention, and each fastvid_* knob or the official default."""
    chosen = {ours: getattr(cfg, field) for field, ours in PARAM_FIELDS.items() if getattr(cfg, field, None) is not None}
    return FastVIDParams(retention=cfg.retention, **chosen)


def frame_features_of(tokens: torch.Tensor) -> torch.Tensor:
    """Each frame's global feature for DySeg: the mean of its tokens as the LLM receives them
    (the official Qwen2.5-VL port's choice; the OneVision port's SigLIP head is not available)."""
    return tokens.to(_work_dtype(tokens.dtype)).mean(dim=1)


def fastvid_frames(x):
    """The registry entry's function: one video's FramesIn (projected tokens, the vision tower's
    received attention on the same grid) -> FramesOut."""
    from llava.aim.frames import FramesOut

    if x.attention is None:
        raise ValueError("FastVID needs the vision tower's attention (the entry's need 'vision_attention')")
    result = fastvid_video(x.tokens, x.attention, frame_features_of(x.tokens), params_of(x.cfg))
    return FramesOut(tokens=result.tokens, origin=result.origin, sources=result.sources)


def fastvid_bound(frames: int, tokens_per_frame: int, cfg) -> int:
    return token_bound(frames, tokens_per_frame, cfg.retention)


def fastvid_nominal(frames: int, tokens_per_frame: int, cfg) -> int:
    return nominal_tokens(frames, tokens_per_frame, params_of(cfg))
