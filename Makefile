# make demo / make test: each installs what it needs into a local virtual environment, then runs
# (how long make test takes: docs/development.md, "Tests").
#
# Installs use the lock (constraints/lock.txt: every package at the exact version the tests
# passed with). LOCK=none installs the newest releases pyproject's ranges allow instead, e.g.
#   make test LOCK=none VENV=.venv-newest
PYTHON ?= python3
VENV   ?= .venv
LOCK   ?= constraints/lock.txt
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.llava-aim-installed
LOCK_DEP := $(if $(filter none,$(LOCK)),,$(LOCK))
CONSTRAINT := $(if $(LOCK_DEP),-c $(LOCK_DEP),)
# setuptools' "Editable installation ... be careful with folders ..." notice is a warning box
# (pip forwards it; --quiet does not hide it). Ignore that one warning, by the start of its
# message, in pip and its build backend (after any filters of yours, so it wins); every other
# warning and error still shows.
EDITABLE_QUIET = PYTHONWARNINGS="$${PYTHONWARNINGS:+$$PYTHONWARNINGS,}ignore:Editable installation"

.PHONY: demo test install tables comparison clean lock test-oldest test-newest check-upstream

$(STAMP): pyproject.toml $(LOCK_DEP)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(EDITABLE_QUIET) $(PY) -m pip install --quiet $(CONSTRAINT) -e ".[test,eval]"
	@touch $(STAMP)

install: $(STAMP)

# The picture goes to build/ (git-ignored); scripts/make_demo_picture.py with no argument
# rewrites the committed docs/what_aim_does.png. Another built-in model:
#   make demo DEMO_MODEL=tiny-qwen2-vl
DEMO_MODEL ?= tiny-llava-onevision
demo: $(STAMP)
	$(PY) -m llava run --frames 16 --model $(DEMO_MODEL)
	@mkdir -p build
	$(PY) scripts/make_demo_picture.py --out build/aim_demo.png --model $(DEMO_MODEL)

# The suite runs in TEST_WORKERS processes (pytest-xdist), each test file whole in one of them
# (--dist loadfile keeps a file's order and its module fixtures); TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The two ends of the declared ranges, each in its own environment (CI runs both).
test-oldest:
	$(MAKE) test VENV=.venv-oldest LOCK=constraints/oldest.txt

test-newest:
	$(MAKE) test VENV=.venv-newest LOCK=none

# Rewrite constraints/lock.txt from a fresh environment with the newest releases in range,
# after the suite passes there (see README, "Dependencies").
lock:
	bash scripts/update_lock.sh

# Not part of CI: the newest releases beyond the declared bounds, in a scratch environment.
check-upstream:
	$(PYTHON) scripts/check_upstream.py

tables: $(STAMP)
	$(PY) scripts/make_efficiency_tables.py

# docs/comparison.md: every registered method, predicted, and one CPU bench run of all of them
comparison: $(STAMP)
	$(PY) -m llava.bench.comparison --measure

clean:
	rm -rf $(VENV) .venv-oldest .venv-newest .pytest_cache .hypothesis
