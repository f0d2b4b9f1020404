"""Memory: the peak growth during a block (measured), and whether a run fits (estimated up
front, so a configuration that cannot fit fails in a second with one line instead of being
OOM-killed a minute later)."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

GIB = 1 << 30
# Growth every prefill pays whatever its length (allocator arenas, library workspaces): the
# intercept of the small bench model's peak growth against its token count, rounded up.
PREFILL_FIXED_BYTES = 128 << 20


class PeakMemory:
    """Peak memory growth during a block: CUDA allocator peak, or on Linux the process's
    resident high-water mark (VmHWM, reset through /proc/self/clear_refs after returning
    freed heap pages with malloc_trim). ``peak`` is None where neither is available."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.peak: Optional[int] = None

    @staticmethod
    def _status_kib(field_name: str) -> Optional[int]:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(field_name + ":"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        self._start = None
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak resident set size to the current one
            self._start = self._status_kib("VmRSS")
        except OSError:
            self._start = None
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._start
        elif self._start is not None:
            hwm = self._status_kib("VmHWM")
            self.peak = None if hwm is None else max(0, hwm - self._start) * 1024
        return False


# -- how much there is ----------------------------------------------------------------------
def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_headroom() -> Optional[int]:
    """Bytes left under this process's cgroup memory limit (v2, else v1); None if unlimited."""
    for limit_path, usage_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_path), _read_int(usage_path)
        if limit is not None and usage is not None and limit < (1 << 60):
            return max(0, limit - usage)
    return None


def available_bytes(device) -> Optional[int]:
    """Memory a new allocation can still get: free CUDA memory on the device; on CPU the
    smaller of MemAvailable and the cgroup's headroom (a container is killed at its limit
    even when the host has more). None when unknown."""
    from llava.resources import device_available_bytes, meminfo_available_bytes

    device = torch.device(device)
    if device.type == "cuda":
        return device_available_bytes(device)
    known = [v for v in (meminfo_available_bytes(), _cgroup_headroom()) if v is not None]
    return min(known) if known else None


# -- how much a prefill needs -----------------------------------------------------------------
@dataclass(frozen=True)
class PrefillShape:
    """One prefill of a decoder: tokens entering it, and how attention is computed."""

    tokens: int
    eager: bool = False  # eager attention materializes heads x N x N scores and probabilities
    explicit_mask: bool = False  # a materialized (N x N) boolean mask (mask mode, padding)


def decoder_params(config) -> int:
    """Parameters of a Llama-style decoder stack from its config (embeddings included)."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    attention = h * heads * head_dim * 2 + 2 * h * kv * head_dim + heads * head_dim + 2 * kv * head_dim
    per_layer = attention + 3 * h * i + 2 * h
    return config.vocab_size * h + layers * per_layer + h


def prefill_bytes(config, shape: PrefillShape, dtype_bytes: int, layers: Optional[int] = None) -> int:
    """Peak transient memory of one prefill under inference mode (weights not included):
    the KV cache of every layer (``layers``, default all), one layer's activations, and
    attention scores when eager or a materialized mask."""
    n = shape.tokens
    h, i = config.hidden_size, config.intermediate_size
    layers = config.num_hidden_layers if layers is None else layers
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    kv_cache = layers * 2 * n * kv * head_dim * dtype_bytes
    # Live at once inside a layer: about eight hidden-sized tensors (residual, norm, q/k/v,
    # attention output, the model's embeddings and output) and four intermediate-sized ones
    # (gate, up, the activation, their product). Measured on the small bench model at 6373
    # tokens: 177 MiB of peak growth (101-122 MiB at 3237 tokens) against 182 MiB (89 MiB)
    # estimated before PREFILL_FIXED_BYTES.
    activations = (8 * n * h + 4 * n * i) * dtype_bytes + PREFILL_FIXED_BYTES
    if shape.eager:
        activations += 2 * heads * n * n * dtype_bytes  # scores, then probabilities
    elif shape.explicit_mask:
        activations += n * n  # boolean (1, 1, N, N)
    return kv_cache + activations


def vision_bytes(vision_dims: Dict[str, int], frames: int, size: int = 384, patch: int = 14,
                 dtype_bytes: int = 4) -> int:
    """The end-to-end input and one vision-tower layer over all frames at once: the uint8
    video, its float32 pixels and the model-dtype copy, and a ViT encoder layer's activations."""
    patches = (size // patch) ** 2
    pixels = frames * 3 * size * size
    video = pixels  # uint8
    tower = frames * patches * (4 * vision_dims["hidden_size"] + 2 * vision_dims["intermediate_size"]) * dtype_bytes
    return video + pixels * 4 + pixels * dtype_bytes + tower


def vision_params(vision_dims: Dict[str, int], text_hidden: int, patch: int = 14, size: int = 384) -> int:
    """A ViT encoder (no class token) + a two-layer projector, from their widths."""
    hv, iv, layers = vision_dims["hidden_size"], vision_dims["intermediate_size"], vision_dims["num_hidden_layers"]
    embeddings = 3 * patch * patch * hv + (size // patch) ** 2 * hv
    encoder = layers * (4 * hv * hv + 2 * hv * iv + 6 * hv)
    projector = hv * text_hidden + text_hidden * text_hidden
    return embeddings + encoder + projector


PATCH_VALUES = 3 * 2 * 14 * 14  # one temporal patch's pixel values: 3 colours x 2 frames x 14 x 14


def merger_tower_params(widths, vision_dims: Dict[str, Any], out_hidden: int, merge: int = 2) -> int:
    """Parameters of a patch-merger vision tower and its merger (norm, then (4E -> 4E ->
    out_hidden) over each 2x2 block), from ``widths`` (the adapter's ``bench_tower_widths``:
    block width E, MLP width, LayerNorm with a bias (else RMSNorm), a gated MLP (else fc1/fc2))
    and the config's depth; the patch embedding is a bias-free Conv3d over (2, 14, 14) patches."""
    e, m, layer_norm, gated = widths
    norms = 4 * e if layer_norm else 2 * e  # two per block, LayerNorm has a bias
    mlp = 3 * e * m + 2 * m + e if gated else 2 * e * m + m + e
    block = norms + (3 * e * e + 3 * e) + (e * e + e) + mlp
    wide = merge * merge * e
    merger = norms // 2 + wide * wide + wide + wide * out_hidden + out_hidden
    return PATCH_VALUES * e + vision_dims["depth"] * block + merger


def merger_tower_bytes(widths, patches: int, video_bytes: int, dtype_bytes: int = 4) -> int:
    """The end-to-end input and one tower block over every patch at once (the tower runs the
    whole clip as one sequence, attention split per temporal group): the uint8 video, the
    processor's float32 frames and patch values, the model-dtype copy, and a block's
    activations (about seven width-sized and two MLP-sized tensors per patch; gated three)."""
    e, m, _, gated = widths
    values = patches * PATCH_VALUES
    block = patches * (7 * e + (3 if gated else 2) * m) * dtype_bytes
    return video_bytes + 4 * video_bytes + values * 4 + values * dtype_bytes + block


def describe_bytes(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / (1 << 20):.0f} MiB"
