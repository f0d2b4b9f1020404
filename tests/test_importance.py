"""Tests of llava.aim.importance: PageRank importance, survivor selection, compaction."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llava.aim.importance import (
    attention_importance,
    compact_left,
    heads_per_chunk,
    log_first_step_attention,
    pagerank_blocking,
    pagerank_importance,
    select_survivors,
    tie_counts,
)

B, NH, NKV, N, D = 2, 4, 2, 7, 8
SCALE = D**-0.5


def qk(seed=0, b=B, nh=NH, nkv=NKV, n=N, d=D):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, nh, n, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, nkv, n, d, generator=g, dtype=torch.float64)
    return q, k


# -- a slow, obviously-correct reference (explicit loops, float64) ---------------------------
def reference_pagerank(q, k, valid, scaling, tau=0.1, iters=5):
    b_, nh, n, d = q.shape
    group = nh // k.shape[1]
    out = torch.zeros(b_, n, dtype=torch.float64)
    for b in range(b_):
        idx = [i for i in range(n) if bool(valid[b, i])]
        if not idx:
            continue
        sum_sq = [0.0] * n
        for h in range(nh):
            kv = h // group
            m = [[0.0] * n for _ in range(n)]
            for i in idx:
                keys = [j for j in idx if j <= i]
                logits = [
                    sum(float(q[b, h, i, c]) * float(k[b, kv, j, c]) for c in range(d)) * scaling / tau
                    for j in keys
                ]
                top = max(logits)
                e = [math.exp(x - top) for x in logits]
                z = sum(e)
                for j, ej in zip(keys, e):
                    m[i][j] = ej / z
            dist = [1.0 / len(idx) if i in idx else 0.0 for i in range(n)]
            for _ in range(iters):
                dist = [sum(dist[i] * m[i][j] for i in range(n)) for j in range(n)]
            for j in range(n):
                sum_sq[j] += dist[j] ** 2
        for j in range(n):
            out[b, j] = math.sqrt(sum_sq[j] / nh)
    return out


def reference_attention(q, k, valid, scaling):
    b_, nh, n, d = q.shape
    group = nh // k.shape[1]
    out = torch.zeros(b_, n, dtype=torch.float64)
    for b in range(b_):
        idx = [i for i in range(n) if bool(valid[b, i])]
        for h in range(nh):
            for i in idx:
                keys = [j for j in idx if j <= i]
                logits = [float(q[b, h, i] @ k[b, h // group, j]) * scaling for j in keys]
                top = max(logits)
                e = [math.exp(x - top) for x in logits]
                for j, ej in zip(keys, e):
                    out[b, j] += ej / sum(e) / (nh * len(idx))
    return out


def close(got, ref):
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=2e-4, atol=1e-6)


# -- pagerank_importance -------------------------------------------------------------------------
def test_pagerank_matches_reference_all_valid():
    q, k = qk(0)
    valid = torch.ones(B, N, dtype=torch.bool)
    ref = reference_pagerank(q, k, valid, SCALE)
    close(pagerank_importance(q.float(), k.float(), valid, SCALE), ref)
    close(pagerank_importance(q, k, valid, SCALE), ref)  # float64 input, float32 compute
    # a distribution over tokens at every head: RMS of per-head probabilities, all positive
    assert bool((ref > 0).all())


def test_pagerank_matches_reference_bf16_input_shape_only():
    q, k = qk(1)
    out = pagerank_importance(q.bfloat16(), k.bfloat16(), torch.ones(B, N, dtype=torch.bool), SCALE)
    assert out.shape == (B, N) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("tau, iters", [(1.0, 1), (0.1, 5), (0.5, 3), (0.05, 2)])
def test_pagerank_tau_iters(tau, iters):
    q, k = qk(2)
    valid = torch.ones(B, N, dtype=torch.bool)
    ref = reference_pagerank(q, k, valid, SCALE, tau=tau, iters=iters)
    close(pagerank_importance(q.float(), k.float(), valid, SCALE, tau=tau, pagerank_iters=iters), ref)


def test_pagerank_left_padded_matches_reference_and_subset():
    q, k = qk(3)
    valid = torch.ones(B, N, dtype=torch.bool)
    valid[1, :3] = False  # sample 1 left-padded: its first tokens are invalid
    got = pagerank_importance(q.float(), k.float(), valid, SCALE)
    assert not torch.isnan(got).any()
    close(got, reference_pagerank(q, k, valid, SCALE))
    assert bool((got[1, :3] == 0).all())
    # equals the computation on the valid tokens alone
    alone = pagerank_importance(q[1:, :, 3:].float(), k[1:, :, 3:].float(), torch.ones(1, N - 3, dtype=torch.bool), SCALE)
    torch.testing.assert_close(got[1, 3:], alone[0], rtol=1e-5, atol=1e-7)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), mask_bits=st.lists(st.booleans(), min_size=B * N, max_size=B * N))
def test_pagerank_any_valid_mask_equals_valid_subset(seed, mask_bits):
    """Invalid (pruned, padded) tokens neither cast nor receive a share; they score 0."""
    q, k = qk(seed)
    q, k = q.float(), k.float()
    valid = torch.tensor(mask_bits).view(B, N)
    got = pagerank_importance(q, k, valid, SCALE)
    assert not torch.isnan(got).any()
    assert bool((got[~valid] == 0).all())
    for b in range(B):
        idx = valid[b].nonzero().flatten()
        if len(idx) == 0:
            continue
        alone = pagerank_importance(
            q[b : b + 1][:, :, idx], k[b : b + 1][:, :, idx], torch.ones(1, len(idx), dtype=torch.bool), SCALE
        )
        torch.testing.assert_close(got[b, idx], alone[0], rtol=1e-5, atol=1e-7)


def test_pagerank_holes_match_reference():
    q, k = qk(4)
    valid = torch.tensor([[1, 0, 1, 1, 0, 1, 1], [0, 0, 1, 0, 1, 1, 0]], dtype=torch.bool)
    close(pagerank_importance(q.float(), k.float(), valid, SCALE), reference_pagerank(q, k, valid, SCALE))


def test_pagerank_no_nan_with_all_invalid_sample():
    q, k = qk(5)
    valid = torch.ones(B, N, dtype=torch.bool)
    valid[0] = False
    got = pagerank_importance(q.float(), k.float(), valid, SCALE)
    assert not torch.isnan(got).any()
    assert bool((got[0] == 0).all())
    close(got, reference_pagerank(q, k, valid, SCALE))


def test_pagerank_no_nan_with_huge_logits():
    q, k = qk(6)
    valid = torch.ones(B, N, dtype=torch.bool)
    valid[:, :2] = False
    got = pagerank_importance((q * 100).float(), (k * 100).float(), valid, SCALE)
    assert torch.isfinite(got).all()


def dense_pagerank(q, k, valid, scaling, tau=0.1, iters=5):
    """Vectorized float64 reference: the whole masked transition matrix, d <- d M in order."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1).double()
    logits = q.double() @ k.transpose(-1, -2) * scaling / tau
    n = q.shape[-2]
    allowed = torch.ones(n, n, dtype=torch.bool).tril() & valid[:, None, None, :]
    allowed = allowed | torch.eye(n, dtype=torch.bool)
    m = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    d = (valid.double() / valid.sum(-1, keepdim=True).clamp_min(1))[:, None, None, :].expand(-1, q.shape[1], 1, n)
    for _ in range(iters):
        d = d @ m
    return d.squeeze(-2).square().mean(1).sqrt()


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(1, 40),
    rows=st.integers(1, 45),
    nkv=st.sampled_from([1, 2, 4]),
    holes=st.floats(0.0, 0.7),
)
def test_pagerank_blocks_from_last_to_first_equal_dense(seed, n, rows, nkv, holes):
    """Any row-block size (one row, a partial last block, more rows than tokens) and any mask
    give the dense d <- d M result: the block order reuses each block for all power steps."""
    q, k = qk(seed, nkv=nkv, n=n)
    g = torch.Generator().manual_seed(seed)
    valid = torch.rand(B, n, generator=g) >= holes
    got = pagerank_importance(q.float(), k.float(), valid, SCALE, row_block=rows)
    torch.testing.assert_close(got.double(), dense_pagerank(q, k, valid, SCALE), rtol=1e-4, atol=1e-7)
    assert bool((got[~valid] == 0).all())


