"""AIMConfig: every knob of AIM in one validated, immutable object.

Defaults are the paper's main setting (docs/method.md): retention 0.25, pruning layers "auto"
((l1, l2) = (14, 22) on the paper's 28-layer Qwen2-7B, the official schedule or the same
fractions on other models), PageRank importance with tau 0.1 and 5 iterations, plain-mean merging in the
official code's output order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple, Union

from llava.aim.knobs import knob, knobs
from llava.aim.policy import (
    METHODS,
    PRUMERGE_METHODS,
    STEP_METHODS,
    aim_default_layers,
    check_method_against_model,
    method_drop_settings,
    owner_of_knob,
    takes_knob,
    spec,
    validate_method_fields,
    video_reduction,
)
from llava.aim.registry import check_importance
from llava.errors import AIMConfigError

MERGE_WEIGHTINGS = ("mean", "size")
MERGE_ORDERS = ("paper", "spatial")
MERGE_COUNTS = ("official", "exact")  # llava.aim.merge.merge_schedule
# What merging's similarity is computed on: "auto" = the family's official choice (LLaVA-1.5:
# "keys", LLaVA-OneVision: "tokens"), resolved when AIM is applied.
MERGE_METRICS = ("auto", "keys", "tokens")
TIE_BREAKS = ("index", "log_attention")  # llava.aim.importance.select_survivors
IMPORTANCES = ("pagerank", "attention")  # the built-in ones; llava.aim.registry.register adds more
PRUNING_MODES = ("remove", "mask")
# Where merged tokens sit in a model with per-patch 3-D rotary positions (M-RoPE, Qwen2-VL):
# "original" = the (t, h, w) position of the patch each token stands in for; "official" = the
# official code's shrunken grid. 1-D RoPE families number merged tokens consecutively either way.
POSITIONS = ("original", "official")
DYCOKE_WHEN_SIMILAR = ("keep_selection", "attend_all")  # llava.aim.dycoke: a similar decode step's keys
AUTO = "auto"  # l1/l2: the model family's official schedule, else the paper's (14, 22) of 28 scaled
Layer = Union[int, None, str]


@dataclass(frozen=True)
class AIMConfig:
    """Settings of AIM.

    retention: fraction of each frame's (image's) tokens kept by merging, in (0, 1];
        1.0 disables merging. The kept count follows ``merge_count``.
    l1, l2: 0-based layers; visual tokens are pruned progressively after layers l1 .. l2-1
        and none enter layer l2 or later. ``l1=None`` (with ``l2=None``) disables pruning.
        l2 may exceed the model's depth (visual tokens then never reach zero); l1 equal to the
        depth prunes nothing (the paper's ablation row (28, 29)). ``"auto"`` (the default, both
        together) is resolved when AIM is applied (:meth:`resolve_layers`): the official code's
        schedule for the model family where it has one (LLaVA-1.5: (13, 21)), else the
        paper's (14, 22) of 28 layers scaled to the model's depth ((14, 22) on Qwen2-7B).
    importance: "pagerank" (the paper's score) or "attention" (mean attention each visual
        token receives, one softmax, no iterations; cheaper, NOT the paper's).
    pagerank_tau, pagerank_iters: temperature and power-iteration steps of the PageRank score.
    merge_weighting: "mean" (plain mean per step, as the paper's code) or "size"
        (size-weighted mean across steps, as ToMe).
    merge_order: "paper" (kept sources by similarity, then destinations) or "spatial"
        (survivors in original position order).
    merge_count: how many tokens merging keeps (llava.aim.merge.merge_schedule). "official"
        (the official code): at retention 1/2^K, step k removes T // 2^k of the frame's
        original count T (196: 98, 49, 25, 13, 7, 4 kept at 1/2 .. 1/64); other retentions
        keep max(1, floor(T * retention)). "exact": always max(1, floor(T * retention))
        (24, 12, 6, 3 at 1/8 .. 1/64, the count of the paper's efficiency tables).
    merge_metric: what merging's similarity is computed on. "keys" (LLaVA-1.5's official
        path): the CLIP features LLaVA selects are merged BEFORE the projector, the similarity
        being the cosine of the next CLIP layer's attention keys of those features (k_proj of
        layer 23 of 24), merged alongside step by step. "tokens": the cosine of the projected
        tokens the LLM receives, merged after the projector (LLaVA-OneVision's official path,
        after the 2x2 pooling). "auto" (default): each family's official choice.
    tie_break: how pruning ranks visual tokens whose scores are exactly equal (e.g. PageRank
        mass that underflowed to 0 in float32). "index" (default, the official-equivalent
        rule): the earlier token first. "log_attention": by the log of the attention each
        token receives in the first power step, computed in the log domain (never
        underflows), then by index.
    pruning_mode: "remove" (pruned tokens physically removed: real speed-up, smaller KV
        cache) or "mask" (reference: pruned tokens kept but hidden as keys; no speed-up).
    importance_memory_mb: bound on the extra memory of the importance computation; heads
        are processed in chunks that fit in it.
    positions: where merged tokens sit in models with 3-D rotary positions (M-RoPE: Qwen2-VL,
        Qwen2.5-VL). "original" (default): each merged token keeps the (t, h, w) position of
        the patch it stands in for (its destination), and the text keeps the positions of the
        unmerged prompt. "official": the official code's shrunken grid, for reproduction: each
        frame's grid shrinks by s per side where retention = 1/s^2 (s = 2 at 1/4), merging
        keeps exactly (h // s) * (w // s) tokens, and the positions are those of that smaller
        grid (the text after the video moves up accordingly). 1-D RoPE families (LLaVA-OneVision,
        LLaVA-1.5) always number merged tokens consecutively, which is what the official code
        does there.
    method: "aim" (default) or a baseline / control of llava.aim.policy: "fastv", "vtw",
        "pdrop" (drop at ``drop_layers``; l1/l2 must be None), "prumerge", "prumerge_plus"
        (LLaVA-PruMerge before the LLM; retention 1.0, l1/l2 None), "random", "pool" (AIM's
        retention and l1/l2). ``AIMConfig.for_method(name)`` gives each paper's defaults.
    drop_layers: fastv/vtw/pdrop only: the layers K from which the reduced set is seen
        (scored in layer K-1); None = the paper's layers scaled to the model's depth.
    drop_ratio: fastv/pdrop only: fraction of the (remaining) visual tokens dropped at each
        step, None = the paper's 0.5.
    seed: the "random" control's seed (its choice is a deterministic hash, no global RNG).
    holitom_tau, holitom_layer, holitom_ratio: HoliTom only (llava.aim.holitom): the similarity
        above which a token is static between frames (None: the official scripts' 0.65 at a
        budget of 10% and below, else 0.80), the layer K that sees the inner merge's survivors
        (None: 18 of 28 scaled to the model) and the fraction of the visual tokens folded away
        there (None: 0.5; 0 = "HoliTom (w/o M)", no inner merge). ``retention`` is its budget.
    """

    # Each field declares, once, how users set it (llava.aim.knobs): flags, model_args, errors.
    retention: float = field(default=0.25, metadata=knob(
        "float", "fraction of each frame's tokens kept by merging, in (0, 1] (default 0.25; 1 = no merging)",
        bounds="(0, 1]", means="the fraction of each frame's tokens kept by merging",
        commands=("run", "visualize", "flops", "bench"), budget=True))
    l1: Layer = field(default=AUTO, metadata=knob(
        "layer", "first pruning layer, 0-based (default: the family's official schedule, else the paper's "
        "(14, 22) of 28 layers scaled to the model)", commands=("run", "visualize", "flops", "bench"),
        off={"python": "l1=None", "flag": "--no-prune", "model_arg": "l1=none,l2=none"}))
    l2: Layer = field(default=AUTO, metadata=knob(
        "layer", "first layer with no visual token (default: with --l1)", commands=("run", "visualize", "flops", "bench"),
        off={"python": "l2=None", "flag": "--no-prune", "model_arg": "l1=none,l2=none"}))
    importance: str = field(default="pagerank", metadata=knob(
        "choice", "pruning score: pagerank (the paper's) or attention", choices=IMPORTANCES))
    pagerank_tau: float = field(default=0.1, metadata=knob(
        "float", "PageRank temperature (> 0)", bounds="(0, inf)", means="the PageRank temperature"))
    pagerank_iters: int = field(default=5, metadata=knob(
        "int", "PageRank power-iteration steps", bounds="[1, inf)", means="PageRank power-iteration steps"))
    merge_weighting: str = field(default="mean", metadata=knob(
        "choice", "mean (plain mean per step, the paper's code) or size (size-weighted, as ToMe)",
        choices=MERGE_WEIGHTINGS))
    merge_order: str = field(default="paper", metadata=knob(
        "choice", "paper (the official output order) or spatial (original position order)", choices=MERGE_ORDERS))
    merge_count: str = field(default="official", metadata=knob(
        "choice", "merged count per frame: official (default; 196 -> 98, 49, 25, 13, 7, 4 at 1/2 .. 1/64) "
        "or exact (floor(T * retention))", choices=MERGE_COUNTS, commands=("run",)))
    merge_metric: str = field(default=AUTO, metadata=knob(
        "choice", "merging similarity: auto (default: each family's official), keys (LLaVA-1.5: CLIP keys, "
        "before the projector), tokens (the projected tokens)", choices=MERGE_METRICS, commands=("run",)))
    tie_break: str = field(default="index", metadata=knob(
        "choice", "pruning: how exactly tied scores are ranked (index, the default: official-equivalent)",
        choices=TIE_BREAKS, commands=("run",)))
    pruning_mode: str = field(default="remove", metadata=knob(
        "choice", "remove (default: pruned tokens leave the computation) or mask (reference)",
        choices=PRUNING_MODES, commands=("run",)))
    importance_memory_mb: int = field(default=1024, metadata=knob(
        "int", "bound on the importance computation's extra memory, MiB", bounds="[1, inf)",
        means="the importance computation's extra memory, MiB"))
    positions: str = field(default="original", metadata=knob(
        "choice", "Qwen2-VL / Qwen2.5-VL: merged tokens at their destination patch's position (original, "
        "the default) or on the official code's shrunken grid (official); no effect on 1-D RoPE models",
        choices=POSITIONS, commands=("run",)))
    method: str = field(default="aim", metadata=knob(
        "method", "aim (default), a baseline (fastv, vtw, pdrop, prumerge, prumerge_plus) or a control "
        "(random, pool); docs/comparison.md describes each", choices=METHODS,
        commands=("run", "flops", "plan", "bench"), flag_default="aim"))
    drop_layers: Optional[Tuple[int, ...]] = field(default=None, metadata=knob(
        "layers", "fastv/vtw/pdrop: layers K that see the reduced set, e.g. 2 or 8,16,24 "
        "(default: the paper's, scaled to the model's depth); model_args: 8/16/24",
        commands=("run", "flops", "plan", "bench")))
    drop_ratio: Optional[float] = field(default=None, metadata=knob(
        "float", "fastv/pdrop: fraction of the visual tokens dropped at each step (default 0.5)",
        commands=("run", "flops", "plan", "bench")))
    seed: int = field(default=0, metadata=knob(
        "int", "seed of the random control (--method random; default 0)", bounds="[0, inf)",
        means="the random control's seed", commands=("run",)))
    # FastVID (llava.aim.fastvid; None = the official default, fastvid_llavaonevision/scripts/eval.sh)
    fastvid_segments: Optional[int] = field(default=None, metadata=knob(
        "int", "fastvid: the least number of segments of a video (DySeg c; default 8)", bounds="[1, inf)",
        means="the least number of segments of a video", commands=("run",)))
    fastvid_tau: Optional[float] = field(default=None, metadata=knob(
        "float", "fastvid: cut between frames whose cosine is below this (DySeg tau, in [-1, 1]; default 0.9)",
        bounds="[-1, 1]", means="a cosine similarity", commands=("run",)))
    fastvid_context_share: Optional[float] = field(default=None, metadata=knob(
        "float", "fastvid: share of each frame's budget given to merged anchors (STPrune d, in [0, 1]; default 0.4)",
        bounds="[0, 1]", means="the share of each frame's budget given to merged anchors", commands=("run",)))
    fastvid_anchor_stride: Optional[int] = field(default=None, metadata=knob(
        "int", "fastvid: one anchor frame every this many frames of a segment (DTM p; default 4)", bounds="[1, inf)",
        means="frames per anchor frame", commands=("run",)))
    fastvid_anchor_weight: Optional[float] = field(default=None, metadata=knob(
        "float", "fastvid: least weight of an anchor in its merge (DTM beta, in [0, 1]; default 0.6)",
        bounds="[0, 1]", means="the least weight of an anchor in its merge", commands=("run",)))
    # DyCoke (llava.aim.dycoke; the official lmms-eval model_args, same names): None = the official default
    dycoke_k: Optional[float] = field(default=None, metadata=knob(
        "float", "dycoke: fraction of each pruned frame's tokens that temporal merging drops, in [0, 1] "
        "(default 0.7, the official)", bounds="[0, 1]", means="fraction of a pruned frame's tokens dropped",
        commands=("run", "flops", "plan", "bench")))
    dycoke_l: Optional[int] = field(default=None, metadata=knob(
        "int", "dycoke: first decoder layer whose decode steps attend only the selected visual KV "
        "(ranked in layer L-1; default 3, the official, on every depth)", bounds="[1, inf)",
        means="the layer L whose decode steps see the KV ranked in layer L-1", commands=("run", "flops")))
    dycoke_p: Optional[float] = field(default=None, metadata=knob(
        "float", "dycoke: fraction of the visual KV each decode step leaves out, in [0, 1) (default 0.8, the official)",
        bounds="[0, 1)", means="fraction of the visual KV left out", commands=("run", "flops")))
    dycoke_when_similar: Optional[str] = field(default=None, metadata=knob(
        "choice", "dycoke: a decode step whose attention is similar to the previous one's keeps the selection "
        "(keep_selection, the default) or attends every visual key (attend_all, the official code)",
        choices=DYCOKE_WHEN_SIMILAR, commands=("run",)))
    holitom_tau: Optional[float] = field(default=None, metadata=knob(
        "float", "holitom: similarity above which a token is static between frames, in [-1, 1] (default: "
        "the official 0.65 at retention <= 0.10, else 0.80)", bounds="[-1, 1]", means="a cosine similarity",
        commands=("run",)))
    holitom_layer: Optional[int] = field(default=None, metadata=knob(
        "int", "holitom: layer K that sees the inner merge's survivors (default 18 of 28, scaled)", bounds="[1, inf)",
        means="the layer K that sees the survivors of layer K-1's score", commands=("run",)))
    holitom_ratio: Optional[float] = field(default=None, metadata=knob(
        "float", "holitom: fraction of the visual tokens merged away at layer K, in [0, 1) (default 0.5; 0: "
        "no inner merge)", bounds="[0, 1)", means="fraction of the visual tokens merged away at layer K",
        commands=("run",)))

    def __post_init__(self) -> None:
        _check_bounds(self)
        _check_layers(self.l1, self.l2)
        if isinstance(self.drop_layers, list):  # lists from JSON / CLI: store the hashable tuple
            object.__setattr__(self, "drop_layers", tuple(self.drop_layers))
        validate_method_fields(self.method, self.drop_layers, self.drop_ratio, self.l1, self.l2)
        _check_method_knobs(self)  # a method's own knobs (named after it) only with that method
        if self.method in PRUMERGE_METHODS and self.retention != 1.0:
            raise AIMConfigError(
                f"{self.method} replaces AIM's merging: {{retention}} must be 1.0, got {self.retention!r} "
                f"(AIMConfig.for_method({self.method!r}) sets it)"
            )
        _check_dycoke(self)
        check_importance(self.importance)  # a registered score (llava.aim.registry), no fallback
        _check_choice("merge_weighting", self.merge_weighting, MERGE_WEIGHTINGS)
        _check_choice("merge_order", self.merge_order, MERGE_ORDERS)
        _check_choice("merge_count", self.merge_count, MERGE_COUNTS)
        _check_choice("merge_metric", self.merge_metric, MERGE_METRICS)
        _check_choice("tie_break", self.tie_break, TIE_BREAKS)
        _check_choice("pruning_mode", self.pruning_mode, PRUNING_MODES)
        _check_choice("positions", self.positions, POSITIONS)
        if self.dycoke_when_similar is not None:  # None: the official default
            _check_choice("dycoke_when_similar", self.dycoke_when_similar, DYCOKE_WHEN_SIMILAR)
        if self.positions == "official":
            _check_official_grid(self.retention, self.method, self.merge_weighting)

    # -- convenience -------------------------------------------------------------------
    @property
    def merging(self) -> bool:
        """True when AIM's token merging (or its pooling control) changes anything (retention < 1);
        False for a "video" reduction, whose retention is its own budget."""
        return self.retention < 1.0 and not self.video_reducing

    @property
    def video_reducing(self) -> bool:
        """True when the method's reduction is a registered "video" reduction (llava.aim.frames),
        which the family runs per video before the LLM."""
        return video_reduction(self.method) is not None

    @property
    def grid_shrink(self) -> int:
        """positions="official": how much each side of a frame's grid shrinks (1/retention = s^2)."""
        return official_grid_shrink(self.retention)

    @property
    def pruning(self) -> bool:
        """True when in-LLM pruning is configured."""
        return self.l1 is not None or spec(self.method).schedule == "steps"

    @property
    def prumerging(self) -> bool:
        """True for LLaVA-PruMerge / PruMerge+ (adaptive reduction before the LLM)."""
        return self.method in PRUMERGE_METHODS

    @property
    def decode_selecting(self) -> bool:
        """True when the method restricts each decode step's visual KV (a "decode" registry entry)."""
        return spec(self.method).decode is not None

    @property
    def layers_auto(self) -> bool:
        """True while l1/l2 are "auto" (not yet resolved against a model)."""
        return self.l1 == AUTO

    def resolve_layers(self, num_layers: int, official: Optional[Tuple[int, int]] = None) -> "AIMConfig":
        """This setting with "auto" layers made concrete for a ``num_layers``-layer decoder.

        ``official``: the family's official (l1, l2) for this depth, if it has one (the model
        adapters pass it); otherwise the paper's (14, 22) of 28 layers scaled to the depth.
        Concrete layers are kept as they are. The result is checked against the depth.
        """
        cfg = self
        if self.layers_auto:
            l1, l2 = official if official is not None else aim_default_layers(num_layers)
            cfg = dataclasses.replace(self, l1=l1, l2=l2)
        cfg.check_against_model(num_layers)
        return cfg

    def resolve_merge_metric(self, official: str, supported=("tokens",), family: str = "this model") -> "AIMConfig":
        """This setting with ``merge_metric="auto"`` made the family's ``official`` metric, checked
        against the metrics the family supports (the model adapters pass both)."""
        metric = official if self.merge_metric == AUTO else self.merge_metric
        if metric not in supported:
            raise AIMConfigError(
                f"merge_metric={metric!r} is not available for {family} (supported: {list(supported)}; "
                f'"auto" picks {official!r})'
            )
        return self if metric == self.merge_metric else dataclasses.replace(self, merge_metric=metric)

    @property
    def enabled(self) -> bool:
        return self.merging or self.pruning or self.prumerging or self.video_reducing or self.decode_selecting

    @classmethod
    def disabled(cls) -> "AIMConfig":
        """AIM off: no merging, no pruning. The model then equals the stock model exactly."""
        return cls(retention=1.0, l1=None, l2=None)

    @classmethod
    def preset(cls, name: str, **overrides) -> "AIMConfig":
        """A named setting (see :data:`PRESETS`), optionally with fields overridden."""
        if name not in PRESETS:
            raise AIMConfigError(f"unknown AIM preset {name!r}; choose one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    @classmethod
    def for_method(cls, method: str, **overrides) -> "AIMConfig":
        """A method of llava.aim.policy with its paper defaults, optionally overridden.

        fastv / vtw / pdrop: no merging (retention 1.0), no l1/l2, the paper's drop layers
        (scaled to the model's depth when applied) and ratio. prumerge / prumerge_plus: no
        AIM merging or pruning (their own adaptive reduction before the LLM). aim / random /
        pool: AIM's defaults (retention 0.25, l1/l2 "auto").
        """
        base = {"method": method}
        if method in STEP_METHODS or method in PRUMERGE_METHODS:
            base.update(retention=1.0, l1=None, l2=None)
        elif video_reduction(method) is not None:  # its own budget before the LLM, no AIM schedule
            base.update(l1=None, l2=None)
            if spec(method).default_retention is not None:
                base.update(retention=spec(method).default_retention)
        base.update(overrides)
        return cls(**base)

    def replace(self, **changes) -> "AIMConfig":
        return dataclasses.replace(self, **changes)

    def check_against_model(self, num_layers: int) -> None:
        """Raise if the setting cannot apply to a decoder with ``num_layers`` layers."""
        if isinstance(self.l1, int) and self.l1 > num_layers:
            raise AIMConfigError(
                f"{{l1={self.l1}}} is beyond the language model, which has {num_layers} layers "
                f"(valid l1: 0..{num_layers}, where {num_layers} prunes nothing); pass a smaller l1, "
                "or {l1:off} to disable pruning"
            )
        check_method_against_model(self.method, method_drop_settings(self)[0], num_layers)
        if self.decode_selecting:
            from llava.aim.registry import lookup

            layer = lookup(spec(self.method).decode, "decode").fn(self, num_layers).layer
            if not 1 <= layer < num_layers:
                raise AIMConfigError(
                    f"{self.method} restricts decode steps from layer {layer} (ranked in layer {layer - 1}): "
                    f"the language model has {num_layers} layers (valid {{dycoke_l}}: 1..{num_layers - 1})"
                )

    def to_dict(self) -> Dict[str, object]:
        return dataclasses.asdict(self)


def _check_method_knobs(cfg) -> None:
    """A method's own knobs are the fields named after it (``fastvid_tau``, ``holitom_layer``,
    ...): set for another method they would do nothing, so they are refused (the front ends word
    the same rule for what was typed: llava.aim.policy.check_typed_settings)."""
    given = [f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) is not None
             and not takes_knob(cfg.method, f.name)]
    if given:
        words = ", ".join("{%s}" % n for n in given)
        raise AIMConfigError(f"{words} belong{'' if len(given) > 1 else 's'} to {{method={owner_of_knob(given[0])}}}, "
                             f"not {{method={cfg.method}}}")


def _check_bounds(cfg) -> None:
    """Every field whose knob declares bounds (llava.aim.knobs) is within them; None in a field
    whose default is None stands for the method's official default and is not checked."""
    for f in dataclasses.fields(cfg):
        declared = f.metadata.get("knob")  # a subclass may redeclare a field without its knob
        value = getattr(cfg, f.name)
        if declared is not None and not (value is None and f.default is None):
            declared.check(f.name, value)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_layers(l1, l2) -> None:
    if l1 is None and l2 is None:
        return
    if l1 == AUTO or l2 == AUTO:
        if l1 != l2:
            raise AIMConfigError(f'l1 and l2 are "auto" together or not at all, got l1={l1!r}, l2={l2!r}')
        return
    if l1 is None or l2 is None:
        raise AIMConfigError(
            f"l1 and l2 go together: set both to enable pruning or both to None, got {{l1={l1!r}}}, {{l2={l2!r}}}"
        )
    if not _is_int(l1) or not _is_int(l2):
        raise AIMConfigError(f"l1 and l2 must be integers, got {{l1={l1!r}}}, {{l2={l2!r}}}")
    for name, value in (("l1", l1), ("l2", l2)):
        if value < 0:
            raise AIMConfigError(f"{{{name}}} must be non-negative, got {value}")
    if l1 >= l2:
        raise AIMConfigError(f"{{l1}} must be below {{l2}} (pruning runs after layers l1..l2-1, need l1 < l2), "
                             f"got {{l1={l1}}} {{l2={l2}}}")


def check_fields(retention=None, l1: Layer = None, l2: Layer = None) -> None:
    """AIMConfig's own rules on the retention and layers given (None: not given), for front ends
    that check what was typed before a whole config is built."""
    if retention is not None:
        knobs()["retention"].check("retention", retention)
    if l1 is not None and l2 is not None:
        _check_layers(l1, l2)


def official_grid_shrink(retention: float) -> int:
    """s with retention == 1/s^2 (s a positive integer), else AIMConfigError.

    The official code halves the height and width of each frame's grid at retention 1/4; the
    same construction exists only where 1/retention is a square (1, 1/4, 1/9, 1/16, ...).
    """
    s = max(1, round((1.0 / retention) ** 0.5))
    if abs(s * s * retention - 1.0) > 1e-9:
        raise AIMConfigError(
            f"positions='official' (the official code's shrunken M-RoPE grid) needs a retention of 1/s^2, so that "
            f"each frame's grid shrinks by s per side (1, 1/4, 1/9, 1/16, ...); retention={retention!r} gives no "
            "grid: use positions='original', which works for any retention"
        )
    return s


def _check_official_grid(retention, method: str, weighting: str) -> None:
    official_grid_shrink(retention)
    if retention < 1.0 and spec(method).reduction != "merge":
        raise AIMConfigError(
            f"positions='official' reproduces the official code's merging; method {method!r} pools instead: "
            "use positions='original'"
        )
    if retention < 1.0 and weighting != "mean":
        # the extra merges down to the shrunken grid start from plain tokens, as the official code
        raise AIMConfigError(
            "positions='official' reproduces the official code's merging, which takes plain means "
            f"(merge_weighting='mean'), got merge_weighting={weighting!r}: use positions='original'"
        )


def _check_dycoke(cfg: "AIMConfig") -> None:
    """DyCoke's budget: its own k, not retention (its knobs' ranges: _check_bounds)."""
    s = spec(cfg.method)
    if s.reduction == "dycoke" and cfg.retention != 1.0:
        raise AIMConfigError(
            f"{{method={cfg.method}}}: DyCoke's token count is set by {{dycoke_k}} (each pruned frame keeps "
            f"int((1 - k) * T); whole frames stay), which no {{retention}} maps onto; {{retention}} must be 1.0, "
            f"got {cfg.retention!r}")


def _check_choice(field: str, value, choices) -> None:
    if value not in choices:
        raise AIMConfigError(f"{{{field}}} must be one of {list(choices)}, got {value!r}")


PRESETS: Dict[str, AIMConfig] = {
    # The paper's main setting: (14, 22) on LLaVA-OneVision-7B's 28 layers, scaled to others.
    "paper": AIMConfig(),
    # Ablations the paper reports: each stage alone.
    "merge-only": AIMConfig(retention=0.25, l1=None, l2=None),
    "prune-only": AIMConfig(retention=1.0),
    # The paper's official-code behaviour (pruned tokens masked, not removed): a baseline.
    "paper-mask": AIMConfig(pruning_mode="mask"),
    # The official code's LLaVA-1.5 setting: merging 576 -> 288 -> 252 tokens (43.75%) on the
    # CLIP features before the projector, similarity from CLIP's last-layer keys
    # (merge_metric "auto" resolves to "keys" there), and pruning that retains 1 - (l - 12) / 8
    # after layer l >= 13 of 32, i.e. (l1, l2) = (13, 21). Its other setting is retention 0.125.
    "llava-1.5": AIMConfig(retention=0.4375, l1=13, l2=21),
    "disabled": AIMConfig(retention=1.0, l1=None, l2=None),
}
