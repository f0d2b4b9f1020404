"""AIM settings from command-line flags, with errors worded in flags (``--no-prune``), not in
Python arguments (``l1=None``).

The commands (run, visualize, flops, plan) check the common flags here, in the user's terms,
before an :class:`~llava.aim.config.AIMConfig` is built; whatever the config itself still
refuses goes through :func:`flag_errors`, which rewrites its field names as flags.
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterator, Optional

from llava.errors import AIMConfigError


def check_aim_flags(retention: Optional[float], l1: Optional[int], l2: Optional[int], no_prune: bool = False,
                    num_layers: Optional[int] = None, model: str = "the model", has_no_prune: bool = True) -> None:
    """--retention, --l1/--l2 and --no-prune, against ``num_layers`` when it is known
    (``has_no_prune``: whether the command has a --no-prune flag to suggest)."""
    if retention is not None and not (0.0 < retention <= 1.0):
        raise AIMConfigError(
            f"--retention must be in (0, 1] (the fraction of each frame's tokens kept by merging), got {retention:g}"
        )
    if no_prune and (l1 is not None or l2 is not None):
        raise AIMConfigError("--no-prune cannot be combined with --l1/--l2 (pruning off, or these layers: pick one)")
    for name, value in (("l1", l1), ("l2", l2)):
        if value is not None and value < 0:
            raise AIMConfigError(f"--{name} must be non-negative, got {value}")
    if (l1 is None) != (l2 is None):
        raise AIMConfigError("give both --l1 and --l2 (or neither for the paper's schedule scaled to the model)")
    if l1 is not None and l1 >= l2:
        raise AIMConfigError(f"--l1 must be below --l2 (pruning runs after layers l1..l2-1, need l1 < l2), "
                             f"got --l1 {l1} --l2 {l2}")
    if l1 is not None and num_layers is not None and l1 > num_layers:
        raise AIMConfigError(
            f"--l1 {l1} is beyond {model}, which has {num_layers} decoder layers (valid --l1: 0..{num_layers}, "
            f"where {num_layers} prunes nothing); pass a smaller --l1" + (", or --no-prune" if has_no_prune else "")
        )


_PHRASES = (
    (re.compile(r"or l1=None to disable pruning"), "or --no-prune to disable pruning"),
    (re.compile(r"set l1=None, l2=None \(AIMConfig\.for_method\([^)]*\) does\)"), "leave out --l1/--l2/--no-prune"),
    (re.compile(r"drop_layers=\(K,\)"), "--drop-layers K"),
    (re.compile(r"valid drop layers"), "valid --drop-layers"),
    (re.compile(r"\(leave it None\)"), "(leave out --drop-ratio)"),
    (re.compile(r"\(leave them None\)"), "(leave out --drop-layers/--drop-ratio)"),
    (re.compile(r"(?<![\w-])(l1|l2)=(-?\w+)"), r"--\1 \2"),
    (re.compile(r"(?<![\w.-])(retention|drop_layers|drop_ratio|seed|pruning_mode|method)(?![\w(])"),
     lambda m: "--" + m.group(1).replace("_", "-")),
)


def flag_words(message: str) -> str:
    """An AIMConfig error message with its field names written as the CLI's flags."""
    for pattern, replacement in _PHRASES:
        message = pattern.sub(replacement, message)
    return message


@contextlib.contextmanager
def flag_errors() -> Iterator[None]:
    """Re-raise AIMConfigError from building a config out of flags, worded in flags."""
    try:
        yield
    except AIMConfigError as exc:
        raise AIMConfigError(flag_words(str(exc))) from exc


USE_KERNELS_HELP = (
    "let transformers swap hub kernels into the layers (RMSNorm, rotary, activations; GPUs only; needs the "
    "kernels package and, the first time, the network). Default off: the stock layers, whose numerics are the "
    "reference, and no download"
)


def add_use_kernels_flag(parser) -> None:
    """``--use-kernels`` on a command that loads checkpoints (see llava.model.builder.load_pretrained_model)."""
    parser.add_argument("--use-kernels", action="store_true", help=USE_KERNELS_HELP)
