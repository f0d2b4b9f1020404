"""Tests of llava.video: decoding, uniform sampling, and the typed error contract."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import llava.video as video
from conftest import encode_video
from llava.errors import (
    AIMConfigError,
    AIMError,
    EmptyMediaError,
    MediaDecodeError,
    MediaError,
    MediaNotFoundError,
)
from llava.video import load_image, load_video, sample_frame_indices

ASSETS = Path(video.__file__).resolve().parent / "assets"
SIZE = 32
CODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"


def grey_level(i: int) -> int:
    """Distinct, well separated brightness of frame ``i`` (for identifying decoded frames)."""
    return 16 + 12 * i


def write_video(path: Path, frames: list[np.ndarray] | np.ndarray, fps: int = 8) -> Path:
    """Encode RGB uint8 frames with PyAV at near-lossless quality (decoded colours are checked)."""
    return encode_video(path, frames, fps=fps, codec=CODEC,
                        options={"crf": "10", "threads": "1"} if CODEC == "libx264" else None)


def grey_video(path: Path, n: int) -> Path:
    """``n`` flat grey frames, frame ``i`` at brightness :func:`grey_level` (i)."""
    return write_video(path, [np.full((SIZE, SIZE, 3), grey_level(i), np.uint8) for i in range(n)])


def frame_ids(frames: np.ndarray) -> list[int]:
    """Recover each decoded frame's index from its brightness."""
    return [int(round((float(f.mean()) - 16) / 12)) for f in frames]


@pytest.fixture(scope="module")
def clip16(tmp_path_factory) -> Path:
    return grey_video(tmp_path_factory.mktemp("v") / "clip16.mp4", 16)


# ----------------------------------------------------------------- sample_frame_indices


@settings(max_examples=300, deadline=None)
@given(total=st.integers(0, 100_000), n=st.integers(1, 2_000))
def test_sample_frame_indices_properties(total, n):
    idx = sample_frame_indices(total, n)
    assert len(idx) == min(n, total)
    assert all(isinstance(i, int) for i in idx)
    assert idx == sorted(set(idx))  # strictly increasing: sorted, no repeats
    assert all(0 <= i < total for i in idx)
    if idx:
        assert idx[0] == 0
    if min(n, total) >= 2:
        assert idx[-1] == total - 1
    if 2 <= n < total:  # nearest to numpy.linspace(0, total - 1, n)
        ref = np.linspace(0, total - 1, n)
        assert np.all(np.abs(np.array(idx) - ref) <= 0.5 + 1e-9)


def test_sample_frame_indices_examples():
    assert sample_frame_indices(10, 1) == [0]
    assert sample_frame_indices(10, 2) == [0, 9]
    assert sample_frame_indices(5, 3) == [0, 2, 4]
    assert sample_frame_indices(3, 8) == [0, 1, 2]
    assert sample_frame_indices(0, 4) == []
    assert sample_frame_indices(np.int64(7), np.int32(7)) == list(range(7))


@pytest.mark.parametrize("total, n", [(10, 0), (10, -1), (-1, 3), (10, 2.5), (10, True)])
def test_sample_frame_indices_rejects_bad_args(total, n):
    with pytest.raises(ValueError):
        sample_frame_indices(total, n)


# ----------------------------------------------------------------- official (lmms-eval) sampling


@settings(max_examples=200, deadline=None)
@given(total=st.integers(0, 5000), n=st.integers(1, 300))
def test_official_sampling_is_numpy_linspace_int(total, n):
    idx = sample_frame_indices(total, n, "official")
    if total == 0:
        assert idx == []
        return
    assert idx == np.linspace(0, total - 1, n, dtype=int).tolist()
    assert len(idx) == n and idx[0] == 0 and idx == sorted(idx) and 0 <= idx[-1] <= total - 1


