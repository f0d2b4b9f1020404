"""FastVID (llava.aim.fastvid): the fast version against a slow float64 reference written from
the official code (LunarShen/FastVID a40a109, fastvid_llavaonevision/LLaVA-NeXT/llava/model/
language_model/modeling_qwen2.py, the FastVID block of Qwen2Model.forward), loop by loop.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llava.aim.fastvid import (
    FastVIDParams,
    anchor_counts,
    density_scores,
    fastvid_video,
    frame_budget,
    frame_similarities,
    merge_into_anchors,
    nominal_tokens,
    pool_salience,
    segment_sizes,
    token_bound,
)


# -- a slow reference of the official algorithm ---------------------------------------------
def reference_fastvid(x, s, g, p: FastVIDParams):
    """One video as the official OneVision port computes it, in float64 python loops. Where the
    official code is random (density noise) or undefined (top-k order among ties) or raises
    (counts above what exists), the documented choices of llava.aim.fastvid are used: no noise,
    ties to the lower index, counts capped."""
    x = x.to(torch.float64)
    frames, per_frame, channels = x.shape
    # DySeg: cosine of consecutive frames' global features
    gn = [g[f].double() / g[f].double().norm() for f in range(frames)]
    sim = [float(gn[i] @ gn[i + 1]) for i in range(frames - 1)]
    lowest = sorted(range(frames - 1), key=lambda i: (sim[i], i))[: min(p.segments - 1, frames - 1)]
    cuts = sorted(set(lowest) | {i for i in range(frames - 1) if sim[i] < p.tau})
    bounds = [-1] + cuts + [frames - 1]
    sizes = [bounds[i + 1] - bounds[i] for i in range(len(bounds) - 1)]
    # STPrune budget
    retain = int(per_frame * p.retention)
    salient_n = retain - int(retain * p.context_share)
    context_n = retain - salient_n
    # anchor distribution
    counts = [0] * frames
    offset = 0
    for length in sizes:
        per = context_n * length // ((length + p.anchor_stride - 1) // p.anchor_stride)
        for j in range(length):
            if (length - 1 - j) % p.anchor_stride == 0:
                counts[offset + j] = per
        offset += length
    out = {}
    rest, score = [], []
    for f in range(frames):
        sal = sorted(range(per_frame), key=lambda t: (-float(s[f, t]), t))[:salient_n]
        for t in sal:
            out[f * per_frame + t] = x[f, t]
        rest.append([t for t in range(per_frame) if t not in sal])
        score.append(reference_density(x[f, rest[f]]))

    def merge(anchor_frame, k, pool):
        n_rest = len(rest[anchor_frame])
        ranked = sorted(range(n_rest), key=lambda i: (-score[anchor_frame][i], i))[: min(k, n_rest)]
        anchors = [(anchor_frame * per_frame + rest[anchor_frame][i], x[anchor_frame, rest[anchor_frame][i]]) for i in ranked]
        members = [[] for _ in anchors]
        stacked = torch.stack([a for _, a in anchors])
        for v in pool:
            cos = ((stacked @ v) / (stacked.norm(dim=1) * v.norm())).tolist()
            members[max(range(len(cos)), key=lambda i: (cos[i], -i))].append(v)
        for (origin, a), m in zip(anchors, members):
            w = max(1.0 / (len(m) + 1), p.anchor_weight)
            mean = sum(m) / max(len(m), 1) if m else torch.zeros(channels, dtype=torch.float64)
            out[origin] = w * a + (1 - w) * mean

    # single-frame DTM: frames whose count equals the per-frame context share
    for f in range(frames):
        if counts[f] == context_n and context_n > 0 and rest[f]:
            merge(f, context_n, [x[f, t] for t in rest[f]])
    # multi-frame DTM: anchor frames with more, each over the whole segment's non-salient tokens
    start = 0
    for length in sizes:
        seg = range(start, start + length)
        pool = [x[f, t] for f in seg for t in rest[f]]
        for f in seg:
            if counts[f] > context_n and rest[f]:
                merge(f, counts[start + length - 1], pool)
        start += length
    order = sorted(out)
    return torch.stack([out[o] for o in order]) if order else x.new_zeros(0, channels), order, sizes


def reference_density(xs):
    n, channels = xs.shape
    if n == 0:
        return []
    # row by row: |x_i - x_j| / sqrt(C) for every j
    dist = [((xs - xs[i]) ** 2).sum(dim=1).sqrt().div(math.sqrt(channels)).tolist() for i in range(n)]
    dist_max = max(max(row) for row in dist)
    rho = [math.exp(-sum(d * d for d in sorted(row)[: min(4, n)]) / min(4, n)) for row in dist]
    delta = [min([dist[i][j] for j in range(n) if rho[j] > rho[i]], default=dist_max) for i in range(n)]
    return [d * r for d, r in zip(delta, rho)]


def random_video(frames, per_frame, channels, seed, dtype=torch.float64, repeat_every=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(frames, per_frame, channels, generator=gen, dtype=dtype)
    g = torch.randn(frames, 6, generator=gen, dtype=dtype)
    if repeat_every:  # runs of similar frames, so segments longer than one frame occur
        for f in range(frames):
            if f % repeat_every:
                g[f] = g[f - 1] + 0.05 * torch.randn(6, generator=gen, dtype=dtype)
    s = torch.rand(frames, per_frame, generator=gen, dtype=dtype)
    return x, s, g


def assert_matches_reference(x, s, g, params, atol=1e-9):
    got = fastvid_video(x, s, g, params)
    want, origin, sizes = reference_fastvid(x, s, g, params)
    assert got.segments == sizes
    assert got.origin.tolist() == origin
    torch.testing.assert_close(got.tokens.to(torch.float64), want, atol=atol, rtol=atol)
    return got


# -- the official defaults -------------------------------------------------------------------
def test_defaults_are_the_official_script():
    # fastvid_llavaonevision/scripts/eval.sh lines 6-11 (LunarShen/FastVID a40a109)
    p = FastVIDParams()
    assert (p.retention, p.segments, p.tau, p.context_share, p.anchor_stride, p.anchor_weight) == (0.10, 8, 0.9, 0.4, 4, 0.6)


def test_frame_budget_on_onevision_7b():
    # 196 tokens per frame after OneVision's bilinear pooling: int(19.6) = 19, int(19 * 0.4) = 7
    assert frame_budget(196, 0.10, 0.4) == (12, 7)
    assert frame_budget(196, 0.25, 0.4) == (30, 19)


# -- DySeg -----------------------------------------------------------------------------------
def test_segmentation_cuts_at_the_lowest_similarities_and_below_tau():
    sim = [0.95, 0.5, 0.99, 0.97, 0.96, 0.98]
    assert segment_sizes(sim, 3, 0.9) == [1, 1, 5]  # lowest two: gap 1 (0.5) and gap 0 (0.95)
    assert segment_sizes(sim, 3, 0.5) == [1, 1, 5]  # below tau adds none here
    assert segment_sizes(sim, 3, 0.97) == [1, 1, 3, 2]  # 0.96 < tau adds gap 4
    assert segment_sizes(sim, 1, 0.9) == [2, 5]  # no forced cut; only 0.5 < tau
    assert segment_sizes(sim, 1, 0.0) == [7]


def test_short_video_is_one_segment_per_frame():
    # the official topk(k=c-1) raises on fewer than c frames; capped, every gap is a cut
    assert segment_sizes([0.99, 0.99, 0.99], 8, 0.9) == [1, 1, 1, 1]
    assert segment_sizes([], 8, 0.9) == [1]


def test_segmentation_ties_cut_the_earlier_gap():
    assert segment_sizes([0.95, 0.95, 0.95], 2, 0.9) == [1, 3]


def test_frame_similarities_are_cosines():
    g = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    torch.testing.assert_close(frame_similarities(g), torch.tensor([2**-0.5, 2**-0.5]))


# -- anchor distribution ---------------------------------------------------------------------
def test_anchor_frames_are_counted_back_from_the_segment_end():
    assert anchor_counts([1, 4, 6], 7, 4) == [7, 0, 0, 0, 28, 0, 21, 0, 0, 0, 21]


def test_anchor_count_equal_to_the_share_merges_within_the_frame():
    # official quirk kept: context 1, stride 2, a 3-frame segment: 1 * 3 // 2 = 1 anchor per
    # anchor frame, the same as a one-frame segment, so those frames merge their own tokens only
    assert anchor_counts([3], 1, 2) == [1, 0, 1]
    x, s, g = random_video(3, 10, 4, seed=3)
    params = FastVIDParams(retention=0.3, segments=1, tau=-1.0, context_share=0.34, anchor_stride=2)
    assert frame_budget(10, 0.3, 0.34) == (2, 1)
    got = assert_matches_reference(x, s, g, params)
    merged_frame1 = got.sources.view(3, 10)[1]
    assert (merged_frame1 == -1).sum() == 8  # frame 1 has no anchor and no segment-wide merge


# -- density peaks and merging ---------------------------------------------------------------
def test_density_scores_equal_the_reference():
    x = torch.randn(3, 9, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for f in range(3):
        torch.testing.assert_close(density_scores(x[f : f + 1])[0], torch.tensor(reference_density(x[f]), dtype=torch.float64))


def test_density_of_a_unique_peak_uses_the_frame_largest_distance():
    x = torch.tensor([[[0.0], [0.1], [0.2], [5.0], [5.3]]], dtype=torch.float64)
    score = density_scores(x)[0]
    assert int(score.argmax()) in (0, 1, 2)  # the dense cluster's peak outranks the far pair


def test_merge_weight_is_at_least_beta():
    pool = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]], dtype=torch.float64)
    anchors = pool[:, :1]
    merged, assign = merge_into_anchors(pool, anchors, 0.6)
    assert assign.tolist() == [[0, 0, 0]]
    # 3 members: 1/(3+1) < 0.6, so 0.6 * anchor + 0.4 * mean(members)
    torch.testing.assert_close(merged[0, 0], 0.6 * pool[0, 0] + 0.4 * pool[0].mean(0))


# -- the whole method against the reference --------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    frames=st.integers(1, 9),
    per_frame=st.integers(4, 16),
    channels=st.integers(2, 6),
    retention=st.floats(0.05, 1.0),
    segments=st.integers(1, 9),
    tau=st.floats(-1.0, 1.0),
    context_share=st.floats(0.0, 1.0),
    stride=st.integers(1, 5),
    beta=st.floats(0.0, 1.0),
    repeat=st.integers(0, 4),
    seed=st.integers(0, 2**16),
)
def test_fast_equals_reference_on_random_videos(frames, per_frame, channels, retention, segments, tau,
                                                context_share, stride, beta, repeat, seed):
    x, s, g = random_video(frames, per_frame, channels, seed, repeat_every=repeat)
    params = FastVIDParams(retention, segments, tau, context_share, stride, beta)
    got = assert_matches_reference(x, s, g, params)
    assert got.tokens.shape[0] <= token_bound(frames, per_frame, retention)


def test_fast_equals_reference_at_the_official_defaults():
    x, s, g = random_video(16, 49, 8, seed=7, repeat_every=5)
    got = assert_matches_reference(x, s, g, FastVIDParams())
    assert len(got.segments) >= 8
    salient, _ = frame_budget(49, 0.10, 0.4)
    assert got.tokens.shape[0] <= token_bound(16, 49, 0.10)


def test_float32_input_selects_as_float64_and_keeps_its_dtype():
    x, s, g = random_video(8, 36, 16, seed=11, dtype=torch.float32, repeat_every=3)
    params = FastVIDParams(retention=0.3)
    got = fastvid_video(x, s, g, params)
    assert got.tokens.dtype == torch.float32
    _, origin, _ = reference_fastvid(x, s, g, params)
    assert got.origin.tolist() == origin


def test_deterministic_without_density_noise():
    x, s, g = random_video(8, 25, 8, seed=2, repeat_every=4)
    a, b = fastvid_video(x, s, g), fastvid_video(x, s, g)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.origin, b.origin)


def test_sources_point_at_kept_tokens_of_the_same_segment():
    x, s, g = random_video(10, 25, 8, seed=5, repeat_every=5)
    params = FastVIDParams(retention=0.4, segments=2, tau=-1.0)
    got = fastvid_video(x, s, g, params)
    seg_of_frame = torch.repeat_interleave(torch.arange(len(got.segments)), torch.tensor(got.segments))
    merged = got.sources >= 0
    assert merged.all()  # every token lands in some output (none dropped outright)
    frame_in = torch.arange(10 * 25) // 25
    frame_out = got.origin[got.sources] // 25
    assert torch.equal(seg_of_frame[frame_in], seg_of_frame[frame_out])
    assert torch.equal(got.sources[got.origin], torch.arange(got.origin.numel()))


def test_nominal_is_within_the_bound():
    for frames in (1, 8, 32, 64):
        for retention in (0.1, 0.25):
            n = nominal_tokens(frames, 196, FastVIDParams(retention=retention))
            assert 0 < n <= token_bound(frames, 196, retention)
    # 32 frames in 8 segments of 4: one anchor frame each with 4 * 7 anchors, 12 salient per frame
    assert nominal_tokens(32, 196) == 32 * 12 + 8 * 28 == token_bound(32, 196, 0.10)


def test_pool_salience_is_the_official_bilinear_resize():
    attn = torch.rand(2, 27 * 27, generator=torch.Generator().manual_seed(0))
    pooled = pool_salience(attn, (27, 27), (14, 14))
    want = torch.nn.functional.interpolate(attn.view(2, 1, 27, 27).float(), size=(14, 14), mode="bilinear")
    torch.testing.assert_close(pooled, want.view(2, -1))


# -- the analyzer's cost ---------------------------------------------------------------------
def test_cost_counts_the_per_frame_work_and_the_segment_pools():
    from llava.analysis.hardware import get_hardware
    from llava.analysis.roofline import fastvid_overhead_ops
    from llava.analysis.shapes import VisionShape

    from llava import AIMConfig

    vision = VisionShape("v", layers=2, hidden=8, intermediate=16, heads=2, tokens=16)
    ops = {o.name: o.ops for o in fastvid_overhead_ops(vision, 10, 0.5, 4, 6, get_hardware("nvidia_A100"))}
    # T = 10, retention 0.5: R = 5, S = 3, Cn = 2, N = 7 non-salient tokens per frame
    assert frame_budget(10, 0.5, 0.4) == (3, 2)
    assert ops["fastvid.distances"] == 6 * (2 * 7 * 7 * 4 + 3 * 7 * 7)
    assert ops["fastvid.salience"] == 6 * (2 * 16 * 16 * 8 + 6 * 2 * 16 * 16 + 8 * 10)
    # 6 frames in 6 one-frame segments (segments=8 > frames): each frame merges its 7 into 2 anchors
    per_merge = 3 * (7 + 2) * 4 + 2 * 7 * 2 * 4 + 7 * 2 + 2 * (7 + 2) * 4
    assert ops["fastvid.merge"] == 6 * per_merge
    # 2 segments of 3 frames, stride 4: the last frame of each holds 2 * 3 anchors over 21 tokens
    two = {o.name: o.ops for o in fastvid_overhead_ops(vision, 10, 0.5, 4, 6, get_hardware("nvidia_A100"),
                                                      cfg=AIMConfig.for_method("fastvid", retention=0.5,
                                                                               fastvid_segments=2))}
    assert anchor_counts([3, 3], 2, 4) == [0, 0, 6, 0, 0, 6]
    assert two["fastvid.merge"] == 2 * (3 * (21 + 6) * 4 + 2 * 21 * 6 * 4 + 21 * 6 + 2 * (21 + 6) * 4)


# -- the registry entry on tiny LLaVA-OneVision ----------------------------------------------
def _ov_pooled_and_attention(inner, pixels):
    """The tokens the LLM receives per frame (projector, then the stock 2x2 bilinear pooling)
    and the attention each patch receives in the feature layer (mean over heads and queries,
    from its q/k), resized to the pooled grid as the official get_attn_2dPool does."""
    tower = inner.vision_tower
    layers = getattr(tower, "vision_model", tower).encoder.layers
    hs = tower(pixels, output_hidden_states=True).hidden_states
    layer = layers[-1]  # hidden_states[-1] is its output (vision_feature_layer -1)
    normed = layer.layer_norm1(hs[-2])
    q, k = layer.self_attn.q_proj(normed), layer.self_attn.k_proj(normed)
    heads = layer.self_attn.num_heads
    f, m, width = q.shape
    d = width // heads
    qh, kh = q.view(f, m, heads, d).transpose(1, 2).float(), k.view(f, m, heads, d).transpose(1, 2).float()
    received = torch.softmax(qh @ kh.transpose(-1, -2) * d**-0.5, dim=-1).mean(dim=2).mean(dim=1)  # (F, M)
    pooled = inner.apply_pooling(inner.multi_modal_projector(hs[-1]))
    side = math.isqrt(m)
    return pooled, pool_salience(received, (side, side), (math.ceil(side / 2), math.ceil(side / 2)))


FRAMES = 10  # enough for DySeg's 8 segments to include a longer one (a segment-wide merge)


def test_onevision_equals_the_reference_on_the_models_features(ov_sdpa):
    """The harness's FastVID on tiny LLaVA-OneVision: the LLM receives exactly the official
    algorithm's tokens (then the newline), computed from the model's own features; the fast
    function equals the float64 reference on those features."""
    from conftest import make_video, spliced_logits, video_inputs

    from llava import AIMConfig, apply_aim
    from llava.model.runtime import remove_aim

    model, processor = ov_sdpa
    params = FastVIDParams()
    try:
        stock = video_inputs(processor, [make_video(FRAMES)])
        with torch.no_grad():
            pooled, attention = _ov_pooled_and_attention(model.model, stock["pixel_values_videos"].flatten(0, 1))
        want, origin, sizes = reference_fastvid(pooled, attention, pooled.double().mean(1), params)
        exact = fastvid_video(pooled.double(), attention, pooled.double().mean(1), params)
        assert exact.origin.tolist() == origin and exact.segments == sizes
        torch.testing.assert_close(exact.tokens, want)
        assert any(n > 1 for n in sizes), "the clip should give a segment-wide merge"
        fast = fastvid_video(pooled, attention, pooled.mean(1), params)  # the model's float32
        merged = torch.cat([fast.tokens, model.model.image_newline[None]])
        expected = spliced_logits(model, stock, merged, model.config.video_token_id)

        apply_aim(model, processor, AIMConfig.for_method("fastvid"))
        inputs = video_inputs(processor, [make_video(FRAMES)])
        reserved = int((inputs["input_ids"] == model.config.video_token_id).sum())
        assert reserved == token_bound(FRAMES, 196, 0.10) + 1
        with torch.no_grad():
            got = model(**inputs).logits[:, -1]
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        kept = model.aim_stats.tokens_kept_per_frame
        assert sum(kept) == fast.tokens.shape[0]
    finally:
        remove_aim(model, processor)


def test_onevision_batch_equals_single(ov_sdpa):
    """Each video of a batch gets its own data-dependent count; fillers go before layer 0 and
    positions close up, so greedy decoding equals each sample run alone."""
    from conftest import make_video, video_inputs

    from llava import AIMConfig, apply_aim
    from llava.model.runtime import remove_aim

    model, processor = ov_sdpa
    media = [make_video(6, seed=3), make_video(6, seed=4)]
    questions = ["What is shown?", "Describe the colors of the objects in this video in detail please."]
    greedy = lambda inputs: model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)  # noqa: E731
    try:
        # two segments of 6 frames: segment-wide merges
        apply_aim(model, processor, AIMConfig.for_method("fastvid", retention=0.25, fastvid_segments=2, fastvid_tau=-1.0))
        batch = video_inputs(processor, media, questions)
        assert (batch["attention_mask"] == 0).any(), "the test needs left padding"
        with torch.no_grad():
            both = greedy(batch)
            for i in range(2):
                one = greedy(video_inputs(processor, [media[i]], [questions[i]]))
                assert both[i, -4:].tolist() == one[0, -4:].tolist()
    finally:
        remove_aim(model, processor)


def test_families_the_official_code_never_ran_are_refused():
    from conftest import qwen_model

    from llava import AIMConfig, apply_aim
    from llava.errors import UnsupportedModelError

    model, processor = qwen_model("tiny-qwen2.5-vl")
    with pytest.raises(UnsupportedModelError, match="FastVID.*onevision"):
        apply_aim(model, processor, AIMConfig.for_method("fastvid"))
    assert getattr(model, "aim_config", None) is None  # nothing patched


def test_config_defaults_and_knob_rules():
    from llava import AIMConfig
    from llava.aim.fastvid import params_of
    from llava.errors import AIMConfigError

    cfg = AIMConfig.for_method("fastvid")
    assert (cfg.retention, cfg.l1, cfg.l2) == (0.10, None, None)
    assert params_of(cfg) == FastVIDParams()
    tuned = AIMConfig.for_method("fastvid", retention=0.25, fastvid_tau=0.84, fastvid_segments=4)
    assert params_of(tuned) == FastVIDParams(retention=0.25, segments=4, tau=0.84)
    with pytest.raises(AIMConfigError, match="fastvid_tau"):
        AIMConfig.for_method("fastvid", fastvid_tau=1.5)
    with pytest.raises(AIMConfigError, match="fastvid_anchor_stride"):
        AIMConfig.for_method("fastvid", fastvid_anchor_stride=0)
    with pytest.raises(AIMConfigError, match="method"):
        AIMConfig(fastvid_segments=4)  # a FastVID knob on AIM


def test_the_registry_entry():
    from llava.aim.registry import lookup

    entry = lookup("fastvid", "reduction")
    assert entry.stage == "projected" and {"video", "vision_attention"} <= set(entry.needs)
    assert entry.cost == "fastvid_overhead_ops"
    from llava import AIMConfig

    cfg = AIMConfig.for_method("fastvid")
    assert entry.bound(32, 196, cfg) == 32 * 19
    assert entry.nominal(32, 196, cfg) == nominal_tokens(32, 196)


def test_lmms_eval_batch_of_two_equals_each_alone(tmp_path):
    """Through the lmms-eval plugin (model_args method=fastvid, a knob set): a batch of two
    videos answers as each alone, with the same token counts."""
    pytest.importorskip("lmms_eval")
    from test_eval_plugin import _gen_request, _plugin, _texts

    from llava.eval import synthetic
    from llava.eval.lmms_model import LlavaOneVisionAIM

    clips = [str(synthetic.ensure_video(synthetic.clip_name(i), tmp_path)) for i in range(2)]
    args = dict(method="fastvid", retention=0.25, fastvid_segments=2)
    single = _plugin(LlavaOneVisionAIM, clips, **args)
    double = _plugin(LlavaOneVisionAIM, clips, batch_size=2, **args)
    assert double.model.aim_config.fastvid_segments == 2
    requests = [_gen_request(0), _gen_request(1, context="Which way does it move?")]
    alone = single.generate_until(requests)
    together = double.generate_until(requests)
    assert _texts(together) == _texts(alone)
    assert [r.token_counts.batch_size for r in together] == [2, 2]
    for a, t in zip(alone, together):
        assert t.token_counts.visual_tokens_after_merge == a.token_counts.visual_tokens_after_merge
        assert t.token_counts.input_tokens == a.token_counts.input_tokens
        # FastVID's count (plus the newline), within its bound at 4 frames of 196
        assert 0 < a.token_counts.visual_tokens_after_merge <= token_bound(4, 196, 0.25) + 1


def test_run_cli_takes_the_method_and_its_knobs(capsys):
    import json

    from llava.cli import main

    code = main(["run", "--frames", "4", "--max-new-tokens", "1", "--json", "--method", "fastvid",
                 "--retention", "0.25", "--fastvid-segments", "2", "--fastvid-tau", "0.5"])
    out, err = capsys.readouterr()
    assert code == 0, err
    r = json.loads(out)
    assert (r["aim"]["method"], r["aim"]["retention"], r["aim"]["fastvid_segments"], r["aim"]["fastvid_tau"]) == (
        "fastvid", 0.25, 2, 0.5)
    assert r["aim"]["fastvid_anchor_stride"] is None  # the official default
    assert 0 < r["visual_tokens_after_merge"] <= token_bound(4, 196, 0.25) + 1  # plus the newline
    # a FastVID knob typed for another method is refused, not ignored
    assert main(["run", "--frames", "4", "--method", "aim", "--fastvid-tau", "0.5"]) == 2
    assert "--fastvid-tau belongs to --method fastvid, not --method aim" in capsys.readouterr().err
