"""``llava-aim visualize``: one picture of what AIM did to a video (or an image).

One row per frame (per merge unit: a family may merge each temporal group of 2 frames, drawn
over its first frame): the frame as the model sees it (after the processor's resize and
crop; grids of any aspect ratio are drawn at that ratio), the merge groups drawn over it (each merged token one colour, group boundaries in
black), then the surviving tokens entering a few decoder layers (cells whose merged token was
pruned are dimmed). By default the layers are: before pruning (l1), mid-schedule, and the last
layer that still has visual tokens. A caption gives the setting and the token counts.

The code has three parts, kept apart: pure mapping functions (numpy, no model, no drawing),
``collect_token_views`` (runs the model once with source tracking), and ``draw_token_views``
(matplotlib, Agg canvas, no window).
"""

from __future__ import annotations

import argparse
import colorsys
import logging
import math
import os
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from llava.analysis.cli import compact_counts
from llava.errors import AIMConfigError, UnsupportedUsageError

logger = logging.getLogger(__name__)

DEFAULT_FRAMES = 4
MAX_FRAMES = 64  # one row per frame: beyond this the picture is too tall to read
PANEL_MIN_PX = 224  # each panel's longer side is the smallest multiple of the grid's >= this
DPI = 100
GAP_PX = 10
TITLE_PX = 22
CAPTION_LINE_PX = 17
CAPTION_FONT_PT = 9
CAPTION_CHAR_PX = 7.0  # a safe average glyph width of the default font at CAPTION_FONT_PT, 100 dpi


# -- pure mapping functions ---------------------------------------------------------------
def default_layers(num_layers: int, l1: Optional[int], l2: Optional[int]) -> List[int]:
    """Layers shown by default: before pruning (l1), mid-schedule, last layer with visual tokens.

    Without pruning there is nothing to show per layer but the first one.
    """
    if l1 is None:
        return [0]
    last = min(l2, num_layers) - 1  # l2 may exceed the depth: then visual tokens reach the end
    middle = (l1 + 1 + last + 1) // 2  # first pruned layer .. last, rounded up
    return sorted({l1, min(middle, last), last})


def check_layers(layers: Sequence[int], num_layers: int, model_name: str) -> List[int]:
    """The requested layers, sorted and de-duplicated; AIMConfigError when one is out of range."""
    for j in layers:
        if not 0 <= j < num_layers:
            raise AIMConfigError(
                f"--layers: layer {j} is out of range; {model_name} has {num_layers} decoder layers "
                f"(0..{num_layers - 1})"
            )
    return sorted({int(j) for j in layers})


