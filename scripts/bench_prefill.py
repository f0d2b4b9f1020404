#!/usr/bin/env python
"""Time the language-model prefill: baseline vs official-style mask mode vs removal.

CPU (default): a small random Qwen2 (8 layers, hidden 256, GQA 8/2 heads) on the paper's
token counts: 32 frames x 196 tokens + 1 newline + 100 text tokens. CUDA: the Qwen2-7B
architecture (LLaVA-OneVision-7B's language model) with random bf16 weights.

    python scripts/bench_prefill.py [--device cuda] [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

import torch
import transformers

from llava.benchmark import build_lm, default_cases, format_table, qwen2_7b_config, run_prefill_benchmark, small_qwen2_config


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--tokens-per-frame", type=int, default=196)
    ap.add_argument("--text-tokens", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        config, dtype = qwen2_7b_config(args.attn), torch.bfloat16
    else:
        config, dtype = small_qwen2_config(attn=args.attn), torch.float32
    lm = build_lm(config, device, dtype)
    cases = default_cases(args.frames, args.tokens_per_frame, args.text_tokens, config.num_hidden_layers)
    progress = None if args.json else (lambda r, n: print(f"  round {r}/{n}", file=sys.stderr, flush=True))
    run_prefill_benchmark(lm, cases, repeats=args.repeats, progress=progress)
    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "transformers": transformers.__version__,
        "dtype": str(dtype), "layers": config.num_hidden_layers, "hidden": config.hidden_size, "attn": args.attn,
    }
    if args.json:
        print(json.dumps({"env": env, "cases": [
            {"name": c.name, "tokens_per_layer": c.tokens_per_layer, "median_s": c.median_s, "times_s": c.times_s,
             "kv_cache_bytes": c.kv_cache_bytes} for c in cases]}))
    else:
        print(env)
        print(format_table(cases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
