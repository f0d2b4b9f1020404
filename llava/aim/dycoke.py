"""DyCoke (Tao et al., "DyCoke: Dynamic Compression of Tokens for Fast Video Large Language
Models", CVPR 2025, arXiv 2411.15024): its two stages as pure torch functions.

Read from the official code, KD-TAO/DyCoke at commit dd7463498203479d0ff6f2d29c4e72928c0af244:
``llava/model/llava_arch.py`` (``dycole_ttm``, lines 35-91, called at lines 388-390),
``llava/model/language_model/modeling_qwen2.py`` (``PrunableDynamicCache``, lines 47-116; the
decoder loop, lines 1135-1141; ``output_attentions = True``, line 1268) and
``llava/model/language_model/llava_qwen.py`` (``DycokeConfigs``, lines 32-39).

1. Token temporal merging (TTM), before the LLM, on the tokens LLaVA-OneVision gives each frame
   after its 2x2 pooling (T = 196 for a 14x14 grid; before the one newline token). Frames go in
   windows of four, f = 4w .. 4w+3. Each window's first frame is kept whole. Frame 4w+1 keeps
   the K tokens least cosine-similar to the token at the same position of frame 4w; frame 4w+3
   the K least similar to frame 4w+2; frame 4w+2 the K least similar to frame 4w. Every
   comparison reads the unpruned features. K = int((1 - k) * T), k the pruning ratio: a fixed
   count, not a threshold, so the video's token count depends only on F, T and k. The kept
   tokens of a pruned frame come in the official order: by similarity, least similar first.
   Nothing is averaged: the "merging" drops the redundant token (its neighbour in time stays).
2. Dynamic KV pruning, during decoding. In each decode step the step's token's attention in
   layer L-1 (softmax over every key of the cache, mean over heads) is read over the visual
   keys; layers >= L of that step attend only to the int(N * (1 - p)) visual keys it weighs
   most (N visual keys), plus every text key. The full cache is kept, so another step may
   select other keys. The selection is renewed when the cosine similarity of this step's visual
   attention to the previous step's is below 0.9 (always at the first step).

Official defaults (the scripts' values): k = 0.7, L = 3, p = 0.8 (``lmms_eval/models/
llava_onevision.py`` lines 88-92, the signature defaults ``eval.sh`` relies on: it passes only
``dycoke=True``, line 6; ``llava/model/builder.py`` line 27 has p = 0.8, k = 0.3 as its own
defaults, overridden by lmms-eval's). The 0.9 similarity threshold is a constant
(``modeling_qwen2.py`` line 114).

Deliberate differences (docs/methods/dycoke.md):

* The official code's unpaired last frame (odd F) is dropped (the pair loop stops at F-1); here
  it is kept whole. The official bound of the second pass, ``range(0, F - 4, 4)``, is kept: the
  last window's third frame is never pruned (F = 32: frame 30 stays whole).
* Ties of similarity or attention go to the lower index (torch.topk's order among equal values
  is implementation-defined); similarities and attention are computed in float32.
* When the attention is stable (similarity >= 0.9) the official code attends to every key in
  that step (its selection is reset before layer L every step and only re-made on a change);
  the default here keeps the previous selection, as the method describes. ``when_similar=
  "attend_all"`` gives the official behaviour.
* The official visual span is ``image_token_start_index = 14`` and ``image_token_length =
  N - 1`` (the last visual token and the newline token are always kept); here the span is the
  exact set of visual tokens and every one of them is a candidate. The previous step's
  attention is per generate call (the official one persists across samples).
* DyCoke#6: in the code the paper's numbers were produced with, ``dycoke=True`` never reached
  the inner model (fixed in commit 8df42969ab8884db292d02e9052469e1d0798565), so no KV pruning
  ran; that bug is not reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

OFFICIAL_K = 0.7  # TTM pruning ratio (lmms_eval/models/llava_onevision.py line 92)
OFFICIAL_L = 3  # first decoder layer with the pruned KV (line 89)
OFFICIAL_P = 0.8  # fraction of the visual KV pruned at decode (line 90)
SIMILARITY_THRESHOLD = 0.9  # re-select below this (modeling_qwen2.py line 114)
WHEN_SIMILAR = ("keep_selection", "attend_all")
WINDOW = 4  # frames per TTM window (the official loops' strides 2 and 4)


# -- stage 1: token temporal merging -------------------------------------------------------------
def ttm_kept_per_frame(tokens_per_frame: int, k: float) -> int:
    """Tokens a pruned frame keeps: int((1 - k) * T) in floating point, as the official code."""
    return int((1 - k) * tokens_per_frame)


def ttm_references(frames: int) -> List[Optional[int]]:
    """For each frame, the frame it is compared with (None: kept whole).

    Odd frames against the frame before; frames 4w+2 against 4w, for 4w < F - 4 only (the
    official second pass stops there)."""
    refs: List[Optional[int]] = [None] * frames
    for f in range(1, frames, 2):
        refs[f] = f - 1
    for i in range(0, frames - WINDOW, WINDOW):
        refs[i + 2] = i
    return refs


def ttm_count(frames: int, tokens_per_frame: int, k: float) -> int:
    """Tokens TTM gives a video of ``frames`` frames of ``tokens_per_frame`` tokens."""
    kept = ttm_kept_per_frame(tokens_per_frame, k)
    return sum(tokens_per_frame if r is None else kept for r in ttm_references(frames))


@dataclass
class TTMResult:
    tokens: torch.Tensor  # (U, C)
    origin: torch.Tensor  # (U,) long: f * T + t of each output token
    sources: torch.Tensor  # (F * T,) long: output index of each input token, -1 dropped


def token_temporal_merge(x: torch.Tensor, k: float) -> TTMResult:
    """DyCoke's TTM of one video's per-frame tokens ``x`` (F, T, C), as described above."""
    frames, t, _ = x.shape
    refs = ttm_references(frames)
    kept = ttm_kept_per_frame(t, k)
    pruned = [f for f, r in enumerate(refs) if r is not None]
    # (F, T) the output order within each frame: raster for whole frames, least similar first
    # for pruned ones (stable: ties to the lower index)
    order = torch.arange(t, device=x.device).expand(frames, t).clone()
    if pruned and kept > 0:
        idx = torch.tensor(pruned, device=x.device)
        ref = torch.tensor([refs[f] for f in pruned], device=x.device)
        a = torch.nn.functional.normalize(x[idx].float(), dim=-1)
        b = torch.nn.functional.normalize(x[ref].float(), dim=-1)
        similarity = (a * b).sum(-1)  # (P, T)
        order[idx] = torch.sort(similarity, dim=-1, stable=True).indices
    # the count of each frame is known on the host: slices, no data-dependent shape
    origin = torch.cat([order[f, : t if r is None else kept] + f * t for f, r in enumerate(refs)])
    sources = torch.full((frames * t,), -1, dtype=torch.long, device=x.device)
    sources[origin] = torch.arange(origin.numel(), device=x.device)
    return TTMResult(x.reshape(frames * t, -1)[origin], origin, sources)


def ttm_frames(frames):
    """The registry's "video" reduction (llava.aim.frames): FramesIn -> FramesOut of one video."""
    from llava.aim.frames import FramesOut

    out = token_temporal_merge(frames.tokens, settings(frames.cfg)[0])
    weights = (out.sources >= 0).to(frames.tokens.dtype)  # each output is its one kept input
    return FramesOut(out.tokens, out.origin, out.sources, weights)


