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
=======  ==================================================================  =================

Pure python; the config module imports this one, so nothing here imports the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple

from llava.aim.registry import lookup
from llava.errors import AIMConfigError

METHODS = ("aim", "fastv", "vtw", "pdrop", "random", "pool", "prumerge", "prumerge_plus")
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


def validate_method_fields(method, drop_layers, drop_ratio, seed, l1, l2) -> None:
    """Check the method-specific fields of an AIMConfig (called from its ``__post_init__``)."""
    s = spec(method)
    if s.score != "config":
        lookup(s.score, "score")  # the method's parts are registered (llava.aim.registry)
    lookup(s.reduction, "reduction")
    if not _is_int(seed) or seed < 0:
        raise AIMConfigError(f"{{seed}} must be a non-negative integer, got {seed!r}")
    if s.schedule == "none":
        if l1 is not None or l2 is not None or drop_layers is not None or drop_ratio is not None:
            raise AIMConfigError(
                f"{method} reduces tokens before the LLM only: {{l1}}/{{l2}}/{{drop_layers}}/{{drop_ratio}} must be None "
                f"(AIMConfig.for_method({method!r}) sets them)"
            )
        return
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
        extra = [n for n in ("retention", "l1", "l2", "drop_layers", "drop_ratio")
                 if n in typed and not (n == "retention" and typed[n] == 1.0)]
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
    if typed.get("seed") is not None and method != "random":
        raise AIMConfigError(f"{{seed}} sets the random control's survivors ({{method=random}}), "
                             f"not {{method={method}}}")


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
        parts.append("before the LLM only; no pruning")
    elif s.schedule == "linear":
        parts.append("no pruning" if cfg.l1 is None else f"prune after layers {cfg.l1}..{cfg.l2 - 1}")
    elif num_layers is not None:
        steps = drop_steps(cfg.method, cfg.drop_layers, cfg.drop_ratio, num_layers)
        parts.append(", ".join(f"keep {keep:g} from layer {k}" for k, keep in steps))
    if s.score not in ("none",) and (s.schedule == "steps" or cfg.l1 is not None):
        parts.append(f"score {score_of(cfg)}")
    return "; ".join(parts)
