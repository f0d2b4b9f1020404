"""The roofline efficiency analyzer (llava.analysis): hand-computed cases, schedules, the CLI.

Fast, no network, no model weights.
"""

from __future__ import annotations

import argparse
import json

import pytest

from llava.aim.merge import merged_token_count
from llava.aim.schedule import visual_tokens_per_layer
from llava.analysis import (
    Hardware,
    LLMShape,
    OpCost,
    RooflineOptions,
    analyze,
    decode_step_cost,
    get_hardware,
    get_llm,
    kv_cache_bytes_per_layer,
    layer_ops,
    lm_head_op,
    prefill_cost,
)
from llava.analysis.cli import add_flops_command, compact_counts
from llava.aim.policy import aim_default_layers
from llava.analysis.roofline import merge_steps
from llava.errors import AIMConfigError

# A toy model: H=8, I=16, nh=2, nkv=1 (d=4), L=2, V=10; a toy card: 100 OP/s, 10 B/s.
TOY = LLMShape(hidden=8, intermediate=16, layers=2, heads=2, kv_heads=1, head_dim=4, vocab=10, name="toy")
TOY_HW = Hardware("toy", 100.0, 10.0)


def roof(ops, nbytes, peak=100.0, bw=10.0):
    """The model's definition, literally: OPs / min(peak, OPs/bytes * bandwidth)."""
    return ops / min(peak, ops / nbytes * bw)


# Each op of one toy layer with N = 3 tokens, 2-byte weights/activations/KV, by hand.
TOY_N3 = {
    "attn_norm": (7 * 8 * 3, 2 * 8 * 3 * 2),
    "q_proj": (2 * 8 * 8 * 3, 8 * 8 * 2 + 8 * 3 * 2 + 8 * 3 * 2),
    "k_proj": (2 * 8 * 4 * 3, 8 * 4 * 2 + 8 * 3 * 2 + 4 * 3 * 2),  # output stored as KV
    "v_proj": (2 * 8 * 4 * 3, 8 * 4 * 2 + 8 * 3 * 2 + 4 * 3 * 2),
    "qk_matmul": (2 * 3 * 3 * 4 * 2, 3 * 4 * 1 * 2 + 3 * 3 * 2 * 2 + 3 * 4 * 1 * 2),
    "softmax": (5 * 2 * 3 * 3, 2 * 2 * 3 * 3 * 2),
    "sv_matmul": (2 * 3 * 3 * 4 * 2, 3 * 3 * 2 * 2 + 3 * 4 * 2 * 2 + 3 * 4 * 1 * 2),
    "o_proj": (2 * 8 * 8 * 3, 8 * 8 * 2 + 8 * 3 * 2 + 8 * 3 * 2),
    "attn_add": (8 * 3, 2 * 8 * 3 * 2),
    "mlp_norm": (7 * 8 * 3, 2 * 8 * 3 * 2),
    "gate_proj": (2 * 8 * 16 * 3, 8 * 16 * 2 + 8 * 3 * 2 + 16 * 3 * 2),
    "up_proj": (2 * 8 * 16 * 3, 8 * 16 * 2 + 8 * 3 * 2 + 16 * 3 * 2),
    "mlp_act": (2 * 8 * 3, 3 * 8 * 3 * 2),  # with H, not I
    "down_proj": (2 * 16 * 8 * 3, 16 * 8 * 2 + 16 * 3 * 2 + 8 * 3 * 2),
}
TOY_LM_HEAD = (8 * 10, 8 * 10 * 2 + 8 * 2 + 10 * 2)


# --- hand-computed toy cases ---------------------------------------------------------------


def test_toy_layer_every_op_by_hand():
    ops = layer_ops(TOY, 3, TOY_HW)
    assert [op.name for op in ops] == list(TOY_N3)
    for op in ops:
        want_ops, want_bytes = TOY_N3[op.name]
        assert op.ops == want_ops, op.name
        assert op.bytes == want_bytes, op.name
        assert op.time_s == pytest.approx(roof(want_ops, want_bytes), rel=1e-12), op.name


