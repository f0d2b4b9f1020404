"""Qwen3-VL's plugin inputs: pre-sampled frames are not resampled and get their clip's timestamps."""

import numpy as np
import pytest

from llava.model.families import qwen3_vl
from pathlib import Path

TINY = Path(__file__).resolve().parents[1] / "llava" / "model" / "tiny"


def test_qwen3_plugin_keeps_the_sampled_frames_and_times_them_from_the_clip(monkeypatch):
    from transformers import AutoProcessor

    monkeypatch.setattr("llava.video.video_duration_s", lambda path: 10.0)  # 8 frames over 10 s
    family = qwen3_vl.Qwen3VLAdapter()
    frames = np.zeros((8, 64, 64, 3), dtype=np.uint8)
    kwargs = family.plugin_input_kwargs("video", ["clip.mp4"], [frames], pytest.fail)
    assert kwargs["do_sample_frames"] is False
    assert family.plugin_input_kwargs("image", ["a.png"], [frames[0]], pytest.fail) == {}

    processor = AutoProcessor.from_pretrained(TINY / "tiny-qwen3-vl")
    text = "<|vision_start|><|video_pad|><|vision_end|>"
    out = processor(text=text, videos=[frames], return_tensors="pt", **kwargs)
    assert out["video_grid_thw"][:, 0].tolist() == [4]  # all 8 frames kept: 4 temporal patches of 2
    prompt = processor.tokenizer.decode(out["input_ids"][0])
    # frame i at i * 10/8 s; a temporal patch is stamped with the mean of its 2 frames
    assert [f"<{t:.1f} seconds>" in prompt for t in (0.625, 3.125, 5.625, 8.125)] == [True] * 4
