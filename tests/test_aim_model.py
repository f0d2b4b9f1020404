"""AIM on the tiny LLaVA-OneVision (Qwen2, GQA) and LLaVA-1.5 (Llama) models.

Stock equality with AIM off, merge counts through the processor, removal vs the masked
reference, the schedule as executed, KV lengths, batch vs single, generate().
"""

from __future__ import annotations

import pytest
import torch

from conftest import image_inputs, make_image, make_video, video_inputs
from llava import AIMConfig, apply_aim
from llava.aim.merge import merged_token_count
from llava.aim.schedule import visual_tokens_per_layer
from llava.errors import AIMConfigError, UnsupportedModelError, UnsupportedUsageError
from llava.model.language_model.compat import cache_kwargs, output_cache
from llava.model.runtime import remove_aim

NEW_TOKENS = 16


def logits_of(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def greedy(model, inputs, n=NEW_TOKENS):
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[:, inputs["input_ids"].shape[1]:]


def _eager_case(name, ov_eager, llava15_eager):
    if name == "ov":
        model, processor = ov_eager
        return model, processor, lambda p: video_inputs(p, [make_video()])
    model, processor = llava15_eager
    return model, processor, lambda p: image_inputs(p, [make_image()])


# -- AIM off is the stock model -------------------------------------------------------------
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name", ["ov", "llava15"])
def test_disabled_equals_stock(name, attn, ov_sdpa, ov_eager, llava15_sdpa, llava15_eager):
    pairs = {("ov", "sdpa"): ov_sdpa, ("ov", "eager"): ov_eager,
             ("llava15", "sdpa"): llava15_sdpa, ("llava15", "eager"): llava15_eager}
    model, processor = pairs[(name, attn)]
    build = (lambda p: video_inputs(p, [make_video()])) if name == "ov" else (lambda p: image_inputs(p, [make_image()]))
    stock = logits_of(model, build(processor))
    apply_aim(model, processor, AIMConfig.disabled())
    try:
        assert torch.equal(logits_of(model, build(processor)), stock)
    finally:
        remove_aim(model, processor)
    # and removing a real setting restores the stock model too
    apply_aim(model, processor, AIMConfig(retention=0.5, l1=1, l2=4))
    remove_aim(model, processor)
    assert torch.equal(logits_of(model, build(processor)), stock)


def test_text_only_prompt_is_noop(model_case):
    model, processor, _ = model_case
    inputs = processor.tokenizer(["a question with no image at all"], return_tensors="pt")
    stock = logits_of(model, inputs)
    apply_aim(model, processor, AIMConfig(retention=0.25, l1=1, l2=5))
    assert torch.equal(logits_of(model, inputs), stock)


# -- merging --------------------------------------------------------------------------------
def test_onevision_merging_counts(ov_sdpa):
    model, processor = ov_sdpa
    frames = 3
    try:
        apply_aim(model, processor, AIMConfig(retention=0.25, l1=None, l2=None))
        inputs = video_inputs(processor, [make_video(frames)])
        n_video = int((inputs["input_ids"] == model.config.video_token_id).sum())
        assert n_video == frames * (196 // 4) + 1
        logits = logits_of(model, inputs)
        stats = model.aim_stats
        assert stats.visual_tokens_before_merge == frames * 196 + 1
        assert stats.visual_tokens_after_merge == frames * 49 + 1
        assert logits.shape[1] == inputs["input_ids"].shape[1]
        out = greedy(model, inputs, 4)
        assert out.shape == (1, 4)
    finally:
        remove_aim(model, processor)


@pytest.mark.parametrize("retention", [1 / 64, 0.125, 0.3, 0.9])
def test_llava15_merging_counts(llava15_sdpa, retention):
    model, processor = llava15_sdpa
    try:
        apply_aim(model, processor, AIMConfig(retention=retention, l1=None, l2=None))
        inputs = image_inputs(processor, [make_image()])
        n_image = int((inputs["input_ids"] == model.config.image_token_id).sum())
        assert n_image == merged_token_count(576, retention)
        logits_of(model, inputs)
        assert model.aim_stats.visual_tokens_after_merge == n_image
        assert model.aim_stats.visual_tokens_before_merge == 576
    finally:
        remove_aim(model, processor)


# -- pruning: removal vs masked reference ---------------------------------------------------
# (sdpa: tests/test_families.py::test_removal_matches_the_mask_reference, the same check)
@pytest.mark.parametrize("name", ["ov", "llava15"])
def test_removal_matches_mask_reference(name, ov_eager, llava15_eager):
    model, processor, build = _eager_case(name, ov_eager, llava15_eager)
    results = {}
    try:
        for mode in ("mask", "remove"):
            apply_aim(model, processor, AIMConfig(retention=0.5, l1=2, l2=6, pruning_mode=mode))
            inputs = build(processor)
            logits = logits_of(model, inputs)[:, -1]
            tokens = greedy(model, inputs)
            results[mode] = (logits, tokens, list(model.aim_stats.kv_cache_lens))
    finally:
        remove_aim(model, processor)
    assert torch.allclose(results["remove"][0], results["mask"][0], atol=1e-4, rtol=0)
    assert torch.equal(results["remove"][1], results["mask"][1])
    # the mask reference keeps every token in every layer's cache; removal does not
    assert len(set(results["mask"][2])) == 1
    assert results["remove"][2][-1] < results["mask"][2][-1]


@pytest.mark.parametrize("l1,l2", [(2, 6), (0, 3), (5, 40), (3, 4)])
def test_layer_seq_lens_follow_schedule(model_case, l1, l2):
    model, processor, build = model_case
    apply_aim(model, processor, AIMConfig(retention=0.5, l1=l1, l2=l2))
    inputs = build(processor)
    logits_of(model, inputs)
    stats = model.aim_stats
    ids = inputs["input_ids"][0]
    v0 = int(sum((ids == t).sum() for t in model._aim_runtime.image_token_ids))
    text = ids.numel() - v0
    num_layers = len(model.model.language_model.layers)
    expected = [text + v for v in visual_tokens_per_layer(v0, num_layers, l1, l2)]
    assert stats.layer_seq_lens == expected


# (KV lengths after generate: tests/test_families.py::test_each_layer_caches_the_tokens_that_entered_it_plus_one_per_decode_step)
def test_prune_only_and_defaults_scaled(model_case):
    model, processor, build = model_case
    apply_aim(model, processor, AIMConfig(retention=1.0, l1=4, l2=6))
    inputs = build(processor)
    tokens = greedy(model, inputs, 3)
    assert tokens.shape == (1, 3)
    assert model.aim_stats.layer_seq_lens[-1] < model.aim_stats.layer_seq_lens[0]


def test_sampling_after_pruned_prefill(model_case):
    model, processor, build = model_case
    apply_aim(model, processor, AIMConfig(retention=0.5, l1=2, l2=6))
    inputs = build(processor)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=True, top_k=20, temperature=0.8)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 6 or out[0, -1] == processor.tokenizer.eos_token_id


# -- batch vs single ------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["remove", "mask"])
def test_batch_matches_single_onevision(ov_sdpa, mode):
    model, processor = ov_sdpa
    videos = [make_video(frames=3, seed=3), make_video(frames=3, seed=4)]
    questions = ["What happens?", "Which objects move from the left to the right in this short clip?"]
    try:
        apply_aim(model, processor, AIMConfig(retention=0.25, l1=2, l2=6, pruning_mode=mode))
        batch = video_inputs(processor, videos, questions)
        assert (batch["attention_mask"] == 0).any(), "the test needs left padding"
        batch_logits = logits_of(model, batch)[:, -1]
        batch_tokens = greedy(model, batch, 8)
        for i, video in enumerate(videos):
            single = video_inputs(processor, [video], [questions[i]])
            assert torch.allclose(logits_of(model, single)[0, -1], batch_logits[i], atol=1e-4, rtol=0)
            assert torch.equal(greedy(model, single, 8)[0], batch_tokens[i])
    finally:
        remove_aim(model, processor)


def test_batch_matches_single_llava15(llava15_sdpa):
    model, processor = llava15_sdpa
    images = [make_image(seed=5), make_image(seed=6)]
    questions = ["What is shown?", "Describe the colors of the objects in this picture in detail please."]
    try:
        apply_aim(model, processor, AIMConfig(retention=0.25, l1=1, l2=5))
        batch = image_inputs(processor, images, questions)
        assert (batch["attention_mask"] == 0).any()
        batch_logits = logits_of(model, batch)[:, -1]
        assert not torch.isnan(batch_logits).any()
        batch_tokens = greedy(model, batch, 8)
        for i in range(2):
            single = image_inputs(processor, [images[i]], [questions[i]])
            assert torch.allclose(logits_of(model, single)[0, -1], batch_logits[i], atol=1e-4, rtol=0)
            assert torch.equal(greedy(model, single, 8)[0], batch_tokens[i])
    finally:
        remove_aim(model, processor)


# -- errors ---------------------------------------------------------------------------------
def test_l1_beyond_model_is_rejected(model_case):
    model, processor, _ = model_case
    with pytest.raises(AIMConfigError, match="beyond the language model"):
        apply_aim(model, processor, AIMConfig(retention=0.5, l1=9, l2=10))


def test_l1_equal_to_depth_prunes_nothing(model_case):
    # the paper's ablation row (28, 29) on a 28-layer model, here (8, 9) on 8 layers
    model, processor, build = model_case
    apply_aim(model, processor, AIMConfig(retention=0.5, l1=8, l2=9))
    inputs = build(processor)
    logits_of(model, inputs)
    lens = model.aim_stats.layer_seq_lens
    assert len(set(lens)) == 1 and lens[0] == inputs["input_ids"].shape[1]


def test_auto_layers_resolve_to_the_scaled_paper_schedule(model_case):
    model, processor, build = model_case
    apply_aim(model, processor, AIMConfig(retention=0.5))  # l1 = l2 = "auto"
    # (14, 22) of 28 scaled to the tiny models' 8 layers, halves up
    assert (model.aim_config.l1, model.aim_config.l2) == (4, 6)
    logits_of(model, build(processor))
    assert (model.aim_stats.l1, model.aim_stats.l2) == (4, 6)


def test_wrong_processor_is_rejected(ov_sdpa, llava15_sdpa):
    model, _ = ov_sdpa
    _, llava_processor = llava15_sdpa
    with pytest.raises(UnsupportedModelError, match="LlavaOnevisionProcessor"):
        apply_aim(model, llava_processor, AIMConfig(retention=0.5, l1=1, l2=3))
    assert not hasattr(model, "_aim_runtime"), "a rejected call must leave the model untouched"


def test_unsupported_model_is_rejected():
    with pytest.raises(UnsupportedModelError):
        apply_aim(torch.nn.Linear(2, 2), None, AIMConfig())


def test_hidden_states_output_is_refused_while_pruning(model_case):
    model, processor, build = model_case
    apply_aim(model, processor, AIMConfig(retention=0.5, l1=2, l2=6))
    with pytest.raises(UnsupportedUsageError, match="output_hidden_states"):
        with torch.no_grad():
            model(**build(processor), output_hidden_states=True)


def test_chunked_prefill_is_refused(model_case):
    model, processor, build = model_case
    apply_aim(model, processor, AIMConfig(retention=0.5, l1=2, l2=6))
    inputs = build(processor)
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
        # feeding the visual prompt again on top of the pruned cache
        with pytest.raises(UnsupportedUsageError):
            model(**inputs, **cache_kwargs(model, output_cache(out)), use_cache=True)
