"""The bad-input contract of the commands, and defaults that run as printed.

Every refused input exits 2 with ONE line on stderr naming the CLI's flags, no traceback and
nothing on stdout; inputs that are served differently from what was typed (a clip shorter
than --frames, an image on a model that merges video frames only) say so in a note.
"""

from __future__ import annotations

import itertools
import os
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import encode_video
from llava.cli import main
from llava.model.builder import BUILTIN_MODELS

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_IMAGE = ROOT / "llava" / "assets" / "sample_image.png"
SAMPLE_FRAMES = 64  # frames of the shipped sample video
PYTHON_WORDS = re.compile(r"\b(l1|l2)=|=None\b|\bdrop_layers\b|\bdrop_ratio\b|\bpruning_mode\b|AIMConfig")


def run_cli(args, capsys):
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def refused(args, capsys) -> str:
    """Run the CLI in process; assert the contract; return the error line."""
    code, out, err = run_cli(args, capsys)
    assert code == 2, (out, err)
    assert out == "", "no partial output"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not PYTHON_WORDS.search(lines[0]), f"names Python arguments instead of flags: {lines[0]}"
    return lines[0]


def make_long_clip(path: Path, frames: int) -> Path:
    """A clip of ``frames`` 16x16 frames (about a second to write 100000 of them)."""
    import numpy as np

    return encode_video(path, itertools.repeat(np.zeros((16, 16, 3), np.uint8), frames), fps=30, codec="mpeg4")


# -- run: each case of the bad-input contract ------------------------------------------------
@pytest.mark.parametrize(
    "args,needles",
    [
        (["--dtype", "garbage"], ["--dtype", "invalid choice"]),
        (["--device", "garbage"], ["--device 'garbage' is not a device", "cpu, cuda"]),
        (["--no-aim", "--retention", "0.5"], ["--no-aim", "--retention", "ignored"]),
        (["--no-aim", "--l1", "2", "--l2", "4"], ["--no-aim", "--l1 and --l2"]),
        (["--no-aim", "--method", "fastv"], ["--no-aim", "--method fastv"]),
        (["--no-aim", "--no-prune"], ["--no-aim", "--no-prune"]),
        (["--seed", "3"], ["--seed", "--method random"]),
        (["--no-prune", "--pruning-mode", "mask"], ["--pruning-mode", "--no-prune"]),
        (["--image", str(SAMPLE_IMAGE), "--frames", "4"], ["--frames applies to --video"]),
        (["--image", str(SAMPLE_IMAGE), "--retention", "0.5"],
         ["video frames only", "--retention 0.5 would be ignored", "tiny-llava-1.5"]),
        (["--model", "tiny-llava-1.5", "--video", str(ROOT / "llava/assets/sample_video.mp4")], ["takes image"]),
        (["--l1", "9", "--l2", "12"], ["--l1 9 is beyond tiny-llava-onevision", "8 decoder layers", "--no-prune"]),
        (["--l1", "5", "--l2", "3"], ["--l1 must be below --l2", "--l1 5 --l2 3"]),
        (["--retention", "1.5"],
         ["--retention (the fraction of each frame's tokens kept by merging) must be a number in (0, 1], got 1.5"]),
        (["--method", "fastv", "--drop-layers", "1,2"], ["--drop-layers K"]),
        (["--method", "fastv", "--drop-layers", "9"], ["beyond", "valid --drop-layers: 1..7"]),
        (["--method", "vtw", "--drop-ratio", "0.3"], ["--drop-ratio does not apply"]),
        (["--method", "pdrop", "--drop-ratio", "1"], ["--drop-ratio", "(0, 1)"]),
        (["--method", "random", "--seed", "-1"],
         ["--seed (the random control's seed) must be an integer >= 0, got -1"]),
        (["--method", "fastv", "--no-prune"], ["--no-prune", "--drop-layers"]),
    ],
)
def test_run_refuses_in_one_line_naming_flags(args, needles, capsys):
    line = refused(["run", *args, "--max-new-tokens", "1"], capsys)
    for needle in needles:
        assert needle in line, line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_run_on_cuda_without_a_gpu(capsys):
    line = refused(["run", "--device", "cuda"], capsys)
    assert "no CUDA GPU is available here" in line and "--device cpu" in line


