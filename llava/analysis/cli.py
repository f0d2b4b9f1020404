"""``llava-aim flops``: the roofline FLOPs / prefill-time model from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from llava.analysis.hardware import HARDWARE
from llava.analysis.matching import paper_row_match
from llava.aim.config import AIMConfig
from llava.analysis.roofline import (
    config_arguments,
    PAPER_L1,
    PAPER_L2,
    PAPER_LAYERS,
    PAPER_RETENTION,
    Analysis,
    RooflineOptions,
    analyze,
    reduction_figures,
)
from llava.aim.policy import (LLAVA15_OFFICIAL_LAYERS, SPECS, STEP_METHODS, aim_default_layers, check_typed_settings,
                              drop_layers_for, family_refusal, own_knobs, spec, video_reduction)
from llava.analysis.shapes import get_llm, get_vision, model_visual_tokens, reference_names, resolve_model, tower_names
from llava.aim.knobs import add_knob_flags, budget_knob, flag_of, model_arg_of
from llava.errors import AIMConfigError
from llava.flags import check_aim_flags, flag_errors, typed_knobs


def add_method_options(p: argparse.ArgumentParser) -> None:
    """``--kept-tokens``, PruMerge's count, shared by flops / run / bench / plan (the knobs
    --method, --drop-layers, --drop-ratio come from llava.aim.knobs.add_knob_flags)."""
    p.add_argument("--kept-tokens", type=int, default=None,
                   help="prumerge/prumerge_plus (flops, plan): tokens per frame, e.g. the mean of a run's "
                        "aim_stats.tokens_kept_per_frame (default: the count at the official ratio 1/8)")


def resolve_method_settings(num_layers: int, args: argparse.Namespace, vision=None) -> Dict[str, Any]:
    """``analyze``'s method keywords (retention / l1 / l2 / method / drop_layers / drop_ratio /
    pagerank_iters, kept_tokens) and notes from the CLI options, through the AIMConfig they
    resolve to (:func:`resolve_method_config`)."""
    cfg, notes = resolve_method_config(num_layers, args, vision)
    # merge_count: analysis_inputs passes the runtime convention (--merge-count) with the geometry
    settings = config_arguments(cfg, without=("merge_count",))
    return dict(settings, kept_tokens=getattr(args, "kept_tokens", None), notes=notes)


def resolve_method_config(num_layers: int, args: argparse.Namespace, vision=None) -> Tuple[AIMConfig, List[str]]:
    """The AIMConfig the CLI options ask for on a ``num_layers`` decoder, with concrete layers, and
    notes on the defaults it took. AIM and the controls take AIM's options and defaults; fastv /
    vtw / pdrop take their own (no merging unless --retention is given)."""
    method = getattr(args, "method", "aim")
    drop_layers, drop_ratio = getattr(args, "drop_layers", None), getattr(args, "drop_ratio", None)
    kept_tokens = getattr(args, "kept_tokens", None)
    with flag_errors():
        check_typed_settings(method, typed_knobs(args))
    if spec(method).schedule == "none":  # a reduction before the LLM only (PruMerge, ...): its registry entry
        notes = [] if kept_tokens is not None or not content_dependent(method) else [
            f"{method}: its count depends on the content; counted at its nominal count "
            "(pass --kept-tokens N with a run's tokens_kept_per_frame)"]
        budget = {} if args.retention is None else {"retention": args.retention}
        return _method_config(AIMConfig.for_method, method, l1=None, l2=None, **budget, **own_knobs(method, typed_knobs(args))), notes
    if kept_tokens is not None:
        raise AIMConfigError(f"--kept-tokens is the measured count of a reduction whose count depends on the "
                             f"content ({', '.join(m for m in SPECS if content_dependent(m))}), not of {method}")
    if video_reduction(method) is not None:  # before the LLM and a drop inside it (HoliTom): its budget and knobs
        budget = {} if args.retention is None else {"retention": args.retention}
        return _method_config(AIMConfig.for_method, method, **budget, **own_knobs(method, typed_knobs(args))), []
    if method in STEP_METHODS:
        notes = []
        if drop_layers is None:
            layers = drop_layers_for(method, None, num_layers)
            notes.append(f"{method}: drop layers {','.join(map(str, layers))} (the paper's default for "
                         f"{num_layers} layers; source: {spec(method).source})")
        retention = 1.0 if args.retention is None else args.retention
        return _method_config(AIMConfig.for_method, method, retention=retention, drop_layers=drop_layers,
                              drop_ratio=drop_ratio), notes
    official = LLAVA15_OFFICIAL_LAYERS.get(num_layers) if vision is not None and vision.class_token else None
    retention, l1, l2, notes = resolve_aim_settings(num_layers, args.retention, getattr(args, "l1", None),
                                                    getattr(args, "l2", None), getattr(args, "no_prune", False),
                                                    official)
    return _method_config(AIMConfig, method=method, retention=retention, l1=l1, l2=l2), notes


def content_dependent(method: str) -> bool:
    """The method's reduction gives a count that depends on the content: its entry reserves more
    placeholders (``bound``) than it nominally gives (``nominal``), at its defaults on 32 frames
    of 196 tokens (VisionZip and DyCoke have a bound equal to their fixed count)."""
    from llava.aim.registry import lookup

    entry = lookup(spec(method).reduction, "reduction")
    if entry.bound is None:
        return False
    try:
        cfg = AIMConfig.for_method(method)
        return entry.bound(32, 196, cfg) != entry.nominal(32, 196, cfg)
    except Exception:  # a bound that needs more than the frames (PruMerge's tower): it is adaptive
        return True


def _method_config(build, *args, **fields) -> AIMConfig:
    with flag_errors():
        return build(*args, **fields)


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Model, input, hardware and precision options shared by ``flops`` and ``plan``."""
    references = reference_names()
    default_llm = next(iter(references))
    resolution = [f"{n} ({fam.title})" for n, (fam, _, _) in references.items() if fam.pixel_limits]
    p.add_argument("--llm", default=default_llm,
                   help=f"built-in ({', '.join(sorted(references))}; default {default_llm}), a reference checkpoint's "
                        "hub id, or a local config.json / model directory")
    p.add_argument("--frames", type=int, default=32, help="frames (images: 1)")
    p.add_argument("--tokens-per-frame", type=int, default=None,
                   help="visual tokens per frame before merging (default: what the model's family gives a frame, "
                        f"e.g. {default_llm}: {model_visual_tokens(default_llm, 1)[1].tokens_per_unit}; models whose "
                        "tokens follow the resolution: from --max-pixels and --frame-size, per unit of frames)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="models whose tokens follow the frames' resolution only (" + ", ".join(resolution) +
                        "): pixels per frame (default: the family's, e.g. 200704, the official AIM run: 448 x 448 px, "
                        "16 x 16 tokens per 2 frames)")
    p.add_argument("--frame-size", type=frame_size, default=None, metavar="HxW",
                   help="models whose tokens follow the frames' resolution only: frame height x width in pixels "
                        "before resizing (default: square frames capped by --max-pixels)")
    p.add_argument("--text-tokens", type=int, default=100, help="text tokens (never pruned)")
    p.add_argument("--newline-tokens", type=int, default=0,
                   help="extra visual tokens per prompt (LLaVA-OneVision's runtime appends 1 after a video; "
                        "default 0 as the paper's 100 + 32*196)")
    p.add_argument("--hardware", default="nvidia_A100",
                   help=f"{', '.join(HARDWARE)} or custom:FLOPS:BW (FLOP/s and bytes/s)")
    p.add_argument("--paper-convention", action="store_true",
                   help="count as the paper's FLOPs script: the schedule one layer earlier and floor(T * retention) "
                        "tokens per frame")
    p.add_argument("--merge-count", default="official", choices=("official", "exact"),
                   help="runtime convention: the merged count the runtime keeps (AIMConfig.merge_count; official: "
                        "196 -> 25 at 1/8, exact: floor(196/8) = 24); the paper convention always counts floor")
    p.add_argument("--flash-attention", action="store_true",
                   help="fused attention: no N x N scores stored or loaded")
    p.add_argument("--include-mlp-add", action="store_true",
                   help="count the second residual add (left out of the paper's figures)")
    p.add_argument("--weight-bytes", type=float, default=2)
    p.add_argument("--act-bytes", type=float, default=2)
    p.add_argument("--kv-bytes", type=float, default=2)
    p.add_argument("--vision", default=None, choices=sorted(tower_names()),
                   help="vision tower for the separately reported encoder cost (default: the LLM's pair)")


