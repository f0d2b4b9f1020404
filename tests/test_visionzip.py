"""VisionZip (llava.aim.visionzip) against slow float64 references written from the official code:
the CLIP path from dvlab-research/VisionZip @ 3151f6d (visionzip/clip_encoder.py), the SigLIP /
LLaVA-OneVision path from HoliTom's port, cokeshao/HoliTom @ e9b2972 (visionzip/llava_arch.py,
LLaVA-NeXT/llava/model/multimodal_encoder/siglip_encoder.py); on random inputs and end to end on
the tiny LLaVA-1.5 and LLaVA-OneVision; batch equals single; the families neither ran are refused."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import image_inputs, make_image, make_video, spliced_logits, video_inputs
from llava import AIMConfig, apply_aim
from llava.aim.policy import check_typed_settings
from llava.aim.registry import lookup
from llava.aim.visionzip import DEFAULT_RETENTION, OV_SPATIAL_TOKENS, kept_tokens, split, visionzip, visionzip_frames
from llava.errors import UnsupportedModelError
from llava.model.runtime import remove_aim


def reference_visionzip(hidden, head_attention, keys, dominant, contextual, has_cls=True):
    """One frame, float64 loops, step by step as the official forward: ``hidden`` (M, C) the
    selected layer's tokens (CLS first when ``has_cls``), ``head_attention`` (heads, M) the
    attention each token receives per head (the CLS row; without CLS the mean over queries),
    ``keys`` (M, d) the layer's keys, mean over heads."""
    hidden, keys = hidden.double(), keys.double()
    m = hidden.shape[0]
    first = 1 if has_cls else 0
    received = [sum(float(head_attention[h, j]) for h in range(head_attention.shape[0])) for j in range(m)]
    candidates = list(range(first, m))
    # top (dominant - CLS) by attention summed over heads; ties: the lower index first
    ranked = sorted(candidates, key=lambda j: (-received[j], j))
    chosen = set(ranked[: dominant - first]) | ({0} if has_cls else set())
    dominant_rows = [hidden[j] for j in range(m) if j in chosen]
    rest = [j for j in range(m) if j not in chosen]
    normed = {j: keys[j] / keys[j].norm() for j in rest}
    out = list(dominant_rows)
    if contextual:
        step = max(1, len(rest) // contextual)
        targets = list(range(0, len(rest), step))[:contextual]
        assigned = {t: [] for t in targets}
        for pos, j in enumerate(rest):
            if pos in targets:
                continue
            sims = [float(normed[j] @ normed[rest[t]]) for t in targets]
            best = max(range(len(targets)), key=lambda i: (sims[i], -i))  # the first best
            assigned[targets[best]].append(hidden[j])
        for t in targets:
            group = assigned[t]
            mean = sum(group) / max(1, len(group)) if group else torch.zeros_like(hidden[0])
            out.append(hidden[rest[t]] + mean)
    return torch.stack(out)


def _random_frame(seed, t, c=6, d=4, heads=2):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(t + 1, c, generator=g)
    logits = torch.randn(heads, t + 1, generator=g) * 2
    attention = torch.softmax(logits, dim=-1)  # the CLS row per head, over CLS + T patches
    keys = torch.randn(t + 1, d, generator=g)
    return hidden, attention, keys


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), t=st.integers(2, 40), data=st.data())
def test_fast_equals_the_reference_with_cls(seed, t, data):
    kept = data.draw(st.integers(1, t))
    dominant, contextual = split(kept, has_cls=True)
    hidden, attention, keys = _random_frame(seed, t)
    want = reference_visionzip(hidden, attention, keys, dominant, contextual)
    got, origin, sources, weights = visionzip_frames(hidden[None, 1:], attention.mean(0)[None, 1:], keys[None, 1:],
                                                     dominant, contextual, cls=hidden[None, 0])
    torch.testing.assert_close(got[0].double(), want, rtol=1e-5, atol=1e-5)
    assert got.shape[1] == kept and origin.shape == (1, kept)
    # the combination the sources and weights describe is the output (CLS aside)
    x = hidden[1:].double()
    for u in range(1, kept):
        members = (sources[0] == u).nonzero().flatten()
        torch.testing.assert_close((weights[0, members, None].double() * x[members]).sum(0), got[0, u].double(),
                                   rtol=1e-5, atol=1e-5)
    assert set(sources[0].tolist()) <= set(range(1, kept)) | {-1}


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), t=st.integers(2, 40), data=st.data())
def test_fast_equals_the_reference_without_cls(seed, t, data):
    kept = data.draw(st.integers(1, t))
    dominant, contextual = split(kept)
    hidden, attention, keys = _random_frame(seed, t)
    want = reference_visionzip(hidden[1:], attention[:, 1:], keys[1:], dominant, contextual, has_cls=False)
    got, *_ = visionzip_frames(hidden[None, 1:], attention[:, 1:].mean(0)[None], keys[None, 1:], dominant, contextual)
    torch.testing.assert_close(got[0].double(), want, rtol=1e-5, atol=1e-5)


