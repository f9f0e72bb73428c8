# Two commands: `make demo` and `make test`. Both create .venv when missing and install talkface into it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.talkface-installed
DEMO   ?= demo_output

.PHONY: install demo test test-nbs test-py check-sync readme bench clean

# No wheel cache: torch's CUDA wheels would take another ~3 GB of disk beside the ~7 GB installed.
$(STAMP): settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-cache-dir -e '.[dev,ray]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/talkface demo --output $(DEMO)

# README.md is made from nbs/index.ipynb. (nbdev_readme needs Quarto, which can't be installed offline.)
# Cells tagged hide-input (and marked `#| echo: false` for nbdev) show their output only: no code in the README.
readme: install
	$(BIN)/jupyter nbconvert --log-level=WARN --to markdown --TemplateExporter.exclude_input_prompt=True \
	  --TagRemovePreprocessor.enabled=True --TagRemovePreprocessor.remove_input_tags='{"hide-input"}' --output-dir . --output README nbs/index.ipynb

# The library must be what nbdev_export makes from nbs/, and every notebook must be clean.
check-sync: install
	$(BIN)/nbdev_export
	git diff --exit-code --stat -- talkface/ || (echo "talkface/ is out of sync with nbs/: run nbdev_export and commit" && exit 1)
	test -z "$$(git status --porcelain -- talkface/)" || (git status --porcelain -- talkface/ && echo "untracked files in talkface/" && exit 1)
	$(BIN)/nbdev_clean
	git diff --exit-code --stat -- nbs/ || (echo "a notebook is not clean: run nbdev_clean and commit" && exit 1)
	$(MAKE) --no-print-directory readme
	git diff --exit-code --stat -- README.md || (echo "README.md is out of date: run make readme and commit" && exit 1)

test-nbs: install
	$(BIN)/nbdev_test --n_workers 2 --timing

test-py: install
	$(BIN)/python -m pytest -q tests

test: check-sync test-nbs test-py

bench: install
	$(BIN)/python bench/run.py

clean:
	rm -rf $(DEMO) _docs _proc