def frame_size(text: str) -> Tuple[int, int]:
    """``--frame-size 720x1280`` -> (720, 1280)."""
    parts = text.lower().replace("*", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH in pixels such as 720x1280, got {text!r}")
    return int(parts[0]), int(parts[1])


def analysis_inputs(args: argparse.Namespace) -> Dict[str, Any]:
    """``analyze`` keyword arguments from the options of :func:`add_model_options`.

    The model's family adapter counts the visual tokens (:func:`visual_input`); where a unit
    holds several frames (a temporal group of 2), the analyzer's frames are the units."""
    vision = get_vision(args.vision, args.llm)
    tokens = visual_input(args)
    per_unit = tokens.tokens_per_unit if args.tokens_per_frame is None else args.tokens_per_frame
    if tokens.pixel_limits is not None and vision.spatial_merge > 1:  # the tower sees merge^2 patches per token
        # (plus its class token, where the tower prepends one per frame)
        vision = dataclasses.replace(vision, tokens=per_unit * vision.spatial_merge ** 2 + int(vision.class_token))
    return dict(
        llm=get_llm(args.llm), frames=tokens.units, tokens_per_frame=per_unit,
        text_tokens=args.text_tokens, newline_tokens=args.newline_tokens,
        convention="paper" if args.paper_convention else "runtime", hardware=args.hardware,
        options=RooflineOptions(weight_bytes=args.weight_bytes, act_bytes=args.act_bytes, kv_bytes=args.kv_bytes,
                                flash_attention=args.flash_attention, include_mlp_add=args.include_mlp_add),
        vision=vision, merge_count=args.merge_count,
    )


def visual_input(args: argparse.Namespace):
    """The family adapter's VisualTokens for ``--llm`` and the input options; a family whose
    tokens do not follow the resolution refuses --max-pixels / --frame-size."""
    max_pixels, size = getattr(args, "max_pixels", None), getattr(args, "frame_size", None)
    family, tokens = model_visual_tokens(args.llm, args.frames)
    if family is None or not family.pixel_limits:
        if max_pixels is not None or size is not None:
            raise AIMConfigError(f"--max-pixels/--frame-size describe the inputs of models whose tokens follow the "
                                 f"resolution; --llm {args.llm} takes --tokens-per-frame instead")
        return tokens
    height, width = size if size is not None else (None, None)
    return model_visual_tokens(args.llm, args.frames, height, width, max_pixels=max_pixels)[1]


def input_note(args: argparse.Namespace) -> Optional[str]:
    """The family's line on the input geometry (units of several frames), or None."""
    family = resolve_model(args.llm).family if args.llm is not None else None
    return None if family is None else family.input_note(visual_input(args))


def add_flops_command(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "flops",
        help="roofline LLM prefill FLOPs and time with and without AIM",
        description=(
            "Analytic roofline model of the language model's prefill (docs/efficiency_model.md), "
            "as the paper's figures. AIM defaults to the paper's setting (retention 0.25, "
            "l1=14, l2=22 on 28 layers; scaled for other depths)."
        ),
    )
    add_knob_flags(p, "flops")  # --retention, --l1, --l2, --method, --drop-layers, --drop-ratio
    p.add_argument("--no-prune", action="store_true", help="merging only, no in-LLM pruning")
    add_method_options(p)
    add_model_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_flops)
    return p


