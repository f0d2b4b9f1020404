"""model_args of the lmms-eval plugin models: names, types, validation, the AIM config.

lmms-eval passes ``--model_args k=v,...`` as keyword arguments, already auto-typed (``"1"`` ->
1, ``"true"`` -> True, ``"0.25"`` -> 0.25, anything else a string), plus ``batch_size``,
``max_batch_size`` and ``device``. Everything is checked here, before a checkpoint is loaded,
so a typo fails in a second with a message naming the argument.

The method's settings are turned into an :class:`AIMConfig` in ONE place,
:func:`aim_config_from_model_args`; other token-reduction methods plug in there (``method=``).

The model_args of lmms-eval's stock models (the official AIM commands use them) are applied,
accepted as moot, or refused by :func:`adopt_stock_args`. ``python -m llava.eval.args check``
runs every check that needs no checkpoint (model_args, task names, device) for the eval scripts,
before lmms-eval's slow start-up: one line and exit 2 on the first problem.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Set, Tuple

from llava.aim.config import AIMConfig
from llava.aim.knobs import knobs, model_arg_fields, refuse_settings_with_aim_off, worded
from llava.aim.policy import METHODS, PRUMERGE_METHODS, STEP_METHODS, check_typed_settings, video_reduction
from llava.errors import AIMConfigError, EvalArgumentError

VIDEO_BACKENDS = ("auto", "pyav", "decord")
FRAME_SAMPLINGS = ("official", "uniform")  # llava.video.FRAME_SAMPLINGS, the plugin's default first
TORCH_DTYPES = ("auto", "float32", "float16", "bfloat16")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")

# AIM knobs accepted in model_args, as AIMConfig declares them (llava.aim.knobs); "aim" switches AIM
# on/off, "method" picks the method.
AIM_ARGS = ("method", "aim") + tuple(arg for arg in model_arg_fields() if arg != "method")
# Loading / input settings, with their defaults.
LOADER_DEFAULTS: Dict[str, Any] = {
    "pretrained": None,  # each model class has its own default checkpoint
    "device": "cuda",
    "device_map": None,
    "torch_dtype": "auto",
    "attn_implementation": "sdpa",
    # Hub kernels swapped into the layers by transformers (5.25 on, when asked): off, so the
    # numerics are the stock ones and an offline node loads nothing from the network.
    "use_kernels": False,
    "max_frames_num": 32,
    # lmms-eval's LLaVA-OneVision rule (np.linspace(0, T-1, N, dtype=int)), as the paper's runs;
    # "uniform" is the project's rule (llava-aim run's default)
    "frame_sampling": "official",
    "video_decode_backend": "auto",
    "batch_size": 1,
    "max_batch_size": None,  # lmms-eval passes it; unused (batch_size is the batch)
}
KNOWN_ARGS = tuple(LOADER_DEFAULTS) + AIM_ARGS
# Pixel limits of each frame / image, model_args of the plugin models whose family declares them
# (FamilyAdapter.plugin_model_args; the processors resize with min_pixels <= h * w <= max_pixels).
PIXEL_ARGS = ("max_pixels", "min_pixels")
# Tables derived from the family adapters (llava.model.families), built on first use so that
# importing this module stays light (the eval scripts' pre-check, lmms-eval's registry):
#   DEFAULT_CHECKPOINTS: plugin id -> the paper's checkpoint (FamilyAdapter.default_checkpoint);
#   PLUGIN_MODEL_TYPES: plugin id -> the config.model_type it serves;
#   PLUGIN_EXTRA_ARGS: plugin id -> the model_args it reads itself (FamilyAdapter.plugin_model_args).
#   STOCK_ARGS: every plugin's StockArg entries (FamilyAdapter.stock_model_args).
_FAMILY_TABLES = ("DEFAULT_CHECKPOINTS", "PLUGIN_MODEL_TYPES", "PLUGIN_EXTRA_ARGS", "STOCK_ARGS")


def plugin_families() -> Dict[str, Any]:
    """plugin model id -> its family adapter, in FAMILIES' order."""
    from llava.model.families import FAMILIES

    return {family.plugin_model: family for family in FAMILIES if family.plugin_model}


