"""``llava-aim bench``: measured prefill of AIM next to the analyzer's prediction.

Two measurements on the same input (a video prompt: frames x tokens-per-frame visual tokens,
the family's newline tokens, text tokens around them; a family that merges temporal groups of
2 frames: groups x tokens per group), each configuration timed in interleaved rounds
(round-robin, so machine noise hits all alike) after a warm-up; medians are reported:

* language model alone: the decoder gets the token sequence the LLM would receive (merged
  length for the merging configurations) with the visual positions marked (an M-RoPE family:
  with (3, 1, S) position ids in the stock layout);
* end to end: the multimodal model (vision tower, projector or patch merger, merging, LLM),
  from the preprocessed pixels to the prefill's last-token logits.

Configurations: baseline (no AIM); "official", the official code's way of running AIM (mask
mode under eager attention), so that the gain over it is a ratio measured in the same run;
the mask mode on this run's attention; merging only; and the default AIM setting (removal).
Per configuration: median time (CUDA events on GPU, perf_counter on CPU), peak memory growth
during the prefill, KV-cache bytes. AIM's own overhead (merging, importance) is measured
separately in instrumented runs, so it never perturbs the timed ones.

Models (--model), random weights from a fixed seed: every family of llava.model.families at
two scales, built from its tiny model's config (token ids, processor, geometry) with the sizes
replaced (``llava.bench.models``; --model's help lists them):
  small-<tiny name>  a small decoder (8 layers, hidden 256, 8/2 heads) and a 2-layer, 128-wide
                     tower at the family's geometry; "small" is the first family's (the CPU default)
  <reference>        the family's reference checkpoint's architecture, bf16 on CUDA (the first
                     family's is the CUDA default)
The visual tokens are counted by the family's adapter. Families whose tokens follow the frames'
resolution (pixel limits) take --frames and --max-pixels (default 200704, the official run:
square frames resized to 448 x 448 px, 16 x 16 tokens per temporal group of 2 frames; 32 frames
-> 16 groups x 256 tokens), merged per temporal group. The end-to-end measurement feeds a
video: an image-only family runs with --lm-only. The memory a run needs is estimated before
anything is built; a run that cannot fit exits 2.

``--layerwise`` instead measures AIM's overhead at the 7B decoder shape where the whole model
does not fit (float32 on CPU): one decoder layer timed at every token count of the schedule,
importance and merging at that shape, summed (``measure_layerwise``); ``--model <reference>``
times that family's decoder layer at its token counts (e.g. 16 groups x 64 tokens at 1/4). AIM's
relative overhead depends on the shape (importance ~ N^2 x hidden per scoring layer, a decoder
layer ~ N x hidden^2), so the small model overstates it about 20-fold.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from llava.aim.config import AIMConfig
from llava.aim.merge import merged_token_count
from llava.aim.policy import PRUMERGE_METHODS, STEP_METHODS, aim_default_layers
from llava.bench.cases import OFFICIAL_ATTENTION, PrefillCase, default_cases, method_case
from llava.bench.load import assess, judged, sample, usable_cores
from llava.bench.measure import (
    measure_layerwise,
    measure_lm_overhead,
    measure_method_overhead,
    mrope_prompt_positions,
    run_end_to_end_benchmark,
    run_prefill_benchmark,
)
from llava.bench.memory import (
    PrefillShape,
    available_bytes,
    decoder_params,
    describe_bytes,
    merger_tower_bytes,
    merger_tower_params,
    prefill_bytes,
    vision_bytes,
    vision_params,
)
from llava.bench.models import (
    BENCH_MODELS,
    BenchModel,
    bench_model,
    build_lm,
    build_model,
    square_side,
    synthetic_video,
    tiny_config,
)
from llava.bench.predict import calibrate_cpu, cuda_hardware, predict
from llava.bench.report import OVERHEAD_GOAL, bench_report, format_bench, format_layerwise, lm_summary, machine, versions
from llava.errors import AIMConfigError, InsufficientMemoryError
from llava.flags import check_aim_flags

E2E_TEXT_TOKENS = 20  # the chat template around the question, end to end (an upper bound)
# the tiny templates of the families whose tokens follow the resolution (default system turn + question): 56
RESOLUTION_E2E_TEXT_TOKENS = 64
MEMORY_HEADROOM = 0.9  # plan for at most this fraction of what is available
IMAGE_MIN_PIXELS = 56 * 56  # those families' image processors' floor


def add_bench_command(subparsers) -> None:
    p = subparsers.add_parser("bench", help="measured prefill time, memory and KV cache, next to the prediction",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--model", choices=["auto", *BENCH_MODELS], default="auto",
                   help="random-weight architecture, a family at the small size or its reference checkpoint's: "
                        + ", ".join(f"{name} ({m.title})" for name, m in BENCH_MODELS.items())
                        + "; default auto: the first on CPU, its reference size on CUDA")
    p.add_argument("--frames", type=int, default=32,
                   help="video frames (default 32; families with pixel limits: 2 per temporal group)")
    p.add_argument("--tokens-per-frame", type=int, default=None,
                   help="LLM-only measurement: visual tokens per frame before merging (default and end to end: what "
                        "the family gives a frame, e.g. 196); models whose tokens follow the resolution take "
                        "--max-pixels instead")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="models whose tokens follow the resolution: pixels per frame (default 200704: 448 x 448 px, "
                        "16 x 16 tokens per temporal "
                        "group); the minimum is the video processors' 100352, below it 3136 (56 x 56 px)")
    p.add_argument("--text-tokens", type=int, default=100, help="LLM-only measurement: text tokens (default 100)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed rounds after one warm-up round (median; default 5, with --layerwise 2)")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"],
                   help="attention of every configuration but 'official', which always runs eager (default sdpa)")
    p.add_argument("--lm-only", action="store_true", help="skip the end-to-end measurement")
    p.add_argument("--pruning-only", action="store_true", help="also time pruning without merging")
    p.add_argument("--layerwise", action="store_true",
                   help="instead: AIM's overhead measured layer by layer at a reference decoder shape (the first "
                        "family's 7B LLM; --model <reference>: that checkpoint's), which does not fit whole in CPU "
                        "memory; about 80 s on 2 CPU cores, ~2 GB")
    from llava.aim.knobs import add_knob_flags
    from llava.analysis.cli import add_method_options

    # --retention, --l1, --l2, and --method X, which adds a case "X" (a baseline or control) next to AIM's
    add_knob_flags(p, "bench", retention=0.25)
    add_method_options(p)
    p.add_argument("--methods", type=method_names, default=None, metavar="M1,M2,...",
                   help="time several methods in the same interleaved rounds, each its own case next to AIM's, each "
                        "one's own work (score, reduction) measured apart: any registered methods (llava.aim.policy), "
                        "comma-separated, or all; before-the-LLM methods run at --retention where it is their budget")
    p.add_argument("--json", action="store_true", help="print one JSON object and nothing else")
    p.set_defaults(func=bench_command)


def method_names(text: str) -> Tuple[str, ...]:
    """``--methods fastv,visionzip`` -> ("fastv", "visionzip"); "all": every registered method but aim
    (checked against the registry when the command runs, so a method registered later is taken)."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated method names, got {text!r}")
    return names


