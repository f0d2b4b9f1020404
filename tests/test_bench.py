"""``llava-aim bench`` end to end (tiny sizes) and the analyzer against what the runtime ran."""

from __future__ import annotations

import json

import pytest
import torch

from llava.aim.config import AIMConfig
from llava.analysis import analyze
from llava.bench.cases import default_cases
from llava.bench.memory import PeakMemory
from llava.bench.models import small_decoder_config
from llava.bench.predict import predict
from llava.cli import main
from conftest import make_video, video_inputs


@pytest.mark.parametrize("retention,l1,l2", [(0.25, 4, 6), (0.5, 2, 7), (1.0, 0, 3), (0.125, 5, 40)])
def test_analyzer_tokens_per_layer_equal_what_the_tiny_model_ran(ov_sdpa, retention, l1, l2):
    from llava.model.runtime import apply_aim, remove_aim

    model, processor = ov_sdpa
    frames = 3
    apply_aim(model, processor, AIMConfig(retention=retention, l1=l1, l2=l2))
    try:
        inputs = video_inputs(processor, [make_video(frames)], ["What moves?"])
        with torch.inference_mode():
            model(**inputs)
        ran = model.aim_stats.layer_seq_lens
    finally:
        remove_aim(model, processor)
    visual = int((inputs["input_ids"] == model.config.video_token_index).sum())
    text = int(inputs["input_ids"].shape[1]) - visual
    predicted = analyze(model.config, frames=frames, tokens_per_frame=196, text_tokens=text, newline_tokens=1,
                        retention=retention, l1=l1, l2=l2)
    assert predicted.tokens_per_layer == ran


