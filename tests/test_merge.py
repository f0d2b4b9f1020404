"""Tests of llava.aim.merge: stage 1 of AIM (per-frame bipartite token merging, docs/method.md)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import llava.aim.merge as merge_mod
from llava.aim.merge import bipartite_merge_step, merge_frames, merge_schedule, merged_token_count

FAST = settings(max_examples=40, deadline=None)


def randn(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def counts_of(source_index: torch.Tensor, k: int) -> torch.Tensor:
    """(F, k) how many original tokens each merged token received, from source_index (F, T)."""
    return torch.stack([torch.bincount(row, minlength=k) for row in source_index])


# -- a slow, obviously-correct reference of docs/method.md, with Python lists ---------------------
def _cos(a, b):
    na = math.sqrt(sum(v * v for v in a))
    nb = math.sqrt(sum(v * v for v in b))
    return sum(x * y for x, y in zip(a, b)) / (na * nb)


def reference_merge(frame, steps, weighting, order):
    """Merge one frame (list of T vectors) with the given step sizes, as docs/method.md says.

    Returns a list of (vector, size, position, members) with position the original position
    of the token's destination chain and members the original tokens it stands for.
    """
    items = [(list(map(float, v)), 1, i, [i]) for i, v in enumerate(frame)]
    for r in steps:
        srcs, dsts = items[0::2], items[1::2]
        best = []
        for s in srcs:
            sims = [_cos(s[0], d[0]) for d in dsts]
            j = max(range(len(dsts)), key=lambda jj: (sims[jj], -jj))  # first maximum
            best.append((sims[j], j))
        ranked = sorted(range(len(srcs)), key=lambda i: -best[i][0])  # stable: ties by index
        merged, kept = ranked[:r], ranked[r:]
        new_dsts = []
        for j, d in enumerate(dsts):
            group = [srcs[i] for i in merged if best[i][1] == j]
            members = d[3] + [m for g in group for m in g[3]]
            size = d[1] + sum(g[1] for g in group)
            if weighting == "mean":
                vals = [d[0]] + [g[0] for g in group]
                vec = [sum(col) / len(vals) for col in zip(*vals)]
            else:
                vec = [
                    (d[0][c] * d[1] + sum(g[0][c] * g[1] for g in group)) / size
                    for c in range(len(d[0]))
                ]
            new_dsts.append((vec, size, d[2], members))
        items = [srcs[i] for i in kept] + new_dsts
        if order == "spatial":
            items.sort(key=lambda it: it[2])
    return items


# -- token counts -------------------------------------------------------------------------
# The official code removes T // 2^k of the frame's ORIGINAL count T at step k; "exact" keeps
# floor(T * retention) (the count of the paper's efficiency tables).
OFFICIAL_196 = [(0.5, 98), (0.25, 49), (0.125, 25), (1 / 16, 13), (1 / 32, 7), (1 / 64, 4), (1.0, 196)]
EXACT_196 = [(0.5, 98), (0.25, 49), (0.125, 24), (1 / 16, 12), (1 / 32, 6), (1 / 64, 3), (1.0, 196)]


@pytest.mark.parametrize("retention, expected", OFFICIAL_196)
def test_official_counts_196(retention, expected):
    assert merged_token_count(196, retention) == expected  # the default rule
    assert merged_token_count(196, retention, "official") == expected
    out = merge_frames(randn(2, 196, 4), retention)
    assert out.tokens.shape == (2, expected, 4)
    assert out.sizes.shape == (2, expected)


@pytest.mark.parametrize("retention, expected", EXACT_196)
def test_exact_counts_196(retention, expected):
    assert merged_token_count(196, retention, "exact") == expected
    out = merge_frames(randn(2, 196, 4), retention, merge_count="exact")
    assert out.tokens.shape == (2, expected, 4)


@pytest.mark.parametrize(
    "retention, steps",
    [(0.4375, [288, 36]), (0.125, [288, 144, 72]), (0.5, [288]), (0.25, [288, 144])],
)
def test_official_llava15_schedules(retention, steps):
    """The official LLaVA-1.5 settings: 576 -> 288 -> 252 (43.75%) and 576 -> 288 -> 144 -> 72 (12.5%)."""
    assert merge_schedule(576, retention) == steps
    assert merged_token_count(576, retention) == 576 - sum(steps)


def test_official_and_exact_schedules_196():
    assert merge_schedule(196, 1 / 64) == [98, 49, 24, 12, 6, 3]
    assert merge_schedule(196, 1 / 64, "exact") == [98, 49, 24, 12, 6, 3, 1]
    assert merge_schedule(196, 1 / 8, "exact") == [98, 49, 24, 1]
    assert merge_schedule(196, 1.0) == merge_schedule(196, 1.0, "exact") == []
    # a retention that is not 1/2^K: the official step sizes, the last removing just enough
    assert merge_schedule(196, 0.375) == [98, 25]
    assert merge_schedule(196, 0.375, "exact") == [98, 25]


@FAST
@given(t=st.integers(1, 5000), halvings=st.integers(0, 14))
def test_official_power_of_half_closed_form(t, halvings):
    """At 1/2^K the official count is T - sum_k floor(T / 2^k): the half-of-the-input cap of a
    bipartite step never binds, because each step's input is at least T / 2^(k-1)."""
    steps = merge_schedule(t, 2.0 ** -halvings)
    removed = [t >> k for k in range(1, halvings + 1)]
    assert steps == [r for r in removed if r > 0][: len(steps)]
    assert merged_token_count(t, 2.0 ** -halvings) == t - sum(removed)


