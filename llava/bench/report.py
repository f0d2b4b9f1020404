"""`llava-aim bench` results: the JSON report and its human-readable table."""

from __future__ import annotations

import datetime
import platform
from typing import Any, Dict, List, Optional

import torch

from llava.bench.cases import CASE_LABELS, PrefillCase
from llava.bench.load import describe, judged, verdict

SPEEDUP_GOAL = {"cpu": 0.7, "cuda": 0.8}  # measured / predicted, default AIM vs baseline
OVERHEAD_GOAL = 0.03  # merging + importance, fraction of the AIM prefill


def machine(device: torch.device) -> Dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {"device": name, "threads": torch.get_num_threads()}


def versions(transformers_version: str) -> Dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers_version}


def lm_summary(text_config) -> Dict[str, int]:
    return {"layers": text_config.num_hidden_layers, "hidden": text_config.hidden_size,
            "intermediate": text_config.intermediate_size,
            "heads": text_config.num_attention_heads, "kv_heads": text_config.num_key_value_heads}


def _by_name(cases: List[PrefillCase], name: str) -> Optional[PrefillCase]:
    return next((c for c in cases if c.name == name), None)


def bench_report(args, device, dtype, text_config, lm_cases, e2e_cases, predicted, overhead, hardware,
                 transformers_version, model: Optional[str] = None,
                 inputs: Optional[Dict[str, Any]] = None, load: Optional[Dict[str, Any]] = None,
                 method_overheads: Optional[Dict[str, Dict[str, Optional[float]]]] = None) -> Dict[str, Any]:
    """The JSON report. ``inputs``: the prompt's description (default: the first family's, from
    the flags); ``model``: the --model that ran; ``load``: llava.bench.load.assess around the
    measurements (goals are not judged, None, when it says the machine was busy)."""
    load = load or {"busy": None}
    lm_base = lm_cases[0]
    aim = _by_name(lm_cases, "aim")
    measured = lm_base.median_s / aim.median_s
    predicted_speedup = predicted["aim"]["speedup"]
    aim_ms = 1e3 * aim.median_s
    overhead_ms = overhead["importance_ms"] + overhead["merging_ms"]
    kind = device.type
    report = {
        "date": datetime.date.today().isoformat(), **machine(device),
        "versions": versions(transformers_version),
        "dtype": str(dtype).replace("torch.", ""), "attn": args.attn,
        "language_model": lm_summary(text_config),
        "model": model,
        "input": inputs or {"frames": args.frames, "tokens_per_frame": args.tokens_per_frame,
                            "text_tokens": args.text_tokens, "newline_tokens": 1},
        "aim": aim.cfg.to_dict(),
        "repeats": args.repeats,
        "measured_speedup": measured,
        "predicted_speedup": predicted_speedup,
        "measured_over_predicted": measured / predicted_speedup,
        # the same prediction with AIM's own work (merging, importance) added to the AIM prefill
        "predicted_speedup_with_overhead": predicted["baseline"]["prefill_ms"]
        / (predicted["aim"]["prefill_ms"] + predicted["aim"]["overhead_ms"]),
        "prediction_hardware": hardware.to_dict(),
        "language_model_prefill": [c.to_dict(lm_base) for c in lm_cases],
        "predicted": predicted,
        "overhead": {**overhead, "total_ms": overhead_ms, "aim_prefill_ms": aim_ms,
                     "fraction": overhead_ms / (aim_ms + overhead["merging_ms"])},
        "end_to_end_prefill": [c.to_dict(e2e_cases[0]) for c in e2e_cases] if e2e_cases else [],
        # each --methods case's own work (its score; its reduction on random frames, None: only inside a
        # vision tower), measured apart from its timed prefills
        "method_overheads": {name: dict(o, setting=describe_setting(_by_name(lm_cases, name).cfg,
                                                                    text_config.num_hidden_layers))
                             for name, o in (method_overheads or {}).items()},
    }
    if aim.decode_tokens_per_s and lm_base.decode_tokens_per_s:
        # decoding on AIM's pruned KV cache against the stock model's full one, same run
        report["decode_speedup"] = aim.decode_tokens_per_s / lm_base.decode_tokens_per_s
    official = _by_name(lm_cases, "official")
    if official is not None:
        # the gain over the official implementation of the same setting, timed in this run
        report["speedup_vs_official"] = official.median_s / aim.median_s
    if e2e_cases:
        e2e_aim = _by_name(e2e_cases, "aim")
        report["end_to_end_speedup"] = e2e_cases[0].median_s / e2e_aim.median_s
        e2e_official = _by_name(e2e_cases, "official")
        if e2e_official is not None:
            report["end_to_end_speedup_vs_official"] = e2e_official.median_s / e2e_aim.median_s
    report["load"] = load
    report["goals"] = {
        "speedup_ratio_min": SPEEDUP_GOAL[kind],
        "speedup_ratio_met": judged(report["measured_over_predicted"] >= SPEEDUP_GOAL[kind], load),
        "overhead_max": OVERHEAD_GOAL,
        "overhead_met": judged(report["overhead"]["fraction"] < OVERHEAD_GOAL, load),
    }
    return report


