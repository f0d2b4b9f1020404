"""Random-weight models of the measured architectures (timings do not depend on the values)."""

from __future__ import annotations

import contextlib
from typing import Any, Dict

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