@pytest.mark.parametrize(
    "total, n, uniform, official",
    [
        (10, 4, [0, 3, 6, 9], [0, 3, 6, 9]),  # agree when the steps are whole
        (16, 4, [0, 5, 10, 15], [0, 5, 10, 15]),
        (11, 4, [0, 3, 7, 10], [0, 3, 6, 10]),  # 6.67: rounded vs truncated
        (100, 3, [0, 50, 99], [0, 49, 99]),  # 49.5: rounded up vs truncated
        (5, 8, [0, 1, 2, 3, 4], [0, 0, 1, 1, 2, 2, 3, 4]),  # short clip: all once vs repeats
        (3, 32, [0, 1, 2], [0] * 16 + [1] * 15 + [2]),  # truncation: the last frame once
    ],
)
def test_uniform_and_official_differ_on_these_clip_lengths(total, n, uniform, official):
    assert sample_frame_indices(total, n) == uniform
    assert sample_frame_indices(total, n, "official") == official


def test_official_differs_on_most_clip_lengths():
    """The issue's measurement: 32 frames from clips of 33 .. 3000 frames give another index
    set on most lengths, and short clips get repeated (more) frames under the official rule."""
    lengths = range(33, 3001)
    differ = sum(sample_frame_indices(t, 32) != sample_frame_indices(t, 32, "official") for t in lengths)
    assert differ / len(lengths) > 0.9
    assert len(sample_frame_indices(20, 32)) == 20 and len(sample_frame_indices(20, 32, "official")) == 32


def test_unknown_sampling_rejected(clip16):
    with pytest.raises(AIMConfigError, match="frame sampling"):
        sample_frame_indices(10, 4, "nearest")
    with pytest.raises(AIMConfigError, match="frame sampling"):
        load_video(clip16, 4, sampling="nearest")


def test_official_sampling_decodes_repeated_frames(tmp_path):
    path = grey_video(tmp_path / "short.mp4", 5)
    frames = load_video(path, 8, backend="pyav", sampling="official")
    assert frames.shape == (8, SIZE, SIZE, 3)
    assert frame_ids(frames) == [0, 0, 1, 1, 2, 2, 3, 4]


def test_official_sampling_truncates(tmp_path):
    path = grey_video(tmp_path / "eleven.mp4", 11)
    assert frame_ids(load_video(path, 4, backend="pyav")) == [0, 3, 7, 10]
    assert frame_ids(load_video(path, 4, backend="pyav", sampling="official")) == [0, 3, 6, 10]


def test_official_sampling_with_decord(clip16, monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "decord", fake_decord(calls))
    assert frame_ids(load_video(clip16, 20, backend="decord", sampling="official")) == \
        np.linspace(0, 15, 20, dtype=int).tolist()


# ----------------------------------------------------------------- decoding


