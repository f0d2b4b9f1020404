"""Resuming evaluations without mixing settings.

Every run of the evaluation scripts keeps its responses in a folder of its own, named by a key
of everything that decides a response (:func:`setting_of`):

* the plugin model and its model_args *resolved* the way the plugin resolves them: the whole
  AIMConfig with every default filled in and "auto" layers / merge metric resolved for the
  checkpoint's family and depth, frames, frame sampling, video decoder, pixel limits, the
  dtype (torch_dtype=auto: the checkpoint's own) and the attention backend;
* the checkpoint's content (a digest of a folder; a hub id's commit, resolved before the
  download so a requeued run keeps its key);
* a fingerprint of the code: every file of the imported ``llava`` package (its .py files and
  the package data that reaches an answer: tiny models, task files, synthetic media);
* the versions of transformers, torch, lmms-eval, tokenizers and the video decoders.

A change of any part gives another folder, so nothing cached is reused for it; what decides no
answer (batch_size, device, the order or spelling of model_args) is left out. ``CACHE_DIR/index.jsonl``
keeps every key with its parts, so the log names the parts that changed since the last run of
the same model and checkpoint name. A run of the whole setting (no LIMIT) that succeeded leaves
``complete.json`` (its tasks and results file) in the folder: what paper_tables.py checks.

Two stores live in that folder:

* lmms-eval's response cache (``--use_cache FOLDER``). In lmms-eval 0.7.3 it stores a request
  type's responses only after the model has answered all of them, and it cannot replay
  multiple-choice (loglikelihood) answers, so on its own it resumes nothing of a run killed
  halfway;
* the plugin's resume journal (``journal.rank<R>.jsonl``): every answer appended and fsync'd as
  soon as it is computed, and read back by every rank on the next start (so a rerun with another
  number of processes also resumes). A request's journal key is its task, split, document,
  prompt, generation settings or continuation, and media identity.

``python -m llava.eval.resume key --model M --model_args ARGS [--write CACHE_DIR]`` prints the
folder key (or creates the folder); ``prepare FOLDER`` merges the shards of runs that were killed
before lmms-eval merged them into its root ``cache.db`` (the scripts do both before each run);
``complete`` writes the completion record and ``is-complete`` checks for one.
"""

from __future__ import annotations

import argparse
import functools
import glob
import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

logger = logging.getLogger(__name__)

RESUME_DIR_ENV = "LLAVA_AIM_RESUME_DIR"
KEY_FILE = "setting.json"  # what the folder's key was computed from
COMPLETE_FILE = "complete.json"  # written after a run of the whole setting (no limit) succeeded
INDEX_FILE = "index.jsonl"  # in CACHE_DIR: every key used there, with its parts
_HASHED_BYTES = 1 << 20  # of each weight file: the first and last MiB, and its size
# Packages whose version can change an answer (the model code, the kernels, the tokenizer, the
# task and prompt code of lmms-eval, the video decoders).
VERSIONED = ("transformers", "torch", "lmms_eval", "tokenizers", "av", "decord")
# The parts of a key, in the words the log uses when one of them changed.
PART_NAMES = {
    "model": "plugin model",
    "aim": "resolved AIM setting",
    "inputs": "input setting (frames, frame sampling, video decoder, pixels)",
    "dtype": "dtype",
    "attn_implementation": "attention backend",
    "use_kernels": "hub kernels (use_kernels)",
    "checkpoint": "checkpoint content",
    "code": "code fingerprint",
    **{f"version:{name}": f"{name.replace('_', '-')} version" for name in VERSIONED},
}


def _package_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # not installed (e.g. the optional decord)
        return "absent"


