"""``llava-aim bench`` on the Qwen-VL family: the small random Qwen2-VL / Qwen2.5-VL end to end
(tiny sizes), its figures against the analyzer and the runtime, the M-RoPE prompt of the
LLM-only measurement, the memory refusal of the 7B architectures, and bad input."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import needs_family
from hypothesis import given, settings
from hypothesis import strategies as st

from llava.aim.config import AIMConfig
from llava.analysis import analyze
from llava.cli import main
from llava.model.families.qwen3_vl import Qwen3VLAdapter

# 112 x 112 px frames: 8 x 8 patches, 4 x 4 = 16 tokens per temporal group after the merger;
# at retention 1/4 the official count keeps 16 -> 8 -> 4.
TINY_PIXELS = "12544"
NAMES = ["baseline", "official", "mask", "merge-only", "aim"]


def _bench(capsys, *argv):
    code = main(["bench", *argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_small_qwen2_vl_bench_end_to_end(capsys):
    r = _bench(capsys, "--model", "small-qwen2-vl", "--frames", "4", "--max-pixels", TINY_PIXELS, "--repeats", "1")
    assert r["model"] == "small-qwen2-vl"
    i = r["input"]
    assert (i["frames"], i["temporal_groups"], i["tokens_per_group"], i["grid"], i["newline_tokens"]) == (4, 2, 16,
                                                                                                          [4, 4], 0)
    from llava.model.families import family_for_model_type

    adapter = family_for_model_type("qwen2_vl")
    tokens = adapter.visual_tokens(adapter.reference_config(next(iter(adapter.references))), 4, 112, 112,
                                   max_pixels=12544, min_pixels=12544)
    assert (tokens.units, tokens.tokens_per_unit, tokens.grid) == (2, 16, (4, 4))
    lm = {c["name"]: c for c in r["language_model_prefill"]}
    e2e = {c["name"]: c for c in r["end_to_end_prefill"]}
    assert list(lm) == list(e2e) == NAMES
    # the LLM gets 2 groups x 16 tokens (no newline token), merged 2 x 4
    assert lm["baseline"]["llm_input_tokens"] == 2 * 16 + 100
    assert all(lm[n]["llm_input_tokens"] == 2 * 4 + 100 for n in NAMES[1:])
    # the analyzer predicts for exactly the token counts the runtime ran (aim: the driver's record)
    for name in ("baseline", "merge-only", "aim"):
        assert r["predicted"][name]["tokens_per_layer"] == lm[name]["tokens_per_layer"]
    assert lm["aim"]["tokens_per_layer"] == [108] * 5 + [104] + [100] * 2  # (4, 6) of 8 layers
    assert lm["aim"]["kv_cache_bytes"] < lm["merge-only"]["kv_cache_bytes"] < lm["baseline"]["kv_cache_bytes"]
    assert lm["official"]["attn"] == "eager" and lm["official"]["aim"] == lm["mask"]["aim"]
    # end to end: the processor's placeholders, the runtime's tokens per layer, the analyzer's
    text = e2e["baseline"]["llm_input_tokens"] - 2 * 16
    assert text > 0 and all(e2e[n]["llm_input_tokens"] == 2 * 4 + text for n in NAMES[1:])
    small = {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 8, "num_attention_heads": 8,
             "num_key_value_heads": 2, "vocab_size": 1024}
    predicted = analyze(small, frames=2, tokens_per_frame=16, text_tokens=text, newline_tokens=0, retention=0.25,
                        l1=4, l2=6)
    assert e2e["aim"]["tokens_per_layer"] == predicted.tokens_per_layer
    assert e2e["aim"]["sum_tokens"] < e2e["merge-only"]["sum_tokens"] < e2e["baseline"]["sum_tokens"]
    assert r["measured_speedup"] > 0 and r["end_to_end_speedup_vs_official"] > 0
    assert r["overhead"]["merging_ms"] > 0 and r["overhead"]["importance_ms"] > 0


def test_small_qwen2_5_vl_bench_and_a_baseline_method(capsys):
    r = _bench(capsys, "--model", "small-qwen2.5-vl", "--frames", "2", "--max-pixels", TINY_PIXELS, "--repeats", "1",
               "--method", "fastv")
    names = NAMES + ["fastv"]
    assert [c["name"] for c in r["language_model_prefill"]] == names
    assert [c["name"] for c in r["end_to_end_prefill"]] == names
    fastv = next(c for c in r["language_model_prefill"] if c["name"] == "fastv")
    assert fastv["llm_input_tokens"] == 16 + 100  # FastV does not merge
    assert r["predicted"]["fastv"]["tokens_per_layer"] == fastv["tokens_per_layer"]


def test_human_table_names_the_groups(capsys):
    assert main(["bench", "--model", "small-qwen2-vl", "--frames", "2", "--max-pixels", TINY_PIXELS,
                 "--repeats", "1", "--lm-only"]) == 0
    out = capsys.readouterr().out
    assert "model: small-qwen2-vl" in out
    assert "2 frames = 1 temporal group x 16 tokens (4 x 4 after the 2x2 patch merger" in out
    assert "newline" not in out and "end to end" not in out


def test_layerwise_at_the_qwen2_vl_decoder(capsys):
    r = _bench(capsys, "--layerwise", "--model", "small-qwen2-vl", "--frames", "4", "--max-pixels", TINY_PIXELS,
               "--repeats", "1")
    assert r["model"] == "small-qwen2-vl" and r["input"]["temporal_groups"] == 2
    lw = r["layerwise"]
    assert lw["tokens_per_layer"] == [108] * 5 + [104] + [100] * 2
    assert lw["scoring_layers"] == [4]


def test_layerwise_7b_shape_counts_1024_merged_tokens():
    """The Qwen2-VL-7B default: 32 frames -> 16 groups x 256, merged to 16 x 64 = 1024 (official
    count at 1/4); the layer-by-layer schedule and the analyzer's for `flops --llm qwen2-vl-7b`."""
    import argparse

    from llava.analysis.cli import analysis_inputs
    from llava.analysis.roofline import analyze as analyze_inputs
    from llava.bench.cli import bench_input
    from llava.bench.models import BENCH_MODELS

    spec = BENCH_MODELS["qwen2-vl-7b"]
    args = argparse.Namespace(frames=32, max_pixels=None, tokens_per_frame=None, text_tokens=100)
    inp = bench_input(args, spec)
    assert (inp.units, inp.tokens_per_unit, inp.newline) == (16, 256, 0)
    flops_args = argparse.Namespace(llm="qwen2-vl-7b", frames=32, tokens_per_frame=None, max_pixels=None,
                                    frame_size=None, text_tokens=100, newline_tokens=0, paper_convention=False,
                                    hardware="nvidia_A100", weight_bytes=2, act_bytes=2, kv_bytes=2,
                                    flash_attention=False, include_mlp_add=False, vision=None, merge_count="official")
    kwargs = analysis_inputs(flops_args)
    assert (kwargs["frames"], kwargs["tokens_per_frame"]) == (inp.units, inp.tokens_per_unit)
    from llava.aim.schedule import policy_visual_tokens

    cfg = AIMConfig(retention=0.25, l1=14, l2=22)
    ours = [100 + v for v in policy_visual_tokens(cfg, 16 * 64, 28)]
    assert ours[0] == 1124
    assert analyze_inputs(retention=0.25, l1=14, l2=22, **kwargs).tokens_per_layer == ours


