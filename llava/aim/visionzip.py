"""VisionZip (Yang et al., arXiv 2412.04467, CVPR 2025): dominant and contextual tokens, per frame,
before the LLM. Pure torch; a "video" reduction (llava.aim.frames).

Read from two official codes:

* CLIP (LLaVA-1.5): github.com/dvlab-research/VisionZip at commit
  3151f6df4fca36a4cd1c985e5956e725b1f9ad02: ``visionzip/clip_encoder.py``
  (``CLIPVisionTower_VisionZip.forward``), ``visionzip/utils.py`` (the keys kept by the patched
  CLIP attention, ``apply_info``'s layer schedule) and ``visionzip/main.py``.
* SigLIP (LLaVA-OneVision video): the port in HoliTom's official repository,
  github.com/cokeshao/HoliTom at commit e9b2972f6895c9e7d7fe74eb8c3a2ecaab8056e0:
  ``LLaVA-NeXT/llava/model/multimodal_encoder/siglip_encoder.py`` (the ``visionzip`` wrapper: the
  last layer's attention, mean over heads then over queries, and its keys, mean over heads),
  ``visionzip/llava_arch.py`` (features projected, then features, attention and keys pooled 2x2
  by ``get_2dPool``, then the selection; ``int(SPATIAL_TOKENS * 54/64)`` dominant) and
  ``scripts/eval_ov-7b_visionzip.sh`` (``SPATIAL_TOKENS`` 20 / 30 / 40 / 50 of 196 per frame).

The algorithm, per frame of T tokens x (T, C) with the attention each receives and the keys of
the vision layer that produced the features (on CLIP the selected features before the
projector, plus the CLS token; on SigLIP, which has no CLS, the projected and pooled frame, with
attention and keys pooled the same way; the family gives both through FramesIn and its stage):

1. Dominant tokens: the ``dominant`` tokens receiving the most attention (CLIP: the CLS query's
   row, the CLS token itself counted among them and emitted first), in their original order.
2. Contextual tokens: the other R tokens, in their original order, with their keys (mean over
   heads) L2-normalised. ``contextual`` of them are targets, every ``max(1, R // contextual)``-th
   one from the first; each remaining token goes to the target whose key has the largest dot
   product with its own (the first on a tie), and each target becomes its own feature plus the
   plain mean of the features assigned to it (the target is not in the mean; a target with
   nothing assigned stays as it is).
3. The frame gives ``dominant + contextual`` tokens: the dominant ones, then the contextual ones
   in target order.

Budget: ``retention``, the fraction of each frame's T tokens kept: k = max(1, round(T *
retention)), of which ``dominant = floor(k * 54 / 64)`` (the port's rule; on CLIP at least the
CLS token) and the rest contextual. That gives the CLIP README's 54 + 10 of 576 (``visionzip(model,
dominant=54, contextual=10)``, the default retention 64/576), the paper's 108 + 20 and 162 + 30,
and on LLaVA-OneVision the script's 20 / 30 / 40 / 50 of 196 at retention S / 196
(:data:`OV_SPATIAL_TOKENS`; its labels 0.10 / 0.15 / 0.20 / 0.25 are those fractions rounded).

Deliberate differences:

* Ties: the dominant tokens are the first by (attention descending, index ascending) (the
  official ``topk`` leaves the order among equal values to the implementation); the contextual
  assignment takes the first best target, as ``argmax`` does.
* Precision: the attention is computed in float32 from the captured query / key projections
  (the official codes switch the tower to eager attention and read the model-dtype weights); the
  similarity and the means are computed in float32 and cast back to the features' dtype.
* A CLIP frame of k = 1 keeps only the CLS token (no contextual token: the official code would
  divide by zero); a SigLIP frame of k = 1 is one contextual token.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from llava.aim.frames import FramesIn, FramesOut

OFFICIAL_DOMINANT, OFFICIAL_CONTEXTUAL = 54, 10  # README: visionzip(model, dominant=54, contextual=10)
DEFAULT_RETENTION = (OFFICIAL_DOMINANT + OFFICIAL_CONTEXTUAL) / 576  # 64 of CLIP-L/336's 576 patches
# HoliTom's LLaVA-OneVision-7B script (scripts/eval_ov-7b_visionzip.sh): SPATIAL_TOKENS per frame of
# the 196 pooled tokens at its budgets 0.10 / 0.15 / 0.20 / 0.25; retention = S / 196 gives them exactly
OV_SPATIAL_TOKENS = (20, 30, 40, 50)


def kept_tokens(tokens_per_frame: int, retention: float) -> int:
    """Tokens a frame of T gives at ``retention``: max(1, round(T * retention)), at most T."""
    return min(tokens_per_frame, max(1, round(tokens_per_frame * retention)))


def split(kept: int, has_cls: bool = False) -> Tuple[int, int]:
    """(dominant, contextual) of ``kept`` tokens: dominant = floor(kept * 54 / 64), the rest
    contextual (HoliTom's port, visionzip/llava_arch.py: ``int(SPATIAL_TOKENS * 54/64)``; it gives
    the official 54 + 10 of 64, 108 + 20 and 162 + 30 too). With a CLS token (counted among the
    dominant ones) at least the CLS token is dominant."""
    dominant = kept * OFFICIAL_DOMINANT // (OFFICIAL_DOMINANT + OFFICIAL_CONTEXTUAL)
    if has_cls and kept >= 1 and dominant == 0:
        dominant = 1
    return dominant, kept - dominant


def visionzip_frames(x: Tensor, attention: Tensor, keys: Tensor, dominant: int, contextual: int,
                     cls: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """VisionZip on F frames at once: x (F, T, C) patch features, attention (F, T) the attention
    each patch receives (the CLS row where ``cls`` (F, C) is given), keys (F, T, d).

    Returns (tokens (F, k, C), origin (F, k) patch index each output stands in for (the CLS
    token: 0), sources (F, T) the output each patch went into, weights (F, T)), k = dominant +
    contextual; ``dominant`` counts the CLS token when ``cls`` is given.
    """
    frames, t, c = x.shape
    patches = dominant - (1 if cls is not None else 0)
    if patches < 0 or patches + contextual > t:
        raise ValueError(f"VisionZip cannot keep {dominant} dominant + {contextual} contextual of {t} patches")
    device = x.device
    order = torch.sort(attention.float(), dim=1, descending=True, stable=True).indices
    top = torch.zeros(frames, t, dtype=torch.bool, device=device)
    top.scatter_(1, order[:, :patches], True)
    index = torch.arange(t, device=device).expand(frames, t)
    dominant_index = index[top].view(frames, patches)  # original order
    rest_index = index[~top].view(frames, t - patches)
    parts = [x.gather(1, dominant_index[..., None].expand(-1, -1, c))]
    origins = [dominant_index]
    sources = torch.full((frames, t), -1, dtype=torch.long, device=device)
    weights = torch.zeros(frames, t, dtype=torch.float32, device=device)
    offset = 1 if cls is not None else 0
    sources.scatter_(1, dominant_index, offset + torch.arange(patches, device=device).expand(frames, -1))
    weights.scatter_(1, dominant_index, 1.0)
    if cls is not None:
        parts.insert(0, cls[:, None, :].to(x.dtype))
        origins.insert(0, torch.zeros(frames, 1, dtype=torch.long, device=device))
    if contextual:
        rest = t - patches
        step = max(1, rest // contextual)
        is_target = torch.zeros(rest, dtype=torch.bool, device=device)
        is_target[torch.arange(0, rest, step, device=device)[:contextual]] = True
        target_index = rest_index[:, is_target]  # (F, contextual)
        other_index = rest_index[:, ~is_target]  # (F, rest - contextual)
        k = keys.float()
        k = k / k.norm(dim=-1, keepdim=True)
        pick = lambda idx: idx[..., None].expand(-1, -1, k.shape[-1])  # noqa: E731
        similarity = k.gather(1, pick(other_index)) @ k.gather(1, pick(target_index)).transpose(1, 2)
        assign = similarity.argmax(dim=2)  # (F, others): the first best target
        xf = x.float()
        others = xf.gather(1, other_index[..., None].expand(-1, -1, c))
        sums = torch.zeros(frames, contextual, c, dtype=torch.float32, device=device)
        sums.scatter_add_(1, assign[..., None].expand(-1, -1, c), others)
        counts = torch.zeros(frames, contextual, dtype=torch.float32, device=device)
        counts.scatter_add_(1, assign, torch.ones_like(assign, dtype=torch.float32))
        targets = xf.gather(1, target_index[..., None].expand(-1, -1, c))
        parts.append((targets + sums / counts.clamp(min=1)[..., None]).to(x.dtype))
        origins.append(target_index)
        first = offset + patches
        sources.scatter_(1, target_index, first + torch.arange(contextual, device=device).expand(frames, -1))
        weights.scatter_(1, target_index, 1.0)
        sources.scatter_(1, other_index, first + assign)
        weights.scatter_(1, other_index, 1.0 / counts.clamp(min=1).gather(1, assign))
    return torch.cat(parts, dim=1), torch.cat(origins, dim=1), sources, weights


def visionzip(x: FramesIn) -> FramesOut:
    """The registry entry's function: each frame of the video to its dominant and contextual
    tokens at the config's retention (the registry entry "visionzip")."""
    frames, t, _ = x.tokens.shape
    if x.attention is None or x.keys is None:
        raise ValueError("VisionZip needs the vision tower's attention and keys (need 'vision_attention')")
    dominant, contextual = split(kept_tokens(t, x.cfg.retention), has_cls=x.cls is not None)
    tokens, origin, sources, weights = visionzip_frames(x.tokens, x.attention, x.keys, dominant, contextual, x.cls)
    k = tokens.shape[1]
    base = torch.arange(frames, device=origin.device)[:, None]
    flat_sources = torch.where(sources >= 0, sources + base * k, sources)
    return FramesOut(tokens.reshape(frames * k, -1), (origin + base * t).reshape(-1),
                     flat_sources.reshape(-1), weights.reshape(-1))


def token_bound(frames: int, tokens_per_frame: int, cfg) -> int:
    """VisionZip's count is fixed by the budget: k per frame (bound = nominal)."""
    return frames * kept_tokens(tokens_per_frame, cfg.retention)