def panel_shape(grid: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    """(height, width) of a panel in pixels for a square side or a (rows, cols) grid: square
    cells, a whole number of pixels each, the longer side at least PANEL_MIN_PX."""
    rows, cols = (grid, grid) if isinstance(grid, int) else grid
    cell = math.ceil(PANEL_MIN_PX / max(rows, cols))
    return rows * cell, cols * cell


def figure_size_px(rows: int, panels: int, grid: Union[int, Tuple[int, int]], caption_lines: int) -> tuple:
    """(width, height) in pixels of the PNG: ``rows`` frames, ``panels`` panels per row."""
    ph, pw = panel_shape(grid)
    width = panels * pw + (panels + 1) * GAP_PX
    height = caption_lines * CAPTION_LINE_PX + 2 * GAP_PX + rows * (TITLE_PX + ph + GAP_PX)
    return width, height


def wrap_caption(lines: Sequence[str], width_px: int) -> List[str]:
    """Caption lines wrapped to the picture's width (empty lines dropped)."""
    chars = max(20, int((width_px - 2 * GAP_PX) / CAPTION_CHAR_PX))
    return [part for line in lines if line for part in textwrap.wrap(line, chars)]


def upsample_cells(grid_values: np.ndarray, size: int, width: Optional[int] = None) -> np.ndarray:
    """(H, W) per-cell values -> (size, width) per-pixel values (nearest cell; width = size if None)."""
    h, w = grid_values.shape
    width = size if width is None else width
    rows = np.arange(size) * h // size
    cols = np.arange(width) * w // width
    return grid_values[rows[:, None], cols[None, :]]


def group_boundaries(cells: np.ndarray) -> np.ndarray:
    """(S, S) bool: pixels on the border between two different groups (two pixels wide)."""
    edge = np.zeros(cells.shape, dtype=bool)
    horizontal = cells[:, 1:] != cells[:, :-1]
    vertical = cells[1:, :] != cells[:-1, :]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    return edge


def group_palette(num_groups: int) -> np.ndarray:
    """(num_groups, 3) float RGB in [0, 1]: golden-ratio hues so that group ids close by differ."""
    colours = []
    for i in range(num_groups):
        hue = (i * 0.6180339887) % 1.0
        value = 1.0 if i % 2 == 0 else 0.75
        colours.append(colorsys.hsv_to_rgb(hue, 0.85, value))
    return np.asarray(colours, dtype=np.float32).reshape(num_groups, 3)


def merge_overlay(frame: np.ndarray, groups: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """The frame (H, W, 3) uint8 tinted by merge group, with black group boundaries."""
    cells = upsample_cells(groups, *frame.shape[:2])
    colours = group_palette(int(groups.max()) + 1)[cells]
    out = (1 - alpha) * frame.astype(np.float32) / 255 + alpha * colours
    out[group_boundaries(cells)] = 0.0
    return to_uint8(out)


def survivor_overlay(frame: np.ndarray, groups: np.ndarray, present: np.ndarray) -> np.ndarray:
    """The frame (H, W, 3) uint8 where cells whose merged token was pruned are dimmed to grey."""
    cells = upsample_cells(groups, *frame.shape[:2])
    alive = upsample_cells(present, *frame.shape[:2])
    img = frame.astype(np.float32) / 255
    grey = img.mean(axis=-1, keepdims=True) * 0.3 + 0.05
    out = np.where(alive[..., None], img, grey)
    # Boundaries of the surviving groups only, so each kept token reads as one region.
    edge = group_boundaries(np.where(alive, cells, -1)) & alive
    out[edge] = 0.85 * out[edge] + 0.15
    return to_uint8(out)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def denormalize(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float], rescale: float) -> np.ndarray:
    """Processor output (3, H, W) float -> the image the model sees, (H, W, 3) uint8."""
    mean = np.asarray(mean, dtype=np.float32)[:, None, None]
    std = np.asarray(std, dtype=np.float32)[:, None, None]
    img = (pixels.astype(np.float32) * std + mean) / rescale
    return np.clip(np.rint(img), 0, 255).astype(np.uint8).transpose(1, 2, 0)


# -- running the model once ---------------------------------------------------------------
@dataclass
class TokenViews:
    """Everything the picture shows, as plain arrays (one entry per frame / image)."""

    frames: np.ndarray  # (F, PH, PW, 3) uint8, what the model sees, resized to the panel size
    groups: np.ndarray  # (F, H, W) merged token of every patch
    survivors: Dict[int, np.ndarray]  # layer -> (F, H, W) bool
    kept_per_frame: Dict[int, List[int]]  # layer -> merged tokens of each frame entering it
    tokens_per_frame_before: int
    tokens_per_frame_after: int
    visual_tokens_per_layer: List[int]  # all visual tokens entering each layer (newline included)
    visual_tokens_before_merge: int
    frame_labels: List[str] = field(default_factory=list)
    caption: List[str] = field(default_factory=list)


def _seen_frames(processor, inputs, is_video: bool) -> np.ndarray:
    if is_video:
        pixels, proc = inputs["pixel_values_videos"][0], processor.video_processor
    else:
        pixels, proc = inputs["pixel_values"], processor.image_processor
    arr = pixels.float().cpu().numpy()
    return np.stack([denormalize(p, proc.image_mean, proc.image_std, proc.rescale_factor) for p in arr])


def _resize_frames(frames: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    from PIL import Image

    height, width = shape
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BICUBIC)) for f in frames])