@settings(max_examples=12, deadline=None)
@given(frames=st.integers(1, 5), max_pixels=st.integers(784, 160_000), kind=st.sampled_from(["qwen2_vl",
                                                                                                "qwen2_5_vl"]))
def test_bench_input_counts_what_the_processor_emits(frames, max_pixels, kind):
    """The LLM-only measurement's groups x tokens are the placeholders the model's processor
    gives the end-to-end clip, for any frame count and pixel limit."""
    import argparse

    from llava.bench.cli import bench_input
    from llava.bench.models import BENCH_MODELS, bench_processor, synthetic_video

    spec = next(m for m in BENCH_MODELS.values() if m.family == kind and not m.big)
    inp = bench_input(argparse.Namespace(frames=frames, max_pixels=max_pixels, tokens_per_frame=None,
                                         text_tokens=100), spec)
    processor = bench_processor(kind, inp.max_pixels, inp.min_pixels)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}],
        add_generation_prompt=True)
    batch = processor(text=prompt, videos=[synthetic_video(frames, inp.frame_side)], return_tensors="pt")
    t, h, w = batch["video_grid_thw"][0].tolist()
    assert (t, h // 2, w // 2) == (inp.units, *inp.grid)
    assert int((batch["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")).sum()) == (
        inp.units * inp.tokens_per_unit)


# -- the LLM-only prompt's M-RoPE ids -----------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(text=st.integers(2, 40), groups=st.integers(1, 6), rows=st.integers(1, 6), cols=st.integers(1, 6),
       data=st.data())
