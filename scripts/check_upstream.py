#!/usr/bin/env python3
"""make check-upstream: does llava-aim still work with the newest releases, beyond its bounds?

Not part of CI (it tests releases the declared ranges exclude, so a failure here is news, not
a regression). In a scratch virtual environment it

1. installs the project's dependencies with every upper bound of pyproject.toml dropped, so
   pip picks the newest releases the other packages' own pins allow;
2. forces each watched package (transformers, lmms-eval, torch, accelerate, av, datasets,
   filelock) to its newest release on the index, past other packages' pins if need be
   (``pip install --no-deps``), unless this machine's pip configuration caps it (reported);
3. runs the integration tests there;
4. when tests fail, puts every moved package back at its locked version but one, for each
   moved package in turn, and reruns the failed tests, so that a breakage is attributed to
   the package that causes it;
5. prints one line per watched package: locked version, declared range, newest release,
   what was tested, and whether it broke anything.

    python scripts/check_upstream.py            # make check-upstream
    KEEP_VENV=1 python scripts/check_upstream.py   (keep the scratch environment for a look)

Exit status 0 when nothing broke, 1 when a package broke something, 2 when the check itself
could not run.
Only the standard library is used here; the scratch environment gets everything else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
WATCHED = ("transformers", "lmms-eval", "torch", "accelerate", "av", "datasets", "filelock")
# The tests that exercise the installed transformers, lmms-eval, PyAV and torch end to end.
INTEGRATION_TESTS = (
    "tests/test_aim_model.py",
    "tests/test_cache_integrity.py",
    "tests/test_hub_loading.py",
    "tests/test_eval_plugin.py",
    "tests/test_eval_cli.py",
    "tests/test_video.py",
    "tests/test_run_contract.py",
)


# -- pure helpers (tested in tests/test_check_upstream.py) ---------------------------------------
def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def split_requirement(text: str) -> Tuple[str, str]:
    """``"transformers>=5.17,<5.26 ; extra"`` -> ("transformers", ">=5.17,<5.26")."""
    text = text.split(";", 1)[0].strip()
    match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*)$", text)
    if not match:
        raise ValueError(f"cannot read requirement {text!r}")
    return match.group(1), match.group(3).replace(" ", "")


def drop_upper_bounds(spec: str) -> str:
    """Keep the lower bounds of a specifier; ``~=X.Y`` becomes ``>=X.Y``; ``==`` is kept."""
    kept = []
    for part in filter(None, spec.split(",")):
        if part.startswith(("<", "!=")):
            continue
        kept.append(">=" + part[2:] if part.startswith("~=") else part)
    return ",".join(kept)


def version_key(version: str) -> Tuple:
    """A sort key good enough for release versions (numbers, then the rest)."""
    parts = []
    for piece in re.split(r"[.+-]", version):
        parts.append((0, int(piece), "") if piece.isdigit() else (1, 0, piece))
    while len(parts) > 1 and parts[-1] == (0, 0, ""):  # 5.17 == 5.17.0
        parts.pop()
    return tuple(parts)


def within(version: str, spec: str) -> Optional[bool]:
    """Whether ``version`` satisfies a simple specifier (>=, >, <, <=, ==, !=); None if unsure."""
    ops = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
           "<": lambda a, b: a < b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b}
    for part in filter(None, spec.split(",")):
        match = re.match(r"^(>=|<=|==|!=|>|<)(.+)$", part)
        if not match or "*" in match.group(2):
            return None
        op, bound = match.groups()
        if not ops[op](version_key(version), version_key(bound)):
            return False
    return True


def read_lock(path: Path) -> Dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            found[canonical(name)] = version.strip()
    return found


def read_caps(paths: Sequence[Path]) -> Dict[str, Tuple[str, str]]:
    """Upper caps (``<=``, ``<``, ``==``) that pip constraint files of this machine impose:
    {package: (specifier, file)}."""
    caps = {}
    for path in paths:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                name, spec = split_requirement(line)
            except ValueError:
                continue
            if any(op in spec for op in ("<", "==")):
                caps[canonical(name)] = (spec, str(path))
    return caps


def declared_requirements(pyproject: Path) -> Dict[str, Tuple[str, str]]:
    """{package: (specifier, where)} of the project's dependencies and its test/eval extras."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        from pip._vendor import tomli as tomllib
    data = tomllib.loads(pyproject.read_text())["project"]
    found = {}
    groups = [("dependencies", data.get("dependencies", []))]
    groups += [(f"[{extra}]", reqs) for extra, reqs in data.get("optional-dependencies", {}).items()
               if extra in ("eval", "test")]
    for where, reqs in groups:
        for req in reqs:
            name, spec = split_requirement(req)
            found[canonical(name)] = (spec, where)
    return found


