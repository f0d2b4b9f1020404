"""model_args of the lmms-eval plugin models: names, types, validation, the AIM config.

lmms-eval passes ``--model_args k=v,...`` as keyword arguments, already auto-typed (``"1"`` ->
1, ``"true"`` -> True, ``"0.25"`` -> 0.25, anything else a string), plus ``batch_size``,
``max_batch_size`` and ``device``. Everything is checked here, before a checkpoint is loaded,
so a typo fails in a second with a message naming the argument.

The method's settings are turned into an :class:`AIMConfig` in ONE place,
:func:`aim_config_from_model_args`; other token-reduction methods plug in there (``method=``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

from llava.aim.config import AIMConfig
from llava.aim.policy import METHODS, PRUMERGE_METHODS, STEP_METHODS
from llava.errors import AIMConfigError, EvalArgumentError

VIDEO_BACKENDS = ("auto", "pyav", "decord")
FRAME_SAMPLINGS = ("official", "uniform")  # llava.video.FRAME_SAMPLINGS, the plugin's default first
TORCH_DTYPES = ("auto", "float32", "float16", "bfloat16")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")

# AIM knobs accepted in model_args; "aim" switches AIM on/off, "method" picks the method.
AIM_ARGS = ("method", "aim", "retention", "l1", "l2", "importance", "merge_order", "merge_weighting",
            "merge_count", "merge_metric", "tie_break",
            "pruning_mode", "pagerank_tau", "pagerank_iters", "importance_memory_mb", "positions",
            "drop_layers", "drop_ratio", "seed")  # the last three: baselines / controls (llava.aim.policy)
# Loading / input settings, with their defaults.
LOADER_DEFAULTS: Dict[str, Any] = {
    "pretrained": None,  # each model class has its own default checkpoint
    "device": "cuda",
    "device_map": None,
    "torch_dtype": "auto",
    "attn_implementation": "sdpa",
    "max_frames_num": 32,
    # lmms-eval's LLaVA-OneVision rule (np.linspace(0, T-1, N, dtype=int)), as the paper's runs;
    # "uniform" is the project's rule (llava-aim run's default)
    "frame_sampling": "official",
    "video_decode_backend": "auto",
    "batch_size": 1,
    "max_batch_size": None,  # lmms-eval passes it; unused (batch_size is the batch)
}
KNOWN_ARGS = tuple(LOADER_DEFAULTS) + AIM_ARGS
# The paper's checkpoints (LLaVA-NeXT names; their llava-hf conversions are what loads).
DEFAULT_CHECKPOINTS = {
    "llava_onevision_aim": "lmms-lab/llava-onevision-qwen2-7b-ov",
    "llava_aim": "liuhaotian/llava-v1.5-7b",
    "qwen2_vl_aim": "Qwen/Qwen2-VL-7B-Instruct",
    "qwen2_5_vl_aim": "Qwen/Qwen2.5-VL-7B-Instruct",
}
# The checkpoint family (config.model_type) each plugin model serves.
PLUGIN_MODEL_TYPES = {
    "llava_onevision_aim": "llava_onevision",
    "llava_aim": "llava",
    "qwen2_vl_aim": "qwen2_vl",
    "qwen2_5_vl_aim": "qwen2_5_vl",
}
# Pixel limits of each frame / image, model_args of the Qwen-VL plugin models only (the
# processors resize to a multiple of 28 px with min_pixels <= h * w <= max_pixels).
PIXEL_ARGS = ("max_pixels", "min_pixels")


@dataclass(frozen=True)
class LoaderArgs:
    """How to load the checkpoint and read the media."""

    pretrained: str
    device: str
    device_map: Optional[str]
    torch_dtype: str
    attn_implementation: str
    max_frames_num: int
    frame_sampling: str
    video_decode_backend: str
    batch_size: int


def split_model_args(kwargs: Mapping[str, Any]):
    """(loader settings, AIM settings); an unknown name raises :class:`EvalArgumentError`."""
    unknown = sorted(k for k in kwargs if k not in KNOWN_ARGS)
    if unknown:
        raise EvalArgumentError(
            f"unknown model_args {unknown}; accepted: {', '.join(KNOWN_ARGS)} "
            "(check the spelling in --model_args)"
        )
    loader = {k: v for k, v in kwargs.items() if k in LOADER_DEFAULTS}
    aim = {k: v for k, v in kwargs.items() if k in AIM_ARGS}
    return loader, aim


def loader_args(raw: Mapping[str, Any], default_pretrained: str) -> LoaderArgs:
    """Validated :class:`LoaderArgs` from the loader part of model_args."""
    values = {**LOADER_DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
    pretrained = values["pretrained"] or default_pretrained
    frames = _as_int("max_frames_num", values["max_frames_num"], minimum=1)
    batch_size = _as_int("batch_size", values["batch_size"], minimum=1)  # > 1: llava.eval.lmms_model batches
    device_map = values["device_map"]
    if device_map in ("", "none", "None"):
        device_map = None
    return LoaderArgs(
        pretrained=str(pretrained),
        device=str(values["device"]),
        device_map=None if device_map is None else str(device_map),
        torch_dtype=_choice("torch_dtype", values["torch_dtype"], TORCH_DTYPES),
        attn_implementation=_choice("attn_implementation", values["attn_implementation"], ATTN_IMPLEMENTATIONS),
        max_frames_num=frames,
        frame_sampling=_choice("frame_sampling", values["frame_sampling"], FRAME_SAMPLINGS),
        video_decode_backend=_choice("video_decode_backend", values["video_decode_backend"], VIDEO_BACKENDS),
        batch_size=batch_size,
    )


def aim_config_from_model_args(raw: Mapping[str, Any], num_layers: Optional[int] = None) -> AIMConfig:
    """The AIM setting a run asks for.

    ``aim`` (default on) false gives :meth:`AIMConfig.disabled` (the stock model). Otherwise
    fields not given keep :class:`AIMConfig`'s defaults; l1/l2 not given stay "auto", which
    apply_aim resolves for the family and depth (the official schedule where there is one,
    else the paper's (14, 22) of 28 layers scaled; exactly (14, 22) on Qwen2-7B);
    ``l1=none,l2=none`` disables pruning. With ``num_layers=None`` only the values
    are checked (before loading; the depth check then happens after loading).
    """
    unknown = sorted(k for k in raw if k not in AIM_ARGS)
    if unknown:
        raise EvalArgumentError(f"not AIM settings: {unknown}; AIM settings are {', '.join(AIM_ARGS)}")
    method = str(raw.get("method", "aim")).lower()
    if method not in METHODS:
        raise EvalArgumentError(f"method must be one of {list(METHODS)}, got {raw.get('method')!r}")
    if not _as_bool("aim", raw.get("aim", True)):
        tuned = sorted(k for k in raw if k not in ("method", "aim"))
        if tuned:
            raise EvalArgumentError(f"aim=0 (AIM off) cannot be combined with AIM settings {tuned}; drop them or set aim=1")
        return AIMConfig.disabled()
    fields: Dict[str, Any] = {}
    for name in ("retention", "pagerank_tau"):
        if name in raw:
            fields[name] = _as_float(name, raw[name])
    for name in ("pagerank_iters", "importance_memory_mb"):
        if name in raw:
            fields[name] = _as_int(name, raw[name], minimum=1)
    for name in ("importance", "merge_order", "merge_weighting", "pruning_mode", "merge_count", "merge_metric",
                 "tie_break", "positions"):
        if name in raw:
            fields[name] = str(raw[name])
    if method in PRUMERGE_METHODS:  # LLaVA-PruMerge: its own adaptive reduction, nothing else
        # retention=1 (no merging) is what the eval scripts pass for every baseline: not a conflict
        extra = sorted(k for k in ("retention", "l1", "l2", "drop_layers", "drop_ratio") if k in raw
                       and not (k == "retention" and fields.get("retention") == 1.0))
        if extra:
            raise EvalArgumentError(f"method={method} reduces tokens before the LLM by itself; {extra} do not apply")
        fields = {**fields, "retention": 1.0, "l1": None, "l2": None}
    elif method in STEP_METHODS:  # FastV / VTW / PDrop: their own layers, no merging unless asked
        if "l1" in raw or "l2" in raw:
            raise EvalArgumentError(f"method={method} prunes at drop_layers (e.g. drop_layers=8/16/24), not l1/l2")
        fields = {"retention": 1.0, **fields, "l1": None, "l2": None}
    else:
        fields.update(_layers(raw))
    if "drop_layers" in raw:
        fields["drop_layers"] = _layer_list(raw["drop_layers"])
    if "drop_ratio" in raw:
        fields["drop_ratio"] = _as_float("drop_ratio", raw["drop_ratio"])
    if "seed" in raw:
        fields["seed"] = _as_int("seed", raw["seed"], minimum=0)
    fields["method"] = method
    try:
        cfg = AIMConfig(**fields)
        if num_layers is not None:
            cfg.check_against_model(num_layers)
    except AIMConfigError as exc:
        raise EvalArgumentError(f"bad AIM model_args: {exc}") from exc
    return cfg


def pixel_limits(raw: Mapping[str, Any]) -> Dict[str, int]:
    """Validated ``max_pixels`` / ``min_pixels`` (only those given); max >= min >= 28 * 28."""
    limits = {name: _as_int(name, raw[name], minimum=28 * 28) for name in PIXEL_ARGS if name in raw}
    if "max_pixels" in limits and "min_pixels" in limits and limits["max_pixels"] < limits["min_pixels"]:
        raise EvalArgumentError(f"max_pixels ({limits['max_pixels']}) is below min_pixels ({limits['min_pixels']})")
    return limits


def _layers(raw: Mapping[str, Any]) -> Dict[str, Optional[int]]:
    given = {name: raw[name] for name in ("l1", "l2") if name in raw}
    if not given:
        return {}  # "auto": apply_aim resolves it for the model's family and depth
    if len(given) == 1:
        raise EvalArgumentError(f"give both l1 and l2 (or neither for the paper's schedule), got {given}")
    return {name: None if _is_none(v) else _as_int(name, v, minimum=0) for name, v in given.items()}


def _layer_list(value) -> tuple:
    """drop_layers: an integer, or integers joined by '/' (lmms-eval splits model_args on ',')."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    parts = str(value).replace(":", "/").split("/")
    if not all(p.strip().isdigit() for p in parts):
        raise EvalArgumentError(f"drop_layers must be layer indices joined by '/', e.g. 8/16/24, got {value!r}")
    return tuple(int(p) for p in parts)


def _is_none(value) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "off", ""))


def _as_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise EvalArgumentError(f"{name} must be 1/0 (or true/false), got {value!r}")


def _as_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool):
        raise EvalArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int) or value < minimum:
        raise EvalArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _as_float(name: str, value) -> float:
    if isinstance(value, bool):
        raise EvalArgumentError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise EvalArgumentError(f"{name} must be a number, got {value!r}") from None


def _choice(name: str, value, choices) -> str:
    text = str(value)
    if text not in choices:
        raise EvalArgumentError(f"{name} must be one of {list(choices)}, got {value!r}")
    return text
