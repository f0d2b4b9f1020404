# make demo / make test: each installs what it needs into a local virtual environment, then runs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.llava-aim-installed

.PHONY: demo test install tables clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m llava run --frames 16

test: $(STAMP)
	$(PY) -m pytest -q

tables: $(STAMP)
	$(PY) scripts/make_efficiency_tables.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
