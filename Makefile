# Two entry points: `make demo` runs the main job on a local store, `make test` runs every test.
# Both create or refresh the project's virtualenv from the exact pins in constraints.txt.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp
STORE ?= ./mmstore-data

.PHONY: demo test bench evaluation fleet_sim clean replay_image ui worker

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python -m flows.fleet_scenario --store $(STORE) --cells 300 --cycles 3 --compare

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

# The pinned replay image from local material, on a private dockerd and a registry on 127.0.0.1:5000.
replay_image: $(STAMP)
	PYTHON=$(VENV)/bin/python envs/replay_image/build-offline.sh

# The bars of each approach (a few minutes), and the paper's full evaluation with plots (see docs/benchmarks.md).
bench: $(STAMP)
	$(VENV)/bin/python -m bench.baseline
	$(VENV)/bin/python -m bench.update
	$(VENV)/bin/python -m bench.provenance
	$(VENV)/bin/python -m bench.provenance_small

evaluation: $(STAMP)
	$(VENV)/bin/python -m bench.evaluation --models 5000 --repeats 5

# The device fleet at the size of its bar: 200 devices x 100 cells, 10 days, on a moto S3 server (about 11 minutes here).
fleet_sim: $(STAMP)
	$(VENV)/bin/python -m flows.fleet_sim --store s3://fleet/store --devices 200 --cells 100 --days 10 --seed 0 \
		--json --plot docs/figures/fleet-sim.png > docs/results/fleet-sim.json

clean:
	rm -rf $(VENV) $(STORE) $(STORE)-datasets

# Prefect: `make ui` serves a local server and its UI; `make worker` deploys prefect.yaml to the server at
# PREFECT_API_URL and runs the deployments' flows on this machine, from this checkout.
PREFECT := DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false $(VENV)/bin/prefect
PREFECT_PORT ?= 4200
PREFECT_API_URL ?= http://127.0.0.1:$(PREFECT_PORT)/api
POOL ?= mmstore-process

ui: $(STAMP)
	$(PREFECT) server start --host 127.0.0.1 --port $(PREFECT_PORT)

worker: $(STAMP)
	export PREFECT_API_URL=$(PREFECT_API_URL) PWD=$(CURDIR); \
	$(PREFECT) work-pool inspect $(POOL) >/dev/null 2>&1 || $(PREFECT) work-pool create $(POOL) --type process; \
	$(PREFECT) --no-prompt deploy --all && $(PREFECT) worker start --pool $(POOL)
