"""The ``llava-aim run`` command end to end on the tiny model, and its bad-input contract."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llava.cli import main


def run_cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_run_json_on_shipped_video(capsys):
    code, out, err = run_cli(["run", "--frames", "4", "--max-new-tokens", "3", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["random_weights"] is True
    assert result["frames"] == 4
    assert result["visual_tokens_before_merge"] == 4 * 196 + 1
    assert result["visual_tokens_after_merge"] == 4 * 49 + 1
    # the paper's (14, 22) of 28 layers scaled to the tiny model's 8 layers: (4, 6)
    assert (result["aim"]["l1"], result["aim"]["l2"]) == (4, 6)
    lens = result["layer_seq_lens"]
    text = result["prompt_tokens"] - result["visual_tokens_after_merge"]
    assert lens[0] == result["prompt_tokens"] and lens[-1] == text


def test_run_human_summary_says_random_and_shows_layers(capsys):
    code, out, _ = run_cli(["run", "--frames", "2", "--max-new-tokens", "2"], capsys)
    assert code == 0
    assert "RANDOM weights" in out
    assert "layer  0" in out and "merging" in out


def test_run_image_on_llava15(capsys, tmp_path):
    from conftest import make_image

    path = tmp_path / "img.png"
    make_image().save(path)
    code, out, err = run_cli(
        ["run", "--model", "tiny-llava-1.5", "--image", str(path), "--max-new-tokens", "2", "--json"], capsys
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["visual_tokens_after_merge"] == 144


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--video", "/no/such/video.mp4"], "not found"),
        (["--retention", "0"], "retention"),
        (["--retention", "1.5"], "retention"),
        (["--l1", "5", "--l2", "3"], "l1 < l2"),
        (["--l1", "-1", "--l2", "3"], "non-negative"),
        (["--l1", "9", "--l2", "12"], "--l1 9 is beyond"),
        (["--l1", "2"], "both --l1 and --l2"),
        (["--frames", "0"], "--frames"),
    ],
)
def test_run_bad_input_exit_2_one_line(args, needle, capsys):
    code, out, err = run_cli(["run", *args], capsys)
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 10])
def test_run_corrupt_or_empty_video(tmp_path, content, capsys):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    code, _, err = run_cli(["run", "--video", str(path)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_module_entry_point_usage_error():
    proc = subprocess.run([sys.executable, "-m", "llava", "run", "--frames", "x"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
