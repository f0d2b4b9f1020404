"""No silent cache loss: every layer's KV cache holds exactly the tokens that entered it.

The lengths are counted independently of AIM's own statistics, by forward pre-hooks on the
stock decoder layers, and compared with what each layer's cache holds after a pruned prefill
and after every decode step. A layer that ignores the cache keyword (what an upstream rename
does) must raise CacheIntegrityError naming the installed transformers version, both at the
prefill and at a decode step, instead of decoding without context.

Without a cache generate() re-runs the prefill on prompt + generated tokens: that re-run must
keep the first prefill's visual tokens at every pruning layer, and only it (an unrelated
longer prompt is scored afresh).
"""

from __future__ import annotations

import pytest
import torch

from llava import AIMConfig, apply_aim
from llava.aim.schedule import visual_tokens_per_layer
from llava.errors import CacheIntegrityError
from llava.model.language_model import compat

L1, L2 = 2, 6
DECODE_STEPS = 4


@pytest.fixture
def pruned(model_case):
    """(model, processor, inputs) with AIM pruning after layers 2..5; model_case removes AIM."""
    model, processor, build = model_case
    apply_aim(model, processor, AIMConfig(retention=0.5, l1=L1, l2=L2))  # first: the processor counts merged tokens
    return model, processor, build(processor)


def decoder_layers(model):
    return model.model.language_model.layers


class EnteringTokens:
    """Records, per decoder layer, the sequence length of every call (pre-hooks)."""

    def __init__(self, layers):
        self.calls = [[] for _ in layers]
        self.handles = [
            layer.register_forward_pre_hook(self._hook(j), with_kwargs=True) for j, layer in enumerate(layers)
        ]

    def _hook(self, j):
        def record(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self.calls[j].append(int(hidden.shape[1]))

        return record

    def remove(self):
        for h in self.handles:
            h.remove()


def kv_lengths(cache):
    return [int(layer.get_seq_length()) for layer in cache.layers]


def visual_count(model, inputs) -> int:
    ids = inputs["input_ids"][0]
    return int(sum((ids == t).sum() for t in model._aim_runtime.image_token_ids))


def test_kv_equals_entering_tokens_after_prefill_and_grows_by_one(pruned):
    model, _, inputs = pruned
    layers = decoder_layers(model)
    seen = EnteringTokens(layers)
    try:
        with torch.no_grad():
            out = model(**inputs, use_cache=True)
            cache = compat.output_cache(out)
            entered = [calls[0] for calls in seen.calls]
            # the schedule, derived independently: text tokens plus the visual tokens kept
            v0 = visual_count(model, inputs)
            text = inputs["input_ids"].shape[1] - v0
            assert entered == [text + v for v in visual_tokens_per_layer(v0, len(layers), L1, L2)]
            assert entered[L2 - 1] < entered[0], "the test needs pruning to shrink the sequence"
            assert kv_lengths(cache) == entered
            lengths = kv_lengths(cache)
            token = out.logits[:, -1:].argmax(-1)
            mask = inputs["attention_mask"]
            for step in range(1, DECODE_STEPS + 1):
                mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
                out = model(input_ids=token, attention_mask=mask, use_cache=True, **compat.cache_kwargs(model, cache))
                cache = compat.output_cache(out)
                assert all(calls[-1] == 1 for calls in seen.calls), "one new token enters each layer per step"
                now = kv_lengths(cache)
                assert now == [n + 1 for n in lengths], f"decode step {step}"
                lengths = now
                token = out.logits[:, -1:].argmax(-1)
    finally:
        seen.remove()
    assert lengths == [n + DECODE_STEPS for n in entered]


def test_generate_keeps_every_layer_in_step(pruned):
    model, _, inputs = pruned
    seen = EnteringTokens(decoder_layers(model))
    try:
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=DECODE_STEPS + 1, min_new_tokens=DECODE_STEPS + 1,
                           do_sample=False)
    finally:
        seen.remove()
    # the prefill plus DECODE_STEPS single tokens, in every layer
    assert all(calls[1:] == [1] * DECODE_STEPS for calls in seen.calls)
    assert model.aim_stats.kv_cache_lens == [calls[0] + DECODE_STEPS for calls in seen.calls]


