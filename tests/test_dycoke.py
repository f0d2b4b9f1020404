"""DyCoke (llava/aim/dycoke.py) against slow references written from the official code
(KD-TAO/DyCoke at dd7463498203479d0ff6f2d29c4e72928c0af244): python loops, float64."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llava.aim import dycoke
from llava.aim.importance import step_token_attention


# -- slow references ------------------------------------------------------------------------------
def reference_ttm(x, k):
    """llava_arch.py dycole_ttm, one frame and one token at a time, in float64. Returns the list
    of (frame, token) of the output, in order. Differences kept from the module docstring: an
    unpaired last frame is kept whole; ties go to the lower index."""
    frames, t, _ = x.shape
    x = x.double()
    keep = int((1 - k) * t)

    def cos(a, b):
        return float((a @ b) / (max(a.norm(), 1e-12) * max(b.norm(), 1e-12)))

    def least_similar(f, ref):
        sims = [(cos(x[f, i], x[ref, i]), i) for i in range(t)]
        return [i for _, i in sorted(sims)[:keep]]

    out = {}
    for i in range(0, frames - 1, 2):  # first pass: pairs (i, i + 1)
        out[i] = list(range(t))
        out[i + 1] = least_similar(i + 1, i)
    if frames % 2 == 1:
        out[frames - 1] = list(range(t))  # deliberate: the official code drops this frame
    for i in range(0, frames - 4, 4):  # second pass: frame i + 2 against frame i
        out[i + 2] = least_similar(i + 2, i)
    return [(f, tok) for f in range(frames) for tok in out[f]]


def reference_decode(attentions, visual, p, when_similar="keep_selection"):
    """PrunableDynamicCache.dycoke_pruning / update_cache over a sequence of decode steps, one
    sample: per step, the set of visual key indices layers >= L attend (None: all of them)."""
    positions = [i for i, v in enumerate(visual) if v]
    keep = int(len(positions) * (1 - p))
    previous, selection, out = None, None, []
    for attention in attentions:
        image = [float(attention[i]) for i in positions]
        if previous is None:
            similarity = 0.0
        else:
            dot = sum(a * b for a, b in zip(image, previous))
            norm = math.sqrt(sum(a * a for a in image)) * math.sqrt(sum(b * b for b in previous))
            similarity = dot / max(norm, 1e-8)
        previous = image
        if similarity < 0.9:
            ranked = sorted(range(len(positions)), key=lambda j: (-image[j], j))[:keep]
            selection = sorted(positions[j] for j in ranked)
            out.append(selection)
        else:
            out.append(selection if when_similar == "keep_selection" else None)
    return out


# -- TTM --------------------------------------------------------------------------------------------
def test_official_defaults_and_the_32_frame_count():
    assert (dycoke.OFFICIAL_K, dycoke.OFFICIAL_L, dycoke.OFFICIAL_P) == (0.7, 3, 0.8)
    assert dycoke.ttm_kept_per_frame(196, 0.7) == 58  # (1 - 0.7) * 196 = 58.800000000000004
    # 32 frames: 9 whole (0, 4, ..., 28 and 30, the official second pass stops before 28), 23 pruned
    refs = dycoke.ttm_references(32)
    assert [f for f, r in enumerate(refs) if r is None] == [0, 4, 8, 12, 16, 20, 24, 28, 30]
    assert dycoke.ttm_count(32, 196, 0.7) == 9 * 196 + 23 * 58 == 3098


@settings(max_examples=40, deadline=None)
@given(frames=st.integers(1, 11), t=st.integers(1, 12), k=st.sampled_from([0.0, 0.3, 0.5, 0.7, 0.9, 1.0]),
       seed=st.integers(0, 2**16), ties=st.booleans())
def test_ttm_equals_the_reference(frames, t, k, seed, ties):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(frames, t, 5, generator=g)
    if ties:  # one-hot tokens, repeated across frames with power-of-two scales: every similarity
        # is exactly 1 (also in float32), so the index decides
        x = torch.eye(5)[torch.arange(t) % 5].expand(frames, t, 5) * 2.0 ** torch.randint(-3, 4, (frames, t, 1), generator=g)
    out = dycoke.token_temporal_merge(x, k)
    expected = reference_ttm(x, k)
    assert out.origin.tolist() == [f * t + tok for f, tok in expected]
    assert torch.equal(out.tokens, x.reshape(frames * t, -1)[out.origin])
    assert out.tokens.shape[0] == dycoke.ttm_count(frames, t, k)
    back = out.sources[out.origin]
    assert torch.equal(back, torch.arange(out.origin.numel()))
    assert int((out.sources >= 0).sum()) == out.origin.numel()


def test_ttm_keeps_what_changed():
    """A static background with one moving token: pruned frames keep the changed position first."""
    x = torch.randn(1, 9, 8).expand(4, 9, 8).clone()
    x[1, 4] = torch.randn(8)
    out = dycoke.token_temporal_merge(x, 2 / 3)  # keep int(1/3 * 9) = 3 of frames 1, 2, 3
    frame1 = [o % 9 for o in out.origin.tolist() if o // 9 == 1]
    assert frame1[0] == 4 and len(frame1) == 3
    assert [o // 9 for o in out.origin.tolist()].count(0) == 9


# -- decode-time selection ------------------------------------------------------------------------
def _steps(seed, batch, width, steps, similar):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(batch, width, generator=g)
    out = []
    for _ in range(steps):
        noise = torch.rand(batch, width, generator=g)
        a = base + (0.01 if similar else 2.0) * noise
        out.append(a / a.sum(-1, keepdim=True))
    return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 3), width=st.integers(2, 16), steps=st.integers(1, 5),
       p=st.sampled_from([0.0, 0.5, 0.8, 0.95]), similar=st.booleans(),
       when=st.sampled_from(dycoke.WHEN_SIMILAR))
def test_decode_selection_equals_the_reference(seed, batch, width, steps, p, similar, when):
    g = torch.Generator().manual_seed(seed + 1)
    visual = torch.rand(batch, width, generator=g) < 0.7
    visual[:, 0] = True
    kept = torch.tensor([dycoke.decode_kept(int(v.sum()), p) for v in visual])
    attentions = _steps(seed, batch, width, steps, similar)
    state, got = None, []
    for a in attentions:
        allowed, state = dycoke.decode_select(a, visual, kept, state, when)
        got.append(allowed)
    for b in range(batch):
        expected = reference_decode([a[b].double() for a in attentions], visual[b].tolist(), p, when)
        for step, (allowed, want) in enumerate(zip(got, expected)):
            want = [i for i, v in enumerate(visual[b].tolist()) if v] if want is None else want
            assert allowed[b].nonzero().flatten().tolist() == want, (b, step)


def test_a_stable_step_keeps_the_selection_or_attends_all():
    visual = torch.ones(1, 6, dtype=torch.bool)
    kept = torch.tensor([2])
    a = torch.tensor([[0.5, 0.3, 0.1, 0.05, 0.03, 0.02]])
    first, state = dycoke.decode_select(a, visual, kept, None)
    assert first.tolist() == [[True, True, False, False, False, False]]
    again, _ = dycoke.decode_select(a * 1.01, visual, kept, state, "keep_selection")
    assert torch.equal(again, first)
    official, _ = dycoke.decode_select(a, visual, kept, state, "attend_all")
    assert official.all()
    changed, _ = dycoke.decode_select(a.flip(-1), visual, kept, state)
    assert changed.tolist() == [[False, False, False, False, True, True]]


def test_step_attention_is_the_head_mean_of_the_masked_softmax():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 1, 8, generator=g), torch.randn(2, 2, 5, 8, generator=g)
    alive = torch.tensor([[True] * 5, [False, True, True, True, True]])
    got = step_token_attention(q, k, alive, 8 ** -0.5)
    for b in range(2):
        rows = []
        for h in range(4):
            logits = [float(q[b, h, 0].double() @ k[b, h // 2, i].double()) * 8 ** -0.5 if alive[b, i] else -math.inf
                      for i in range(5)]
            m = max(logits)
            e = [math.exp(v - m) for v in logits]
            rows.append([v / sum(e) for v in e])
        want = [sum(r[i] for r in rows) / 4 for i in range(5)]
        assert got[b].tolist() == pytest.approx(want, abs=1e-6)


# -- the decode-time hook on tiny-llava-onevision ---------------------------------------------------
from conftest import make_video, video_inputs  # noqa: E402
from llava import AIMConfig, apply_aim  # noqa: E402
from llava.aim import policy  # noqa: E402
from llava.model.runtime import remove_aim  # noqa: E402

STEPS = 6


@pytest.fixture
def decode_only(monkeypatch):
    """A method with DyCoke's decode stage alone (no reduction before the LLM): isolates the
    driver's decode hook from the frames."""
    monkeypatch.setitem(policy.SPECS, "decode_only", policy.MethodSpec(
        "decode_only", "DyCoke decode stage", "test", "merge", "none", "none", decode="dycoke_kv"))
    return lambda **kw: AIMConfig(method="decode_only", retention=1.0, l1=None, l2=None, **kw)


