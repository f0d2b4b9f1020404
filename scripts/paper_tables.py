#!/usr/bin/env python
"""Every row of the AIM paper's tables as a named setting, and one runner over them.

    python scripts/paper_tables.py --list                       # every row, its setting, its paper numbers
    python scripts/paper_tables.py --dry-run [ROW ...]          # the exact commands (default: all rows)
    python scripts/paper_tables.py --run [ROW ...]              # run them here, one after another
    python scripts/paper_tables.py --slurm FILE [ROW ...] [--partition P --gpus N --time T --account A]
    python scripts/collect_results.py --paper eval_results/paper   # the tables, paper | ours | difference

Each row is one run of the existing evaluation script (video_bench_eval.sh or
scripts/image_bench_eval.sh) with that row's settings, writing into OUTPUT_ROOT/<row name>
(default eval_results/paper). Environment variables set when this script runs (PRETRAINED,
LIMIT, DEVICE, FRAMES, TASKS, NUM_PROCESSES, BATCH_SIZE, HF_HOME, ...) pass through to every
command and win over the row's own values; EXTRA_MODEL_ARGS is appended to the row's. A row
is skipped (unless --force) only when a run of exactly its setting is complete: the setting
folder its run would use (the same key: resolved setting, checkpoint, code, library versions)
holds the completion record of a run without LIMIT with every task; a row cut short resumes
from that folder (docs/evaluation.md). Rows that name the same setting (e.g. ablation/14-22 and
video/aim) share one run. Relative paths (--output-root, CACHE_DIR) are taken from the
repository root, where the commands run.

Settings of the baselines: the paper gives their TFLOPs, not their knobs. Each knob below is
the value at which this project's analyzer (llava.analysis, as executed) reproduces the
paper's TFLOPs for that row (tests/test_paper_runner.py checks it); PruMerge rows use the
method's defaults.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VIDEO = "video_bench_eval.sh"
IMAGE = "scripts/image_bench_eval.sh"
STOCK = "scripts/stock_model_eval.sh"  # a stock lmms-eval model, not the AIM plugin (llava/eval/stock.py)
# egoschema_subset and vqav2_val score locally; the paper's full EgoSchema and VQAv2 test-dev
# are scored on the benchmarks' servers (collect_results --paper marks the substitutes).
VIDEO_TASKS = "videomme,videomme_w_subtitle,mvbench,mlvu_dev,egoschema_subset,nextqa_mc_test,perceptiontest_val_mc"
LONG_TASKS = "videomme,videomme_w_subtitle,mlvu_dev,egoschema_subset"
VIDEOMME = "videomme"
IMAGE_TASKS = "vqav2_val,gqa,mme,textvqa_val,scienceqa_img,mmbench_en_dev,pope"
QWEN_TASKS = "videomme,videomme_w_subtitle"
# LongVA-7B as the paper's video table reports it: 128 frames (the count whose 128 x 144 tokens +
# 100 text tokens give the printed 381.09 TFLOPs / 2186.04 ms), LongVA's own lmms-eval settings
# (github.com/EvolvingLMMs-Lab/LongVA README at 1021cad: conv_template qwen_1_5, model_name llava_qwen, decord)
LONGVA_TASKS = "videomme,videomme_w_subtitle,mlvu_dev"
# The 2025 comparison (issue 21): the benchmarks the 2025 token-reduction papers report on
# LLaVA-OneVision-7B; its anchor rows share the video table's runs (a superset of these tasks).
COMPARISON_TASKS = "videomme,mvbench,mlvu_dev,egoschema_subset"
COMPARISON_METHODS = ("visionzip", "dycoke", "fastvid", "holitom")
COMPARISON_BUDGETS = (0.25, 0.1)  # the fraction of the visual tokens entering the LLM (retention)
# Where a method's budget is not plain ``retention`` at those two values: (row label, RETENTION,
# its own model_args, what the row is). VisionZip's OneVision port keeps S whole tokens of a
# frame's 196 (scripts/eval_ov-7b_visionzip.sh of cokeshao/HoliTom: S = 50 and 20 for its 0.25 and
# 0.10 rows); DyCoke's count is set by k, and at most it drops k of the tokens of three frames in
# four, so no k reaches 25% (k = 1: 28.1% of 32 x 196) and its official k = 0.7 keeps 49.4%.
COMPARISON_SETTINGS = {
    "visionzip": (("r0.25", f"{50 / 196:.6g}", "", "50 of each frame's 196 tokens (25.5%)"),
                  ("r0.1", f"{20 / 196:.6g}", "", "20 of each frame's 196 tokens (10.2%)")),
    "dycoke": (("k1", "1", ",dycoke_k=1", "k = 1, the fewest DyCoke keeps: 28.1% (no k reaches 25% or 10%)"),
               ("official", "1", "", "its official k = 0.7: 49.4%")),
}
LONGVA_ARGS = ("pretrained=lmms-lab/LongVA-7B,conv_template=qwen_1_5,model_name=llava_qwen,"
               "video_decode_backend=decord,max_frames_num=128")
# Variables of the evaluation scripts a user may set for every row (they win over the row's).
PASS_THROUGH = ("PRETRAINED", "TASKS", "FRAMES", "LIMIT", "DEVICE", "NUM_PROCESSES", "LAUNCHER", "BATCH_SIZE",
                "CACHE", "CACHE_DIR", "INCLUDE_PATH", "PYTHON", "HF_HOME", "MASTER_PORT", "NNODES", "NODE_RANK",
                "MASTER_ADDR", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "MAX_PIXELS", "POSITIONS")


@dataclass(frozen=True)
class Row:
    """One row of a paper table: which script, with which settings."""

    name: str
    script: str
    env: Dict[str, str]
    describe: str
    same_as: Optional[str] = None  # another row with exactly this setting: one run serves both
    method: str = "aim"
    note: str = ""

    @property
    def folder(self) -> str:
        return self.same_as or self.name


AUTO = "auto"  # the default schedule: (14, 22) on LLaVA-OV-7B's 28 layers, (13, 21) on LLaVA-1.5-7B


def _aim(retention, l1=None, l2=None, tasks=VIDEOMME, **env) -> Dict[str, str]:
    """AIM settings. l1=AUTO leaves the layers to the plugin (the family's official schedule, else
    the paper's (14, 22) of 28 scaled): exactly the paper's on its checkpoints, and still valid on
    a model of another depth (the tiny models of the offline check); None: no pruning."""
    out = {"RETENTION": f"{retention:g}", "TASKS": tasks, **env}
    if l1 is None:
        out.update(L1="none", L2="none")
    elif l1 != AUTO:
        out.update(L1=str(l1), L2=str(l2))
    return out


def _baseline(method: str, tasks: str, **model_args) -> Dict[str, str]:
    args = ",".join([f"method={method}"] + [f"{k}={v}" for k, v in model_args.items()])
    return {"RETENTION": "1", "TASKS": tasks, "EXTRA_MODEL_ARGS": args}


def _pct(r: float) -> str:
    return f"{100 * r:.3g}%"


def build_rows() -> List[Row]:
    rows = [
        # the video table (LLaVA-OneVision-7B, 32 frames), after its first row: LongVA-7B at 128 frames
        Row("video/longva", STOCK, {"MODEL": "longva", "MODEL_ARGS": LONGVA_ARGS, "TASKS": LONGVA_TASKS},
            "LongVA-7B as published (lmms-eval's longva model), 128 frames", method="longva",
            note="another model: 128 x 144 tokens give the paper's 381.09 TFLOPs / 2186.04 ms"),
        Row("video/baseline", VIDEO, {"AIM": "0", "TASKS": VIDEO_TASKS}, "LLaVA-OV-7B, no AIM"),
        Row("video/aim", VIDEO, _aim(0.25, AUTO, None, VIDEO_TASKS), "AIM: merge to 25%, prune (14, 22)"),
        Row("video/vtw", VIDEO, _baseline("vtw", VIDEO_TASKS, drop_layers=6), "VTW, visual tokens out from layer 6",
            method="vtw", note="K=6 gives the paper's 22.38 TFLOPs"),
        Row("video/pdrop", VIDEO, _baseline("pdrop", VIDEO_TASKS, drop_layers="2/5/11", drop_ratio=0.5),
            "PyramidDrop, lambda 0.5 at layers 2/5/11", method="pdrop",
            note="layers matched to the paper's 24.22 TFLOPs (24.20); the default 7/14/21 cannot go below 24.9"),
        Row("video/fastv", VIDEO, _baseline("fastv", VIDEO_TASKS, drop_layers=2, drop_ratio=0.836),
            "FastV, K=2, R=83.6%", method="fastv", note="R matched to the paper's 21.24 TFLOPs (21.27)"),
        Row("video/prumerge", VIDEO, _baseline("prumerge", VIDEO_TASKS), "LLaVA-PruMerge (defaults)",
            method="prumerge"),
        Row("video/prumerge_plus", VIDEO, _baseline("prumerge_plus", VIDEO_TASKS), "LLaVA-PruMerge+ (defaults)",
            method="prumerge_plus", note="not in the paper's video table"),
        # long videos
        Row("long/aim-192", VIDEO, _aim(0.25, AUTO, None, LONG_TASKS, FRAMES="192"), "AIM at 192 frames, (14, 22)"),
    ]
    # merging sweep, without and with (14, 22)
    for k in range(7):
        r = 1 / 2**k
        name = f"sweep/r{r:g}"
        if k == 0:
            rows.append(Row(name, VIDEO, {"AIM": "0", "TASKS": VIDEOMME}, "100%: no merging, no pruning",
                            same_as="video/baseline"))
        else:
            rows.append(Row(name, VIDEO, _aim(r), f"merge to {_pct(r)}, no pruning"))
    for k in range(7):
        r = 1 / 2**k
        rows.append(Row(f"sweep/r{r:g}-14-22", VIDEO, _aim(r, AUTO), f"merge to {_pct(r)}, prune (14, 22)",
                        same_as="video/aim" if k == 2 else None))
    # the (l1, l2) ablation at 25%
    for l1, l2 in ((28, 29), (21, 29), (14, 29), (7, 29), (21, 22), (14, 22), (7, 22), (14, 15), (7, 15), (7, 8)):
        same = {(14, 22): "video/aim", (28, 29): "sweep/r0.25"}.get((l1, l2))
        note = "l1 = 28 prunes nothing on 28 layers: merging only" if l1 == 28 else ""
        rows.append(Row(f"ablation/{l1}-{l2}", VIDEO, _aim(0.25, l1, l2), f"merge to 25%, prune ({l1}, {l2})",
                        same_as=same, note=note))
    # the image table (LLaVA-1.5-7B), two budgets; pruning (13, 21) as the official code
    rows += [
        Row("image/baseline", IMAGE, {"AIM": "0", "TASKS": IMAGE_TASKS}, "LLaVA-1.5-7B, no AIM"),
        Row("image/b1/aim", IMAGE, _aim(0.4375, AUTO, None, IMAGE_TASKS), "AIM: merge to 43.75%, prune (13, 21)"),
        Row("image/b1/vtw", IMAGE, _baseline("vtw", IMAGE_TASKS, drop_layers=8), "VTW, out from layer 8",
            method="vtw", note="K=8 gives the paper's 2.43 TFLOPs (40 text tokens)"),
        Row("image/b1/pdrop", IMAGE, _baseline("pdrop", IMAGE_TASKS, drop_layers="2/5/12", drop_ratio=0.5),
            "PyramidDrop, lambda 0.5 at layers 2/5/12", method="pdrop", note="matched to the paper's 2.36 TFLOPs (2.35)"),
        Row("image/b1/fastv", IMAGE, _baseline("fastv", IMAGE_TASKS, drop_layers=2, drop_ratio=0.775),
            "FastV, K=2, R=77.5%", method="fastv", note="matched to the paper's 2.58 TFLOPs"),
        Row("image/b1/prumerge_plus", IMAGE, _baseline("prumerge_plus", IMAGE_TASKS), "LLaVA-PruMerge+ (defaults)",
            method="prumerge_plus"),
        Row("image/b2/aim", IMAGE, _aim(0.125, AUTO, None, IMAGE_TASKS), "AIM: merge to 12.5%, prune (13, 21)"),
        Row("image/b2/vtw", IMAGE, _baseline("vtw", IMAGE_TASKS, drop_layers=3), "VTW, out from layer 3",
            method="vtw", note="K=3 gives the paper's 1.24 TFLOPs"),
        Row("image/b2/fastv", IMAGE, _baseline("fastv", IMAGE_TASKS, drop_layers=2, drop_ratio=0.981),
            "FastV, K=2, R=98.1%", method="fastv", note="matched to the paper's 1.12 TFLOPs"),
        Row("image/b2/prumerge", IMAGE, _baseline("prumerge", IMAGE_TASKS), "LLaVA-PruMerge (defaults)",
            method="prumerge"),
    ]
    # Qwen2-VL (plugin model qwen2_vl_aim): the official run, 32 frames at max_pixels 200704 on
    # the official grid positions (video_bench_eval.sh's MAX_PIXELS / POSITIONS for this model)
    qwen = {"MODEL": "qwen2_vl_aim", "PRETRAINED": "Qwen/Qwen2-VL-7B-Instruct", "FRAMES": "32",
            "MAX_PIXELS": "200704", "POSITIONS": "official", "TASKS": QWEN_TASKS}
    rows += [
        Row("qwen2vl/baseline", VIDEO, {**qwen, "AIM": "0"}, "Qwen2-VL-7B-Instruct, no AIM", method="qwen2_vl_aim"),
        Row("qwen2vl/aim", VIDEO, {**qwen, "RETENTION": "0.25"}, "Qwen2-VL-7B-Instruct + AIM (25%, (14, 22))",
            method="qwen2_vl_aim"),
    ]
    # Qwen3-VL-8B (plugin model qwen3_vl_aim): OUR runs, not the paper's (it has no Qwen3-VL).
    # 32 frames at the adapter's max_pixels 262144 (16 x 16 merged tokens per 2 frames, the
    # token count of the Qwen2-VL run; docs/qwen3_vl.md), the default pruning schedule.
    qwen3 = {"MODEL": "qwen3_vl_aim", "PRETRAINED": "Qwen/Qwen3-VL-8B-Instruct", "FRAMES": "32",
             "MAX_PIXELS": "262144", "POSITIONS": "original", "TASKS": VIDEOMME}
    rows += [
        Row("qwen3vl/baseline", VIDEO, {**qwen3, "AIM": "0"}, "Qwen3-VL-8B-Instruct, no AIM", method="qwen3_vl_aim",
            note="ours: not in the paper"),
        Row("qwen3vl/aim", VIDEO, {**qwen3, "RETENTION": "0.25"}, "Qwen3-VL-8B-Instruct + AIM (25%, default schedule)",
            method="qwen3_vl_aim", note="ours: not in the paper"),
    ]
    for r in (0.5, 0.125, 0.0625):
        rows.append(Row(f"qwen3vl/r{r:g}", VIDEO, {**qwen3, "RETENTION": f"{r:g}"},
                        f"Qwen3-VL-8B-Instruct, merge to {_pct(r)}, default schedule", method="qwen3_vl_aim",
                        note="ours: not in the paper"))
    return rows + comparison_rows()


def comparison_rows() -> List[Row]:
    """The 2025 comparison on LLaVA-OV-7B at 32 frames (ours, not in the paper): the baseline, AIM,
    VisionZip / DyCoke / FastVID / HoliTom at about 25% and 10% of the visual tokens (each
    method's budget knob, retention), and FastV / PDrop as anchors (the video table's runs)."""
    rows = [
        Row("comparison/baseline", VIDEO, {"AIM": "0", "TASKS": VIDEO_TASKS}, "LLaVA-OV-7B, no reduction",
            same_as="video/baseline"),
        Row("comparison/aim", VIDEO, _aim(0.25, AUTO, None, VIDEO_TASKS), "AIM: merge to 25%, prune (14, 22)",
            same_as="video/aim"),
    ]
    for method in COMPARISON_METHODS:
        plain = tuple((f"r{b:g}", f"{b:g}", "", f"{_pct(b)} of the visual tokens") for b in COMPARISON_BUDGETS)
        for label, retention, knobs, what in COMPARISON_SETTINGS.get(method, plain):
            env = {"RETENTION": retention, "TASKS": COMPARISON_TASKS, "EXTRA_MODEL_ARGS": f"method={method}{knobs}"}
            rows.append(Row(f"comparison/{method}/{label}", VIDEO, env,
                            f"{method}, {what} (its official defaults otherwise)", method=method,
                            note="ours: not in the paper"))
    rows += [
        Row("comparison/fastv", VIDEO, _baseline("fastv", VIDEO_TASKS, drop_layers=2, drop_ratio=0.836),
            "FastV (anchor), K=2, R=83.6%", same_as="video/fastv", method="fastv"),
        Row("comparison/pdrop", VIDEO, _baseline("pdrop", VIDEO_TASKS, drop_layers="2/5/11", drop_ratio=0.5),
            "PyramidDrop (anchor), lambda 0.5 at layers 2/5/11", same_as="video/pdrop", method="pdrop"),
    ]
    return rows


ROWS = build_rows()
BY_NAME = {row.name: row for row in ROWS}


# -- what can run here ----------------------------------------------------------------------------
def unavailable(row: Row) -> Optional[str]:
    """Why this install cannot run the row (a method or plugin model it lacks), else None. Methods
    are looked up when asked (llava.aim.policy.SPECS): a row of a method registered later runs."""
    from llava.aim.policy import SPECS
    from llava.eval.registry import MODELS

    if row.script == STOCK:
        from llava.eval.stock import missing

        return missing(row.env["MODEL"])
    if row.method in SPECS:  # "aim" included
        return None
    if row.method in MODELS:
        return None
    if row.method.endswith("_aim"):
        return f"plugin model {row.method!r} is not in this install"
    return f"needs method {row.method} (not registered in this install: llava.aim.policy.SPECS)"


def select(names: Sequence[str]) -> List[Row]:
    """Rows by name (all when none; a prefix such as 'sweep/' selects a group)."""
    if not names:
        return list(ROWS)
    chosen: List[Row] = []
    for name in names:
        found = [BY_NAME[name]] if name in BY_NAME else [r for r in ROWS if r.name.startswith(name)]
        if not found:
            import difflib

            close = difflib.get_close_matches(name, list(BY_NAME), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else " (see --list)"
            raise SystemExit(f"paper_tables.py: error: no row named {name!r}{hint}")
        chosen += [r for r in found if r not in chosen]
    return chosen


def runs(rows: Sequence[Row]) -> List[Row]:
    """The distinct runs behind ``rows``: a row sharing another's setting runs as that row."""
    out: List[Row] = []
    for row in rows:
        target = BY_NAME[row.same_as] if row.same_as else row
        if target not in out:
            out.append(target)
    return out


# -- commands --------------------------------------------------------------------------------------
def row_env(row: Row, output_root: str, environ: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The row's variables, with the user's pass-through variables on top."""
    environ = dict(os.environ if environ is None else environ)
    env = dict(row.env)
    for key in PASS_THROUGH:
        if environ.get(key):
            env[key] = environ[key]
    if environ.get("EXTRA_MODEL_ARGS"):
        env["EXTRA_MODEL_ARGS"] = ",".join(v for v in (env.get("EXTRA_MODEL_ARGS"), environ["EXTRA_MODEL_ARGS"]) if v)
    env["OUTPUT_DIR"] = str(Path(output_root) / row.folder)
    return env


def command(row: Row, output_root: str, environ: Optional[Dict[str, str]] = None) -> str:
    """The exact shell command of a row, runnable from the repository root."""
    env = row_env(row, output_root, environ)
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return f"env {assignments} bash {row.script}"


def _under_root(path: str) -> Path:
    """A path as the scripts see it: they run from the repository root."""
    return Path(path) if os.path.isabs(path) else ROOT / path


def _python(environ: Dict[str, str]) -> str:
    """The interpreter the evaluation scripts pick (scripts/lmms_eval_common.sh)."""
    if environ.get("PYTHON"):
        return environ["PYTHON"]
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if not environ.get("VIRTUAL_ENV") and os.access(venv, os.X_OK) else "python"


def cache_dir(row: Row, output_root: str, environ: Optional[Dict[str, str]] = None) -> Path:
    """The root of the row's setting folders (the scripts' CACHE_DIR)."""
    env = row_env(row, output_root, environ)
    return _under_root(env.get("CACHE_DIR") or str(Path(env["OUTPUT_DIR"]) / "cache"))


def is_complete(row: Row, output_root: str, environ: Optional[Dict[str, str]] = None) -> bool:
    """Whether a run of exactly the row's setting finished: the setting folder the row's run would
    use (its key: resolved setting, checkpoint, code, library versions; llava/eval/resume.py)
    holds a completion record, written only by a run without LIMIT, naming every task the row
    asks for. The script itself says what it would run (PRINT_MODEL_ARGS=1), and the key is
    computed by the interpreter the run would use. A checkpoint that cannot be resolved here
    (not cached, offline) is not complete."""
    environ = dict(os.environ if environ is None else environ)
    env = {**environ, **row_env(row, output_root, environ), "PRINT_MODEL_ARGS": "1"}
    printed = subprocess.run(["bash", row.script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if printed.returncode != 0:
        return False
    check = subprocess.run([_python(env), "-m", checker(row), "is-complete", "--cache-dir",
                            str(cache_dir(row, output_root, environ)), *shlex.split(printed.stdout)],
                           cwd=ROOT, env={k: v for k, v in env.items() if k != "PRINT_MODEL_ARGS"},
                           capture_output=True, text=True, timeout=600)
    return check.returncode == 0


def checker(row: Row) -> str:
    """The module that knows whether a run of the row's setting is complete: the plugin's resume
    key, or a stock model's folder (llava/eval/stock.py)."""
    return "llava.eval.stock" if row.script == STOCK else "llava.eval.resume"


# -- SLURM ---------------------------------------------------------------------------------------
def sbatch_script(rows: Sequence[Row], output_root: str, partition: Optional[str], gpus: int, time: str,
                  account: Optional[str], cpus: int, mem: Optional[str], exports: Sequence[str],
                  environ: Optional[Dict[str, str]] = None, max_parallel: Optional[int] = None) -> str:
    """An sbatch array script: one array task per run; each runs the evaluation script with its
    row's settings (NUM_PROCESSES = the task's GPUs) and skips a row that is already complete."""
    environ = dict(os.environ if environ is None else environ)
    if gpus > 1 and not environ.get("NUM_PROCESSES"):
        environ["NUM_PROCESSES"] = str(gpus)
    todo = runs(rows)
    output_root = str(_under_root(output_root))
    logs = Path(output_root) / "slurm"  # absolute: Slurm opens the log before the job runs a line
    array = f"0-{len(todo) - 1}" + (f"%{max_parallel}" if max_parallel else "")
    lines = ["#!/bin/bash", "# Written by scripts/paper_tables.py --slurm; one array task per run.",
             "#SBATCH --job-name=llava-aim-paper", f"#SBATCH --array={array}",
             f"#SBATCH --gres=gpu:{gpus}", f"#SBATCH --cpus-per-task={cpus}", f"#SBATCH --time={time}",
             f"#SBATCH --chdir={ROOT}", f"#SBATCH --output={logs}/%x-%A_%a.out", "#SBATCH --requeue"]
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    if account:
        lines.append(f"#SBATCH --account={account}")
    if mem:
        lines.append(f"#SBATCH --mem={mem}")
    lines += ["set -euo pipefail", f"cd {shlex.quote(str(ROOT))}", f"mkdir -p {shlex.quote(str(logs))}"]
    lines += [f"export {shlex.quote(e)}" for e in exports]
    lines.append("ROWS=(")
    lines += [f"  {shlex.quote(r.name)}" for r in todo]
    lines.append(")")
    lines.append("COMMANDS=(")
    lines += [f"  {shlex.quote(command(r, output_root, environ))}" for r in todo]
    lines.append(")")
    lines.append("CHECKERS=(")
    lines += [f"  {checker(r)}" for r in todo]
    lines.append(")")
    lines.append("CACHE_DIRS=(")
    lines += [f"  {shlex.quote(str(cache_dir(r, output_root, environ)))}" for r in todo]
    lines.append(")")
    lines += [
        'i=${SLURM_ARRAY_TASK_ID:?run this file with sbatch}',
        'row=${ROWS[$i]}',
        'python_bin=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python)}',
        '# a row is skipped when a run of exactly its setting (the same key, no LIMIT) is complete;',
        '# a row cut short resumes from its setting folder',
        'read -r -a printed <<< "$(eval "PRINT_MODEL_ARGS=1 ${COMMANDS[$i]}")"  # --model M --model_args A --tasks T',
        'if [[ "${FORCE:-0}" != "1" ]] && "$python_bin" -m "${CHECKERS[$i]}" is-complete '
        '--cache-dir "${CACHE_DIRS[$i]}" "${printed[@]}" >/dev/null 2>&1; then',
        '    echo "$row: complete in ${CACHE_DIRS[$i]} (FORCE=1 to run it again)"',
        '    exit 0',
        'fi',
        'echo "$row: ${COMMANDS[$i]}"',
        'eval "${COMMANDS[$i]}"',
    ]
    return "\n".join(lines) + "\n"


def write_sbatch(path: Path, text: str, logs: Path) -> Optional[str]:
    """Write the sbatch file and create the folder of its Slurm logs (Slurm opens a job's log
    before the job runs, so a missing folder loses it); why not, in one line, else None."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        return f"cannot write {path}: folder {folder} does not exist"
    if not os.access(folder, os.W_OK):
        return f"cannot write {path}: folder {folder} is not writable"
    try:
        logs.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        return f"cannot write {path} and its log folder {logs}: {exc.strerror or exc}"
    return None


# -- the command line ------------------------------------------------------------------------------
def paper_numbers() -> Dict[str, Dict[str, object]]:
    """Row name -> the paper's numbers for it (column -> value; a row in several tables: each
    column once), from llava/eval/paper/tables.json."""
    from llava.eval.results import load_paper_tables

    found: Dict[str, Dict[str, object]] = {}
    for table in load_paper_tables()["tables"]:
        for entry in table["rows"]:
            numbers = found.setdefault(entry["row"], {})
            for column, value in entry["paper"].items():
                numbers.setdefault(column, value)
    return found


def list_rows(rows: Sequence[Row]) -> str:
    numbers = paper_numbers()
    out = []
    for row in rows:
        flags = []
        if row.same_as:
            flags.append(f"same run as {row.same_as}")
        why = unavailable(row)
        if why:
            flags.append(f"not runnable here: {why}")
        if row.note:
            flags.append(row.note)
        paper = numbers.get(row.name, {})
        shown = ", ".join(f"{k} {v}" for k, v in paper.items()) or "no paper number"
        out.append(f"{row.name:<24} {row.describe}" + (f"  [{'; '.join(flags)}]" if flags else "")
                   + f"\n{'':<24} paper: {shown}")
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="paper_tables.py", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.partition("\n")[2].strip("\n"))  # the rest: once
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--list", action="store_true", help="show every row (or the ROWs named)")
    mode.add_argument("--dry-run", action="store_true", help="print each run's exact command")
    mode.add_argument("--run", action="store_true", help="run the rows here, one after another")
    mode.add_argument("--slurm", metavar="FILE", help="write an sbatch array script (one task per run)")
    parser.add_argument("rows", nargs="*", help="row names or prefixes (e.g. sweep/); default: every row")
    parser.add_argument("--output-root", default=os.environ.get("OUTPUT_ROOT", "eval_results/paper"),
                        help="each row writes to OUTPUT_ROOT/<row name> (default eval_results/paper)")
    parser.add_argument("--force", action="store_true", help="--run: also rows already complete")
    parser.add_argument("--partition")
    parser.add_argument("--account")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs per array task (NUM_PROCESSES; default 1)")
    parser.add_argument("--time", default="24:00:00", help="time limit per array task (default 24:00:00)")
    parser.add_argument("--cpus", type=int, default=8, help="CPUs per array task (default 8)")
    parser.add_argument("--mem", help="memory per array task (e.g. 64G)")
    parser.add_argument("--max-parallel", type=int, help="at most this many array tasks at once")
    parser.add_argument("--export", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment variable every array task exports (repeatable), e.g. HF_HOME=/shared/hf")
    args = parser.parse_args(argv)
    rows = select(args.rows)
    if args.list:
        print(list_rows(rows))
        return 0
    todo = runs(rows)
    why_not = {row.name: unavailable(row) for row in todo}
    runnable = [r for r in todo if not why_not[r.name]]
    skipped = [r for r in todo if why_not[r.name]]
    if args.dry_run:
        for row in todo:
            why = why_not[row.name]
            also = [r.name for r in rows if r.same_as == row.name]
            print(f"# {row.name}: {row.describe}" + (f" (also serves {', '.join(also)})" if also else "")
                  + (f" (not runnable here: {why})" if why else ""))
            print(command(row, args.output_root))
        return 0
    for row in skipped:
        print(f"paper_tables.py: skipping {row.name}: {why_not[row.name]}", file=sys.stderr)
    if args.slurm:
        if args.gpus < 1 or args.cpus < 1:
            raise SystemExit("paper_tables.py: error: --gpus and --cpus must be at least 1")
        if not runnable:
            raise SystemExit("paper_tables.py: error: no runnable row selected")
        bad = [e for e in args.export if "=" not in e]
        if bad:
            raise SystemExit(f"paper_tables.py: error: --export takes KEY=VALUE, got {bad[0]!r}")
        text = sbatch_script(runnable, args.output_root, args.partition, args.gpus, args.time, args.account,
                             args.cpus, args.mem, args.export, max_parallel=args.max_parallel)
        problem = write_sbatch(Path(args.slurm), text, _under_root(args.output_root) / "slurm")
        if problem:
            print(f"paper_tables.py: error: {problem}", file=sys.stderr)
            return 2
        print(f"wrote {args.slurm}: {len(runnable)} array tasks; submit with: sbatch {args.slurm}")
        return 0
    failed = []
    for row in runnable:
        if not args.force and is_complete(row, args.output_root):
            print(f"{row.name}: complete, skipped (--force to run it again)", file=sys.stderr)
            continue
        print(f"{row.name}: {command(row, args.output_root)}", file=sys.stderr, flush=True)
        done = subprocess.run(command(row, args.output_root), shell=True, cwd=ROOT)
        if done.returncode != 0:
            failed.append(row.name)
    if failed:
        print(f"paper_tables.py: {len(failed)} row(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
