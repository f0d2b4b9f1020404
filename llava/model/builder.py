"""Loading checkpoints: hub ids, local folders, and the built-in tiny models.

``load_pretrained_model`` returns (model, processor) for the checkpoints of every family in
llava/model/families/ (FAMILIES) in transformers format, optionally with AIM applied. The
built-in names (each family's ``tiny_models``, :data:`BUILTIN_MODELS`) are folders shipped in
this package (random weights from a fixed seed; see scripts/make_tiny_models.py), loaded through
the very same ``from_pretrained`` calls as a real checkpoint. Hub names a family lists in its
``checkpoint_aliases`` load as their transformers-format conversion.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Optional, Tuple

from llava.aim.config import AIMConfig
from llava.errors import ModelLoadError
from llava.model.families import FAMILIES, UNAVAILABLE, family_for_model_type

logger = logging.getLogger(__name__)

TINY_ROOT = Path(__file__).resolve().parent / "tiny"
# Each family's built-in tiny models are folders of llava/model/tiny/ (families/*.py name them).
# Those of families the installed transformers lacks stay known names (loading them says why not).
BUILTIN_MODELS = {name: TINY_ROOT / name for fam in FAMILIES + UNAVAILABLE for name in fam.tiny_models}
# The paper used the original LLaVA-NeXT-format checkpoints; transformers loads their
# llava-hf conversions (same weights, transformers layout): each family lists its own.
CHECKPOINT_ALIASES = {name: target for fam in FAMILIES for name, target in fam.checkpoint_aliases.items()}


def is_builtin(name_or_path: str) -> bool:
    return str(name_or_path) in BUILTIN_MODELS


def default_builtin(kind: str = "video"):
    """(the built-in model a tool uses for ``kind`` media when none is named, its family): the
    first tiny model of the first family in FAMILIES whose AIM merges ``kind``."""
    family = next(fam for fam in FAMILIES if kind in fam.merged_media and fam.tiny_models)
    return family.tiny_models[0], family


def builtin_models_text() -> str:
    """The built-in names for a --model help: the default first."""
    default, _ = default_builtin()
    rest = [name for name in BUILTIN_MODELS if name != default]
    return f"{default}, the default; {', '.join(rest)}"


def resolve_checkpoint(name_or_path: str) -> str:
    """Map built-in names and original LLaVA-NeXT names to something from_pretrained loads."""
    name = str(name_or_path)
    if name in BUILTIN_MODELS:
        return str(BUILTIN_MODELS[name])
    if name in CHECKPOINT_ALIASES:
        target = CHECKPOINT_ALIASES[name]
        logger.warning("%s is a LLaVA-NeXT-format checkpoint; loading its transformers conversion %s", name, target)
        return target
    return name


def known_names() -> list:
    """Names this project knows: built-in tiny models, LLaVA-NeXT aliases and their targets."""
    return sorted(set(BUILTIN_MODELS) | set(CHECKPOINT_ALIASES) | set(CHECKPOINT_ALIASES.values()))


def _suggestion(name: str) -> str:
    """' (did you mean ...?)' for a name close to a known one; '' for a known name itself (a
    correct name that is merely not downloaded has nothing to be corrected to)."""
    if name in known_names():
        return ""
    close = difflib.get_close_matches(name, [k for k in known_names() if k != name], n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _looks_like_path(name: str) -> bool:
    # "org/name" is a hub id; a path says so by its start, or by more than one slash.
    return name.startswith((".", "~")) or os.path.isabs(name) or name.count("/") > 1


def _proxy_configured() -> bool:
    return any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"))


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the hub endpoint answers a TCP connection within ``timeout_s`` (no retries).

    Behind a proxy a direct connection says nothing, so this then answers True and leaves the
    request to huggingface_hub.
    """
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if _proxy_configured():
        return True
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def locate_checkpoint(name_or_path: str) -> str:
    """What ``from_pretrained`` should load for a name, or a one-line ModelLoadError, fast.

    Built-in names and LLaVA-NeXT aliases are mapped; an existing folder is used as is; a
    path that does not exist is refused; anything else is a hub id and goes through
    transformers' own resolution (the Hugging Face cache, offline mode, a download when
    online). Before that, a hub id that is not in the cache is refused at once when the hub
    cannot be reached (HF_HUB_OFFLINE=1, or no connection within a few seconds) instead of
    spending half a minute in network retries.
    """
    name = str(name_or_path)
    source = resolve_checkpoint(name)
    if os.path.isdir(os.path.expanduser(source)):
        return os.path.expanduser(source)
    if _looks_like_path(name) or os.path.exists(source):
        raise ModelLoadError(f"checkpoint folder {name!r} does not exist{_suggestion(name)}")
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError:
        raise ModelLoadError(
            f"{name!r} is neither a local folder, a built-in model nor a hub id (org/name){_suggestion(name)}"
        ) from None
    if isinstance(try_to_load_from_cache(source, "config.json"), str):
        return source  # in the cache: transformers takes it from there (and checks for updates online)
    where = f"not a local folder and not in the Hugging Face cache ({constants.HF_HUB_CACHE})"
    if constants.HF_HUB_OFFLINE:
        raise ModelLoadError(
            f"checkpoint {name!r} is {where}, and HF_HUB_OFFLINE=1: fetch it where there is internet "
            f"(hf download {source}) into that cache, or unset HF_HUB_OFFLINE{_suggestion(name)}"
        )
    if not hub_reachable():
        raise ModelLoadError(
            f"checkpoint {name!r} is {where}, and {constants.ENDPOINT} cannot be reached: fetch it where there "
            f"is internet (hf download {source}), or set HF_HOME to a pre-fetched cache{_suggestion(name)}"
        )
    return source


