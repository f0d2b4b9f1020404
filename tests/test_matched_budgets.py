"""Matched budgets: the analyzer (roofline.analyze, ``llava-aim flops`` / ``plan``) reads any method's
token flow and cost from its registry entry, so a method registered later (VisionZip, DyCoke, ...)
is counted, priced and matched at equal tokens or equal TFLOPs with no edit here. A toy reduction
registered in the test (a per-video stride, its own cost function) stands in for them."""

from __future__ import annotations

import json
import math

import pytest

from llava.aim import registry
from llava.aim.policy import SPECS, MethodSpec
from llava.analysis import roofline
from llava.analysis.matching import MatchTarget, budget_grid, match_retention
from llava.analysis.roofline import analyze
from llava.errors import AIMConfigError

METHOD = "stride_toy"


def stride_nominal(frames: int, tokens: int, cfg) -> int:
    """Every k-th token of the whole video (not per frame): round(F * T * retention), at least 1."""
    return max(1, round(frames * tokens * cfg.retention))


def stride_cost_ops(tokens_per_frame, frames, channels, kept, visual, cfg, hardware, options):
    # one copy per kept token; records what the analyzer passed
    stride_cost_ops.calls.append(dict(tokens_per_frame=tokens_per_frame, frames=frames, channels=channels,
                                      kept=kept, visual=visual, retention=cfg.retention))
    return [roofline._op("stride.copy", visual * channels, 2 * visual * channels * options.act_bytes, hardware)]


@pytest.fixture
def toy_method(monkeypatch):
    stride_cost_ops.calls = []
    monkeypatch.setattr(roofline, "stride_cost_ops", stride_cost_ops, raising=False)
    registry.register(METHOD, "reduction", lambda *a, **k: None, needs=("frames",), cost="stride_cost_ops",
                      nominal=stride_nominal, summary="every k-th token of the video (test)")
    monkeypatch.setitem(SPECS, METHOD, MethodSpec(METHOD, "Stride (toy)", "test", METHOD, "none", "none"))
    try:
        yield stride_cost_ops.calls
    finally:
        registry.unregister(METHOD)


def test_the_token_flow_and_cost_come_from_the_entry(toy_method):
    result = analyze(method=METHOD, retention=0.3, l1=None, l2=None)
    visual = round(32 * 196 * 0.3)  # 1882: not a whole number per frame
    assert result.settings["visual_tokens"] == visual and result.tokens_per_layer == [100 + visual] * 28
    assert result.settings["reduction"] == METHOD and result.settings["tokens_per_frame_kept"] == visual / 32
    assert toy_method == [dict(tokens_per_frame=196, frames=32, channels=3584, kept=visual // 32, visual=visual,
                               retention=0.3)]
    [op] = result.aim_overhead.ops
    assert op.name == "stride.copy" and op.ops == visual * 3584
    same = analyze(method=METHOD, retention=1.0, l1=None, l2=None)  # keeps every token: nothing runs, nothing priced
    assert same.aim_overhead.ops == () and same.prefill_flops == same.without_aim().prefill_flops


def test_a_reduction_without_a_token_flow_or_with_an_unpriceable_cost_fails_loudly(toy_method, monkeypatch):
    with pytest.raises(AIMConfigError, match=r"needs nominal\(frames, T, cfg\)"):
        registry.register("no_flow", "reduction", lambda *a: None, needs=("frames",))

    def wants_more(frames, temperature):
        return []

    monkeypatch.setattr(roofline, "stride_cost_ops", wants_more)
    with pytest.raises(AIMConfigError, match=r"takes \['temperature'\], which the analyzer does not provide"):
        analyze(method=METHOD, retention=0.3, l1=None, l2=None)


def test_prumerge_keeps_its_figures_through_the_generic_path():
    """PruMerge, the first user: its nominal count (92 of SigLIP's 729 per frame on OneVision, 145
    of CLIP's 576 for PruMerge+ on LLaVA-1.5), a run's measured count, and its cost function."""
    ov = analyze(method="prumerge")
    assert ov.settings["tokens_per_frame_kept"] == 92 and ov.settings["reduction_stage"] == "vision"
    expected = roofline.prumerge_overhead_ops(ov.vision_shape, 92, 32, ov.hardware, ov.options)
    assert ov.aim_overhead.ops == tuple(expected)
    plus = analyze("vicuna-7b", frames=1, tokens_per_frame=576, method="prumerge_plus")
    assert plus.settings["tokens_per_frame_kept"] == 145
    assert analyze(method="prumerge", kept_tokens=40).settings["visual_tokens"] == 32 * 40
    with pytest.raises(AIMConfigError, match="depends on the content \\(.*prumerge, prumerge_plus.*\\); merge keeps"):
        analyze(retention=0.5, kept_tokens=40)


def test_budget_grid_values_read_back_as_their_counts():
    grid = budget_grid(196)
    assert grid[0] == 1.0 and len(grid) == 196
    assert [math.floor(196 * r) for r in grid[1:]] == list(range(195, 0, -1))


@pytest.mark.parametrize("target", [MatchTarget(tokens=1000), MatchTarget(tflops=12.0), MatchTarget(speedup=6.0)])
def test_plan_matches_a_registered_method_at_the_largest_budget_meeting_the_target(toy_method, target):
    inputs = dict(llm=roofline.get_llm("qwen2-7b"), frames=32, tokens_per_frame=196, text_tokens=100)
    found = match_retention(METHOD, target, dict(l1=None, l2=None), **inputs)
    choice = found.choice
    assert choice is not None and target.met_by(choice, found.baseline)
    grid = budget_grid(196)
    above = grid[grid.index(choice.settings["retention"]) - 1]  # the next larger budget misses the target
    assert not target.met_by(analyze(method=METHOD, retention=above, l1=None, l2=None, **inputs), found.baseline)


