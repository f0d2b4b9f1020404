"""lmms-eval plugin models in process, on the tiny models: answers, losses, order, errors."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("lmms_eval")

from lmms_eval.api.instance import GenerationResult, Instance  # noqa: E402

from llava.errors import EvalArgumentError, MediaNotFoundError, UnsupportedModelError, UnsupportedUsageError  # noqa: E402
from llava.eval import synthetic  # noqa: E402
from llava.eval.lmms_model import LlavaAIM, LlavaOneVisionAIM  # noqa: E402

FRAMES = 4
GEN = {"max_new_tokens": 6, "temperature": 0, "until": ["\n\n"]}
QUESTION = "What colour is the moving square?\nA. red\nB. green\nAnswer with the option's letter."


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    return [str(synthetic.ensure_video(synthetic.clip_name(i), folder)) for i in range(2)]


def _plugin(cls, clips, **model_args):
    model = cls(pretrained=model_args.pop("pretrained", "tiny-llava-onevision"), device="cpu",
                torch_dtype="float32", max_frames_num=FRAMES, **model_args)
    model.task_dict = {"t": {"test": [{"video": clips[0]}, {"video": clips[1]}]}}
    return model


def _texts(results):
    assert all(isinstance(r, GenerationResult) for r in results)
    return [r.text for r in results]


def _video(doc):
    return [doc["video"]]


def _gen_request(doc_id, context=QUESTION, doc_to_visual=_video):
    return Instance("generate_until", (context, dict(GEN), doc_to_visual, doc_id, "t", "test"), idx=0,
                    metadata={"task": "t", "doc_id": doc_id, "repeats": 1})


def _ll_request(doc_id, continuation, context=QUESTION):
    return Instance("loglikelihood", (context, continuation, _video, doc_id, "t", "test"), idx=0,
                    metadata={"task": "t", "doc_id": doc_id, "repeats": 1})


@pytest.fixture(scope="module")
def ov_off(clips):
    return _plugin(LlavaOneVisionAIM, clips, aim=0)


@pytest.fixture(scope="module")
def ov_aim(clips):
    return _plugin(LlavaOneVisionAIM, clips, retention=0.25, l1=2, l2=6)


def _stock_answer_and_loss(clip, continuation):
    """The same prompt through the stock transformers model, as llava-aim run builds it."""
    from llava.model.builder import load_pretrained_model
    from llava.video import load_video

    model, processor = load_pretrained_model("tiny-llava-onevision", aim=None, torch_dtype=torch.float32)
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    frames = load_video(clip, FRAMES)
    inputs = processor(text=prompt, videos=[frames], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        answer = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        full = processor(text=prompt + continuation, videos=[frames], return_tensors="pt")
        n = full["input_ids"].shape[1] - inputs["input_ids"].shape[1]
        logits = model(**full).logits[0]
    loss = torch.nn.functional.cross_entropy(logits[-n - 1:-1], full["input_ids"][0, -n:])
    return answer.split("\n\n")[0].strip(), float(loss)


def test_aim_off_equals_stock_model(ov_off, clips):
    answer, loss = _stock_answer_and_loss(clips[0], "A")
    assert _texts(ov_off.generate_until([_gen_request(0)])) == [answer]
    [result] = ov_off.loglikelihood([_ll_request(0, "A")])
    assert isinstance(result, GenerationResult)  # the lmms-eval 0.7.x workaround
    got_loss, greedy = result.text
    assert got_loss == pytest.approx(loss, rel=1e-5, abs=1e-5) and isinstance(greedy, bool)


def test_aim_on_prunes_and_keeps_order(ov_aim):
    requests = [_gen_request(0), _gen_request(1), _gen_request(0)]  # the last one: a padding clone
    answers = _texts(ov_aim.generate_until(requests))
    assert len(answers) == 3 and answers[2] == answers[0]
    stats = ov_aim.model.aim_stats
    assert stats.visual_tokens_after_merge < stats.visual_tokens_before_merge
    assert stats.layer_seq_lens[-1] < stats.layer_seq_lens[0]  # visual tokens pruned inside the LLM
    alone = [ov_aim.generate_until([r])[0].text for r in requests[:2]]
    assert alone == answers[:2]


def test_aim_on_loglikelihood_scores_each_option(ov_aim):
    results = ov_aim.loglikelihood([_ll_request(0, c) for c in ("A", "B", " green")])
    losses = [r.text[0] for r in results]
    assert all(torch.isfinite(torch.tensor(loss)) and loss > 0 for loss in losses)
    assert len(set(losses)) == 3  # different continuations, different losses


def test_unconditional_loglikelihood_request_is_text_only(ov_off):
    [result] = ov_off.loglikelihood([Instance("loglikelihood", ("", "red"), idx=0,
                                              metadata={"task": "t", "doc_id": 0, "repeats": 1})])
    assert result.text[0] > 0


def test_multi_round_is_a_clear_error(ov_off):
    with pytest.raises(UnsupportedUsageError, match="multi-round"):
        ov_off.generate_until_multi_round([])


def test_missing_video_names_the_document(ov_off, tmp_path):
    ov_off.task_dict["t"]["test"].append({"video": str(tmp_path / "gone.mp4")})
    try:
        with pytest.raises(MediaNotFoundError, match="t doc 2"):
            ov_off.generate_until([_gen_request(2)])
    finally:
        ov_off.task_dict["t"]["test"].pop()


def test_unknown_model_arg_fails_before_loading(clips):
    with pytest.raises(EvalArgumentError, match="max_frames"):
        LlavaOneVisionAIM(pretrained="tiny-llava-onevision", device="cpu", max_frames=8)


def test_llava15_images_and_refuses_videos(clips):
    from PIL import Image

    model = _plugin(LlavaAIM, clips, pretrained="tiny-llava-1.5")
    model.task_dict["t"]["test"].append({"image": Image.new("RGB", (64, 64), (200, 30, 30))})
    [answer] = model.generate_until([_gen_request(2, doc_to_visual=lambda doc: [doc["image"]])])
    assert isinstance(answer.text, str)
    assert model.model.aim_stats.visual_tokens_after_merge == 576 // 4  # LLaVA-1.5: 576 -> 144
    with pytest.raises(UnsupportedUsageError, match="llava_onevision_aim"):
        model.generate_until([_gen_request(0)])


def test_wrong_family_is_a_clear_error(clips):
    with pytest.raises(UnsupportedModelError, match="--model llava_onevision_aim"):
        LlavaAIM(pretrained="tiny-llava-onevision", device="cpu")


# -- efficiency figures, batches, the resume journal ---------------------------------------------
def test_every_answer_carries_its_efficiency_figures(ov_aim, ov_off):
    from llava.eval.efficiency import EfficiencyCounts

    [aim] = ov_aim.generate_until([_gen_request(0)])
    [off] = ov_off.generate_until([_gen_request(0)])
    a, o = aim.token_counts, off.token_counts
    assert isinstance(a, EfficiencyCounts) and isinstance(o, EfficiencyCounts)
    stats = ov_aim.model.aim_stats
    assert a.visual_tokens_before_merge == stats.visual_tokens_before_merge == FRAMES * 196 + 1
    assert a.visual_tokens_after_merge == stats.visual_tokens_after_merge == FRAMES * 49 + 1
    assert a.sum_tokens_over_layers == sum(stats.layer_seq_lens)  # pruning removed tokens inside
    assert o.visual_tokens_before_merge == o.visual_tokens_after_merge == FRAMES * 196 + 1
    assert o.sum_tokens_over_layers == o.input_tokens * 8  # stock model: every token, 8 layers
    assert a.input_tokens < o.input_tokens and a.sum_tokens_over_layers < o.sum_tokens_over_layers
    for c in (a, o):
        assert 0 < c.prefill_ms <= c.time_to_first_token_ms
        assert 1 <= c.output_tokens <= GEN["max_new_tokens"] and c.batch_size == 1
        assert c.kv_cache_bytes > 0
    assert a.kv_cache_bytes < o.kv_cache_bytes
    d = a.to_dict()  # what lmms-eval writes into the samples log
    assert d["input_tokens"] == a.input_tokens and d["prefill_ms"] == a.prefill_ms


def test_throughput_log_receives_each_generate_call(ov_aim):
    from lmms_eval.models.model_utils import gen_metrics

    gen_metrics.reset_logged_metrics()
    ov_aim.generate_until([_gen_request(0), _gen_request(1)])
    summary = gen_metrics.summarize_logged_metrics()
    assert summary["total_gen_tokens"] >= 2 and summary["avg_prefill_ms"] > 0
    assert summary["avg_visual_tokens_after_merge"] == FRAMES * 49 + 1
    assert summary["avg_latency"] > 0  # total time / requests


def test_batch_of_two_equals_each_alone(clips):
    single = _plugin(LlavaOneVisionAIM, clips, retention=0.25, l1=2, l2=6)
    double = _plugin(LlavaOneVisionAIM, clips, retention=0.25, l1=2, l2=6, batch_size=2)
    requests = [_gen_request(0), _gen_request(1), _gen_request(1, context="Which way does it move?")]
    alone = single.generate_until(requests)
    together = double.generate_until(requests)
    assert _texts(together) == _texts(alone)
    assert [r.token_counts.batch_size for r in together] == [2, 2, 1]
    for a, t in zip(alone, together):
        assert t.token_counts.visual_tokens_after_merge == a.token_counts.visual_tokens_after_merge
        assert t.token_counts.sum_tokens_over_layers == a.token_counts.sum_tokens_over_layers
        assert t.token_counts.input_tokens == a.token_counts.input_tokens
        assert t.token_counts.output_tokens == a.token_counts.output_tokens


def test_what_cannot_be_batched_runs_alone_with_one_log_line(clips, caplog):
    double = _plugin(LlavaOneVisionAIM, clips, aim=0, batch_size=2)
    sampled = dict(GEN, temperature=0.7)
    requests = [Instance("generate_until", (QUESTION, sampled, _video, i, "t", "test"), idx=0,
                         metadata={"task": "t", "doc_id": i, "repeats": 1}) for i in (0, 1)]
    with caplog.at_level("WARNING"):
        results = double.generate_until(requests)
    assert [r.token_counts.batch_size for r in results] == [1, 1]
    said = [r.message for r in caplog.records if "one request at a time" in r.message]
    assert len(said) == 1 and "sampling" in said[0]


def test_a_failing_batch_falls_back_to_single_requests(clips, caplog, monkeypatch):
    double = _plugin(LlavaOneVisionAIM, clips, aim=0, batch_size=2)
    expected = _texts(double.generate_until([_gen_request(0)])) + _texts(double.generate_until([_gen_request(1)]))

    def broken(prompt_list, kind, media_list):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(double, "_batch_inputs", broken)
    with caplog.at_level("WARNING"):
        results = double.generate_until([_gen_request(0), _gen_request(1)])
    assert _texts(results) == expected and [r.token_counts.batch_size for r in results] == [1, 1]
    assert sum("could not run together" in r.message for r in caplog.records) == 1


def test_a_subclass_that_builds_inputs_alone_is_not_batched(clips, caplog):
    class OwnInputs(LlavaOneVisionAIM):
        def _inputs(self, prompt, kind, media):
            return super()._inputs(prompt, kind, media)

    model = _plugin(OwnInputs, clips, aim=0, batch_size=2)
    with caplog.at_level("WARNING"):
        results = model.generate_until([_gen_request(0), _gen_request(1)])
    assert [r.token_counts.batch_size for r in results] == [1, 1]
    assert any("builds its inputs one request at a time" in r.message for r in caplog.records)


def test_resume_journal_replays_answers_of_the_same_setting_only(clips, tmp_path, monkeypatch):
    from llava.eval.resume import KEY_FILE, RESUME_DIR_ENV, setting_of

    args = dict(pretrained="tiny-llava-onevision", device="cpu", torch_dtype="float32", max_frames_num=FRAMES,
                retention=0.25, l1=2, l2=6)
    folder = tmp_path / "key"
    folder.mkdir()
    (folder / KEY_FILE).write_text(__import__("json").dumps(setting_of("llava_onevision_aim", args)))
    monkeypatch.setenv(RESUME_DIR_ENV, str(folder))
    first = LlavaOneVisionAIM(**args)
    first.task_dict = {"t": {"test": [{"video": clips[0]}, {"video": clips[1]}]}}
    assert first.journal is not None and first.journal.loaded == 0
    answers = first.generate_until([_gen_request(0), _gen_request(1)])
    losses = first.loglikelihood([_ll_request(0, "A")])
    second = LlavaOneVisionAIM(**args)
    second.task_dict = first.task_dict
    assert second.journal.loaded == 3

    def no_model(*a, **k):
        raise AssertionError("the model ran for an answer in the journal")

    second._model.generate = no_model
    second._continuation_loss = no_model
    replayed = second.generate_until([_gen_request(0), _gen_request(1)])
    assert _texts(replayed) == _texts(answers)
    assert all(r.token_counts.from_resume_journal for r in replayed)
    assert replayed[0].token_counts.prefill_ms == answers[0].token_counts.prefill_ms
    [again] = second.loglikelihood([_ll_request(0, "A")])
    assert tuple(again.text) == tuple(losses[0].text) and again.text.strip() == ""
    # another setting: the folder's setting.json does not match, nothing is replayed
    other = LlavaOneVisionAIM(**dict(args, retention=0.5))
    assert other.journal is None


# -- pure parts, property-tested ------------------------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(st.one_of(st.none(), st.integers(0, 3)), max_size=30), size=st.integers(1, 5))
def test_plan_batches_keeps_every_request_once_with_equal_keys(keys, size):
    from llava.eval.lmms_model import plan_batches

    batches = list(plan_batches(list(enumerate(keys)), size))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(keys)))  # every request once
    for b in batches:
        assert 1 <= len(b) <= size and b == sorted(b)  # arrival order inside a batch
        assert len({keys[i] for i in b}) == 1  # one key per batch
        if keys[b[0]] is None:
            assert len(b) == 1  # what cannot be batched runs alone
    if size == 1:
        assert batches == [[i] for i in range(len(keys))]


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.lists(st.integers(0, 9), min_size=1, max_size=12), min_size=1, max_size=4))
def test_generated_lengths_stop_at_the_first_end_of_sequence(rows):
    from types import SimpleNamespace

    from llava.eval.lmms_model import _generated_lengths

    width = max(len(r) for r in rows)
    padded = [r + [0] * (width - len(r)) for r in rows]  # 0: padding after a row ended (not a stop)
    eos = 7
    lengths = _generated_lengths(torch.tensor(padded), SimpleNamespace(eos_token_id=eos),
                                 SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[eos, 8])))
    for row, n in zip(padded, lengths):
        stops = [i for i, t in enumerate(row) if t in (7, 8)]
        assert n == (stops[0] + 1 if stops else len(row))


def test_a_subclass_sees_its_own_requests_media_hook_before_its_inputs(clips):
    """The pattern of a family subclass (e.g. Qwen2.5-VL noting each clip's duration in
    _visuals for its _inputs): _visuals runs for a request right before that request's inputs."""

    class Noting(LlavaOneVisionAIM):
        def _visuals(self, raw, task, doc_id):
            self.current = doc_id
            return super()._visuals(raw, task, doc_id)

        def _inputs(self, prompt, kind, media):
            self.order.append(self.current)
            return super()._inputs(prompt, kind, media)

    model = _plugin(Noting, clips, aim=0, batch_size=2)
    model.order = []
    model.generate_until([_gen_request(0), _gen_request(1), _gen_request(0, context="Again?")])
    model.loglikelihood([_ll_request(1, "A")])
    assert model.order == [0, 1, 0, 1]
