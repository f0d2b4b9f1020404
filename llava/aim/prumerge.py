"""LLaVA-PruMerge and PruMerge+ (Shang et al., arXiv 2403.15388): token selection and merging
before the LLM, as the official AIM code runs them as baselines. Pure torch.

Per frame (image) of N patch features x (N, C) with the vision tower's last-layer keys k (N, D)
and a CLS attention a (N,) over the patches:

1. Adaptive selection: the patches whose CLS attention is an IQR outlier, a > Q3 + 1.5 IQR
   (linear percentiles over the frame's N values), keep; their number is
   ``int(N * (outliers / N))`` in floating point, as the official code computes it (for
   N = 729 that is one fewer than the outlier count for 49 of the 730 possible counts).
   Kept patches are ordered by attention, highest first (ties: lower index).
2. PruMerge+ only: spatially uniform samples ``0, s, 2s, ... < N - 1`` with
   ``s = int(int(1 / ratio) / 3)`` (ratio = outliers / N) are added after them, those not
   already kept, in index order.
3. Merging: each kept patch i becomes x_i + sum over the 32 other patches (kept or not) whose
   keys are most cosine-similar to k_i of a_j * x_j (attention-weighted, not normalised).
4. One extra token, the attention-weighted sum of every patch not kept, is appended.

A frame gives k + 1 tokens, k data-dependent. :func:`token_bound` is the most it can give
(the processor reserves that many placeholders; the unused ones are dropped before the LLM's
first layer, see llava/model/language_model/driver.py).

Deliberate differences from the official code: ties are broken by index (torch.topk's order
among equal values is implementation-defined); percentiles and sums are computed in float32 /
float64 rather than the model's dtype; the IQR is taken per frame even when several frames or
images are processed in one batch (the official code flattens the whole batch, so its count
for one image depends on the others in the batch); a frame with no outlier keeps no patch
(PruMerge: only the extra token; PruMerge+: its stride is computed as for one outlier, where the
official code divides by zero); a stride below 1 is raised to 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

CLUSTER_SIZE = 32  # neighbours each kept patch absorbs (the official code's topk k)
OFFICIAL_RATIO = 1 / 8  # the official reduction ratio when selection is not adaptive


def cls_attention(query: torch.Tensor, keys: torch.Tensor, drop_first: bool = False) -> torch.Tensor:
    """softmax(q . K^T / sqrt(D)) of one query per frame against that frame's keys, float32.

    query (F, D), keys (F, M, D). The scale is the full width D (the official code attends
    with the whole projection, not per head). ``drop_first``: the softmax runs over all M keys
    (CLS included, as the official LLaVA-1.5 code), then the first (CLS) column is dropped.
    """
    q = query.to(torch.float32)
    k = keys.to(torch.float32)
    logits = torch.einsum("fd,fmd->fm", q, k) * keys.shape[-1] ** -0.5
    attn = torch.softmax(logits, dim=-1)
    return attn[:, 1:] if drop_first else attn


def iqr_outlier_count(values: torch.Tensor) -> int:
    """How many of ``values`` (N,) exceed Q3 + 1.5 * (Q3 - Q1), linear-interpolated percentiles."""
    v = values.detach().to(torch.float64).flatten()
    q1, q3 = torch.quantile(v, torch.tensor([0.25, 0.75], dtype=torch.float64, device=v.device))
    return int((v > q3 + 1.5 * (q3 - q1)).sum())


def adaptive_keep_count(num_patches: int, outliers: int) -> int:
    """``int(N * (outliers / N))`` in floating point, as the official code (see the module doc)."""
    return int(num_patches * (outliers / num_patches))


def spatial_stride(num_patches: int, outliers: int) -> int:
    """PruMerge+'s sampling stride ``int(int(1 / ratio) / 3)``, ratio = outliers / N (at least
    one outlier assumed; at least 1)."""
    ratio = max(outliers, 1) / num_patches
    return max(1, int(int(1 / ratio) / 3))


def select(attn: torch.Tensor, plus: bool) -> torch.Tensor:
    """Indices of the kept patches of one frame (attention (N,)), in PruMerge's output order."""
    n = attn.shape[0]
    outliers = iqr_outlier_count(attn)
    k = adaptive_keep_count(n, outliers)
    order = torch.sort(attn, descending=True, stable=True).indices
    kept = order[:k]
    if plus:
        samples = torch.arange(0, n - 1, spatial_stride(n, outliers), device=attn.device)
        samples = samples[~torch.isin(samples, kept)]
        kept = torch.cat([kept, samples])
    return kept


