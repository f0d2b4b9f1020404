"""The declaration of AIM's knobs: one :class:`Knob` per :class:`~llava.aim.config.AIMConfig` field.

Each AIMConfig field carries its Knob in ``dataclasses.field(metadata=knob(...))``: its value type,
choices or range, help text, the command-line flag and the lmms-eval model_arg that set it, and the
commands that take the flag. From that one declaration come

- the field's range rule (:class:`Bounds`, checked by :meth:`Knob.check` for every field that
  declares them, whether the value came from Python, a flag or a model_arg),
- the commands' argparse flags (:func:`add_knob_flags`),
- the lmms-eval plugin's model_args (``llava.eval.args`` parses each by its Knob's ``kind``),
- the words of errors: an :class:`~llava.errors.AIMConfigError` names the fields it is about as
  ``{field}`` tokens, and :func:`worded` renders them in the user's vocabulary (Python field,
  ``--flag`` or ``model_arg``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from llava.errors import AIMConfigError

# The commands whose flags come from the declaration.
COMMANDS = ("run", "visualize", "flops", "plan", "bench")
# How a value is read: from the command line (argparse type) and from model_args (llava.eval.args).
KINDS = ("float", "int", "choice", "layer", "layers", "method")
VOCABULARIES = ("python", "flag", "model_arg")


@dataclass(frozen=True)
class Bounds:
    """The numbers a knob allows: from ``lowest`` to ``highest`` (None: no end), each end closed
    (the end itself allowed) or open. Declared as interval text: ``bounds="[0, 1)"``, ``"(0, inf)"``."""

    lowest: Optional[float] = None
    highest: Optional[float] = None
    lowest_open: bool = False
    highest_open: bool = False

    @classmethod
    def parse(cls, text: str) -> "Bounds":
        """``"[-1, 1]"``, ``"[0, 1)"``, ``"[1, inf)"`` ("-inf" / "inf": no end) -> Bounds."""
        m = re.fullmatch(r"\s*([\[(])\s*([^,\s]+)\s*,\s*([^,\s]+)\s*([\])])\s*", text)
        if m is None:
            raise ValueError(f"bounds must read like [0, 1) or (0, inf), got {text!r}")
        opening, low, high, closing = m.groups()
        lowest, highest = float(low), float(high)
        if math.isnan(lowest) or math.isnan(highest) or lowest >= highest:
            raise ValueError(f"bounds {text!r}: need lowest < highest")
        return cls(lowest=None if lowest == -math.inf else lowest, highest=None if highest == math.inf else highest,
                   lowest_open=opening == "(", highest_open=closing == ")")

    def __contains__(self, value: float) -> bool:
        above = self.lowest is None or (value > self.lowest if self.lowest_open else value >= self.lowest)
        below = self.highest is None or (value < self.highest if self.highest_open else value <= self.highest)
        return above and below

    def __str__(self) -> str:
        """``in [0, 1)``, ``>= 1``, ``> 0``: how an error says the range."""
        if self.lowest is not None and self.highest is not None:
            return (f"in {'(' if self.lowest_open else '['}{self.lowest:g}, "
                    f"{self.highest:g}{')' if self.highest_open else ']'}")
        if self.lowest is not None:
            return f"{'>' if self.lowest_open else '>='} {self.lowest:g}"
        return f"{'<' if self.highest_open else '<='} {self.highest:g}"


@dataclass(frozen=True)
class Knob:
    """How users set one AIMConfig field."""

    kind: str  # one of KINDS
    help: str
    commands: Tuple[str, ...] = ()  # the commands with a flag for it
    choices: Tuple[str, ...] = ()  # kind "choice" / "method"
    bounds: Optional[Bounds] = None  # kind "float" / "int": the values allowed (AIMConfig checks them)
    means: str = ""  # what the value is, for errors: "a cosine similarity"
    flag: Optional[str] = None  # default: --field-name
    model_arg: Optional[str] = None  # default: field_name
    # Phrases of the user's way to turn the field off, per vocabulary (e.g. l1: "--no-prune").
    off: Optional[Mapping[str, str]] = None
    flag_default: Any = None  # argparse default (None: "not typed", the config's default applies)
    # The knob that sets a method's budget (the fraction of the visual tokens that enter the LLM):
    # what ``llava-aim plan --match-tokens / --match-tflops`` tunes, for any method that takes it.
    budget: bool = False

    def check(self, name: str, value: Any) -> None:
        """THE range rule of a numeric knob: ``value`` (of the field ``name``) is a finite number
        (kind "int": an integer; never a bool) within :attr:`bounds`, else AIMConfigError."""
        if self.bounds is None:
            return
        integer = self.kind == "int"
        is_number = isinstance(value, int) if integer else (isinstance(value, (int, float)) and math.isfinite(value))
        if is_number and not isinstance(value, bool) and value in self.bounds:
            return
        what = f" ({self.means})" if self.means else ""
        raise AIMConfigError(f"{{{name}}}{what} must be {'an integer' if integer else 'a number'} {self.bounds}, "
                             f"got {value!r}")


def knob(kind: str, help: str, bounds: Optional[str] = None, **declared) -> Dict[str, Knob]:
    """``dataclasses.field(metadata=knob(...))``: declare a field's knob (``bounds``: its range as
    interval text, "[0, 1)", for kinds "float" and "int")."""
    if kind not in KINDS:
        raise ValueError(f"knob kind must be one of {KINDS}, got {kind!r}")
    if bounds is not None and kind not in ("float", "int"):
        raise ValueError(f"bounds are for numeric knobs (float, int), not kind {kind!r}")
    return {"knob": Knob(kind=kind, help=help, bounds=None if bounds is None else Bounds.parse(bounds), **declared)}


def knobs() -> Dict[str, Knob]:
    """{field name: Knob} of every AIMConfig field, in the dataclass's order."""
    from llava.aim.config import AIMConfig

    return {f.name: f.metadata["knob"] for f in dataclasses.fields(AIMConfig) if "knob" in f.metadata}


