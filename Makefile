# `make run`: set up .venv if needed, then run the shipped claims at the CPU-sized `ci` profile.
# `make test`: same set-up, then the whole test suite (unit, integration and end-to-end tiers).
# Set-up runs only when .venv is missing or pyproject.toml changed (a stamp file records the last install).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mechcheck-installed
PROFILE ?= ci
ARGS   ?=

.PHONY: install run test test-fast validate clean-reports

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first, pinned to the CPU build that lies on this machine's disk: a bare `torch` requirement would pull
# a multi-GB CUDA build. pyproject.toml keeps the range loose (torch>=2.4) for users elsewhere.
# pip's output (hundreds of lines) goes to $(LOG); the terminal gets one line per step and a summary, or on a
# failure the log's last lines and its path.
LOG    := $(VENV)/install.log
PIP_FAILED = { echo "make install: pip failed; the last 40 lines of $(LOG):"; tail -n 40 $(LOG); \
	echo "make install: full log in $(LOG)"; exit 1; }

$(STAMP): pyproject.toml | $(BIN)/python
	@echo "make install: installing into $(VENV) (pip's output goes to $(LOG))"; : > $(LOG); \
	if ! $(BIN)/python -c "import torch" 2>/dev/null; then \
		echo "  torch==2.13.0 (CPU build) ..."; \
		$(BIN)/python -m pip install torch==2.13.0 >> $(LOG) 2>&1 || $(PIP_FAILED); \
	fi; \
	echo "  mechcheck[dev] (editable) ..."; \
	$(BIN)/python -m pip install -e '.[dev]' >> $(LOG) 2>&1 || $(PIP_FAILED); \
	n=$$(sed -n 's/^Successfully installed //p' $(LOG) | wc -w); \
	echo "  done: $$n package(s) installed or upgraded; $$($(BIN)/python -c "from importlib.metadata import \
	version as v; print('torch', v('torch'), '| mechcheck', v('mechcheck'))")"
	@touch $(STAMP)

# A claim that does not replicate is a finding, not a broken run: exit 1 ("some claim did not pass") is
# reported but does not fail `make run`. A claim that ended as error (3: the harness or the set-up broke),
# invalid input (2), interruption (130) and crashes still do. CI gates on claims with `mechcheck run`
# itself, whose exit code keeps the full contract.
run: $(STAMP)
	@$(BIN)/mechcheck run claims/ --profile $(PROFILE) $(ARGS); rc=$$?; \
	if [ $$rc -eq 1 ]; then echo "make run: some claims did not pass (see the report); that is a result, not an error"; \
	elif [ $$rc -ne 0 ]; then exit $$rc; fi

validate: $(STAMP)
	$(BIN)/mechcheck validate claims/

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

clean-reports:
	find reports -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
