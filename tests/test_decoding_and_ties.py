"""Decoding after a pruned prefill, and ties in the pruning ranking, on the tiny models.

Decoding: the official code writes the layer mask into generate's attention mask in place and
derives position ids from it, so from the second generated token on RoPE positions drop by the
pruned count and layer 0 sees no visual tokens. Pinned here: positions keep counting from the
prompt length and every layer attends exactly to its own prefill survivors at every step.
"""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import make_video, video_inputs
from llava import AIMConfig, apply_aim
from llava.model.runtime import remove_aim


def _visible_keys(mask, kv_len):
    """Keys the last query row may attend to, from a layer's attention mask (None: all)."""
    if mask is None:
        return torch.ones(kv_len, dtype=torch.bool)
    row = mask[0, 0, -1]
    return row if row.dtype == torch.bool else row == 0


def test_decoding_positions_and_per_layer_survivors(model_case):
    model, processor, build = model_case
    apply_aim(model, processor, AIMConfig(retention=0.5, l1=2, l2=6))
    lm = model.model.language_model
    positions, masks = [], {}

    def on_rotary(module, args, kwargs, output):
        ids = kwargs.get("position_ids", args[1] if len(args) > 1 else None)
        positions.append(ids.reshape(-1).tolist())

    def on_layer(j):
        def hook(module, args, kwargs):
            masks.setdefault(j, []).append(kwargs.get("attention_mask"))
        return hook

    handles = [lm.rotary_emb.register_forward_hook(on_rotary, with_kwargs=True)]
    handles += [layer.register_forward_pre_hook(on_layer(j), with_kwargs=True) for j, layer in enumerate(lm.layers)]
    inputs = build(processor)
    prompt = inputs["input_ids"].shape[1]
    steps = 5
    try:
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    finally:
        for h in handles:
            h.remove()
    assert out.shape[1] == prompt + steps
    # prefill: 0 .. prompt-1; then one position per fed-back token, continuing from the prompt length
    assert positions[0] == list(range(prompt))
    assert [p for p in positions[1:]] == [[prompt + t] for t in range(steps - 1)]
    stats = model.aim_stats
    visual_per_layer = [v[0] for v in stats.visual_tokens_per_layer]
    text = prompt - visual_per_layer[0]
    for j in range(len(lm.layers)):
        prefill_keys = text + visual_per_layer[j]  # this layer's own survivors
        assert stats.layer_seq_lens[j] == prefill_keys
        for t, mask in enumerate(masks[j][1:]):  # decode steps
            kv_len = prefill_keys + t + 1
            visible = _visible_keys(mask, kv_len)
            assert visible.shape[-1] == kv_len and bool(visible.all()), (j, t)
        assert stats.kv_cache_lens[j] == prefill_keys + steps - 1
    # layer 0 keeps every visual token for the whole generation (the official code's layer 0 sees none)
    assert visual_per_layer[0] == stats.visual_tokens_after_merge and visual_per_layer[-1] == 0


def test_decoding_matches_the_mask_reference_positions(model_case):
    """Removal and the masked reference decode the same tokens: both continue positions from
    the prompt length and both restrict every layer to its own survivors."""
    model, processor, build = model_case
    tokens = {}
    for mode in ("remove", "mask"):
        apply_aim(model, processor, AIMConfig(retention=0.5, l1=2, l2=6, pruning_mode=mode))
        inputs = build(processor)  # after apply_aim: the processor counts the merged tokens
        with torch.no_grad():
            tokens[mode] = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert torch.equal(tokens["remove"], tokens["mask"])


# -- ties -------------------------------------------------------------------------------------
def test_tie_statistics_recorded_per_pruning_layer(model_case):
    model, processor, build = model_case
    apply_aim(model, processor, AIMConfig(retention=0.5, l1=2, l2=6))
    with torch.no_grad():
        model(**build(processor))
    ties = model.aim_stats.score_ties
    assert [t["layer"] for t in ties] == [2, 3, 4]  # layer 5 drops every visual token: no ranking
    for t in ties:
        assert len(t["zero_scores"]) == len(t["tie_decided"]) == len(t["candidates"]) == 1
        assert 0 <= t["zero_scores"][0] <= t["candidates"][0] and t["tie_rule"] == "index"
    assert "score_ties" in model.aim_stats.to_dict()


def test_log_attention_tie_break_changes_nothing_without_ties(model_case):
    model, processor, build = model_case
    logits = {}
    for rule in ("index", "log_attention"):
        apply_aim(model, processor, AIMConfig(retention=0.5, l1=2, l2=6, tie_break=rule))
        inputs = build(processor)
        with torch.no_grad():
            logits[rule] = model(**inputs).logits
        assert not any(any(t["tie_decided"]) for t in model.aim_stats.score_ties)
    assert torch.equal(logits["index"], logits["log_attention"])


@pytest.fixture
def salient_ov(ov_sdpa):
    """The tiny LLaVA-OneVision with its queries and keys scaled up: PageRank at tau 0.1
    underflows to exactly 0 for many visual tokens, as with trained "salient" attention."""
    model, processor = ov_sdpa
    model = copy.deepcopy(model)
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            layer.self_attn.q_proj.weight.mul_(30)
            layer.self_attn.k_proj.weight.mul_(30)
    yield model, processor
    remove_aim(model, processor)


def test_underflow_ties_are_recorded_and_the_option_breaks_them(salient_ov):
    model, processor = salient_ov
    found = {}
    for rule in ("index", "log_attention"):
        for mode in ("remove", "mask"):
            apply_aim(model, processor, AIMConfig(retention=0.5, l1=2, l2=6, tie_break=rule, pruning_mode=mode),
                      track_sources=True)
            inputs = video_inputs(processor, [make_video()])
            with torch.no_grad():
                logits = model(**inputs).logits
            stats = model.aim_stats
            found[rule, mode] = (logits, [s.clone() for s in stats.layer_survivors], stats.score_ties)
    ties = found["index", "remove"][2]
    assert any(t["zero_scores"][0] > 0 for t in ties)
    decided = [t for t in ties if t["tie_decided"][0] > 0]
    assert decided and all(t["tie_rule"] == "index" for t in decided)
    broken = found["log_attention", "remove"][2]
    assert any(t["tie_rule"] == "log_attention" for t in broken)
    # another rule, other survivors; removal still equals its masked reference under each rule
    assert any(not torch.equal(a, b) for a, b in zip(found["index", "remove"][1], found["log_attention", "remove"][1]))
    for rule in ("index", "log_attention"):
        assert all(torch.equal(a, b) for a, b in zip(found[rule, "remove"][1], found[rule, "mask"][1]))