def __getattr__(name: str):
    if name not in _FAMILY_TABLES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    families = plugin_families()
    tables = {
        "DEFAULT_CHECKPOINTS": {p: f.default_checkpoint for p, f in families.items()},
        "PLUGIN_MODEL_TYPES": {p: f.model_types[0] for p, f in families.items()},
        "PLUGIN_EXTRA_ARGS": {p: f.plugin_model_args for p, f in families.items() if f.plugin_model_args},
        "STOCK_ARGS": tuple(arg for f in families.values() for arg in stock_args_of(f)),
    }
    globals().update(tables)  # computed once
    return tables[name]


def plugin_args(names: Iterable[str], raw: Mapping[str, Any]) -> Dict[str, Any]:
    """The validated values of a plugin model's own model_args ``names`` given in ``raw``."""
    unknown = sorted(set(names) - set(PIXEL_ARGS))
    if unknown:  # a family declared a model_arg this module cannot check
        raise EvalArgumentError(f"no validation for the plugin model_args {unknown}")
    return dict(pixel_limits({k: raw[k] for k in names if k in raw}))


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
    use_kernels: bool = False


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
        use_kernels=_as_bool("use_kernels", values["use_kernels"]),
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
        tuned = sorted(k for k in raw if k not in ("method", "aim")) + ([f"method={method}"] if method != "aim" else [])
        try:
            refuse_settings_with_aim_off(tuned, "model_arg")
        except AIMConfigError as exc:
            raise EvalArgumentError(str(exc)) from exc
        return AIMConfig.disabled()
    fields = _knob_values(raw)
    layers = _layers(raw)
    try:
        check_typed_settings(method, {**fields, **layers})
    except AIMConfigError as exc:
        raise EvalArgumentError(worded(exc, "model_arg")) from exc
    if method in PRUMERGE_METHODS:  # LLaVA-PruMerge: its own adaptive reduction, nothing else
        fields = {**fields, "retention": 1.0, "l1": None, "l2": None}
    elif video_reduction(method) is not None:  # its own budget (retention) before the LLM, no pruning
        fields = {**AIMConfig.for_method(method).to_dict(), **fields, "l1": None, "l2": None}
    elif method in STEP_METHODS:  # FastV / VTW / PDrop: their own layers, no merging unless asked
        fields = {"retention": 1.0, **fields, "l1": None, "l2": None}
    elif video_reduction(method) is not None:  # its own budget (retention) and schedule, no l1/l2
        fields = {"retention": AIMConfig.for_method(method).retention, **fields, "l1": None, "l2": None}
    else:
        fields.update(layers)
    fields["method"] = method
    try:
        cfg = AIMConfig(**fields)
        if num_layers is not None:
            cfg.check_against_model(num_layers)
    except AIMConfigError as exc:
        raise EvalArgumentError(f"bad AIM model_args: {worded(exc, 'model_arg')}") from exc
    return cfg


# How each knob kind of llava.aim.knobs reads a model_arg ("layer" and "method" are read with
# the rules that tie them to other fields, in aim_config_from_model_args). The knob's bounds and
# choices are AIMConfig's to check, so the model_args obey the declaration itself.
_READERS: Dict[str, Callable[[str, Any, Any], Any]] = {
    "float": lambda arg, value, knob: _as_float(arg, value),
    "int": lambda arg, value, knob: _as_int(arg, value),
    "choice": lambda arg, value, knob: str(value),  # AIMConfig checks the choice
    "layers": lambda arg, value, knob: _layer_list(value),
}


def _knob_values(raw: Mapping[str, Any]) -> Dict[str, Any]:
    """{field: value} of the model_args given, read as each field's knob declares."""
    declared = knobs()
    values: Dict[str, Any] = {}
    for arg, name in model_arg_fields().items():
        reader = _READERS.get(declared[name].kind)
        if arg in raw and reader is not None:
            values[name] = reader(arg, raw[arg], declared[name])
    return values


