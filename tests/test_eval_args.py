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
                "qwen2_vl_aim": "Qwen/Qwen2-VL-7B-Instruct", "qwen2_5_vl_aim": "Qwen/Qwen2.5-VL-7B-Instruct",
                "qwen3_vl_aim": "Qwen/Qwen3-VL-8B-Instruct", "qwen3_vl_moe_aim": "Qwen/Qwen3-VL-30B-A3B-Instruct",
                "llava_onevision1_5_aim": "Deep-VLM/LLaVA-OneVision-1.5-4B-Instruct-hf"}
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


# -- model_args of lmms-eval's stock models and of the official AIM commands ---------------------------
from llava.eval.args import adopt_stock_args, check_eval_settings, check_model_args, main as args_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASK_DIR = str(ROOT / "llava" / "eval" / "tasks")
STOCK_MODELS = {"llava_onevision": "llava_onevision_aim", "llava": "llava_aim", "qwen2_vl": "qwen2_vl_aim",
                "qwen2_5_vl": "qwen2_5_vl_aim"}


def _stock_init_keywords(module: str):
    """The __init__ keywords of lmms-eval's stock model class in ``module`` (read from its source: importing
    it needs LLaVA-NeXT's own package)."""
    import ast
    import importlib.util

    origin = importlib.util.find_spec("lmms_eval").submodule_search_locations[0]
    tree = ast.parse((Path(origin) / "models" / "simple" / f"{module}.py").read_text())
    init = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    return [a.arg for a in init.args.args[1:] + init.args.kwonlyargs]


@pytest.mark.parametrize("stock, plugin", sorted(STOCK_MODELS.items()))
def test_every_stock_model_arg_is_applied_moot_or_refused_by_name(stock, plugin):
    """No keyword of lmms-eval's stock model is an 'unknown model_arg' for the plugin model that replaces it."""
    from llava.eval.args import KNOWN_ARGS, PLUGIN_EXTRA_ARGS, stock_arg

    keywords = _stock_init_keywords(stock)
    assert "pretrained" in keywords and len(keywords) > 5
    handled = set(KNOWN_ARGS) | set(PLUGIN_EXTRA_ARGS.get(plugin, ()))
    assert [k for k in keywords if k not in handled and stock_arg(plugin, k) is None] == []


def test_official_llava_onevision_command_is_accepted_and_said(caplog):
    # the official README: --model llava_onevision --model_args pretrained=...,conv_template=qwen_1_5,
    # model_name=llava_qwen,attn_implementation=eager
    raw = {"pretrained": "lmms-lab/llava-onevision-qwen2-7b-ov", "conv_template": "qwen_1_5",
           "model_name": "llava_qwen", "attn_implementation": "eager"}
    own, notes = adopt_stock_args("llava_onevision_aim", raw)
    assert own == {"pretrained": raw["pretrained"], "attn_implementation": "eager"}
    text = "\n".join(notes)
    assert "conv_template='qwen_1_5' (moot" in text and "model_name='llava_qwen' (moot" in text
    assert "does not need eager attention" in text
    check_model_args("llava_onevision_aim", raw)


def test_official_qwen2_vl_command_applies_max_num_frames():
    own, notes = adopt_stock_args("qwen2_vl_aim", {"pretrained": "Qwen/Qwen2-VL-7B-Instruct", "max_num_frames": 16,
                                                   "max_pixels": 200704})
    assert own["max_frames_num"] == 16 and "max_num_frames" not in own and own["max_pixels"] == 200704
    assert any(n.startswith("max_num_frames=16 (applied)") for n in notes)
    assert loader_args(split_model_args({k: v for k, v in own.items() if k != "max_pixels"})[0], "x").max_frames_num == 16
    own, _ = adopt_stock_args("qwen2_vl_aim", {"use_flash_attention_2": True})
    assert own == {"attn_implementation": "flash_attention_2"}


