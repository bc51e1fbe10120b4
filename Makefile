# The two commands: `make run` (the main job) and `make test`. Both create .venv by themselves.
# The venv's interpreter: Python 3.13, the functions' Lambda runtime (template.yaml), where the machine has it (on
# PATH, or installed by pyenv); coverage then measures through sys.monitoring, which made the traced unit tier 120
# CPU-s instead of 201 on 3.11 (scripts/run_tests.py). Elsewhere python3 (3.11 or later). PYTHON=... overrides.
ifeq ($(origin PYTHON),undefined)
PYTHON := $(or $(shell for p in python3.13 $(wildcard $(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions/3.13*/bin/python3.13); do \
                  $$p -c 'import venv, ensurepip' 2>/dev/null && { command -v $$p; break; }; done),python3)
endif
VENV   := .venv
PY     := $(VENV)/bin/python
# A new stamp when the requirements or the interpreter change: the venv is made again for another Python.
PYVER  := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
# The installer of the venv's requirements, pinned like them.
UV     := uv==0.13.10
STAMP  := $(VENV)/.installed-$(PYVER)-$(shell cksum < requirements-dev.txt | cut -d' ' -f1)

.PHONY: run up test test-unit test-stack test-ministack lint openapi docs build bench bench-bill bench-idle bench-reaper clean venv

# The console's browser libraries (dagre, htmx), exactly as sagalocal/console/package-lock.json pins them.
# `make venv` installs them with the Python dependencies, so every target that serves the console has them.
CONSOLE_ASSETS := sagalocal/console/node_modules/.package-lock.json
venv: $(CONSOLE_ASSETS)
$(CONSOLE_ASSETS): sagalocal/console/package-lock.json
	cd sagalocal/console && npm ci --ignore-scripts --no-audit --no-fund
	@touch $@

venv: $(STAMP)

$(STAMP): requirements-dev.txt
	@test -n "$(PYVER)" || { echo "cannot run '$(PYTHON)' (a Python 3.11 or later, with venv): set PYTHON=..." >&2; exit 2; }
	@if [ -x $(PY) ] && [ "$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "$(PYVER)" ]; then \
	  echo "$(VENV) is Python $$($(PY) -c 'import sys; print(sys.version.split()[0])'); making it again with $(PYTHON)"; \
	  rm -rf $(VENV); fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# uv installs the pinned requirements, compiled, in ~12 s where pip took ~46 s on 2 cores (2026-12-07); pip
	@# installs them where uv cannot be had or cannot reach the index.
	$(PY) -m pip install --quiet --disable-pip-version-check $(UV) && \
	  $(VENV)/bin/uv pip install --quiet --python $(PY) --compile-bytecode -r requirements-dev.txt || \
	  $(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@# The project's own packages (src/order_saga, sagalocal) on the venv's path, without a build step.
	$(PY) -c "import pathlib, site; pathlib.Path(site.getsitepackages()[0], 'order-saga.pth').write_text('$(CURDIR)/src\n$(CURDIR)\n')"
	@rm -f $(VENV)/.installed-*
	@touch $@

run: venv  ## Place the sample orders through the saga on the embedded local stack
	$(PY) scripts/scenarios.py

up: venv  ## Serve the stack on 127.0.0.1:3000 until Ctrl-C, the catalog seeded
	$(PY) -m sagalocal up --init "$(PY) scripts/seed_catalog.py --stack-outputs .local/stack-outputs.json events/catalog.json --promotions events/promotions.json"

test: venv  ## Every test (unit, stack, browser), two tiers at a time, with coverage of src/ and functions/
	$(PY) scripts/run_tests.py

# ministack (PyPI, no Docker) as a deployed engine: stand it up, deploy template.yaml with samlocal, run tests/stack
# against it (its known gaps are strict expected failures: tests/stack/engines.py), tear it down; then
# docs/engines.md from its report and make test's last. PYTEST_ARGS="-k ..." runs part of the tier (no doc then).
test-ministack: venv  ## The stack tier against ministack, deployed with samlocal -> docs/engines.md
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-ministack.txt
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) scripts/ministack.py $(PYTEST_ARGS)

test-unit: venv
	$(PY) -m pytest tests/unit

test-stack: venv
	$(PY) -m pytest tests/stack

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/cfn-lint template.yaml
	SAM_CLI_TELEMETRY=0 $(VENV)/bin/sam validate --lint

openapi: venv  ## Regenerate docs/openapi.json from the API's resolver
	$(PY) scripts/generate_openapi.py

docs: openapi  ## Regenerate the generated docs (OpenAPI, the timing table, scenarios, the README diagram, the console's screenshots in docs/img)
	$(PY) scripts/generate_timing_table.py
	$(PY) -m sagalocal.sim.explore --write-doc
	$(PY) scripts/generate_scenarios_doc.py
	$(PY) scripts/generate_diagram.py
	$(PY) scripts/console_screenshots.py

build: venv  ## sam build (needs python3.13 on PATH, e.g. PYENV_VERSION=3.13.0:3.11.7)
	SAM_CLI_TELEMETRY=0 PATH="$(CURDIR)/$(VENV)/bin:$$PATH" sam build

# Issue 10's targets, old (5d5f643) beside new in one run -> docs/benchmarks.md. Never runs `make test`: give its
# duration with BENCH_ARGS="--make-test-seconds S" (or --make-test-log FILE); BENCH_ARGS=--quick for a smoke run.
bench: $(STAMP)  ## Benchmarks: this stack, 5d5f643's and ministack's, cold start -> docs/benchmarks.md
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-bench.txt
	$(PY) bench/run_all.py $(BENCH_ARGS)

bench-bill: $(STAMP)  ## The full bill per million sagas, from measured counts -> docs/benchmarks.md
	$(PY) bench/bill.py

bench-idle: $(STAMP)  ## An idle stack's CPU per second, the commit before the 20 s long polls beside this tree -> docs/benchmarks.md
	$(PY) bench/idle_cpu.py

bench-reaper: $(STAMP)  ## The reaper's drain of 500 abandoned sagas, fan-out vs sequential -> docs/benchmarks.md
	$(PY) bench/reaper_drain.py --orders 500

clean:
	rm -rf $(VENV) .aws-sam .local .pytest_cache .ruff_cache sagalocal/console/node_modules
