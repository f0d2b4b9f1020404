"""The pre-LLM reduction stage every "video" reduction runs in (VisionZip, DyCoke, FastVID,
HoliTom, ...): one contract between a method's registry entry and the model families. Pure torch.

A method registers ONE reduction entry (llava.aim.registry.register) that needs "video" and
says

* ``stage``: where it reads each frame, "projected" (the tokens the LLM would receive per frame,
  after the family's own pooling / merger) or "vision" (the vision tower's selected features
  before the projector, unpooled; the family then skips its pooling, as PruMerge runs);
* ``bound(frames, T, cfg) -> int``: the most tokens a video of ``frames`` frames of T tokens
  can give the LLM. The processor reserves that many placeholders (plus the family's own
  extras, e.g. OneVision's newline); the unused ones are filler, dropped before the LLM's
  first layer (runtime.record_arrival, the mechanism PruMerge uses), so a batch equals its
  samples run alone whatever each one keeps;
* ``nominal(frames, T, cfg) -> int``: the count the analyzer assumes;
* ``fn(FramesIn) -> FramesOut``: the reduction of one video (an image: one frame).

With the need "vision_attention" the family also hands over the attention each token receives
in the vision tower's feature layer and that layer's keys, computed from the layer's captured
query / key projections (:func:`received_attention`, :func:`head_mean_keys`), never by running
the tower in eager mode.

The family runs the entry through :func:`reduce_videos`, which checks each output against the
bound and pads it, and records the statistics; it contains no per-method code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import torch
from torch import Tensor

from llava.errors import UnsupportedUsageError


@dataclass(frozen=True)
class FramesIn:
    """One video (an image: F = 1), what a pre-LLM reduction reads."""

    cfg: Any  # the AIMConfig
    tokens: Tensor  # (F, T, C) per-frame features at the entry's stage
    grid: Tuple[int, int]  # (rows, cols) of each frame's T tokens, raster order
    # need "vision_attention": (F, T) float32, the attention each token receives at the family's
    # feature layer of the vision tower, mean over heads (the CLS row for a CLS tower; the mean
    # over all queries for SigLIP), and (F, T, d) that layer's keys, mean over heads
    attention: Optional[Tensor] = None
    keys: Optional[Tensor] = None

    @property
    def frames(self) -> int:
        return self.tokens.shape[0]

    @property
    def tokens_per_frame(self) -> int:
        return self.tokens.shape[1]


@dataclass
class FramesOut:
    """What one video gives the LLM."""

    tokens: Tensor  # (U, C) in order
    # (U,) long: flat index f*T + t of the input token each output stands in for (its frame is
    # origin // T; M-RoPE families place it there)
    origin: Tensor
    # (F*T,) long: the output each input token went into, -1 dropped (visualize, side channels)
    sources: Optional[Tensor] = None
    # (F*T,) float: tokens[u] == sum over sources[i] == u of weights[i] * x[i], where the method
    # is such a combination (a family may apply it to side channels, e.g. Qwen3-VL DeepStack)
    weights: Optional[Tensor] = None


@dataclass
class ReducedVideos:
    """The outputs of a batch of videos, padded to the entry's bound."""

    tokens: Tensor  # (V, bound, C): each video's outputs, then filler (zeros)
    real: Tensor  # (V, bound) bool: False at filler
    outputs: List[FramesOut]
    kept_per_frame: List[int]  # over all frames of all videos: outputs whose origin is in the frame


