"""The knob declaration (llava.aim.knobs): every AIMConfig field declares how users set it, and the
flags, model_args and error words all come from that one declaration."""

import argparse
import dataclasses
import math
import re

import pytest

from llava.aim.config import AIMConfig
from llava.aim.knobs import COMMANDS, dest_of, flag_of, knobs, model_arg_of, render, worded
from llava.errors import AIMConfigError, EvalArgumentError
from llava.eval.args import AIM_ARGS, aim_config_from_model_args

# A value each field's flag / model_arg accepts, and the value it gives the field.
SAMPLES = {
    "retention": ("0.5", 0.5), "l1": ("3", 3), "l2": ("5", 5), "importance": ("attention", "attention"),
    "pagerank_tau": ("0.2", 0.2), "pagerank_iters": ("7", 7), "merge_weighting": ("size", "size"),
    "merge_order": ("spatial", "spatial"), "merge_count": ("exact", "exact"), "merge_metric": ("keys", "keys"),
    "tie_break": ("log_attention", "log_attention"), "pruning_mode": ("mask", "mask"),
    "importance_memory_mb": ("64", 64), "positions": ("official", "official"), "method": ("pool", "pool"),
    "drop_layers": ("2/4", (2, 4)), "drop_ratio": ("0.25", 0.25), "seed": ("3", 3),
    "fastvid_segments": ("4", 4), "fastvid_tau": ("0.84", 0.84), "fastvid_context_share": ("0.3", 0.3),
    "fastvid_anchor_stride": ("2", 2), "fastvid_anchor_weight": ("0.5", 0.5),
    "dycoke_k": ("0.6", 0.6), "dycoke_l": ("2", 2), "dycoke_p": ("0.7", 0.7),
    "dycoke_when_similar": ("attend_all", "attend_all"),
    "holitom_tau": ("0.7", 0.7), "holitom_layer": ("4", 4), "holitom_ratio": ("0.25", 0.25),
}


def _parser(command: str) -> argparse.ArgumentParser:
    from llava.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def test_every_field_declares_its_knob():
    fields = [f.name for f in dataclasses.fields(AIMConfig)]
    assert list(knobs()) == fields
    for name, k in knobs().items():
        assert k.help and set(k.commands) <= set(COMMANDS), name
        assert (k.kind in ("choice", "method")) == bool(k.choices), name


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_the_flags_declared_for_it(command):
    parser = _parser(command)
    flags = {option for action in parser._actions for option in action.option_strings}
    declared = {flag_of(name) for name, k in knobs().items() if command in k.commands}
    assert declared and declared <= flags
    # and no AIM flag outside the declaration (analysis's runtime --merge-count aside)
    others = {flag_of(name) for name in knobs()} - declared - {"--merge-count"}
    assert not (others & flags)


def test_run_flags_parse_to_the_fields():
    parser = _parser("run")
    for name, k in knobs().items():
        if "run" not in k.commands:
            continue
        text, value = SAMPLES[name]
        args = parser.parse_args([flag_of(name), text.replace("/", ",")])
        assert getattr(args, dest_of(name)) == value, name


def test_every_model_arg_parses_to_its_field():
    for name in knobs():
        text, value = SAMPLES[name]
        raw = {model_arg_of(name): text}
        if name in ("l1", "l2"):
            raw = {"l1": "3", "l2": "5"}
        if name in ("drop_layers", "drop_ratio"):
            raw["method"] = "pdrop"
        if name == "seed":
            raw["method"] = "random"
        if name.startswith("dycoke_"):
            raw["method"] = "dycoke"
        if name.startswith("holitom_"):
            raw["method"] = "holitom"
        if name == "positions":
            raw["retention"] = "0.25"
        if name == "merge_weighting":
            raw["positions"] = "original"
        if name.startswith("fastvid_"):
            raw["method"] = "fastvid"
        assert model_arg_of(name) in AIM_ARGS
        assert getattr(aim_config_from_model_args(raw), name) == value, name


def test_error_tokens_read_as_flags_in_the_cli_and_model_args_in_eval():
    exc = AIMConfigError("{drop_ratio} does not apply with {l1=5}; {l1:off} disables pruning")
    assert exc.fields == ("drop_ratio", "l1")
    assert str(exc) == "drop_ratio does not apply with l1=5; l1=None disables pruning"
    assert worded(exc, "flag") == "--drop-ratio does not apply with --l1 5; --no-prune disables pruning"
    assert worded(exc, "model_arg") == "drop_ratio does not apply with l1=5; l1=none,l2=none disables pruning"
    assert render("{not_a_field} {importance_memory_mb}", "flag") == "{not_a_field} --importance-memory-mb"


def test_a_config_error_reaches_eval_in_model_arg_words():
    with pytest.raises(EvalArgumentError, match=r"bad AIM model_args: .*drop_ratio"):
        aim_config_from_model_args({"method": "vtw", "drop_ratio": 0.5})