def test_toy_numbers_spot_checks():
    ops = {op.name: op for op in layer_ops(TOY, 3, TOY_HW)}
    assert (ops["q_proj"].ops, ops["q_proj"].bytes) == (384, 224)
    assert (ops["qk_matmul"].ops, ops["qk_matmul"].bytes) == (144, 84)
    assert (ops["gate_proj"].ops, ops["gate_proj"].bytes) == (768, 400)
    # q_proj: intensity 384/224 < ridge 10 -> memory-bound: 224 B / 10 B/s.
    assert ops["q_proj"].time_s == pytest.approx(22.4)
    assert ops["q_proj"].bound(TOY_HW) == "memory"
    # A compute-bound op on a bandwidth-rich card: time = OPs / peak.
    fast = Hardware("fast-mem", 100.0, 1e9)
    gate = {op.name: op for op in layer_ops(TOY, 3, fast)}["gate_proj"]
    assert gate.time_s == pytest.approx(768 / 100.0)
    assert gate.bound(fast) == "compute"


def test_toy_prefill_sums_layers_and_lm_head():
    res = prefill_cost(TOY, [3, 3], TOY_HW)
    layer_flops = sum(o for o, _ in TOY_N3.values())
    layer_bytes = sum(b for _, b in TOY_N3.values())
    assert res.flops == 2 * layer_flops + TOY_LM_HEAD[0]
    assert res.bytes == 2 * layer_bytes + TOY_LM_HEAD[1]
    want_time = 2 * sum(roof(o, b) for o, b in TOY_N3.values()) + roof(*TOY_LM_HEAD)
    assert res.time_s == pytest.approx(want_time, rel=1e-12)
    head = lm_head_op(TOY, TOY_HW)
    assert (head.ops, head.bytes) == TOY_LM_HEAD
    totals = res.op_totals()
    assert totals["q_proj"]["ops"] == 2 * 384
    assert totals["lm_head"]["ops"] == 80


def test_toy_per_layer_lengths_differ():
    res = prefill_cost(TOY, [3, 1], TOY_HW)
    assert res.layers[0].flops == sum(o for o, _ in TOY_N3.values())
    one = {op.name: op for op in res.layers[1].ops}
    assert one["qk_matmul"].ops == 2 * 1 * 1 * 4 * 2
    assert one["q_proj"].ops == 2 * 8 * 8 * 1


def test_toy_flash_attention_and_mlp_add():
    opts = RooflineOptions(flash_attention=True, include_mlp_add=True)
    ops = {op.name: op for op in layer_ops(TOY, 3, TOY_HW, opts)}
    assert "qk_matmul" not in ops and "softmax" not in ops and "sv_matmul" not in ops
    fused = ops["fused_attention"]
    assert fused.ops == 2 * 3 * 3 * 4 * 2 + 5 * 2 * 3 * 3 + 2 * 3 * 3 * 4 * 2
    # load Q (N*d*nh*a) + load K and V (2*N*d*nkv*kv) + store O (N*d*nh*a); no N x N term
    assert fused.bytes == 3 * 4 * 2 * 2 + 2 * 3 * 4 * 1 * 2 + 3 * 4 * 2 * 2
    assert (ops["mlp_add"].ops, ops["mlp_add"].bytes) == (8 * 3, 2 * 8 * 3 * 2)


def test_toy_byte_sizes():
    opts = RooflineOptions(weight_bytes=1, act_bytes=2, kv_bytes=4)
    ops = {op.name: op for op in layer_ops(TOY, 3, TOY_HW, opts)}
    assert ops["k_proj"].bytes == 8 * 4 * 1 + 8 * 3 * 2 + 4 * 3 * 4
    assert ops["qk_matmul"].bytes == 3 * 4 * 1 * 2 + 3 * 3 * 2 * 2 + 3 * 4 * 1 * 4


def test_toy_decode_step_and_kv_cache():
    step = decode_step_cost(TOY, [3, 2], TOY_HW)
    l0 = {op.name: op for op in step.layers[0].ops}
    # one query over 3 cached keys + itself
    assert l0["qk_matmul"].ops == 2 * 1 * 4 * 4 * 2
    assert l0["qk_matmul"].bytes == 1 * 4 * 1 * 2 + 1 * 4 * 2 * 2 + 4 * 4 * 1 * 2
    assert l0["q_proj"].ops == 2 * 8 * 8 * 1
    assert step.layers[1].keys == 3
    assert step.lm_head.ops == 80