def describe_setting(cfg, num_layers: int) -> str:
    from llava.aim.policy import describe

    return describe(cfg, num_layers)


def _label(row: Dict[str, Any]) -> str:
    return CASE_LABELS.get(row["name"], row["name"])


def _cells(r: Dict[str, Any], predicted: Optional[Dict[str, Dict[str, float]]]) -> List[str]:
    """One report row's cells, unpadded: the text table and the markdown table show the same."""
    peak = "n/a" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**20:.1f}"
    cells = [_label(r), str(r["llm_input_tokens"]), str(r["sum_tokens"]), f"{r['median_ms']:.1f}",
             f"{r['speedup']:.2f}x"]
    if predicted:
        cells.append(f"{predicted[r['name']]['speedup']:.2f}x")
    decode = r.get("decode_tokens_per_s")
    return cells + [peak, f"{r['kv_cache_bytes'] / 2**20:.1f}", "n/a" if decode is None else f"{decode:.1f}"]


def _table(rows: List[Dict[str, Any]], predicted: Optional[Dict[str, Dict[str, float]]] = None) -> List[str]:
    head = ["configuration", "LLM input", "sum N_j", "median ms", "speed-up"] + (["predicted"] if predicted else [])
    head += ["peak MiB", "KV MiB", "decode tok/s"]
    widths = [-28, 9, 8, 10, 8] + ([9] if predicted else []) + [9, 7, 12]  # negative: left-aligned

    def line(cells: List[str]) -> str:
        return "  " + " ".join(f"{c:<{-w}}" if w < 0 else f"{c:>{w}}" for c, w in zip(cells, widths))

    return [line(head)] + [line(_cells(r, predicted)) for r in rows]


def markdown_table(rows: List[Dict[str, Any]], predicted: Optional[Dict[str, Dict[str, float]]] = None) -> str:
    """One markdown table of a report's rows (docs/benchmarks.md, scripts/gpu_check.sh)."""
    head = ["configuration", "LLM input", "sum N_j", "median ms", "speed-up"]
    head += ["predicted speed-up"] if predicted else []
    head += ["peak MiB", "KV MiB", "decode tok/s"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(_cells(r, predicted)) + " |" for r in rows]
    return "\n".join(out)


def describe_input(i: Dict[str, Any]) -> str:
    """One line for a report's "input": frames x tokens (+ newline), or temporal groups x tokens."""
    if "temporal_groups" in i:
        rows, cols = i["grid"]
        groups = f"{i['temporal_groups']} temporal group{'s' if i['temporal_groups'] != 1 else ''}"
        height, width = i.get("resized_frame_size") or (rows * 28, cols * 28)  # 28: reports written before it
        return (f"{i['frames']} frames = {groups} x {i['tokens_per_group']} tokens "
                f"({rows} x {cols} after the 2x2 patch merger; frames resized to {height} x {width} px, "
                f"max_pixels {i['max_pixels']}) + {i['text_tokens']} text tokens")
    newline = f" + {i['newline_tokens']} newline" if i.get("newline_tokens", 1) else ""
    return f"{i['frames']} frames x {i['tokens_per_frame']} tokens{newline} + {i['text_tokens']} text tokens"