def _cli_error(argv, capsys) -> str:
    from llava.cli import main

    assert main(argv) == 2
    return capsys.readouterr().err


def test_one_method_rule_reads_as_flags_in_the_cli_and_as_model_args_in_eval(capsys):
    # llava.aim.policy.check_typed_settings holds the rule; each front end words it
    err = _cli_error(["flops", "--method", "fastv", "--l1", "3", "--l2", "5"], capsys)
    assert "--method fastv prunes at --drop-layers, not l1/l2: drop --l1, --l2" in err
    with pytest.raises(EvalArgumentError, match=r"^method=fastv prunes at drop_layers, not l1/l2: drop l1, l2$"):
        aim_config_from_model_args({"method": "fastv", "l1": 3, "l2": 5})
    err = _cli_error(["flops", "--method", "prumerge", "--no-prune"], capsys)
    assert "--method prumerge reduces tokens before the LLM by itself; --no-prune does not apply" in err
    with pytest.raises(EvalArgumentError, match=r"l1=none,l2=none does not apply"):
        aim_config_from_model_args({"method": "prumerge", "l1": "none", "l2": "none"})


def test_give_both_layers_is_one_rule(capsys):
    assert "give both --l1 and --l2" in _cli_error(["flops", "--l1", "3"], capsys)
    with pytest.raises(EvalArgumentError, match="give both l1 and l2"):
        aim_config_from_model_args({"l1": 3})


def test_eval_refuses_a_seed_the_method_ignores():
    # the seed picks the random control's survivors; with another method it would do nothing
    with pytest.raises(EvalArgumentError, match=r"seed sets the random control's survivors \(method=random\)"):
        aim_config_from_model_args({"seed": 3})
    assert aim_config_from_model_args({"method": "random", "seed": 3}).seed == 3


def test_analyze_takes_a_resolved_config():
    from llava.analysis.roofline import analyze, config_arguments

    cfg = AIMConfig(retention=0.5, l1=4, l2=8, pagerank_iters=3)
    direct = analyze(llm="qwen2-7b", retention=0.5, l1=4, l2=8, pagerank_iters=3)
    via = analyze(llm="qwen2-7b", **config_arguments(cfg))
    assert via.prefill_flops == direct.prefill_flops and via.settings == direct.settings
    with pytest.raises(ValueError, match="resolve_layers"):
        config_arguments(AIMConfig())
    assert config_arguments(AIMConfig().resolve_layers(28))["l1"] == 14


def test_front_ends_agree_on_prumerge_with_retention_one(capsys):
    # one rule (policy.check_typed_settings): retention 1 means no merging, which PruMerge is; run
    # refused it alone before the rules were shared
    from llava.run import _validate_args

    _validate_args(_parser("run").parse_args(["--method", "prumerge", "--retention", "1"]))
    assert aim_config_from_model_args({"method": "prumerge", "retention": 1}).retention == 1.0
    with pytest.raises(AIMConfigError, match=r"--method prumerge reduces tokens before the LLM by itself; "
                                             r"--retention does not apply"):
        _validate_args(_parser("run").parse_args(["--method", "prumerge", "--retention", "0.5"]))



def test_aim_off_refuses_aim_settings_in_one_rule_worded_for_each_vocabulary(monkeypatch):
    """"AIM off takes no AIM settings" is one function (knobs.refuse_settings_with_aim_off) that
    run's --no-aim and the plugin's aim=0 both call; each message names what the user typed."""
    import llava.eval.args as eval_args
    import llava.run as run_module
    from llava.aim.knobs import refuse_settings_with_aim_off

    with pytest.raises(AIMConfigError) as flag:
        refuse_settings_with_aim_off(["--retention", "--l1"], "flag")
    assert str(flag.value) == ("--no-aim runs the stock model, so --retention and --l1 would be ignored; "
                               "drop them, or drop --no-aim")
    with pytest.raises(EvalArgumentError, match=r"^aim=0 \(AIM off\) cannot be combined with AIM settings "
                                                r"\['retention'\]; drop them or set aim=1$"):
        aim_config_from_model_args({"aim": 0, "retention": 0.5})
    refuse_settings_with_aim_off([], "flag")  # nothing typed: nothing to refuse

    seen = []
    for module in (eval_args, run_module):
        monkeypatch.setattr(module, "refuse_settings_with_aim_off", lambda given, how: seen.append((given, how)))
    aim_config_from_model_args({"aim": 0, "retention": 0.5})
    args = _parser("run").parse_args(["--model", "tiny-llava-onevision", "--video", "v.mp4", "--no-aim",
                                      "--retention", "0.5"])
    run_module._validate_args(args)
    assert seen == [(["retention"], "model_arg"), (["--retention"], "flag")]


# -- the declared ranges (Knob.bounds): AIMConfig's one range rule -------------------------------------
BOUNDED = {name: k for name, k in knobs().items() if k.bounds is not None}
# The method that reads a field with no owner in its name (llava.aim.policy.owner_of_knob).
_METHOD_OF = {"seed": "random"}


