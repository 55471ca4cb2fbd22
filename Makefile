# The common commands; the README opens with `make study` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
SNAKEMAKE := $(VENV)/bin/snakemake

.PHONY: setup study two-rewards replication quick test test-fast lint typecheck report snakemake-report pretrain pretrain-ddim references constraints

# constraints.txt pins every package but torch, torchvision and their CUDA wheels (the platform
# picks those) to the versions the committed tables were made with; `make constraints` rewrites it
$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

study: setup            ## the default study: runs, tables, report (an interrupted run's jobs continue)
	$(SNAKEMAKE) --cores all --rerun-incomplete

two-rewards: setup      ## the default study's full design, both training rewards (~72 min; results/studies/two_rewards, report/studies/two_rewards)
	$(SNAKEMAKE) --cores all --rerun-incomplete --configfile config/two_rewards.yaml

replication: setup      ## the two-reward study on seeds it never used, then results/replication/replication.md: does every finding keep its sign?
	$(SNAKEMAKE) --cores all --rerun-incomplete --configfile config/replication.yaml
	$(PY) -m t2i_rl_bench.replication --study results/studies/two_rewards/tables --replication results/studies/replication/tables --out results/replication

quick: setup            ## the smoke preset (same DAG, a few minutes; results/studies/quick, report/studies/quick)
	$(SNAKEMAKE) --cores all --rerun-incomplete --configfile config/quick.yaml

test: setup lint typecheck  ## lint, type check, then the whole test suite (pytest's "no tests" exit 5 counts as a failure here too)
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q

test-fast: setup        ## everything but the end-to-end workflow tests
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check bench algorithms rewards tests
	$(VENV)/bin/ruff format --check bench algorithms rewards tests

typecheck: setup        ## mypy on the core (the modules are listed in pyproject.toml, [tool.mypy]; .ci/typecheck says why it is a script)
	MYPY=$(VENV)/bin/mypy .ci/typecheck

report: setup           ## re-render the default study's report from its tables and run files (seconds; nothing reruns)
	$(PY) -m t2i_rl_bench report --tables results/tables --runs-root results/runs --out report/index.html --quote-in README.md

constraints:            ## rewrite constraints.txt from the installed .venv (on purpose: after an upgrade the tables are remade with)
	( echo "# pip constraints: the versions of the installed .venv, written by \`make constraints\`; torch, torchvision and their"; \
	  echo "# CUDA wheels are left to the platform. Used by \`make setup\` (pip install -c constraints.txt -e '.[dev]')."; \
	  $(PY) -m pip freeze --exclude-editable | grep -viE '^(torch|torchvision|triton|nvidia-[a-z0-9_-]+|cuda-[a-z0-9_-]+)==' \
	) > constraints.txt

references: setup       ## regenerate references.bib and CITATION.cff's references from each algorithm's `paper`
	$(PY) -m t2i_rl_bench.citation

snakemake-report: setup ## Snakemake's own report of the last run (provenance, runtimes, the report and tables)
	$(SNAKEMAKE) --report report/snakemake.html

pretrain: setup         ## regenerate the default study's shipped base model (about 25 minutes on 1 core)
	$(SNAKEMAKE) --cores 1 --forcerun pretrain -- results/models/dit16-flow/bench_model.json

pretrain-ddim: setup    ## regenerate the DDIM base model of config/ddim.yaml (about 20 minutes on 1 core)
	$(SNAKEMAKE) --cores 1 --configfile config/ddim.yaml --forcerun pretrain -- results/models/dit16-ddim/bench_model.json