def test_visualize_bad_device_and_flags(tmp_path, capsys):
    base = ["visualize", "--video", str(ROOT / "llava/assets/sample_video.mp4"), "--out", str(tmp_path / "a.png")]
    assert "is not a device" in refused([*base, "--device", "garbage"], capsys)
    line = refused([*base, "--l1", "20", "--l2", "30"], capsys)
    assert "--l1 20 is beyond" in line and "--no-prune" not in line  # visualize has no --no-prune
    assert not (tmp_path / "a.png").exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["flops", "--l1", "30", "--l2", "40"], "--l1 30 is beyond the language model"),
        (["flops", "--l1", "5", "--l2", "3"], "--l1 must be below --l2"),
        (["flops", "--retention", "2"],
         "--retention (the fraction of each frame's tokens kept by merging) must be a number in (0, 1], got 2.0"),
        (["flops", "--method", "vtw", "--drop-ratio", "0.2"], "--drop-ratio does not apply"),
        (["flops", "--method", "fastv", "--drop-layers", "2,3"], "--drop-layers K"),
        (["plan", "--method", "pdrop", "--drop-layers", "40", "--speedup", "2"], "valid --drop-layers"),
    ],
)
def test_flops_and_plan_errors_name_flags(args, needle, capsys):
    assert needle in refused(args, capsys)


def test_frames_beyond_memory_refused_before_decoding(tmp_path, capsys):
    from llava.resources import host_available_bytes

    clip = make_long_clip(tmp_path / "long.mp4", 100_000)
    free = host_available_bytes()
    if free is not None and free > 200 * 2**30:
        pytest.skip("this machine has room for 100000 frames' pixels")
    line = refused(["run", "--video", str(clip), "--frames", "100000"], capsys)
    assert line.startswith("llava-aim run: error: --frames 100000: a prompt of 100000 frames needs at least")
    fit = int(re.search(r"room for at most (\d+) frames", line).group(1))
    assert 0 < fit < 100_000 and "pass fewer --frames" in line


def test_frames_check_uses_the_free_memory(monkeypatch, capsys):
    import llava.resources

    monkeypatch.setattr(llava.resources, "host_available_bytes", lambda: 50 << 20)  # 50 MiB free
    line = refused(["run", "--frames", "64"], capsys)
    fit = int(re.search(r"0\.0 GiB is free \(room for at most (\d+) frames\)", line).group(1))
    assert 0 < fit < 64  # 256x256 frames + 384x384 float32 pixels: about 1.8 MiB a frame
    monkeypatch.setattr(llava.resources, "host_available_bytes", lambda: 1 << 20)
    assert "not even one frame fits" in refused(["run", "--frames", "2"], capsys)


@given(frames=st.integers(1, 10**6), free=st.integers(0, 1 << 42), width=st.integers(1, 4096),
       height=st.integers(1, 4096), dtype_bytes=st.sampled_from([2, 4]))
def test_memory_estimate_is_monotone_and_its_suggestion_fits(frames, free, width, height, dtype_bytes):
    from llava.errors import ResourceError
    from llava.resources import check_video_fits, video_memory_estimate

    config = {"vision_config": {"image_size": 384, "patch_size": 14, "hidden_size": 1152}}
    estimate = video_memory_estimate(config, width, height, dtype_bytes)
    cpu = torch.device("cpu")
    try:
        check_video_fits(estimate, frames, cpu, free, None)
    except ResourceError as exc:
        assert estimate.host_bytes(frames, True) > free
        found = re.search(r"at most (\d+) frames", str(exc))
        if found:  # the suggested count fits, one more does not
            fit = int(found.group(1))
            check_video_fits(estimate, fit, cpu, free, None)
            with pytest.raises(ResourceError):
                check_video_fits(estimate, fit + 1, cpu, free, None)
    else:
        assert estimate.host_bytes(frames, True) <= free
        if frames > 1:
            check_video_fits(estimate, frames - 1, cpu, free, None)


