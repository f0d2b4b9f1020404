"""``llava-aim bench``: measured prefill of AIM next to the analyzer's prediction.

Two measurements on the same input (a video prompt: frames x tokens-per-frame visual tokens,
one newline token, text tokens around them), each configuration timed in interleaved rounds
(round-robin, so machine noise hits all alike) after a warm-up; medians are reported:

* language model alone: the decoder gets the token sequence the LLM would receive (merged
  length for the merging configurations) with the visual positions marked;
* end to end: a LLaVA-OneVision model (vision tower, projector, 2x2 pooling, merging, LLM),
  from the preprocessed pixels to the prefill's last-token logits.

Configurations: baseline (no AIM); "official", the official code's way of running AIM (mask
mode under eager attention), so that the gain over it is a ratio measured in the same run;
the mask mode on this run's attention; merging only; and the default AIM setting (removal).
Per configuration: median time (CUDA events on GPU, perf_counter on CPU), peak memory growth
during the prefill, KV-cache bytes. AIM's own overhead (merging, importance) is measured
separately in instrumented runs, so it never perturbs the timed ones.

CPU: random weights, a small Qwen2 (8 layers, hidden 256, 8/2 heads) and a 2-layer SigLIP at
the real geometry (384 px, patch 14) with the paper's token counts. CUDA: the
LLaVA-OneVision-7B architecture (SigLIP-so400m + Qwen2-7B) with random bf16 weights. The
memory a run needs is estimated before anything is built; a run that cannot fit exits 2.

``--layerwise`` instead measures AIM's overhead at the Qwen2-7B shape where the whole model does
not fit (float32 on CPU): one decoder layer timed at every token count of the schedule,
importance and merging at that shape, summed (``measure_layerwise``). AIM's relative overhead
depends on the shape (importance ~ N^2 x hidden per scoring layer, a decoder layer ~ N x
hidden^2), so the small model overstates it about 20-fold.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import List

import torch

from llava.aim.config import AIMConfig
from llava.aim.merge import merged_token_count
from llava.aim.policy import PRUMERGE_METHODS, STEP_METHODS, aim_default_layers
from llava.bench.cases import OFFICIAL_ATTENTION, PrefillCase, default_cases, method_case
from llava.bench.measure import measure_layerwise, measure_lm_overhead, run_end_to_end_benchmark, run_prefill_benchmark
from llava.bench.memory import (
    PrefillShape,
    available_bytes,
    decoder_params,
    describe_bytes,
    prefill_bytes,
    vision_bytes,
    vision_params,
)
from llava.bench.models import (
    build_lm,
    build_onevision,
    qwen2_7b_config,
    siglip_so400m_config,
    small_qwen2_config,
    small_siglip_config,
    synthetic_video,
)
from llava.bench.predict import calibrate_cpu, cuda_hardware, predict
from llava.bench.report import OVERHEAD_GOAL, bench_report, format_bench, format_layerwise, lm_summary, machine, versions
from llava.errors import AIMConfigError, InsufficientMemoryError

E2E_TEXT_TOKENS = 20  # the chat template around the question, end to end (an upper bound)
MEMORY_HEADROOM = 0.9  # plan for at most this fraction of what is available


def add_bench_command(subparsers) -> None:
    p = subparsers.add_parser("bench", help="measured prefill time, memory and KV cache, next to the prediction",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--model", choices=["auto", "small", "onevision-7b"], default="auto",
                   help="random-weight architecture: small (CPU default) or LLaVA-OneVision-7B (CUDA default)")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--tokens-per-frame", type=int, default=196,
                   help="LLM-only measurement: visual tokens per frame before merging (end to end: the model's 196)")
    p.add_argument("--text-tokens", type=int, default=100, help="LLM-only measurement: text tokens")
    p.add_argument("--retention", type=float, default=0.25)
    p.add_argument("--l1", type=int, help="default: the paper's (14, 22) of 28 layers scaled to the model")
    p.add_argument("--l2", type=int)
    p.add_argument("--repeats", type=int, default=None,
                   help="timed rounds after one warm-up round (median; default 5, with --layerwise 2)")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"],
                   help="attention of every configuration but 'official', which always runs eager")
    p.add_argument("--lm-only", action="store_true", help="skip the end-to-end measurement")
    p.add_argument("--pruning-only", action="store_true", help="also time pruning without merging")
    p.add_argument("--layerwise", action="store_true",
                   help="instead: AIM's overhead measured layer by layer at the Qwen2-7B shape (the LLaVA-OneVision-7B "
                        "LLM), which does not fit whole in CPU memory; about 80 s on 2 CPU cores, ~2 GB")
    from llava.analysis.cli import add_method_options

    add_method_options(p)  # --method X adds a case "X" (a baseline or control) next to AIM's
    p.add_argument("--json", action="store_true", help="print one JSON object and nothing else")
    p.set_defaults(func=bench_command)


def _check_args(args) -> torch.device:
    if args.repeats is None:
        args.repeats = 2 if getattr(args, "layerwise", False) else 5
    if args.repeats < 1:
        raise AIMConfigError(f"--repeats must be at least 1, got {args.repeats}")
    if args.frames < 1 or args.tokens_per_frame < 1 or args.text_tokens < 2:
        raise AIMConfigError("--frames and --tokens-per-frame must be >= 1 and --text-tokens >= 2")
    if (args.l1 is None) != (args.l2 is None):
        raise AIMConfigError("give both --l1 and --l2, or neither for the paper's schedule scaled to the model")
    AIMConfig(retention=args.retention, l1=args.l1, l2=args.l2)
    method = getattr(args, "method", "aim")
    if method in PRUMERGE_METHODS and (args.drop_layers is not None or args.drop_ratio is not None
                                       or getattr(args, "kept_tokens", None) is not None):
        raise AIMConfigError(f"--drop-layers/--drop-ratio/--kept-tokens do not apply to bench --method {method}")
    if method in STEP_METHODS:
        AIMConfig.for_method(method, drop_layers=args.drop_layers, drop_ratio=args.drop_ratio)
    elif getattr(args, "drop_layers", None) is not None or getattr(args, "drop_ratio", None) is not None:
        raise AIMConfigError(f"--drop-layers/--drop-ratio apply to {', '.join(STEP_METHODS)}, not --method {method}")
    if getattr(args, "layerwise", False) and method != "aim":
        raise AIMConfigError(f"--layerwise measures the default AIM method only, not --method {method}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise AIMConfigError(f"--device must be cpu or cuda[:N], got {args.device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AIMConfigError("--device cuda asked for, but no CUDA device is available; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise AIMConfigError(f"--device must be cpu or cuda[:N], got {args.device!r}")
    return device


# -- memory, before anything is built --------------------------------------------------------
def estimate_bench_memory(args, text_config, vision_dims, dtype_bytes: int) -> dict:
    """Bytes the run needs at its peak, by phase: the LLM-only phase (weights, then one prefill
    at a time), and the end-to-end phase (the whole LLaVA-OneVision, the video and its pixels,
    the vision tower over every frame, one prefill). The phases run one after the other."""
    full = args.frames * args.tokens_per_frame + 1 + args.text_tokens
    merged = args.frames * merged_token_count(args.tokens_per_frame, args.retention) + 1 + args.text_tokens
    eager = args.attn == "eager"
    shapes = [PrefillShape(full, eager=eager), PrefillShape(merged, eager=True),
              PrefillShape(merged, eager=eager, explicit_mask=True)]
    importance = AIMConfig().importance_memory_mb << 20  # the score's buffers are bounded by this
    lm_weights = decoder_params(text_config) * dtype_bytes
    lm_phase = lm_weights + max(prefill_bytes(text_config, s, dtype_bytes) for s in shapes) + importance
    phases = {"language model": lm_phase}
    if not args.lm_only:
        e2e_full = args.frames * 196 + 1 + E2E_TEXT_TOKENS
        e2e_merged = args.frames * merged_token_count(196, args.retention) + 1 + E2E_TEXT_TOKENS
        e2e_shapes = [PrefillShape(e2e_full, eager=eager), PrefillShape(e2e_merged, eager=True),
                      PrefillShape(e2e_merged, eager=eager, explicit_mask=True)]
        weights = (decoder_params(text_config) + text_config.vocab_size * text_config.hidden_size
                   + vision_params(vision_dims, text_config.hidden_size)) * dtype_bytes
        phases["end to end"] = (weights + vision_bytes(vision_dims, args.frames, dtype_bytes=dtype_bytes)
                                + max(prefill_bytes(text_config, s, dtype_bytes) for s in e2e_shapes) + importance)
    return phases


def estimate_layerwise_memory(args, text_config, dtype_bytes: int) -> dict:
    """One decoder layer's weights and its prefill at the largest token count (no cache)."""
    tokens = args.frames * merged_token_count(args.tokens_per_frame, args.retention) + 1 + args.text_tokens
    layer = (decoder_params(text_config) - text_config.vocab_size * text_config.hidden_size) // text_config.num_hidden_layers
    need = (layer * dtype_bytes + prefill_bytes(text_config, PrefillShape(tokens, eager=args.attn == "eager"),
                                                dtype_bytes, layers=0)
            + (AIMConfig().importance_memory_mb << 20))
    return {"one decoder layer": need}


