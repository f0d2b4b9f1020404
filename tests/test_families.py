"""The contract every model family keeps (llava/model/families), one parametrized set of
invariants over every adapter of ``FAMILIES`` and every tiny model it lists.

A new family gets all of these by being listed in ``FAMILIES``. Per (family, tiny model):

* AIM off is the stock transformers model, bit for bit (logits and greedy tokens);
* removal (``pruning_mode="remove"``) matches the mask reference;
* a left-padded batch of two prompts matches each prompt alone;
* generate with the cache on matches generate with it off;
* each layer's KV cache holds exactly the tokens that entered it, +1 per decode step;
* the model loads by hub id from a Hugging Face cache, offline;
* ``llava-aim run --model <tiny>`` answers (a subprocess);
* ``llava-aim flops`` / ``plan`` / ``bench`` run for the family and describe its geometry;
* the family's lmms-eval plugin model runs the local multiple-choice task of its media
  (``llava_aim_synthvid_mc`` for video, ``llava_aim_synthimg_mc`` for image).

The media are the family's own (``adapter.merged_media``), small and synthetic. Where a tool
cannot be pointed at a family by a generic route the parametrization is a strict xfail naming
the gap (``GAPS``); the structure issue closes them.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest
import torch
from conftest import image_inputs, make_image, make_video, qwen_model, video_inputs
from test_hub_loading import ROOT, hub_env, put_in_hub_cache, python

from llava import AIMConfig, apply_aim
from llava.bench.models import BENCH_MODELS
from llava.cli import main
from llava.model.builder import BUILTIN_MODELS
from llava.model.families import FAMILIES
from llava.model.runtime import remove_aim

NEW_TOKENS = 16
FAMILY_MODELS = [(family, tiny) for family in FAMILIES for tiny in family.tiny_models]

# Known contract gaps and bugs: (contract, family name) -> why that parametrization fails today.
GAPS = {
}


def per_family(contract: str):
    """parametrize over every (family, tiny model), the known gaps of ``contract`` as strict xfails."""
    params = []
    for family, tiny in FAMILY_MODELS:
        reason = GAPS.get((contract, family.name))
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(family, tiny, id=tiny, marks=marks))
    return pytest.mark.parametrize("family,tiny", params)


# -- the family's own media -----------------------------------------------------------------
def merged_kind(family) -> str:
    """The media the contract feeds a family: the first kind AIM merges for it."""
    return family.merged_media[0]


def media_of(kind: str, **kw):
    """conftest's synthetic clip (4 frames) or image; ``size`` given: a 2-frame clip of that side."""
    if kind == "video":
        return make_video(**({"frames": 2, **kw} if "size" in kw else kw))
    return make_image(**kw)


def prompt_inputs(processor, kind: str, media, questions=None):
    build = video_inputs if kind == "video" else image_inputs
    return build(processor, media, questions)


@dataclass
class Case:
    family: object
    tiny: str
    model: object
    processor: object

    @property
    def kind(self) -> str:
        return merged_kind(self.family)

    def inputs(self, **media_kw):
        """One prompt with conftest's default clip or image (its default question)."""
        return prompt_inputs(self.processor, self.kind, [media_of(self.kind, **media_kw)])


@pytest.fixture
def case(family, tiny):
    """The tiny model (loaded once per session, AIM off), AIM removed after the test."""
    model, processor = qwen_model(tiny)  # conftest's session cache; it loads any built-in tiny model
    yield Case(family, tiny, model, processor)
    remove_aim(model, processor)


def logits_of(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def generate(model, inputs, n=NEW_TOKENS, **kwargs):
    """(new tokens, the last step's logits) of greedy decoding of exactly ``n`` tokens."""
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, **kwargs)
    return out.sequences[:, inputs["input_ids"].shape[1]:], out.logits[-1]


# -- the model: AIM off, removal, batch, cache, KV lengths ----------------------------------
@per_family("stock")
def test_aim_off_is_the_stock_model_bit_for_bit(case):
    inputs = case.inputs()
    stock_logits = logits_of(case.model, inputs)
    stock_tokens, _ = generate(case.model, inputs, 8)
    apply_aim(case.model, case.processor, AIMConfig.disabled())
    inputs = case.inputs()
    assert torch.equal(logits_of(case.model, inputs), stock_logits)
    assert torch.equal(generate(case.model, inputs, 8)[0], stock_tokens)


