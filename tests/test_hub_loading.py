"""Hub checkpoints, offline, as a user on a GPU node with a pre-filled Hugging Face cache.

A tiny model is written into a temporary cache in the hub's own layout
(``models--org--name/{blobs,refs/main,snapshots/<commit>/}``) and loaded by its hub id with
HF_HUB_OFFLINE=1 through ``load_pretrained_model``, ``llava-aim run --model`` and the lmms-eval
plugin's ``pretrained=`` (through lmms-eval's command line on the shipped offline task).
huggingface_hub reads HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE when it is imported, so every
case runs in a fresh interpreter. Missing checkpoints must fail at once with one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llava.model.builder import BUILTIN_MODELS

ROOT = Path(__file__).resolve().parents[1]
OV_ID = "llava-aim-test/tiny-onevision"
LLAVA15_ID = "llava-aim-test/tiny-llava-1.5"
# A LLaVA-NeXT name whose llava-hf conversion is in the cache (the alias goes through the hub too).
ALIAS, ALIAS_TARGET = "lmms-lab/llava-onevision-qwen2-0.5b-ov", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
QWEN_IDS = [("Qwen/Qwen2-VL-7B-Instruct", "tiny-qwen2-vl"), ("Qwen/Qwen2.5-VL-7B-Instruct", "tiny-qwen2.5-vl")]


def put_in_hub_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """Store ``folder``'s files as the hub does: content-addressed blobs, a snapshot of
    symlinks named by commit, and refs/main naming that commit. Returns the snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for src in sorted(folder.iterdir()):
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / src.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("hf")
    cache = home / "hub"
    put_in_hub_cache(cache, OV_ID, BUILTIN_MODELS["tiny-llava-onevision"])
    put_in_hub_cache(cache, LLAVA15_ID, BUILTIN_MODELS["tiny-llava-1.5"])
    put_in_hub_cache(cache, ALIAS_TARGET, BUILTIN_MODELS["tiny-llava-onevision"])
    for repo_id, tiny in QWEN_IDS:
        put_in_hub_cache(cache, repo_id, BUILTIN_MODELS[tiny])
    return home


#: Variables of the user's shell that change how a hub id resolves; the tests set their own.
USER_HUB_VARIABLES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_")


def hub_env(hf_home: Path, offline: bool = True, **extra) -> dict:
    """The environment of one case: the user's HF_* / HUGGINGFACE_* / TRANSFORMERS_* dropped
    (TRANSFORMERS_OFFLINE=1 alone turns huggingface_hub offline), then this case's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(USER_HUB_VARIABLES)}
    env.update(HF_HOME=str(hf_home), HF_HUB_CACHE=str(hf_home / "hub"), HF_HUB_DISABLE_TELEMETRY="1",
               TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1" if offline else "0")
    env.update(extra)
    return env


def python(code: str, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def cli(args, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llava", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


# -- a cached hub id loads offline ----------------------------------------------------------
def test_load_pretrained_model_by_hub_id_offline(hf_home):
    done = python(f"""
        import json, torch
        from llava import AIMConfig, load_pretrained_model
        from llava.model.builder import BUILTIN_MODELS, locate_checkpoint
        out = {{}}
        for name in ({OV_ID!r}, {LLAVA15_ID!r}, {ALIAS!r}):
            model, processor = load_pretrained_model(name, aim=AIMConfig(retention=0.5), torch_dtype=torch.float32)
            first = next(model.parameters())
            out[name] = {{"located": locate_checkpoint(name), "class": type(model).__name__,
                         "processor": type(processor).__name__, "layers": len(model.model.language_model.layers),
                         "aim_layers": [model.aim_config.l1, model.aim_config.l2],
                         "checksum": float(first.double().sum())}}
        ref, _ = load_pretrained_model("tiny-llava-onevision", torch_dtype=torch.float32)
        out["reference_checksum"] = float(next(ref.parameters()).double().sum())
        print(json.dumps(out))
    """, hub_env(hf_home))
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out[OV_ID]["located"] == OV_ID  # a hub id, resolved by transformers from the cache
    assert out[OV_ID]["class"] == "LlavaOnevisionForConditionalGeneration"
    assert out[OV_ID]["processor"] == "LlavaOnevisionProcessor"
    assert out[LLAVA15_ID]["class"] == "LlavaForConditionalGeneration"
    assert out[ALIAS]["located"] == ALIAS_TARGET
    # the cached weights are the tiny model's; "auto" layers resolved for 8 layers
    assert out[OV_ID]["checksum"] == out["reference_checksum"] == out[ALIAS]["checksum"]
    assert all(out[n]["aim_layers"] == [4, 6] for n in (OV_ID, LLAVA15_ID, ALIAS))


def test_run_by_hub_id_offline(hf_home):
    done = cli(["run", "--model", OV_ID, "--frames", "2", "--max-new-tokens", "2", "--json"], hub_env(hf_home))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["model"] == OV_ID and result["random_weights"] is False
    assert result["visual_tokens_after_merge"] == 2 * 49 + 1
    assert result["kv_cache_lens"] == [n + 1 for n in result["layer_seq_lens"]]


@pytest.mark.slow
def test_eval_plugin_pretrained_hub_id_through_lmms_eval(hf_home, tmp_path):
    pytest.importorskip("lmms_eval")
    out_dir = tmp_path / "out"
    env = hub_env(hf_home, HF_DATASETS_OFFLINE="1", PYTHON=sys.executable, PRETRAINED=OV_ID,
                  TASKS="llava_aim_synthvid_gen", FRAMES="2", LIMIT="2", DEVICE="cpu", OUTPUT_DIR=str(out_dir))
    env.pop("WORLD_SIZE", None)
    done = subprocess.run(["bash", str(ROOT / "video_bench_eval.sh")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [results_file] = list(out_dir.rglob("*_results.json"))
    data = json.loads(results_file.read_text())
    assert data["config"]["model"] == "llava_onevision_aim"
    assert f"pretrained={OV_ID}" in data["config"]["model_args"]
    [samples] = list(out_dir.rglob("*_samples_llava_aim_synthvid_gen.jsonl"))
    assert len(samples.read_text().splitlines()) == 2


# -- a missing checkpoint fails at once, in one line ----------------------------------------
TIMED_LOCATE = """
    import json, time
    from llava.errors import ModelLoadError
    from llava.model.builder import locate_checkpoint
    start = time.perf_counter()
    try:
        locate_checkpoint({name!r})
        print(json.dumps({{"error": None}}))
    except ModelLoadError as exc:
        print(json.dumps({{"error": str(exc), "seconds": time.perf_counter() - start}}))