def test_mrope_prompt_positions_follow_the_stock_layout(text, groups, rows, cols, data):
    from llava.bench.measure import mrope_prompt_positions, prompt_ids

    per_group = data.draw(st.integers(1, rows * cols))
    pos = mrope_prompt_positions(text, groups, per_group, cols, "cpu")
    ids = prompt_ids(groups * per_group, text, "cpu")
    assert pos.shape == (3, 1, ids.shape[1])
    head = text // 2
    visual = ids[0] == 5
    assert torch.equal(visual.nonzero().squeeze(1), torch.arange(head, head + groups * per_group))
    p = pos[:, 0]
    # text: the same id in the three rows, counting up; it resumes past the largest visual id
    text_pos = p[:, ~visual]
    assert torch.equal(text_pos[0], text_pos[1]) and torch.equal(text_pos[0], text_pos[2])
    assert bool((text_pos[0].diff() >= 1).all())
    assert int(text_pos[0, head]) == int(p[:, visual].max()) + 1  # the first text token after the video
    # visual: group g, cell i at start + (g, i // cols, i % cols)
    v = p[:, visual].reshape(3, groups, per_group) - head
    cell = torch.arange(per_group)
    assert torch.equal(v[0], torch.arange(groups)[:, None].expand(-1, per_group))
    assert torch.equal(v[1], (cell // cols).expand(groups, -1)) and torch.equal(v[2], (cell % cols).expand(groups, -1))


def test_lm_only_prefill_hands_the_qwen_text_model_3d_positions():
    """Every configuration's prefill (stock forward and the AIM driver) computes its rotary
    embedding from (3, 1, S) ids."""
    from llava.bench.cases import DECODE_STEPS, default_cases
    from llava.bench.measure import mrope_prompt_positions, run_prefill_benchmark
    from llava.bench.models import build_lm, small_decoder_config

    lm = build_lm(small_decoder_config(family="qwen2_vl"))
    seen = []
    lm.rotary_emb.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[1].shape)))
    cases = default_cases(2, 16, 10, 8, newline=0)
    run_prefill_benchmark(lm, cases, repeats=1, warmup=0, measure_memory=False,
                          positions=lambda c: mrope_prompt_positions(c.text_tokens, 2, c.visual_tokens // 2, 4, "cpu"))
    prefills = [shape for shape in seen if shape[2] > 1]
    assert prefills == [(3, 1, c.visual_tokens + c.text_tokens) for c in cases]
    # and each prefill's timed decode steps continue them one (3, 1, 1) id at a time
    assert [shape for shape in seen if shape[2] == 1] == [(3, 1, 1)] * (DECODE_STEPS * len(cases))
    assert cases[-1].tokens_per_layer == [18] * 5 + [14] + [10] * 2


# -- models and memory --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["small-qwen2-vl", "qwen2-vl-7b", "small-qwen2.5-vl", "qwen2.5-vl-7b"])
def test_parameter_counts_equal_the_built_model(name):
    from llava.bench.memory import decoder_params, merger_tower_params
    from llava.bench.models import BENCH_MODELS, build_model

    spec = BENCH_MODELS[name]
    text = spec.text_config()
    model, _ = build_model(spec.family, text, spec.vision_dims(), device="meta")
    inner = model.model
    widths = spec.adapter.bench_tower_widths(spec.vision_dims())
    assert merger_tower_params(widths, spec.vision_dims(), text.hidden_size) == sum(
        p.numel() for p in inner.visual.parameters())
    layers = sum(p.numel() for p in inner.language_model.parameters())
    embed = model.config.text_config.vocab_size * text.hidden_size
    # the end-to-end model keeps the tiny tokenizer's vocabulary; the decoder is the config's
    assert decoder_params(text) - text.vocab_size * text.hidden_size == layers - embed
    assert model.config.text_config.rope_parameters["mrope_section"] == text.rope_parameters["mrope_section"]
    if spec.big:
        assert sum(text.rope_parameters["mrope_section"]) == 64 and text.num_hidden_layers == 28


def test_mrope_section_scales_the_7b_split():
    from llava.model.families.qwen2_vl import mrope_section

    assert mrope_section(128) == (16, 24, 24)
    assert mrope_section(32) == (4, 6, 6)
    assert mrope_section(16) == (2, 3, 3)  # the tiny models'


@pytest.mark.parametrize("argv", [
    ["bench", "--model", "qwen2-vl-7b"],
    ["bench", "--model", "qwen2.5-vl-7b"],
    ["bench", "--model", "qwen2-vl-7b", "--lm-only"],
    ["bench", "--model", "small-qwen2-vl", "--frames", "100000"],
])
def test_qwen_bench_that_cannot_fit_exits_2_before_building(monkeypatch, capsys, argv):
    import llava.bench.cli as bench_cli

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built although the run cannot fit")

    for name in ("build_lm", "build_model"):
        monkeypatch.setattr(bench_cli, name, refuse)
    monkeypatch.setattr(bench_cli, "available_bytes", lambda device: 20 << 30)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.strip().splitlines()
    assert "needs about" in line and "20.0 GiB is available" in line
    assert "--model small-qwen2" in line


def test_qwen_memory_estimates():
    import argparse

    from llava.bench.cli import bench_input, estimate_bench_memory
    from llava.bench.models import BENCH_MODELS

    args = argparse.Namespace(frames=32, tokens_per_frame=None, max_pixels=None, text_tokens=100, retention=0.25,
                              attn="sdpa", lm_only=False)
    for name, low, high in (("small-qwen2-vl", 0, 3 << 30), ("qwen2-vl-7b", 15 << 30, 40 << 30),
                            ("qwen2.5-vl-7b", 15 << 30, 40 << 30)):
        spec = BENCH_MODELS[name]
        phases = estimate_bench_memory(args, spec.text_config(), spec.vision_dims(), 4 if not spec.big else 2, spec,
                                       bench_input(args, spec))
        assert low < max(phases.values()) < high, (name, phases)


@pytest.mark.parametrize("argv", [
    ["bench", "--model", "small", "--max-pixels", "200704"],
    ["bench", "--model", "small-qwen2-vl", "--tokens-per-frame", "196"],
    ["bench", "--model", "small-qwen2-vl", "--max-pixels", "100"],
    ["bench", "--model", "small-qwen2-vl", "--method", "prumerge"],
    ["bench", "--model", "small-qwen2.5-vl", "--l1", "9", "--l2", "12"],
    ["bench", "--model", "qwen3-vl"],
    ["bench", "--layerwise", "--model", "small-qwen2-vl", "--method", "fastv"],
])
def test_qwen_bench_bad_input_exit_2_one_line(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", [
    pytest.param("small-qwen3-vl", marks=needs_family(Qwen3VLAdapter())), "small-qwen2.5-vl", "small"])
def test_end_to_end_input_keeps_every_frame_the_input_counts(name):
    """bench feeds its synthetic video with what the family's adapter says the processor needs
    beside pre-sampled frames (as run and the plugin do): Qwen3-VL's processor then keeps all 8
    frames (4 temporal groups of the counted grid) instead of resampling them by rate (it gave 2
    groups of another size before); families that need nothing are fed as before."""
    import argparse

    from llava.bench.cases import PrefillCase
    from llava.bench.cli import add_bench_command, bench_input, e2e_processor_kwargs
    from llava.bench.measure import end_to_end_inputs
    from llava.bench.models import BENCH_MODELS, build_model, synthetic_video

    spec = BENCH_MODELS[name]
    if not spec.adapter.installed():
        pytest.skip(spec.adapter.missing_reason())
    parser = argparse.ArgumentParser()
    add_bench_command(parser.add_subparsers())
    inp = bench_input(parser.parse_args(["bench", "--model", name, "--frames", "8"]), spec)
    limits = dict(max_pixels=inp.max_pixels, min_pixels=inp.min_pixels) if spec.resolution else {}
    model, processor = build_model(spec.family, spec.text_config(), spec.vision_dims(), **limits)
    video = synthetic_video(8, inp.frame_side)
    case = PrefillCase("baseline", None, inp.units * inp.e2e_tokens_per_unit + inp.newline, 0)
    batch = end_to_end_inputs(model, processor, [case], video, "What happens?",
                              e2e_processor_kwargs(spec, video))["baseline"]
    video_token = model.config.video_token_id
    assert int((batch["input_ids"] == video_token).sum()) == inp.units * inp.e2e_tokens_per_unit + inp.newline
    if spec.resolution:
        merge = model.config.vision_config.spatial_merge_size
        assert batch["video_grid_thw"].tolist() == [[inp.units, inp.grid[0] * merge, inp.grid[1] * merge]]
