"""``llava-aim run``: answer a question about a video or an image with AIM on.

Defaults to the built-in tiny model and the sample video shipped in the package, so it works
offline (``make demo``). Prints the answer, the visual tokens before and after merging, the
tokens entering each decoder layer and the time per stage; ``--json`` prints one object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

from llava.aim.config import AIMConfig
from llava.errors import AIMConfigError, AIMError

ASSETS = Path(__file__).resolve().parent / "assets"
SAMPLE_VIDEO = ASSETS / "sample_video.mp4"
DEFAULT_QUESTION = "What happens in this video? Describe the moving objects."
DEFAULT_IMAGE_QUESTION = "What is shown in this image?"


def add_run_command(subparsers) -> None:
    p = subparsers.add_parser("run", help="answer a question about a video or image with AIM",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-llava-onevision",
                   help="built-in name (tiny-llava-onevision, tiny-llava-1.5), hub id or local folder")
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
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    p.add_argument("--json", action="store_true", help="print one JSON object and nothing else")
    p.set_defaults(func=run_command)


def scaled_default_schedule(num_layers: int):
    """The paper's (14, 22) of 28 layers, scaled to another depth (exact for 28 layers)."""
    return round(14 * num_layers / 28), round(22 * num_layers / 28)


def build_config(args, num_layers: int) -> AIMConfig:
    if args.no_aim:
        return AIMConfig.disabled()
    retention = 0.25 if args.retention is None else args.retention
    if args.no_prune:
        if args.l1 is not None or args.l2 is not None:
            raise AIMConfigError("--no-prune cannot be combined with --l1/--l2")
        l1 = l2 = None
    elif args.l1 is None and args.l2 is None:
        l1, l2 = scaled_default_schedule(num_layers)
    elif args.l1 is None or args.l2 is None:
        raise AIMConfigError("give both --l1 and --l2 (or neither for the paper's schedule scaled to the model)")
    else:
        l1, l2 = args.l1, args.l2
    cfg = AIMConfig(retention=retention, l1=l1, l2=l2, pruning_mode=args.pruning_mode)
    cfg.check_against_model(num_layers)
    return cfg


def _validate_args(args) -> None:
    if args.frames < 1:
        raise AIMConfigError(f"--frames must be at least 1, got {args.frames}")
    if args.max_new_tokens < 1:
        raise AIMConfigError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    # Validate the AIM numbers before loading anything (fast, clear failure).
    if not args.no_aim:
        AIMConfig(
            retention=0.25 if args.retention is None else args.retention,
            l1=None if args.l1 is None or args.l2 is None else args.l1,
            l2=None if args.l1 is None or args.l2 is None else args.l2,
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
    media = load_video(media_path, args.frames) if is_video else load_image(args.image)
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
    if kind == "video" and type(model).__name__ == "LlavaForConditionalGeneration":
        raise AIMConfigError(f"{args.model} is an image model (LLaVA-1.5); pass --image, or a LLaVA-OneVision model")
    conversation = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    media_kw = {"videos": [media]} if is_video else {"images": [media]}
    inputs = processor(text=prompt, return_tensors="pt", **media_kw).to(args.device)
    if model.dtype != torch.float32:
        for key in ("pixel_values", "pixel_values_videos"):
            if key in inputs:
                inputs[key] = inputs[key].to(model.dtype)

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
        "aim": cfg.to_dict(),
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
    if args.json:
        print(json.dumps(result))
    else:
        print(format_summary(result))
    return 0


def format_summary(r: dict) -> str:
    aim = r["aim"]
    lines = []
    if r["random_weights"]:
        lines.append(f"NOTE: {r['model']} has RANDOM weights: the answer below is meaningless; "
                     "it shows the pipeline and AIM's token counts.")
    lines.append(f"media     : {r['media']} ({r['frames']} frame{'s' if r['frames'] != 1 else ''})")
    lines.append(f"question  : {r['question']}")
    lines.append(f"answer    : {r['answer']!r}")
    setting = ("off" if aim["retention"] >= 1 and aim["l1"] is None else
               f"retention={aim['retention']:g}, l1={aim['l1']}, l2={aim['l2']}, pruning={aim['pruning_mode']}")
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
    t = r["timings"]
    lines.append(f"time      : decode {t['decode_s']:.2f}s, load {t['load_s']:.2f}s, generate {t['generate_s']:.2f}s")
    return "\n".join(lines)
