"""HoliTom (llava/aim/holitom.py) against slow references written from the official code
(cokeshao/HoliTom @ e9b2972f6895c9e7d7fe74eb8c3a2ecaab8056e0: holitom/llava_arch.py,
holitom/modeling_qwen2.py), in float64 with python loops.

The references follow the official steps one by one (the window table built start by start,
the dynamic programme, the per-window split, DPC-KNN, the clustering merge, the sequential
averaging inside the LLM). Two deliberate differences are applied to them as well, and tested
on their own: the random density noise of DPC-KNN is replaced by an index tie-break, and
top-k ties go to the lower index.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llava.aim import holitom as H


# -- slow references -------------------------------------------------------------------------------
def ref_select_static_windows(sim, tau, max_window):
    """llava_arch.py select_static_windows (lines 53-98), loops, float64."""
    frames = sim.shape[0] + 1
    tokens = sim.shape[1]
    table = [[0.0] * frames for _ in range(frames)]
    for s in range(frames):
        for e in range(s + 1, frames):
            static = 0
            for t in range(tokens):
                if all(sim[f, t] > tau for f in range(s, e)):
                    static += 1
            table[s][e] = float(static * (e - s))
    dp = [0.0] * frames
    prev = [0] * frames
    for i in range(frames):
        max_val = dp[i - 1] if i > 0 else 0.0
        best_j = i
        for window in range(2, min(i + 1, max_window) + 1):
            j = i - window
            val = (dp[j] if j >= 0 else 0.0) + table[j + 1][i]
            if val > max_val:
                max_val, best_j = val, j + 1
        dp[i], prev[i] = max_val, best_j
    out, i = [], frames - 1
    while i >= 0:
        out.append((prev[i], i))
        i = prev[i] - 1
    return out[::-1], dp[-1], table


def ref_dpc_knn(x, cluster_num, k):
    """llava_arch.py cluster_dpc_knn (lines 29-51), loops, float64; the density noise replaced by
    an index tie-break (a lower index counts as denser), centre ties by index."""
    n, c = x.shape
    dist = [[float((x[i] - x[j]).pow(2).sum().sqrt()) / math.sqrt(c) for j in range(n)] for i in range(n)]
    density = []
    for i in range(n):
        nearest = sorted(dist[i])[:k]
        density.append(math.exp(-sum(v * v for v in nearest) / k))
    dmax = max(max(row) for row in dist)
    score = []
    for i in range(n):
        best = dmax
        for j in range(n):
            if density[j] > density[i] or (density[j] == density[i] and j < i):
                best = min(best, dist[i][j])
        score.append(best * density[i])
    order = sorted(range(n), key=lambda i: (-score[i], i))
    return sorted(order[:cluster_num]), dist


def ref_merge_by_clustering(x, centers, dist, beta):
    """llava_arch.py merge_tokens_by_clustering (lines 100-150), the default branch (NO_BETA "0")."""
    n = x.shape[0]
    others = [i for i in range(n) if i not in centers]
    out = []
    groups = {m: [] for m in range(len(centers))}
    for i in others:
        dists = [dist[i][c] for c in centers]
        groups[dists.index(min(dists))].append(i)
    for m, c in enumerate(centers):
        if groups[m]:
            mean = sum(x[i] for i in groups[m]) / len(groups[m])
            out.append(beta * x[c] + (1 - beta) * mean)
        else:
            out.append(x[c].clone())
    return torch.stack(out) if out else x.new_zeros(0, x.shape[1])


def ref_density_count(feat, pos, count, beta, k):
    """DPC-KNN to ``count`` centres (k = min(K, count), as at lines 175 and 203), then the merge."""
    centers, dist = ref_dpc_knn(feat, count, min(k, count))
    return ref_merge_by_clustering(feat, centers, dist, beta), [pos[c] for c in centers]


def ref_density(feat, pos, ratio, beta, k):
    """merge_tokens_by_density (lines 199-213): DPC-KNN to round(n * ratio) centres."""
    num = round(feat.shape[0] * ratio)
    if num <= 0:
        return feat.new_zeros(0, feat.shape[1]), []
    return ref_density_count(feat, pos, num, beta, k)


def ref_attention_density(feat, attn, pos, ratio, share, beta, k):
    """merge_tokens_by_attention_density (lines 152-197) on one frame."""
    n = feat.shape[0]
    dominant = round(math.ceil(n * ratio) * (1 - share))
    contextual = math.ceil(n * ratio) - dominant
    order = sorted(range(n), key=lambda i: (-float(attn[i]), i))
    top = sorted(order[:dominant])
    tokens = [feat[i] for i in top]
    origin = [pos[i] for i in top]
    if contextual > 0:
        rest = [i for i in range(n) if i not in top]
        ctx, ctx_pos = ref_density_count(feat[rest], [pos[i] for i in rest], contextual, beta, k)
        tokens += list(ctx)
        origin += ctx_pos
    return tokens, origin


def ref_holitom(x, attn, retention, tau, beta, share, k, max_window):
    """prepare_inputs_labels_for_multimodal's video branch (lines 365-407), get_static_dynamic_features
    (278-311) and holitom (234-275, mm_newline_position other than "grid"), float64."""
    frames, tokens, _ = x.shape
    xn = torch.nn.functional.normalize(x, p=2, dim=-1)
    sim = torch.nn.functional.cosine_similarity(xn[:-1], xn[1:], dim=-1)
    windows, reduced, _ = ref_select_static_windows(sim, tau, max_window)
    total = frames * tokens
    ratio = min(retention / ((total - reduced) / total), 1)
    out, origin = [], []
    for s, e in windows:
        if s == e:
            static_pos = []
        else:
            static_pos = [t for t in range(tokens) if all(sim[f, t] > tau for f in range(s, e))]
        dynamic_pos = [t for t in range(tokens) if t not in static_pos]
        if s != e:
            static_feat = x[s:e + 1][:, static_pos].mean(dim=0)
            merged, pos = ref_density(static_feat, [s * tokens + t for t in static_pos], ratio, beta, k)
            out += list(merged)
            origin += pos
        for f in range(s, e + 1):
            toks, pos = ref_attention_density(x[f][dynamic_pos], attn[f][dynamic_pos],
                                              [f * tokens + t for t in dynamic_pos], ratio, share, beta, k)
            out += toks
            origin += pos
    return (torch.stack(out) if out else x.new_zeros(0, x.shape[-1])), origin, windows, ratio


def ref_inner_merge(h, visual_start, visual_len, scores, keep_count):
    """modeling_qwen2.py lines 144-202 on one sample: keep the top scores, fold every other
    visual token (in index order) into its most similar kept token by averaging the two."""
    h = h.clone()
    order = sorted(range(visual_len), key=lambda i: (-float(scores[i]), i))
    top = [visual_start + i for i in order[:keep_count]]
    rest = [visual_start + i for i in range(visual_len) if visual_start + i not in top]
    sims = {}
    for d in rest if top else []:  # nothing kept (the official code fails there): nothing folds
        row = []
        for t in top:
            row.append(float(h[d] @ h[t] / (h[d].norm() * h[t].norm())))
        sims[d] = top[row.index(max(row))]
    for d in sims:  # the official loop updates the kept rows in place, in this order
        t = sims[d]
        h[t] = (h[t] + h[d]) / 2
    keep = sorted(list(range(visual_start)) + top + list(range(visual_start + visual_len, h.shape[0])))
    return h, keep


# -- stage 1 ----------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(frames=st.integers(2, 9), tokens=st.integers(1, 6), seed=st.integers(0, 10_000),
       tau=st.sampled_from([0.3, 0.5, 0.8]), max_window=st.sampled_from([2, 3, 1024]))
def test_segmentation_equals_the_official_programme(frames, tokens, seed, tau, max_window):
    g = torch.Generator().manual_seed(seed)
    sim = torch.rand(frames - 1, tokens, generator=g, dtype=torch.float64)
    windows, saved, table = ref_select_static_windows(sim, tau, max_window)
    fast_table = H.window_savings(sim, tau)
    assert fast_table.tolist() == [[int(v) for v in row] for row in table]
    assert H.segment_frames(fast_table.tolist(), max_window) == (windows, saved)


def test_segmentation_prefers_single_frames_on_ties_and_respects_the_window_limit():
    sim = torch.tensor([[0.9], [0.9], [0.1]], dtype=torch.float64)  # frames 0-2 static, 3 moves
    windows, saved = H.segment_frames(H.window_savings(sim, 0.8).tolist(), 1024)
    assert windows == [(0, 2), (3, 3)] and saved == 2
    windows, saved = H.segment_frames(H.window_savings(sim, 0.8).tolist(), 2)
    assert saved == 1 and all(e - s + 1 <= 2 for s, e in windows)
    nothing = torch.zeros(3, 2, dtype=torch.float64)
    assert H.segment_frames(H.window_savings(nothing, 0.8).tolist())[0] == [(0, 0), (1, 1), (2, 2), (3, 3)]


# -- DPC-KNN ----------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 12), c=st.integers(1, 5), seed=st.integers(0, 10_000), frac=st.floats(0.05, 1.0),
       k=st.sampled_from([1, 3, 7]), beta=st.sampled_from([0.0, 0.6, 1.0]))
def test_dpc_knn_and_merge_equal_the_official_clustering(n, c, seed, frac, k, beta):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g, dtype=torch.float64)
    count = max(1, round(n * frac))
    centers, dist = ref_dpc_knn(x, count, min(k, count))
    fast_centers, fast_dist = H.dpc_knn_centers(x, count, min(k, count))
    assert fast_centers.tolist() == centers
    owner = H.assign_to_centers(fast_dist, fast_centers)
    merged, weights = H.merge_into_centers(x, fast_centers, owner, beta)
    torch.testing.assert_close(merged, ref_merge_by_clustering(x, centers, dist, beta))
    rebuilt = torch.zeros_like(merged).index_add_(0, owner, x * weights[:, None].to(x.dtype))
    torch.testing.assert_close(rebuilt, merged)


def test_dpc_knn_breaks_exact_density_ties_by_index():
    x = torch.tensor([[0.0], [0.0], [5.0], [5.0]], dtype=torch.float64)  # two equal pairs
    centers, _ = H.dpc_knn_centers(x, 2, 2)
    assert centers.tolist() == [0, 2]  # the first of each pair, deterministically


# -- the whole stage before the LLM -----------------------------------------------------------------
def _video(frames, tokens, channels, seed, static_frames):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(frames, tokens, channels, generator=g, dtype=torch.float64)
    for f in range(1, min(static_frames, frames)):  # a run of near-identical frames: static tokens to merge
        x[f] = x[0] + 0.05 * torch.randn(tokens, channels, generator=g, dtype=torch.float64)
    return x, torch.rand(frames, tokens, generator=g, dtype=torch.float64)


@settings(max_examples=25, deadline=None)
@given(frames=st.integers(1, 6), tokens=st.integers(2, 9), seed=st.integers(0, 10_000),
       retention=st.sampled_from([0.1, 0.25, 0.5, 1.0]), tau=st.sampled_from([0.65, 0.8]),
       share=st.sampled_from([0.0, 0.5]), static_frames=st.integers(0, 4))
def test_holitom_frames_equals_the_official_video_branch(frames, tokens, seed, retention, tau, share, static_frames):
    x, attn = _video(frames, tokens, 4, seed, static_frames)
    ref, origin, windows, ratio = ref_holitom(x, attn, retention, tau, 0.6, share, 7, 1024)
    out = H.holitom_frames(x, attn, retention, tau=tau, contextual_share=share)
    assert out.windows == windows and out.ratio == ratio
    torch.testing.assert_close(out.tokens, ref)
    assert out.origin.tolist() == origin
    # every output is the stated combination of the inputs, and within the placeholders reserved
    used = out.sources >= 0
    rebuilt = torch.zeros_like(out.tokens).index_add_(0, out.sources[used],
                                                      x.reshape(-1, 4)[used] * out.weights[used, None].to(x.dtype))
    torch.testing.assert_close(rebuilt, out.tokens)
    assert out.tokens.shape[0] <= H.holitom_bound(frames, tokens, retention)


def test_holitom_frames_reaches_the_budget_on_a_static_video():
    x, attn = _video(8, 16, 6, 3, 8)  # every frame close to the first
    out = H.holitom_frames(x, attn, 0.25)
    assert out.windows == [(0, 7)]  # one window: everything static
    assert out.tokens.shape[0] == round(16 * out.ratio) <= math.ceil(0.25 * 8 * 16)


# -- the fold inside the LLM ------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 3), seed=st.integers(0, 10_000), ratio=st.sampled_from([0.25, 0.5, 0.75]))
def test_fold_equals_the_official_sequential_averaging(batch, seed, ratio):
    g = torch.Generator().manual_seed(seed)
    n, c = 14, 5
    h = torch.randn(batch, n, c, generator=g, dtype=torch.float64)
    scores = torch.rand(batch, n, generator=g, dtype=torch.float64)
    starts = [int(torch.randint(0, 4, (1,), generator=g)) for _ in range(batch)]
    lens = [int(torch.randint(2, n - s - 1, (1,), generator=g)) for s in starts]
    candidates = torch.zeros(batch, n, dtype=torch.bool)
    keep = torch.ones(batch, n, dtype=torch.bool)
    expected = h.clone()
    kept_counts = []
    for b in range(batch):
        count = round(lens[b] * (1 - ratio))
        kept_counts.append(count)
        ref_h, ref_keep = ref_inner_merge(h[b], starts[b], lens[b], scores[b, starts[b]:starts[b] + lens[b]], count)
        expected[b] = ref_h
        candidates[b, starts[b]:starts[b] + lens[b]] = True
        keep[b] = False
        keep[b, ref_keep] = True
    folded = H.fold_dropped_into_kept(h, candidates, keep, max(kept_counts),
                                      max(n_ - k for n_, k in zip(lens, kept_counts)))
    torch.testing.assert_close(folded[keep], expected[keep])


def test_fold_weights_are_the_closed_form_of_repeated_halving():
    owner = torch.tensor([[0, 1, 0, 0]])
    kept, dropped = H.fold_weights(owner, torch.ones(1, 4, dtype=torch.bool), 2)
    # kept 0 absorbs dropped 0, 2, 3 in that order: ((k + d0)/2 + d2)/2 + d3)/2
    assert kept.tolist() == [[1 / 8, 1 / 2]]
    assert dropped.tolist() == [[1 / 8, 1 / 2, 1 / 4, 1 / 2]]


# -- defaults -------------------------------------------------------------------------------------
def test_defaults_are_the_official_scripts():
    # scripts/eval_ov-7b_holitom.sh line 2/12: HOLITOM_k=18 HOLITOM_r=0.5, T=0.80 (0.65 at 0.10)
    assert (H.DEFAULT_LAYER, H.DEFAULT_LAYER_REFERENCE, H.DEFAULT_INNER_RATIO, H.DEFAULT_TAU) == (18, 28, 0.5, 0.80)
    # holitom/llava_arch.py lines 352-355: BETA 0.6, D 0, K 7, MAX_WINDOW_SIZE 1024
    assert (H.DEFAULT_BETA, H.DEFAULT_DOMINANT_SHARE_OFF, H.DEFAULT_KNN, H.DEFAULT_MAX_WINDOW) == (0.6, 0.0, 7, 1024)


# -- the fold in the decoder driver, on the tiny LLaVA-OneVision ------------------------------------
import dataclasses  # noqa: E402

from conftest import make_video, spliced_embeds, video_inputs  # noqa: E402
from llava import AIMConfig, apply_aim  # noqa: E402
from llava.aim import policy  # noqa: E402
from llava.aim.schedule import kept_count  # noqa: E402
from llava.model.runtime import remove_aim  # noqa: E402


_FASTV = policy.SPECS["fastv"]


@pytest.fixture
def fastv_with_fold(monkeypatch):
    """FastV's drop with HoliTom's fold: the driver's fold on its own, before the method exists."""
    monkeypatch.setitem(policy.SPECS, "fastv", dataclasses.replace(policy.SPECS["fastv"], fold="holitom_fold"))
    return AIMConfig.for_method("fastv")  # K = 2, r = 0.5


