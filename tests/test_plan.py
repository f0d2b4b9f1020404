"""The budget planner: the documented rule, checked against the analyzer by brute force."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llava.analysis import analyze, get_llm
from llava.analysis.plan import (
    PAPER_ABLATION_LAYERS,
    Target,
    extended_settings,
    plan,
    validated_settings,
)
from llava.cli import main
from llava.errors import AIMConfigError

QWEN = get_llm("qwen2-7b")


def test_validated_settings_are_the_papers_tables():
    got = {(s.retention, s.l1, s.l2) for s in validated_settings(28)}
    retentions = (1, 1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64)
    expected = {(r, None, None) for r in retentions} | {(r, 14, 22) for r in retentions}
    expected |= {(0.25, a, b) for a, b in PAPER_ABLATION_LAYERS}
    assert got == expected
    assert len(got) == 7 * 2 + 9 - 1  # (0.25, 14, 22) is in both the sweep and the ablation


def test_validated_settings_scaled_to_32_layers():
    got = {(s.retention, s.l1, s.l2) for s in validated_settings(32)}
    assert (0.25, 16, 25) in got  # the paper's (14, 22) of 28 scaled to 32
    assert all(s.l1 is None or 0 <= s.l1 < 32 for s in validated_settings(32))
    assert all("scaled" in s.source for s in validated_settings(32) if s.l1 is not None)


def test_extended_grid_covers_every_schedule():
    grid = extended_settings(4, 8)  # retentions 1, 1/2, 1/4, 1/8 (one token per frame)
    schedules = {(s.l1, s.l2) for s in grid if s.retention == 1.0}
    assert schedules == {(None, None)} | {(a, b) for a in range(4) for b in range(a + 1, 5)}
    assert {s.retention for s in grid} == {1.0, 0.5, 0.25, 0.125}


def test_paper_default_for_seven_fold_speedup():
    result = plan(Target(speedup=7), QWEN)
    c = result.choice
    assert (c.setting.retention, c.setting.l1, c.setting.l2) == (0.25, 14, 22)
    assert c.setting.validated and result.pool == "paper-validated"


@pytest.mark.parametrize("convention", ["runtime", "paper"])
@pytest.mark.parametrize("target", [Target(budget_tflops=20), Target(speedup=3), Target(budget_tflops=5)])
def test_choice_follows_the_rule_by_brute_force(target, convention):
    """The choice meets the target, its cost is the analyzer's, and no validated setting meeting
    the target keeps more visual token-layers."""
    result = plan(target, QWEN, convention=convention)
    c = result.choice
    full = analyze(QWEN, convention=convention)
    mine = analyze(QWEN, retention=c.setting.retention, l1=c.setting.l1, l2=c.setting.l2, convention=convention)
    assert mine.prefill_flops == pytest.approx(c.prefill_flops, rel=1e-12)
    assert mine.prefill_time_s == pytest.approx(c.prefill_time_s, rel=1e-12)
    assert mine.visual_tokens_per_layer == c.visual_tokens_per_layer
    if target.budget_tflops is not None:
        assert mine.prefill_tflops <= target.budget_tflops
    else:
        assert full.prefill_time_s / mine.prefill_time_s >= target.speedup
    for s in validated_settings(28):
        other = analyze(QWEN, retention=s.retention, l1=s.l1, l2=s.l2, convention=convention)
        meets = (other.prefill_tflops <= target.budget_tflops if target.budget_tflops is not None
                 else full.prefill_time_s / other.prefill_time_s >= target.speedup)
        if meets:
            assert sum(other.visual_tokens_per_layer) <= c.visual_token_layers


@settings(max_examples=25, deadline=None)
@given(st.floats(min_value=3.0, max_value=100.0), st.floats(min_value=3.0, max_value=100.0))
def test_a_larger_budget_never_keeps_less(b1, b2):
    small, large = sorted((b1, b2))
    a = plan(Target(budget_tflops=small), QWEN, frames=8)
    b = plan(Target(budget_tflops=large), QWEN, frames=8)
    if a.feasible and b.feasible and a.pool == b.pool:
        assert b.choice.visual_token_layers >= a.choice.visual_token_layers


def test_no_validated_fit_falls_back_to_the_extended_grid():
    result = plan(Target(speedup=45), QWEN)
    assert result.feasible and result.pool == "extended grid"
    assert not result.choice.setting.validated
    assert "not a setting the paper validated" in result.reason()
    assert result.baseline.prefill_time_s / result.choice.prefill_time_s >= 45


def test_impossible_budget_is_answered_with_the_cheapest_setting():
    result = plan(Target(budget_tflops=0.5), QWEN)
    assert not result.feasible and result.choice is None
    assert result.cheapest.prefill_flops / 1e12 > 0.5
    assert "no setting AIM can express" in result.reason() and "TFLOPs" in result.reason()


@pytest.mark.parametrize("kwargs", [{}, {"budget_tflops": 1, "speedup": 2}, {"budget_tflops": -1},
                                    {"speedup": 0}, {"speedup": float("nan")}])
def test_bad_targets(kwargs):
    with pytest.raises(AIMConfigError):
        Target(**kwargs)


def test_plan_cli_human_and_json(capsys):
    assert main(["plan", "--speedup", "7"]) == 0
    out = capsys.readouterr().out
    assert "retention 1/4, l1=14, l2=22" in out and "paper-validated" in out and "why" in out
    assert main(["plan", "--budget-tflops", "20", "--json", "--frames", "16"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["feasible"] and data["choice"]["prefill_tflops"] <= 20
    assert data["inputs"]["frames"] == 16


@pytest.mark.parametrize("argv", [
    ["plan"],  # no target
    ["plan", "--speedup", "2", "--budget-tflops", "3"],
    ["plan", "--speedup", "-1"],
    ["plan", "--budget-tflops", "0.01"],  # impossible
    ["plan", "--speedup", "2", "--frames", "0"],
])
def test_plan_cli_bad_input_exit_2_one_line(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "llava-aim" in err


@pytest.mark.parametrize("layers", [1, 7, 8, 9, 24, 28, 32, 40])
def test_every_tool_scales_the_default_schedule_alike(layers):
    """run, bench, flops/plan and eval share one scaling (halves up), odd depths included."""
    from llava.aim.policy import aim_default_layers
    from llava.aim.config import AIMConfig
    from llava.bench.cases import default_cases

    expected = aim_default_layers(layers)
    resolved = AIMConfig().resolve_layers(layers)  # what apply_aim does for run / eval without an official schedule
    assert (resolved.l1, resolved.l2) == expected
    aim = next(c for c in default_cases(1, 196, 10, layers) if c.name == "aim")
    assert (aim.cfg.l1, aim.cfg.l2) == expected
