"""Matched budgets for the baselines: the parameter of FastV / VTW / PyramidDrop that spends at
most a given LLM prefill FLOPs (``llava-aim plan --method``, llava.bench.comparison);
and the paper's efficiency-table rows a ``llava-aim flops`` setting corresponds to, with the
flags that reproduce the row's printed figures (:func:`paper_row_match`).

Each baseline keeps its paper's structure and tunes its one free knob, as its paper does:
FastV keeps K and varies the ratio R; PyramidDrop keeps its layers and varies lambda; VTW
varies the withdrawal layer K. Among the values that fit the budget, the one that leaves the
LLM the most visual token-layers wins (the planner's rule). AIM and its controls (random,
pool) use the AIM planner: their FLOPs are AIM's for the same schedule.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from llava.aim.policy import drop_layers_for
from llava.analysis.roofline import Analysis, RooflineOptions, analyze
from llava.analysis.shapes import LLMShape, get_llm
from llava.errors import AIMConfigError

RATIO_STEPS = 100  # R / lambda tried in steps of 1/100


def baseline_candidates(method: str, num_layers: int, drop_layers: Optional[Sequence[int]] = None
                        ) -> List[Dict[str, Any]]:
    """The analyze() settings a baseline's knob can take."""
    if method == "vtw":
        return [dict(method="vtw", drop_layers=(k,)) for k in range(1, num_layers)]
    if method in ("fastv", "pdrop"):
        layers = drop_layers_for(method, None if drop_layers is None else tuple(drop_layers), num_layers)
        top = RATIO_STEPS if method == "fastv" else RATIO_STEPS - 1  # pdrop: lambda < 1
        return [dict(method=method, drop_layers=layers, drop_ratio=i / RATIO_STEPS) for i in range(1, top + 1)]
    raise AIMConfigError(f"budget matching by knob is for fastv, vtw, pdrop; {method} uses the AIM planner")


def match_budget(method: str, budget_flops: Optional[float] = None, drop_layers: Optional[Sequence[int]] = None,
                 max_time_s: Optional[float] = None, **inputs: Any) -> Optional[Analysis]:
    """The cheapest-enough setting of ``method``: prefill FLOPs <= ``budget_flops`` (and roofline
    time <= ``max_time_s`` when given) with the most visual token-layers (ties: the first
    candidate). None when no value fits. ``inputs`` are analyze()'s model, input and hardware
    arguments (llm, frames, tokens_per_frame, ...)."""
    num_layers = get_llm(inputs.get("llm", "qwen2-7b")).layers
    inputs.setdefault("retention", 1.0)  # the baselines as published: no merging
    best: Optional[Analysis] = None
    for setting in baseline_candidates(method, num_layers, drop_layers):
        result = analyze(**setting, **inputs)
        if budget_flops is not None and result.prefill_flops > budget_flops:
            continue
        if max_time_s is not None and result.prefill_time_s > max_time_s:
            continue
        if best is None or sum(result.visual_tokens_per_layer) > sum(best.visual_tokens_per_layer):
            best = result
    return best


# --- the paper's efficiency-table rows ---------------------------------------------------------

PAPER_TABLES = Path(__file__).resolve().parents[1] / "eval" / "paper" / "tables.json"
PAPER_HARDWARE = "nvidia_A100"


@dataclass(frozen=True)
class PaperRow:
    """An AIM (or no-AIM) row of the paper's efficiency tables and the analyze() setting behind it.

    ``include_mlp_add``: the table's ``include_mlp_add`` in tables.json. The LLaVA-1.5 rows'
    prefill ms are reproduced only when the second residual add is counted (the paper's image
    table; docs/efficiency_model.md); the LLaVA-OneVision rows leave it out.
    """

    name: str
    tflops: float
    prefill_ms: float
    llm: str
    frames: int
    tokens_per_frame: int
    text_tokens: int
    retention: float
    layers: Optional[Tuple[int, int]]  # (l1, l2); None: no pruning
    include_mlp_add: bool

    def analyze(self) -> Analysis:
        """The row counted as the paper counts it."""
        l1, l2 = self.layers if self.layers else (None, None)
        return analyze(self.llm, frames=self.frames, tokens_per_frame=self.tokens_per_frame,
                       text_tokens=self.text_tokens, retention=self.retention, l1=l1, l2=l2, convention="paper",
                       hardware=PAPER_HARDWARE, include_mlp_add=self.include_mlp_add)


_VIDEO = dict(llm="qwen2-7b", frames=32, tokens_per_frame=196)
_IMAGE = dict(llm="vicuna-7b", frames=1, tokens_per_frame=576)


