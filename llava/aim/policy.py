"""Reduction policies: AIM and the baselines it is compared with, in one vocabulary.

A policy answers three questions (see docs/comparison.md):

1. before the LLM, how is each frame (image) reduced? ``merge`` (AIM's bipartite soft
   matching to ``merged_token_count(T, retention, merge_count)`` tokens), ``pool`` (spatial
   average pooling to the same count) or ``prumerge`` / ``prumerge_plus`` (LLaVA-PruMerge's
   adaptive selection and merging, llava.aim.prumerge: a data-dependent count);
2. how many visual tokens enter each decoder layer? AIM's linear schedule (``l1``, ``l2``) or
   a list of drop steps ``(layer K, fraction kept)``: layers ``>= K`` see only the survivors;
3. which score decides who survives a drop? ``pagerank`` (AIM), ``last_token`` (the
   attention the last prompt token pays each token, mean over heads: FastV, PDrop),
   ``random`` (a seeded hash) or ``none`` (every visual token goes: VTW).

Methods (``AIMConfig.method``) and their paper defaults, layers 0-based and meaning "the
first layer that sees the reduced set"; defaults for another depth are scaled by
``round(K * L / L_ref)``, rounded half up:

=======  ==================================================================  =================
method   definition                                                          default
=======  ==================================================================  =================
aim      AIM (Zhong et al., arXiv 2412.03248): merge, linear schedule,       l1=14, l2=22 of 28
         PageRank
fastv    FastV (Chen et al., ECCV 2024, arXiv 2403.06764): at layer K keep   K=2, R=0.5 (the
         the top (1-R) of the visual tokens by the last token's attention    paper's "K=2,
         in layer K-1                                                        R=50%"; not scaled)
vtw      VTW (Lin et al., AAAI 2025, arXiv 2405.05803): every visual token   K=16 of 32
         withdrawn from layer K on
pdrop    PyramidDrop (Xing et al., CVPR 2025, arXiv 2410.17247): at each     8/16/24 of 32,
         layer K_s drop a fraction lambda of the remaining visual tokens,    lambda=0.5
         ranked by the last instruction token's attention in layer K_s - 1
random   control: AIM's merging and schedule, survivors chosen at random     seed 0
         (deterministic hash of seed, layer and the token's visual index)
pool     control: spatial average pooling to AIM's per-frame count instead   as aim
         of similarity merging; AIM's schedule and PageRank
prumerge LLaVA-PruMerge (Shang et al., arXiv 2403.15388): before the LLM,   adaptive (IQR),
         keep the CLS-attention outliers of each frame, each absorbing its   32 neighbours;
         key-nearest patches, plus one token for the rest; no pruning        no merging
prumerge PruMerge+: PruMerge plus spatially uniform samples (LLaVA-1.5; the  as prumerge
_plus    official OneVision code leaves the samples out)
visionz  VisionZip (Yang et al., arXiv 2412.04467): per frame, the most      retention 64/576
ip       attended tokens (CLS attention; SigLIP: mean received, after the    (54 + 10);
         2x2 pooling) plus contextual tokens merged by key similarity        LLaVA-1.5 and
         (llava.aim.visionzip); no pruning                                   LLaVA-OneVision
fastvid  FastVID (Shen et al., NeurIPS 2025, arXiv 2503.11187): before the   retention 0.10,
         LLM, segments by frame similarity, keeps each frame's most          c=8, tau=0.9,
         attended tokens, merges the rest into density-peak anchors per      d=0.4, p=4,
         segment (llava.aim.fastvid); LLaVA-OneVision only                   beta=0.6
=======  ==================================================================  =================

Pure python; the config module imports this one, so nothing here imports the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from llava.aim.registry import lookup
from llava.errors import AIMConfigError

METHODS = ("aim", "fastv", "vtw", "pdrop", "random", "pool", "prumerge", "prumerge_plus", "visionzip", "fastvid", "dycoke",
           "holitom")
STEP_METHODS = ("fastv", "vtw", "pdrop")  # in-LLM schedule = drop steps, not (l1, l2)
PRUMERGE_METHODS = ("prumerge", "prumerge_plus")  # reduction before the LLM only, adaptive count
SCORES = ("pagerank", "attention", "last_token", "random", "none")


@dataclass(frozen=True)
class MethodSpec:
    """What a method is: its reduction before the LLM, its schedule kind, its score, defaults."""

    name: str
    title: str
    source: str
    reduction: str  # "merge" | "pool" | "prumerge" | "prumerge_plus"
    schedule: str  # "linear" (AIM's l1/l2) | "steps" (drop_layers / drop_ratio)
    score: str  # one of SCORES, or "config" (AIMConfig.importance)
    default_layers: Tuple[int, ...] = ()  # for a model of ``reference_layers`` layers
    reference_layers: int = 0
    scale_layers: bool = True
    default_ratio: Optional[float] = None  # fraction dropped at each step
    # The registered fold (llava.aim.registry, kind "fold") that merges each dropped visual
    # token's hidden state into the kept ones at a drop; None: dropped tokens just leave.
    fold: Optional[str] = None
    # The family adapters (FamilyAdapter.name) whose official code ran the method, and where the
    # official code ran only some of a family's checkpoints, their config.model_type; apply_aim
    # refuses any other with ``families_reason``. Empty: every family that supports the reduction.
    families: Tuple[str, ...] = ()
    model_types: Tuple[str, ...] = ()
    families_reason: str = ""
    # the budget AIMConfig.for_method sets for a "video" reduction (the fraction of each video's
    # visual tokens entering the LLM); None: AIMConfig's default retention
    default_retention: Optional[float] = None
    # a registry entry of kind "decode": which visual KV entries each decode step attends
    # (None: all of them)
    decode: Optional[str] = None
    # A "steps" method whose one drop step is set by its own AIMConfig fields (layer K, fraction
    # dropped) rather than drop_layers / drop_ratio: (layer field, ratio field). HoliTom.
    step_knobs: Tuple[str, ...] = ()


SPECS = {
    "aim": MethodSpec("aim", "AIM", "Zhong et al., arXiv 2412.03248 (ICCV 2025)", "merge", "linear", "config"),
    "fastv": MethodSpec(
        "fastv", "FastV", "Chen et al., arXiv 2403.06764 (ECCV 2024), setting 'K=2, R=50%'",
        "merge", "steps", "last_token", default_layers=(2,), reference_layers=32, scale_layers=False,
        default_ratio=0.5,
    ),
    "vtw": MethodSpec(
        "vtw", "VTW", "Lin et al., arXiv 2405.05803 (AAAI 2025), K=16 of LLaVA-1.5-7B's 32 layers",
        "merge", "steps", "none", default_layers=(16,), reference_layers=32, default_ratio=1.0,
    ),
    "pdrop": MethodSpec(
        "pdrop", "PyramidDrop", "Xing et al., arXiv 2410.17247 (CVPR 2025), layers 8/16/24 of 32, lambda 0.5",
        "merge", "steps", "last_token", default_layers=(8, 16, 24), reference_layers=32, default_ratio=0.5,
    ),
    "random": MethodSpec("random", "random (control)", "control: AIM with random survivors", "merge", "linear",
                         "random"),
    "pool": MethodSpec("pool", "pooling (control)", "control: AIM with spatial pooling instead of merging",
                       "pool", "linear", "config"),
    "prumerge": MethodSpec("prumerge", "LLaVA-PruMerge", "Shang et al., arXiv 2403.15388, adaptive (IQR) selection",
                           "prumerge", "none", "none"),
    "prumerge_plus": MethodSpec("prumerge_plus", "PruMerge+", "Shang et al., arXiv 2403.15388, adaptive + spatial samples",
                                "prumerge_plus", "none", "none"),
    "visionzip": MethodSpec(
        "visionzip", "VisionZip", "Yang et al., arXiv 2412.04467 (CVPR 2025), 54 dominant + 10 contextual of 576",
        "visionzip", "none", "none", families=("llava15", "onevision"),
        families_reason="the official code (dvlab-research/VisionZip at 3151f6d) patches the CLIP tower of "
                        "LLaVA-1.5 / LLaVA-NeXT; its SigLIP port (HoliTom's official repo, cokeshao/HoliTom at "
                        "e9b2972, visionzip/llava_arch.py) runs LLaVA-OneVision and LLaVA-Video; neither has a "
                        "Qwen2-VL / Qwen2.5-VL / Qwen3-VL version",
        default_retention=64 / 576),
    "fastvid": MethodSpec(
        "fastvid", "FastVID", "Shen et al., arXiv 2503.11187 (NeurIPS 2025), official LLaVA-OneVision script",
        "fastvid", "none", "none", families=("onevision",), default_retention=0.10,
        families_reason="the official code (LunarShen/FastVID at a40a109) ran LLaVA-OneVision, whose port this is, "
                        "LLaVA-Video, and Qwen2.5-VL with a different variant (sub-segments at DySeg_ignore, "
                        "per-segment budgets, a last-block salience) that is not implemented here; Qwen2-VL never; "
                        "docs/methods/fastvid.md",
    ),
    # DyCoke: token temporal merging before the LLM, then dynamic KV pruning in every decode step
    # (llava.aim.dycoke; official k=0.7, L=3, p=0.8: KD-TAO/DyCoke lmms_eval/models/llava_onevision.py)
    "dycoke": MethodSpec(
        "dycoke", "DyCoke", "Tao et al., arXiv 2411.15024 (CVPR 2025), k=0.7, L=3, p=0.8", "dycoke", "none", "none",
        families=("onevision",), default_retention=1.0, decode="dycoke_kv",
        families_reason="the official code (KD-TAO/DyCoke) runs LLaVA-OneVision only (its lmms_eval "
                        "llava_onevision model; Qwen2.5-VL exists only in a third-party port)"),
    # HoliTom (docs/methods/holitom.md): before the LLM the registered video reduction "holitom"
    # at the budget ``retention`` (official default RETAIN_RATIO 0.1, holitom/llava_arch.py line
    # 348); inside, one drop at K = 18 of 28 keeping 1 - 0.5 by the last token's attention, the
    # dropped tokens folded into the kept ones (scripts/eval_ov-7b_holitom.sh line 2).
    "holitom": MethodSpec(
        "holitom", "HoliTom", "Shao et al., arXiv 2505.21334 (NeurIPS 2025), cokeshao/HoliTom @ e9b2972",
        "holitom", "steps", "last_token", default_layers=(18,), reference_layers=28, default_ratio=0.5,
        fold="holitom_fold", families=("onevision",), default_retention=0.10,
        families_reason="the official code (cokeshao/HoliTom) patches LLaVA-NeXT's LLaVA-OneVision / LLaVA-Video "
                        "(SigLIP + 2x2 pooling + Qwen2) and ran nothing else",
        step_knobs=("holitom_layer", "holitom_ratio"),
    ),
}


def spec(method: str) -> MethodSpec:
    if method not in SPECS:
        raise AIMConfigError(f"{{method}} must be one of {list(METHODS)}, got {method!r}")
    return SPECS[method]


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_fraction(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and 0.0 < x <= 1.0


def scaled_layer(layer: int, reference_layers: int, num_layers: int) -> int:
    """``round(layer * num_layers / reference_layers)``, halves up, in integers."""
    return (2 * layer * num_layers + reference_layers) // (2 * reference_layers)


AIM_PAPER_L1, AIM_PAPER_L2, AIM_PAPER_LAYERS = 14, 22, 28  # the paper's schedule on Qwen2-7B
# The official LLaVA-1.5 code's schedule: retain 1 - (l - 12) / 8 after layer l >= 13 of 32.
LLAVA15_OFFICIAL_LAYERS = {32: (13, 21)}


def aim_default_layers(num_layers: int) -> Tuple[int, int]:
    """The paper's (l1, l2) = (14, 22) of 28 layers scaled to ``num_layers`` (halves up).

    The one scaling every tool uses (run, flops, plan, bench, eval). Always
    0 <= l1 < num_layers and l1 < l2.
    """
    l1 = min(scaled_layer(AIM_PAPER_L1, AIM_PAPER_LAYERS, num_layers), num_layers - 1)
    l2 = scaled_layer(AIM_PAPER_L2, AIM_PAPER_LAYERS, num_layers)
    return l1, max(l2, l1 + 1)


def validate_method_fields(method, drop_layers, drop_ratio, l1, l2) -> None:
    """Check the method-specific fields of an AIMConfig (called from its ``__post_init__``)."""
    s = spec(method)
    if s.score != "config":
        lookup(s.score, "score")  # the method's parts are registered (llava.aim.registry)
    lookup(s.reduction, "reduction")
    if s.decode is not None:
        lookup(s.decode, "decode")
    if s.fold is not None:
        lookup(s.fold, "fold")
    if s.schedule == "none":
        if l1 is not None or l2 is not None or drop_layers is not None or drop_ratio is not None:
            raise AIMConfigError(
                f"{method} reduces tokens before the LLM only: {{l1}}/{{l2}}/{{drop_layers}}/{{drop_ratio}} must be None "
                f"(AIMConfig.for_method({method!r}) sets them)"
            )
        return
    if s.step_knobs and (drop_layers is not None or drop_ratio is not None):
        raise AIMConfigError(f"{method} sets its drop with {{{s.step_knobs[0]}}} / {{{s.step_knobs[1]}}}, not "
                             "{drop_layers} / {drop_ratio} ({drop_layers/drop_ratio:unset})")
    if s.schedule == "linear":
        if drop_layers is not None or drop_ratio is not None:
            raise AIMConfigError(
                f"{{drop_layers}} / {{drop_ratio}} belong to {list(STEP_METHODS)}; {{method}} {method!r} uses l1/l2 "
                "({drop_layers/drop_ratio:unset})"
            )
        return
    if l1 is not None or l2 is not None:
        raise AIMConfigError(
            f"{{method}} {method!r} prunes at {{drop_layers}}, not with AIM's l1/l2: {{l1/l2:unset}} "
            f"{{python:(AIMConfig.for_method({method!r}) does)}}"
        )
    if drop_layers is not None:
        if not isinstance(drop_layers, tuple) or not drop_layers or not all(_is_int(k) for k in drop_layers):
            raise AIMConfigError(f"{{drop_layers}} must be a non-empty tuple of integers, got {drop_layers!r}")
        if any(k < 1 for k in drop_layers):
            raise AIMConfigError(
                f"{{drop_layers}} must be >= 1 (layer K sees the survivors of layer K-1's score), got {drop_layers}"
            )
        if list(drop_layers) != sorted(set(drop_layers)):
            raise AIMConfigError(f"{{drop_layers}} must be strictly increasing, got {drop_layers}")
        if method in ("fastv", "vtw") and len(drop_layers) != 1:
            raise AIMConfigError(f"{method} drops at one layer K: {{drop_layers=(K,)}}, got {drop_layers}")
    if drop_ratio is not None:
        if method == "vtw":
            raise AIMConfigError("vtw withdraws every visual token; {drop_ratio} does not apply ({drop_ratio:unset})")
        if not _is_fraction(drop_ratio) or (method == "pdrop" and drop_ratio >= 1.0):
            upper = "1)" if method == "pdrop" else "1]"
            raise AIMConfigError(
                f"{{drop_ratio}} (fraction of the visual tokens dropped at each step) must be in (0, {upper}, "
                f"got {drop_ratio!r}"
            )


def check_typed_settings(method: str, typed: Mapping[str, Any]) -> None:
    """The rules tying ``method`` to the other knobs a user typed, for every front end (run, flops,
    plan, bench, the eval model_args). ``typed``: {field: value} of the settings given; l1/l2 None
    means pruning turned off (--no-prune, l1=none). Errors name the fields as tokens
    (llava.aim.knobs), so each front end words them as its user typed them."""
    layers = [n for n in ("l1", "l2") if n in typed]
    if len(layers) == 1:
        raise AIMConfigError("give both {l1} and {l2} (or neither for the paper's schedule scaled to the model)")
    s = spec(method)
    if s.schedule == "none":  # PruMerge: retention 1 (no merging) is what the eval scripts pass every baseline
        budget = video_reduction(method) is not None  # a video reduction's retention is its budget
        extra = [n for n in ("retention", "l1", "l2", "drop_layers", "drop_ratio")
                 if n in typed and not (n == "retention" and (typed[n] == 1.0 or budget))]
        if extra:
            words = _typed_words(extra, typed)
            raise AIMConfigError(f"{{method={method}}} reduces tokens before the LLM by itself; "
                                 f"{words} {'do' if ', ' in words else 'does'} not apply")
    elif s.schedule == "steps":
        if layers:
            raise AIMConfigError(f"{{method={method}}} prunes at {{drop_layers}}, not l1/l2: drop "
                                 f"{_typed_words(layers, typed)}")
    elif "drop_layers" in typed or "drop_ratio" in typed:
        raise AIMConfigError(f"{{drop_layers}}/{{drop_ratio}} apply to {', '.join(STEP_METHODS)} ({{method}}), "
                             f"not {{method={method}}}")
    foreign = [n for n in typed if typed[n] is not None and not takes_knob(method, n)]
    if foreign:  # a method's own knobs (holitom_tau, ...) belong to that method: elsewhere they would do nothing
        words = _typed_words(foreign, typed)
        raise AIMConfigError(f"{words} belong{'' if ', ' in words else 's'} to {{method={owner_of_knob(foreign[0])}}}, "
                             f"not {{method={method}}}")
    if typed.get("seed") is not None and method != "random":
        raise AIMConfigError(f"{{seed}} sets the random control's survivors ({{method=random}}), "
                             f"not {{method={method}}}")


def owner_of_knob(name: str) -> Optional[str]:
    """The method whose own knob the field ``name`` is (it is named after it: ``dycoke_k``), or None."""
    return next((m for m in SPECS if name.startswith(m + "_")), None)


def own_knobs(method: str, values: Mapping[str, Any]) -> Dict[str, Any]:
    """Of ``values`` ({field: value}: a config's, or what was typed), the method's own knobs that
    are set (not None): the fields named after ``method`` or one of its registered parts."""
    return {n: v for n, v in values.items() if v is not None and owner_of_knob(n) is not None and takes_knob(method, n)}


def takes_knob(method: str, name: str) -> bool:
    """Whether ``method`` reads the field ``name``: any field that is no method's own knob, and a
    method's own knobs where ``method`` is that method or runs one of its registered parts (its
    reduction, decode selection or fold is named after it, e.g. ``dycoke_kv``)."""
    owner = owner_of_knob(name)
    if owner is None:
        return True
    s = spec(method)
    parts = (method, s.reduction, s.decode, s.fold)
    return any(p is not None and (p == owner or p.startswith(owner + "_")) for p in parts)


def _typed_words(names, typed: Mapping[str, Any]) -> str:
    """Tokens for the fields typed: l1/l2 given as None read as the way to turn pruning off."""
    tokens = ["{l1:off}" if n in ("l1", "l2") and typed[n] is None else "{%s}" % n for n in names]
    return ", ".join(dict.fromkeys(tokens))


def drop_layers_for(method: str, drop_layers: Optional[Tuple[int, ...]], num_layers: int) -> Tuple[int, ...]:
    """The drop layers of a step method on a ``num_layers`` model: given, or the paper's scaled."""
    s = spec(method)
    if drop_layers is not None:
        return tuple(drop_layers)
    if not s.scale_layers:
        return s.default_layers
    scaled = tuple(scaled_layer(k, s.reference_layers, num_layers) for k in s.default_layers)
    return tuple(sorted(set(max(1, k) for k in scaled)))