@per_family("removal")
def test_removal_matches_the_mask_reference(case):
    results = {}
    for mode in ("mask", "remove"):
        apply_aim(case.model, case.processor, AIMConfig(retention=0.5, l1=2, l2=6, pruning_mode=mode))
        inputs = case.inputs()
        logits = logits_of(case.model, inputs)[:, -1]
        tokens, _ = generate(case.model, inputs)
        results[mode] = (logits, tokens, list(case.model.aim_stats.kv_cache_lens))
        remove_aim(case.model, case.processor)
    diff = (results["remove"][0] - results["mask"][0]).abs().max().item()
    assert diff <= 1e-4, diff
    assert torch.equal(results["remove"][1], results["mask"][1])
    # the reference keeps every token in every layer's cache; removal does not
    assert len(set(results["mask"][2])) == 1
    assert results["remove"][2][-1] < results["mask"][2][-1]


@per_family("batch")
def test_left_padded_batch_matches_each_prompt_alone(case):
    seeds = (3, 4)
    questions = ["What happens?", "Which objects move from the left to the right, and what colour are they?"]
    apply_aim(case.model, case.processor, AIMConfig(retention=0.25, l1=2, l2=6))
    batch = prompt_inputs(case.processor, case.kind, [media_of(case.kind, seed=s) for s in seeds], questions)
    assert (batch["attention_mask"][:, 0] == 0).any(), "the test needs left padding"
    batch_logits = logits_of(case.model, batch)[:, -1]
    batch_tokens, _ = generate(case.model, batch, 8)
    for i, seed in enumerate(seeds):
        single = prompt_inputs(case.processor, case.kind, [media_of(case.kind, seed=seed)], [questions[i]])
        diff = (logits_of(case.model, single)[0, -1] - batch_logits[i]).abs().max().item()
        assert diff <= 1e-4, (i, diff)
        assert torch.equal(generate(case.model, single, 8)[0][0], batch_tokens[i])


@per_family("cache")
def test_generate_with_the_cache_matches_generate_without(case):
    apply_aim(case.model, case.processor, AIMConfig(retention=0.25, l1=2, l2=6))
    inputs = case.inputs()
    cached_tokens, cached_logits = generate(case.model, inputs, 4, use_cache=True)
    plain_tokens, plain_logits = generate(case.model, inputs, 4, use_cache=False)
    assert torch.equal(cached_tokens, plain_tokens)
    diff = (cached_logits - plain_logits).abs().max().item()
    assert diff <= 1e-5, diff  # the same computation but for the matmul shapes


@per_family("kv")
def test_each_layer_caches_the_tokens_that_entered_it_plus_one_per_decode_step(case):
    apply_aim(case.model, case.processor, AIMConfig(retention=0.5, l1=2, l2=6))
    inputs = case.inputs()
    generate(case.model, inputs, 5)
    stats = case.model.aim_stats
    # each layer holds its prefill survivors plus the 4 tokens fed back while generating 5
    assert stats.kv_cache_lens == [n + 4 for n in stats.layer_seq_lens]
    # layer 0 sees the whole prompt; pruning leaves the later layers fewer
    assert stats.layer_seq_lens[0] == inputs["input_ids"].shape[1]
    assert stats.layer_seq_lens[-1] < stats.layer_seq_lens[0]
    seq_lens = list(stats.layer_seq_lens)
    generate(case.model, inputs, 1)  # no decode step: the cache is the prefill
    assert case.model.aim_stats.layer_seq_lens == seq_lens
    assert case.model.aim_stats.kv_cache_lens == seq_lens


# -- loading by hub id, offline -------------------------------------------------------------
HUB_ORG = "llava-aim-contract"
LOAD_BY_HUB_ID = """
    import json, torch
    from llava import load_pretrained_model
    from llava.model.builder import locate_checkpoint
    out = {}
    for name in NAMES:
        try:
            model, processor = load_pretrained_model(name, aim=None, torch_dtype=torch.float32)
        except Exception as exc:
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        out[name] = {"located": locate_checkpoint(name), "class": type(model).__name__,
                     "processor": type(processor).__name__,
                     "checksum": sum(float(p.double().sum()) for p in model.parameters())}
    print(json.dumps(out))
"""


