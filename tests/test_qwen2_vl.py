"""AIM on the tiny Qwen2-VL and Qwen2.5-VL models (M-RoPE): stock equality with AIM off, merged
counts at any aspect ratio, positions of merged tokens, removal vs the mask reference, batch vs
single, generate, the refusals, and loading by hub id."""

from __future__ import annotations

import json
import types

import pytest
import torch

from conftest import QWEN_TINY, chat_inputs, encode_video, make_clip, make_image, qwen_model
from llava import AIMConfig, apply_aim
from llava.aim.merge import merged_token_count
from llava.errors import AIMConfigError, UnsupportedModelError, UnsupportedUsageError
from llava.model.families import family_for_model_type, family_of
from llava.model.families.qwen2_vl import IMAGE, VIDEO
from llava.model.language_model.compat import cache_kwargs, output_cache
from llava.model.runtime import remove_aim

NEW_TOKENS = 12
CLIP = dict(frames=4, height=48, width=80)  # resized to 252 x 420 px: 18 x 30 patches, 9 x 15 merged


def clip(seed=0, **kw):
    return make_clip(**{**CLIP, **kw}, seed=seed)


def wide_image(seed=1):
    return make_image(size=64, seed=seed).resize((200, 120))  # 112 x 196 px: 8 x 14 patches, 4 x 7 merged


def build(processor, kind, media=None, questions=None):
    media = media if media is not None else ([clip()] if kind == "video" else [wide_image()])
    questions = questions or ["What happens here?"] * len(media)
    return chat_inputs(processor, kind, media, questions)


