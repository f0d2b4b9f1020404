"""lmms-eval results files: checking that a run wrote them, and the paper-layout tables.

``python -m llava.eval.results check OUTPUT_DIR --since FILE --tasks a,b`` exits 0 and prints
the results file when the run wrote one with every task (lmms-eval itself exits 0 even when
the evaluation failed). ``scripts/collect_results.py`` builds the markdown tables.
"""

from __future__ import annotations

import argparse
import json
import math
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
TEXT_TOKENS = 100  # the analyzer's prompt length for the FLOPs column (the paper's setting)


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
# Marks on figures that must not be read against the paper's (the legend under each table says why).
LIMIT_MARK = "*"  # a --limit run: a subset of each benchmark
CHECKPOINT_MARK = "‡"  # another checkpoint than the paper row's model
FRAMES_MARK = "§"  # another frame count than the paper row's


@dataclass
class Run:
    """One setting (model + model_args); scores merged from every file of that setting."""

    model: str
    model_args: str
    scores: Dict[str, float] = field(default_factory=dict)  # task -> value (percent/points)
    limit: Optional[float] = None
    prefill_ms: List[float] = field(default_factory=list)  # measured, one per sample (samples logs)
    mean_prefill_ms: Optional[float] = None  # results["throughput"], when no samples log is there

    @property
    def median_prefill_ms(self) -> Optional[float]:
        import statistics

        return statistics.median(self.prefill_ms) if self.prefill_ms else None

    @property
    def is_video(self) -> bool:
        return is_video_model(self.model)


def is_video_model(plugin: str) -> bool:
    """Whether the plugin model ``plugin`` answers video tasks (its family adapter says)."""
    from llava.eval.args import plugin_families

    family = plugin_families().get(plugin)
    return bool(family is not None and family.plugin_video)


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
        run.prefill_ms += sample_prefill_ms(path)
        mean = (data.get("throughput") or {}).get("avg_prefill_ms")
        if _measured(mean):
            run.mean_prefill_ms = float(mean)
    return list(runs.values())


def sample_prefill_ms(results_path: Path) -> List[float]:
    """Measured prefill times of every sample logged next to a results file (the plugin's
    token_counts in lmms-eval's ``<date>_samples_<task>.jsonl``)."""
    path = Path(results_path)
    stamp = path.name[: -len("_results.json")]
    found: List[float] = []
    for samples in sorted(path.parent.glob(f"{stamp}_samples_*.jsonl")):
        try:
            lines = samples.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            for counts in record.get("token_counts") or []:
                value = counts.get("prefill_ms") if isinstance(counts, dict) else None
                if _measured(value):
                    found.append(float(value))
    return found