def methods_of(args) -> Tuple[str, ...]:
    """The methods timed next to AIM: --methods (all: every registered one), else --method's."""
    from llava.aim.policy import SPECS

    chosen = getattr(args, "methods", None)
    if chosen is None:
        method = getattr(args, "method", "aim")
        return () if method == "aim" else (method,)
    if chosen == ("all",):
        return tuple(m for m in SPECS if m != "aim")
    unknown = [m for m in chosen if m not in SPECS]
    if unknown:
        raise AIMConfigError(f"--methods: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not registered; "
                             f"registered methods: {', '.join(SPECS)}")
    return tuple(m for m in chosen if m != "aim")


def _check_args(args) -> torch.device:
    if args.repeats is None:
        args.repeats = 2 if getattr(args, "layerwise", False) else 5
    if args.repeats < 1:
        raise AIMConfigError(f"--repeats must be at least 1, got {args.repeats}")
    tokens = getattr(args, "tokens_per_frame", None)
    if args.frames < 1 or (tokens is not None and tokens < 1) or args.text_tokens < 2:
        raise AIMConfigError("--frames and --tokens-per-frame must be >= 1 and --text-tokens >= 2")
    # AIM's case: the config's rules, worded in flags (--method adds its own case next to it)
    check_aim_flags(args.retention, args.l1, args.l2, has_no_prune=False)
    method = getattr(args, "method", "aim")
    if getattr(args, "methods", None) is not None:
        if method != "aim" or args.drop_layers is not None or args.drop_ratio is not None \
                or getattr(args, "kept_tokens", None) is not None or getattr(args, "layerwise", False):
            raise AIMConfigError("--methods times each method at its defaults: leave out --method, --drop-layers, "
                                 "--drop-ratio, --kept-tokens and --layerwise (use --method for one method's knobs)")
        methods_of(args)  # every name registered
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


