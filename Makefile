# Two commands do everything on a fresh machine: `make run` and `make test`.
# The venv is (re)built whenever pyproject.toml or constraints.txt change.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= runs/quickstart
FIDELITY ?= medium
ARGS ?=

.PHONY: run test bench bench-grid clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/tournament run --data sp500 --fidelity $(FIDELITY) --out $(OUT) $(ARGS)

test: $(STAMP)
	bash scripts/install_chromium.sh   # headless browser for the report test (Debian package)
	$(PY) -m pytest -q $(ARGS)

bench: $(STAMP)   # fixed cost: services up vs temporary, warm/cold, legacy ratios (~15 min)
	$(PY) benchmarks/fixed_cost.py $(ARGS)

bench-grid: $(STAMP)   # grids x tiers: legacy vs two-stage vs compute floor (~45 min)
	$(PY) benchmarks/run_benchmarks.py $(ARGS)

clean:
	rm -rf $(VENV) runs
