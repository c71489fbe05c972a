# mechbench — the two commands the README gives: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# Model weights never come from a hub at run time on this project's machines.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# Cache compiled bytecode even where the environment sets PYTHONDONTWRITEBYTECODE=1 (as the CI image
# does): otherwise every test worker and every docs build recompiles torch, transformers and
# TransformerLens from source, minutes each on a 2-core machine. An empty value means "write".
export PYTHONDONTWRITEBYTECODE :=

.PHONY: setup demo test docs lint bench clean

setup: $(VENV)/.installed

# torch is installed first, pinned, so that no later resolution can pull a multi-GB CUDA build;
# uv then installs the rest (several times faster than pip on 2 cores), with the ray extra, whose
# sweep tests run on a local Ray cluster.
$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-compile torch==2.13.0 uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e ".[dev,ray]"
	@# the report's browser test needs Debian's chromium; installed here when we may (root with apt)
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "note: chromium not installed; the browser test will fail until you install Debian's chromium"
	@# the speech analysis and its tests synthesise utterances with Debian's espeak-ng
	@command -v espeak-ng >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null) ; } || \
	  echo "note: espeak-ng not installed; the speech tests will fail until you install Debian's espeak-ng"
	$(BIN)/mechbench models install smollm2-135m minilm-l6 whisper-tiny-en
	touch $@

demo: setup
	$(BIN)/mechbench analyze --config configs/default.yaml

test: setup
	$(BIN)/ruff check mechbench tests benchmarks docs/hooks.py
	$(BIN)/mypy mechbench
	$(BIN)/mkdocs build --strict --quiet --site-dir $(VENV)/site
	$(BIN)/pytest

docs: setup
	$(BIN)/mkdocs build --strict --site-dir site

# issue 10's numbers (docs/performance.md): each script writes benchmarks/results/<analysis>.csv
bench: setup
	for analysis in sinks tappa distance; do \
	  $(BIN)/python benchmarks/bench_$$analysis.py --lengths 512 2048 8192 || exit 1; \
	  $(BIN)/python benchmarks/bench_$$analysis.py --lengths 2048 --methods hf-sdpa-forward mechbench --rounds 3 \
	    --merge || exit 1; \
	  $(BIN)/python benchmarks/bench_$$analysis.py --lengths 2048 --methods hf-sdpa-forward mechbench --rounds 2 \
	    --warm-runs 1 --out benchmarks/results/$$analysis-steady.csv || exit 1; \
	done
	$(BIN)/python benchmarks/bench_retrieval.py --lengths 512 2048 4096

clean:
	rm -rf $(VENV) mechbench-results site
