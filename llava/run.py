"""``llava-aim run``: answer a question about a video or an image with AIM on.

Defaults to the built-in tiny model and the sample video shipped in the package, so it works
offline (``make demo``). Prints the answer, the visual tokens before and after merging, the
tokens entering each decoder layer, the predicted prefill FLOPs saved (llava.analysis, on the
model's own shape) and the time per stage; ``--json`` prints one object and nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

from llava.aim.config import AIMConfig
from llava.aim.knobs import flag_of, flag_values, refuse_settings_with_aim_off
from llava.aim.policy import PRUMERGE_METHODS, STEP_METHODS, check_typed_settings, own_knobs, spec, video_reduction
from llava.errors import AIMConfigError
from llava.flags import check_aim_flags, flag_errors, typed_knobs

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
SAMPLE_VIDEO = ASSETS / "sample_video.mp4"
SAMPLE_IMAGE = ASSETS / "sample_image.png"
DEFAULT_QUESTION = "What happens in this video? Describe the moving objects."
DEFAULT_IMAGE_QUESTION = "What is shown in this image?"


DEFAULT_FRAMES = 32
DTYPES = ("auto", "float32", "bfloat16", "float16")


class _ModelArgument(argparse._StoreAction):
    """--model: its help lists the families' built-in names (llava.model.builder), read only when
    the help is printed, so that the CLI starts without importing the model families."""

    @property
    def help(self):
        from llava.model.builder import builtin_models_text

        return self._help.replace("{builtin}", builtin_models_text())

    @help.setter
    def help(self, text):
        self._help = text


def add_run_command(subparsers) -> None:
    p = subparsers.add_parser("run", help="answer a question about a video or image with AIM",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, action=_ModelArgument,
                   help="built-in name ({builtin}), hub id or local folder")
    media = p.add_mutually_exclusive_group()
    media.add_argument("--video", help=f"video file (default: the shipped sample, {SAMPLE_VIDEO.name}; "
                                       f"{SAMPLE_IMAGE.name} for image-only models)")
    media.add_argument("--image", help="image file")
    p.add_argument("--question", help="question to ask (default: a description request)")
    p.add_argument("--frames", type=int, default=None,
                   help=f"frames sampled uniformly from the video (default {DEFAULT_FRAMES}: a shorter clip "
                        "gives all its frames, and a note says so); more than the clip has is refused unless "
                        "--frame-sampling official")
    from llava.aim.knobs import add_knob_flags
    from llava.analysis.cli import add_method_options

    # AIM's knobs as llava.aim.config declares them; None = AIMConfig's default (so --no-aim can
    # refuse them when typed).
    add_knob_flags(p, "run")
    p.add_argument("--no-prune", action="store_true", help="merging only, no pruning inside the LLM")
    p.add_argument("--no-aim", action="store_true", help="the stock model, no merging, no pruning")
    p.add_argument("--frame-sampling", choices=["uniform", "official"], default="uniform",
                   help="uniform (default: rounded, never repeats) or official (lmms-eval's "
                        "np.linspace(..., dtype=int))")
    add_method_options(p)
    p.add_argument("--max-new-tokens", type=int, default=24,
                   help="answer length limit in tokens; greedy decoding stops earlier at end of text (default 24)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--dtype", default="auto", choices=DTYPES,
                   help="weights' dtype: auto (default: the checkpoint's own), float32, bfloat16 or float16")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"],
                   help="attention implementation: sdpa (default), eager, or flash_attention_2 (needs the "
                        "flash-attn package and a GPU)")
    from llava.flags import add_use_kernels_flag

    add_use_kernels_flag(p)
    p.add_argument("--json", action="store_true", help="print one JSON object and nothing else")
    p.set_defaults(func=run_command)


def _method(args) -> str:
    return getattr(args, "method", "aim") or "aim"


def _aim_flags_given(args) -> list:
    """The flags that set AIM, as typed (for refusing them next to --no-aim)."""
    typed = flag_values(args)
    given = [flag_of(name) for name in typed if name != "method"]
    if args.no_prune:
        given.append("--no-prune")
    if "method" in typed:
        given.append(f"--method {typed['method']}")
    return given


def _validate_args(args) -> None:
    """Every check that needs neither the model nor the media: conflicts and ranges."""
    if args.question is not None and not args.question.strip():
        raise AIMConfigError("--question is empty; ask something, or leave --question out for the default request")
    if getattr(args, "kept_tokens", None) is not None:  # the analyzers' input (flops, plan); run counts itself
        why = ("run's PruMerge count is adaptive, measured on the media" if _method(args) in PRUMERGE_METHODS
               else f"--method {_method(args)} has no kept-token count")
        raise AIMConfigError(f"--kept-tokens is an input of flops/plan (PruMerge's count); {why}: drop --kept-tokens")
    if args.frames is not None and args.frames < 1:
        raise AIMConfigError(f"--frames must be at least 1, got {args.frames}")
    if args.image is not None and args.frames is not None:
        raise AIMConfigError("--frames applies to --video; an --image prompt holds one image")
    if args.max_new_tokens < 1:
        raise AIMConfigError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.no_aim:
        refuse_settings_with_aim_off(_aim_flags_given(args), "flag")
        return
    method = _method(args)
    if args.pruning_mode is not None and args.no_prune:
        raise AIMConfigError("--pruning-mode sets how pruned tokens are dropped, and --no-prune turns pruning off; "
                             "pick one")
    with flag_errors():
        check_typed_settings(method, typed_knobs(args))
    if method in STEP_METHODS or video_reduction(method) is not None:
        check_aim_flags(args.retention, None, None)
    elif method not in PRUMERGE_METHODS and spec(method).schedule != "none":
        check_aim_flags(args.retention, args.l1, args.l2, args.no_prune)
    with flag_errors():
        _config(args, num_layers=None, merges_media=True)  # every other field, before loading anything


def _config(args, num_layers, merges_media: bool) -> AIMConfig:
    """The AIMConfig the flags ask for. Layers left to "auto" are resolved by apply_aim;
    a baseline's drop layers and ratio are resolved here when the depth is known, so that
    what is printed is what runs. ``merges_media``: whether the family merges this media."""
    if args.no_aim:
        return AIMConfig.disabled()
    method = _method(args)
    pruning_mode = args.pruning_mode or "remove"
    options = _fidelity_options(args)
    if method in PRUMERGE_METHODS:
        cfg = AIMConfig.for_method(method, pruning_mode=pruning_mode, **options)
    elif video_reduction(method) is not None:  # its own budget (--retention, else its default) and knobs
        from llava.aim.policy import drop_layers_for

        budget = {} if args.retention is None else {"retention": args.retention}
        own = own_knobs(method, typed_knobs(args))
        steps = spec(method).step_knobs
        if steps and num_layers is not None:  # its drop resolved for this depth: what is printed is what runs
            own.setdefault(steps[0], drop_layers_for(method, None, num_layers)[0])
            own.setdefault(steps[1], spec(method).default_ratio)
        cfg = AIMConfig.for_method(method, pruning_mode=pruning_mode, **budget, **own, **options)
    elif method in STEP_METHODS:
        from llava.aim.policy import drop_layers_for

        drop_layers, drop_ratio = args.drop_layers, args.drop_ratio
        if num_layers is not None:
            drop_layers = drop_layers_for(method, drop_layers, num_layers)
            if drop_ratio is None and method != "vtw":
                drop_ratio = spec(method).default_ratio
        cfg = AIMConfig.for_method(method, retention=1.0 if args.retention is None else args.retention,
                                   pruning_mode=pruning_mode, drop_layers=drop_layers, drop_ratio=drop_ratio,
                                   **options)
    else:
        retention = 0.25 if args.retention is None else args.retention
        if not merges_media:
            retention = 1.0
        layers = {} if args.l1 is None and not args.no_prune else {"l1": args.l1, "l2": args.l2}
        seed = 0 if args.seed is None else args.seed
        cfg = AIMConfig(retention=retention, pruning_mode=pruning_mode, method=method, seed=seed, **layers,
                        **options)
    if num_layers is not None:
        cfg.check_against_model(num_layers)
    return cfg


def _fidelity_options(args) -> dict:
    """The AIMConfig fields the fidelity flags set explicitly (None: the config's default)."""
    names = ("merge_count", "merge_metric", "tie_break", "positions")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def build_config(args, num_layers: int, merges_media: bool = True) -> AIMConfig:
    """The flags' AIMConfig for a model with ``num_layers`` decoder layers (errors in flags)."""
    if not args.no_aim and _method(args) not in STEP_METHODS:
        check_aim_flags(args.retention, args.l1, args.l2, args.no_prune, num_layers, args.model)
    with flag_errors():
        return _config(args, num_layers, merges_media)


def _media_kind(args, family) -> str:
    if args.image is not None:
        return "image"
    if args.video is not None or "video" in family.media:
        return "video"
    return "image"  # image-only family and no media given: the shipped sample image


def _merging_model_text(kind: str) -> str:
    """"a <family> model (e.g. --model <tiny>)": the default model whose AIM merges ``kind``."""
    from llava.model.builder import default_builtin

    tiny, family = default_builtin(kind)
    return f"{_a(family.title)} model (e.g. --model {tiny})"


def _a(word: str) -> str:
    return ("an " if word[:1].lower() in "aeio" else "a ") + word


def _check_media(args, family, kind: str) -> bool:
    """Refuse media the family cannot take; returns whether AIM merges this media."""
    if kind not in family.media:
        raise AIMConfigError(f"{args.model} is a {family.title} model, which takes {' and '.join(family.media)} "
                             f"input, not {kind}s; pass --{family.media[0]}, or another model")
    merges = kind in family.merged_media
    if not merges and args.retention is not None and args.retention < 1 and not args.no_aim:
        raise AIMConfigError(
            f"AIM merges {family.title}'s {family.merged_media_text} only, not its {kind} tokens, so --retention {args.retention:g} "
            f"would be ignored; drop --retention (the {kind}'s tokens are still pruned), pass --{family.merged_media[0]}, "
            f"or use {_merging_model_text(kind)} to merge {_a(kind)}"
        )
    return merges


def _dtype_bytes(args, config) -> int:
    from llava.resources import DTYPE_BYTES

    if args.dtype != "auto":
        return DTYPE_BYTES[args.dtype]
    text = getattr(config, "text_config", config)
    declared = str(getattr(text, "dtype", None) or getattr(config, "dtype", None) or "").replace("torch.", "")
    return DTYPE_BYTES.get(declared, 2)  # unknown: the smaller size keeps the estimate a lower bound


def _llm_video_tokens(config, cfg: AIMConfig, family, merges: bool) -> tuple:
    """(visual tokens per frame entering the language model, a frame's visual tokens summed
    over the decoder layers that hold them in the KV cache): LOWER bounds for the memory
    pre-check. Counted for the video families whose frame tokens follow from the config (the
    adapter's ``visual_tokens`` of one frame, then merged); (0, 0) where the count depends on
    more than the config (the resolution: families with pixel limits), on the content
    (PruMerge's selection), or where the family takes no video."""
    from llava.aim.merge import merged_token_count
    from llava.aim.schedule import visual_tokens_per_layer

    vision = getattr(config, "vision_config", None)
    side, patch = getattr(vision, "image_size", 0) or 0, getattr(vision, "patch_size", 0) or 0
    fixed = "video" in family.media and not family.pixel_limits
    if not fixed or not (side and patch) or cfg.method in PRUMERGE_METHODS:
        return 0, 0
    tokens = family.visual_tokens(config, 1).tokens_per_unit  # e.g. 27 x 27 patches pooled to 14 x 14 = 196
    if merges and cfg.retention < 1:
        tokens = merged_token_count(tokens, cfg.retention, cfg.merge_count)
    depth = _decoder_depth(config)
    if cfg.method in STEP_METHODS or cfg.l1 is None:  # STEP: dropped somewhere; layer 0 holds all
        return tokens, tokens * (1 if cfg.method in STEP_METHODS else depth)
    resolved = cfg.resolve_layers(depth, family.official_layers(depth))  # "auto" as apply_aim resolves it
    return tokens, sum(visual_tokens_per_layer(tokens, depth, resolved.l1, resolved.l2))


def _decoder_depth(config) -> int:
    return int(getattr(getattr(config, "text_config", None) or config, "num_hidden_layers"))


#: From this many frames on, run says when each slow stage starts (stderr; never with --json).
STAGE_NOTES_MIN_FRAMES = 64


def _stage_notes(show: bool):
    """say(text): one stderr line as a slow stage starts (long prompts only), so minutes of
    preprocessing or prefill do not look like a hang."""
    def say(text: str) -> None:
        if show:
            sys.stderr.write(f"llava-aim run: {text}\n")
            sys.stderr.flush()
    return say


@contextlib.contextmanager
def prefill_progress(model, show: bool):
    """A progress bar over the decoder layers of the prefill (the first forward of generate;
    the one-token steps after it are not counted). tqdm's delay keeps it off for a quick run."""
    from tqdm.auto import tqdm

    layers = list(model.model.language_model.layers)
    bar = tqdm(total=len(layers), desc="prefill", unit="layer", leave=False, delay=2.0, disable=not show,
               file=sys.stderr)
    handles = []

    def done_one(module, args, output) -> None:
        bar.update(1)
        if bar.n >= len(layers):  # the prefill is through: the decoding steps go untracked
            for h in handles:
                h.remove()
            bar.close()

    handles.extend(layer.register_forward_hook(done_one) for layer in layers)
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        bar.close()


def _too_few_frames(total: int, asked: int) -> str:
    return (f"the clip has {total} frames, fewer than --frames {asked}: pass --frames {total} or fewer, omit "
            f"--frames (up to {DEFAULT_FRAMES}, all frames of a shorter clip), or --frame-sampling official "
            "(repeats frames, as lmms-eval does)")


@dataclasses.dataclass
class _Media:
    """The prompt's media as run read it: the file, the decoded frames (or image), the frames
    asked for and the frames fed to the model (1 for an image)."""

    path: str
    data: object
    is_video: bool
    frames: int
    fed: int


def run_command(args) -> int:
    from transformers.utils import logging as hf_logging

    from llava.model.builder import checkpoint_config, default_builtin
    from llava.resources import resolve_device

    if args.model is None:  # the first family's first built-in model (FAMILIES' order)
        args.model, _ = default_builtin()
    _validate_args(args)
    device = resolve_device(args.device)
    hf_logging.disable_progress_bar()  # keep stderr to one line on errors; loading is quick
    timings, notes = {}, []
    t0 = time.perf_counter()
    source, config, family = checkpoint_config(args.model)  # fast: no weights yet
    kind = _media_kind(args, family)
    merges = _check_media(args, family, kind)
    cfg = build_config(args, _decoder_depth(config), merges)  # the flags against the model's depth, before loading
    if not merges and not args.no_aim:
        notes.append(f"AIM merges {family.title}'s {family.merged_media_text} only: this {kind}'s "
                     "tokens are pruned inside the LLM, not merged")
    media, say = _read_media(args, config, family, cfg, merges, kind, device, notes)
    timings["decode_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model, processor, cfg = _load_model(args, source, cfg, device, say)
    timings["load_s"] = time.perf_counter() - t0
    question = args.question or (DEFAULT_QUESTION if media.is_video else DEFAULT_IMAGE_QUESTION)
    t0 = time.perf_counter()
    inputs = _prepare_inputs(model, processor, family, kind, media, question, device, say)
    timings["preprocess_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    say(f"vision tower on {media.fed} frames, then the prefill of {int(inputs['input_ids'].shape[1])} tokens")
    output = _generate(args, model, inputs)
    timings["generate_s"] = time.perf_counter() - t0
    result = _run_result(args, model, processor, family, cfg, merges, media, question, inputs, output, timings, notes)
    for note in notes:  # stderr: stdout stays the answer (or the one JSON object)
        sys.stderr.write(f"llava-aim run: note: {note}\n")
    print(json.dumps(result) if args.json else format_summary(result))
    return 0


def _read_media(args, config, family, cfg: AIMConfig, merges: bool, kind: str, device, notes: list):
    """(the _Media, the stage-notes writer): the video's memory checked before it is decoded
    (exit 2 with what fits), then the frames (or the image) read; a note where a clip is short."""
    from llava.video import load_image, load_video

    is_video = kind == "video"
    media_path = (args.video or str(SAMPLE_VIDEO)) if is_video else (args.image or str(SAMPLE_IMAGE))
    frames = args.frames or DEFAULT_FRAMES
    sampling = getattr(args, "frame_sampling", "uniform")
    take = _check_video_memory(args, config, family, cfg, merges, media_path, device) if is_video else 1
    # tqdm bar for long clips (see llava.video); never with --json, which prints one object only
    progress = False if args.json else None
    # a short clip is asked for the frames it has (the note below says so; the library would warn again)
    asked = take if is_video and sampling == "uniform" else frames
    fed = take if is_video else 1
    say = _stage_notes(not args.json and fed >= STAGE_NOTES_MIN_FRAMES)
    say(f"decoding {fed} frames of {Path(media_path).name}")
    media = load_video(media_path, asked, progress=progress, sampling=sampling) if is_video else load_image(media_path)
    if is_video and media.shape[0] < frames:
        if args.frames is not None:  # the header promised more frames than decoding found
            raise AIMConfigError(_too_few_frames(media.shape[0], args.frames))
        notes.append(f"the clip has {media.shape[0]} frames, fewer than the default {frames}: using each of its "
                     f"{media.shape[0]} frames once")
    return _Media(str(media_path), media, is_video, frames, fed), say


def _check_video_memory(args, config, family, cfg: AIMConfig, merges: bool, media_path: str, device) -> int:
    """The frames the run will decode (refusing --frames beyond a uniform clip's count), after
    checking that they fit in memory, from the container header only."""
    from llava.resources import check_video_fits, device_available_bytes, host_available_bytes, video_memory_estimate
    from llava.video import probe_video

    frames = args.frames or DEFAULT_FRAMES
    sampling = getattr(args, "frame_sampling", "uniform")
    total, width, height = probe_video(media_path)
    if args.frames is not None and total < args.frames and sampling == "uniform":
        raise AIMConfigError(_too_few_frames(total, args.frames))
    take = frames if sampling == "official" else min(frames, total)  # official repeats frames up to N
    llm_tokens, kv_tokens = _llm_video_tokens(config, cfg, family, merges)
    estimate = video_memory_estimate(config, width, height, _dtype_bytes(args, config), llm_tokens, kv_tokens,
                                     eager_attention=args.attn == "eager")
    check_video_fits(estimate, take, device, host_available_bytes(),
                     device_available_bytes(device) if device.type != "cpu" else None)
    return take


def _load_model(args, source, cfg: AIMConfig, device, say):
    """(model, processor, the AIMConfig that runs: "auto" layers resolved for this model)."""
    import torch

    from llava.model.builder import load_pretrained_model
    from llava.model.runtime import apply_aim

    say(f"loading {args.model}")
    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    model, processor = load_pretrained_model(source, aim=None, torch_dtype=dtype, attn_implementation=args.attn,
                                             use_kernels=args.use_kernels)
    model.to(device)
    model, processor = apply_aim(model, processor, cfg)
    return model, processor, model.aim_config


def _prepare_inputs(model, processor, family, kind: str, media: _Media, question: str, device, say):
    """The processor's inputs for the chat prompt with the media, in the model's dtype."""
    import torch

    conversation = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    media_kw = {"videos": [media.data]} if media.is_video else {"images": [media.data]}
    say(f"preprocessing {media.fed} frames (resizing, normalising)")
    # what the family's processor needs beside pre-sampled frames (e.g. the clip's metadata, so
    # that it neither samples again nor guesses the frames' times), as the eval plugin passes it
    extra = (family.plugin_input_kwargs(kind, [media.path], [media.data], logger.warning) if media.is_video
             else {})
    inputs = processor(text=prompt, return_tensors="pt", **media_kw, **extra).to(device)
    if model.dtype != torch.float32:
        for key in ("pixel_values", "pixel_values_videos"):
            if key in inputs:
                inputs[key] = inputs[key].to(model.dtype)
    return inputs


def _generate(args, model, inputs):
    import torch

    with torch.inference_mode(), prefill_progress(model, show=not args.json):
        return model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)


def _run_result(args, model, processor, family, cfg: AIMConfig, merges: bool, media: _Media, question: str,
                inputs, output, timings: dict, notes: list) -> dict:
    """The run's report: the answer, the AIM setting that ran, the token counts and timings, and
    the analyzer's prediction for them."""
    from llava.model.builder import is_builtin

    new_tokens = output[0, inputs["input_ids"].shape[1]:]
    stats = model.aim_stats
    result = {
        "model": args.model,
        "random_weights": is_builtin(args.model),
        "media": media.path,
        "frames": int(media.data.shape[0]) if media.is_video else 1,
        "frames_requested": media.frames if media.is_video else 1,
        "question": question,
        "answer": processor.decode(new_tokens, skip_special_tokens=True).strip(),
        "aim": cfg.to_dict(),
        "merged": merges,
        "merged_media": list(family.merged_media),
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "new_tokens": int(new_tokens.numel()),
        "visual_tokens_before_merge": stats.visual_tokens_before_merge,
        "visual_tokens_after_merge": stats.visual_tokens_after_merge,
        "layer_seq_lens": stats.layer_seq_lens,
        "kv_cache_lens": stats.kv_cache_lens,
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "notes": notes,
    }
    ids = inputs["input_ids"][0]
    placeholders = int(sum((ids == t).sum() for t in model._aim_runtime.image_token_ids))
    if not result["visual_tokens_before_merge"]:  # merging off: count placeholders instead
        result["visual_tokens_before_merge"] = result["visual_tokens_after_merge"] = placeholders
    # Reserved placeholders a data-dependent reduction (PruMerge) leaves unused are neither text
    # nor visual tokens: the text is what is left of the prompt without any placeholder.
    result["text_tokens"] = result["prompt_tokens"] - placeholders
    result["computed_tokens_per_layer"] = computed_tokens_per_layer(cfg, result, _decoder_depth(model.config))
    result["predicted"] = predicted_prefill(model.config, result)
    return result


def computed_tokens_per_layer(cfg: AIMConfig, r: dict, num_layers: int) -> list:
    """The tokens each decoder layer computes in the prefill (what its FLOPs are counted on).

    Removal: those entering the layer (``layer_seq_lens``). Mask mode: every token of the
    sequence at every layer (pruned tokens are only hidden as keys, so its FLOPs equal the
    merged-only count; fillers a PruMerge prompt reserved stay in the sequence too). No
    driver ran (AIM off): the whole prompt at every layer.
    """
    if r["layer_seq_lens"] and cfg.pruning_mode != "mask":
        return list(r["layer_seq_lens"])
    return [r["prompt_tokens"]] * num_layers


def predicted_prefill(config, r: dict) -> dict:
    """Roofline FLOPs (llava.analysis) of this prompt's LLM prefill on the model's own shape.

    With the reduction: the tokens each layer really computed (``computed_tokens_per_layer``);
    without: the same prompt's text tokens plus every visual token unmerged, in every layer.
    The tokens are counted and compared with the functions ``llava-aim flops`` uses
    (``prompt_tokens_per_layer``, ``reduction_figures``). The lm_head on one token is included
    in both.
    """
    from llava.analysis import LLMShape, prefill_cost, prompt_tokens_per_layer, reduction_figures

    shape = LLMShape.from_config(config)
    # A result without the two counts (every placeholder used, tokens removed) defaults to them.
    text = r.get("text_tokens", r["prompt_tokens"] - r["visual_tokens_after_merge"])
    computed = r.get("computed_tokens_per_layer") or r["layer_seq_lens"] or [r["prompt_tokens"]] * shape.layers
    without = prompt_tokens_per_layer(text, [r["visual_tokens_before_merge"]] * shape.layers)
    figures = reduction_figures(prefill_cost(shape, computed), prefill_cost(shape, without))
    return {key: figures[key] for key in ("prefill_tflops", "baseline_prefill_tflops", "flops_saved",
                                          "flops_reduction")}


def _flops_text(tflops: float) -> str:
    return f"{tflops:.3f} TFLOPs" if tflops >= 1 else f"{tflops * 1e3:.3f} GFLOPs"


def describe_setting(aim: dict) -> str:
    """The AIM line of the summary, with every value resolved (what ran, not what was typed)."""
    method = aim.get("method", "aim")
    if method == "aim" and aim["retention"] >= 1 and aim["l1"] is None:
        return "off"
    pruning = ("no pruning" if aim["l1"] is None else
               f"l1={aim['l1']}, l2={aim['l2']} (pruning after layers {aim['l1']}..{aim['l2'] - 1}), "
               f"pruning={aim['pruning_mode']}")
    if method in STEP_METHODS:
        layers = ",".join(str(k) for k in aim["drop_layers"] or ())
        ratio = "all" if method == "vtw" else f"{aim['drop_ratio']:g}"
        return (f"method={method}, drop_layers={layers}, drop_ratio={ratio}, retention={aim['retention']:g}, "
                f"pruning={aim['pruning_mode']}")
    own = own_knobs(method, aim)
    if own:  # a method with its own knobs (e.g. holitom_layer): those that were set, then the pruning mode
        pruning = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in own.items())
        pruning += f", pruning={aim['pruning_mode']}"
    head = f"method={method}, " if method != "aim" else ""
    return head + f"retention={aim['retention']:g}, {pruning}" + (f", seed={aim['seed']}" if method == "random" else "")


def format_summary(r: dict) -> str:
    aim = r["aim"]
    lines = []
    if r["random_weights"]:
        lines.append(f"NOTE: {r['model']} has RANDOM weights: the answer below is meaningless; "
                     "it shows the pipeline and AIM's token counts.")
    lines.append(f"media     : {r['media']} ({r['frames']} frame{'s' if r['frames'] != 1 else ''})")
    lines.append(f"question  : {r['question']}")
    lines.append(f"answer    : {r['answer']!r}")
    lines.append(f"AIM       : {describe_setting(aim)}")
    before, after = r["visual_tokens_before_merge"], r["visual_tokens_after_merge"]
    if r.get("merged", True) or aim["retention"] < 1:
        ratio = f" ({before / after:.1f}x fewer)" if after else ""
        lines.append(f"merging   : {before} -> {after} visual tokens{ratio}")
    else:
        from llava.model.families.base import merged_media_text

        merged = merged_media_text(r.get("merged_media", []))
        lines.append(f"merging   : none: {after} visual tokens (this model's family merges {merged} only)")
    # mask mode: the counts are the tokens left visible; every layer computes the whole prompt
    mask = bool(r["layer_seq_lens"]) and r.get("computed_tokens_per_layer", r["layer_seq_lens"]) != r["layer_seq_lens"]
    if r["layer_seq_lens"]:
        lines.append(f"tokens each decoder layer keeps visible as keys (prefill; mask mode: all {r['prompt_tokens']} "
                     "are computed in every layer, pruned ones are only hidden):" if mask else
                     "tokens entering each decoder layer (prefill):")
        top = max(r["layer_seq_lens"])
        for j, n in enumerate(r["layer_seq_lens"]):
            bar = "#" * max(1, round(30 * n / top))
            lines.append(f"  layer {j:>2} {n:>6} {bar}")
        steps = r.get("new_tokens", 1) - 1  # the last new token is never fed back
        held = ("the tokens entering each layer" + (f" + the {steps} fed back while generating {steps + 1}"
                                                    if steps else "")
                if r["kv_cache_lens"] == [n + steps for n in r["layer_seq_lens"]] else "")
        lines.append(f"KV cache per layer after generation: {r['kv_cache_lens']}" + (f" ({held})" if held else ""))
    if "predicted" in r:
        f = r["predicted"]
        lines.append(f"FLOPs     : LLM prefill {_flops_text(f['prefill_tflops'])} vs "
                     f"{_flops_text(f['baseline_prefill_tflops'])} without AIM: {100 * f['flops_saved']:.1f}% saved "
                     f"({f['flops_reduction']:.2f}x fewer; roofline prediction for this model's shape)")
        if mask:
            merged_only = r["prompt_tokens"] == r["text_tokens"] + r["visual_tokens_after_merge"]
            what = ("the merged-only count (as --no-prune)" if merged_only else
                    "counted with the placeholders reserved for PruMerge's tokens, which stay in the sequence")
            lines.append(f"            mask mode computes every token in every layer: {what}; pruning saves no "
                         "FLOPs here (--pruning-mode remove does)")
    t = r["timings"]
    # "decode_s" is the media's (video/image decoding), not the LLM's token decoding: say so
    stages = [("media decoding", "decode_s"), ("model loading", "load_s"), ("preprocessing", "preprocess_s"),
              ("generation", "generate_s")]
    lines.append("time      : " + ", ".join(f"{name} {t[key]:.2f} s" for name, key in stages if key in t))
    return "\n".join(lines)
