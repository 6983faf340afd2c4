# `make demo` and `make test` work on a fresh machine: they create the venv and install first.
# `make demo` = install + `rllc demo`: corpora and tokenizer, training (checkpoints/demo), wrLLC/LLC on prose and
# drLLC on code (experiments/demo_estimate.toml), probe, cluster, compare, report (runs/demo/analysis/report.html);
# stage times in runs/demo/timings.json. Rerunning reuses finished work. See docs/demo.md.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test test-fast demo clean-demo

install: $(STAMP)

# torch first and pinned: its CPU build lies on disk, an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

# The tests not marked slow (under 2 minutes on 2 cores): for the edit-test loop. `make test` runs everything.
test-fast: install
	$(PY) -m pytest -q -m "not slow"

demo: install
	$(VENV)/bin/rllc demo --checkpoints checkpoints/demo --out runs/demo

clean-demo:
	rm -rf checkpoints/demo runs/demo