def collect_token_views(model, processor, media, is_video: bool, cfg, layers: Sequence[int], question: str,
                        media_path=None) -> TokenViews:
    """Run one prefill with AIM (``cfg``) and source tracking; return the views to draw
    (``media_path``: the clip the frames came from, for families whose processor reads its metadata).

    AIM is applied for the call and the model's previous AIM setting restored afterwards.
    """
    import torch

    from llava.model.runtime import apply_aim, remove_aim

    previous = getattr(model, "_aim_runtime", None)
    apply_aim(model, processor, cfg, track_sources=True)
    try:
        kind = "video" if is_video else "image"
        conversation = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": question}]}]
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
        extra = (model._aim_family.plugin_input_kwargs(kind, [str(media_path)], [media], logger.warning)
                 if is_video and media_path is not None else {})
        inputs = processor(text=prompt, return_tensors="pt", **{f"{kind}s": [media]}, **extra).to(model.device)
        for key in ("pixel_values", "pixel_values_videos"):
            if key in inputs:
                inputs[key] = inputs[key].to(model.dtype)
        with torch.inference_mode():
            model(**inputs, use_cache=False)
        stats = model.aim_stats
        groups = stats.merge_groups()
        frames, k = stats.merge_sources.shape[0], stats.tokens_per_frame_after_merge
        survivors, kept = {}, {}
        for j in layers:
            if stats.layer_survivors is None:  # no pruning: every merged token reaches every layer
                survivors[j] = torch.ones_like(groups, dtype=torch.bool)
                kept[j] = [k] * frames
            else:
                survivors[j] = stats.survivors(j)
                kept[j] = [int(n) for n in stats.layer_survivors[j].sum(dim=1).tolist()]
        per_layer = [row[0] for row in stats.visual_tokens_per_layer] or [stats.visual_tokens_after_merge]
        seen = model._aim_family.merge_unit_images(processor, inputs, media, kind)
        if seen is None:
            seen = _seen_frames(processor, inputs, is_video)
    finally:
        remove_aim(model, processor)
        if previous is not None:
            apply_aim(model, processor, previous.cfg, track_sources=previous.track_sources)
    return TokenViews(
        frames=_resize_frames(seen, panel_shape(tuple(groups.shape[1:]))),
        groups=groups.cpu().numpy(),
        survivors={j: v.cpu().numpy() for j, v in survivors.items()},
        kept_per_frame=kept,
        tokens_per_frame_before=stats.tokens_per_frame_before_merge,
        tokens_per_frame_after=stats.tokens_per_frame_after_merge,
        visual_tokens_per_layer=per_layer,
        visual_tokens_before_merge=stats.visual_tokens_before_merge,
    )


