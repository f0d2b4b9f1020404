"""``llava-aim run``: answer a question about a video or an image with AIM on.

Defaults to the built-in tiny model and the sample video shipped in the package, so it works
offline (``make demo``). Prints the answer, the visual tokens before and after merging, the
tokens entering each decoder layer, the predicted prefill FLOPs saved (llava.analysis, on the
model's own shape) and the time per stage; ``--json`` prints one object and nothing else.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from llava.aim.config import AIMConfig
from llava.aim.policy import PRUMERGE_METHODS, STEP_METHODS
from llava.errors import AIMConfigError

ASSETS = Path(__file__).resolve().parent / "assets"
SAMPLE_VIDEO = ASSETS / "sample_video.mp4"
DEFAULT_QUESTION = "What happens in this video? Describe the moving objects."
DEFAULT_IMAGE_QUESTION = "What is shown in this image?"


def add_run_command(subparsers) -> None:
    p = subparsers.add_parser("run", help="answer a question about a video or image with AIM",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-llava-onevision",
                   help="built-in name (tiny-llava-onevision, tiny-llava-1.5, tiny-qwen2-vl, tiny-qwen2.5-vl), "
                        "hub id or local folder")
    media = p.add_mutually_exclusive_group()
    media.add_argument("--video", help=f"video file (default: the shipped sample, {SAMPLE_VIDEO.name})")
    media.add_argument("--image", help="image file")
    p.add_argument("--question", help="question to ask (default: a description request)")
    p.add_argument("--frames", type=int, default=32, help="frames sampled uniformly from the video (default 32)")
    p.add_argument("--retention", type=float, help="fraction of tokens kept per frame by merging, in (0, 1]")
    p.add_argument("--l1", type=int, help="first pruning layer (0-based)")
    p.add_argument("--l2", type=int, help="first layer with no visual token")
    p.add_argument("--no-prune", action="store_true", help="merging only, no pruning inside the LLM")
    p.add_argument("--no-aim", action="store_true", help="the stock model, no merging, no pruning")
    p.add_argument("--pruning-mode", choices=["remove", "mask"], default="remove")
    p.add_argument("--merge-count", choices=["official", "exact"], default="official",
                   help="merged count per frame: official (196 -> 98, 49, 25, 13, 7, 4 at 1/2 .. 1/64) or "
                        "exact (floor(T * retention))")
    p.add_argument("--merge-metric", choices=["auto", "keys", "tokens"], default="auto",
                   help="merging similarity: auto (each family's official), keys (LLaVA-1.5: CLIP keys, before "
                        "the projector), tokens (the projected tokens)")
    p.add_argument("--tie-break", choices=["index", "log_attention"], default="index",
                   help="pruning: how exactly tied scores are ranked (index: official-equivalent)")
    p.add_argument("--frame-sampling", choices=["uniform", "official"], default="uniform",
                   help="uniform (rounded, never repeats) or official (lmms-eval's np.linspace(..., dtype=int))")
    p.add_argument("--positions", choices=["original", "official"], default="original",
                   help="Qwen2-VL / Qwen2.5-VL: merged tokens at their destination patch's position (original) "
                        "or on the official code's shrunken grid (official); no effect on 1-D RoPE models")
    from llava.analysis.cli import add_method_options

    add_method_options(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the random control (--method random)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    p.add_argument("--json", action="store_true", help="print one JSON object and nothing else")
    p.set_defaults(func=run_command)


def scaled_default_schedule(num_layers: int):
    """The paper's (14, 22) of 28 layers, scaled to another depth (exact for 28 layers)."""
    from llava.aim.policy import aim_default_layers

    return aim_default_layers(num_layers)


def build_config(args, num_layers: int) -> AIMConfig:
    if args.no_aim:
        return AIMConfig.disabled()
    if getattr(args, "method", "aim") in STEP_METHODS:
        return _baseline_config(args, num_layers)
    if getattr(args, "method", "aim") in PRUMERGE_METHODS:
        return _prumerge_config(args)
    if getattr(args, "drop_layers", None) is not None or getattr(args, "drop_ratio", None) is not None:
        raise AIMConfigError(f"--drop-layers/--drop-ratio apply to {', '.join(STEP_METHODS)}, not --method {args.method}")
    retention = 0.25 if args.retention is None else args.retention
    if args.no_prune:
        if args.l1 is not None or args.l2 is not None:
            raise AIMConfigError("--no-prune cannot be combined with --l1/--l2")
        l1 = l2 = None
    elif args.l1 is None and args.l2 is None:
        l1, l2 = "auto", "auto"  # apply_aim: the family's official schedule, else the paper's scaled
    elif args.l1 is None or args.l2 is None:
        raise AIMConfigError("give both --l1 and --l2 (or neither for the paper's schedule scaled to the model)")
    else:
        l1, l2 = args.l1, args.l2
    cfg = AIMConfig(retention=retention, l1=l1, l2=l2, pruning_mode=args.pruning_mode,
                    method=getattr(args, "method", "aim"), seed=getattr(args, "seed", 0),
                    positions=getattr(args, "positions", "original"), **_fidelity_options(args))
    cfg.check_against_model(num_layers)
    return cfg