def test_shape_dtype_and_rgb_order(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    path = write_video(tmp_path / "rgb.mp4", [np.full((SIZE, SIZE, 3), c, np.uint8) for c in colours])
    frames = load_video(path, 3, backend="pyav")
    assert isinstance(frames, np.ndarray)
    assert frames.shape == (3, SIZE, SIZE, 3)
    assert frames.dtype == np.uint8
    for frame, channel in zip(frames, range(3)):
        means = frame.reshape(-1, 3).mean(0)
        assert means[channel] > 200, means
        assert all(means[c] < 60 for c in range(3) if c != channel), means


def test_uniform_sampling_covers_first_and_last(clip16):
    frames = load_video(clip16, 4, backend="pyav")
    assert frame_ids(frames) == [0, 5, 10, 15]
    assert frame_ids(load_video(str(clip16), 1, backend="pyav")) == [0]
    assert frame_ids(load_video(clip16, 16, backend="pyav")) == list(range(16))


def test_fewer_frames_than_asked_returns_all_once(tmp_path):
    path = grey_video(tmp_path / "short.mp4", 5)
    frames = load_video(path, 32, backend="pyav")
    assert frames.shape == (5, SIZE, SIZE, 3)
    assert frame_ids(frames) == [0, 1, 2, 3, 4]


def test_container_without_frame_count(tmp_path):
    # Matroska stores no frame count (stream.frames == 0): load_video must count itself.
    path = grey_video(tmp_path / "clip.mkv", 11)
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 0
    assert frame_ids(load_video(path, 3, backend="pyav")) == [0, 5, 10]


@pytest.mark.parametrize("wrong", [7, 30])
def test_wrong_frame_count_is_resampled(tmp_path, monkeypatch, wrong):
    path = grey_video(tmp_path / "clip.mkv", 11)
    monkeypatch.setattr(video._Source, "count_packets", lambda self: wrong)
    assert frame_ids(load_video(path, 3, backend="pyav")) == [0, 5, 10]


def test_auto_backend_without_decord_uses_pyav(clip16, monkeypatch):
    monkeypatch.setitem(sys.modules, "decord", None)  # makes `import decord` fail
    assert frame_ids(load_video(clip16, 2)) == [0, 15]
    assert frame_ids(load_video(clip16, 2, backend="auto")) == [0, 15]


def test_progress_off_is_silent(clip16, capsys):
    load_video(clip16, 64, backend="pyav", progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


# ----------------------------------------------------------------- shipped assets


def test_shipped_sample_video():
    path = ASSETS / "sample_video.mp4"
    assert path.is_file()
    assert path.stat().st_size < 1_000_000
    frames = load_video(path, 8, backend="pyav")
    assert frames.shape[0] == 8 and frames.shape[-1] == 3 and frames.dtype == np.uint8
    assert frames.std() > 10  # not a blank clip
    assert not np.array_equal(frames[0], frames[-1])  # things move


def test_shipped_sample_image():
    img = load_image(ASSETS / "sample_image.png")
    assert img.mode == "RGB" and min(img.size) >= 224


# ----------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(MediaNotFoundError, match="nope.mp4"):
        load_video(missing, 4)
    with pytest.raises(FileNotFoundError):
        load_video(missing, 4)
    with pytest.raises(MediaNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")


def test_directory(tmp_path):
    with pytest.raises(MediaDecodeError, match="directory"):
        load_video(tmp_path, 4)
    with pytest.raises(MediaDecodeError, match="directory"):
        load_image(tmp_path)


def test_random_bytes(tmp_path):
    path = tmp_path / "random.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(MediaDecodeError, match="random.mp4"):
        load_video(path, 4, backend="pyav")
    png = tmp_path / "random.png"
    png.write_bytes(path.read_bytes())
    with pytest.raises(MediaDecodeError, match="random.png"):
        load_image(png)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises((MediaDecodeError, EmptyMediaError), match="empty"):
        load_video(path, 4, backend="pyav")
    with pytest.raises((MediaDecodeError, EmptyMediaError)):
        load_image(path)


def test_text_file_named_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 50)
    with pytest.raises(MediaDecodeError, match="notes.mp4"):
        load_video(path, 4, backend="pyav")


def test_truncated_video(tmp_path, clip16):
    path = tmp_path / "cut.mp4"
    path.write_bytes(clip16.read_bytes()[: 200])
    with pytest.raises(MediaError):
        load_video(path, 4, backend="pyav")


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = tmp_path / "tone.wav"
    with av.open(str(path), mode="w") as c:
        stream = c.add_stream("pcm_s16le", rate=8000)
        samples = (np.sin(np.arange(800) / 5) * 1000).astype(np.int16)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)
    with pytest.raises(MediaDecodeError, match="no video stream"):
        load_video(path, 4, backend="pyav")


def test_video_stream_without_frames(tmp_path):
    path = tmp_path / "noframes.avi"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(CODEC, rate=8)
        stream.width, stream.height = SIZE, SIZE
        stream.pix_fmt = "yuv420p"
        container.start_encoding()  # header with a video stream, then no packets at all
    with pytest.raises(EmptyMediaError, match="noframes.avi"):
        load_video(path, 4, backend="pyav")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file permissions")
def test_unreadable_file(tmp_path, clip16):
    path = tmp_path / "locked.mp4"
    path.write_bytes(clip16.read_bytes())
    path.chmod(0)
    try:
        with pytest.raises(MediaDecodeError, match="permission"):
            load_video(path, 4, backend="pyav")
    finally:
        path.chmod(0o644)


def test_decord_backend_not_installed(clip16, monkeypatch):
    monkeypatch.setitem(sys.modules, "decord", None)
    with pytest.raises(AIMError, match="decord") as info:
        load_video(clip16, 4, backend="decord")
    assert "pip install llava-aim[decord]" in str(info.value)


@pytest.mark.parametrize("n", [0, -3])
def test_num_frames_below_one(clip16, n):
    with pytest.raises((ValueError, AIMError)):
        load_video(clip16, n)


def test_unknown_backend(clip16):
    with pytest.raises(AIMError, match="backend"):
        load_video(clip16, 4, backend="opencv")


def test_load_image_rgba_to_rgb(tmp_path):
    path = tmp_path / "rgba.png"
    Image.new("RGBA", (10, 6), (255, 0, 0, 128)).save(path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (10, 6)
    assert img.getpixel((0, 0))[0] == 255


def test_text_file_as_image_is_not_an_image_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("plain text, not pixels\n" * 20)
    with pytest.raises(MediaDecodeError) as err:
        load_image(path)
    msg = str(err.value)
    assert "not an image file" in msg and "notes.txt" in msg
    assert "ffmpeg" not in msg and "a image" not in msg


def test_huge_valid_png_is_too_large_not_corrupt(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (16000, 16000)).save(path)  # 256 Mpixels, a 31 kB file: PIL refuses it as a bomb
    with pytest.raises(MediaDecodeError) as err:
        load_image(path)
    msg = str(err.value)
    limit = 2 * Image.MAX_IMAGE_PIXELS
    assert "too large" in msg and "256 megapixels" in msg and f"{256e6 / limit:.2f}x" in msg
    assert "corrupt" not in msg


def _faststart_sample(path: Path) -> bytes:
    """The shipped sample remuxed with its 'moov' box (the stream table) before the data."""
    with av.open(str(ASSETS / "sample_video.mp4")) as src, \
            av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    return path.read_bytes()


@pytest.mark.parametrize("keep", [100, 300, 2000])
def test_truncated_mp4_is_called_truncated(tmp_path, keep):
    data = _faststart_sample(tmp_path / "whole.mp4")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:keep])
    with pytest.raises(MediaError) as err:
        load_video(cut, 4, backend="pyav")
    msg = str(err.value)
    assert "truncated or corrupt" in msg and f"the file ends at byte {keep}" in msg
    assert "no video stream" not in msg


