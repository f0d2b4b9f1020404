"""scripts/gpu_check.sh: the prepared GPU check, run here in its CPU smoke mode (same steps,
small sizes, no wheel install); its JSON and markdown outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def test_dry_run_lists_the_steps():
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True)
    assert done.returncode == 0
    for step in ("install", "bench", "tolerance", "batching", "flops", "bench_qwen", "report", "--fetch-wheels"):
        assert step in done.stdout
    assert "set -uo" not in done.stdout


def test_unknown_mode_exit_2():
    done = subprocess.run(["bash", str(SCRIPT), "--gpu-please"], capture_output=True, text=True)
    assert done.returncode == 2 and "usage" in done.stderr


def test_gpu_mode_without_wheels_says_what_to_do(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True,
                          env={**os.environ, "WHEELS": str(tmp_path / "none"), "OUT": str(tmp_path / "out")})
    assert done.returncode == 2 and "--fetch-wheels" in done.stderr


@pytest.mark.slow
def test_cpu_smoke_writes_one_json_and_one_markdown(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(SCRIPT), "--cpu-smoke"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]
    report = json.loads((out / "gpu_check.json").read_text())
    assert [s["step"] for s in report["steps"]] == ["environment", "bench", "tolerance", "batching", "flops",
                                                    "bench_qwen"]
    assert all(s["exit_status"] == 0 for s in report["steps"]), report["steps"]
    bench = report["bench"]
    names = [c["name"] for c in bench["language_model_prefill"]]
    assert names == ["baseline", "official", "mask", "merge-only", "aim"]
    assert bench["speedup_vs_official"] > 0 and bench["predicted"]["aim"]["speedup"] > 1
    qwen = report["bench_qwen"]
    assert qwen["model"] == "small-qwen2-vl" and qwen["input"]["temporal_groups"] == 1
    assert [c["name"] for c in qwen["end_to_end_prefill"]] == names
    tol = report["tolerance"]
    assert tol["remove_vs_mask_float32"]["max_rel"] < 1e-4  # removal equals the masked reference
    batch = report["batching"]
    assert set(batch["by_batch_size"]) == {"1", "2"} and all(batch["same_tokens_as_batch_1"].values())
    assert report["flops"]["aim"]["speedup"] > 5
    md = (out / "gpu_check.md").read_text()
    for heading in ("## llava-aim bench", "## Removal vs mask", "## Batching", "## Analyzer for this hardware"):
        assert heading in md
    assert "official code (mask, eager)" in md
    assert "## llava-aim bench --model small-qwen2-vl" in md and "1 temporal group x 16 tokens" in md