def test_toy_decode_step_over_attended_keys():
    # a decode selection: layer 0 attends 1 of its 3 cached keys (+ the new token), layer 1 all
    step = decode_step_cost(TOY, [3, 2], TOY_HW, attended=[1, 2])
    l0 = {op.name: op for op in step.layers[0].ops}
    assert [layer.keys for layer in step.layers] == [2, 3]
    assert l0["qk_matmul"].ops == 2 * 1 * 2 * 4 * 2
    assert l0["qk_matmul"].bytes == 1 * 4 * 1 * 2 + 1 * 2 * 2 * 2 + 2 * 4 * 1 * 2  # K of the 2 attended keys
    assert step.layers[1] == decode_step_cost(TOY, [3, 2], TOY_HW).layers[1]
    extra = OpCost("selection", 6.0, 8.0, 0.5)
    with_extra = decode_step_cost(TOY, [3, 2], TOY_HW, attended=[1, 2], overhead=[extra])
    assert with_extra.flops == step.flops + 6 and with_extra.time_s == pytest.approx(step.time_s + 0.5)
    assert with_extra.op_totals()["selection"]["bytes"] == 8
    for bad in ([4, 2], [1], [-1, 2]):
        with pytest.raises(AIMConfigError, match="attended keys"):
            decode_step_cost(TOY, [3, 2], TOY_HW, attended=bad)
    assert kv_cache_bytes_per_layer(TOY, [3, 2]) == [2 * 3 * 1 * 4 * 2, 2 * 2 * 1 * 4 * 2]