def checksum(model) -> float:
    return sum(float(p.detach().double().sum()) for p in model.parameters())


@pytest.fixture(scope="session")
def hub_loaded(tmp_path_factory):
    """Every tiny model stored in one HF-layout cache under a hub id, all loaded offline in one
    fresh interpreter (huggingface_hub reads its settings at import): hub id -> what loaded."""
    home = tmp_path_factory.mktemp("hf_contract")
    names = []
    for _, tiny in FAMILY_MODELS:
        put_in_hub_cache(home / "hub", f"{HUB_ORG}/{tiny}", BUILTIN_MODELS[tiny])
        names.append(f"{HUB_ORG}/{tiny}")
    done = python(f"NAMES = {names!r}\n" + textwrap.dedent(LOAD_BY_HUB_ID), hub_env(home))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@per_family("hub")
def test_loads_by_hub_id_from_the_cache_offline(case, hub_loaded):
    hub_id = f"{HUB_ORG}/{case.tiny}"
    loaded = hub_loaded[hub_id]
    assert "error" not in loaded, loaded
    assert loaded["located"] == hub_id  # resolved by transformers from the cache, not a folder
    assert loaded["class"] == case.family.load_class
    assert loaded["processor"] == case.family.processor_class
    assert loaded["checksum"] == checksum(case.model)  # the tiny model's own weights


# -- llava-aim run, a subprocess ------------------------------------------------------------
def run_args(family, tiny):
    args = ["run", "--model", tiny, "--max-new-tokens", "2", "--json"]
    return args + (["--frames", "2"] if "video" in family.media else [])


@pytest.fixture(scope="session")
def run_results():
    """``llava-aim run`` of every tiny model, the subprocesses started together: tiny -> (rc, out, err)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    procs = {tiny: subprocess.Popen([sys.executable, "-m", "llava", *run_args(family, tiny)], env=env, cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for family, tiny in FAMILY_MODELS}
    results = {}
    for tiny, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        results[tiny] = (proc.returncode, out, err)
    return results


@per_family("run")
def test_llava_aim_run_answers_with_aim(family, tiny, run_results):
    code, out, err = run_results[tiny]
    assert code == 0, err[-3000:]
    result = json.loads(out)
    assert result["model"] == tiny
    assert 0 < result["visual_tokens_after_merge"] < result["visual_tokens_before_merge"]
    assert result["layer_seq_lens"][-1] < result["layer_seq_lens"][0]
    assert result["kv_cache_lens"] == [n + 1 for n in result["layer_seq_lens"]]  # 2 tokens: 1 decode step


# -- flops, plan, bench ---------------------------------------------------------------------
def frames_for(family) -> int:
    """Frames of the tools' input: 2 where the family merges video frames, else one image."""
    return 2 if "video" in family.merged_media else 1


def tool_json(capsys, *argv):
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def tool_args(tool: str, family, tiny):
    args = [tool, "--llm", str(BUILTIN_MODELS[tiny]), "--frames", str(frames_for(family))]
    return args + (["--speedup", "1.5"] if tool == "plan" else [])


@per_family("flops")
def test_flops_describes_the_family_language_model(case, capsys):
    result = tool_json(capsys, *tool_args("flops", case.family, case.tiny))
    lm = case.family.language_model(case.model).config
    assert (result["llm"]["layers"], result["llm"]["hidden"]) == (lm.num_hidden_layers, lm.hidden_size)
    assert (result["llm"]["heads"], result["llm"]["kv_heads"]) == (lm.num_attention_heads, lm.num_key_value_heads)
    assert 0 < result["prefill_tflops"] < result["baseline_prefill_tflops"]


