"""Random-weight models of the measured architectures (timings do not depend on the values).

``BENCH_MODELS`` names what ``llava-aim bench --model`` builds: LLaVA-OneVision (a small one for
CPU, the 7B architecture for CUDA) and Qwen2-VL / Qwen2.5-VL (likewise). Every model is built
from a config with ``torch.manual_seed(0)``; the multimodal ones start from the built-in tiny
model's config (its token ids and processor), with the sizes replaced.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch


def small_qwen2_config(num_layers: int = 8, attn: str = "sdpa", vocab_size: int = 1024):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size, hidden_size=256, intermediate_size=1024, num_hidden_layers=num_layers,
        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=32768,
        attn_implementation=attn,
    )


def qwen2_7b_config(attn: str = "sdpa", vocab_size: int = 152064):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
        rope_theta=1000000.0, attn_implementation=attn,
    )


def small_siglip_config() -> Dict[str, Any]:
    return dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2)


def siglip_so400m_config() -> Dict[str, Any]:
    return dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16)


def build_lm(config, device="cpu", dtype=torch.float32):
    from transformers import AutoModel

    torch.manual_seed(0)
    with torch.device(device):
        lm = AutoModel.from_config(config, dtype=dtype)
    return lm.eval()


def build_onevision(text_config, vision_dims: Dict[str, Any], device="cpu", dtype=torch.float32):
    """A random LLaVA-OneVision with the tiny model's processor geometry and these sizes."""
    from transformers import AutoConfig, AutoProcessor, LlavaOnevisionForConditionalGeneration

    from llava.model.builder import resolve_checkpoint

    path = resolve_checkpoint("tiny-llava-onevision")
    config = AutoConfig.from_pretrained(path)
    tc = config.text_config
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "rope_parameters"):
        setattr(tc, key, getattr(text_config, key))
    tc.layer_types = ["full_attention"] * tc.num_hidden_layers
    for key, value in vision_dims.items():
        setattr(config.vision_config, key, value)
    config.text_config._attn_implementation = text_config._attn_implementation
    config.vision_config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaOnevisionForConditionalGeneration._from_config(config, dtype=dtype)
    return model.eval(), AutoProcessor.from_pretrained(path)


# -- Qwen2-VL / Qwen2.5-VL -----------------------------------------------------------------------
QWEN_VL_TINY = {"qwen2_vl": "tiny-qwen2-vl", "qwen2_5_vl": "tiny-qwen2.5-vl"}
# The 7B models' M-RoPE split of the 64 rotary frequency pairs (temporal, height, width).
QWEN_VL_MROPE_7B = (16, 24, 24)


def _qwen_vl_text_config(kind: str, attn: str, **dims):
    from transformers import Qwen2_5_VLTextConfig, Qwen2VLTextConfig

    cls = Qwen2VLTextConfig if kind == "qwen2_vl" else Qwen2_5_VLTextConfig
    head_dim = dims["hidden_size"] // dims["num_attention_heads"]
    section = mrope_section(head_dim)
    config = cls(**dims, max_position_embeddings=32768, use_sliding_window=False, attn_implementation=attn,
                 rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": list(section)})
    config.layer_types = ["full_attention"] * config.num_hidden_layers
    return config


def mrope_section(head_dim: int):
    """(temporal, height, width) rotary frequency pairs for ``head_dim``: the 7B models'
    (16, 24, 24) of 64 pairs, scaled (head_dim 32 -> (4, 6, 6))."""
    pairs = head_dim // 2
    t = pairs * QWEN_VL_MROPE_7B[0] // sum(QWEN_VL_MROPE_7B)
    h = (pairs - t) // 2
    return (t, h, pairs - t - h)


def small_qwen_vl_text_config(kind: str = "qwen2_vl", attn: str = "sdpa", vocab_size: int = 1024):
    """The small bench decoder (the same sizes as :func:`small_qwen2_config`) as a Qwen2-VL /
    Qwen2.5-VL text model: M-RoPE over head_dim 32 split (4, 6, 6)."""
    return _qwen_vl_text_config(kind, attn, vocab_size=vocab_size, hidden_size=256, intermediate_size=1024,
                                num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                                bos_token_id=None, eos_token_id=None)


def qwen_vl_7b_text_config(kind: str = "qwen2_vl", attn: str = "sdpa", vocab_size: int = 152064):
    """Qwen2-VL-7B-Instruct's / Qwen2.5-VL-7B-Instruct's decoder: the Qwen2-7B shape with M-RoPE
    (16, 24, 24)."""
    return _qwen_vl_text_config(kind, attn, vocab_size=vocab_size, hidden_size=3584, intermediate_size=18944,
                                num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4)


def small_qwen_vl_vision(kind: str = "qwen2_vl") -> Dict[str, Any]:
    """A 2-block, 128-wide tower (the small SigLIP's sizes) at the real geometry: 14 px patches,
    2 frames per temporal patch, the 2x2 patch merger; Qwen2.5-VL with its 112 px windows in
    block 0 and full attention in block 1."""
    if kind == "qwen2_vl":
        return dict(depth=2, embed_dim=128, mlp_ratio=4, num_heads=2)
    return dict(depth=2, hidden_size=128, intermediate_size=512, num_heads=2, window_size=112,
                fullatt_block_indexes=[1])


def qwen_vl_7b_vision(kind: str = "qwen2_vl") -> Dict[str, Any]:
    """The 7B checkpoints' towers: 32 blocks, width 1280, 16 heads; Qwen2-VL MLP 5120 (quick
    GELU), Qwen2.5-VL SwiGLU 3420 with 112 px windows except blocks 7, 15, 23, 31."""
    if kind == "qwen2_vl":
        return dict(depth=32, embed_dim=1280, mlp_ratio=4, num_heads=16)
    return dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, window_size=112,
                fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2)


