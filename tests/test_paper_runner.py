"""scripts/paper_tables.py: every row of the paper's tables, the commands, SLURM, and the paper
side by side (collect_results --paper); the offline check runs two rows with the tiny model."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

from conftest import load_script  # noqa: E402
from llava.analysis import analyze  # noqa: E402
from llava.eval.results import collect_main, load_paper_tables  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


pt = load_script("paper_tables")
TABLES = load_paper_tables()


def _rows_in_tables():
    return [(t["name"], e) for t in TABLES["tables"] for e in t["rows"]]


def test_every_paper_row_is_a_named_setting_and_back():
    in_tables = {e["row"] for _, e in _rows_in_tables()}
    assert in_tables == set(pt.BY_NAME)  # one set of names in the data file and in the runner
    for _, entry in _rows_in_tables():  # rows sharing a run say so in both places
        assert entry.get("same_as") == pt.BY_NAME[entry["row"]].same_as
    names = [r.name for r in pt.ROWS]
    assert len(names) == len(set(names))
    for required in ("video/aim", "video/baseline", "video/fastv", "video/vtw", "video/pdrop", "video/prumerge_plus",
                     "sweep/r0.125", "sweep/r0.125-14-22", "ablation/7-22", "long/aim-192", "image/b1/aim",
                     "image/b2/aim", "qwen2vl/aim", "qwen3vl/baseline", "qwen3vl/aim", "qwen3vl/r0.0625"):
        assert required in pt.BY_NAME
    assert len([n for n in names if n.startswith("ablation/")]) == 10
    assert len([n for n in names if n.startswith("sweep/")]) == 14  # 7 retentions, with and without (14, 22)


def test_list_shows_every_row_with_its_paper_numbers(capsys):
    assert pt.main(["--list"]) == 0
    out = capsys.readouterr().out
    for row in pt.ROWS:
        assert row.name in out
    assert "videomme 58.2" in out and "same run as video/aim" in out


def _paper_entry(row):
    for table, entry in _rows_in_tables():
        if entry["row"] == row and "tflops" in entry["paper"]:
            return table, entry
    return None, None


@pytest.mark.parametrize("row", [r.name for r in pt.ROWS if r.method in ("vtw", "fastv", "pdrop") and not r.same_as])
def test_baseline_knobs_reproduce_the_papers_tflops(row):
    """The paper gives the baselines' TFLOPs, not their knobs: each knob reproduces them."""
    r = pt.BY_NAME[row]
    table, entry = _paper_entry(row)
    args = dict(kv.split("=") for kv in r.env["EXTRA_MODEL_ARGS"].split(","))
    layers = tuple(int(x) for x in str(args["drop_layers"]).split("/"))
    video = table != "image"
    result = analyze("qwen2-7b" if video else "llama-7b", frames=32 if video else 1,
                     tokens_per_frame=196 if video else 576, text_tokens=100 if video else 40, method=args["method"],
                     drop_layers=layers, drop_ratio=float(args["drop_ratio"]) if "drop_ratio" in args else None)
    assert result.prefill_tflops == pytest.approx(entry["paper"]["tflops"], rel=0.005)


# The paper's sweep with (14, 22) below 25% prints TFLOPs its own schedule does not give.
PAPER_SWEEP_MISMATCH = {"sweep/r0.125-14-22": 7.75, "sweep/r0.0625-14-22": 4.50, "sweep/r0.03125-14-22": 2.89,
                        "sweep/r0.015625-14-22": 2.10}


@pytest.mark.parametrize("table,entry", [(t, e) for t, e in _rows_in_tables()
                                         if t in ("sweep", "sweep_pruning", "ablation", "long", "image")
                                         and "tflops" in e["paper"]
                                         and pt.BY_NAME[e["row"]].method == "aim"],
                         ids=lambda v: v if isinstance(v, str) else v["row"])