@pytest.mark.parametrize("plugin, raw, message", [
    ("llava_onevision_aim", {"conv_template": "vicuna_v1"}, "conv_template='vicuna_v1' is not reproduced"),
    ("llava_aim", {"conv_template": "qwen_1_5"}, "conv_template='qwen_1_5' is not reproduced"),
    ("llava_onevision_aim", {"mm_spatial_pool_mode": "average"}, "mm_spatial_pool_mode"),
    ("llava_onevision_aim", {"mm_spatial_pool_stride": 4}, "mm_spatial_pool_stride"),
    ("llava_onevision_aim", {"token_strategy": "multiple"}, "token_strategy"),
    ("llava_onevision_aim", {"customized_config": "my.json"}, "customized_config"),
    ("llava_aim", {"truncate_context": True}, "truncate_context"),
    ("qwen2_vl_aim", {"system_prompt": "Be brief."}, "system_prompt"),
    ("qwen2_vl_aim", {"interleave_visuals": True}, "interleave_visuals"),
    ("qwen2_5_vl_aim", {"fps": 2}, "fps=2"),
    ("qwen2_vl_aim", {"use_cache": False}, "use_cache"),
    ("qwen2_vl_aim", {"max_num_frames": 16, "max_frames_num": 32}, "drop one"),
    ("qwen2_vl_aim", {"conv_template": "qwen_1_5"}, "unknown model_args \\['conv_template'\\]"),
    ("llava_aim", {"max_num_frames": 8}, "unknown model_args \\['max_num_frames'\\]"),
])
def test_stock_model_args_that_would_change_the_result_are_refused(plugin, raw, message):
    with pytest.raises(EvalArgumentError, match=message):
        check_model_args(plugin, raw)


@pytest.mark.parametrize("plugin, raw", [
    ("llava_aim", {"conv_template": "vicuna_v1", "model_name": "llava-v1.5-7b", "tie_weights": True}),
    ("llava_onevision_aim", {"mm_spatial_pool_stride": 2, "mm_spatial_pool_mode": "bilinear", "token_strategy": "single",
                             "truncation": True, "use_cache": True, "truncate_context": False,
                             "customized_config": "None", "video_decode_backend": "decord"}),
    ("qwen2_vl_aim", {"system_prompt": "You are a helpful assistant.", "max_length": 2048, "reasoning_prompt": "None",
                      "interleave_visuals": False, "use_flash_attention_2": False, "min_pixels": 3136}),
    ("qwen2_5_vl_aim", {"fps": "None", "attn_implementation": "sdpa", "max_num_frames": 32}),
])
def test_stock_defaults_are_accepted(plugin, raw):
    check_model_args(plugin, raw)


def test_aim_off_refuses_a_method():
    with pytest.raises(EvalArgumentError, match="method=fastv"):
        aim_config_from_model_args({"aim": 0, "method": "fastv"}, 28)
    assert aim_config_from_model_args({"aim": 0, "method": "aim"}, 28) == AIMConfig.disabled()


# -- `python -m llava.eval.args check`: the eval scripts' settings before lmms-eval starts ---------------
@pytest.mark.parametrize("model, model_args, tasks, device, needle", [
    ("llava_onevision_aim", "pretrained=x,retension=0.5", "llava_aim_synthvid_mc", "cpu", "unknown model_args ['retension']"),
    ("llava_onevision_aim", "pretrained=x,max_frames_num=0", "llava_aim_synthvid_mc", "cpu", "max_frames_num"),
    ("llava_onevision_aim", "pretrained=x,aim=1,retention=1.5", "llava_aim_synthvid_mc", "cpu", "retention"),
    ("llava_onevision_aim", "pretrained=x,aim=1,l1=5,l2=", "llava_aim_synthvid_mc", "cpu", "l1"),
    ("llava_onevision_aim", "pretrained=x,retention=0.25,retention=0.5", "llava_aim_synthvid_mc", "cpu", "twice"),
    ("llava_onevision_aim", "pretrained=x,device=cpu", "llava_aim_synthvid_mc", "cpu", "DEVICE"),
    ("llava_onevision_aim", "pretrained=x", "videome", "cpu", "unknown task(s) videome"),
    ("llava_onevision_aim", "pretrained=x", "llava_aim_synthvid_mc,nope_*", "cpu", "nope_*"),
    ("llava_onevision_aim", "pretrained=x", "llava_aim_synthvid_mc", "gpu", "DEVICE 'gpu' is not a device"),
    ("llava_next_aim", "pretrained=x", "llava_aim_synthvid_mc", "cpu", "unknown plugin model"),
])
def test_check_refuses_with_one_line_and_exit_2(model, model_args, tasks, device, needle, capsys):
    code = args_main(["check", "--model", model, "--model_args", model_args, "--tasks", tasks,
                      "--include_path", TASK_DIR, "--device", device])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and needle in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")


