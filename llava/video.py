"""Video decoding, uniform frame sampling and image loading.

Public API
----------
:func:`sample_frame_indices`
    Pure function: which frame indices to keep out of ``total``.
:func:`load_video`
    Decode a clip and return ``num_frames`` uniformly sampled RGB frames as an
    ``(N, H, W, 3)`` ``uint8`` array, in temporal order.
:func:`load_image`
    Load an image file as an RGB :class:`PIL.Image.Image`.

Error contract (all from :mod:`llava.errors`, all subclasses of ``AIMError``):

* :class:`~llava.errors.MediaNotFoundError` - the path does not exist.
* :class:`~llava.errors.MediaDecodeError` - the path exists but cannot be read or
  decoded: a directory, no read permission, corrupt bytes, not a video/image, no
  video stream.
* :class:`~llava.errors.EmptyMediaError` - the file decodes but holds no frames.
* :class:`~llava.errors.AIMConfigError` (also a ``ValueError``) - bad arguments
  (``num_frames < 1``, unknown backend).
* :class:`~llava.errors.UnsupportedUsageError` - ``backend="decord"`` without the
  optional ``decord`` package.

No raw PyAV / decord / PIL exception escapes these functions; the original exception
is kept as ``__cause__``.
"""

from __future__ import annotations

import logging
import operator
import os
import re
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from llava.errors import (
    AIMConfigError,
    AIMError,
    EmptyMediaError,
    MediaDecodeError,
    MediaNotFoundError,
    UnsupportedUsageError,
)

__all__ = ["load_video", "load_image", "sample_frame_indices", "decord_available", "FRAME_SAMPLINGS"]

logger = logging.getLogger(__name__)

Backend = Literal["auto", "pyav", "decord"]
_BACKENDS = ("auto", "pyav", "decord")
#: "uniform": this project's rule (rounded, never repeats); "official": lmms-eval's
#: LLaVA-OneVision rule, ``np.linspace(0, T - 1, N, dtype=int)`` (truncated, repeats frames of
#: clips shorter than N), which the paper's evaluation used.
FRAME_SAMPLINGS = ("uniform", "official")

#: Show a progress bar (when ``progress=None``) from this many sampled frames on ...
PROGRESS_MIN_SAMPLED = 64
#: ... or when the clip has at least this many frames to decode.
PROGRESS_MIN_TOTAL = 3000


# --------------------------------------------------------------------------- sampling


def _as_int(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise AIMConfigError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)  # accepts int and numpy integers, rejects floats
    except TypeError:
        raise AIMConfigError(f"{name} must be an integer, got {value!r}") from None


