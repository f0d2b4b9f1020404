"""The budget planner: a FLOPs budget or a target speed-up in, an AIM setting out.

The rule (``llava-aim plan``; documented in README and docs/efficiency_tables.md):

1. Candidates, in two pools.
   * Paper-validated: the settings the paper evaluated on 28-layer Qwen2-7B, with the layers
     scaled to the model's depth as the rest of the project does (round(l * L / 28)):
     the merging retention sweep 1, 1/2, ..., 1/64 without pruning and with (14, 22), and the
     (l1, l2) ablation at retention 1/4. "No AIM" (retention 1, no pruning) is one of them.
     For LLaVA-1.5 (a CLIP vision tower on 32 layers) also the official code's two settings,
     retention 0.4375 and 0.125 with (13, 21).
   * Extended (only when no validated setting fits): retentions 1/2^k down to one token per
     frame, times every schedule 0 <= l1 < l2 <= L and no pruning.
2. A candidate meets the target when its predicted LLM prefill (the roofline model of
   docs/efficiency_model.md, same input and hardware) costs at most the budget in TFLOPs, or is at
   least the target speed-up faster than the model without AIM.
3. Among the candidates meeting the target, from the validated pool if any fits, else from
   the extended pool, keep the one that leaves the LLM the most visual information: the
   largest number of visual token-layers (sum over layers of the visual tokens entering each
   layer). Ties: higher retention, then later pruning (larger l1, then l2).
4. If nothing fits, the answer says so and gives the cheapest setting AIM can express.

Pure Python on top of the analyzer; per-layer costs depend only on the sequence length, so
they are computed once per length and reused across the sweep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from llava.aim.merge import merged_token_count
from llava.aim.policy import LLAVA15_OFFICIAL_LAYERS, scaled_layer
from llava.aim.schedule import visual_tokens_per_layer
from llava.analysis.hardware import Hardware, get_hardware
from llava.analysis.roofline import PAPER_LAYERS, RooflineOptions, count_rule, layer_ops, lm_head_op
from llava.analysis.shapes import LLMShape
from llava.errors import AIMConfigError

PAPER_RETENTIONS = (1.0, 1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64)
PAPER_SWEEP_LAYERS = (14, 22)
PAPER_ABLATION_RETENTION = 1 / 4
# (28, 29) of the paper's ablation prunes nothing on 28 layers: it is the "no pruning" entry.
PAPER_ABLATION_LAYERS = ((21, 29), (14, 29), (7, 29), (21, 22), (14, 22), (7, 22), (14, 15), (7, 15), (7, 8))


@dataclass(frozen=True)
class Setting:
    retention: float
    l1: Optional[int]
    l2: Optional[int]
    source: str  # where it comes from: a paper table, or "extended grid"

    @property
    def validated(self) -> bool:
        return self.source != "extended grid"

    def describe(self) -> str:
        merge = "no merging" if self.retention >= 1 else f"retention {_fraction(self.retention)}"
        prune = "no pruning" if self.l1 is None else f"l1={self.l1}, l2={self.l2}"
        return f"{merge}, {prune}"


@dataclass
class Candidate:
    setting: Setting
    tokens_per_frame_kept: int
    visual_tokens_per_layer: List[int]
    prefill_flops: float
    prefill_time_s: float

    @property
    def visual_token_layers(self) -> int:
        return sum(self.visual_tokens_per_layer)

    def rank_key(self) -> Tuple:
        s = self.setting
        no_prune = s.l1 is None
        return (self.visual_token_layers, s.retention, no_prune, s.l1 or 0, s.l2 or 0)

    def to_dict(self, baseline: "Candidate") -> Dict[str, Any]:
        s = self.setting
        return {
            "retention": s.retention, "l1": s.l1, "l2": s.l2, "source": s.source, "validated": s.validated,
            "description": s.describe(), "tokens_per_frame_kept": self.tokens_per_frame_kept,
            "prefill_tflops": self.prefill_flops / 1e12, "prefill_ms": self.prefill_time_s * 1e3,
            "speedup": baseline.prefill_time_s / self.prefill_time_s,
            "flops_reduction": baseline.prefill_flops / self.prefill_flops,
            "visual_token_layers": self.visual_token_layers,
            "visual_tokens_per_layer": list(self.visual_tokens_per_layer),
        }


@dataclass
class Target:
    budget_tflops: Optional[float] = None
    speedup: Optional[float] = None

    def __post_init__(self) -> None:
        if (self.budget_tflops is None) == (self.speedup is None):
            raise AIMConfigError("give exactly one target: a FLOPs budget (--budget-tflops) or a speed-up (--speedup)")
        value = self.budget_tflops if self.budget_tflops is not None else self.speedup
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value != value:
            name = "--budget-tflops" if self.budget_tflops is not None else "--speedup"
            raise AIMConfigError(f"{name} must be a positive number, got {value!r}")

    def met_by(self, c: Candidate, baseline: Candidate) -> bool:
        if self.budget_tflops is not None:
            return c.prefill_flops <= self.budget_tflops * 1e12 * (1 + 1e-12)
        return baseline.prefill_time_s / c.prefill_time_s >= self.speedup * (1 - 1e-12)

    def describe(self) -> str:
        if self.budget_tflops is not None:
            return f"LLM prefill <= {self.budget_tflops:g} TFLOPs"
        return f"LLM prefill >= {self.speedup:g}x faster than without AIM (roofline time)"


@dataclass
class Plan:
    target: Target
    feasible: bool
    choice: Optional[Candidate]
    baseline: Candidate
    cheapest: Candidate
    pool: str  # "paper-validated" or "extended grid"
    meeting: int  # candidates of that pool meeting the target
    pool_size: int
    alternatives: List[Candidate] = field(default_factory=list)
    inputs: Dict[str, Any] = field(default_factory=dict)

    def reason(self) -> str:
        if not self.feasible:
            return (f"no setting AIM can express meets the target: the cheapest (retention "
                    f"{_fraction(self.cheapest.setting.retention)}, l1={self.cheapest.setting.l1}, "
                    f"l2={self.cheapest.setting.l2}) costs {self.cheapest.prefill_flops / 1e12:.3f} TFLOPs, "
                    f"{self.baseline.prefill_time_s / self.cheapest.prefill_time_s:.2f}x faster than without AIM; "
                    "raise the budget, or use fewer frames or text tokens")
        c = self.choice
        validated = ("a setting the paper validated" if c.setting.validated
                     else "not a setting the paper validated (none of those meets the target)")
        return (f"{self.meeting} of {self.pool_size} {self.pool} settings meet the target; this one keeps the most "
                f"visual information (visual token-layers: {c.visual_token_layers} of "
                f"{self.baseline.visual_token_layers} without AIM); {validated}: {c.setting.source}")

    def to_dict(self) -> Dict[str, Any]:
        return {
            "inputs": self.inputs,
            "target": {"budget_tflops": self.target.budget_tflops, "speedup": self.target.speedup,
                       "description": self.target.describe()},
            "feasible": self.feasible,
            "choice": self.choice.to_dict(self.baseline) if self.choice else None,
            "reason": self.reason(),
            "pool": self.pool, "candidates_meeting": self.meeting, "pool_size": self.pool_size,
            "baseline": self.baseline.to_dict(self.baseline),
            "cheapest": self.cheapest.to_dict(self.baseline),
            "alternatives": [a.to_dict(self.baseline) for a in self.alternatives],
        }


def _fraction(x: float) -> str:
    f = Fraction(x).limit_denominator(1024)
    return str(f) if abs(float(f) - x) < 1e-12 else f"{x:g}"


def _scaled_pair(l1: int, l2: int, num_layers: int) -> Optional[Tuple[int, int]]:
    if num_layers == PAPER_LAYERS:
        return l1, l2
    a, b = scaled_layer(l1, PAPER_LAYERS, num_layers), scaled_layer(l2, PAPER_LAYERS, num_layers)
    b = max(b, a + 1)
    return (a, b) if a < num_layers else None


def validated_settings(num_layers: int, llava15: bool = False) -> List[Setting]:
    """The paper's evaluated settings, layers scaled to ``num_layers`` (duplicates removed); with
    ``llava15`` (a CLIP tower, 32 layers) also the official LLaVA-1.5 settings (43.75% and 12.5%
    with (13, 21))."""
    scaled = "" if num_layers == PAPER_LAYERS else f", layers scaled from {PAPER_LAYERS} to {num_layers}"
    out: List[Setting] = []
    if llava15 and num_layers in LLAVA15_OFFICIAL_LAYERS:
        for r in (0.4375, 0.125):
            out.append(Setting(r, *LLAVA15_OFFICIAL_LAYERS[num_layers], "the official LLaVA-1.5 setting"))
    for r in PAPER_RETENTIONS:
        out.append(Setting(r, None, None, "no AIM" if r >= 1 else "merging retention sweep, no pruning"))
        pair = _scaled_pair(*PAPER_SWEEP_LAYERS, num_layers)
        if pair:
            out.append(Setting(r, *pair, f"merging retention sweep with pruning (14, 22){scaled}"))
    for l1, l2 in PAPER_ABLATION_LAYERS:
        pair = _scaled_pair(l1, l2, num_layers)
        if pair:
            out.append(Setting(PAPER_ABLATION_RETENTION, *pair,
                               f"(l1, l2) ablation at retention 1/4: ({l1}, {l2}){scaled}"))
    return _dedupe(out)


def extended_settings(num_layers: int, tokens_per_frame: int) -> List[Setting]:
    """Every schedule 0 <= l1 < l2 <= L (and none) for retentions 1/2^k down to one token per frame."""
    retentions = []
    r = 1.0
    while True:
        retentions.append(r)
        if merged_token_count(tokens_per_frame, r, "exact") <= 1:
            break
        r /= 2
    pairs: List[Tuple[Optional[int], Optional[int]]] = [(None, None)]
    pairs += [(a, b) for a in range(num_layers) for b in range(a + 1, num_layers + 1)]
    return _dedupe(Setting(r, a, b, "extended grid") for r in retentions for a, b in pairs)


def _dedupe(settings: Iterable[Setting]) -> List[Setting]:
    seen, out = set(), []
    for s in settings:
        key = (s.retention, s.l1, s.l2)
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


class CostModel:
    """Prefill cost of a per-layer token list, with layer costs cached by sequence length."""

    def __init__(self, llm: LLMShape, hardware: Hardware, options: RooflineOptions):
        self.llm, self.hardware, self.options = llm, hardware, options
        self._layer: Dict[int, Tuple[float, float]] = {}
        head = lm_head_op(llm, hardware, options)
        self._head = (head.ops, head.time_s)

    def layer(self, n: int) -> Tuple[float, float]:
        if n not in self._layer:
            ops = layer_ops(self.llm, n, self.hardware, self.options)
            self._layer[n] = (sum(o.ops for o in ops), sum(o.time_s for o in ops))
        return self._layer[n]

    def prefill(self, tokens_per_layer: Sequence[int]) -> Tuple[float, float]:
        flops, time_s = self._head
        for n in tokens_per_layer:
            f, t = self.layer(n)
            flops, time_s = flops + f, time_s + t
        return flops, time_s


def evaluate(setting: Setting, model: CostModel, frames: int, tokens_per_frame: int, text_tokens: int,
             newline_tokens: int, convention: str, merge_count: str = "official") -> Candidate:
    kept = merged_token_count(tokens_per_frame, setting.retention, count_rule(convention, merge_count))
    v0 = frames * kept + newline_tokens
    visual = visual_tokens_per_layer(v0, model.llm.layers, setting.l1, setting.l2, convention)
    flops, time_s = model.prefill([text_tokens + v for v in visual])
    return Candidate(setting, kept, visual, flops, time_s)


def plan(
    target: Target,
    llm: LLMShape,
    frames: int = 32,
    tokens_per_frame: int = 196,
    text_tokens: int = 100,
    newline_tokens: int = 0,
    convention: str = "runtime",
    hardware: Any = "nvidia_A100",
    options: Optional[RooflineOptions] = None,
    progress: Optional[Callable[[Iterable], Iterable]] = None,
    vision: Any = None,
    merge_count: str = "official",
) -> Plan:
    """Choose an AIM setting for ``target`` by the rule in this module's docstring.

    ``vision`` is accepted so that ``analyze``'s input options pass straight through; the
    planner budgets the LLM prefill only (the encoder cost does not depend on the setting).
    """
    for name, value, minimum in (("frames", frames, 1), ("tokens_per_frame", tokens_per_frame, 1),
                                 ("text_tokens", text_tokens, 0), ("newline_tokens", newline_tokens, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise AIMConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    model = CostModel(llm, get_hardware(hardware), options or RooflineOptions())
    if merge_count not in ("official", "exact"):
        raise AIMConfigError(f"merge_count must be 'official' or 'exact', got {merge_count!r}")
    shape = dict(frames=frames, tokens_per_frame=tokens_per_frame, text_tokens=text_tokens,
                 newline_tokens=newline_tokens, convention=convention, merge_count=merge_count)
    baseline = evaluate(Setting(1.0, None, None, "no AIM"), model, **shape)
    inputs = {"llm": llm.name, "layers": llm.layers, "hardware": model.hardware.name, **shape}

    def best(settings: List[Setting], pool: str) -> Tuple[Optional[Plan], Candidate]:
        iterable = progress(settings) if progress is not None else settings
        candidates = [evaluate(s, model, **shape) for s in iterable]
        cheapest = min(candidates, key=lambda c: (c.prefill_flops, -c.visual_token_layers))
        meeting = sorted((c for c in candidates if target.met_by(c, baseline)), key=Candidate.rank_key, reverse=True)
        if not meeting:
            return None, cheapest
        return Plan(target, True, meeting[0], baseline, cheapest, pool, len(meeting), len(candidates),
                    alternatives=meeting[1:4], inputs=inputs), cheapest

    llava15 = vision is not None and getattr(vision, "class_token", False)
    result, _ = best(validated_settings(llm.layers, llava15), "paper-validated")
    if result is not None:
        return result
    result, cheapest = best(extended_settings(llm.layers, tokens_per_frame), "extended grid")
    if result is not None:
        return result
    return Plan(target, False, None, baseline, cheapest, "extended grid", 0, 0, inputs=inputs)
