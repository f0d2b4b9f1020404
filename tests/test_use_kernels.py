"""Hub kernels are off by default in every load the project makes (transformers 5.25 turned them
on for from_pretrained and refuses every load without the ``kernels`` package); --use-kernels /
model_args use_kernels=1 ask for them. On releases that never swap kernels in, nothing is passed."""

from __future__ import annotations

import pytest
import transformers
from packaging.version import Version

from llava.model.language_model import compat

KERNELS_BY_DEFAULT = Version(transformers.__version__) >= Version("5.25.0")  # the release that turned them on
needs_default_on = pytest.mark.skipif(not KERNELS_BY_DEFAULT, reason="transformers < 5.25 never swaps kernels in")


def test_kernel_keywords_follow_the_installed_default():
    if KERNELS_BY_DEFAULT:
        assert compat.kernel_kwargs(False) == {"use_kernels": False}
        assert compat.kernel_kwargs(True) == {"use_kernels": True}
    else:  # 5.24 and older: use_kernels defaults to False there; passing nothing keeps it
        assert compat.kernel_kwargs(False) == {}
        assert compat.kernel_kwargs(True) == {}


def _spy_from_pretrained(monkeypatch, cls):
    seen = []
    stock = cls.from_pretrained.__func__

    def spy(klass, *args, **kwargs):
        seen.append(dict(kwargs))
        return stock(klass, *args, **kwargs)

    monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    return seen


@pytest.mark.parametrize("asked", [None, False, True], ids=["default", "off", "on"])
def test_loads_pass_use_kernels_only_where_the_release_reads_it(monkeypatch, asked):
    from llava.model.builder import load_pretrained_model

    seen = _spy_from_pretrained(monkeypatch, transformers.LlavaOnevisionForConditionalGeneration)
    extra = {} if asked is None else {"use_kernels": asked}
    if asked and KERNELS_BY_DEFAULT and not transformers.utils.import_utils.is_kernels_available():
        pytest.skip("the kernels package is not installed: use_kernels=True cannot load here")
    load_pretrained_model("tiny-llava-onevision", **extra)
    if KERNELS_BY_DEFAULT:
        assert seen[0]["use_kernels"] is bool(asked)
    else:
        assert "use_kernels" not in seen[0]


@needs_default_on
def test_a_load_needs_no_kernels_package(monkeypatch):
    """With ``kernels`` hidden, a stock 5.25 from_pretrained fails; the project's load does not."""
    import transformers.modeling_utils as modeling_utils

    from llava.model.builder import load_pretrained_model, resolve_checkpoint

    monkeypatch.setattr(modeling_utils, "is_kernels_available", lambda *a, **k: False)
    monkeypatch.delenv("USE_HUB_KERNELS", raising=False)
    with pytest.raises(ValueError, match="Kernels are not available"):  # the hiding works
        transformers.LlavaForConditionalGeneration.from_pretrained(resolve_checkpoint("tiny-llava-1.5"))
    model, _ = load_pretrained_model("tiny-llava-1.5")
    assert not getattr(model, "use_kernels", False)


def test_run_and_visualize_take_use_kernels():
    from llava.cli import build_parser

    parser = build_parser()
    run = parser.parse_args(["run", "--video", "x.mp4", "--question", "q"])
    assert run.use_kernels is False
    assert parser.parse_args(["run", "--video", "x.mp4", "--question", "q", "--use-kernels"]).use_kernels is True
    vis = parser.parse_args(["visualize", "--video", "x.mp4", "--out", "o.png", "--use-kernels"])
    assert vis.use_kernels is True


def test_plugin_model_arg_use_kernels():
    from llava.errors import EvalArgumentError
    from llava.eval.args import loader_args, split_model_args

    assert loader_args({}, "x").use_kernels is False
    loader, _ = split_model_args({"use_kernels": "1"})
    assert loader_args(loader, "x").use_kernels is True
    with pytest.raises(EvalArgumentError, match="use_kernels"):
        loader_args({"use_kernels": "maybe"}, "x")


def test_resume_key_changes_only_when_kernels_are_asked_for():
    from llava.eval import resume

    base = {"pretrained": "tiny-llava-onevision", "max_frames_num": 4}
    key = resume.run_key("llava_onevision_aim", base)
    assert resume.run_key("llava_onevision_aim", {**base, "use_kernels": 0}) == key
    assert resume.run_key("llava_onevision_aim", {**base, "use_kernels": 1}) != key