def failure_cause(text: str) -> str:
    """The most telling line of a failure: the last exception other than an AssertionError
    (e.g. the ImportError an lmms-eval subprocess printed), else the first line."""
    causes = re.findall(r"\b((?!Assertion)[A-Z]\w*(?:Error|Exception): [^\n\\]+)", text)
    if causes:
        return causes[-1].strip()[:160]
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0][:160] if lines else ""


def telling(failures: Sequence[Tuple[str, str]]) -> Tuple[str, str]:
    """The failure to quote: the first whose cause is an exception, else the first."""
    for failure in failures:
        if re.match(r"[A-Z]\w*(Error|Exception): ", failure[1]):
            return failure
    return failures[0]


def status_line(name: str, lock: Optional[str], declared: Optional[Tuple[str, str]], newest: Optional[str],
                tested: Optional[str], cap: Optional[Tuple[str, str]], verdict: str) -> str:
    spec = f"declared {declared[0]} ({declared[1]})" if declared else "not declared (comes with lmms-eval)"
    if tested is None:
        moved = "not installed"
    elif tested == lock:
        moved = f"{tested} = the lock"
    else:
        inside = within(tested, declared[0]) if declared else None
        where = {True: "inside the declared range", False: "beyond the declared range", None: "range not checked"}
        moved = f"{lock or '?'} -> {tested}, {where[inside]}"
    capped = ""
    if newest and tested and newest != tested:
        capped = f"; newest {newest} not installed" + (f" (capped by {cap[1]}: {name}{cap[0]})" if cap else "")
    return f"{name:<12} {moved}; {spec}{capped}: {verdict}"


# -- the scratch environment ---------------------------------------------------------------------
class Env:
    def __init__(self, path: Path):
        self.path = path
        self.python = str(path / "bin" / "python")

    def pip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([self.python, "-m", "pip", *args], capture_output=True, text=True)
        if check and done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise RuntimeError(f"pip {' '.join(args[:3])} ... failed:\n{tail}")
        return done

    def installed(self) -> Dict[str, str]:
        out = self.pip("list", "--format", "json").stdout
        return {canonical(p["name"]): p["version"] for p in json.loads(out)}

    def newest(self, name: str) -> Optional[str]:
        done = self.pip("index", "versions", name, check=False)
        match = re.search(r"Available versions:\s*([^,\s]+)", done.stdout)
        return match.group(1) if match else None

    def pytest(self, tests: Sequence[str], report: Path) -> Tuple[int, List[Tuple[str, str]], float]:
        """(exit status, [(test id, first line of the failure)], seconds)."""
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        start = time.monotonic()
        done = subprocess.run([self.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                               *tests], cwd=ROOT, capture_output=True, text=True, env=env)
        failed = []
        if report.exists():
            for case in ET.parse(report).getroot().iter("testcase"):
                problem = case.find("failure") if case.find("failure") is not None else case.find("error")
                if problem is not None:
                    test_id = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
                    failed.append((test_id, failure_cause((problem.text or "") + "\n" + (problem.get("message") or ""))))
        return done.returncode, failed, time.monotonic() - start


def pip_constraint_files(python: str) -> List[Path]:
    files = []
    done = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True)
    for line in done.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.strip().endswith(".constraint"):
            files += [Path(v) for v in value.strip().strip("'\"").split()]
    files += [Path(v) for v in os.environ.get("PIP_CONSTRAINT", "").split() if v]
    return files


def test_ids_to_nodes(failed: Sequence[Tuple[str, str]]) -> List[str]:
    """junit ids (tests/test_x.py::name[param]) back to pytest node ids."""
    return sorted({test_id for test_id, _ in failed})