# ----------------------------------------------------------------- decord backend (faked)


class _FakeNDArray:
    def __init__(self, arr):
        self._arr = arr

    def asnumpy(self):
        return self._arr


def fake_decord(calls: list, fail: bool = False):
    """A stand-in for the decord package (not installed in CI), backed by PyAV."""
    import types

    class VideoReader:
        def __init__(self, path, ctx=None):
            calls.append(path)
            if fail:
                raise RuntimeError("[decord] cannot open")
            with av.open(path) as c:
                self._frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]

        def __len__(self):
            return len(self._frames)

        def get_batch(self, indices):
            return _FakeNDArray(np.stack([self._frames[i] for i in indices]))

    mod = types.ModuleType("decord")
    mod.VideoReader = VideoReader
    mod.cpu = lambda i: ("cpu", i)
    return mod


def test_decord_backend_with_fake_module(clip16, monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "decord", fake_decord(calls))
    frames = load_video(clip16, 4, backend="decord")
    assert frames.shape == (4, SIZE, SIZE, 3) and frames.dtype == np.uint8
    assert frame_ids(frames) == [0, 5, 10, 15]
    assert frame_ids(load_video(clip16, 40, backend="auto", progress=False)) == list(range(16))
    assert len(calls) == 2


def test_decord_errors_are_wrapped_and_auto_falls_back(clip16, monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "decord", fake_decord(calls, fail=True))
    with pytest.raises(MediaDecodeError, match="clip16.mp4"):
        load_video(clip16, 4, backend="decord")
    assert frame_ids(load_video(clip16, 2, backend="auto")) == [0, 15]
    assert len(calls) == 2