def check_fits(phases: dict, device: torch.device, what: str) -> None:
    """Refuse, in one line, a run whose estimated peak does not fit in the available memory."""
    available = available_bytes(device)
    if available is None:
        return  # nothing to compare with: run and let the measurement say
    phase, need = max(phases.items(), key=lambda kv: kv[1])
    if need > MEMORY_HEADROOM * available:
        raise InsufficientMemoryError(
            f"{what} needs about {describe_bytes(need)} ({phase} phase, estimated) but only "
            f"{describe_bytes(available)} is available on {device}; use fewer --frames, --lm-only, "
            "--model small, --layerwise (the 7B shape one layer at a time) or a larger device"
        )


def _what(args, big: bool) -> str:
    model = "--model onevision-7b" if big else "the small model"
    return f"{model} at --frames {args.frames}"


# -- the command --------------------------------------------------------------------------------
def bench_command(args) -> int:
    import transformers

    device = _check_args(args)
    big = args.model == "onevision-7b" or (args.model == "auto" and device.type == "cuda")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype_bytes = torch.finfo(dtype).bits // 8
    text_config = qwen2_7b_config(args.attn) if big else small_qwen2_config(attn=args.attn)
    num_layers = text_config.num_hidden_layers
    if args.l1 is not None:
        AIMConfig(retention=args.retention, l1=args.l1, l2=args.l2).check_against_model(num_layers)
    say = (lambda msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    bar = _progress_bar(args.json)

    if args.layerwise:
        big = args.model != "small"
        config = qwen2_7b_config(args.attn) if big else small_qwen2_config(attn=args.attn)
        check_fits(estimate_layerwise_memory(args, config, dtype_bytes), device, f"--layerwise at --frames {args.frames}")
        return layerwise_command(args, device, dtype, config)

    vision_dims = siglip_so400m_config() if big else small_siglip_config()
    check_fits(estimate_bench_memory(args, text_config, vision_dims, dtype_bytes), device, _what(args, big))

    say(f"llava-aim bench: {'Qwen2-7B' if big else 'small Qwen2'} language model, random weights, "
        f"{str(dtype).replace('torch.', '')}, {args.attn} (official: mask under {OFFICIAL_ATTENTION}), on {device}")
    lm = build_lm(text_config, device, dtype)
    lm_cases = default_cases(args.frames, args.tokens_per_frame, args.text_tokens, num_layers, args.retention,
                             args.l1, args.l2, pruning_only=args.pruning_only, attn=args.attn)
    if args.method != "aim":
        lm_cases.append(method_case(args.method, args.frames, args.tokens_per_frame, args.text_tokens, num_layers,
                                    args.retention, args.l1, args.l2, args.drop_layers, args.drop_ratio,
                                    attn=args.attn))
    run_prefill_benchmark(lm, lm_cases, repeats=args.repeats, progress=bar("LLM prefill", args.repeats))
    aim_case = next(c for c in lm_cases if c.name == "aim")
    overhead = measure_lm_overhead(lm, aim_case, args.frames, args.tokens_per_frame)
    del lm
    hardware = cuda_hardware(device) if device.type == "cuda" else calibrate_cpu()
    flash = args.attn == "flash_attention_2" or args.attn == "sdpa"  # fused kernels: no N x N in memory
    predicted = predict(text_config, lm_cases, args.frames, args.tokens_per_frame, hardware, dtype_bytes, flash)

    e2e_cases: List[PrefillCase] = []
    if not args.lm_only:
        say("end to end: LLaVA-OneVision (vision tower + projector + merging + LLM)")
        model, processor = build_onevision(text_config, vision_dims, device, dtype)
        e2e_cases = default_cases(args.frames, 196, 0, num_layers, args.retention, args.l1, args.l2,
                                  pruning_only=args.pruning_only, attn=args.attn)
        if args.method != "aim":
            e2e_cases.append(method_case(args.method, args.frames, 196, 0, num_layers, args.retention, args.l1,
                                         args.l2, args.drop_layers, args.drop_ratio, attn=args.attn))
        video = synthetic_video(args.frames, 384)
        run_end_to_end_benchmark(model, processor, e2e_cases, video, "What happens in this video?",
                                 repeats=args.repeats, progress=bar("end to end", args.repeats))
        del model

    result = bench_report(args, device, dtype, text_config, lm_cases, e2e_cases, predicted, overhead, hardware,
                          transformers.__version__)
    if args.json:
        print(json.dumps(result))
    else:
        print(format_bench(result))
    return 0


def layerwise_command(args, device: torch.device, dtype: torch.dtype, text_config) -> int:
    import transformers

    num_layers = text_config.num_hidden_layers
    if args.l1 is None:
        args.l1, args.l2 = aim_default_layers(num_layers)
    cfg = AIMConfig(retention=args.retention, l1=args.l1, l2=args.l2)
    cfg.check_against_model(num_layers)
    if not args.json:
        print(f"llava-aim bench --layerwise: one random {text_config.hidden_size}-wide Qwen2 decoder layer, "
              f"{str(dtype).replace('torch.', '')}, {args.attn}, on {device}", file=sys.stderr, flush=True)
    bar = _progress_bar(args.json)("layer-by-layer", 1, unit="part")
    result = measure_layerwise(text_config, cfg, args.frames, args.tokens_per_frame, args.text_tokens, device, dtype,
                               repeats=args.repeats, progress=bar)
    report = {
        "date": datetime.date.today().isoformat(), **machine(device),
        "versions": versions(transformers.__version__),
        "dtype": str(dtype).replace("torch.", ""), "attn": args.attn,
        "language_model": lm_summary(text_config),
        "input": {"frames": args.frames, "tokens_per_frame": args.tokens_per_frame, "text_tokens": args.text_tokens,
                  "newline_tokens": 1},
        "aim": cfg.to_dict(),
        "layerwise": result,
        "goals": {"overhead_max": OVERHEAD_GOAL, "overhead_met": result["fraction"] < OVERHEAD_GOAL},
    }
    print(json.dumps(report) if args.json else format_layerwise(report))
    return 0


def _progress_bar(quiet: bool):
    def make(desc: str, total: int, unit: str = "round"):
        if quiet:
            return None
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr)

        def update(done: int, n: int) -> None:
            bar.total = n  # callers that learn the total late
            bar.update(done - bar.n)
            if done == n:
                bar.close()

        return update

    return make
