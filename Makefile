# Two commands matter: `make demo` and `make test`. Both create .venv when it is missing.
#
# `make test` is lint + typecheck + the whole suite on the newest supported Airflow. On a
# fresh Debian machine it also installs what the suite needs: Debian's chromium and
# chromium-driver for the outcome view's browser test (as root; otherwise it stops with the
# command to run), and its PostgreSQL cases use the machine's server at 127.0.0.1:5432 when
# one answers (VONAGE_STUDIO_TEST_POSTGRES_URL points them elsewhere).
#
# `make test-matrix` runs `make test`, then the suite on every older supported Airflow minor,
# each in a venv of its own (.venv-airflow-3.1, ...). CI runs exactly that (.ci/run).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP_INSTALL := -m pip install --quiet --disable-pip-version-check

# Each venv installs with its Airflow minor's constraints file (the `pip freeze` of a venv
# that passed the suite, as Airflow publishes its own): reproducible, and pip has nothing to
# resolve. pyproject.toml keeps only lower bounds. Regenerate with `make constraints`.
NEWEST_AIRFLOW := 3.3
CONSTRAINTS = .ci/constraints-airflow-$(1).txt
# Older minors: the whole suite runs on these ...
MATRIX_FULL ?= 3.1
# ... and on these the DAG tests (real `airflow dags test` runs) and the entry points Airflow
# discovers (provider info, plugin, CLI: the receiver's documented command).
MATRIX_DAGS ?= 3.2
DAG_TESTS := tests/dags tests/unit/test_provider_info.py tests/integration/test_plugin.py \
	tests/integration/test_cli.py

CHROMIUM ?= /usr/bin/chromium
CHROMEDRIVER ?= /usr/bin/chromedriver
APT_GET ?= apt-get

.PHONY: venv demo demo-campaign test test-matrix matrix-venvs matrix-targets lint format typecheck pytest browser bench constraints clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) $(PIP_INSTALL) --upgrade pip
	$(PY) $(PIP_INSTALL) -e '.[dev]' --constraint $(call CONSTRAINTS,$(NEWEST_AIRFLOW))
	touch $(STAMP)

# An older Airflow minor, e.g. .venv-airflow-3.1/.installed from .ci/constraints-airflow-3.1.txt
# (precious: make would otherwise delete the stamp as an intermediate file).
.PRECIOUS: .venv-airflow-%/.installed
.venv-airflow-%/.installed: pyproject.toml .ci/constraints-airflow-%.txt
	$(PYTHON) -m venv .venv-airflow-$*
	.venv-airflow-$*/bin/python $(PIP_INSTALL) --upgrade pip
	.venv-airflow-$*/bin/python $(PIP_INSTALL) -e '.[dev]' --constraint .ci/constraints-airflow-$*.txt
	touch $@

venv: $(STAMP)

# ARGS passes options to the demo, e.g. `make demo ARGS=--campaign` (the reminder campaign:
# attempt waves seconds apart, then WhatsApp to whoever was never reached).
demo: $(STAMP)
	$(PY) -m airflow_provider_vonage_studio.testing.demo $(ARGS)

demo-campaign: $(STAMP)
	$(PY) -m airflow_provider_vonage_studio.testing.demo --campaign $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: $(STAMP)
	$(VENV)/bin/mypy airflow_provider_vonage_studio

pytest: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test: browser lint typecheck pytest

# Not .PHONY: pattern rules are how make builds the venv each one needs.
test-airflow-%: .venv-airflow-%/.installed browser
	@echo "== the whole suite on Airflow $$(.venv-airflow-$*/bin/python -c 'import airflow; print(airflow.__version__)')"
	.venv-airflow-$*/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-dags-airflow-%: .venv-airflow-%/.installed
	@echo "== the DAG, plugin and CLI tests on Airflow $$(.venv-airflow-$*/bin/python -c 'import airflow; print(airflow.__version__)')"
	.venv-airflow-$*/bin/python -m pytest -q -p no:cacheprovider $(DAG_TESTS) $(PYTEST_ARGS)

MATRIX_TARGETS := $(addprefix test-airflow-,$(MATRIX_FULL)) $(addprefix test-dags-airflow-,$(MATRIX_DAGS))

test-matrix: test $(MATRIX_TARGETS)

# The older minors' venvs, without running anything (CI builds them beside .venv).
matrix-venvs: $(foreach minor,$(MATRIX_FULL) $(MATRIX_DAGS),.venv-airflow-$(minor)/.installed)

# What test-matrix runs after `make test`, one target a line (CI times each).
matrix-targets:
	@printf '%s\n' $(MATRIX_TARGETS)

# The browser test drives Debian's headless Chromium through ChromeDriver. Missing and root:
# install both; missing otherwise: fail (a skipped browser test would hide a broken view).
browser:
	@if [ -x $(CHROMIUM) ] && [ -x $(CHROMEDRIVER) ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "make test needs $(CHROMIUM) and $(CHROMEDRIVER) for the browser test: run 'sudo apt-get install -y chromium chromium-driver' and try again" >&2; \
	  exit 1; \
	fi; \
	echo "Installing Debian's chromium and chromium-driver for the outcome view's browser test"; \
	if ! { $(APT_GET) update -qq && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq chromium chromium-driver >/dev/null; } \
	   || [ ! -x $(CHROMIUM) ] || [ ! -x $(CHROMEDRIVER) ]; then \
	  echo "make test needs $(CHROMIUM) and $(CHROMEDRIVER) for the browser test, and 'apt-get install -y chromium chromium-driver' did not provide them (see apt-get's output above)" >&2; \
	  exit 1; \
	fi

# Re-resolve every supported minor's newest patch in a scratch venv and freeze it (run after a
# release of Airflow or a dependency change; then run `make test-matrix`). HOLDS_<minor>: what
# a minor's own requirements allow but its code does not run with.
HOLDS_3.2 := fastapi<0.137 cadwyn<8 svcs<26
constraints:
	@for minor in $(NEWEST_AIRFLOW) $(MATRIX_FULL) $(MATRIX_DAGS); do \
	  case $$minor in 3.2) holds='$(HOLDS_3.2)';; *) holds='';; esac; \
	  scratch=$$(mktemp -d) && \
	  $(PYTHON) -m venv $$scratch && \
	  $$scratch/bin/python $(PIP_INSTALL) --upgrade pip && \
	  $$scratch/bin/python $(PIP_INSTALL) -e '.[dev]' "apache-airflow==$$minor.*" $$holds && \
	  { echo "# pip freeze of a venv with airflow-provider-vonage-studio[dev] and the newest apache-airflow $$minor.x;"; \
	    echo "# regenerate with make constraints"; \
	    if [ -n "$$holds" ]; then echo "# held back: $$holds (Airflow $$minor's API server and in-process execution API fail with newer ones)"; fi; \
	    $$scratch/bin/python -m pip freeze --exclude-editable --disable-pip-version-check; } \
	    > $(call CONSTRAINTS,$$minor) && \
	  rm -rf $$scratch && echo "$(call CONSTRAINTS,$$minor): $$(grep '^apache-airflow==' $(call CONSTRAINTS,$$minor))" \
	  || exit 1; \
	done

bench: $(STAMP)
	$(PY) benchmarks/import_cost.py
	$(PY) benchmarks/pacing.py
	$(PY) benchmarks/callbacks.py
	$(PY) benchmarks/trigger_poll.py

clean:
	rm -rf $(VENV) .venv-airflow-* .mypy_cache .ruff_cache .pytest_cache