def _plan(capsys, *args):
    from llava.cli import main

    code = main(["plan", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_plan_match_flags_on_the_command_line(toy_method, capsys):
    code, out, _ = _plan(capsys, "--method", METHOD, "--match-tokens", "1000", "--json")
    report = json.loads(out)
    # the grid steps one token per frame: 31/196 -> 0.1582 gives 992; 32/196 would give 1024
    assert code == 0 and report["tunable"] and report["choice"]["visual_tokens"] == 992
    code, out, _ = _plan(capsys, "--method", METHOD, "--match-tflops", "12")
    assert code == 0 and f"--method {METHOD} --retention " in out and f"model_args method={METHOD},retention=" in out
    # AIM's budget is matched the same way (its schedule as configured)
    code, out, _ = _plan(capsys, "--match-tokens", "700", "--json")
    assert code == 0 and json.loads(out)["choice"]["visual_tokens"] == 672  # 21 per frame; 22 would be 704
    # PruMerge has no budget knob: its own count, meeting the target or not
    code, out, _ = _plan(capsys, "--method", "prumerge", "--match-tokens", "3000", "--json")
    assert code == 0 and not json.loads(out)["tunable"] and json.loads(out)["choice"]["visual_tokens"] == 2944
    code, _, err = _plan(capsys, "--method", "prumerge", "--match-tokens", "2000")
    assert code == 2 and "no budget knob to tune" in err and len(err.strip().splitlines()) == 1


def test_plan_refuses_matching_tokens_for_a_method_that_drops_inside_the_llm(capsys):
    code, out, err = _plan(capsys, "--method", "fastv", "--match-tokens", "1000")
    assert code == 2 and out == "" and "match it with --match-tflops" in err and len(err.strip().splitlines()) == 1
    code, out, _ = _plan(capsys, "--method", "fastv", "--match-tflops", "20", "--json")
    assert code == 0 and json.loads(out)["prefill_tflops"] <= 20


def test_flops_takes_any_registered_method(toy_method, capsys):
    from llava.cli import main

    assert main(["flops", "--method", METHOD, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == METHOD and report["tokens_per_layer"][0] == 100 + round(6272 * 0.25)


def test_bench_methods_times_any_registered_method_with_its_own_work(toy_method, capsys, monkeypatch):
    """``llava-aim bench --methods``: each method a case in the same interleaved rounds, its tokens
    entering the LLM from its entry, its prediction from the analyzer, its own work measured apart."""
    from llava.cli import main

    calls = []

    def stride(x, cfg, **kwargs):  # reduce_frames' convention: (frames, cfg, ...) -> the reduced frames
        calls.append(x.shape)
        keep = max(1, round(x.shape[1] * cfg.retention))
        return x[:, :keep]

    registry.register(METHOD, "reduction", stride, needs=("frames",), cost="stride_cost_ops", nominal=stride_nominal,
                      replace=True)
    code = main(["bench", "--frames", "2", "--tokens-per-frame", "16", "--text-tokens", "10", "--repeats", "1",
                 "--lm-only", "--json", "--methods", f"fastv,{METHOD}"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    rows = {r["name"]: r for r in report["language_model_prefill"]}
    assert {"baseline", "aim", "fastv", METHOD} <= set(rows)
    assert rows[METHOD]["llm_input_tokens"] == round(2 * 16 * 0.25) + 1 + 10  # its nominal count, newline, text
    assert set(report["method_overheads"]) == {"fastv", METHOD}
    assert report["method_overheads"][METHOD]["reduction_ms"] > 0 and calls  # its function ran, apart
    assert report["method_overheads"]["fastv"]["reduction_ms"] == 0.0  # keeps every token before the LLM
    assert report["predicted"][METHOD]["tokens_per_layer"][0] == rows[METHOD]["llm_input_tokens"]


@pytest.mark.parametrize("argv, needle", [
    (["--methods", "nosuch"], "--methods: nosuch is not registered"),
    (["--methods", "fastv", "--method", "vtw"], "--methods times each method at its defaults"),
])
def test_bench_methods_bad_input_is_one_line(argv, needle, capsys):
    from llava.cli import main

    assert main(["bench", "--frames", "1", "--repeats", "1", "--lm-only", *argv]) == 2
    out, err = capsys.readouterr()
    assert needle in err and out == "" and len(err.strip().splitlines()) == 1


def test_comparison_doc_lists_every_registered_method_and_links_only_existing_pages(toy_method, tmp_path):
    """docs/comparison.md's generator takes the registry as it is: a method registered later gets its
    rows at both budgets (its budget knob), a method without one its own count, and a link to
    docs/methods/<method>.md only where that page exists."""
    from llava.bench import comparison

    rows = comparison.predicted_rows([METHOD, "prumerge", "fastv"])
    toy = [r for r in rows if r["method"] == METHOD]
    assert [r["visual_tokens"] for r in toy] == [round(6272 * 0.25), round(6272 * 0.1)]
    assert [r["how"] for r in rows if r["method"] == "prumerge"] == ["its own count"]  # once: no budget knob
    fastv = [r for r in rows if r["method"] == "fastv"]
    assert all(r["how"] == "matched TFLOPs" for r in fastv) and fastv[1]["tflops"] < fastv[0]["tflops"]
    assert comparison.method_doc(METHOD) == "–"
    out = tmp_path / "comparison.md"
    assert comparison.main(["--out", str(out)]) == 0
    text = out.read_text()
    assert f"| {METHOD} | 25% |" in text and f"| {METHOD} | 10% |" in text and "Not measured in this generation" in text
