"""Source tracking (merge groups, survivors per layer) and ``llava-aim visualize``."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import image_inputs, make_image, make_video, video_inputs
from llava.aim.config import AIMConfig
from llava.errors import AIMConfigError, UnsupportedUsageError
from llava.model.runtime import apply_aim, patch_grid, presence_by_frame, remove_aim
from llava.run import SAMPLE_VIDEO
from llava.visualize import (
    CAPTION_LINE_PX,
    check_layers,
    default_layers,
    figure_size_px,
    group_boundaries,
    merge_overlay,
    survivor_overlay,
    upsample_cells,
    write_png_atomically,
)


# -- pure mapping functions ---------------------------------------------------------------
def test_presence_by_frame_maps_positions_to_frames_and_drops_newline():
    # one video, 2 frames of 3 merged tokens at positions 5..10, its newline at 11
    initial = [torch.arange(5, 12)]
    entering = [torch.tensor([5, 7, 9, 11])]
    present = presence_by_frame(initial, entering, frames=2, tokens_per_frame=3, videos=1)
    assert present.tolist() == [[True, False, True], [False, True, False]]


def test_presence_by_frame_batch_of_images_row_major():
    initial = [torch.tensor([1, 2]), torch.tensor([3, 4])]  # two samples, one image of 2 tokens each
    entering = [torch.tensor([2]), torch.tensor([3, 4])]
    present = presence_by_frame(initial, entering, frames=2, tokens_per_frame=2, videos=0)
    assert present.tolist() == [[False, True], [True, True]]


def test_presence_by_frame_other_visual_tokens_give_none():
    initial = [torch.arange(10)]  # 10 visual tokens, but 2 frames x 3 + 1 newline = 7 expected
    assert presence_by_frame(initial, initial, frames=2, tokens_per_frame=3, videos=1) is None


def test_patch_grid_row_major_and_square_only():
    grid = patch_grid(torch.arange(2 * 9).view(2, 9))
    assert grid.shape == (2, 3, 3) and grid[1, 2, 0] == 9 + 6
    with pytest.raises(UnsupportedUsageError, match="square"):
        patch_grid(torch.zeros(1, 10, dtype=torch.long))


@pytest.mark.parametrize(
    "num_layers,l1,l2,expected",
    [(8, 4, 6, [4, 5]), (28, 14, 22, [14, 18, 21]), (8, 2, 8, [2, 5, 7]), (8, 2, 12, [2, 5, 7]), (8, None, None, [0])],
)
def test_default_layers(num_layers, l1, l2, expected):
    assert default_layers(num_layers, l1, l2) == expected


def test_check_layers_sorts_and_rejects_out_of_range():
    assert check_layers([5, 0, 5], 8, "m") == [0, 5]
    for bad in (8, -1):
        with pytest.raises(AIMConfigError, match=r"out of range.*0\.\.7"):
            check_layers([0, bad], 8, "m")


def test_upsample_cells_gives_each_cell_an_equal_block():
    cells = np.arange(14 * 14).reshape(14, 14)
    px = upsample_cells(cells, 224)
    assert px.shape == (224, 224)
    assert np.bincount(px.ravel()).tolist() == [16 * 16] * 196
    assert px[17, 33] == cells[1, 2]


def test_group_boundaries_only_between_groups():
    cells = np.zeros((8, 8), dtype=int)
    cells[:, 4:] = 1
    edge = group_boundaries(cells)
    assert edge[:, 3:5].all() and not edge[:, :3].any() and not edge[:, 5:].any()


def test_overlays_colour_groups_and_dim_pruned_cells():
    rng = np.random.default_rng(0)
    frame = rng.integers(100, 255, size=(32, 32, 3), dtype=np.uint8)
    groups = np.array([[0, 0], [1, 2]])
    merged = merge_overlay(frame, groups)
    assert merged.shape == frame.shape and merged.dtype == np.uint8
    assert (merged[15:17, :] == 0).all()  # the border between the top group and the bottom ones
    present = np.array([[True, True], [False, False]])
    shown = survivor_overlay(frame, groups, present)
    assert shown[20:, :].mean() < 0.5 * frame[20:, :].mean()  # pruned half dimmed
    assert np.array_equal(shown[2:14, 2:14], frame[2:14, 2:14])  # inside a kept group: untouched


def test_write_png_atomically_leaves_nothing_on_failure(tmp_path):
    class Broken:
        def savefig(self, fh, **kwargs):
            fh.write(b"partial")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_png_atomically(Broken(), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


# -- source tracking on the tiny models -----------------------------------------------------
def _check_sources(stats, frames, grid, k, num_layers, newline):
    groups = stats.merge_groups()
    assert groups.shape == (frames, grid, grid)
    for f in range(frames):
        # every original patch lies in exactly one group, and every merged token has a patch
        counts = torch.bincount(groups[f].flatten(), minlength=k)
        assert counts.numel() == k and int(counts.sum()) == grid * grid and bool((counts > 0).all())
    assert len(stats.layer_survivors) == num_layers
    for j in range(num_layers):
        alive = stats.survivors(j)
        present = stats.layer_survivors[j]
        # a merged token survives as a whole: all of its patches or none
        assert torch.equal(alive.flatten(1), present.gather(1, groups.flatten(1)))
        kept = int(present.sum())
        assert kept in (stats.visual_tokens_per_layer[j][0], stats.visual_tokens_per_layer[j][0] - newline)


def test_sources_and_survivors_video(ov_sdpa):
    model, processor = ov_sdpa
    try:
        apply_aim(model, processor, AIMConfig(retention=0.25, l1=2, l2=8), track_sources=True)
        with torch.inference_mode():
            model(**video_inputs(processor, [make_video(3, 48)]))
        stats = model.aim_stats
        _check_sources(stats, frames=3, grid=14, k=49, num_layers=8, newline=1)
        assert bool(stats.survivors(0).all()) and int(stats.layer_survivors[7].sum()) < 3 * 49
        assert "merge_sources" not in stats.to_dict() and "layer_survivors" not in stats.to_dict()
    finally:
        remove_aim(model, processor)


@pytest.mark.parametrize("metric", ["keys", "tokens"])  # official (before the projector) and after it
def test_sources_and_survivors_image(llava15_sdpa, metric):
    model, processor = llava15_sdpa
    try:
        apply_aim(model, processor, AIMConfig(retention=0.25, l1=4, l2=6, merge_metric=metric), track_sources=True)
        with torch.inference_mode():
            model(**image_inputs(processor, [make_image()]))
        stats = model.aim_stats
        _check_sources(stats, frames=1, grid=24, k=144, num_layers=8, newline=0)
        assert int(stats.layer_survivors[5].sum()) == 72 and int(stats.layer_survivors[6].sum()) == 0
    finally:
        remove_aim(model, processor)


def test_survivors_same_for_removal_and_mask(ov_sdpa):
    model, processor = ov_sdpa
    found = {}
    try:
        for mode in ("remove", "mask"):
            apply_aim(model, processor, AIMConfig(retention=0.5, l1=1, l2=7, pruning_mode=mode), track_sources=True)
            with torch.inference_mode():
                model(**video_inputs(processor, [make_video(2, 48)]))
            found[mode] = model.aim_stats.layer_survivors
    finally:
        remove_aim(model, processor)
    assert all(torch.equal(a, b) for a, b in zip(found["remove"], found["mask"]))


def test_batch_survivors_match_each_sample_alone(ov_sdpa):
    model, processor = ov_sdpa
    videos, questions = [make_video(2, 48, seed=1), make_video(2, 48, seed=2)], ["What?", "What moves in the clip?"]
    try:
        apply_aim(model, processor, AIMConfig(retention=0.25, l1=1, l2=5), track_sources=True)
        with torch.inference_mode():
            model(**video_inputs(processor, videos, questions))
            batch = [layer.clone() for layer in model.aim_stats.layer_survivors]
            for i in range(2):
                model(**video_inputs(processor, videos[i:i + 1], questions[i:i + 1]))
                alone = model.aim_stats.layer_survivors
                assert all(torch.equal(b[2 * i:2 * i + 2], a) for b, a in zip(batch, alone))
    finally:
        remove_aim(model, processor)


def test_nothing_tracked_unless_asked(ov_sdpa):
    model, processor = ov_sdpa
    try:
        apply_aim(model, processor, AIMConfig(retention=0.25, l1=2, l2=8))
        with torch.inference_mode():
            model(**video_inputs(processor, [make_video(2, 48)]))
        stats = model.aim_stats
        assert stats.merge_sources is None and stats.layer_survivors is None
        with pytest.raises(UnsupportedUsageError, match="track_sources"):
            stats.merge_groups()
    finally:
        remove_aim(model, processor)


# -- the command ----------------------------------------------------------------------------
def run_cli(args, capsys):
    from llava.cli import main

    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_visualize_video_writes_a_readable_png(tmp_path, capsys):
    out = tmp_path / "aim.png"
    code, stdout, err = run_cli(
        ["visualize", "--video", str(SAMPLE_VIDEO), "--frames", "2", "--l1", "2", "--l2", "8", "--out", str(out)], capsys
    )
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aim.png"]  # no temporary file left
    img = Image.open(out)
    assert img.format == "PNG"
    # 2 rows; panels: frame, merge groups, layers 2, 5, 7; the caption adds whole lines
    width, no_caption_height = figure_size_px(2, 5, 14, 0)
    assert img.size[0] == width
    extra = img.size[1] - no_caption_height
    assert extra % CAPTION_LINE_PX == 0 and 5 <= extra // CAPTION_LINE_PX <= 10
    assert f"({img.size[0]}x{img.size[1]} px)" in stdout and "layers 2, 5, 7" in stdout
    pixels = np.asarray(img.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000  # not blank


def test_visualize_image_on_llava15(tmp_path, capsys):
    media, out = tmp_path / "img.png", tmp_path / "out.png"
    make_image(size=96).save(media)
    code, stdout, err = run_cli(["visualize", "--image", str(media), "--out", str(out), "--layers", "0", "5"], capsys)
    assert code == 0, err
    width, _ = figure_size_px(1, 4, 24, 0)
    assert Image.open(out).size[0] == width
    assert re.search(r"1 image row", stdout)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--video", "/no/such/video.mp4"], "not found"),
        (["--frames", "0"], "--frames"),
        (["--layers", "8"], "out of range"),
        (["--layers", "0", "-1"], "out of range"),
        (["--retention", "0"], "retention"),
        (["--l1", "3"], "both --l1 and --l2"),
        (["--image", str(SAMPLE_VIDEO.parent / "sample_image.png"), "--model", "tiny-llava-onevision"], "tiny-llava-1.5"),
        (["--model", "tiny-llava-1.5"], "takes image input"),
    ],
)
def test_visualize_bad_input_exit_2_one_line(args, needle, tmp_path, capsys):
    out = tmp_path / "x.png"
    media = [] if any(a in ("--video", "--image") for a in args) else ["--video", str(SAMPLE_VIDEO)]
    code, _, err = run_cli(["visualize", *media, "--frames", "1", *args, "--out", str(out)], capsys)
    assert code == 2, err
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file


@pytest.mark.parametrize("where", ["missing_folder", "folder_is_a_file", "out_is_a_folder", "not_png"])
def test_visualize_unwritable_output_exit_2(where, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    (tmp_path / "dir.png").mkdir()
    out = {
        "missing_folder": tmp_path / "nope" / "x.png",
        "folder_is_a_file": blocker / "x.png",
        "out_is_a_folder": tmp_path / "dir.png",
        "not_png": tmp_path / "x.jpg",
    }[where]
    code, _, err = run_cli(["visualize", "--video", str(SAMPLE_VIDEO), "--out", str(out)], capsys)
    assert code == 2 and "--out" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.png", "file.txt"]
    assert not any((tmp_path / "dir.png").iterdir())


# -- llava-aim run: predicted FLOPs, time per stage, quiet --json ----------------------------
TINY_LLM = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "vocab_size": 100}


def test_predicted_prefill_counts_what_entered_each_layer():
    from llava.analysis import LLMShape, prefill_cost
    from llava.run import predicted_prefill

    off = {"prompt_tokens": 300, "visual_tokens_before_merge": 200, "visual_tokens_after_merge": 200, "layer_seq_lens": []}
    same = predicted_prefill(TINY_LLM, off)
    assert same["flops_saved"] == 0 and same["flops_reduction"] == 1
    pruned = dict(off, prompt_tokens=150, visual_tokens_after_merge=50, layer_seq_lens=[150, 100])
    got = predicted_prefill(TINY_LLM, pruned)
    shape = LLMShape.from_config(TINY_LLM)
    want = prefill_cost(shape, [300, 300]).flops / prefill_cost(shape, [150, 100]).flops
    assert got["flops_reduction"] == pytest.approx(want) and 0 < got["flops_saved"] < 1


def test_run_summary_has_flops_and_stage_times_and_json_stays_quiet(capsys):
    import json

    code, out, err = run_cli(["run", "--frames", "2", "--max-new-tokens", "2", "--json"], capsys)
    assert code == 0 and err == ""  # --json: one object on stdout, nothing else
    result = json.loads(out)
    assert result["predicted"]["flops_reduction"] > 1 and 0 < result["predicted"]["flops_saved"] < 1
    assert set(result["timings"]) >= {"decode_s", "load_s", "preprocess_s", "generate_s"}
    code, out, _ = run_cli(["run", "--frames", "2", "--max-new-tokens", "2"], capsys)
    assert code == 0 and "FLOPs" in out and "% saved" in out and "preprocess" in out