# -- stage 2: decode-time selection of the visual KV ------------------------------------------------
def decode_kept(visual_count: int, p: float) -> int:
    """Visual keys a decode step attends to: int(N * (1 - p)), as the official update_cache."""
    return int(visual_count * (1 - p))


def decode_attended_keys(kv_lens: Sequence[int], visual: Sequence[int], cfg) -> List[int]:
    """Per layer, the cached keys one decode step attends (the analyzer's decode step, registry
    ``attended``): layers < L all ``kv_lens[j]``; layers >= L every non-visual key (text and
    generated) and ``decode_kept`` of the visual keys, counted in layer L-1 as the driver's budget.
    A step with the official ``attend_all`` on a stable step attends every key; the first decode
    step (the one the analyzer prices) always selects."""
    _, layer, p, _ = settings(cfg)
    kept = decode_kept(int(visual[layer - 1]), p)
    return [int(n) if j < layer else int(n) - int(v) + min(kept, int(v))
            for j, (n, v) in enumerate(zip(kv_lens, visual))]


@dataclass
class DecodeSelection:
    """What one step leaves for the next: the visual attention and the selection in force."""

    attention: torch.Tensor  # (B, W) float32 over the prefill's keys, zero off the visual ones
    selected: torch.Tensor  # (B, W) bool visual keys selected


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity (B,), eps as torch's cosine_similarity."""
    eps = 1e-8
    return (a * b).sum(-1) / (a.norm(dim=-1).clamp_min(eps) * b.norm(dim=-1).clamp_min(eps))


def top_visual(attention: torch.Tensor, visual: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """(B, W) bool: the ``kept[b]`` visual keys of row b with the highest attention (ties: lower index)."""
    ranked = attention.masked_fill(~visual, float("-inf"))
    order = torch.sort(ranked, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return visual & (rank < kept[:, None])


def decode_select(attention: torch.Tensor, visual: torch.Tensor, kept: torch.Tensor,
                  previous: Optional[DecodeSelection], when_similar: str = "keep_selection",
                  threshold: float = SIMILARITY_THRESHOLD) -> Tuple[torch.Tensor, DecodeSelection]:
    """One decode step's selection, on the device (no host read).

    attention (B, W): the step token's layer L-1 attention over the prefill's W keys; visual
    (B, W) bool; kept (B,) long. Returns (allowed (B, W) bool: the visual keys layers >= L may
    attend this step, the state for the next step)."""
    a = attention.float() * visual
    fresh = top_visual(a, visual, kept)
    if previous is None:
        return fresh, DecodeSelection(a, fresh)
    renew = (cosine(a, previous.attention) < threshold)[:, None]
    stable = previous.selected if when_similar == "keep_selection" else visual
    selected = torch.where(renew, fresh, previous.selected)
    allowed = torch.where(renew, fresh, stable)
    return allowed, DecodeSelection(a, selected)


class DecodeSelector:
    """DyCoke's decode selection in the registry's protocol (llava.aim.registry, kind "decode")."""

    def __init__(self, layer: int, p: float, when_similar: str):
        self.layer, self.p, self.when_similar = layer, p, when_similar

    @classmethod
    def of(cls, cfg, num_layers: int) -> "DecodeSelector":
        return cls(*settings(cfg)[1:])

    def budget(self, visual_count: int) -> int:
        return decode_kept(visual_count, self.p)

    def select(self, attention, visual, kept, state):
        return decode_select(attention, visual, kept, state, self.when_similar)


def settings(cfg) -> Tuple[float, int, float, str]:
    """(k, L, p, when_similar) of an AIMConfig: its dycoke_* fields, None = the official default."""
    def pick(value, default):
        return default if value is None else value

    return (pick(getattr(cfg, "dycoke_k", None), OFFICIAL_K), pick(getattr(cfg, "dycoke_l", None), OFFICIAL_L),
            pick(getattr(cfg, "dycoke_p", None), OFFICIAL_P),
            pick(getattr(cfg, "dycoke_when_similar", None), WHEN_SIMILAR[0]))