def test_toy_analyze_end_to_end():
    # 2 frames x 4 tokens, retention 1/2 -> 2 kept each; 1 newline; 3 text tokens.
    res = analyze(TOY, frames=2, tokens_per_frame=4, text_tokens=3, retention=0.5, l1=0, l2=2,
                  newline_tokens=1, hardware=TOY_HW)
    v0 = 2 * 2 + 1
    assert res.visual_tokens_per_layer == [v0, (v0 * (2 - 1)) // 2] == [5, 2]
    assert res.tokens_per_layer == [8, 5]
    assert res.prefill_flops == prefill_cost(TOY, [8, 5], TOY_HW).flops
    assert res.pruning_layers == [0]
    assert res.kv_cache_bytes == 2 * (8 + 5) * 1 * 4 * 2
    assert res.aim_overhead.flops > 0
    assert res.without_aim().tokens_per_layer == [3 + 2 * 4 + 1] * 2


def test_toy_importance_overhead_by_hand():
    """PageRank at layer 0 on N=4 tokens of TOY (nh=2, nkv=1, d=4), 16-bit activations,
    float32 scores: P = 4*5/2 = 10 causal pairs per head, 5 power steps."""
    from llava.analysis.roofline import importance_overhead_ops

    ops = {op.name: op for op in importance_overhead_ops(TOY, [4, 3], [0], TOY_HW)}
    qk, sm, pw, rms = (ops[f"importance.{k}[0]"] for k in ("qk", "softmax", "power", "rms"))
    assert (qk.ops, qk.bytes) == (2 * 10 * 4 * 2, 4 * 4 * 2 * 2 + 4 * 4 * 1 * 2 + 10 * 2 * 4)  # 160, 176
    assert (sm.ops, sm.bytes) == (5 * 2 * 10, 2 * 2 * 10 * 4)  # 100, 160
    # the probabilities are loaded once; the distributions d (2 per step and head) per step
    assert (pw.ops, pw.bytes) == (5 * 2 * 2 * 10, 2 * 10 * 4 + 2 * 5 * 2 * 4 * 4)  # 200, 400
    assert (rms.ops, rms.bytes) == (3 * 2 * 4, 2 * 4 * 4 + 4 * 4)
    assert qk.time_s == pytest.approx(roof(160, 176))
    assert pw.time_s == pytest.approx(roof(200, 400))


# --- schedules -----------------------------------------------------------------------------


@pytest.mark.parametrize("convention", ["runtime", "paper"])
@pytest.mark.parametrize("retention,l1,l2", [(0.25, 14, 22), (1.0, 7, 8), (0.5, 0, 27), (1 / 64, 21, 29), (0.25, None, None)])
def test_tokens_per_layer_follow_the_schedule(convention, retention, l1, l2):
    res = analyze("qwen2-7b", retention=retention, l1=l1, l2=l2, convention=convention)
    # the paper's tables counted floor(196 * r) tokens per frame; the runtime keeps the official count
    v0 = 32 * merged_token_count(196, retention, "exact" if convention == "paper" else "official")
    visual = visual_tokens_per_layer(v0, 28, l1, l2, convention)
    assert res.visual_tokens_per_layer == visual
    assert res.tokens_per_layer == [100 + v for v in visual]


def test_conventions_differ_by_one_layer():
    rt = analyze("qwen2-7b", retention=0.25, l1=14, l2=22, convention="runtime").tokens_per_layer
    pp = analyze("qwen2-7b", retention=0.25, l1=14, l2=22, convention="paper").tokens_per_layer
    assert rt[:15] == [1668] * 15 and pp[:14] == [1668] * 14
    assert pp[14:21] == rt[15:22]
    assert rt[22:] == [100] * 6 and pp[21:] == [100] * 7


def test_paper_setting_self_consistent():
    full = analyze("qwen2-7b", convention="paper")
    H, I, L, nh, d, V, kvd = 3584, 18944, 28, 28, 128, 152064, 512
    N = 100 + 32 * 196
    per_layer = (2 * N * (2 * H * H + 2 * H * kvd + 3 * H * I) + 2 * 2 * N * N * d * nh + 5 * nh * N * N
                 + 2 * 7 * H * N + H * N + 2 * H * N)
    assert full.prefill_flops == L * per_layer + H * V
    aim_paper = analyze("qwen2-7b", retention=0.25, l1=14, l2=22, convention="paper")
    aim_runtime = analyze("qwen2-7b", retention=0.25, l1=14, l2=22, convention="runtime")
    assert aim_paper.prefill_flops < aim_runtime.prefill_flops < full.prefill_flops
    assert full.prefill_flops / aim_paper.prefill_flops > 5
    assert full.prefill_time_s / aim_paper.prefill_time_s > 5
    # AIM's own overhead is small, and reported apart from the prefill
    assert 0 < aim_runtime.aim_overhead.flops < 0.01 * aim_runtime.prefill_flops
    assert aim_runtime.prefill_flops == prefill_cost(get_llm("qwen2-7b"), aim_runtime.tokens_per_layer).flops
    assert aim_runtime.vision_encoder.flops == full.vision_encoder.flops > 0
    assert aim_runtime.kv_cache_bytes < full.kv_cache_bytes


@pytest.mark.parametrize("l1,l2", [(None, None), (14, 22)])
def test_monotone_in_retention(l1, l2):
    flops = [analyze("qwen2-7b", retention=r, l1=l1, l2=l2).prefill_flops
             for r in (1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)]
    assert flops == sorted(flops) and len(set(flops)) == len(flops)


def test_merge_steps_match_the_paper():
    assert merge_steps(196, 0.25) == [(196, 98), (98, 49)]
    assert merge_steps(196, 1.0) == []
    assert 196 - sum(r for _, r in merge_steps(196, 1 / 64)) == 4  # official: 98, 49, 24, 12, 6, 3 removed
    assert 196 - sum(r for _, r in merge_steps(196, 1 / 64, "exact")) == 3


def test_aim_default_layers_scaled():
    assert aim_default_layers(28) == (14, 22)
    assert aim_default_layers(32) == (16, 25)
    l1, l2 = aim_default_layers(2)
    assert 0 <= l1 < 2 and l1 < l2


def test_bad_analyze_options():
    for kwargs in ({"retention": 0.0}, {"retention": 1.5}, {"l1": 22, "l2": 14}, {"l1": -1, "l2": 3},
                   {"l1": 29, "l2": 30}, {"frames": 0}, {"text_tokens": -1}, {"convention": "nope"},
                   {"hardware": "tpu"}, {"llm": "gpt-9"}, {"l1": 3, "l2": None}):
        with pytest.raises(AIMConfigError):
            analyze(**kwargs)


# --- shapes and hardware -------------------------------------------------------------------


def test_builtin_shapes():
    q = get_llm("qwen2-7b")
    assert (q.hidden, q.intermediate, q.layers, q.heads, q.kv_heads, q.head_dim, q.vocab) == (
        3584, 18944, 28, 28, 4, 128, 152064)
    v = get_llm("vicuna-7b")
    assert (v.hidden, v.intermediate, v.layers, v.heads, v.kv_heads, v.vocab) == (4096, 11008, 32, 32, 32, 32000)


def test_shape_from_transformers_configs():
    from transformers import LlavaOnevisionConfig, Qwen2Config

    text = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=100)
    s = LLMShape.from_config(text)
    assert (s.hidden, s.intermediate, s.layers, s.heads, s.kv_heads, s.head_dim, s.vocab) == (64, 128, 3, 4, 2, 16, 100)
    mm = LlavaOnevisionConfig(text_config=text.to_dict())
    assert LLMShape.from_config(mm).layers == 3
    assert LLMShape.from_config({"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
                                 "num_attention_heads": 2, "vocab_size": 10}).kv_heads == 2
    with pytest.raises(AIMConfigError):
        LLMShape.from_config({"hidden_size": 8})