def resolve_aim_settings(num_layers: int, retention: Optional[float], l1: Optional[int], l2: Optional[int],
                         no_prune: bool, official: Optional[Tuple[int, int]] = None
                         ) -> Tuple[float, Optional[int], Optional[int], List[str]]:
    """Fill unset AIM options with the defaults; returns (retention, l1, l2, notes). Layers: the
    family's ``official`` schedule when given (LLaVA-1.5 on 32 layers: (13, 21)), else the
    paper's (14, 22) of 28 scaled, as AIMConfig's "auto"."""
    notes: List[str] = []
    check_aim_flags(retention, l1, l2, no_prune, num_layers, model="the language model")
    if retention is None:
        retention = PAPER_RETENTION
    if no_prune:
        return retention, None, None, notes
    if l1 is None and official is not None:
        l1, l2 = official
        notes.append(f"l1={l1}, l2={l2}: the official LLaVA-1.5 schedule on {num_layers} layers "
                     "(retain 1 - (l - 12)/8 after layer l >= 13)")
    elif l1 is None:
        l1, l2 = aim_default_layers(num_layers)
        if num_layers != PAPER_LAYERS:
            notes.append(
                f"l1={l1}, l2={l2}: the paper's {PAPER_L1}/{PAPER_L2} of {PAPER_LAYERS} layers scaled to "
                f"{num_layers} layers (round({PAPER_L1}/{PAPER_LAYERS}*L), round({PAPER_L2}/{PAPER_LAYERS}*L))"
            )
    return retention, l1, l2, notes


