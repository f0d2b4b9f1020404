"""Every row of the paper's efficiency tables is a ``llava-aim flops`` command that reproduces it.

The paper's two efficiency tables on LLaVA-OneVision-7B (Qwen2-7B, 32 frames x 196 tokens, 100
text tokens, nvidia_A100): the merging-retention sweep 1 .. 1/64 with pruning (14, 22) (7 rows)
and the (l1, l2) ablation at retention 1/4 (10 rows, Exp. 1 being (28, 29): nothing pruned).

Reference figures: the official FLOPs script (LaVi-Lab/AIM, other_packages/LLM-Viewer,
``analyze_flex_prefill_only.py`` with ``--skip-mlp-bias``, nvidia_A100), run on each row's
per-layer token list (its rule: ``int(max(0, 1 - (j - l1 + 1) / (l2 - l1)) * v0 + 100)`` from
layer l1 on, ``v0 = 32 * floor(196 * r)``). Where the paper prints the figure (99.63 TFLOPs for
the full model, 14.76 for the default setting) it agrees to the printed digits.
"""

from __future__ import annotations

import json

import pytest

# (retention, l1, l2) -> (TFLOPs, prefill ms) of the official script
RETENTION_SWEEP = {
    (1.0, 14, 22): (62.0106, 270.3295),
    (1 / 2, 14, 22): (29.3557, 115.3286),
    (1 / 4, 14, 22): (14.7566, 55.0284),
    (1 / 8, 14, 22): (7.7520, 28.7096),
    (1 / 16, 14, 22): (4.4964, 17.2202),
    (1 / 32, 14, 22): (2.8945, 11.8918),
    (1 / 64, 14, 22): (2.1000, 9.9386),
}
ABLATION = {
    (1 / 4, 28, 29): (22.8995, 83.9386),
    (1 / 4, 21, 29): (20.1540, 73.6147),
    (1 / 4, 14, 29): (17.4100, 63.3438),
    (1 / 4, 7, 29): (14.6682, 53.1111),
    (1 / 4, 21, 22): (17.5021, 65.3523),
    (1 / 4, 14, 22): (14.7566, 55.0284),
    (1 / 4, 7, 22): (12.0126, 44.7575),
    (1 / 4, 14, 15): (12.1046, 46.7660),
    (1 / 4, 7, 15): (9.3592, 36.4420),
    (1 / 4, 7, 8): (6.7072, 28.1796),
}
# Also in the paper's tables / text: merging alone at each retention, and the full model.
MERGING_ONLY = {
    1.0: (99.6270, 439.5782), 1 / 2: (46.4822, 182.6517), 1 / 4: (22.8995, 83.9386), 1 / 8: (11.6353, 41.2158),
    1 / 16: (6.4128, 22.5426), 1 / 32: (3.8464, 13.6781), 1 / 64: (2.5744, 10.1486),
}
# (table, (retention, l1, l2)): the default setting (1/4, 14, 22) is a row of both tables.
PAPER_ROWS = [("retention sweep", row) for row in RETENTION_SWEEP] + [("(l1, l2) ablation", row) for row in ABLATION]
REFERENCE = {**RETENTION_SWEEP, **ABLATION}
TOLERANCE = 0.005