def method_drop_settings(cfg) -> Tuple[Optional[Tuple[int, ...]], Optional[float]]:
    """(drop_layers, drop_ratio) of ``cfg`` (an AIMConfig): its own fields, or for a method with
    ``step_knobs`` (HoliTom) the layer and ratio those fields hold (None: the method's defaults)."""
    s = spec(cfg.method)
    if not s.step_knobs:
        return cfg.drop_layers, cfg.drop_ratio
    layer, ratio = (getattr(cfg, name) for name in s.step_knobs)
    return (None if layer is None else (layer,)), ratio


def drop_steps(method: str, drop_layers, drop_ratio, num_layers: int) -> Tuple[Tuple[int, float], ...]:
    """((layer K, fraction of the remaining visual tokens kept from K on), ...) of a step method."""
    s = spec(method)
    if s.schedule != "steps":
        raise AIMConfigError(f"{{method}} {method!r} has a linear schedule, not drop steps")
    ratio = s.default_ratio if drop_ratio is None else drop_ratio
    if method == "vtw":
        ratio = 1.0
    return tuple((k, 1.0 - ratio) for k in drop_layers_for(method, drop_layers, num_layers))


def check_method_against_model(method: str, drop_layers, num_layers: int) -> None:
    """Raise if a step method's layers do not fit a ``num_layers`` decoder."""
    if spec(method).schedule != "steps":
        return
    layers = drop_layers_for(method, drop_layers, num_layers)
    if layers[-1] >= num_layers:
        raise AIMConfigError(
            f"{method} drops at layer {layers[-1]}, beyond the language model's {num_layers} layers "
            f"(valid {{drop_layers:plain}}: 1..{num_layers - 1})"
        )