def test_pagerank_long_sequence_many_blocks_and_budget():
    """300 tokens in blocks of the default size and under a tiny memory budget (per-group
    chunks, few rows) all agree with the dense reference."""
    q, k = qk(11, b=1, nh=4, nkv=2, n=300, d=16)
    valid = torch.ones(1, 300, dtype=torch.bool)
    valid[0, :20] = False  # left padding
    ref = dense_pagerank(q, k, valid, 16**-0.5)
    for kwargs in ({}, {"max_bytes": 2 * 300 * 4 * 7}, {"row_block": 64}):
        got = pagerank_importance(q.float(), k.float(), valid, 16**-0.5, **kwargs)
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-8)


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 3), nkv=st.integers(1, 8), group=st.integers(1, 7), n=st.integers(0, 5000),
    max_bytes=st.integers(1, 1 << 31), device=st.sampled_from(["cpu", "cuda"]),
)
def test_pagerank_blocking_respects_budget(b, nkv, group, n, max_bytes, device):
    chunk, rows = pagerank_blocking(b, nkv, group, n, torch.device(device), max_bytes)
    assert 1 <= chunk <= nkv and 1 <= rows <= max(n, 1)
    block = b * chunk * group * rows * max(n, 1) * 4
    assert block <= max_bytes or (chunk == 1 and rows == 1)


