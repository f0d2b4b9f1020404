"""The one registry of AIM's scores and reductions: each is one entry.

A **score** ranks the visual tokens at a pruning layer (pagerank, attention, last_token, random,
none); a **reduction** shrinks each frame before the LLM (merge, pool, prumerge,
prumerge_plus); a **decode** selection restricts, in each decode step, which visual KV entries
the later layers attend (dycoke_kv: DyCoke's dynamic KV pruning); a **fold** merges, at a
pruning layer, each dropped visual token's hidden state into the kept tokens before they are
gathered (holitom_fold; a method without one just drops them, ``MethodSpec.fold``). An entry states

* what it needs (``NEEDS``): the layer's post-RoPE queries and keys (``qk``: the decoder
  driver then installs a probe in that layer's attention), the visual and text masks, or the
  frames (reductions); ``video``: a pre-LLM reduction of a whole video (or image: one frame)
  run by the family from the entry alone (llava.aim.frames: ``fn(FramesIn) -> FramesOut``, at
  the entry's ``stage``, the processor reserving ``bound`` placeholders), optionally with
  ``vision_attention`` (the attention each token receives in the vision tower's feature layer,
  and that layer's keys);
* its function: a score's takes one :class:`ScoreInputs` and returns (B, N) float32 scores
  (higher survives); a reduction's is the frame-level function it names;
* a decode selection's function is a factory ``fn(cfg, num_layers) -> selector``; the selector
  has ``layer`` (int >= 1: layers >= it are restricted, ranked by the step token's attention in
  layer ``layer - 1``), ``budget(visual_count) -> int`` (host, once per prefill: the visual keys
  each sample keeps) and ``select(attention, visual, kept, state) -> (allowed, state)`` (device,
  each decode step, no host read: attention (B, W) float32 the step token's attention over the
  prefill's W keys, mean over heads; visual (B, W) bool; kept (B,) long; ``state`` what the
  previous step returned, None at the first; allowed (B, W) bool: the visual keys attended);
* a decode selection's ``attended(kv_lens, visual, cfg)``: for the analyzer's decode step, per
  layer the cached keys one decode step's attention reads, given each layer's cache length
  (``kv_lens``) and its visual entries (``visual``); the cache itself keeps every entry;
* a fold's function takes one :class:`FoldInputs` and returns the (B, N, C) hidden states, on
  the device (no host read);
* its cost for the analyzer: the name of the function in ``llava.analysis.roofline`` that
  prices it (``None``: nothing worth counting, e.g. a hash per token). The analyzer calls it with
  the arguments its parameters name (``llava.analysis.roofline.REDUCTION_COST_ARGUMENTS`` for a
  reduction; a score's take (llm, tokens_per_layer, layers, hardware, options); a decode
  selection's, the work it adds to one decode step, any of (llm, kv_lens, visual, cfg,
  hardware, options));
* a reduction's token flow: ``stage`` (what it reads: "projected", the tokens the LLM would
  receive per frame; "vision", the vision tower's unpooled features), ``nominal(frames, T, cfg)``
  (the tokens a video of ``frames`` frames of T tokens at that stage gives the LLM, as the
  analyzer counts it; it may also take ``vision``, the VisionShape) and, for a count that
  depends on the content, ``bound(frames, T, cfg)`` (the most it can give).

Adding a score takes one :func:`register` call with its function (tests/test_registry.py
registers a text-conditioned one and runs a model with it). An unregistered name fails loudly
wherever it is used (AIMConfig validation, the driver, the analyzer's policy lookup): there is
no fallback score.

Pure python at import (the config module validates names here); the built-in functions import
torch code when called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple, Union

from llava.errors import AIMConfigError

KINDS = ("score", "reduction", "decode", "fold")
NEEDS = ("qk", "visual", "text", "frames", "video", "vision_attention")
SCORE_NEEDS = ("qk", "visual", "text")  # what the decoder driver can give a score
DECODE_NEEDS = ("qk",)  # a decode selection reads the step token's attention (from its q/k)
# Where a "video" reduction reads each frame: "projected" = the tokens the LLM would receive per
# frame (after the family's own pooling / merger); "vision" = the vision tower's selected
# features before the projector, unpooled (the family then skips its pooling, as PruMerge runs).
STAGES = ("projected", "vision")


@dataclass(frozen=True)
class ScoreInputs:
    """What a score may read at one pruning layer (the driver fills what the entry needs)."""

    cfg: Any  # the AIMConfig
    layer: int
    valid: Any  # (B, N) bool: tokens present at this layer
    visual: Any  # (B, N) bool: present visual tokens (the candidates)
    text: Any  # (B, N) bool: present non-visual tokens
    visual_index: Any  # (B, N) long: each token's index among its sample's visual tokens
    all_valid: Optional[bool] = None  # every slot present (known on the host), None: unknown
    query: Any = None  # (B, nh, N, d) post-RoPE queries, with "qk"
    key: Any = None  # (B, nkv, N, d) post-RoPE keys, with "qk"
    scaling: Optional[float] = None  # the attention's scaling, with "qk"
    # (B, N) bool: the present tokens whose queries rank (None: all present). A prefill that
    # continues an earlier one without a cache (generate(use_cache=False)) lets only the earlier
    # prompt's tokens vote, so it makes exactly the earlier prefill's decisions.
    voters: Any = None


@dataclass(frozen=True)
class FoldInputs:
    """What a fold reads at one pruning layer, after the survivors are chosen (remove and mask
    modes alike). The widths come from the host-side schedule, so a fold needs no device read
    to size its tensors."""

    cfg: Any  # the AIMConfig
    layer: int  # the layer whose output is folded (the next layer sees the survivors)
    hidden: Any  # (B, N, C) the layer's output hidden states
    candidates: Any  # (B, N) bool: present visual tokens entering the selection
    keep: Any  # (B, N) bool: the survivors (every present text token and the kept visual ones)
    scores: Any  # (B, N) float32: the scores that chose them
    kept_width: int  # the most visual tokens any row keeps
    dropped_width: int  # the most visual tokens any row drops


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # "score" | "reduction" | "decode" | "fold"
    needs: FrozenSet[str]
    fn: Callable
    cost: Optional[str]  # llava.analysis.roofline function that prices it; None: not priced
    summary: str
    # a score AIMConfig.importance may name (AIM's own ranking); False for the scores that
    # belong to one method (last_token: FastV/PDrop, random: the control, none: VTW)
    configurable: bool = True
    # "video" reductions (llava.aim.frames): where they read the frames (one of STAGES, or a
    # tuple of them in order of preference: the first the family offers, :func:`run_stage`), and
    # bound(frames, T, cfg) / nominal(frames, T, cfg) -> int: the most tokens a video of
    # ``frames`` frames of T tokens each (at ``stage``) can give the LLM (the processor reserves
    # that many placeholders), and the count the analyzer assumes.
    stage: Union[str, Tuple[str, ...], None] = None
    bound: Optional[Callable] = None
    nominal: Optional[Callable] = None
    # "decode" entries: attended(kv_lens, visual, cfg) -> per layer, the cached keys a decode step
    # attends (the analyzer's decode step; the cache keeps every entry)
    attended: Optional[Callable] = None


REGISTRY: Dict[str, Entry] = {}


STAGES = ("projected", "vision")


def register(name: str, kind: str, fn: Callable, needs=(), cost: Optional[str] = None, summary: str = "",
             configurable: bool = True, replace: bool = False, stage: Union[str, Tuple[str, ...], None] = None,
             bound: Optional[Callable] = None, nominal: Optional[Callable] = None,
             attended: Optional[Callable] = None) -> Entry:
    """Add one entry; a name already taken, an unknown kind or an unknown need is refused, and a
    reduction without its token flow (a stage of STAGES, "projected" when not given; a callable
    nominal; a callable bound where it needs "video"), or a decode selection without ``attended``."""
    if kind not in KINDS:
        raise AIMConfigError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    allowed = (SCORE_NEEDS if kind == "score" else DECODE_NEEDS if kind == "decode" else () if kind == "fold"
               else NEEDS)
    unknown = sorted(set(needs) - set(allowed))
    if unknown:
        raise AIMConfigError(f"{kind} {name!r} needs {unknown}, which the runtime does not provide; "
                             f"a {kind} may need {list(allowed)}")
    if not callable(fn):
        raise AIMConfigError(f"{kind} {name!r}: fn must be callable, got {fn!r}")
    if name in REGISTRY and not replace:
        raise AIMConfigError(f"{name!r} is already registered (as a {REGISTRY[name].kind})")
    if kind == "reduction" and stage is None:
        stage = "projected"
    _check_token_flow(name, kind, set(needs), stage, bound, nominal)
    _check_attended(name, kind, attended)
    entry = Entry(name, kind, frozenset(needs), fn, cost, summary, configurable, stage, bound, nominal, attended)
    REGISTRY[name] = entry
    return entry


def _check_token_flow(name, kind, needs, stage, bound, nominal) -> None:
    """Every reduction states its token flow: where it reads (``stage``, default "projected"), its
    ``nominal`` count (the analyzer's) and, where its count depends on the content, its ``bound``
    (the placeholders reserved); a "video" reduction needs both. No other kind has them."""
    if kind != "reduction":
        if stage is not None or bound is not None or nominal is not None:
            raise AIMConfigError(f"{kind} {name!r}: stage/bound/nominal belong to reductions")
        return
    if "vision_attention" in needs and "video" not in needs:
        raise AIMConfigError(f"{kind} {name!r}: vision_attention is read by video reductions; add the need 'video'")
    stages = stage if isinstance(stage, tuple) else (stage,)
    if not stages or any(one not in STAGES for one in stages):
        raise AIMConfigError(f"reduction {name!r}: stage must be one of {list(STAGES)}, got {stage!r}")
    if not callable(nominal):
        raise AIMConfigError(f"reduction {name!r} needs nominal(frames, T, cfg), the tokens it gives the LLM "
                             "(the analyzer's token flow)")
    if "video" in needs and not callable(bound):
        raise AIMConfigError(f"video reduction {name!r}: bound must be a function (frames, T, cfg) -> int, "
                             f"got {bound!r}")


def _check_attended(name, kind, attended) -> None:
    """A decode selection states the keys a step attends (the analyzer's decode step prices them;
    without it the analyzer would count the whole cache); no other kind has it."""
    if kind == "decode" and not callable(attended):
        raise AIMConfigError(f"decode {name!r} needs attended(kv_lens, visual, cfg), the keys a decode step "
                             "attends per layer (the analyzer's decode step)")
    if kind != "decode" and attended is not None:
        raise AIMConfigError(f"{kind} {name!r}: attended belongs to decode selections")


def entry_stages(entry: Entry) -> Tuple[str, ...]:
    """A video reduction's stages, in order of preference."""
    return entry.stage if isinstance(entry.stage, tuple) else (entry.stage,)


def run_stage(entry: Entry, offered) -> Optional[str]:
    """The stage a family offering ``offered`` runs ``entry`` at: the first of the entry's
    stages it offers (None: none)."""
    return next((stage for stage in entry_stages(entry) if stage in offered), None)


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def names(kind: str, configurable_only: bool = False) -> List[str]:
    return [e.name for e in REGISTRY.values() if e.kind == kind and (e.configurable or not configurable_only)]


def lookup(name: str, kind: str) -> Entry:
    """The entry of a registered ``kind``; anything else fails with the registered names."""
    entry = REGISTRY.get(name)
    if entry is None or entry.kind != kind:
        raise AIMConfigError(f"unknown {kind} {name!r}: registered {kind}s are {names(kind)} "
                             "(llava.aim.registry.register adds one)")
    return entry


def check_importance(name: str) -> None:
    """AIMConfig.importance: a registered score that AIM's own methods may rank with."""
    entry = REGISTRY.get(name)
    if entry is None or entry.kind != "score" or not entry.configurable:
        why = ("a score that belongs to its method (AIMConfig.for_method)" if entry is not None and entry.kind == "score"
               else "not a registered score (llava.aim.registry.register adds one)")
        raise AIMConfigError(f"importance must be one of {names('score', configurable_only=True)}, got {name!r}: {why}")


# -- the built-in scores -----------------------------------------------------------------------
def _budget(cfg) -> int:
    return cfg.importance_memory_mb << 20


def pagerank_score(x: ScoreInputs):
    from llava.aim.importance import pagerank_importance

    return pagerank_importance(x.query, x.key, x.valid, x.scaling, x.cfg.pagerank_tau, x.cfg.pagerank_iters,
                               _budget(x.cfg), all_valid=x.all_valid, voters=x.voters)


def attention_score(x: ScoreInputs):
    from llava.aim.importance import attention_importance

    return attention_importance(x.query, x.key, x.valid, x.scaling, _budget(x.cfg), all_valid=x.all_valid,
                                voters=x.voters)


def last_token_score(x: ScoreInputs):
    from llava.aim.importance import last_token_attention

    return last_token_attention(x.query, x.key, x.valid, x.scaling, voters=x.voters)


def random_score(x: ScoreInputs):
    from llava.aim.importance import random_scores

    return random_scores(x.visual_index, x.cfg.seed, x.layer)


def no_score(x: ScoreInputs):
    import torch

    return torch.zeros(x.valid.shape, dtype=torch.float32, device=x.valid.device)


register("pagerank", "score", pagerank_score, needs=("qk",), cost="importance_overhead_ops",
         summary="AIM's score: PageRank over the layer's causal attention (tau, iterations)")
register("attention", "score", attention_score, needs=("qk",), cost="importance_overhead_ops",
         summary="mean causal attention each token receives (one softmax; cheaper, not the paper's)")
register("last_token", "score", last_token_score, needs=("qk",), cost="last_token_overhead_ops",
         summary="attention the last prompt token pays each token (FastV, PyramidDrop)", configurable=False)
register("random", "score", random_score, needs=(), cost=None,
         summary="seeded hash of (seed, layer, visual index): the random control", configurable=False)
register("none", "score", no_score, needs=(), cost=None,
         summary="no ranking: every visual token goes (VTW)", configurable=False)


# -- the built-in folds -------------------------------------------------------------------------
def holitom_fold(x: FoldInputs):
    from llava.aim.holitom import fold_dropped_into_kept

    return fold_dropped_into_kept(x.hidden, x.candidates, x.keep, x.kept_width, x.dropped_width)


register("holitom_fold", "fold", holitom_fold, cost="holitom_fold_overhead_ops",
         summary="HoliTom's inner merge: each dropped visual token averaged into its most cosine-similar "
                 "kept one, in index order (llava.aim.holitom.fold_dropped_into_kept)")


# -- the built-in reductions -----------------------------------------------------------------------
# Those that need only the frames take llava.aim.reduce.reduce_frames' arguments:
# (x (F, T, C), cfg, track_sources, metric, grid, track_destinations) -> MergeResult.
def merge_reduction(x, cfg, track_sources=False, metric=None, grid=None, track_destinations=False):
    from llava.aim.merge import merge_frames

    return merge_frames(x, cfg.retention, cfg.merge_weighting, cfg.merge_order, track_sources=track_sources,
                        merge_count=cfg.merge_count, metric=metric, track_destinations=track_destinations)


def pool_reduction(x, cfg, track_sources=False, metric=None, grid=None, track_destinations=False):
    from llava.aim.reduce import pool_frames

    return pool_frames(x, cfg.retention, track_sources, cfg.merge_count, grid=grid,
                       track_destinations=track_destinations)


def _prumerge(*args, **kwargs):
    # (features, keys, cls attention, plus): called from the family's vision-tower hook
    from llava.aim.prumerge import prumerge_frames

    return prumerge_frames(*args, **kwargs)


def merged_tokens(frames: int, tokens: int, cfg) -> int:
    """merge / pool: each frame to merged_token_count(T, retention, merge_count) tokens."""
    from llava.aim.merge import merged_token_count

    return frames * merged_token_count(tokens, cfg.retention, cfg.merge_count)


def prumerge_nominal(frames: int, tokens: int, cfg, vision=None) -> int:
    """PruMerge at the official ratio 1/8 of the T unpooled patches (+ as many spatial samples for
    PruMerge+ on a tower with a CLS token; the official OneVision code adds none on SigLIP)."""
    from llava.aim.prumerge import nominal_tokens

    plus = cfg.method == "prumerge_plus" and (vision is None or vision.class_token)
    return frames * nominal_tokens(tokens, plus)


def prumerge_bound(frames: int, tokens: int, cfg) -> int:
    from llava.aim.prumerge import token_bound

    return frames * token_bound(tokens, cfg.method == "prumerge_plus")


register("merge", "reduction", merge_reduction, needs=("frames",), cost="merge_overhead_ops", nominal=merged_tokens,
         summary="AIM's bipartite soft matching of each frame's tokens (llava.aim.merge.merge_frames)")
register("pool", "reduction", pool_reduction, needs=("frames",), cost="pool_overhead_ops", nominal=merged_tokens,
         summary="spatial average pooling to AIM's per-frame count (llava.aim.reduce.pool_frames)")
register("prumerge", "reduction", _prumerge, needs=("frames", "qk"), cost="prumerge_overhead_ops", stage="vision",
         nominal=prumerge_nominal, bound=prumerge_bound,
         summary="LLaVA-PruMerge: CLS-attention outliers absorb their key-nearest patches "
                 "(llava.aim.prumerge.prumerge_frames, the vision tower's last keys)")
def _holitom(x):
    from llava.aim.holitom import holitom_video

    return holitom_video(x)


def _holitom_bound(frames, t, cfg):
    from llava.aim.holitom import holitom_bound

    return holitom_bound(frames, t, cfg.retention)


def _holitom_nominal(frames, t, cfg):
    from llava.aim.holitom import holitom_nominal

    return holitom_nominal(frames, t, cfg.retention)


register("holitom", "reduction", _holitom, needs=("video", "vision_attention"), cost="holitom_overhead_ops",
         stage="projected", bound=_holitom_bound, nominal=_holitom_nominal,
         summary="HoliTom before the LLM: temporal segmentation (dynamic programme), temporal merge of static "
                 "tokens, DPC-KNN / attention spatial merge (llava.aim.holitom.holitom_frames)")
register("prumerge_plus", "reduction", _prumerge, needs=("frames", "qk"), cost="prumerge_overhead_ops",
         stage="vision", nominal=prumerge_nominal, bound=prumerge_bound,
         summary="PruMerge+: PruMerge plus spatially uniform samples (prumerge_frames(..., plus=True))")


# -- the built-in video reductions (llava.aim.frames: fn(FramesIn) -> FramesOut) ------------------
def _visionzip(x):
    from llava.aim.visionzip import visionzip

    return visionzip(x)


def _visionzip_count(frames, tokens_per_frame, cfg):
    from llava.aim.visionzip import token_bound

    return token_bound(frames, tokens_per_frame, cfg)


# VisionZip reads the frames after the family's pooling where it pools (HoliTom's LLaVA-OneVision
# port pools the projected features, the attention and the keys 2x2 first), else the vision
# tower's features before the projector (the official CLIP code on LLaVA-1.5)
register("visionzip", "reduction", _visionzip, needs=("video", "vision_attention"), stage=("projected", "vision"),
         bound=_visionzip_count, nominal=_visionzip_count, cost="visionzip_overhead_ops",
         summary="VisionZip: per frame, the CLS-attention dominant tokens and contextual tokens merged by key "
                 "similarity: on CLIP's selected features, or on SigLIP's pooled frames ranked by the mean attention "
                 "received (llava.aim.visionzip)")


# -- FastVID (llava.aim.fastvid): a "video" reduction on the projected frames ----------------------
def _fastvid(x):
    from llava.aim.fastvid import fastvid_frames

    return fastvid_frames(x)


def _fastvid_bound(frames, tokens_per_frame, cfg):
    from llava.aim.fastvid import fastvid_bound

    return fastvid_bound(frames, tokens_per_frame, cfg)


def _fastvid_nominal(frames, tokens_per_frame, cfg):
    from llava.aim.fastvid import fastvid_nominal

    return fastvid_nominal(frames, tokens_per_frame, cfg)


register("fastvid", "reduction", _fastvid, needs=("video", "vision_attention"), cost="fastvid_overhead_ops",
         stage="projected", bound=_fastvid_bound, nominal=_fastvid_nominal,
         summary="FastVID: segments by frame similarity, keeps each frame's most attended tokens and merges the "
                 "rest into density-peak anchors per segment (llava.aim.fastvid.fastvid_video)")
def _dycoke_ttm(frames):
    from llava.aim.dycoke import ttm_frames

    return ttm_frames(frames)


def _dycoke_count(frames, tokens_per_frame, cfg):
    # a fixed count (F, T and k decide it): the bound is exactly what every video gives
    from llava.aim.dycoke import settings, ttm_count

    return ttm_count(frames, tokens_per_frame, settings(cfg)[0])


register("dycoke", "reduction", _dycoke_ttm, needs=("video",), cost="dycoke_overhead_ops", stage="projected",
         bound=_dycoke_count, nominal=_dycoke_count,
         summary="DyCoke's token temporal merging: in windows of 4 frames, a frame's tokens similar to the same "
                 "position of its reference frame go (llava.aim.dycoke.token_temporal_merge)")


# -- the built-in decode selections ------------------------------------------------------------
def _dycoke_kv(cfg, num_layers):
    from llava.aim.dycoke import DecodeSelector

    return DecodeSelector.of(cfg, num_layers)


def _dycoke_kv_attended(kv_lens, visual, cfg):
    from llava.aim.dycoke import decode_attended_keys

    return decode_attended_keys(kv_lens, visual, cfg)


register("dycoke_kv", "decode", _dycoke_kv, needs=("qk",), cost="dycoke_decode_overhead_ops",
         attended=_dycoke_kv_attended,
         summary="DyCoke's dynamic KV pruning: each decode step attends the visual keys its token's "
                 "attention in layer L-1 weighs most (llava.aim.dycoke.decode_select)")
