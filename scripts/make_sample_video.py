"""Write the synthetic sample clip and image shipped in ``llava/assets/``.

    python scripts/make_sample_video.py [--out-dir llava/assets]

The scene: a soft, low-contrast textured background (large near-flat regions that token
merging should collapse) with a few distinct coloured shapes moving across it (objects
that should survive merging). Deterministic (fixed seed, fixed encoder settings),
PyAV + numpy only. Writes ``sample_video.mp4`` (64 frames, 8 fps, 256x256, h264 when
PyAV has libx264, else mpeg4) and ``sample_image.png`` (336x336, same scene), and
fails if the video is not under 1 MB.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import av
import numpy as np

SEED = 20240607
NUM_FRAMES = 64
FPS = 8
VIDEO_SIZE = 256
IMAGE_SIZE = 336
MAX_BYTES = 1_000_000


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Sky-blue top half, grass-green bottom half, gentle smooth texture (float, 0..255)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    bg = np.empty((size, size, 3), np.float32)
    sky = np.array([150, 190, 230], np.float32)
    grass = np.array([90, 150, 70], np.float32)
    horizon = 0.55
    bg[:] = np.where((y < horizon)[..., None], sky, grass)
    # Low-frequency texture: a few random sinusoids, a few grey levels of amplitude.
    tex = np.zeros((size, size), np.float32)
    for _ in range(4):
        fx, fy = rng.uniform(1.0, 4.0, size=2)
        phase = rng.uniform(0, 2 * np.pi)
        tex += np.sin(2 * np.pi * (fx * x + fy * y) + phase)
    bg += 6.0 * tex[..., None]
    # A gradient in the sky so the region is "flat" but not constant.
    bg[y < horizon] -= (40 * (horizon - y[y < horizon]))[..., None]
    return bg


def _scene(t: float, size: int, bg: np.ndarray) -> np.ndarray:
    """Frame at time ``t`` in [0, 1]: background + moving shapes, uint8 RGB (size, size, 3)."""
    img = bg.copy()
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size

    # Red disc moving left -> right along the horizon, bobbing.
    cx, cy, r = 0.12 + 0.76 * t, 0.45 + 0.08 * np.sin(4 * np.pi * t), 0.09
    img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = (220, 40, 40)

    # Yellow square moving right -> left in the grass.
    sx, sy, h = 0.85 - 0.7 * t, 0.75, 0.08
    img[(abs(x - sx) < h) & (abs(y - sy) < h)] = (240, 210, 40)

    # Purple triangle falling from the top-left.
    tx, ty, s = 0.25 + 0.1 * t, 0.1 + 0.45 * t, 0.12
    inside = (y > ty - s) & (y < ty + s) & (abs(x - tx) < (y - (ty - s)) / 2)
    img[inside] = (130, 50, 180)

    # White/black checker "ball" circling the centre (high-frequency detail).
    ang = 2 * np.pi * t
    bx, by, br = 0.5 + 0.22 * np.cos(ang), 0.5 + 0.22 * np.sin(ang), 0.07
    disc = (x - bx) ** 2 + (y - by) ** 2 < br * br
    checker = ((np.floor(x * size / 6) + np.floor(y * size / 6)) % 2).astype(bool)
    img[disc & checker] = (245, 245, 245)
    img[disc & ~checker] = (20, 20, 20)

    return np.clip(img, 0, 255).astype(np.uint8)


def _codec() -> str:
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_video(path: Path, frames: np.ndarray, fps: int) -> str:
    codec = _codec()
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            # Single-threaded + fixed CRF keeps the output byte-identical across runs.
            stream.options = {"crf": "26", "preset": "medium", "threads": "1"}
        else:
            stream.bit_rate = 400_000
        for arr in frames:
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return codec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = Path(__file__).resolve().parent.parent / "llava" / "assets"
    ap.add_argument("--out-dir", type=Path, default=default_out)
    args = ap.parse_args(argv)
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(SEED)
    bg_video = _background(VIDEO_SIZE, rng)
    frames = np.stack([_scene(i / (NUM_FRAMES - 1), VIDEO_SIZE, bg_video) for i in range(NUM_FRAMES)])
    video_path = out / "sample_video.mp4"
    codec = write_video(video_path, frames, FPS)
    size = video_path.stat().st_size
    print(f"wrote {video_path} ({size} bytes, {size / 1e6:.3f} MB; {NUM_FRAMES} frames, "
          f"{VIDEO_SIZE}x{VIDEO_SIZE}, {FPS} fps, {codec})")
    if size >= MAX_BYTES:
        print(f"error: {video_path} is {size} bytes, must be under {MAX_BYTES}", file=sys.stderr)
        return 1

    rng = np.random.default_rng(SEED)
    bg_image = _background(IMAGE_SIZE, rng)
    from PIL import Image

    image_path = out / "sample_image.png"
    Image.fromarray(_scene(0.5, IMAGE_SIZE, bg_image)).save(image_path, optimize=True)
    print(f"wrote {image_path} ({image_path.stat().st_size} bytes, {IMAGE_SIZE}x{IMAGE_SIZE})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
