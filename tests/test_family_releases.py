"""Families the installed transformers is too old for (FamilyAdapter.min_transformers) are not
served: their model types and built-in names are refused with one message naming the release
they need and the one installed. On the lock every family is served; CI's oldest venv
(transformers 5.17) runs the refusals for Qwen3-VL and LLaVA-OneVision-1.5."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from llava.errors import UnsupportedModelError
from llava.model.builder import load_pretrained_model
from llava.model.families import _ALL, FAMILIES, UNAVAILABLE, family_for_model_type

VERSIONED = [fam for fam in _ALL if fam.min_transformers]


def test_every_family_is_served_or_refused_never_both():
    assert {f.name for f in FAMILIES} | {f.name for f in UNAVAILABLE} == {f.name for f in _ALL}
    assert not {f.name for f in FAMILIES} & {f.name for f in UNAVAILABLE}


@pytest.mark.parametrize("family", VERSIONED, ids=[f.name for f in VERSIONED])
def test_a_family_newer_than_the_installed_release_is_refused_naming_both(family):
    if family.installed():
        assert family in FAMILIES
        pytest.skip(f"transformers {version('transformers')} serves {family.title}")
    message = rf"{family.title}.* needs transformers >= {family.min_transformers}.*{version('transformers')} is installed"
    for model_type in family.model_types:
        with pytest.raises(UnsupportedModelError, match=message):
            family_for_model_type(model_type)
    for name in family.tiny_models:
        with pytest.raises(UnsupportedModelError, match=message):
            load_pretrained_model(name)
