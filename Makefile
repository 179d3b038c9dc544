# Two entry points: `make demo` runs the main job on a local store, `make test` runs every test.
# Both create or refresh the project's virtualenv from the exact pins in constraints.txt.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp
STORE ?= ./mmstore-data

.PHONY: demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python -m flows.fleet_scenario --store $(STORE) --cells 300 --cycles 3 --compare

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python -m bench.baseline

clean:
	rm -rf $(VENV) $(STORE) $(STORE)-datasets
