"""Stock lmms-eval models: the rows of scripts/paper_tables.py that evaluate another model as it is
(LongVA-7B), through scripts/stock_model_eval.sh rather than the AIM plugin.

What each stock model needs beyond lmms-eval (:data:`STOCK_MODELS`), whether this install has it
(:func:`missing`), and the folder that holds a setting's response cache and completion record
(:func:`folder_key`: the model, its model_args and lmms-eval's version; the plugin's key,
llava/eval/resume.py, resolves the plugin's own settings, which a stock model does not have).

    python -m llava.eval.stock missing MODEL              # exit 0 when runnable here, else 2 and why
    python -m llava.eval.stock key --model M --model_args A
    python -m llava.eval.stock is-complete --cache-dir D --model M --model_args A --tasks T
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple


@dataclass(frozen=True)
class StockModel:
    name: str  # lmms-eval's model name
    modules: Tuple[str, ...]  # what its lmms-eval class imports beyond lmms-eval
    install: str  # how to get them, in one line


STOCK_MODELS: Dict[str, StockModel] = {
    "longva": StockModel(
        "longva", ("longva", "decord"),
        "the longva package (not on PyPI: github.com/EvolvingLMMs-Lab/LongVA, commit 1021cad, "
        "pip install -e \"longva/.[train]\", which pins torch 2.1.2: use its own environment and set PYTHON to it) "
        "and decord (pip install decord)"),
}


def missing(model: str) -> Optional[str]:
    """Why this install cannot run the stock model ``model``, else None."""
    if model not in STOCK_MODELS:
        return f"{model!r} is not a stock model this project runs (known: {', '.join(STOCK_MODELS)})"
    entry = STOCK_MODELS[model]
    absent = [m for m in ("lmms_eval",) + entry.modules if importlib.util.find_spec(m) is None]
    if absent:
        return f"lmms-eval's {model} model needs {', '.join(absent)}: {entry.install}"
    return None


def folder_key(model: str, model_args: str) -> str:
    """The setting folder's name: the model, its model_args (order-free) and lmms-eval's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        lmms = version("lmms_eval")
    except PackageNotFoundError:
        lmms = "absent"
    args = sorted(part for part in model_args.split(",") if part)
    text = json.dumps({"model": model, "model_args": args, "lmms_eval": lmms}, sort_keys=True)
    return f"stock-{model}-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llava.eval.stock")
    sub = parser.add_subparsers(dest="command", required=True)
    need = sub.add_parser("missing", help="exit 0 when the stock model runs here, else 2 and what it needs")
    need.add_argument("model")
    for name in ("key", "is-complete"):
        p = sub.add_parser(name)
        p.add_argument("--model", required=True)
        p.add_argument("--model_args", default="")
        if name == "is-complete":
            p.add_argument("--cache-dir", required=True)
            p.add_argument("--tasks", required=True)
    args = parser.parse_args(argv)
    if args.command == "missing":
        why = missing(args.model)
        if why:
            print(f"error: {why}", file=sys.stderr)
            return 2
        return 0
    key = folder_key(args.model, args.model_args)
    if args.command == "key":
        print(key)
        return 0
    from llava.eval.resume import completion_of

    results = completion_of(Path(args.cache_dir) / key, args.tasks.split(","))
    print(results or f"no complete run of this setting in {Path(args.cache_dir) / key}")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