def logits_of(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def greedy(model, inputs, n=NEW_TOKENS):
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[:, inputs["input_ids"].shape[1]:]


class PositionsSeen:
    """Records the position ids (and the embeddings' length) every language-model call gets."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.model.language_model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        pos = kwargs.get("position_ids")
        self.calls.append((None if pos is None else pos.clone(), kwargs["inputs_embeds"].shape[1]))

    def close(self):
        self.handle.remove()


def stock_rope(model):
    """The unwrapped get_rope_index of the model (what transformers computes)."""
    inner = model.model
    return type(inner).get_rope_index.__get__(inner)


def rope_kwargs(inputs):
    keep = ("mm_token_type_ids", "image_grid_thw", "video_grid_thw", "attention_mask", "second_per_grid_ts")
    return {k: inputs[k] for k in keep if k in inputs}


@pytest.fixture
def qwen(request):
    """(model, processor) for the parametrized (name, attn); AIM removed afterwards."""
    name, attn = request.param if isinstance(request.param, tuple) else (request.param, "sdpa")
    model, processor = qwen_model(name, attn)
    yield model, processor
    remove_aim(model, processor)


BOTH = pytest.mark.parametrize("qwen", QWEN_TINY, indirect=True)
BOTH_ATTN = pytest.mark.parametrize("qwen", [(n, a) for n in QWEN_TINY for a in ("sdpa", "eager")], indirect=True)


# -- AIM off is the stock model -------------------------------------------------------------
@BOTH_ATTN
@pytest.mark.parametrize("kind", ["video", "image"])
def test_disabled_equals_stock_bit_for_bit(qwen, kind):
    model, processor = qwen
    stock = logits_of(model, build(processor, kind))
    apply_aim(model, processor, AIMConfig.disabled())
    assert torch.equal(logits_of(model, build(processor, kind)), stock)
    apply_aim(model, processor, AIMConfig(retention=0.25, l1=2, l2=6))
    remove_aim(model, processor)
    assert torch.equal(logits_of(model, build(processor, kind)), stock)


@BOTH
def test_text_only_prompt_is_noop(qwen):
    model, processor = qwen
    inputs = processor.tokenizer(["a question with no picture"], return_tensors="pt")
    stock = logits_of(model, inputs)
    apply_aim(model, processor, AIMConfig(retention=0.25, l1=1, l2=5))
    assert torch.equal(logits_of(model, inputs), stock)


# -- merging: counts ------------------------------------------------------------------------
@BOTH
@pytest.mark.parametrize("kind,grid,per_group", [("video", (2, 18, 30), 9 * 15), ("image", (1, 8, 14), 4 * 7)])
def test_quarter_retention_gives_the_merged_counts_to_the_llm(qwen, kind, grid, per_group):
    model, processor = qwen
    stock = build(processor, kind)
    assert stock[f"{kind}_grid_thw"].tolist() == [list(grid)]  # a non-square grid, odd merged sides
    apply_aim(model, processor, AIMConfig(retention=0.25, l1=None, l2=None))
    inputs = build(processor, kind)
    groups, kept = grid[0], merged_token_count(per_group, 0.25)
    token = model.config.video_token_id if kind == "video" else model.config.image_token_id
    assert int((inputs["input_ids"] == token).sum()) == groups * kept
    assert inputs["input_ids"].shape[1] == stock["input_ids"].shape[1] - groups * (per_group - kept)
    seen = PositionsSeen(model)
    try:
        logits = logits_of(model, inputs)
    finally:
        seen.close()
    assert seen.calls[0][1] == inputs["input_ids"].shape[1]  # exactly the merged prompt enters the LLM
    assert logits.shape[1] == inputs["input_ids"].shape[1]
    s = model.aim_stats
    assert (s.frames, s.tokens_per_frame_before_merge, s.tokens_per_frame_after_merge) == (groups, per_group, kept)
    assert (s.visual_tokens_before_merge, s.visual_tokens_after_merge) == (groups * per_group, groups * kept)


@BOTH
@pytest.mark.parametrize("retention", [0.5, 0.1, 1 / 64])
def test_any_retention_counts(qwen, retention):
    model, processor = qwen
    apply_aim(model, processor, AIMConfig(retention=retention, l1=None, l2=None))
    inputs = build(processor, "video")
    assert int((inputs["input_ids"] == model.config.video_token_id).sum()) == 2 * merged_token_count(135, retention)
    assert greedy(model, inputs, 3).shape == (1, 3)


# -- merging: positions ---------------------------------------------------------------------
def _destinations(model, key):
    log = model._aim_runtime.family_state["qwen_merge_log"]
    return [item.dest for item in log.items[key]]


@BOTH
@pytest.mark.parametrize("kind", ["video", "image"])
def test_original_positions_are_those_of_the_destination_patches(qwen, kind):
    model, processor = qwen
    stock_inputs = build(processor, kind)
    stock_pos, stock_delta = stock_rope(model)(stock_inputs["input_ids"], **rope_kwargs(stock_inputs))
    apply_aim(model, processor, AIMConfig(retention=0.25, l1=None, l2=None))
    inputs = build(processor, kind)
    seen = PositionsSeen(model)
    try:
        logits_of(model, inputs)
    finally:
        seen.close()
    pos = seen.calls[0][0]
    assert pos.shape == (3, 1, inputs["input_ids"].shape[1])
    [dest] = _destinations(model, VIDEO if kind == "video" else IMAGE)
    merged_visual = (inputs["mm_token_type_ids"][0] != 0).nonzero().flatten()
    stock_visual = (stock_inputs["mm_token_type_ids"][0] != 0).nonzero().flatten()
    # every merged token sits where the stock model puts its destination patch
    assert torch.equal(pos[:, 0, merged_visual], stock_pos[:, 0, stock_visual[0] + dest])
    # the text keeps the stock positions of the unmerged prompt, before and after the item
    merged_text = (inputs["mm_token_type_ids"][0] == 0).nonzero().flatten()
    stock_text = (stock_inputs["mm_token_type_ids"][0] == 0).nonzero().flatten()
    assert torch.equal(pos[:, 0, merged_text], stock_pos[:, 0, stock_text])
    removed = stock_inputs["input_ids"].shape[1] - inputs["input_ids"].shape[1]
    assert model.model.rope_deltas.tolist() == (stock_delta + removed).tolist()


def _item_starts(types):
    """Start index of each visual item (a run of image or video placeholders) in one row."""
    t = types.tolist()
    return [i for i in range(len(t)) if t[i] != 0 and (i == 0 or t[i - 1] != t[i])]


@BOTH
def test_original_positions_with_an_image_and_a_video_in_one_prompt(qwen):
    model, processor = qwen
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and then"},
                                                 {"type": "video"}, {"type": "text", "text": "What changed?"}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)

    def inputs_now():
        return processor(text=[prompt], images=[wide_image()], videos=[clip()], return_tensors="pt")

    stock_inputs = inputs_now()
    stock_pos, _ = stock_rope(model)(stock_inputs["input_ids"], **rope_kwargs(stock_inputs))
    apply_aim(model, processor, AIMConfig(retention=0.25, l1=2, l2=6))
    inputs = inputs_now()
    seen = PositionsSeen(model)
    try:
        tokens = greedy(model, inputs, 3)
    finally:
        seen.close()
    pos = seen.calls[0][0]  # pruning on: the (3, B, S) ids the driver gets (generate's row 0 dropped)
    [image_dest], [video_dest] = _destinations(model, IMAGE), _destinations(model, VIDEO)
    merged_starts, stock_starts = _item_starts(inputs["mm_token_type_ids"][0]), _item_starts(stock_inputs["mm_token_type_ids"][0])
    for dest, m0, s0 in ((image_dest, merged_starts[0], stock_starts[0]), (video_dest, merged_starts[1], stock_starts[1])):
        assert torch.equal(pos[:, 0, m0:m0 + dest.numel()], stock_pos[:, 0, s0 + dest])
    text = inputs["mm_token_type_ids"][0] == 0
    assert torch.equal(pos[:, 0, text], stock_pos[:, 0, stock_inputs["mm_token_type_ids"][0] == 0])
    s = model.aim_stats  # groups of different sizes: totals only
    # the official count rule: 28 -> 14 -> 7 and 135 -> 68 -> 35 (steps remove 135 // 2, 135 // 4)
    assert merged_token_count(135, 0.25) == 35 and merged_token_count(28, 0.25) == 7
    assert (s.visual_tokens_before_merge, s.visual_tokens_after_merge) == (28 + 2 * 135, 7 + 2 * 35)
    assert tokens.shape == (1, 3)


@BOTH
def test_generate_places_merged_tokens_and_decodes_at_the_stock_positions(qwen):
    """generate() builds positions before the vision tower runs; the prefill still gets the
    destination positions, and every decode step the stock model's position."""
    model, processor = qwen
    stock_inputs = build(processor, "video")
    seen = PositionsSeen(model)
    try:
        greedy(model, stock_inputs, 4)
    finally:
        seen.close()
    stock_calls = seen.calls
    apply_aim(model, processor, AIMConfig(retention=0.25, l1=None, l2=None))
    inputs = build(processor, "video")
    forward_seen = PositionsSeen(model)  # the positions a plain forward gets
    try:
        logits_of(model, inputs)
    finally:
        forward_seen.close()
    seen = PositionsSeen(model)
    try:
        greedy(model, inputs, 4)
    finally:
        seen.close()
    prefill = seen.calls[0][0]
    assert prefill.shape[0] == 4  # generate's (text, t, h, w) rows
    assert torch.equal(prefill[1:], forward_seen.calls[0][0])
    # row 0 is generate's sequence index (shorter after merging); the M-RoPE rows are the stock's
    assert [c[0][1:].tolist() for c in seen.calls[1:]] == [c[0][1:].tolist() for c in stock_calls[1:]]


def check_uncached_steps_keep_the_first_positions(model, processor, build):
    """generate(use_cache=False) re-runs the prefill at every step on the features it encoded
    once (no pixels after the first): each re-run puts the merged tokens where the first one did
    (the old code placed them on the first step only, the later ones got each group's first
    patches). Shared with tests/test_qwen3_vl.py (``build``: each file's prompt builder)."""
    apply_aim(model, processor, AIMConfig(retention=0.25, l1=None, l2=None))
    inputs = build(processor, "video")
    seen = PositionsSeen(model)
    try:
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False, use_cache=False)
    finally:
        seen.close()
    prompt = inputs["input_ids"].shape[1]
    first = seen.calls[0][0][-3:]  # the M-RoPE rows (t, h, w)
    assert [length for _, length in seen.calls] == [prompt, prompt + 1, prompt + 2]
    for pos, _ in seen.calls[1:]:
        assert torch.equal(pos[-3:, :, :prompt], first)