def checkpoint_config(name_or_path: str):
    """(source, config, family) of a checkpoint without loading its weights: what a command
    needs to check its input against the model (depth, media, memory) before the slow part."""
    source = locate_checkpoint(name_or_path)
    config = _read_config(source)
    return source, config, family_for_model_type(getattr(config, "model_type", None))


def _first_line(exc: BaseException) -> str:
    """An upstream error's first line (its class name if it has no text), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def _read_config(source: str):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        _refuse_known_model_type(source)
        hint = (
            "the folder has no usable config.json"
            if os.path.isdir(source)
            else "it is not on the Hugging Face hub, is gated or private (log in with hf auth login), or the "
            "download failed"
        )
        raise ModelLoadError(f"cannot load checkpoint {source!r}: {hint} ({_first_line(exc)})") from exc
    return config


def _refuse_known_model_type(source: str) -> None:
    """When transformers cannot read a config: if its model_type is one the project knows but
    refuses here (a family newer than the installed release), say that instead."""
    from huggingface_hub import try_to_load_from_cache

    path = os.path.join(source, "config.json") if os.path.isdir(source) else try_to_load_from_cache(source, "config.json")
    try:
        with open(path) as fh:
            model_type = json.load(fh).get("model_type")
    except (OSError, TypeError, ValueError):  # no readable config: the caller's message stands
        return
    if any(model_type in fam.model_types for fam in UNAVAILABLE):
        family_for_model_type(model_type)  # raises UnsupportedModelError with the release it needs


def load_pretrained_model(
    name_or_path: str,
    aim: Optional[AIMConfig] = None,
    torch_dtype="auto",
    device_map=None,
    attn_implementation: str = "sdpa",
    track_sources: bool = False,
    use_kernels: bool = False,
    **model_kwargs,
) -> Tuple[object, object]:
    """Load (model, processor); apply AIM when ``aim`` is given (None: the stock model).

    ``use_kernels``: let transformers swap hub kernels into the layers (RMSNorm, rotary,
    activations on GPUs) where the installed release does that by default (5.25 on). Off by
    default: the stock layers give the reference numerics and need nothing from the network.
    """
    import transformers
    from transformers import AutoProcessor

    from llava.model.language_model.compat import kernel_kwargs

    source, _, family = checkpoint_config(name_or_path)
    model_cls = getattr(transformers, family.load_class)
    model_kwargs = {**kernel_kwargs(use_kernels), **model_kwargs}
    try:
        model = model_cls.from_pretrained(
            source, dtype=torch_dtype, device_map=device_map, attn_implementation=attn_implementation, **model_kwargs
        )
        processor = AutoProcessor.from_pretrained(source)
    except (OSError, ValueError, ImportError) as exc:
        raise ModelLoadError(f"cannot load {source!r}: {_first_line(exc)}") from exc
    model.eval()
    if aim is not None:
        from llava.model.runtime import apply_aim

        model, processor = apply_aim(model, processor, aim, track_sources=track_sources)
    return model, processor


def num_decoder_layers(model) -> int:
    return len(model.model.language_model.layers)