def _measured(value) -> bool:
    """A time that was measured: a positive number (a missing figure must not read as 0 ms)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


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
    from llava.model.builder import CHECKPOINT_ALIASES
    from llava.model.families import family_for_model_type

    raw = parse_model_args(run.model_args)
    pixels = pixel_limits({k: raw.pop(k) for k in PIXEL_ARGS if k in raw})  # families with pixel limits only
    loader, aim_raw = split_model_args({k: v for k, v in raw.items() if k not in ("batch_size", "device")})
    pretrained = str(loader.get("pretrained") or DEFAULT_CHECKPOINTS.get(run.model, "?"))
    frames = int(loader.get("max_frames_num") or LOADER_DEFAULTS["max_frames_num"]) if run.is_video else 1
    llm = _llm_shape(pretrained)
    family = family_for_model_type(PLUGIN_MODEL_TYPES[run.model]) if run.model in PLUGIN_MODEL_TYPES else None
    cfg = aim_config_from_model_args(aim_raw, llm.layers if llm is not None else None)
    if llm is not None and cfg.layers_auto and family is not None:
        # as apply_aim resolved it in the run: the family's official schedule, else the scaled rule
        cfg = cfg.resolve_layers(llm.layers, family.official_layers(llm.layers))

    return {"pretrained": pretrained, "checkpoint": CHECKPOINT_ALIASES.get(pretrained, pretrained), "frames": frames,
            "aim": cfg, "llm": llm, "max_pixels": pixels.get("max_pixels"), "family": family}


def _llm_shape(pretrained: str):
    """The analyzer's shape of the run's language model: a reference checkpoint a family adapter
    declares (its config ships with the package), or a local folder; None for another hub id."""
    from llava.analysis.shapes import get_llm, reference_names
    from llava.model.builder import resolve_checkpoint

    source = resolve_checkpoint(pretrained)
    references = {checkpoint for _, checkpoint, _ in reference_names().values()}
    if source in references or os.path.exists(source):
        return get_llm(source)
    return None  # a hub id the analyzer has no shape for: FLOPs column left empty


def visual_geometry(setting: dict, is_video: bool) -> Optional[Tuple[int, int]]:
    """(units, tokens per unit) the LLM receives for a run's setting (before merging), as the
    run's family counts them at its reference geometry (the adapter's ``visual_tokens``): a
    video's frames (or temporal groups) x the tokens of each; an image of a fixed-size family
    as one unit. For a family with pixel limits, the tokens of a square frame at the run's
    max_pixels. None where the count is unknown: the processor's default pixel range, or an
    image whose tokens follow its size. A run of no plugin model gets the paper's two
    geometries: frames x 196 for a video, 1 x 576 for an image."""
    frames, family = setting["frames"], setting.get("family")
    if family is None:
        return frames, 196 if is_video else 576
    if family.pixel_limits and setting.get("max_pixels") is None:
        return None
    if not (is_video or family.fixed_image_size or family.pixel_limits):
        return None
    config = family.reference_config(next(iter(family.references)))
    limits = {"max_pixels": setting["max_pixels"]} if family.pixel_limits else {}
    tokens = family.visual_tokens(config, frames, **limits)  # square frames
    return tokens.units, tokens.tokens_per_unit


def prefill_tflops(setting: dict, is_video: bool) -> Optional[float]:
    from llava.analysis.roofline import analyze

    cfg = setting["aim"]
    geometry = visual_geometry(setting, is_video)
    if setting["llm"] is None or getattr(cfg, "method", "aim") != "aim" or geometry is None:
        return None  # no shape for this checkpoint, a method the analyzer does not model, or no frame size
    frames, tokens = geometry
    result = analyze(setting["llm"], frames=frames, tokens_per_frame=tokens,
                     text_tokens=TEXT_TOKENS, retention=cfg.retention, l1=cfg.l1, l2=cfg.l2,
                     merge_count=cfg.merge_count)
    return result.prefill_tflops


def describe_limit(limit: Optional[float]) -> str:
    """lmms-eval's ``--limit`` as a table shows it: N documents of each task (N >= 1), a fraction
    of each task (< 1), or "all"."""
    if not limit:
        return "all"
    return f"{limit:g} per task" if limit >= 1 else f"{100 * limit:g}% per task"


def run_origin(run: Run, setting: dict) -> str:
    """Which checkpoint, frames and limit produced a run's figures, in one phrase."""
    frames = f", {setting['frames']} frames" if run.is_video else ""
    limit = f"limit {describe_limit(run.limit)}" if run.limit else "no limit"
    return f"{setting['pretrained']}{frames}, {limit}"


def markdown_tables(runs: Sequence[Run]) -> str:
    parts = []
    for is_video, columns, title in ((True, VIDEO_COLUMNS, "Video benchmarks (LLaVA-OneVision, Qwen-VL)"),
                                     (False, IMAGE_COLUMNS, "Image benchmarks (LLaVA-1.5)")):
        selected = [r for r in runs if r.is_video == is_video]
        if selected:
            parts.append(f"### {title}\n\n" + _table(selected, columns, is_video))
    if any(r.limit for r in runs):
        parts.append(f"- `{LIMIT_MARK}` a limited run (--limit: only part of each task, see the Limit "
                     "column): its scores are not comparable to the paper's or to a full run's.")
    parts.append(
        f"TFLOPs: language-model prefill of one prompt ({TEXT_TOKENS} text tokens + the visual tokens), from "
        "llava.analysis.analyze with the run's checkpoint, frames, retention and l1/l2 (runtime schedule). prefill ms: "
        "measured, median over the run's samples of the model's first forward (vision tower, projector, "
        "merging, LLM prefill), from the per-sample logs; n/a: not measured."
    )
    return "\n\n".join(parts) + "\n"