def _flops(cli_main, capsys, args):
    assert cli_main(["flops", "--json", "--paper-convention", *args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def cli_main():
    from llava.cli import main

    return main


def test_seventeen_rows():
    assert len(PAPER_ROWS) == 17 and len(RETENTION_SWEEP) == 7 and len(ABLATION) == 10


@pytest.mark.parametrize("table, row", PAPER_ROWS, ids=[f"{t}: {r}" for t, r in PAPER_ROWS])
def test_paper_row_is_a_flops_command(cli_main, capsys, table, row):
    retention, l1, l2 = row
    tflops, ms = REFERENCE[row]
    report = _flops(cli_main, capsys, ["--retention", repr(retention), "--l1", str(l1), "--l2", str(l2)])
    assert report["prefill_tflops"] == pytest.approx(tflops, rel=TOLERANCE)
    assert report["prefill_ms"] == pytest.approx(ms, rel=TOLERANCE)
    assert report["merge_count"] == "exact"  # the paper's tables: floor(196 * r) tokens per frame
    assert report["tokens_per_frame_kept"] == int(196 * retention)


@pytest.mark.parametrize("retention", sorted(MERGING_ONLY, reverse=True))
def test_merging_only_rows(cli_main, capsys, retention):
    tflops, ms = MERGING_ONLY[retention]
    report = _flops(cli_main, capsys, ["--retention", repr(retention), "--no-prune"])
    assert report["prefill_tflops"] == pytest.approx(tflops, rel=TOLERANCE)
    assert report["prefill_ms"] == pytest.approx(ms, rel=TOLERANCE)


def test_printed_figures(cli_main, capsys):
    """The two figures the paper prints in its text: 99.63 (no AIM) and 14.76 (default)."""
    report = _flops(cli_main, capsys, [])
    assert round(report["baseline_prefill_tflops"], 2) == 99.63
    assert round(report["prefill_tflops"], 2) == 14.76


def test_nothing_pruned_row_equals_merging_only(cli_main, capsys):
    """Exp. 1, (28, 29) on 28 layers: l1 == depth is accepted and prunes nothing, in both conventions."""
    for convention in ([], ["--paper-convention"]):
        assert cli_main(["flops", "--json", "--l1", "28", "--l2", "29", *convention]) == 0
        row = json.loads(capsys.readouterr().out)
        assert cli_main(["flops", "--json", "--no-prune", *convention]) == 0
        merge_only = json.loads(capsys.readouterr().out)
        assert row["tokens_per_layer"] == merge_only["tokens_per_layer"]
        assert row["pruning_layers"] == [] and row["prefill_flops"] == merge_only["prefill_flops"]
    assert cli_main(["flops", "--l1", "28", "--l2", "29"]) == 0
    assert "no pruning (l1=28 = the model's depth" in capsys.readouterr().out


def test_l1_beyond_the_depth_is_refused(cli_main, capsys):
    assert cli_main(["flops", "--l1", "29", "--l2", "30"]) == 2
    err = capsys.readouterr().err
    assert "--l1 29" in err and "28 decoder layers" in err and len(err.strip().splitlines()) == 1


def test_runtime_convention_counts_the_official_merge(cli_main, capsys):
    """The runtime keeps 25 tokens per frame at 1/8 (the official step rule); --merge-count
    exact counts the old floor rule; the paper convention counts floor whatever the flag."""
    assert cli_main(["flops", "--json", "--retention", "0.125", "--no-prune"]) == 0
    official = json.loads(capsys.readouterr().out)
    assert official["tokens_per_frame_kept"] == 25 and official["tokens_per_layer"][0] == 32 * 25 + 100
    assert cli_main(["flops", "--json", "--retention", "0.125", "--no-prune", "--merge-count", "exact"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens_per_frame_kept"] == 24
    report = _flops(cli_main, capsys, ["--retention", "0.125", "--no-prune", "--merge-count", "official"])
    assert report["tokens_per_frame_kept"] == 24


def test_overhead_table(cli_main, capsys):
    """The paper's overhead table (llava/eval/paper/tables.json "overhead"): merging 88.25,
    pruning 4.18, total 92.43, LLM 14757 GFLOPs, each to the printed digits under
    --paper-convention; the runtime convention counts per-frame merging (about 2.9)."""
    from llava.eval.results import load_paper_tables

    paper = load_paper_tables()["overhead"]["paper"]
    report = _flops(cli_main, capsys, [])
    assert round(report["aim_overhead_merging_gflops"], 2) == paper["merging_gflops"]
    assert round(report["aim_overhead_importance_gflops"], 2) == paper["pruning_gflops"]
    assert round(report["aim_overhead_tflops"] * 1e3, 2) == paper["total_gflops"]
    assert round(report["prefill_tflops"] * 1e3) == paper["llm_gflops"]
    assert cli_main(["flops", "--paper-convention"]) == 0
    assert "merging 88.25 + importance 4.18 = 92.43 GFLOPs" in capsys.readouterr().out
    assert cli_main(["flops", "--json"]) == 0
    runtime = json.loads(capsys.readouterr().out)
    assert 2.5 < runtime["aim_overhead_merging_gflops"] < 3.0  # per frame: 1/32 of the joint similarity


# -- the output names the paper row a setting counts, and the flags that reproduce it ----------
def test_plain_flops_points_to_the_paper_convention(cli_main, capsys):
    """Plain flops counts what the runtime executes (15.53 TFLOPs); it names the paper row and
    the flag that gives the paper's 14.76."""
    assert cli_main(["flops"]) == 0
    out = capsys.readouterr().out
    assert "paper row 'video/aim' (14.76 TFLOPs, 55.03 ms): reproduce with --paper-convention" in out
    assert cli_main(["flops", "--paper-convention"]) == 0
    assert "paper row 'video/aim' (14.76 TFLOPs, 55.03 ms): reproduced by these flags" in capsys.readouterr().out


IMAGE_ROWS = {"image/baseline": ("1", "--no-prune"), "image/b1/aim": ("0.4375",), "image/b2/aim": ("0.125",)}


@pytest.mark.parametrize("row", sorted(IMAGE_ROWS))
def test_llava15_rows_reproduce_tflops_and_ms_with_the_printed_flags(cli_main, capsys, row):
    """LLaVA-1.5's rows need 40 text tokens and the second residual add (mlp_add) counted:
    then TFLOPs and prefill ms both match the paper's printed digits (8.18 / 29.30, 2.22 /
    10.92, 1.00 / 8.98; without mlp_add the ms were 29.09, 10.86, 8.95)."""
    retention, *rest = IMAGE_ROWS[row]
    setting = ["--llm", "vicuna-7b", "--frames", "1", "--tokens-per-frame", "576", "--retention", retention, *rest]
    assert cli_main(["flops", "--json", *setting]) == 0
    match = json.loads(capsys.readouterr().out)["paper_row"]
    assert match["row"] == row and match["reproduced"]
    assert match["flags"] == ["--paper-convention", "--text-tokens 40", "--include-mlp-add"]
    flags = [part for flag in match["flags"] for part in flag.split()]
    assert cli_main(["flops", "--json", *setting, *flags]) == 0
    report = json.loads(capsys.readouterr().out)
    assert round(report["prefill_tflops"], 2) == match["paper_tflops"]
    assert round(report["prefill_ms"], 2) == match["paper_prefill_ms"]
    assert report["paper_row"]["flags"] == []
    mlp_note = next(note for note in report["notes"] if "mlp_add" in note)
    assert "as the paper's image table counts it" in mlp_note  # not "which the paper leaves out"


# Rows whose printed figures the paper's own way of counting does not give (the official
# script's numbers differ from the printed ones; docs/efficiency_tables.md).
NOT_REPRODUCED = {"sweep/r0.125-14-22", "sweep/r0.0625-14-22", "sweep/r0.03125-14-22", "sweep/r0.015625-14-22",
                  "ablation/7-29", "ablation/7-22"}


def test_every_aim_row_is_reproduced_or_a_known_exception():
    from llava.analysis.matching import paper_rows

    rows = paper_rows()
    assert len(rows) == 29  # 28 AIM / no-AIM rows and LongVA-7B
    for row in rows:
        counted = row.analyze()
        same = round(counted.prefill_tflops, 2) == row.tflops and round(counted.prefill_ms, 2) == row.prefill_ms
        assert same == (row.name not in NOT_REPRODUCED), row.name


# -- LongVA-7B, the first row of the paper's video table -----------------------------------------
LONGVA_FLAGS = ["--frames", "128", "--tokens-per-frame", "144", "--retention", "1", "--no-prune"]


def test_longva_row_is_reproduced_from_its_geometry(cli_main, capsys):
    """128 frames x 144 tokens (CLIP-L/336 pooled 2 x 2) + 100 text tokens on Qwen2-7B's shape:
    the paper's 381.09 TFLOPs and 2186.04 ms, to the printed digits and within the tolerance of
    the other rows; flops names the row."""
    from llava.analysis.matching import paper_rows

    row = next(r for r in paper_rows() if r.name == "video/longva")
    assert (row.frames, row.tokens_per_frame, row.layers) == (128, 144, None)
    counted = row.analyze()
    assert round(counted.prefill_tflops, 2) == 381.09 and round(counted.prefill_ms, 2) == 2186.04
    report = _flops(cli_main, capsys, LONGVA_FLAGS)
    assert report["prefill_tflops"] == pytest.approx(381.09, rel=TOLERANCE)
    assert report["prefill_ms"] == pytest.approx(2186.04, rel=TOLERANCE)
    assert report["paper_row"]["row"] == "video/longva" and report["paper_row"]["reproduced"]
    for frames in (127, 129):  # the frame count is pinned: a frame more or less misses the printed figure
        other = _flops(cli_main, capsys, ["--frames", str(frames), *LONGVA_FLAGS[2:]])
        assert abs(other["prefill_tflops"] - 381.09) > 3


def _paper_tables():
    from conftest import load_script

    return load_script("paper_tables")


def test_longva_row_is_listed_with_the_paper_numbers_and_what_it_needs(capsys, monkeypatch):
    pt = _paper_tables()
    assert pt.main(["--list", "video/longva"]) == 0
    out = capsys.readouterr().out
    assert "video/longva" in out and "tflops 381.09, prefill_ms 2186.04, videomme 52.6, videomme_subs 54.3, mlvu 56.3" in out
    from llava.eval import stock

    monkeypatch.setattr(stock.importlib.util, "find_spec", lambda name: None if name == "longva" else object())
    why = pt.unavailable(pt.BY_NAME["video/longva"])
    assert why.startswith("lmms-eval's longva model needs longva:") and "github.com/EvolvingLMMs-Lab/LongVA" in why


def test_longva_dry_run_prints_a_runnable_command(capsys, monkeypatch, tmp_path):
    """The printed command runs the stock-model script: it says what it would run, and without
    LongVA's package it stops with one line naming what is missing (exit 2, nothing written)."""
    import shlex
    import subprocess

    for key in ("PRETRAINED", "TASKS", "FRAMES", "LIMIT", "EXTRA_MODEL_ARGS", "PYTHON"):
        monkeypatch.delenv(key, raising=False)
    pt = _paper_tables()
    assert pt.main(["--dry-run", "video/longva", "--output-root", str(tmp_path)]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if not x.startswith("#")]
    assert len(line) == 1 and line[0].endswith("bash scripts/stock_model_eval.sh")
    printed = subprocess.run(f"PRINT_MODEL_ARGS=1 {line[0]}", shell=True, cwd=pt.ROOT, capture_output=True, text=True)
    assert printed.returncode == 0, printed.stderr
    words = shlex.split(printed.stdout)
    assert words[:2] == ["--model", "longva"] and "max_frames_num=128" in words[3]
    assert words[5] == "videomme,videomme_w_subtitle,mlvu_dev"
    from llava.eval.stock import missing

    why = missing("longva")
    if why is not None:  # this install lacks LongVA's package: the command says so, one line
        ran = subprocess.run(line[0], shell=True, cwd=pt.ROOT, capture_output=True, text=True, timeout=120)
        assert ran.returncode == 2 and ran.stderr.strip() == f"error: {why}"
        assert not (tmp_path / "video" / "longva").exists()


# -- the 2025 comparison table ----------------------------------------------------------------------
COMPARED = ("visionzip", "dycoke", "fastvid", "holitom")


LABELS = {"dycoke": ("k1", "official")}  # DyCoke's budget is its k (no k reaches 25%)


def _comparison_names():
    return (["comparison/baseline", "comparison/aim"]
            + [f"comparison/{m}/{b}" for m in COMPARED for b in LABELS.get(m, ("r0.25", "r0.1"))]
            + ["comparison/fastv", "comparison/pdrop"])


def test_comparison_rows_are_listed_and_unregistered_methods_say_what_they_need(capsys, monkeypatch):
    from llava.aim import policy

    for method in COMPARED:  # as on a branch without the methods (they land before the merge)
        monkeypatch.delitem(policy.SPECS, method, raising=False)
    pt = _paper_tables()
    assert [r.name for r in pt.select(["comparison/"])] == _comparison_names()
    assert pt.main(["--list", "comparison/"]) == 0
    out = capsys.readouterr().out
    for name in _comparison_names():
        assert name in out
    for method in COMPARED:
        assert out.count(f"needs method {method} (not registered in this install") == 2
    assert "same run as video/aim" in out and "same run as video/fastv" in out and "same run as video/pdrop" in out
    rows = {r.name: r for r in pt.ROWS}
    for method in ("fastvid", "holitom"):
        for budget in ("0.25", "0.1"):
            env = rows[f"comparison/{method}/r{budget}"].env
            assert env["RETENTION"] == budget and env["EXTRA_MODEL_ARGS"] == f"method={method}"
    # VisionZip's port keeps 50 and 20 whole tokens of 196; DyCoke's k = 1 is its fewest
    assert [round(float(rows[f"comparison/visionzip/{b}"].env["RETENTION"]) * 196) for b in ("r0.25", "r0.1")] == [50, 20]
    assert rows["comparison/dycoke/k1"].env == {"RETENTION": "1", "TASKS": pt.COMPARISON_TASKS,
                                                "EXTRA_MODEL_ARGS": "method=dycoke,dycoke_k=1"}


def test_comparison_rows_run_once_their_method_registers(monkeypatch):
    """No edit to the runner: a method's rows become runnable when llava.aim.policy knows it."""
    from llava.aim import policy

    pt = _paper_tables()
    row = pt.BY_NAME["comparison/visionzip/r0.1"]
    monkeypatch.delitem(policy.SPECS, "visionzip", raising=False)
    assert pt.unavailable(row).startswith("needs method visionzip")
    monkeypatch.setitem(policy.SPECS, "visionzip", policy.MethodSpec("visionzip", "VisionZip", "test", "merge",
                                                                     "none", "none"))
    assert pt.unavailable(row) is None


def test_comparison_dry_run_prints_runnable_commands(capsys, monkeypatch, tmp_path):
    import shlex
    import subprocess

    from llava.aim import policy

    for key in ("PRETRAINED", "TASKS", "FRAMES", "LIMIT", "EXTRA_MODEL_ARGS", "RETENTION"):
        monkeypatch.delenv(key, raising=False)
    for method in COMPARED:
        monkeypatch.delitem(policy.SPECS, method, raising=False)
    pt = _paper_tables()
    assert pt.main(["--dry-run", "comparison/", "--output-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    commands = [x for x in out if not x.startswith("#")]
    headers = [x for x in out if x.startswith("#")]
    # 8 method runs + the 4 anchors' runs, which are the video table's
    assert len(commands) == 12 and sum("(not runnable here: needs method" in h for h in headers) == 8
    assert any(h.startswith("# video/aim:") and "also serves comparison/aim" in h for h in headers)
    fastvid = next(c for c in commands if "comparison/fastvid/r0.1" in c)
    printed = subprocess.run(f"PRINT_MODEL_ARGS=1 {fastvid}", shell=True, cwd=pt.ROOT, capture_output=True, text=True)
    assert printed.returncode == 0, printed.stderr
    words = shlex.split(printed.stdout)
    assert words[1] == "llava_onevision_aim" and "retention=0.1" in words[3] and words[3].endswith(",method=fastvid")
    assert words[5] == "videomme,mvbench,mlvu_dev,egoschema_subset"
