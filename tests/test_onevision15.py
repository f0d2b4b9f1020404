"""LLaVA-OneVision-1.5 (llava/model/families/onevision15.py): per-frame merging after the 2x2
merger, pruning by the decoder driver on 1-D positions, and the refusal on releases without the
model (transformers < 5.25). The tests that need the model skip there, naming the release."""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import make_video, video_inputs

from llava import AIMConfig, apply_aim
from llava.aim.merge import merged_token_count
from llava.errors import UnsupportedModelError
from llava.model.families.onevision15 import MIN_TRANSFORMERS, OneVision15Adapter
from llava.model.runtime import remove_aim

TINY = "tiny-llava-onevision-1.5"
HAS_OV15 = OneVision15Adapter().installed()
needs_ov15 = pytest.mark.skipif(
    not HAS_OV15,
    reason=f"transformers {transformers.__version__} has no LLaVA-OneVision-1.5 (needs >= {MIN_TRANSFORMERS})",
)


# -- releases without the model --------------------------------------------------------------
@pytest.mark.skipif(HAS_OV15, reason="the installed transformers has LLaVA-OneVision-1.5: nothing is refused")
def test_releases_without_the_model_refuse_it_naming_the_release():
    from llava.model.builder import load_pretrained_model
    from llava.model.families import FAMILIES, family_for_model_type

    assert all(fam.name != "onevision15" for fam in FAMILIES)  # the rest of the project serves as before
    with pytest.raises(UnsupportedModelError, match=rf"LLaVA-OneVision-1\.5 needs transformers >= {MIN_TRANSFORMERS}"):
        family_for_model_type("llava_onevision1_5")
    with pytest.raises(UnsupportedModelError, match=rf"needs transformers >= {MIN_TRANSFORMERS}.*"
                                                    rf"{transformers.__version__} is installed"):
        load_pretrained_model(TINY)  # the built-in name, and its folder, whose config this release cannot read


# -- the model (transformers >= 5.25) --------------------------------------------------------
@pytest.fixture
def ov15():
    # a model of its own, not conftest's session cache: the contract suite's refusal tests patch
    # the shared models' decoders while they run
    from conftest import _load

    model, processor = _load(TINY)
    yield model, processor
    remove_aim(model, processor)


def clip_inputs(processor, seeds=(0,), questions=None):
    return video_inputs(processor, [make_video(frames=4, seed=s) for s in seeds], questions)


