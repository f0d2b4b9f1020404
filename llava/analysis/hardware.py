"""Hardware for the roofline model: peak dense 16-bit FLOP/s and memory bandwidth (B/s).

"nvidia_A100" is the paper's card, the 40 GB A100 (312e12 FLOP/s, 1555e9 B/s), as in the
reference model (LLM-Viewer). Pass your own numbers as ``Hardware(name, flops, bandwidth)`` or,
on the command line, as ``custom:FLOPS:BW`` (e.g. ``custom:312e12:1555e9``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Union

from llava.errors import AIMConfigError


@dataclass(frozen=True)
class Hardware:
    name: str
    flops: float  # peak dense 16-bit FLOP/s
    bandwidth: float  # memory bandwidth, bytes/s

    def __post_init__(self) -> None:
        for field in ("flops", "bandwidth"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise AIMConfigError(f"hardware {field} must be a positive number, got {value!r}")

    @property
    def ridge_point(self) -> float:
        """Arithmetic intensity (OPs/byte) above which an op is compute-bound."""
        return self.flops / self.bandwidth

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)

    def describe(self) -> str:
        return f"{self.name} ({self.flops / 1e12:g} TFLOP/s, {self.bandwidth / 1e9:g} GB/s)"


HARDWARE: Dict[str, Hardware] = {
    "nvidia_A100": Hardware("nvidia_A100", 312e12, 1555e9),  # A100 40 GB (the paper's)
    "nvidia_A100_80G": Hardware("nvidia_A100_80G", 312e12, 2039e9),
    "nvidia_H100": Hardware("nvidia_H100", 989.5e12, 3350e9),  # H100 SXM, dense 16-bit
    "nvidia_H200": Hardware("nvidia_H200", 989.5e12, 4800e9),
}


def get_hardware(spec: Union[str, Hardware]) -> Hardware:
    """A table entry by name, a ``custom:FLOPS:BW`` string, or a :class:`Hardware` as is."""
    if isinstance(spec, Hardware):
        return spec
    if not isinstance(spec, str):
        raise AIMConfigError(f"hardware must be a name or 'custom:FLOPS:BW', got {spec!r}")
    if spec in HARDWARE:
        return HARDWARE[spec]
    if spec.lower().startswith("custom:"):
        parts = spec.split(":")
        if len(parts) != 3:
            raise AIMConfigError(f"custom hardware must be 'custom:FLOPS:BW' (e.g. custom:312e12:1555e9), got {spec!r}")
        try:
            flops, bandwidth = float(parts[1]), float(parts[2])
        except ValueError:
            raise AIMConfigError(f"custom hardware numbers must be numbers (FLOP/s and B/s), got {spec!r}") from None
        return Hardware(spec, flops, bandwidth)
    raise AIMConfigError(f"unknown hardware {spec!r}: use one of {sorted(HARDWARE)} or 'custom:FLOPS:BW'")