# -- served differently from what was typed: said so -----------------------------------------
def test_frames_typed_beyond_the_clip_exit_2_one_line(capsys):
    code, out, err = run_cli(["run", "--frames", "100", "--max-new-tokens", "2", "--json"], capsys)
    assert code == 2 and out == ""
    assert err.strip().startswith(f"llava-aim run: error: the clip has {SAMPLE_FRAMES} frames, fewer than --frames 100")
    assert f"--frames {SAMPLE_FRAMES} or fewer" in err and len(err.strip().splitlines()) == 1


def test_frames_beyond_the_clip_with_official_sampling_repeats_frames(capsys):
    code, out, err = run_cli(["run", "--frames", "100", "--frame-sampling", "official", "--max-new-tokens", "2",
                              "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert (result["frames"], result["frames_requested"]) == (100, 100) and result["notes"] == []


def test_default_frames_beyond_a_short_clip_says_so(capsys, tmp_path):
    from llava.run import DEFAULT_FRAMES

    short = 8
    clip = make_long_clip(tmp_path / "short.mp4", short)
    code, out, err = run_cli(["run", "--video", str(clip), "--max-new-tokens", "2", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert (result["frames"], result["frames_requested"]) == (short, DEFAULT_FRAMES)
    assert err.strip() == (f"llava-aim run: note: the clip has {short} frames, fewer than the default "
                           f"{DEFAULT_FRAMES}: using each of its {short} frames once")
    assert result["notes"] == [err.strip().split("note: ", 1)[1]]


def test_image_on_onevision_says_merging_is_for_video_frames(capsys):
    code, out, err = run_cli(["run", "--image", str(SAMPLE_IMAGE), "--max-new-tokens", "2"], capsys)
    assert code == 0, err
    assert "AIM merges LLaVA-OneVision's video frames only" in err
    assert "AIM       : retention=1, l1=4, l2=6" in out  # not the 0.25 that would not apply
    assert re.search(r"merging   : none: \d+ visual tokens \(this model's family merges video frames only\)", out)
    assert "retention=0.25" not in out


def test_image_only_model_defaults_to_the_sample_image(capsys):
    code, out, err = run_cli(["run", "--model", "tiny-llava-1.5", "--max-new-tokens", "2", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["media"].endswith("sample_image.png") and result["visual_tokens_after_merge"] == 144


@pytest.mark.parametrize(
    "method,layers,ratio,printed",
    [
        ("fastv", [2], 0.5, "method=fastv, drop_layers=2, drop_ratio=0.5"),
        ("pdrop", [2, 4, 6], 0.5, "method=pdrop, drop_layers=2,4,6, drop_ratio=0.5"),  # 8/16/24 of 32, scaled
        ("vtw", [4], None, "method=vtw, drop_layers=4, drop_ratio=all"),
    ],
)
def test_baselines_print_their_resolved_values(method, layers, ratio, printed, capsys):
    code, out, err = run_cli(["run", "--method", method, "--frames", "2", "--max-new-tokens", "2"], capsys)
    assert code == 0, err
    assert printed in out and "None" not in out
    code, out, err = run_cli(["run", "--method", method, "--frames", "2", "--max-new-tokens", "2", "--json"], capsys)
    aim = json.loads(out)["aim"]
    assert (aim["drop_layers"], aim["drop_ratio"]) == (layers, ratio)


# -- defaults that run as printed ----------------------------------------------------------------
def _use_line(plan_args) -> str:
    done = subprocess.run([sys.executable, "-m", "llava", "plan", *plan_args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    [line] = [ln for ln in done.stdout.splitlines() if ln.startswith("use    : ")]
    return line.split(": ", 1)[1]


@pytest.mark.parametrize(
    "plan_args",
    [
        ["--llm", str(BUILTIN_MODELS["tiny-llava-onevision"]), "--frames", "4", "--speedup", "3"],
        ["--llm", str(BUILTIN_MODELS["tiny-llava-onevision"]), "--frames", "4", "--speedup", "1.5", "--method", "fastv"],
        ["--llm", str(BUILTIN_MODELS["tiny-llava-1.5"]), "--frames", "1", "--tokens-per-frame", "576",
         "--speedup", "2"],
    ],
)
def test_plan_suggestion_runs_as_printed(plan_args):
    command = _use_line(plan_args)
    argv = shlex.split(command)
    assert argv[:4] == ["llava-aim", "run", "--model", plan_args[1]]
    done = subprocess.run([sys.executable, "-m", "llava", *argv[1:], "--json"], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    if "--l1" in argv:
        i = argv.index("--l1")
        assert [result["aim"]["l1"], result["aim"]["l2"]] == [int(argv[i + 1]), int(argv[i + 3])]


def test_plan_names_the_checkpoint_it_planned_for():
    assert _use_line(["--speedup", "7"]).startswith(
        "llava-aim run --model llava-hf/llava-onevision-qwen2-7b-ov-hf --frames 32 --retention 0.25 --l1 14 --l2 22")
    assert _use_line(["--llm", "llama-7b", "--frames", "1", "--tokens-per-frame", "576", "--speedup", "2"]).startswith(
        "llava-aim run --model llava-hf/llava-1.5-7b-hf --retention")


def test_default_config_on_an_8_layer_model_through_run(capsys):
    code, out, err = run_cli(["run", "--frames", "2", "--max-new-tokens", "2", "--json"], capsys)
    assert code == 0, err
    aim = json.loads(out)["aim"]
    assert (aim["l1"], aim["l2"]) == (4, 6)  # "auto": (14, 22) of 28 scaled to 8 layers


@pytest.mark.parametrize("plugin,pretrained", [("LlavaOneVisionAIM", "tiny-llava-onevision"),
                                               ("LlavaAIM", "tiny-llava-1.5")])
def test_default_config_on_an_8_layer_model_through_the_eval_plugin(plugin, pretrained):
    pytest.importorskip("lmms_eval")
    import llava.eval.lmms_model as lmms_model

    model = getattr(lmms_model, plugin)(pretrained=pretrained, device="cpu", torch_dtype="float32", max_frames_num=2)
    assert (model.aim_config.l1, model.aim_config.l2) == (4, 6)
    assert (model.model.aim_config.l1, model.model.aim_config.l2) == (4, 6)


def test_eval_plugin_bad_device_is_one_clear_error():
    pytest.importorskip("lmms_eval")
    from llava.errors import ResourceError
    from llava.eval.lmms_model import LlavaOneVisionAIM

    with pytest.raises(ResourceError, match="device 'garbage' is not a device"):
        LlavaOneVisionAIM(pretrained="tiny-llava-onevision", device="garbage")


# -- make demo: KV lengths equal the tokens entering each layer -------------------------------
def test_demo_prints_kv_lengths_equal_to_the_tokens_entering_each_layer():
    from llava.aim.schedule import visual_tokens_per_layer

    makefile = (ROOT / "Makefile").read_text()
    demo = re.search(r"^demo:.*\n\t\$\(PY\) -m llava (run[^\n]*)", makefile, re.M).group(1)
    for name, value in re.findall(r"^(\w+) \?= (\S+)$", makefile, re.M):  # make's defaults, e.g. DEMO_MODEL
        demo = demo.replace(f"$({name})", value)
    demo = demo.split()
    done = subprocess.run([sys.executable, "-m", "llava", *demo, "--json"], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout)
    steps = r["new_tokens"] - 1
    assert r["kv_cache_lens"] == [n + steps for n in r["layer_seq_lens"]]
    v0 = r["visual_tokens_after_merge"]
    text = r["prompt_tokens"] - v0
    expected = [text + v for v in visual_tokens_per_layer(v0, 8, r["aim"]["l1"], r["aim"]["l2"])]
    assert r["layer_seq_lens"] == expected and expected[-1] == text
    human = subprocess.run([sys.executable, "-m", "llava", *demo], capture_output=True, text=True, timeout=300,
                           cwd=ROOT)
    assert f"KV cache per layer after generation: {r['kv_cache_lens']} (the tokens entering each layer" in human.stdout


# -- run: the FLOPs it prints are those of what it computed ----------------------------------
def _run_json(args, capsys) -> dict:
    code, out, err = run_cli(["run", "--frames", "8", "--max-new-tokens", "1", "--json", *args], capsys)
    assert code == 0, err
    return json.loads(out)


def _flops_reduction(capsys, *args) -> float:
    code, out, err = run_cli(["flops", "--llm", str(ROOT / "llava/model/tiny/tiny-llava-onevision"), "--frames", "8",
                              "--json", *args], capsys)
    assert code == 0, err
    return json.loads(out)["flops_reduction"]


def test_prumerge_run_counts_no_reserved_placeholder_as_text(capsys):
    """PruMerge's prompt reserves placeholders it leaves unused; they are not text tokens, and
    the run's FLOPs ratio lies between flops --method prumerge's at the whole kept counts
    around the run's mean (it was 740x against flops' ~210x when they were counted as text)."""
    from llava.analysis import LLMShape, prefill_cost
    from llava.model.builder import checkpoint_config

    r = _run_json(["--method", "prumerge"], capsys)
    text = r["layer_seq_lens"][0] - r["visual_tokens_after_merge"]
    assert r["text_tokens"] == text < r["prompt_tokens"] - r["visual_tokens_after_merge"]
    shape = LLMShape.from_config(checkpoint_config("tiny-llava-onevision")[1])
    baseline = prefill_cost(shape, [text + r["visual_tokens_before_merge"]] * shape.layers).flops
    assert r["predicted"]["baseline_prefill_tflops"] * 1e12 == pytest.approx(baseline)
    assert r["predicted"]["prefill_tflops"] * 1e12 == pytest.approx(prefill_cost(shape, r["layer_seq_lens"]).flops)
    mean_kept = (r["visual_tokens_after_merge"] - 1) / r["frames"]  # one newline after the video
    common = ["--method", "prumerge", "--text-tokens", str(text), "--newline-tokens", "1"]
    most = _flops_reduction(capsys, *common, "--kept-tokens", str(int(mean_kept)))
    least = _flops_reduction(capsys, *common, "--kept-tokens", str(int(mean_kept) + 1))
    assert least <= r["predicted"]["flops_reduction"] <= most


def test_mask_mode_reports_the_merged_only_flops_it_computes(capsys):
    """Mask mode keeps every token in every layer: its FLOPs are merging's alone (those of
    --no-prune and of flops --no-prune), and the summary says so."""
    mask = _run_json(["--pruning-mode", "mask"], capsys)
    merged_only = _run_json(["--no-prune"], capsys)
    assert mask["computed_tokens_per_layer"] == [mask["prompt_tokens"]] * 8
    assert mask["predicted"] == merged_only["predicted"]
    assert mask["predicted"]["flops_reduction"] == pytest.approx(_flops_reduction(
        capsys, "--no-prune", "--text-tokens", str(mask["text_tokens"]), "--newline-tokens", "1"))
    code, out, err = run_cli(["run", "--frames", "8", "--max-new-tokens", "1", "--pruning-mode", "mask"], capsys)
    assert code == 0, err
    assert "mask mode computes every token in every layer" in out
    assert "tokens entering each decoder layer" not in out and "keeps visible as keys" in out
    assert "  layer  7 " in out and "KV cache per layer after generation" in out  # the counts still shown


# -- help: every option of run and bench says what it does and its default --------------------
def _subcommand_options(command: str):
    import argparse

    from llava.cli import build_parser

    [sub] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return [a for a in sub.choices[command]._actions
            if a.option_strings and not isinstance(a, argparse._HelpAction) and a.help != argparse.SUPPRESS]


@pytest.mark.parametrize("command", ["run", "bench"])
def test_every_option_has_help_showing_its_default(command):
    missing = [a.option_strings[0] for a in _subcommand_options(command) if not a.help]
    assert not missing, f"{command}: no help for {missing}"
    silent = [a.option_strings[0] for a in _subcommand_options(command)
              if a.default not in (None, False) and "default" not in a.help]
    assert not silent, f"{command}: the default is not shown for {silent}"


def test_paper_tables_help_prints_its_description_once(capsys):
    from conftest import load_script

    with pytest.raises(SystemExit):
        load_script("paper_tables").main(["--help"])
    out = capsys.readouterr().out
    first_line = "Every row of the AIM paper's tables as a named setting"
    assert out.count(first_line) == 1 and "--dry-run [ROW ...]" in out


def test_make_install_hides_setuptools_editable_box_but_not_other_warnings(tmp_path):
    # The install recipe as `make demo` runs it, with a stand-in interpreter that emits what
    # pip forwards from setuptools (the box) and one other warning, which must still show.
    import shutil

    if shutil.which("make") is None:
        pytest.skip("no make")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "python"
    fake.write_text(f"#!{sys.executable}\n"
                    "import sys, warnings\n"
                    "if '-e' in sys.argv:\n"
                    "    warnings.warn('Editable installation.\\n!!\\n  ****\\n  Please be careful\\n  ****\\n!!')\n"
                    "warnings.warn('a real problem')\n")
    fake.chmod(0o755)
    done = subprocess.run(["make", "-B", "install", f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"})
    assert done.returncode == 0, done.stderr
    assert "Editable installation" not in done.stderr and "Please be careful" not in done.stderr
    assert done.stderr.count("UserWarning: a real problem") == 2  # pip's upgrade and the install both still warn


def test_run_timing_line_names_media_decoding(capsys):
    code, out, err = run_cli(["run", "--frames", "2", "--max-new-tokens", "2"], capsys)
    assert code == 0, err
    [line] = [x for x in out.splitlines() if x.startswith("time")]
    assert re.search(r"media decoding \d+\.\d\d s, model loading \d+\.\d\d s", line), line
    assert "decode " not in line  # not to be read as the LLM's token decoding


# -- long runs: progress on stderr, and Ctrl-C ends them within seconds -----------------------
def test_ctrl_c_during_a_long_run_exits_130_within_seconds_and_prints_nothing(tmp_path):
    import os
    import signal
    import time

    # 200 repeated frames: 39k prompt tokens, a prefill of minutes on a CPU (long native calls)
    cmd = [sys.executable, "-m", "llava", "run", "--frames", "200", "--frame-sampling", "official", "--no-aim",
           "--max-new-tokens", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, env=env)
        try:
            deadline = time.monotonic() + 240
            while "llava-aim run: preprocessing 200 frames" not in err_path.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, err_path.read_text()[-2000:]
                time.sleep(0.2)
            time.sleep(1.0)  # inside the processor or the model: native code
            sent = time.monotonic()
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=30)
            took = time.monotonic() - sent
        finally:
            proc.kill()
    stages = [line for line in err_path.read_text().splitlines() if line.startswith("llava-aim run: ")]
    assert stages[0] == "llava-aim run: decoding 200 frames of sample_video.mp4"  # progress, stage by stage
    assert proc.returncode == 130 and took < 6, (proc.returncode, took, err_path.read_text()[-1000:])
    assert out == b""  # nothing partial
    assert "interrupted" in err_path.read_text().splitlines()[-1]


# -- the memory pre-check: the frames actually fed, and the language model's share -------------
def test_official_sampling_checks_the_repeated_frames_before_decoding(monkeypatch, capsys):
    import llava.resources
    import llava.video

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before the memory check")

    monkeypatch.setattr(llava.video, "load_video", no_decoding)
    monkeypatch.setattr(llava.resources, "host_available_bytes", lambda: 2 << 30)  # 2 GiB free
    # the sample clip has 64 frames; official sampling feeds all 5000 (repeats), about 9 GiB
    line = refused(["run", "--frames", "5000", "--frame-sampling", "official"], capsys)
    assert "--frames 5000: a prompt of 5000 frames needs at least" in line and "pixel tensor" in line
    fit = int(re.search(r"room for at most (\d+) frames", line).group(1))
    assert 64 < fit < 5000


QWEN2_7B_OV = {"vision_config": {"image_size": 384, "patch_size": 14, "hidden_size": 1152},
               "text_config": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                               "num_attention_heads": 28, "num_key_value_heads": 4}}


def test_memory_estimate_counts_the_language_models_kv_and_activations():
    from llava.resources import check_video_fits, llm_bytes_per_token, video_memory_estimate

    kv, act = llm_bytes_per_token(QWEN2_7B_OV, 2)
    assert kv == 2 * 4 * 128 * 2 and act == (2 * 3584 + 2 * 18944) * 2
    vision_only = video_memory_estimate(QWEN2_7B_OV, 640, 360, 2)
    full = video_memory_estimate(QWEN2_7B_OV, 640, 360, 2, llm_tokens_per_frame=196, kv_tokens_per_frame=196 * 28)
    assert full.device_per_frame["language model KV cache"] == 196 * 28 * kv
    assert full.device_per_frame["language model activations"] == 196 * act
    assert full.device_bytes(1) == vision_only.device_bytes(1) + 196 * 28 * kv + 196 * act
    # 2000 frames: the pixels fit in 20 GiB of GPU memory, the prefill does not
    free = 20 << 30
    assert vision_only.device_bytes(2000) < free < full.device_bytes(2000)
    with pytest.raises(Exception, match="language model KV cache") as err:
        check_video_fits(full, 2000, torch.device("cuda"), None, free)
    fit = int(re.search(r"at most (\d+) frames", str(err.value)).group(1))
    assert full.device_bytes(fit) <= free < full.device_bytes(fit + 1)


@given(frames=st.integers(1, 5000), free=st.integers(0, 1 << 40), heads=st.integers(1, 32))
def test_eager_scores_grow_with_the_square_and_the_suggestion_fits(frames, free, heads):
    from llava.errors import ResourceError
    from llava.resources import check_video_fits, video_memory_estimate

    config = {**QWEN2_7B_OV, "text_config": {**QWEN2_7B_OV["text_config"], "num_attention_heads": heads * 4}}
    eager = video_memory_estimate(config, 64, 64, 4, 49, 49 * 8, eager_attention=True)
    assert eager.device_per_frame_pair["eager attention scores"] == heads * 4 * 4 * 49 * 49
    cpu = torch.device("cpu")
    try:
        check_video_fits(eager, frames, cpu, free, None)
    except ResourceError as exc:
        assert eager.host_bytes(frames, True) > free
        found = re.search(r"at most (\d+) frames", str(exc))
        if found:
            fit = int(found.group(1))
            assert eager.host_bytes(fit, True) <= free < eager.host_bytes(fit + 1, True)
    else:
        assert eager.host_bytes(frames, True) <= free


def test_llm_tokens_of_the_pre_check_follow_merging_and_pruning():
    from llava.aim.config import AIMConfig
    from llava.aim.schedule import visual_tokens_per_layer
    from llava.model.builder import checkpoint_config
    from llava.run import _llm_video_tokens

    _, config, family = checkpoint_config("tiny-llava-onevision")
    assert _llm_video_tokens(config, AIMConfig.disabled(), family, True) == (196, 196 * 8)
    tokens, kv = _llm_video_tokens(config, AIMConfig(retention=0.25), family, True)  # "auto" layers: (4, 6)
    assert tokens == 49 and kv == sum(visual_tokens_per_layer(49, 8, 4, 6))
    _, qwen, qwen_family = checkpoint_config("tiny-qwen2-vl")
    assert _llm_video_tokens(qwen, AIMConfig(retention=0.25), qwen_family, True) == (0, 0)  # by resolution