def main() -> int:
    python = os.environ.get("PYTHON", sys.executable)
    keep = os.environ.get("KEEP_VENV") == "1"
    scratch = Path(tempfile.mkdtemp(prefix="llava-aim-upstream."))
    env = Env(scratch / "venv")
    lock = read_lock(ROOT / "constraints" / "lock.txt")
    declared = declared_requirements(ROOT / "pyproject.toml")
    caps = read_caps(pip_constraint_files(python))
    started = time.monotonic()
    try:
        print(f"check-upstream: scratch environment {env.path}", file=sys.stderr)
        subprocess.run([python, "-m", "venv", str(env.path)], check=True)
        env.pip("install", "--quiet", "--upgrade", "pip")
        newest = {name: env.newest(name) for name in WATCHED}
        # 1. every declared dependency with its upper bound dropped: pip picks the newest it can
        unbounded = [f"{name}{drop_upper_bounds(spec)}" for name, (spec, _) in sorted(declared.items())]
        env.pip("install", "--quiet", *unbounded)
        # 2. each watched package at its newest release, past other packages' pins if need be
        forced = {}
        installed = env.installed()  # each forced install below is --no-deps: it moves that package only
        for name in WATCHED:
            target, have = newest.get(name), installed.get(canonical(name))
            if not target or have == target:
                continue
            cap = caps.get(canonical(name))
            if cap and within(target, cap[0]) is False:
                continue  # this machine's pip configuration forbids it: reported as capped
            done = env.pip("install", "--quiet", "--no-deps", f"{name}=={target}", check=False)
            forced[name] = "forced" if done.returncode == 0 else "not installable: " + (
                (done.stderr.strip().splitlines() or ["?"])[-1][:120])
        env.pip("install", "--quiet", "--no-deps", "-e", str(ROOT))
        installed = env.installed()
        tested = {name: installed.get(canonical(name)) for name in WATCHED}
        conflicts = [ln for ln in env.pip("check", check=False).stdout.splitlines() if ln.strip()]
        print(f"check-upstream: installed in {time.monotonic() - started:.0f} s; running the integration tests",
              file=sys.stderr)
        # 3. the integration tests with everything moved
        status, failed, seconds = env.pytest(INTEGRATION_TESTS, scratch / "all.xml")
        print(f"check-upstream: integration tests exit {status}, {len(failed)} failed, {seconds:.0f} s",
              file=sys.stderr)
        moved = [n for n in WATCHED if tested.get(n) and lock.get(canonical(n)) and tested[n] != lock[canonical(n)]]
        verdicts = {n: "nothing to test" if tested.get(n) == lock.get(canonical(n)) else "ok" for n in WATCHED}
        if status not in (0, 1) and not failed:
            raise RuntimeError(f"pytest could not run (exit {status})")
        if failed:
            # 4. attribute: only one package moved at a time, the others back at the lock. A test
            # is blamed on a package when it fails twice with only that package moved and passes
            # with everything at the lock (so a flaky test, e.g. a busy port, blames nothing).
            nodes = test_ids_to_nodes(failed)
            alone_failures: Dict[str, List[Tuple[str, str]]] = {}
            for name in moved:
                for other in moved:
                    version = tested[other] if other == name else lock[canonical(other)]
                    env.pip("install", "--quiet", "--no-deps", f"{other}=={version}")
                _, alone, _ = env.pytest(nodes, scratch / f"{name}.xml")
                if alone:  # confirm: the same tests once more
                    _, again, _ = env.pytest(test_ids_to_nodes(alone), scratch / f"{name}-again.xml")
                    twice = {t for t, _ in again}
                    alone = [f for f in alone if f[0] in twice]
                alone_failures[name] = alone
            for other in moved:  # everything at the lock: do the failures belong to upstream at all?
                env.pip("install", "--quiet", "--no-deps", f"{other}=={lock[canonical(other)]}")
            _, at_lock, _ = env.pytest(nodes, scratch / "lock.xml")
            at_lock_ids = {t for t, _ in at_lock}
            blamed = []
            for name in moved:
                alone = [f for f in alone_failures[name] if f[0] not in at_lock_ids]
                if alone:
                    blamed.append(name)
                    first = telling(alone)
                    verdicts[name] = f"BREAKS {len(alone)} test(s) when moved alone (e.g. {first[0]}: {first[1]})"
                else:
                    verdicts[name] = "ok (none of the failing tests fails with only this package moved)"
            if not blamed:
                first = telling(failed)
                print(f"check-upstream: {len(failed)} test(s) failed with everything moved but none with one package "
                      f"moved alone (flaky, or several packages together: {', '.join(moved)}); e.g. {first[0]}: "
                      f"{first[1]}", file=sys.stderr)
            if at_lock:
                first = telling(at_lock)
                print(f"check-upstream: {len(at_lock)} of them fail at the locked versions too (not upstream "
                      f"drift); e.g. {first[0]}: {first[1]}", file=sys.stderr)
        # 5. the report
        print(f"check-upstream: newest releases vs constraints/lock.txt and pyproject.toml "
              f"({len(INTEGRATION_TESTS)} integration test files, {time.monotonic() - started:.0f} s in all)")
        for name in WATCHED:
            line = status_line(name, lock.get(canonical(name)), declared.get(canonical(name)), newest.get(name),
                               tested.get(name), caps.get(canonical(name)), verdicts[name])
            if name in forced:
                line += f" [{forced[name]} past other packages' pins]" if forced[name] == "forced" else \
                    f" [{forced[name]}]"
            print(line)
        for conflict in conflicts:
            if "No broken requirements" not in conflict:
                print(f"  pip check: {conflict}")
        return 1 if any(v.startswith("BREAKS") for v in verdicts.values()) else 0
    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        print(f"check-upstream: could not run: {exc}", file=sys.stderr)
        return 2
    finally:
        if keep:
            print(f"check-upstream: kept {env.path}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