@FAST
@given(t=st.integers(1, 5000), halvings=st.integers(0, 14))
def test_official_keeps_at_least_exact(t, halvings):
    official = merged_token_count(t, 2.0 ** -halvings)
    exact = merged_token_count(t, 2.0 ** -halvings, "exact")
    assert exact <= official <= t
    assert official - exact <= halvings  # each step rounds down by less than one token


@FAST
@given(t=st.integers(1, 3000), retention=st.floats(0, 1, exclude_min=True), rule=st.sampled_from(["official", "exact"]))
def test_schedule_steps_are_valid_matchings(t, retention, rule):
    """Every step removes between 1 and half of its input, and the schedule ends at the count."""
    tokens = t
    for r in merge_schedule(t, retention, rule):
        assert 1 <= r <= tokens // 2
        tokens -= r
    assert tokens == merged_token_count(t, retention, rule) >= 1


@FAST
@given(t=st.integers(1, 3000), retention=st.floats(0, 1, exclude_min=True))
def test_official_equals_exact_off_powers_of_half(t, retention):
    mantissa, _ = math.frexp(retention)
    if mantissa != 0.5:
        assert merged_token_count(t, retention) == merged_token_count(t, retention, "exact")


@FAST
@given(t=st.integers(1, 400), k=st.integers(1, 10_000))
def test_count_is_floor_of_decimal_retention(t, k):
    """retention = k/10000, rule "exact": the count is exactly max(1, floor(T * k / 10000))."""
    retention = k / 10_000
    expected = max(1, (t * k) // 10_000)
    assert merged_token_count(t, retention, "exact") == expected


@FAST
@given(t=st.integers(1, 400), retention=st.floats(0, 1, exclude_min=True))
def test_count_any_float_retention(t, retention):
    """floor(T * retention) of the exact float, up to the documented 1e-9 guard."""
    exact = Fraction(t) * Fraction(retention)
    floor = max(1, math.floor(exact))
    got = merged_token_count(t, retention, "exact")
    if got != floor:
        # Only allowed where the product is within the guard just below the next integer.
        assert got == floor + 1 and math.floor(exact) + 1 - exact < Fraction(1, 10**8)
    assert 1 <= got <= t


@settings(max_examples=25, deadline=None)
@given(t=st.integers(1, 400), k=st.integers(1, 1000), seed=st.integers(0, 2**16), rule=st.sampled_from(["official", "exact"]))
def test_merge_frames_reaches_the_count(t, k, seed, rule):
    retention = k / 1000
    out = merge_frames(randn(1, t, 3, seed=seed), retention, track_sources=True, merge_count=rule)
    expected = merged_token_count(t, retention, rule)
    assert out.tokens.shape == (1, expected, 3)
    assert out.sizes.shape == (1, expected)
    assert out.source_index.shape == (1, t)


@pytest.mark.parametrize(
    "retention, rule, steps",
    [
        (0.5, "official", [(196, 98)]),
        (0.25, "official", [(196, 98), (98, 49)]),
        (0.125, "official", [(196, 98), (98, 49), (49, 24)]),
        (0.125, "exact", [(196, 98), (98, 49), (49, 24), (25, 1)]),
        (1 / 64, "official", [(196, 98), (98, 49), (49, 24), (25, 12), (13, 6), (7, 3)]),
        (1 / 64, "exact", [(196, 98), (98, 49), (49, 24), (25, 12), (13, 6), (7, 3), (4, 1)]),
    ],
)
def test_step_sequence_196(monkeypatch, retention, rule, steps):
    """196 -> 98 -> 49 for 25%: the steps merge_frames runs are merge_schedule's."""
    calls = []
    real = merge_mod.bipartite_merge_step

    def spy(x, sizes, r, *args, **kwargs):
        calls.append((x.shape[1], r))
        return real(x, sizes, r, *args, **kwargs)

    monkeypatch.setattr(merge_mod, "bipartite_merge_step", spy)
    merge_frames(randn(1, 196, 4), retention, merge_count=rule)
    assert calls == steps


def test_official_steps_differ_from_greedy_steps():
    """T = 11 at 1/16: the official removes 5, 2, 1 (11 -> 6 -> 4 -> 3); taking as many as
    possible per step would go 11 -> 6 -> 3. Same count, other merges: the steps are pinned."""
    assert merge_schedule(11, 1 / 16) == [5, 2, 1]
    assert merged_token_count(11, 1 / 16, "exact") == 1


def test_196_to_49_equals_two_manual_steps():
    x = randn(3, 196, 8, seed=5)
    ones = torch.ones(3, 196, dtype=x.dtype)
    for order in ("paper", "spatial"):
        for weighting in ("mean", "size"):
            y1, s1, _, _ = bipartite_merge_step(x, ones, 98, weighting, order)
            assert y1.shape == (3, 98, 8)
            y2, s2, _, _ = bipartite_merge_step(y1, s1, 49, weighting, order)
            out = merge_frames(x, 0.25, weighting, order)
            assert torch.equal(out.tokens, y2)
            assert torch.equal(out.sizes, s2)


# -- conservation ---------------------------------------------------------------------------
@FAST
@given(
    t=st.integers(1, 120),
    k=st.integers(1, 100),
    frames=st.integers(1, 3),
    order=st.sampled_from(["paper", "spatial"]),
    seed=st.integers(0, 2**16),
)
def test_size_weighting_preserves_weighted_sum(t, k, frames, order, seed):
    x = randn(frames, t, 5, seed=seed)
    out = merge_frames(x, k / 100, weighting="size", order=order)
    weighted = (out.tokens * out.sizes.unsqueeze(-1)).sum(dim=1)
    torch.testing.assert_close(weighted, x.sum(dim=1), rtol=1e-10, atol=1e-10)


@FAST
@given(
    t=st.integers(1, 120),
    k=st.integers(1, 100),
    weighting=st.sampled_from(["mean", "size"]),
    order=st.sampled_from(["paper", "spatial"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_sizes_and_sources_cover_every_token_once(t, k, weighting, order, dtype, seed):
    x = randn(2, t, 4, seed=seed, dtype=dtype)
    out = merge_frames(x, k / 100, weighting=weighting, order=order, track_sources=True)
    kk = out.tokens.shape[1]
    assert torch.equal(out.sizes.sum(dim=1), torch.full((2,), float(t), dtype=dtype))
    assert out.source_index.dtype == torch.long
    assert int(out.source_index.min()) >= 0 and int(out.source_index.max()) < kk
    # every original token lands in exactly one merged token; counts per merged token == sizes
    assert torch.equal(counts_of(out.source_index, kk).to(dtype), out.sizes)
    assert bool((out.sizes >= 1).all())


@pytest.mark.parametrize("weighting", ["mean", "size"])
def test_sizes_exact_in_bfloat16_beyond_256_tokens(weighting):
    """LLaVA-1.5 gives 576 tokens per image and models run in bfloat16: the sizes (how many
    original tokens each merged token stands for) must still be exact integers summing to T."""
    x = randn(4, 576, 8, seed=2).to(torch.bfloat16)
    for retention in (0.005, 0.01):
        out = merge_frames(x, retention, weighting=weighting, track_sources=True)
        k = out.tokens.shape[1]
        assert counts_of(out.source_index, k).tolist() == out.sizes.to(torch.int64).tolist()
        assert out.sizes.double().sum(dim=1).tolist() == [576.0] * 4


# -- identity, order, determinism -------------------------------------------------------------
@pytest.mark.parametrize("order", ["paper", "spatial"])
@pytest.mark.parametrize("weighting", ["mean", "size"])
def test_retention_one_is_identity(order, weighting):
    x = randn(3, 37, 6, seed=1)
    out = merge_frames(x, 1.0, weighting=weighting, order=order, track_sources=True)
    assert torch.equal(out.tokens, x)
    assert torch.equal(out.sizes, torch.ones(3, 37, dtype=x.dtype))
    assert torch.equal(out.source_index, torch.arange(37).expand(3, 37))


def test_retention_one_identity_single_token_frame():
    x = randn(2, 1, 4)
    for retention in (1.0, 0.5, 0.01):
        assert torch.equal(merge_frames(x, retention).tokens, x)


def _step_roots(x, sizes, r, weighting, order, roots):
    """One step; returns its outputs and, for each output slot, the original position of its
    root (the destination chain), derived from new_index: a slot holding several input tokens
    holds exactly one destination (odd input position); a slot with one input is that input."""
    y, s, new_index, _ = bipartite_merge_step(x, sizes, r, weighting, order)
    f, t = new_index.shape
    out_roots = torch.full((f, y.shape[1]), -1, dtype=torch.long)
    for fi in range(f):
        for slot in range(y.shape[1]):
            inputs = (new_index[fi] == slot).nonzero().flatten().tolist()
            assert inputs, "an output slot received no input"
            odd = [i for i in inputs if i % 2 == 1]
            if len(inputs) > 1:
                assert len(odd) == 1, f"a merged slot must hold exactly one destination, got {inputs}"
            root = odd[0] if odd else inputs[0]
            out_roots[fi, slot] = roots[fi, root]
    return y, s, out_roots


@settings(max_examples=15, deadline=None)
@given(t=st.integers(2, 60), k=st.integers(1, 99), seed=st.integers(0, 2**16))
def test_spatial_order_keeps_positions_increasing(t, k, seed):
    """Spatial: every surviving token sits at its destination's original position, so the
    positions of the output tokens are strictly increasing, step after step."""
    x = randn(2, t, 4, seed=seed)
    sizes = torch.ones(2, t, dtype=x.dtype)
    roots = torch.arange(t).expand(2, t)
    y = x
    for r in merge_schedule(t, k / 100):
        y, sizes, roots = _step_roots(y, sizes, r, "mean", "spatial", roots)
        assert bool((roots[:, 1:] > roots[:, :-1]).all()), roots
    out = merge_frames(x, k / 100, order="spatial", track_sources=True)
    assert torch.equal(out.tokens, y)
    # tokens that were never merged keep their relative order, and their own value
    for f in range(2):
        single = (out.sizes[f] == 1).nonzero().flatten()
        originals = [int((out.source_index[f] == s).nonzero()) for s in single]
        assert originals == sorted(originals)
        for s, o in zip(single.tolist(), originals):
            assert torch.equal(out.tokens[f, s], x[f, o])


@settings(max_examples=20, deadline=None)
@given(
    t=st.integers(1, 40),
    k=st.integers(1, 100),
    weighting=st.sampled_from(["mean", "size"]),
    order=st.sampled_from(["paper", "spatial"]),
    seed=st.integers(0, 2**16),
)
def test_matches_python_reference(t, k, weighting, order, seed):
    x = randn(2, t, 3, seed=seed)
    steps = merge_schedule(t, k / 100)
    out = merge_frames(x, k / 100, weighting=weighting, order=order, track_sources=True)
    for f in range(2):
        ref = reference_merge(x[f].tolist(), steps, weighting, order)
        assert out.tokens.shape[1] == len(ref)
        expected = torch.tensor([it[0] for it in ref], dtype=torch.float64)
        torch.testing.assert_close(out.tokens[f], expected, rtol=1e-12, atol=1e-12)
        assert out.sizes[f].tolist() == [float(it[1]) for it in ref]
        for slot, it in enumerate(ref):
            assert sorted((out.source_index[f] == slot).nonzero().flatten().tolist()) == sorted(it[3])


def _angle(deg):
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_paper_order_by_hand_t8():
    """Destinations x1, x3, x5, x7 at 0, 90, 180, 270 degrees; sources x0 at 10 (-> x1,
    cos 10 = .985), x2 at 5 (-> x1, .996), x4 at 120 (-> x3, .866), x6 at 200 (-> x5, .940).
    Target 6 of 8: r = 2, so x2 and x0 merge into x1; x6 and x4 are kept, in that order."""
    deg = [10, 0, 5, 90, 120, 180, 200, 270]
    x = torch.tensor([[_angle(d) for d in deg]], dtype=torch.float64)
    mean_dst = (x[0, 1] + x[0, 0] + x[0, 2]) / 3
    out = merge_frames(x, 0.75, track_sources=True)  # mean, paper order
    expected = torch.stack([x[0, 6], x[0, 4], mean_dst, x[0, 3], x[0, 5], x[0, 7]])
    torch.testing.assert_close(out.tokens[0], expected, rtol=1e-14, atol=1e-14)
    assert out.sizes.tolist() == [[1, 1, 3, 1, 1, 1]]
    assert out.source_index.tolist() == [[2, 2, 2, 3, 1, 4, 0, 5]]

    sp = merge_frames(x, 0.75, order="spatial", track_sources=True)
    expected = torch.stack([mean_dst, x[0, 3], x[0, 4], x[0, 5], x[0, 6], x[0, 7]])
    torch.testing.assert_close(sp.tokens[0], expected, rtol=1e-14, atol=1e-14)
    assert sp.sizes.tolist() == [[3, 1, 1, 1, 1, 1]]
    assert sp.source_index.tolist() == [[0, 0, 0, 1, 2, 3, 4, 5]]

    sized = merge_frames(x, 0.75, weighting="size")
    torch.testing.assert_close(sized.tokens, out.tokens)  # one step: both weightings agree


def test_paper_order_by_hand_t6():
    x = torch.tensor([[[1, 0.1], [1, 0], [0.6, 0.8], [0, 1], [-1, 0.5], [-1, 0]]], dtype=torch.float64)
    # sims: x0->x1 .995, x4->x5 .894, x2->x3 .8; target 4 (floor(6 * .67)), r = 2
    out = merge_frames(x, 0.67)
    expected = torch.tensor([[[0.6, 0.8], [1, 0.05], [0, 1], [-1, 0.25]]], dtype=torch.float64)
    torch.testing.assert_close(out.tokens, expected, rtol=1e-14, atol=1e-14)
    assert out.sizes.tolist() == [[1, 2, 1, 2]]


def test_mean_is_not_size_weighted_across_steps():
    """Second step: plain mean of destination and source, ignoring earlier sizes (paper's code);
    "size" weights by the number of original tokens instead."""
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]], dtype=torch.float64)
    # T=3 -> 1 token. Step 1 (t=3, r=1): A = x0, x2; B = x1. x0 -> x1 (sim .995) beats
    # x2 -> x1 (.0995): d1 = (x0 + x1) / 2 (size 2), x2 kept. Step 2 (t=2, r=1): x2 -> d1.
    out_mean = merge_frames(x, 0.25, weighting="mean", track_sources=True, merge_count="exact")
    out_size = merge_frames(x, 0.25, weighting="size", track_sources=True, merge_count="exact")
    assert out_mean.sizes.tolist() == out_size.sizes.tolist() == [[3.0]]
    d1 = (x[0, 1] + x[0, 0]) / 2
    torch.testing.assert_close(out_mean.tokens[0, 0], (d1 + x[0, 2]) / 2, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(out_size.tokens[0, 0], x[0].mean(0), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("order", ["paper", "spatial"])
def test_ties_broken_by_index(order):
    """All-equal tokens (exactly representable cosines): every source picks destination x1
    (lowest index), and the lowest-index sources are merged first."""
    x = torch.ones(1, 6, 4, dtype=torch.float64) * torch.arange(1, 7, dtype=torch.float64)[None, :, None]
    # all tokens are positive multiples of (1,1,1,1): cosine exactly 1 everywhere
    out = merge_frames(x, 4 / 6 + 1e-12, order=order, track_sources=True)
    dst = (x[0, 1] + x[0, 0] + x[0, 2]) / 3
    if order == "paper":
        expected = torch.stack([x[0, 4], dst, x[0, 3], x[0, 5]])
        assert out.source_index.tolist() == [[1, 1, 1, 2, 0, 3]]
        assert out.sizes.tolist() == [[1, 3, 1, 1]]
    else:
        expected = torch.stack([dst, x[0, 3], x[0, 4], x[0, 5]])
        assert out.source_index.tolist() == [[0, 0, 0, 1, 2, 3]]
        assert out.sizes.tolist() == [[3, 1, 1, 1]]
    torch.testing.assert_close(out.tokens[0], expected, rtol=1e-14, atol=1e-14)
    again = merge_frames(x.clone(), 4 / 6 + 1e-12, order=order, track_sources=True)
    assert torch.equal(again.tokens, out.tokens)
    assert torch.equal(again.source_index, out.source_index)


@settings(max_examples=15, deadline=None)
@given(
    t=st.integers(1, 80),
    k=st.integers(1, 100),
    weighting=st.sampled_from(["mean", "size"]),
    order=st.sampled_from(["paper", "spatial"]),
    seed=st.integers(0, 2**16),
    quantized=st.booleans(),
)
def test_deterministic(t, k, weighting, order, seed, quantized):
    x = randn(3, t, 4, seed=seed)
    if quantized:  # many exact ties
        x = x.round()
    a = merge_frames(x, k / 100, weighting, order, track_sources=True)
    b = merge_frames(x.clone(), k / 100, weighting, order, track_sources=True)
    assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.sizes, b.sizes)
    assert torch.equal(a.source_index, b.source_index)


@settings(max_examples=15, deadline=None)
@given(
    t=st.integers(1, 80),
    k=st.integers(1, 100),
    frames=st.integers(2, 4),
    weighting=st.sampled_from(["mean", "size"]),
    order=st.sampled_from(["paper", "spatial"]),
    seed=st.integers(0, 2**16),
)
def test_batch_equals_each_frame_alone(t, k, frames, weighting, order, seed):
    x = randn(frames, t, 6, seed=seed)
    batched = merge_frames(x, k / 100, weighting, order, track_sources=True)
    for f in range(frames):
        alone = merge_frames(x[f : f + 1], k / 100, weighting, order, track_sources=True)
        torch.testing.assert_close(batched.tokens[f : f + 1], alone.tokens, rtol=1e-12, atol=1e-12)
        assert torch.equal(batched.sizes[f : f + 1], alone.sizes)
        assert torch.equal(batched.source_index[f : f + 1], alone.source_index)


def test_zero_vectors_do_not_produce_nan():
    x = torch.zeros(2, 10, 4, dtype=torch.float32)
    x[1, 3] = 1.0
    out = merge_frames(x, 0.3, track_sources=True)
    assert out.tokens.shape == (2, 3, 4)
    assert not torch.isnan(out.tokens).any()
    assert out.sizes.sum(1).tolist() == [10.0, 10.0]


def test_dtype_and_device_preserved():
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = randn(2, 20, 4).to(dtype)
        out = merge_frames(x, 0.25, track_sources=True)
        assert out.tokens.dtype == dtype
        assert out.tokens.shape == (2, 5, 4)


# -- a separate similarity metric (LLaVA-1.5's official path: CLIP keys) ---------------------
@settings(max_examples=20, deadline=None)
@given(
    t=st.integers(1, 80),
    k=st.integers(1, 100),
    weighting=st.sampled_from(["mean", "size"]),
    order=st.sampled_from(["paper", "spatial"]),
    seed=st.integers(0, 2**16),
)
def test_metric_decides_the_matching_and_is_merged_alongside(t, k, weighting, order, seed):
    """Merging x with metric m groups x exactly as merging m alone groups m, at every step (the
    metric is merged with the same matching, so later steps see the merged metric)."""
    x, m = randn(2, t, 5, seed=seed), randn(2, t, 3, seed=seed + 1)
    with_metric = merge_frames(x, k / 100, weighting, order, track_sources=True, metric=m)
    metric_alone = merge_frames(m, k / 100, weighting, order, track_sources=True)
    assert torch.equal(with_metric.source_index, metric_alone.source_index)
    assert torch.equal(with_metric.sizes, metric_alone.sizes)
    # the features follow the same groups: merging [m | x] on m gives both halves
    joint = merge_frames(torch.cat([m, x], dim=-1), k / 100, weighting, order, metric=m)
    torch.testing.assert_close(joint.tokens[..., :3], metric_alone.tokens, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(joint.tokens[..., 3:], with_metric.tokens, rtol=1e-12, atol=1e-12)


def test_metric_equal_to_tokens_changes_nothing():
    x = randn(3, 196, 6, seed=4)
    a = merge_frames(x, 0.125, track_sources=True)
    b = merge_frames(x, 0.125, track_sources=True, metric=x.clone())
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.source_index, b.source_index)


def test_metric_shape_checked():
    with pytest.raises(ValueError, match="metric"):
        merge_frames(torch.randn(2, 10, 4), 0.5, metric=torch.randn(2, 9, 4))


# -- bad arguments -------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(10, 4), (2, 3, 10, 4), (5,)])
def test_wrong_shape_raises(shape):
    with pytest.raises(ValueError):
        merge_frames(torch.randn(*shape), 0.5)


def test_empty_frame_raises():
    with pytest.raises(ValueError):
        merge_frames(torch.randn(2, 0, 4), 0.5)
    with pytest.raises(ValueError):
        merged_token_count(0, 0.5)
    with pytest.raises(ValueError, match="merge_count"):
        merged_token_count(10, 0.5, "floor")


@pytest.mark.parametrize("kwargs", [{"weighting": "median"}, {"order": "random"}, {"weighting": "Mean"}])
def test_unknown_options_raise(kwargs):
    with pytest.raises(ValueError):
        merge_frames(torch.randn(1, 8, 4), 0.5, **kwargs)


@pytest.mark.parametrize("retention", [0.0, -0.1, 1.5, float("nan"), float("inf"), -1.0])
def test_retention_out_of_range_raises(retention):
    with pytest.raises(ValueError):
        merged_token_count(10, retention)
    with pytest.raises(ValueError):
        merge_frames(torch.randn(1, 10, 4), retention)


@pytest.mark.parametrize("r", [-1, 6, 11])
def test_step_r_out_of_range_raises(r):
    x = torch.randn(1, 11, 4)
    with pytest.raises(ValueError):
        bipartite_merge_step(x, torch.ones(1, 11), r)


def test_step_r_zero_keeps_all_tokens():
    x = randn(2, 7, 3)
    y, s, idx, _ = bipartite_merge_step(x, torch.ones(2, 7, dtype=x.dtype), 0, order="spatial")
    assert torch.equal(y, x)
    assert torch.equal(idx, torch.arange(7).expand(2, 7))


# -- destinations: the original token each merged token stands in for -----------------------
@FAST
@given(
    t=st.integers(1, 90),
    k=st.integers(1, 100),
    order=st.sampled_from(["paper", "spatial"]),
    seed=st.integers(0, 2**16),
)
def test_dest_index_is_the_reference_destination_chain(t, k, order, seed):
    """dest_index[f, s] is the original position of merged token s's destination chain (the
    reference's ``position``), a member of its own group; in spatial order it increases."""
    x = randn(2, t, 3, seed=seed)
    out = merge_frames(x, k / 100, order=order, track_sources=True, track_destinations=True)
    kk = out.tokens.shape[1]
    assert out.dest_index.shape == (2, kk) and out.dest_index.dtype == torch.long
    for f in range(2):
        ref = reference_merge(x[f].tolist(), merge_schedule(t, k / 100), "mean", order)
        assert out.dest_index[f].tolist() == [item[2] for item in ref]
    # each merged token's destination went into that very token
    assert torch.equal(out.source_index.gather(1, out.dest_index), torch.arange(kk).expand(2, kk))
    if order == "spatial":
        assert bool((out.dest_index[:, 1:] > out.dest_index[:, :-1]).all())


def test_dest_index_of_one_step_paper_order():
    # paper order: [kept sources] then [all destinations, the odd positions, in order]
    out = merge_frames(randn(1, 10, 4), 0.6, track_destinations=True)  # 10 -> 6: r = 4
    assert out.dest_index[0, -5:].tolist() == [1, 3, 5, 7, 9]
    assert all(i % 2 == 0 for i in out.dest_index[0, :-5].tolist())
    assert merge_frames(randn(1, 10, 4), 1.0, track_destinations=True).dest_index.tolist() == [list(range(10))]
    assert merge_frames(randn(1, 10, 4), 0.5).dest_index is None  # only when asked for