def sample_frame_indices(total: int, num_frames: int, sampling: str = "uniform") -> list[int]:
    """Indices of ``num_frames`` frames spread over ``total`` frames, by ``sampling``.

    ``"uniform"`` (default, the project's rule): ``numpy.linspace(0, total - 1, num_frames)``
    rounded to the nearest integer (ties rounded up), computed in exact integer arithmetic,
    so the result is strictly increasing, starts at ``0`` and - when ``num_frames >= 2`` -
    ends at ``total - 1``. With ``num_frames == 1`` the result is ``[0]``. If
    ``num_frames >= total`` every frame is returned once (``list(range(total))``); frames are
    never repeated.

    ``"official"`` (lmms-eval's LLaVA-OneVision model, the paper's evaluation): exactly
    ``numpy.linspace(0, total - 1, num_frames, dtype=int)``: truncated towards 0, always
    ``num_frames`` indices, repeating frames when the clip has fewer than ``num_frames``
    (non-decreasing, not strictly increasing). ``total == 0`` gives ``[]`` under both.

    Raises :class:`~llava.errors.AIMConfigError` (a ``ValueError``) when
    ``num_frames < 1``, ``total < 0`` or ``sampling`` is unknown.
    """
    total = _as_int(total, "total")
    num_frames = _as_int(num_frames, "num_frames")
    if num_frames < 1:
        raise AIMConfigError(f"num_frames must be >= 1, got {num_frames}")
    if total < 0:
        raise AIMConfigError(f"total must be >= 0, got {total}")
    if sampling not in FRAME_SAMPLINGS:
        raise AIMConfigError(f"frame sampling must be one of {list(FRAME_SAMPLINGS)}, got {sampling!r}")
    if total == 0:
        return []
    if sampling == "official":
        return np.linspace(0, total - 1, num_frames, dtype=int).tolist()
    if num_frames >= total:
        return list(range(total))
    if num_frames == 1:
        return [0]
    span, steps = total - 1, num_frames - 1
    # round(i * span / steps) with ties up == floor((2 * i * span + steps) / (2 * steps)).
    # Since span >= steps here, consecutive values differ by >= 1 (strictly increasing).
    return [(2 * i * span + steps) // (2 * steps) for i in range(num_frames)]


# --------------------------------------------------------------------------- helpers


def decord_available() -> bool:
    """Whether the optional ``decord`` package can be imported."""
    try:
        import decord  # noqa: F401
    except Exception:  # ImportError, or a broken native build
        return False
    return True


def _check_path(path: str | os.PathLike[str], kind: str) -> Path:
    """Resolve ``path`` and raise the typed error for missing/unreadable files."""
    try:
        p = Path(os.fspath(path)).expanduser()
    except TypeError as e:
        raise MediaDecodeError(f"{kind} path must be a str or os.PathLike, got {path!r}") from e
    if not p.exists():
        raise MediaNotFoundError(
            f"{kind} file not found: '{p}'. Check the path (relative paths are resolved "
            f"from '{Path.cwd()}')."
        )
    if p.is_dir():
        raise MediaDecodeError(f"'{p}' is a directory, not a {kind} file. Pass the path of a {kind} file.")
    if not p.is_file():
        raise MediaDecodeError(f"'{p}' is not a regular file. Pass the path of a {kind} file.")
    if not os.access(p, os.R_OK):
        raise MediaDecodeError(f"no permission to read {kind} file '{p}'. Fix its permissions (e.g. chmod +r).")
    if p.stat().st_size == 0:
        raise MediaDecodeError(f"{kind} file '{p}' is empty (0 bytes). Re-create or re-download it.")
    return p


def _wrap_error(p: Path, kind: str, e: BaseException) -> MediaDecodeError:
    if isinstance(e, PermissionError):
        return MediaDecodeError(f"no permission to read {kind} file '{p}': {e}. Fix its permissions (e.g. chmod +r).")
    if kind == "image":
        return _image_error(p, e)
    cut = _truncation(p)
    if cut:
        return MediaDecodeError(f"video file '{p}' is truncated or corrupt ({cut}). Re-download or re-create it.")
    return MediaDecodeError(
        f"cannot decode video file '{p}' ({type(e).__name__}: {e}). The file may be corrupt, "
        f"truncated, or not a video; re-encode it (e.g. ffmpeg -i in -c:v libx264 out.mp4) or pass "
        f"another file."
    )


_BOMB = re.compile(r"\((\d+) pixels\) exceeds limit of (\d+) pixels")


def _image_error(p: Path, e: BaseException) -> MediaDecodeError:
    """The image-file error in the user's terms: not an image, too large, or unreadable."""
    if isinstance(e, Image.DecompressionBombError):
        m = _BOMB.search(str(e))
        if m:
            pixels, limit = int(m.group(1)), int(m.group(2))
            return MediaDecodeError(
                f"image file '{p}' is too large: {pixels / 1e6:.0f} megapixels, {pixels / limit:.2f}x the "
                f"{limit / 1e6:.0f} megapixels PIL decodes (twice PIL.Image.MAX_IMAGE_PIXELS, its guard against "
                f"decompression bombs). Downscale it (the models resize images to under 1 megapixel anyway)."
            )
        return MediaDecodeError(f"image file '{p}' is too large for PIL to decode ({e}). Downscale it.")
    if isinstance(e, UnidentifiedImageError):
        return MediaDecodeError(
            f"'{p}' is not an image file (PIL recognises no image format in it). Pass a PNG, JPEG, WebP, "
            f"BMP or GIF file."
        )
    return MediaDecodeError(
        f"cannot decode image file '{p}' ({type(e).__name__}: {e}). The file may be truncated or corrupt; "
        f"re-save it (e.g. as PNG) or pass another file."
    )


def _truncation(p: Path) -> str:
    """Why an MP4/MOV-family file (ISO boxes) is cut short: a top-level box that runs past
    the end of the file; '' when the boxes are whole or the file is not of that family."""
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8 or head[4:8] != b"ftyp":
                return ""
            at = 0
            while at + 8 <= size:
                fh.seek(at)
                box = fh.read(16)
                length, name = int.from_bytes(box[:4], "big"), box[4:8].decode("latin-1")
                if length == 1 and len(box) >= 16:
                    length = int.from_bytes(box[8:16], "big")
                elif length == 0:  # "to the end of the file"
                    return ""
                if length < 8:
                    return f"a malformed '{name}' box at byte {at}"
                if at + length > size:
                    return (f"its '{name}' box ends at byte {at + length} but the file ends at byte {size}: "
                            f"{at + length - size} bytes are missing")
                at += length
    except OSError:
        return ""
    return ""


def _progress(show: bool, total: int | None, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="frame", leave=False, disable=not show)


def _want_progress(progress: bool | None, sampled: int, total: int) -> bool:
    if progress is not None:
        return bool(progress)
    return sampled >= PROGRESS_MIN_SAMPLED or total >= PROGRESS_MIN_TOTAL


# --------------------------------------------------------------------------- PyAV backend


def _pick_video_stream(container, p: Path):
    import av

    streams = list(container.streams.video)
    if not streams:
        cut = _truncation(p)
        if cut:  # an MP4 cut short before its stream table: say so, not "no video stream"
            raise MediaDecodeError(f"video file '{p}' is truncated or corrupt ({cut}). Re-download or re-create it.")
        if not container.streams:
            raise MediaDecodeError(f"'{p}' holds no streams at all: it is truncated, corrupt or not a video file. "
                                   "Pass a video file (e.g. .mp4, .mkv, .webm).")
        raise MediaDecodeError(f"'{p}' has no video stream. Pass a video file (e.g. .mp4, .mkv, .webm).")
    # `&` and bool() work whether PyAV's Disposition is a Flag (PyAV 15) or an IntFlag (newer).
    attached = av.stream.Disposition.attached_pic
    real = [s for s in streams if not (s.disposition & attached)]
    if not real:
        raise MediaDecodeError(
            f"'{p}' has no video stream (only embedded cover art). Pass a video file (e.g. .mp4, .mkv, .webm)."
        )
    return real[0]


class _Source:
    """One opened PyAV container positioned at its start (context manager)."""

    def __init__(self, p: Path):
        import av

        self.p = p
        try:
            self.container = av.open(str(p), mode="r")
        except (AIMError, MemoryError):
            raise
        except Exception as e:
            raise _wrap_error(p, "video", e) from e
        try:
            self.stream = _pick_video_stream(self.container, p)
            self.stream.codec_context.thread_type = "AUTO"
        except BaseException:
            self.container.close()
            raise

    def __enter__(self) -> "_Source":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.container.close()
        except Exception:  # pragma: no cover - closing must never mask the real error
            pass

    def packets(self) -> Iterator:
        """Demux the video stream's packets; a demux error after some data ends the clip."""
        import av

        it = self.container.demux(self.stream)
        n = 0
        while True:
            try:
                packet = next(it)
            except StopIteration:
                return
            except (AIMError, MemoryError):
                raise
            except Exception as e:
                if isinstance(e, av.error.EOFError):
                    return  # end of data (an empty stream, or a container without a clean end)
                if n == 0:
                    raise _wrap_error(self.p, "video", e) from e
                logger.warning("'%s': demuxing stopped after %d packets (%s); using what was read", self.p, n, e)
                return
            n += 1
            yield packet

    def count_packets(self) -> int:
        return sum(1 for packet in self.packets() if packet.size > 0)

    def frames(self) -> Iterator:
        """Decode frames in order; packets that fail to decode are skipped with a warning."""
        bad = 0
        first_error: Exception | None = None
        decoded = 0
        for packet in self.packets():
            try:
                frames = packet.decode()
            except (AIMError, MemoryError):
                raise
            except Exception as e:
                bad += 1
                first_error = first_error or e
                continue
            for frame in frames:
                decoded += 1
                yield frame
        if bad:
            if decoded == 0:
                assert first_error is not None
                raise _wrap_error(self.p, "video", first_error) from first_error
            logger.warning("'%s': skipped %d undecodable packet(s) (first: %s)", self.p, bad, first_error)


def _to_rgb(frame, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or (frame.width, frame.height) == size:
        return frame.to_ndarray(format="rgb24")
    # Resolution changed mid-stream: keep the first sampled frame's size.
    return frame.to_ndarray(format="rgb24", width=size[0], height=size[1])


def _decode_selected(p: Path, total: int, num_frames: int, progress: bool | None,
                     sampling: str = "uniform") -> tuple[np.ndarray | None, int]:
    """One decode pass keeping only the frames at the sampled indices of ``total`` (an index
    sampled several times fills several slots).

    Returns ``(frames, decoded)``; ``frames`` is ``None`` when the clip turned out to
    hold a different number of frames than ``total`` (the caller then retries with the
    true count, so the sample stays uniform over the whole clip).
    """
    wanted = sample_frame_indices(total, num_frames, sampling)
    out: np.ndarray | None = None
    size: tuple[int, int] | None = None
    slot = 0
    decoded = 0
    show = _want_progress(progress, len(wanted), total)
    with _Source(p) as src, _progress(show, total, f"decoding {p.name}") as bar:
        try:
            for i, frame in enumerate(src.frames()):
                decoded = i + 1
                bar.update(1)
                if slot < len(wanted) and i == wanted[slot]:
                    rgb = _to_rgb(frame, size)
                    if out is None:
                        size = (frame.width, frame.height)
                        out = np.empty((len(wanted), *rgb.shape), dtype=np.uint8)
                    while slot < len(wanted) and i == wanted[slot]:
                        out[slot] = rgb
                        slot += 1
        except (AIMError, MemoryError):
            raise
        except Exception as e:
            raise _wrap_error(p, "video", e) from e
    if decoded != total or slot != len(wanted):
        return None, decoded
    return out, decoded


def _frame_count(src, p: Path) -> int:
    """Frames of an open clip: the container header's count, or a demux-only pass over the
    packets when the header has none (0 or wrong for some formats). EmptyMediaError if none."""
    total = src.stream.frames or 0
    if total <= 0:
        try:
            total = src.count_packets()
        except (AIMError, MemoryError):
            raise
        except Exception as e:
            raise _wrap_error(p, "video", e) from e
    if total <= 0:
        raise EmptyMediaError(f"video file '{p}' holds no frames. Pass a video with at least one frame.")
    return int(total)


def _load_video_pyav(p: Path, num_frames: int, progress: bool | None, sampling: str = "uniform") -> np.ndarray:
    with _Source(p) as src:
        total = _frame_count(src, p)
    frames, decoded = _decode_selected(p, total, num_frames, progress, sampling)
    if frames is None:
        # The header/packet count was off: sample again over the exact decoded count.
        if decoded == 0:
            cut = _truncation(p)
            raise EmptyMediaError(f"video file '{p}' is truncated or corrupt ({cut}): no frame decodes. Re-download "
                                  "or re-create it." if cut else
                                  f"video file '{p}' holds no decodable frames. Pass a video with at least one frame.")
        logger.debug("'%s': expected %d frames, decoded %d; resampling", p, total, decoded)
        frames, decoded2 = _decode_selected(p, decoded, num_frames, progress, sampling)
        if frames is None:
            raise MediaDecodeError(
                f"video file '{p}' decodes inconsistently ({decoded} then {decoded2} frames). "
                f"Re-encode it (e.g. ffmpeg -i in -c:v libx264 out.mp4)."
            )
    return frames


# --------------------------------------------------------------------------- decord backend


def _load_video_decord(p: Path, num_frames: int, progress: bool | None, sampling: str = "uniform") -> np.ndarray:
    try:
        import decord
    except Exception as e:
        raise UnsupportedUsageError(
            f"backend='decord' needs the decord package: pip install llava-aim[decord] "
            f"(or use backend='pyav'). Import failed with: {e}"
        ) from e
    try:
        vr = decord.VideoReader(str(p), ctx=decord.cpu(0))
        total = len(vr)
    except (AIMError, MemoryError):
        raise
    except Exception as e:
        raise _wrap_error(p, "video", e) from e
    if total <= 0:
        raise EmptyMediaError(f"video file '{p}' holds no frames. Pass a video with at least one frame.")
    wanted = sample_frame_indices(total, num_frames, sampling)
    show = _want_progress(progress, len(wanted), total)
    chunk = 16
    parts: list[np.ndarray] = []
    try:
        with _progress(show, len(wanted), f"decoding {p.name}") as bar:
            for start in range(0, len(wanted), chunk):
                batch = vr.get_batch(wanted[start : start + chunk])
                arr = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)
                parts.append(np.ascontiguousarray(arr, dtype=np.uint8))
                bar.update(len(arr))
    except (AIMError, MemoryError):
        raise
    except Exception as e:
        raise _wrap_error(p, "video", e) from e
    frames = np.concatenate(parts, axis=0)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) != len(wanted):
        raise MediaDecodeError(
            f"decord returned an unexpected array of shape {frames.shape} for '{p}'. Try backend='pyav'."
        )
    return frames


