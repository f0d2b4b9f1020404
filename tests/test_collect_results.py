"""collect_results: each row says which checkpoint, frames and limit produced it; figures of a
limited run, another checkpoint or another frame count than the paper row's are marked and not
compared with the paper; a missing figure reads as missing, not 0. (Synthetic results files;
tests/test_eval_cli.py runs the same checks on a real tiny-model run.)"""

from __future__ import annotations

import json

import pytest
from conftest import needs_family

from llava.eval.results import _cell, _figure, collect_main, describe_limit
from llava.model.families.qwen3_vl import Qwen3VLAdapter

OV_7B = "lmms-lab/llava-onevision-qwen2-7b-ov"


def _write_run(folder, model_args, results, limit=None, throughput=None, sample_prefill_ms=()):
    folder.mkdir(parents=True, exist_ok=True)
    data = {"results": results, "config": {"model": "llava_onevision_aim", "model_args": model_args, "limit": limit}}
    if throughput is not None:
        data["throughput"] = throughput
    (folder / "20260101_000000_results.json").write_text(json.dumps(data))
    if sample_prefill_ms:
        rows = [{"doc_id": i, "token_counts": [{"prefill_ms": ms}]} for i, ms in enumerate(sample_prefill_ms)]
        (folder / "20260101_000000_samples_videomme.jsonl").write_text("\n".join(json.dumps(r) for r in rows))


def _videomme(score):
    return {"videomme": {"videomme_perception_score,none": score}}


def _paper_row(root, capsys, row, table="video"):
    assert collect_main([str(root), "--paper", "--tables", table]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith(f"| `{row}`"))
    return [c.strip() for c in line.strip("|").split("|")], out


# columns of the video table: Row, Setting, Run, TFLOPs, Prefill ms, VideoMME wo-subs, ..., measured prefill
RUN, TFLOPS, PREFILL, VIDEOMME, MEASURED = 2, 3, 4, 5, -1


def test_the_paper_rows_own_setting_is_compared_unmarked(tmp_path, capsys):
    _write_run(tmp_path / "video" / "aim" / "m", f"pretrained={OV_7B},max_frames_num=32,aim=1,retention=0.25",
               _videomme(50.0), sample_prefill_ms=(40.0,))
    cells, out = _paper_row(tmp_path, capsys, "video/aim")
    assert cells[RUN] == f"{OV_7B}, 32 frames, no limit"
    assert cells[VIDEOMME] == "58.2 / 50.0 (-8.2)"
    assert cells[TFLOPS].startswith("14.76 / 14.7") and "(" in cells[TFLOPS]
    assert cells[MEASURED] == "40.0"
    assert "a limited run" not in out and "another checkpoint than" not in out


def test_a_limited_run_marks_its_measured_figures_and_prints_no_difference(tmp_path, capsys):
    _write_run(tmp_path / "video" / "aim" / "m", f"pretrained={OV_7B},max_frames_num=32,aim=1,retention=0.25",
               _videomme(50.0), limit=5.0, sample_prefill_ms=(40.0,))
    cells, out = _paper_row(tmp_path, capsys, "video/aim")
    assert cells[RUN] == f"{OV_7B}, 32 frames, limit 5 per task"
    assert cells[VIDEOMME] == "58.2 / 50.0*" and cells[MEASURED] == "40.0*"
    # the predicted figures depend on the setting only, which is the paper row's: still compared
    assert "(" in cells[TFLOPS] and "*" not in cells[TFLOPS]
    assert "- `*` a limited run (--limit 5 per task" in out


def test_another_checkpoint_and_frame_count_mark_every_figure_and_a_tiny_figure_is_not_zero(tmp_path, capsys):
    _write_run(tmp_path / "video" / "aim" / "m",
               "pretrained=tiny-llava-onevision,max_frames_num=4,aim=1,retention=0.25", _videomme(50.0), limit=2.0,
               sample_prefill_ms=(30.0,))
    cells, out = _paper_row(tmp_path, capsys, "video/aim")
    assert cells[RUN] == "tiny-llava-onevision, 4 frames, limit 2 per task"
    assert cells[VIDEOMME] == "58.2 / 50.0*‡§"
    paper, ours = cells[TFLOPS].split(" / ")
    assert paper == "14.76" and ours.endswith("‡§") and "(" not in ours
    assert 0 < float(ours.rstrip("‡§")) < 0.01  # the tiny model's own TFLOPs, not "0.00"
    assert "(" not in cells[PREFILL] and cells[PREFILL].endswith("‡§") and cells[MEASURED] == "30.0*‡§"
    assert "- `‡` run on another checkpoint than the paper's llava-hf/llava-onevision-qwen2-7b-ov-hf" in out
    assert "- `§` run on another frame count than the paper row's (32" in out


def test_frames_are_compared_with_the_rows_own_frame_count(tmp_path, capsys):
    # long/aim-192 is a 192-frame row of a 32-frame table: its 192-frame run is unmarked
    _write_run(tmp_path / "long" / "aim-192" / "m", f"pretrained={OV_7B},max_frames_num=192,aim=1,retention=0.25",
               _videomme(59.0))
    cells, _ = _paper_row(tmp_path, capsys, "long/aim-192", table="long")
    assert cells[VIDEOMME] == "59.2 / 59.0 (-0.2)" and "§" not in " ".join(cells)
    _write_run(tmp_path / "long" / "aim-192" / "m", f"pretrained={OV_7B},max_frames_num=32,aim=1,retention=0.25",
               _videomme(59.0))
    cells, _ = _paper_row(tmp_path, capsys, "long/aim-192", table="long")
    assert cells[VIDEOMME] == "59.2 / 59.0§"