def budget_knob() -> str:
    """The field declared ``budget=True``: every method's budget, the knob matched budgets tune."""
    [name] = [n for n, k in knobs().items() if k.budget]
    return name


def flag_of(name: str) -> str:
    declared = knobs()[name]
    return declared.flag or "--" + name.replace("_", "-")


def model_arg_of(name: str) -> str:
    return knobs()[name].model_arg or name


def dest_of(name: str) -> str:
    """The argparse attribute the flag of ``name`` sets."""
    return flag_of(name)[2:].replace("-", "_")


def word(name: str, vocabulary: str) -> str:
    """How a user of ``vocabulary`` names the field ``name``."""
    if vocabulary == "flag":
        return flag_of(name)
    if vocabulary == "model_arg":
        return model_arg_of(name)
    return name


def model_arg_fields() -> Dict[str, str]:
    """{model_arg: field name}."""
    return {model_arg_of(name): name for name in knobs()}


# -- argparse ------------------------------------------------------------------------------------
def layer_list(text: str) -> Tuple[int, ...]:
    """``--drop-layers 8,16,24`` -> (8, 16, 24)."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices such as 8,16,24, got {text!r}")


_ARGPARSE_TYPES = {"float": float, "int": int, "layer": int, "layers": layer_list}


def add_knob_flags(parser: argparse.ArgumentParser, command: str, only: Optional[Tuple[str, ...]] = None,
                   **defaults: Any) -> None:
    """Add the flags of the knobs ``command`` takes (``only``: a subset, in that order);
    ``defaults``: per-command argparse defaults by field name."""
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {COMMANDS}, got {command!r}")
    declared = knobs()
    names = only if only is not None else tuple(n for n, k in declared.items() if command in k.commands)
    for name in names:
        k = declared[name]
        options: Dict[str, Any] = {"help": k.help, "default": defaults.get(name, k.flag_default),
                                   "dest": dest_of(name)}
        if k.kind == "method":  # every method registered when the parser is made (llava.aim.policy.SPECS)
            from llava.aim.policy import SPECS

            options["choices"] = list(dict.fromkeys((*k.choices, *SPECS)))
        elif k.kind == "choice":
            options["choices"] = list(k.choices)
        else:
            options["type"] = _ARGPARSE_TYPES[k.kind]
        parser.add_argument(flag_of(name), **options)


def flag_values(args: argparse.Namespace) -> Dict[str, Any]:
    """{field: value} of the knob flags ``args`` holds that were typed (not None, not the flag's
    own default such as --method aim)."""
    out = {}
    for name, k in knobs().items():
        value = getattr(args, dest_of(name), None)
        if value is not None and value != k.flag_default:
            out[name] = value
    return out


# -- errors in the user's words ------------------------------------------------------------------
# Tokens of an AIMConfigError's message: "{f}" the field's name, "{f=v}" a setting, "{f:off}" the way
# to turn it off (l1: "l1=None" / "--no-prune" / "l1=none,l2=none"), "{f/g:unset}" the advice to
# leave fields unset, "{f:plain}" the field in prose, "{python:text}" text for Python callers only.
_TOKEN = re.compile(r"\{(?:python:([^{}]*)|(\w+(?:/\w+)*)(?::(off|unset|plain)|=([^{}]*))?)\}")


def _value_text(name: str, value: str, vocabulary: str) -> str:
    """A value as the user of ``vocabulary`` writes it: drop layers (8, 16) are 8,16 / 8/16."""
    if knobs()[name].kind == "layers" and vocabulary != "python":
        parts = [p.strip() for p in value.strip("()[] ").split(",") if p.strip()]
        return ("," if vocabulary == "flag" else "/").join(parts)
    return value


def _unset(names: Tuple[str, ...], vocabulary: str) -> str:
    if vocabulary == "python":
        return "set " + ", ".join(f"{n}=None" for n in names)
    words = [word(n, vocabulary) for n in names]
    if vocabulary == "flag":  # the flag that turns them off is left out too (--no-prune)
        offs = [(knobs()[n].off or {}).get("flag") for n in names]
        words += [o for o in dict.fromkeys(offs) if o and o.startswith("--")]
    return "leave out " + "/".join(words)


def render(template: str, vocabulary: str = "python") -> str:
    """``template`` with its field tokens in ``vocabulary``; unknown tokens stay as they are."""
    if vocabulary not in VOCABULARIES:
        raise ValueError(f"vocabulary must be one of {VOCABULARIES}, got {vocabulary!r}")
    declared = knobs()

    def one(m: "re.Match") -> str:
        python_only, names, form, value = m.groups()
        if python_only is not None:
            return python_only if vocabulary == "python" else ""
        fields = tuple(names.split("/"))
        if not all(f in declared for f in fields):
            return m.group(0)
        if form == "unset":
            return _unset(fields, vocabulary)
        name = fields[0]
        if len(fields) > 1:
            return m.group(0)
        if form == "off":
            return (declared[name].off or {}).get(vocabulary, f"{word(name, vocabulary)}=None")
        if form == "plain":
            return name.replace("_", " ") if vocabulary == "python" else word(name, vocabulary)
        if value is None:
            return word(name, vocabulary)
        text = _value_text(name, value, vocabulary)
        return f"{flag_of(name)} {text}" if vocabulary == "flag" else f"{word(name, vocabulary)}={text}"

    return re.sub(r" +\)", ")", _TOKEN.sub(one, template)).rstrip()


def worded(exc: BaseException, vocabulary: str) -> str:
    """The message of ``exc`` (an AIMConfigError) in ``vocabulary``: THE translation of config
    errors into the words the user typed."""
    template = getattr(exc, "template", None)
    return render(template, vocabulary) if template is not None else str(exc)


def fields_named(template: str) -> Tuple[str, ...]:
    """The declared fields ``template`` names, in order, once each."""
    declared = knobs()
    seen = [f for m in _TOKEN.finditer(template) if m.group(2) for f in m.group(2).split("/") if f in declared]
    return tuple(dict.fromkeys(seen))


def refuse_settings_with_aim_off(given, vocabulary: str) -> None:
    """THE rule "AIM off takes no AIM settings", for every place AIM can be switched off:
    ``given`` are the AIM settings the user typed, in ``vocabulary`` ("flag": ``--no-aim`` with
    flags such as ``--retention``; "model_arg": ``aim=0`` with names such as ``retention``).
    Raises AIMConfigError worded for that vocabulary; nothing given, nothing to refuse."""
    from llava.errors import AIMConfigError

    given = list(given)
    if not given:
        return
    if vocabulary == "flag":
        raise AIMConfigError(f"--no-aim runs the stock model, so {' and '.join(given)} would be ignored; "
                             f"drop {'it' if len(given) == 1 else 'them'}, or drop --no-aim")
    raise AIMConfigError(f"aim=0 (AIM off) cannot be combined with AIM settings {given}; drop them or set aim=1")
