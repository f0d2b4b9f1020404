#!/usr/bin/env python
"""Parts of scripts/gpu_check.sh that are Python: the removal-vs-mask tolerance, the analyzer's
prediction for the same hardware, the batching throughput, and the final JSON + markdown.

    python scripts/gpu_check.py tolerance --device cuda --out FILE.json
    python scripts/gpu_check.py flops --device cuda --out FILE.json
    python scripts/gpu_check.py batching --device cuda --out FILE.json
    python scripts/gpu_check.py report --parts DIR --out-dir OUT

Runs without lmms-eval and without PyAV (neither is on the GPU machine).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch


def _json_out(path: str, payload: Dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(payload, indent=1, default=str) + "\n")


# -- removal vs mask ----------------------------------------------------------------------------
def _prefill_hidden(lm, cfg, ids) -> torch.Tensor:
    from llava.bench.measure import VISUAL_ID
    from llava.model.runtime import AIMRuntime, install_pruning

    runtime = AIMRuntime(cfg, [VISUAL_ID])
    install_pruning(lm, runtime)
    runtime.set_visual_mask(ids)
    try:
        with torch.inference_mode():
            return lm(input_ids=ids, use_cache=True).last_hidden_state.float()
    finally:
        runtime.uninstall()


def _compare(a: torch.Tensor, b: torch.Tensor, text: torch.Tensor) -> Dict[str, float]:
    """Differences at the text positions (pruned visual positions hold no output)."""
    x, y = a[0, text], b[0, text]
    diff = (x - y).abs()
    cosine = torch.nn.functional.cosine_similarity(x, y, dim=-1)
    return {"max_abs": float(diff.max()), "max_rel": float(diff.max() / y.abs().max()),
            "mean_abs": float(diff.mean()), "min_cosine": float(cosine.min())}


def tolerance(device: str, big: bool, frames: int) -> Dict[str, Any]:
    """AIM's removal against the masked reference on the same input, in float32 and in bf16 on
    SDPA, next to bf16's own noise (mask bf16 against mask float32). Random weights, the
    default schedule, text positions compared after the final norm."""
    from llava.aim.config import AIMConfig
    from llava.aim.merge import merged_token_count
    from llava.aim.policy import aim_default_layers
    from llava.bench.measure import VISUAL_ID, prompt_ids
    from llava.bench.models import build_lm, reference_decoder_config, small_decoder_config

    config = reference_decoder_config("sdpa") if big else small_decoder_config(attn="sdpa")
    l1, l2 = aim_default_layers(config.num_hidden_layers)
    visual = frames * merged_token_count(196, 0.25) + 1
    lm = build_lm(config, device, torch.float32)
    ids = prompt_ids(visual, 100, device)
    text = (ids[0] != VISUAL_ID).nonzero().squeeze(1)
    cfgs = {mode: AIMConfig(retention=0.25, l1=l1, l2=l2, pruning_mode=mode) for mode in ("remove", "mask")}
    fp32 = {mode: _prefill_hidden(lm, cfg, ids) for mode, cfg in cfgs.items()}
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    lm.to(dtype)
    low = {mode: _prefill_hidden(lm, cfg, ids) for mode, cfg in cfgs.items()}
    return {
        "language_model": "Qwen2-7B" if big else "small Qwen2", "attention": "sdpa",
        "low_precision": str(dtype).replace("torch.", ""), "tokens": int(ids.shape[1]), "l1": l1, "l2": l2,
        "remove_vs_mask_float32": _compare(fp32["remove"], fp32["mask"], text),
        "remove_vs_mask_low": _compare(low["remove"], low["mask"], text),
        "mask_low_vs_mask_float32": _compare(low["mask"], fp32["mask"], text),
        "flash_attention_2": "not measured: flash-attn is not installed on the GPU machine",
    }


# -- the analyzer for this hardware -------------------------------------------------------------
def flops(device: str) -> Dict[str, Any]:
    """The analyzer's prefill of LLaVA-OneVision-7B's LLM (32 frames, 100 text tokens, the
    runtime's newline token) on this device's roofline, bf16, fused attention: the bench's own
    prediction (llava.bench.predict) for its baseline, merge-only and AIM cases."""
    from llava.bench.cases import default_cases
    from llava.bench.models import reference_decoder_config
    from llava.bench.predict import cuda_hardware, predict

    hardware = cuda_hardware(torch.device(device)) if torch.device(device).type == "cuda" else "nvidia_H200"
    predicted = predict(reference_decoder_config(), default_cases(32, 196, 100, 28), 32, 196, hardware, 2, True)
    out = {"hardware": hardware if isinstance(hardware, str) else hardware.to_dict()}
    for name in ("baseline", "merge-only", "aim"):
        out[name] = {key: predicted[name][key] for key in ("prefill_tflops", "prefill_ms", "overhead_ms")}
    out["aim"]["speedup"] = predicted["aim"]["speedup"]
    return out


# -- batching throughput ------------------------------------------------------------------------
def _interleaved_rates(runners: Dict[int, Any], requests: int, rounds: int, device: str) -> Dict[str, Any]:
    """Samples/s of each batch size: one warm-up, then ``rounds`` rounds that run every size once
    (round-robin, so a change in the machine's load hits every size alike); median and best."""
    from types import SimpleNamespace

    from llava.bench.timers import interleaved, time_call

    cases = [SimpleNamespace(size=size, run=run, times_s=[]) for size, run in runners.items()]
    interleaved(cases, lambda case: time_call(case.run, device), rounds, warmup=1)
    out = {}
    for case in cases:
        median = statistics.median(case.times_s)
        out[str(case.size)] = {"times_s": case.times_s, "median_s": median, "samples_per_s": requests / median,
                               "best_samples_per_s": requests / min(case.times_s)}
    first = out[str(cases[0].size)]
    for values in out.values():
        values["gain"] = values["samples_per_s"] / first["samples_per_s"]
        values["best_gain"] = values["best_samples_per_s"] / first["best_samples_per_s"]
    return out


def _batching_report(model: str, dtype: str, runners, answers, requests: int, sizes: List[int], frames: int,
                     new_tokens: int, rounds: int, device: str) -> Dict[str, Any]:
    """Time the runners side by side; the report both batching checks write."""
    results = _interleaved_rates(runners, requests, rounds, device)
    return {"model": model, "dtype": dtype, "requests": requests, "frames": frames, "new_tokens": new_tokens,
            "rounds": rounds, "by_batch_size": results,
            "same_tokens_as_batch_1": {str(s): answers[s] == answers[sizes[0]] for s in sizes}}


def batching(device: str, requests: int, sizes: List[int], new_tokens: int, frames: int, rounds: int) -> Dict[str, Any]:
    """Samples/s of the tiny LLaVA-OneVision with AIM answering ``requests`` same-geometry video
    prompts, in batches of each size (the plugin's batching: left-padded processor inputs, one
    generate per batch; a fixed number of new tokens so that every size does the same work)."""
    from llava.aim.config import AIMConfig
    from llava.bench.models import synthetic_video
    from llava.eval import prompts
    from llava.model.builder import load_pretrained_model

    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    model, processor = load_pretrained_model("tiny-llava-onevision", aim=AIMConfig(), torch_dtype=dtype)
    model.to(device)
    videos = [synthetic_video(frames, 96) for _ in range(requests)]
    questions = [f"What happens in clip {i}?" for i in range(requests)]
    texts = [prompts.user_prompt(processor, q, "video", 1) for q in questions]
    pad = processor.tokenizer.pad_token_id
    settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
    answers = {}

    def runner(size):
        def run_all():
            out = []
            for i in range(0, requests, size):
                inputs = prompts.batch_processor_inputs(processor, texts[i:i + size], "video",
                                                        [[v] for v in videos[i:i + size]], device, dtype)
                with torch.inference_mode():
                    gen = model.generate(**inputs, **settings)
                out += gen[:, inputs["input_ids"].shape[1]:].tolist()
            answers[size] = out
        return run_all

    return _batching_report("tiny-llava-onevision + AIM (random weights)", str(dtype).replace("torch.", ""),
                            {size: runner(size) for size in sizes}, answers, requests, sizes, frames, new_tokens,
                            rounds, device)


def batching_through_plugin(device: str, requests: int, sizes: List[int], new_tokens: int, frames: int,
                            rounds: int) -> Dict[str, Any]:
    """The same measurement through the lmms-eval plugin itself (needs lmms-eval): its
    generate_until over ``requests`` video requests of the shipped synthetic task's clips."""
    import tempfile

    from lmms_eval.api.instance import Instance

    from llava.eval import synthetic
    from llava.eval.lmms_model import LlavaOneVisionAIM

    folder = Path(tempfile.mkdtemp(prefix="llava-aim-batching-"))
    clips = [str(synthetic.ensure_video(synthetic.clip_name(i % 8), folder)) for i in range(requests)]
    gen = {"max_new_tokens": new_tokens, "temperature": 0, "until": ["\n\n"]}

    def request(i):
        return Instance("generate_until", (f"What happens in clip {i}?", dict(gen), lambda doc: [doc["video"]], i,
                                           "t", "test"), idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1})

    answers = {}
    batch = [request(i) for i in range(requests)]

    dtype = "float32" if device == "cpu" else "bfloat16"

    def runner(size):
        model = LlavaOneVisionAIM(pretrained="tiny-llava-onevision", device=device, max_frames_num=frames,
                                  batch_size=size, torch_dtype=dtype)
        model.task_dict = {"t": {"test": [{"video": c} for c in clips]}}

        def run_all():
            answers[size] = [r.text for r in model.generate_until(batch)]
        return run_all

    # the dtype it really ran in (the report said float32 even for the bfloat16 run on a GPU)
    return _batching_report("tiny-llava-onevision + AIM through the lmms-eval plugin", dtype,
                            {size: runner(size) for size in sizes}, answers, requests, sizes, frames, new_tokens,
                            rounds, device)


# -- the report ---------------------------------------------------------------------------------
def _load(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _bench_lines(bench: Dict[str, Any]) -> List[str]:
    """The markdown of one `llava-aim bench --json` report."""
    from llava.bench.report import describe_input, markdown_table

    model = f"--model {bench['model']}: " if bench.get("model") else ""
    lines = ["", f"## llava-aim bench {model}{bench['device']}, {bench['dtype']}, {bench['attn']}, "
             f"{bench['language_model']['layers']} layers x {bench['language_model']['hidden']}", "",
             f"Input (LLM only): {describe_input(bench['input'])}.", "",
             "Language model alone:", "", markdown_table(bench["language_model_prefill"], bench["predicted"]), ""]
    lines.append(f"Default AIM vs baseline: measured {bench['measured_speedup']:.2f}x, predicted "
                 f"{bench['predicted_speedup']:.2f}x ({bench['prediction_hardware']['name']}), "
                 f"measured/predicted {bench['measured_over_predicted']:.2f}; vs the official code (mask, eager): "
                 f"{bench.get('speedup_vs_official', float('nan')):.2f}x; AIM overhead "
                 f"{100 * bench['overhead']['fraction']:.2f}% of its prefill.")
    if bench.get("end_to_end_prefill"):
        lines += ["", "End to end:", "", markdown_table(bench["end_to_end_prefill"]), "",
                  f"End to end: {bench['end_to_end_speedup']:.2f}x vs baseline, "
                  f"{bench.get('end_to_end_speedup_vs_official', float('nan')):.2f}x vs the official code."]
    return lines


def report(parts: Path, out_dir: Path, mode: str) -> Dict[str, Any]:
    steps = []
    steps_file = parts / "steps.tsv"
    if steps_file.exists():
        for line in steps_file.read_text().splitlines():
            name, rc, seconds = line.split("\t")
            steps.append({"step": name, "exit_status": int(rc), "seconds": float(seconds)})
    bench, tol = _load(parts / "bench.json"), _load(parts / "tolerance.json")
    batch, fl = _load(parts / "batching.json"), _load(parts / "flops.json")
    bench_qwen = _load(parts / "bench_qwen.json")
    env = _load(parts / "environment.json") or {}
    result = {"date": datetime.date.today().isoformat(), "mode": mode, "environment": env, "steps": steps,
              "bench": bench, "tolerance": tol, "batching": batch, "flops": fl, "bench_qwen": bench_qwen}
    _json_out(str(out_dir / "gpu_check.json"), result)
    lines = [f"# gpu_check ({mode}), {result['date']}", ""]
    if env:
        lines.append("Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()))
        lines.append("")
    lines += ["| step | exit status | seconds |", "|---|---|---|"]
    lines += [f"| {s['step']} | {s['exit_status']} | {s['seconds']:.0f} |" for s in steps]
    for part in (bench, bench_qwen):
        if part:
            lines += _bench_lines(part)
    if tol:
        lines += ["", f"## Removal vs mask ({tol['language_model']}, {tol['tokens']} tokens, SDPA)", "",
                  "| comparison | max abs | max rel | min cosine |", "|---|---|---|---|"]
        for key in ("remove_vs_mask_float32", "remove_vs_mask_low", "mask_low_vs_mask_float32"):
            c = tol[key]
            label = key.replace("_low", f"_{tol['low_precision']}")
            lines.append(f"| {label} | {c['max_abs']:.3g} | {c['max_rel']:.3g} | {c['min_cosine']:.6f} |")
    if batch:
        lines += ["", f"## Batching ({batch['model']}, {batch['dtype']}, {batch['requests']} requests)", "",
                  "| batch size | samples/s (median) | gain | best round samples/s | gain | same tokens as batch 1 |",
                  "|---|---|---|---|---|---|"]
        for size, v in batch["by_batch_size"].items():
            lines.append(f"| {size} | {v['samples_per_s']:.2f} | {v['gain']:.2f}x | {v['best_samples_per_s']:.2f} | "
                         f"{v['best_gain']:.2f}x | {batch['same_tokens_as_batch_1'][size]} |")
    if fl:
        lines += ["", "## Analyzer for this hardware (LLaVA-OneVision-7B, 32 frames, bf16, fused attention)", "",
                  "| setting | TFLOPs | predicted prefill ms |", "|---|---|---|"]
        for name in ("baseline", "merge-only", "aim"):
            lines.append(f"| {name} | {fl[name]['prefill_tflops']:.2f} | {fl[name]['prefill_ms']:.1f} |")
    (out_dir / "gpu_check.md").write_text("\n".join(lines) + "\n")
    return result


def environment() -> Dict[str, Any]:
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    for name in ("huggingface_hub", "tokenizers", "av", "llava"):
        try:
            module = __import__(name)
            env[name] = getattr(module, "__version__", "installed") + f" ({Path(module.__file__).parent})"
        except ImportError:
            env[name] = "missing"
    return env


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check.py")
    sub = parser.add_subparsers(dest="part", required=True)
    for name in ("tolerance", "flops", "batching", "environment"):
        p = sub.add_parser(name)
        p.add_argument("--device", default="cuda")
        p.add_argument("--out", required=True)
        p.add_argument("--small", action="store_true", help="the small model instead of the 7B architecture")
        p.add_argument("--frames", type=int, default=32)
        p.add_argument("--requests", type=int, default=16)
        p.add_argument("--sizes", default="1,2,4,8")
        p.add_argument("--new-tokens", type=int, default=16)
        p.add_argument("--rounds", type=int, default=3)
        p.add_argument("--plugin", action="store_true", help="batching: through the lmms-eval plugin (needs lmms-eval)")
    p = sub.add_parser("report")
    p.add_argument("--parts", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--mode", default="gpu")
    args = parser.parse_args(argv)
    t0 = time.time()
    if args.part == "report":
        report(Path(args.parts), Path(args.out_dir), args.mode)
        return 0
    if args.part == "tolerance":
        payload = tolerance(args.device, not args.small, args.frames)
    elif args.part == "flops":
        payload = flops(args.device)
    elif args.part == "environment":
        payload = environment()
    elif args.plugin:
        payload = batching_through_plugin(args.device, args.requests, [int(s) for s in args.sizes.split(",")],
                                          args.new_tokens, args.frames, args.rounds)
    else:
        payload = batching(args.device, args.requests, [int(s) for s in args.sizes.split(",")], args.new_tokens,
                           args.frames, args.rounds)
    if args.part != "environment":
        payload["seconds"] = time.time() - t0
    _json_out(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