# --------------------------------------------------------------------------- public API


def load_video(
    path: str | os.PathLike[str],
    num_frames: int,
    backend: Backend = "auto",
    *,
    progress: bool | None = None,
    sampling: str = "uniform",
) -> np.ndarray:
    """Decode ``path`` and return ``num_frames`` frames sampled over the clip.

    Args:
        path: video file (anything FFmpeg reads: mp4, mkv, webm, avi, gif, ...).
        num_frames: how many frames to sample, ``>= 1``. Indices are
            :func:`sample_frame_indices` ``(total, num_frames)``: the first and the last
            frame are always included (when ``num_frames >= 2``). **If the clip has
            fewer frames than ``num_frames``, all its frames are returned once each**
            (the result is shorter than asked, and a warning naming both counts is logged;
            frames are never repeated or padded).
        backend: ``"pyav"`` (decode with PyAV), ``"decord"`` (needs
            ``pip install llava-aim[decord]``), or ``"auto"``: decord when it is
            importable, else PyAV. With ``"auto"`` a file decord cannot read is retried
            with PyAV.
        progress: ``None`` (default) shows a tqdm bar for >= 64 sampled frames or clips
            of >= 3000 frames; ``True``/``False`` force it on/off.
        sampling: ``"uniform"`` (default; as described above) or ``"official"``, the
            lmms-eval LLaVA-OneVision rule of the paper's evaluation: always ``num_frames``
            frames, indices truncated, frames repeated for short clips
            (:func:`sample_frame_indices`).

    Returns:
        ``numpy.ndarray`` of shape ``(N, H, W, 3)``, dtype ``uint8``, RGB, in temporal
        order, with ``N == min(num_frames, total_frames)`` (``N == num_frames`` with
        ``sampling="official"``).

    Notes:
        The PyAV backend decodes the clip sequentially (exact frame indices, no seeking
        artefacts) but only converts and keeps the sampled frames, so memory is bounded
        by ``N`` frames. The frame count comes from the container header, or - when the
        header has none - from a demux-only pass; if decoding finds a different count
        the sample is redone over the true count. Packets that fail to decode in the
        middle of a clip are skipped with a logged warning. Rotation metadata is not
        applied.

    Raises:
        MediaNotFoundError, MediaDecodeError, EmptyMediaError: see the module docstring.
        AIMConfigError: ``num_frames < 1`` or an unknown ``backend``.
        UnsupportedUsageError: ``backend="decord"`` but decord is not installed.
    """
    num_frames = _as_int(num_frames, "num_frames")
    if num_frames < 1:
        raise AIMConfigError(f"num_frames must be >= 1, got {num_frames}")
    if backend not in _BACKENDS:
        raise AIMConfigError(f"unknown video backend {backend!r}; choose one of {', '.join(_BACKENDS)}")
    if sampling not in FRAME_SAMPLINGS:
        raise AIMConfigError(f"frame sampling must be one of {list(FRAME_SAMPLINGS)}, got {sampling!r}")
    if backend == "decord" and not decord_available():
        raise UnsupportedUsageError(
            "backend='decord' needs the decord package, which is not installed: "
            "pip install llava-aim[decord] (or use backend='pyav')."
        )
    p = _check_path(path, "video")
    frames = _load_video_with(p, num_frames, backend, progress, sampling)
    if frames.shape[0] < num_frames:  # a shorter result than asked must not pass unnoticed
        logger.warning("'%s' has %d frames, fewer than the %d requested: returning each of its %d frames once",
                       p, frames.shape[0], num_frames, frames.shape[0])
    return frames