def pixel_limits(raw: Mapping[str, Any]) -> Dict[str, int]:
    """Validated ``max_pixels`` / ``min_pixels`` (only those given); max >= min >= 28 * 28."""
    limits = {name: _as_int(name, raw[name], minimum=28 * 28) for name in PIXEL_ARGS if name in raw}
    if "max_pixels" in limits and "min_pixels" in limits and limits["max_pixels"] < limits["min_pixels"]:
        raise EvalArgumentError(f"max_pixels ({limits['max_pixels']}) is below min_pixels ({limits['min_pixels']})")
    return limits


# -- model_args of lmms-eval's stock models and of the official AIM scripts -------------------------
# The official AIM commands run lmms-eval's own models of each family; swapping in a plugin model
# must not turn their model_args into errors. Each such name is applied (it becomes the plugin's
# own model_arg), moot (changes nothing here: accepted, logged), or refused for the values that
# would ask for something this plugin does not reproduce. Each family adapter lists its own
# (FamilyAdapter.stock_model_args); STOCK_ARGS gathers them, built on first use.


@dataclass(frozen=True)
class StockArg:
    """One model_arg of a stock lmms-eval model, as a plugin model takes it."""

    name: str
    models: Tuple[str, ...]  # the plugin models that take it
    keeps: Optional[Tuple[Any, ...]]  # the values that change nothing here (None: every value)
    meaning: str  # what it is here: logged when accepted, the reason when refused
    becomes: Optional[Callable[[Any], Dict[str, Any]]] = None  # applied: the plugin's model_args it sets


# What an applied stock model_arg becomes, by the name a family's stock_model_args entry gives.
_BECOMES: Dict[str, Callable[[Any], Dict[str, Any]]] = {
    "max_frames_num": lambda v: {"max_frames_num": v},
    "flash_attention_2": lambda v: ({"attn_implementation": "flash_attention_2"}
                                    if _as_bool("use_flash_attention_2", v) else {}),
}


def stock_args_of(family) -> Tuple[StockArg, ...]:
    """The family plugin's stock model_args, from its adapter's ``stock_model_args``."""
    entries = family.stock_model_args
    return tuple(StockArg(name, (family.plugin_model,), keeps, meaning, _BECOMES[becomes] if becomes else None)
                 for name, keeps, meaning, becomes in entries)


# Notes for the plugin's own model_args when given the official scripts' values.
_EAGER_NOTE = ("attn_implementation=eager (applied): AIM's pruning here does not need eager attention, it computes "
               "its scores itself (llava/model/language_model/attention.py); sdpa, the default, is faster")


def stock_arg(plugin: str, name: str) -> Optional[StockArg]:
    """The stock model_arg ``name`` as ``plugin`` takes it, or None."""
    family = plugin_families().get(plugin)
    return next((a for a in (stock_args_of(family) if family else ()) if a.name == name), None)


