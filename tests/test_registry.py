"""The score / reduction registry: one entry per method part, loud failures, and a new score
added with one entry plus its function (a text-conditioned toy score, run on the tiny model)."""

from __future__ import annotations

import pytest
import torch

from conftest import make_video, video_inputs
from llava import AIMConfig, apply_aim
from llava.aim import registry
from llava.aim.policy import METHODS, reduction_of, score_of
from llava.analysis import roofline
from llava.errors import AIMConfigError
from llava.model.runtime import remove_aim
from llava.model.language_model.driver import ImportanceProbe


def text_conditioned(x: registry.ScoreInputs) -> torch.Tensor:
    """Toy score: the causal attention the present TEXT queries pay each token, summed over
    heads (a score no built-in can express: it needs the text mask)."""
    q, k = x.query.float(), x.key.float()
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    n = q.shape[2]
    allowed = torch.ones(n, n, dtype=torch.bool).tril() & x.valid[:, None, None, :]
    allowed |= torch.eye(n, dtype=torch.bool)
    probs = (q @ k.transpose(-1, -2) * x.scaling).masked_fill(~allowed, float("-inf")).softmax(-1)
    return (probs * x.text[:, None, :, None]).sum(dim=(1, 2)) * x.valid


@pytest.fixture
def toy_score():
    calls = []

    def score(x):
        calls.append(x)
        return text_conditioned(x)

    registry.register("text_conditioned", "score", score, needs=("qk", "text"),
                      summary="attention paid by the text tokens (test)")
    try:
        yield calls
    finally:
        registry.unregister("text_conditioned")


def test_a_new_score_is_one_entry_and_runs_in_the_model(ov_sdpa, toy_score):
    model, processor = ov_sdpa
    cfg = AIMConfig(retention=0.5, l1=2, l2=6, importance="text_conditioned")
    apply_aim(model, processor, cfg)
    try:
        with torch.no_grad():
            logits = model(**video_inputs(processor, [make_video()])).logits
        stats = model.aim_stats
    finally:
        remove_aim(model, processor)
    assert torch.isfinite(logits).all()
    scored = [t["layer"] for t in stats.score_ties]
    assert scored == [2, 3, 4] and len(toy_score) == 3  # scored at each ranked layer (5 drops them all)
    for x, j in zip(toy_score, scored):
        assert x.layer == j and x.query is not None and x.key is not None
        # the probe hands over both masks: text = present non-visual tokens
        assert torch.equal(x.text, x.valid & ~x.visual) and x.text.any() and x.visual.any()
        assert int(x.visual.sum()) == stats.visual_tokens_per_layer[j][0]


def test_the_toy_score_decides_who_survives(ov_sdpa, toy_score):
    """Its ranking, not another score's, picks the survivors: pagerank keeps different tokens."""
    model, processor = ov_sdpa
    kept = {}
    for name in ("text_conditioned", "pagerank"):
        apply_aim(model, processor, AIMConfig(retention=0.5, l1=2, l2=6, importance=name), track_sources=True)
        try:
            with torch.no_grad():
                model(**video_inputs(processor, [make_video()]))
            kept[name] = (model.aim_stats.visual_tokens_per_layer[4], model.aim_stats.survivors(4))
        finally:
            remove_aim(model, processor)
    assert kept["text_conditioned"][0] == kept["pagerank"][0]  # as many survivors, other ones
    assert not torch.equal(kept["text_conditioned"][1], kept["pagerank"][1])


@pytest.mark.parametrize("name", ["nope", "last_token", "random", "none", "merge"])
def test_unregistered_or_method_owned_importance_is_refused(name):
    with pytest.raises(AIMConfigError, match="importance must be one of"):
        AIMConfig(importance=name)


def test_a_score_gone_from_the_registry_fails_loudly_in_the_probe(toy_score):
    cfg = AIMConfig(l1=2, l2=6, importance="text_conditioned")
    registry.unregister("text_conditioned")
    probe = ImportanceProbe(cfg, None)
    with pytest.raises(AIMConfigError, match="unknown score 'text_conditioned'"):
        probe.observe(None, torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))


@pytest.mark.parametrize("kwargs, match", [
    ({"kind": "score", "needs": ("frames",)}, "does not provide"),
    ({"kind": "widget"}, "kind must be one of"),
    ({"kind": "score", "name": "pagerank"}, "already registered"),
])
def test_bad_registrations_are_refused(kwargs, match):
    args = {"name": "toy", "fn": lambda x: None, **kwargs}
    with pytest.raises(AIMConfigError, match=match):
        registry.register(args.pop("name"), args.pop("kind"), args.pop("fn"), **args)
    assert "toy" not in registry.REGISTRY


def test_every_method_part_is_registered_and_priced_by_a_named_analyzer_function():
    for method in METHODS:
        cfg = AIMConfig.for_method(method)
        assert registry.lookup(score_of(cfg), "score")
        assert registry.lookup(reduction_of(cfg), "reduction")
    for entry in registry.REGISTRY.values():
        assert entry.cost is None or callable(getattr(roofline, entry.cost)), entry
        assert entry.needs <= set(registry.NEEDS)


def test_the_analyzer_prices_a_score_by_its_registry_entry():
    """A new score's cost for flops / plan is the function its entry names, and a score registered
    without one costs nothing: no name is special-cased in the analyzer."""
    from llava.aim.registry import register, unregister
    from llava.analysis.roofline import analyze

    common = dict(llm="qwen2-7b", frames=8, retention=0.25, l1=14, l2=22)
    pagerank = analyze(**common)
    register("toy_priced", "score", lambda x: x.visual.float(), needs=("visual",), cost="last_token_overhead_ops")
    register("toy_free", "score", lambda x: x.visual.float(), needs=("visual",), cost=None)
    try:
        priced = analyze(**common, importance="toy_priced")
        free = analyze(**common, importance="toy_free")
    finally:
        unregister("toy_priced")
        unregister("toy_free")
    names = lambda a: {op.name.split("[")[0] for op in a.aim_overhead.ops}  # noqa: E731
    assert "importance.qk" in names(pagerank) and "score.qk" not in names(pagerank)
    assert "score.qk" in names(priced) and "importance.qk" not in names(priced)
    assert not {n for n in names(free) if n.startswith(("score.", "importance."))}
    assert priced.prefill_tflops == free.prefill_tflops == pagerank.prefill_tflops  # the LLM itself is unchanged
    assert free.settings["importance"] == "toy_free"