def test_bench_json_small(capsys):
    code = main(["bench", "--frames", "2", "--repeats", "1", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    r = json.loads(out)
    names = [c["name"] for c in r["language_model_prefill"]]
    assert names == ["baseline", "official", "mask", "merge-only", "aim"]
    assert [c["name"] for c in r["end_to_end_prefill"]] == names
    assert r["measured_speedup"] > 0 and r["predicted_speedup"] > 1
    assert r["measured_over_predicted"] == pytest.approx(r["measured_speedup"] / r["predicted_speedup"])
    cases = {c["name"]: c for c in r["language_model_prefill"]}
    # the analyzer predicts for exactly the token counts that were run
    for name in ("baseline", "merge-only", "aim"):
        assert r["predicted"][name]["tokens_per_layer"] == cases[name]["tokens_per_layer"]
    assert cases["aim"]["kv_cache_bytes"] < cases["merge-only"]["kv_cache_bytes"] < cases["baseline"]["kv_cache_bytes"]
    assert cases["mask"]["kv_cache_bytes"] == cases["merge-only"]["kv_cache_bytes"]
    # the official configuration: the same masked setting, under eager attention, in this run
    assert cases["official"]["attn"] == "eager" and cases["mask"]["attn"] == cases["aim"]["attn"] == "sdpa"
    assert cases["official"]["aim"] == cases["mask"]["aim"]
    assert cases["official"]["kv_cache_bytes"] == cases["mask"]["kv_cache_bytes"]
    assert r["speedup_vs_official"] == pytest.approx(cases["official"]["median_ms"] / cases["aim"]["median_ms"])
    # decoding on each case's KV cache, timed after its prefill (LM only)
    assert all(c["decode_tokens_per_s"] > 0 for c in cases.values())
    assert r["decode_speedup"] == pytest.approx(cases["aim"]["decode_tokens_per_s"] / cases["baseline"]["decode_tokens_per_s"])
    assert r["end_to_end_speedup_vs_official"] > 0
    e2e = {c["name"]: c for c in r["end_to_end_prefill"]}
    assert e2e["aim"]["sum_tokens"] < e2e["merge-only"]["sum_tokens"] < e2e["baseline"]["sum_tokens"]
    assert e2e["baseline"]["llm_input_tokens"] - e2e["aim"]["llm_input_tokens"] == 2 * (196 - 49)
    assert r["overhead"]["importance_ms"] > 0 and r["overhead"]["merging_ms"] > 0
    assert set(r["goals"]) == {"speedup_ratio_min", "speedup_ratio_met", "overhead_max", "overhead_met"}
    assert r["versions"]["torch"] == torch.__version__


def test_bench_human_table(capsys):
    assert main(["bench", "--frames", "1", "--repeats", "1", "--lm-only"]) == 0
    out = capsys.readouterr().out
    assert "AIM default (removal)" in out and "measured/predicted" in out and "end to end" not in out
    assert "official code (mask, eager)" in out and "vs the official code (mask, eager), same run" in out
    assert "decode tok/s" in out and "decode after the prefill (median tokens/s): AIM" in out


@pytest.mark.parametrize("argv", [
    ["bench", "--repeats", "0"],
    ["bench", "--l1", "2"],
    ["bench", "--retention", "1.5"],
    ["bench", "--l1", "3", "--l2", "2"],
    ["bench", "--l1", "9", "--l2", "12"],  # beyond the 8-layer CPU model
    ["bench", "--frames", "0"],
    ["bench", "--device", "tpu"],
    ["bench", "--layerwise", "--method", "fastv"],
    ["bench", "--layerwise", "--model", "small", "--l1", "9", "--l2", "12"],
] + ([["bench", "--device", "cuda"]] if not torch.cuda.is_available() else []))
def test_bench_bad_input_exit_2_one_line(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1


def test_predict_uses_the_measured_shapes():
    cfg = small_decoder_config()
    cases = default_cases(4, 196, 100, 8)
    for c in cases:
        c.tokens_per_layer = []
    from llava.analysis.hardware import Hardware

    p = predict(cfg, cases, 4, 196, Hardware("x", 1e12, 1e11), 4, True)
    assert p["baseline"]["tokens_per_layer"] == [4 * 196 + 1 + 100] * 8
    assert p["mask"]["tokens_per_layer"] == [4 * 49 + 1 + 100] * 8  # masked tokens are computed
    assert p["official"]["tokens_per_layer"] == p["mask"]["tokens_per_layer"]
    assert p["official"]["prefill_ms"] > p["mask"]["prefill_ms"]  # eager: scores go through memory
    assert p["aim"]["speedup"] > p["merge-only"]["speedup"] > 1


def test_peak_memory_sees_a_large_allocation():
    with PeakMemory(torch.device("cpu")) as m:
        x = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, touched
        del x
    if m.peak is not None:  # Linux /proc available
        assert m.peak >= 48 << 20


def test_layerwise_parts_add_up(capsys):
    """--layerwise: one layer timed per distinct token count of the schedule, importance at the
    scoring layers only, and the totals are the sums of the parts."""
    code = main(["bench", "--layerwise", "--model", "small", "--frames", "4", "--repeats", "1", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    r = json.loads(out)
    lw = r["layerwise"]
    visual = 4 * 49 + 1
    # (4, 6) on 8 layers: full up to layer 4, half entering 5, none from 6
    assert lw["tokens_per_layer"] == [100 + visual] * 5 + [100 + visual // 2] + [100] * 2
    assert lw["scoring_layers"] == [4]
    assert sorted(map(int, lw["layer_ms"]), reverse=True) == [100 + visual, 100 + visual // 2, 100]
    assert list(lw["importance_ms"]) == ["4"] and lw["importance_ms"]["4"] > 0 and lw["merging_ms"] > 0
    layers = sum(lw["layer_ms"][str(n)] for n in lw["tokens_per_layer"])
    assert lw["layers_ms"] == pytest.approx(layers)
    assert lw["aim_prefill_ms"] == pytest.approx(layers + lw["importance_ms"]["4"])
    assert lw["overhead_ms"] == pytest.approx(lw["importance_ms"]["4"] + lw["merging_ms"])
    assert lw["fraction"] == pytest.approx(lw["overhead_ms"] / (lw["aim_prefill_ms"] + lw["merging_ms"]))
    assert r["goals"]["overhead_met"] == (lw["fraction"] < r["goals"]["overhead_max"])
    assert r["language_model"]["hidden"] == 256


def test_layerwise_human_report(capsys):
    assert main(["bench", "--layerwise", "--model", "small", "--frames", "2", "--repeats", "1",
                 "--retention", "1", "--l1", "7", "--l2", "9"]) == 0
    out = capsys.readouterr().out
    assert "scoring layers: none" in out and "of the AIM prefill" in out and "merging: 0.0 ms" in out


# -- memory: estimated before anything is built (issue 12: an OOM kill after 57 s) -------------
def test_decoder_params_equal_the_built_model():
    from transformers import AutoModel

    from llava.bench.memory import decoder_params
    from llava.bench.models import reference_decoder_config

    for cfg in (small_decoder_config(), reference_decoder_config()):
        with torch.device("meta"):
            model = AutoModel.from_config(cfg)
        assert decoder_params(cfg) == sum(p.numel() for p in model.parameters())


def test_prefill_estimate_covers_the_measured_peak():
    from llava.bench.measure import prompt_ids
    from llava.bench.memory import PrefillShape, prefill_bytes
    from llava.bench.models import build_lm

    cfg = small_decoder_config()
    lm = build_lm(cfg)
    ids = prompt_ids(16 * 196 + 1, 100, "cpu")
    with torch.inference_mode():
        lm(input_ids=ids, use_cache=True)  # warm-up: the allocator's first growth is not the prefill's
        with PeakMemory(torch.device("cpu")) as m:
            out = lm(input_ids=ids, use_cache=True)
    del out
    if m.peak is None:
        pytest.skip("no /proc here")
    estimate = prefill_bytes(cfg, PrefillShape(ids.shape[1]), 4)
    assert 0.8 * m.peak <= estimate <= 3 * m.peak


def _no_model_built(monkeypatch):
    import llava.bench.cli as bench_cli

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built although the run cannot fit")

    monkeypatch.setattr(bench_cli, "build_lm", refuse)
    monkeypatch.setattr(bench_cli, "build_model", refuse)
    return bench_cli


@pytest.mark.parametrize("argv,available_gib", [
    (["bench", "--model", "onevision-7b"], 20),  # float32 on CPU: ~30 GB of weights alone
    (["bench", "--model", "onevision-7b", "--lm-only"], 20),
    (["bench", "--frames", "100000"], 64),  # the small model, 19.6 M tokens
    (["bench", "--frames", "100000", "--lm-only", "--json"], 64),
    (["bench", "--layerwise", "--frames", "100000"], 64),
])
def test_bench_that_cannot_fit_exits_2_before_building(monkeypatch, capsys, argv, available_gib):
    bench_cli = _no_model_built(monkeypatch)
    monkeypatch.setattr(bench_cli, "available_bytes", lambda device: available_gib << 30)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.strip().splitlines()
    assert "needs about" in line and f"{available_gib:.1f} GiB is available" in line and "--frames" in line


def test_bench_memory_estimate_lets_the_default_run_through():
    import argparse

    from llava.bench.cli import estimate_bench_memory
    from llava.bench.models import bench_vision_dims, default_family, reference_decoder_config

    args = argparse.Namespace(frames=32, tokens_per_frame=196, text_tokens=100, retention=0.25, attn="sdpa",
                              lm_only=False)
    small = estimate_bench_memory(args, small_decoder_config(), bench_vision_dims(default_family(), False), 4)
    assert max(small.values()) < 3 << 30  # the CPU default fits a laptop
    big = estimate_bench_memory(args, reference_decoder_config(), bench_vision_dims(default_family(), True), 2)
    assert 15 << 30 < max(big.values()) < 40 << 30  # bf16 7B: weights ~16 GB, fits an 80 GB GPU


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 200_000), extra=st.integers(1, 50_000))
def test_prefill_estimate_grows_with_tokens_and_eager_costs_more(n, extra):
    from llava.bench.memory import PrefillShape, prefill_bytes
    from llava.bench.models import reference_decoder_config

    for cfg in (small_decoder_config(), reference_decoder_config()):
        assert prefill_bytes(cfg, PrefillShape(n + extra), 2) > prefill_bytes(cfg, PrefillShape(n), 2)
        assert (prefill_bytes(cfg, PrefillShape(n, eager=True), 2)
                > prefill_bytes(cfg, PrefillShape(n, explicit_mask=True), 2)
                >= prefill_bytes(cfg, PrefillShape(n), 2))


# -- load: a busy machine's timings are reported as not usable, not judged -------------------
def _busy_machine(monkeypatch, load: float = 8.0, cores: int = 2):
    import time

    from llava.bench import cli as bench_cli
    from llava.bench import load as bench_load

    monkeypatch.setattr(bench_load, "usable_cores", lambda: cores)
    monkeypatch.setattr(bench_cli, "usable_cores", lambda: cores)
    monkeypatch.setattr(bench_cli, "sample",
                        lambda: bench_load.LoadSample(load, time.process_time(), time.perf_counter()))


def test_load_assessment_subtracts_the_runs_own_share():
    from llava.bench.load import LoadSample, assess

    before = LoadSample(0.2, cpu_s=10.0, wall_s=100.0)
    own_work = LoadSample(2.1, cpu_s=30.0, wall_s=110.0)  # the run kept 2 cores busy: load 2.1 is its own
    idle = assess(before, own_work, threads=2, cores=2)
    assert idle["own_cores"] == pytest.approx(2.0) and idle["other_cores"] == pytest.approx(0.2)
    assert idle["busy"] is False
    contended = assess(before, LoadSample(6.0, cpu_s=15.0, wall_s=110.0), threads=2, cores=2)
    assert contended["other_cores"] == pytest.approx(5.5) and contended["busy"] is True
    busy_before = assess(LoadSample(5.0, 0.0, 0.0), LoadSample(5.0, 1.0, 1.0), threads=2, cores=2)
    assert busy_before["busy"] is True
    # 4 of 16 cores used by the run: other work on 10 of the other 12 leaves it alone
    assert assess(LoadSample(10.0, 0, 0), LoadSample(10.0, 0, 1), threads=4, cores=16)["busy"] is False
    assert assess(LoadSample(None, 0, 0), LoadSample(None, 0, 1), threads=1)["busy"] is None


def test_load_sample_reads_this_machine():
    import os

    from llava.bench.load import sample, usable_cores

    s = sample()
    assert s.cpu_s > 0 and 1 <= usable_cores() <= (os.cpu_count() or 1)
    if hasattr(os, "getloadavg"):
        assert s.loadavg is not None and s.loadavg >= 0


def test_bench_on_a_busy_machine_says_the_figures_are_not_usable(monkeypatch, capsys):
    _busy_machine(monkeypatch)
    assert main(["bench", "--frames", "1", "--repeats", "1", "--lm-only"]) == 0
    out, err = capsys.readouterr()
    assert "the machine is busy" in err  # before the long part
    assert "NOT USABLE" in out and "not judged: machine busy" in out
    assert "NOT met" not in out and ": met" not in out


def test_layerwise_on_a_busy_machine_is_not_judged(monkeypatch, capsys):
    _busy_machine(monkeypatch)
    assert main(["bench", "--layerwise", "--model", "small", "--frames", "2", "--repeats", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["load"]["busy"] is True and r["load"]["other_cores"] == pytest.approx(8.0, abs=2.1)
    assert r["goals"]["overhead_met"] is None
    from llava.bench.report import format_layerwise

    text = format_layerwise(r)
    assert "NOT USABLE" in text and "NOT met" not in text
