"""Resuming evaluations without mixing settings.

Every run of the evaluation scripts keeps its responses in a folder of its own, named by a key
of everything that decides a response: the plugin model, its model_args (the AIM setting,
frames, dtype, ...), the checkpoint's content and this package's version. A different setting
or checkpoint gets another folder, so nothing cached is ever reused for it.

Two stores live in that folder:

* lmms-eval's response cache (``--use_cache FOLDER``). In lmms-eval 0.7.3 it stores a request
  type's responses only after the model has answered all of them, and it cannot replay
  multiple-choice (loglikelihood) answers, so on its own it resumes nothing of a run killed
  halfway;
* the plugin's resume journal (``journal.rank<R>.jsonl``): every answer appended and fsync'd as
  soon as it is computed, and read back by every rank on the next start (so a rerun with another
  number of processes also resumes). A request's journal key is its task, split, document,
  prompt, generation settings or continuation, and media identity.

``python -m llava.eval.resume key --model M --model_args ARGS`` prints the folder key;
``python -m llava.eval.resume prepare FOLDER`` merges the shards of runs that were killed
before lmms-eval merged them into its root ``cache.db`` (the scripts do both before each run).
"""

from __future__ import annotations

import argparse
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
# Keyword arguments lmms-eval adds to model_args; they do not change an answer.
NOT_SETTINGS = ("batch_size", "max_batch_size", "device")
_HASHED_BYTES = 1 << 20  # of each weight file: the first and last MiB, and its size


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("llava-aim")
    except Exception:  # an uninstalled source tree
        return "source"


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


def checkpoint_fingerprint(pretrained: str) -> str:
    """What checkpoint a name loads, as a string that changes when its content changes.

    Built-in and local folders: a digest of their configs and weight files. Hub ids: the
    snapshot commit in the Hugging Face cache ("uncached" before the first download: the
    key then changes once, after the download, which can only cost a cache miss).
    """
    from llava.model.builder import resolve_checkpoint

    source = resolve_checkpoint(pretrained)
    folder = Path(os.path.expanduser(source))
    if folder.is_dir():
        return f"folder:{_folder_digest(folder)}"
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(source, "config.json")
    except Exception:  # not a valid repo id: the loader will say so
        found = None
    if isinstance(found, str):
        return f"hub:{source}@{Path(found).parent.name}"  # .../snapshots/<commit>/config.json
    return f"hub:{source}@uncached"


def setting_of(model: str, model_args: Mapping[str, Any]) -> Dict[str, Any]:
    """The inputs of the folder key: model, typed model_args, checkpoint fingerprint, version."""
    from llava.eval.args import DEFAULT_CHECKPOINTS

    args = {k: v for k, v in model_args.items() if k not in NOT_SETTINGS}
    pretrained = str(args.get("pretrained") or DEFAULT_CHECKPOINTS.get(model, ""))
    return {"model": model, "model_args": {k: args[k] for k in sorted(args)},
            "checkpoint": checkpoint_fingerprint(pretrained) if pretrained else "",
            "llava_aim": _version()}


def run_key(model: str, model_args: Mapping[str, Any]) -> str:
    text = json.dumps(setting_of(model, model_args), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
    def for_setting(cls, model: str, model_args: Mapping[str, Any], rank: int) -> Optional["ResumeJournal"]:
        """The journal of the folder the scripts named in $LLAVA_AIM_RESUME_DIR, if that folder
        was made for exactly this setting and checkpoint; None otherwise (no resume)."""
        folder = os.environ.get(RESUME_DIR_ENV)
        if not folder:
            return None
        key_file = Path(folder) / KEY_FILE
        try:
            recorded = json.loads(key_file.read_text())
        except (OSError, ValueError):
            logger.warning("%s=%s has no readable %s: not resuming", RESUME_DIR_ENV, folder, KEY_FILE)
            return None
        mine = json.loads(json.dumps(setting_of(model, model_args), sort_keys=True, default=str))
        if recorded != mine:
            logger.warning("%s=%s belongs to another setting or checkpoint: not resuming from it", RESUME_DIR_ENV, folder)
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
    key.add_argument("--write", help="folder: create FOLDER/<key>/setting.json and print that folder")
    prep = sub.add_parser("prepare", help="merge the shards of killed runs into FOLDER/cache.db")
    prep.add_argument("folder")
    args = parser.parse_args(argv)
    from llava.errors import AIMError
    from llava.eval.results import parse_model_args

    try:
        if args.command == "key":
            model_args = parse_model_args(args.model_args)
            k = run_key(args.model, model_args)
            if not args.write:
                print(k)
                return 0
            folder = Path(args.write) / k
            folder.mkdir(parents=True, exist_ok=True)
            (folder / KEY_FILE).write_text(json.dumps(setting_of(args.model, model_args), sort_keys=True,
                                                      indent=1, default=str) + "\n")
            print(folder)
            return 0
        print(prepare_cache(args.folder))
        return 0
    except (AIMError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