def _load_video_with(p: Path, num_frames: int, backend: Backend, progress: bool | None, sampling: str) -> np.ndarray:
    if backend == "pyav" or (backend == "auto" and not decord_available()):
        return _load_video_pyav(p, num_frames, progress, sampling)
    if backend == "decord":
        return _load_video_decord(p, num_frames, progress, sampling)
    try:
        return _load_video_decord(p, num_frames, progress, sampling)
    except (MediaDecodeError, EmptyMediaError) as e:
        logger.info("decord could not read '%s' (%s); retrying with PyAV", p, e)
        return _load_video_pyav(p, num_frames, progress, sampling)


def video_duration_s(path: str | os.PathLike[str]) -> float | None:
    """The clip's duration in seconds from its container header (PyAV), or None if unknown.

    Models whose positions count seconds (Qwen2.5-VL: the time between two temporal patches)
    need it to know how far apart the sampled frames are."""
    p = _check_path(path, "video")
    with _Source(p) as src:  # opening errors typed as load_video's
        stream, container = src.stream, src.container
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base) or None
        if container.duration is not None:
            return container.duration / 1e6 or None
        if stream.frames and stream.average_rate:
            return float(stream.frames / stream.average_rate) or None
    return None


def probe_video(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """``(frames, width, height)`` of a clip without decoding it (PyAV), for checks made
    before the real decode (how many frames there are, how much memory they take).

    The frame count comes from the container header, or from a demux-only pass when the
    header has none; decoding may still find a slightly different number (load_video
    resamples then). Raises the same typed errors as :func:`load_video`.
    """
    p = _check_path(path, "video")
    with _Source(p) as src:
        total = _frame_count(src, p)
        width, height = int(src.stream.codec_context.width or 0), int(src.stream.codec_context.height or 0)
    return total, width, height


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Load ``path`` as an RGB :class:`PIL.Image.Image` (fully read, file closed).

    EXIF orientation is applied; an alpha channel is dropped; for animated images the
    first frame is used. Raises :class:`~llava.errors.MediaNotFoundError`,
    :class:`~llava.errors.MediaDecodeError` or :class:`~llava.errors.EmptyMediaError`
    under the same contract as :func:`load_video`.
    """
    p = _check_path(path, "image")
    try:
        with Image.open(p) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb = im.convert("RGB")
    except (AIMError, MemoryError):
        raise
    except Exception as e:
        raise _wrap_error(p, "image", e) from e
    if rgb.width == 0 or rgb.height == 0:
        raise EmptyMediaError(f"image file '{p}' is empty ({rgb.width}x{rgb.height}). Pass a non-empty image.")
    return rgb