def build_qwen_vl(kind: str, text_config, vision_dims: Dict[str, Any], device="cpu", dtype=torch.float32,
                  max_pixels: Optional[int] = None, min_pixels: Optional[int] = None):
    """A random Qwen2-VL / Qwen2.5-VL with the tiny model's token ids, chat template and
    processor, and these sizes; the processor's video limits set to ``min_pixels`` ..
    ``max_pixels`` (each frame is resized to multiples of 28 px within them)."""
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    from llava.model.builder import resolve_checkpoint

    path = resolve_checkpoint(QWEN_VL_TINY[kind])
    config = AutoConfig.from_pretrained(path)
    tc = config.text_config
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "rope_parameters", "max_position_embeddings"):
        setattr(tc, key, getattr(text_config, key))
    tc.layer_types = ["full_attention"] * tc.num_hidden_layers
    vc = config.vision_config
    for key, value in vision_dims.items():
        setattr(vc, key, value)
    # the merger's output is the decoder's width
    setattr(vc, "hidden_size" if kind == "qwen2_vl" else "out_hidden_size", text_config.hidden_size)
    config.text_config._attn_implementation = text_config._attn_implementation
    config.vision_config._attn_implementation = "sdpa"
    cls = Qwen2VLForConditionalGeneration if kind == "qwen2_vl" else Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(0)
    with torch.device(device):
        model = cls._from_config(config, dtype=dtype)
    return model.eval(), qwen_vl_processor(kind, max_pixels, min_pixels)


def qwen_vl_processor(kind: str, max_pixels: Optional[int] = None, min_pixels: Optional[int] = None):
    """The tiny Qwen-VL model's processor with its video pixel limits set (None: kept)."""
    from transformers import AutoProcessor

    from llava.model.builder import resolve_checkpoint

    processor = AutoProcessor.from_pretrained(resolve_checkpoint(QWEN_VL_TINY[kind]))
    sub = processor.video_processor
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
    """One ``--model`` choice: its family ("onevision", "qwen2_vl", "qwen2_5_vl") and size."""

    name: str
    family: str
    big: bool  # the 7B architecture (bf16 on CUDA), else the small CPU model
    title: str

    @property
    def qwen(self) -> bool:
        return self.family in QWEN_VL_TINY

    @property
    def small_name(self) -> str:
        """The small model of the same family (what a refusal suggests)."""
        return next(m.name for m in BENCH_MODELS.values() if m.family == self.family and not m.big)

    @property
    def decoder_title(self) -> str:
        if self.qwen:
            return f"{'7B' if self.big else 'small'} {'Qwen2-VL' if self.family == 'qwen2_vl' else 'Qwen2.5-VL'} decoder"
        return "Qwen2-7B" if self.big else "small Qwen2"

    def text_config(self, attn: str = "sdpa"):
        if self.qwen:
            return (qwen_vl_7b_text_config if self.big else small_qwen_vl_text_config)(self.family, attn)
        return qwen2_7b_config(attn) if self.big else small_qwen2_config(attn=attn)

    def vision_dims(self) -> Dict[str, Any]:
        if self.qwen:
            return (qwen_vl_7b_vision if self.big else small_qwen_vl_vision)(self.family)
        return siglip_so400m_config() if self.big else small_siglip_config()


BENCH_MODELS: Dict[str, BenchModel] = {m.name: m for m in (
    BenchModel("small", "onevision", False, "small LLaVA-OneVision"),
    BenchModel("onevision-7b", "onevision", True, "LLaVA-OneVision-7B"),
    BenchModel("small-qwen2-vl", "qwen2_vl", False, "small Qwen2-VL"),
    BenchModel("qwen2-vl-7b", "qwen2_vl", True, "Qwen2-VL-7B"),
    BenchModel("small-qwen2.5-vl", "qwen2_5_vl", False, "small Qwen2.5-VL"),
    BenchModel("qwen2.5-vl-7b", "qwen2_5_vl", True, "Qwen2.5-VL-7B"),
)}


def bench_model(name: str, device: torch.device, layerwise: bool = False) -> BenchModel:
    """The ``--model`` choice; "auto" is the small LLaVA-OneVision on CPU and the 7B one on CUDA
    (with ``--layerwise``, the 7B shape everywhere: that is what it is for)."""
    if name == "auto":
        name = "onevision-7b" if layerwise or torch.device(device).type == "cuda" else "small"
    return BENCH_MODELS[name]


@contextlib.contextmanager
def attention_backend(lm, name: str):
    """Run a bare decoder (Qwen2Model / LlamaModel) with another stock attention backend for
    the duration of the block (its layers read the shared config at every call)."""
    previous = lm.config._attn_implementation
    lm.config._attn_implementation = name
    try:
        yield
    finally:
        lm.config._attn_implementation = previous


def square_side(max_pixels: int) -> int:
    """The side of the square synthetic frames for a Qwen-VL run capped at ``max_pixels``."""
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
