"""The pre-LLM "video" reduction stage (llava.aim.frames): a registered entry run by the family
from the entry alone, its data-dependent count reserved and the filler dropped before layer 0,
a batch equal to its videos run alone, and the family rule (MethodSpec.families)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_video, spliced_logits, video_inputs
from llava import AIMConfig, apply_aim
from llava.aim import policy, registry
from llava.aim.frames import FramesIn, FramesOut, head_mean_keys, received_attention
from llava.errors import AIMConfigError, UnsupportedModelError
from llava.model.runtime import remove_aim

SEEN = []  # the FramesIn of each call, for the checks


def even_frames_above_mean(x: FramesIn) -> FramesOut:
    """Keep the tokens of every other frame (0, 2, ...) whose score is at least the frame's mean:
    the norm of the token, or with attention the attention it receives. A count that depends on
    the content."""
    SEEN.append(x)
    frames, t, _ = x.tokens.shape
    score = x.attention if x.attention is not None else x.tokens.float().norm(dim=-1)
    keep = score >= score.mean(dim=1, keepdim=True)
    keep[1::2] = False
    origin = keep.reshape(-1).nonzero().flatten()
    return FramesOut(x.tokens.reshape(frames * t, -1)[origin], origin)


def half_of_the_frames(frames, t, cfg):
    return math.ceil(frames / 2) * t


def nominal_half(frames, t, cfg):
    return math.ceil(frames / 2) * t // 2


@pytest.fixture(params=["projected", "vision", "vision_attention"])
def method(request, monkeypatch):
    stage = "projected" if request.param == "projected" else "vision"
    needs = ("video", "vision_attention") if request.param == "vision_attention" else ("video",)
    registry.register("test_even_frames", "reduction", even_frames_above_mean, needs=needs, stage=stage,
                      bound=half_of_the_frames, nominal=nominal_half, replace=True)
    monkeypatch.setitem(policy.SPECS, "test_even", policy.MethodSpec(
        "test_even", "even frames (test)", "test", "test_even_frames", "none", "none", families=("onevision",),
        default_retention=0.5))
    SEEN.clear()
    yield request.param
    registry.unregister("test_even_frames")


def _last_logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits[:, -1]


def _reference_tokens(model, inputs, stage):
    """What the family should hand the LLM for one video, computed from the stock parts."""
    inner = model.model
    pix = inputs["pixel_values_videos"]
    frames = pix.shape[1]
    with torch.no_grad():
        if stage == "projected":
            pooled = inner.get_video_features(pix, vision_feature_layer=-1,
                                              vision_feature_select_strategy="full").pooler_output
            x = FramesIn(None, pooled[0, : frames * (pooled.shape[1] // frames)].reshape(frames, -1, pooled.shape[-1]), (0, 0))
            return torch.cat([even_frames_above_mean(x).tokens, inner.image_newline[None]])
        tower = inner.vision_tower
        layers = getattr(tower, "vision_model", tower).encoder.layers
        hs = tower(pix.flatten(0, 1), output_hidden_states=True).hidden_states
        attention = None
        if stage == "vision_attention":  # the feature layer's softmax, head by head
            attn = layers[-1].self_attn
            normed = layers[-1].layer_norm1(hs[-2])
            q, k = attn.q_proj(normed).double(), attn.k_proj(normed).double()
            d = attn.head_dim
            attention = torch.zeros(q.shape[:2], dtype=torch.float64)
            for h in range(attn.num_heads):
                qh, kh = q[..., h * d:(h + 1) * d], k[..., h * d:(h + 1) * d]
                attention += torch.softmax(qh @ kh.transpose(1, 2) * d ** -0.5, -1).mean(dim=1) / attn.num_heads
            attention = attention.float()
        x = FramesIn(None, hs[-1], (0, 0), attention)
        kept = even_frames_above_mean(x).tokens
        return torch.cat([inner.multi_modal_projector(kept), inner.image_newline[None]])


def test_one_video_equals_the_spliced_reference(ov_sdpa, method):
    model, processor = ov_sdpa
    stock = video_inputs(processor, [make_video(3, seed=7)])
    merged = _reference_tokens(model, stock, method)
    want = spliced_logits(model, stock, merged, model.config.video_token_id)
    try:
        cfg = AIMConfig.for_method("test_even")
        assert (cfg.retention, cfg.l1, cfg.l2, cfg.merging, cfg.video_reducing) == (0.5, None, None, False, True)
        apply_aim(model, processor, cfg)
        inputs = video_inputs(processor, [make_video(3, seed=7)])
        t = 729 if method != "projected" else 196
        assert int((inputs["input_ids"] == model.config.video_token_id).sum()) == 2 * t + 1  # bound + newline
        SEEN.clear()
        got = _last_logits(model, inputs)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        stats = model.aim_stats
        x = SEEN[-1]
        assert x.tokens.shape[:2] == (3, t) and x.grid == (math.isqrt(t),) * 2
        kept = stats.tokens_kept_per_frame
        assert kept[1] == 0 and kept[0] > 0 and kept[2] > 0 and sum(kept) == merged.shape[0] - 1
        assert stats.visual_tokens_after_merge == merged.shape[0] and stats.visual_tokens_before_merge == 3 * 196 + 1
        text = inputs["input_ids"].shape[1] - (2 * t + 1)
        assert stats.layer_seq_lens == [text + merged.shape[0]] * len(stats.layer_seq_lens)  # no filler enters
        if method == "vision_attention":
            assert x.attention.shape == (3, t) and x.keys.shape[:2] == (3, t)
            torch.testing.assert_close(x.attention.sum(dim=1), torch.ones(3), rtol=1e-5, atol=1e-5)
    finally:
        remove_aim(model, processor)


def test_batch_equals_single(ov_sdpa, method):
    model, processor = ov_sdpa
    videos = [make_video(2, seed=3), make_video(2, seed=11)]
    questions = ["What happens?", "Describe the colors of the moving square in this clip in detail."]
    try:
        apply_aim(model, processor, AIMConfig.for_method("test_even"))
        single, counts = [], []
        for v, q in zip(videos, questions):
            single.append(_last_logits(model, video_inputs(processor, [v], [q])))
            counts.append(model.aim_stats.tokens_kept_per_frame)
        assert sum(counts[0]) != sum(counts[1]), "the test needs different real counts"
        batch = video_inputs(processor, videos, questions)
        assert (batch["attention_mask"] == 0).any(), "the test needs left padding"
        both = _last_logits(model, batch)
        for i in range(2):
            torch.testing.assert_close(both[i:i + 1], single[i], rtol=1e-4, atol=1e-4)
        stats = model.aim_stats
        assert stats.tokens_kept_per_frame == counts[0] + counts[1]
        assert stats.frames == 4 and stats.visual_tokens_after_merge == sum(counts[0]) + sum(counts[1]) + 2
    finally:
        remove_aim(model, processor)


def test_received_attention_matches_the_softmax_by_hand():
    torch.manual_seed(0)
    q, k = torch.randn(2, 7, 12), torch.randn(2, 7, 12)
    heads, d = 3, 4
    want_all = torch.zeros(2, 7)
    want_cls = torch.zeros(2, 7)
    for f in range(2):
        for h in range(heads):
            qh, kh = q[f, :, h * d:(h + 1) * d].double(), k[f, :, h * d:(h + 1) * d].double()
            p = torch.softmax(qh @ kh.T / math.sqrt(d), dim=-1)
            want_all[f] += (p.mean(dim=0) / heads).float()
            want_cls[f] += (p[0] / heads).float()
    torch.testing.assert_close(received_attention(q, k, heads), want_all)
    torch.testing.assert_close(received_attention(q, k, heads, cls_index=0), want_cls)
    torch.testing.assert_close(head_mean_keys(k, heads), k.reshape(2, 7, 3, 4).mean(2))


def test_registry_rules():
    fn = even_frames_above_mean
    with pytest.raises(AIMConfigError, match="stage must be one of"):
        registry.register("bad", "reduction", fn, needs=("video",), stage="nowhere", bound=half_of_the_frames,
                          nominal=nominal_half)
    with pytest.raises(AIMConfigError, match="bound must be a function"):
        registry.register("bad", "reduction", fn, needs=("video",), stage="vision", nominal=nominal_half)
    with pytest.raises(AIMConfigError, match="add the need 'video'"):
        registry.register("bad", "reduction", fn, needs=("vision_attention",))
    with pytest.raises(AIMConfigError, match="needs nominal"):  # every reduction states its token flow
        registry.register("bad", "reduction", fn, needs=("frames",), stage="vision")
    with pytest.raises(AIMConfigError, match="belong to reductions"):
        registry.register("bad", "score", fn, stage="vision")
    with pytest.raises(AIMConfigError, match="score"):
        registry.register("bad", "score", fn, needs=("video",))
    assert "bad" not in registry.REGISTRY


def test_family_rule_refuses_with_the_reason(ov_sdpa, llava15_sdpa, monkeypatch):
    registry.register("test_even_frames", "reduction", even_frames_above_mean, needs=("video",), stage="vision",
                      bound=half_of_the_frames, nominal=nominal_half, replace=True)
    try:
        monkeypatch.setitem(policy.SPECS, "test_even", policy.MethodSpec(
            "test_even", "even frames (test)", "test", "test_even_frames", "none", "none", families=("qwen2_vl",),
            families_reason="its official code runs Qwen2.5-VL only"))
        model, processor = ov_sdpa
        with pytest.raises(UnsupportedModelError, match="runs only where its official code ran: qwen2_vl.*"
                                                        "not on this onevision model.*Qwen2.5-VL only"):
            apply_aim(model, processor, AIMConfig.for_method("test_even"))
        assert not hasattr(model, "aim_stats")
        monkeypatch.setitem(policy.SPECS, "test_even", policy.MethodSpec(
            "test_even", "even frames (test)", "test", "test_even_frames", "none", "none"))
        registry.register("test_even_frames", "reduction", even_frames_above_mean, needs=("video",),
                          stage="projected", bound=half_of_the_frames, nominal=nominal_half, replace=True)
        model, processor = llava15_sdpa
        with pytest.raises(UnsupportedModelError, match="'projected' stage, which LLaVA-1.5 does not offer"):
            apply_aim(model, processor, AIMConfig.for_method("test_even"))
        assert not hasattr(model, "aim_stats")
        registry.register("test_even_frames", "reduction", even_frames_above_mean, needs=("video", "vision_attention"),
                          stage="projected", bound=half_of_the_frames, nominal=nominal_half, replace=True)
        model, processor = ov_sdpa
        from llava.model.families.onevision import OneVisionAdapter

        # a family offering the tower's attention at "vision" only (OneVision offers it at both)
        monkeypatch.setattr(OneVisionAdapter, "vision_attention_stages", ("vision",))
        with pytest.raises(UnsupportedModelError, match="attention at the 'projected' stage.*at \\['vision'\\] only"):
            apply_aim(model, processor, AIMConfig.for_method("test_even"))
        assert not hasattr(model, "aim_stats")
        # a video reduction's retention is its budget, typed or not
        policy.check_typed_settings("test_even", {"retention": 0.25})
    finally:
        registry.unregister("test_even_frames")
        for model, processor in (ov_sdpa, llava15_sdpa):
            remove_aim(model, processor)