def check_batch_matches_single(model, processor, build, mode: str, new_tokens: int):
    """Two clips of different grids in one left-padded batch give each the logits and tokens it
    gets alone. Shared with tests/test_qwen3_vl.py."""
    media = [clip(seed=3), clip(seed=4, height=64, width=64)]  # different grids in one batch
    questions = ["What happens?", "Which objects move from the left to the right in this short clip?"]
    apply_aim(model, processor, AIMConfig(retention=0.25, l1=2, l2=6, pruning_mode=mode))
    batch = build(processor, "video", media, questions)
    assert (batch["attention_mask"] == 0).any(), "the test needs left padding"
    batch_logits = logits_of(model, batch)[:, -1]
    batch_tokens = greedy(model, batch, new_tokens)
    for i in range(2):
        single = build(processor, "video", [media[i]], [questions[i]])
        assert torch.allclose(logits_of(model, single)[0, -1], batch_logits[i], atol=1e-4, rtol=0)
        assert torch.equal(greedy(model, single, new_tokens)[0], batch_tokens[i])


@BOTH
def test_every_step_without_the_cache_places_merged_tokens_as_the_first_prefill(qwen):
    check_uncached_steps_keep_the_first_positions(*qwen, build)


@BOTH
def test_num_return_sequences_repeats_the_placed_positions(qwen):
    """transformers 5.24 encodes the pixels once and repeats the samples afterwards: each copy
    still gets its items' destination positions."""
    model, processor = qwen
    apply_aim(model, processor, AIMConfig(retention=0.25, l1=None, l2=None))
    inputs = build(processor, "video")
    seen = PositionsSeen(model)
    try:
        logits_of(model, inputs)
        torch.manual_seed(0)
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=2, do_sample=True, num_return_sequences=2)
    finally:
        seen.close()
    single, pair = seen.calls[0][0], seen.calls[1][0][1:]
    assert pair.shape[1] == 2 and torch.equal(pair[:, :1], single) and torch.equal(pair[:, 1:], single)