def _file_digest(path: Path) -> str:
    """Size and the first and last MiB of a (possibly multi-GB) file: changes of the weights
    that keep the size and both ends identical are the only ones this misses."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(_HASHED_BYTES))
        if size > 2 * _HASHED_BYTES:
            f.seek(size - _HASHED_BYTES)
            h.update(f.read(_HASHED_BYTES))
    return h.hexdigest()[:16]


def _folder_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name.endswith((".json", ".jinja", ".txt", ".model")) and path.stat().st_size < (16 << 20):
            h.update(name.encode() + path.read_bytes())
        elif name.endswith((".safetensors", ".bin", ".pt", ".pth", ".gguf")):
            h.update(name.encode() + _file_digest(path).encode())
    return h.hexdigest()[:16]


def _source_digest(package: Path) -> str:
    """Every file of a package folder (code, tiny models, task files, media), bytecode aside."""
    h = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*") if p.is_file()):
        name = path.relative_to(package).as_posix()
        if "__pycache__" in path.parts or name.endswith((".pyc", ".pyo")):
            continue
        h.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def code_fingerprint() -> str:
    """A digest of the source of the ``llava`` package this process imported: any edit of the
    code or of its package data (tiny models, task yaml, synthetic media) changes it."""
    import llava

    return _source_digest(Path(llava.__file__).resolve().parent)


def checkpoint_fingerprint(pretrained: str) -> str:
    """What checkpoint a name loads, as a string that changes when its content changes.

    Built-in and local folders: a digest of their configs and weight files. Hub ids: the commit
    the loader will use (asked from the hub when online, so a checkpoint not yet downloaded is
    keyed by the same commit before and after its download; the cached one offline). A hub id
    that is neither cached nor reachable raises ModelLoadError (one line).
    """
    from llava.model.builder import locate_checkpoint

    source = locate_checkpoint(pretrained)  # refuses a missing folder, or a hub id offline and uncached
    folder = Path(source)
    if folder.is_dir():
        return f"folder:{_folder_digest(folder)}"
    return f"hub:{source}@{_hub_commit(source)}"


def _hub_commit(repo_id: str) -> str:
    from huggingface_hub import hf_hub_download

    from llava.errors import ModelLoadError

    try:  # online: resolves the revision's current commit; offline: the cached snapshot
        config = hf_hub_download(repo_id, "config.json")
    except Exception as exc:  # noqa: BLE001  (gated, offline and uncached, network down ...)
        text = str(exc).strip().splitlines()
        raise ModelLoadError(f"cannot resolve the commit of checkpoint {repo_id!r} to key its cache folder: "
                             f"{text[0] if text else type(exc).__name__}") from None
    return Path(config).parent.name  # .../snapshots/<commit>/config.json


def _resolved_dtype(torch_dtype: str, config) -> str:
    """torch_dtype=auto loads the checkpoint's own dtype: key that one (auto and its value agree)."""
    if torch_dtype != "auto":
        return torch_dtype
    for cfg in (config, getattr(config, "text_config", None)):
        value = (getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)) if cfg is not None else None
        if value is not None:
            return str(value).replace("torch.", "")
    return "float32"  # transformers' default when the config names none


def _resolved_backend(backend: str) -> str:
    if backend != "auto":
        return backend
    from llava.video import decord_available

    return "decord" if decord_available() else "pyav"  # llava.video's rule for "auto"


def setting_of(model: str, model_args: Mapping[str, Any]) -> Dict[str, Any]:
    """The parts of the folder key: everything that decides an answer, with every default resolved.

    The model_args are resolved the way the plugin resolves them (llava.eval.args), against the
    checkpoint's config (its depth and family fix "auto" layers and merge metric, its dtype
    fixes torch_dtype=auto), so equivalent spellings give one key and a changed default gives
    another. batch_size, max_batch_size, device and device_map change no answer and are left out.
    """
    from llava.eval.args import (
        DEFAULT_CHECKPOINTS, PIXEL_ARGS, aim_config_from_model_args, loader_args, pixel_limits, split_model_args)
    from llava.model.builder import checkpoint_config

    args = dict(model_args)
    pixels = pixel_limits({k: args.pop(k) for k in PIXEL_ARGS if k in args})
    raw_loader, raw_aim = split_model_args(args)
    load = loader_args(raw_loader, DEFAULT_CHECKPOINTS.get(model, ""))
    _, config, family = checkpoint_config(load.pretrained)
    num_layers = int((getattr(config, "text_config", None) or config).num_hidden_layers)
    aim = aim_config_from_model_args(raw_aim, num_layers)
    if aim.enabled:  # as apply_aim resolves it for the loaded model
        aim = aim.resolve_layers(num_layers, family.official_layers(num_layers))
        aim = aim.resolve_merge_metric(family.official_merge_metric, family.merge_metrics, family.title)
    parts = {
        "model": model,
        "aim": aim.to_dict(),
        "inputs": {"max_frames_num": load.max_frames_num, "frame_sampling": load.frame_sampling,
                   "video_decode_backend": _resolved_backend(load.video_decode_backend), **pixels},
        "dtype": _resolved_dtype(load.torch_dtype, config),
        "attn_implementation": load.attn_implementation,
        "checkpoint": checkpoint_fingerprint(load.pretrained),
        "code": code_fingerprint(),
        **{f"version:{name}": _package_version(name) for name in VERSIONED},
    }
    if load.use_kernels:  # only when asked: the keys of stock-layer runs stay what they were
        parts["use_kernels"] = True
    return json.loads(json.dumps(parts, sort_keys=True, default=str))  # as setting.json holds it