def test_plain_table_names_checkpoint_frames_and_limit(tmp_path, capsys):
    _write_run(tmp_path / "a", f"pretrained={OV_7B},max_frames_num=32,aim=1", _videomme(58.4), limit=0.1)
    _write_run(tmp_path / "b", f"pretrained={OV_7B},max_frames_num=16,aim=0", _videomme(57.0))
    assert collect_main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| Checkpoint"))
    assert header.startswith("| Checkpoint | Frames | Limit | AIM")
    rows = [line for line in out.splitlines() if line.startswith(f"| {OV_7B}")]
    assert rows[0].startswith(f"| {OV_7B} * | 32 | 10% per task |")
    assert rows[1].startswith(f"| {OV_7B} | 16 | all |")
    assert "- `*` a limited run" in out


def test_a_missing_prefill_time_shows_as_missing_not_zero(tmp_path, capsys):
    """A throughput record or sample with prefill 0 ms means not measured."""
    _write_run(tmp_path / "video" / "aim" / "m", f"pretrained={OV_7B},max_frames_num=32,aim=1",
               _videomme(50.0), throughput={"avg_prefill_ms": 0.0}, sample_prefill_ms=(0.0, 0.0))
    assert collect_main([str(tmp_path / "video")]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {OV_7B}"))
    assert row.split("|")[6].strip() == "n/a"
    cells, _ = _paper_row(tmp_path, capsys, "video/aim")
    assert cells[MEASURED] == "–"


@pytest.mark.parametrize("value,digits,text", [(None, 2, "–"), (float("nan"), 2, "–"), (0.000278, 2, "0.00028"),
                                               (14.764, 2, "14.76"), (0.0, 1, "0.0"), (0.004, 1, "0.004")])
def test_figure_keeps_a_small_value_visible(value, digits, text):
    assert _figure(value, digits) == text


def test_cell_compares_only_when_asked():
    assert _cell(58.2, 50.0) == "58.2 / 50.0 (-8.2)"
    assert _cell(58.2, 50.0, mark="*", compare=False) == "58.2 / 50.0*"
    assert _cell(58.2, None, mark="*", compare=False) == "58.2 / –"
    assert _cell(None, 50.0) == "– / 50.0"


@pytest.mark.parametrize("limit,text", [(None, "all"), (0, "all"), (3.0, "3 per task"), (0.25, "25% per task")])
def test_describe_limit(limit, text):
    assert describe_limit(limit) == text


def test_image_rows_predict_the_prefill_ms_as_the_image_table_counts_it(tmp_path, capsys):
    """The image table counts the second residual add (tables.json include_mlp_add): the LLaVA-1.5
    baseline's predicted prefill is the paper's 29.30 ms, not the 29.09 of the plain count."""
    folder = tmp_path / "image" / "baseline" / "m"
    folder.mkdir(parents=True)
    data = {"results": {"gqa": {"exact_match,none": 0.5}},
            "config": {"model": "llava_aim", "model_args": "pretrained=liuhaotian/llava-v1.5-7b,aim=0", "limit": None}}
    (folder / "20260101_000000_results.json").write_text(json.dumps(data))
    cells, _ = _paper_row(tmp_path, capsys, "image/baseline", table="image")
    assert cells[TFLOPS].startswith("8.18 / 8.18")
    assert cells[PREFILL].startswith("29.3 / 29.30") or cells[PREFILL].startswith("29.30 / 29.30"), cells[PREFILL]


@needs_family(Qwen3VLAdapter())
def test_flops_column_follows_the_family_adapter_for_every_reference_checkpoint():
    """The FLOPs column reads the analyzer's shape of any reference checkpoint an adapter declares
    (not a table of four paper checkpoints) and the visual tokens from the family's adapter: a
    Qwen3-VL run gets a figure, equal to the analyzer's at the adapter's token count."""
    from llava.analysis.roofline import analyze
    from llava.eval.results import Run, TEXT_TOKENS, prefill_tflops, run_setting, visual_geometry
    from llava.model.families import family_for_model_type

    run = Run("qwen3_vl_aim", "pretrained=Qwen/Qwen3-VL-8B-Instruct,max_pixels=200704,aim=0")
    setting = run_setting(run)
    family = family_for_model_type("qwen3_vl")
    tokens = family.visual_tokens(family.reference_config("Qwen/Qwen3-VL-8B-Instruct"), 32, max_pixels=200704)
    assert setting["llm"] is not None and visual_geometry(setting, True) == (tokens.units, tokens.tokens_per_unit)
    expected = analyze(setting["llm"], frames=tokens.units, tokens_per_frame=tokens.tokens_per_unit,
                       text_tokens=TEXT_TOKENS).prefill_tflops
    assert prefill_tflops(setting, True) == pytest.approx(expected)
    # an image whose tokens follow its size (any-resolution tiling) has no count: no figure, not a guess
    image = run_setting(Run("llava_onevision_aim", f"pretrained={OV_7B}"))
    assert visual_geometry(image, False) is None and prefill_tflops(image, False) is None
    # a fixed-size family's image: one unit of the adapter's tokens (576 for LLaVA-1.5)
    assert visual_geometry(run_setting(Run("llava_aim", "pretrained=liuhaotian/llava-v1.5-7b")), False) == (1, 576)
