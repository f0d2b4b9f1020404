"""Random-weight models of the measured architectures (timings do not depend on the values).

``BENCH_MODELS`` names what ``llava-aim bench --model`` builds: every family of
llava.model.families, a small one for CPU and its reference architecture for CUDA. Every model is built
from a config with ``torch.manual_seed(0)``; the multimodal ones start from the built-in tiny
model's config (its token ids and processor), with the sizes replaced.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch


def _adapter(family: str):
    from llava.model.families import FAMILIES

    return next(fam for fam in FAMILIES if fam.name == family)


def tiny_config(family: str):
    """The family's built-in tiny model's config (its token ids, processor geometry)."""
    from transformers import AutoConfig

    from llava.model.builder import resolve_checkpoint

    return AutoConfig.from_pretrained(resolve_checkpoint(_adapter(family).tiny_models[0]))


def scale_of(family: str, big: bool):
    """The sizes of a bench model: the family's (first) reference checkpoint's config, or the
    generic small sizes."""
    from llava.model.families.base import SMALL

    adapter = _adapter(family)
    return adapter.reference_config(next(iter(adapter.references))) if big else SMALL


SMALL_VOCAB = 1024  # the small decoder's vocabulary (the LLM-only measurement draws no ids above it)


def bench_text_config(family: str, big: bool, attn: str = "sdpa", num_layers: Optional[int] = None):
    """The family's tiny decoder config with the bench sizes (``num_layers``: fewer layers)."""
    adapter = _adapter(family)
    config = tiny_config(family)
    text, _ = adapter.bench_dims(config, scale_of(family, big))
    tc = adapter.text_config(config)
    for key, value in text.items():
        setattr(tc, key, value)
    if not big:
        tc.vocab_size = SMALL_VOCAB
    if num_layers is not None:
        tc.num_hidden_layers = num_layers
    tc.max_position_embeddings = max(getattr(tc, "max_position_embeddings", 0) or 0, 32768)
    if getattr(tc, "layer_types", None) is not None:
        tc.layer_types = ["full_attention"] * tc.num_hidden_layers
    tc._attn_implementation = attn
    return tc


def small_decoder_config(num_layers: int = 8, attn: str = "sdpa", vocab_size: int = SMALL_VOCAB,
                         family: Optional[str] = None):
    """A small bench decoder (the first family's unless ``family``, at the generic small sizes)."""
    config = bench_text_config(family or default_family(), False, attn, num_layers)
    config.vocab_size = vocab_size
    return config


def reference_decoder_config(attn: str = "sdpa", vocab_size: Optional[int] = None):
    """The default family's reference decoder (the 7B shape)."""
    config = bench_text_config(default_family(), True, attn)
    if vocab_size is not None:
        config.vocab_size = vocab_size
    return config


def bench_vision_dims(family: str, big: bool) -> Dict[str, Any]:
    """The vision config fields of the family's bench tower at its scale."""
    adapter = _adapter(family)
    return adapter.bench_dims(tiny_config(family), scale_of(family, big))[1]


def default_family() -> str:
    from llava.model.families import FAMILIES

    return FAMILIES[0].name


def build_lm(config, device="cpu", dtype=torch.float32):
    from transformers import AutoModel

    torch.manual_seed(0)
    with torch.device(device):
        lm = AutoModel.from_config(config, dtype=dtype)
    return lm.eval()


# what the end-to-end model takes from the bench decoder config (the vocabulary stays the tiny one's)
_TEXT_SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "head_dim", "rope_parameters", "max_position_embeddings")


def build_model(family: str, text_config, vision_dims: Dict[str, Any], device="cpu", dtype=torch.float32,
                **pixel_limits):
    """A random model of the family with the tiny model's token ids, chat template and
    processor, and these sizes (``pixel_limits``: the processor's video limits, for families
    whose tokens follow the resolution)."""
    import transformers

    adapter = _adapter(family)
    config = tiny_config(family)
    tc = adapter.text_config(config)
    for key in _TEXT_SIZES:
        if getattr(text_config, key, None) is not None:
            setattr(tc, key, getattr(text_config, key))
    tc.layer_types = ["full_attention"] * tc.num_hidden_layers
    for key, value in vision_dims.items():
        setattr(config.vision_config, key, value)
    tc._attn_implementation = text_config._attn_implementation
    config.vision_config._attn_implementation = "sdpa"
    cls = getattr(transformers, adapter.load_class)
    torch.manual_seed(0)
    with torch.device(device):
        model = cls._from_config(config, dtype=dtype)
    return model.eval(), bench_processor(family, **pixel_limits)


