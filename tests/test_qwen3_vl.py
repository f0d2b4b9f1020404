"""AIM on the tiny Qwen3-VL and Qwen3-VL-MoE models (DeepStack, per-frame timestamps, interleaved
M-RoPE): stock equality, DeepStack rows merged with the main features' groups and added by the
decoder driver, positions, removal vs the mask reference, batch vs single, the processor's counts,
and the importance probe's q/k."""

from __future__ import annotations

import pytest
import torch

from conftest import make_clip, make_image, needs_family, qwen_model
from test_qwen2_vl import check_batch_matches_single, check_uncached_steps_keep_the_first_positions
from llava import AIMConfig, apply_aim
from llava.aim.merge import merge_frames, merged_token_count
from llava.model.families import FAMILIES, family_for_model_type
from llava.model.families.base import LayerAdditions
from llava.model.families.qwen2_vl import IMAGE, VIDEO, merge_item
from llava.model.families.qwen3_vl import Qwen3VLAdapter, Qwen3VLMoeAdapter
from llava.model.runtime import remove_aim

# Qwen3-VL is served from transformers 5.24 on (Qwen3VLAdapter.min_transformers); on an older
# release in the tested range (CI's oldest venv) it skips; tests/test_family_releases.py checks the refusal.
pytestmark = needs_family(Qwen3VLAdapter())

QWEN3_TINY = ("tiny-qwen3-vl", "tiny-qwen3-vl-moe")
# 4 frames of 48 x 80 px -> 2 temporal groups of 10 x 16 patches (16 px), 5 x 8 = 40 merged tokens each;
# the image 200 x 120 px -> 8 x 12 patches, 4 x 6 = 24 merged tokens.
VIDEO_GROUPS, VIDEO_PER_GROUP, IMAGE_TOKENS = 2, 40, 24
NEW_TOKENS = 6


def clip(seed=0, **kw):
    return make_clip(**{**dict(frames=4, height=48, width=80), **kw}, seed=seed)


def wide_image(seed=1):
    return make_image(size=64, seed=seed).resize((200, 120))


def build(processor, kind, media=None, questions=None):
    media = media if media is not None else ([clip()] if kind == "video" else [wide_image()])
    questions = questions or ["What happens here?"] * len(media)
    prompts = [processor.apply_chat_template([{"role": "user", "content": [{"type": kind}, {"type": "text", "text": q}]}],
                                             add_generation_prompt=True) for q in questions]
    extra = {"videos_kwargs": dict(fps=2.0, do_sample_frames=False)} if kind == "video" else {}
    return processor(text=prompts, return_tensors="pt", padding=True, **{f"{kind}s": list(media)}, **extra)


