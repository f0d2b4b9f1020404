"""The resume key (llava/eval/resume.py): everything that decides an answer is in it, nothing else
is; the log names what changed; completion records. End to end: a rerun after a code change is
not answered from the old journal and equals a fresh CACHE=0 run."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llava.eval import resume

ROOT = Path(__file__).resolve().parents[1]
OV = "llava_onevision_aim"
BASE = {"pretrained": "tiny-llava-onevision", "max_frames_num": 4, "aim": 1, "retention": 0.25}


def key(**changes) -> str:
    args = {**BASE, **changes}
    return resume.run_key(OV, {k: v for k, v in args.items() if v is not None})


# -- what is in the key ----------------------------------------------------------------------------
def test_what_decides_no_answer_leaves_the_key_alone():
    base = key()
    resolved = resume.setting_of(OV, BASE)["aim"]
    assert (resolved["l1"], resolved["l2"]) == (4, 6)  # "auto" resolved for the tiny model's 8 layers
    same = [
        dict(batch_size=4), dict(max_batch_size=8), dict(device="cuda:1"), dict(device_map="auto"),  # no answer
        dict(retention="0.25"), dict(retention=0.250), dict(aim=True), dict(aim="true"),  # spellings
        dict(l1=4, l2=6), dict(merge_weighting="mean"), dict(method="aim"),  # defaults given explicitly
        dict(torch_dtype="float32"), dict(attn_implementation="sdpa"), dict(frame_sampling="official"),
        dict(video_decode_backend="pyav"),  # what "auto" picks without decord
    ]
    for changes in same:
        assert key(**changes) == base, changes
    reordered = dict(reversed(list({**BASE, "batch_size": 2}.items())))
    assert resume.run_key(OV, reordered) == base


@pytest.mark.parametrize("changes", [
    dict(retention=0.5), dict(l1=2, l2=6), dict(merge_weighting="size"), dict(max_frames_num=8),
    dict(frame_sampling="uniform"), dict(torch_dtype="float16"), dict(attn_implementation="eager"),
    dict(aim=0, retention=None),
], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_a_setting_that_changes_an_answer_changes_the_key(changes):
    assert key(**changes) != key()


def test_a_changed_default_changes_the_key(monkeypatch):
    """The same typed model_args under code whose AIMConfig default differs: another key."""
    import llava.eval.args as eval_args

    @dataclasses.dataclass(frozen=True)
    class OtherDefault(eval_args.AIMConfig):
        merge_weighting: str = "size"

    before = resume.setting_of(OV, BASE)
    monkeypatch.setattr(eval_args, "AIMConfig", OtherDefault)
    after = resume.setting_of(OV, BASE)
    assert after["aim"]["merge_weighting"] == "size"
    assert resume.key_of(after) != resume.key_of(before)
    assert resume.changed_parts(before, after) == ["resolved AIM setting"]


@pytest.mark.parametrize("package", ["transformers", "torch", "lmms_eval"])
def test_a_library_version_changes_the_key(monkeypatch, package):
    before = resume.setting_of(OV, BASE)
    real = resume._package_version
    monkeypatch.setattr(resume, "_package_version", lambda name: "0.0.1" if name == package else real(name))
    after = resume.setting_of(OV, BASE)
    assert resume.key_of(after) != resume.key_of(before)
    assert resume.changed_parts(before, after) == [f"{package.replace('_', '-')} version"]


def test_code_fingerprint_covers_every_file_of_the_package_but_bytecode(tmp_path):
    import llava

    copy = tmp_path / "llava"
    shutil.copytree(Path(llava.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert resume._source_digest(copy) == resume.code_fingerprint()
    (copy / "__pycache__").mkdir()
    (copy / "__pycache__" / "x.cpython-312.pyc").write_bytes(b"bytecode")
    assert resume._source_digest(copy) == resume.code_fingerprint()
    for edited in ("aim/config.py", "eval/tasks/llava_aim_synthvid/llava_aim_synthvid_mc.yaml",
                   "model/tiny/tiny-llava-onevision/tokenizer_config.json"):
        path = copy / edited
        original = path.read_bytes()
        path.write_bytes(original + b"\n")
        assert resume._source_digest(copy) != resume.code_fingerprint(), edited
        path.write_bytes(original)


def test_code_and_checkpoint_are_parts_of_the_key(monkeypatch, tmp_path):
    from llava.model.builder import BUILTIN_MODELS

    before = resume.setting_of(OV, BASE)
    monkeypatch.setattr(resume, "code_fingerprint", lambda: "another tree")
    assert resume.changed_parts(before, resume.setting_of(OV, BASE)) == ["code fingerprint"]
    monkeypatch.undo()
    folder = tmp_path / "ckpt"
    shutil.copytree(BUILTIN_MODELS["tiny-llava-onevision"], folder)
    mine = resume.setting_of(OV, {**BASE, "pretrained": str(folder)})
    assert mine["checkpoint"] == before["checkpoint"]  # same content, another place
    generation = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**generation, "note": "edited"}))
    assert resume.changed_parts(mine, resume.setting_of(OV, {**BASE, "pretrained": str(folder)})) == \
        ["checkpoint content"]


def test_hub_id_is_keyed_by_its_commit_and_offline_uncached_fails_in_one_line(tmp_path):
    from llava.model.builder import BUILTIN_MODELS
    from test_hub_loading import COMMIT, put_in_hub_cache

    put_in_hub_cache(tmp_path / "hf" / "hub", "llava-aim-test/tiny-onevision", BUILTIN_MODELS["tiny-llava-onevision"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    cache = tmp_path / "cache"
    # one interpreter (huggingface_hub reads HF_HUB_OFFLINE when imported): a cached id, then one never downloaded
    code = (f"import sys; from llava.eval.resume import main; base = ['key', '--model', '{OV}', '--write', {str(cache)!r}]; "
            "print(main(base + ['--model_args', 'pretrained=llava-aim-test/tiny-onevision,max_frames_num=4'])); "
            "print(main(base + ['--model_args', 'pretrained=llava-aim-test/not-downloaded']))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)
    folder, cached_rc, missing_rc = done.stdout.split()
    assert (cached_rc, missing_rc) == ("0", "2"), done.stderr
    setting = json.loads((Path(folder) / resume.KEY_FILE).read_text())
    assert setting["checkpoint"] == f"hub:llava-aim-test/tiny-onevision@{COMMIT}"
    lines = [line for line in done.stderr.strip().splitlines() if "setting folder" not in line]
    assert len(lines) == 1 and "not in the Hugging Face cache" in lines[0] and "HF_HUB_OFFLINE" in lines[0]
    assert sorted(p.name for p in cache.iterdir()) == sorted([Path(folder).name, resume.INDEX_FILE])


# -- the log: what is resumed, what changed ---------------------------------------------------------
def test_log_names_the_changed_parts_or_what_is_resumed(tmp_path, monkeypatch, capsys):
    folder = resume.write_setting(tmp_path, OV, BASE)
    assert "new setting folder" in capsys.readouterr().err
    (folder / "journal.rank0.jsonl").write_text('{"key": "a"}\n{"key": "b"}\n')
    assert resume.write_setting(tmp_path, OV, {**BASE, "batch_size": 2}) == folder
    said = capsys.readouterr().err
    assert said.startswith(f"resuming setting folder {folder.name}:") and "2 answers" in said
    real = resume._package_version
    monkeypatch.setattr(resume, "_package_version", lambda name: "9.9" if name == "transformers" else real(name))
    monkeypatch.setattr(resume, "code_fingerprint", lambda: "edited")
    other = resume.write_setting(tmp_path, OV, BASE)
    said = capsys.readouterr().err.strip()
    assert other != folder
    assert said == (f"new setting folder {other.name}: changed since the last run of this model/checkpoint: "
                    "code fingerprint, transformers version; nothing cached is reused")


# -- completion records ------------------------------------------------------------------------
def test_completion_record_needs_every_task_and_its_results_file(tmp_path):
    results = tmp_path / "r_results.json"
    results.write_text("{}")
    resume.write_completion(tmp_path, ["a", "b"], str(results))
    assert resume.completion_of(tmp_path, ["a"]) == str(results)
    assert resume.completion_of(tmp_path, ["a", "b"]) == str(results)
    assert resume.completion_of(tmp_path, ["a", "c"]) is None
    results.unlink()
    assert resume.completion_of(tmp_path, ["a"]) is None
    assert resume.completion_of(tmp_path / "nothing", ["a"]) is None


# -- end to end: a code change, through the public command ------------------------------------------
def _run(tmp_path: Path, code: Path, out: Path, **settings) -> subprocess.CompletedProcess:
    """video_bench_eval.sh run from a folder without a llava/ (python -m puts the working
    directory first on sys.path), importing llava from ``code``."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(code), "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "DEVICE": "cpu",
           "PRETRAINED": "tiny-llava-onevision", "TASKS": "llava_aim_synthvid_mc", "FRAMES": "4", "LIMIT": "2",
           "OUTPUT_DIR": str(out), "CACHE_DIR": str(tmp_path / "cache"), **settings}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run(["bash", str(ROOT / "video_bench_eval.sh")], env=env, cwd=work, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _answers(out: Path) -> dict:
    found = {}
    for path in out.rglob("*_samples_*.jsonl"):
        for line in path.read_text().splitlines():
            sample = json.loads(line)
            found[sample["doc_id"]] = sample["filtered_resps"]
    return found


def _served(stderr: str):
    found = re.findall(r"(\d+) of (\d+) \w+ requests answered from the resume journal, (\d+) computed", stderr)
    return sum(int(a) for a, _, _ in found), sum(int(c) for _, _, c in found)


@pytest.mark.slow
def test_rerun_after_a_code_change_is_recomputed_and_equals_a_fresh_run(tmp_path):
    import llava

    first = _run(tmp_path, ROOT, tmp_path / "first")
    assert _served(first.stderr) == (0, 8)
    # the same package with another default merge weighting: every answer changes
    code = tmp_path / "edited"
    shutil.copytree(Path(llava.__file__).parent, code / "llava", ignore=shutil.ignore_patterns("__pycache__"))
    config = code / "llava" / "aim" / "config.py"
    text = config.read_text()
    default = '    merge_weighting: str = field(default="mean"'
    assert default in text
    config.write_text(text.replace(default, '    merge_weighting: str = field(default="size"'))

    rerun = _run(tmp_path, code, tmp_path / "rerun")
    assert _served(rerun.stderr) == (0, 8)  # not one answer from the old journal
    said = next(line for line in rerun.stderr.splitlines() if "setting folder" in line)
    assert "changed since the last run of this model/checkpoint: resolved AIM setting, code fingerprint" in said
    _run(tmp_path, code, tmp_path / "fresh", CACHE="0")
    assert _answers(tmp_path / "rerun") == _answers(tmp_path / "fresh")
    assert _answers(tmp_path / "rerun") != _answers(tmp_path / "first")  # the edit did change the answers


def test_plugin_resumes_only_where_the_key_and_its_loaded_aim_setting_agree(tmp_path, monkeypatch):
    """The plugin recomputes the key, and checks it against the AIM setting apply_aim resolved
    on the loaded model: a key computed before loading that disagreed would not be resumed."""
    folder = resume.write_setting(tmp_path, OV, BASE, quiet=True)
    monkeypatch.setenv(resume.RESUME_DIR_ENV, str(folder))
    from llava.aim.config import AIMConfig

    resolved = AIMConfig(retention=0.25, l1=4, l2=6, merge_metric="tokens")
    journal = resume.ResumeJournal.for_setting(OV, {**BASE, "batch_size": 3}, 0, resolved)
    assert journal is not None and journal.folder == folder
    assert resume.ResumeJournal.for_setting(OV, BASE, 0, resolved.replace(l1=3)) is None
    assert resume.ResumeJournal.for_setting(OV, {**BASE, "retention": 0.5}, 0) is None