def _lm_inputs(model, inputs):
    """The stock model's embeddings entering the language model (AIM off)."""
    seen = {}
    lm = model.model.language_model
    handle = lm.register_forward_pre_hook(lambda mod, args, kwargs: seen.update(kwargs), with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    return seen["inputs_embeds"]


def _last_token_attention(layer, h, cos, sin):
    """Layer's attention of the last token over all tokens, mean over heads (from its q/k)."""
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

    attn = layer.self_attn
    x = layer.input_layernorm(h)
    n, d = x.shape[1], attn.head_dim
    q = attn.q_proj(x).view(1, n, -1, d).transpose(1, 2)
    k = attn.k_proj(x).view(1, n, -1, d).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    probs = torch.softmax((q[:, :, -1:] @ k.transpose(-1, -2)) * attn.scaling, dim=-1)
    return probs.mean(dim=1)[0, 0]


def ref_holitom_in_llm(model, embeds, visual, layer_k, ratio):
    """modeling_qwen2.py's forward on one sample: stock layers up to K-1, the fold (the loop of
    ref_inner_merge) on layer K-1's last-token attention, the rest on the survivors at their
    original positions. Returns the last token's logits."""
    lm = model.model.language_model
    n = embeds.shape[1]
    positions = torch.arange(n)[None]
    h = embeds
    cos, sin = lm.rotary_emb(h, positions)
    span = visual.nonzero()[:, 0]
    start, length = int(span[0]), int(span.numel())
    assert span.tolist() == list(range(start, start + length))  # one contiguous span, as the official reads
    for j, layer in enumerate(lm.layers):
        if j == layer_k:
            count = kept_count(length, 1 - ratio)  # the project's count (floor); the official rounds
            merged, keep = ref_inner_merge(h[0].double(), start, length, scores[start:start + length], count)
            h = merged.to(h.dtype)[keep][None]
            cos, sin = lm.rotary_emb(h, torch.tensor(keep)[None])
        if j == layer_k - 1:
            scores = _last_token_attention(layer, h, cos, sin)
        h = layer(h, attention_mask=None, position_embeddings=(cos, sin), position_ids=None)
        h = h[0] if isinstance(h, tuple) else h
    return model.lm_head(lm.norm(h))[0, -1]


def test_fold_in_the_driver_equals_the_official_forward(ov_sdpa, fastv_with_fold, monkeypatch):
    model, processor = ov_sdpa
    inputs = video_inputs(processor, [make_video(frames=2, seed=5)])
    visual = inputs["input_ids"][0] == model.config.video_token_id
    embeds = _lm_inputs(model, inputs)
    with torch.no_grad():
        expected = ref_holitom_in_llm(model, embeds, visual, 2, 0.5)
    try:
        out = {}
        for mode in ("remove", "mask"):
            apply_aim(model, processor, fastv_with_fold.replace(pruning_mode=mode))
            with torch.no_grad():
                out[mode] = model(**inputs).logits[0, -1]
        monkeypatch.setitem(policy.SPECS, "fastv", _FASTV)  # the same drop without the fold
        apply_aim(model, processor, fastv_with_fold)
        with torch.no_grad():
            plain = model(**inputs).logits[0, -1]
    finally:
        remove_aim(model, processor)
    torch.testing.assert_close(out["remove"], expected, atol=2e-6, rtol=0)  # float32 rounding only
    torch.testing.assert_close(out["mask"], out["remove"], atol=1e-5, rtol=0)
    # the fold moves the answer far beyond that tolerance (the tiny model's logits move ~1e-4)
    assert (plain - out["remove"]).abs().max() > 1e-4


def test_fold_in_a_batch_equals_one_at_a_time(ov_sdpa, fastv_with_fold):
    model, processor = ov_sdpa
    videos = [make_video(frames=2, seed=3), make_video(frames=2, seed=4)]
    questions = ["What happens?", "Which objects move from the left to the right in this short clip?"]
    try:
        apply_aim(model, processor, fastv_with_fold)
        batch = video_inputs(processor, videos, questions)
        assert (batch["attention_mask"] == 0).any()
        with torch.no_grad():
            together = model(**batch).logits[:, -1]
            for i, video in enumerate(videos):
                alone = model(**video_inputs(processor, [video], [questions[i]])).logits[0, -1]
                torch.testing.assert_close(together[i], alone, atol=1e-4, rtol=0)
    finally:
        remove_aim(model, processor)


def test_fold_adds_no_host_sync(ov_sdpa, fastv_with_fold, monkeypatch):
    """The fold sizes its tensors from the host-side schedule: a prefill with it reads the device
    exactly as often as the same drop without it, and a decode step not at all."""
    from test_host_syncs import _prefill_and_step

    model, processor = ov_sdpa
    with_fold = _prefill_and_step(model, processor, fastv_with_fold)
    monkeypatch.setitem(policy.SPECS, "fastv", _FASTV)
    without = _prefill_and_step(model, processor, fastv_with_fold)
    assert with_fold[0].where == without[0].where and with_fold[0].total <= 3
    assert with_fold[1].total == 0


def test_the_analyzer_prices_the_fold_from_its_registry_entry(fastv_with_fold, monkeypatch):
    from llava.analysis.roofline import analyze

    folded = analyze("qwen2-7b", frames=8, method="fastv", retention=1.0, l1=None, l2=None)
    monkeypatch.setitem(policy.SPECS, "fastv", _FASTV)
    plain = analyze("qwen2-7b", frames=8, method="fastv", retention=1.0, l1=None, l2=None)
    names = [op.name for op in folded.aim_overhead.ops]
    assert any(n.startswith("fold.similarity[1]") for n in names)  # the drop after layer K-1 = 1
    assert not any(op.name.startswith("fold.") for op in plain.aim_overhead.ops)
    assert folded.aim_overhead.flops > plain.aim_overhead.flops
    assert folded.prefill_flops == plain.prefill_flops  # the fold changes no token count


# -- the method end to end on the tiny LLaVA-OneVision ---------------------------------------------
from llava.aim import registry  # noqa: E402
from llava.errors import AIMConfigError, UnsupportedModelError  # noqa: E402


def _official_attention(inner, pix):
    """SigLIP's attention each patch receives at the feature layer, mean over heads and queries
    (siglip_encoder.py lines 618-622, float64 head by head), pooled like the features
    (llava_arch.py lines 370-373: get_2dPool on the attention)."""
    tower = inner.vision_tower
    layers = getattr(tower, "vision_model", tower).encoder.layers
    hs = tower(pix, output_hidden_states=True).hidden_states
    attn = layers[-1].self_attn
    normed = layers[-1].layer_norm1(hs[-2])
    q, k = attn.q_proj(normed).double(), attn.k_proj(normed).double()
    d = attn.head_dim
    received = torch.zeros(q.shape[:2], dtype=torch.float64)
    for h in range(attn.num_heads):
        qh, kh = q[..., h * d:(h + 1) * d], k[..., h * d:(h + 1) * d]
        received += torch.softmax(qh @ kh.transpose(1, 2) * d ** -0.5, -1).mean(dim=1) / attn.num_heads
    return inner.apply_pooling(received.float()[..., None])[..., 0]


def _official_logits(model, inputs, cfg):
    """HoliTom as the official code runs it, from the stock parts: pooled projected frames and
    pooled attention, the loop reference of the stage before the LLM, the newline, then the
    official in-LLM forward (ref_holitom_in_llm)."""
    inner = model.model
    pix = inputs["pixel_values_videos"]
    frames = pix.shape[1]
    with torch.no_grad():
        pooled = inner.get_video_features(pix, vision_feature_layer=-1,
                                          vision_feature_select_strategy="full").pooler_output
        x = pooled[0, : frames * (pooled.shape[1] // frames)].reshape(frames, -1, pooled.shape[-1])
        attention = _official_attention(inner, pix.flatten(0, 1))
        tau = H.default_tau(cfg.retention)
        tokens, _, _, _ = ref_holitom(x.double(), attention.double(), cfg.retention, tau, 0.6, 0.0, 7, 1024)
        merged = torch.cat([tokens.float(), inner.image_newline[None]])
        spliced, embeds = spliced_embeds(model, inputs["input_ids"][0], merged, model.config.video_token_id)
        layer = policy.scaled_layer(H.DEFAULT_LAYER, H.DEFAULT_LAYER_REFERENCE, len(inner.language_model.layers))
        return ref_holitom_in_llm(model, embeds, spliced == model.config.video_token_id, layer, H.DEFAULT_INNER_RATIO)


@pytest.mark.parametrize("retention", [0.10, 0.25])
def test_holitom_in_the_model_equals_the_official_pipeline(ov_sdpa, retention):
    model, processor = ov_sdpa
    stock = video_inputs(processor, [make_video(frames=4, seed=5)])
    want = _official_logits(model, stock, AIMConfig.for_method("holitom", retention=retention))
    try:
        got = {}
        for mode in ("remove", "mask"):
            apply_aim(model, processor, AIMConfig.for_method("holitom", retention=retention, pruning_mode=mode))
            inputs = video_inputs(processor, [make_video(frames=4, seed=5)])
            with torch.no_grad():
                got[mode] = model(**inputs).logits[0, -1]
        stats = model.aim_stats
    finally:
        remove_aim(model, processor)
    torch.testing.assert_close(got["remove"], want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got["mask"], got["remove"], atol=1e-5, rtol=0)
    # the inner merge halves the visual tokens at K = round(18 * 8 / 28) = 5
    visual = stats.visual_tokens_after_merge
    assert [n - stats.layer_seq_lens[-1] for n in stats.layer_seq_lens[:5]] == [visual - visual // 2] * 5


def test_holitom_batch_equals_one_at_a_time(ov_sdpa):
    model, processor = ov_sdpa
    videos = [make_video(frames=4, seed=3), make_video(frames=4, seed=11)]
    questions = ["What happens?", "Describe the colors of the moving square in this clip in detail."]
    try:
        apply_aim(model, processor, AIMConfig.for_method("holitom", retention=0.25))
        counts = []
        singles = []
        with torch.no_grad():
            for video, question in zip(videos, questions):
                singles.append(model(**video_inputs(processor, [video], [question])).logits[0, -1])
                counts.append(model.aim_stats.visual_tokens_after_merge)
            batch = model(**video_inputs(processor, videos, questions)).logits[:, -1]
    finally:
        remove_aim(model, processor)
    assert counts[0] != counts[1]  # content-dependent counts: the reserve-and-splice path
    for i, single in enumerate(singles):
        torch.testing.assert_close(batch[i], single, atol=1e-4, rtol=0)


def test_holitom_is_refused_where_its_official_code_never_ran():
    from conftest import qwen_model

    model, processor = qwen_model("tiny-qwen2.5-vl")
    with pytest.raises(UnsupportedModelError, match="HoliTom.*onevision.*ran nothing else"):
        apply_aim(model, processor, AIMConfig.for_method("holitom"))
    assert getattr(model, "_aim_runtime", None) is None


def test_holitom_defaults_and_knobs():
    cfg = AIMConfig.for_method("holitom")
    # RETAIN_RATIO default 0.1 (llava_arch.py line 348) with T = 0.65 (eval_ov-7b_holitom.sh line 2)
    assert (cfg.retention, cfg.l1, cfg.l2, cfg.video_reducing, cfg.pruning) == (0.10, None, None, True, True)
    assert H.default_tau(0.10) == 0.65 and H.default_tau(0.15) == H.default_tau(0.25) == 0.80
    from llava.aim.schedule import policy_visual_tokens

    assert policy_visual_tokens(cfg, 627, 28) == [627] * 18 + [313] * 10  # K = 18, r = 0.5
    assert policy_visual_tokens(cfg.replace(holitom_layer=3, holitom_ratio=0.25), 100, 8) == [100] * 3 + [75] * 5
    assert policy_visual_tokens(cfg.replace(holitom_ratio=0.0), 100, 8) == [100] * 8  # HoliTom (w/o M)
    entry = registry.lookup("holitom", "reduction")
    assert entry.stage == "projected" and {"video", "vision_attention"} <= entry.needs
    assert entry.nominal(32, 196, cfg) == 628 and entry.bound(32, 196, cfg) == 628 + 32 + 16
    for bad, words in [(dict(holitom_ratio=1.0), "holitom_ratio"), (dict(holitom_layer=0), "holitom_layer"),
                       (dict(holitom_tau=1.5), "holitom_tau"), (dict(drop_layers=(3,)), "holitom_layer")]:
        with pytest.raises(AIMConfigError, match=words):
            AIMConfig.for_method("holitom", **bad)
    with pytest.raises(AIMConfigError, match="belongs to"):
        AIMConfig.for_method("fastv", holitom_tau=0.5)
    with pytest.raises(AIMConfigError, match="belongs to"):  # every front end: a knob of another method
        policy.check_typed_settings("fastv", {"holitom_tau": 0.5})
    policy.check_typed_settings("holitom", {"holitom_tau": 0.5, "retention": 0.25})
    with pytest.raises(AIMConfigError, match="beyond"):
        cfg.replace(holitom_layer=8).check_against_model(8)


def test_holitom_through_lmms_eval_batch_equals_single(tmp_path):
    """The plugin (model_args method=holitom) answers a batch of two as each alone."""
    pytest.importorskip("lmms_eval")
    from test_eval_plugin import _gen_request, _plugin, _texts

    from llava.eval import synthetic
    from llava.eval.lmms_model import LlavaOneVisionAIM

    clips = [str(synthetic.ensure_video(synthetic.clip_name(i), tmp_path)) for i in range(2)]
    single = _plugin(LlavaOneVisionAIM, clips, method="holitom", retention=0.25)
    double = _plugin(LlavaOneVisionAIM, clips, method="holitom", retention=0.25, batch_size=2)
    requests = [_gen_request(0), _gen_request(1), _gen_request(1, context="Which way does it move?")]
    alone = single.generate_until(requests)
    together = double.generate_until(requests)
    assert _texts(together) == _texts(alone)
    assert [r.token_counts.batch_size for r in together] == [2, 2, 1]
    for a, t in zip(alone, together):
        assert t.token_counts.visual_tokens_after_merge == a.token_counts.visual_tokens_after_merge
        assert t.token_counts.sum_tokens_over_layers == a.token_counts.sum_tokens_over_layers