# -- the input, per family ---------------------------------------------------------------------
@dataclass(frozen=True)
class BenchInput:
    """The video prompt, as the language model receives it: ``units`` x ``tokens_per_unit``
    visual tokens + ``newline`` + text, as the family's adapter counts them: units are frames
    (e.g. 196 tokens each end to end, ``tokens_per_frame`` in the LLM-only measurement) and the
    family's newline tokens; for a family with pixel limits, units are temporal groups of 2
    frames, their tokens follow from the pixel limits."""

    frames: int
    units: int
    tokens_per_unit: int  # the LLM-only measurement
    e2e_tokens_per_unit: int  # what the model's processor gives the synthetic video
    newline: int
    text_tokens: int
    frame_side: int  # the synthetic video's square frames, in pixels
    e2e_text_tokens: int  # an upper bound of the end-to-end prompt's text
    grid: Optional[Tuple[int, int]] = None  # families with pixel limits: merged-token rows x cols per group
    max_pixels: Optional[int] = None
    min_pixels: Optional[int] = None
    resized: Optional[Tuple[int, int]] = None  # the frames' size after the processor's resize (the adapter's)

    def to_dict(self) -> dict:
        if self.grid is None:
            return {"frames": self.frames, "tokens_per_frame": self.tokens_per_unit, "text_tokens": self.text_tokens,
                    "newline_tokens": self.newline}
        return {"frames": self.frames, "temporal_groups": self.units, "tokens_per_group": self.tokens_per_unit,
                "grid": list(self.grid), "max_pixels": self.max_pixels, "min_pixels": self.min_pixels,
                "frame_size": [self.frame_side, self.frame_side], "text_tokens": self.text_tokens,
                "newline_tokens": self.newline, "resized_frame_size": None if self.resized is None else list(self.resized)}


def bench_input(args, spec: BenchModel) -> BenchInput:
    """The input of this run from the flags, counted by the family's adapter (refusing the other
    families' input flags)."""
    max_pixels = getattr(args, "max_pixels", None)
    tokens = getattr(args, "tokens_per_frame", None)
    adapter, config = spec.adapter, tiny_config(spec.family)
    if not spec.resolution:
        if max_pixels is not None:
            raise AIMConfigError(f"--max-pixels describes the inputs of models whose tokens follow the resolution; "
                                 f"--model {spec.name} takes --tokens-per-frame")
        count = adapter.visual_tokens(config, args.frames)
        return BenchInput(args.frames, count.units, count.tokens_per_unit if tokens is None else tokens,
                          count.tokens_per_unit, adapter.newline_tokens, args.text_tokens,
                          config.vision_config.image_size, E2E_TEXT_TOKENS)
    if tokens is not None:
        raise AIMConfigError(f"--model {spec.name} counts its tokens from --frames and --max-pixels (16 x 16 per "
                             "2 frames at 200704); --tokens-per-frame is for the other families")
    factor = config.vision_config.patch_size * config.vision_config.spatial_merge_size
    max_pixels = adapter.default_max_pixels if max_pixels is None else max_pixels
    if isinstance(max_pixels, bool) or max_pixels < factor * factor:
        raise AIMConfigError(f"--max-pixels must be at least {factor * factor} (one {factor} x {factor} px block), "
                             f"got {max_pixels}")
    # the video processors' floor; below it the image processors' (a floor above max_pixels would
    # enlarge every frame past it)
    floor = adapter.video_min_pixels
    min_pixels = floor if max_pixels >= floor else min(IMAGE_MIN_PIXELS, max_pixels)
    explicit = getattr(args, "max_pixels", None) is not None
    side = adapter.default_frame_side if adapter.default_frame_side and not explicit else square_side(max_pixels)
    count = adapter.visual_tokens(config, args.frames, side, side, max_pixels=max_pixels, min_pixels=min_pixels)
    return BenchInput(args.frames, count.units, count.tokens_per_unit, count.tokens_per_unit, 0, args.text_tokens,
                      side, RESOLUTION_E2E_TEXT_TOKENS, grid=count.grid, max_pixels=max_pixels, min_pixels=min_pixels,
                      resized=count.frame_size)