def _row_setting(name: str) -> Optional[Dict[str, Any]]:
    """The setting of an AIM / no-AIM row from its name (scripts/paper_tables.py's rows); None
    for the baselines' rows, whose knobs were matched to the paper's TFLOPs, not given by it."""
    if name in ("video/baseline", "sweep/r1"):
        return dict(_VIDEO, retention=1.0, layers=None)
    if name == "video/longva":  # LongVA-7B: Qwen2-7B's shape, 128 frames x 144 tokens (CLIP-L/336 pooled 2 x 2)
        return dict(_VIDEO, frames=128, tokens_per_frame=144, retention=1.0, layers=None)
    if name == "video/aim":
        return dict(_VIDEO, retention=0.25, layers=(14, 22))
    if name == "long/aim-192":
        return dict(_VIDEO, frames=192, retention=0.25, layers=(14, 22))
    if name == "image/baseline":
        return dict(_IMAGE, retention=1.0, layers=None)
    budget = {"image/b1/aim": 0.4375, "image/b2/aim": 0.125}.get(name)
    if budget is not None:
        return dict(_IMAGE, retention=budget, layers=(13, 21))
    sweep = re.fullmatch(r"sweep/r([0-9.]+)(?:-(\d+)-(\d+))?", name)
    if sweep:
        layers = (int(sweep.group(2)), int(sweep.group(3))) if sweep.group(2) else None
        return dict(_VIDEO, retention=float(sweep.group(1)), layers=layers)
    ablation = re.fullmatch(r"ablation/(\d+)-(\d+)", name)
    if ablation:
        return dict(_VIDEO, retention=0.25, layers=(int(ablation.group(1)), int(ablation.group(2))))
    return None


def paper_rows(path: Path = PAPER_TABLES) -> List[PaperRow]:
    """Every AIM / no-AIM row of llava/eval/paper/tables.json with printed TFLOPs and ms, once."""
    rows: Dict[str, PaperRow] = {}
    for table in json.loads(Path(path).read_text())["tables"]:
        for entry in table["rows"]:
            setting, paper = _row_setting(entry["row"]), entry["paper"]
            if setting is None or entry["row"] in rows or "tflops" not in paper or "prefill_ms" not in paper:
                continue
            rows[entry["row"]] = PaperRow(entry["row"], paper["tflops"], paper["prefill_ms"],
                                          text_tokens=table["text_tokens"],
                                          include_mlp_add=bool(table.get("include_mlp_add", False)), **setting)
    return list(rows.values())


def _same_shape(a: LLMShape, b: LLMShape) -> bool:
    return replace(a, name="") == replace(b, name="")


def _pruned_layers(l1: Optional[int], l2: Optional[int], num_layers: int) -> Optional[Tuple[int, int]]:
    """(l1, l2), or None where nothing is pruned (no l1, or l1 at the model's depth)."""
    return None if l1 is None or l1 >= num_layers else (l1, l2)


def paper_row_match(result: Analysis) -> Optional[Dict[str, Any]]:
    """The paper row whose setting ``result`` counts (same model shape, input, retention and
    schedule; AIM only), with the flags that count it as the paper did and whether they
    reproduce its printed TFLOPs and ms (rounded to the printed digits). None: no such row."""
    s = result.settings
    if s["method"] != "aim":
        return None
    for row in paper_rows():
        if not (_same_shape(result.llm, get_llm(row.llm)) and s["frames"] == row.frames
                and s["tokens_per_frame"] == row.tokens_per_frame and abs(s["retention"] - row.retention) < 1e-9
                and _pruned_layers(s["l1"], s["l2"], result.llm.layers) == _pruned_layers(
                    *(row.layers or (None, None)), result.llm.layers)):
            continue
        counted = row.analyze()
        return {
            "row": row.name, "paper_tflops": row.tflops, "paper_prefill_ms": row.prefill_ms,
            "flags": _flags_for(result, row),
            "tflops": counted.prefill_tflops, "prefill_ms": counted.prefill_ms,
            "reproduced": (round(counted.prefill_tflops, 2) == row.tflops
                           and round(counted.prefill_ms, 2) == row.prefill_ms),
        }
    return None


def _flags_for(result: Analysis, row: PaperRow) -> List[str]:
    """The ``llava-aim flops`` flags to add or change so that ``result``'s setting is counted
    as ``row`` was in the paper."""
    s, o, flags = result.settings, result.options, []
    if s["convention"] != "paper":
        flags.append("--paper-convention")
    if s["text_tokens"] != row.text_tokens:
        flags.append(f"--text-tokens {row.text_tokens}")
    if s["newline_tokens"]:
        flags.append("--newline-tokens 0")
    if o.include_mlp_add != row.include_mlp_add:
        flags.append("--include-mlp-add" if row.include_mlp_add else "(without --include-mlp-add)")
    if o.flash_attention:
        flags.append("(without --flash-attention)")
    defaults = RooflineOptions()
    for name in ("weight_bytes", "act_bytes", "kv_bytes"):
        if getattr(o, name) != getattr(defaults, name):
            flags.append(f"--{name.replace('_', '-')} {getattr(defaults, name):g}")
    if result.hardware.name != PAPER_HARDWARE:
        flags.append(f"--hardware {PAPER_HARDWARE}")
    return flags


# --- matched budgets for any method: its budget knob (retention) at equal tokens or TFLOPs ------------