def logits_of(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def generate(model, inputs, n=6):
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[:, inputs["input_ids"].shape[1]:]


@needs_ov15
def test_loads_through_the_project_with_its_processor(ov15):
    model, processor = ov15
    assert type(model).__name__ == "LlavaOnevision15ForConditionalGeneration"
    assert type(processor).__name__ == OneVision15Adapter.processor_class
    assert type(model.model.language_model).__name__ == "Qwen3Model"


@needs_ov15
def test_aim_off_is_the_stock_model_bit_for_bit(ov15):
    model, processor = ov15
    inputs = clip_inputs(processor)
    stock_logits, stock_tokens = logits_of(model, inputs), generate(model, inputs)
    apply_aim(model, processor, AIMConfig.disabled())
    inputs = clip_inputs(processor)
    assert torch.equal(logits_of(model, inputs), stock_logits)
    assert torch.equal(generate(model, inputs), stock_tokens)


@needs_ov15
def test_merging_is_per_frame_after_the_merger_and_the_processor_counts_it(ov15):
    model, processor = ov15
    stock = clip_inputs(processor)
    t, h, w = stock["video_grid_thw"][0].tolist()
    per_frame = (h // 2) * (w // 2)
    video_id = model.config.video_token_id
    assert int((stock["input_ids"] == video_id).sum()) == t * per_frame
    apply_aim(model, processor, AIMConfig(retention=0.25, l1=None, l2=None), track_sources=True)
    inputs = clip_inputs(processor)
    kept = merged_token_count(per_frame, 0.25, AIMConfig().merge_count)
    assert 0 < kept < per_frame
    assert int((inputs["input_ids"] == video_id).sum()) == t * kept  # no newline token
    logits_of(model, inputs)
    stats = model.aim_stats
    assert (stats.frames, stats.tokens_per_frame_before_merge, stats.tokens_per_frame_after_merge) == (t, per_frame, kept)
    assert stats.visual_tokens_after_merge == t * kept
    assert stats.merge_sources.shape == (t, per_frame) and stats.merge_grid == (h // 2, w // 2)
    assert int(stats.merge_sources.max()) == kept - 1  # every frame's tokens go to that frame's merged ones


@needs_ov15
def test_removal_matches_the_mask_reference(ov15):
    model, processor = ov15
    results = {}
    for mode in ("mask", "remove"):
        apply_aim(model, processor, AIMConfig(retention=0.5, l1=2, l2=6, pruning_mode=mode))
        inputs = clip_inputs(processor)
        results[mode] = (logits_of(model, inputs)[:, -1], generate(model, inputs), list(model.aim_stats.kv_cache_lens))
        remove_aim(model, processor)
    diff = (results["remove"][0] - results["mask"][0]).abs().max().item()
    assert diff <= 1e-4, diff
    assert torch.equal(results["remove"][1], results["mask"][1])
    assert len(set(results["mask"][2])) == 1  # the reference keeps every token in every layer
    assert results["remove"][2][-1] < results["mask"][2][-1]


@needs_ov15
def test_left_padded_batch_matches_each_prompt_alone(ov15):
    model, processor = ov15
    seeds = (3, 4)
    questions = ["What happens?", "Which objects move from the left to the right, and what colour are they?"]
    apply_aim(model, processor, AIMConfig(retention=0.25, l1=2, l2=6))
    batch = clip_inputs(processor, seeds, questions)
    assert (batch["attention_mask"][:, 0] == 0).any(), "the test needs left padding"
    batch_logits, batch_tokens = logits_of(model, batch)[:, -1], generate(model, batch)
    for i, seed in enumerate(seeds):
        single = clip_inputs(processor, (seed,), [questions[i]])
        diff = (logits_of(model, single)[0, -1] - batch_logits[i]).abs().max().item()
        assert diff <= 1e-4, (i, diff)
        assert torch.equal(generate(model, single)[0], batch_tokens[i])


@needs_ov15
def test_each_layer_caches_the_tokens_that_entered_it_plus_one_per_decode_step(ov15):
    model, processor = ov15
    apply_aim(model, processor, AIMConfig(retention=0.5, l1=2, l2=6))
    inputs = clip_inputs(processor)
    generate(model, inputs, 5)
    stats = model.aim_stats
    assert stats.kv_cache_lens == [n + 4 for n in stats.layer_seq_lens]
    assert stats.layer_seq_lens[0] == inputs["input_ids"].shape[1]
    assert stats.layer_seq_lens[-1] < stats.layer_seq_lens[0]
    assert stats.visual_tokens_per_layer[-1] == [0]  # l2=6: no visual token left in the last layers


@needs_ov15
def test_survivors_keep_their_original_positions(ov15):
    """Pruning on 1-D RoPE: the prefill's rotary positions are the stock arange (survivors are
    gathered with theirs), and decoding continues after the whole, unpruned prompt."""
    model, processor = ov15
    apply_aim(model, processor, AIMConfig(retention=0.5, l1=2, l2=6))
    inputs = clip_inputs(processor)
    seen = []
    handle = model.model.language_model.rotary_emb.register_forward_hook(
        lambda module, args, out: seen.append(args[1].clone()))
    try:
        generate(model, inputs, 3)
    finally:
        handle.remove()
    length = inputs["input_ids"].shape[1]
    assert torch.equal(seen[0][0], torch.arange(length))  # the prefill: every token at its own position
    assert [int(p.reshape(-1)[-1]) for p in seen[1:]] == [length, length + 1]  # decode after the whole prompt


@needs_ov15
def test_images_are_not_merged_but_their_tokens_can_be_pruned(ov15):
    from conftest import image_inputs, make_image

    model, processor = ov15
    stock = image_inputs(processor, [make_image()])
    apply_aim(model, processor, AIMConfig(retention=0.25, l1=2, l2=6))
    inputs = image_inputs(processor, [make_image()])
    assert torch.equal(inputs["input_ids"], stock["input_ids"])
    logits_of(model, inputs)
    image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert model.aim_stats.visual_tokens_per_layer[0] == [image_tokens]
    assert model.aim_stats.visual_tokens_per_layer[-1] == [0]


@needs_ov15
def test_visualize_draws_each_frame_as_the_processor_resized_it(ov15):
    _, processor = ov15
    clip = make_video(frames=4)
    inputs = video_inputs(processor, [clip])
    t, h, w = inputs["video_grid_thw"][0].tolist()
    drawn = OneVision15Adapter().merge_unit_images(processor, inputs, clip, "video")
    assert drawn.shape == (t, h * 14, w * 14, 3)
    # each row is its own frame (the moving square), not the flattened patches read as one image
    assert all(not (drawn[i] == drawn[i + 1]).all() for i in range(t - 1))
    means = drawn.reshape(t, -1, 3).mean(1)
    assert abs(means - clip.reshape(4, -1, 3).mean(1)).max() < 8  # the frames' colours, resized