@per_family("plan")
def test_plan_chooses_a_setting_the_family_model_can_run(case, capsys):
    result = tool_json(capsys, *tool_args("plan", case.family, case.tiny))
    layers = case.family.language_model(case.model).config.num_hidden_layers
    assert result["inputs"]["layers"] == layers and result["feasible"]
    choice = result["choice"]
    assert choice["speedup"] >= 1.5 and 0 < choice["retention"] <= 1
    apply_aim(case.model, case.processor, AIMConfig(retention=choice["retention"], l1=choice["l1"], l2=choice["l2"]))
    logits_of(case.model, case.inputs())
    assert case.model.aim_stats.visual_tokens_after_merge < case.model.aim_stats.visual_tokens_before_merge


@per_family("geometry")
@pytest.mark.parametrize("tool", ["flops", "plan"])
def test_flops_and_plan_count_the_visual_tokens_the_family_model_gives(case, tool, capsys):
    # The analyzer's default frame: square, at the pixel-limit families' cap; the fixed-size
    # processors resize any frame to their tower's size.
    side = math.isqrt(next(fam for fam in FAMILIES if fam.pixel_limits).default_max_pixels)
    apply_aim(case.model, case.processor, AIMConfig(retention=0.25, l1=None, l2=None))
    logits_of(case.model, case.inputs(size=side))
    given = case.model.aim_stats.tokens_per_frame_before_merge  # per frame, image or temporal group
    result = tool_json(capsys, *tool_args(tool, case.family, case.tiny))
    counted = result["tokens_per_frame"] if tool == "flops" else result["inputs"]["tokens_per_frame"]
    assert counted == given


def bench_model_of(family):
    """The bench's small random-weight model of this family (bench's --model), or None."""
    return next((m.name for m in BENCH_MODELS.values() if m.family == family.name and not m.big), None)


@per_family("bench")
def test_bench_measures_the_family_small_model(family, tiny, capsys):
    name = bench_model_of(family)
    assert name is not None, f"bench has no model of family {family.name}"
    result = tool_json(capsys, "bench", "--model", name, "--frames", "1", "--repeats", "1",
                       "--lm-only", "--text-tokens", "8")
    assert result["model"] == name
    cases = {c["name"]: c for c in result["language_model_prefill"]}
    assert cases["aim"]["llm_input_tokens"] < cases["baseline"]["llm_input_tokens"]
    # the analyzer predicts for exactly the token counts the runtime ran
    assert result["predicted"]["aim"]["tokens_per_layer"] == cases["aim"]["tokens_per_layer"]


# -- the lmms-eval plugin on the local task -------------------------------------------------
# the local multiple-choice task of each media kind (the family gets the one of its first merged media)
EVAL_TASKS = {"video": "llava_aim_synthvid_mc", "image": "llava_aim_synthimg_mc"}
EVAL_LIMIT = 1
EVAL_RUNS = """
    import json
    from lmms_eval import evaluator
    from lmms_eval.tasks import TaskManager
    from llava.eval.synthetic import TASK_DIR
    tasks = TaskManager(include_path=str(TASK_DIR.parent), include_defaults=False)
    out = {}
    for plugin, pretrained, task in RUNS:
        try:
            res = evaluator.simple_evaluate(
                model=plugin, model_args=f"pretrained={pretrained},torch_dtype=float32,max_frames_num=2",
                tasks=[task], device="cpu", limit=LIMIT, batch_size=1, task_manager=tasks, bootstrap_iters=0,
                log_samples=True)
            samples = res["samples"][task]
            out[plugin + "/" + pretrained] = {"acc": res["results"][task]["acc,none"],
                                              "task": task, "model_args": res["config"]["model_args"],
                                              "options_scored": [len(s["resps"]) for s in samples]}
        except Exception as exc:
            out[plugin + "/" + pretrained] = {"error": f"{type(exc).__name__}: {exc}"}
    print("RESULTS " + json.dumps(out))
"""


def plugin_of(family) -> str:
    """The family's lmms-eval plugin model id: the adapter says it."""
    return family.plugin_model


def eval_task_of(family) -> str:
    """The local MC task of the media the contract feeds the family (video clips or images)."""
    return EVAL_TASKS[merged_kind(family)]