def run_flops(args: argparse.Namespace) -> int:
    inputs = analysis_inputs(args)
    with flag_errors():
        settings = resolve_method_settings(inputs["llm"].layers, args, inputs["vision"])
        notes = settings.pop("notes")
        result = analyze(**settings, **inputs)
    result.notes.extend(notes)
    note = input_note(args)
    if note:
        result.notes.append(note)
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
    figures = reduction_figures(result.prefill, baseline.prefill)
    return {
        "llm": result.llm.to_dict(),
        "hardware": result.hardware.to_dict(),
        "frames": s["frames"], "tokens_per_frame": s["tokens_per_frame"],
        "tokens_per_frame_kept": s["tokens_per_frame_kept"], "text_tokens": s["text_tokens"],
        "newline_tokens": s["newline_tokens"], "retention": s["retention"], "l1": s["l1"], "l2": s["l2"],
        "merge_count": s["count_rule"],
        "method": s["method"], "drop_layers": s["resolved_drop_layers"], "drop_ratio": s["drop_ratio"],
        "score": s["score"],
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
        "speedup": figures["speedup"],
        "flops_reduction": figures["flops_reduction"],
        "decode_step_ms": result.decode.time_s * 1e3,
        "baseline_decode_step_ms": baseline.decode.time_s * 1e3,
        "kv_cache_bytes": result.kv_cache_bytes,
        "baseline_kv_cache_bytes": baseline.kv_cache_bytes,
        "vision_encoder_tflops": result.vision_encoder.flops / 1e12,
        "vision_encoder_ms": result.vision_encoder.time_s * 1e3,
        "aim_overhead_tflops": result.aim_overhead.flops / 1e12,
        "aim_overhead_merging_gflops": overhead_parts(result)["merging"] / 1e9,
        "aim_overhead_importance_gflops": overhead_parts(result)["importance"] / 1e9,
        "aim_overhead_ms": result.aim_overhead.time_s * 1e3,
        "aim_overhead_fraction": result.aim_overhead.flops / result.prefill_flops,
        "op_totals": result.prefill.op_totals(),
        "paper_row": paper_row_match(result),
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


# How each convention counts AIM's own overhead (docs/efficiency_model.md, "AIM's overhead").
OVERHEAD_COUNT = {
    "runtime": "as the runtime computes it (merging frame by frame)",
    "paper": "as the paper's overhead table (merging over all frames' tokens at once)",
}


def overhead_parts(result: Analysis) -> Dict[str, float]:
    """AIM's overhead FLOPs by part: the token scores (importance: AIM's; score: FastV's and
    PyramidDrop's) and the reduction before the LLM (merging, pooling or PruMerge: the rest)."""
    o = result.aim_overhead
    importance, score = o.part("importance"), o.part("score")
    return {"merging": o.flops - importance - score, "importance": importance, "score": score}


def overhead_text(result: Analysis) -> str:
    """'merging 88.25 + importance 4.18 = 92.43 GFLOPs': the overhead's parts, in GFLOPs."""
    o = result.aim_overhead
    shown = [f"{name} {flops / 1e9:.2f}" for name, flops in overhead_parts(result).items() if flops]
    if len(shown) > 1:
        return " + ".join(shown) + f" = {o.flops / 1e9:.2f} GFLOPs"
    return (shown[0] if shown else "0") + " GFLOPs"


def paper_row_text(row: Dict[str, Any]) -> str:
    """The line naming the paper row a setting counts and the flags that reproduce it."""
    head = f"paper row '{row['row']}' ({row['paper_tflops']:.2f} TFLOPs, {row['paper_prefill_ms']:.2f} ms)"
    flags = " ".join(row["flags"])
    if row["reproduced"]:
        return f"{head}: " + (f"reproduce with {flags}" if flags else "reproduced by these flags")
    how = f" ({flags})" if flags else ""
    return (f"{head}: counted the paper's way{how}, this setting gives {row['tflops']:.2f} TFLOPs, "
            f"{row['prefill_ms']:.2f} ms, not the printed figures (docs/efficiency_tables.md)")


def format_report(result: Analysis, baseline: Analysis) -> str:
    s = result.settings
    if s["resolved_drop_layers"] is not None:
        prune = f"drop at layers {','.join(map(str, s['resolved_drop_layers']))} ({s['score']} score)"
    elif s["l1"] is None:
        prune = "no pruning"
    elif s["l1"] >= result.llm.layers:
        prune = f"no pruning (l1={s['l1']} = the model's depth, l2={s['l2']})"
    else:
        prune = f"prune after layers {s['l1']}..{s['l2'] - 1} (l1={s['l1']}, l2={s['l2']})"
    name = "AIM" if s["method"] == "aim" else spec(s["method"]).title.split(" ")[0]
    verb = "pooling" if s["method"] == "pool" else "retention"
    merge = "no merging" if s["retention"] >= 1.0 else f"{verb} {s['retention']:g} ({s['tokens_per_frame_kept']} tokens/frame)"
    if spec(s["method"]).schedule == "none":  # a reduction before the LLM only (its registry entry)
        prune = "no pruning"
        adaptive = ", depends on the content" if content_dependent(s["method"]) else ""
        merge = f"{s['reduction']} before the LLM ({s['tokens_per_frame_kept']:g} tokens/frame{adaptive})"
    mib = 2.0 ** 20
    figures = reduction_figures(result.prefill, baseline.prefill)
    rows = [
        ("LLM prefill TFLOPs", f"{result.prefill_tflops:.3f}", f"{baseline.prefill_tflops:.3f}",
         f"{figures['flops_reduction']:.2f}x fewer"),
        ("LLM prefill ms (roofline)", f"{result.prefill_ms:.2f}", f"{baseline.prefill_ms:.2f}",
         f"{figures['speedup']:.2f}x faster"),
        ("first decode step ms", f"{result.decode.time_s * 1e3:.3f}", f"{baseline.decode.time_s * 1e3:.3f}", ""),
        ("KV cache MiB", f"{result.kv_cache_bytes / mib:.1f}", f"{baseline.kv_cache_bytes / mib:.1f}",
         f"{baseline.kv_cache_bytes / result.kv_cache_bytes:.2f}x smaller" if result.kv_cache_bytes else ""),
    ]
    w0 = max(len(r[0]) for r in rows)
    lines = [
        f"llava-aim flops: {result.llm.describe()} on {result.hardware.describe()}",
        f"input: {s['frames']} frames x {s['tokens_per_frame']} tokens + {s['text_tokens']} text tokens"
        + (f" + {s['newline_tokens']} newline" if s["newline_tokens"] else ""),
        f"{name}: {merge}; {prune}; {s['convention']} convention"
        + ("; flash-attention" if result.options.flash_attention else ""),
        f"tokens per layer ({name}): {compact_counts(result.tokens_per_layer)}",
        f"tokens per layer (without AIM): {compact_counts(baseline.tokens_per_layer)}",
        "",
        f"{'':<{w0}}  {name:>12}  {'without AIM':>12}",
    ]
    lines += [f"{a:<{w0}}  {b:>12}  {c:>12}  {d}".rstrip() for a, b, c, d in rows]
    row = paper_row_match(result)
    if row is not None:
        lines.append(paper_row_text(row))
    enc = result.vision_encoder
    lines += [
        "",
        "reported separately (not in the figures above):",
        f"  vision encoder + projector ({s['vision_tower']}, {s['frames']} frames): "
        f"{enc.flops / 1e12:.3f} TFLOPs, {enc.time_s * 1e3:.2f} ms",
        f"  AIM overhead (merging + importance): {overhead_text(result)} "
        f"({100 * result.aim_overhead.flops / result.prefill_flops:.2f}% of the AIM prefill), "
        f"{result.aim_overhead.time_s * 1e3:.2f} ms; counted {OVERHEAD_COUNT[s['convention']]}",
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
    knob = flag_of(budget_knob())
    target.add_argument("--match-tokens", type=int, metavar="N",
                        help=f"matched budget: the method's {knob} (its budget knob) at which at most N visual tokens "
                             "enter the LLM, the most that fit (any method with that knob)")
    target.add_argument("--match-tflops", type=float, metavar="X",
                        help=f"matched budget: the method's {knob} at which its LLM prefill costs at most X TFLOPs, "
                             "the most tokens that fit")
    add_model_options(p)
    add_knob_flags(p, "plan")  # --method, --drop-layers, --drop-ratio
    add_method_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_plan)
    return p


def run_plan(args: argparse.Namespace) -> int:
    from llava.analysis.plan import Target, plan

    method = getattr(args, "method", "aim")
    if method in STEP_METHODS:
        return run_baseline_plan(args)
    if (args.match_tokens is not None or args.match_tflops is not None or spec(method).schedule == "none"
            or video_reduction(method) is not None):
        return run_matched_plan(args)
    if getattr(args, "kept_tokens", None) is not None:
        raise AIMConfigError(f"--kept-tokens is the measured count of a reduction whose count depends on the "
                             f"content ({', '.join(m for m in SPECS if content_dependent(m))}), not of {method}")
    if getattr(args, "drop_layers", None) is not None or getattr(args, "drop_ratio", None) is not None:
        raise AIMConfigError(f"--drop-layers/--drop-ratio apply to {', '.join(STEP_METHODS)}; {args.method} is planned as AIM")
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
    sys.stdout.write("\n".join([format_plan(result, run_command_prefix(args))] + _checkpoint_note(args)) + "\n")
    if args.method != "aim":  # random / pool: AIM's schedule and count, so AIM's plan
        sys.stdout.write(f"method : {args.method} runs the same retention and schedule (same LLM FLOPs)\n")
    return 0


def run_matched_plan(args: argparse.Namespace) -> int:
    """``plan --match-tokens N`` / ``--match-tflops X`` (and any target for a method that reduces
    before the LLM only): the method's budget knob at which it meets the target, from its registry
    entry's token flow and cost (llava.analysis.matching.match_retention); a method with a fixed
    count (PruMerge) is answered with whether that count meets it."""
    from llava.analysis.matching import MatchTarget, match_retention

    if args.drop_layers is not None or args.drop_ratio is not None:
        raise AIMConfigError(f"--drop-layers/--drop-ratio do not apply to {args.method}")
    target = MatchTarget(tokens=args.match_tokens, tflops=args.match_tflops if args.match_tflops is not None
                         else args.budget_tflops, speedup=args.speedup)
    refusal = planned_family_refusal(args)
    if refusal is not None:  # the method's official code never ran on the planned model's family
        sys.stderr.write(f"llava-aim plan: {refusal}\n")
        return 2
    inputs = analysis_inputs(args)
    args.retention = None  # the budget is what plan chooses
    with flag_errors():
        settings = resolve_method_settings(inputs["llm"].layers, args, inputs["vision"])
        notes = settings.pop("notes")
        found = match_retention(args.method, target, settings, **inputs)
    if args.json:
        sys.stdout.write(json.dumps(dict(found.to_dict(), notes=notes)) + "\n")
        return 0 if found.choice is not None else 2
    if found.choice is None:
        c = found.cheapest
        fixed = "it has no budget knob to tune" if found.accepted == 1 else f"its cheapest {flag_of(found.knob)} {c.settings['retention']:g}"
        sys.stderr.write(f"llava-aim plan: {args.method} does not meet {target.describe()} ({fixed}: "
                         f"{c.settings['visual_tokens']} visual tokens, {c.prefill_tflops:.3f} TFLOPs); "
                         "try another target or method\n")
        return 2
    sys.stdout.write(format_matched_plan(found, args, notes) + "\n")
    return 0


def planned_family_refusal(args: argparse.Namespace) -> Optional[str]:
    """Why ``args.method`` may not run on the family of plan's ``--llm`` (None: it may, or the
    --llm names no family)."""
    from llava.analysis.shapes import resolve_model

    try:
        family = resolve_model(args.llm).family
    except AIMConfigError:
        return None
    return None if family is None else family_refusal(args.method, family.name, family.model_types[0])


def format_matched_plan(found, args: argparse.Namespace, notes: List[str]) -> str:
    c, base, s = found.choice, found.baseline, found.choice.settings
    value = s["retention"]
    flag = f" {flag_of(found.knob)} {value:g}" if found.accepted > 1 else ""
    lines = [
        f"llava-aim plan --method {args.method}: {c.llm.name} on {c.hardware.name}; {s['frames']} frames x "
        f"{s['tokens_per_frame']} tokens + {s['text_tokens']} text tokens; target {found.target.describe()}",
        f"without reduction: {base.settings['visual_tokens']} visual tokens, {base.prefill_tflops:.3f} TFLOPs, "
        f"{base.prefill_ms:.2f} ms",
        "choice : " + (f"{found.knob} {value:g}" if flag else "its own count (no budget knob to tune)")
        + f"; {s['visual_tokens']} visual tokens enter the LLM ({s['tokens_per_frame_kept']:g} per frame)",
        f"         {c.prefill_tflops:.3f} TFLOPs ({base.prefill_flops / c.prefill_flops:.2f}x fewer), "
        f"{c.prefill_ms:.2f} ms ({base.prefill_time_s / c.prefill_time_s:.2f}x faster)",
        f"use    : {run_command_prefix(args)}{flag}",
        f"eval   : model_args method={args.method}" + (f",{model_arg_of(found.knob)}={value:g}" if flag else ""),
    ]
    return "\n".join(lines + _checkpoint_note(args) + [f"note: {n}" for n in notes])


def planned_checkpoint(llm: str) -> Tuple[Optional[str], Tuple[str, ...]]:
    """(what ``run --model`` should load, the media its family takes) for plan's ``--llm``.

    A built-in shape names its reference checkpoint; a local model folder is itself the
    checkpoint. (None, ()) when ``--llm`` is only a language-model config (no multimodal
    checkpoint of a family AIM serves).
    """
    try:
        model = resolve_model(llm)
    except AIMConfigError:
        return None, ()
    if model.family is None or model.checkpoint is None:
        return None, ()
    return model.checkpoint, model.family.media


def run_command_prefix(args: argparse.Namespace) -> str:
    """``llava-aim run --model M [--frames N] [--method X]``: the model and input plan planned for."""
    import shlex

    checkpoint, media = planned_checkpoint(args.llm)
    parts = ["llava-aim", "run", "--model", shlex.quote(checkpoint) if checkpoint else "CHECKPOINT"]
    if "video" in media or not media:
        parts += ["--frames", str(args.frames)]
    if getattr(args, "method", "aim") != "aim":
        parts += ["--method", args.method]
    return " ".join(parts)


def run_baseline_plan(args: argparse.Namespace) -> int:
    """``plan --method fastv|vtw|pdrop``: the baseline's knob that meets the target (matching.py)."""
    from llava.analysis.matching import match_budget

    if args.drop_ratio is not None:
        raise AIMConfigError("plan chooses --drop-ratio itself; give --drop-layers at most")
    if args.kept_tokens is not None:
        raise AIMConfigError(f"--kept-tokens is the measured count of a reduction whose count depends on the "
                             f"content, not of {args.method}")
    if args.match_tokens is not None:
        raise AIMConfigError(f"{args.method} lets every visual token enter the LLM and drops them inside it: match it "
                             "with --match-tflops (or --budget-tflops / --speedup)")
    if args.match_tflops is not None:
        args.budget_tflops = args.match_tflops
    inputs = analysis_inputs(args)
    base = analyze(**inputs)
    budget = None if args.budget_tflops is None else args.budget_tflops * 1e12
    max_time = None if args.speedup is None else base.prefill_time_s / args.speedup
    if (args.budget_tflops is not None and args.budget_tflops <= 0) or (args.speedup is not None and args.speedup <= 0):
        raise AIMConfigError("--budget-tflops and --speedup must be positive")
    with flag_errors():
        best = match_budget(args.method, budget, args.drop_layers, max_time_s=max_time, **inputs)
    target = f"<= {args.budget_tflops:g} TFLOPs" if budget is not None else f">= {args.speedup:g}x faster"
    if best is None:
        sys.stderr.write(f"llava-aim plan: no {args.method} setting meets {target} with its layers; "
                         "try other --drop-layers or another method\n")
        return 2
    s = best.settings
    report = {"method": args.method, "drop_layers": s["resolved_drop_layers"], "drop_ratio": s["drop_ratio"],
              "prefill_tflops": best.prefill_tflops, "prefill_ms": best.prefill_ms,
              "speedup": base.prefill_time_s / best.prefill_time_s,
              "flops_reduction": base.prefill_flops / best.prefill_flops,
              "visual_tokens_per_layer": best.visual_tokens_per_layer, "target": target}
    if args.json:
        sys.stdout.write(json.dumps(report) + "\n")
        return 0
    layers = ",".join(map(str, s["resolved_drop_layers"]))
    ratio = "" if s["drop_ratio"] is None else f" --drop-ratio {s['drop_ratio']:g}"
    sys.stdout.write("\n".join([
        f"llava-aim plan --method {args.method}: {best.llm.name} on {best.hardware.name}; target {target}",
        f"choice : drop layers {layers}{'' if not ratio else ', ratio ' + format(s['drop_ratio'], 'g')}; "
        f"{best.prefill_tflops:.3f} TFLOPs ({report['flops_reduction']:.2f}x fewer), {best.prefill_ms:.2f} ms "
        f"({report['speedup']:.2f}x faster)",
        f"         visual tokens per layer: {compact_counts(best.visual_tokens_per_layer)}",
        f"use    : {run_command_prefix(args)} --drop-layers {layers}{ratio}",
    ] + _checkpoint_note(args)) + "\n")
    return 0


def _checkpoint_note(args) -> List[str]:
    if planned_checkpoint(args.llm)[0] is None:
        return [f"         (CHECKPOINT: the multimodal checkpoint whose language model {args.llm} describes)"]
    return []


def format_plan(result, run_prefix: str = "llava-aim run --model CHECKPOINT") -> str:
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
        lines.append(f"use    : {run_prefix} {flags}")
        lines.append(f"python : AIMConfig(retention={s.retention:g}, l1={s.l1}, l2={s.l2})")
    if result.alternatives:
        lines.append("next best (also meet the target):")
        for a in result.alternatives:
            lines.append(f"  {a.setting.describe():<40} {a.prefill_flops / 1e12:8.3f} TFLOPs "
                         f"{base.prefill_time_s / a.prefill_time_s:6.2f}x  visual token-layers {a.visual_token_layers}")
    return "\n".join(lines)
