# make demo / make test: each installs what it needs into a local virtual environment, then runs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.llava-aim-installed

.PHONY: demo test install tables clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,eval]"
	@touch $(STAMP)

install: $(STAMP)

# The picture goes to build/ (git-ignored); scripts/make_demo_picture.py with no argument
# rewrites the committed docs/what_aim_does.png.
demo: $(STAMP)
	$(PY) -m llava run --frames 16
	@mkdir -p build
	$(PY) scripts/make_demo_picture.py --out build/aim_demo.png

test: $(STAMP)
	$(PY) -m pytest -q

tables: $(STAMP)
	$(PY) scripts/make_efficiency_tables.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
