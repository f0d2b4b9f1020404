"""Hub kernels are off by default in every load the project makes (transformers 5.25 turned them
on for from_pretrained and refuses every load without the ``kernels`` package); --use-kernels /
model_args use_kernels=1 ask for them. On releases that never swap kernels in, nothing is passed."""

from __future__ import annotations

import pytest
import torch
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


# -- a layer whose forward kernelize swapped (CPU: the kernels package's CPU path) ----------------
# No hub kernel can be fetched here, and the CUDA ones cannot run; a local repository stands in
# for one. It doubles the output of the per-head q/k norms (weight of head_dim entries): the probe
# must see the swapped forward's q/k, not a recomputation with the stock layer.
HEAD_NORM_SCALE = 2.0


class _ScaledHeadRMSNorm(torch.nn.Module):
    def forward(self, hidden_states):  # the stock Qwen3RMSNorm.forward's signature and formula
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        out = self.weight * hidden_states.to(input_dtype)
        return out * HEAD_NORM_SCALE if self.weight.numel() < 64 else out  # the tiny model: hidden 64, head 16


class _LocalRepo:
    def load(self):
        return _ScaledHeadRMSNorm


def _kernelized_tiny_model():
    kernels = pytest.importorskip("kernels", reason="the kernels package (transformers >= 5.25 installs it)")
    from llava.model.builder import load_pretrained_model

    pytest.importorskip("transformers", minversion="5.25", reason="tiny-llava-onevision-1.5 needs transformers 5.25")
    model, processor = load_pretrained_model("tiny-llava-onevision-1.5")
    with kernels.use_kernel_mapping({"RMSNorm": {"cpu": _LocalRepo()}}, inherit_mapping=False):
        kernels.kernelize(model, mode=kernels.Mode.INFERENCE, device="cpu")
    return model, processor


def test_the_probe_sees_the_q_k_of_a_kernelized_layer(monkeypatch):
    from conftest import make_video, video_inputs

    from llava import AIMConfig, apply_aim
    from llava.model.language_model import driver

    model, processor = _kernelized_tiny_model()
    lm = model.model.language_model
    attention = lm.layers[2].self_attn  # l1=2: the first pruning layer's attention scores the tokens
    assert attention.q_norm.__dict__.get("_kernel_repo") is not None, "kernelize did not swap the forward"
    seen = {}

    def keep(name):
        def hook(module, args, out):  # returns None: the output stays the module's own
            seen.setdefault(name, (args[0].detach().clone(), out))
        return hook

    attention.q_norm.register_forward_hook(keep("q_norm"))
    lm.rotary_emb.register_forward_hook(keep("cos_sin"))
    stock_observe = driver.ImportanceProbe.observe

    def observe(self, module, query, key):
        if module is attention:
            seen["probe_query"] = query.detach().clone()
        return stock_observe(self, module, query, key)

    monkeypatch.setattr(driver.ImportanceProbe, "observe", observe)
    apply_aim(model, processor, AIMConfig(retention=0.5, l1=2, l2=6))
    inputs = video_inputs(processor, [make_video(frames=2)])
    with torch.no_grad():
        model(**inputs)
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm, apply_rotary_pos_emb

    norm_in, norm_out = seen["q_norm"]
    # the driven prefill ran the swapped forward: twice the stock norm's output
    assert torch.equal(norm_out, Qwen3RMSNorm.forward(attention.q_norm, norm_in) * HEAD_NORM_SCALE)
    cos, sin = seen["cos_sin"][1]
    q = norm_out.transpose(1, 2)
    expected, _ = apply_rotary_pos_emb(q, q, cos, sin)
    assert torch.equal(seen["probe_query"], expected)  # the probe scores with the kernel's q, rotated


def test_removal_matches_the_mask_reference_on_a_kernelized_model():
    from conftest import make_video, video_inputs

    from llava import AIMConfig, apply_aim, remove_aim

    model, processor = _kernelized_tiny_model()
    logits = {}
    for mode in ("mask", "remove"):
        apply_aim(model, processor, AIMConfig(retention=0.5, l1=2, l2=6, pruning_mode=mode))
        with torch.no_grad():
            logits[mode] = model(**video_inputs(processor, [make_video(frames=2)])).logits[:, -1]
        remove_aim(model, processor)
    assert (logits["remove"] - logits["mask"]).abs().max().item() <= 1e-4
