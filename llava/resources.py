"""What a run needs from the machine, checked before the work starts.

* :func:`resolve_device` turns ``--device`` into a ``torch.device`` that exists here (a typo,
  or ``cuda`` on a machine without a GPU, is a one-line :class:`ResourceError`, not a
  traceback from deep inside ``model.to``);
* :func:`video_memory_estimate` is a LOWER bound on the memory a video prompt of N frames
  takes: the decoded frames, the processor's pixel tensor, the vision tower's output and the
  language model's prefill (its activations, KV cache and, under eager attention, its score
  matrix) for all frames. It never refuses a run that could fit; it refuses one that cannot
  (``--frames 100000``) before anything is decoded or allocated.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

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
    """Bytes of each part of a video prompt per frame; ``host`` parts stay in host memory,
    ``device`` parts go where the model runs (the same memory on cpu). ``device_per_frame_pair``
    parts grow with the square of the frames (eager attention's score matrix)."""

    host_per_frame: Dict[str, int]
    device_per_frame: Dict[str, int]
    device_per_frame_pair: Dict[str, int] = field(default_factory=dict)

    def _terms(self, same_memory: bool) -> Tuple[int, int]:
        """(bytes per frame, bytes per frame squared) of the host, or of the device when
        ``same_memory`` is None."""
        device = (sum(self.device_per_frame.values()), sum(self.device_per_frame_pair.values()))
        if same_memory is None:
            return device
        host = sum(self.host_per_frame.values())
        return (host + device[0], device[1]) if same_memory else (host, 0)

    def host_bytes(self, frames: int, same_memory: bool) -> int:
        per, pair = self._terms(same_memory)
        return frames * per + frames * frames * pair

    def device_bytes(self, frames: int) -> int:
        per, pair = self._terms(None)
        return frames * per + frames * frames * pair

    def largest_parts(self, frames: int, same_memory: Optional[bool], n: int = 3) -> str:
        """The ``n`` largest parts at ``frames`` frames, e.g. 'language model KV cache 3.1 GiB, ...'
        (``same_memory`` as in :meth:`_terms`)."""
        parts: Dict[str, int] = {}
        if same_memory is not None:  # the host's memory
            parts.update({k: frames * v for k, v in self.host_per_frame.items()})
        if same_memory is not False:  # the device's memory
            parts.update({k: frames * v for k, v in self.device_per_frame.items()})
            parts.update({k: frames * frames * v for k, v in self.device_per_frame_pair.items()})
        top = sorted(parts.items(), key=lambda kv: -kv[1])[:n]
        return ", ".join(f"{k} {_gib(v)}" for k, v in top if v)


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / (1 << 20):.0f} MiB"


def _get(cfg, key, default=None):
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def llm_bytes_per_token(config, dtype_bytes: int) -> Tuple[int, int]:
    """(KV cache bytes per token per layer, activation bytes per token) of the language model
    of checkpoint ``config``: keys and values of every key/value head; the residual stream, its
    normalised copy and the MLP's gate and up projections of the layer being run. (0, 0) where
    the config does not say."""
    text = _get(config, "text_config") or config
    hidden = int(_get(text, "hidden_size", 0) or 0)
    heads = int(_get(text, "num_attention_heads", 0) or 0)
    kv_heads = int(_get(text, "num_key_value_heads", 0) or heads)
    head_dim = int(_get(text, "head_dim", 0) or (hidden // heads if heads else 0))
    intermediate = int(_get(text, "intermediate_size", 0) or 0)
    return 2 * kv_heads * head_dim * dtype_bytes, (2 * hidden + 2 * intermediate) * dtype_bytes


def video_memory_estimate(config, clip_width: int, clip_height: int, dtype_bytes: int,
                          llm_tokens_per_frame: int = 0, kv_tokens_per_frame: int = 0,
                          eager_attention: bool = False) -> MemoryEstimate:
    """The per-frame lower bound of a video prompt for a checkpoint ``config``.

    Counted: the decoded RGB frame (uint8, the clip's resolution), the processor's pixel tensor
    (float32 at the vision tower's input size, plus its copy in the model's dtype when that is
    not float32), one vision-tower hidden state per patch, and the language model's prefill:
    ``llm_tokens_per_frame`` visual tokens entering it (after merging) through one layer's
    activations, the KV cache of ``kv_tokens_per_frame`` (a frame's visual tokens summed over
    the layers that hold them) and, with eager attention, one layer's score matrix (grows with
    the square of the frames). Not counted (so the bound stays a bound): weights, text tokens,
    every other intermediate buffer.
    """
    vision = _get(config, "vision_config")
    side = int(_get(vision, "image_size", 0) or 0)
    patch = int(_get(vision, "patch_size", 0) or 0)
    hidden = int(_get(vision, "hidden_size", 0) or 0)
    host = {"decoded frames": 3 * max(1, clip_width) * max(1, clip_height)}
    device: Dict[str, int] = {}
    pair: Dict[str, int] = {}
    if side:
        host["pixel tensor"] = 4 * 3 * side * side
        if dtype_bytes != 4:
            device["pixel tensor in the model's dtype"] = dtype_bytes * 3 * side * side
        if patch and hidden:
            device["vision features"] = dtype_bytes * (side // patch) ** 2 * hidden
    kv_per_token, act_per_token = llm_bytes_per_token(config, dtype_bytes)
    if llm_tokens_per_frame and act_per_token:
        device["language model activations"] = llm_tokens_per_frame * act_per_token
        device["language model KV cache"] = kv_tokens_per_frame * kv_per_token
        if eager_attention:
            heads = int(_get(_get(config, "text_config") or config, "num_attention_heads", 0) or 0)
            pair["eager attention scores"] = heads * dtype_bytes * llm_tokens_per_frame ** 2
    return MemoryEstimate(host, device, pair)


def _most_frames(per: int, pair: int, free: int) -> int:
    """The largest f with f * per + f^2 * pair <= free."""
    if pair == 0:
        return max(0, math.floor(free / per))
    fit = max(0, math.floor((-per + math.sqrt(per * per + 4 * pair * free)) / (2 * pair)))
    while (fit + 1) * per + (fit + 1) ** 2 * pair <= free:  # float rounding, either way
        fit += 1
    while fit > 0 and fit * per + fit * fit * pair > free:
        fit -= 1
    return fit


def check_video_fits(estimate: MemoryEstimate, frames: int, device, host_free: Optional[int],
                     device_free: Optional[int], flag: str = "--frames") -> None:
    """Refuse ``frames`` when even the lower bound does not fit in the memory that is free."""
    same = device.type == "cpu"
    checks = [("memory", same, host_free)]  # (where, same_memory flag for the estimate, free)
    if not same:
        checks.append((f"{device.type} memory", None, device_free))
    for where, same_memory, free in checks:
        per, pair = estimate._terms(same_memory)
        need = frames * per + frames * frames * pair
        if free is None or (per == 0 and pair == 0) or need <= free:
            continue
        fit = _most_frames(per, pair, free)
        parts = estimate.largest_parts(frames, same_memory)
        raise ResourceError(
            f"{flag} {frames}: a prompt of {frames} frames needs at least {need / GIB:.1f} GiB of {where} "
            f"({parts}), and {free / GIB:.1f} GiB is free (room for at most {fit} frames); pass fewer {flag}"
            if fit else
            f"{flag} {frames}: not even one frame fits in the {free / GIB:.2f} GiB of {where} that is free"
        )
