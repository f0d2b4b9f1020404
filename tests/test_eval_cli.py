"""End to end: the evaluation scripts run `python -m lmms_eval` with the tiny models on the
shipped offline task, through the entry point (no network, CPU)."""

from __future__ import annotations

import json
import os
import re
import socket
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


def _free_port() -> int:
    # a fixed port collides with another suite (or a leftover rendezvous) on a shared machine
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
    assert row.startswith("| tiny-llava-onevision * | 4 | 3 per task | 0.25, 4-6 |")
    assert "llava_aim_synthvid_mc" in out.read_text() and "- `*` a limited run" in out.read_text()


def test_collect_paper_marks_a_limited_tiny_run_and_compares_nothing(one_process_run, tmp_path):
    """The real run filed as the paper's video/aim row: the row names its checkpoint, frames and
    limit, every figure is marked, and no difference against the paper is printed."""
    tmp, _ = one_process_run
    (tmp_path / "video").mkdir()
    (tmp_path / "video" / "aim").symlink_to(tmp / "out", target_is_directory=True)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "collect_results.py"), "--paper", str(tmp_path),
                           "--tables", "video"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("| `video/aim`"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "tiny-llava-onevision, 4 frames, limit 3 per task"
    ours = [c.split(" / ")[1] for c in cells[3:-1]] + [cells[-1]]
    assert all(o == "–" or o.endswith("‡§") for o in ours) and not re.search(r"\([+-][0-9]", row)  # no difference
    assert ours[0] != "–" and float(ours[0].rstrip("‡§")) > 0  # the tiny model's TFLOPs, not 0.00
    assert cells[-1].endswith("*‡§")  # the measured prefill of a --limit run
    for mark in ("`*` a limited run", "`‡` run on another checkpoint", "`§` run on another frame count"):
        assert mark in done.stdout


def test_torchrun_two_processes_give_the_same_samples(one_process_run, tmp_path):
    tmp, first = one_process_run
    assert first.returncode == 0
    # 3 documents on 2 ranks: rank 1 also runs a padding request. On CPU the script switches
    # the default accelerate launcher to torchrun.
    result = _run_script("video_bench_eval.sh", tmp_path, PRETRAINED="tiny-llava-onevision", TASKS=VIDEO_TASKS,
                         FRAMES="4", LIMIT="3", NUM_PROCESSES="2", MASTER_PORT=str(_free_port()))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "launching with torchrun" in result.stderr
    assert _samples(tmp_path / "out") == _samples(tmp / "out")


def test_missing_checkpoint_exits_2_in_one_line_before_anything_is_written(tmp_path):
    """The setting key reads the checkpoint first: a folder that is not there stops the run before
    lmms-eval starts, with one line, and leaves no output folder behind."""
    result = _run_script("video_bench_eval.sh", tmp_path, PRETRAINED=str(tmp_path / "no-such-checkpoint"),
                         TASKS="llava_aim_synthvid_gen", FRAMES="4", LIMIT="2")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: checkpoint folder '{tmp_path / 'no-such-checkpoint'}' does not exist"]
    assert not (tmp_path / "out").exists()


def test_broken_checkpoint_exits_nonzero(tmp_path):
    """A checkpoint folder that exists but cannot load fails in lmms-eval; the script says no
    results file was written and exits non-zero."""
    broken = tmp_path / "broken-checkpoint"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llava_onevision"')  # truncated JSON
    result = _run_script("video_bench_eval.sh", tmp_path, PRETRAINED=str(broken),
                         TASKS="llava_aim_synthvid_gen", FRAMES="4", LIMIT="2")
    assert result.returncode != 0
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
    assert f"| {tiny} * | 4 | 2 per task | 0.25, 4-6" in table.stdout


def test_video_script_refuses_an_unknown_model(tmp_path):
    result = _run_script("video_bench_eval.sh", tmp_path, MODEL="no_such_model_aim", TASKS=VIDEO_TASKS)
    assert result.returncode == 2 and "MODEL must be" in result.stderr


def test_image_script_with_llava15(tmp_path):
    result = _run_script("scripts/image_bench_eval.sh", tmp_path, PRETRAINED="tiny-llava-1.5",
                         TASKS="llava_aim_synthimg_gen", LIMIT="2", RETENTION="0.5", L1="4", L2="6")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [results_file] = list((tmp_path / "out").rglob("*_results.json"))
    data = json.loads(results_file.read_text())
    assert data["config"]["model"] == "llava_aim" and "l1=4,l2=6" in data["config"]["model_args"]
    assert [d for d, _ in _samples(tmp_path / "out")["llava_aim_synthimg_gen"]] == [0, 1]


# -- efficiency in the results, resume without mixing, batches (issue 15) -----------------------
def _results(out_dir: Path) -> dict:
    [path] = list(out_dir.rglob("*_results.json"))
    return json.loads(path.read_text())


def _journal_lines(out_dir: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in out_dir.rglob("journal.rank*.jsonl"))


def _served(stderr: str):
    """(answered from the journal, computed) summed over the plugin's log lines."""
    found = re.findall(r"(\d+) of (\d+) \w+ requests answered from the resume journal, (\d+) computed", stderr)
    return sum(int(a) for a, _, _ in found), sum(int(c) for _, _, c in found)


def test_results_file_carries_the_efficiency_figures(one_process_run):
    tmp, result = one_process_run
    assert result.returncode == 0
    data = _results(tmp / "out")
    throughput = data["throughput"]  # gen_metrics.log_metrics, one entry per generate call
    assert throughput["avg_prefill_ms"] > 0 and throughput["avg_time_to_first_token_ms"] >= throughput["avg_prefill_ms"]
    assert throughput["avg_visual_tokens_after_merge"] == 4 * 49 + 1
    assert throughput["avg_visual_tokens_before_merge"] == 4 * 196 + 1
    assert throughput["total_gen_tokens"] > 0 and throughput["avg_peak_memory_mib"] >= 0
    overall = data["efficiency"]["overall"]  # TokenCounts, summed by lmms-eval
    assert overall["total_input_tokens"] > 0 and overall["total_output_tokens"] > 0
    for path in (tmp / "out").rglob("*_samples_*.jsonl"):
        for line in path.read_text().splitlines():
            for counts in json.loads(line)["token_counts"]:
                assert counts["prefill_ms"] > 0 and counts["sum_tokens_over_layers"] > 0
                assert counts["visual_tokens_after_merge"] == 4 * 49 + 1


def test_killed_run_resumes_to_the_same_results_and_another_setting_mixes_nothing(one_process_run, tmp_path):
    import signal
    import time

    base, first = one_process_run
    assert first.returncode == 0
    # the same HF_HOME: the task's clips at the same paths (a request's key includes its media)
    settings = dict(PRETRAINED="tiny-llava-onevision", TASKS=VIDEO_TASKS, FRAMES="4", LIMIT="3",
                    HF_HOME=str(base / "hf"))
    env = {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "DEVICE": "cpu", "OUTPUT_DIR": str(tmp_path / "out"), "OMP_NUM_THREADS": "1",
           **settings}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.Popen(["bash", str(ROOT / "video_bench_eval.sh")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while _journal_lines(tmp_path / "out") < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # as a preempted job: no clean-up of any kind
    proc.wait()
    answered = _journal_lines(tmp_path / "out")
    total = 3 + 3 * 4  # generate_until requests + one loglikelihood request per option
    assert 2 <= answered < total, "the run was not stopped halfway"
    assert not list((tmp_path / "out").rglob("*_results.json"))

    rerun = _run_script("video_bench_eval.sh", tmp_path, **settings)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    served, computed = _served(rerun.stderr)
    assert served >= answered - 1 and served + computed == total and computed < total  # fewer model calls
    assert _results(tmp_path / "out")["results"] == _results(base / "out")["results"]
    assert _samples(tmp_path / "out") == _samples(base / "out")

    other = _run_script("video_bench_eval.sh", tmp_path, RETENTION="0.5", **settings)
    assert other.returncode == 0, other.stderr[-3000:]
    served, computed = _served(other.stderr)
    assert served == 0 and computed == total  # another setting: nothing cached is reused
    log = re.sub(r"\x1b\[[0-9;]*m", "", other.stdout + other.stderr)  # lmms-eval logs in colour
    assert "ResponseCache stats: 0 hits" in log
    folders = [p for p in (tmp_path / "out" / "cache").iterdir() if p.is_dir()]
    assert len(folders) == 2  # one folder per setting


def test_batch_two_equals_batch_one_through_lmms_eval(one_process_run, tmp_path):
    base, first = one_process_run
    assert first.returncode == 0
    result = _run_script("video_bench_eval.sh", tmp_path, PRETRAINED="tiny-llava-onevision", TASKS=VIDEO_TASKS,
                         FRAMES="4", LIMIT="3", BATCH_SIZE="2", CACHE="0")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert _samples(tmp_path / "out") == _samples(base / "out")
    data = _results(tmp_path / "out")
    assert data["results"] == _results(base / "out")["results"]
    assert data["config"]["batch_size"] in (2, "2")
    assert data["throughput"]["avg_batch_size"] == pytest.approx(1.5)  # 3 requests: a batch of 2, then 1


# -- the official AIM README's lmms-eval commands, the model name swapped (issue: paper-table runs) -------
def _lmms_eval(tmp: Path, model: str, model_args: str, tasks: str = "llava_aim_synthvid_mc", limit: str = "2"):
    env = {**os.environ, "HF_HOME": str(tmp / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "lmms_eval", "--model", model, "--model_args", model_args, "--tasks", tasks,
               "--include_path", str(ROOT / "llava" / "eval" / "tasks"), "--device", "cpu", "--batch_size", "1",
               "--limit", limit, "--output_path", str(tmp / "out")]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("model, model_args, notes", [
    # official: --model llava_onevision --model_args pretrained=lmms-lab/llava-onevision-qwen2-7b-ov,
    #           conv_template=qwen_1_5,model_name=llava_qwen,attn_implementation=eager
    ("llava_onevision_aim", "pretrained=tiny-llava-onevision,conv_template=qwen_1_5,model_name=llava_qwen,"
                            "attn_implementation=eager",
     ["conv_template='qwen_1_5' (moot, accepted)", "model_name='llava_qwen' (moot, accepted)",
      "does not need eager attention"]),
    # official: --model qwen2_vl --model_args pretrained=Qwen/Qwen2-VL-7B-Instruct,max_num_frames=32,max_pixels=200704
    ("qwen2_vl_aim", "pretrained=tiny-qwen2-vl,max_num_frames=32,max_pixels=200704",
     ["max_num_frames=32 (applied)"]),
])
def test_official_readme_commands_run_through_the_plugin(tmp_path, model, model_args, notes):
    done = _lmms_eval(tmp_path, model, model_args)
    log = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)
    data = _results(tmp_path / "out")  # lmms-eval exits 0 on failure too: the results file is the proof
    assert 0.0 <= data["results"]["llava_aim_synthvid_mc"]["acc,none"] <= 1.0, log[-3000:]
    assert data["config"]["model"] == model
    for note in notes:
        assert note in log, log[-3000:]
    assert "unknown model_args" not in log

