"""LLaVA-PruMerge and PruMerge+ (llava.aim.prumerge and the family adapters).

The pure functions are checked against a slow reference written from the official algorithm
(a loop over kept tokens, numpy percentiles); the models against a reference that splices
exactly the k + 1 PruMerge tokens into the prompt and runs the stock model, which is what the
official LLaVA code's variable-length splice feeds the LLM.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import image_inputs, make_image, make_video, spliced_logits, video_inputs
from llava import AIMConfig, apply_aim
from llava.aim.prumerge import (
    adaptive_keep_count,
    cls_attention,
    iqr_outlier_count,
    merge_kept,
    nominal_tokens,
    prumerge_frames,
    select,
    spatial_stride,
    token_bound,
)
from llava.errors import AIMConfigError
from llava.model.runtime import remove_aim


# -- a slow reference of the official algorithm ---------------------------------------------
def reference_prumerge(features, keys, attn, plus):
    """One frame, as the official token_prune_merge_advanced(_plus): numpy IQR, topk, a loop
    over kept tokens; ties resolved by index (the official order among ties is undefined)."""
    a = attn.to(torch.float32).numpy()
    q1, q3 = np.percentile(a.astype(np.float64), 25), np.percentile(a.astype(np.float64), 75)
    outliers = int((a > q3 + 1.5 * (q3 - q1)).sum())
    n = len(a)
    ratio = outliers / n
    order = sorted(range(n), key=lambda i: (-float(a[i]), i))
    kept = order[: int(n * ratio)]
    if plus:
        step = int(1 / max(ratio, 1 / n))
        kept += [x for x in range(0, n - 1, max(1, int(step / 3))) if x not in kept]
    rest_all = [i for i in range(n) if i not in kept]
    x = features.double()
    unit = torch.nn.functional.normalize(keys.double(), dim=-1)
    out = []
    for i in kept:
        others = [j for j in range(n) if j != i]
        sims = [(float(unit[i] @ unit[j]), j) for j in others]
        cluster = [j for _, j in sorted(sims, key=lambda t: (-t[0], t[1]))[: min(32, n - 1)]]
        out.append(x[i] + sum(float(a[j]) * x[j] for j in cluster))
    out.append(sum((float(a[j]) * x[j] for j in rest_all), torch.zeros_like(x[0])))
    return torch.stack(out), kept


def _frame(seed, n=64, c=6, d=5, salient=8):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, c, generator=g, dtype=torch.float64)
    keys = torch.randn(n, d, generator=g, dtype=torch.float64)
    logits = torch.randn(n, generator=g, dtype=torch.float64)
    logits[torch.randperm(n, generator=g)[:salient]] += 4  # a few salient patches: IQR outliers
    return feats, keys, torch.softmax(logits, 0).float()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(40, 120), salient=st.integers(0, 20), plus=st.booleans())
def test_prumerge_matches_the_reference(seed, n, salient, plus):
    feats, keys, attn = _frame(seed, n=n, salient=salient)
    result = prumerge_frames(feats[None], keys[None], attn[None], plus)
    ref, kept = reference_prumerge(feats, keys, attn, plus)
    count = int(result.counts[0])
    assert result.kept[0].tolist() == kept and count == len(kept) + 1
    torch.testing.assert_close(result.tokens[0, :count], ref, rtol=1e-9, atol=1e-9)
    assert bool((result.tokens[0, count:] == 0).all()) and count <= token_bound(n, plus)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(4, 800))
def test_iqr_outliers_match_numpy_percentiles(seed, n):
    g = torch.Generator().manual_seed(seed)
    a = torch.softmax(torch.randn(n, generator=g) * 3, 0)
    x = a.numpy().astype(np.float64)
    q1, q3 = np.percentile(x, 25), np.percentile(x, 75)
    assert iqr_outlier_count(a) == int((x > q3 + 1.5 * (q3 - q1)).sum())


@settings(max_examples=200, deadline=None)
@given(n=st.integers(4, 800), data=st.data())
def test_prumerge_never_exceeds_its_bound(n, data):
    """Outliers lie above Q3, and at most N - 1 - floor(0.75 (N - 1)) values do: the processor's
    reservation always suffices, whatever the attention."""
    values = data.draw(st.lists(st.floats(0, 1, allow_nan=False), min_size=n, max_size=n))
    outliers = iqr_outlier_count(torch.tensor(values, dtype=torch.float64))
    assert adaptive_keep_count(n, outliers) + 1 <= token_bound(n, False)
    assert token_bound(576, False) == 145 and token_bound(729, False) == 183 and token_bound(576, True) == 577


def test_official_float_count_artifact():
    """int(N * (outliers / N)) as the official code computes it: exact for N = 576, one short
    for 49 outlier counts when N = 729 (e.g. 16 outliers keep 15)."""
    assert all(adaptive_keep_count(576, c) == c for c in range(577))
    assert adaptive_keep_count(729, 16) == 15 and adaptive_keep_count(729, 17) == 17
    assert sum(adaptive_keep_count(729, c) != c for c in range(730)) == 49


def test_spatial_samples_and_stride():
    assert spatial_stride(576, 32) == 6  # ratio 1/18 -> step 18 -> stride 6 (96 samples)
    assert spatial_stride(576, 200) == 1 and spatial_stride(576, 0) == 192  # no outlier: as for one
    attn = torch.full((576,), 1 / 576)
    attn[[5, 100, 300]] = 0.2  # three outliers, kept first, highest attention first
    attn[300] = 0.3
    kept = select(attn, plus=True)
    assert kept[:3].tolist() == [300, 5, 100]
    samples = kept[3:].tolist()
    assert samples == [i for i in range(0, 575, 64) if i not in (5, 100, 300)]


def test_merge_kept_by_hand():
    """4 patches, keys: 0 ~ 1 (close), 2 ~ 3; keep 0: it absorbs its CLUSTER nearest (all 3
    others when N - 1 < 32), attention-weighted, unnormalised; the extra token sums the rest."""
    feats = torch.eye(4, dtype=torch.float64)
    keys = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]], dtype=torch.float64)
    attn = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    out = merge_kept(feats, keys, attn, torch.tensor([0]))
    torch.testing.assert_close(out[0], torch.tensor([1.0, 0.3, 0.2, 0.1], dtype=torch.float64))
    torch.testing.assert_close(out[1], torch.tensor([0.0, 0.3, 0.2, 0.1], dtype=torch.float64))
    none = merge_kept(feats, keys, attn, torch.tensor([], dtype=torch.long))
    assert none.shape == (1, 4)  # no patch kept: only the extra token


def test_cls_attention_drops_cls_after_the_softmax():
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[[2.0, 0.0], [0.0, 0.0], [1.0, 0.0]]])
    full = torch.softmax(torch.tensor([2.0, 0.0, 1.0]) * 2 ** -0.5, 0)
    torch.testing.assert_close(cls_attention(q, k, drop_first=True)[0], full[1:])
    torch.testing.assert_close(cls_attention(q, k)[0], full)


def test_nominal_counts():
    assert nominal_tokens(576, False) == 73 and nominal_tokens(576, True) == 145 and nominal_tokens(729, False) == 92


# -- on the models: against the variable-length splice -----------------------------------------
def _llava15_reference(model, inputs, plus):
    tower = model.model.vision_tower
    layers = getattr(tower, "vision_model", tower).encoder.layers
    with torch.no_grad():
        hidden = tower(inputs["pixel_values"], output_hidden_states=True).hidden_states[-2]
        last = layers[-1]
        normed = last.layer_norm1(hidden)
        q, k = last.self_attn.q_proj(normed), last.self_attn.k_proj(normed)
        attn = torch.softmax(q[:, :1] @ k.transpose(1, 2) * k.shape[-1] ** -0.5, -1)[:, 0, 1:]
        res = prumerge_frames(hidden[:, 1:], k[:, 1:], attn, plus)
        count = int(res.counts[0])
        return model.model.multi_modal_projector(res.tokens[:, :count])[0]


@pytest.mark.parametrize("method", ["prumerge", "prumerge_plus"])
def test_llava15_matches_the_spliced_reference(llava15_sdpa, method):
    model, processor = llava15_sdpa
    try:
        stock_inputs = image_inputs(processor, [make_image()])
        merged = _llava15_reference(model, stock_inputs, plus=method == "prumerge_plus")
        want = spliced_logits(model, stock_inputs, merged, model.config.image_token_id)
        apply_aim(model, processor, AIMConfig.for_method(method))
        inputs = image_inputs(processor, [make_image()])
        bound = token_bound(576, method == "prumerge_plus")
        assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == bound
        with torch.no_grad():
            got = model(**inputs).logits[:, -1]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        stats = model.aim_stats
        assert stats.tokens_kept_per_frame == [merged.shape[0]] and stats.visual_tokens_after_merge == merged.shape[0]
        text = inputs["input_ids"].shape[1] - bound
        assert stats.layer_seq_lens == [text + merged.shape[0]] * 8  # fillers never enter layer 0
    finally:
        remove_aim(model, processor)


def test_onevision_matches_the_spliced_reference(ov_sdpa):
    """Unpooled 729 SigLIP features per frame, mean query of the feature layer, no spatial
    samples (the official SigLIP PruMerge+), then the projector with no 2x2 pooling."""
    model, processor = ov_sdpa
    inner = model.model
    try:
        stock = video_inputs(processor, [make_video(3)])
        tower = inner.vision_tower
        layers = getattr(tower, "vision_model", tower).encoder.layers
        pix = stock["pixel_values_videos"].flatten(0, 1)
        with torch.no_grad():
            hs = tower(pix, output_hidden_states=True).hidden_states
            normed = layers[-1].layer_norm1(hs[-2])
            q, k = layers[-1].self_attn.q_proj(normed), layers[-1].self_attn.k_proj(normed)
            attn = torch.softmax((q.mean(1, keepdim=True) @ k.transpose(1, 2)) * k.shape[-1] ** -0.5, -1)[:, 0]
            res = prumerge_frames(hs[-1], k, attn, plus=False)
            frames = [inner.multi_modal_projector(res.tokens[f, : int(res.counts[f])]) for f in range(3)]
            merged = torch.cat(frames + [inner.image_newline[None]])
        want = spliced_logits(model, stock, merged, model.config.video_token_id)
        for method in ("prumerge", "prumerge_plus"):  # identical here: no samples on SigLIP
            apply_aim(model, processor, AIMConfig.for_method(method))
            inputs = video_inputs(processor, [make_video(3)])
            assert int((inputs["input_ids"] == model.config.video_token_id).sum()) == 3 * 183 + 1
            with torch.no_grad():
                got = model(**inputs).logits[:, -1]
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            assert model.aim_stats.tokens_kept_per_frame == res.counts.tolist()
    finally:
        remove_aim(model, processor)


@pytest.mark.parametrize("name", ["ov", "llava15"])
def test_generate_removal_equals_mask_and_batch_equals_single(name, ov_sdpa, llava15_sdpa):
    """Each sample gets its own data-dependent count: its fillers go, its positions close up
    (left padding of different widths), as when it runs alone; the masked reference agrees."""
    model, processor = ov_sdpa if name == "ov" else llava15_sdpa
    if name == "ov":
        media = [make_video(3, seed=3), make_video(3, seed=4)]
        build = lambda m, q: video_inputs(processor, m, q)  # noqa: E731
    else:
        media = [make_image(seed=5), make_image(seed=6)]
        build = lambda m, q: image_inputs(processor, m, q)  # noqa: E731
    questions = ["What is shown?", "Describe the colors of the objects in this picture in detail please."]
    greedy = lambda inputs: model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)  # noqa: E731
    try:
        tokens = {}
        for mode in ("remove", "mask"):
            apply_aim(model, processor, AIMConfig.for_method("prumerge_plus", pruning_mode=mode))
            with torch.no_grad():
                tokens[mode] = greedy(build(media[:1], questions[:1]))
        assert torch.equal(tokens["remove"], tokens["mask"])
        apply_aim(model, processor, AIMConfig.for_method("prumerge_plus"))
        batch = build(media, questions)
        assert (batch["attention_mask"] == 0).any(), "the test needs left padding"
        with torch.no_grad():
            both = greedy(batch)
            counts = model.aim_stats.tokens_kept_per_frame
            for i in range(2):
                one = greedy(build([media[i]], [questions[i]]))
                assert both[i, -5:].tolist() == one[0, -5:].tolist()
        assert len(counts) == (6 if name == "ov" else 2)
    finally:
        remove_aim(model, processor)


def test_prumerge_config_rules():
    cfg = AIMConfig.for_method("prumerge")
    assert (cfg.retention, cfg.l1, cfg.l2, cfg.prumerging, cfg.enabled) == (1.0, None, None, True, True)
    with pytest.raises(AIMConfigError, match="retention must be 1.0"):
        AIMConfig.for_method("prumerge", retention=0.25)
    with pytest.raises(AIMConfigError, match="before the LLM only"):
        AIMConfig(method="prumerge_plus", retention=1.0)  # l1/l2 "auto"


def test_flops_and_plan_accept_prumerge(capsys):
    from llava.cli import main

    assert main(["flops", "--json", "--method", "prumerge_plus", "--llm", "llama-7b", "--frames", "1",
                 "--tokens-per-frame", "576"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tokens_per_frame_kept"] == 145 and report["pruning_layers"] == []
    assert main(["flops", "--json", "--method", "prumerge", "--kept-tokens", "40"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tokens_per_frame_kept"] == 40 and report["tokens_per_layer"][0] == 32 * 40 + 100
    assert main(["flops", "--json", "--method", "prumerge"]) == 0  # OneVision: 729 unpooled patches, 1/8
    assert json.loads(capsys.readouterr().out)["tokens_per_frame_kept"] == 92
    assert main(["plan", "--method", "prumerge", "--speedup", "2"]) == 0
    assert "prumerge" in capsys.readouterr().out
    assert main(["plan", "--method", "prumerge", "--speedup", "1000"]) == 2


def test_run_cli_and_bench_case(capsys, tmp_path):
    from llava.bench.cases import method_case
    from llava.cli import main

    assert main(["run", "--method", "prumerge_plus", "--model", "tiny-llava-1.5", "--image",
                 str(make_image_file(tmp_path)), "--max-new-tokens", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["aim"]["method"] == "prumerge_plus" and report["visual_tokens_before_merge"] == 576
    assert 1 <= report["visual_tokens_after_merge"] <= 577
    assert report["layer_seq_lens"][0] == report["prompt_tokens"] - 577 + report["visual_tokens_after_merge"]
    assert main(["run", "--method", "prumerge", "--l1", "2", "--l2", "4"]) == 2
    assert "--l1, --l2 do not apply" in capsys.readouterr().err
    case = method_case("prumerge", 32, 196, 100, 28)
    assert case.visual_tokens == 32 * 92 + 1 and case.cfg.prumerging


def make_image_file(tmp_path):
    path = tmp_path / "image.png"
    make_image().save(path)
    return path


def test_eval_model_args():
    from llava.errors import EvalArgumentError
    from llava.eval.args import aim_config_from_model_args

    cfg = aim_config_from_model_args({"method": "prumerge_plus"}, 32)
    assert cfg == AIMConfig.for_method("prumerge_plus")
    with pytest.raises(EvalArgumentError, match="do not apply"):
        aim_config_from_model_args({"method": "prumerge", "l1": 3, "l2": 5}, 32)
