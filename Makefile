# fe2nn: `make test` and `make demo` set themselves up on a fresh clone.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.fe2nn-installed

# Python 3.12: python3.12 on PATH (if it really runs), else pyenv's 3.12.
PYTHON312 := $(shell if python3.12 --version >/dev/null 2>&1; then command -v python3.12; \
	else ls -d $$HOME/.pyenv/versions/3.12.*/bin/python3.12 2>/dev/null | sort -V | tail -n 1; fi)

.PHONY: venv test demo demo-validate bench bench-quick clean-venv

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@if [ ! -x $(PY) ]; then \
	  if [ -z "$(PYTHON312)" ]; then \
	    echo "error: Python 3.12 not found (need python3.12 on PATH or pyenv's 3.12.x)"; exit 1; fi; \
	  echo "creating $(VENV) with $(PYTHON312)"; \
	  $(PYTHON312) -m venv $(VENV) || exit 1; \
	fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dolfinx,test]'
	@touch $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q tests

demo: $(STAMP)
	$(VENV)/bin/mpirun -n 2 $(VENV)/bin/fe2nn solve demos/plate_hole_rno.toml

demo-validate: $(STAMP)
	$(VENV)/bin/fe2nn validate demos/validate_small.toml

# Every benchmark at its documented size (about an hour on 2 cores; run on an idle machine),
# each printing a table and writing results/<name>.json.  bench-quick: smoke sizes, ~3 min.
BENCHMARKS := macro_j2 rve generate surrogate training fe2_speedup checkpoint strain_paths

bench: $(STAMP)
	mkdir -p results
	for b in $(BENCHMARKS); do OMP_NUM_THREADS=1 $(PY) benchmarks/$$b.py --out results/$$b.json || exit 1; done

bench-quick: $(STAMP)
	mkdir -p results/quick
	for b in $(BENCHMARKS); do OMP_NUM_THREADS=1 $(PY) benchmarks/$$b.py --quick --out results/quick/$$b.json || exit 1; done

clean-venv:
	rm -rf $(VENV)