def drop_cache_keyword(layer, only_when=lambda hidden: True):
    """Make ``layer`` ignore the KV cache it is given (as a renamed keyword would), when
    ``only_when(hidden_states)``; returns the undo."""
    stock = layer.forward

    def forgetful(*args, **kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if only_when(hidden):
            for name in compat.CACHE_NAMES:
                kwargs.pop(name, None)
        return stock(*args, **kwargs)

    layer.forward = forgetful
    return lambda: layer.__dict__.pop("forward", None)


@pytest.mark.parametrize("layer_index", [0, L1 + 1, 7])
def test_layer_ignoring_the_cache_at_prefill_raises(pruned, layer_index):
    model, _, inputs = pruned
    undo = drop_cache_keyword(decoder_layers(model)[layer_index])
    try:
        with pytest.raises(CacheIntegrityError) as info, torch.no_grad():
            model.generate(**inputs, max_new_tokens=3, do_sample=False)
    finally:
        undo()
    message = str(info.value)
    assert compat.TRANSFORMERS_VERSION in message and f"layer {layer_index}" in message
    assert "prefill" in message and "0 tokens" in message
    assert "constraints/lock.txt" in message  # says what to do
    assert len(message.splitlines()) == 1


def test_layer_ignoring_the_cache_at_a_decode_step_raises(pruned):
    model, _, inputs = pruned
    undo = drop_cache_keyword(decoder_layers(model)[L1 + 1], only_when=lambda hidden: hidden.shape[1] == 1)
    try:
        with pytest.raises(CacheIntegrityError) as info, torch.no_grad():
            model.generate(**inputs, max_new_tokens=3, do_sample=False)
    finally:
        undo()
    message = str(info.value)
    assert compat.TRANSFORMERS_VERSION in message
    assert f"layer {L1 + 1}" in message and "decode step" in message


def test_uses_the_installed_keyword_and_no_deprecation_warning(pruned, recwarn):
    model, _, inputs = pruned
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    ours = [w for w in recwarn.list if issubclass(w.category, (FutureWarning, DeprecationWarning))
            and ("cache" in str(w.message) or "past_key_values" in str(w.message))]
    assert not ours, [str(w.message) for w in ours]


# -- generate(use_cache=False): a re-run prefill makes the first prefill's decisions ----------
EXTRA_TOKENS = 24  # text tokens appended, as generate(use_cache=False) appends its output


def uncached_survivors(model, inputs, ids):
    """Per pruning layer, per sample, the original positions of the visual tokens entering it,
    for one prefill of ``ids`` (the prompt's media) without a cache."""
    runtime = model._aim_runtime
    prompt = inputs["input_ids"]
    given = dict(inputs, input_ids=ids)
    for name, value in inputs.items():  # per-token rows (the padding mask, token types) grow too
        if name != "input_ids" and torch.is_tensor(value) and value.shape == prompt.shape:
            fill = 1 if name == "attention_mask" else 0  # appended tokens: present, text
            tail = value.new_full((ids.shape[0], ids.shape[1] - prompt.shape[1]), fill)
            given[name] = torch.cat([value, tail], dim=1)
    with torch.no_grad():
        model(**given, use_cache=False)
    return [[p.tolist() for p in layer] for layer in runtime.last_visual_positions]


@pytest.fixture
def tracked(monkeypatch):
    """(model, inputs) of tiny Qwen3-VL (its scores are ~1e-18..1e-6: extra voters reorder them)
    with pruning after layers 2..5, the per-layer visual positions kept; AIM removed after."""
    from conftest import make_video, qwen_model, video_inputs

    from llava.model.families.qwen3_vl import Qwen3VLAdapter
    from llava.model.runtime import remove_aim

    adapter = Qwen3VLAdapter()
    if not adapter.installed():  # the oldest floor predates Qwen3-VL; the lock runs these
        pytest.skip(adapter.missing_reason())
    model, processor = qwen_model("tiny-qwen3-vl")
    apply_aim(model, processor, AIMConfig(retention=0.25, l1=L1, l2=L2), track_sources=True)
    runtime = model._aim_runtime
    record_prefill = runtime.record_prefill

    def keep_positions(record, cache):
        runtime.last_visual_positions = record.visual_positions
        record_prefill(record, cache)

    monkeypatch.setattr(runtime, "record_prefill", keep_positions)
    yield model, video_inputs(processor, [make_video()])
    remove_aim(model, processor)


def with_text(ids, count, first=5):
    extra = torch.arange(first, first + count, dtype=ids.dtype).expand(ids.shape[0], -1)
    return torch.cat([ids, extra], dim=1)


def test_uncached_continuation_keeps_the_first_prefills_survivors(tracked):
    model, inputs = tracked
    prompt = inputs["input_ids"]
    first = uncached_survivors(model, inputs, prompt)
    longer = with_text(prompt, EXTRA_TOKENS)
    continued = uncached_survivors(model, inputs, longer)
    assert continued == first  # every layer, every sample: the same visual tokens
    # and again one step later: still the first prompt that votes, not the previous prefill
    assert uncached_survivors(model, inputs, with_text(prompt, EXTRA_TOKENS + 1)) == first
    # the appended tokens would have changed the ranking had they voted (the test has teeth):
    # the same longer prompt scored on its own (no earlier prefill to continue)
    model._aim_runtime._last_uncached = None
    assert uncached_survivors(model, inputs, longer) != first


def test_an_unrelated_longer_prompt_is_scored_afresh(tracked):
    model, inputs = tracked
    prompt = inputs["input_ids"]
    first = uncached_survivors(model, inputs, prompt)
    other = with_text(prompt, EXTRA_TOKENS)
    other[:, -EXTRA_TOKENS - 1] = 7  # differs inside the earlier prompt: not a continuation
    after_prompt = uncached_survivors(model, inputs, other)
    model._aim_runtime._last_uncached = None
    assert after_prompt == uncached_survivors(model, inputs, other)
    assert after_prompt != first  # its appended tokens voted (see the test above)