def _greedy(model, inputs):
    return model.generate(**inputs, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False)


def _greedy_logits(model, inputs):
    """(tokens (B, STEPS), raw logits (B, STEPS, V)) of a greedy generate."""
    out = model.generate(**inputs, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False,
                         output_logits=True, return_dict_in_generate=True)
    return out.sequences[:, -STEPS:], torch.stack(out.logits, dim=1)


def reference_generate(model, inputs, layer, p, when_similar):
    """Greedy decoding of the stock model, one layer at a time, with DyCoke's decode stage done
    by hand: layer ``layer - 1``'s attention of the step token from its own q and the cache's
    keys (float64), the official selection loop (reference_decode), and an explicit additive
    mask on layers >= ``layer``. Batch 1."""
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

    from llava.model.language_model.compat import cache_kwargs

    lm = model.model.language_model
    ids = inputs["input_ids"]
    visual = torch.isin(ids[0], torch.tensor([model.config.video_token_id, model.config.image_token_id]))
    out = model(**inputs, use_cache=True)
    cache = out.past_key_values
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    generated, attentions, logits = [token], [], [out.logits[:, -1]]
    seq = ids.shape[1]
    for step in range(STEPS - 1):
        h = lm.embed_tokens(token)
        position = torch.tensor([[seq + step]])
        cos, sin = lm.rotary_emb(h, position)
        allowed_keys = None
        for j, block in enumerate(lm.layers):
            width = cache.layers[j].get_seq_length() + 1 if j < len(cache.layers) else seq + step + 1
            mask = torch.zeros(1, 1, 1, width)
            if j >= layer and allowed_keys is not None:
                for i in range(seq):
                    if visual[i] and i not in allowed_keys:
                        mask[..., i] = float("-inf")
            if j == layer - 1:
                attn = block.self_attn
                x = block.input_layernorm(h)
                q = attn.q_proj(x).view(1, 1, -1, attn.head_dim).transpose(1, 2)
                k_new = attn.k_proj(x).view(1, 1, -1, attn.head_dim).transpose(1, 2)
                q, k_new = apply_rotary_pos_emb(q, k_new, cos, sin)
                keys = torch.cat([cache.layers[j].keys, k_new], dim=2).double()
                groups = q.shape[1] // keys.shape[1]
                rows = []
                for head in range(q.shape[1]):
                    scores = keys[0, head // groups] @ q[0, head, 0].double() * attn.scaling
                    rows.append(torch.softmax(scores, dim=0))
                attentions.append(torch.stack(rows).mean(0)[:seq])
                chosen = reference_decode(attentions, visual.tolist(), p, when_similar)[-1]
                allowed_keys = set(range(seq)) if chosen is None else set(chosen)
            h = block(h, attention_mask=mask, position_embeddings=(cos, sin), use_cache=True, **cache_kwargs(block, cache))
            h = h[0] if isinstance(h, tuple) else h
        logits.append(model.lm_head(lm.norm(h))[:, -1])
        token = logits[-1].argmax(-1, keepdim=True)
        generated.append(token)
    return torch.cat(generated, dim=1), torch.stack(logits, dim=1)


@pytest.mark.parametrize("when", dycoke.WHEN_SIMILAR)
def test_decode_stage_equals_the_explicit_mask_reference(ov_sdpa, decode_only, when):
    model, processor = ov_sdpa
    inputs = video_inputs(processor, [make_video(4, seed=7)])
    try:
        with torch.no_grad():
            want, want_logits = reference_generate(model, inputs, dycoke.OFFICIAL_L, dycoke.OFFICIAL_P, when)
            _, stock_logits = _greedy_logits(model, inputs)
            apply_aim(model, processor, decode_only(dycoke_when_similar=when))
            got, got_logits = _greedy_logits(model, inputs)
        assert got.tolist() == want.tolist()
        assert torch.allclose(got_logits, want_logits, atol=1e-4, rtol=1e-4)
        # the first token comes from the prefill; later steps see the restriction
        assert torch.allclose(got_logits[:, 0], stock_logits[:, 0], atol=1e-4, rtol=1e-4)
        assert (got_logits[:, 1:] - stock_logits[:, 1:]).abs().max() > 1e-3
    finally:
        remove_aim(model, processor)


def test_decode_stage_batch_equals_single(ov_sdpa, decode_only):
    model, processor = ov_sdpa
    media = [make_video(4, seed=3), make_video(4, seed=4)]
    questions = ["What is shown?", "Describe the colors of the objects in this picture in detail please."]
    try:
        with torch.no_grad():
            stock = [_greedy_logits(model, video_inputs(processor, [m], [q]))[1] for m, q in zip(media, questions)]
            apply_aim(model, processor, decode_only(dycoke_p=0.95))
            batch = video_inputs(processor, media, questions)
            assert (batch["attention_mask"] == 0).any(), "the test needs left padding"
            both, both_logits = _greedy_logits(model, batch)
            single = [_greedy_logits(model, video_inputs(processor, [m], [q])) for m, q in zip(media, questions)]
        for i in range(2):
            assert both[i].tolist() == single[i][0][0].tolist()
            assert torch.allclose(both_logits[i], single[i][1][0], atol=1e-4, rtol=1e-4)
            # p = 0.95 leaves 5% of the visual KV: later steps depart from the stock logits
            assert (single[i][1][0, 1:] - stock[i][0, 1:]).abs().max() > 1e-3
    finally:
        remove_aim(model, processor)


def test_decode_steps_read_nothing_from_the_device(ov_sdpa, decode_only):
    from test_host_syncs import HostSyncCounter

    from llava.model.language_model.compat import cache_kwargs, output_cache

    model, processor = ov_sdpa
    apply_aim(model, processor, decode_only())
    try:
        inputs = video_inputs(processor, [make_video(4)])
        mask = inputs["attention_mask"]
        with torch.no_grad():
            out = model(**inputs, use_cache=True)
            cache = output_cache(out)
            token = out.logits[:, -1:].argmax(-1)
            with HostSyncCounter() as counter:
                for _ in range(3):
                    mask = torch.cat([mask, torch.ones(1, 1, dtype=torch.long)], dim=1)
                    out = model(input_ids=token, attention_mask=mask, **cache_kwargs(model, cache), use_cache=True)
                    token = out.logits[:, -1:].argmax(-1)
        assert counter.total == 0, counter.where
        assert cache.aim_state.decode.allowed.sum() < cache.aim_state.decode.visual.sum()
    finally:
        remove_aim(model, processor)


def test_decode_selection_refuses_a_layer_beyond_the_model(ov_sdpa, decode_only):
    from llava.errors import AIMConfigError

    model, processor = ov_sdpa
    layers = len(model.model.language_model.layers)
    with pytest.raises(AIMConfigError, match="dycoke_l"):
        apply_aim(model, processor, decode_only(dycoke_l=layers))
    with pytest.raises(AIMConfigError, match="belongs to method=dycoke, not method=aim"):
        AIMConfig(dycoke_p=0.5)


# -- the whole method on tiny-llava-onevision -------------------------------------------------------
def test_ttm_on_the_models_real_features_equals_the_reference(ov_sdpa, monkeypatch):
    """The frames the LLaVA-OneVision family hands DyCoke are its pooled features (stage
    "projected"), and what the LLM receives is the reference TTM of them."""
    from llava.aim import registry

    model, processor = ov_sdpa
    inputs = video_inputs(processor, [make_video(6, seed=2)])
    entry = registry.REGISTRY["dycoke"]
    seen = []

    def spy(frames):
        out = entry.fn(frames)
        seen.append((frames, out))
        return out

    monkeypatch.setitem(registry.REGISTRY, "dycoke", dataclasses.replace(entry, fn=spy))
    with torch.no_grad():
        stock = model.model.get_video_features(inputs["pixel_values_videos"])
        stock = getattr(stock, "pooler_output", stock)
        stock = stock[0] if isinstance(stock, (list, tuple)) else stock
        apply_aim(model, processor, AIMConfig.for_method("dycoke", dycoke_k=0.5))
        try:
            model(**video_inputs(processor, [make_video(6, seed=2)]))
            stats = model.aim_stats
        finally:
            remove_aim(model, processor)
    (frames, out), = seen
    f, t, c = frames.tokens.shape
    assert f == 6 and torch.allclose(frames.tokens.reshape(-1, c), stock.reshape(-1, c)[: f * t], atol=1e-5)
    expected = reference_ttm(frames.tokens, 0.5)
    assert out.origin.tolist() == [fr * t + tok for fr, tok in expected]
    assert out.tokens.shape[0] == dycoke.ttm_count(6, t, 0.5) == registry.REGISTRY["dycoke"].bound(6, t, AIMConfig.for_method("dycoke", dycoke_k=0.5))
    assert sum(stats.tokens_kept_per_frame) == out.tokens.shape[0]


def test_dycoke_batch_equals_single_and_qwen_is_refused(ov_sdpa):
    from conftest import qwen_model

    from llava.errors import UnsupportedModelError

    model, processor = ov_sdpa
    media = [make_video(5, seed=8), make_video(5, seed=9)]
    questions = ["What is shown?", "Describe the colors of the objects in this picture in detail please."]
    cfg = AIMConfig.for_method("dycoke", dycoke_p=0.9)
    apply_aim(model, processor, cfg)
    try:
        with torch.no_grad():
            batch = video_inputs(processor, media, questions)
            assert (batch["attention_mask"] == 0).any(), "the test needs left padding"
            both, both_logits = _greedy_logits(model, batch)
            for i in range(2):
                one, one_logits = _greedy_logits(model, video_inputs(processor, [media[i]], [questions[i]]))
                assert both[i].tolist() == one[0].tolist()
                assert torch.allclose(both_logits[i], one_logits[0], atol=1e-4, rtol=1e-4)
    finally:
        remove_aim(model, processor)
    qwen, qwen_processor = qwen_model("tiny-qwen2.5-vl")
    with pytest.raises(UnsupportedModelError, match="LLaVA-OneVision only"):
        apply_aim(qwen, qwen_processor, cfg)


def test_dycoke_config_defaults_and_budget():
    from llava.errors import AIMConfigError

    cfg = AIMConfig.for_method("dycoke")
    assert (cfg.retention, cfg.l1, cfg.l2) == (1.0, None, None) and cfg.video_reducing and cfg.decode_selecting
    assert dycoke.settings(cfg) == (0.7, 3, 0.8, "keep_selection")
    with pytest.raises(AIMConfigError, match="dycoke_k"):
        AIMConfig.for_method("dycoke", retention=0.25)  # no retention maps onto DyCoke's k
    with pytest.raises(AIMConfigError, match="dycoke_k"):
        AIMConfig.for_method("dycoke", dycoke_k=1.5)


def test_the_analyzer_prices_ttm_by_its_pruned_frames():
    from llava.aim import registry
    from llava.analysis.hardware import get_hardware
    from llava.analysis.roofline import dycoke_overhead_ops

    hw = get_hardware("nvidia_A100")
    cfg = AIMConfig.for_method("dycoke")
    ops32 = dycoke_overhead_ops(32, 196, 3584, hw, cfg=cfg)
    ops8 = dycoke_overhead_ops(8, 196, 3584, hw, cfg=cfg)
    flops = lambda ops: sum(op.ops for op in ops)  # noqa: E731
    # 23 pruned frames of 32, 5 of 8 (frames 1, 2, 3, 5, 7)
    assert flops(ops32) * 5 == pytest.approx(flops(ops8) * 23)
    assert registry.REGISTRY["dycoke"].nominal(32, 196, cfg) == 3098
    assert registry.REGISTRY["dycoke"].cost == "dycoke_overhead_ops"


def test_run_cli_takes_dycoke_and_its_knobs(capsys):
    import json

    from llava.cli import main

    code = main(["run", "--method", "dycoke", "--dycoke-k", "0.5", "--dycoke-p", "0.9", "--frames", "4",
                 "--max-new-tokens", "3", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    t = result["visual_tokens_before_merge"] // 4  # per frame, the newline aside (196 at 384 px)
    assert result["visual_tokens_after_merge"] == dycoke.ttm_count(4, t, 0.5) + 1
    assert main(["run", "--method", "dycoke", "--retention", "0.25", "--frames", "4"]) == 2
    assert "--retention" in capsys.readouterr().err


def test_describe_names_both_stages():
    from llava.aim.policy import describe

    line = describe(AIMConfig.for_method("dycoke"), 28)
    assert "dycoke before the LLM" in line and "dycoke_kv" in line


# -- the analyzer's decode step (llava.analysis.roofline.decode_step_of, registry "attended") --------
@pytest.mark.parametrize("p, layer, generated", [(0.8, 3, 0), (0.8, 3, 7), (0.5, 1, 2), (0.0, 3, 0), (0.95, 27, 1)])
def test_decode_attended_keys_are_text_generated_and_the_kept_visual(p, layer, generated):
    from llava.aim.registry import lookup

    cfg = AIMConfig.for_method("dycoke", dycoke_p=p, dycoke_l=layer)
    text, visual = 100, 3099
    kv_lens = [text + visual + generated] * 28
    got = lookup("dycoke_kv", "decode").attended(kv_lens, [visual] * 28, cfg)
    kept = int(visual * (1 - p))  # the runtime's rounding (decode_kept: int(N * (1 - p)), floating point)
    assert kept == lookup("dycoke_kv", "decode").fn(cfg, 28).budget(visual)  # the driver's budget
    assert got == [kv_lens[0]] * layer + [text + generated + kept] * (28 - layer)


def test_the_analyzer_prices_the_decode_step_over_the_selected_keys():
    from llava.analysis.roofline import analyze, decode_step_cost, kv_cache_bytes_per_layer

    res = analyze("qwen2-7b", method="dycoke", frames=32, text_tokens=100)
    full = decode_step_cost(res.llm, res.tokens_per_layer, res.hardware, res.options)
    assert res.tokens_per_layer == [100 + 3098] * 28
    # layers < 3 attend the whole cache and the new token; layers >= 3 the 100 text keys, int(3098 * 0.2) = 619
    # visual keys and the new token
    assert [layer.keys for layer in res.decode.layers] == [3199] * 3 + [100 + 619 + 1] * 25
    assert res.decode.layers[:3] == full.layers[:3]
    # one layer by hand (Qwen2-7B: 28 heads, 4 KV heads, d = 128; 16-bit): one query over 720 keys
    ops = {op.name: op for op in res.decode.layers[5].ops}
    assert ops["qk_matmul"].ops == 2 * 1 * 720 * 128 * 28
    assert ops["softmax"].ops == 5 * 28 * 1 * 720
    assert ops["sv_matmul"].ops == 2 * 1 * 720 * 128 * 28
    # K and V read for the attended (gathered) keys only
    assert ops["qk_matmul"].bytes == 1 * 128 * 4 * 2 + 1 * 720 * 28 * 2 + 720 * 128 * 4 * 2
    assert ops["sv_matmul"].bytes == 1 * 720 * 28 * 2 + 1 * 128 * 28 * 2 + 720 * 128 * 4 * 2
    # the cache keeps every entry: its bytes are the whole prompt's
    assert res.kv_cache_bytes_per_layer == kv_cache_bytes_per_layer(res.llm, res.tokens_per_layer)
    # the selection's own work is in the step, and small
    assert [op.name for op in res.decode.overhead] == ["dycoke_kv.attention", "dycoke_kv.similarity", "dycoke_kv.top_k"]
    attention = res.decode.overhead[0]
    assert attention.ops == 2 * 28 * 3199 * 128 + 6 * 28 * 3199
    assert 0 < sum(op.time_s for op in res.decode.overhead) < 0.001 * res.decode.time_s
    assert res.decode.time_s < full.time_s
    assert any("decode step: layers 3..27 attend 720 of their 3199 keys" in n for n in res.notes)


def test_the_analyzer_decode_step_without_a_selection_is_the_whole_cache():
    from llava.analysis.roofline import analyze, decode_step_cost

    res = analyze("qwen2-7b", method="dycoke", method_knobs={"dycoke_p": 0.0})
    full = decode_step_cost(res.llm, res.tokens_per_layer, res.hardware, res.options)
    assert res.decode.layers == full.layers  # p = 0 keeps every visual key: only the selection's work remains
    assert res.decode.flops == pytest.approx(full.flops + sum(op.ops for op in res.decode.overhead), rel=1e-12)
    for method in policy.METHODS:
        if policy.spec(method).decode is not None:
            continue
        other = analyze("qwen2-7b", method=method, newline_tokens=1)
        plain = decode_step_cost(other.llm, other.tokens_per_layer, other.hardware, other.options)
        assert other.decode.to_dict(with_ops=True) == plain.to_dict(with_ops=True), method


def test_flops_cli_prints_a_cheaper_decode_step_with_the_selection(capsys):
    from llava.cli import main

    def decode_ms(*extra):
        assert main(["flops", "--method", "dycoke", *extra]) == 0
        line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("first decode step ms"))
        return float(line.split()[4])

    assert decode_ms() < decode_ms("--dycoke-p", "0")
    assert decode_ms("--dycoke-p", "0.9") < decode_ms("--dycoke-p", "0.5")


def test_a_decode_entry_must_declare_the_keys_it_attends():
    from llava.aim import registry
    from llava.errors import AIMConfigError

    with pytest.raises(AIMConfigError, match="attended"):
        registry.register("decode_without_keys", "decode", lambda cfg, n: None, needs=("qk",))
    with pytest.raises(AIMConfigError, match="attended"):
        registry.register("score_with_keys", "score", lambda x: None, attended=lambda *a: [])
    assert "decode_without_keys" not in registry.REGISTRY and "score_with_keys" not in registry.REGISTRY