# -- drawing ------------------------------------------------------------------------------
def draw_token_views(views: TokenViews, layers: Sequence[int], out_path) -> tuple:
    """Draw the picture, write it to ``out_path`` (PNG) atomically; return its (width, height)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows, grid = views.groups.shape[0], tuple(views.groups.shape[1:])
    panels = 2 + len(layers)
    width, _ = figure_size_px(rows, panels, grid, 0)
    caption = wrap_caption(views.caption, width)
    width, height = figure_size_px(rows, panels, grid, len(caption))
    ph, pw = panel_shape(grid)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    warning = False
    for i, line in enumerate(caption):
        warning = warning or line.startswith("RANDOM")
        y = height - GAP_PX - (i + 0.5) * CAPTION_LINE_PX
        fig.text(GAP_PX / width, y / height, line, fontsize=CAPTION_FONT_PT, va="center", ha="left",
                 weight="bold" if i == 0 else "normal", color="firebrick" if warning else "black")
    top = height - len(caption) * CAPTION_LINE_PX - 2 * GAP_PX
    for f in range(rows):
        frame = views.frames[f]
        images = [frame, merge_overlay(frame, views.groups[f])]
        label = views.frame_labels[f] if f < len(views.frame_labels) else f"frame {f}"
        titles = [label, f"{views.tokens_per_frame_before} patches -> {views.tokens_per_frame_after} groups"]
        for j in layers:
            images.append(survivor_overlay(frame, views.groups[f], views.survivors[j][f]))
            titles.append(f"entering layer {j}: {views.kept_per_frame[j][f]}/{views.tokens_per_frame_after}")
        y0 = top - (f + 1) * (TITLE_PX + ph + GAP_PX) + GAP_PX
        for p, (img, title) in enumerate(zip(images, titles)):
            x0 = GAP_PX + p * (pw + GAP_PX)
            ax = fig.add_axes((x0 / width, y0 / height, pw / width, ph / height))
            ax.imshow(img, interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(title, fontsize=9, pad=4)
    write_png_atomically(fig, out_path)
    return width, height


def write_png_atomically(fig, out_path) -> None:
    """Save to a temporary file in the same folder, then rename: never a half-written PNG."""
    out_path = Path(out_path)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".png", dir=out_path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=DPI)
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- command line -------------------------------------------------------------------------
def add_visualize_command(subparsers) -> None:
    p = subparsers.add_parser("visualize", help="draw which tokens AIM merged and which survived into which layer",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    media = p.add_mutually_exclusive_group(required=True)
    media.add_argument("--video", help="video file")
    media.add_argument("--image", help="image file (drawn through the first family whose AIM merges images by "
                                       "default)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--model", help="built-in name, hub id or local folder (default: the first built-in model "
                                   "whose family's AIM merges the given media: llava-aim run --help lists them)")
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES,
                   help=f"frames sampled from the video, one row each (default {DEFAULT_FRAMES}, at most {MAX_FRAMES})")
    p.add_argument("--layers", type=int, nargs="+",
                   help="decoder layers to show (default: l1, mid-schedule, last layer with visual tokens)")
    from llava.aim.knobs import add_knob_flags

    add_knob_flags(p, "visualize")  # --retention, --l1, --l2 as llava.aim.config declares them
    p.add_argument("--question", help="question in the prompt (pruning depends on it)")
    p.add_argument("--device", default="cpu")
    from llava.flags import add_use_kernels_flag

    add_use_kernels_flag(p)
    p.set_defaults(func=visualize_command)


def check_output_path(path: str) -> Path:
    """The --out path, checked before any work: a .png name in an existing, writable folder."""
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise AIMConfigError(f"--out must name a .png file, got '{path}'")
    if out.is_dir():
        raise AIMConfigError(f"--out '{path}' is a folder; give a file name ending in .png")
    folder = out.parent
    if not folder.is_dir():
        raise AIMConfigError(f"--out: folder '{folder}' does not exist; create it or choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".llava-aim-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise AIMConfigError(f"--out: cannot write in folder '{folder}' ({exc.strerror}); choose another path") from exc
    return out


def _aim_config(args, num_layers: int, family, model_name: str):
    """The flags' setting, "auto" layers resolved as apply_aim does (errors name the flags)."""
    from llava.aim.config import AIMConfig
    from llava.flags import check_aim_flags, flag_errors

    check_aim_flags(args.retention, args.l1, args.l2, num_layers=num_layers, model=model_name, has_no_prune=False)
    layers = {} if args.l1 is None else {"l1": args.l1, "l2": args.l2}
    with flag_errors():
        cfg = AIMConfig(retention=0.25 if args.retention is None else args.retention, **layers)
        return cfg.resolve_layers(num_layers, family.official_layers(num_layers))


def frame_labels(rows: int, frames: int, image_name: str) -> List[str]:
    """A title per row: "frame i/N", or "frames a-b/N" where one row is a temporal group of
    several frames (the adapter's frames_per_unit); the image's name for an image."""
    if not frames:
        return [image_name] * rows
    per = math.ceil(frames / rows)
    if per == 1:
        return [f"frame {i + 1}/{frames}" for i in range(rows)]
    return [f"frames {i * per + 1}-{min((i + 1) * per, frames)}/{frames}" for i in range(rows)]


