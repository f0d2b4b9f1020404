"""remove_aim: exported from llava, returns what apply_aim returns, and takes AIM's
attributes off the instance (model.aim_stats / model.aim_config exist only while AIM is on)."""

from __future__ import annotations

import pytest
import torch

import llava
from conftest import make_video, video_inputs
from llava import AIMConfig, apply_aim, remove_aim


def test_remove_aim_is_exported():
    assert "remove_aim" in llava.__all__
    from llava.model.runtime import remove_aim as inner

    assert llava.remove_aim is inner


def test_remove_aim_mirrors_apply_aim_and_removes_the_stats(ov_sdpa):
    model, processor = ov_sdpa
    assert not hasattr(model, "aim_stats")  # a model AIM never touched
    inputs_stock = video_inputs(processor, [make_video()])
    with torch.no_grad():
        stock = model(**inputs_stock).logits
    returned = apply_aim(model, processor, AIMConfig(retention=0.5, l1=2, l2=6))
    assert returned[0] is model and returned[1] is processor
    with torch.no_grad():
        model(**video_inputs(processor, [make_video()]))
    kept = model.aim_stats  # statistics a caller holds on to stay valid after removal
    assert kept.layer_seq_lens and kept.visual_tokens_after_merge < kept.visual_tokens_before_merge
    undone = remove_aim(model, processor)
    assert undone[0] is model and undone[1] is processor
    assert not hasattr(model, "aim_stats") and not hasattr(model, "aim_config")
    assert not hasattr(model, "_aim_runtime") and not hasattr(type(model), "aim_stats")
    with pytest.raises(AttributeError):
        model.aim_stats
    assert kept.layer_seq_lens  # unchanged
    with torch.no_grad():
        again = model(**video_inputs(processor, [make_video()])).logits
    assert torch.equal(again, stock)  # the stock model, processor included (same placeholder count)
    assert remove_aim(model, processor) == (model, processor)  # twice: a no-op


def test_apply_after_remove_gives_fresh_stats(ov_sdpa):
    model, processor = ov_sdpa
    try:
        apply_aim(model, processor, AIMConfig(retention=0.5, l1=2, l2=6))
        first = model.aim_stats
        remove_aim(model, processor)
        apply_aim(model, processor, AIMConfig(retention=0.25))
        assert model.aim_stats is not first and model.aim_stats.layer_seq_lens == []
        assert (model.aim_stats.l1, model.aim_stats.l2) == (4, 6)
    finally:
        remove_aim(model, processor)
