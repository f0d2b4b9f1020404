"""The offline lmms-eval task shipped with the package: synthetic clips and their questions.

Each clip is a coloured square crossing a grey background in one direction. Two
multiple-choice questions per clip (its colour, its direction). The questions are a small
JSON file in ``llava/eval/tasks/llava_aim_synthvid/`` (see :func:`build_questions`); the
clips are written on first use into :func:`video_dir` (deterministic, a few kB each), or
ahead of time with ``python scripts/make_eval_task_videos.py``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

TASK_NAME = "llava_aim_synthvid"
TASK_DIR = Path(__file__).resolve().parent / "tasks" / TASK_NAME
QUESTIONS_FILE = TASK_DIR / "questions.json"

COLORS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 70, 220), "yellow": (235, 210, 30),
}
DIRECTIONS = ("left to right", "right to left", "top to bottom", "bottom to top")
# (colour, direction) of each clip: every colour and every direction appears twice.
CLIPS = [
    ("red", "left to right"), ("green", "top to bottom"), ("blue", "right to left"), ("yellow", "bottom to top"),
    ("green", "left to right"), ("blue", "bottom to top"), ("yellow", "top to bottom"), ("red", "right to left"),
]
FRAMES, SIZE, SQUARE, FPS = 16, 96, 24, 8
LETTERS = "ABCD"


def clip_name(index: int) -> str:
    return f"clip{index:02d}.mp4"


def clip_frames(color: str, direction: str) -> np.ndarray:
    """(FRAMES, SIZE, SIZE, 3) uint8: the square moving across a mid-grey background."""
    video = np.full((FRAMES, SIZE, SIZE, 3), 128, dtype=np.uint8)
    travel = SIZE - SQUARE
    for f in range(FRAMES):
        step = round(travel * f / (FRAMES - 1))
        pos = {"left to right": (step, travel // 2), "right to left": (travel - step, travel // 2),
               "top to bottom": (travel // 2, step), "bottom to top": (travel // 2, travel - step)}[direction]
        x, y = pos
        video[f, y:y + SQUARE, x:x + SQUARE] = COLORS[color]
    return video


def build_questions() -> List[dict]:
    """The task's documents (what questions.json holds)."""
    docs = []
    for i, (color, direction) in enumerate(CLIPS):
        for kind, answer, pool, shift in (("color", color, list(COLORS), i % 4),
                                          ("direction", direction, list(DIRECTIONS), (i + 2) % 4)):
            # options rotated per clip so that the right letter varies
            options = pool[shift:] + pool[:shift]
            question = ("What colour is the moving square?" if kind == "color"
                        else "In which direction does the square move?")
            docs.append({
                "doc_id": f"clip{i:02d}_{kind}", "video": clip_name(i), "question": question,
                "options": options, "answer": LETTERS[options.index(answer)], "answer_index": options.index(answer),
            })
    return docs


def video_dir() -> Path:
    """Where the clips are written: $LLAVA_AIM_EVAL_VIDEO_DIR, else $HF_HOME/llava_aim_synthvid."""
    explicit = os.environ.get("LLAVA_AIM_EVAL_VIDEO_DIR")
    if explicit:
        return Path(explicit).expanduser().resolve()
    hf_home = os.environ.get("HF_HOME") or os.path.join("~", ".cache", "huggingface")
    return (Path(hf_home).expanduser() / TASK_NAME).resolve()


def ensure_video(name: str, directory: Path | None = None) -> Path:
    """Path of clip ``name``, writing it first if it is not there yet."""
    index = _clip_index(name)
    directory = Path(directory) if directory is not None else video_dir()
    path = directory / name
    if not path.exists():
        write_video(path, clip_frames(*CLIPS[index]))
    return path


def write_all_videos(directory: Path | None = None) -> List[Path]:
    return [ensure_video(clip_name(i), directory) for i in range(len(CLIPS))]


def write_video(path: Path, frames: np.ndarray) -> None:
    """Encode ``frames`` to ``path`` atomically: several processes may race to write it."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".mp4", dir=path.parent)
    os.close(fd)
    try:
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=FPS)
            stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_questions(path: Path = QUESTIONS_FILE) -> None:
    path.write_text(json.dumps(build_questions(), indent=1) + "\n")


def _clip_index(name: str) -> int:
    for i in range(len(CLIPS)):
        if clip_name(i) == name:
            return i
    raise ValueError(f"{name!r} is not a clip of {TASK_NAME} (expected clip00.mp4 .. {clip_name(len(CLIPS) - 1)})")