"""


def timed_locate(name: str, env: dict) -> dict:
    done = python(TIMED_LOCATE.format(name=name), env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_missing_hub_id_offline_fails_fast(hf_home):
    found = timed_locate("llava-aim-test/not-in-the-cache", hub_env(hf_home))
    assert found["error"] is not None and found["seconds"] < 1.0, found
    assert "HF_HUB_OFFLINE=1" in found["error"] and str(hf_home / "hub") in found["error"]


def test_missing_hub_id_with_unreachable_hub_fails_fast(hf_home):
    # Not offline, but the endpoint refuses connections: no half minute of retries.
    env = hub_env(hf_home, offline=False, HF_ENDPOINT="http://127.0.0.1:9")
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(proxy, None)
    found = timed_locate("llava-aim-test/not-in-the-cache", env)
    assert found["error"] is not None and found["seconds"] < 4.0, found
    assert "cannot be reached" in found["error"]


def test_hub_env_ignores_the_users_offline_variables(monkeypatch, tmp_path):
    # A cluster node exports both; a case that needs the hub "online" must still get it.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    online, offline = hub_env(tmp_path, offline=False), hub_env(tmp_path)
    assert "TRANSFORMERS_OFFLINE" not in online and online["HF_HUB_OFFLINE"] == "0"
    assert offline["HF_HUB_OFFLINE"] == "1"


def test_known_names_missing_from_the_cache_get_no_did_you_mean(hf_home):
    # The README's id, uncached offline: it is right, only not downloaded; no "-72b / 0.5b / 7b-si?".
    done = python("""
        import json
        from llava.errors import ModelLoadError
        from llava.model.builder import CHECKPOINT_ALIASES, locate_checkpoint
        out = {}
        for name in sorted(set(CHECKPOINT_ALIASES) | set(CHECKPOINT_ALIASES.values())):
            try:
                out[name] = "located " + locate_checkpoint(name)
            except ModelLoadError as exc:
                out[name] = str(exc)
        print(json.dumps(out))
    """, hub_env(hf_home))
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    readme = "lmms-lab/llava-onevision-qwen2-7b-ov"
    assert "not in the Hugging Face cache" in out[readme] and "HF_HUB_OFFLINE=1" in out[readme]
    for name, error in out.items():
        assert "did you mean" not in error, (name, error)


def one_line_exit_2(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout == ""  # no partial output
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


@pytest.mark.parametrize(
    "model,needles",
    [
        ("llava-aim-test/not-in-the-cache", ["not in the Hugging Face cache", "HF_HUB_OFFLINE=1", "hf download"]),
        ("./no/such/checkpoint", ["checkpoint folder", "does not exist"]),
        ("tiny-llava-onevison", ["did you mean 'tiny-llava-onevision'"]),
        ("tiny-llava-1,5", ["did you mean 'tiny-llava-1.5'"]),
    ],
)
def test_run_with_a_missing_model_exits_2_in_one_line(hf_home, model, needles):
    line = one_line_exit_2(cli(["run", "--model", model, "--frames", "2"], hub_env(hf_home), timeout=120))
    for needle in needles:
        assert needle in line, line


def test_cached_id_loads_while_a_missing_one_still_fails_when_online_is_unreachable(hf_home):
    # A cached checkpoint needs no network even when HF_HUB_OFFLINE is not set.
    env = hub_env(hf_home, offline=False, HF_ENDPOINT="http://127.0.0.1:9")
    found = timed_locate(OV_ID, env)
    assert found["error"] is None


@pytest.mark.parametrize("repo_id,tiny", QWEN_IDS)
def test_run_loads_a_qwen_hub_id_offline(hf_home, repo_id, tiny):
    done = cli(["run", "--model", repo_id, "--frames", "4", "--json", "--max-new-tokens", "3"], hub_env(hf_home))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["model"] == repo_id and not result["random_weights"]
    assert result["visual_tokens_after_merge"] * 4 <= result["visual_tokens_before_merge"]
    assert result["layer_seq_lens"][-1] < result["layer_seq_lens"][0]
