"""Shared fixtures: the built-in tiny models (loaded once per session) and small media."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Under pytest-xdist (make test) the workers share the cores: each takes its part, so two
# workers on two cores do not run four threads.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(4, (os.cpu_count() or 1) // max(1, _WORKERS))))


def _load(name, attn="sdpa"):
    from llava.model.builder import load_pretrained_model

    return load_pretrained_model(name, aim=None, torch_dtype=torch.float32, attn_implementation=attn)


@pytest.fixture(scope="session")
def ov_sdpa():
    return _load("tiny-llava-onevision")


@pytest.fixture(scope="session")
def ov_eager():
    return _load("tiny-llava-onevision", "eager")


@pytest.fixture(scope="session")
def llava15_sdpa():
    return _load("tiny-llava-1.5")


@pytest.fixture(scope="session")
def llava15_eager():
    return _load("tiny-llava-1.5", "eager")


QWEN_TINY = ("tiny-qwen2-vl", "tiny-qwen2.5-vl")
_QWEN_LOADED = {}


def qwen_model(name, attn="sdpa"):
    """(model, processor) of a tiny Qwen-VL model, loaded once per session (AIM off)."""
    if (name, attn) not in _QWEN_LOADED:
        _QWEN_LOADED[(name, attn)] = _load(name, attn)
    return _QWEN_LOADED[(name, attn)]


def make_clip(frames=4, height=48, width=80, seed=0):
    """A non-square synthetic clip (frames, height, width, 3) uint8 with a moving square."""
    rng = np.random.default_rng(seed)
    video = np.broadcast_to(rng.integers(0, 255, size=(1, 1, 3)), (frames, height, width, 3)).copy().astype(np.uint8)
    for f in range(frames):
        x = (4 + 9 * f) % max(1, width - 16)
        video[f, 8:24, x : x + 16] = rng.integers(0, 255, size=3)
    return video


def load_script(name: str):
    """A module of scripts/ (not a package) by file name, e.g. load_script("paper_tables"); it is
    registered in sys.modules, where dataclasses look their module up."""
    import importlib.util
    import sys
    from pathlib import Path

    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def encode_video(path, frames, fps=8, codec=None, options=None):
    """Encode RGB uint8 frames (H, W, 3) with PyAV at the first frame's size; returns ``path``.

    ``frames`` may be any iterable, so a test can write a very long clip without holding it.
    ``codec`` defaults to libx264 where this PyAV has it, else mpeg4; the container follows
    ``path``'s suffix."""
    import av

    frames = iter(frames)
    first = next(frames)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec or ("libx264" if "libx264" in av.codecs_available else "mpeg4"), rate=fps)
        stream.height, stream.width = first.shape[:2]
        stream.pix_fmt = "yuv420p"
        if options:
            stream.options = options
        for arr in itertools.chain([first], frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(params=["ov", "llava15"])
def model_case(request, ov_sdpa, llava15_sdpa):
    """(model, processor, inputs builder) for each LLaVA family, AIM removed after the test."""
    from llava.model.runtime import remove_aim

    if request.param == "ov":
        model, processor = ov_sdpa
        build = lambda p: video_inputs(p, [make_video()])  # noqa: E731
    else:
        model, processor = llava15_sdpa
        build = lambda p: image_inputs(p, [make_image()])  # noqa: E731
    yield model, processor, build
    remove_aim(model, processor)


def make_video(frames=4, size=48, seed=0):
    """A small synthetic clip (frames, H, W, 3) uint8: smooth background and a moving square."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(1, 1, 3))
    video = np.broadcast_to(base, (frames, size, size, 3)).copy().astype(np.uint8)
    for f in range(frames):
        x = 4 + 6 * f
        video[f, 10:26, x : x + 16] = rng.integers(0, 255, size=3)
    return video


def make_image(size=64, seed=1):
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
    return Image.fromarray(arr)


def chat_inputs(processor, kind, media, questions):
    """Batch of one-turn prompts, each with one ``kind`` ("video"/"image") item, left-padded."""
    prompts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": q}]}],
            add_generation_prompt=True,
        )
        for q in questions
    ]
    return processor(text=prompts, return_tensors="pt", padding=True, **{f"{kind}s": list(media)})


def video_inputs(processor, videos, questions=None):
    return chat_inputs(processor, "video", videos, questions or ["What happens in the video?"] * len(videos))


def image_inputs(processor, images, questions=None):
    return chat_inputs(processor, "image", images, questions or ["What is shown?"] * len(images))


def spliced_embeds(model, ids, merged, token_id):
    """(ids, embeds) of the prompt ``ids`` (L,) with its run of ``token_id`` placeholders replaced by
    exactly the rows of ``merged`` (no filler): the variable-length splice a reduction's tokens are
    checked against."""
    where = (ids == token_id).nonzero().flatten()
    start, end = int(where[0]), int(where[-1]) + 1
    spliced = torch.cat([ids[:start], torch.full((merged.shape[0],), token_id), ids[end:]])
    embeds = model.get_input_embeddings()(spliced[None])
    embeds[0, start:start + merged.shape[0]] = merged
    return spliced, embeds


def spliced_logits(model, inputs, merged, token_id):
    """The stock language model's last-token logits on the first prompt of ``inputs`` with exactly
    ``merged`` spliced in for its ``token_id`` placeholders."""
    _, embeds = spliced_embeds(model, inputs["input_ids"][0], merged, token_id)
    with torch.no_grad():
        return model.lm_head(model.model.language_model(inputs_embeds=embeds).last_hidden_state[:, -1])


def needs_family(adapter):
    """Skip where the installed transformers does not serve ``adapter``'s family (older than its
    min_transformers, e.g. Qwen3-VL on CI's oldest floor); tests/test_family_releases.py checks the
    refusal there."""
    served = adapter.installed()
    return pytest.mark.skipif(not served, reason="" if served else adapter.missing_reason())


@pytest.fixture(autouse=True)
def idle_machine(monkeypatch):
    """The suite runs on shared machines: in-process bench runs see an idle one unless a test says
    otherwise (tests/test_bench.py's _busy_machine), so no test depends on the machine's load."""
    import time

    from llava.bench import cli as bench_cli
    from llava.bench.load import LoadSample

    monkeypatch.setattr(bench_cli, "sample", lambda: LoadSample(0.0, time.process_time(), time.perf_counter()))
