"""Requests -> model inputs: media loading, chat-template prompts, continuation lengths.

Prompts follow the checkpoint's own chat template through ``processor.apply_chat_template``
(as ``llava-aim run`` does): one user turn holding the visual items, then the task's text.
"""

from __future__ import annotations

import os
from typing import List, Sequence, Tuple

from llava.errors import UnsupportedUsageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def load_visuals(visuals: Sequence, max_frames: int, backend: str, sampling: str = "official") -> Tuple[str, List]:
    """("video" | "image" | "text", decoded media) for what a task's doc_to_visual returned.

    Video tasks return file paths (the model decodes them, ``max_frames`` sampled by
    ``sampling``: "official" = lmms-eval's LLaVA-OneVision rule, llava.video.sample_frame_indices);
    image tasks return PIL images (or image file paths). One request holds one kind.
    """
    from PIL import Image

    from llava.video import load_image, load_video

    kinds, media = [], []
    for item in visuals or []:
        if isinstance(item, Image.Image):
            kinds.append("image")
            media.append(item.convert("RGB"))
        elif isinstance(item, (str, os.PathLike)) and str(item).lower().endswith(IMAGE_EXTENSIONS):
            kinds.append("image")
            media.append(load_image(item))
        elif isinstance(item, (str, os.PathLike)):
            kinds.append("video")
            media.append(load_video(item, max_frames, backend=backend, sampling=sampling))
        else:
            raise UnsupportedUsageError(
                f"cannot use a visual of type {type(item).__name__} (expected a PIL image or an image/video "
                "file path); this task is not supported by the AIM plugin models"
            )
    if not kinds:
        return "text", []
    if len(set(kinds)) > 1:
        raise UnsupportedUsageError("a request mixing images and videos is not supported; use one kind per request")
    return kinds[0], media


def user_prompt(processor, context: str, kind: str, count: int) -> str:
    """The chat-template prompt (with the generation prompt) for one user turn."""
    text = strip_placeholders(processor, context)
    content = [{"type": kind} for _ in range(count if kind != "text" else 0)]
    content.append({"type": "text", "text": text})
    conversation = [{"role": "user", "content": content}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True)


def strip_placeholders(processor, context: str) -> str:
    # The chat template places the visual tokens; a literal placeholder left in the task's
    # text would add an unmatched one and break the processor's count check.
    for attr in ("image_token", "video_token"):
        token = getattr(processor, attr, None)
        if token and token in context:
            context = context.replace(token, "")
    return context.strip()


def processor_inputs(processor, prompt: str, kind: str, media: List, device, dtype, **extra):
    """Tokenized inputs (and pixel values in the model's dtype) on ``device``; ``extra``
    keyword arguments go to the processor (e.g. Qwen2.5-VL's video_metadata)."""
    media_kw = {} if kind == "text" else {f"{kind}s": media}
    inputs = processor(text=prompt, return_tensors="pt", **media_kw, **extra).to(device)
    return _pixels_in(inputs, dtype)


def _pixels_in(inputs, dtype):
    """``inputs`` with its pixel values cast to the model's ``dtype`` (the processors give float32)."""
    for key in ("pixel_values", "pixel_values_videos"):
        if key in inputs and inputs[key].dtype != dtype:
            inputs[key] = inputs[key].to(dtype)
    return inputs


def continuation_length(tokenizer, prompt: str, continuation: str) -> int:
    """Tokens the continuation adds at the end of ``prompt + continuation``.

    Counted on the raw text (placeholders unexpanded): visual placeholders come before the
    continuation, so their expansion does not change the number of trailing tokens. A token
    that straddles the boundary counts as continuation.
    """
    ctx = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full = tokenizer(prompt + continuation, add_special_tokens=False)["input_ids"]
    common = 0
    for a, b in zip(ctx, full):
        if a != b:
            break
        common += 1
    n = len(full) - common
    if n < 1:
        raise UnsupportedUsageError(f"the continuation {continuation!r} adds no token to the prompt; nothing to score")
    return n


def truncate_at_stop(text: str, until: Sequence[str]) -> str:
    """``text`` cut before the first occurrence of any stop string."""
    cut = len(text)
    for stop in until:
        if stop:
            i = text.find(stop)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


def batch_processor_inputs(processor, prompts: List[str], kind: str, media: List[List], device, dtype):
    """Several prompts at once, left-padded (generation continues every row at its end), with
    their media in order; pixel values in the model's dtype, on ``device``."""
    flat = [item for items in media for item in items]
    media_kw = {} if kind == "text" else {f"{kind}s": flat}
    tokenizer = processor.tokenizer
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        inputs = processor(text=list(prompts), return_tensors="pt", padding=True, **media_kw).to(device)
    finally:
        tokenizer.padding_side = side
    return _pixels_in(inputs, dtype)