def check_output(out: FramesOut, frames: int, tokens_per_frame: int, bound: int, name: str) -> None:
    """A method's FramesOut is well formed and within its bound (else UnsupportedUsageError
    naming the method: a bug in the method, never silently cut)."""
    if not isinstance(out, FramesOut):
        raise UnsupportedUsageError(f"video reduction {name!r} returned {type(out).__name__}, not a FramesOut")
    u = out.tokens.shape[0]
    if out.tokens.dim() != 2 or out.origin.shape != (u,):
        raise UnsupportedUsageError(f"video reduction {name!r}: tokens must be (U, C) and origin (U,), got "
                                    f"{tuple(out.tokens.shape)} and {tuple(out.origin.shape)}")
    if u > bound:
        raise UnsupportedUsageError(f"video reduction {name!r} gave {u} tokens, above its bound {bound} "
                                    f"({frames} frames of {tokens_per_frame})")
    if u and (int(out.origin.min()) < 0 or int(out.origin.max()) >= frames * tokens_per_frame):
        raise UnsupportedUsageError(f"video reduction {name!r}: origin outside 0..{frames * tokens_per_frame - 1}")


def kept_per_frame(origin: Tensor, frames: int, tokens_per_frame: int) -> List[int]:
    """How many outputs stand in for a token of each frame (origin // T)."""
    return torch.bincount(origin.long() // tokens_per_frame, minlength=frames).tolist()


def reduce_videos(entry, cfg, features: Tensor, frames: int, grid: Tuple[int, int],
                  attention: Optional[Tensor] = None, keys: Optional[Tensor] = None) -> ReducedVideos:
    """Run ``entry`` on each video of ``features`` (V*F, T, C), frames grouped by video, and pad
    each output to ``entry.bound(F, T, cfg)``. ``attention`` (V*F, T) / ``keys`` (V*F, T, d):
    what "vision_attention" gives, where the entry needs it."""
    total, t, _ = features.shape
    if total % frames:
        raise UnsupportedUsageError(f"{total} frames do not split into videos of {frames}")
    bound = int(entry.bound(frames, t, cfg))
    videos = total // frames
    outputs, counts = [], []
    padded = features.new_zeros(videos, bound, features.shape[-1])
    real = torch.zeros(videos, bound, dtype=torch.bool, device=features.device)
    for v in range(videos):
        part = slice(v * frames, (v + 1) * frames)
        x = FramesIn(cfg, features[part], grid,
                     None if attention is None else attention[part], None if keys is None else keys[part])
        out = entry.fn(x)
        check_output(out, frames, t, bound, entry.name)
        u = out.tokens.shape[0]
        padded[v, :u] = out.tokens.to(padded.dtype)
        real[v, :u] = True
        outputs.append(out)
        counts += kept_per_frame(out.origin, frames, t)
    return ReducedVideos(padded, real, outputs, counts)


# -- the vision tower's attention, from one layer's captured projections --------------------------
def received_attention(query: Tensor, key: Tensor, heads: int, cls_index: Optional[int] = None) -> Tensor:
    """(F, M) float32: the attention each of M tokens receives, mean over ``heads`` heads, from
    one vision layer's query / key projections (F, M, heads * d) (before the scaling, which is
    d ** -0.5 here, as CLIP's and SigLIP's).

    ``cls_index`` None (SigLIP, no CLS): the mean over all M queries of each softmax row;
    otherwise the row of the query at ``cls_index`` (CLIP's CLS), all M columns. One frame at a
    time, so the (heads, M, M) probabilities of one frame are the most held at once.
    """
    frames, m, width = query.shape
    d = width // heads
    out = torch.empty(frames, m, dtype=torch.float32, device=query.device)
    for f in range(frames):
        q = query[f].float().reshape(m, heads, d).transpose(0, 1)  # (h, M, d)
        k = key[f].float().reshape(m, heads, d).transpose(0, 1)
        if cls_index is not None:
            q = q[:, cls_index:cls_index + 1]
        probs = torch.softmax(q @ k.transpose(1, 2) * d ** -0.5, dim=-1)  # (h, Mq, M)
        out[f] = probs.mean(dim=1).mean(dim=0)
    return out


def head_mean_keys(key: Tensor, heads: int) -> Tensor:
    """(F, M, d): a layer's keys (F, M, heads * d), mean over the heads."""
    frames, m, width = key.shape
    return key.reshape(frames, m, heads, width // heads).mean(dim=2)

