"""LLaVA-1.5 as the official code runs it: merging before the projector, CLIP keys as similarity.

Checked against a reference built from the model's own parts: the CLIP features LLaVA selects
(hidden_states[-2], CLS dropped), the keys of the next CLIP layer (its k_proj on its layer norm
of the same hidden states, CLS dropped), merged with merge_frames (metric = keys), projected.
"""

from __future__ import annotations

import pytest
import torch

from conftest import image_inputs, make_image
from llava import AIMConfig, apply_aim
from llava.aim.merge import merge_frames, merged_token_count
from llava.errors import AIMConfigError
from llava.model.runtime import remove_aim


def reference_features(model, pixel_values, cfg):
    """What the LLM should receive per image on the official path, built by hand."""
    inner = model.model
    tower = inner.vision_tower
    out = tower(pixel_values, output_hidden_states=True)
    hidden = out.hidden_states[-2]  # input of the last CLIP layer (vision_feature_layer = -2)
    layers = getattr(tower, "vision_model", tower).encoder.layers
    last = layers[-1]
    keys = last.self_attn.k_proj(last.layer_norm1(hidden))[:, 1:]
    features = hidden[:, 1:]
    merged = merge_frames(features, cfg.retention, cfg.merge_weighting, cfg.merge_order, metric=keys,
                          merge_count=cfg.merge_count, track_sources=True)
    return inner.multi_modal_projector(merged.tokens), merged.source_index


def captured_image_features(model, inputs):
    """The image features the multimodal model splices into the prompt (after AIM's hooks)."""
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=inputs["pixel_values"],
                                               vision_feature_layer=model.config.vision_feature_layer,
                                               vision_feature_select_strategy=model.config.vision_feature_select_strategy)
    feats = getattr(feats, "pooler_output", feats)
    return torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats


@pytest.mark.parametrize("retention, kept", [(0.4375, 252), (0.125, 72), (0.25, 144)])
def test_keys_path_is_the_default_and_matches_the_reference(llava15_sdpa, retention, kept):
    model, processor = llava15_sdpa
    try:
        apply_aim(model, processor, AIMConfig(retention=retention, l1=None, l2=None), track_sources=True)
        cfg = model.aim_config
        assert cfg.merge_metric == "keys"  # "auto" resolved to the official path
        inputs = image_inputs(processor, [make_image(), make_image(seed=3)])
        assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 2 * kept
        got = captured_image_features(model, inputs)
        remove_aim(model, processor)
        with torch.no_grad():  # the reference on the stock model
            want, sources = reference_features(model, inputs["pixel_values"], cfg)
        apply_aim(model, processor, cfg, track_sources=True)
        assert got.shape == (2, kept, model.config.text_config.hidden_size)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            model(**inputs)
        stats = model.aim_stats
        assert (stats.tokens_per_frame_before_merge, stats.tokens_per_frame_after_merge) == (576, kept)
        assert torch.equal(stats.merge_sources, sources)
    finally:
        remove_aim(model, processor)


def test_keys_differ_from_projected_token_cosine(llava15_sdpa):
    """The two metrics are different computations: other groups, other features."""
    model, processor = llava15_sdpa
    found = {}
    try:
        for metric in ("keys", "tokens"):
            apply_aim(model, processor, AIMConfig(retention=0.125, l1=None, l2=None, merge_metric=metric),
                      track_sources=True)
            inputs = image_inputs(processor, [make_image()])
            with torch.no_grad():
                model(**inputs)
            found[metric] = model.aim_stats.merge_sources.clone()
            assert model.aim_stats.tokens_per_frame_after_merge == 72
    finally:
        remove_aim(model, processor)
    assert not torch.equal(found["keys"], found["tokens"])


def test_tokens_option_merges_the_projected_tokens(llava15_sdpa):
    model, processor = llava15_sdpa
    try:
        cfg = AIMConfig(retention=0.4375, l1=None, l2=None, merge_metric="tokens")
        apply_aim(model, processor, cfg)
        inputs = image_inputs(processor, [make_image()])
        got = captured_image_features(model, inputs)
        remove_aim(model, processor)
        stock = captured_image_features(model, inputs)
        want = merge_frames(stock, 0.4375).tokens
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert got.shape[1] == 252
    finally:
        remove_aim(model, processor)


def test_official_counts_and_schedule_on_32_layers(llava15_sdpa):
    """The official LLaVA-1.5 numbers: 252 (43.75%) and 72 (12.5%) tokens per image, pruning
    (13, 21) on the 32-layer Llama: what the preset and "auto" give."""
    from transformers import LlavaForConditionalGeneration

    _, processor = llava15_sdpa
    config = llava15_sdpa[0].config.__class__.from_dict(llava15_sdpa[0].config.to_dict())
    config.text_config.num_hidden_layers = 32
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    try:
        apply_aim(model, processor, AIMConfig.preset("llava-1.5"))
        cfg = model.aim_config
        assert (cfg.retention, cfg.l1, cfg.l2, cfg.merge_metric) == (0.4375, 13, 21, "keys")
        inputs = image_inputs(processor, [make_image()])
        assert int((inputs["input_ids"] == config.image_token_id).sum()) == 252
        with torch.no_grad():
            model(**inputs)
        per_layer = [v[0] for v in model.aim_stats.visual_tokens_per_layer]
        assert per_layer[:14] == [252] * 14 and per_layer[14] == 252 * 7 // 8 and per_layer[21:] == [0] * 11
        apply_aim(model, processor, AIMConfig(retention=0.125))
        assert (model.aim_config.l1, model.aim_config.l2) == (13, 21)
        assert int((image_inputs(processor, [make_image()])["input_ids"] == config.image_token_id).sum()) == 72
    finally:
        remove_aim(model, processor)
    assert merged_token_count(576, 0.4375) == 252 and merged_token_count(576, 0.125) == 72


def test_keys_metric_refused_on_onevision(ov_sdpa):
    model, processor = ov_sdpa
    with pytest.raises(AIMConfigError, match="merge_metric='keys' is not available for LLaVA-OneVision"):
        apply_aim(model, processor, AIMConfig(merge_metric="keys"))
    assert not hasattr(model, "_aim_runtime") or model.aim_config.merge_metric != "keys"


def test_bad_merge_metric_is_refused():
    with pytest.raises(AIMConfigError, match="merge_metric must be one of"):
        AIMConfig(merge_metric="cosine")
