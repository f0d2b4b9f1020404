"""``llava-aim flops``: the roofline FLOPs / prefill-time model from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from llava.analysis.hardware import HARDWARE
from llava.analysis.roofline import (
    PAPER_L1,
    PAPER_L2,
    PAPER_LAYERS,
    PAPER_RETENTION,
    Analysis,
    RooflineOptions,
    analyze,
    paper_default_layers,
)
from llava.analysis.shapes import BUILTIN_LLMS, BUILTIN_VISION, get_llm, get_vision
from llava.errors import AIMConfigError


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Model, input, hardware and precision options shared by ``flops`` and ``plan``."""
    p.add_argument("--llm", default="qwen2-7b",
                   help=f"built-in ({', '.join(sorted(BUILTIN_LLMS))}) or a local config.json / model directory")
    p.add_argument("--frames", type=int, default=32, help="frames (images: 1)")
    p.add_argument("--tokens-per-frame", type=int, default=196, help="visual tokens per frame before merging")
    p.add_argument("--text-tokens", type=int, default=100, help="text tokens (never pruned)")
    p.add_argument("--newline-tokens", type=int, default=0,
                   help="extra visual tokens per prompt (LLaVA-OneVision's runtime appends 1 after a video; "
                        "default 0 as the paper's 100 + 32*196)")
    p.add_argument("--hardware", default="nvidia_A100",
                   help=f"{', '.join(HARDWARE)} or custom:FLOPS:BW (FLOP/s and bytes/s)")
    p.add_argument("--paper-convention", action="store_true",
                   help="count the schedule as the paper's FLOPs script (one layer earlier)")
    p.add_argument("--flash-attention", action="store_true",
                   help="fused attention: no N x N scores stored or loaded")
    p.add_argument("--include-mlp-add", action="store_true",
                   help="count the second residual add (left out of the paper's figures)")
    p.add_argument("--weight-bytes", type=float, default=2)
    p.add_argument("--act-bytes", type=float, default=2)
    p.add_argument("--kv-bytes", type=float, default=2)
    p.add_argument("--vision", default=None, choices=sorted(BUILTIN_VISION),
                   help="vision tower for the separately reported encoder cost (default: the LLM's pair)")


def analysis_inputs(args: argparse.Namespace) -> Dict[str, Any]:
    """``analyze`` keyword arguments from the options of :func:`add_model_options`."""
    return dict(
        llm=get_llm(args.llm), frames=args.frames, tokens_per_frame=args.tokens_per_frame,
        text_tokens=args.text_tokens, newline_tokens=args.newline_tokens,
        convention="paper" if args.paper_convention else "runtime", hardware=args.hardware,
        options=RooflineOptions(weight_bytes=args.weight_bytes, act_bytes=args.act_bytes, kv_bytes=args.kv_bytes,
                                flash_attention=args.flash_attention, include_mlp_add=args.include_mlp_add),
        vision=get_vision(args.vision, args.llm),
    )


def add_flops_command(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "flops",
        help="roofline LLM prefill FLOPs and time with and without AIM",
        description=(
            "Analytic roofline model of the language model's prefill (docs: EFFICIENCY_MODEL.md), "
            "as the paper's figures. AIM defaults to the paper's setting (retention 0.25, "
            "l1=14, l2=22 on 28 layers; scaled for other depths)."
        ),
    )
    p.add_argument("--retention", type=float, default=None, help="merging retention in (0, 1] (default 0.25)")
    p.add_argument("--l1", type=int, default=None, help="first pruning layer (0-based)")
    p.add_argument("--l2", type=int, default=None, help="first layer without visual tokens")
    p.add_argument("--no-prune", action="store_true", help="merging only, no in-LLM pruning")
    add_model_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_flops)
    return p


def resolve_aim_settings(num_layers: int, retention: Optional[float], l1: Optional[int], l2: Optional[int],
                         no_prune: bool) -> Tuple[float, Optional[int], Optional[int], List[str]]:
    """Fill unset AIM options with the paper's defaults; returns (retention, l1, l2, notes)."""
    notes: List[str] = []
    if retention is None:
        retention = PAPER_RETENTION
    if no_prune:
        if l1 is not None or l2 is not None:
            raise AIMConfigError("--no-prune cannot be combined with --l1/--l2")
        return retention, None, None, notes
    if (l1 is None) != (l2 is None):
        raise AIMConfigError("give --l1 and --l2 together (or neither, for the paper's schedule)")
    if l1 is None:
        l1, l2 = paper_default_layers(num_layers)
        if num_layers != PAPER_LAYERS:
            notes.append(
                f"l1={l1}, l2={l2}: the paper's {PAPER_L1}/{PAPER_L2} of {PAPER_LAYERS} layers scaled to "
                f"{num_layers} layers (round({PAPER_L1}/{PAPER_LAYERS}*L), round({PAPER_L2}/{PAPER_LAYERS}*L))"
            )
    return retention, l1, l2, notes