def _method_for(name: str) -> str:
    from llava.aim.policy import owner_of_knob

    return _METHOD_OF.get(name) or owner_of_knob(name) or "aim"


def _edges(k):
    """(accepted, refused) values at each declared end of ``k``'s bounds: a closed end is accepted
    and the value just outside it refused; an open end is refused and the value just inside accepted."""
    integer = k.kind == "int"
    accepted, refused = [], []
    for end, is_open, outward in ((k.bounds.lowest, k.bounds.lowest_open, -1),
                                  (k.bounds.highest, k.bounds.highest_open, 1)):
        if end is None:
            continue
        end = int(end) if integer else float(end)
        inside = end - outward if integer else math.nextafter(end, end - outward)
        outside = end + outward if integer else math.nextafter(end, end + outward)
        accepted.append(inside if is_open else end)
        refused.append(end if is_open else outside)
    return accepted, refused


def test_the_knobs_with_a_range_are_the_numeric_ones_and_say_what_they_mean():
    assert {"retention", "pagerank_tau", "pagerank_iters", "seed", "fastvid_tau", "dycoke_k", "dycoke_l",
            "holitom_tau", "holitom_layer", "holitom_ratio"} <= set(BOUNDED)
    for name, k in knobs().items():
        if k.kind == "int":  # model_args read any integer: the range is the declaration's
            assert k.bounds is not None, name
        if k.bounds is not None:
            assert k.kind in ("float", "int") and k.means, name
            assert _edges(k)[0], name  # at least one declared end


@pytest.mark.parametrize("name", sorted(BOUNDED))
def test_a_declared_range_accepts_its_inside_ends_and_refuses_just_outside(name):
    k = BOUNDED[name]
    accepted, refused = _edges(k)
    for value in accepted:
        assert getattr(AIMConfig.for_method(_method_for(name), **{name: value}), name) == value
    for value in refused:
        with pytest.raises(AIMConfigError) as exc:
            AIMConfig.for_method(_method_for(name), **{name: value})
        assert str(exc.value) == (f"{name} ({k.means}) must be {'an integer' if k.kind == 'int' else 'a number'} "
                                  f"{k.bounds}, got {value!r}")


@pytest.mark.parametrize("name", sorted(BOUNDED))
@pytest.mark.parametrize("value", [True, False, float("nan"), float("inf"), float("-inf"), "0.5"])
def test_a_ranged_knob_takes_no_bool_nan_infinity_or_text(name, value):
    with pytest.raises(AIMConfigError, match=rf"^{name} \(.*\) must be .*, got {re.escape(repr(value))}$"):
        AIMConfig.for_method(_method_for(name), **{name: value})


def test_an_int_knob_takes_no_float_even_a_whole_one():
    with pytest.raises(AIMConfigError, match=r"holitom_layer .* must be an integer >= 1, got 2.0"):
        AIMConfig.for_method("holitom", holitom_layer=2.0)


@pytest.mark.parametrize("name", sorted(BOUNDED))
def test_a_model_arg_out_of_its_range_is_refused_in_model_arg_words(name):
    k = BOUNDED[name]
    for value in _edges(k)[1]:
        raw = {"method": _method_for(name), model_arg_of(name): str(value)}
        with pytest.raises(EvalArgumentError, match=re.escape(f"{model_arg_of(name)} ({k.means}) must be")) as exc:
            aim_config_from_model_args(raw)
        assert str(exc.value).endswith(f"{k.bounds}, got {value!r}")


def test_a_flag_out_of_its_range_is_refused_in_flag_words(capsys):
    err = _cli_error(["flops", "--method", "dycoke", "--dycoke-k", "1.5"], capsys)
    assert "--dycoke-k (fraction of a pruned frame's tokens dropped) must be a number in [0, 1], got 1.5" in err


def test_a_help_text_that_states_a_range_states_the_declared_one():
    for name, k in knobs().items():
        for stated in re.findall(r"in [\[(][^\])]*[\])]", k.help):
            assert k.bounds is not None and stated == str(k.bounds), (name, stated)


def test_bounds_read_as_interval_text():
    from llava.aim.knobs import Bounds, knob

    half_open = Bounds.parse("[0, 1)")
    assert str(half_open) == "in [0, 1)" and 0 in half_open and 0.5 in half_open and 1 not in half_open
    assert str(Bounds.parse("(0, inf)")) == "> 0" and str(Bounds.parse("[1, inf)")) == ">= 1"
    assert str(Bounds.parse("(-inf, 2]")) == "<= 2" and str(Bounds.parse("[-1, 1]")) == "in [-1, 1]"
    for text in ("0, 1", "[1, 0]", "[0, nan]", "[a, 1]"):
        with pytest.raises(ValueError):
            Bounds.parse(text)
    with pytest.raises(ValueError, match="numeric knobs"):
        knob("choice", "x", choices=("a",), bounds="[0, 1]")
