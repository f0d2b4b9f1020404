"""Inputs that used to be ignored without a word: refused with one line, or said in the log."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from conftest import encode_video
from llava.cli import main
from llava.video import load_video


def _run(args, capsys):
    code = main(["run", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("args, needle", [
    (["--question", ""], "--question is empty"),
    (["--question", "   "], "--question is empty"),
    (["--kept-tokens", "40"], "--method aim has no kept-token count"),
    (["--kept-tokens", "40", "--method", "prumerge"], "adaptive"),
    (["--kept-tokens", "40", "--no-aim"], "--kept-tokens"),
])
def test_run_refuses_what_it_would_ignore(args, needle, capsys):
    code, out, err = _run(args, capsys)
    assert code == 2 and needle in err and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.fixture(scope="module")
def six_frame_clip(tmp_path_factory):
    frames = [np.full((32, 32, 3), 20 * i, np.uint8) for i in range(6)]
    return encode_video(tmp_path_factory.mktemp("clip") / "six.mp4", frames)


def test_load_video_says_when_the_clip_is_shorter_than_asked(six_frame_clip, caplog):
    with caplog.at_level(logging.WARNING, logger="llava.video"):
        frames = load_video(six_frame_clip, 1000, backend="pyav")
    assert frames.shape[0] == 6
    [record] = [r for r in caplog.records if r.name == "llava.video"]
    assert "has 6 frames, fewer than the 1000 requested" in record.getMessage()


@pytest.mark.parametrize("num_frames, sampling", [(6, "uniform"), (4, "uniform"), (1000, "official")])
def test_load_video_is_quiet_when_it_returns_what_was_asked(six_frame_clip, caplog, num_frames, sampling):
    with caplog.at_level(logging.WARNING, logger="llava.video"):
        frames = load_video(six_frame_clip, num_frames, backend="pyav", sampling=sampling)
    assert frames.shape[0] == num_frames
    assert not [r for r in caplog.records if r.name == "llava.video"]