def run_flops(args: argparse.Namespace) -> int:
    inputs = analysis_inputs(args)
    retention, l1, l2, notes = resolve_aim_settings(inputs["llm"].layers, args.retention, args.l1, args.l2,
                                                    args.no_prune)
    result = analyze(retention=retention, l1=l1, l2=l2, **inputs)
    result.notes.extend(notes)
    baseline = result.without_aim()
    report = flops_report(result, baseline)
    if args.json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        sys.stdout.write(format_report(result, baseline) + "\n")
    return 0


def flops_report(result: Analysis, baseline: Analysis) -> Dict[str, Any]:
    """The JSON object of ``flops --json``."""
    s = result.settings
    return {
        "llm": result.llm.to_dict(),
        "hardware": result.hardware.to_dict(),
        "frames": s["frames"], "tokens_per_frame": s["tokens_per_frame"],
        "tokens_per_frame_kept": s["tokens_per_frame_kept"], "text_tokens": s["text_tokens"],
        "newline_tokens": s["newline_tokens"], "retention": s["retention"], "l1": s["l1"], "l2": s["l2"],
        "convention": s["convention"], "vision_tower": s["vision_tower"],
        "options": result.options.to_dict(),
        "tokens_per_layer": result.tokens_per_layer,
        "visual_tokens_per_layer": result.visual_tokens_per_layer,
        "pruning_layers": result.pruning_layers,
        "prefill_flops": result.prefill_flops,
        "prefill_tflops": result.prefill_tflops,
        "prefill_ms": result.prefill_ms,
        "baseline_tokens_per_layer": baseline.tokens_per_layer,
        "baseline_prefill_tflops": baseline.prefill_tflops,
        "baseline_prefill_ms": baseline.prefill_ms,
        "speedup": baseline.prefill_time_s / result.prefill_time_s,
        "flops_reduction": baseline.prefill_flops / result.prefill_flops,
        "decode_step_ms": result.decode.time_s * 1e3,
        "baseline_decode_step_ms": baseline.decode.time_s * 1e3,
        "kv_cache_bytes": result.kv_cache_bytes,
        "baseline_kv_cache_bytes": baseline.kv_cache_bytes,
        "vision_encoder_tflops": result.vision_encoder.flops / 1e12,
        "vision_encoder_ms": result.vision_encoder.time_s * 1e3,
        "aim_overhead_tflops": result.aim_overhead.flops / 1e12,
        "aim_overhead_ms": result.aim_overhead.time_s * 1e3,
        "aim_overhead_fraction": result.aim_overhead.flops / result.prefill_flops,
        "op_totals": result.prefill.op_totals(),
        "notes": result.notes,
    }


def compact_counts(counts: Sequence[int]) -> str:
    """Per-layer counts as runs: '0-13: 1668 | 14: 1472 | ... | 21-27: 100'."""
    parts, start = [], 0
    for j in range(1, len(counts) + 1):
        if j == len(counts) or counts[j] != counts[start]:
            layers = f"{start}" if j - 1 == start else f"{start}-{j - 1}"
            parts.append(f"{layers}: {counts[start]}")
            start = j
    return " | ".join(parts)