@dataclass(frozen=True)
class MatchTarget:
    """What a matched budget holds the method to: at most ``tokens`` visual tokens entering the LLM,
    at most ``tflops`` of LLM prefill, or at least ``speedup`` times faster than without reduction."""

    tokens: Optional[int] = None
    tflops: Optional[float] = None
    speedup: Optional[float] = None

    def __post_init__(self) -> None:
        given = [(n, v) for n, v in (("--match-tokens", self.tokens), ("--match-tflops", self.tflops),
                                     ("--speedup", self.speedup)) if v is not None]
        if len(given) != 1:
            raise AIMConfigError("give exactly one target: --match-tokens, --match-tflops (--budget-tflops) or --speedup")
        name, value = given[0]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value != value:
            raise AIMConfigError(f"{name} must be a positive number, got {value!r}")

    def met_by(self, result: Analysis, baseline: Analysis) -> bool:
        if self.tokens is not None:
            return result.settings["visual_tokens"] <= self.tokens
        if self.tflops is not None:
            return result.prefill_flops <= self.tflops * 1e12 * (1 + 1e-12)
        return baseline.prefill_time_s / result.prefill_time_s >= self.speedup * (1 - 1e-12)

    def describe(self) -> str:
        if self.tokens is not None:
            return f"<= {self.tokens} visual tokens entering the LLM"
        if self.tflops is not None:
            return f"LLM prefill <= {self.tflops:g} TFLOPs"
        return f">= {self.speedup:g}x faster than without reduction (roofline time)"


@dataclass
class BudgetMatch:
    """The answer of :func:`match_retention`: the chosen setting (None: none meets the target)."""

    method: str
    knob: str  # the budget knob's field (llava.aim.knobs.budget_knob)
    target: MatchTarget
    choice: Optional[Analysis]
    baseline: Analysis  # the same input without any reduction
    cheapest: Analysis  # the cheapest setting the method accepts
    accepted: int  # budget values the method accepts (1: a fixed count, no knob to tune)

    def to_dict(self) -> Dict[str, Any]:
        def figures(a: Analysis) -> Dict[str, Any]:
            return {self.knob: a.settings["retention"], "visual_tokens": a.settings["visual_tokens"],
                    "tokens_per_frame_kept": a.settings["tokens_per_frame_kept"],
                    "prefill_tflops": a.prefill_tflops, "prefill_ms": a.prefill_ms,
                    "speedup": self.baseline.prefill_time_s / a.prefill_time_s,
                    "visual_tokens_per_layer": list(a.visual_tokens_per_layer)}

        return {"method": self.method, "knob": self.knob, "target": self.target.describe(),
                "feasible": self.choice is not None, "tunable": self.accepted > 1,
                "choice": figures(self.choice) if self.choice is not None else None,
                "cheapest": figures(self.cheapest), "baseline": figures(self.baseline)}


def budget_grid(tokens_per_frame: int) -> List[float]:
    """The budget values tried, highest first: 1, then one per per-frame count k = T-1 .. 1, each
    k / T rounded up to 4 decimals (a value that reads back as k tokens: floor(T * r) = k)."""
    values = [math.ceil(k / tokens_per_frame * 1e4) / 1e4 for k in range(tokens_per_frame - 1, 0, -1)]
    return list(dict.fromkeys([1.0] + values))


def match_retention(method: str, target: MatchTarget, settings: Dict[str, Any], **inputs: Any) -> BudgetMatch:
    """The largest budget (retention: the fraction of the visual tokens entering the LLM) at which
    ``method`` meets ``target``. The method's token flow and cost are its registry entry's (the
    analyzer's generic path), so any registered method is matched the same way; ``settings`` are
    analyze()'s method arguments (its other knobs stay as given). The count grows with the budget,
    so the grid (:func:`budget_grid`) is bisected. A method that refuses budgets below 1 (its own
    fixed count, as PruMerge) is answered at its own setting."""
    from llava.aim.knobs import budget_knob
    from llava.analysis.roofline import CONFIG_ARGUMENTS

    knob = budget_knob()
    keyword = CONFIG_ARGUMENTS[knob]
    grid = budget_grid(inputs["tokens_per_frame"])
    counted: Dict[float, Analysis] = {}

    def at(value: float) -> Analysis:
        if value not in counted:
            counted[value] = analyze(**dict(settings, method=method, **{keyword: value}), **inputs)
        return counted[value]

    baseline = analyze(**inputs)
    try:
        cheapest = at(grid[-1])
    except AIMConfigError:  # no budget knob: the method's own count is the only candidate
        own = at(settings.get(keyword, 1.0))
        return BudgetMatch(method, knob, target, own if target.met_by(own, baseline) else None, baseline, own, 1)
    if not target.met_by(cheapest, baseline):
        return BudgetMatch(method, knob, target, None, baseline, cheapest, len(grid))
    low, high = 0, len(grid) - 1  # grid[high] meets; find the first (largest budget) that does
    while low < high:
        mid = (low + high) // 2
        if target.met_by(at(grid[mid]), baseline):
            high = mid
        else:
            low = mid + 1
    return BudgetMatch(method, knob, target, at(grid[high]), baseline, cheapest, len(grid))