def merge_kept(features: torch.Tensor, keys: torch.Tensor, attn: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """(k + 1, C): each kept patch plus its key-nearest neighbours' attention-weighted features,
    then the extra token (attention-weighted sum of the patches not kept)."""
    n, c = features.shape
    acc = torch.promote_types(features.dtype, torch.float32)
    x = features.to(acc)
    a = attn.to(acc)
    unit = torch.nn.functional.normalize(keys.to(torch.float32), p=2, dim=-1)
    if kept.numel():
        sims = unit[kept] @ unit.T  # (k, N)
        sims[torch.arange(kept.numel(), device=sims.device), kept] = float("-inf")  # not itself
        size = min(CLUSTER_SIZE, n - 1)
        cluster = torch.sort(sims, dim=-1, descending=True, stable=True).indices[:, :size]  # ties: lower index
        # sum_j a_j x_j over each cluster as one (k, N) @ (N, C) product (a sparse weight row per kept patch)
        weights = torch.zeros(kept.numel(), n, dtype=acc, device=features.device).scatter_(1, cluster, a[cluster])
        centres = x[kept] + weights @ x
    else:
        centres = x[:0]
    dropped = torch.ones(n, dtype=torch.bool, device=features.device)
    dropped[kept] = False
    extra = (a[dropped].unsqueeze(-1) * x[dropped]).sum(dim=0, keepdim=True)
    return torch.cat([centres, extra]).to(features.dtype)


@dataclass
class PruMergeResult:
    """tokens: (F, U, C), frame f's real tokens in rows 0..counts[f]-1, zeros after (filler).
    counts: (F,) tokens each frame gives (kept + 1). kept: per frame, the kept patch indices."""

    tokens: torch.Tensor
    counts: torch.Tensor
    kept: List[torch.Tensor]

    @property
    def real(self) -> torch.Tensor:
        """(F, U) bool: which rows are real tokens (the rest are filler)."""
        rows = torch.arange(self.tokens.shape[1], device=self.counts.device)
        return rows[None, :] < self.counts[:, None]


def prumerge_frames(features: torch.Tensor, keys: torch.Tensor, attn: torch.Tensor, plus: bool,
                    rows: Optional[int] = None) -> PruMergeResult:
    """PruMerge (``plus=False``) or PruMerge+ of every frame: features (F, N, C), keys (F, N, D)
    of the same patches, CLS attention (F, N). Padded to ``rows`` (default :func:`token_bound`)."""
    frames, n, c = features.shape
    if keys.shape[:2] != (frames, n) or attn.shape != (frames, n):
        raise ValueError(f"keys {tuple(keys.shape)} and attention {tuple(attn.shape)} must cover the "
                         f"features' {frames} frames x {n} patches")
    rows = token_bound(n, plus) if rows is None else rows
    out = features.new_zeros(frames, rows, c)
    counts, kept_all = [], []
    for f in range(frames):
        kept = select(attn[f], plus)
        merged = merge_kept(features[f], keys[f], attn[f], kept)
        if merged.shape[0] > rows:
            raise ValueError(f"frame {f} gives {merged.shape[0]} tokens, more than the {rows} reserved")
        out[f, : merged.shape[0]] = merged
        counts.append(merged.shape[0])
        kept_all.append(kept)
    return PruMergeResult(out, torch.tensor(counts, device=features.device), kept_all)


def token_bound(num_patches: int, plus: bool) -> int:
    """The most tokens a frame of N patches can give (kept + 1).

    PruMerge: an IQR outlier exceeds Q3, and at most N - 1 - floor(0.75 (N - 1)) values lie
    strictly above the linear-interpolated Q3 (145 for N = 576, 183 for N = 729).
    PruMerge+: the samples can cover every patch: N + 1.
    """
    if plus:
        return num_patches + 1
    return num_patches - 1 - (3 * (num_patches - 1)) // 4 + 1


def nominal_tokens(num_patches: int, plus: bool, ratio: float = OFFICIAL_RATIO) -> int:
    """Tokens per frame at a fixed reduction ratio (the official non-adaptive setting, 1/8):
    int(N * ratio) kept (+ as many spatial samples for PruMerge+) + the extra token. What the
    analyzer counts when no measured count is given (the adaptive count depends on the image)."""
    kept = int(num_patches * ratio)
    return kept * (2 if plus else 1) + 1