def _fidelity_options(args) -> dict:
    return {name: getattr(args, name) for name in ("merge_count", "merge_metric", "tie_break") if hasattr(args, name)}


def _prumerge_config(args) -> AIMConfig:
    """LLaVA-PruMerge / PruMerge+: their own adaptive reduction before the LLM, nothing else."""
    given = [f"--{n.replace('_', '-')}" for n in ("retention", "l1", "l2", "drop_layers", "drop_ratio")
             if getattr(args, n, None) is not None] + (["--no-prune"] if args.no_prune else [])
    if given:
        raise AIMConfigError(f"--method {args.method} reduces tokens before the LLM by itself; {', '.join(given)} "
                             "do not apply")
    return AIMConfig.for_method(args.method, pruning_mode=args.pruning_mode, **_fidelity_options(args))


def _baseline_config(args, num_layers: int) -> AIMConfig:
    """FastV / VTW / PyramidDrop: their drop layers (paper defaults scaled), no merging unless
    --retention is given; AIM's --l1/--l2/--no-prune do not apply."""
    if args.l1 is not None or args.l2 is not None or args.no_prune:
        raise AIMConfigError(f"--l1/--l2/--no-prune set AIM's schedule; {args.method} prunes at --drop-layers")
    cfg = AIMConfig.for_method(
        args.method, retention=1.0 if args.retention is None else args.retention, pruning_mode=args.pruning_mode,
        drop_layers=args.drop_layers, drop_ratio=args.drop_ratio, **_fidelity_options(args),
    )
    cfg.check_against_model(num_layers)
    return cfg


def _validate_args(args) -> None:
    if args.frames < 1:
        raise AIMConfigError(f"--frames must be at least 1, got {args.frames}")
    if args.max_new_tokens < 1:
        raise AIMConfigError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    # Validate the AIM numbers before loading anything (fast, clear failure).
    if not args.no_aim and getattr(args, "method", "aim") in STEP_METHODS:
        _baseline_config(args, num_layers=1 << 30)  # the depth is checked once the model is loaded
    elif not args.no_aim and getattr(args, "method", "aim") in PRUMERGE_METHODS:
        _prumerge_config(args)
    elif not args.no_aim:
        if getattr(args, "drop_layers", None) is not None or getattr(args, "drop_ratio", None) is not None:
            raise AIMConfigError(f"--drop-layers/--drop-ratio apply to {', '.join(STEP_METHODS)}, not --method {args.method}")
        AIMConfig(
            retention=0.25 if args.retention is None else args.retention,
            l1=None if args.l1 is None or args.l2 is None else args.l1,
            l2=None if args.l1 is None or args.l2 is None else args.l2,
            method=getattr(args, "method", "aim"), seed=getattr(args, "seed", 0),
            positions=getattr(args, "positions", "original"),
        )
        for name in ("l1", "l2"):
            value = getattr(args, name)
            if value is not None and value < 0:
                raise AIMConfigError(f"--{name} must be non-negative, got {value}")