def test_frames_are_independent():
    frames = [_random_frame(s, 30) for s in range(3)]
    x = torch.stack([f[0][1:] for f in frames])
    a = torch.stack([f[1].mean(0)[1:] for f in frames])
    k = torch.stack([f[2][1:] for f in frames])
    cls = torch.stack([f[0][0] for f in frames])
    both, *_ = visionzip_frames(x, a, k, 6, 2, cls=cls)
    for i in range(3):
        one, *_ = visionzip_frames(x[i:i + 1], a[i:i + 1], k[i:i + 1], 6, 2, cls=cls[i:i + 1])
        torch.testing.assert_close(both[i], one[0])


def test_official_splits_and_budget():
    assert DEFAULT_RETENTION == 64 / 576
    assert kept_tokens(576, DEFAULT_RETENTION) == 64 and split(64) == (54, 10)  # README: dominant=54, contextual=10
    assert split(kept_tokens(576, 128 / 576)) == (108, 20) and split(kept_tokens(576, 192 / 576)) == (162, 30)
    assert split(1, has_cls=True) == (1, 0) and split(1) == (0, 1) and split(2) == (1, 1)
    # HoliTom's LLaVA-OneVision script (scripts/eval_ov-7b_visionzip.sh): SPATIAL_TOKENS 20/30/40/50 of
    # 196 per frame for its budgets 0.10/0.15/0.20/0.25, split int(S * 54/64) dominant + the rest
    for s, official in zip(OV_SPATIAL_TOKENS, [(16, 4), (25, 5), (33, 7), (42, 8)]):
        assert kept_tokens(196, s / 196) == s and split(s) == official
    assert OV_SPATIAL_TOKENS == (20, 30, 40, 50)
    cfg = AIMConfig.for_method("visionzip")
    assert (cfg.retention, cfg.l1, cfg.l2, cfg.merging, cfg.video_reducing) == (64 / 576, None, None, False, True)
    entry = lookup("visionzip", "reduction")
    assert entry.stage == ("projected", "vision") and entry.bound(3, 576, cfg) == entry.nominal(3, 576, cfg) == 192
    check_typed_settings("visionzip", {"retention": 0.25})  # the budget knob