def key_of(setting: Mapping[str, Any]) -> str:
    text = json.dumps(setting, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_key(model: str, model_args: Mapping[str, Any]) -> str:
    return key_of(setting_of(model, model_args))


def changed_parts(old: Mapping[str, Any], new: Mapping[str, Any]) -> list:
    """The names (PART_NAMES) of the parts that differ between two settings."""
    names = sorted(set(old) | set(new), key=lambda n: list(PART_NAMES).index(n) if n in PART_NAMES else 99)
    return [PART_NAMES.get(n, n) for n in names if old.get(n) != new.get(n)]


# -- the index of keys under CACHE_DIR, and what the log says about them ------------------------
def _read_index(cache_dir: Path) -> list:
    entries = []
    try:
        lines = (cache_dir / INDEX_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return entries
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:  # a line cut short by a kill
            continue
        if isinstance(entry, dict) and isinstance(entry.get("setting"), dict):
            entries.append(entry)
    return entries


def _journal_answers(folder: Path) -> int:
    count = 0
    for path in folder.glob("journal.rank*.jsonl"):
        with open(path, encoding="utf-8") as f:
            count += sum(1 for _ in f)
    return count


def describe_key(cache_dir: Path, key: str, setting: Mapping[str, Any], pretrained: str) -> str:
    """One log line: what a run of ``key`` resumes, or, for a new folder, which parts changed
    since the last run of this model and checkpoint name under ``cache_dir``."""
    folder = cache_dir / key
    if (folder / KEY_FILE).exists():
        answers = _journal_answers(folder)
        cached = " and lmms-eval's response cache" if (folder / "cache.db").exists() else ""
        return (f"resuming setting folder {key}: every part of the key unchanged; {answers} answers in its resume "
                f"journal{cached} are reused")
    earlier = [e for e in _read_index(cache_dir)
               if e.get("pretrained") == pretrained and e["setting"].get("model") == setting.get("model")]
    if not earlier:
        return f"new setting folder {key}: no earlier run of this model/checkpoint under {cache_dir}"
    changed = changed_parts(earlier[-1]["setting"], setting)
    return (f"new setting folder {key}: changed since the last run of this model/checkpoint: {', '.join(changed)}; "
            "nothing cached is reused")


def write_setting(cache_dir: os.PathLike, model: str, model_args: Mapping[str, Any], quiet: bool = False) -> Path:
    """Create ``cache_dir/<key>/setting.json``, add the key to the index, log what is resumed
    or what changed (unless ``quiet``: a run that caches nothing); returns the folder."""
    from llava.eval.args import DEFAULT_CHECKPOINTS

    cache_dir = Path(cache_dir)
    setting = setting_of(model, model_args)
    key = key_of(setting)
    pretrained = str(model_args.get("pretrained") or DEFAULT_CHECKPOINTS.get(model, ""))
    if not quiet:
        print(describe_key(cache_dir, key, setting, pretrained), file=sys.stderr)
    folder = cache_dir / key
    folder.mkdir(parents=True, exist_ok=True)
    (folder / KEY_FILE).write_text(json.dumps(setting, sort_keys=True, indent=1) + "\n")
    with open(cache_dir / INDEX_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps({"key": key, "pretrained": pretrained, "setting": setting}, sort_keys=True) + "\n")
    return folder


# -- completion records: a run of the whole setting succeeded -----------------------------------
def write_completion(folder: os.PathLike, tasks: Sequence[str], results: str) -> Path:
    path = Path(folder) / COMPLETE_FILE
    record = {"tasks": sorted(t for t in tasks if t), "results": os.path.abspath(results)}
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def completion_of(folder: os.PathLike, tasks: Sequence[str]) -> Optional[str]:
    """The results file of a complete run of the folder's setting holding every task, else None."""
    try:
        record = json.loads((Path(folder) / COMPLETE_FILE).read_text())
    except (OSError, ValueError):
        return None
    wanted = {t for t in tasks if t}
    results = record.get("results") if isinstance(record, dict) else None
    if not results or not wanted <= set(record.get("tasks") or ()) or not os.path.isfile(results):
        return None
    return results


# -- lmms-eval's cache: shards of killed runs -------------------------------------------------
# lmms-eval 0.7.3 replays a cached loglikelihood answer as a string (the task then fails), so
# none may stay in its cache: the resume journal keeps those answers instead.
UNREPLAYABLE = ("loglikelihood",)


def _drop_unreplayable(db_path: str, audit_path: Optional[str]) -> None:
    import sqlite3

    if audit_path and os.path.exists(audit_path):
        kept = []
        with open(audit_path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("request_type") not in UNREPLAYABLE:
                    kept.append(json.dumps(record, ensure_ascii=False))
        tmp = audit_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in kept))
        os.replace(tmp, audit_path)
    if os.path.exists(db_path):
        db = sqlite3.connect(db_path, timeout=30)
        try:
            if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'responses'").fetchone():
                db.execute(f"DELETE FROM responses WHERE request_type IN ({','.join('?' * len(UNREPLAYABLE))})",
                           UNREPLAYABLE)
                db.commit()
        finally:
            db.close()


def prepare_cache(folder: os.PathLike) -> int:
    """Merge every per-rank shard under ``folder/runs`` into ``folder/cache.db`` (lmms-eval
    merges a run's shards only when the run finishes; a killed run leaves them behind, and a
    rerun under a new run id would not see them), keeping no answer lmms-eval cannot replay.
    Returns the entries merged."""
    from lmms_eval.caching.response_cache import ResponseCache

    folder = Path(folder)
    shards = sorted(glob.glob(str(folder / "runs" / "*" / "rank_*.db")))
    merged = 0
    for shard in shards:
        audit = shard[: -len(".db")] + ".audit.jsonl"
        _drop_unreplayable(shard, audit)
        # Opening a shard replays its audit log (answers written there before SQLite).
        ResponseCache(db_path=shard, audit_path=audit).close()
    if shards:
        merged = ResponseCache.merge_shards(shards, str(folder / "cache.db"))
    root = folder / "cache.db"
    if root.exists():
        _drop_unreplayable(str(root), str(folder / "cache.audit.jsonl"))
    return merged


# -- the plugin's journal ---------------------------------------------------------------------
def request_key(kind: str, task: str, split: str, doc_id, context: str, extra: Any, media: Sequence[str]) -> str:
    """Journal key of one request: what it asks, of which document, with which media."""
    text = json.dumps([kind, task, split, doc_id, context, extra, list(media)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def media_identity(item) -> str:
    """A short identity of one visual item: a file path with its size, or an image's pixels."""
    if isinstance(item, (str, os.PathLike)):
        try:
            return f"{os.fspath(item)}:{os.path.getsize(item)}"
        except OSError:
            return os.fspath(item)
    tobytes = getattr(item, "tobytes", None)
    if tobytes is not None:
        size = getattr(item, "size", None)
        return f"pixels:{size}:{hashlib.sha1(tobytes()).hexdigest()}"
    return repr(item)


class ResumeJournal:
    """Answers already computed for this setting, and an append-only log of new ones."""

    def __init__(self, folder: os.PathLike, rank: int = 0) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.entries: Dict[str, Dict[str, Any]] = {}
        for path in sorted(self.folder.glob("journal.rank*.jsonl")):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except ValueError:  # a line cut short by a kill
                        continue
                    if isinstance(record, dict) and "key" in record:
                        self.entries[record["key"]] = record
        self.loaded = len(self.entries)
        self._file = open(self.folder / f"journal.rank{rank}.jsonl", "a", encoding="utf-8")

    @classmethod
    def for_setting(cls, model: str, model_args: Mapping[str, Any], rank: int,
                    aim_config=None) -> Optional["ResumeJournal"]:
        """The journal of the folder the scripts named in $LLAVA_AIM_RESUME_DIR, if that folder
        was made for exactly this setting (every part of its key, recomputed here) and, when
        ``aim_config`` is given, for the AIM setting the loaded model resolved; None otherwise."""
        folder = os.environ.get(RESUME_DIR_ENV)
        if not folder:
            return None
        key_file = Path(folder) / KEY_FILE
        try:
            recorded = json.loads(key_file.read_text())
        except (OSError, ValueError):
            logger.warning("%s=%s has no readable %s: not resuming", RESUME_DIR_ENV, folder, KEY_FILE)
            return None
        mine = setting_of(model, model_args)
        if recorded != mine:
            logger.warning("%s=%s belongs to another setting (%s differ): not resuming from it", RESUME_DIR_ENV,
                           folder, ", ".join(changed_parts(recorded, mine)))
            return None
        loaded = json.loads(json.dumps(aim_config.to_dict(), default=str)) if aim_config is not None else None
        if loaded is not None and loaded != recorded.get("aim"):
            logger.warning("%s=%s: the loaded model resolved the AIM setting to %s, not %s as keyed: not resuming",
                           RESUME_DIR_ENV, folder, loaded, recorded.get("aim"))
            return None
        return cls(folder, rank)

    def get(self, key: str) -> Optional[Dict[str, Any]]:
        return self.entries.get(key)

    def put(self, key: str, response: Any, counts: Optional[Dict[str, Any]] = None) -> None:
        record = {"key": key, "response": response, "counts": counts}
        self.entries[key] = record
        self._file.write(json.dumps(record, default=str) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())


# -- command line -------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llava.eval.resume")
    sub = parser.add_subparsers(dest="command", required=True)
    key = sub.add_parser("key", help="print the folder key of a setting (and write its setting.json with --write)")
    key.add_argument("--model", required=True)
    key.add_argument("--model_args", default="")
    key.add_argument("--write", metavar="CACHE_DIR",
                     help="create CACHE_DIR/<key>/setting.json, log what is resumed or what changed, print the folder")
    key.add_argument("--quiet", action="store_true", help="--write without the log line (a run that caches nothing)")
    prep = sub.add_parser("prepare", help="merge the shards of killed runs into FOLDER/cache.db")
    prep.add_argument("folder")
    done = sub.add_parser("complete", help="record that a run of the whole setting (no limit) succeeded")
    done.add_argument("--folder", help="the setting folder (default: CACHE_DIR/<key of --model/--model_args>)")
    done.add_argument("--cache-dir")
    done.add_argument("--model")
    done.add_argument("--model_args", default="")
    done.add_argument("--tasks", required=True)
    done.add_argument("--results", required=True)
    check = sub.add_parser("is-complete", help="exit 0 if a complete run of exactly this setting holds every task")
    check.add_argument("--cache-dir", required=True)
    check.add_argument("--model", required=True)
    check.add_argument("--model_args", default="")
    check.add_argument("--tasks", required=True)
    args = parser.parse_args(argv)
    from llava.errors import AIMError
    from llava.eval.results import parse_model_args

    logging.getLogger("llava.model.builder").setLevel(logging.ERROR)  # the loader says it again when it loads
    try:
        if args.command == "key":
            model_args = parse_model_args(args.model_args)
            print(write_setting(args.write, args.model, model_args, args.quiet) if args.write
                  else run_key(args.model, model_args))
            return 0
        if args.command == "complete":
            if args.folder:
                folder = Path(args.folder)
            elif args.cache_dir and args.model:
                folder = write_setting(args.cache_dir, args.model, parse_model_args(args.model_args), quiet=True)
            else:
                parser.error("complete needs --folder, or --cache-dir with --model and --model_args")
            print(write_completion(folder, args.tasks.split(","), args.results))
            return 0
        if args.command == "is-complete":
            folder = Path(args.cache_dir) / run_key(args.model, parse_model_args(args.model_args))
            results = completion_of(folder, args.tasks.split(","))
            print(results or f"no complete run of this setting in {folder}")
            return 0 if results else 1
        print(prepare_cache(args.folder))
        return 0
    except (AIMError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
