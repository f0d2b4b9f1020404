"""Tests of llava.aim.schedule: how many visual tokens enter each decoder layer (docs/method.md)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llava.aim.schedule import pruning_layers, visual_tokens_per_layer

FAST = settings(max_examples=200, deadline=None)


@st.composite
def schedules(draw, max_layers=40, max_v0=10**6):
    num_layers = draw(st.integers(1, max_layers))
    l1 = draw(st.integers(0, max_layers + 2))
    l2 = draw(st.integers(l1 + 1, max_layers + 5))
    v0 = draw(st.integers(0, max_v0))
    return v0, num_layers, l1, l2


# -- hand-checked examples -----------------------------------------------------------------
def test_paper_default_runtime_28_layers():
    v0 = 6272  # 32 frames x 196 tokens
    counts = visual_tokens_per_layer(v0, 28, 14, 22)
    eighth = v0 // 8  # 784
    expected = [6272] * 15 + [7 * eighth, 6 * eighth, 5 * eighth, 4 * eighth, 3 * eighth, 2 * eighth, eighth] + [0] * 6
    assert expected[15:22] == [5488, 4704, 3920, 3136, 2352, 1568, 784]
    assert counts == expected
    assert len(counts) == 28
    assert pruning_layers(counts) == list(range(14, 22))


def test_paper_default_entering_layers_are_k_eighths():
    for v0 in (6272, 1568, 1000, 7, 1):
        counts = visual_tokens_per_layer(v0, 28, 14, 22)
        for j, k in zip(range(15, 22), range(7, 0, -1)):
            assert counts[j] == (v0 * k) // 8
        assert counts[:15] == [v0] * 15
        assert counts[22:] == [0] * 6


def test_paper_default_paper_convention_28_layers():
    counts = visual_tokens_per_layer(6272, 28, 14, 22, convention="paper")
    assert counts == [6272] * 14 + [5488, 4704, 3920, 3136, 2352, 1568, 784] + [0] * 7
    assert pruning_layers(counts) == list(range(13, 21))


def test_small_v0_floor_leaves_counts_unchanged():
    counts = visual_tokens_per_layer(3, 28, 14, 22)
    # floor(3*k/8) for k = 7..1: 2, 2, 1, 1, 1, 0, 0
    assert counts[14:23] == [3, 2, 2, 1, 1, 1, 0, 0, 0]
    assert pruning_layers(counts) == [14, 16, 19]


def test_l2_beyond_model_prunes_nothing_28_29():
    counts = visual_tokens_per_layer(6272, 28, 28, 29)
    assert counts == [6272] * 28
    assert pruning_layers(counts) == []


def test_l2_beyond_model_never_reaches_zero():
    counts = visual_tokens_per_layer(100, 28, 20, 40)
    assert counts[:21] == [100] * 21
    assert counts[27] == (100 * (40 - 27)) // 20 == 65
    assert min(counts) > 0


def test_l1_zero():
    counts = visual_tokens_per_layer(100, 6, 0, 4)
    assert counts == [100, 75, 50, 25, 0, 0]
    assert pruning_layers(counts) == [0, 1, 2, 3]
    paper = visual_tokens_per_layer(100, 6, 0, 4, convention="paper")
    assert paper == [75, 50, 25, 0, 0, 0]


def test_llava15_preset_32_layers():
    counts = visual_tokens_per_layer(576, 32, 16, 25)
    assert counts[:17] == [576] * 17
    assert counts[17:25] == [576 * k // 9 for k in range(8, 0, -1)]
    assert counts[25:] == [0] * 7


@pytest.mark.parametrize("convention", ["runtime", "paper"])
def test_disabled_is_v0_everywhere(convention):
    assert visual_tokens_per_layer(6272, 28, None, None, convention) == [6272] * 28
    assert visual_tokens_per_layer(0, 3, None, None, convention) == [0, 0, 0]
    assert pruning_layers(visual_tokens_per_layer(5, 4, None, None, convention)) == []


def test_v0_zero():
    assert visual_tokens_per_layer(0, 28, 14, 22) == [0] * 28


# -- properties ------------------------------------------------------------------------------
@FAST
@given(schedules())
def test_runtime_formula_and_properties(s):
    v0, num_layers, l1, l2 = s
    counts = visual_tokens_per_layer(v0, num_layers, l1, l2)
    assert len(counts) == num_layers
    assert all(isinstance(c, int) and not isinstance(c, bool) for c in counts)
    assert all(a >= b for a, b in zip(counts, counts[1:])), "non-increasing"
    for j, c in enumerate(counts):
        if j <= l1:
            assert c == v0
        elif j < l2:
            assert c == math.floor(Fraction(v0 * (l2 - j), l2 - l1))
            assert 0 <= c < v0 or v0 == 0
        else:
            assert c == 0
    if l2 >= num_layers and v0 >= l2 - l1:
        assert counts[-1] > 0, "l2 beyond the model: visual tokens never reach zero"


@FAST
@given(schedules())
def test_pruning_layers_within_l1_l2(s):
    v0, num_layers, l1, l2 = s
    counts = visual_tokens_per_layer(v0, num_layers, l1, l2)
    layers = pruning_layers(counts)
    assert set(layers) <= set(range(l1, l2))
    if v0 >= l2 - l1:  # each step removes at least one token
        assert layers == list(range(l1, min(l2, num_layers - 1)))


@FAST
@given(schedules())
def test_paper_is_runtime_one_layer_earlier(s):
    """paper on L layers [j] == runtime on L+1 layers [j+1], for every j < L; and the runtime
    prefix does not depend on the depth, so paper[j] == runtime[j+1] for j < L-1 on L layers."""
    v0, num_layers, l1, l2 = s
    paper = visual_tokens_per_layer(v0, num_layers, l1, l2, convention="paper")
    runtime_longer = visual_tokens_per_layer(v0, num_layers + 1, l1, l2)
    runtime = visual_tokens_per_layer(v0, num_layers, l1, l2)
    assert paper == runtime_longer[1:]
    assert paper[: num_layers - 1] == runtime[1:]
    assert runtime_longer[:num_layers] == runtime
    # the paper's formula, written out (docstring): v0 for j < l1, floor(v0*(l2-1-j)/(l2-l1))
    # for l1 <= j < l2-1, 0 from l2-1
    for j, c in enumerate(paper):
        if j < l1:
            assert c == v0
        elif j < l2 - 1:
            assert c == v0 * (l2 - 1 - j) // (l2 - l1)
        else:
            assert c == 0


@settings(max_examples=100, deadline=None)
@given(
    v0=st.integers(2**53 - 10, 2**80),
    l1=st.integers(0, 20),
    span=st.integers(1, 30),
    num_layers=st.integers(1, 60),
)
def test_integer_exact_for_large_v0(v0, l1, span, num_layers):
    l2 = l1 + span
    counts = visual_tokens_per_layer(v0, num_layers, l1, l2)
    for j, c in enumerate(counts):
        if l1 < j < l2:
            assert c == math.floor(Fraction(v0) * (l2 - j) / (l2 - l1))


def test_integer_exact_where_floats_fail():
    v0 = 2**60 + 1
    counts = visual_tokens_per_layer(v0, 4, 0, 3)
    assert counts[1] == (2 * v0) // 3 == math.floor(Fraction(2 * v0, 3))
    assert counts[1] != int(v0 * 2 / 3)  # what float arithmetic would give


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 50), max_size=20))
def test_pruning_layers_definition(counts):
    assert pruning_layers(counts) == [j for j in range(len(counts) - 1) if counts[j + 1] < counts[j]]


def test_pruning_layers_edge_cases():
    assert pruning_layers([]) == []
    assert pruning_layers([5]) == []
    assert pruning_layers([5, 5, 4, 4, 0]) == [1, 3]
    assert pruning_layers([1, 2, 1]) == [1]


# -- bad inputs -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((6272, 28, 14, 22), {"convention": "flops"}),
        ((-1, 28, 14, 22), {}),
        ((6272.0, 28, 14, 22), {}),
        ((True, 28, 14, 22), {}),
        (("6272", 28, 14, 22), {}),
        ((6272, 0, 14, 22), {}),
        ((6272, -3, 14, 22), {}),
        ((6272, 28.0, 14, 22), {}),
        ((6272, True, 14, 22), {}),
        ((6272, 28, 14, None), {}),
        ((6272, 28, None, 22), {}),
        ((6272, 28, 22, 14), {}),
        ((6272, 28, 14, 14), {}),
        ((6272, 28, -1, 22), {}),
        ((6272, 28, -5, -2), {}),
        ((6272, 28, 14.0, 22), {}),
        ((6272, 28, 14, 22.5), {}),
        ((6272, 28, "14", 22), {}),
    ],
)
def test_bad_inputs_raise_value_error(args, kwargs):
    with pytest.raises(ValueError):
        visual_tokens_per_layer(*args, **kwargs)