def score_of(cfg) -> str:
    """The score that ranks visual tokens for ``cfg`` (an AIMConfig)."""
    s = spec(cfg.method)
    return cfg.importance if s.score == "config" else s.score


def fold_of(cfg) -> Optional[str]:
    """The registered fold of ``cfg``'s method (merges dropped tokens at a drop), or None."""
    return spec(cfg.method).fold


def video_reduction(method: str):
    """The registry entry of ``method``'s reduction when it is a "video" reduction (run by the
    family at the entry's stage, llava.aim.frames), else None."""
    entry = lookup(spec(method).reduction, "reduction")
    return entry if "video" in entry.needs else None


def family_refusal(method: str, family_name: str, model_type: str) -> Optional[str]:
    """Why ``method`` may not run on this family / checkpoint (its official code never ran
    there), or None where it may."""
    s = spec(method)
    if not s.families:
        return None
    if family_name in s.families and (not s.model_types or model_type in s.model_types):
        return None
    where = ", ".join(s.families) + (f" (model_type {', '.join(s.model_types)})" if s.model_types else "")
    return (f"method {method!r} ({s.title}) runs only where its official code ran: {where}; "
            f"not on this {family_name} model (model_type {model_type})"
            + (f": {s.families_reason}" if s.families_reason else ""))