def _table(runs: Sequence[Run], columns, is_video: bool) -> str:
    paper_tasks = [c[0] for c in columns]
    extras = sorted({t for r in runs for t in r.scores if t not in paper_tasks})
    headers = ["Checkpoint", "Frames" if is_video else "Images", "Limit", "AIM (retention, l1-l2)", "TFLOPs",
               "prefill ms"]
    headers += [c[1] for c in columns] + extras
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for run in runs:
        setting = run_setting(run)
        flops = prefill_tflops(setting, is_video)
        cells = [
            setting["pretrained"] + (f" {LIMIT_MARK}" if run.limit else ""),
            str(setting["frames"]),
            describe_limit(run.limit),
            _describe_aim(setting["aim"]),
            "n/a" if flops is None else f"{flops:.3g}",
            _prefill_cell(run),
        ]
        cells += [_fmt(run.scores.get(task)) for task in paper_tasks + extras]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _prefill_cell(run: Run) -> str:
    if run.median_prefill_ms is not None:
        return f"{run.median_prefill_ms:.1f}"
    if run.mean_prefill_ms is not None:
        return f"{run.mean_prefill_ms:.1f} (mean)"
    return "n/a"


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


# -- the paper side by side ------------------------------------------------------------------
PAPER_TABLES = Path(__file__).resolve().parent / "paper" / "tables.json"
PAPER_HARDWARE = "nvidia_A100"  # the paper's prefill times are the roofline on an A100


def load_paper_tables(path: os.PathLike = PAPER_TABLES) -> dict:
    """The paper's tables: columns, rows in the paper's order, the paper's numbers."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ResultsFileError(f"cannot read the paper's tables from {path} ({exc})") from exc


def _row_runs(root: Path, entry: dict, read: Dict[Path, List[Run]]) -> List[Run]:
    """The runs of one paper row: results under ROOT/<row name> (or the row it shares a run with).
    ``read`` keeps each folder's runs: rows of several tables share folders (and sample logs)."""
    for name in (entry["row"], entry.get("same_as")):
        folder = root / name if name else None
        if folder is not None and folder.is_dir():
            if folder not in read:
                files = find_results_files([folder])
                read[folder] = collect_runs(files) if files else []
            if read[folder]:
                return read[folder]
    return []


def _predicted_paper_way(run: Run, is_video: bool, text_tokens: int, include_mlp_add: bool = False):
    """(TFLOPs, prefill ms) of the run's setting counted as the paper counts: its text length,
    no newline token, the paper convention for AIM's schedule, the roofline on an A100, and the
    table's own ``include_mlp_add`` (the image table's ms count the second residual add)."""
    from llava.analysis.roofline import analyze

    setting = run_setting(run)
    cfg, llm = setting["aim"], setting["llm"]
    geometry = visual_geometry(setting, is_video)
    if llm is None or geometry is None:
        return None, None
    method = getattr(cfg, "method", "aim")
    common = dict(frames=geometry[0], tokens_per_frame=geometry[1], text_tokens=text_tokens, hardware=PAPER_HARDWARE,
                  include_mlp_add=include_mlp_add)
    try:
        if method == "aim":
            pruning = cfg.enabled and cfg.l1 is not None and cfg.l1 < llm.layers
            result = analyze(llm, retention=cfg.retention if cfg.enabled else 1.0, l1=cfg.l1 if pruning else None,
                             l2=cfg.l2 if pruning else None, convention="paper", **common)
        else:
            result = analyze(llm, retention=cfg.retention, method=method, drop_layers=cfg.drop_layers,
                             drop_ratio=cfg.drop_ratio, **common)
    except AIMError:  # a method the analyzer does not model
        return None, None
    return result.prefill_tflops, result.prefill_ms


def _figure(value: Optional[float], digits: int) -> str:
    """A number with ``digits`` decimals; a nonzero value too small for them keeps two significant
    digits (a tiny model's 0.00028 TFLOPs must not read as 0.00); a missing one is "–"."""
    if value is None or not math.isfinite(value):
        return "–"
    if value != 0 and abs(value) < 0.5 * 10 ** -digits:
        return f"{value:.2g}"
    return f"{value:.{digits}f}"


