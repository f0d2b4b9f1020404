"""What a run needs from the machine, checked before the work starts.

* :func:`resolve_device` turns ``--device`` into a ``torch.device`` that exists here (a typo,
  or ``cuda`` on a machine without a GPU, is a one-line :class:`ResourceError`, not a
  traceback from deep inside ``model.to``);
* :func:`video_memory_estimate` is a LOWER bound on the memory a video prompt of N frames
  takes before the language model runs: the decoded frames, the processor's pixel tensor and
  the vision tower's output for all frames. It never refuses a run that could fit; it refuses
  one that cannot (``--frames 100000``) before anything is decoded or allocated.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Dict, Optional

from llava.errors import ResourceError

GIB = float(1 << 30)
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def resolve_device(text: str, flag: str = "--device"):
    """The torch.device named by ``text``, checked to exist on this machine."""
    import torch

    try:
        device = torch.device(str(text))
    except (RuntimeError, ValueError):
        raise ResourceError(f"{flag} {text!r} is not a device; use cpu, cuda or cuda:N (or mps on Apple silicon)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ResourceError(
                f"{flag} {text}: no CUDA GPU is available here (torch {torch.__version__}, {built}); "
                f"use {flag} cpu, or run on a machine with a GPU"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ResourceError(
                f"{flag} {text}: this machine has {count} CUDA GPU{'s' if count != 1 else ''} "
                f"(cuda:0..cuda:{count - 1})"
            )
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ResourceError(f"{flag} {text}: MPS is not available here; use {flag} cpu")
    elif device.type != "cpu":
        raise ResourceError(f"{flag} {text}: llava-aim runs on cpu, cuda or mps, not {device.type}")
    return device


def meminfo_available_bytes() -> Optional[int]:
    """Linux's MemAvailable in bytes, or None where /proc/meminfo does not say."""
    try:
        with open("/proc/meminfo", "r", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def host_available_bytes() -> Optional[int]:
    """Memory the OS can still give this process (Linux MemAvailable, else the free physical
    pages), or None if unknown."""
    available = meminfo_available_bytes()
    if available is not None:
        return available
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def device_available_bytes(device) -> Optional[int]:
    """Free memory on ``device``: the host's for cpu, the GPU's free memory for cuda."""
    if device.type == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        return host_available_bytes()
    return None


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per frame of each part of a video prompt; ``host`` parts stay in host memory,
    ``device`` parts go where the model runs (the same memory on cpu)."""

    host_per_frame: Dict[str, int]
    device_per_frame: Dict[str, int]

    def host_bytes(self, frames: int, same_memory: bool) -> int:
        per = sum(self.host_per_frame.values()) + (sum(self.device_per_frame.values()) if same_memory else 0)
        return frames * per

    def device_bytes(self, frames: int) -> int:
        return frames * sum(self.device_per_frame.values())


def _get(cfg, key, default=None):
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def video_memory_estimate(config, clip_width: int, clip_height: int, dtype_bytes: int) -> MemoryEstimate:
    """The per-frame lower bound of a video prompt for a checkpoint ``config``.

    Counted: the decoded RGB frame (uint8, the clip's resolution), the processor's pixel tensor
    (float32 at the vision tower's input size, plus its copy in the model's dtype when that is
    not float32) and one vision-tower hidden state per patch. Not counted (so the bound stays a
    bound): weights, the language model's activations and KV cache, every intermediate buffer.
    """
    vision = _get(config, "vision_config")
    side = int(_get(vision, "image_size", 0) or 0)
    patch = int(_get(vision, "patch_size", 0) or 0)
    hidden = int(_get(vision, "hidden_size", 0) or 0)
    host = {"decoded frames": 3 * max(1, clip_width) * max(1, clip_height)}
    device: Dict[str, int] = {}
    if side:
        host["pixel tensor"] = 4 * 3 * side * side
        if dtype_bytes != 4:
            device["pixel tensor in the model's dtype"] = dtype_bytes * 3 * side * side
        if patch and hidden:
            device["vision features"] = dtype_bytes * (side // patch) ** 2 * hidden
    return MemoryEstimate(host, device)


def check_video_fits(estimate: MemoryEstimate, frames: int, device, host_free: Optional[int],
                     device_free: Optional[int], flag: str = "--frames") -> None:
    """Refuse ``frames`` when even the lower bound does not fit in the memory that is free."""
    same = device.type == "cpu"
    checks = [("memory", estimate.host_bytes(1, same), host_free)]  # (where, bytes per frame, free)
    if not same:
        checks.append((f"{device.type} memory", estimate.device_bytes(1), device_free))
    for where, per_frame, free in checks:
        need = frames * per_frame
        if free is None or per_frame == 0 or need <= free:
            continue
        fit = max(0, math.floor(free / per_frame))
        raise ResourceError(
            f"{flag} {frames}: the frames alone need at least {need / GIB:.1f} GiB of {where} before the language "
            f"model runs, and {free / GIB:.1f} GiB is free (room for at most {fit} frames' pixels); pass fewer {flag}"
            if fit else
            f"{flag} {frames}: not even one frame fits in the {free / GIB:.2f} GiB of {where} that is free"
        )