def format_report(result: Analysis, baseline: Analysis) -> str:
    s = result.settings
    if s["l1"] is None:
        prune = "no pruning"
    else:
        prune = f"prune after layers {s['l1']}..{s['l2'] - 1} (l1={s['l1']}, l2={s['l2']})"
    merge = "no merging" if s["retention"] >= 1.0 else f"retention {s['retention']:g} ({s['tokens_per_frame_kept']} tokens/frame)"
    mib = 2.0 ** 20
    rows = [
        ("LLM prefill TFLOPs", f"{result.prefill_tflops:.3f}", f"{baseline.prefill_tflops:.3f}",
         f"{baseline.prefill_flops / result.prefill_flops:.2f}x fewer"),
        ("LLM prefill ms (roofline)", f"{result.prefill_ms:.2f}", f"{baseline.prefill_ms:.2f}",
         f"{baseline.prefill_time_s / result.prefill_time_s:.2f}x faster"),
        ("first decode step ms", f"{result.decode.time_s * 1e3:.3f}", f"{baseline.decode.time_s * 1e3:.3f}", ""),
        ("KV cache MiB", f"{result.kv_cache_bytes / mib:.1f}", f"{baseline.kv_cache_bytes / mib:.1f}",
         f"{baseline.kv_cache_bytes / result.kv_cache_bytes:.2f}x smaller" if result.kv_cache_bytes else ""),
    ]
    w0 = max(len(r[0]) for r in rows)
    lines = [
        f"llava-aim flops: {result.llm.describe()} on {result.hardware.describe()}",
        f"input: {s['frames']} frames x {s['tokens_per_frame']} tokens + {s['text_tokens']} text tokens"
        + (f" + {s['newline_tokens']} newline" if s["newline_tokens"] else ""),
        f"AIM: {merge}; {prune}; {s['convention']} convention"
        + ("; flash-attention" if result.options.flash_attention else ""),
        f"tokens per layer (AIM): {compact_counts(result.tokens_per_layer)}",
        f"tokens per layer (without AIM): {compact_counts(baseline.tokens_per_layer)}",
        "",
        f"{'':<{w0}}  {'AIM':>12}  {'without AIM':>12}",
    ]
    lines += [f"{a:<{w0}}  {b:>12}  {c:>12}  {d}".rstrip() for a, b, c, d in rows]
    enc = result.vision_encoder
    lines += [
        "",
        "reported separately (not in the figures above):",
        f"  vision encoder + projector ({s['vision_tower']}, {s['frames']} frames): "
        f"{enc.flops / 1e12:.3f} TFLOPs, {enc.time_s * 1e3:.2f} ms",
        f"  AIM overhead (merging + importance): {result.aim_overhead.flops / 1e12:.4f} TFLOPs "
        f"({100 * result.aim_overhead.flops / result.prefill_flops:.2f}% of the AIM prefill), "
        f"{result.aim_overhead.time_s * 1e3:.2f} ms",
        "",
    ]
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


# --- llava-aim plan ----------------------------------------------------------------------------


def add_plan_command(subparsers: Any) -> argparse.ArgumentParser:
    from llava.analysis import plan as plan_module

    p = subparsers.add_parser(
        "plan",
        help="choose retention, l1, l2 for a FLOPs budget or a target speed-up",
        description=plan_module.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--budget-tflops", type=float, help="largest acceptable LLM prefill cost, TFLOPs")
    target.add_argument("--speedup", type=float, help="smallest acceptable predicted prefill speed-up vs no AIM")
    add_model_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_plan)
    return p


def run_plan(args: argparse.Namespace) -> int:
    from llava.analysis.plan import Target, plan

    target = Target(budget_tflops=args.budget_tflops, speedup=args.speedup)
    inputs = analysis_inputs(args)
    progress = None
    if not args.json and sys.stderr.isatty():
        from tqdm import tqdm

        progress = lambda items: tqdm(items, desc="planning", unit="setting", leave=False)  # noqa: E731
    result = plan(target, progress=progress, **inputs)
    if args.json:
        sys.stdout.write(json.dumps(result.to_dict()) + "\n")
        return 0 if result.feasible else 2
    if not result.feasible:
        sys.stderr.write(f"llava-aim plan: {result.reason()}\n")
        return 2
    sys.stdout.write(format_plan(result) + "\n")
    return 0


def format_plan(result) -> str:
    c, base, i = result.choice, result.baseline, result.inputs
    s = c.setting
    tag = "paper-validated" if s.validated else "NOT validated by the paper"
    lines = [
        f"llava-aim plan: {i['llm']} ({i['layers']} layers) on {i['hardware']}; {i['frames']} frames x "
        f"{i['tokens_per_frame']} tokens + {i['text_tokens']} text tokens; {i['convention']} convention",
        f"target : {result.target.describe()}",
        f"without AIM: {base.prefill_flops / 1e12:.3f} TFLOPs, {base.prefill_time_s * 1e3:.2f} ms",
        f"choice : {s.describe()}  [{tag}]",
        f"         {c.tokens_per_frame_kept} tokens/frame; {c.prefill_flops / 1e12:.3f} TFLOPs "
        f"({base.prefill_flops / c.prefill_flops:.2f}x fewer), {c.prefill_time_s * 1e3:.2f} ms "
        f"({base.prefill_time_s / c.prefill_time_s:.2f}x faster)",
        f"         visual tokens per layer: {compact_counts(c.visual_tokens_per_layer)}",
        f"why    : {result.reason()}",
    ]
    if s.l1 is not None or s.retention < 1:
        flags = f"--retention {s.retention:g}" + (f" --l1 {s.l1} --l2 {s.l2}" if s.l1 is not None else " --no-prune")
        lines.append(f"use    : llava-aim run {flags}   (AIMConfig(retention={s.retention:g}, l1={s.l1}, l2={s.l2}))")
    if result.alternatives:
        lines.append("next best (also meet the target):")
        for a in result.alternatives:
            lines.append(f"  {a.setting.describe():<40} {a.prefill_flops / 1e12:8.3f} TFLOPs "
                         f"{base.prefill_time_s / a.prefill_time_s:6.2f}x  visual token-layers {a.visual_token_layers}")
    return "\n".join(lines)
