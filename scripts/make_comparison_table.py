"""Write docs/comparison.md: AIM vs FastV, VTW, PyramidDrop, LLaVA-PruMerge / PruMerge+ and two
controls at matched budgets.

Rows are methods; columns are the predicted LLM prefill (the roofline analyzer, the same
schedule function the runtime uses), the CPU-measured prefill of a small random-weight Qwen2
(llava.bench) and accuracy from lmms-eval results when a results folder is given
(``--results DIR``: every ``*.json`` with "results" and a "config"."model_args" naming
``method=``; blank otherwise). Each baseline appears twice: at its paper's default and with its
one knob tuned to AIM's FLOPs (llava.analysis.matching).

    python scripts/make_comparison_table.py                 # predicted + CPU measurement
    python scripts/make_comparison_table.py --no-measure    # predicted only (seconds)
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import re
import sys
from typing import Any, Dict, List, Optional

import torch

from llava.aim.config import AIMConfig
from llava.aim.policy import PRUMERGE_METHODS, SPECS, STEP_METHODS, describe
from llava.analysis.matching import match_budget
from llava.aim.policy import aim_default_layers
from llava.analysis.roofline import analyze
from llava.analysis.shapes import get_llm

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "docs", "comparison.md")


def rows_for(llm, frames: int, text: int, hardware: str) -> List[Dict[str, Any]]:
    """Predicted rows: baseline, AIM, controls, each baseline at its default and matched."""
    shape = get_llm(llm)
    l1, l2 = aim_default_layers(shape.layers)
    common = dict(llm=llm, frames=frames, text_tokens=text, hardware=hardware)
    base = analyze(**common)
    aim = analyze(retention=0.25, l1=l1, l2=l2, **common)
    rows = [("no reduction", AIMConfig.disabled(), base)]
    for method in ("aim", "random", "pool"):
        cfg = AIMConfig(method=method, retention=0.25, l1=l1, l2=l2)
        rows.append((f"{method}", cfg, analyze(retention=0.25, l1=l1, l2=l2, method=method, **common)))
    for method in STEP_METHODS:
        cfg = AIMConfig.for_method(method)
        rows.append((f"{method} (paper default)", cfg, analyze(method=method, **common)))
        matched = match_budget(method, aim.prefill_flops, **common)
        if matched is None:
            rows.append((f"{method} (matched)", None, None))
        else:
            s = matched.settings
            cfg = AIMConfig.for_method(method, drop_layers=tuple(s["resolved_drop_layers"]), drop_ratio=s["drop_ratio"])
            rows.append((f"{method} (matched)", cfg, matched))
    for method in PRUMERGE_METHODS:  # adaptive count: counted at the official ratio 1/8
        rows.append((f"{method} (ratio 1/8)", AIMConfig.for_method(method), analyze(method=method, **common)))
    out = []
    for name, cfg, result in rows:
        row: Dict[str, Any] = {"name": name, "cfg": cfg}
        if result is None:
            first = analyze(method=name.split(" ")[0], **common)
            stage = first.pruning_layers[0] + 1
            row["note"] = (f"no ratio reaches AIM's {aim.prefill_tflops:.2f} TFLOPs: the {stage} layers before its "
                           f"first drop already cost {stage / shape.layers * base.prefill_tflops:.2f}")
        else:
            row.update(setting=describe(cfg, shape.layers) if cfg.enabled or cfg.pruning else "stock model",
                       tflops=result.prefill_tflops, ms=result.prefill_ms,
                       reduction=base.prefill_flops / result.prefill_flops,
                       speedup=base.prefill_time_s / result.prefill_time_s,
                       overhead=result.aim_overhead.flops / result.prefill_flops)
        out.append(row)
    return out


def measure(rows: List[Dict[str, Any]], frames: int, text: int, repeats: int) -> Dict[str, Any]:
    """CPU prefill of a small random-weight Qwen2 (8 layers) for each row's method, the
    baselines' knobs re-matched to AIM's FLOPs on that model (same analyzer)."""
    from llava.bench import PrefillCase
    from llava.bench.measure import run_prefill_benchmark
    from llava.bench.models import build_lm, small_decoder_config

    config = small_decoder_config()
    layers = config.num_hidden_layers
    l1, l2 = aim_default_layers(layers)
    common = dict(llm=config, frames=frames, text_tokens=text, newline_tokens=1, hardware="nvidia_A100")
    aim = analyze(retention=0.25, l1=l1, l2=l2, **common)
    cases = [PrefillCase("no reduction", None, frames * 196 + 1, text)]
    for method in ("aim", "random", "pool"):
        cases.append(PrefillCase(method, AIMConfig(method=method, retention=0.25, l1=l1, l2=l2), frames * 49 + 1, text))
    for method in STEP_METHODS:
        cases.append(PrefillCase(f"{method} (paper default)", AIMConfig.for_method(method), frames * 196 + 1, text))
        matched = match_budget(method, aim.prefill_flops, **common)
        if matched is not None:
            s = matched.settings
            cfg = AIMConfig.for_method(method, drop_layers=tuple(s["resolved_drop_layers"]), drop_ratio=s["drop_ratio"])
            cases.append(PrefillCase(f"{method} (matched)", cfg, frames * 196 + 1, text))
    for method in PRUMERGE_METHODS:
        kept = analyze(method=method, **common).settings["tokens_per_frame_kept"]
        cases.append(PrefillCase(f"{method} (ratio 1/8)", AIMConfig.for_method(method), frames * kept + 1, text))
    lm = build_lm(config)
    run_prefill_benchmark(lm, cases, repeats=repeats, warmup=1, measure_memory=False)
    predicted = {}
    for c in cases:
        cfg = c.cfg or AIMConfig.disabled()
        predicted[c.name] = analyze(retention=cfg.retention, l1=cfg.l1, l2=cfg.l2, method=cfg.method,
                                    drop_layers=cfg.drop_layers, drop_ratio=cfg.drop_ratio, **common).prefill_flops
    return {"cases": cases, "predicted_flops": predicted, "layers": layers,
            "threads": torch.get_num_threads(),
            "describe": {c.name: describe(c.cfg, layers) if c.cfg else "stock model" for c in cases},
            "unmatched": [m for m in STEP_METHODS if f"{m} (matched)" not in {c.name for c in cases}]}


def accuracy(results_dir: Optional[str]) -> Dict[str, Dict[str, float]]:
    """{method: {task: score}} from lmms-eval results JSON files (first numeric metric per task)."""
    table: Dict[str, Dict[str, float]] = {}
    if not results_dir:
        return table
    for path in glob.glob(os.path.join(results_dir, "**", "*.json"), recursive=True):
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or "results" not in data:
            continue
        args = str(data.get("config", {}).get("model_args", ""))
        match = re.search(r"method=(\w+)", args)
        method = match.group(1) if match else ("no reduction" if re.search(r"aim=(0|false)", args) else "aim")
        for task, metrics in data["results"].items():
            values = [v for k, v in metrics.items() if isinstance(v, (int, float)) and "stderr" not in k
                      and k != "alias"]
            if values:
                table.setdefault(method, {})[task] = float(values[0])
    return table


def render(llm: str, frames: int, text: int, hardware: str, rows, measured, acc) -> str:
    tasks = sorted({t for scores in acc.values() for t in scores})
    lines = [
        "# AIM vs FastV, VTW, PyramidDrop, LLaVA-PruMerge, PruMerge+ and controls",
        "",
        "Generated by `scripts/make_comparison_table.py`; do not edit by hand.",
        f"Date: {datetime.date.today().isoformat()}; torch {torch.__version__}; python {platform.python_version()}.",
        "",
        "All methods run in the same harness: the same stock transformers model, the same attention",
        "backend (SDPA, no eager attention needed: FastV/PDrop scores come from the post-RoPE q/k that",
        "the attention wrapper already sees), the same FLOPs accounting (llava.analysis, counts from",
        "llava.aim.schedule) and real removal of pruned tokens for all.",
        "",
        "## Methods and defaults",
        "",
        "| method | source of the definition and default | what it does here |",
        "|---|---|---|",
    ]
    what = {
        "aim": "merge each frame to 1/4 (bipartite soft matching), prune linearly after layers l1..l2-1 by PageRank",
        "fastv": "layers >= K see the top (1-R) visual tokens by the last token's attention in layer K-1 (mean over heads)",
        "vtw": "no visual token from layer K on (no score)",
        "pdrop": "at each K_s keep (1-lambda) of the remaining visual tokens by the last instruction token's attention in layer K_s-1",
        "random": "AIM's merging and schedule; survivors by a seeded hash (control for the score)",
        "pool": "AIM's schedule and PageRank; spatial average pooling to the same per-frame count (control for merging)",
        "prumerge": "before the LLM: keep each frame's CLS-attention IQR outliers (Q3 + 1.5 IQR), each absorbing its "
                    "32 key-nearest patches, plus one token for the rest; no pruning inside the LLM",
        "prumerge_plus": "PruMerge plus spatially uniform samples (LLaVA-1.5; the official LLaVA-OneVision code leaves "
                         "the samples out, so there it equals prumerge)",
    }
    for name, s in SPECS.items():
        lines.append(f"| {name} | {s.source} | {what[name]} |")
    lines += [
        "",
        "Depth scaling (a project choice, stated where used): VTW's K=16 and PyramidDrop's 8/16/24 are",
        "given for 32-layer LLaVA-1.5-7B; on 28-layer Qwen2-7B they become round(K*28/32) = 14 and 7/14/21.",
        "FastV's K=2 is kept at 2 (the paper uses K=2 across models). Layers are 0-based and name the",
        "first layer that sees the reduced set; the score is read in the layer before it (FastV's code",
        "ranks with layer K-1's attention weights). PyramidDrop's code ranks with the next layer's",
        "projections of the current hidden states; here it uses layer K-1's own attention like FastV",
        "(one probe, no extra projection). At prefill the 'last instruction token' is the prompt's last",
        "token, so FastV and PyramidDrop share the score and differ in schedule. lambda is the fraction",
        "dropped per step; at the paper's 0.5, dropped and kept fractions coincide.",
        "",
        "PruMerge and PruMerge+ run as the official AIM code runs them: on LLaVA-OneVision on each frame's",
        "729 unpooled SigLIP features (no 2x2 pooling, no AIM merging), the CLS query being the mean of the",
        "feature layer's queries; on LLaVA-1.5 on CLIP's 576 features with the CLS query of the last layer;",
        "both adaptive (IQR). Their count depends on the content: the rows below count the official",
        "non-adaptive ratio 1/8 (`llava-aim flops --method prumerge`: 92 tokens per SigLIP frame, 729/8 + 1;",
        "73 / 145 per CLIP image for PruMerge / PruMerge+); pass `--kept-tokens N` with a run's",
        "`aim_stats.tokens_kept_per_frame` for the measured count. They have no knob to match a budget.",
        "",
        f"## Predicted: {llm}, {frames} frames x 196 tokens + {text} text tokens, {hardware} roofline",
        "",
        "Matched rows tune the method's one knob (FastV: R at K=2; VTW: K; PDrop: lambda at its layers) to",
        "the largest setting whose FLOPs do not exceed AIM's default (`llava-aim plan --method M",
        "--budget-tflops X`).",
        "",
        "| method | setting | LLM prefill TFLOPs | fewer FLOPs | roofline ms | faster | score/merge overhead |"
        + "".join(f" {t} |" for t in tasks),
        "|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(tasks),
    ]
    for r in rows:
        scores = "".join(f" {acc.get(r['name'].split(' ')[0], {}).get(t, ''):} |" for t in tasks)
        if "note" in r:
            lines.append(f"| {r['name']} | {r['note']} | | | | | |" + scores)
            continue
        lines.append(f"| {r['name']} | {r['setting']} | {r['tflops']:.2f} | {r['reduction']:.2f}x | {r['ms']:.1f} | "
                     f"{r['speedup']:.2f}x | {100 * r['overhead']:.3f}% |" + scores)
    if not tasks:
        lines += ["", "Accuracy: no lmms-eval results given (`--results DIR`); the columns appear when they are."]
    if measured:
        cases = measured["cases"]
        base = cases[0]
        lines += [
            "",
            f"## Measured on this CPU: small random-weight Qwen2 ({measured['layers']} layers, hidden 256), "
            f"{frames} frames, float32, SDPA",
            "",
            f"`llava.bench.measure.run_prefill_benchmark`, medians of interleaved rounds, {measured['threads']} threads, "
            f"{platform.processor() or platform.machine()}. Baselines re-matched to AIM's FLOPs on this model.",
            "Random weights: the timings are real, the model's answers are not; the shared machine adds noise.",
            "",
            "| method | setting | predicted GFLOPs | sum N_j | median ms | speed-up |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for c in cases:
            lines.append(f"| {c.name} | {measured['describe'][c.name]} | {measured['predicted_flops'][c.name] / 1e9:.1f} | "
                         f"{sum(c.tokens_per_layer)} | {1e3 * c.median_s:.1f} | {base.median_s / c.median_s:.2f}x |")
        if measured["unmatched"]:
            lines += ["", f"No matched row for {', '.join(measured['unmatched'])}: on {measured['layers']} layers the "
                      "layers before their first drop already cost more than AIM's whole prefill."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm", default="qwen2-7b")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--text-tokens", type=int, default=100)
    p.add_argument("--hardware", default="nvidia_A100")
    p.add_argument("--results", help="folder of lmms-eval results JSON files")
    p.add_argument("--no-measure", action="store_true", help="skip the CPU measurement")
    p.add_argument("--measure-frames", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=DEFAULT_OUT)
    args = p.parse_args(argv)
    rows = rows_for(args.llm, args.frames, args.text_tokens, args.hardware)
    measured = None if args.no_measure else measure(rows, args.measure_frames, args.text_tokens, args.repeats)
    text = render(args.llm, args.frames, args.text_tokens, args.hardware, rows, measured, accuracy(args.results))
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:  # never a half-written table
        f.write(text)
    os.replace(tmp, args.out)
    print(f"wrote {os.path.relpath(args.out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