def test_pagerank_valid_may_be_int_mask():
    q, k = qk(7)
    valid = torch.ones(B, N, dtype=torch.bool)
    valid[0, :2] = False
    a = pagerank_importance(q.float(), k.float(), valid, SCALE)
    b = pagerank_importance(q.float(), k.float(), valid.long(), SCALE)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("max_bytes", [1, B * N * N * 4 * 2, 3 * B * N * N * 4 * 2])
def test_pagerank_chunking_same_result(max_bytes):
    q, k = qk(8)
    q, k = q.float(), k.float()
    valid = torch.ones(B, N, dtype=torch.bool)
    valid[1, :2] = False
    one_chunk = pagerank_importance(q, k, valid, SCALE, max_bytes=1 << 30)
    chunked = pagerank_importance(q, k, valid, SCALE, max_bytes=max_bytes)
    torch.testing.assert_close(chunked, one_chunk, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(
        attention_importance(q, k, valid, SCALE, max_bytes=max_bytes),
        attention_importance(q, k, valid, SCALE),
        rtol=1e-6,
        atol=1e-8,
    )


def test_heads_per_chunk():
    from llava.aim.importance import _ROW_BLOCK

    # one head stores its lower-triangular row blocks of float32 probabilities
    per_head = B * N * (N + _ROW_BLOCK) // 2 * 4
    assert heads_per_chunk(B, NH, N, 1) == 1
    assert heads_per_chunk(B, NH, N, 0) == 1
    assert heads_per_chunk(B, NH, N, per_head) == 1
    assert heads_per_chunk(B, NH, N, 3 * per_head) == 3
    assert heads_per_chunk(B, NH, N, 3 * per_head + per_head - 1) == 3
    assert heads_per_chunk(B, NH, N, 100 * per_head) == NH
    assert heads_per_chunk(B, NH, 0, 10) == NH


def test_gqa_groups_share_kv_head():
    """nh=4, nkv=2: heads 0,1 use kv head 0; heads 2,3 use kv head 1 (repeat_interleave)."""
    q, k = qk(9)
    q, k = q.float(), k.float()
    valid = torch.ones(B, N, dtype=torch.bool)
    valid[0, :1] = False
    gqa = pagerank_importance(q, k, valid, SCALE)
    expanded = pagerank_importance(q, k.repeat_interleave(NH // NKV, dim=1), valid, SCALE)
    torch.testing.assert_close(gqa, expanded, rtol=1e-6, atol=1e-8)
    wrong = pagerank_importance(q, k.repeat(1, NH // NKV, 1, 1), valid, SCALE)  # 0,1,0,1 grouping
    assert not torch.allclose(gqa, wrong)
    for mb in (1, 1 << 30):  # also per head chunk
        torch.testing.assert_close(pagerank_importance(q, k, valid, SCALE, max_bytes=mb), gqa, rtol=1e-6, atol=1e-8)


def test_gqa_single_kv_head_reference():
    q, k = qk(10, nkv=1)
    valid = torch.ones(B, N, dtype=torch.bool)
    close(pagerank_importance(q.float(), k.float(), valid, SCALE), reference_pagerank(q, k, valid, SCALE))


def test_pagerank_bad_shapes_raise():
    q, k = qk(11)
    valid = torch.ones(B, N, dtype=torch.bool)
    with pytest.raises(ValueError):
        pagerank_importance(q, k[:, :, :-1], valid, SCALE)
    q3, k3 = qk(11, nh=3, nkv=2)
    with pytest.raises(ValueError):
        pagerank_importance(q3, k3, valid, SCALE)


def test_attention_importance_matches_reference():
    q, k = qk(12)
    valid = torch.ones(B, N, dtype=torch.bool)
    valid[1, :3] = False
    valid[0, 4] = False
    close(attention_importance(q.float(), k.float(), valid, SCALE), reference_attention(q, k, valid, SCALE))


# -- select_survivors ------------------------------------------------------------------------------
@st.composite
def selection_case(draw):
    b = draw(st.integers(1, 3))
    n = draw(st.integers(1, 12))
    scores = draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0]), min_size=b * n, max_size=b * n))
    visual = draw(st.lists(st.booleans(), min_size=b * n, max_size=b * n))
    alive = draw(st.lists(st.booleans(), min_size=b * n, max_size=b * n))
    keep = draw(st.lists(st.integers(0, n + 2), min_size=b, max_size=b))
    return (
        torch.tensor(scores, dtype=torch.float32).view(b, n),
        torch.tensor(visual).view(b, n),
        torch.tensor(alive).view(b, n),
        torch.tensor(keep),
    )


@settings(max_examples=150, deadline=None)
@given(selection_case())
def test_select_survivors_reference(case):
    scores, visual, alive, keep = case
    got = select_survivors(scores, visual, alive, keep)
    assert got.dtype == torch.bool and got.shape == scores.shape
    for b in range(scores.shape[0]):
        cands = [i for i in range(scores.shape[1]) if visual[b, i] and alive[b, i]]
        ranked = sorted(cands, key=lambda i: (-float(scores[b, i]), i))  # highest first, ties: lower index
        chosen = set(ranked[: int(keep[b])])
        expected = [
            bool(alive[b, i]) and (not bool(visual[b, i]) or i in chosen) for i in range(scores.shape[1])
        ]
        assert got[b].tolist() == expected
        # all non-visual alive tokens survive; exactly min(keep, candidates) visual ones
        assert int((got[b] & visual[b]).sum()) == min(int(keep[b]), len(cands))
        assert bool((got[b] <= alive[b]).all())


def test_select_survivors_ties_to_lower_index():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    visual = torch.tensor([[False, True, True, True, True, False]])
    alive = torch.ones(1, 6, dtype=torch.bool)
    got = select_survivors(scores, visual, alive, torch.tensor([2]))
    assert got.tolist() == [[True, True, True, False, False, True]]


def test_select_survivors_by_hand():
    scores = torch.tensor([[9.0, 0.1, 0.7, 0.3, 0.7, 0.9, 5.0], [0.0, 0.2, 0.1, 0.4, 0.3, 0.0, 0.0]])
    visual = torch.tensor([[0, 1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    alive = torch.tensor([[1, 1, 1, 1, 1, 0, 1], [0, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    # sample 0: slot 5 (0.9) is dead; best alive visual: 2 (0.7), 4 (0.7) -> keep 2: {2, 4}
    # sample 1: slot 0 dead (non-visual, dropped); keep 3 of {1: .2, 2: .1, 3: .4, 4: .3, 5: 0}
    got = select_survivors(scores, visual, alive, torch.tensor([2, 3]))
    assert got.int().tolist() == [[1, 0, 1, 0, 1, 0, 1], [0, 1, 0, 1, 1, 0, 1]]


def test_select_survivors_zero_keep():
    scores = torch.rand(2, 5)
    visual = torch.tensor([[0, 1, 1, 1, 0]] * 2, dtype=torch.bool)
    alive = torch.ones(2, 5, dtype=torch.bool)
    got = select_survivors(scores, visual, alive, torch.tensor([0, 0]))
    assert got.tolist() == [[True, False, False, False, True]] * 2


def test_select_survivors_nan_raises():
    scores = torch.tensor([[0.1, float("nan"), 0.3]])
    ones = torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(FloatingPointError):
        select_survivors(scores, ones, ones, torch.tensor([1]))


def test_pagerank_then_select_end_to_end():
    """The scores from pagerank_importance on a padded batch drive a sane selection."""
    q, k = qk(13)
    valid = torch.ones(B, N, dtype=torch.bool)
    valid[1, :2] = False
    scores = pagerank_importance(q.float(), k.float(), valid, SCALE)
    visual = torch.zeros(B, N, dtype=torch.bool)
    visual[:, 2:6] = True
    keep = select_survivors(scores, visual, valid, torch.tensor([2, 2]))
    assert keep[:, [0, 1, 6]].tolist() == [[True, True, True], [False, False, True]]
    assert keep[:, 2:6].sum(dim=1).tolist() == [2, 2]


# -- compact_left ----------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 4).flatmap(
        lambda b: st.integers(0, 10).flatmap(
            lambda n: st.lists(st.booleans(), min_size=b * n, max_size=b * n).map(
                lambda bits: torch.tensor(bits, dtype=torch.bool).view(b, n)
            )
        )
    )
)
def test_compact_left(keep):
    b, n = keep.shape
    index, alive = compact_left(keep)
    counts = keep.sum(dim=-1).tolist()
    width = max(counts) if counts else 0
    assert index.shape == (b, width) and alive.shape == (b, width)
    assert index.dtype == torch.long and alive.dtype == torch.bool
    assert torch.equal(alive, keep.gather(1, index))
    for r in range(b):
        c = counts[r]
        # right-aligned: dead padding on the left, kept slots on the right
        assert alive[r].tolist() == [False] * (width - c) + [True] * c
        # the kept slots, in their original order
        assert index[r, width - c :].tolist() == keep[r].nonzero().flatten().tolist()
        # gathering never duplicates a slot
        assert len(set(index[r].tolist())) == width
        assert all(0 <= i < n for i in index[r].tolist())


def test_compact_left_by_hand():
    keep = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    index, alive = compact_left(keep)
    assert alive.tolist() == [[True, True, True], [False, False, True], [False, False, False]]
    assert index[0].tolist() == [0, 2, 3]
    assert index[1, 2].item() == 3


def test_compact_left_all_dropped():
    index, alive = compact_left(torch.zeros(2, 4, dtype=torch.bool))
    assert index.shape == (2, 0) and alive.shape == (2, 0)


# -- ties and underflow (AIMConfig.tie_break) ----------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(selection_case(), st.integers(0, 2**16))
def test_select_survivors_tie_scores_reference(case, seed):
    """(score desc, tie key desc, index asc) lexicographic, against a sorted() reference."""
    scores, visual, alive, keep = case
    tie = torch.rand(scores.shape, generator=torch.Generator().manual_seed(seed)).round(decimals=1)
    got = select_survivors(scores, visual, alive, keep, tie)
    for b in range(scores.shape[0]):
        cands = [i for i in range(scores.shape[1]) if visual[b, i] and alive[b, i]]
        ranked = sorted(cands, key=lambda i: (-float(scores[b, i]), -float(tie[b, i]), i))
        chosen = set(ranked[: int(keep[b])])
        assert got[b].tolist() == [bool(alive[b, i]) and (not bool(visual[b, i]) or i in chosen)
                                   for i in range(scores.shape[1])]


@settings(max_examples=100, deadline=None)
@given(b=st.integers(1, 3), n=st.integers(1, 30), seed=st.integers(0, 2**16))
def test_tie_key_changes_nothing_without_ties(b, n, seed):
    """Distinct scores: any tie key gives the same survivors as the index rule, and no survivor
    is reported as decided by a tie."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randperm(b * n, generator=g).view(b, n).float() + 1  # all distinct, none 0
    visual = torch.rand(b, n, generator=g) < 0.7
    alive = torch.rand(b, n, generator=g) < 0.9
    keep = torch.randint(0, n + 1, (b,), generator=g)
    plain = select_survivors(scores, visual, alive, keep)
    assert torch.equal(select_survivors(scores, visual, alive, keep, torch.rand(b, n, generator=g)), plain)
    zero, decided = tie_counts(scores, visual, alive, plain)
    assert zero == [0] * b and decided == [0] * b


def test_tie_counts_by_hand():
    scores = torch.tensor([[3.0, 0.0, 0.0, 0.0, 1.0, 0.0], [2.0, 2.0, 2.0, 1.0, 0.0, 5.0]])
    visual = torch.tensor([[True, True, True, True, True, False], [True] * 6])
    alive = torch.ones(2, 6, dtype=torch.bool)
    keep = select_survivors(scores, visual, alive, torch.tensor([3, 2]))
    # sample 0: kept 3.0, 1.0 and the first of three zeros (index 1): one survivor decided by a tie
    # sample 1: kept 5.0 and the first 2.0 of three: one decided by a tie
    assert keep.tolist() == [[True, True, False, False, True, True], [True, False, False, False, False, True]]
    zero, decided = tie_counts(scores, visual, alive, keep)
    assert zero == [3, 1] and decided == [1, 1]
    # keeping all of the tied group: nothing decided by a tie
    keep = select_survivors(scores, visual, alive, torch.tensor([5, 4]))
    assert tie_counts(scores, visual, alive, keep)[1] == [0, 0]


def dense_log_first_step(q, k, valid, scaling, tau):
    """float64 reference: log of the RMS over heads of d_1 = uniform @ M."""
    group = q.shape[1] // k.shape[1]
    kk = k.repeat_interleave(group, dim=1).double()
    logits = q.double() @ kk.transpose(-1, -2) * scaling / tau
    n = q.shape[-2]
    allowed = (torch.ones(n, n, dtype=torch.bool).tril() & valid[:, None, None, :]) | torch.eye(n, dtype=torch.bool)
    m = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    d0 = (valid.double() / valid.sum(-1, keepdim=True).clamp_min(1))[:, None, None, :]
    d1 = (d0 @ m).squeeze(-2)  # (B, nh, N)
    return d1.square().mean(1).sqrt().log().masked_fill(~valid, float("-inf"))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 40), nkv=st.sampled_from([1, 2, 4]),
       holes=st.floats(0.0, 0.7), tau=st.sampled_from([0.1, 1.0]))
def test_log_first_step_matches_dense_reference(seed, n, nkv, holes, tau):
    q, k = qk(seed, nkv=nkv, n=n)
    valid = torch.rand(B, n, generator=torch.Generator().manual_seed(seed)) >= holes
    got = log_first_step_attention(q.float(), k.float(), valid, SCALE, tau)
    ref = dense_log_first_step(q, k, valid, SCALE, tau).float()
    assert torch.equal(torch.isinf(got), ~valid)
    torch.testing.assert_close(got[valid], ref[valid], rtol=1e-4, atol=1e-4)


def test_underflow_zero_scores_are_ordered_by_the_log_key():
    """Salient q/k at tau 0.1 in float32: most PageRank scores underflow to exactly 0 and the
    index rule picks the earliest; the log-domain key stays finite and distinct, so it orders
    the tied tokens by the attention they actually receive."""
    g = torch.Generator().manual_seed(0)
    n = 120
    q = torch.randn(1, 4, n, 16, generator=g) * 6
    k = torch.randn(1, 2, n, 16, generator=g) * 6
    valid = torch.ones(1, n, dtype=torch.bool)
    scores = pagerank_importance(q, k, valid, 16**-0.5, 0.1, 5)
    visual = torch.zeros(1, n, dtype=torch.bool)
    visual[:, 10:110] = True
    zeros = int(((scores == 0) & visual).sum())
    assert zeros > 50  # underflow, the 1459 of 1569 at the real shape
    keep_n = torch.tensor([100 - zeros + 10])  # cut inside the zero group
    plain = select_survivors(scores, visual, valid, keep_n)
    zero, decided = tie_counts(scores, visual, valid, plain)
    assert zero == [zeros] and decided == [10]
    key = log_first_step_attention(q, k, valid, 16**-0.5, 0.1)
    assert torch.isfinite(key).all()
    tied = ((scores == 0) & visual)[0].nonzero().flatten().tolist()
    # one value for all under the score, many under the key (equal only where the true values
    # are: e.g. tokens receiving nothing but their own diagonal share in one head)
    assert len(set(key[0, tied].tolist())) > len(tied) // 2
    broken = select_survivors(scores, visual, valid, keep_n, key)
    assert not torch.equal(broken, plain)
    chosen_tied = (broken & (scores == 0) & visual)[0].nonzero().flatten().tolist()
    best = sorted(tied, key=lambda i: (-float(key[0, i]), i))[:10]
    assert sorted(chosen_tied) == sorted(best)


@pytest.mark.parametrize("score", ["pagerank", "attention", "last_token", "log_first_step"])
@pytest.mark.parametrize("padded", [False, True])
def test_a_prefix_of_voters_scores_as_the_prefix_alone(score, padded):
    """Voters = the first P slots: the scores of those slots equal the scores of the first P
    slots alone (causal attention: later tokens neither vote nor change earlier rows); the
    later tokens get nothing but their own share. What a no-cache continuation prefill needs."""
    from llava.aim.importance import last_token_attention

    torch.manual_seed(3)
    b, nh, nkv, n, p, d = 2, 4, 2, 40, 29, 8
    q, k = torch.randn(b, nh, n, d), torch.randn(b, nkv, n, d)
    valid = torch.ones(b, n, dtype=torch.bool)
    if padded:
        valid[1, :5] = False  # left padding
    voters = valid & (torch.arange(n) < p)
    fns = {
        "pagerank": lambda q, k, v, **kw: pagerank_importance(q, k, v, 0.35, 0.1, 5, row_block=16, **kw),
        "attention": lambda q, k, v, **kw: attention_importance(q, k, v, 0.35, **kw),
        "last_token": lambda q, k, v, **kw: last_token_attention(q, k, v, 0.35, **kw),
        "log_first_step": lambda q, k, v, **kw: log_first_step_attention(q, k, v, 0.35, 0.1, **kw),
    }
    fn = fns[score]
    alone = fn(q[:, :, :p], k[:, :, :p], valid[:, :p])
    with_later = fn(q, k, valid, voters=voters)
    torch.testing.assert_close(with_later[:, :p], alone, rtol=1e-5, atol=1e-7)
    # without the voters mask the later tokens change the prefix's scores (the test has teeth)
    assert not torch.allclose(fn(q, k, valid)[:, :p], alone, rtol=1e-3, atol=1e-6)