def _check_method(args, spec: BenchModel) -> None:
    for method in methods_of(args):
        if method in PRUMERGE_METHODS and not spec.adapter.supports_prumerge:
            others = [m.name for m in BENCH_MODELS.values() if m.adapter.supports_prumerge]
            raise AIMConfigError(f"--method {method}: the {spec.adapter.title} adapter does not implement it "
                                 f"(--model {spec.name}): use --model {' or '.join(others[:2])}")
    if not getattr(args, "lm_only", True) and not getattr(args, "layerwise", False) \
            and "video" not in spec.adapter.media:
        raise AIMConfigError(f"--model {spec.name}: the end-to-end measurement feeds a video, which the "
                             f"{spec.adapter.title} family does not take; add --lm-only")


# -- memory, before anything is built --------------------------------------------------------
def estimate_bench_memory(args, text_config, vision_dims, dtype_bytes: int, spec: Optional[BenchModel] = None,
                          inp: Optional[BenchInput] = None) -> dict:
    """Bytes the run needs at its peak, by phase: the LLM-only phase (weights, then one prefill
    at a time), and the end-to-end phase (the whole multimodal model, the video and its pixels,
    the vision tower over every frame, one prefill). The phases run one after the other.
    Without ``spec`` / ``inp``: the first family's small model at the flags' sizes."""
    spec = spec or BENCH_MODELS["small"]
    inp = inp or bench_input(args, spec)
    eager = args.attn == "eager"

    def peak_prefill(per_unit: int, text: int) -> int:
        # the largest of the run's prefills: the baseline, the official mask (eager), AIM's removal
        full = inp.units * per_unit + inp.newline + text
        merged = inp.units * merged_token_count(per_unit, args.retention) + inp.newline + text
        shapes = [PrefillShape(full, eager=eager), PrefillShape(merged, eager=True),
                  PrefillShape(merged, eager=eager, explicit_mask=True)]
        return max(prefill_bytes(text_config, s, dtype_bytes) for s in shapes)

    importance = AIMConfig().importance_memory_mb << 20  # the score's buffers are bounded by this
    lm_weights = decoder_params(text_config) * dtype_bytes
    phases = {"language model": lm_weights + peak_prefill(inp.tokens_per_unit, inp.text_tokens) + importance}
    if not args.lm_only:
        per = inp.e2e_tokens_per_unit
        head = text_config.vocab_size * text_config.hidden_size  # lm_head
        if spec.resolution:
            widths = spec.adapter.bench_tower_widths(vision_dims)
            tower = merger_tower_params(widths, vision_dims, text_config.hidden_size)
            video = 2 * inp.units * inp.frame_side ** 2 * 3  # uint8, an odd frame repeated
            inputs = merger_tower_bytes(widths, inp.units * per * 4, video, dtype_bytes)
        else:
            tower = vision_params(vision_dims, text_config.hidden_size)
            inputs = vision_bytes(vision_dims, args.frames, dtype_bytes=dtype_bytes)
        weights = (decoder_params(text_config) + head + tower) * dtype_bytes
        phases["end to end"] = weights + inputs + peak_prefill(per, inp.e2e_text_tokens) + importance
    return phases


def estimate_layerwise_memory(args, text_config, dtype_bytes: int, inp: Optional[BenchInput] = None) -> dict:
    """One decoder layer's weights and its prefill at the largest token count (no cache)."""
    inp = inp or bench_input(args, BENCH_MODELS["small"])
    tokens = inp.units * merged_token_count(inp.tokens_per_unit, args.retention) + inp.newline + inp.text_tokens
    layer = (decoder_params(text_config) - text_config.vocab_size * text_config.hidden_size) // text_config.num_hidden_layers
    need = (layer * dtype_bytes + prefill_bytes(text_config, PrefillShape(tokens, eager=args.attn == "eager"),
                                                dtype_bytes, layers=0)
            + (AIMConfig().importance_memory_mb << 20))
    return {"one decoder layer": need}