def test_aim_rows_reproduce_the_papers_tflops_in_its_convention(table, entry):
    row = pt.BY_NAME[entry.get("same_as") or entry["row"]]
    env = row.env
    video = table != "image"
    layers = 28 if video else 32
    if env.get("AIM") == "0":
        retention, l1, l2 = 1.0, None, None
    else:
        retention = float(env["RETENTION"])
        if "L1" not in env:  # auto: the paper's schedule on the paper's checkpoints
            l1, l2 = (14, 22) if video else (13, 21)
        elif env["L1"] == "none":
            l1, l2 = None, None
        else:
            l1, l2 = int(env["L1"]), int(env["L2"])
            if l1 >= layers:  # (28, 29): nothing pruned
                l1 = l2 = None
    result = analyze("qwen2-7b" if video else "llama-7b", frames=int(env.get("FRAMES", 32)) if video else 1,
                     tokens_per_frame=196 if video else 576, text_tokens=100 if video else 40, retention=retention,
                     l1=l1, l2=l2, convention="paper")
    expected = PAPER_SWEEP_MISMATCH.get(entry["row"], entry["paper"]["tflops"])
    assert result.prefill_tflops == pytest.approx(expected, abs=0.011)


def test_qwen_rows_are_predicted_on_qwens_own_tokens():
    """The paper side-by-side prices a Qwen2-VL run on its temporal groups at max_pixels (16 x 256
    for 32 frames at 200704), as collect_results' TFLOPs column does, not on OneVision's 32 x 196."""
    from llava.eval.results import Run, _predicted_paper_way, prefill_tflops, run_setting, visual_geometry

    run = Run("qwen2_vl_aim", "pretrained=Qwen/Qwen2-VL-7B-Instruct,max_frames_num=32,max_pixels=200704,"
              "aim=1,retention=0.25,positions=official")
    setting = run_setting(run)
    assert visual_geometry(setting, True) == (16, 256)
    expected = analyze("qwen2-vl-7b", frames=16, tokens_per_frame=256, text_tokens=100, retention=0.25, l1=14, l2=22,
                       convention="paper", hardware="nvidia_A100")
    assert _predicted_paper_way(run, True, 100) == (expected.prefill_tflops, expected.prefill_ms)
    unknown_size = Run("qwen2_vl_aim", "pretrained=Qwen/Qwen2-VL-7B-Instruct,max_frames_num=32,aim=1")
    assert visual_geometry(run_setting(unknown_size), True) is None
    assert _predicted_paper_way(unknown_size, True, 100) == (None, None) and prefill_tflops(run_setting(unknown_size), True) is None