@BOTH
@pytest.mark.parametrize("kind,grid,kept", [("video", (2, 18, 30), 4 * 7), ("image", (1, 8, 14), 2 * 3)])
def test_official_positions_are_the_shrunken_grid(qwen, kind, grid, kept):
    model, processor = qwen
    apply_aim(model, processor, AIMConfig(retention=0.25, l1=None, l2=None, positions="official"))
    inputs = build(processor, kind)
    assert int((inputs["mm_token_type_ids"] != 0).sum()) == grid[0] * kept  # (h/2 // 2) * (w/2 // 2) per group
    seen = PositionsSeen(model)
    try:
        greedy(model, inputs, 3)
    finally:
        seen.close()
    shrunk = torch.tensor([[grid[0], grid[1] // 2 // 2 * 2, grid[2] // 2 // 2 * 2]])
    kw = rope_kwargs(inputs)
    kw[f"{kind}_grid_thw"] = shrunk
    expected, delta = stock_rope(model)(inputs["input_ids"], **kw)
    assert torch.equal(seen.calls[0][0][1:], expected)
    assert model.model.rope_deltas.tolist() == delta.tolist()
    assert model.aim_stats.tokens_per_frame_after_merge == kept


def test_official_positions_refuse_retentions_without_a_grid():
    for retention in (0.5, 0.125, 0.3):
        with pytest.raises(AIMConfigError, match="1/s\\^2"):
            AIMConfig(retention=retention, positions="official")
    for ok in (1.0, 0.25, 1 / 9, 1 / 16):
        AIMConfig(retention=ok, positions="official")
    with pytest.raises(AIMConfigError, match="pools"):
        AIMConfig(method="pool", positions="official")


@BOTH
def test_official_positions_refuse_an_item_too_small_for_the_grid(qwen):
    model, processor = qwen
    apply_aim(model, processor, AIMConfig(retention=1 / 16, l1=None, l2=None, positions="official"))
    with pytest.raises(AIMConfigError, match="no grid is left"):
        build(processor, "image", [make_image(size=64).resize((280, 56))])  # 2 x 10 merged: 2 // 4 = 0 rows


# -- pruning: removal vs the mask reference -------------------------------------------------
@BOTH_ATTN
@pytest.mark.parametrize("kind", ["video", "image"])
def test_removal_matches_mask_reference(qwen, kind):
    model, processor = qwen
    results = {}
    for mode in ("mask", "remove"):
        apply_aim(model, processor, AIMConfig(retention=0.25, l1=2, l2=6, pruning_mode=mode))
        inputs = build(processor, kind)
        logits = logits_of(model, inputs)[:, -1]
        tokens = greedy(model, inputs)
        results[mode] = (logits, tokens, list(model.aim_stats.kv_cache_lens), list(model.aim_stats.layer_seq_lens))
    diff = (results["remove"][0] - results["mask"][0]).abs().max().item()
    assert diff <= 1e-4, diff
    assert torch.equal(results["remove"][1], results["mask"][1])
    assert len(set(results["mask"][2])) == 1  # the reference keeps every token in every layer
    lens = results["remove"][3]
    assert results["remove"][2] == [n + NEW_TOKENS - 1 for n in lens] and lens[-1] < lens[0]


@BOTH
@pytest.mark.parametrize("mode", ["remove", "mask"])
def test_batch_matches_single(qwen, mode):
    check_batch_matches_single(*qwen, build, mode, 8)


@BOTH
def test_manual_decoding_without_mask_or_positions_continues_correctly(qwen):
    """Without an attention mask and position ids the stock forward places new tokens at the
    cache length (layer 0's, never pruned) + rope_deltas: the same tokens as generate()."""
    model, processor = qwen
    apply_aim(model, processor, AIMConfig(retention=0.25, l1=2, l2=6))
    inputs = build(processor, "video")
    expected = greedy(model, inputs, 6)
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
        tokens = [out.logits[:, -1].argmax(-1, keepdim=True)]
        for _ in range(5):
            out = model(input_ids=tokens[-1], use_cache=True, **cache_kwargs(model, output_cache(out)))
            tokens.append(out.logits[:, -1].argmax(-1, keepdim=True))
    assert torch.equal(torch.cat(tokens, dim=1), expected)


@BOTH
def test_positions_from_a_cache_length_that_lost_count_are_refused(qwen):
    """Should a cache ever report a pruned length, a forward without mask and ids would place
    new tokens wrongly: refused (simulated by a state that counts more tokens than layer 0)."""
    model, processor = qwen
    apply_aim(model, processor, AIMConfig(retention=0.25, l1=2, l2=6))
    with torch.no_grad():
        out = model(**build(processor, "video"), use_cache=True)
        cache = output_cache(out)
        cache.aim_state.seen_tokens += 5
        with pytest.raises(UnsupportedUsageError, match="pass the attention_mask"):
            model(input_ids=torch.tensor([[5]]), use_cache=True, **cache_kwargs(model, cache))


@BOTH
def test_language_model_alone_on_a_pruned_cache_needs_positions(qwen):
    model, processor = qwen
    apply_aim(model, processor, AIMConfig(retention=0.25, l1=2, l2=6))
    with torch.no_grad():
        out = model(**build(processor, "video"), use_cache=True)
        lm = model.model.language_model
        with pytest.raises(UnsupportedUsageError, match="M-RoPE position ids"):
            lm(inputs_embeds=lm.embed_tokens(torch.tensor([[5]])), use_cache=True,
               **cache_kwargs(lm, output_cache(out)))


@BOTH
def test_unpatched_processor_is_refused_clearly(qwen):
    model, processor = qwen
    stock_inputs = build(processor, "video")
    apply_aim(model, None, AIMConfig(retention=0.25, l1=None, l2=None))
    with pytest.raises(UnsupportedUsageError, match="placeholder tokens but AIM merges it to"):
        greedy(model, stock_inputs, 2)


@BOTH
def test_chunked_prefill_and_hidden_states_are_refused(qwen):
    model, processor = qwen
    apply_aim(model, processor, AIMConfig(retention=0.25, l1=2, l2=6))
    inputs = build(processor, "video")
    with torch.no_grad():
        with pytest.raises(UnsupportedUsageError, match="output_hidden_states"):
            model(**inputs, output_hidden_states=True)
        out = model(**inputs, use_cache=True)
        with pytest.raises(UnsupportedUsageError):
            model(**inputs, **cache_kwargs(model, output_cache(out)), use_cache=True)


# -- refusals -------------------------------------------------------------------------------
def test_sliding_window_layers_are_refused_with_pruning():
    import transformers

    model, _ = qwen_model("tiny-qwen2-vl")
    config = model.config.to_dict()
    config["text_config"].update(use_sliding_window=True, sliding_window=64, max_window_layers=4, layer_types=None)
    sliding = transformers.Qwen2VLForConditionalGeneration(transformers.Qwen2VLConfig(**config)).eval()
    assert "sliding_attention" in sliding.config.text_config.layer_types
    with pytest.raises(UnsupportedModelError, match=r"sliding-window attention in decoder layers \[4, 5, 6, 7\]"):
        apply_aim(sliding, None, AIMConfig(retention=0.25, l1=2, l2=6))
    assert not hasattr(sliding, "_aim_runtime")
    apply_aim(sliding, None, AIMConfig(retention=0.25, l1=None, l2=None))  # merging alone is fine


@pytest.mark.parametrize("model_type,reason", [("qwen3_5", "Gated DeltaNet"), ("qwen3_5_moe", "Gated DeltaNet")])
def test_qwen3_families_are_refused_with_the_reason(model_type, reason):
    with pytest.raises(UnsupportedModelError, match=reason):
        family_for_model_type(model_type)
    fake = type("Qwen3_5ForConditionalGeneration", (), {})()
    fake.config = types.SimpleNamespace(model_type=model_type)
    with pytest.raises(UnsupportedModelError, match=reason):
        family_of(fake)


# -- llava-aim visualize on non-square grids ------------------------------------------------
def test_panels_keep_the_grid_aspect_and_rows_name_their_frames():
    from llava.visualize import figure_size_px, frame_labels, panel_shape

    assert panel_shape(14) == (224, 224)  # square: 16 px per cell, as before
    assert panel_shape((9, 15)) == (9 * 15, 15 * 15)  # square cells, the longer side >= 224
    assert figure_size_px(2, 3, (9, 15), 0) == (3 * 225 + 4 * 10, 2 * 10 + 2 * (22 + 135 + 10))
    assert frame_labels(2, 4, "x") == ["frames 1-2/4", "frames 3-4/4"]
    assert frame_labels(3, 5, "x")[-1] == "frames 5-5/5" and frame_labels(2, 2, "x") == ["frame 1/2", "frame 2/2"]


@pytest.mark.parametrize("name", QWEN_TINY)
def test_visualize_draws_a_non_square_clip(name, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from llava.cli import main
    from llava.visualize import CAPTION_LINE_PX, figure_size_px

    video = encode_video(tmp_path / "wide.mp4", make_clip(frames=4, height=96, width=160))
    out = tmp_path / "aim.png"
    code = main(["visualize", "--video", str(video), "--model", name, "--frames", "4", "--l1", "2", "--l2", "8",
                 "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "2 temporal group row(s)" in stdout
    img = Image.open(out)
    # 96 x 160 px is resized to 252 x 420 (18 x 30 patches): merged grid 9 x 15, drawn 9:15
    width, bare = figure_size_px(2, 5, (9, 15), 0)
    assert img.size[0] == width and (img.size[1] - bare) % CAPTION_LINE_PX == 0
    assert np.asarray(img.convert("RGB"), dtype=np.float32).std() > 20


# -- the vision tower's cost: the analyzer's count against a measured one -------------------
@pytest.mark.parametrize("name", QWEN_TINY)
def test_vision_tower_flops_match_the_counted_matmuls(name):
    """The analyzer's Qwen-VL tower (patch embed, blocks, windowed or full attention, patch
    merger) counts exactly the matrix products torch executes on the tiny towers (eager)."""
    from torch.utils.flop_counter import FlopCounterMode

    from llava.analysis.roofline import vision_encoder_cost
    from llava.analysis.shapes import LLMShape, VisionShape
    from llava.model.builder import load_pretrained_model

    model, processor = load_pretrained_model(name, aim=None, torch_dtype=torch.float32, attn_implementation="eager")
    inputs = build(processor, "video", [clip(height=448, width=448)])  # 32 x 32 patches: whole 8 x 8 windows
    grid = inputs["video_grid_thw"]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.model.visual(inputs["pixel_values_videos"], grid_thw=grid)
    vc = model.config.vision_config
    width = getattr(vc, "embed_dim", None) or vc.hidden_size
    extra = {} if name == "tiny-qwen2-vl" else dict(mlp="swiglu", window_tokens=64,
                                                    full_attention_layers=len(vc.fullatt_block_indexes))
    mlp = getattr(vc, "intermediate_size", None) or width * vc.mlp_ratio
    tower = VisionShape("tiny", vc.depth, width, mlp, vc.num_heads, int(grid[0, 1] * grid[0, 2]), channels=6,
                        spatial_merge=2, **extra)
    cost = vision_encoder_cost(tower, LLMShape.from_config(model.config), int(grid[0, 0]))
    matmuls = ("patch_embed", "proj", "fc1", "fc2", "qk_matmul", "sv_matmul")
    counted = sum(op.ops for op in cost.ops if any(k in op.name for k in matmuls))
    assert counted == counter.get_total_flops()


# -- llava-aim flops / plan know the Qwen-VL 7B models --------------------------------------
def _flops_json(*args):
    import contextlib
    import io

    from llava.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["flops", *args, "--json"]) == 0
    return json.loads(out.getvalue())


@pytest.mark.parametrize("llm", ["qwen2-vl-7b", "qwen2.5-vl-7b"])
def test_flops_of_the_official_qwen_run(llm):
    r = _flops_json("--llm", llm)  # 32 frames, max_pixels 200704
    assert (r["frames"], r["tokens_per_frame"], r["tokens_per_frame_kept"]) == (16, 256, 64)
    assert r["llm"]["layers"] == 28 and r["llm"]["hidden"] == 3584 and r["llm"]["kv_heads"] == 4
    assert (r["l1"], r["l2"]) == (14, 22)
    assert r["tokens_per_layer"][0] == 100 + 16 * 64 and r["tokens_per_layer"][-1] == 100
    assert r["baseline_tokens_per_layer"][0] == 100 + 16 * 256
    assert r["vision_tower"] == ("qwen2-vl-vit" if llm == "qwen2-vl-7b" else "qwen2.5-vl-vit")
    assert any("16 temporal groups" in n for n in r["notes"])
    wide = _flops_json("--llm", llm, "--frame-size", "720x1280", "--frames", "33")
    assert (wide["frames"], wide["tokens_per_frame"]) == (17, 12 * 21)  # 336 x 588 px
    if llm == "qwen2.5-vl-7b":  # windowed attention: a cheaper tower than Qwen2-VL's
        assert r["vision_encoder_tflops"] < _flops_json("--llm", "qwen2-vl-7b")["vision_encoder_tflops"]


def test_flops_refuses_qwen_options_for_other_models(capsys):
    from llava.cli import main

    assert main(["flops", "--llm", "qwen2-7b", "--max-pixels", "200704"]) == 2
    assert "--max-pixels" in capsys.readouterr().err


def test_plan_for_qwen2_vl():
    import contextlib
    import io

    from llava.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["plan", "--llm", "qwen2-vl-7b", "--speedup", "5", "--json"]) == 0
    result = json.loads(out.getvalue())
    assert result["inputs"]["frames"] == 16 and result["inputs"]["tokens_per_frame"] == 256
    assert result["feasible"]


# -- the lmms-eval plugin models, in process ------------------------------------------------
@pytest.fixture(scope="module")
def synth_clips(tmp_path_factory):
    pytest.importorskip("lmms_eval")
    from llava.eval import synthetic

    folder = tmp_path_factory.mktemp("clips")
    return [str(synthetic.ensure_video(synthetic.clip_name(i), folder)) for i in range(2)]


def _plugin(cls, clips, **model_args):
    model = cls(pretrained=model_args.pop("pretrained"), device="cpu", torch_dtype="float32", max_frames_num=4,
                **model_args)
    model.task_dict = {"t": {"test": [{"video": c} for c in clips]}}
    return model


def _request(doc_id, context="What colour is the moving square?\nA. red\nB. green\nAnswer with the letter."):
    from lmms_eval.api.instance import Instance

    gen = {"max_new_tokens": 5, "temperature": 0, "until": ["\n\n"]}
    return Instance("generate_until", (context, gen, lambda doc: [doc["video"]], doc_id, "t", "test"), idx=0,
                    metadata={"task": "t", "doc_id": doc_id, "repeats": 1})


@pytest.mark.parametrize("cls_name,tiny", [("Qwen2VLAIM", "tiny-qwen2-vl"), ("Qwen2_5_VLAIM", "tiny-qwen2.5-vl")])
def test_plugin_applies_the_pixel_limit_positions_and_frame_rate(synth_clips, cls_name, tiny):
    from llava.eval import qwen_vl

    plugin = _plugin(getattr(qwen_vl, cls_name), synth_clips, pretrained=tiny, max_pixels=28 * 28 * 64,
                     min_pixels=28 * 28 * 36, positions="official", l1=2, l2=6)
    assert plugin.aim_config.positions == "official"
    assert plugin.processor.video_processor.size["longest_edge"] == 28 * 28 * 64
    [answer] = plugin.generate_until([_request(0)])
    assert isinstance(answer.text, str) and answer.token_counts.input_tokens > 0
    stats = plugin.model.aim_stats
    # the 96 px clip is resized to 168 px (min_pixels; the default 100352 would give 336 px): 6 x 6 tokens
    assert stats.frames == 2 and stats.tokens_per_frame_before_merge == 36
    assert stats.tokens_per_frame_after_merge == 9 and stats.layer_seq_lens[-1] < stats.layer_seq_lens[0]
    kind, media = plugin._visuals([synth_clips[0]], "t", 0)
    inputs = plugin._inputs("<|vision_start|><|video_pad|><|vision_end|>Q", kind, media)
    if plugin.FAMILY.time_positions:  # 4 of 16 frames at 8 fps: 2 fps, 1 s per temporal patch of 2 frames
        assert inputs["second_per_grid_ts"].tolist() == [1.0]


def test_plugin_with_pixel_limits_resumes_from_its_own_setting(synth_clips, tmp_path, monkeypatch):
    # the scripts key the resume folder by the whole model_args, max_pixels included
    from llava.eval.qwen_vl import Qwen2VLAIM
    from llava.eval.resume import KEY_FILE, RESUME_DIR_ENV, setting_of

    args = dict(pretrained="tiny-qwen2-vl", device="cpu", torch_dtype="float32", max_frames_num=4,
                max_pixels=28 * 28 * 64, l1=2, l2=6)
    folder = tmp_path / "key"
    folder.mkdir()
    (folder / KEY_FILE).write_text(json.dumps(setting_of("qwen2_vl_aim", args)))
    monkeypatch.setenv(RESUME_DIR_ENV, str(folder))
    first = Qwen2VLAIM(**args)
    first.task_dict = {"t": {"test": [{"video": synth_clips[0]}]}}
    assert first.journal is not None and first.journal.loaded == 0
    [answer] = first.generate_until([_request(0)])
    second = Qwen2VLAIM(**args)
    assert second.journal is not None and second.journal.loaded == 1
    second.task_dict = first.task_dict
    second._model.generate = lambda *a, **k: (_ for _ in ()).throw(AssertionError("the journal had this answer"))
    [again] = second.generate_until([_request(0)])
    assert again.text == answer.text and again.token_counts.from_resume_journal
    assert Qwen2VLAIM(**dict(args, max_pixels=28 * 28 * 36)).journal is None  # another pixel limit: no resume


def test_plugin_off_equals_the_stock_model(synth_clips):
    from llava.eval.qwen_vl import Qwen2VLAIM
    from llava.model.builder import load_pretrained_model
    from llava.video import load_video

    plugin = _plugin(Qwen2VLAIM, synth_clips, pretrained="tiny-qwen2-vl", aim=0)
    [answer] = plugin.generate_until([_request(1)])
    model, processor = load_pretrained_model("tiny-qwen2-vl", aim=None, torch_dtype=torch.float32)
    context = _request(1).args[0]
    prompt = processor.apply_chat_template([{"role": "user", "content": [{"type": "video"},
                                                                        {"type": "text", "text": context}]}],
                                           add_generation_prompt=True)
    inputs = processor(text=prompt, videos=[load_video(synth_clips[1], 4)], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    stock = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert answer.text == stock.split("\n\n")[0].strip()


def test_plugin_argument_errors_before_loading():
    pytest.importorskip("lmms_eval")
    from llava.errors import EvalArgumentError
    from llava.eval.lmms_model import LlavaOneVisionAIM
    from llava.eval.qwen_vl import Qwen2VLAIM

    with pytest.raises(EvalArgumentError, match="max_pixels"):
        LlavaOneVisionAIM(pretrained="tiny-llava-onevision", device="cpu", max_pixels=200704)
    with pytest.raises(EvalArgumentError, match="below min_pixels"):
        Qwen2VLAIM(pretrained="tiny-qwen2-vl", device="cpu", max_pixels=1000, min_pixels=5000)
    with pytest.raises(EvalArgumentError, match="positions"):
        Qwen2VLAIM(pretrained="tiny-qwen2-vl", device="cpu", positions="shrunk")
    with pytest.raises(EvalArgumentError, match="1/s\\^2"):
        Qwen2VLAIM(pretrained="tiny-qwen2-vl", device="cpu", positions="official", retention=0.5)
    with pytest.raises(UnsupportedModelError, match="--model llava_onevision_aim"):
        Qwen2VLAIM(pretrained="tiny-llava-onevision", device="cpu")


@pytest.mark.parametrize("method", ["prumerge", "prumerge_plus"])
def test_prumerge_is_refused_not_silently_skipped(method):
    # PruMerge is implemented for the LLaVA families only: on Qwen it must not run as a no-op
    from llava.model.builder import load_pretrained_model

    model, processor = load_pretrained_model("tiny-qwen2-vl", aim=None, torch_dtype=torch.float32)
    with pytest.raises(UnsupportedModelError, match="LLaVA-PruMerge"):
        apply_aim(model, processor, AIMConfig.for_method(method))
    assert not hasattr(model, "_aim_runtime"), "a refused setting leaves the model untouched"
