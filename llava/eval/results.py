"""lmms-eval results files: checking that a run wrote them, and the paper-layout tables.

``python -m llava.eval.results check OUTPUT_DIR --since FILE --tasks a,b`` exits 0 and prints
the results file when the run wrote one with every task (lmms-eval itself exits 0 even when
the evaluation failed). ``scripts/collect_results.py`` builds the markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from llava.errors import AIMError, ResultsFileError

# task -> (column, metric key, factor to percent/points); columns in the paper's order.
VIDEO_COLUMNS: List[Tuple[str, str, str, float]] = [
    ("videomme", "VideoMME", "videomme_perception_score", 1.0),
    ("mlvu_dev", "MLVU", "mlvu_percetion_score", 1.0),  # lmms-eval's spelling
    ("egoschema_subset", "EgoSchema (subset)", "score", 100.0),
    ("egoschema", "EgoSchema", "score", 100.0),  # full set: scored on the challenge server
    ("nextqa_mc_test", "NExT-QA", "exact_match", 100.0),
    ("perceptiontest_val_mc", "PerceptionTest", "accuracy", 100.0),
    ("mvbench", "MVBench", "mvbench_accuracy", 1.0),
]
IMAGE_COLUMNS: List[Tuple[str, str, str, float]] = [
    ("vqav2_val", "VQAv2 (val)", "exact_match", 100.0),
    ("vqav2_test", "VQAv2 (test)", "exact_match", 100.0),
    ("gqa", "GQA", "exact_match", 100.0),
    ("mme", "MME", "mme_perception_score", 1.0),
    ("textvqa_val", "TextVQA", "exact_match", 100.0),
    ("scienceqa_img", "SQA-IMG", "exact_match", 100.0),
    ("mmbench_en_dev", "MMBench", "gpt_eval_score", 1.0),
    ("pope", "POPE (F1)", "pope_f1_score", 100.0),
]
VIDEO_MODELS = ("llava_onevision_aim", "qwen2_vl_aim", "qwen2_5_vl_aim")
TEXT_TOKENS = 100  # the analyzer's prompt length for the FLOPs column (the paper's setting)
# Analyzer shapes of the checkpoints the paper used (their llava-hf conversions).
LLM_OF_CHECKPOINT = {
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": "qwen2-7b",
    "llava-hf/llava-1.5-7b-hf": "llama-7b",
    "Qwen/Qwen2-VL-7B-Instruct": "qwen2-vl-7b",
    "Qwen/Qwen2.5-VL-7B-Instruct": "qwen2.5-vl-7b",
}


# -- reading ---------------------------------------------------------------------------------
def find_results_files(paths: Sequence[os.PathLike]) -> List[Path]:
    """Every ``*_results.json`` under the given files/folders, sorted."""
    found: List[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(p.rglob("*_results.json"))
        elif p.is_file():
            found.append(p)
        else:
            raise ResultsFileError(f"{p} does not exist: pass lmms-eval results JSON files or the folders holding them")
    return found


def load_results(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ResultsFileError(f"cannot read {path} as JSON ({exc}); pass lmms-eval *_results.json files") from exc
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict) or "config" not in data:
        raise ResultsFileError(f"{path} is not an lmms-eval results file (no 'results'/'config'); pass *_results.json files")
    return data


def parse_model_args(text: str) -> Dict[str, object]:
    """``k=v,...`` typed the way lmms-eval types model_args."""
    from lmms_eval.utils import simple_parse_args_string

    return simple_parse_args_string(text or "")


def task_names(data: dict) -> List[str]:
    return sorted(set(data.get("results", {})) | set(data.get("groups", {})) | set(data.get("group_subtasks", {})))


# -- checking a run ----------------------------------------------------------------------------
def check_run(output_dir: Path, since: Optional[Path], tasks: Sequence[str]) -> Path:
    """The newest results file written under ``output_dir`` after ``since``, holding ``tasks``."""
    if not Path(output_dir).is_dir():
        raise ResultsFileError(f"lmms-eval wrote nothing: {output_dir} does not exist (see the log above for the error)")
    newer_than = since.stat().st_mtime if since is not None else 0.0
    files = [f for f in find_results_files([output_dir]) if f.stat().st_mtime >= newer_than]
    if not files:
        raise ResultsFileError(
            f"lmms-eval wrote no results file under {output_dir} in this run: the evaluation failed "
            "(see the error above; rerun with --verbosity DEBUG for the full traceback)"
        )
    newest = max(files, key=lambda f: f.stat().st_mtime)
    present = set(task_names(load_results(newest)))
    missing = [t for t in tasks if t and t not in present]
    if missing:
        raise ResultsFileError(f"{newest} has no results for {missing}; the evaluation of those tasks failed")
    return newest


# -- the tables ------------------------------------------------------------------------------
@dataclass
class Run:
    """One setting (model + model_args); scores merged from every file of that setting."""

    model: str
    model_args: str
    scores: Dict[str, float] = field(default_factory=dict)  # task -> value (percent/points)
    limit: Optional[float] = None

    @property
    def is_video(self) -> bool:
        return self.model in VIDEO_MODELS


def collect_runs(files: Sequence[Path]) -> List[Run]:
    runs: Dict[Tuple[str, str], Run] = {}
    for path in files:
        data = load_results(path)
        config = data["config"]
        key = (str(config.get("model")), str(config.get("model_args") or ""))
        run = runs.setdefault(key, Run(model=key[0], model_args=key[1]))
        run.limit = config.get("limit") or run.limit
        for task, values in data["results"].items():
            score = _main_score(task, values)
            if score is not None:
                run.scores[task] = score
    return list(runs.values())


def _main_score(task: str, values: dict) -> Optional[float]:
    for name, _, metric, factor in VIDEO_COLUMNS + IMAGE_COLUMNS:
        if name == task:
            value = values.get(f"{metric},none")
            return float(value) * factor if isinstance(value, (int, float)) else None
    # A task outside the paper's tables: its first numeric metric, as a percentage if in [0, 1].
    for key, value in values.items():
        if key.endswith(",none") and "stderr" not in key and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value) * (100.0 if 0.0 <= value <= 1.0 else 1.0)
    return None


def run_setting(run: Run) -> dict:
    """What the run computed: checkpoint, frames and the AIM setting the plugin resolved."""
    from llava.eval.args import (
        DEFAULT_CHECKPOINTS,
        LOADER_DEFAULTS,
        PIXEL_ARGS,
        PLUGIN_MODEL_TYPES,
        aim_config_from_model_args,
        pixel_limits,
        split_model_args,
    )
    from llava.model.families import family_for_model_type

    raw = parse_model_args(run.model_args)
    pixels = pixel_limits({k: raw.pop(k) for k in PIXEL_ARGS if k in raw})  # Qwen-VL models only
    loader, aim_raw = split_model_args({k: v for k, v in raw.items() if k not in ("batch_size", "device")})
    pretrained = str(loader.get("pretrained") or DEFAULT_CHECKPOINTS.get(run.model, "?"))
    frames = int(loader.get("max_frames_num") or LOADER_DEFAULTS["max_frames_num"]) if run.is_video else 1
    llm = _llm_shape(pretrained)
    cfg = aim_config_from_model_args(aim_raw, llm.layers if llm is not None else None)
    if llm is not None and cfg.layers_auto and run.model in PLUGIN_MODEL_TYPES:
        # as apply_aim resolved it in the run: the family's official schedule, else the scaled rule
        family = family_for_model_type(PLUGIN_MODEL_TYPES[run.model])
        cfg = cfg.resolve_layers(llm.layers, family.official_layers(llm.layers))
    from llava.analysis.shapes import QWEN_VL_MODEL_TYPES

    return {"pretrained": pretrained, "frames": frames, "aim": cfg, "llm": llm, "max_pixels": pixels.get("max_pixels"),
            "qwen_vl": PLUGIN_MODEL_TYPES.get(run.model) in QWEN_VL_MODEL_TYPES}


def _llm_shape(pretrained: str):
    from llava.analysis.shapes import get_llm
    from llava.model.builder import resolve_checkpoint

    source = resolve_checkpoint(pretrained)
    if source in LLM_OF_CHECKPOINT:
        return get_llm(LLM_OF_CHECKPOINT[source])
    if os.path.exists(source):
        return get_llm(source)
    return None  # a hub id the analyzer has no shape for: FLOPs column left empty


def prefill_tflops(setting: dict, is_video: bool) -> Optional[float]:
    from llava.analysis.roofline import analyze

    from llava.analysis.shapes import qwen_vl_visual_tokens

    cfg = setting["aim"]
    if setting["llm"] is None or getattr(cfg, "method", "aim") != "aim":
        return None  # no shape for this checkpoint, or a method the analyzer does not model
    frames, tokens = setting["frames"], 196 if is_video else 576
    if setting.get("qwen_vl"):  # frames in temporal groups of 2, tokens from the pixel limit
        if setting.get("max_pixels") is None:
            return None  # the frame size follows the processor's defaults, unknown here
        frames, tokens, _ = qwen_vl_visual_tokens(frames, max_pixels=setting["max_pixels"])  # square frames
    result = analyze(setting["llm"], frames=frames, tokens_per_frame=tokens,
                     text_tokens=TEXT_TOKENS, retention=cfg.retention, l1=cfg.l1, l2=cfg.l2,
                     merge_count=cfg.merge_count)
    return result.prefill_tflops


def markdown_tables(runs: Sequence[Run]) -> str:
    parts = []
    for is_video, columns, title in ((True, VIDEO_COLUMNS, "Video benchmarks (LLaVA-OneVision, Qwen-VL)"),
                                     (False, IMAGE_COLUMNS, "Image benchmarks (LLaVA-1.5)")):
        selected = [r for r in runs if r.is_video == is_video]
        if selected:
            parts.append(f"### {title}\n\n" + _table(selected, columns, is_video))
    if any(r.limit for r in runs):
        parts.append("Runs marked * used --limit (a subset of each benchmark): not comparable to the paper.")
    parts.append(
        f"TFLOPs: language-model prefill of one prompt ({TEXT_TOKENS} text tokens + the visual tokens), from "
        "llava.analysis.analyze with the run's frames, retention and l1/l2 (runtime schedule)."
    )
    return "\n\n".join(parts) + "\n"


def _table(runs: Sequence[Run], columns, is_video: bool) -> str:
    paper_tasks = [c[0] for c in columns]
    extras = sorted({t for r in runs for t in r.scores if t not in paper_tasks})
    headers = ["Model", "Frames" if is_video else "Images", "AIM (retention, l1-l2)", "TFLOPs"]
    headers += [c[1] for c in columns] + extras
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for run in runs:
        setting = run_setting(run)
        flops = prefill_tflops(setting, is_video)
        cells = [
            setting["pretrained"] + (" *" if run.limit else ""),
            str(setting["frames"]),
            _describe_aim(setting["aim"]),
            "n/a" if flops is None else f"{flops:.3g}",
        ]
        cells += [_fmt(run.scores.get(task)) for task in paper_tasks + extras]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _describe_aim(cfg) -> str:
    method = getattr(cfg, "method", "aim")
    if method != "aim":
        return f"method={method}"
    if not cfg.enabled:
        return "off"
    layers = "no pruning" if cfg.l1 is None else f"{cfg.l1}-{cfg.l2}"
    official = ", official positions" if getattr(cfg, "positions", "original") == "official" else ""
    return f"{cfg.retention:g}, {layers}{official}"


def _fmt(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.1f}"


def write_atomically(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# -- command line ------------------------------------------------------------------------------
def collect_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="collect_results.py",
        description="lmms-eval results JSON files -> markdown tables in the paper's layout, with FLOPs.")
    parser.add_argument("paths", nargs="+", help="*_results.json files or folders holding them (searched recursively)")
    parser.add_argument("--out", help="write the markdown here instead of printing it")
    args = parser.parse_args(argv)
    try:
        files = find_results_files(args.paths)
        if not files:
            raise ResultsFileError(f"no *_results.json under {args.paths}")
        text = markdown_tables(collect_runs(files))
    except AIMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        write_atomically(Path(args.out), text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def check_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llava.eval.results check")
    parser.add_argument("output_dir")
    parser.add_argument("--since", help="only files newer than this file count (a marker made before the run)")
    parser.add_argument("--tasks", default="", help="comma-separated tasks that must be in the results")
    args = parser.parse_args(argv)
    try:
        path = check_run(Path(args.output_dir), Path(args.since) if args.since else None, args.tasks.split(","))
    except AIMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "check":
        sys.exit(check_main(sys.argv[2:]))
    sys.exit(collect_main(sys.argv[1:]))