def format_bench(r: Dict[str, Any]) -> str:
    lmc = r["language_model"]
    i = r["input"]
    o = r["overhead"]
    g = r["goals"]
    lines = [
        f"llava-aim bench  {r['date']}  {r['device']} ({r['threads']} threads)  torch {r['versions']['torch']}, "
        f"transformers {r['versions']['transformers']}  {r['dtype']}, {r['attn']}",
        (f"model: {r['model']}; " if r.get("model") else "")
        + f"language model: {lmc['layers']} layers, hidden {lmc['hidden']}, {lmc['heads']}/{lmc['kv_heads']} heads, "
        "random weights",
        f"input (LLM only): {describe_input(i)}; "
        f"AIM: retention {r['aim']['retention']:g}, l1={r['aim']['l1']}, l2={r['aim']['l2']}",
        "",
        "language-model prefill (median of interleaved rounds):",
        *_table(r["language_model_prefill"], r["predicted"]),
        "",
        f"default AIM vs baseline: measured {r['measured_speedup']:.2f}x, predicted {r['predicted_speedup']:.2f}x "
        f"(roofline on {r['prediction_hardware']['name']}): measured/predicted = {r['measured_over_predicted']:.2f} "
        f"(goal >= {g['speedup_ratio_min']}: {verdict(g['speedup_ratio_met'])}); "
        f"predicted with AIM's overhead added: {r['predicted_speedup_with_overhead']:.2f}x "
        f"(measured/predicted = {r['measured_speedup'] / r['predicted_speedup_with_overhead']:.2f})",
    ]
    if "decode_speedup" in r:
        rows = {row["name"]: row for row in r["language_model_prefill"]}
        lines.append(f"decode after the prefill (median tokens/s): AIM {rows['aim']['decode_tokens_per_s']:.1f}, "
                     f"stock {rows['baseline']['decode_tokens_per_s']:.1f}: {r['decode_speedup']:.2f}x")
    if "speedup_vs_official" in r:
        lines.append(f"default AIM (removal, {r['attn']}) vs the official code (mask, eager), same run: "
                     f"{r['speedup_vs_official']:.2f}x")
    lines.append(
        f"AIM overhead: importance {o['importance_ms']:.1f} ms + merging {o['merging_ms']:.1f} ms = "
        f"{100 * o['fraction']:.1f}% of the AIM prefill (goal < {100 * g['overhead_max']:.0f}%: "
        f"{verdict(g['overhead_met'])}); the analyzer predicts "
        f"{100 * r['predicted']['aim']['overhead_fraction']:.1f}% of the time "
        f"({100 * r['predicted']['aim']['overhead_flops_fraction']:.2f}% of the FLOPs) for this model")
    if r["language_model"]["hidden"] < 1024:
        lines.append("  (a narrow model overstates it: importance grows as N^2 x hidden, a layer as N x hidden^2; "
                     "`llava-aim bench --layerwise` measures it at the 7B decoder shape)")
    if r["end_to_end_prefill"]:
        lines += ["", "end to end (vision tower + projector or patch merger + merging + LLM prefill, last-token logits):",
                  *_table(r["end_to_end_prefill"]),
                  f"default AIM vs baseline end to end: {r['end_to_end_speedup']:.2f}x"
                  + (f"; vs the official code: {r['end_to_end_speedup_vs_official']:.2f}x"
                     if "end_to_end_speedup_vs_official" in r else "")]
    if r.get("method_overheads"):
        lines += ["", "each method's own work, measured apart (median ms; reduction on random frames):"]
        for name, o in r["method_overheads"].items():
            reduction = "n/a (runs inside the vision tower)" if o["reduction_ms"] is None else f"{o['reduction_ms']:.1f}"
            lines.append(f"  {name:<16} score {o['importance_ms']:.1f}  reduction {reduction}  ({o['setting']})")
    lines.append("peak MiB: memory growth during one prefill (CUDA allocator peak; on CPU the resident high-water mark)")
    if "load" in r:
        lines.append(describe(r["load"]))
    return "\n".join(lines)


def format_layerwise(r: Dict[str, Any]) -> str:
    lmc, i, lw = r["language_model"], r["input"], r["layerwise"]
    tokens = lw["tokens_per_layer"]
    lines = [
        f"llava-aim bench --layerwise  {r['date']}  {r['device']} ({r['threads']} threads)  torch "
        f"{r['versions']['torch']}, transformers {r['versions']['transformers']}  {r['dtype']}, {r['attn']}",
        f"decoder layer: hidden {lmc['hidden']}, intermediate {lmc['intermediate']}, {lmc['heads']}/{lmc['kv_heads']} "
        f"heads, random weights; the model has {lmc['layers']} layers",
        f"input: {describe_input(i)}; "
        f"AIM: retention {r['aim']['retention']:g}, l1={r['aim']['l1']}, l2={r['aim']['l2']}",
        "",
        f"  {'tokens N_j':>10} {'layers':>6} {'layer ms':>10}",
    ]
    for n, ms in lw["layer_ms"].items():
        lines.append(f"  {n:>10} {tokens.count(int(n)):>6} {ms:>10.1f}")
    imp = lw["importance_ms"]
    lines += [
        "",
        "importance (PageRank) at the scoring layers: "
        + (", ".join(f"layer {j} ({tokens[int(j)]} tokens) {ms:.1f} ms" for j, ms in imp.items()) or "none"),
        f"merging: {lw['merging_ms']:.1f} ms",
        f"AIM prefill (sum over the {len(tokens)} layers, importance included): {lw['aim_prefill_ms']:.0f} ms",
        f"AIM overhead: {lw['overhead_ms']:.1f} ms = {100 * lw['fraction']:.2f}% of the AIM prefill "
        f"(goal < {100 * r['goals']['overhead_max']:.0f}%: {verdict(r['goals']['overhead_met'])})",
        "left out: embeddings, final norm, lm_head, KV-cache writes (the same in every configuration)",
    ]
    if "load" in r:
        lines.append(describe(r["load"]))
    return "\n".join(lines)
