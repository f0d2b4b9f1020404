"""AIM settings from command-line flags, with errors worded in flags (``--no-prune``), not in
Python arguments (``l1=None``).

The commands (run, visualize, flops, plan) check the common flags here, in the user's terms,
before an :class:`~llava.aim.config.AIMConfig` is built; whatever the config itself still
refuses goes through :func:`flag_errors`, which writes its fields as flags (llava.aim.knobs.worded).
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Optional

from llava.aim.config import check_fields
from llava.aim.knobs import flag_values, worded
from llava.aim.policy import check_typed_settings
from llava.errors import AIMConfigError


def check_aim_flags(retention: Optional[float], l1: Optional[int], l2: Optional[int], no_prune: bool = False,
                    num_layers: Optional[int] = None, model: str = "the model", has_no_prune: bool = True) -> None:
    """--retention, --l1/--l2 and --no-prune, against ``num_layers`` when it is known
    (``has_no_prune``: whether the command has a --no-prune flag to suggest)."""
    if no_prune and (l1 is not None or l2 is not None):
        raise AIMConfigError("--no-prune cannot be combined with --l1/--l2 (pruning off, or these layers: pick one)")
    with flag_errors():  # the rules live in llava.aim: "give both", the ranges, l1 < l2
        check_typed_settings("aim", {name: value for name, value in (("l1", l1), ("l2", l2)) if value is not None})
        check_fields(retention=retention, l1=l1, l2=l2)
    if l1 is not None and num_layers is not None and l1 > num_layers:
        raise AIMConfigError(
            f"--l1 {l1} is beyond {model}, which has {num_layers} decoder layers (valid --l1: 0..{num_layers}, "
            f"where {num_layers} prunes nothing); pass a smaller --l1" + (", or --no-prune" if has_no_prune else "")
        )


def typed_knobs(args) -> Dict[str, Any]:
    """{field: value} of the AIM flags typed in ``args`` (--no-prune: l1 and l2 None), as
    llava.aim.policy.check_typed_settings takes them."""
    typed = {name: value for name, value in flag_values(args).items() if name != "method"}
    if getattr(args, "no_prune", False):
        typed.update(l1=None, l2=None)
    return typed


def flag_words(exc: AIMConfigError) -> str:
    """An AIMConfig error's message with its fields written as the CLI's flags."""
    return worded(exc, "flag")


@contextlib.contextmanager
def flag_errors() -> Iterator[None]:
    """Re-raise AIMConfigError from building a config out of flags, worded in flags."""
    try:
        yield
    except AIMConfigError as exc:
        raise AIMConfigError(flag_words(exc)) from exc


USE_KERNELS_HELP = (
    "let transformers swap hub kernels into the layers (RMSNorm, rotary, activations; GPUs only; needs the "
    "kernels package and, the first time, the network). Default off: the stock layers, whose numerics are the "
    "reference, and no download"
)


def add_use_kernels_flag(parser) -> None:
    """``--use-kernels`` on a command that loads checkpoints (see llava.model.builder.load_pretrained_model)."""
    parser.add_argument("--use-kernels", action="store_true", help=USE_KERNELS_HELP)