def check_fits(phases: dict, device: torch.device, what: str, smaller: str = "small") -> None:
    """Refuse, in one line, a run whose estimated peak does not fit in the available memory."""
    available = available_bytes(device)
    if available is None:
        return  # nothing to compare with: run and let the measurement say
    phase, need = max(phases.items(), key=lambda kv: kv[1])
    if need > MEMORY_HEADROOM * available:
        raise InsufficientMemoryError(
            f"{what} needs about {describe_bytes(need)} ({phase} phase, estimated) but only "
            f"{describe_bytes(available)} is available on {device}; use fewer --frames, --lm-only, "
            f"--model {smaller}, --layerwise (the 7B shape one layer at a time) or a larger device"
        )


def e2e_processor_kwargs(spec: BenchModel, video) -> dict:
    """What the family's processor needs beside the synthetic video's frames, from its adapter as
    run and the plugin get it (e.g. the clip's metadata, so that a processor which samples frames
    by rate keeps every frame the input counts). The synthetic clip has no container: its
    duration is unknown, so its frames are taken at 24 per second (the processors' own fallback;
    the note saying so is left out, as a rate changes no token count here)."""
    return spec.adapter.plugin_input_kwargs("video", [None], [video], lambda note: None)


def _what(args, spec: BenchModel) -> str:
    model = f"--model {spec.name}" if spec.big else f"the {spec.title} model"
    return f"{model} at --frames {args.frames}"


def _mrope_positions(inp: BenchInput, device, spec: Optional[BenchModel] = None):
    """The LLM-only prompt's M-RoPE ids per case (None for 1-D RoPE models)."""
    if inp.grid is None or (spec is not None and not spec.adapter.mrope_positions):
        return None
    cols = inp.grid[1]

    def positions(case: PrefillCase):
        per_group, rest = divmod(case.visual_tokens, inp.units)
        if rest:
            raise RuntimeError(f"case {case.name}: {case.visual_tokens} visual tokens over {inp.units} groups")
        return mrope_prompt_positions(case.text_tokens, inp.units, per_group, cols, device)

    return positions