@pytest.fixture(scope="session")
def eval_results(tmp_path_factory):
    """One tiny lmms-eval run per (family, tiny model) on the task of its media, all in one fresh
    interpreter (the task's clips and the datasets cache under a temporary HF_HOME):
    "plugin/tiny" -> what it gave."""
    pytest.importorskip("lmms_eval")
    from llava.eval.args import PLUGIN_MODEL_TYPES

    home = tmp_path_factory.mktemp("hf_eval")
    # a family without a plugin fails its own parametrization (plugin_of), not the others' runs
    runs = [(plugin, tiny, eval_task_of(family)) for family, tiny in FAMILY_MODELS
            for plugin in PLUGIN_MODEL_TYPES if PLUGIN_MODEL_TYPES[plugin] in family.model_types]
    code = f"RUNS = {runs!r}\nLIMIT = {EVAL_LIMIT}\n" + textwrap.dedent(EVAL_RUNS)
    done = python(code, hub_env(home, HF_DATASETS_OFFLINE="1"), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(l for l in done.stdout.splitlines() if l.startswith("RESULTS "))
    return json.loads(line[len("RESULTS "):])


@per_family("lmms_eval")
def test_the_family_plugin_runs_the_local_mc_task(family, tiny, eval_results):
    got = eval_results[f"{plugin_of(family)}/{tiny}"]
    assert "error" not in got, got["error"]
    assert got["task"] == eval_task_of(family)
    assert f"pretrained={tiny}" in got["model_args"]
    assert 0.0 <= got["acc"] <= 1.0
    assert got["options_scored"] == [4] * EVAL_LIMIT  # one loss per option letter


# -- the tools' facts come from the adapter -------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_the_family_plugin_is_registered_from_its_adapter(family):
    pytest.importorskip("lmms_eval")
    from llava.eval import lmms_model
    from llava.eval.args import DEFAULT_CHECKPOINTS, PLUGIN_MODEL_TYPES
    from llava.eval.registry import model_manifests
    from llava.model.builder import CHECKPOINT_ALIASES

    [manifest] = [m for m in model_manifests() if m.model_id == family.plugin_model]
    module, name = manifest.simple_class_path.rsplit(".", 1)
    cls = getattr(sys.modules[module] if module in sys.modules else __import__(module, fromlist=[name]), name)
    assert cls is lmms_model.PLUGIN_CLASSES[family.plugin_model] and cls.FAMILY is family
    assert cls.DEFAULT_PRETRAINED == DEFAULT_CHECKPOINTS[family.plugin_model] == family.default_checkpoint
    assert PLUGIN_MODEL_TYPES[family.plugin_model] in family.model_types
    assert cls.VIDEO == ("video" in family.media) and cls.EXTRA_ARGS == tuple(family.plugin_model_args)
    assert all(CHECKPOINT_ALIASES[name] == target for name, target in family.checkpoint_aliases.items())


# -- the decoder driver's assumptions (FamilyAdapter.check_model -> base.check_decoder) -------
def _first_attention(model, family):
    return family.language_model(model).layers[0].self_attn


@per_family("driver")
@pytest.mark.parametrize("broken, named", [
    (lambda lm, attn, mp: mp.setattr(lm, "rotary_emb", None), "rotary_emb"),
    (lambda lm, attn, mp: mp.delattr(attn, "scaling"), "scaling"),
])
def test_check_model_refuses_a_decoder_the_driver_cannot_run(case, broken, named, monkeypatch):
    import copy

    from llava.errors import UnsupportedModelError

    # copies: the session's shared models must come out of this test whole (AIM applied to a broken
    # decoder and then the decoder mended underneath it left them unusable for later tests)
    model, processor = copy.deepcopy(case.model), copy.deepcopy(case.processor)
    lm = case.family.language_model(model)
    broken(lm, _first_attention(model, case.family), monkeypatch)
    with pytest.raises(UnsupportedModelError, match=f"cannot drive .*{named}.*disable pruning"):
        apply_aim(model, processor, AIMConfig())
    assert not hasattr(model, "_aim_runtime"), "refused before anything was patched"
    # merging alone does not run the driver: nothing to refuse
    apply_aim(model, processor, AIMConfig(l1=None, l2=None))
    assert model.aim_config.l1 is None


def test_run_help_lists_every_family_builtin_model(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    # argparse wraps lines at hyphens too ("tiny-llava-" / "onevision-1.5"): join those back
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")
    assert all(tiny in text for _, tiny in FAMILY_MODELS)
