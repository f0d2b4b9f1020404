"""End to end: the evaluation scripts run `python -m lmms_eval` with the tiny models on the
shipped offline task, through the entry point (no network, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

ROOT = Path(__file__).resolve().parents[1]
VIDEO_TASKS = "llava_aim_synthvid_gen,llava_aim_synthvid_mc"
pytestmark = pytest.mark.slow


def _run_script(script, tmp, timeout=600, **settings):
    env = {**os.environ, "PYTHON": sys.executable, "HF_HOME": str(tmp / "hf"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "DEVICE": "cpu", "OUTPUT_DIR": str(tmp / "out"),
           "OMP_NUM_THREADS": "1", **settings}
    env.pop("WORLD_SIZE", None)
    return subprocess.run(["bash", str(ROOT / script)], env=env, capture_output=True, text=True, timeout=timeout)


def _samples(out_dir: Path):
    """task -> [(doc_id, filtered response)] from the samples files, by doc id."""
    found = {}
    for path in out_dir.rglob("*_samples_*.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        task = path.stem.split("_samples_", 1)[1]
        found[task] = sorted((r["doc_id"], json.dumps(r["filtered_resps"])) for r in rows)
    return found


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval1")
    result = _run_script("video_bench_eval.sh", tmp, PRETRAINED="tiny-llava-onevision", TASKS=VIDEO_TASKS,
                         FRAMES="4", LIMIT="3")
    return tmp, result


def test_video_script_writes_results_and_exits_0(one_process_run):
    tmp, result = one_process_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [results_file] = list((tmp / "out").rglob("*_results.json"))
    assert f"results: {results_file}" in result.stdout
    data = json.loads(results_file.read_text())
    assert data["config"]["model"] == "llava_onevision_aim"
    assert "aim=1,retention=0.25" in data["config"]["model_args"]
    assert 0.0 <= data["results"]["llava_aim_synthvid_mc"]["acc,none"] <= 1.0
    samples = _samples(tmp / "out")
    assert [d for d, _ in samples["llava_aim_synthvid_gen"]] == [0, 1, 2]
    assert all(len(json.loads(r)) == 4 for _, r in samples["llava_aim_synthvid_mc"])  # 4 option losses


def test_collect_results_on_a_real_run(one_process_run, tmp_path):
    tmp, _ = one_process_run
    out = tmp_path / "table.md"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "collect_results.py"), str(tmp / "out"),
                           "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    row = next(line for line in out.read_text().splitlines() if line.startswith("| tiny-llava-onevision"))
    assert "| 4 | 0.25, 4-6 |" in row and "llava_aim_synthvid_mc" in out.read_text()


def test_torchrun_two_processes_give_the_same_samples(one_process_run, tmp_path):
    tmp, first = one_process_run
    assert first.returncode == 0
    # 3 documents on 2 ranks: rank 1 also runs a padding request. On CPU the script switches
    # the default accelerate launcher to torchrun.
    result = _run_script("video_bench_eval.sh", tmp_path, PRETRAINED="tiny-llava-onevision", TASKS=VIDEO_TASKS,
                         FRAMES="4", LIMIT="3", NUM_PROCESSES="2", MASTER_PORT="29617")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "launching with torchrun" in result.stderr
    assert _samples(tmp_path / "out") == _samples(tmp / "out")


def test_broken_checkpoint_exits_nonzero(tmp_path):
    result = _run_script("video_bench_eval.sh", tmp_path, PRETRAINED=str(tmp_path / "no-such-checkpoint"),
                         TASKS="llava_aim_synthvid_gen", FRAMES="4", LIMIT="2")
    assert result.returncode != 0
    assert "wrote no results file" in result.stderr
    assert not list((tmp_path / "out").rglob("*_results.json"))


@pytest.mark.parametrize("model,tiny,positions", [("qwen2_vl_aim", "tiny-qwen2-vl", "official"),
                                                  ("qwen2_5_vl_aim", "tiny-qwen2.5-vl", "original")])
def test_video_script_with_a_qwen_model(tmp_path, model, tiny, positions):
    # MODEL= selects the plugin model; qwen2_vl_aim defaults to the official run's settings
    result = _run_script("video_bench_eval.sh", tmp_path, MODEL=model, PRETRAINED=tiny, TASKS=VIDEO_TASKS,
                         FRAMES="4", LIMIT="2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [results_file] = list((tmp_path / "out").rglob("*_results.json"))
    data = json.loads(results_file.read_text())
    assert data["config"]["model"] == model
    assert f"max_pixels=200704,aim=1,retention=0.25,positions={positions}" in data["config"]["model_args"]
    assert 0.0 <= data["results"]["llava_aim_synthvid_mc"]["acc,none"] <= 1.0
    samples = _samples(tmp_path / "out")
    assert [d for d, _ in samples["llava_aim_synthvid_gen"]] == [0, 1]
    assert all(len(json.loads(r)) == 4 for _, r in samples["llava_aim_synthvid_mc"])
    table = subprocess.run([sys.executable, str(ROOT / "scripts" / "collect_results.py"), str(tmp_path / "out")],
                           capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    assert f"| {tiny} * | 4 | 0.25, 4-6" in table.stdout


def test_video_script_refuses_an_unknown_model(tmp_path):
    result = _run_script("video_bench_eval.sh", tmp_path, MODEL="qwen3_vl_aim", TASKS=VIDEO_TASKS)
    assert result.returncode == 2 and "MODEL must be" in result.stderr


def test_image_script_with_llava15(tmp_path):
    result = _run_script("scripts/image_bench_eval.sh", tmp_path, PRETRAINED="tiny-llava-1.5",
                         TASKS="llava_aim_synthimg_gen", LIMIT="2", RETENTION="0.5", L1="4", L2="6")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [results_file] = list((tmp_path / "out").rglob("*_results.json"))
    data = json.loads(results_file.read_text())
    assert data["config"]["model"] == "llava_aim" and "l1=4,l2=6" in data["config"]["model_args"]
    assert [d for d, _ in _samples(tmp_path / "out")["llava_aim_synthimg_gen"]] == [0, 1]
