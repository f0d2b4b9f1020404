"""pyproject's ranges are the tested ones: constraints/oldest.txt pins every direct dependency
at its floor (what make test-oldest installs), and the lock lies inside every range."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
check_upstream = load_script("check_upstream")

DECLARED = check_upstream.declared_requirements(ROOT / "pyproject.toml")
OLDEST = check_upstream.read_lock(ROOT / "constraints" / "oldest.txt")
LOCK = check_upstream.read_lock(ROOT / "constraints" / "lock.txt")


def floor_of(spec: str) -> str:
    [floor] = re.findall(r">=([^,]+)", spec)
    return floor


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_oldest_pins_each_direct_dependency_at_its_floor(name):
    spec, where = DECLARED[name]
    floor = floor_of(spec)
    assert name in OLDEST, f"constraints/oldest.txt lacks {name} ({where}: {spec})"
    assert check_upstream.version_key(OLDEST[name]) == check_upstream.version_key(floor), \
        f"{name}: oldest.txt has {OLDEST[name]}, pyproject's floor is {floor}"


def test_oldest_pins_nothing_else():
    assert sorted(OLDEST) == sorted(DECLARED)


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_lock_is_inside_every_range(name):
    spec, _ = DECLARED[name]
    assert name in LOCK, f"constraints/lock.txt lacks {name}"
    assert check_upstream.within(LOCK[name], spec), f"{name}=={LOCK[name]} is outside {spec}"