def caption_lines(model_name: str, media_name: str, is_video: bool, random_weights: bool, cfg, num_layers: int,
                  views: TokenViews) -> List[str]:
    """What is shown, the setting and token counts, a legend, and a warning for random weights."""
    rows = views.groups.shape[0]
    noun = "frame" if is_video else "image"
    if views.frame_labels and views.frame_labels[0].startswith("frames "):
        noun = "temporal group"  # one row per group of frames merged together
    head = f"What AIM does: {model_name} on {media_name}, {rows} {noun}{'s' if rows != 1 else ''}"
    merge = (f"merging: {views.tokens_per_frame_before} -> {views.tokens_per_frame_after} tokens per {noun} "
             f"(retention {cfg.retention:g}); visual tokens {views.visual_tokens_before_merge} -> "
             f"{views.visual_tokens_per_layer[0]}")
    prune = ("no pruning" if cfg.l1 is None else
             f"pruning ({cfg.importance}) after layers {cfg.l1}..{min(cfg.l2, num_layers) - 1} "
             f"(l1={cfg.l1}, l2={cfg.l2}) of {num_layers} decoder layers")
    counts = f"visual tokens entering each layer: {compact_counts(views.visual_tokens_per_layer)}"
    legend = (f"columns: the {noun} as the model sees it | merge groups (one colour per merged token, black "
              "borders) | the merged tokens entering each layer (pruned ones greyed out)")
    note = ("RANDOM weights (built-in tiny model): merges and survivors are real outputs of AIM on untrained "
            "features; untrained attention makes PageRank follow position (earlier tokens collect more "
            "causal votes), so tokens late in the prompt are pruned first" if random_weights else "")
    return [head, merge, prune, counts, legend, note]


def visualize_command(args) -> int:
    from llava.model.builder import (
        checkpoint_config,
        default_builtin,
        is_builtin,
        load_pretrained_model,
        num_decoder_layers,
    )
    from llava.run import DEFAULT_IMAGE_QUESTION, DEFAULT_QUESTION
    from llava.video import load_image, load_video

    if not 1 <= args.frames <= MAX_FRAMES:
        raise AIMConfigError(f"--frames must be between 1 and {MAX_FRAMES} (one row per frame), got {args.frames}")
    out = check_output_path(args.out)
    from llava.flags import check_aim_flags
    from llava.resources import resolve_device

    check_aim_flags(args.retention, args.l1, args.l2)  # fail fast, before loading anything
    device = resolve_device(args.device)
    is_video = args.video is not None
    media_path = Path(args.video or args.image)
    kind = "video" if is_video else "image"
    model_name = args.model or default_builtin(kind)[0]
    _, _, family = checkpoint_config(model_name)  # the media checks need no weights and no decoding
    if kind not in family.media:
        raise UnsupportedUsageError(f"{model_name} is a {family.title} model, which takes {' and '.join(family.media)} "
                                    f"input, not {kind}s; pass --{family.media[0]}, or another model")
    if kind not in family.merged_media:
        merging = default_builtin(kind)
        raise UnsupportedUsageError(
            f"AIM merges {family.title}'s {family.merged_media_text}, "
            f"not its {kind} tokens; pass --{family.merged_media[0]}, or --model {merging[0]} (or another "
            f"{merging[1].title} model) for {'an' if kind == 'image' else 'a'} {kind}"
        )
    media = load_video(media_path, args.frames) if is_video else load_image(media_path)

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model, processor = load_pretrained_model(model_name, aim=None, torch_dtype="auto",
                                             use_kernels=getattr(args, "use_kernels", False))
    model.to(device)
    num_layers = num_decoder_layers(model)
    cfg = _aim_config(args, num_layers, family, model_name)
    layers = check_layers(args.layers, num_layers, model_name) if args.layers else default_layers(num_layers, cfg.l1, cfg.l2)
    question = args.question or (DEFAULT_QUESTION if is_video else DEFAULT_IMAGE_QUESTION)

    views = collect_token_views(model, processor, media, is_video, cfg, layers, question, media_path)
    rows = views.groups.shape[0]
    views.frame_labels = frame_labels(rows, len(media) if is_video else 0, media_path.name)
    views.caption = caption_lines(model_name, media_path.name, is_video, is_builtin(model_name), cfg, num_layers, views)
    width, height = draw_token_views(views, layers, out)
    unit = "image" if not is_video else ("temporal group" if views.frame_labels[0].startswith("frames ") else "frame")
    print(f"wrote {out} ({width}x{height} px): {rows} {unit} row(s), "
          f"layers {', '.join(map(str, layers))}")
    return 0