def run_command(args) -> int:
    import torch

    from llava.model.builder import is_builtin, load_pretrained_model, num_decoder_layers
    from llava.video import load_image, load_video

    _validate_args(args)
    timings = {}
    t0 = time.perf_counter()
    is_video = args.image is None
    media_path = args.video or (str(SAMPLE_VIDEO) if is_video else None)
    # tqdm bar for long clips (see llava.video); never with --json, which prints one object only
    progress = False if args.json else None
    sampling = getattr(args, "frame_sampling", "uniform")
    media = load_video(media_path, args.frames, progress=progress, sampling=sampling) if is_video else load_image(args.image)
    timings["decode_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # keep stderr to one line on errors; loading is quick
    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    model, processor = load_pretrained_model(args.model, aim=None, torch_dtype=dtype, attn_implementation=args.attn)
    model.to(args.device)
    cfg = build_config(args, num_decoder_layers(model))
    from llava.model.llava_arch import apply_aim

    model, processor = apply_aim(model, processor, cfg)
    timings["load_s"] = time.perf_counter() - t0

    question = args.question or (DEFAULT_QUESTION if is_video else DEFAULT_IMAGE_QUESTION)
    kind = "video" if is_video else "image"
    family = model._aim_family
    if kind not in family.media:
        raise AIMConfigError(f"{args.model} is a {family.title} model, which takes {' and '.join(family.media)} "
                             f"input, not {kind}s; pass --{family.media[0]}, or another model")
    t0 = time.perf_counter()
    conversation = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    media_kw = {"videos": [media]} if is_video else {"images": [media]}
    inputs = processor(text=prompt, return_tensors="pt", **media_kw).to(args.device)
    if model.dtype != torch.float32:
        for key in ("pixel_values", "pixel_values_videos"):
            if key in inputs:
                inputs[key] = inputs[key].to(model.dtype)
    timings["preprocess_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    timings["generate_s"] = time.perf_counter() - t0
    new_tokens = output[0, inputs["input_ids"].shape[1]:]
    answer = processor.decode(new_tokens, skip_special_tokens=True).strip()
    stats = model.aim_stats
    result = {
        "model": args.model,
        "random_weights": is_builtin(args.model),
        "media": str(media_path if is_video else args.image),
        "frames": int(media.shape[0]) if is_video else 1,
        "question": question,
        "answer": answer,
        "aim": model.aim_config.to_dict(),  # as resolved for this model ("auto" layers, merge metric)
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "visual_tokens_before_merge": stats.visual_tokens_before_merge,
        "visual_tokens_after_merge": stats.visual_tokens_after_merge,
        "layer_seq_lens": stats.layer_seq_lens,
        "kv_cache_lens": stats.kv_cache_lens,
        "timings": {k: round(v, 4) for k, v in timings.items()},
    }
    if not result["visual_tokens_before_merge"]:  # merging off: count placeholders instead
        ids = inputs["input_ids"][0]
        n_visual = int(sum((ids == t).sum() for t in model._aim_runtime.image_token_ids))
        result["visual_tokens_before_merge"] = result["visual_tokens_after_merge"] = n_visual
    result["predicted"] = predicted_prefill(model.config, result)
    if args.json:
        print(json.dumps(result))
    else:
        print(format_summary(result))
    return 0


def predicted_prefill(config, r: dict) -> dict:
    """Roofline FLOPs (llava.analysis) of this prompt's LLM prefill on the model's own shape.

    With AIM: the tokens that really entered each layer; without: the same prompt with every
    visual token unmerged in every layer. The lm_head on one token is included in both.
    """
    from llava.analysis import LLMShape, prefill_cost

    shape = LLMShape.from_config(config)
    text = r["prompt_tokens"] - r["visual_tokens_after_merge"]
    with_aim = r["layer_seq_lens"] or [r["prompt_tokens"]] * shape.layers  # empty when nothing was pruned
    without = [text + r["visual_tokens_before_merge"]] * shape.layers
    aim_flops, base_flops = prefill_cost(shape, with_aim).flops, prefill_cost(shape, without).flops
    return {
        "prefill_tflops": aim_flops / 1e12,
        "baseline_prefill_tflops": base_flops / 1e12,
        "flops_saved": 1.0 - aim_flops / base_flops,
        "flops_reduction": base_flops / aim_flops,
    }


def _flops_text(tflops: float) -> str:
    return f"{tflops:.3f} TFLOPs" if tflops >= 1 else f"{tflops * 1e3:.3f} GFLOPs"


def format_summary(r: dict) -> str:
    aim = r["aim"]
    lines = []
    if r["random_weights"]:
        lines.append(f"NOTE: {r['model']} has RANDOM weights: the answer below is meaningless; "
                     "it shows the pipeline and AIM's token counts.")
    lines.append(f"media     : {r['media']} ({r['frames']} frame{'s' if r['frames'] != 1 else ''})")
    lines.append(f"question  : {r['question']}")
    lines.append(f"answer    : {r['answer']!r}")
    setting = ("off" if aim["retention"] >= 1 and aim["l1"] is None and aim.get("method", "aim") == "aim" else
               f"retention={aim['retention']:g}, l1={aim['l1']}, l2={aim['l2']}, pruning={aim['pruning_mode']}")
    if aim.get("method", "aim") != "aim":  # a baseline or control (llava.aim.policy)
        setting = f"method={aim['method']}, drop_layers={aim['drop_layers']}, drop_ratio={aim['drop_ratio']}; " + setting
    lines.append(f"AIM       : {setting}")
    before, after = r["visual_tokens_before_merge"], r["visual_tokens_after_merge"]
    ratio = f" ({before / after:.1f}x fewer)" if after else ""
    lines.append(f"merging   : {before} -> {after} visual tokens{ratio}")
    if r["layer_seq_lens"]:
        lines.append("tokens entering each decoder layer (prefill):")
        top = max(r["layer_seq_lens"])
        for j, n in enumerate(r["layer_seq_lens"]):
            bar = "#" * max(1, round(30 * n / top))
            lines.append(f"  layer {j:>2} {n:>6} {bar}")
        lines.append(f"KV cache per layer after generation: {r['kv_cache_lens']}")
    if "predicted" in r:
        f = r["predicted"]
        lines.append(f"FLOPs     : LLM prefill {_flops_text(f['prefill_tflops'])} vs "
                     f"{_flops_text(f['baseline_prefill_tflops'])} without AIM: {100 * f['flops_saved']:.1f}% saved "
                     f"({f['flops_reduction']:.2f}x fewer; roofline prediction for this model's shape)")
    t = r["timings"]
    stages = [("decode", "decode_s"), ("load", "load_s"), ("preprocess", "preprocess_s"), ("generate", "generate_s")]
    lines.append("time      : " + ", ".join(f"{name} {t[key]:.2f}s" for name, key in stages if key in t))
    return "\n".join(lines)