def _cell(paper: Optional[float], ours: Optional[float], digits: int = 1, mark: str = "", compare: bool = True) -> str:
    """"paper / ours (ours - paper)"; no difference where either is missing or ``compare`` is off
    (a marked run: another checkpoint, frame count or a limited run)."""
    p = _figure(paper, digits)
    if ours is None or not math.isfinite(ours):
        return f"{p} / –"
    o = _figure(ours, digits) + mark
    if paper is None or not compare:
        return f"{p} / {o}"
    return f"{p} / {o} ({ours - paper:+.{digits}f})"


def paper_row_setting(table: dict, entry: dict) -> Tuple[Optional[str], Optional[int]]:
    """(checkpoint, frames) of a paper row: the row's own, else its table's (tables.json)."""
    return entry.get("checkpoint", table.get("checkpoint")), entry.get("frames", table.get("frames"))


def setting_marks(setting: dict, checkpoint: Optional[str], frames: Optional[int]) -> str:
    """Marks for a run whose checkpoint or frame count is not the paper row's: every figure of
    the row, predicted ones included, belongs to another setting than the paper's."""
    marks = ""
    if checkpoint is not None and setting["checkpoint"] != checkpoint:
        marks += CHECKPOINT_MARK
    if frames is not None and setting["frames"] != frames:
        marks += FRAMES_MARK
    return marks


def _legend(used: str, limits: Sequence[str], checkpoint: Optional[str], frames: Optional[int]) -> List[str]:
    lines = []
    if LIMIT_MARK in used:
        lines.append(f"- `{LIMIT_MARK}` a limited run ({', '.join(sorted(set(limits)))}: only part of each task)"
                     ": its scores and measured prefill are not comparable to the paper's; no difference printed.")
    if CHECKPOINT_MARK in used:
        lines.append(f"- `{CHECKPOINT_MARK}` run on another checkpoint than the paper's {checkpoint} (see the Run "
                     "column): every figure of the row is that model's, the predicted TFLOPs and prefill ms included; "
                     "no difference printed.")
    if FRAMES_MARK in used:
        lines.append(f"- `{FRAMES_MARK}` run on another frame count than the paper row's ({frames} unless its "
                     "Setting says otherwise; the run's in the Run column): "
                     "scores and predicted figures are for the run's frames; no difference printed.")
    return lines