def _write_config(tmp_path):
    cfg = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path


def test_shape_from_local_path(tmp_path):
    d = _write_config(tmp_path)
    for spec in (str(d), str(d / "config.json")):
        s = get_llm(spec)
        assert (s.hidden, s.intermediate, s.layers, s.heads, s.kv_heads, s.head_dim, s.vocab) == (64, 128, 4, 4, 2, 16, 100)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(AIMConfigError):
        get_llm(str(tmp_path / "bad.json"))


def test_hardware():
    assert get_hardware("nvidia_A100") == Hardware("nvidia_A100", 312e12, 1555e9)
    assert get_hardware("nvidia_H100").flops == 989.5e12
    assert get_hardware("nvidia_H200").bandwidth == 4800e9
    assert get_hardware("nvidia_A100_80G").bandwidth == 2039e9
    hw = get_hardware("custom:1e12:2e9")
    assert (hw.flops, hw.bandwidth) == (1e12, 2e9)
    for bad in ("tpu", "custom:1e12", "custom:x:1", "custom:-1:1", "custom:1:0"):
        with pytest.raises(AIMConfigError):
            get_hardware(bad)


# --- the command line ----------------------------------------------------------------------


@pytest.fixture
def cli_main():
    from llava.cli import main

    return main


def test_flops_parser_sets_func():
    parser = argparse.ArgumentParser()
    add_flops_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["flops", "--json"])
    assert callable(args.func) and args.json


