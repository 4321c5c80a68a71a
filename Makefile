# The two commands that matter: `make demo` and `make test`. Each builds .venv itself.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TINY   := .earshot/models/tiny

.PHONY: demo test lint typecheck unit services system-deps venv clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[model,triton,api,dev]'
	touch $(STAMP)

venv: $(STAMP)

# eSpeak NG speaks the summaries; it is a Debian package, not a wheel.
system-deps:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  echo "installing espeak-ng"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null; }

$(TINY)/config.json: | $(STAMP)
	$(BIN)/earshot model init-tiny $(TINY) --with-think

# The main job end to end on the embedded default (SQLite in .earshot/, the folder
# .earshot/outputs as the bucket, in-process tasks, the in-process engine) with the golden
# model (models/golden, trained by Earshot on its own synthetic corpus), then the same sample
# scored against its known words and sounds (transcript per speech chunk, events, WER).
demo: $(STAMP) system-deps
	EARSHOT_MODEL_PATH=models/golden $(BIN)/earshot run examples/golden/demo.flac \
	  --tasks transcribe,caption,events,summarize,think,speak
	@echo
	$(BIN)/earshot eval demo --model models/golden --sample examples/golden/demo.flac
	@echo
	@echo "models/golden knows only its synthetic corpus and is not yet accurate (docs/golden.md);"
	@echo "for real audio point EARSHOT_MODEL_PATH at real AF3 weights (README)."

services:
	bash scripts/start-services.sh

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) system-deps services lint typecheck
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .earshot .pytest_cache .mypy_cache .ruff_cache
