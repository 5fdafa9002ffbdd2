# Two entry points for a fresh machine (python3 and make are all that is needed):
#   make demo   create .venv, install, run the main job on the embedded synthetic data
#   make test   create .venv, install, run the whole test-suite (what CI runs)
#   make test-fast  the unit tier: everything not marked slow or multiproc (a few minutes)
#   make lint   ruff check + ruff format --check (configured in pyproject.toml)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.lamed-installed
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml _lamed_tvshim.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -c "import sysconfig, pathlib; p = pathlib.Path(sysconfig.get_paths()['purelib']) / '_lamed_tvshim.pth'; p.write_text('import _lamed_tvshim\n')"
	$(PY) -c "import transformers, LaMed; from transformers import Trainer; import open_clip; print('LaMed', LaMed.__version__, 'installed')"
	touch $(STAMP)

demo: install
	$(OFFLINE) $(VENV)/bin/lamed demo --out demo_out

test: install lint
	$(OFFLINE) $(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(OFFLINE) $(PY) -m pytest -q -m "not slow and not multiproc" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) demo_out .pytest_cache