def test_check_refuses_cuda_where_there_is_none(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = args_main(["check", "--model", "llava_aim", "--model_args", "pretrained=x", "--tasks", "pope",
                      "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and "no CUDA GPU is available here" in err and "DEVICE cpu" in err


def test_check_knows_lmms_evals_tasks_groups_and_the_include_path():
    notes = check_eval_settings(
        "llava_onevision_aim", "pretrained=x,max_frames_num=32,aim=1,retention=0.25",
        "videomme,mlvu_dev,egoschema_subset,nextqa_mc_test,perceptiontest_val_mc,mvbench,llava_aim_synthvid,"
        "llava_aim_synthvid_mc,mvbench_*", [TASK_DIR], "cpu")
    assert notes == []
    check_eval_settings("llava_aim", "pretrained=x", "vqav2_val,gqa,mme,textvqa_val,scienceqa_img,mmbench_en_dev,pope",
                        [], "cpu")
    with pytest.raises(EvalArgumentError, match="llava_aim_synthvid_mc"):  # not on lmms-eval's own list
        check_eval_settings("llava_aim", "pretrained=x", "llava_aim_synthvid_mc", [], "cpu")


# -- the eval scripts: --help, settings refused before anything is written, one folder per setting ------
def _script(script, tmp_path, *args, **settings):
    import os

    env = {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "OUTPUT_DIR": str(tmp_path / "out"),
           "PRETRAINED": "tiny-llava-onevision" if "video" in script else "tiny-llava-1.5", **settings}
    for name in ("AIM", "RETENTION", "L1", "L2", "POSITIONS", "EXTRA_MODEL_ARGS", "DEVICE", "TASKS", "FRAMES"):
        if name not in settings:
            env.pop(name, None)
    return subprocess.run(["bash", str(ROOT / script), *args], env=env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)


@pytest.mark.parametrize("script", ["video_bench_eval.sh", "scripts/image_bench_eval.sh"])
def test_scripts_print_their_own_usage(script, tmp_path):
    done = _script(script, tmp_path, "--help")
    assert done.returncode == 0 and done.stderr == ""
    first = "Video benchmarks" if "video" in script else "Image benchmarks"
    assert done.stdout.startswith(first) and "RETENTION" in done.stdout and "EXTRA_MODEL_ARGS=" in done.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script, settings, needle", [
    ("video_bench_eval.sh", {"AIM": "0", "RETENTION": "0.5"}, "AIM=0 runs the stock model, so RETENTION"),
    ("video_bench_eval.sh", {"AIM": "0", "L1": "4", "L2": "6"}, "L1 L2 would be ignored"),
    ("video_bench_eval.sh", {"MODEL": "qwen2_vl_aim", "AIM": "0", "POSITIONS": "original"}, "POSITIONS would"),
    ("scripts/image_bench_eval.sh", {"AIM": "0", "RETENTION": "0.125"}, "RETENTION would be ignored"),
    ("video_bench_eval.sh", {"FRAMES": "0", "DEVICE": "cpu"}, "max_frames_num must be an integer >= 1, got 0"),
    ("video_bench_eval.sh", {"RETENTION": "1.5", "DEVICE": "cpu"}, "retention"),
    ("video_bench_eval.sh", {"L1": "30", "L2": "x", "DEVICE": "cpu"}, "l2"),
    ("video_bench_eval.sh", {"EXTRA_MODEL_ARGS": "retension=0.5", "DEVICE": "cpu"}, "unknown model_args ['retension']"),
    ("video_bench_eval.sh", {"EXTRA_MODEL_ARGS": "retention=0.5", "DEVICE": "cpu"}, "retention twice"),
    ("video_bench_eval.sh", {"TASKS": "llava_aim_synthvid_mcq", "DEVICE": "cpu"}, "unknown task(s) llava_aim_synthvid_mcq"),
    ("scripts/image_bench_eval.sh", {"TASKS": "pope,gqa_typo", "DEVICE": "cpu"}, "gqa_typo"),
])
def test_scripts_refuse_bad_settings_before_writing_anything(script, settings, needle, tmp_path):
    done = _script(script, tmp_path, **{"TASKS": "llava_aim_synthvid_mc", **settings})
    assert done.returncode == 2, done.stderr
    assert needle in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert list(tmp_path.iterdir()) == []  # no output folder, no cache folder


@pytest.mark.parametrize("positions", [None, "official"])
def test_qwen_baseline_keeps_its_default_positions(tmp_path, positions):
    # POSITIONS defaults per Qwen model: only one that differs from it is refused with AIM=0 (the
    # paper-table row qwen2vl/baseline spells out the default)
    settings = {"POSITIONS": positions} if positions else {}
    done = _script("video_bench_eval.sh", tmp_path, MODEL="qwen2_vl_aim", AIM="0", PRINT_MODEL_ARGS="1", **settings)
    assert done.returncode == 0 and ",aim=0" in done.stdout, done.stderr


def test_scripts_refuse_cuda_on_a_machine_without_it(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = _script("video_bench_eval.sh", tmp_path, TASKS="llava_aim_synthvid_mc")  # DEVICE's default: cuda
    assert done.returncode == 2 and "no CUDA GPU is available here" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []


def _default_output_dir(script, tmp_path, **settings) -> str:
    """The OUTPUT_DIR a script picks when none is given (the script sourced, asked to print only)."""
    import os

    env = {**os.environ, "PYTHON": sys.executable, "PRINT_MODEL_ARGS": "1", **settings}
    env.pop("OUTPUT_DIR", None)
    shown = subprocess.run(["bash", "-c", 'source "$0" >/dev/null; echo "$OUTPUT_DIR"', str(ROOT / script)],
                           env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    return shown.stdout.strip()


@pytest.mark.parametrize("script", ["video_bench_eval.sh", "scripts/image_bench_eval.sh"])
def test_two_methods_get_two_default_output_folders(script, tmp_path):
    fastv = _default_output_dir(script, tmp_path, RETENTION="1", EXTRA_MODEL_ARGS="method=fastv,drop_layers=2,drop_ratio=0.836")
    vtw = _default_output_dir(script, tmp_path, RETENTION="1", EXTRA_MODEL_ARGS="method=vtw,drop_layers=6")
    plain = _default_output_dir(script, tmp_path, RETENTION="1")
    assert len({fastv, vtw, plain}) == 3
    assert "method-fastv_drop_layers-2_drop_ratio-0.836" in fastv and "method-vtw" in vtw
    long_args = "method=pdrop,drop_layers=2/5/11,drop_ratio=0.5,importance=attention,attn_implementation=eager"
    long_dir = _default_output_dir(script, tmp_path, RETENTION="1", EXTRA_MODEL_ARGS=long_args)
    other = _default_output_dir(script, tmp_path, RETENTION="1", EXTRA_MODEL_ARGS=long_args.replace("eager", "sdpa"))
    assert long_dir != other and "/" not in Path(long_dir).name and len(Path(long_dir).name) < 140


# -- the eval scripts' per-model defaults come from the family adapters ---------------------------
def test_script_defaults_are_the_family_adapters():
    import shlex

    from llava.eval.args import main, script_defaults
    from llava.model.families import FAMILIES

    for family in FAMILIES:
        for media in family.merged_media:
            lines = dict(line.split("=", 1) for line in script_defaults(family.plugin_model, media))
            assert lines.pop("MODEL") == family.plugin_model
            assert shlex.split(lines.pop("MODEL_PRETRAINED")) == [family.default_checkpoint]
            assert lines == {f"MODEL_{k.upper()}": shlex.quote(str(v)) for k, v in family.paper_eval_args.items()}
    first_video = next(f for f in FAMILIES if "video" in f.merged_media)
    assert script_defaults("", "video")[0] == f"MODEL={first_video.plugin_model}"
    image_only = next(f for f in FAMILIES if "video" not in f.media)
    assert main(["defaults", "--media", "video", "--model", image_only.plugin_model]) == 2  # no video tasks