def adopt_stock_args(plugin: str, kwargs: Mapping[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """(model_args in the plugin's own names, one note per stock argument accepted).

    A stock argument whose value this plugin does not reproduce raises :class:`EvalArgumentError`;
    an applied one that contradicts the plugin's own name for it too (``max_num_frames=16`` with
    ``max_frames_num=32``)."""
    own = {k: v for k, v in kwargs.items() if stock_arg(plugin, k) is None}
    notes: List[str] = []
    for name, value in kwargs.items():
        arg = stock_arg(plugin, name)
        if arg is None:
            continue
        if arg.keeps is not None and not any(_same(value, kept) for kept in arg.keeps):
            kept = " or ".join(repr(k) for k in arg.keeps)
            raise EvalArgumentError(f"{name}={value!r} is not reproduced by {plugin}: {arg.meaning}; "
                                    f"drop it or pass {name}={kept}")
        for target, new in (arg.becomes(value) if arg.becomes else {}).items():
            if target in own and not _same(own[target], new):
                raise EvalArgumentError(f"{name}={value!r} means {target}={new!r}, but {target}={own[target]!r} "
                                        "is given too; drop one")
            own[target] = new
        how = "applied" if arg.becomes else "moot, accepted"
        notes.append(f"{name}={value!r} ({how}): {arg.meaning}")
    if str(own.get("attn_implementation", "")) == "eager":
        notes.append(_EAGER_NOTE)
    return own, notes


def _same(value, kept) -> bool:
    """Equal as lmms-eval types model_args: "None"/"" stand for None, "2" is 2, "True" is True."""
    if kept is None:
        return _is_none(value)
    if isinstance(kept, bool):
        try:
            return _as_bool("value", value) is kept
        except EvalArgumentError:
            return False
    if isinstance(kept, int):
        return not isinstance(value, bool) and str(value).strip() == str(kept)
    return str(value) == kept


def check_model_args(plugin: str, kwargs: Mapping[str, Any]) -> List[str]:
    """Every check a plugin model makes on its model_args before loading; the notes it would log."""
    families = plugin_families()
    if plugin not in families:
        raise EvalArgumentError(f"unknown plugin model {plugin!r}; the llava-aim models are "
                                f"{', '.join(families)}")
    adopted, notes = adopt_stock_args(plugin, kwargs)
    extra = families[plugin].plugin_model_args
    plugin_args(extra, adopted)
    raw_loader, raw_aim = split_model_args({k: v for k, v in adopted.items() if k not in extra})
    loader_args(raw_loader, families[plugin].default_checkpoint)
    aim_config_from_model_args(raw_aim)
    return notes


def _layers(raw: Mapping[str, Any]) -> Dict[str, Optional[int]]:
    given = {name: raw[name] for name in ("l1", "l2") if name in raw}  # none: "auto", as apply_aim resolves it
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


def _as_int(name: str, value, minimum: Optional[int] = None) -> int:
    """``value`` read as an integer (>= ``minimum`` when given)."""
    wanted = "an integer" if minimum is None else f"an integer >= {minimum}"
    if isinstance(value, bool):
        raise EvalArgumentError(f"{name} must be {wanted}, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int) or (minimum is not None and value < minimum):
        raise EvalArgumentError(f"{name} must be {wanted}, got {value!r}")
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


# -- `python -m llava.eval.args check`: the eval scripts' settings, before lmms-eval starts ----------
# lmms-eval passes these itself (--device, --batch_size): a model_arg of the same name would be a
# second value for one keyword.
_LAUNCHER_ARGS = ("device", "batch_size", "max_batch_size")
_TASK_LINE = re.compile(r"^(task|group|tag):[ \t]*['\"]?([^\s'\"#]+)", re.MULTILINE)
_TASK_LIST_ITEM = re.compile(r"^(?:tag|group):[ \t]*\n((?:[ \t]+-[ \t]*\S+[ \t]*\n?)+)", re.MULTILINE)


def parse_model_args(text: str) -> Dict[str, Any]:
    """``k=v,...`` typed as lmms-eval types it ("true" -> True, "3" -> 3, "0.5" -> 0.5); a name
    given twice is refused (lmms-eval would keep the last one without a word)."""
    values: Dict[str, Any] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if "=" not in item:
            raise EvalArgumentError(f"model_args item {item!r} is not name=value")
        name, value = (s.strip() for s in item.split("=", 1))
        if name in values:
            raise EvalArgumentError(f"model_args give {name} twice ({values[name]!r} and {_typed(value)!r}); "
                                    "lmms-eval would silently keep the last: give it once")
        values[name] = _typed(value)
    return values


def _typed(value: str):
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    if value.isnumeric():
        return int(value)
    try:
        return float(value)
    except ValueError:
        return value


def known_task_names(folders: Iterable[Path]) -> Set[str]:
    """The task, group and tag names the YAML files under ``folders`` define (read as text: the
    task files hold custom YAML tags that only lmms-eval can construct)."""
    names: Set[str] = set()
    for folder in folders:
        for path in Path(folder).rglob("*.yaml"):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            names.update(m.group(2) for m in _TASK_LINE.finditer(text))
            for block in _TASK_LIST_ITEM.finditer(text):  # "tag:\n  - a\n  - b"
                names.update(line.strip()[1:].strip() for line in block.group(1).splitlines() if line.strip())
    return names


def unknown_tasks(tasks: str, include_paths: Iterable[str]) -> List[str]:
    """The names in ``tasks`` that neither the include path nor lmms-eval's own task folder define
    (patterns with * or ? match any name; a path to a YAML file counts as known)."""
    folders = [Path(p) for p in include_paths if p]
    try:
        import importlib.util

        spec = importlib.util.find_spec("lmms_eval")
        if spec is not None and spec.submodule_search_locations:
            folders.append(Path(list(spec.submodule_search_locations)[0]) / "tasks")
    except (ImportError, ValueError):
        pass
    names = known_task_names(folders)
    wanted = [t.strip() for t in tasks.split(",") if t.strip()]
    return [t for t in wanted if t not in names and not os.path.isfile(t) and not _pattern_matches(t, names)]


def _pattern_matches(task: str, names: Set[str]) -> bool:
    return any(c in task for c in "*?[") and bool(fnmatch.filter(names, task))


def check_device(device: str) -> None:
    """A CUDA device where there is none, or a misspelt device: one line."""
    if device == "cpu":
        return  # always there; spares the torch import (seconds)
    from llava.errors import AIMError
    from llava.resources import resolve_device

    try:
        resolve_device(device, flag="DEVICE")
    except AIMError as exc:
        raise EvalArgumentError(str(exc)) from exc


def check_eval_settings(model: str, model_args: str, tasks: str, include_paths: Iterable[str] = (),
                        device: Optional[str] = None) -> List[str]:
    """Every setting of an eval-script run that can be checked without lmms-eval; the notes the
    plugin model will log. Raises :class:`EvalArgumentError` with one line."""
    kwargs = parse_model_args(model_args)
    twice = [k for k in _LAUNCHER_ARGS if k in kwargs]
    if twice:
        raise EvalArgumentError(f"model_args set {', '.join(twice)}, which the script passes to lmms-eval itself "
                                "(DEVICE, BATCH_SIZE): drop them from EXTRA_MODEL_ARGS")
    if device is not None:
        kwargs["device"] = device
    notes = check_model_args(model, kwargs)
    if not [t for t in tasks.split(",") if t.strip()]:
        raise EvalArgumentError("no task given (TASKS is empty)")
    unknown = unknown_tasks(tasks, include_paths)
    if unknown:
        raise EvalArgumentError(f"unknown task(s) {', '.join(unknown)}: not in lmms-eval's task list nor in the "
                                f"include path ({', '.join(p for p in include_paths if p) or 'none'}); check TASKS")
    if device is not None:
        check_device(device)
    return notes


def script_defaults(model: str, media: str) -> List[str]:
    """The eval script's defaults for plugin model ``model`` (one of the families whose AIM merges
    ``media``; empty: the first of them), as shell assignments: MODEL, MODEL_PRETRAINED (the family's default
    checkpoint) and MODEL_<NAME> for each model_arg of the paper's run (e.g. MODEL_MAX_PIXELS)."""
    import shlex

    families = {p: f for p, f in plugin_families().items() if media in f.merged_media}
    model = model or next(iter(families), "")
    if model not in families:
        names = list(families)
        raise EvalArgumentError(f"MODEL must be {', '.join(names[:-1])} or {names[-1]}, got {model!r}"
                                if len(names) > 1 else f"MODEL must be {names[0]}, got {model!r}")
    family = families[model]
    lines = [f"MODEL={shlex.quote(model)}", f"MODEL_PRETRAINED={shlex.quote(family.default_checkpoint)}"]
    lines += [f"MODEL_{name.upper()}={shlex.quote(str(value))}" for name, value in family.paper_eval_args.items()]
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llava.eval.args",
                                     description="Check an eval run's settings before lmms-eval starts.")
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = sub.add_parser("defaults", help="a plugin model's defaults for the eval scripts (shell assignments)")
    defaults.add_argument("--model", default="", help="plugin model id (default: the first for --media)")
    defaults.add_argument("--media", choices=("video", "image"), required=True, help="the benchmark's media")
    check = sub.add_parser("check", help="model, model_args, tasks and device; exit 2 with one line if wrong")
    check.add_argument("--model", required=True)
    check.add_argument("--model_args", default="")
    check.add_argument("--tasks", required=True)
    check.add_argument("--include_path", action="append", default=[])
    check.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    if args.command == "defaults":
        try:
            print("\n".join(script_defaults(args.model, args.media)))
        except EvalArgumentError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    try:
        notes = check_eval_settings(args.model, args.model_args, args.tasks, args.include_path, args.device)
    except EvalArgumentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
