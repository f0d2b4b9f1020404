"""The baselines and controls of llava.aim.policy: FastV, VTW, PyramidDrop, random, pooling.

Each in-LLM policy is checked against a masked reference written from its own definition
(a plain loop over the stock decoder layers with eager attention and an explicit additive
mask, scores read from the eager attention weights), then end to end on the tiny models:
schedule as executed, removal vs mask, batch vs single, FLOPs, CLI, errors.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import image_inputs, make_image, make_video, video_inputs
from llava import AIMConfig, apply_aim
from llava.aim.importance import last_token_attention, random_scores
from llava.aim.merge import merged_token_count
from llava.aim.policy import METHODS, STEP_METHODS, drop_layers_for, scaled_layer, video_reduction
from llava.aim.reduce import pool_frames, pooled_grid
from llava.aim.schedule import kept_count, policy_visual_tokens, stepwise_visual_tokens, visual_tokens_per_layer
from llava.analysis.roofline import analyze
from llava.cli import main
from llava.errors import AIMConfigError
from llava.model.runtime import AIMRuntime, install_pruning, remove_aim

VISUAL_ID = 5
TEXT_HEAD, VISUAL, TEXT_TAIL = 5, 40, 7


# -- a masked reference of each policy's own definition -------------------------------------
def _small_lm(family: str, attn: str):
    from transformers import AutoModel, LlamaConfig, Qwen2Config

    common = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=8,
                  num_attention_heads=4, num_key_value_heads=2, attn_implementation=attn)
    config = Qwen2Config(**common) if family == "qwen2" else LlamaConfig(**common)
    torch.manual_seed(0)
    return AutoModel.from_config(config, dtype=torch.float32).eval()


def _prompt(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 256, (1, TEXT_HEAD + VISUAL + TEXT_TAIL), generator=g)
    ids[0, TEXT_HEAD:TEXT_HEAD + VISUAL] = VISUAL_ID
    return ids


def reference_last_hidden(lm, ids, method, drop_layers, drop_ratio=0.5, seed=0, pick="top"):
    """Stock layers, eager attention, pruned tokens hidden as keys from layer K on.

    fastv / pdrop: at each K, keep floor(remaining * (1 - ratio)) visual tokens with the highest
    attention the LAST token pays them in layer K-1 (eager weights, mean over heads);
    vtw: no visual key from layer K on; random: the seeded hash of the visual index.
    ``pick="bottom"`` keeps the lowest instead (to show the test can tell them apart).
    """
    n = ids.shape[1]
    h = lm.embed_tokens(ids)
    pos = torch.arange(n)[None]
    cos, sin = lm.rotary_emb(h, pos)
    visual = (ids[0] == VISUAL_ID)
    alive = torch.ones(n, dtype=torch.bool)
    causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
    captured = {}
    hooks = [layer.self_attn.register_forward_hook(
        lambda mod, args, out, j=j: captured.__setitem__(j, out[1])) for j, layer in enumerate(lm.layers)]
    try:
        for j, layer in enumerate(lm.layers):
            allowed = (causal & alive[None, :]) | torch.eye(n, dtype=torch.bool)
            mask = torch.zeros(1, 1, n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)
            h = layer(h, attention_mask=mask, position_embeddings=(cos, sin), position_ids=pos)
            if j + 1 not in drop_layers:
                continue
            candidates = (visual & alive).nonzero().flatten()
            if method == "vtw":
                keep = candidates[:0]
            else:
                if method == "random":
                    index = torch.cumsum(visual.long(), 0) - 1
                    score = random_scores(index, seed, j)
                else:
                    score = captured[j][0, :, -1, :].mean(0)  # the last token's row, mean over heads
                count = math.floor(len(candidates) * (1 - drop_ratio) + 1e-9)
                order = sorted(candidates.tolist(), key=lambda i: (-float(score[i]), i))
                if pick == "bottom":
                    order = order[::-1]
                keep = torch.tensor(order[:count], dtype=torch.long)
            dropped = visual & alive
            dropped[keep] = False
            alive &= ~dropped
    finally:
        for hook in hooks:
            hook.remove()
    return lm.norm(h)[0, -1], int(alive.sum())


def runtime_last_hidden(lm, ids, cfg):
    runtime = AIMRuntime(cfg, [VISUAL_ID])
    install_pruning(lm, runtime)
    try:
        runtime.set_visual_mask(ids)
        with torch.no_grad():
            out = lm(input_ids=ids, use_cache=True)
        return out.last_hidden_state[0, -1], runtime.stats.layer_seq_lens
    finally:
        runtime.uninstall()


CASES = [
    ("fastv", (2,), 0.5),
    ("fastv", (3,), 0.75),
    ("vtw", (4,), None),
    ("pdrop", (2, 4, 6), 0.5),
    ("pdrop", (1, 5), 0.3),
    ("random", (3,), 0.5),
]


@pytest.mark.parametrize("family", ["qwen2", "llama"])
@pytest.mark.parametrize("method,layers,ratio", CASES)
def test_policy_matches_its_masked_reference(family, method, layers, ratio):
    sdpa, eager = _small_lm(family, "sdpa"), _small_lm(family, "eager")
    ids = _prompt()
    if method == "random":
        # the random control prunes with AIM's linear schedule; l1=2, l2=4 halves at layer 3
        cfg = AIMConfig.for_method("random", retention=1.0, l1=2, l2=4, seed=3)
        drop_layers, drop_ratio = (3, 4), 0.5
        with torch.no_grad():
            ref, alive = _random_then_all(eager, ids)
    else:
        cfg = AIMConfig.for_method(method, drop_layers=layers, drop_ratio=ratio)
        drop_layers, drop_ratio = layers, ratio if ratio is not None else 1.0
        with torch.no_grad():
            ref, alive = reference_last_hidden(eager, ids, method, drop_layers, drop_ratio)
    for mode in ("remove", "mask"):
        got, seq_lens = runtime_last_hidden(sdpa, ids, cfg.replace(pruning_mode=mode))
        assert torch.allclose(got, ref, atol=2e-5, rtol=0), (mode, (got - ref).abs().max())
    expected = [TEXT_HEAD + TEXT_TAIL + v for v in policy_visual_tokens(cfg, VISUAL, 8)]
    assert seq_lens[-1] == alive  # mask mode counts every token; removal's counts:
    got, seq_lens = runtime_last_hidden(sdpa, ids, cfg)
    assert seq_lens == expected
    if method in ("fastv", "pdrop"):
        with torch.no_grad():
            wrong, _ = reference_last_hidden(eager, ids, method, drop_layers, drop_ratio, pick="bottom")
        assert not torch.allclose(wrong, ref, atol=2e-5, rtol=0), "the reference cannot tell selections apart"


def _random_then_all(eager, ids):
    """random control with l1=2, l2=4 on 8 layers: half the visual tokens (by the hash of
    layer 2) from layer 3, none from layer 4."""
    n = ids.shape[1]
    visual = ids[0] == VISUAL_ID
    index = torch.cumsum(visual.long(), 0) - 1
    score = random_scores(index, 3, 2)
    candidates = visual.nonzero().flatten().tolist()
    keep = sorted(candidates, key=lambda i: (-float(score[i]), i))[: VISUAL // 2]
    h = eager.embed_tokens(ids)
    pos = torch.arange(n)[None]
    cos, sin = eager.rotary_emb(h, pos)
    alive = torch.ones(n, dtype=torch.bool)
    causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
    for j, layer in enumerate(eager.layers):
        if j == 3:
            alive &= ~visual
            alive[keep] = True
        if j == 4:
            alive &= ~visual
        allowed = (causal & alive[None, :]) | torch.eye(n, dtype=torch.bool)
        mask = torch.zeros(1, 1, n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)
        h = layer(h, attention_mask=mask, position_embeddings=(cos, sin), position_ids=pos)
    return eager.norm(h)[0, -1], int(alive.sum())


# -- scores ----------------------------------------------------------------------------------
def _reference_last_token(q, k, valid, scaling):
    b_, nh, n, _ = q.shape
    group = nh // k.shape[1]
    out = torch.zeros(b_, n, dtype=torch.float64)
    for b in range(b_):
        idx = [i for i in range(n) if bool(valid[b, i])]
        last = idx[-1]
        for h in range(nh):
            logits = [float(q[b, h, last] @ k[b, h // group, j]) * scaling for j in idx]
            top = max(logits)
            e = [math.exp(x - top) for x in logits]
            for j, ej in zip(idx, e):
                out[b, j] += ej / sum(e) / nh
    return out


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 9), st.sampled_from([(4, 4), (4, 2), (6, 1)]))
def test_last_token_attention_matches_loops(seed, n, heads):
    nh, nkv = heads
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, nh, n, 8, generator=g, dtype=torch.float64)
    k = torch.randn(2, nkv, n, 8, generator=g, dtype=torch.float64)
    valid = torch.rand(2, n, generator=g) > 0.3
    valid[:, -1] = valid[:, -1] | (torch.rand(2, generator=g) > 0.5)
    valid[0, 0] = True  # at least one present token per row
    valid[1, n // 2] = True
    got = last_token_attention(q, k, valid, 8**-0.5)
    ref = _reference_last_token(q, k, valid, 8**-0.5)
    assert torch.allclose(got.double(), ref, atol=1e-5)
    assert torch.allclose(got.sum(-1), torch.ones(2, dtype=torch.float32), atol=1e-5)
    assert (got[~valid] == 0).all()


def test_random_scores_are_a_pure_function():
    index = torch.arange(5000)
    a, b = random_scores(index, 0, 3), random_scores(index, 0, 3)
    assert torch.equal(a, b)
    assert torch.equal(random_scores(index[100:200], 0, 3), a[100:200])  # a token's score is its own
    assert not torch.equal(random_scores(index, 1, 3), a) and not torch.equal(random_scores(index, 0, 4), a)
    counts = torch.histc(a, bins=10, min=0, max=1)
    assert ((counts > 400) & (counts < 600)).all()  # roughly uniform
    assert ((a >= 0) & (a <= 1)).all()


# -- pooling ---------------------------------------------------------------------------------
def test_pooling_is_average_pooling_on_square_grids():
    x = torch.randn(3, 196, 16)
    out = pool_frames(x, 0.25, track_sources=True)
    grid = x.reshape(3, 14, 14, 16).permute(0, 3, 1, 2)
    ref = torch.nn.functional.avg_pool2d(grid, 2).permute(0, 2, 3, 1).reshape(3, 49, 16)
    assert torch.allclose(out.tokens, ref, atol=1e-6)
    assert (out.sizes == 4).all()
    assert out.source_index.shape == (3, 196) and int(out.source_index.max()) == 48


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.floats(0.01, 1.0))
def test_pooling_partitions_every_frame(side, retention):
    t = side * side if side % 3 else side * side + 1  # also a non-square frame
    x = torch.randn(2, t, 4, dtype=torch.float64)
    out = pool_frames(x, retention, track_sources=True)
    target = merged_token_count(t, retention)  # the same count as AIM's merging (official rule)
    assert out.tokens.shape == (2, target, 4)
    assert int(out.sizes[0].sum()) == t and (out.sizes > 0).all()
    # each output is the mean of exactly the tokens whose source index points at it
    for slot in range(target):
        members = out.source_index[0] == slot
        assert torch.allclose(out.tokens[0, slot], x[0, members].mean(0))
    grid = pooled_grid(side, side, target)
    assert grid is None or grid[0] * grid[1] == target


# -- schedules -------------------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(st.integers(0, 5000), st.integers(2, 40), st.data())
def test_stepwise_schedule(v0, layers, data):
    ks = sorted(data.draw(st.sets(st.integers(1, layers + 3), min_size=1, max_size=4)))
    keeps = [data.draw(st.floats(0.0, 1.0)) for _ in ks]
    counts = stepwise_visual_tokens(v0, layers, list(zip(ks, keeps)))
    assert len(counts) == layers
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    assert counts[: min(ks[0], layers)] == [v0] * min(ks[0], layers)
    current = v0
    for k, keep in zip(ks, keeps):
        current = kept_count(current, keep)
        if k < layers:
            assert counts[k] == current


def test_paper_default_schedules():
    fastv = AIMConfig.for_method("fastv")
    assert policy_visual_tokens(fastv, 576, 32) == [576, 576] + [288] * 30  # K=2, R=50%
    vtw = AIMConfig.for_method("vtw")
    assert policy_visual_tokens(vtw, 576, 32) == [576] * 16 + [0] * 16
    assert policy_visual_tokens(vtw, 6272, 28) == [6272] * 14 + [0] * 14  # 16/32 scaled to 28
    pdrop = AIMConfig.for_method("pdrop")
    assert policy_visual_tokens(pdrop, 576, 32) == [576] * 8 + [288] * 8 + [144] * 8 + [72] * 8
    assert drop_layers_for("pdrop", None, 28) == (7, 14, 21)
    for method in ("aim", "random", "pool"):
        cfg = AIMConfig.for_method(method)
        assert policy_visual_tokens(cfg, 1568, 28) == visual_tokens_per_layer(1568, 28, 14, 22)
        assert policy_visual_tokens(cfg, 1568, 28, "paper") == visual_tokens_per_layer(1568, 28, 14, 22, "paper")
    assert scaled_layer(16, 32, 8) == 4 and scaled_layer(8, 32, 28) == 7


# -- configuration errors ---------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(method="tome"), "method must be one of"),
    (dict(method="aim", drop_layers=(2,)), "drop_layers / drop_ratio belong to"),
    (dict(method="random", drop_ratio=0.5), "drop_layers / drop_ratio belong to"),
    (dict(method="fastv"), "set l1=None, l2=None"),
    (dict(method="fastv", l1=None, l2=None, drop_layers=(2, 4)), "one layer K"),
    (dict(method="pdrop", l1=None, l2=None, drop_layers=(8, 8)), "strictly increasing"),
    (dict(method="pdrop", l1=None, l2=None, drop_layers=(0, 8)), ">= 1"),
    (dict(method="pdrop", l1=None, l2=None, drop_layers=()), "non-empty tuple"),
    (dict(method="pdrop", l1=None, l2=None, drop_ratio=1.0), r"in \(0, 1\)"),
    (dict(method="fastv", l1=None, l2=None, drop_ratio=0.0), r"in \(0, 1\]"),
    (dict(method="fastv", l1=None, l2=None, drop_ratio=True), r"in \(0, 1\]"),
    (dict(method="vtw", l1=None, l2=None, drop_ratio=0.5), "does not apply"),
    (dict(method="random", seed=-1), "seed"),
])
def test_bad_parameters_are_rejected(kwargs, match):
    with pytest.raises(AIMConfigError, match=match):
        AIMConfig(**kwargs)


def test_layers_beyond_the_model_are_rejected():
    with pytest.raises(AIMConfigError, match="beyond the language model's 8 layers"):
        AIMConfig.for_method("pdrop", drop_layers=(2, 8)).check_against_model(8)
    AIMConfig.for_method("pdrop").check_against_model(8)  # defaults scale: 2, 4, 6


def test_config_round_trip_and_defaults():
    for method in METHODS:
        cfg = AIMConfig.for_method(method)
        assert AIMConfig(**cfg.to_dict()) == cfg
        assert cfg.pruning or cfg.prumerging  # PruMerge reduces before the LLM only
        assert cfg.enabled
    assert AIMConfig().method == "aim" and AIMConfig.for_method("aim") == AIMConfig()
    assert AIMConfig.for_method("pdrop", drop_layers=[2, 4]).drop_layers == (2, 4)


# -- end to end on the tiny models ------------------------------------------------------------
def _setting(method):
    if method in STEP_METHODS:
        return AIMConfig.for_method(method)  # paper defaults scaled to 8 layers
    return AIMConfig.for_method(method, retention=0.5, l1=2, l2=6)


@pytest.mark.parametrize("method", ["fastv", "vtw", "pdrop", "random", "pool"])
@pytest.mark.parametrize("name", ["ov", "llava15"])
def test_methods_end_to_end(name, method, ov_sdpa, llava15_sdpa):
    model, processor = ov_sdpa if name == "ov" else llava15_sdpa
    build = (lambda: video_inputs(processor, [make_video(frames=2)])) if name == "ov" else (
        lambda: image_inputs(processor, [make_image()]))
    results = {}
    try:
        for mode in ("mask", "remove"):
            apply_aim(model, processor, _setting(method).replace(pruning_mode=mode))
            inputs = build()
            with torch.no_grad():
                logits = model(**inputs).logits[:, -1]
                tokens = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
            results[mode] = (logits, tokens, list(model.aim_stats.layer_seq_lens))
        ids = inputs["input_ids"][0]
        v0 = int(sum((ids == t).sum() for t in model._aim_runtime.image_token_ids))
        expected = [ids.numel() - v0 + v for v in policy_visual_tokens(model.aim_config, v0, 8)]
        assert results["remove"][2] == expected
        assert torch.allclose(results["remove"][0], results["mask"][0], atol=1e-4, rtol=0)
        assert torch.equal(results["remove"][1], results["mask"][1])
        if method == "pool":
            before = model.aim_stats.tokens_per_frame_before_merge
            assert model.aim_stats.tokens_per_frame_after_merge == before // 2
    finally:
        remove_aim(model, processor)


def test_pool_and_merge_differ_but_count_alike(ov_sdpa):
    model, processor = ov_sdpa
    out = {}
    try:
        for method in ("aim", "pool"):
            apply_aim(model, processor, AIMConfig.for_method(method, retention=0.25, l1=None, l2=None))
            inputs = video_inputs(processor, [make_video(frames=2)])
            assert int((inputs["input_ids"] == model.config.video_token_id).sum()) == 2 * 49 + 1
            with torch.no_grad():
                out[method] = model(**inputs).logits[:, -1]
    finally:
        remove_aim(model, processor)
    assert not torch.allclose(out["aim"], out["pool"])


@pytest.mark.parametrize("method", ["fastv", "random"])
def test_batch_matches_single(ov_sdpa, method):
    model, processor = ov_sdpa
    videos = [make_video(frames=1, seed=3), make_video(frames=1, seed=4)]
    questions = ["What happens?", "Which objects move from the left to the right in this short clip?"]
    try:
        apply_aim(model, processor, _setting(method))
        batch = video_inputs(processor, videos, questions)
        assert (batch["attention_mask"] == 0).any()
        with torch.no_grad():
            batch_logits = model(**batch).logits[:, -1]
            for i, video in enumerate(videos):
                single = model(**video_inputs(processor, [video], [questions[i]])).logits[0, -1]
                assert torch.allclose(single, batch_logits[i], atol=1e-4, rtol=0)
    finally:
        remove_aim(model, processor)


# -- FLOPs and the command line --------------------------------------------------------------
def test_analyzer_counts_each_policy_with_the_shared_schedule():
    base = analyze("qwen2-7b")
    for method in METHODS:
        cfg = AIMConfig.for_method(method)
        result = analyze("qwen2-7b", retention=cfg.retention, l1=cfg.l1, l2=cfg.l2, method=method)
        # PruMerge: the official ratio's count of SigLIP's 729 unpooled patches (no spatial samples)
        v0 = 32 * (92 if cfg.prumerging else 49 if cfg.retention < 1 else 196)
        if cfg.video_reducing:  # a video reduction's own nominal count (its registry entry)
            v0 = video_reduction(method).nominal(32, 196, cfg)
        assert result.visual_tokens_per_layer == policy_visual_tokens(cfg, v0, 28)
        assert result.prefill_flops < base.prefill_flops
        assert result.without_aim().prefill_flops == base.prefill_flops
    fastv = analyze("llama-7b", frames=1, tokens_per_frame=576, text_tokens=60, method="fastv")
    assert fastv.tokens_per_layer == [636] * 2 + [348] * 30
    assert fastv.aim_overhead.flops > 0 and fastv.aim_overhead.flops < 1e-3 * fastv.prefill_flops
    vtw = analyze("qwen2-7b", method="vtw")
    assert vtw.aim_overhead.flops == 0 and vtw.pruning_layers == [13]
    with pytest.raises(AIMConfigError, match="paper convention"):
        analyze("qwen2-7b", method="pdrop", convention="paper")


def test_flops_cli_accepts_every_method(capsys):
    for method in METHODS:
        assert main(["flops", "--method", method, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["method"] == method and report["flops_reduction"] > 1
    assert main(["flops", "--method", "pdrop", "--drop-layers", "4,12,20", "--drop-ratio", "0.6", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["drop_layers"] == [4, 12, 20]
    assert report["visual_tokens_per_layer"][4] == kept_count(6272, 0.4)


@pytest.mark.parametrize("argv,match", [
    (["flops", "--method", "fastv", "--l1", "3", "--l2", "5"], "prunes at --drop-layers"),
    (["flops", "--method", "aim", "--drop-layers", "3"], "apply to fastv"),
    (["flops", "--method", "vtw", "--drop-layers", "40"], "beyond the language model"),
    (["flops", "--method", "fastv", "--drop-ratio", "1.5"], "--drop-ratio"),
    (["run", "--method", "vtw", "--drop-ratio", "0.3"], "does not apply"),
    (["run", "--method", "pool", "--drop-layers", "2"], "apply to fastv"),
])
def test_cli_rejects_bad_method_options(argv, match, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err


def test_plan_matches_a_budget_for_each_baseline(capsys):
    aim = analyze("qwen2-7b", retention=0.25, l1=14, l2=22)
    budget = f"{aim.prefill_tflops:.3f}"
    for method in ("fastv", "vtw"):
        assert main(["plan", "--method", method, "--budget-tflops", budget, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["prefill_tflops"] <= aim.prefill_tflops + 1e-3
        # the next-looser knob would exceed the budget: the match is tight
        looser = (dict(drop_ratio=report["drop_ratio"] - 0.01) if method == "fastv"
                  else dict(drop_layers=(report["drop_layers"][0] + 1,)))
        wider = analyze("qwen2-7b", method=method, drop_layers=looser.get("drop_layers", report["drop_layers"]),
                        drop_ratio=looser.get("drop_ratio"))
        assert wider.prefill_tflops > aim.prefill_tflops
    # PyramidDrop's first stage alone costs more than AIM's whole prefill: said, exit 2
    assert main(["plan", "--method", "pdrop", "--budget-tflops", budget]) == 2
    assert "no pdrop setting meets" in capsys.readouterr().err


def test_lmms_eval_model_args_accept_every_method():
    from llava.errors import EvalArgumentError
    from llava.eval.args import aim_config_from_model_args

    assert aim_config_from_model_args({}, 28) == AIMConfig()
    cfg = aim_config_from_model_args({"method": "pdrop", "drop_layers": "8/16/24", "drop_ratio": 0.5}, 32)
    assert cfg.method == "pdrop" and cfg.drop_layers == (8, 16, 24) and cfg.retention == 1.0
    assert aim_config_from_model_args({"method": "fastv", "drop_layers": 3}, 28).drop_layers == (3,)
    assert aim_config_from_model_args({"method": "random", "seed": 4}, 28).seed == 4
    assert aim_config_from_model_args({"method": "pool"}, 28).l1 == "auto"
    with pytest.raises(EvalArgumentError, match="not l1/l2"):
        aim_config_from_model_args({"method": "vtw", "l1": 3, "l2": 5}, 28)
    with pytest.raises(EvalArgumentError, match="joined by '/'"):
        aim_config_from_model_args({"method": "pdrop", "drop_layers": "8;16"}, 28)
    with pytest.raises(EvalArgumentError, match="beyond the language model"):
        aim_config_from_model_args({"method": "vtw", "drop_layers": 40}, 28)


def test_benchmark_case_for_each_method():
    from llava.bench.cases import method_case
    from llava.bench.measure import run_prefill_benchmark
    from llava.bench.models import build_lm, small_qwen2_config

    cases = [method_case(m, 2, 16, 10, 4, l1=1, l2=3) for m in ("fastv", "vtw", "pdrop", "random", "pool")]
    assert cases[0].cfg.drop_layers is None and cases[0].visual_tokens == 33 and cases[3].visual_tokens == 9
    lm = build_lm(small_qwen2_config(num_layers=4))
    run_prefill_benchmark(lm, cases, repeats=1, warmup=0, measure_memory=False)
    for case in cases:
        assert case.tokens_per_layer == [10 + v for v in policy_visual_tokens(case.cfg, case.visual_tokens, 4)]
        assert case.times_s and case.kv_cache_bytes > 0


def test_pool_frames_on_a_given_grid_and_its_destinations():
    # a 4 x 6 grid pooled to 2 x 3 blocks of 2 x 2; each block's destination is its top-left
    x = torch.arange(24, dtype=torch.float64).reshape(1, 24, 1)
    out = pool_frames(x, 0.25, track_sources=True, grid=(4, 6), track_destinations=True)
    assert out.tokens.shape == (1, 6, 1)
    assert out.dest_index.tolist() == [[0, 2, 4, 12, 14, 16]]
    assert out.tokens[0, 0, 0].item() == (0 + 1 + 6 + 7) / 4
    assert torch.equal(out.source_index.gather(1, out.dest_index), torch.arange(6).expand(1, 6))
    with pytest.raises(ValueError, match="grid"):
        pool_frames(x, 0.25, grid=(5, 5))