# -- on the tiny LLaVA-1.5 ---------------------------------------------------------------------------
def _official_tokens(model, pixel_values, retention):
    """The reference on the model's own tower: the feature layer's per-head CLS attention by hand
    (float64), the layer's keys mean over heads, then the projector."""
    inner = model.model
    tower = inner.vision_tower
    layers = getattr(tower, "vision_model", tower).encoder.layers
    with torch.no_grad():
        hs = tower(pixel_values, output_hidden_states=True).hidden_states
        layer = layers[len(layers) - 2]  # produces hidden_states[-2], LLaVA's features
        attn = layer.self_attn
        normed = layer.layer_norm1(hs[-3])
        q, k = attn.q_proj(normed).double(), attn.k_proj(normed).double()
        d, heads = attn.head_dim, attn.num_heads
        outs = []
        for i in range(pixel_values.shape[0]):
            rows = torch.stack([torch.softmax(q[i, 0, h * d:(h + 1) * d] @ k[i, :, h * d:(h + 1) * d].T * d ** -0.5, -1)
                                for h in range(heads)])
            keys = k[i].reshape(-1, heads, d).mean(1)
            hidden = hs[-2][i]
            dominant, contextual = split(kept_tokens(hidden.shape[0] - 1, retention), has_cls=True)
            kept = reference_visionzip(hidden, rows, keys, dominant, contextual).to(hidden.dtype)
            outs.append(inner.multi_modal_projector(kept))
        return outs


@pytest.mark.parametrize("retention", [DEFAULT_RETENTION, 0.25])
def test_llava15_matches_the_official_reference(llava15_sdpa, retention):
    model, processor = llava15_sdpa
    stock = image_inputs(processor, [make_image(seed=3)])
    merged = _official_tokens(model, stock["pixel_values"], retention)[0]
    want = spliced_logits(model, stock, merged, model.config.image_token_id)
    try:
        apply_aim(model, processor, AIMConfig.for_method("visionzip", retention=retention))
        inputs = image_inputs(processor, [make_image(seed=3)])
        k = kept_tokens(576, retention)
        assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == k == merged.shape[0]
        with torch.no_grad():
            got = model(**inputs).logits[:, -1]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        stats = model.aim_stats
        assert stats.tokens_kept_per_frame == [k] and stats.visual_tokens_after_merge == k
        assert stats.visual_tokens_before_merge == 576
    finally:
        remove_aim(model, processor)


def test_llava15_batch_equals_single(llava15_sdpa):
    model, processor = llava15_sdpa
    images = [make_image(seed=5), make_image(seed=6)]
    questions = ["What is shown?", "Describe the colors of the objects in this picture in detail please."]
    try:
        apply_aim(model, processor, AIMConfig.for_method("visionzip"))
        batch = image_inputs(processor, images, questions)
        assert (batch["attention_mask"] == 0).any(), "the test needs left padding"
        with torch.no_grad():  # (generate: the lmms-eval plugin test below)
            logits_both = model(**batch).logits[:, -1]
            assert model.aim_stats.tokens_kept_per_frame == [64, 64]
            for i in range(2):
                one = model(**image_inputs(processor, [images[i]], [questions[i]])).logits[:, -1]
                torch.testing.assert_close(logits_both[i:i + 1], one, rtol=1e-4, atol=1e-4)
    finally:
        remove_aim(model, processor)


def test_families_the_official_code_never_ran_are_refused():
    from conftest import qwen_model

    model, processor = qwen_model("tiny-qwen2.5-vl")
    with pytest.raises(UnsupportedModelError, match="VisionZip.*runs only where its official code ran: llava15, "
                                                    "onevision.*neither has a Qwen2-VL / Qwen2.5-VL / Qwen3-VL version"):
        apply_aim(model, processor, AIMConfig.for_method("visionzip"))
    assert not hasattr(model, "aim_stats")


def test_llava15_tower_attention_equals_the_hand_softmax(llava15_sdpa):
    """The family's attention (captured q/k, no eager tower) is the CLS row by hand."""
    from llava.aim.frames import received_attention

    model, processor = llava15_sdpa
    inputs = image_inputs(processor, [make_image(seed=9)])
    inner = model.model
    layers = inner.vision_tower.vision_model.encoder.layers if hasattr(inner.vision_tower, "vision_model") \
        else inner.vision_tower.encoder.layers
    layer = layers[len(layers) - 2]
    with torch.no_grad():
        hs = inner.vision_tower(inputs["pixel_values"], output_hidden_states=True).hidden_states
        normed = layer.layer_norm1(hs[-3])
        q, k = layer.self_attn.q_proj(normed), layer.self_attn.k_proj(normed)
    d, heads = layer.self_attn.head_dim, layer.self_attn.num_heads
    want = sum(torch.softmax(q[0, 0, h * d:(h + 1) * d].double() @ k[0, :, h * d:(h + 1) * d].double().T * d ** -0.5, -1)
               for h in range(heads)) / heads
    torch.testing.assert_close(received_attention(q, k, heads, cls_index=0)[0].double(), want, rtol=1e-5, atol=1e-6)
    assert math.isclose(float(want.sum()), 1.0, rel_tol=1e-9)