# -- the command --------------------------------------------------------------------------------
def bench_command(args) -> int:
    import transformers

    device = _check_args(args)
    before = sample()  # the load before anything is built (see llava.bench.load)
    spec = bench_model(args.model, device, layerwise=args.layerwise)
    inp = bench_input(args, spec)
    _check_method(args, spec)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype_bytes = torch.finfo(dtype).bits // 8
    text_config = spec.text_config(args.attn)
    num_layers = text_config.num_hidden_layers
    if args.l1 is not None:
        AIMConfig(retention=args.retention, l1=args.l1, l2=args.l2).check_against_model(num_layers)
    say = (lambda msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    bar = _progress_bar(args.json)
    if assess(before, before, _bench_threads(device))["busy"]:  # say it now, not after the whole run
        say(f"llava-aim bench: warning: the machine is busy (load average {before.loadavg:.1f} on "
            f"{usable_cores()} cores): the timings will not be usable")

    if args.layerwise:
        check_fits(estimate_layerwise_memory(args, text_config, dtype_bytes, inp), device,
                   f"--layerwise at --frames {args.frames}", spec.small_name)
        return layerwise_command(args, device, dtype, text_config, spec, inp, before=before)

    vision_dims = spec.vision_dims()
    check_fits(estimate_bench_memory(args, text_config, vision_dims, dtype_bytes, spec, inp), device,
               _what(args, spec), spec.small_name)

    say(f"llava-aim bench: {spec.decoder_title} language model, random weights, "
        f"{str(dtype).replace('torch.', '')}, {args.attn} (official: mask under {OFFICIAL_ATTENTION}), on {device}")
    def cases(tokens_per_unit: int, text: int) -> List[PrefillCase]:
        # the default cases (baseline, official, AIM, ...) plus --method's, for one input geometry
        out = default_cases(inp.units, tokens_per_unit, text, num_layers, args.retention, args.l1, args.l2,
                            newline=inp.newline, pruning_only=args.pruning_only, attn=args.attn)
        for method in methods_of(args):
            out.append(method_case(method, inp.units, tokens_per_unit, text, num_layers, args.retention,
                                   args.l1, args.l2, args.drop_layers, args.drop_ratio, newline=inp.newline,
                                   attn=args.attn))
        return out

    lm = build_lm(text_config, device, dtype)
    lm_cases = cases(inp.tokens_per_unit, inp.text_tokens)
    positions = _mrope_positions(inp, device, spec)
    run_prefill_benchmark(lm, lm_cases, repeats=args.repeats, progress=bar("LLM prefill", args.repeats),
                          positions=positions)
    aim_case = next(c for c in lm_cases if c.name == "aim")
    overhead = measure_lm_overhead(lm, aim_case, inp.units, inp.tokens_per_unit, positions=positions)
    method_overheads = {c.name: measure_method_overhead(lm, c, inp.units, inp.tokens_per_unit, positions=positions)
                        for c in lm_cases if c.name in methods_of(args)}
    del lm
    hardware = cuda_hardware(device) if device.type == "cuda" else calibrate_cpu()
    flash = args.attn == "flash_attention_2" or args.attn == "sdpa"  # fused kernels: no N x N in memory
    predicted = predict(text_config, lm_cases, inp.units, inp.tokens_per_unit, hardware, dtype_bytes, flash)

    e2e_cases: List[PrefillCase] = []
    if not args.lm_only:
        say(f"end to end: {spec.title} (vision tower, projector, merging per "
            f"{'temporal group' if spec.adapter.frames_per_unit > 1 else 'frame'}, LLM)")
        limits = dict(max_pixels=inp.max_pixels, min_pixels=inp.min_pixels) if spec.resolution else {}
        model, processor = build_model(spec.family, text_config, vision_dims, device, dtype, **limits)
        e2e_cases = cases(inp.e2e_tokens_per_unit, 0)
        video = synthetic_video(args.frames, inp.frame_side)
        run_end_to_end_benchmark(model, processor, e2e_cases, video, "What happens in this video?",
                                 repeats=args.repeats, progress=bar("end to end", args.repeats),
                                 processor_kwargs=e2e_processor_kwargs(spec, video))
        del model

    load = assess(before, sample(), _bench_threads(device))
    result = bench_report(args, device, dtype, text_config, lm_cases, e2e_cases, predicted, overhead, hardware,
                          transformers.__version__, model=spec.name, inputs=inp.to_dict(), load=load,
                          method_overheads=method_overheads)
    if args.json:
        print(json.dumps(result))
    else:
        print(format_bench(result))
    return 0


def layerwise_command(args, device: torch.device, dtype: torch.dtype, text_config, spec: Optional[BenchModel] = None,
                      inp: Optional[BenchInput] = None, before=None) -> int:
    import transformers

    before = before or sample()
    spec = spec or bench_model("auto", torch.device("cpu"), layerwise=True)  # the first family's reference
    inp = inp or bench_input(args, spec)
    num_layers = text_config.num_hidden_layers
    if args.l1 is None:
        args.l1, args.l2 = aim_default_layers(num_layers)
    cfg = AIMConfig(retention=args.retention, l1=args.l1, l2=args.l2)
    cfg.check_against_model(num_layers)
    if not args.json:
        print(f"llava-aim bench --layerwise: one random {text_config.hidden_size}-wide {spec.decoder_title} layer, "
              f"{str(dtype).replace('torch.', '')}, {args.attn}, on {device}", file=sys.stderr, flush=True)
    bar = _progress_bar(args.json)("layer-by-layer", 1, unit="part")
    result = measure_layerwise(text_config, cfg, inp.units, inp.tokens_per_unit, inp.text_tokens, device, dtype,
                               repeats=args.repeats, newline=inp.newline, progress=bar)
    load = assess(before, sample(), _bench_threads(device))
    report = {
        "date": datetime.date.today().isoformat(), **machine(device),
        "versions": versions(transformers.__version__),
        "model": spec.name,
        "dtype": str(dtype).replace("torch.", ""), "attn": args.attn,
        "language_model": lm_summary(text_config),
        "input": inp.to_dict(),
        "aim": cfg.to_dict(),
        "layerwise": result,
        "load": load,
        "goals": {"overhead_max": OVERHEAD_GOAL, "overhead_met": judged(result["fraction"] < OVERHEAD_GOAL, load)},
    }
    print(json.dumps(report) if args.json else format_layerwise(report))
    return 0


def _bench_threads(device: torch.device) -> int:
    """Cores the measurement itself keeps busy: torch's threads on CPU, one (the launching
    thread) on a GPU."""
    return torch.get_num_threads() if device.type == "cpu" else 1


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