def logits_of(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def greedy(model, inputs, n=NEW_TOKENS):
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[:, inputs["input_ids"].shape[1]:]


@pytest.fixture
def qwen3(request):
    model, processor = qwen_model(request.param)
    yield model, processor
    remove_aim(model, processor)


BOTH = pytest.mark.parametrize("qwen3", QWEN3_TINY, indirect=True)
DENSE = pytest.mark.parametrize("qwen3", QWEN3_TINY[:1], indirect=True)


# -- which models ---------------------------------------------------------------------------
def test_the_adapters_serve_both_model_types():
    assert isinstance(family_for_model_type("qwen3_vl"), Qwen3VLAdapter)
    assert isinstance(family_for_model_type("qwen3_vl_moe"), Qwen3VLMoeAdapter)
    assert {"tiny-qwen3-vl", "tiny-qwen3-vl-moe"} <= {n for f in FAMILIES for n in f.tiny_models}


@BOTH
def test_tiny_models_have_deepstack_gqa_and_moe(qwen3):
    model, _ = qwen3
    vision, text = model.config.vision_config, model.config.text_config
    assert list(vision.deepstack_visual_indexes) == [0, 1, 2] and vision.depth == 4
    assert text.num_hidden_layers == 8 and text.num_key_value_heads < text.num_attention_heads
    if model.config.model_type == "qwen3_vl_moe":
        assert (text.num_experts, text.num_experts_per_tok) == (4, 2)


@BOTH
def test_default_schedule_starts_pruning_after_the_deepstack_layers(qwen3):
    model, processor = qwen3
    apply_aim(model, processor, AIMConfig(retention=0.25))
    assert model.aim_config.l1 >= len(model.config.vision_config.deepstack_visual_indexes)
    assert Qwen3VLAdapter().official_layers(4) == (3, 4)  # raised to the DeepStack layers on a shallow model


# -- stock equality -------------------------------------------------------------------------
@BOTH
@pytest.mark.parametrize("kind", ["video", "image"])
def test_disabled_and_retention_one_equal_stock_bit_for_bit(qwen3, kind):
    model, processor = qwen3
    stock = logits_of(model, build(processor, kind))
    apply_aim(model, processor, AIMConfig.disabled())
    assert torch.equal(logits_of(model, build(processor, kind)), stock)
    # retention 1 without pruning, through the merging path (sources tracked): nothing changes
    apply_aim(model, processor, AIMConfig(retention=1.0, l1=None, l2=None), track_sources=True)
    assert torch.equal(logits_of(model, build(processor, kind)), stock)
    apply_aim(model, processor, AIMConfig(retention=0.25, l1=4, l2=6))
    remove_aim(model, processor)
    assert torch.equal(logits_of(model, build(processor, kind)), stock)


@DENSE
def test_driver_adds_the_deepstack_rows_like_the_stock_loop(qwen3, monkeypatch):
    """Pruning installed but nothing pruned (l1 = last layer): the driver's own layer loop with
    the DeepStack additions gives the stock logits; without them it does not."""
    model, processor = qwen3
    stock = logits_of(model, build(processor, "video"))
    apply_aim(model, processor, AIMConfig(retention=1.0, l1=7, l2=8))
    driven = logits_of(model, build(processor, "video"))
    assert model.aim_stats.layer_seq_lens[0] == model.aim_stats.layer_seq_lens[-1]  # the driver ran, no pruning
    assert (driven - stock).abs().max().item() <= 1e-5
    monkeypatch.setattr(LayerAdditions, "apply", lambda self, layer, h, slot, alive: h)
    assert (logits_of(model, build(processor, "video")) - stock).abs().max().item() > 1e-3


# -- merging ----------------------------------------------------------------------------------
@BOTH
@pytest.mark.parametrize("kind", ["video", "image"])
def test_processor_counts_and_keeps_timestamps_and_frame_wrappers(qwen3, kind):
    model, processor = qwen3
    stock = build(processor, kind)
    apply_aim(model, processor, AIMConfig(retention=0.25, l1=None, l2=None))
    inputs = build(processor, kind)
    token = model.config.video_token_id if kind == "video" else model.config.image_token_id
    groups, per_group = (VIDEO_GROUPS, VIDEO_PER_GROUP) if kind == "video" else (1, IMAGE_TOKENS)
    assert int((stock["input_ids"] == token).sum()) == groups * per_group
    assert int((inputs["input_ids"] == token).sum()) == groups * merged_token_count(per_group, 0.25)
    # everything but the placeholders is the installed processor's own text (timestamps, wrappers)
    assert torch.equal(stock["input_ids"][stock["input_ids"] != token], inputs["input_ids"][inputs["input_ids"] != token])
    logits = logits_of(model, inputs)
    assert logits.shape[1] == inputs["input_ids"].shape[1]
    s = model.aim_stats
    assert (s.visual_tokens_before_merge, s.visual_tokens_after_merge) == (
        groups * per_group, groups * merged_token_count(per_group, 0.25))


def _stock_features(model, inputs, kind):
    inner = model.model
    pixels, grid = (inputs["pixel_values_videos"], inputs["video_grid_thw"]) if kind == "video" else (
        inputs["pixel_values"], inputs["image_grid_thw"])
    with torch.no_grad():
        return type(inner).get_image_features(inner, pixels, grid, return_dict=True), grid


@BOTH
@pytest.mark.parametrize("kind", ["video", "image"])
@pytest.mark.parametrize("weighting", ["mean", "size"])
def test_deepstack_rows_are_merged_with_the_main_features_groups(qwen3, kind, weighting):
    model, processor = qwen3
    inputs = build(processor, kind)
    stock, grid = _stock_features(model, inputs, kind)
    cfg = AIMConfig(retention=0.25, l1=None, l2=None, merge_weighting=weighting)
    apply_aim(model, processor, cfg, track_sources=True)
    name = "get_video_features" if kind == "video" else "get_image_features"
    with torch.no_grad():
        merged = getattr(model.model, name)(inputs["pixel_values_videos" if kind == "video" else "pixel_values"],
                                            grid, return_dict=True)
    runtime = model._aim_runtime
    [main] = stock.pooler_output
    t, h, w = (int(v) for v in grid[0])
    frames = main.reshape(t, (h // 2) * (w // 2), -1)
    # the main features: exactly what merging them alone gives
    alone, _ = merge_item(main, grid[0], 2, runtime)
    assert torch.equal(merged.pooler_output[0], alone)
    groups = merge_frames(frames, 0.25, weighting, cfg.merge_order, track_sources=True)
    for level, stock_level in zip(merged.deepstack_features, stock.deepstack_features):
        rows = stock_level[0].reshape(t, (h // 2) * (w // 2), -1)
        got = level[0].reshape(t, -1, rows.shape[-1])
        assert got.shape[1] == merged_token_count((h // 2) * (w // 2), 0.25)
        if weighting == "size":  # the size-weighted merge of a group is the plain mean of its members
            index = groups.source_index[..., None].expand(-1, -1, rows.shape[-1])
            sums = torch.zeros_like(got).scatter_add_(1, index, rows)
            counts = torch.zeros(got.shape[:2]).scatter_add_(1, groups.source_index, torch.ones(rows.shape[:2]))
            assert torch.allclose(got, sums / counts[..., None], atol=1e-5, rtol=1e-5)
        else:  # the same steps and weights as the main features: merging the rows with the main metric
            assert torch.equal(got, merge_frames(rows, 0.25, weighting, cfg.merge_order, metric=frames).tokens)


# -- positions ------------------------------------------------------------------------------
class PositionsSeen:
    def __init__(self, model):
        self.calls = []
        self.handle = model.model.language_model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        pos = kwargs.get("position_ids")
        self.calls.append(None if pos is None else pos.clone())

    def close(self):
        self.handle.remove()


def _destinations(model, key):
    return [it.dest for it in model._aim_runtime.family_state["qwen_merge_log"].items[key]]


@BOTH
@pytest.mark.parametrize("kind", ["video", "image"])
def test_merged_tokens_take_their_destinations_and_text_keeps_stock_positions(qwen3, kind):
    model, processor = qwen3
    stock_inputs = build(processor, kind)
    inner = model.model
    rope_args = {k: stock_inputs[k] for k in ("mm_token_type_ids", "image_grid_thw", "video_grid_thw",
                                              "attention_mask") if k in stock_inputs}
    stock_pos, stock_delta = type(inner).get_rope_index(inner, stock_inputs["input_ids"], **rope_args)
    apply_aim(model, processor, AIMConfig(retention=0.25, l1=None, l2=None))
    inputs = build(processor, kind)
    seen = PositionsSeen(model)
    try:
        logits_of(model, inputs)
    finally:
        seen.close()
    pos = seen.calls[0]
    dests = _destinations(model, VIDEO if kind == "video" else IMAGE)
    assert len(dests) == (VIDEO_GROUPS if kind == "video" else 1)  # one run per temporal group
    types, stock_types = inputs["mm_token_type_ids"][0], stock_inputs["mm_token_type_ids"][0]
    starts = [i for i in range(len(types)) if types[i] != 0 and (i == 0 or types[i - 1] == 0)]
    stock_starts = [i for i in range(len(stock_types)) if stock_types[i] != 0 and (i == 0 or stock_types[i - 1] == 0)]
    for dest, m0, s0 in zip(dests, starts, stock_starts):
        assert torch.equal(pos[:, 0, m0:m0 + dest.numel()], stock_pos[:, 0, s0 + dest])
    assert torch.equal(pos[:, 0, types == 0], stock_pos[:, 0, stock_types == 0])
    removed = stock_inputs["input_ids"].shape[1] - inputs["input_ids"].shape[1]
    assert model.model.rope_deltas.tolist() == (stock_delta + removed).tolist()


@BOTH
@pytest.mark.parametrize("pruning", [False, True])
def test_decode_positions_equal_stock_generate_at_every_step(qwen3, pruning):
    model, processor = qwen3
    seen = PositionsSeen(model)
    try:
        greedy(model, build(processor, "video"), 4)
    finally:
        seen.close()
    stock_calls = seen.calls
    apply_aim(model, processor, AIMConfig(retention=0.25, l1=4 if pruning else None, l2=6 if pruning else None))
    seen = PositionsSeen(model)
    try:
        greedy(model, build(processor, "video"), 4)
    finally:
        seen.close()
    assert len(seen.calls) == len(stock_calls) == 4
    # the M-RoPE rows (generate's row 0 is the sequence index, shorter after merging; the driver drops it)
    assert [c[-3:].tolist() for c in seen.calls[1:]] == [c[1:].tolist() for c in stock_calls[1:]]



@DENSE
def test_every_step_without_the_cache_places_merged_tokens_as_the_first_prefill(qwen3):
    check_uncached_steps_keep_the_first_positions(*qwen3, build)

# -- pruning ----------------------------------------------------------------------------------
@BOTH
@pytest.mark.parametrize("kind", ["video", "image"])
@pytest.mark.parametrize("l1", [4, 1])  # 1: pruning before the last DeepStack additions (their rows are sliced)
def test_removal_matches_mask_reference(qwen3, kind, l1):
    model, processor = qwen3
    results = {}
    for mode in ("mask", "remove"):
        apply_aim(model, processor, AIMConfig(retention=0.25, l1=l1, l2=6, pruning_mode=mode))
        inputs = build(processor, kind)
        results[mode] = (logits_of(model, inputs)[:, -1], greedy(model, inputs), list(model.aim_stats.layer_seq_lens))
    assert (results["remove"][0] - results["mask"][0]).abs().max().item() <= 1e-4
    assert torch.equal(results["remove"][1], results["mask"][1])
    lens = results["remove"][2]
    assert lens[l1 + 1] < lens[l1] == lens[0]


@BOTH
@pytest.mark.parametrize("mode", ["remove", "mask"])
def test_batch_matches_single(qwen3, mode):
    check_batch_matches_single(*qwen3, build, mode, NEW_TOKENS)


# -- the importance probe ---------------------------------------------------------------------
@DENSE
def test_probe_sees_the_normed_rotated_query_and_key(qwen3):
    """The attention wrapper hands the probe q/k after q_norm / k_norm and M-RoPE, exactly those
    computed from the layer's own projections."""
    from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb

    from llava.model.language_model.attention import aim_backend_name

    model, processor = qwen3
    lm = model.model.language_model
    layer = lm.layers[3]
    attn = layer.self_attn
    inputs = build(processor, "image")
    h = torch.randn(1, inputs["input_ids"].shape[1], lm.config.hidden_size, generator=torch.Generator().manual_seed(0))
    position_ids, _ = type(model.model).get_rope_index(model.model, inputs["input_ids"],
                                                       inputs["mm_token_type_ids"], inputs["image_grid_thw"])
    cos, sin = lm.rotary_emb(h, position_ids)

    class Probe:
        def observe(self, module, query, key):
            self.query, self.key = query, key

    probe = Probe()
    stock_name = lm.config._attn_implementation
    lm.config._attn_implementation = aim_backend_name(stock_name)
    try:
        with torch.no_grad():
            layer(h, position_embeddings=(cos, sin), attention_mask=None, aim_probe=probe)
    finally:
        lm.config._attn_implementation = stock_name
    with torch.no_grad():
        x = layer.input_layernorm(h)
        shape = (*x.shape[:-1], -1, attn.head_dim)
        q = attn.q_norm(attn.q_proj(x).view(shape)).transpose(1, 2)
        k = attn.k_norm(attn.k_proj(x).view(shape)).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
    assert torch.equal(probe.query, q) and torch.equal(probe.key, k)
    assert probe.key.shape[1] == lm.config.num_key_value_heads  # GQA: the keys before repeat_kv


@pytest.mark.parametrize("name,cls", [("tiny-qwen3-vl", "Qwen3VLForConditionalGeneration"),
                                      ("tiny-qwen3-vl-moe", "Qwen3VLMoeForConditionalGeneration")])
def test_builtin_names_load_with_aim(name, cls):
    from llava.model.builder import load_pretrained_model

    model, processor = load_pretrained_model(name, aim=AIMConfig(retention=0.25))
    assert type(model).__name__ == cls and type(processor).__name__ == "Qwen3VLProcessor"
    tokens = greedy(model, build(processor, "video"), 2)
    assert tokens.shape == (1, 2) and model.aim_stats.visual_tokens_after_merge == VIDEO_GROUPS * 10


def _mixed_inputs(processor):
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and then"},
                                                 {"type": "video"}, {"type": "text", "text": "What changed?"}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    return processor(text=[prompt], images=[wide_image()], videos=[clip()], return_tensors="pt",
                     videos_kwargs=dict(fps=2.0, do_sample_frames=False))


@DENSE
def test_an_image_and_a_video_in_one_prompt(qwen3):
    """The stock model interleaves both items' DeepStack rows in sequence order; merged, placed and
    pruned, removal still equals the mask reference and the items sit at their destinations."""
    model, processor = qwen3
    stock_inputs = _mixed_inputs(processor)
    inner = model.model
    stock_pos, _ = type(inner).get_rope_index(inner, stock_inputs["input_ids"], stock_inputs["mm_token_type_ids"],
                                              stock_inputs["image_grid_thw"], stock_inputs["video_grid_thw"])
    results = {}
    for mode in ("mask", "remove"):
        apply_aim(model, processor, AIMConfig(retention=0.25, l1=1, l2=6, pruning_mode=mode))
        inputs = _mixed_inputs(processor)
        seen = PositionsSeen(model)
        try:
            results[mode] = logits_of(model, inputs)[:, -1]
        finally:
            seen.close()
    assert (results["remove"] - results["mask"]).abs().max().item() <= 1e-4
    pos = seen.calls[0]
    dests = _destinations(model, IMAGE) + _destinations(model, VIDEO)
    types, stock_types = inputs["mm_token_type_ids"][0], stock_inputs["mm_token_type_ids"][0]
    starts = [i for i in range(len(types)) if types[i] != 0 and (i == 0 or types[i - 1] == 0)]
    stock_starts = [i for i in range(len(stock_types)) if stock_types[i] != 0 and (i == 0 or stock_types[i - 1] == 0)]
    assert len(dests) == len(starts) == 1 + VIDEO_GROUPS
    for dest, m0, s0 in zip(dests, starts, stock_starts):
        assert torch.equal(pos[:, 0, m0:m0 + dest.numel()], stock_pos[:, 0, s0 + dest])


@DENSE
def test_official_positions_use_the_shrunken_grid_per_frame(qwen3):
    model, processor = qwen3
    apply_aim(model, processor, AIMConfig(retention=0.25, l1=None, l2=None, positions="official"))
    inputs = build(processor, "video")
    # 5 x 8 merged tokens per group, each side halved: 2 x 4 kept
    assert int((inputs["input_ids"] == model.config.video_token_id).sum()) == VIDEO_GROUPS * 2 * 4
    seen = PositionsSeen(model)
    try:
        logits_of(model, inputs)
    finally:
        seen.close()
    inner = model.model
    shrunk = inputs["video_grid_thw"].clone()
    shrunk[:, 1:] = shrunk[:, 1:] // 2 // 2 * 2
    expected, _ = type(inner).get_rope_index(inner, inputs["input_ids"], inputs["mm_token_type_ids"], None, shrunk)
    assert torch.equal(seen.calls[0], expected)


# -- geometry: the analyzer's counts and figures ----------------------------------------------
@pytest.mark.parametrize("frames,height,width", [(2, 448, 448), (4, 448, 448), (3, 300, 500), (2, 1000, 600),
                                                 (6, 200, 200)])
def test_adapter_counts_the_visual_tokens_the_processor_gives(frames, height, width):
    import numpy as np
    from transformers import AutoConfig, AutoProcessor

    from llava.model.builder import resolve_checkpoint

    path = resolve_checkpoint("tiny-qwen3-vl")
    processor, config = AutoProcessor.from_pretrained(path), AutoConfig.from_pretrained(path)
    video = np.zeros((frames, height, width, 3), dtype=np.uint8)
    t, h, w = processor.video_processor(videos=[video], do_sample_frames=False)["video_grid_thw"][0].tolist()
    merge = config.vision_config.spatial_merge_size
    counted = Qwen3VLAdapter().visual_tokens(config, frames, height, width)
    assert (counted.units, counted.grid) == (t, (h // merge, w // merge))
    assert counted.tokens_per_unit == h * w // merge**2


def _flops(capsys, llm):
    import json

    from llava.cli import main

    assert main(["flops", "--json", "--llm", llm, "--frames", "32"]) == 0
    return json.loads(capsys.readouterr().out)


def test_flops_of_the_8b_and_the_30b_a3b_references(capsys):
    dense, moe = _flops(capsys, "Qwen/Qwen3-VL-8B-Instruct"), _flops(capsys, "qwen3-vl-30b-a3b")
    d = dense["llm"]
    assert (d["hidden"], d["intermediate"], d["layers"], d["heads"], d["kv_heads"], d["head_dim"], d["vocab"]) == (
        4096, 12288, 36, 32, 8, 128, 151936) and d["experts"] == 0
    m = moe["llm"]
    assert (m["hidden"], m["layers"], m["heads"], m["kv_heads"], m["head_dim"]) == (2048, 48, 32, 4, 128)
    assert (m["experts"], m["experts_per_token"], m["expert_intermediate"]) == (128, 8, 768)
    # 32 frames -> 16 temporal groups; the installed processor's default clip budget gives 4 x 4 each
    assert (dense["frames"], dense["tokens_per_frame"]) == (moe["frames"], moe["tokens_per_frame"]) == (16, 16)
    n = 16 * 16 + 100  # the baseline's tokens in every layer
    H, L = 2048, 48
    # per layer and token: q, k, v, o projections and the MoE MLP (router + 8 active experts)
    proj = 2 * H * (32 * 128) * 2 + 2 * H * (4 * 128) * 2
    mlp = 2 * H * 128 + 8 * (3 * 2 * H * 768 + 2 * H + 2 * H)
    linear = L * n * (proj + mlp)
    assert linear < moe["baseline_prefill_tflops"] * 1e12 < linear * 1.1  # the rest: attention, norms, lm_head
    assert 0 < moe["prefill_tflops"] < moe["baseline_prefill_tflops"] < dense["baseline_prefill_tflops"]


def test_run_hands_the_processor_the_clips_frames_as_sampled(tmp_path):
    """llava-aim run decodes the frames itself: Qwen3-VL's processor must neither sample them again
    (it fell back to 24 fps and kept fewer frames) nor guess their times; it gets the clip's
    metadata from the adapter, as the eval plugin does."""
    import json
    import subprocess
    import sys

    def run(frames):
        out = subprocess.run([sys.executable, "-m", "llava", "run", "--model", "tiny-qwen3-vl", "--frames", str(frames),
                              "--max-new-tokens", "1", "--json"], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "Defaulting to `fps=24`" not in out.stderr
        return json.loads(out.stdout)["visual_tokens_before_merge"]

    # every decoded frame reaches the model: 16 frames are the 8 temporal patches the adapter counts
    # for this clip (the stock resampling kept 4 of the 16 frames here: 128 tokens)
    from transformers import AutoConfig

    from llava.model.builder import resolve_checkpoint
    from llava.run import SAMPLE_VIDEO
    from llava.video import probe_video

    _, width, height = probe_video(str(SAMPLE_VIDEO))
    config = AutoConfig.from_pretrained(resolve_checkpoint("tiny-qwen3-vl"))
    counted = Qwen3VLAdapter().visual_tokens(config, 16, height, width)
    assert counted.units == 8
    assert run(16) == counted.units * counted.tokens_per_unit
