"""Host syncs on AIM's hot path, counted on CPU.

On an accelerator every read of a device value (``item``, ``tolist``, ``bool(tensor)``, ...)
and every op whose output shape depends on the data (``nonzero``, boolean-mask indexing)
drains the launch queue. The decoder driver reads the prompt's visual counts once before the
layer loop (the host-side schedule gives every shape and every "does this layer prune"
decision) and its statistics once after it; nothing inside the loop, nothing in a decode
step. Counted here with a TorchFunctionMode that attributes each such call to the first
calling frame outside torch, and keeps those made from the project's own files (llava/).
"""

from __future__ import annotations

import collections
import copy
import os
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode

import llava
from conftest import make_video, video_inputs
from llava import AIMConfig, apply_aim
from llava.model.language_model.compat import cache_kwargs, output_cache
from llava.model.runtime import remove_aim

LLAVA_DIR = os.path.dirname(os.path.abspath(llava.__file__)) + os.sep
TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
# Calls that make the host wait for the device.
READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy", "equal", "allclose"}
# Tensors made from host data: a copy from pageable host memory waits for the device's stream.
COPIES_IN = {"tensor", "as_tensor"}
# Ops whose output shape depends on the data (the host must learn it).
DATA_SHAPED = {"nonzero", "argwhere", "masked_select", "unique", "unique_consecutive"}


def _bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _is_sync(func, args) -> bool:
    name = getattr(func, "__name__", "")
    if name in READS or name in DATA_SHAPED or name in COPIES_IN:
        return True
    if name == "where" and len(args) == 1:
        return True
    return name in ("__getitem__", "__setitem__") and len(args) > 1 and _bool_index(args[1])


def _project_caller():
    """(file, line) of the first calling frame outside torch, when it is one of llava's files."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith(TORCH_DIR) or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    if frame is None or not os.path.abspath(frame.f_code.co_filename).startswith(LLAVA_DIR):
        return None
    return os.path.relpath(frame.f_code.co_filename, LLAVA_DIR), frame.f_lineno


class HostSyncCounter(TorchFunctionMode):
    """Counts host syncs made from llava/ inside the block: ``total`` and ``where`` (by line)."""

    def __init__(self):
        super().__init__()
        self.where = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if _is_sync(func, args):
            caller = _project_caller()
            if caller is not None:
                self.where[f"{caller[0]}:{caller[1]} {getattr(func, '__name__', func)}"] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.where.values())


def deepened(model, times: int):
    """A copy of ``model`` whose decoder repeats its layers ``times`` times (same weights)."""
    deep = copy.deepcopy(model)
    lm = deep.model.language_model
    shared = {id(c): c for c in (lm.config, deep.config, deep.config.text_config)}  # one config, as loaded
    layers = [copy.deepcopy(layer, dict(shared)) for _ in range(times) for layer in lm.layers]
    for i, layer in enumerate(layers):
        layer.self_attn.layer_idx = i
    lm.layers = torch.nn.ModuleList(layers)
    for config in (lm.config, deep.config.text_config):
        config.num_hidden_layers = len(layers)
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = [config.layer_types[0]] * len(layers)
    return deep


@pytest.fixture(scope="module")
def models(ov_sdpa):
    model, processor = ov_sdpa
    return {8: model, 16: deepened(model, 2)}, processor


def _prefill_and_step(model, processor, cfg):
    """(syncs of one prefill, syncs of one decode step) with ``cfg`` applied."""
    apply_aim(model, processor, cfg)
    try:
        inputs = video_inputs(processor, [make_video(8)])
        with torch.no_grad(), HostSyncCounter() as prefill:
            out = model(**inputs, use_cache=True)
        cache = output_cache(out)
        step = {
            "input_ids": out.logits[:, -1:].argmax(-1),
            "attention_mask": torch.cat([inputs["attention_mask"], torch.ones(1, 1, dtype=torch.long)], dim=1),
        }
        with torch.no_grad(), HostSyncCounter() as decode:
            model(**step, **cache_kwargs(model, cache), use_cache=True)
        assert model.aim_stats.layer_seq_lens[-1] < model.aim_stats.layer_seq_lens[0]  # it did prune
        return prefill, decode
    finally:
        remove_aim(model, processor)


@pytest.mark.parametrize("method", ["aim", "fastv"])
def test_syncs_per_prefill_do_not_grow_with_depth_and_decode_has_none(models, method):
    by_depth, processor = models
    found = {}
    for depth, model in by_depth.items():
        cfg = (AIMConfig(retention=0.5, l1=2, l2=depth - 1) if method == "aim"
               else AIMConfig.for_method("fastv", drop_layers=(2,)))
        found[depth] = _prefill_and_step(model, processor, cfg)
    (p8, d8), (p16, d16) = found[8], found[16]
    assert p8.total == p16.total, (p8.where, p16.where)
    # the read before the loop, the schedule's copy to the device, the read after the loop
    assert p8.total <= 3, p8.where
    assert d8.total == 0 and d16.total == 0, (d8.where, d16.where)


def test_counter_sees_the_calls_it_counts():
    """The counter itself: it counts reads and data-shaped ops made from llava/, and only those."""
    from llava.aim.importance import compact_left, tie_counts

    keep = torch.tensor([[True, False, True]])
    with HostSyncCounter() as counter:
        compact_left(keep)  # one .item()
        compact_left(keep, width=2)  # none: the caller knows the width
        tie_counts(torch.zeros(1, 3), keep, keep, keep)  # two .tolist()
        bool(keep.any())  # from this test file: not the project's
    assert counter.total == 3, counter.where


def test_a_generated_placeholder_id_decodes_as_text_without_a_read(ov_sdpa):
    """One new token on a pruned cache is a decode step whatever its id: the vision side fills
    placeholders at prefill only, so a sampled video-token id is text (it used to be refused
    after a device read of the visual mask)."""
    model, processor = ov_sdpa
    apply_aim(model, processor, AIMConfig(retention=0.5, l1=2, l2=6))
    try:
        inputs = video_inputs(processor, [make_video()])
        with torch.no_grad():
            out = model(**inputs, use_cache=True)
            before = list(model.aim_stats.kv_cache_lens)
            step = {
                "input_ids": torch.full((1, 1), model.config.video_token_id),
                "attention_mask": torch.cat([inputs["attention_mask"], torch.ones(1, 1, dtype=torch.long)], dim=1),
            }
            with HostSyncCounter() as counter:
                logits = model(**step, **cache_kwargs(model, output_cache(out)), use_cache=True).logits
        assert counter.total == 0 and torch.isfinite(logits).all()
        assert model.aim_stats.kv_cache_lens == [n + 1 for n in before]
    finally:
        remove_aim(model, processor)