def test_the_analyzer_prices_the_attention_read_and_the_merge():
    from llava.analysis.hardware import Hardware
    from llava.analysis.roofline import visionzip_overhead_ops
    from llava.analysis.shapes import VisionShape

    clip = VisionShape("clip", 24, 1024, 4096, 16, 577, class_token=True)
    hw = Hardware("h", 1e12, 1e11)
    ops = {op.name: op for op in visionzip_overhead_ops(clip, 64, 1, hw)}
    n, D, d = 576, 1024, 64
    assert ops["visionzip.attention"].ops == 2 * 577 * D + 5 * 16 * 577 + 16 * n + 577 * D
    r, c = n - 53, 10  # 54 dominant = CLS + 53 patches
    assert ops["visionzip.merge"].ops == 3 * r * d + 2 * (r - c) * c * d + (r - c) * c + (r - c) * D + c * D
    eight = visionzip_overhead_ops(clip, 64, 8, hw)
    assert [op.ops for op in eight] == pytest.approx([8 * op.ops for op in ops.values()])


def test_front_ends_take_the_budget(capsys, tmp_path):
    """run, the eval model_args and flops take visionzip with its budget (retention) and refuse
    AIM's layers."""
    import json

    from llava.cli import main
    from llava.errors import EvalArgumentError
    from llava.eval.args import aim_config_from_model_args

    path = tmp_path / "image.png"
    make_image().save(path)
    assert main(["run", "--method", "visionzip", "--retention", "0.25", "--model", "tiny-llava-1.5", "--image",
                 str(path), "--max-new-tokens", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["aim"]["method"] == "visionzip" and report["visual_tokens_after_merge"] == 144
    assert report["layer_seq_lens"][0] == report["prompt_tokens"]  # 144 placeholders, all real
    assert main(["run", "--method", "visionzip", "--l1", "2", "--l2", "4"]) == 2
    assert "--l1, --l2 do not apply" in capsys.readouterr().err
    assert aim_config_from_model_args({"method": "visionzip"}, 32) == AIMConfig.for_method("visionzip")
    assert aim_config_from_model_args({"method": "visionzip", "retention": "0.25"}, 32).retention == 0.25
    with pytest.raises(EvalArgumentError, match="do not apply"):
        aim_config_from_model_args({"method": "visionzip", "l1": 3, "l2": 5}, 32)
    assert main(["flops", "--method", "visionzip", "--llm", "vicuna-7b", "--vision", "clip-vit-l-336", "--frames", "1",
                 "--tokens-per-frame", "576", "--text-tokens", "60", "--json"]) == 0
    flops = json.loads(capsys.readouterr().out)
    assert flops["tokens_per_frame_kept"] == 64 and flops["tokens_per_layer"] == [124] * 32
    assert flops["aim_overhead_tflops"] > 0


def test_llava15_cache_and_mask_mode_agree(llava15_sdpa):
    """generate with the cache equals generate without it (the image re-encoded each step), and the
    mask reference equals removal (nothing is pruned in the LLM; the count fills every placeholder)."""
    model, processor = llava15_sdpa
    image = make_image(seed=8)
    run = lambda **kw: model.generate(**image_inputs(processor, [image]), max_new_tokens=3, min_new_tokens=3,  # noqa: E731
                                      do_sample=False, **kw)
    try:
        outs = {}
        for mode in ("remove", "mask"):
            apply_aim(model, processor, AIMConfig.for_method("visionzip", pruning_mode=mode))
            with torch.no_grad():
                outs[mode] = run(use_cache=True)
                if mode == "remove":
                    assert torch.equal(outs[mode], run(use_cache=False))
                    assert int((outs[mode] == model.config.image_token_id).sum()) == 64  # k placeholders
        assert torch.equal(outs["remove"], outs["mask"])
    finally:
        remove_aim(model, processor)


def test_lmms_eval_plugin_batch_equals_single():
    """Through the lmms-eval plugin on the tiny LLaVA-1.5: a batch of two image requests gives
    each one's answer alone, with its efficiency figures."""
    pytest.importorskip("lmms_eval")
    from lmms_eval.api.instance import Instance

    from llava.eval.lmms_model import LlavaAIM

    gen = {"max_new_tokens": 5, "temperature": 0, "until": ["\n\n"]}
    docs = [{"image": make_image(seed=21)}, {"image": make_image(seed=22)}]

    def request(doc_id, context):
        return Instance("generate_until", (context, dict(gen), lambda doc: [doc["image"]], doc_id, "t", "test"),
                        idx=0, metadata={"task": "t", "doc_id": doc_id, "repeats": 1})

    def plugin(**args):
        model = LlavaAIM(pretrained="tiny-llava-1.5", device="cpu", torch_dtype="float32", method="visionzip", **args)
        model.task_dict = {"t": {"test": docs}}
        return model

    requests = [request(0, "What is shown?"), request(1, "Describe the colors of this picture in detail, please.")]
    alone = plugin().generate_until(requests)
    together = plugin(batch_size=2).generate_until(requests)
    assert [r.text for r in together] == [r.text for r in alone]
    assert [r.token_counts.batch_size for r in together] == [2, 2]
    for a, t in zip(alone, together):
        assert t.token_counts.visual_tokens_after_merge == a.token_counts.visual_tokens_after_merge == 64
        assert t.token_counts.sum_tokens_over_layers == a.token_counts.sum_tokens_over_layers


def test_plan_finds_the_largest_budget_and_refuses_other_families(capsys):
    import json

    from llava.analysis.roofline import analyze
    from llava.cli import main

    assert main(["plan", "--method", "visionzip", "--speedup", "2", "--llm", "qwen2.5-vl-7b"]) == 2
    assert "runs only where its official code ran: llava15, onevision" in capsys.readouterr().err
    assert main(["plan", "--method", "visionzip", "--speedup", "3"]) == 0  # LLaVA-OneVision-7B, 32 frames
    out = capsys.readouterr().out
    assert "(81 per frame)" in out and "--method visionzip --retention 0.4133" in out and "depends" not in out
    args = ["--llm", "vicuna-7b", "--frames", "1", "--text-tokens", "60", "--vision", "clip-vit-l-336"]
    assert main(["plan", "--method", "visionzip", "--speedup", "3", "--json"] + args) == 0
    report = json.loads(capsys.readouterr().out)["choice"]
    n = report["tokens_per_frame_kept"]
    assert round(report["retention"] * 576) == n and report["speedup"] >= 3

    def speedup(kept):
        r = analyze("vicuna-7b", frames=1, tokens_per_frame=576, text_tokens=60, vision="clip-vit-l-336",
                    method="visionzip", retention=kept / 576)
        return r.without_aim().prefill_time_s / r.prefill_time_s

    assert speedup(n) == pytest.approx(report["speedup"]) and speedup(n + 1) < 3


# -- SigLIP / LLaVA-OneVision: HoliTom's port (cokeshao/HoliTom @ e9b2972) -------------------------
def reference_bilinear_half(grid):
    """(rows, cols, ...) float64 -> (ceil(rows/2), ceil(cols/2), ...): the 2x2 bilinear resize the
    port's get_2dPool applies (half-pixel centres, edges clamped), one axis after the other."""
    def axis(values, size):
        out_size = -(-size // 2)
        scale = size / out_size
        out = []
        for o in range(out_size):
            src = max((o + 0.5) * scale - 0.5, 0.0)
            i0 = min(int(math.floor(src)), size - 1)
            i1 = min(i0 + 1, size - 1)
            w = src - i0
            out.append(values[i0] * (1 - w) + values[i1] * w)
        return torch.stack(out)

    rows = axis(grid, grid.shape[0])
    return axis(rows.transpose(0, 1), grid.shape[1]).transpose(0, 1)


def reference_visionzip_siglip(features, query, key, heads, spatial_tokens):
    """One frame, float64 loops, as the port: ``features`` (N, C) the projected SigLIP features of
    a side x side grid, ``query`` / ``key`` (N, heads*d) the feature layer's projections. The
    attention each token receives is the mean over heads and over all queries of the softmax
    (siglip_encoder.py: attentions[-1].mean(1).mean(1)), the keys are the mean over heads
    (raw_key_states.mean(1)); features, attention and keys are pooled 2x2 (get_2dPool); then
    int(S*54/64) dominant by attention and the rest contextual (llava_arch.py)."""
    n = features.shape[0]
    side = math.isqrt(n)
    d = query.shape[1] // heads
    q, k = query.double(), key.double()
    received = torch.zeros(n, dtype=torch.float64)
    for h in range(heads):
        for i in range(n):  # query i's softmax row, added to what each key receives
            received += torch.softmax(q[i, h * d:(h + 1) * d] @ k[:, h * d:(h + 1) * d].T * d ** -0.5, -1) / (heads * n)
    keys = sum(k[:, h * d:(h + 1) * d] for h in range(heads)) / heads
    pool = lambda x: reference_bilinear_half(x.reshape(side, side, -1)).reshape(-1, x.shape[-1])  # noqa: E731
    hidden = pool(features.double())
    attention = pool(received[:, None])[:, 0]
    metric = pool(keys)
    t = hidden.shape[0]
    dominant = int(spatial_tokens * 54 / 64)
    contextual = spatial_tokens - dominant
    ranked = sorted(range(t), key=lambda j: (-float(attention[j]), j))
    chosen = set(ranked[:dominant])
    out = [hidden[j] for j in range(t) if j in chosen]
    rest = [j for j in range(t) if j not in chosen]
    normed = [metric[j] / metric[j].norm() for j in rest]
    step = max(1, len(rest) // contextual)
    targets = list(range(0, len(rest), step))[:contextual]
    groups = {tt: [] for tt in targets}
    for pos, j in enumerate(rest):
        if pos in targets:
            continue
        sims = [float(normed[pos] @ normed[tt]) for tt in targets]
        groups[targets[max(range(len(targets)), key=lambda i: (sims[i], -i))]].append(hidden[j])
    for tt in targets:
        g = groups[tt]
        out.append(hidden[rest[tt]] + (sum(g) / len(g) if g else 0))
    return torch.stack(out)


def _siglip_pipeline(features, query, key, heads, retention):
    """The harness's path for one video: the family's attention and keys (llava.aim.frames), its
    2x2 bilinear pooling of features, attention and keys, then the registry function."""
    from llava.aim.frames import FramesIn, head_mean_keys, received_attention

    f, n, _ = features.shape
    side = math.isqrt(n)
    half = -(-side // 2)

    def pool(x):
        grid = x.reshape(f, side, side, -1).permute(0, 3, 1, 2)
        return torch.nn.functional.interpolate(grid, size=(half, half), mode="bilinear").permute(0, 2, 3, 1).reshape(f, half * half, -1)

    attention = pool(received_attention(query, key, heads)[..., None])[..., 0]
    frames = FramesIn(AIMConfig.for_method("visionzip", retention=retention), pool(features), (half, half),
                      attention, pool(head_mean_keys(key, heads)))
    return visionzip(frames)


def test_reference_pooling_is_the_bilinear_resize():
    grid = torch.randn(7, 7, 3, dtype=torch.float64)
    want = torch.nn.functional.interpolate(grid.permute(2, 0, 1)[None], size=(4, 4), mode="bilinear")[0].permute(1, 2, 0)
    torch.testing.assert_close(reference_bilinear_half(grid), want)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), side=st.integers(3, 9), data=st.data())
def test_siglip_path_equals_the_port_reference(seed, side, data):
    g = torch.Generator().manual_seed(seed)
    n, heads, d, c = side * side, 2, 4, 5
    t = (-(-side // 2)) ** 2
    kept = data.draw(st.integers(1, t))
    features = torch.randn(2, n, c, generator=g)
    query, key = torch.randn(2, n, heads * d, generator=g), torch.randn(2, n, heads * d, generator=g)
    out = _siglip_pipeline(features, query, key, heads, kept / t)
    assert out.tokens.shape[0] == 2 * kept
    for f in range(2):
        want = reference_visionzip_siglip(features[f], query[f], key[f], heads, kept)
        torch.testing.assert_close(out.tokens[f * kept:(f + 1) * kept].double(), want, rtol=1e-5, atol=1e-5)
        assert (out.origin[f * kept:(f + 1) * kept] // t == f).all()


def _ov_official_tokens(inner, pixels, spatial_tokens):
    """The port's tokens for one video on the model's own tower: the feature layer's q/k by hand,
    the projected features, then the float64 reference (pooling included)."""
    tower = inner.vision_tower
    layers = getattr(tower, "vision_model", tower).encoder.layers
    hs = tower(pixels, output_hidden_states=True).hidden_states
    layer = layers[-1]  # hidden_states[-1] is its output (vision_feature_layer -1), as the port's last layer
    normed = layer.layer_norm1(hs[-2])
    q, k = layer.self_attn.q_proj(normed), layer.self_attn.k_proj(normed)
    projected = inner.multi_modal_projector(hs[-1])
    return torch.cat([reference_visionzip_siglip(projected[f], q[f], k[f], layer.self_attn.num_heads, spatial_tokens)
                      for f in range(pixels.shape[0])])


def test_onevision_matches_the_port_reference(ov_sdpa):
    """Tiny LLaVA-OneVision: the LLM receives the port's tokens (then the newline), 20 per frame
    at retention 20/196 (the script's budget 0.10)."""
    model, processor = ov_sdpa
    frames, s = 2, OV_SPATIAL_TOKENS[0]
    stock = video_inputs(processor, [make_video(frames, seed=7)])
    with torch.no_grad():
        merged = _ov_official_tokens(model.model, stock["pixel_values_videos"].flatten(0, 1), s)
    merged = torch.cat([merged.to(model.model.image_newline.dtype), model.model.image_newline[None]])
    want = spliced_logits(model, stock, merged, model.config.video_token_id)
    try:
        apply_aim(model, processor, AIMConfig.for_method("visionzip", retention=s / 196))
        inputs = video_inputs(processor, [make_video(frames, seed=7)])
        assert int((inputs["input_ids"] == model.config.video_token_id).sum()) == frames * s + 1
        with torch.no_grad():
            got = model(**inputs).logits[:, -1]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        assert model.aim_stats.tokens_kept_per_frame == [s] * frames
    finally:
        remove_aim(model, processor)


def test_onevision_batch_equals_single(ov_sdpa):
    model, processor = ov_sdpa
    media = [make_video(2, seed=3), make_video(2, seed=4)]
    questions = ["What is shown?", "Describe the colors of the objects in this video in detail please."]
    try:
        apply_aim(model, processor, AIMConfig.for_method("visionzip", retention=0.25))
        batch = video_inputs(processor, media, questions)
        assert (batch["attention_mask"] == 0).any(), "the test needs left padding"
        with torch.no_grad():
            both = model(**batch).logits[:, -1]
            for i in range(2):
                one = model(**video_inputs(processor, [media[i]], [questions[i]])).logits[:, -1]
                torch.testing.assert_close(both[i:i + 1], one, rtol=1e-4, atol=1e-4)
    finally:
        remove_aim(model, processor)


def test_lmms_eval_onevision_batch_of_two_equals_each_alone(tmp_path):
    """Through the lmms-eval plugin (model_args method=visionzip): two videos in one batch answer
    as each alone, with the same token counts."""
    pytest.importorskip("lmms_eval")
    from test_eval_plugin import _gen_request, _plugin, _texts

    from llava.eval import synthetic
    from llava.eval.lmms_model import LlavaOneVisionAIM

    clips = [str(synthetic.ensure_video(synthetic.clip_name(i), tmp_path)) for i in range(2)]
    single = _plugin(LlavaOneVisionAIM, clips, method="visionzip", retention=0.25)
    double = _plugin(LlavaOneVisionAIM, clips, batch_size=2, method="visionzip", retention=0.25)
    requests = [_gen_request(0), _gen_request(1, context="Which way does it move?")]
    alone, together = single.generate_until(requests), double.generate_until(requests)
    assert _texts(together) == _texts(alone)
    assert [r.token_counts.batch_size for r in together] == [2, 2]
    for a, t in zip(alone, together):
        assert t.token_counts.visual_tokens_after_merge == a.token_counts.visual_tokens_after_merge
        assert t.token_counts.input_tokens == a.token_counts.input_tokens


def test_stage_preference_is_the_first_the_family_offers():
    """A video reduction may list stages in order of preference; VisionZip's runs on the pooled
    frames where the family pools (OneVision) and on the vision features on LLaVA-1.5."""
    from llava.aim import registry
    from llava.errors import AIMConfigError
    from llava.model.families.llava15 import Llava15Adapter
    from llava.model.families.onevision import OneVisionAdapter

    entry = lookup("visionzip", "reduction")
    assert registry.run_stage(entry, Llava15Adapter.reduction_stages) == "vision"
    assert registry.run_stage(entry, OneVisionAdapter.reduction_stages) == "projected"
    assert registry.run_stage(entry, ()) is None
    for bad in ((), ("projected", "pooled")):
        with pytest.raises(AIMConfigError, match="stage must be one of"):
            registry.register("bad_stage", "reduction", entry.fn, needs=("video",), stage=bad, bound=entry.bound,
                              nominal=entry.nominal)
    assert "bad_stage" not in registry.REGISTRY


def test_the_analyzer_prices_the_siglip_port():
    """Without CLS: the attention every query pays (N x N per head), the pooling of attention and
    keys, then ranking and merging the T pooled tokens of the LLM's width."""
    from llava.analysis.hardware import Hardware
    from llava.analysis.roofline import analyze, visionzip_overhead_ops
    from llava.analysis.shapes import VisionShape

    siglip = VisionShape("siglip", 26, 1152, 4304, 16, 729, class_token=False)
    hw = Hardware("h", 1e12, 1e11)
    n, D, h, d, t, C = 729, 1152, 16, 72, 196, 3584
    ops = {op.name: op.ops for op in visionzip_overhead_ops(siglip, 50, 1, hw, tokens_per_frame=t, channels=C)}
    assert ops["visionzip.attention"] == 2 * n * n * D + 5 * h * n * n + h * n * n + n * D + 4 * t * (1 + d)
    r, c = t - 42, 8  # 50 = 42 dominant + 8 contextual
    assert ops["visionzip.merge"] == 3 * r * d + 2 * (r - c) * c * d + (r - c) * c + (r - c) * C + c * C
    report = analyze("qwen2-7b", frames=32, tokens_per_frame=196, text_tokens=100, vision="siglip-so400m",
                     method="visionzip", retention=50 / 196)
    assert report.tokens_per_layer[0] == 100 + 32 * 50