def paper_markdown(root: os.PathLike, table_names: Optional[Sequence[str]] = None) -> str:
    """Each paper table in the paper's row and column order; each cell "paper / ours (ours -
    paper)", the difference only where the run is the paper row's setting (its checkpoint and
    frames, no --limit); other runs' figures marked; rows with no results under ROOT/<row name>
    marked "not run yet"."""
    data = load_paper_tables()
    root = Path(root)
    columns = data["columns"]
    parts = []
    read: Dict[Path, List[Run]] = {}
    for table in data["tables"]:
        if table_names and table["name"] not in table_names:
            continue
        is_video = table["name"] != "image"
        names = table["columns"]
        headers = ["Row", "Setting", "Run (checkpoint, frames, limit)"] + [columns[c]["label"] for c in names]
        headers += ["measured prefill ms (median)"]
        lines = [f"### {table['title']}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        substitutes = set()
        used, limits = "", []
        for entry in table["rows"]:
            runs = _row_runs(root, entry, read)
            run = runs[-1] if runs else None
            label = entry["label"] + (" (not in the paper)" if entry.get("extra") else "")
            cells = [f"`{entry['row']}`", label + ("" if run else " — **not run yet**")]
            predicted, marks, measured_marks = (None, None), "", ""
            if run is not None:
                setting = run_setting(run)
                cells.append(run_origin(run, setting))
                predicted = _predicted_paper_way(run, is_video, table["text_tokens"],
                                                 bool(table.get("include_mlp_add", False)))
                marks = setting_marks(setting, *paper_row_setting(table, entry))
                measured_marks = (LIMIT_MARK if run.limit else "") + marks
                used += measured_marks
                if run.limit:
                    limits.append(f"--limit {describe_limit(run.limit)}")
            else:
                cells.append("–")
            for name in names:
                column, paper = columns[name], entry["paper"].get(name)
                if column.get("kind") == "predicted_tflops":
                    cells.append(_cell(paper, predicted[0], 2, marks, compare=not marks))
                elif column.get("kind") == "prefill_ms":
                    cells.append(_cell(paper, predicted[1], 2, marks, compare=not marks))
                else:
                    ours, mark = None, ""
                    for i, task in enumerate(column["tasks"]):
                        if run is not None and task in run.scores:
                            ours, mark = run.scores[task], ("" if i == 0 else "†")
                            if mark:
                                substitutes.add(f"{column['label']}: ours on {task} (the paper: {column['tasks'][0]})")
                            break
                    cells.append(_cell(paper, ours, 1, mark + measured_marks, compare=not measured_marks))
            measured = run.median_prefill_ms if run else None
            cells.append("–" if measured is None else f"{measured:.1f}{measured_marks}")
            lines.append("| " + " | ".join(cells) + " |")
        notes = []
        if table.get("note"):
            notes.append(table["note"])
        notes += [f"† {s}." for s in sorted(substitutes)]
        checkpoint, frames = table.get("checkpoint"), table.get("frames")
        notes += _legend(used, limits, checkpoint, frames)
        if notes:
            lines += [""] + notes
        parts.append("\n".join(lines))
    parts.append(
        "Cells: paper / ours (ours - paper). TFLOPs and prefill ms of both are the language model's prefill "
        f"counted the paper's way (llava.analysis: paper convention, the table's text length, roofline on "
        f"{PAPER_HARDWARE}) for the setting each run used; measured prefill ms: this project's runs (the "
        "model's first forward, median over samples). A difference is printed only for a run of the paper row's "
        f"setting; marked figures ({LIMIT_MARK} limited run, {CHECKPOINT_MARK} another checkpoint, {FRAMES_MARK} "
        "another frame count) are not compared. –: no figure. Sources of the paper's numbers: "
        "llava/eval/paper/tables.json."
    )
    return "\n\n".join(parts) + "\n"


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
def check_output_path(out: os.PathLike) -> Path:
    """A file ``--out`` may be written to, or a ResultsFileError saying why not (before any work)."""
    path = Path(out)
    if path.is_dir():
        raise ResultsFileError(f"--out {out} is a directory; give a file name, e.g. {path / 'results_table.md'}")
    parent = path.parent if str(path.parent) else Path(".")
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ResultsFileError(f"--out {out}: cannot write into {existing} (not a writable folder); choose another path")
    if path.exists() and not os.access(path, os.W_OK):
        raise ResultsFileError(f"--out {out} exists and is read-only; choose another path")
    return path


def collect_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="collect_results.py",
        description="lmms-eval results JSON files -> markdown tables in the paper's layout, with FLOPs.")
    parser.add_argument("paths", nargs="+", help="*_results.json files or folders holding them (searched recursively); "
                                                  "with --paper: the OUTPUT_ROOT of scripts/paper_tables.py")
    parser.add_argument("--out", help="write the markdown here instead of printing it")
    parser.add_argument("--paper", action="store_true",
                        help="the paper's tables, row by row: paper / ours (difference) per cell, rows not run marked")
    parser.add_argument("--tables", help="with --paper: only these tables (comma-separated: video,long,sweep,"
                                         "sweep_pruning,ablation,image,qwen2vl)")
    args = parser.parse_args(argv)
    try:
        out = check_output_path(args.out) if args.out else None
        if args.paper:
            if len(args.paths) != 1 or not Path(args.paths[0]).is_dir():
                raise ResultsFileError("--paper takes one folder: the OUTPUT_ROOT the rows were run into "
                                       "(scripts/paper_tables.py, default eval_results/paper)")
            known = [t["name"] for t in load_paper_tables()["tables"]]
            wanted = [t for t in (args.tables or "").split(",") if t]
            unknown = [t for t in wanted if t not in known]
            if unknown:
                raise ResultsFileError(f"--tables: no table {unknown[0]!r}; the tables are {', '.join(known)}")
            text = paper_markdown(args.paths[0], wanted or None)
        else:
            files = find_results_files(args.paths)
            if not files:
                raise ResultsFileError(f"no *_results.json under {args.paths}")
            text = markdown_tables(collect_runs(files))
        if out is not None:
            try:
                write_atomically(out, text)
            except OSError as exc:
                raise ResultsFileError(f"--out {args.out}: cannot write it ({exc.strerror or exc})") from exc
    except AIMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if out is not None:
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