def test_dry_run_passes_the_environment_through(capsys, monkeypatch):
    monkeypatch.setenv("PRETRAINED", "tiny-llava-onevision")
    monkeypatch.setenv("LIMIT", "2")
    monkeypatch.setenv("FRAMES", "4")
    monkeypatch.setenv("EXTRA_MODEL_ARGS", "attn_implementation=eager")
    assert pt.main(["--dry-run", "video/vtw", "ablation/14-22", "video/aim", "long/aim-192"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert len(lines) == 3  # ablation/14-22 is video/aim's run
    vtw, aim, long = (dict(w.split("=", 1) for w in shlex.split(line)[1:-2]) for line in lines)
    assert vtw["PRETRAINED"] == "tiny-llava-onevision" and vtw["LIMIT"] == "2"
    assert vtw["EXTRA_MODEL_ARGS"] == "method=vtw,drop_layers=6,attn_implementation=eager"
    assert aim["OUTPUT_DIR"].endswith("video/aim") and "L1" not in aim
    assert long["FRAMES"] == "4"  # the user's override wins over the row's 192


def test_unknown_row_is_one_line_with_a_suggestion(capsys):
    with pytest.raises(SystemExit) as exc:
        pt.main(["--dry-run", "video/aimm"])
    assert "video/aim" in str(exc.value) and "no row named" in str(exc.value)


def test_slurm_array_one_task_per_run_with_its_logs_folder_made(tmp_path):
    script = tmp_path / "paper.sbatch"
    root = tmp_path / "paper"
    code = pt.main(["--slurm", str(script), "sweep/", "ablation/", "--output-root", str(root), "--partition", "gpu",
                    "--gpus", "2", "--time", "12:00:00", "--account", "proj42", "--export", "HF_HOME=/shared/hf"])
    assert code == 0
    text = script.read_text()
    expected = pt.runs(pt.select(["sweep/", "ablation/"]))
    assert f"#SBATCH --array=0-{len(expected) - 1}" in text
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gres=gpu:2", "#SBATCH --time=12:00:00",
                 "#SBATCH --account=proj42", "export HF_HOME=/shared/hf"):
        assert line in text
    assert "NUM_PROCESSES=2" in text and "ablation/14-22" not in text.split("ROWS=(")[1].split(")")[0]
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    # Slurm opens each task's log before the task runs: an absolute folder that exists already
    assert f"#SBATCH --output={root}/slurm/%x-%A_%a.out" in text and (root / "slurm").is_dir()
    assert f"#SBATCH --chdir={ROOT}" in text


def _two_document_task(tmp_path):
    """A copy of the shipped task folder whose questions are its first 2 documents (same task
    names): a whole, unlimited run of it takes seconds, not the 64 requests of the real one."""
    import shutil

    from llava.eval.synthetic import TASK_DIR

    folder = tmp_path / "tasks" / TASK_DIR.name
    shutil.copytree(TASK_DIR, folder, ignore=shutil.ignore_patterns("__pycache__"))
    questions = folder / "questions.json"
    questions.write_text(json.dumps(json.loads(questions.read_text())[:2]))
    return folder.parent


def _offline_env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(PYTHON=sys.executable, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               OMP_NUM_THREADS="1", DEVICE="cpu", **extra)
    return env


@pytest.mark.slow
def test_slurm_task_skips_only_a_complete_run_of_exactly_its_setting(tmp_path, monkeypatch):
    row = pt.BY_NAME["video/aim"]
    root = tmp_path / "paper"
    # the real row (the 7B checkpoint): a results file with every task does not make it complete
    script = tmp_path / "real.sbatch"
    for key in ("PRETRAINED", "TASKS", "FRAMES", "LIMIT", "CACHE_DIR", "EXTRA_MODEL_ARGS"):
        monkeypatch.delenv(key, raising=False)
    assert pt.main(["--slurm", str(script), "video/aim", "--output-root", str(root)]) == 0
    folder = root / row.name / "model"
    folder.mkdir(parents=True)
    tasks = pt.row_env(row, str(root))["TASKS"].split(",")
    (folder / "20260101_000000_results.json").write_text(json.dumps(
        {"results": {t: {"score,none": 50.0} for t in tasks}, "config": {"model": "m"}}))
    real = subprocess.run(["bash", str(script)], env=_offline_env(tmp_path, SLURM_ARRAY_TASK_ID="0"),
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert "complete" not in real.stdout and f"{row.name}: env " in real.stdout  # it ran (and failed offline)
    assert real.returncode == 2 and "not in the Hugging Face cache" in real.stderr
    # the row on the tiny model, with a completion record of exactly its setting: skipped
    tiny = dict(PRETRAINED="tiny-llava-onevision", TASKS="llava_aim_synthvid_mc", FRAMES="4")
    for key, value in tiny.items():
        monkeypatch.setenv(key, value)
    script = tmp_path / "tiny.sbatch"
    assert pt.main(["--slurm", str(script), "video/aim", "--output-root", str(root)]) == 0
    env = _offline_env(tmp_path, SLURM_ARRAY_TASK_ID="0")
    printed = subprocess.run(f"PRINT_MODEL_ARGS=1 {pt.command(row, str(root))}", shell=True, cwd=ROOT, env=env,
                             capture_output=True, text=True)
    results = tmp_path / "whole_results.json"
    results.write_text("{}")
    cache = pt.cache_dir(row, str(root))
    record = subprocess.run([sys.executable, "-m", "llava.eval.resume", "complete", "--cache-dir", str(cache),
                             *shlex.split(printed.stdout), "--results", str(results)],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert record.returncode == 0, record.stderr
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{row.name}: complete in {cache}" in done.stdout


def test_slurm_to_a_missing_or_unwritable_folder_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("")
    for target in (tmp_path / "missing" / "x.sbatch", a_file / "x.sbatch"):
        assert pt.main(["--slurm", str(target), "video/aim", "--output-root", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("paper_tables.py: error: cannot write")
    # the log folder cannot be made (the output root is a file): nothing written either
    assert pt.main(["--slurm", str(tmp_path / "x.sbatch"), "video/aim", "--output-root", str(a_file)]) == 2
    assert "cannot write" in capsys.readouterr().err and not (tmp_path / "x.sbatch").exists()
    monkeypatch.setattr(pt.os, "access", lambda path, mode: False)  # as root every folder is writable
    assert pt.main(["--slurm", str(tmp_path / "x.sbatch"), "video/aim", "--output-root", str(tmp_path / "out")]) == 2
    assert "is not writable" in capsys.readouterr().err
    assert not (tmp_path / "x.sbatch").exists() and not (tmp_path / "out").exists()


def test_collect_paper_without_runs_marks_every_row(tmp_path, capsys):
    assert collect_main([str(tmp_path), "--paper"]) == 0
    out = capsys.readouterr().out
    assert out.count("not run yet") == sum(len(t["rows"]) for t in TABLES["tables"])
    assert "| `ablation/7-22` | 7: (7, 22) — **not run yet** | – | 12.01 / – | 44.75 / – | 56.8 / – | – |" in out
    assert out.index("### Video benchmarks") < out.index("### Image benchmarks")


@pytest.mark.parametrize("argv,message", [
    (["--paper", "a", "b"], "one folder"),
    (["--paper", "--tables", "videos", "."], "no table 'videos'"),
])
def test_collect_paper_bad_input(argv, message, capsys, tmp_path):
    argv = [str(tmp_path) if a == "." else a for a in argv]
    assert collect_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_dry_run_commands_run_offline_for_two_rows_and_fill_the_paper_table(tmp_path):
    """The --dry-run commands, run as printed, with the tiny model on the shipped task."""
    env = {**os.environ, "PYTHON": sys.executable, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PRETRAINED": "tiny-llava-onevision",
           "TASKS": "llava_aim_synthvid_gen", "FRAMES": "4", "LIMIT": "2", "DEVICE": "cpu"}
    env.pop("WORLD_SIZE", None)
    root = tmp_path / "paper"
    listed = subprocess.run([sys.executable, str(ROOT / "scripts" / "paper_tables.py"), "--dry-run", "video/aim",
                             "sweep/r0.125", "--output-root", str(root)], env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    commands = [line for line in listed.stdout.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2
    for cmd in commands:
        done = subprocess.run(cmd, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = tmp_path / "paper.md"
    assert collect_main([str(root), "--paper", "--tables", "video,sweep,ablation", "--out", str(out)]) == 0
    text = out.read_text()
    aim_row = next(line for line in text.splitlines() if line.startswith("| `video/aim`"))
    sweep_row = next(line for line in text.splitlines() if line.startswith("| `sweep/r0.125`"))
    ablation_row = next(line for line in text.splitlines() if line.startswith("| `ablation/14-22`"))
    for row in (aim_row, sweep_row, ablation_row):  # ablation/14-22 is video/aim's run
        assert "not run yet" not in row
        assert row.split("|")[-2].strip() != "–"  # measured prefill ms
    # the tiny model at 4 frames on 2 documents: every figure marked, none compared with the paper
    assert "| tiny-llava-onevision, 4 frames, limit 2 per task |" in aim_row
    tflops = aim_row.split("|")[4].strip()
    assert tflops.startswith("14.76 / ") and tflops.endswith("‡§") and not re.search(r"\([+-][0-9]", aim_row)
    assert "not run yet" in next(line for line in text.splitlines() if line.startswith("| `video/vtw`"))


def test_every_runs_model_args_are_accepted_by_the_plugin():
    """Each run's script, asked only to print what it would run (PRINT_MODEL_ARGS=1), gives
    model_args that the plugin's own checks accept, for the model the row names: a row that
    would fail on the cluster after queueing fails here instead."""
    from llava.eval.args import (PLUGIN_EXTRA_ARGS, PLUGIN_MODEL_TYPES, aim_config_from_model_args, loader_args,
                                 plugin_args, split_model_args)
    from llava.aim.policy import SPECS
    from llava.eval.results import parse_model_args

    def printed(row):
        env = {**{k: v for k, v in os.environ.items() if k not in ("PRETRAINED", "MODEL")},
               **pt.row_env(row, "/tmp/unused", environ={}), "PRINT_MODEL_ARGS": "1"}
        return subprocess.run(["bash", row.script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    # a method not registered here (2025 comparison) or LongVA's package: the runner skips the row,
    # and it is checked here once it is there
    rows = [row for row in pt.runs(pt.ROWS) if not pt.unavailable(row)]
    with ThreadPoolExecutor(max_workers=4) as pool:  # each script is mostly interpreter start-up
        answers = list(pool.map(printed, rows))
    for row, done in zip(rows, answers):
        assert done.returncode == 0, (row.name, done.stderr)
        words = shlex.split(done.stdout)
        model, model_args = words[words.index("--model") + 1], words[words.index("--model_args") + 1]
        if model not in PLUGIN_MODEL_TYPES:  # a family this transformers does not serve (min_transformers):
            continue  # its plugin is not registered here, and tests/test_family_releases.py checks the refusal
        raw = parse_model_args(model_args)
        extra = PLUGIN_EXTRA_ARGS.get(model, ())  # the plugin model's own model_args (its family's)
        plugin_args(extra, {k: raw.pop(k) for k in extra if k in raw})
        loader, aim = split_model_args(raw)
        loader_args(loader, "unused")
        cfg = aim_config_from_model_args(aim)
        assert model == row.env.get("MODEL", model), row.name
        if row.method in SPECS and row.method != "aim":
            assert cfg.method == row.method, row.name


@pytest.mark.slow
def test_run_skips_a_row_only_after_an_unlimited_run_of_exactly_its_setting(tmp_path):
    """--run: a LIMIT run on the tiny model completes nothing (neither the real 7B row nor the tiny
    row); a run of the whole task does, for that setting only."""
    root = tmp_path / "paper"
    row = pt.BY_NAME["video/aim"]
    # the row's whole task, made small: the shipped multiple-choice task cut to its first 2 documents
    tiny = _offline_env(tmp_path, PRETRAINED="tiny-llava-onevision", TASKS="llava_aim_synthvid_mc", FRAMES="4",
                        INCLUDE_PATH=str(_two_document_task(tmp_path)))
    tiny.pop("LIMIT", None)
    runner = [sys.executable, str(ROOT / "scripts" / "paper_tables.py"), "--run", "video/aim", "--output-root", str(root)]
    limited = subprocess.run(runner, env={**tiny, "LIMIT": "2"}, capture_output=True, text=True, timeout=900)
    assert limited.returncode == 0, limited.stderr[-3000:]
    real = {k: v for k, v in tiny.items() if k not in ("PRETRAINED", "TASKS", "FRAMES")}
    assert not pt.is_complete(row, str(root), real)  # the real row is not skipped
    assert not pt.is_complete(row, str(root), tiny)  # nor the tiny row: the run had a LIMIT
    whole = subprocess.run(runner, env=tiny, capture_output=True, text=True, timeout=900)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert "complete, skipped" not in whole.stderr
    assert pt.is_complete(row, str(root), tiny)
    assert not pt.is_complete(row, str(root), {**tiny, "FRAMES": "8"})  # another setting
    again = subprocess.run(runner, env=tiny, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "video/aim: complete, skipped" in again.stderr
