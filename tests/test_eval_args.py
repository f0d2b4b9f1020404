"""lmms-eval plugin, fast parts: model_args, the entry point, the shipped task, result tables."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
import sys
from importlib.metadata import entry_points

import numpy as np
import pytest

from llava.aim.config import AIMConfig
from llava.errors import EvalArgumentError, ResultsFileError
from llava.eval import synthetic
from llava.eval.args import aim_config_from_model_args, loader_args, split_model_args

pytest.importorskip("lmms_eval")


# -- model_args --------------------------------------------------------------------------------
def test_unknown_model_arg_is_named():
    with pytest.raises(EvalArgumentError, match="retension"):
        split_model_args({"pretrained": "x", "retension": 0.5})


def test_method_default_and_unknown():
    assert aim_config_from_model_args({"method": "aim"}, 28) == aim_config_from_model_args({}, 28)
    with pytest.raises(EvalArgumentError, match="method must be one of"):
        aim_config_from_model_args({"method": "nonsense"}, 28)


@pytest.mark.parametrize("layers, official, expected", [(28, None, (14, 22)), (32, (13, 21), (13, 21)),
                                                        (32, None, (16, 25)), (8, None, (4, 6))])
def test_default_schedule_is_auto_resolved_per_family(layers, official, expected):
    cfg = aim_config_from_model_args({}, layers)
    assert (cfg.l1, cfg.l2) == ("auto", "auto") and cfg.retention == 0.25
    resolved = cfg.resolve_layers(layers, official)
    assert (resolved.l1, resolved.l2) == expected


def test_aim_values_as_lmms_eval_types_them():
    # lmms-eval auto-types "1" -> 1, "0.5" -> 0.5, "none" stays a string
    cfg = aim_config_from_model_args({"aim": 1, "retention": 0.5, "l1": "none", "l2": "none",
                                      "importance": "attention", "merge_order": "spatial",
                                      "merge_weighting": "size"}, 28)
    assert cfg == AIMConfig(retention=0.5, l1=None, l2=None, importance="attention",
                            merge_order="spatial", merge_weighting="size")
    assert aim_config_from_model_args({"aim": "false"}, 28) == AIMConfig.disabled()
    assert aim_config_from_model_args({"aim": 0}, 28) == AIMConfig.disabled()


@pytest.mark.parametrize("raw, message", [
    ({"aim": 0, "retention": 0.5}, "cannot be combined"),
    ({"l1": 3}, "both l1 and l2"),
    ({"retention": 2}, "retention"),
    ({"l1": 30, "l2": 31}, "beyond the language model"),
    ({"l1": 5, "l2": 4}, "l1 < l2"),
    ({"aim": "maybe"}, "aim must be"),
    ({"pagerank_iters": 0}, "pagerank_iters"),
])
def test_bad_aim_values(raw, message):
    with pytest.raises(EvalArgumentError, match=message):
        aim_config_from_model_args(raw, 28)


def test_loader_args_defaults_and_errors():
    args = loader_args({"batch_size": "1", "device": "cpu"}, "tiny-llava-onevision")
    assert args.pretrained == "tiny-llava-onevision" and args.max_frames_num == 32 and args.device_map is None
    for raw, message in [({"batch_size": 0}, "batch_size must be an integer >= 1"), ({"batch_size": "auto"}, "batch_size"),
                         ({"torch_dtype": "fp8"}, "torch_dtype"), ({"max_frames_num": 0}, "max_frames_num"),
                         ({"video_decode_backend": "cv2"}, "video_decode")]:
        with pytest.raises(EvalArgumentError, match=message):
            loader_args(raw, "x")


def test_frame_sampling_model_arg():
    """The plugin samples frames as lmms-eval's LLaVA-OneVision did for the paper by default."""
    assert loader_args({}, "x").frame_sampling == "official"
    assert loader_args({"frame_sampling": "uniform"}, "x").frame_sampling == "uniform"
    with pytest.raises(EvalArgumentError, match="frame_sampling"):
        loader_args({"frame_sampling": "linspace"}, "x")


def test_fidelity_aim_model_args():
    cfg = aim_config_from_model_args({"merge_count": "exact", "merge_metric": "tokens", "tie_break": "log_attention"}, 28)
    assert (cfg.merge_count, cfg.merge_metric, cfg.tie_break) == ("exact", "tokens", "log_attention")
    with pytest.raises(EvalArgumentError, match="merge_count"):
        aim_config_from_model_args({"merge_count": "floor"}, 28)


