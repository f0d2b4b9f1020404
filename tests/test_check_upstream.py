"""The pure parts of scripts/check_upstream.py (make check-upstream), which is not run in CI."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
check_upstream = load_script("check_upstream")


@pytest.mark.parametrize("text,expected", [
    ("transformers>=5.17,<5.25", ("transformers", ">=5.17,<5.25")),
    ("lmms-eval >= 0.7.3, < 0.8", ("lmms-eval", ">=0.7.3,<0.8")),
    ("llava-aim[eval]", ("llava-aim", "")),
    ("torch<=2.14.1 ; python_version > '3'", ("torch", "<=2.14.1")),
])
def test_split_requirement(text, expected):
    assert check_upstream.split_requirement(text) == expected


@pytest.mark.parametrize("spec,expected", [
    (">=5.17,<5.25", ">=5.17"), ("<4", ""), ("~=1.2", ">=1.2"), ("==0.7.3", "==0.7.3"), (">=1,!=1.5,<2", ">=1"),
])
def test_drop_upper_bounds(spec, expected):
    assert check_upstream.drop_upper_bounds(spec) == expected


@given(st.lists(st.integers(0, 40), min_size=1, max_size=4), st.lists(st.integers(0, 40), min_size=1, max_size=4))
def test_version_order_matches_integer_tuples(a, b):
    va, vb = ".".join(map(str, a)), ".".join(map(str, b))
    pad = max(len(a), len(b))
    ka, kb = a + [0] * (pad - len(a)), b + [0] * (pad - len(b))
    if ka != kb and len(a) == len(b):
        assert (check_upstream.version_key(va) < check_upstream.version_key(vb)) == (ka < kb)
    assert check_upstream.within(va, f">={va}") and check_upstream.within(va, f"<={va}")


def test_within():
    assert check_upstream.within("5.24.0", ">=5.17,<5.25") is True
    assert check_upstream.within("5.25.0", ">=5.17,<5.25") is False
    assert check_upstream.within("4.3.1", ">=3.16,<4") is False
    assert check_upstream.within("2.15.0", "<=2.14.1") is False
    assert check_upstream.within("1.0", "==1.*") is None
    assert check_upstream.within("5.17.0", ">=5.17") and check_upstream.version_key("5.17") == (
        check_upstream.version_key("5.17.0"))


def test_read_lock_and_caps(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text("# comment\nhuggingface_hub==2.4.0\nlmms_eval==0.7.3\n")
    assert check_upstream.read_lock(lock) == {"huggingface-hub": "2.4.0", "lmms-eval": "0.7.3"}
    caps = tmp_path / "constraints.txt"
    caps.write_text("# cap\ntorch<=2.14.1\ntorchvision<=0.29.1\nnumpy>=1\n")
    found = check_upstream.read_caps([caps, tmp_path / "missing.txt"])
    assert found == {"torch": ("<=2.14.1", str(caps)), "torchvision": ("<=0.29.1", str(caps))}


def test_declared_requirements_cover_the_watched_direct_dependencies():
    declared = check_upstream.declared_requirements(ROOT / "pyproject.toml")
    for name in ("transformers", "lmms-eval", "torch", "accelerate", "av", "filelock"):
        spec, _ = declared[name]
        assert "<" in spec, f"{name} has no upper bound"
    assert "datasets" not in declared  # comes with lmms-eval


def test_status_line_says_what_moved_and_what_broke():
    line = check_upstream.status_line("filelock", "3.32.7", (">=3.16,<4", "[eval]"), "4.3.1", "4.3.1", None,
                                      "BREAKS 3 test(s)")
    assert line.startswith("filelock") and "3.32.7 -> 4.3.1, beyond the declared range" in line
    assert line.endswith("BREAKS 3 test(s)")
    capped = check_upstream.status_line("torch", "2.14.1", (">=2.9.1,<2.15", "dependencies"), "2.15.0", "2.14.1",
                                        ("<=2.14.1", "/etc/xdg/pip/constraints.txt"), "nothing to test")
    assert "2.14.1 = the lock" in capped and "newest 2.15.0 not installed (capped by /etc/xdg" in capped
    assert "not declared" in check_upstream.status_line("datasets", "5.2.0", None, "5.2.0", "5.2.0", None, "ok")


def test_failure_cause_prefers_the_real_exception():
    text = ("AssertionError: lmms-eval: ...\n  File x\nModuleNotFoundError: No module named 'filelock._api'\n"
            "error: lmms-eval exited with status 1\nassert 1 == 0")
    assert check_upstream.failure_cause(text) == "ModuleNotFoundError: No module named 'filelock._api'"
    assert check_upstream.failure_cause("assert 3 == 4\nmore") == "assert 3 == 4"


def test_telling_quotes_an_exception_first():
    failures = [("a", "one_process_run = (PosixPath('/tmp'), ..."), ("b", "ModuleNotFoundError: No module named 'x'")]
    assert check_upstream.telling(failures) == failures[1]
    assert check_upstream.telling(failures[:1]) == failures[0]