def test_cli_json_keys_and_defaults(cli_main, capsys):
    assert cli_main(["flops", "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    data = json.loads(out)
    for key in ("prefill_tflops", "prefill_ms", "tokens_per_layer", "baseline_prefill_tflops", "speedup",
                "vision_encoder_tflops", "aim_overhead_tflops", "kv_cache_bytes", "retention", "l1", "l2",
                "frames", "hardware", "convention"):
        assert key in data, key
    assert (data["retention"], data["l1"], data["l2"], data["convention"]) == (0.25, 14, 22, "runtime")
    want = analyze("qwen2-7b", retention=0.25, l1=14, l2=22)
    assert data["tokens_per_layer"] == want.tokens_per_layer
    assert data["prefill_tflops"] == pytest.approx(want.prefill_tflops)
    assert data["baseline_prefill_tflops"] > data["prefill_tflops"]
    assert data["speedup"] > 1


def test_cli_paper_convention_and_options(cli_main, capsys):
    assert cli_main(["flops", "--json", "--paper-convention", "--retention", "0.5", "--l1", "7", "--l2", "15",
                     "--hardware", "custom:1e15:3e12", "--flash-attention", "--frames", "8"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["convention"] == "paper" and data["options"]["flash_attention"]
    assert data["tokens_per_layer"] == [100 + v for v in visual_tokens_per_layer(8 * 98, 28, 7, 15, "paper")]
    assert cli_main(["flops", "--json", "--no-prune"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["l1"] is None and len(set(data["tokens_per_layer"])) == 1


def test_cli_llama_uses_the_official_llava15_schedule(cli_main, capsys):
    """llama-7b pairs with CLIP (LLaVA-1.5): the official (13, 21), as AIMConfig's "auto"; another
    32-layer pairing gets the paper's (14, 22) of 28 scaled."""
    assert cli_main(["flops", "--json", "--llm", "llama-7b", "--frames", "1", "--tokens-per-frame", "576"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["l1"], data["l2"]) == (13, 21)
    assert any("official LLaVA-1.5" in n for n in data["notes"])
    assert data["vision_tower"] == "clip-vit-l-336"
    assert cli_main(["flops", "--json", "--llm", "llama-7b", "--vision", "siglip-so400m"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["l1"], data["l2"]) == (16, 25) and any("scaled" in n for n in data["notes"])


def test_cli_human_table(cli_main, capsys):
    assert cli_main(["flops"]) == 0
    out = capsys.readouterr().out
    assert "LLM prefill TFLOPs" in out and "without AIM" in out
    assert "SiLU-gate" in out and "not I" in out
    assert "vision encoder" in out


def test_cli_local_config_path(cli_main, capsys, tmp_path):
    d = _write_config(tmp_path)
    assert cli_main(["flops", "--json", "--llm", str(d), "--frames", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["tokens_per_layer"]) == 4
    assert (data["l1"], data["l2"]) == aim_default_layers(4)


@pytest.mark.parametrize("argv", [
    ["--retention", "0"], ["--retention", "1.5"], ["--l1", "22", "--l2", "14"], ["--l1", "-1", "--l2", "4"],
    ["--l1", "29", "--l2", "30"], ["--l1", "3"], ["--hardware", "nvidia_Z9"], ["--hardware", "custom:1:x"],
    ["--llm", "no-such-model"], ["--frames", "0"], ["--frames", "-3"], ["--frames", "abc"],
    ["--no-prune", "--l1", "1", "--l2", "2"], ["--text-tokens", "-1"],
])
def test_cli_bad_options_exit_2_one_line(cli_main, capsys, argv):
    try:
        rc = cli_main(["flops", *argv])
    except SystemExit as exc:  # argparse-level errors
        rc = exc.code
    assert rc == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err and "\n" not in err, err
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_compact_counts():
    assert compact_counts([5, 5, 4, 3, 3]) == "0-1: 5 | 2: 4 | 3-4: 3"


def test_paper_overhead_count_by_hand():
    """The paper convention's overhead, summed by hand: merging jointly over all frames (t =
    6272, then 3136, a = t/2: 2a^2C + 3Ct + aC + a^2 each) and importance 16 * heads * N_j^2
    over the 8 pruning layers (N_j = 1568 * (22 - j)/8 + 100 visual + text, j = 14..21)."""
    C, nh = 3584, 28
    merging = sum(2 * (t / 2) ** 2 * C + 3 * C * t + (t / 2) * C + (t / 2) ** 2 for t in (6272, 3136))
    importance = 16 * nh * sum((1568 * (22 - j) // 8 + 100) ** 2 for j in range(14, 22))
    res = analyze("qwen2-7b", retention=0.25, l1=14, l2=22, convention="paper")
    assert res.aim_overhead.part("merge") == pytest.approx(merging, rel=1e-12)
    assert res.aim_overhead.part("importance") == pytest.approx(importance, rel=1e-12)
    runtime = analyze("qwen2-7b", retention=0.25, l1=14, l2=22)
    per_frame_similarity = sum(op.ops for op in runtime.aim_overhead.ops if op.name.startswith("merge.similarity"))
    assert per_frame_similarity == 32 * 2 * C * (98 * 98 + 49 * 49)  # 2.75 GFLOPs
    assert 31 < res.aim_overhead.part("merge") / per_frame_similarity < 33


def test_moe_layer_counts_the_router_and_the_active_experts_only():
    from llava.analysis.hardware import get_hardware
    from llava.analysis.roofline import layer_ops
    from llava.analysis.shapes import LLMShape

    H, E, k, Ie, n = 64, 16, 2, 24, 10
    moe = LLMShape(hidden=H, intermediate=256, layers=2, heads=4, kv_heads=2, head_dim=16, vocab=100,
                   experts=E, experts_per_token=k, expert_intermediate=Ie)
    ops = {op.name: op.ops for op in layer_ops(moe, n, get_hardware("nvidia_A100"))}
    assert "gate_proj" not in ops  # no dense MLP of `intermediate`
    assert ops["router"] == 2 * H * E * n
    # each of the n tokens through k experts: gate, up (H -> Ie) and down (Ie -> H)
    assert ops["expert_gate_proj"] + ops["expert_up_proj"] + ops["expert_down_proj"] == 3 * 2 * H * Ie * k * n
    assert ops["expert_act"] == 2 * H * k * n and ops["expert_combine"] == 2 * H * k * n
    dense = {op.name: op.ops for op in layer_ops(LLMShape(H, 256, 2, 4, 2, 16, 100), n, get_hardware("nvidia_A100"))}
    attention = sum(v for name, v in dense.items() if name not in ("gate_proj", "up_proj", "mlp_act", "down_proj"))
    mlp = 2 * H * E * n + 3 * 2 * H * Ie * k * n + 2 * H * k * n + 2 * H * k * n
    assert sum(ops.values()) == attention + mlp


def test_moe_fields_are_read_from_any_config_with_experts():
    from llava.analysis.shapes import LLMShape

    cfg = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, vocab_size=100,
               num_experts=16, num_experts_per_tok=2, moe_intermediate_size=24)
    shape = LLMShape.from_config(cfg)
    assert (shape.experts, shape.experts_per_token, shape.expert_intermediate) == (16, 2, 24)
    assert "2 of 16 experts" in shape.describe()
    assert not LLMShape.from_config({**cfg, "num_experts": 0}).moe
    with pytest.raises(AIMConfigError, match="experts_per_token"):
        LLMShape.from_config({**cfg, "num_experts_per_tok": 17})