def reduction_of(cfg) -> str:
    """``merge`` or ``pool`` (only when retention < 1), or ``prumerge`` / ``prumerge_plus``:
    how frames are reduced before the LLM."""
    return spec(cfg.method).reduction


def describe(cfg, num_layers: Optional[int] = None) -> str:
    """One line saying what ``cfg`` does (for CLI summaries and tables)."""
    s = spec(cfg.method)
    parts = [s.title]
    if cfg.retention < 1.0:
        parts.append(f"{s.reduction} to {cfg.retention:g} per frame")
    if s.reduction in PRUMERGE_METHODS:
        parts.append("adaptive selection + merging before the LLM; no pruning")
    elif s.schedule == "none":  # any other reduction before the LLM only
        parts.append(f"{s.reduction} before the LLM; no pruning in the prefill")
    elif s.schedule == "linear":
        parts.append("no pruning" if cfg.l1 is None else f"prune after layers {cfg.l1}..{cfg.l2 - 1}")
    elif num_layers is not None:
        steps = drop_steps(cfg.method, cfg.drop_layers, cfg.drop_ratio, num_layers)
        parts.append(", ".join(f"keep {keep:g} from layer {k}" for k, keep in steps))
    if s.score not in ("none",) and (s.schedule == "steps" or cfg.l1 is not None):
        parts.append(f"score {score_of(cfg)}")
    if s.decode is not None:
        parts.append(f"decode steps attend the visual KV {s.decode} selects")
    return "; ".join(parts)
