"""Write docs/comparison.md: every registered method at two budgets on LLaVA-OneVision-7B, predicted,
and all of them measured on this CPU in one ``llava-aim bench --methods`` run.

    python -m llava.bench.comparison                    # predicted tables only (seconds)
    python -m llava.bench.comparison --measure          # also one bench run of every method (minutes)
    python -m llava.bench.comparison --bench-json FILE  # the measured part from a saved `bench --json` report
    make comparison                                     # --measure

The methods are llava.aim.policy's registry (``SPECS``): a method registered later appears with
no edit here. A method's budget is its ``retention`` knob (the fraction of each video's visual
tokens that enter the LLM; llava.aim.knobs.budget_knob), its token flow and cost come from its
registry entry through the analyzer (llava.analysis.roofline). Budgets:

* before-the-LLM methods and AIM: the budget knob at 25% and 10% (AIM keeps its default
  pruning schedule on top); a method that takes no budget (PruMerge) runs at its own count;
* methods that drop tokens inside the LLM (FastV, VTW, PDrop: every visual token enters the LLM)
  are matched to the LLM prefill FLOPs of keeping that fraction of the tokens without pruning
  (their one knob, llava.analysis.matching.match_budget).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from llava.aim.config import AIMConfig
from llava.aim.policy import SPECS, aim_default_layers, describe, spec, video_reduction
from llava.analysis.matching import match_budget
from llava.analysis.roofline import Analysis, analyze, config_arguments
from llava.analysis.shapes import get_llm
from llava.errors import AIMConfigError

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "docs" / "comparison.md"
BUDGETS = (0.25, 0.1)
LLM, FRAMES, TOKENS, TEXT, HARDWARE = "qwen2-7b", 32, 196, 100, "nvidia_A100"
BENCH_ARGS = ["bench", "--model", "small", "--lm-only", "--methods", "all", "--json"]


def _common() -> Dict[str, Any]:
    return dict(llm=LLM, frames=FRAMES, tokens_per_frame=TOKENS, text_tokens=TEXT, hardware=HARDWARE)


def at_budget(method: str, budget: float) -> Dict[str, Any]:
    """One predicted row: ``method`` at ``budget`` (the module docstring's rules)."""
    common, layers = _common(), get_llm(LLM).layers
    schedule = spec(method).schedule
    if video_reduction(method) is not None:  # its budget is what it lets in (an inner drop, HoliTom's, on top)
        try:
            cfg, how = AIMConfig.for_method(method, retention=budget), "budget knob"
        except AIMConfigError:  # no budget knob (DyCoke's count is set by its k): its own count
            cfg, how = AIMConfig.for_method(method), "its own count"
        cfg = cfg.resolve_layers(layers) if cfg.layers_auto else cfg
        return _row(method, budget, cfg, analyze(**config_arguments(cfg), **common), how)
    if schedule == "steps":
        target = analyze(retention=budget, **common).prefill_flops  # that fraction of the tokens, no pruning
        found = match_budget(method, target, **common)
        if found is None:
            return {"method": method, "budget": budget, "note": f"no {method} setting reaches {target / 1e12:.2f} "
                    "TFLOPs: the layers before its first drop already cost more"}
        s = found.settings
        cfg = AIMConfig.for_method(method, drop_layers=tuple(s["resolved_drop_layers"]), drop_ratio=s["drop_ratio"])
        return _row(method, budget, cfg, found, "matched TFLOPs")
    l1, l2 = aim_default_layers(layers) if schedule == "linear" else (None, None)
    try:
        cfg = AIMConfig(method=method, retention=budget, l1=l1, l2=l2)
        how = "budget knob"
    except AIMConfigError:  # no budget knob (PruMerge): its own count
        cfg, how = AIMConfig.for_method(method, l1=None, l2=None), "its own count"
    result = analyze(retention=cfg.retention, l1=cfg.l1, l2=cfg.l2, method=method, **common)
    return _row(method, budget, cfg, result, how)


def _row(method: str, budget: float, cfg: AIMConfig, result: Analysis, how: str) -> Dict[str, Any]:
    base = result.without_aim()
    return {"method": method, "budget": budget, "how": how, "setting": describe(cfg, result.llm.layers),
            "visual_tokens": result.settings["visual_tokens"], "tflops": result.prefill_tflops,
            "ms": result.prefill_ms, "speedup": base.prefill_time_s / result.prefill_time_s,
            "overhead_gflops": result.aim_overhead.flops / 1e9}


def predicted_rows(methods: Sequence[str]) -> List[Dict[str, Any]]:
    rows = []
    for method in methods:
        seen = set()
        for budget in BUDGETS:
            row = at_budget(method, budget)
            key = (row.get("setting"), row.get("how"))
            if row.get("how") == "its own count" and key in seen:
                continue  # one row for a method with no budget
            seen.add(key)
            rows.append(row)
    return rows


def method_doc(method: str) -> str:
    """A link to the method's page (docs/methods/<method>.md) where it exists."""
    page = ROOT / "docs" / "methods" / f"{method}.md"
    return f"[methods/{method}.md](methods/{method}.md)" if page.is_file() else "–"


def render(methods: Sequence[str], rows: List[Dict[str, Any]], bench: Optional[Dict[str, Any]]) -> str:
    base = analyze(**_common())
    lines = [
        "# Every method at matched budgets",
        "",
        "Generated by `python -m llava.bench.comparison` (`make comparison`); do not edit by hand.",
        f"Date: {datetime.date.today().isoformat()}; python {platform.python_version()}.",
        "",
        "All methods run in the same harness: the same stock transformers model and attention backend, real",
        "removal of tokens, one FLOPs accounting. Each method is a registry entry (llava.aim.registry) whose token",
        "flow (`nominal`) and cost the analyzer reads, so the tables below list every registered method.",
        "Accuracy of the 2025 comparison on LLaVA-OneVision-7B: `python scripts/paper_tables.py --list comparison/`",
        "(the runs) and `python scripts/collect_results.py --paper eval_results/paper` (the table).",
        "",
        "## Methods",
        "",
        "| method | name | source | page |",
        "|---|---|---|---|",
    ]
    lines += [f"| {m} | {SPECS[m].title} | {SPECS[m].source} | {method_doc(m)} |" for m in methods]
    lines += [
        "",
        "Other baselines and controls: [baselines.md](baselines.md).",
        "",
        f"## Predicted: LLaVA-OneVision-7B ({LLM}), {FRAMES} frames x {TOKENS} tokens + {TEXT} text tokens, "
        f"{HARDWARE} roofline",
        "",
        "Budget: the fraction of each video's visual tokens entering the LLM (the `retention` knob; AIM keeps",
        "its pruning schedule on top). FastV / VTW / PDrop let every token in and drop inside the LLM: their",
        "knob is matched to the TFLOPs of that fraction without pruning (`llava-aim plan --method M",
        "--match-tflops X`); `llava-aim plan --method M --match-tokens N` sets any method at equal tokens.",
        f"Without reduction: {base.settings['visual_tokens']} visual tokens, {base.prefill_tflops:.2f} TFLOPs, "
        f"{base.prefill_ms:.1f} ms. Own work: the method's scoring and merging (the analyzer's count), not in",
        "the prefill figures.",
        "",
        "| method | budget | setting | tokens into the LLM | LLM prefill TFLOPs | roofline ms | faster | own work GFLOPs |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        budget = f"{100 * r['budget']:g}%"
        if "note" in r:
            lines.append(f"| {r['method']} | {budget} | {r['note']} | | | | | |")
            continue
        if r["how"] == "its own count":
            budget = "own count"
        elif r["how"] == "matched TFLOPs":
            budget += " (TFLOPs)"
        lines.append(f"| {r['method']} | {budget} | {r['setting']} | {r['visual_tokens']} | {r['tflops']:.2f} | "
                     f"{r['ms']:.1f} | {r['speedup']:.2f}x | {r['overhead_gflops']:.2f} |")
    lines += ["", "## Measured on this CPU: all methods in one `llava-aim bench --methods` run", ""]
    lines += measured_section(bench) if bench else [
        "Not measured in this generation: `python -m llava.bench.comparison --measure` runs "
        f"`llava-aim {' '.join(BENCH_ARGS)}` and writes its figures here."]
    return "\n".join(lines) + "\n"


def measured_section(r: Dict[str, Any]) -> List[str]:
    from llava.bench.load import describe as describe_load
    from llava.bench.report import describe_input

    lm = r["language_model"]
    lines = [
        f"`llava-aim {' '.join(r.get('argv') or BENCH_ARGS)}` on {r['date']}: {r['device']}, {r['threads']} threads, "
        f"torch {r['versions']['torch']}, transformers {r['versions']['transformers']}, {r['dtype']}, {r['attn']}.",
        f"Model: {r.get('model')} ({lm['layers']} layers, hidden {lm['hidden']}, random weights: the timings are real, "
        f"the answers are not); input: {describe_input(r['input'])}. Medians of {r['repeats']} interleaved rounds "
        "(round-robin over all configurations, so machine noise hits all alike).",
        describe_load(r["load"]) if r.get("load") else "",
        "",
        "| configuration | setting | LLM input | sum N_j | median ms | speed-up | predicted speed-up |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    from llava.bench.cases import CASE_LABELS

    settings = {**CASE_LABELS, **{name: o["setting"] for name, o in r.get("method_overheads", {}).items()}}
    for row in r["language_model_prefill"]:
        lines.append(f"| {row['name']} | {settings.get(row['name'], '')} | {row['llm_input_tokens']} | "
                     f"{row['sum_tokens']} | {row['median_ms']:.1f} | {row['speedup']:.2f}x | "
                     f"{r['predicted'][row['name']]['speedup']:.2f}x |")
    o = r["overhead"]
    lines += [
        "",
        "Each method's own work, measured apart from its timed prefills (median ms): its score inside",
        "instrumented prefills, its reduction on random frames of the model's width (n/a: it runs only inside",
        "a vision tower's hook, which the LM-only run does not have).",
        "",
        "| method | score ms | reduction ms |",
        "|---|---:|---:|",
        f"| aim | {o['importance_ms']:.1f} | {o['merging_ms']:.1f} |",
    ]
    for name, m in r.get("method_overheads", {}).items():
        red = "n/a" if m["reduction_ms"] is None else f"{m['reduction_ms']:.1f}"
        lines.append(f"| {name} | {m['importance_ms']:.1f} | {red} |")
    return lines


def run_bench(repeats: int, frames: int) -> Dict[str, Any]:
    """One ``llava-aim bench --methods all`` run in this process; its JSON report."""
    import contextlib
    import io

    from llava.cli import main

    argv = BENCH_ARGS + ["--repeats", str(repeats), "--frames", str(frames)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    if code != 0:
        raise SystemExit(f"comparison: llava-aim {' '.join(argv)} failed (exit {code})")
    return dict(json.loads(out.getvalue()), argv=argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llava.bench.comparison", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    how = p.add_mutually_exclusive_group()
    how.add_argument("--measure", action="store_true", help="run the CPU measurement (one bench run, minutes)")
    how.add_argument("--bench-json", help="the measured part from a saved `llava-aim bench --methods ... --json`")
    p.add_argument("--repeats", type=int, default=5, help="--measure: interleaved rounds (default 5)")
    p.add_argument("--frames", type=int, default=8, help="--measure: frames of the CPU run (default 8)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="default docs/comparison.md")
    args = p.parse_args(argv)
    methods = list(SPECS)
    bench = None
    if args.bench_json:
        try:
            bench = json.loads(Path(args.bench_json).read_text())
        except (OSError, ValueError) as exc:
            print(f"comparison: error: --bench-json {args.bench_json}: {exc}", file=sys.stderr)
            return 2
    elif args.measure:
        bench = run_bench(args.repeats, args.frames)
    text = render(methods, predicted_rows(methods), bench)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:  # never a half-written table
        f.write(text)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