def bench_processor(family: str, max_pixels: Optional[int] = None, min_pixels: Optional[int] = None):
    """The tiny model's processor; for families whose tokens follow the resolution, its video
    pixel limits set to ``min_pixels`` .. ``max_pixels`` (None: kept)."""
    from transformers import AutoProcessor

    from llava.model.builder import resolve_checkpoint

    processor = AutoProcessor.from_pretrained(resolve_checkpoint(_adapter(family).tiny_models[0]))
    sub = getattr(processor, "video_processor", None)
    if sub is not None and (max_pixels is not None or min_pixels is not None):
        size = {"shortest_edge": sub.size["shortest_edge"], "longest_edge": sub.size["longest_edge"]}
        if min_pixels is not None:
            size["shortest_edge"] = min_pixels
        if max_pixels is not None:
            size["longest_edge"] = max_pixels
        sub.size = size
    return processor


# -- what `llava-aim bench --model` builds ---------------------------------------------------------
@dataclass(frozen=True)
class BenchModel:
    """One ``--model`` choice: a family (its adapter's name) at a scale (the small sizes, or
    its reference checkpoint's: ``big``), built from the family's tiny model's config."""

    name: str
    family: str
    big: bool  # the reference architecture (bf16 on CUDA), else the small CPU model
    title: str

    @property
    def adapter(self):
        return _adapter(self.family)

    @property
    def resolution(self) -> bool:
        """Whether the family's tokens follow the frames' resolution (--max-pixels)."""
        return bool(self.adapter.pixel_limits)

    @property
    def small_name(self) -> str:
        """The small model of the same family (what a refusal suggests)."""
        return next(m.name for m in BENCH_MODELS.values() if m.family == self.family and not m.big)

    @property
    def decoder_title(self) -> str:
        return f"{'reference-size' if self.big else 'small'} {self.adapter.title} decoder"

    def text_config(self, attn: str = "sdpa"):
        return bench_text_config(self.family, self.big, attn)

    def vision_dims(self) -> Dict[str, Any]:
        return bench_vision_dims(self.family, self.big)


def _bench_models() -> Dict[str, BenchModel]:
    """Every family at both scales: "small-<tiny model's name>" ("small" for the first family,
    the CPU default) and its reference checkpoint's bench name."""
    from llava.model.families import FAMILIES

    models = []
    for i, fam in enumerate(FAMILIES):
        small = "small" if i == 0 else "small-" + fam.tiny_models[0].replace("tiny-", "", 1)
        models.append(BenchModel(small, fam.name, False, f"small {fam.title}"))
        for checkpoint, ref in list(fam.references.items())[:1]:
            models.append(BenchModel(ref.bench_name or checkpoint.split("/")[-1].lower(), fam.name, True,
                                     checkpoint.split("/")[-1]))
    return {m.name: m for m in models}


BENCH_MODELS: Dict[str, BenchModel] = _bench_models()


def bench_model(name: str, device: torch.device, layerwise: bool = False) -> BenchModel:
    """The ``--model`` choice; "auto" is the first family's small model on CPU and its reference
    size on CUDA (with ``--layerwise``, the reference shape everywhere: that is what it is for)."""
    if name == "auto":
        small = next(iter(BENCH_MODELS.values()))
        big = next(m for m in BENCH_MODELS.values() if m.family == small.family and m.big)
        name = big.name if layerwise or torch.device(device).type == "cuda" else small.name
    return BENCH_MODELS[name]


@contextlib.contextmanager
def attention_backend(lm, name: str):
    """Run a bare decoder (a transformers decoder model) with another stock attention backend for
    the duration of the block (its layers read the shared config at every call)."""
    previous = lm.config._attn_implementation
    lm.config._attn_implementation = name
    try:
        yield
    finally:
        lm.config._attn_implementation = previous


def square_side(max_pixels: int) -> int:
    """The side of the square synthetic frames for a run capped at ``max_pixels`` (pixel-limit families)."""
    return math.isqrt(max_pixels)


def synthetic_video(frames: int, size: int):
    """Frames with structure (gradients and a moving square), so merging has something to merge."""
    import numpy as np

    y, x = np.mgrid[0:size, 0:size]
    video = np.zeros((frames, size, size, 3), dtype=np.uint8)
    for f in range(frames):
        video[f, ..., 0] = (x * 255 // size).astype(np.uint8)
        video[f, ..., 1] = (y * 255 // size).astype(np.uint8)
        video[f, ..., 2] = 80
        x0 = (f * size // max(frames, 1)) % (size - size // 4)
        video[f, size // 3 : size // 3 + size // 4, x0 : x0 + size // 4] = (250, 30, 30)
    return video
