"""The analyzer and bench ask the family adapters for geometry (references, shapes, tokens)."""

from __future__ import annotations

import json

import pytest

from llava.analysis.shapes import get_llm, get_vision, resolve_model
from llava.bench.models import BENCH_MODELS
from llava.cli import main
from llava.model.families import FAMILIES


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_every_family_declares_a_reference_the_tools_read(family):
    assert family.references, f"{family.name} declares no reference checkpoint"
    for checkpoint, ref in family.references.items():
        config = family.reference_config(checkpoint)
        for name in ref.llm_names:
            model = resolve_model(name)
            assert model.family is family and model.checkpoint == checkpoint
            assert get_llm(name).layers == family.text_config(config).num_hidden_layers
        assert get_vision(ref.tower).name == ref.tower
        tokens = family.visual_tokens(config, 4)
        assert tokens.units * family.frames_per_unit >= 4 and tokens.tokens_per_unit > 0


def test_a_reference_hub_id_is_the_builtin_model(capsys):
    assert main(["flops", "--json", "--llm", "llava-hf/llava-1.5-7b-hf", "--frames", "1"]) == 0
    by_hub = json.loads(capsys.readouterr().out)
    assert main(["flops", "--json", "--llm", "vicuna-7b", "--frames", "1"]) == 0
    by_name = json.loads(capsys.readouterr().out)
    # LLaVA-1.5 gives 576 tokens per image (was 196 for every family), its CLIP tower, its schedule
    assert by_hub["tokens_per_frame"] == by_name["tokens_per_frame"] == 576
    assert by_hub["vision_tower"] == "clip-vit-l-336" and (by_hub["l1"], by_hub["l2"]) == (13, 21)
    assert by_hub["prefill_tflops"] == by_name["prefill_tflops"]


def test_bench_has_every_family_at_both_scales():
    for family in FAMILIES:
        scales = sorted(m.big for m in BENCH_MODELS.values() if m.family == family.name)
        assert scales == [False, True], family.name
    # the earlier names keep their meaning
    assert (BENCH_MODELS["small"].family, BENCH_MODELS["onevision-7b"].big) == ("onevision", True)
    assert BENCH_MODELS["small-qwen2.5-vl"].family == "qwen2_5_vl" and not BENCH_MODELS["small-qwen2.5-vl"].big
