"""Tests of llava.aim.config.AIMConfig: defaults, presets and validation."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llava.aim.config import PRESETS, AIMConfig
from llava.errors import AIMConfigError, AIMError


def test_defaults_are_the_papers():
    cfg = AIMConfig()
    assert cfg.retention == 0.25
    assert (cfg.l1, cfg.l2) == ("auto", "auto")
    # resolved when applied: the paper's (14, 22) on its 28-layer Qwen2-7B, scaled elsewhere
    assert (cfg.resolve_layers(28).l1, cfg.resolve_layers(28).l2) == (14, 22)
    assert (cfg.resolve_layers(8).l1, cfg.resolve_layers(8).l2) == (4, 6)
    assert (cfg.resolve_layers(32, official=(13, 21)).l1, cfg.resolve_layers(32, official=(13, 21)).l2) == (13, 21)
    assert cfg.importance == "pagerank"
    assert cfg.pagerank_tau == 0.1
    assert cfg.pagerank_iters == 5
    assert cfg.merge_weighting == "mean"
    assert cfg.merge_order == "paper"
    assert cfg.merging and cfg.pruning and cfg.enabled


def test_disabled():
    cfg = AIMConfig.disabled()
    assert cfg.merging is False
    assert cfg.pruning is False
    assert cfg.enabled is False
    assert cfg.retention == 1.0 and cfg.l1 is None and cfg.l2 is None


def test_merge_only_and_prune_only_flags():
    assert AIMConfig(l1=None, l2=None).merging and not AIMConfig(l1=None, l2=None).pruning
    assert AIMConfig(retention=1.0).pruning and not AIMConfig(retention=1.0).merging


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_validates(name):
    cfg = AIMConfig.preset(name)
    assert isinstance(cfg, AIMConfig)
    assert cfg == PRESETS[name]
    assert AIMConfig(**cfg.to_dict()) == cfg  # round trip re-runs validation
    num_layers = 32 if name == "llava-1.5" else 28
    cfg.check_against_model(num_layers)


def test_paper_preset_is_default():
    assert AIMConfig.preset("paper") == AIMConfig()
    assert AIMConfig.preset("disabled") == AIMConfig.disabled()
    assert AIMConfig.preset("paper-mask").pruning_mode == "mask"


def test_preset_overrides_and_validation():
    cfg = AIMConfig.preset("paper", retention=0.5)
    assert cfg.retention == 0.5 and cfg.l1 == "auto"
    with pytest.raises(AIMConfigError, match="retention"):
        AIMConfig.preset("paper", retention=0)
    with pytest.raises(AIMConfigError, match="nope"):
        AIMConfig.preset("nope")


def test_replace_validates():
    cfg = AIMConfig()
    assert cfg.replace(l1=2, l2=4).l1 == 2
    with pytest.raises(AIMConfigError, match="l1"):
        cfg.replace(l1=30, l2=22)


def test_error_types():
    assert issubclass(AIMConfigError, AIMError)
    assert issubclass(AIMConfigError, ValueError)


@pytest.mark.parametrize("retention", [0, 0.0, -0.1, 1.5, 1.0000001, float("nan"), float("inf"), True, False, "0.5", None])
def test_bad_retention(retention):
    with pytest.raises(AIMConfigError, match="retention"):
        AIMConfig(retention=retention)


@pytest.mark.parametrize("retention", [1, 1.0, 0.5, 1e-6, 0.25])
def test_good_retention(retention):
    assert AIMConfig(retention=retention).retention == retention


@settings(max_examples=100, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_retention_property(r):
    if 0 < r <= 1:
        assert AIMConfig(retention=r).retention == r
    else:
        with pytest.raises(AIMConfigError, match="retention"):
            AIMConfig(retention=r)


@pytest.mark.parametrize(
    "l1, l2",
    [
        (22, 22),
        (23, 22),
        (5, 0),
        (-1, 22),
        (-3, -1),
        (14, None),
        (None, 22),
        (14.0, 22),
        (14, 22.0),
        ("14", 22),
        (True, 22),
        (0, True),
    ],
)
def test_bad_layers(l1, l2):
    with pytest.raises(AIMConfigError, match="l1|l2"):
        AIMConfig(l1=l1, l2=l2)


@settings(max_examples=100, deadline=None)
@given(st.integers(-5, 40), st.integers(-5, 40))
def test_layers_property(l1, l2):
    if 0 <= l1 < l2:
        cfg = AIMConfig(l1=l1, l2=l2)
        assert cfg.pruning
    else:
        with pytest.raises(AIMConfigError, match="l1|l2"):
            AIMConfig(l1=l1, l2=l2)


@pytest.mark.parametrize(
    "field, value",
    [
        ("importance", "random"),
        ("importance", "PageRank"),
        ("importance", None),
        ("merge_weighting", "median"),
        ("merge_weighting", ""),
        ("merge_order", "sorted"),
        ("merge_order", None),
        ("pruning_mode", "drop"),
        ("pruning_mode", "Remove"),
        ("pagerank_tau", 0),
        ("pagerank_tau", 0.0),
        ("pagerank_tau", -0.1),
        ("pagerank_tau", float("nan")),
        ("pagerank_tau", float("inf")),
        ("pagerank_tau", "0.1"),
        ("pagerank_tau", True),
        ("pagerank_iters", 0),
        ("pagerank_iters", -1),
        ("pagerank_iters", 2.0),
        ("pagerank_iters", True),
        ("importance_memory_mb", 0),
        ("importance_memory_mb", 1.5),
    ],
)
def test_bad_choice_or_number_names_the_field(field, value):
    with pytest.raises(AIMConfigError, match=field):
        AIMConfig(**{field: value})


@pytest.mark.parametrize(
    "field, value",
    [
        ("importance", "attention"),
        ("merge_weighting", "size"),
        ("merge_order", "spatial"),
        ("pruning_mode", "mask"),
        ("pagerank_tau", 1),
        ("pagerank_tau", 1e-3),
        ("pagerank_iters", 1),
        ("pagerank_iters", 20),
    ],
)
def test_good_choices(field, value):
    assert getattr(AIMConfig(**{field: value}), field) == value


def test_check_against_model():
    cfg = AIMConfig(l1=14, l2=22)
    for n in (14, 15, 28, 100):  # l1 == depth: nothing pruned (the paper's ablation row (28, 29))
        cfg.check_against_model(n)
    for n in (13, 10, 1):
        with pytest.raises(AIMConfigError, match="l1"):
            cfg.check_against_model(n)
    AIMConfig(l1=27, l2=40).check_against_model(28)
    AIMConfig(l1=28, l2=29).check_against_model(28)
    with pytest.raises(AIMConfigError, match="l1"):
        AIMConfig(l1=29, l2=30).check_against_model(28)
    for n in (1, 2, 8, 28, 100):  # "auto" always resolves to something that fits
        AIMConfig().resolve_layers(n)
    AIMConfig.disabled().check_against_model(1)
    AIMConfig(l1=None, l2=None).check_against_model(1)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 40), st.integers(1, 10), st.integers(1, 40))
def test_check_against_model_property(l1, span, num_layers):
    cfg = AIMConfig(l1=l1, l2=l1 + span)
    if l1 <= num_layers:
        cfg.check_against_model(num_layers)
    else:
        with pytest.raises(AIMConfigError):
            cfg.check_against_model(num_layers)


def test_frozen():
    cfg = AIMConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.retention = 0.5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.l1 = 3  # type: ignore[misc]
    assert cfg.retention == 0.25
    assert hash(cfg) == hash(AIMConfig())


def test_to_dict():
    d = AIMConfig().to_dict()
    assert d["retention"] == 0.25 and d["l1"] == "auto" and d["l2"] == "auto"
    assert set(d) == {f.name for f in dataclasses.fields(AIMConfig)}