# -- entry point ---------------------------------------------------------------------------------
def test_entry_point_registers_both_models():
    eps = {ep.name: ep.value for ep in entry_points(group="lmms_eval.models")}
    assert eps.get("llava_aim") == "llava.eval.registry:model_manifests"
    from lmms_eval.models import MODEL_REGISTRY_V2

    for name, cls in (("llava_onevision_aim", "LlavaOneVisionAIM"), ("llava_aim", "LlavaAIM")):
        assert MODEL_REGISTRY_V2.resolve(name).class_path == f"llava.eval.lmms_model.{cls}"


def test_entry_point_module_is_import_light():
    code = ("import sys, llava.eval.registry as r; r.model_manifests(); "
            "heavy = [m for m in ('transformers', 'lmms_eval.api.model', 'llava.eval.lmms_model') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- the shipped task ----------------------------------------------------------------------------
def test_shipped_questions_match_generator():
    shipped = json.loads(synthetic.QUESTIONS_FILE.read_text())
    assert shipped == synthetic.build_questions()
    assert {d["answer"] for d in shipped} == set("ABCD")  # the right letter varies


def test_clips_written_once_and_decodable(tmp_path):
    from llava.video import load_video

    path = synthetic.ensure_video("clip00.mp4", tmp_path)  # red, left to right
    mtime = path.stat().st_mtime_ns
    assert synthetic.ensure_video("clip00.mp4", tmp_path).stat().st_mtime_ns == mtime
    frames = load_video(path, 4)
    assert frames.shape == (4, synthetic.SIZE, synthetic.SIZE, 3)
    red = (frames[..., 0].astype(int) > 180) & (frames[..., 1] < 100)
    xs = [np.nonzero(red[f].any(axis=0))[0].mean() for f in range(4)]
    assert xs == sorted(xs) and xs[-1] - xs[0] > 40  # the square moves left to right
    assert [p.name for p in tmp_path.iterdir()] == ["clip00.mp4"]  # no temporary files left
    with pytest.raises(ValueError, match="not a clip"):
        synthetic.ensure_video("other.mp4", tmp_path)


# -- results files and tables ----------------------------------------------------------------------
def _results_file(path, model, model_args, results, limit=None):
    path.write_text(json.dumps({"results": results, "config": {"model": model, "model_args": model_args, "limit": limit}}))
    return path


def test_collect_table_paper_layout_with_flops(tmp_path, capsys):
    from llava.analysis.roofline import analyze
    from llava.eval.results import collect_main

    _results_file(tmp_path / "a_results.json", "llava_onevision_aim",
                  "pretrained=lmms-lab/llava-onevision-qwen2-7b-ov,max_frames_num=32,aim=1,retention=0.25",
                  {"videomme": {"videomme_perception_score,none": 58.4}, "mvbench": {"mvbench_accuracy,none": 55.5}})
    _results_file(tmp_path / "b_results.json", "llava_onevision_aim",
                  "pretrained=lmms-lab/llava-onevision-qwen2-7b-ov,max_frames_num=32,aim=0",
                  {"nextqa_mc_test": {"exact_match,none": 0.7912}})
    assert collect_main([str(tmp_path)]) == 0
    table = capsys.readouterr().out
    header = next(line for line in table.splitlines() if line.startswith("| Checkpoint"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns.index("VideoMME") < columns.index("MLVU") < columns.index("NExT-QA") < columns.index("MVBench")
    rows = {line.split("|")[4].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in table.splitlines() if line.startswith("| lmms-lab")}
    aim_row, off_row = rows["0.25, 14-22"], rows["off"]
    with_aim = analyze("qwen2-7b", frames=32, retention=0.25, l1=14, l2=22).prefill_tflops
    without = analyze("qwen2-7b", frames=32).prefill_tflops
    tflops = columns.index("TFLOPs")
    assert aim_row[tflops] == f"{with_aim:.3g}" and off_row[tflops] == f"{without:.3g}"
    assert aim_row[columns.index("VideoMME")] == "58.4" and aim_row[columns.index("MVBench")] == "55.5"
    assert off_row[columns.index("NExT-QA")] == "79.1" and off_row[columns.index("VideoMME")] == "–"


def test_collect_rejects_non_results_file(tmp_path, capsys):
    from llava.eval.results import collect_main

    bad = tmp_path / "x_results.json"
    bad.write_text("[1, 2]")
    assert collect_main([str(bad), "--out", str(tmp_path / "t.md")]) == 2
    assert "not an lmms-eval results file" in capsys.readouterr().err
    assert not (tmp_path / "t.md").exists()


def test_collect_prefill_median_from_the_samples_logs(tmp_path, capsys):
    from llava.eval.results import collect_main

    _results_file(tmp_path / "20260101_000000_results.json", "llava_onevision_aim",
                  "pretrained=lmms-lab/llava-onevision-qwen2-7b-ov,aim=1", {"videomme": {"videomme_perception_score,none": 58.4}})
    rows = [{"doc_id": i, "token_counts": [{"prefill_ms": ms}]} for i, ms in enumerate((30.0, 10.0, 20.0, 500.0))]
    (tmp_path / "20260101_000000_samples_videomme.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert collect_main([str(tmp_path)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| lmms-lab"))
    assert line.split("|")[6].strip() == "25.0"  # median of 10, 20, 30, 500


def _results_for_out(tmp_path):
    return str(_results_file(tmp_path / "a_results.json", "llava_onevision_aim", "aim=0",
                             {"videomme": {"videomme_perception_score,none": 58.4}}))


@pytest.mark.parametrize("paper", [False, True])
def test_collect_out_to_a_directory_exit_2_one_line_nothing_written(tmp_path, capsys, paper):
    from llava.eval.results import collect_main

    target = tmp_path / "tables"
    target.mkdir()
    argv = ([str(tmp_path), "--paper"] if paper else [_results_for_out(tmp_path)]) + ["--out", str(target)]
    assert collect_main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "is a directory" in err
    assert list(target.iterdir()) == []


def test_collect_out_to_a_read_only_place_exit_2_one_line(tmp_path, capsys):
    from llava.eval.results import collect_main

    # /proc takes no new files, even for root (chmod does not stop root)
    assert collect_main([_results_for_out(tmp_path), "--out", "/proc/llava-aim-table.md"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "/proc/llava-aim-table.md" in err
    assert "Traceback" not in err


def test_collect_out_into_a_folder_without_write_permission(tmp_path, capsys):
    import os

    from llava.eval.results import collect_main

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert collect_main([_results_for_out(tmp_path), "--out", str(locked / "t.md")]) == 2
        err = capsys.readouterr().err
        assert "cannot write into" in err and len(err.strip().splitlines()) == 1
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_collect_out_through_the_script_exit_2_no_traceback(tmp_path):
    target = tmp_path / "dir"
    target.mkdir()
    script = str(Path(__file__).resolve().parents[1] / "scripts" / "collect_results.py")
    done = subprocess.run([sys.executable, script, _results_for_out(tmp_path), "--out",
                           str(target)], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_check_run_needs_a_new_file_with_every_task(tmp_path):
    from llava.eval.results import check_run

    with pytest.raises(ResultsFileError, match="wrote no results"):
        check_run(tmp_path, None, ["t1"])
    (tmp_path / "model").mkdir()
    f = _results_file(tmp_path / "model" / "r_results.json", "llava_aim", "", {"t1": {"acc,none": 1.0}})
    assert check_run(tmp_path, None, ["t1"]) == f
    with pytest.raises(ResultsFileError, match="t2"):
        check_run(tmp_path, None, ["t1", "t2"])


# -- the paper's checkpoint names ---------------------------------------------------------------------
def test_plugin_defaults_are_the_papers_checkpoints_loaded_as_llava_hf(caplog):
    from llava.eval.args import DEFAULT_CHECKPOINTS
    from llava.model.builder import resolve_checkpoint

    expected = {"llava_onevision_aim": "llava-hf/llava-onevision-qwen2-7b-ov-hf", "llava_aim": "llava-hf/llava-1.5-7b-hf",
                # the Qwen-VL checkpoints are in transformers format already: loaded as named, no alias
                "qwen2_vl_aim": "Qwen/Qwen2-VL-7B-Instruct", "qwen2_5_vl_aim": "Qwen/Qwen2.5-VL-7B-Instruct"}
    with caplog.at_level("WARNING", logger="llava.model.builder"):
        for plugin, name in DEFAULT_CHECKPOINTS.items():
            assert resolve_checkpoint(name) == expected[plugin]
    aliased = [name for plugin, name in DEFAULT_CHECKPOINTS.items() if expected[plugin] != name]
    assert [r.getMessage().split(" is ")[0] for r in caplog.records] == aliased
    assert all("transformers conversion" in r.getMessage() for r in caplog.records)


def test_prumerge_accepts_the_scripts_retention_1_but_no_merging_setting():
    # the eval scripts pass retention=${RETENTION} for every run; 1 means "no merging"
    cfg = aim_config_from_model_args({"method": "prumerge", "retention": 1})
    assert cfg.method == "prumerge" and cfg.retention == 1.0
    with pytest.raises(EvalArgumentError, match="retention"):
        aim_config_from_model_args({"method": "prumerge", "retention": 0.5})
